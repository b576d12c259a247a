//! The HTTP long-poll gateway against its real listener, with native TCP
//! clients on the other side (seed 002's listen / hold / answer flow).

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use common::{TestClient, WAIT};
use serde_json::{json, Value};
use switchboard_discovery::Secret;
use switchboard_hub::{http_token, HttpConfig, Hub, HubHandle};
use switchboard_wire::proto::{self, frame::Kind};
use switchboard_wire::{ErrorCode, Frame};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

async fn start_with(tune: impl FnOnce(&mut HttpConfig)) -> HubHandle {
    let mut config = common::config();
    let mut http = HttpConfig::new("127.0.0.1:0".parse().unwrap());
    tune(&mut http);
    config.http = Some(http);
    Hub::start(config).await.expect("hub starts")
}

fn token() -> String {
    http_token(&Secret::from_token(common::TOKEN))
}

/// A plain HTTP/1.1 exchange on a fresh connection (what curl does).
struct Http {
    addr: SocketAddr,
    token: Option<String>,
    host: Option<String>,
    origin: Option<String>,
}

struct Answer {
    status: u16,
    body: String,
}

impl Answer {
    fn json(&self) -> Result<Value> {
        serde_json::from_str(&self.body).with_context(|| format!("not JSON: {}", self.body))
    }
}

impl Http {
    fn new(hub: &HubHandle) -> Http {
        Http {
            addr: hub.http_addr().expect("gateway runs"),
            token: Some(token()),
            host: None,
            origin: None,
        }
    }

    async fn raw(&self, method: &str, path: &str, body: &[u8]) -> Result<Answer> {
        let mut s = TcpStream::connect(self.addr).await?;
        let host = self.host.clone().unwrap_or_else(|| self.addr.to_string());
        let mut head = format!(
            "{method} {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\nContent-Length: {}\r\n",
            body.len()
        );
        if !body.is_empty() {
            head.push_str("Content-Type: application/json\r\n");
        }
        if let Some(t) = &self.token {
            head.push_str(&format!("Authorization: Bearer {t}\r\n"));
        }
        if let Some(o) = &self.origin {
            head.push_str(&format!("Origin: {o}\r\n"));
        }
        head.push_str("\r\n");
        s.write_all(head.as_bytes()).await?;
        // A refused body may close the connection early; the answer counts.
        let _ = s.write_all(body).await;
        let mut raw = Vec::new();
        tokio::time::timeout(WAIT, s.read_to_end(&mut raw))
            .await
            .context("http answer timed out")??;
        parse_answer(&raw)
    }

    async fn post(&self, path: &str, body: Value) -> Result<Answer> {
        self.raw("POST", path, body.to_string().as_bytes()).await
    }

    async fn get(&self, path: &str) -> Result<Answer> {
        self.raw("GET", path, b"").await
    }
}

fn parse_answer(raw: &[u8]) -> Result<Answer> {
    let text = String::from_utf8_lossy(raw);
    let (head, body) = text.split_once("\r\n\r\n").context("no header end")?;
    let status: u16 = head
        .split_whitespace()
        .nth(1)
        .context("no status")?
        .parse()?;
    let chunked = head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked");
    let body = if chunked {
        let mut out = String::new();
        let mut rest = body;
        loop {
            let (len, after) = rest.split_once("\r\n").context("bad chunk")?;
            let len = usize::from_str_radix(len.trim(), 16)?;
            if len == 0 {
                break;
            }
            out.push_str(&after[..len]);
            rest = &after[len + 2..];
        }
        out
    } else {
        body.to_owned()
    };
    Ok(Answer { status, body })
}

/// Polls until a message arrives (bounded).
async fn listen_one(http: &Http, client: &str) -> Result<Value> {
    for _ in 0..20 {
        let a = http
            .post(
                "/v1/listen",
                json!({ "client": client, "timeout_ms": 2000 }),
            )
            .await?;
        if a.status != 200 {
            bail!("listen failed: {} {}", a.status, a.body);
        }
        let v = a.json()?;
        if let Some(m) = v["messages"].as_array().and_then(|m| m.first()) {
            return Ok(m.clone());
        }
    }
    bail!("no message arrived")
}

/// Registers `client` over HTTP with a poll that returns at once.
async fn register(http: &Http, client: &str) -> Result<()> {
    let a = http
        .post("/v1/listen", json!({ "client": client, "timeout_ms": 0 }))
        .await?;
    if a.status != 200 {
        bail!("register failed: {} {}", a.status, a.body);
    }
    Ok(())
}

#[tokio::test]
async fn seed_flow_tcp_requests_an_http_listener() -> Result<()> {
    let hub = start_with(|_| {}).await;
    let http = Http::new(&hub);
    register(&http, "worker").await?;
    let mut asker = TestClient::connect(hub.local_addr(), "asker").await?;
    // The listener's poll is held, then the request arrives through it.
    let poll = {
        let http = Http::new(&hub);
        tokio::spawn(async move { listen_one(&http, "worker").await })
    };
    wait_metric(&http, "switchboard_http_polls_held", 1).await?;
    asker
        .send(proto::Request {
            id: 7,
            to: "worker".into(),
            timeout_ms: 5000,
            payload: "2+2".into(),
            method: "add".into(),
            ..Default::default()
        })
        .await?;
    let m = poll.await??;
    assert_eq!(m["kind"], "request");
    assert_eq!(m["from"], "asker");
    assert_eq!(m["method"], "add");
    assert_eq!(m["payload"], "2+2");
    let id = m["id"].as_u64().context("request id")?;
    let a = http
        .post(
            "/v1/reply",
            json!({ "client": "worker", "id": id, "payload": "4" }),
        )
        .await?;
    assert_eq!(a.status, 200, "{}", a.body);
    match asker.expect().await?.kind {
        Some(Kind::Reply(r)) => {
            assert_eq!(r.id, 7);
            assert_eq!(r.from, "worker");
            assert_eq!(&r.payload[..], b"4");
        }
        other => bail!("expected the reply, got {other:?}"),
    }
    hub.shutdown().await;
    Ok(())
}

#[tokio::test]
async fn seed_flow_http_requests_a_tcp_server_and_errors_map_to_statuses() -> Result<()> {
    let hub = start_with(|_| {}).await;
    let http = Http::new(&hub);
    let mut server = TestClient::connect(hub.local_addr(), "server").await?;
    let call = {
        let http = Http::new(&hub);
        tokio::spawn(async move {
            http.post(
                "/v1/request",
                json!({ "client": "web", "to": "server", "payload_b64": "AAEC", "timeout_ms": 5000 }),
            )
            .await
        })
    };
    let req = match server.expect().await?.kind {
        Some(Kind::Request(r)) => r,
        other => bail!("expected a request, got {other:?}"),
    };
    assert_eq!(req.from, "web");
    assert_eq!(&req.payload[..], &[0u8, 1, 2]);
    server
        .send(proto::Reply {
            id: req.id,
            to: req.from.clone(),
            payload: vec![0xff, 0xfe].into(),
            ..Default::default()
        })
        .await?;
    let a = call.await??;
    assert_eq!(a.status, 200, "{}", a.body);
    let v = a.json()?;
    assert_eq!(v["from"], "server");
    assert_eq!(v["payload_b64"], "//4=");

    // Unknown target: 404 at once.
    let a = http
        .post(
            "/v1/request",
            json!({ "client": "web", "to": "nobody", "payload": "x" }),
        )
        .await?;
    assert_eq!(a.status, 404, "{}", a.body);
    assert_eq!(a.json()?["error"], "no_such_client");
    let a = http
        .post(
            "/v1/send",
            json!({ "client": "web", "to": "nobody", "payload": "x" }),
        )
        .await?;
    assert_eq!(a.status, 404, "{}", a.body);

    // A target that never answers: 504 at the request's timeout.
    let started = std::time::Instant::now();
    let a = http
        .post(
            "/v1/request",
            json!({ "client": "web", "to": "server", "payload": "x", "timeout_ms": 200 }),
        )
        .await?;
    assert_eq!(a.status, 504, "{}", a.body);
    assert!(started.elapsed() < Duration::from_secs(5));
    hub.shutdown().await;
    Ok(())
}

