//! WebSocket clients: native frames as binary messages, the same handshake,
//! interoperating with TCP clients.

mod common;

use anyhow::{bail, Context, Result};
use common::{sample, scrape, TestClient, TOKEN, WAIT};
use futures::{SinkExt, StreamExt};
use prost::Message as _;
use switchboard_discovery::{client_proof, nonce, verify_hub_proof, Secret};
use switchboard_hub::{HttpConfig, Hub, HubHandle};
use switchboard_wire::proto::{self, frame::Kind};
use switchboard_wire::{ErrorCode, Frame, PROTOCOL_VERSION};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

type Ws = WebSocketStream<MaybeTlsStream<tokio::net::TcpStream>>;

async fn start() -> HubHandle {
    let mut config = common::config();
    config.http = Some(HttpConfig::new("127.0.0.1:0".parse().unwrap()));
    Hub::start(config).await.expect("hub starts")
}

async fn open(hub: &HubHandle) -> Result<Ws> {
    let url = format!("ws://{}/v1/ws", hub.http_addr().context("gateway")?);
    let (ws, _) = tokio_tungstenite::connect_async(url).await?;
    Ok(ws)
}

async fn send(ws: &mut Ws, frame: impl Into<Frame>) -> Result<()> {
    ws.send(Message::Binary(frame.into().encode_to_vec().into()))
        .await?;
    Ok(())
}

/// Next frame; `None` when the socket closed.
async fn recv(ws: &mut Ws) -> Result<Option<Frame>> {
    loop {
        let msg = tokio::time::timeout(WAIT, ws.next())
            .await
            .context("timed out waiting for a frame")?;
        match msg {
            Some(Ok(Message::Binary(b))) => return Ok(Some(Frame::decode(b)?)),
            Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
            Some(Ok(Message::Close(_))) | None | Some(Err(_)) => return Ok(None),
            Some(Ok(other)) => bail!("unexpected message {other:?}"),
        }
    }
}

async fn handshake(ws: &mut Ws, id: &str) -> Result<Option<Frame>> {
    let secret = Secret::from_token(TOKEN);
    let client_nonce = nonce();
    send(
        ws,
        proto::Hello {
            protocol_version: PROTOCOL_VERSION,
            client_id: id.into(),
            client_nonce: client_nonce.to_vec().into(),
            agent: "ws test".into(),
            ..Default::default()
        },
    )
    .await?;
    let challenge = match recv(ws).await?.and_then(|f| f.kind) {
        Some(Kind::Challenge(c)) => c,
        other => return Ok(other.map(Frame::from)),
    };
    let identity = challenge.identity.clone().context("identity")?;
    if !verify_hub_proof(
        &secret,
        &client_nonce,
        &challenge.hub_nonce,
        &identity,
        &challenge.proof,
    ) {
        bail!("hub proof does not verify");
    }
    let proof = client_proof(&secret, &challenge.hub_nonce, &client_nonce, id);
    send(
        ws,
        proto::Auth {
            proof: proof.to_vec().into(),
        },
    )
    .await?;
    match recv(ws).await?.and_then(|f| f.kind) {
        Some(Kind::Welcome(_)) => Ok(None),
        other => Ok(Some(other.map(Frame::from).unwrap_or_default())),
    }
}

