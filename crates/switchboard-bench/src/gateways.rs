//! Request/reply round trips through each transport of one hub: native TCP,
//! WebSocket, and the HTTP long-poll gateway (requester and responder on the
//! same transport, one request outstanding at a time). Clients speak the
//! protocol directly (the sans-IO handshake of `switchboard_discovery`,
//! then frames), so the figures are the hub's, not a client library's.
//!
//! ```text
//! cargo run --release -p switchboard-bench -- gateways [ROUNDS]
//! ```
//!
//! The comparison run (`cargo xtask bench`) reports the WebSocket and HTTP
//! round trips as switchboard-only rows, against a hub process.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use bytes::BytesMut;
use futures::{SinkExt, StreamExt};
use prost::Message as _;
use serde_json::{json, Value};
use switchboard::discovery::handshake::{ClientHandshake, HandshakeParams, Step};
use switchboard::discovery::{nonce, BindOptions, PortChoice, Secret};
use switchboard::hub::{HttpConfig, Hub};
use switchboard::wire::proto::{self, frame::Kind};
use switchboard::wire::{Frame, FrameCodec};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_util::codec::{Decoder, Encoder};

const TOKEN: &str = "bench token";

/// A native frame connection over TCP or WebSocket.
pub enum Conn {
    Tcp(TcpStream, BytesMut),
    Ws(Box<tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<TcpStream>>>),
}

impl Conn {
    async fn send(&mut self, frame: impl Into<Frame>) -> Result<()> {
        let frame = frame.into();
        match self {
            Conn::Tcp(s, _) => {
                let mut out = BytesMut::new();
                FrameCodec::new().encode(frame, &mut out)?;
                s.write_all(&out).await?;
            }
            Conn::Ws(ws) => {
                ws.send(Message::Binary(frame.encode_to_vec().into()))
                    .await?
            }
        }
        Ok(())
    }

    async fn recv(&mut self) -> Result<Frame> {
        match self {
            Conn::Tcp(s, buf) => loop {
                if let Some(f) = FrameCodec::new().decode(buf)? {
                    return Ok(f);
                }
                if s.read_buf(buf).await? == 0 {
                    bail!("closed");
                }
            },
            Conn::Ws(ws) => loop {
                match ws.next().await.context("closed")?? {
                    Message::Binary(b) => return Ok(Frame::decode(b)?),
                    Message::Close(_) => bail!("closed"),
                    _ => {}
                }
            },
        }
    }

    async fn handshake(mut self, id: &str, token: &str) -> Result<Conn> {
        let params = HandshakeParams {
            client_id: id.into(),
            ..HandshakeParams::default()
        };
        let (mut handshake, hello) =
            ClientHandshake::new(params, &Secret::from_token(token), nonce());
        self.send(hello).await?;
        loop {
            match handshake.on_frame(self.recv().await?)? {
                Step::Send(frame) | Step::SendLast(frame, _) => self.send(frame).await?,
                Step::Done(_) => return Ok(self),
            }
        }
    }
}

/// A native connection to the hub at `addr` as client `id`.
pub async fn tcp(addr: SocketAddr, id: &str, token: &str) -> Result<Conn> {
    let s = TcpStream::connect(addr).await?;
    s.set_nodelay(true)?;
    Conn::Tcp(s, BytesMut::with_capacity(64 * 1024))
        .handshake(id, token)
        .await
}

/// A WebSocket connection to the gateway at `http` as client `id`.
pub async fn ws(http: SocketAddr, id: &str, token: &str) -> Result<Conn> {
    let url = format!("ws://{http}/v1/ws");
    let (ws, _) = tokio_tungstenite::connect_async(url).await?;
    Conn::Ws(Box::new(ws)).handshake(id, token).await
}

/// Round trips from `a` to client "b" on connection `b`, 64-byte
/// payloads; latencies in µs.
pub async fn native(mut a: Conn, mut b: Conn, rounds: usize) -> Result<Vec<u64>> {
    let responder = tokio::spawn(async move {
        for _ in 0..rounds {
            let Some(Kind::Request(r)) = b.recv().await?.kind else {
                bail!("expected a request");
            };
            b.send(proto::Reply {
                id: r.id,
                to: r.from,
                payload: r.payload,
                ..Default::default()
            })
            .await?;
        }
        Ok(())
    });
    let mut lat = Vec::with_capacity(rounds);
    for i in 0..rounds {
        let t = Instant::now();
        a.send(proto::Request {
            id: i as u64 + 1,
            to: "b".into(),
            payload: vec![7u8; 64].into(),
            ..Default::default()
        })
        .await?;
        let Some(Kind::Reply(_)) = a.recv().await?.kind else {
            bail!("expected a reply");
        };
        lat.push(t.elapsed().as_micros() as u64);
    }
    responder.await??;
    Ok(lat)
}