#[tokio::test]
async fn http_to_http_and_tcp_to_tcp_request_reply() -> Result<()> {
    let hub = start_with(|_| {}).await;
    let http = Http::new(&hub);
    register(&http, "h-server").await?;
    let call = {
        let http = Http::new(&hub);
        tokio::spawn(async move {
            http.post(
                "/v1/request",
                json!({ "client": "h-client", "to": "h-server", "payload": "ping" }),
            )
            .await
        })
    };
    let m = listen_one(&http, "h-server").await?;
    assert_eq!(m["from"], "h-client");
    let a = http
        .post(
            "/v1/reply",
            json!({ "client": "h-server", "id": m["id"], "payload": "pong" }),
        )
        .await?;
    assert_eq!(a.status, 200);
    let a = call.await??;
    assert_eq!(a.status, 200, "{}", a.body);
    assert_eq!(a.json()?["payload"], "pong");

    // Replying to a request that does not exist says so.
    let a = http
        .post(
            "/v1/reply",
            json!({ "client": "h-server", "id": 999_999, "payload": "x" }),
        )
        .await?;
    assert_eq!(a.status, 404);

    let mut t1 = TestClient::connect(hub.local_addr(), "t1").await?;
    let mut t2 = TestClient::connect(hub.local_addr(), "t2").await?;
    t1.send(proto::Request {
        id: 1,
        to: "t2".into(),
        payload: "q".into(),
        ..Default::default()
    })
    .await?;
    let Some(Kind::Request(r)) = t2.expect().await?.kind else {
        bail!("t2 expected a request");
    };
    t2.send(proto::Reply {
        id: r.id,
        to: r.from,
        payload: "a".into(),
        ..Default::default()
    })
    .await?;
    assert!(matches!(t1.expect().await?.kind, Some(Kind::Reply(r)) if &r.payload[..] == b"a"));
    hub.shutdown().await;
    Ok(())
}

#[tokio::test]
async fn messages_between_polls_wait_in_order_and_http_clients_are_full_citizens() -> Result<()> {
    let hub = start_with(|_| {}).await;
    let http = Http::new(&hub);
    let mut watcher = TestClient::connect(hub.local_addr(), "watcher").await?;
    watcher
        .send(proto::PresenceWatch { id: 1, stop: false })
        .await?;
    assert!(matches!(
        watcher.expect().await?.kind,
        Some(Kind::ClientList(_))
    ));
    register(&http, "inbox").await?;
    match watcher.expect().await?.kind {
        Some(Kind::Presence(p)) => {
            let c = p.client.context("presence names the client")?;
            assert_eq!(c.client_id, "inbox");
            assert_eq!(c.transport, "http");
            assert_eq!(p.kind, proto::PresenceKind::Joined as i32);
        }
        other => bail!("expected presence, got {other:?}"),
    }
    let a = http
        .post(
            "/v1/subscribe",
            json!({ "client": "inbox", "pattern": "news.>" }),
        )
        .await?;
    assert_eq!(a.status, 200, "{}", a.body);

    // Nobody polls while these arrive.
    for i in 0..5 {
        watcher
            .send(proto::Direct {
                to: "inbox".into(),
                payload: format!("m{i}").into(),
                ..Default::default()
            })
            .await?;
    }
    watcher
        .send(proto::Publish {
            topic: "news.today".into(),
            payload: "headline".into(),
            ..Default::default()
        })
        .await?;
    watcher.sync().await?;
    let a = http
        .post(
            "/v1/listen",
            json!({ "client": "inbox", "timeout_ms": 1000 }),
        )
        .await?;
    let v = a.json()?;
    let msgs = v["messages"].as_array().context("messages")?;
    let got: Vec<&str> = msgs.iter().filter_map(|m| m["payload"].as_str()).collect();
    assert_eq!(got, ["m0", "m1", "m2", "m3", "m4", "headline"]);
    assert_eq!(msgs[5]["kind"], "deliver");
    assert_eq!(msgs[5]["topic"], "news.today");
    let seqs: Vec<u64> = msgs.iter().filter_map(|m| m["seq"].as_u64()).collect();
    assert!(seqs.windows(2).all(|w| w[0] < w[1]));

    // Acknowledged mode: messages stay until acknowledged.
    watcher
        .send(proto::Direct {
            to: "inbox".into(),
            payload: "kept".into(),
            ..Default::default()
        })
        .await?;
    watcher.sync().await?;
    let first = http
        .post(
            "/v1/listen",
            json!({ "client": "inbox", "ack": v["ack"], "timeout_ms": 1000 }),
        )
        .await?
        .json()?;
    assert_eq!(first["messages"][0]["payload"], "kept");
    let again = http
        .post(
            "/v1/listen",
            json!({ "client": "inbox", "ack": v["ack"], "timeout_ms": 0 }),
        )
        .await?
        .json()?;
    assert_eq!(
        again["messages"][0]["payload"], "kept",
        "not acknowledged yet"
    );
    let done = http
        .post(
            "/v1/listen",
            json!({ "client": "inbox", "ack": first["ack"], "timeout_ms": 0 }),
        )
        .await?
        .json()?;
    assert_eq!(done["messages"].as_array().map(Vec::len), Some(0));

    // Publish and key/value from HTTP reach TCP clients.
    watcher.subscribe(9, "alerts", "").await?;
    let a = http
        .post(
            "/v1/publish",
            json!({ "client": "inbox", "topic": "alerts", "payload": "fire" }),
        )
        .await?;
    assert_eq!(a.status, 200, "{}", a.body);
    let f = watcher
        .expect_where(|f| matches!(f.kind, Some(Kind::Deliver(_))))
        .await?;
    assert!(
        matches!(f.kind, Some(Kind::Deliver(d)) if d.from == "inbox" && &d.payload[..] == b"fire")
    );
    let a = http
        .post(
            "/v1/kv/set",
            json!({ "client": "inbox", "key": "login", "value": "tok" }),
        )
        .await?;
    assert_eq!(a.json()?["version"], 1);
    let a = http
        .post(
            "/v1/kv/set",
            json!({ "client": "inbox", "key": "login", "value": "x", "expect_version": 7 }),
        )
        .await?;
    assert_eq!(a.status, 409, "{}", a.body);
    let a = http
        .post("/v1/kv/get", json!({ "client": "inbox", "key": "login" }))
        .await?;
    let v = a.json()?;
    assert_eq!(
        (v["found"].as_bool(), v["value"].as_str()),
        (Some(true), Some("tok"))
    );

    let v = http.get("/v1/clients").await?.json()?;
    let list = v["clients"].as_array().context("clients")?;
    assert!(list
        .iter()
        .any(|c| c["client_id"] == "inbox" && c["transport"] == "http"));
    assert!(list
        .iter()
        .any(|c| c["client_id"] == "watcher" && c["transport"] == "tcp"));
    let v = http.get("/v1/status").await?.json()?;
    assert_eq!(v["clients"], 2);
    assert_eq!(v["subscriptions"], 2);
    let v = http.get("/v1/topics").await?.json()?;
    assert_eq!(
        v,
        json!({ "topics": [
            { "pattern": "alerts", "subscribers": 1 },
            { "pattern": "news.>", "subscribers": 1 },
        ] })
    );

    // Leaving deregisters at once.
    let a = http.post("/v1/leave", json!({ "client": "inbox" })).await?;
    assert_eq!(a.status, 200);
    let f = watcher
        .expect_where(|f| matches!(f.kind, Some(Kind::Presence(_))))
        .await?;
    assert!(
        matches!(f.kind, Some(Kind::Presence(p)) if p.kind == proto::PresenceKind::Left as i32)
    );
    hub.shutdown().await;
    Ok(())
}