#[tokio::test]
async fn a_websocket_client_is_a_full_client() -> Result<()> {
    let hub = start().await;
    let mut ws = open(&hub).await?;
    assert!(handshake(&mut ws, "browser").await?.is_none());
    let mut tcp = TestClient::connect(hub.local_addr(), "native").await?;

    // TCP → WS request/reply.
    tcp.send(proto::Request {
        id: 5,
        to: "browser".into(),
        payload: "hi".into(),
        ..Default::default()
    })
    .await?;
    let Some(Kind::Request(r)) = recv(&mut ws).await?.and_then(|f| f.kind) else {
        bail!("ws expected a request");
    };
    assert_eq!(r.from, "native");
    send(
        &mut ws,
        proto::Reply {
            id: r.id,
            to: r.from,
            payload: "hello".into(),
            ..Default::default()
        },
    )
    .await?;
    assert!(
        matches!(tcp.expect().await?.kind, Some(Kind::Reply(r)) if r.id == 5 && &r.payload[..] == b"hello")
    );

    // WS → TCP, and pub/sub across transports.
    send(
        &mut ws,
        proto::Request {
            id: 1,
            to: "native".into(),
            payload: "q".into(),
            ..Default::default()
        },
    )
    .await?;
    let Some(Kind::Request(r)) = tcp.expect().await?.kind else {
        bail!("tcp expected a request");
    };
    tcp.send(proto::Reply {
        id: r.id,
        to: r.from,
        payload: "a".into(),
        ..Default::default()
    })
    .await?;
    assert!(matches!(recv(&mut ws).await?.and_then(|f| f.kind), Some(Kind::Reply(r)) if r.id == 1));
    send(
        &mut ws,
        proto::Subscribe {
            id: 2,
            sub_id: 3,
            pattern: "t.*".into(),
            ..Default::default()
        },
    )
    .await?;
    assert_eq!(recv(&mut ws).await?, Some(Frame::ok(2)));
    tcp.send(proto::Publish {
        topic: "t.x".into(),
        payload: "p".into(),
        ..Default::default()
    })
    .await?;
    assert!(
        matches!(recv(&mut ws).await?.and_then(|f| f.kind), Some(Kind::Deliver(d)) if d.sub_id == 3)
    );

    // The registry names the transport.
    tcp.send(proto::ListClients { id: 9 }).await?;
    let Some(Kind::ClientList(list)) = tcp.expect().await?.kind else {
        bail!("expected the client list");
    };
    assert!(list
        .clients
        .iter()
        .any(|c| c.client_id == "browser" && c.transport == "ws"));

    // Kinds only the hub sends are refused before decoding; the socket lives.
    send(&mut ws, proto::ClientList::default()).await?;
    match recv(&mut ws).await?.and_then(|f| f.kind) {
        Some(Kind::Error(e)) => assert_eq!(e.code, ErrorCode::Unsupported as i32),
        other => bail!("expected an error, got {other:?}"),
    }
    send(&mut ws, proto::Ping { nonce: 4 }).await?;
    assert!(
        matches!(recv(&mut ws).await?.and_then(|f| f.kind), Some(Kind::Pong(p)) if p.nonce == 4)
    );

    // A text message is not a frame: the connection ends.
    ws.send(Message::Text("hello".into())).await?;
    let mut closed = false;
    for _ in 0..10 {
        if recv(&mut ws).await?.is_none() {
            closed = true;
            break;
        }
    }
    assert!(closed);
    hub.shutdown().await;
    Ok(())
}