/// One kept-alive HTTP/1.1 connection.
struct Http {
    rd: BufReader<tokio::net::tcp::OwnedReadHalf>,
    wr: tokio::net::tcp::OwnedWriteHalf,
    addr: SocketAddr,
    token: String,
}

impl Http {
    async fn new(addr: SocketAddr, token: &str) -> Result<Http> {
        let s = TcpStream::connect(addr).await?;
        s.set_nodelay(true)?;
        let (rd, wr) = s.into_split();
        Ok(Http {
            rd: BufReader::new(rd),
            wr,
            addr,
            token: token.into(),
        })
    }

    async fn post(&mut self, path: &str, body: &Value) -> Result<Value> {
        let body = body.to_string();
        let req = format!(
            "POST {path} HTTP/1.1\r\nHost: {}\r\nAuthorization: Bearer {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            self.addr,
            self.token,
            body.len()
        );
        self.wr.write_all(req.as_bytes()).await?;
        let mut line = String::new();
        self.rd.read_line(&mut line).await?;
        if !line.starts_with("HTTP/1.1 200") {
            bail!("http error: {line}");
        }
        let mut len = 0;
        loop {
            line.clear();
            self.rd.read_line(&mut line).await?;
            if line == "\r\n" {
                break;
            }
            if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                len = v.trim().parse()?;
            }
        }
        let mut buf = vec![0; len];
        self.rd.read_exact(&mut buf).await?;
        Ok(serde_json::from_slice(&buf)?)
    }
}

/// Round trips from HTTP client "ha" to HTTP client "hb" (which long-polls
/// and replies) through the gateway at `addr`; latencies in µs.
pub async fn http(addr: SocketAddr, token: &str, rounds: usize) -> Result<Vec<u64>> {
    let mut listener = Http::new(addr, token).await?;
    listener
        .post("/v1/listen", &json!({ "client": "hb", "timeout_ms": 0 }))
        .await?;
    let responder = tokio::spawn(async move {
        let mut replier = Http::new(addr, &listener.token).await?;
        let mut done = 0;
        while done < rounds {
            let v = listener
                .post("/v1/listen", &json!({ "client": "hb", "timeout_ms": 5000 }))
                .await?;
            for m in v["messages"].as_array().into_iter().flatten() {
                replier
                    .post(
                        "/v1/reply",
                        &json!({ "client": "hb", "id": m["id"], "payload": m["payload"] }),
                    )
                    .await?;
                done += 1;
            }
        }
        anyhow::Ok(())
    });
    let mut requester = Http::new(addr, token).await?;
    let payload = "x".repeat(64);
    let mut lat = Vec::with_capacity(rounds);
    for _ in 0..rounds {
        let t = Instant::now();
        requester
            .post(
                "/v1/request",
                &json!({ "client": "ha", "to": "hb", "payload": payload }),
            )
            .await?;
        lat.push(t.elapsed().as_micros() as u64);
    }
    responder.await??;
    Ok(lat)
}

fn report(name: &str, mut lat: Vec<u64>, total: Duration) {
    lat.sort_unstable();
    let pct = |p: f64| lat[((lat.len() as f64 * p) as usize).min(lat.len() - 1)];
    println!(
        "| {name} | {} | {:.0} | {} | {} |",
        lat.len(),
        lat.len() as f64 / total.as_secs_f64(),
        pct(0.50),
        pct(0.99)
    );
}

/// The `gateways` subcommand: `rounds` round trips per transport through
/// an in-process hub, as a markdown table.
pub async fn main(rounds: usize) -> Result<()> {
    let mut config = switchboard::hub::HubConfig::with_secret("gwbench", Secret::from_token(TOKEN));
    config.bind = BindOptions {
        ip: "127.0.0.1".parse()?,
        port: PortChoice::Os,
        ..BindOptions::default()
    };
    config.write_hint = false;
    config.http = Some(HttpConfig::new("127.0.0.1:0".parse()?));
    let hub = Hub::start(config).await?;
    println!("| transport | round trips | round trips/s | p50 µs | p99 µs |");
    println!("|---|---:|---:|---:|---:|");
    let addr = hub.local_addr();
    let http_addr = hub.http_addr().context("gateway")?;
    let (a, b) = (tcp(addr, "a", TOKEN).await?, tcp(addr, "b", TOKEN).await?);
    let t = Instant::now();
    let lat = native(a, b, rounds).await?;
    report("native TCP", lat, t.elapsed());
    let (a, b) = (
        ws(http_addr, "a", TOKEN).await?,
        ws(http_addr, "b", TOKEN).await?,
    );
    let t = Instant::now();
    let lat = native(a, b, rounds).await?;
    report("WebSocket", lat, t.elapsed());
    let t = Instant::now();
    let lat = http(http_addr, &hub.http_token(), rounds).await?;
    report("HTTP long-poll", lat, t.elapsed());
    hub.shutdown().await;
    Ok(())
}
