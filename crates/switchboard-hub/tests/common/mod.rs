//! A small raw client for the hub's tests: frames over a TCP stream plus
//! the discovery proofs, nothing else.

#![allow(dead_code)]

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use bytes::BytesMut;
use switchboard_discovery::{
    client_proof, nonce, verify_hub_proof, BindOptions, PortChoice, Secret,
};
use switchboard_hub::{Hub, HubConfig, HubHandle};
use switchboard_wire::proto::{self, frame::Kind};
use switchboard_wire::{ErrorCode, Frame, FrameCodec, PROTOCOL_VERSION};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_util::codec::{Decoder, Encoder};

pub const TOKEN: &str = "test token";

/// Generous bound for anything a test waits for.
pub const WAIT: Duration = Duration::from_secs(10);

pub fn config() -> HubConfig {
    let mut config = HubConfig::with_secret("hubtest", Secret::from_token(TOKEN));
    config.bind = BindOptions {
        ip: "127.0.0.1".parse().unwrap(),
        port: PortChoice::Os,
        ..BindOptions::default()
    };
    config.write_hint = false;
    config
}

pub async fn start() -> HubHandle {
    Hub::start(config()).await.expect("hub starts")
}

pub struct TestClient {
    pub stream: TcpStream,
    buf: BytesMut,
    codec: FrameCodec,
    pub welcome: Option<proto::Welcome>,
    next_id: u64,
}

impl TestClient {
    pub async fn connect_raw(addr: SocketAddr) -> Result<TestClient> {
        let stream = TcpStream::connect(addr).await?;
        stream.set_nodelay(true)?;
        Ok(TestClient {
            stream,
            buf: BytesMut::with_capacity(64 * 1024),
            codec: FrameCodec::new(),
            welcome: None,
            next_id: 1,
        })
    }

    pub async fn connect(addr: SocketAddr, id: &str) -> Result<TestClient> {
        Self::connect_with(addr, id, &Secret::from_token(TOKEN)).await
    }

    /// Full handshake; fails unless the hub welcomes the client.
    pub async fn connect_with(addr: SocketAddr, id: &str, secret: &Secret) -> Result<TestClient> {
        Self::connect_features(addr, id, secret, &[]).await
    }

    /// Full handshake asking for `features`; fails unless the hub welcomes
    /// the client.
    pub async fn connect_features(
        addr: SocketAddr,
        id: &str,
        secret: &Secret,
        features: &[&str],
    ) -> Result<TestClient> {
        let mut c = Self::connect_raw(addr).await?;
        match c.handshake_features(id, secret, features).await? {
            Some(f) => bail!("handshake refused: {f:?}"),
            None => Ok(c),
        }
    }

    /// Runs the handshake; returns the hub's refusal frame (an empty frame
    /// when the hub closed without one), `None` once welcomed.
    pub async fn handshake(&mut self, id: &str, secret: &Secret) -> Result<Option<Frame>> {
        self.handshake_features(id, secret, &[]).await
    }

    /// [`TestClient::handshake`] asking for `features`.
    pub async fn handshake_features(
        &mut self,
        id: &str,
        secret: &Secret,
        features: &[&str],
    ) -> Result<Option<Frame>> {
        let client_nonce = nonce();
        self.send(proto::Hello {
            protocol_version: PROTOCOL_VERSION,
            client_id: id.into(),
            client_nonce: client_nonce.to_vec().into(),
            agent: "hub tests".into(),
            features: features.iter().map(|f| f.to_string()).collect(),
            ..Default::default()
        })
        .await?;
        let challenge = match self.recv().await?.and_then(|f| f.kind) {
            Some(Kind::Challenge(c)) => c,
            // A close without a frame (refused at accept) is a refusal too,
            // never a success.
            other => return Ok(Some(other.map(Frame::from).unwrap_or_default())),
        };
        let identity = challenge
            .identity
            .clone()
            .context("challenge has an identity")?;
        if !verify_hub_proof(
            secret,
            &client_nonce,
            &challenge.hub_nonce,
            &identity,
            &challenge.proof,
        ) {
            bail!("hub proof does not verify");
        }
        let proof = client_proof(secret, &challenge.hub_nonce, &client_nonce, id);
        self.send(proto::Auth {
            proof: proof.to_vec().into(),
        })
        .await?;
        match self.recv().await?.and_then(|f| f.kind) {
            Some(Kind::Welcome(w)) => {
                self.welcome = Some(w);
                Ok(None)
            }
            other => Ok(Some(other.map(Frame::from).unwrap_or_default())),
        }
    }

    /// Opens a standby link to `addr` (a `Hello` with the standby role)
    /// as `id`, proving `token`: the link and the first frame after `Auth`
    /// (`ReplHello` when admitted, an error when not).
    pub async fn connect_standby(
        addr: SocketAddr,
        token: &str,
        id: &str,
    ) -> Result<(TestClient, Frame)> {
        let secret = Secret::from_token(token);
        let mut c = TestClient::connect_raw(addr).await?;
        let client_nonce = nonce();
        c.send(proto::Hello {
            protocol_version: PROTOCOL_VERSION,
            client_id: id.into(),
            client_nonce: client_nonce.to_vec().into(),
            role: proto::Role::Standby as i32,
            key_id: secret.key_id().to_vec().into(),
            ..Default::default()
        })
        .await?;
        let Some(Kind::Challenge(ch)) = c.expect().await?.kind else {
            bail!("no challenge")
        };
        let proof = client_proof(&secret, &ch.hub_nonce, &client_nonce, id);
        c.send(proto::Auth {
            proof: proof.to_vec().into(),
        })
        .await?;
        let first = c.expect().await?;
        Ok((c, first))
    }