/// A client that only long-polls sends the hub no frame; the gateway keeps
/// it alive for the router's keepalive while its poll is held.
#[tokio::test]
async fn a_client_that_only_long_polls_outlives_the_keepalive() -> Result<()> {
    let mut config = common::config();
    config.keepalive = Some(Duration::from_millis(100));
    config.http = Some(HttpConfig::new("127.0.0.1:0".parse().unwrap()));
    let hub = Hub::start(config).await?;
    let http = Http::new(&hub);
    register(&http, "patient").await?;
    // Held for 8 keepalive intervals (the router cuts after 3 silent ones).
    let a = http
        .post(
            "/v1/listen",
            json!({ "client": "patient", "timeout_ms": 800 }),
        )
        .await?;
    assert_eq!(a.status, 200, "{}", a.body);
    assert_eq!(a.json()?["messages"], json!([]), "{}", a.body);
    // Still registered: a message sent now waits for its next poll.
    let mut sender = TestClient::connect(hub.local_addr(), "sender").await?;
    sender
        .send(proto::Direct {
            id: 1,
            to: "patient".into(),
            payload: "still there?".into(),
            ..Default::default()
        })
        .await?;
    match sender.expect().await?.kind {
        Some(Kind::Ok(ok)) if ok.id == 1 => {}
        other => bail!("the direct message was not taken: {other:?}"),
    }
    let m = listen_one(&http, "patient").await?;
    assert_eq!(m["kind"], "direct", "{m}");
    hub.shutdown().await;
    Ok(())
}

#[tokio::test]
async fn idle_http_clients_are_deregistered() -> Result<()> {
    let hub = start_with(|h| h.idle_timeout = Duration::from_millis(300)).await;
    let http = Http::new(&hub);
    let mut watcher = TestClient::connect(hub.local_addr(), "watcher").await?;
    watcher
        .send(proto::PresenceWatch { id: 1, stop: false })
        .await?;
    watcher.expect().await?;
    register(&http, "sleepy").await?;
    let started = std::time::Instant::now();
    let mut left = None;
    for _ in 0..10 {
        if let Some(Kind::Presence(p)) = watcher.expect().await?.kind {
            if p.kind == proto::PresenceKind::Left as i32 {
                left = Some(p);
                break;
            }
        }
    }
    let p = left.context("the idle client left")?;
    assert_eq!(p.reason, "idle");
    assert!(started.elapsed() >= Duration::from_millis(250));
    // Coming back registers it again.
    register(&http, "sleepy").await?;
    hub.shutdown().await;
    Ok(())
}

#[tokio::test]
async fn hostile_http_input_is_refused_with_clear_statuses() -> Result<()> {
    let hub = start_with(|h| {
        h.max_body = 64 * 1024;
        h.max_polls_per_client = 2;
        h.poll_timeout = Duration::from_millis(400);
    })
    .await;
    let http = Http::new(&hub);

    let a = http.raw("POST", "/v1/listen", b"{not json").await?;
    assert_eq!(a.status, 400);
    assert_eq!(a.json()?["error"], "invalid_argument");
    let a = http
        .post("/v1/send", json!({ "client": "a", "to": "b", "bogus": 1 }))
        .await?;
    assert_eq!(a.status, 400, "unknown fields are refused");
    let a = http
        .post(
            "/v1/send",
            json!({ "client": "a", "to": "b", "payload": "x", "payload_b64": "eA==" }),
        )
        .await?;
    assert_eq!(a.status, 400);
    let a = http
        .post(
            "/v1/send",
            json!({ "client": "a", "to": "b", "payload_b64": "***" }),
        )
        .await?;
    assert_eq!(a.status, 400);
    let a = http.post("/v1/listen", json!({ "client": "" })).await?;
    assert_eq!(a.status, 400, "empty client id");

    let huge = json!({ "client": "a", "to": "b", "payload": "x".repeat(200 * 1024) });
    let a = http.post("/v1/send", huge).await?;
    assert_eq!(a.status, 413, "{}", a.body);

    let mut anonymous = Http::new(&hub);
    anonymous.token = None;
    assert_eq!(anonymous.get("/v1/status").await?.status, 401);
    anonymous.token = Some("0".repeat(64));
    assert_eq!(anonymous.get("/v1/status").await?.status, 401);
    assert_eq!(anonymous.get("/metrics").await?.status, 401);
    // Liveness and the document need no token.
    assert_eq!(anonymous.get("/healthz").await?.status, 200);
    assert_eq!(anonymous.get("/openapi.json").await?.status, 200);

    let mut rebinding = Http::new(&hub);
    rebinding.host = Some("attacker.example:80".into());
    assert_eq!(rebinding.get("/v1/status").await?.status, 403);
    assert_eq!(rebinding.get("/").await?.status, 403);
    let mut cross = Http::new(&hub);
    cross.origin = Some("http://attacker.example".into());
    assert_eq!(cross.get("/v1/status").await?.status, 403);
    let mut local = Http::new(&hub);
    local.host = Some(format!("localhost:{}", hub.http_addr().unwrap().port()));
    local.origin = Some("http://127.0.0.1:1234".into());
    assert_eq!(local.get("/v1/status").await?.status, 200);

    // Two held polls are allowed for one client, a third is refused.
    // (Held long enough that neither ends by itself on a slow machine
    // before the third comes; messages end them.)
    register(&http, "p").await?;
    let held: Vec<_> = (0..2)
        .map(|_| {
            let http = Http::new(&hub);
            tokio::spawn(async move {
                http.post(
                    "/v1/listen",
                    json!({ "client": "p", "timeout_ms": WAIT.as_millis() as u64 }),
                )
                .await
            })
        })
        .collect();
    wait_metric(&http, "switchboard_http_polls_held", 2).await?;
    let a = http
        .post("/v1/listen", json!({ "client": "p", "timeout_ms": 10 }))
        .await?;
    assert_eq!(a.status, 429, "{}", a.body);
    let mut waker = TestClient::connect(hub.local_addr(), "waker").await?;
    // One message per held poll, the second once the first poll ended.
    for still_held in [1, 0] {
        waker
            .send(proto::Direct {
                to: "p".into(),
                payload: "wake".into(),
                ..Default::default()
            })
            .await?;
        wait_metric(&http, "switchboard_http_polls_held", still_held).await?;
    }
    for h in held {
        assert_eq!(h.await??.status, 200);
    }

    // A poller that disconnects mid-poll leaks nothing: its slot comes back
    // by the poll timeout at the latest.
    {
        let mut s = TcpStream::connect(http.addr).await?;
        let body = json!({ "client": "p" }).to_string();
        let req = format!(
            "POST /v1/listen HTTP/1.1\r\nHost: {}\r\nAuthorization: Bearer {}\r\nContent-Length: {}\r\n\r\n{body}",
            http.addr,
            token(),
            body.len()
        );
        s.write_all(req.as_bytes()).await?;
        wait_metric(&http, "switchboard_http_polls_held", 1).await?;
    }
    wait_metric(&http, "switchboard_http_polls_held", 0).await?;
    let a = http
        .post("/v1/listen", json!({ "client": "p", "timeout_ms": 10 }))
        .await?;
    assert_eq!(a.status, 200);
    hub.shutdown().await;
    Ok(())
}