#[tokio::test]
async fn websocket_handshake_refusals_match_tcp() -> Result<()> {
    let hub = start().await;
    // Wrong secret.
    let mut ws = open(&hub).await?;
    let client_nonce = nonce();
    send(
        &mut ws,
        proto::Hello {
            protocol_version: PROTOCOL_VERSION,
            client_id: "x".into(),
            client_nonce: client_nonce.to_vec().into(),
            ..Default::default()
        },
    )
    .await?;
    let Some(Kind::Challenge(c)) = recv(&mut ws).await?.and_then(|f| f.kind) else {
        bail!("expected a challenge");
    };
    let wrong = client_proof(
        &Secret::from_token("wrong"),
        &c.hub_nonce,
        &client_nonce,
        "x",
    );
    send(
        &mut ws,
        proto::Auth {
            proof: wrong.to_vec().into(),
        },
    )
    .await?;
    match recv(&mut ws).await?.and_then(|f| f.kind) {
        Some(Kind::Error(e)) => assert_eq!(e.code, ErrorCode::AuthFailed as i32),
        other => bail!("expected AUTH_FAILED, got {other:?}"),
    }
    assert!(recv(&mut ws).await?.is_none());

    // A first message over the pre-authentication limit.
    let mut ws = open(&hub).await?;
    ws.send(Message::Binary(vec![0u8; 10_000].into())).await?;
    match recv(&mut ws).await?.and_then(|f| f.kind) {
        Some(Kind::Error(e)) => assert_eq!(e.code, ErrorCode::LimitExceeded as i32),
        other => bail!("expected LIMIT_EXCEEDED, got {other:?}"),
    }

    // A page of a foreign origin cannot open the socket.
    let mut req = format!("ws://{}/v1/ws", hub.http_addr().unwrap()).into_client_request()?;
    req.headers_mut()
        .insert("Origin", "http://evil.example".parse()?);
    let refused = tokio_tungstenite::connect_async(req).await;
    match refused {
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => {
            assert_eq!(resp.status().as_u16(), 403)
        }
        other => bail!("expected 403, got {:?}", other.map(|_| ())),
    }
    hub.shutdown().await;
    Ok(())
}

/// A WebSocket that opens and then says nothing is cut at the handshake
/// timeout, like a TCP one, with `HANDSHAKE_TIMEOUT`.
#[tokio::test]
async fn a_silent_websocket_is_cut_at_the_handshake_timeout() -> Result<()> {
    let mut config = common::config();
    config.http = Some(HttpConfig::new("127.0.0.1:0".parse().unwrap()));
    config.handshake_timeout = std::time::Duration::from_millis(300);
    let hub = Hub::start(config).await?;
    let mut ws = open(&hub).await?;
    let opened = std::time::Instant::now();
    match recv(&mut ws).await?.and_then(|f| f.kind) {
        Some(Kind::Error(e)) => assert_eq!(e.code, ErrorCode::HandshakeTimeout as i32),
        other => bail!("expected HANDSHAKE_TIMEOUT, got {other:?}"),
    }
    assert!(recv(&mut ws).await?.is_none(), "closed after the notice");
    let took = opened.elapsed();
    assert!(
        took >= std::time::Duration::from_millis(250) && took < WAIT,
        "cut after {took:?}"
    );
    assert_eq!(hub.status().clients, 0);
    hub.shutdown().await;
    Ok(())
}

/// A socket with the `switchboard.stream` framing: messages concatenated
/// are the length-prefixed byte stream of TCP.
struct StreamWs {
    ws: Ws,
    buf: bytes::BytesMut,
}

impl StreamWs {
    async fn open(hub: &HubHandle) -> Result<StreamWs> {
        let mut req =
            format!("ws://{}/v1/ws", hub.http_addr().context("gateway")?).into_client_request()?;
        req.headers_mut()
            .insert("Sec-WebSocket-Protocol", "switchboard.stream".parse()?);
        let (ws, resp) = tokio_tungstenite::connect_async(req).await?;
        assert_eq!(
            resp.headers()
                .get("sec-websocket-protocol")
                .map(|v| v.as_bytes()),
            Some(&b"switchboard.stream"[..]),
            "the hub accepts the stream framing"
        );
        Ok(StreamWs {
            ws,
            buf: bytes::BytesMut::new(),
        })
    }

    /// Frames, length-prefixed, as one message.
    fn packed(frames: impl IntoIterator<Item = Frame>) -> Vec<u8> {
        let mut out = Vec::new();
        for f in frames {
            let body = f.encode_to_vec();
            out.extend_from_slice(&(body.len() as u32).to_be_bytes());
            out.extend_from_slice(&body);
        }
        out
    }

    async fn send_raw(&mut self, bytes: &[u8]) -> Result<()> {
        self.ws.send(Message::Binary(bytes.to_vec().into())).await?;
        Ok(())
    }