    pub fn next_id(&mut self) -> u64 {
        self.next_id += 1;
        self.next_id
    }

    pub async fn send(&mut self, frame: impl Into<Frame>) -> Result<()> {
        let mut out = BytesMut::new();
        self.codec.encode(frame.into(), &mut out)?;
        self.stream.write_all(&out).await?;
        Ok(())
    }

    pub async fn send_bytes(&mut self, bytes: &[u8]) -> Result<()> {
        self.stream.write_all(bytes).await?;
        Ok(())
    }

    /// Next frame, or `None` at a clean end of stream; fails after [`WAIT`].
    pub async fn recv(&mut self) -> Result<Option<Frame>> {
        self.recv_within(WAIT).await
    }

    pub async fn recv_within(&mut self, limit: Duration) -> Result<Option<Frame>> {
        tokio::time::timeout(limit, async {
            loop {
                if let Some(f) = self.codec.decode(&mut self.buf)? {
                    return Ok(Some(f));
                }
                self.buf.reserve(64 * 1024);
                match self.stream.read_buf(&mut self.buf).await {
                    Ok(0) => return Ok(self.codec.decode_eof(&mut self.buf)?),
                    Ok(_) => {}
                    // A reset after the hub closed counts as the end.
                    Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return Ok(None),
                    Err(e) => return Err(e.into()),
                }
            }
        })
        .await
        .context("timed out waiting for a frame")?
    }

    /// Next frame, which must exist.
    pub async fn expect(&mut self) -> Result<Frame> {
        self.recv().await?.context("connection closed")
    }

    /// Skips frames until `pred` matches (at most 100,000 frames).
    pub async fn expect_where(&mut self, pred: impl Fn(&Frame) -> bool) -> Result<Frame> {
        for _ in 0..100_000 {
            let f = self.expect().await?;
            if pred(&f) {
                return Ok(f);
            }
        }
        bail!("no matching frame")
    }

    /// The next frame must be an `Error` with `code`; returns its message.
    pub async fn expect_error(&mut self, id: u64, code: ErrorCode) -> Result<String> {
        match self.expect().await?.kind {
            Some(Kind::Error(e)) if e.id == id && e.code == code as i32 => Ok(e.message),
            other => bail!("expected error {code:?} for {id}, got {other:?}"),
        }
    }

    /// The hub must close the connection (after any frames, which are
    /// returned).
    pub async fn expect_closed(&mut self) -> Result<Vec<Frame>> {
        let mut frames = Vec::new();
        loop {
            match self.recv().await {
                Ok(Some(f)) => frames.push(f),
                Ok(None) => return Ok(frames),
                Err(e) if e.downcast_ref::<switchboard_wire::WireError>().is_some() => {
                    return Ok(frames)
                }
                Err(e) => return Err(e),
            }
        }
    }

    pub async fn subscribe(&mut self, sub_id: u64, pattern: &str, group: &str) -> Result<()> {
        let id = self.next_id();
        self.send(proto::Subscribe {
            id,
            sub_id,
            pattern: pattern.into(),
            queue_group: group.into(),
            ..Default::default()
        })
        .await?;
        let f = self.expect().await?;
        if f != Frame::ok(id) {
            bail!("subscribe refused: {f:?}");
        }
        Ok(())
    }

    /// Sends a ping and waits for its pong: everything sent before has been
    /// processed by the hub.
    pub async fn sync(&mut self) -> Result<()> {
        let nonce = self.next_id();
        self.send(proto::Ping { nonce }).await?;
        self.expect_where(|f| matches!(&f.kind, Some(Kind::Pong(p)) if p.nonce == nonce))
            .await?;
        Ok(())
    }
}

pub fn kind(f: &Frame) -> &Kind {
    f.kind.as_ref().expect("frame has a kind")
}

/// `GET /metrics` with the test token, parsed.
pub async fn scrape(hub: &HubHandle) -> Result<prometheus_parse::Scrape> {
    let addr = hub.http_addr().context("gateway")?;
    let token = switchboard_hub::http_token(&Secret::from_token(TOKEN));
    let mut s = tokio::net::TcpStream::connect(addr).await?;
    let head = format!(
        "GET /metrics HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nAuthorization: Bearer {token}\r\n\r\n"
    );
    s.write_all(head.as_bytes()).await?;
    let mut raw = Vec::new();
    tokio::time::timeout(WAIT, s.read_to_end(&mut raw))
        .await
        .context("metrics timed out")??;
    let text = String::from_utf8(raw)?;
    let (head, body) = text.split_once("\r\n\r\n").context("no header end")?;
    if !head.starts_with("HTTP/1.1 200") || head.to_ascii_lowercase().contains("chunked") {
        bail!("unexpected answer: {head}");
    }
    let lines = body.lines().map(|l| Ok(l.to_owned()));
    prometheus_parse::Scrape::parse(lines).context("exposition parses")
}

/// A counter's or gauge's value, or a histogram's count, of the sample of
/// `name` with exactly `labels`.
pub fn sample(
    scrape: &prometheus_parse::Scrape,
    name: &str,
    labels: &[(&str, &str)],
) -> Option<f64> {
    scrape.samples.iter().find_map(|s| {
        let matches = s.metric == name
            && s.labels.len() == labels.len()
            && labels
                .iter()
                .all(|(k, v)| s.labels.get(k).is_some_and(|x| x == *v));
        match (&s.value, matches) {
            (prometheus_parse::Value::Counter(v), true) => Some(*v),
            (prometheus_parse::Value::Histogram(h), true) => h
                .iter()
                .find(|b| b.less_than == f64::INFINITY)
                .map(|b| b.count),
            _ => None,
        }
    })
}