async fn metric(http: &Http, name: &str) -> Result<u64> {
    let text = http.get("/metrics").await?.body;
    let line = text
        .lines()
        .find(|l| l.starts_with(name) && l[name.len()..].starts_with(' '))
        .with_context(|| format!("no metric {name}"))?;
    Ok(line[name.len() + 1..].trim().parse()?)
}

/// Waits until metric `name` shows `want`, at most [`WAIT`].
async fn wait_metric(http: &Http, name: &str, want: u64) -> Result<()> {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let last = metric(http, name).await?;
        if last == want {
            return Ok(());
        }
        if tokio::time::Instant::now() >= deadline {
            bail!("{name} stayed at {last}, wanted {want}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn metrics_parse_with_one_family_per_quantity_and_base_units() -> Result<()> {
    let hub = start_with(|_| {}).await;
    let http = Http::new(&hub);
    let mut a = TestClient::connect(hub.local_addr(), "a").await?;
    let mut b = TestClient::connect(hub.local_addr(), "b").await?;
    register(&http, "h").await?;
    a.send(proto::Request {
        id: 1,
        to: "b".into(),
        payload: "x".into(),
        ..Default::default()
    })
    .await?;
    let Some(Kind::Request(r)) = b.expect().await?.kind else {
        bail!("b expected a request")
    };
    b.send(proto::Reply {
        id: r.id,
        to: r.from,
        ..Default::default()
    })
    .await?;
    a.expect().await?;
    let res = http.get("/metrics").await?;
    assert_eq!(res.status, 200);
    let text = res.body;
    let lines = text.lines().map(|l| Ok(l.to_string()));
    let scrape = prometheus_parse::Scrape::parse(lines).context("exposition parses")?;
    let value = |name: &str, labels: &[(&str, &str)]| -> Option<f64> {
        scrape.samples.iter().find_map(|s| {
            let matches = s.metric == name
                && labels
                    .iter()
                    .all(|(k, v)| s.labels.get(k).is_some_and(|x| x == *v));
            match (&s.value, matches) {
                (prometheus_parse::Value::Counter(v), true)
                | (prometheus_parse::Value::Gauge(v), true)
                | (prometheus_parse::Value::Untyped(v), true) => Some(*v),
                (prometheus_parse::Value::Histogram(h), true) => h
                    .iter()
                    .find(|b| b.less_than == f64::INFINITY)
                    .map(|b| b.count),
                _ => None,
            }
        })
    };
    // One family per quantity, with labels.
    assert_eq!(
        value("switchboard_clients", &[("transport", "tcp")]),
        Some(2.0)
    );
    assert_eq!(
        value("switchboard_clients", &[("transport", "http")]),
        Some(1.0)
    );
    let requests = [("kind", "request")];
    assert_eq!(
        value("switchboard_frames_received_total", &requests),
        Some(1.0)
    );
    let replies = [("kind", "reply")];
    assert_eq!(
        value("switchboard_frames_received_total", &replies),
        Some(1.0)
    );
    assert!(value("switchboard_received_bytes_total", &requests).is_some_and(|b| b > 0.0));
    assert!(value("switchboard_sent_bytes_total", &replies).is_some_and(|b| b > 0.0));
    assert_eq!(value("switchboard_request_latency_seconds", &[]), Some(1.0));
    let version = [("version", env!("CARGO_PKG_VERSION"))];
    assert_eq!(value("switchboard_build_info", &version), Some(1.0));
    assert!(
        value("switchboard_http_responses_total", &[("class", "2xx")]).is_some_and(|n| n >= 1.0)
    );
    // The process's own figures, in base units.
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_secs_f64();
    let started = value("process_start_time_seconds", &[]).context("start time")?;
    assert!(started > now - 3600.0 && started <= now + 1.0, "{started}");
    if cfg!(target_os = "linux") {
        assert!(value("process_resident_memory_bytes", &[]).is_some_and(|b| b > 1e6));
        assert!(value("process_cpu_seconds_total", &[]).is_some());
        assert!(value("process_open_fds", &[]).is_some_and(|n| n >= 3.0));
    }
    // Types as declared, and the conventions: counters end in _total,
    // nothing left of the old near-duplicate names.
    let mut types = std::collections::BTreeMap::new();
    for line in text.lines().filter_map(|l| l.strip_prefix("# TYPE ")) {
        let (name, kind) = line.split_once(' ').context("TYPE line")?;
        assert!(types.insert(name, kind).is_none(), "{name} declared twice");
    }
    for (name, kind) in &types {
        assert_eq!(
            kind.ends_with("counter"),
            name.ends_with("_total"),
            "{name} {kind}"
        );
    }
    for (name, kind) in [
        ("switchboard_clients", "gauge"),
        ("switchboard_build_info", "gauge"),
        ("switchboard_frames_sent_total", "counter"),
        ("switchboard_dropped_deliveries_total", "counter"),
        ("switchboard_request_latency_seconds", "histogram"),
        ("process_start_time_seconds", "gauge"),
    ] {
        assert_eq!(types.get(name), Some(&kind), "{name}");
    }
    for gone in [
        "switchboard_clients_tcp",
        "switchboard_messages_received_total",
        "switchboard_messages_in_total",
        "switchboard_uptime_seconds",
    ] {
        assert!(!types.contains_key(gone), "{gone} is still there");
    }
    // Every sample belongs to a declared family.
    for s in &scrape.samples {
        let family = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|x| s.metric.strip_suffix(x).filter(|f| types.contains_key(f)))
            .unwrap_or(&s.metric);
        assert!(types.contains_key(family), "undeclared {}", s.metric);
    }
    hub.shutdown().await;
    Ok(())
}

#[tokio::test]
async fn openapi_document_lists_exactly_the_served_routes() -> Result<()> {
    let doc: Value = serde_json::from_str(switchboard_hub::gateway::openapi())?;
    assert!(doc["openapi"].as_str().is_some_and(|v| v.starts_with("3.")));
    let mut documented: Vec<(String, String)> = Vec::new();
    for (path, item) in doc["paths"].as_object().context("paths")? {
        for method in item.as_object().context("path item")?.keys() {
            documented.push((method.clone(), path.clone()));
        }
    }
    documented.sort();
    let mut served: Vec<(String, String)> = switchboard_hub::gateway::routes()
        .iter()
        .map(|(m, p)| (m.to_string(), p.to_string()))
        .collect();
    served.sort();
    assert_eq!(documented, served);

    // And every listed route is really served (none answers 404/405).
    let hub = start_with(|_| {}).await;
    let http = Http::new(&hub);
    let served = http.get("/openapi.json").await?;
    assert_eq!(serde_json::from_str::<Value>(&served.body)?, doc);
    for (method, path) in switchboard_hub::gateway::routes() {
        let a = match *method {
            "get" => http.get(path).await?,
            _ => http.raw("POST", path, b"{}").await?,
        };
        assert!(
            a.status != 404 && a.status != 405,
            "{method} {path} answered {}",
            a.status
        );
    }
    hub.shutdown().await;
    Ok(())
}

#[tokio::test]
async fn an_id_taken_over_by_tcp_and_back() -> Result<()> {
    let hub = start_with(|_| {}).await;
    let http = Http::new(&hub);
    register(&http, "dual").await?;
    let poll = {
        let http = Http::new(&hub);
        tokio::spawn(async move {
            http.post(
                "/v1/listen",
                json!({ "client": "dual", "timeout_ms": 5000 }),
            )
            .await
        })
    };
    wait_metric(&http, "switchboard_http_polls_held", 1).await?;
    let mut tcp = TestClient::connect(hub.local_addr(), "dual").await?;
    // The held poll ends: its client was taken over.
    let a = poll.await??;
    assert_eq!(a.status, 410, "{}", a.body);
    // An HTTP call takes the id back; the TCP connection hears why.
    register(&http, "dual").await?;
    let frames = tcp.expect_closed().await?;
    assert!(frames.iter().any(|f| matches!(&f.kind,
        Some(Kind::Goodbye(g)) if g.code == ErrorCode::IdTakenOver as i32)));
    let _ = Frame::default();
    hub.shutdown().await;
    Ok(())
}

/// Bodies the gateway refuses, one per kind of refusal, with the route.
fn refused_bodies() -> Vec<(&'static str, Vec<u8>)> {
    let long = "x".repeat(100_000);
    vec![
        ("/v1/listen", b"{not json".to_vec()),
        ("/v1/listen", br#"{"client": ""}"#.to_vec()),
        ("/v1/listen", br#"{"client": "a\u0007"}"#.to_vec()),
        (
            "/v1/send",
            br#"{"client": "a", "to": "b", "bogus": 1}"#.to_vec(),
        ),
        (
            "/v1/send",
            br#"{"client": "a", "to": "b", "payload": "x", "payload_b64": "eA=="}"#.to_vec(),
        ),
        ("/v1/request", br#"{"client": "a", "to": 5}"#.to_vec()),
        ("/v1/reply", br#"{"client": "a", "id": 3}"#.to_vec()),
        (
            "/v1/broadcast",
            br#"{"client": "a", "payload_b64": "***"}"#.to_vec(),
        ),
        ("/v1/publish", br#"{"client": "a"}"#.to_vec()),
        (
            "/v1/subscribe",
            br#"{"client": "a", "pattern": null}"#.to_vec(),
        ),
        (
            "/v1/unsubscribe",
            br#"{"client": "a", "sub_id": -1}"#.to_vec(),
        ),
        ("/v1/kv/get", br#"[1, 2]"#.to_vec()),
        (
            "/v1/kv/set",
            br#"{"client": "a", "key": "k", "value_b64": "%%"}"#.to_vec(),
        ),
        // Found by review: serde quotes unknown field names and mistyped
        // strings whole, so a 100 kB name came back in a 100 kB error
        // message (and `leave` echoed the id it did not find, below).
        (
            "/v1/send",
            format!(r#"{{"client": "a", "to": "b", "{long}": 1}}"#).into_bytes(),
        ),
        (
            "/v1/kv/get",
            format!(r#"{{"client": "a", "key": 1, "extra": "{long}"}}"#).into_bytes(),
        ),
        (
            "/v1/listen",
            format!(r#"{{"client": 1, "x": "{long}"}}"#).into_bytes(),
        ),
        (
            "/v1/subscribe",
            format!(r#"{{"client": "a", "pattern": ["{long}"]}}"#).into_bytes(),
        ),
        // Headers: a bad key, too many, bad base64, not an object.
        (
            "/v1/send",
            br#"{"client": "a", "to": "b", "headers": {"": "x"}}"#.to_vec(),
        ),
        (
            "/v1/publish",
            format!(
                r#"{{"client": "a", "topic": "t", "headers": {{"k": [{}]}}}}"#,
                vec![r#""v""#; 65].join(",")
            )
            .into_bytes(),
        ),
        (
            "/v1/broadcast",
            br#"{"client": "a", "headers_b64": {"k": "***"}}"#.to_vec(),
        ),
        (
            "/v1/reply",
            br#"{"client": "a", "id": 3, "to": "b", "headers": ["k", "v"]}"#.to_vec(),
        ),
        (
            "/v1/request",
            br#"{"client": "a", "to": "b", "headers": {"k": 1}}"#.to_vec(),
        ),
        // A request names a client or a service, exactly one.
        (
            "/v1/request",
            br#"{"client": "a", "to": "b", "service": "s"}"#.to_vec(),
        ),
        ("/v1/request", br#"{"client": "a"}"#.to_vec()),
    ]
}

/// The fuzz target `gateway_body` drives `check_body`; here the real
/// handlers give the same status and error code for the same bodies, and
/// every message stays short whatever the body quotes.
#[tokio::test]
async fn check_body_answers_what_the_handlers_answer_and_messages_stay_short() -> Result<()> {
    let hub = start_with(|_| {}).await;
    let http = Http::new(&hub);
    let cfg = HttpConfig::new("127.0.0.1:0".parse()?);
    for (route, body) in refused_bodies() {
        let shown = String::from_utf8_lossy(&body[..body.len().min(60)]).into_owned();
        let (status, code, message) = switchboard_hub::gateway::check_body(route, &body, &cfg)
            .err()
            .with_context(|| format!("{route} {shown} is refused"))?;
        let a = http.raw("POST", route, &body).await?;
        let v = a.json()?;
        assert_eq!(
            (a.status, v["error"].as_str()),
            (status, Some(code)),
            "{route} {shown}: {}",
            a.body
        );
        assert_eq!(
            v["message"].as_str(),
            Some(message.as_str()),
            "{route} {shown}"
        );
        assert!(
            message.chars().count() <= 512,
            "{route} {shown}: a {}-character message",
            message.chars().count()
        );
    }
    let long = "x".repeat(100_000);
    let a = http.post("/v1/leave", json!({ "client": long })).await?;
    assert_eq!(a.status, 404, "{}", a.body);
    let message = a.json()?["message"].as_str().unwrap_or_default().to_owned();
    assert!(message.chars().count() <= 512, "{message}");
    // An accepted body: the frame the handler would send.
    let ok = switchboard_hub::gateway::check_body(
        "/v1/request",
        br#"{"client": "a", "to": "b", "timeout_ms": 99999999999, "payload_b64": "AAE="}"#,
        &cfg,
    )
    .map_err(|e| anyhow::anyhow!("{e:?}"))?;
    assert_eq!(ok.client, "a");
    assert!(ok.awaits_answer);
    match &ok.frames[..] {
        [Frame {
            kind: Some(Kind::Request(r)),
            ..
        }] => {
            assert_eq!((r.to.as_str(), &r.payload[..]), ("b", &[0u8, 1][..]));
            assert_eq!(
                u128::from(r.timeout_ms),
                cfg.max_request_timeout.as_millis()
            );
        }
        other => bail!("expected one request, got {other:?}"),
    }
    hub.shutdown().await;
    Ok(())
}

/// Polls `client` (no wait) until `total` messages have been either
/// returned or reported dropped; returns the payloads and the drop count.
/// Each poll returns at most `cap` messages.
async fn drain_mailbox(
    http: &Http,
    client: &str,
    total: u64,
    cap: usize,
) -> Result<(Vec<String>, u64)> {
    let (mut got, mut dropped) = (Vec::new(), 0u64);
    for _ in 0..200 {
        if got.len() as u64 + dropped >= total {
            return Ok((got, dropped));
        }
        let a = http
            .post(
                "/v1/listen",
                json!({ "client": client, "timeout_ms": 200, "max": 1000 }),
            )
            .await?;
        assert_eq!(a.status, 200, "{}", a.body);
        let v = a.json()?;
        let messages = v["messages"].as_array().cloned().unwrap_or_default();
        assert!(
            messages.len() <= cap,
            "a poll returned {} messages",
            messages.len()
        );
        dropped += v["dropped"].as_u64().unwrap_or(0);
        for m in messages {
            got.push(m["payload"].as_str().unwrap_or_default().to_owned());
        }
    }
    bail!(
        "{} of {total} messages accounted for",
        got.len() as u64 + dropped
    )
}

/// An HTTP client that never polls holds a bounded mailbox: past its
/// message or byte limit the oldest pub/sub deliveries are dropped (and
/// counted on the next poll), and once only direct messages wait it is
/// disconnected as a slow consumer.
#[tokio::test]
async fn an_http_client_that_never_polls_holds_a_bounded_mailbox() -> Result<()> {
    let hub = start_with(|h| {
        h.mailbox_messages = 8;
        h.mailbox_bytes = 40 * 1024;
    })
    .await;
    let http = Http::new(&hub);
    for topic in ["small", "big"] {
        let a = http
            .post(
                "/v1/subscribe",
                json!({ "client": "lazy", "pattern": topic }),
            )
            .await?;
        assert_eq!(a.status, 200, "{}", a.body);
    }
    let mut publisher = TestClient::connect(hub.local_addr(), "publisher").await?;

    // Message limit: 100 small deliveries, at most 8 held.
    for i in 0..100u32 {
        publisher
            .send(Frame::publish("small", i.to_string()))
            .await?;
    }
    publisher.sync().await?;
    wait_metric(&http, "switchboard_queue_depth", 0).await?;
    let (got, dropped) = drain_mailbox(&http, "lazy", 100, 8).await?;
    assert!(dropped >= 100 - 16, "only {dropped} dropped");
    let seqs: Vec<u32> = got.iter().map(|p| p.parse().unwrap()).collect();
    assert!(seqs.windows(2).all(|w| w[0] < w[1]), "{seqs:?}");
    assert_eq!(seqs.last(), Some(&99), "the newest is kept");

    // Byte limit: 20 deliveries of 10 KiB, at most 4 held (40 KiB).
    for i in 0..20u32 {
        let mut payload = format!("{i:02}");
        payload.push_str(&"x".repeat(10 * 1024 - 2));
        publisher.send(Frame::publish("big", payload)).await?;
    }
    publisher.sync().await?;
    wait_metric(&http, "switchboard_queue_depth", 0).await?;
    let (got, dropped) = drain_mailbox(&http, "lazy", 20, 4).await?;
    assert!(dropped >= 20 - 8, "only {dropped} dropped");
    assert_eq!(got.last().map(|p| &p[..2]), Some("19"));

    // Direct messages are never dropped: with 8 waiting and a 9th coming,
    // the client is disconnected, and its state goes with it.
    for i in 0..12u32 {
        publisher.send(Frame::direct("lazy", i.to_string())).await?;
    }
    wait_metric(&http, "switchboard_clients{transport=\"http\"}", 0).await?;
    let a = http
        .post("/v1/listen", json!({ "client": "lazy", "timeout_ms": 0 }))
        .await?;
    assert_eq!(a.status, 200, "{}", a.body);
    assert_eq!(a.json()?["messages"], json!([]), "a fresh registration");
    hub.shutdown().await;
    Ok(())
}

/// Two requesters may use the same request id (ids are per connection). A
/// reply without `to` must not guess: the gateway refuses it (409, give
/// `to`) rather than send one requester's answer to the other; with `to`
/// each gets its own.
#[tokio::test]
async fn a_reply_without_to_never_goes_to_the_wrong_requester() -> Result<()> {
    let hub = start_with(|_| {}).await;
    let http = Http::new(&hub);
    register(&http, "worker").await?;
    let mut askers = Vec::new();
    for name in ["alice", "bob"] {
        let mut c = TestClient::connect(hub.local_addr(), name).await?;
        c.send(proto::Request {
            id: 7,
            to: "worker".into(),
            timeout_ms: 10_000,
            payload: name.into(),
            ..Default::default()
        })
        .await?;
        askers.push(c);
    }
    let mut from = Vec::new();
    while from.len() < 2 {
        let m = listen_one(&http, "worker").await?;
        assert_eq!(
            (m["kind"].as_str(), m["id"].as_u64()),
            (Some("request"), Some(7))
        );
        from.push(m["from"].as_str().unwrap_or_default().to_owned());
    }
    from.sort();
    assert_eq!(from, ["alice", "bob"]);
    let a = http
        .post(
            "/v1/reply",
            json!({ "client": "worker", "id": 7, "payload": "?" }),
        )
        .await?;
    assert_eq!(a.status, 409, "{}", a.body);
    assert!(a.body.contains("'to'"), "{}", a.body);
    for (c, name) in askers.iter_mut().zip(["alice", "bob"]) {
        let a = http
            .post(
                "/v1/reply",
                json!({ "client": "worker", "id": 7, "to": name, "payload": format!("for {name}") }),
            )
            .await?;
        assert_eq!(a.status, 200, "{}", a.body);
        match c.expect().await?.kind {
            Some(Kind::Reply(r)) => {
                assert_eq!(
                    (r.id, r.payload.as_ref()),
                    (7, format!("for {name}").as_bytes())
                )
            }
            other => bail!("{name} expected its reply, got {other:?}"),
        }
    }
    hub.shutdown().await;
    Ok(())
}

#[tokio::test]
async fn json_headers_travel_both_ways() -> Result<()> {
    let hub = start_with(|_| {}).await;
    let http = Http::new(&hub);
    let mut tcp = TestClient::connect(hub.local_addr(), "tcp").await?;
    tcp.subscribe(1, "t.>", "").await?;
    let header = |k: &str, v: &[u8]| proto::Header {
        key: k.into(),
        value: v.to_vec().into(),
    };
    // In document order: `headers` (a repeated key as an array), then
    // `headers_b64`.
    let sent = vec![
        header("trace", b"t1"),
        header("multi", b"a"),
        header("multi", b"b"),
        header("bin", &[0xff, 0]),
    ];
    let fields =
        r#""headers": {"trace": "t1", "multi": ["a", "b"]}, "headers_b64": {"bin": "/wA="}"#;
    let a = http
        .raw(
            "POST",
            "/v1/send",
            format!(r#"{{"client": "web", "to": "tcp", "payload": "d", {fields}}}"#).as_bytes(),
        )
        .await?;
    assert_eq!(a.status, 200, "{}", a.body);
    match tcp.expect().await.context("direct")?.kind {
        Some(Kind::Direct(d)) => assert_eq!(d.headers, sent),
        other => bail!("expected a direct message, got {other:?}"),
    }
    for (route, body) in [
        ("/v1/publish", r#""topic": "t.x""#),
        ("/v1/broadcast", r#""payload": "b""#),
    ] {
        let a = http
            .raw(
                "POST",
                route,
                format!(r#"{{"client": "web", {body}, {fields}}}"#).as_bytes(),
            )
            .await?;
        assert_eq!(a.status, 200, "{route}: {}", a.body);
        let got = match tcp.expect().await.context(route)?.kind {
            Some(Kind::Deliver(d)) => d.headers,
            Some(Kind::Broadcast(b)) => b.headers,
            other => bail!("{route}: got {other:?}"),
        };
        assert_eq!(got, sent, "{route}");
    }

    // A request with headers, answered with headers: the HTTP response
    // carries them, in the same JSON form.
    let call = {
        let http = Http::new(&hub);
        let body = format!(r#"{{"client": "web", "to": "tcp", "timeout_ms": 5000, {fields}}}"#);
        tokio::spawn(async move { http.raw("POST", "/v1/request", body.as_bytes()).await })
    };
    let req = match tcp.expect().await.context("request")?.kind {
        Some(Kind::Request(r)) => r,
        other => bail!("expected a request, got {other:?}"),
    };
    assert_eq!(req.headers, sent);
    tcp.send(proto::Reply {
        id: req.id,
        to: req.from,
        payload: "r".into(),
        headers: vec![header("status", b"ok"), header("raw", &[0xff])],
        ..Default::default()
    })
    .await?;
    let a = call.await??;
    assert_eq!(a.status, 200, "{}", a.body);
    let v = a.json()?;
    assert_eq!(v["headers"], json!({ "status": "ok" }));
    assert_eq!(v["headers_b64"], json!({ "raw": "/w==" }));

    // What reaches an HTTP client carries them too; its reply sends some.
    tcp.send(proto::Direct {
        id: 0,
        to: "web".into(),
        headers: sent.clone(),
        ..Default::default()
    })
    .await?;
    let m = listen_one(&http, "web").await?;
    assert_eq!(m["kind"], "direct");
    assert_eq!(m["headers"], json!({ "trace": "t1", "multi": ["a", "b"] }));
    assert_eq!(m["headers_b64"], json!({ "bin": "/wA=" }));
    tcp.send(proto::Request {
        id: 9,
        to: "web".into(),
        headers: vec![header("h", b"1")],
        ..Default::default()
    })
    .await?;
    let m = listen_one(&http, "web").await?;
    assert_eq!(m["headers"], json!({ "h": "1" }));
    let a = http
        .post(
            "/v1/reply",
            json!({ "client": "web", "id": 9, "payload": "x", "headers": { "done": "yes" } }),
        )
        .await?;
    assert_eq!(a.status, 200, "{}", a.body);
    match tcp.expect().await.context("reply")?.kind {
        Some(Kind::Reply(r)) => assert_eq!(r.headers, [header("done", b"yes")]),
        other => bail!("expected the reply, got {other:?}"),
    }

    // Out of bounds: refused before anything is sent.
    let a = http
        .post(
            "/v1/send",
            json!({ "client": "web", "to": "tcp", "headers": { "bad\nkey": "x" } }),
        )
        .await?;
    assert_eq!(a.status, 400, "{}", a.body);
    assert_eq!(a.json()?["error"], "invalid_argument");
    let many: serde_json::Map<String, Value> =
        (0..65).map(|i| (format!("k{i}"), json!("v"))).collect();
    let a = http
        .post(
            "/v1/send",
            json!({ "client": "web", "to": "tcp", "headers": many }),
        )
        .await?;
    assert_eq!(a.status, 400, "{}", a.body);
    assert_eq!(a.json()?["error"], "limit_exceeded");
    // Nothing reached tcp: the next frame is the answer to its ping.
    tcp.send(proto::Ping { nonce: 77 }).await?;
    assert_eq!(tcp.expect().await?, Frame::from(proto::Pong { nonce: 77 }));
    hub.shutdown().await;
    Ok(())
}

#[tokio::test]
async fn service_requests_over_http() -> Result<()> {
    let hub = start_with(|_| {}).await;
    let http = Http::new(&hub);
    let a = http
        .post(
            "/v1/request",
            json!({ "client": "web", "service": "svc.echo", "payload": "x" }),
        )
        .await?;
    assert_eq!(a.status, 404, "{}", a.body);
    assert_eq!(a.json()?["error"], "no_responders");

    // A TCP responder.
    let mut resp = TestClient::connect(hub.local_addr(), "resp").await?;
    resp.send(proto::Subscribe {
        id: 1,
        sub_id: 7,
        pattern: "svc.>".into(),
        service: true,
        ..Default::default()
    })
    .await?;
    resp.expect().await?;
    let call = {
        let http = Http::new(&hub);
        tokio::spawn(async move {
            http.post(
                "/v1/request",
                json!({ "client": "web", "service": "svc.echo", "payload": "q", "timeout_ms": 5000 }),
            )
            .await
        })
    };
    let req = match resp.expect().await?.kind {
        Some(Kind::Request(r)) => r,
        other => bail!("expected a request, got {other:?}"),
    };
    assert_eq!(
        (
            req.to.as_str(),
            req.from.as_str(),
            req.service.as_str(),
            req.sub_id
        ),
        ("resp", "web", "svc.echo", 7)
    );
    resp.send(proto::Reply {
        id: req.id,
        to: req.from,
        payload: "a".into(),
        ..Default::default()
    })
    .await?;
    let a = call.await??;
    assert_eq!(a.status, 200, "{}", a.body);
    assert_eq!(a.json()?["from"], "resp");

    // An HTTP responder: a service subscription, the request in its
    // mailbox with the service and subscription, the reply by id.
    let a = http
        .post(
            "/v1/subscribe",
            json!({ "client": "h-resp", "pattern": "hsvc", "service": true }),
        )
        .await?;
    assert_eq!(a.status, 200, "{}", a.body);
    let sub_id = a.json()?["sub_id"].as_u64().context("sub id")?;
    let mut asker = TestClient::connect(hub.local_addr(), "asker").await?;
    asker
        .send(proto::Request {
            id: 3,
            service: "hsvc".into(),
            payload: "q".into(),
            ..Default::default()
        })
        .await?;
    let m = listen_one(&http, "h-resp").await?;
    assert_eq!(m["kind"], "request");
    assert_eq!(m["service"], "hsvc");
    assert_eq!(m["sub_id"], sub_id);
    let a = http
        .post(
            "/v1/reply",
            json!({ "client": "h-resp", "id": m["id"], "payload": "a" }),
        )
        .await?;
    assert_eq!(a.status, 200, "{}", a.body);
    assert!(matches!(asker.expect().await?.kind, Some(Kind::Reply(r)) if r.id == 3));
    wait_metric(&http, "switchboard_no_responders_total", 1).await?;
    hub.shutdown().await;
    Ok(())
}

#[tokio::test]
async fn a_client_not_listening_is_refused_with_409() -> Result<()> {
    let hub = start_with(|_| {}).await;
    let http = Http::new(&hub);
    let mut quiet = TestClient::connect_features(
        hub.local_addr(),
        "quiet",
        &Secret::from_token(common::TOKEN),
        &["listen"],
    )
    .await?;
    let features = &quiet.welcome.as_ref().context("welcomed")?.features;
    assert!(features.iter().any(|f| f == "listen"), "{features:?}");
    for route in ["/v1/send", "/v1/request"] {
        let a = http
            .post(
                route,
                json!({ "client": "web", "to": "quiet", "payload": "x" }),
            )
            .await?;
        assert_eq!(a.status, 409, "{route}: {}", a.body);
        let v = a.json()?;
        assert_eq!(v["error"], "not_listening", "{route}");
        assert!(
            v["message"].as_str().is_some_and(|m| m.contains("quiet")),
            "{route}: {v}"
        );
    }
    quiet
        .send(proto::Listen {
            id: 1,
            messages: true,
            requests: false,
        })
        .await?;
    assert_eq!(quiet.expect().await?, Frame::ok(1));
    let a = http
        .post(
            "/v1/send",
            json!({ "client": "web", "to": "quiet", "payload": "x" }),
        )
        .await?;
    assert_eq!(a.status, 200, "{}", a.body);
    assert!(matches!(quiet.expect().await?.kind, Some(Kind::Direct(_))));
    wait_metric(&http, "switchboard_not_listening_total", 2).await?;
    // HTTP clients take everything: a TCP client reaches one at once.
    register(&http, "web2").await?;
    quiet
        .send(proto::Direct {
            id: 2,
            to: "web2".into(),
            ..Default::default()
        })
        .await?;
    assert_eq!(quiet.expect().await?, Frame::ok(2));
    hub.shutdown().await;
    Ok(())
}

#[tokio::test]
async fn http_clients_delete_and_watch_keys() -> Result<()> {
    let hub = start_with(|_| {}).await;
    let http = Http::new(&hub);
    let set = |key: &str, value: &str| json!({ "client": "w", "key": key, "value": value });
    http.post("/v1/kv/set", set("cfg/old", "1")).await?;
    let a = http
        .post(
            "/v1/kv/watch",
            json!({ "client": "w", "key": "cfg/", "prefix": true }),
        )
        .await?;
    assert_eq!(a.status, 200, "{}", a.body);
    let watch_id = a.json()?["watch_id"].as_u64().context("watch_id")?;
    // The current value first, then each change, through listen.
    let m = listen_one(&http, "w").await?;
    assert_eq!(
        (m["kind"].as_str(), m["key"].as_str(), m["value"].as_str()),
        (Some("kv_update"), Some("cfg/old"), Some("1")),
        "{m}"
    );
    assert_eq!(m["watch_id"].as_u64(), Some(watch_id));
    let mut tcp = TestClient::connect(hub.local_addr(), "writer").await?;
    tcp.send(proto::KvSet {
        id: 1,
        key: "cfg/new".into(),
        value: "2".into(),
        expect_version: None,
    })
    .await?;
    tcp.expect().await?;
    let m = listen_one(&http, "w").await?;
    assert_eq!(
        (m["key"].as_str(), m["value"].as_str(), m["by"].as_str()),
        (Some("cfg/new"), Some("2"), Some("writer")),
        "{m}"
    );
    // Delete: a wrong version is refused, the right one deletes.
    let del = |v: u64| json!({ "client": "w", "key": "cfg/new", "expect_version": v });
    let version = m["version"].as_u64().context("version")?;
    let a = http.post("/v1/kv/delete", del(version + 5)).await?;
    assert_eq!(a.status, 409, "{}", a.body);
    let a = http.post("/v1/kv/delete", del(version)).await?;
    assert_eq!(a.status, 200, "{}", a.body);
    let v = a.json()?;
    assert_eq!(v["deleted"], true);
    assert!(v["version"].as_u64().is_some_and(|n| n > version), "{v}");
    let m = listen_one(&http, "w").await?;
    assert_eq!(
        (m["key"].as_str(), m["deleted"].as_bool()),
        (Some("cfg/new"), Some(true)),
        "{m}"
    );
    let a = http
        .post("/v1/kv/get", json!({ "client": "w", "key": "cfg/new" }))
        .await?;
    assert_eq!(a.json()?["found"], false);
    // After unwatch, changes no longer arrive.
    let a = http
        .post(
            "/v1/kv/unwatch",
            json!({ "client": "w", "watch_id": watch_id }),
        )
        .await?;
    assert_eq!(a.status, 200, "{}", a.body);
    assert_eq!(a.json()?["unwatched"], true);
    http.post("/v1/kv/set", set("cfg/later", "3")).await?;
    let a = http
        .post("/v1/listen", json!({ "client": "w", "timeout_ms": 300 }))
        .await?;
    assert_eq!(a.json()?["messages"], json!([]), "{}", a.body);
    // The three updates waited in the mailbox, each counted once.
    let waited = metric(&http, "switchboard_http_mailbox_delay_seconds_count").await?;
    assert_eq!(waited, 3);
    // Bad bodies are refused before anything reaches the hub.
    for (path, body) in [
        ("/v1/kv/delete", json!({ "client": "w" })),
        (
            "/v1/kv/watch",
            json!({ "client": "w", "key": "k", "extra": 1 }),
        ),
        ("/v1/kv/unwatch", json!({ "client": "w", "watch_id": "x" })),
    ] {
        assert_eq!(http.post(path, body).await?.status, 400, "{path}");
    }
    hub.shutdown().await;
    Ok(())
}

/// Every `$ref` in `v`, e.g. `#/components/schemas/Message`.
fn refs<'a>(v: &'a Value, out: &mut Vec<&'a str>) {
    match v {
        Value::Object(o) => {
            if let Some(r) = o.get("$ref").and_then(Value::as_str) {
                out.push(r);
            }
            o.values().for_each(|x| refs(x, out));
        }
        Value::Array(a) => a.iter().for_each(|x| refs(x, out)),
        _ => {}
    }
}

#[tokio::test]
async fn openapi_schemas_come_from_the_body_types() -> Result<()> {
    let doc: Value = serde_json::from_str(switchboard_hub::gateway::openapi())?;
    assert_eq!(doc["openapi"], "3.1.0");
    let schemas = doc["components"]["schemas"]
        .as_object()
        .context("schemas")?;
    let fields = |name: &str| -> Vec<String> {
        let mut f: Vec<String> = schemas[name]["properties"]
            .as_object()
            .map(|o| o.keys().cloned().collect())
            .unwrap_or_default();
        f.sort();
        f
    };
    // The bodies list exactly what their serde types read (flattened
    // payload and headers included), and refuse anything else.
    assert_eq!(
        fields("KvSetRequest"),
        ["client", "expect_version", "key", "value", "value_b64"]
    );
    assert_eq!(
        fields("SendRequest"),
        [
            "client",
            "headers",
            "headers_b64",
            "payload",
            "payload_b64",
            "to"
        ]
    );
    assert_eq!(fields("KvWatchRequest"), ["client", "key", "prefix"]);
    let mut bodies = 0;
    for item in doc["paths"].as_object().context("paths")?.values() {
        if let Some(body) =
            item["post"]["requestBody"]["content"]["application/json"]["schema"]["$ref"].as_str()
        {
            let name = body.rsplit('/').next().context("name")?;
            assert_eq!(schemas[name]["additionalProperties"], false, "{name}");
            assert!(
                schemas[name]["required"]
                    .as_array()
                    .is_some_and(|r| r.contains(&json!("client"))),
                "{name}"
            );
            bodies += 1;
        }
    }
    assert_eq!(bodies, 14);
    // Answers: what the handlers serialize.
    assert_eq!(fields("KvDeleted"), ["deleted", "key", "version"]);
    assert_eq!(fields("Error"), ["error", "message"]);
    // Every reference resolves.
    let mut all = Vec::new();
    refs(&doc, &mut all);
    assert!(all.len() > 50);
    for r in all {
        let path = r.strip_prefix("#/").context("local ref")?;
        let mut at = &doc;
        for part in path.split('/') {
            at = &at[part];
        }
        assert!(!at.is_null(), "{r} does not resolve");
    }

    // An integer field takes a whole number written as a float (JSON
    // Schema's integers, and schemathesis's).
    let hub = start_with(|_| {}).await;
    let http = Http::new(&hub);
    let a = http
        .post("/v1/subscribe", json!({ "client": "f", "pattern": "a.b" }))
        .await?;
    let sub_id = a.json()?["sub_id"].as_u64().context("sub_id")?;
    let body = format!(r#"{{"client": "f", "sub_id": {sub_id}.0}}"#);
    let a = http.raw("POST", "/v1/unsubscribe", body.as_bytes()).await?;
    assert_eq!(a.status, 200, "{}", a.body);
    let a = http
        .raw(
            "POST",
            "/v1/unsubscribe",
            br#"{"client": "f", "sub_id": 1.5}"#,
        )
        .await?;
    assert_eq!(a.status, 400, "{}", a.body);
    hub.shutdown().await;
    Ok(())
}