    /// Next frame from the stream; `None` when the socket closed.
    async fn recv(&mut self) -> Result<Option<Frame>> {
        loop {
            if self.buf.len() >= 4 {
                let len = u32::from_be_bytes(self.buf[..4].try_into()?) as usize;
                if self.buf.len() >= 4 + len {
                    let frame = self.buf.split_to(4 + len);
                    return Ok(Some(Frame::decode(&frame[4..])?));
                }
            }
            let msg = tokio::time::timeout(WAIT, self.ws.next())
                .await
                .context("timed out waiting for a message")?;
            match msg {
                Some(Ok(Message::Binary(b))) => self.buf.extend_from_slice(&b),
                Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
                Some(Ok(Message::Close(_))) | None | Some(Err(_)) => return Ok(None),
                Some(Ok(other)) => bail!("unexpected message {other:?}"),
            }
        }
    }
}

/// The stream framing: frames split across messages and many in one, both
/// ways; the hub packs a batch into one message; a length over `max_frame`
/// fails the connection with `LIMIT_EXCEEDED`, as on TCP.
#[tokio::test]
async fn the_stream_framing_carries_the_tcp_byte_stream() -> Result<()> {
    let hub = start().await;
    let mut ws = StreamWs::open(&hub).await?;
    let secret = Secret::from_token(TOKEN);
    let client_nonce = nonce();
    let hello = StreamWs::packed([Frame::from(proto::Hello {
        protocol_version: PROTOCOL_VERSION,
        client_id: "streamer".into(),
        client_nonce: client_nonce.to_vec().into(),
        agent: "ws stream test".into(),
        ..Default::default()
    })]);
    // The Hello cut inside its length prefix and again inside its body.
    ws.send_raw(&hello[..2]).await?;
    ws.send_raw(&hello[2..9]).await?;
    ws.send_raw(&hello[9..]).await?;
    let Some(Kind::Challenge(challenge)) = ws.recv().await?.and_then(|f| f.kind) else {
        bail!("expected a challenge");
    };
    let proof = client_proof(&secret, &challenge.hub_nonce, &client_nonce, "streamer");
    // The Auth and two pings in one message.
    let msg = StreamWs::packed([
        proto::Auth {
            proof: proof.to_vec().into(),
        }
        .into(),
        proto::Ping { nonce: 1 }.into(),
        proto::Ping { nonce: 2 }.into(),
    ]);
    ws.send_raw(&msg).await?;
    assert!(matches!(
        ws.recv().await?.and_then(|f| f.kind),
        Some(Kind::Welcome(_))
    ));
    for n in [1, 2] {
        match ws.recv().await?.and_then(|f| f.kind) {
            Some(Kind::Pong(p)) => assert_eq!(p.nonce, n),
            other => bail!("expected pong {n}, got {other:?}"),
        }
    }

    // A TCP client sees the WebSocket one and talks to it.
    let mut tcp = TestClient::connect(hub.local_addr(), "tcp-peer").await?;
    tcp.send(proto::Direct {
        to: "streamer".into(),
        payload: vec![9; 100_000].into(),
        ..Default::default()
    })
    .await?;
    match ws.recv().await?.and_then(|f| f.kind) {
        Some(Kind::Direct(d)) => assert_eq!(d.payload.len(), 100_000),
        other => bail!("expected the direct message, got {other:?}"),
    }

    // A length over the frame limit: LIMIT_EXCEEDED, then the end.
    let max = common::config().limits.max_frame as u32;
    ws.send_raw(&(max + 1).to_be_bytes()).await?;
    match ws.recv().await?.and_then(|f| f.kind) {
        Some(Kind::Error(e)) => assert_eq!(e.code, ErrorCode::LimitExceeded as i32),
        other => bail!("expected LIMIT_EXCEEDED, got {other:?}"),
    }
    assert!(ws.recv().await?.is_none(), "the connection ends");
    hub.shutdown().await;
    Ok(())
}

/// Without the subprotocol nothing changes: no protocol in the response,
/// one frame per message.
#[tokio::test]
async fn without_the_subprotocol_a_message_is_one_frame() -> Result<()> {
    let hub = start().await;
    let url = format!("ws://{}/v1/ws", hub.http_addr().context("gateway")?);
    let (mut ws, resp) = tokio_tungstenite::connect_async(url).await?;
    assert!(resp.headers().get("sec-websocket-protocol").is_none());
    assert_eq!(handshake(&mut ws, "plain").await?, None);
    send(&mut ws, proto::Ping { nonce: 7 }).await?;
    assert!(
        matches!(recv(&mut ws).await?.and_then(|f| f.kind), Some(Kind::Pong(p)) if p.nonce == 7)
    );
    hub.shutdown().await;
    Ok(())
}

#[tokio::test]
async fn frames_bytes_and_queue_delay_are_counted_per_transport() -> Result<()> {
    let hub = start().await;
    let mut ws = open(&hub).await?;
    assert!(handshake(&mut ws, "browser").await?.is_none());
    let mut tcp = TestClient::connect(hub.local_addr(), "native").await?;
    tcp.send(proto::Request {
        id: 5,
        to: "browser".into(),
        payload: "hi".into(),
        ..Default::default()
    })
    .await?;
    let Some(Kind::Request(r)) = recv(&mut ws).await?.and_then(|f| f.kind) else {
        bail!("ws expected a request");
    };
    send(
        &mut ws,
        proto::Reply {
            id: r.id,
            to: r.from,
            payload: "hello".into(),
            ..Default::default()
        },
    )
    .await?;
    assert!(matches!(tcp.expect().await?.kind, Some(Kind::Reply(r)) if r.id == 5));

    // The writers record the delay after their write returned, which may
    // be a moment after the frame arrived.
    let delay = "switchboard_delivery_queue_delay_seconds";
    let deadline = tokio::time::Instant::now() + WAIT;
    let m = loop {
        let m = scrape(&hub).await?;
        let sampled = |t| sample(&m, delay, &[("transport", t)]).is_some_and(|n| n >= 1.0);
        if sampled("tcp") && sampled("ws") {
            break m;
        }
        if tokio::time::Instant::now() > deadline {
            bail!("no delivery queue delay sampled for tcp and ws");
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    };
    let frames = |dir: &str, t: &str, k: &str| {
        let name = format!("switchboard_frames_{dir}_total");
        sample(&m, &name, &[("transport", t), ("kind", k)])
    };
    let bytes = |dir: &str, t: &str, k: &str| {
        let name = format!("switchboard_{dir}_bytes_total");
        sample(&m, &name, &[("transport", t), ("kind", k)])
    };
    // The request went in on TCP and out on WebSocket, the reply back.
    assert_eq!(frames("received", "tcp", "request"), Some(1.0));
    assert_eq!(frames("sent", "ws", "request"), Some(1.0));
    assert_eq!(frames("received", "ws", "reply"), Some(1.0));
    assert_eq!(frames("sent", "tcp", "reply"), Some(1.0));
    // Each transport that carried frames has a row for every kind.
    assert_eq!(frames("received", "ws", "request"), Some(0.0));
    assert_eq!(frames("received", "unix", "request"), None);
    for (dir, t, k) in [
        ("received", "tcp", "request"),
        ("sent", "ws", "request"),
        ("received", "ws", "reply"),
        ("sent", "tcp", "reply"),
    ] {
        // At least the length prefix and the payload.
        assert!(
            bytes(dir, t, k).is_some_and(|b| b >= 6.0),
            "{dir} {t} {k}: {:?}",
            bytes(dir, t, k)
        );
    }
    // No transport without traffic has a delay sample.
    assert!(sample(&m, delay, &[("transport", "unix")]).is_none());
    hub.shutdown().await;
    Ok(())
}
