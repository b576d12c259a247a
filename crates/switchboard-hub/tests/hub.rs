//! The hub over real loopback sockets: handshake, bad input, every routing
//! pattern, slow consumers, probes, hints, shutdown and many clients.

mod common;

use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use bytes::Bytes;
use common::*;
use switchboard_discovery::{verify_hub_proof, Secret};
use switchboard_hub::{Hub, Limits};
use switchboard_wire::proto::{self, frame::Kind};
use switchboard_wire::{ErrorCode, Frame, PROTOCOL_VERSION};
use tokio::io::AsyncWriteExt;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handshake_succeeds_and_welcome_describes_the_hub() -> Result<()> {
    let hub = start().await;
    let c = TestClient::connect(hub.local_addr(), "alice").await?;
    let w = c.welcome.clone().unwrap();
    assert_eq!(w.client_id, "alice");
    assert_eq!(w.max_frame as usize, Limits::default().max_frame);
    assert_eq!(w.epoch, 1);
    let identity = w.identity.unwrap();
    assert_eq!(identity, hub.identity());
    assert_eq!(identity.port, u32::from(hub.local_addr().port()));
    assert_eq!(identity.role, proto::Role::Primary as i32);
    // The router publishes its gauges a moment later.
    let deadline = tokio::time::Instant::now() + WAIT;
    while hub.status().clients != 1 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(hub.status().clients, 1);
    hub.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_secret_is_refused() -> Result<()> {
    let hub = start().await;
    let mut c = TestClient::connect_raw(hub.local_addr()).await?;
    // The client cannot verify the hub's proof with the wrong secret; this
    // test client then proves itself with it anyway.
    let wrong = Secret::from_token("not the token");
    let nonce = switchboard_discovery::nonce();
    c.send(proto::Hello {
        protocol_version: PROTOCOL_VERSION,
        client_id: "mallory".into(),
        client_nonce: nonce.to_vec().into(),
        ..Default::default()
    })
    .await?;
    let challenge = match c.expect().await?.kind {
        Some(Kind::Challenge(ch)) => ch,
        other => bail!("{other:?}"),
    };
    let identity = challenge.identity.clone().unwrap();
    assert!(!verify_hub_proof(
        &wrong,
        &nonce,
        &challenge.hub_nonce,
        &identity,
        &challenge.proof
    ));
    let proof =
        switchboard_discovery::client_proof(&wrong, &challenge.hub_nonce, &nonce, "mallory");
    c.send(proto::Auth {
        proof: proof.to_vec().into(),
    })
    .await?;
    let msg = c.expect_error(0, ErrorCode::AuthFailed).await?;
    assert!(msg.contains("secret"), "{msg}");
    assert!(c.expect_closed().await?.is_empty());
    hub.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_handshake_times_out() -> Result<()> {
    let mut config = config();
    config.handshake_timeout = Duration::from_millis(300);
    let hub = Hub::start(config).await?;
    let started = Instant::now();
    let mut silent = TestClient::connect_raw(hub.local_addr()).await?;
    silent.expect_error(0, ErrorCode::HandshakeTimeout).await?;
    let took = started.elapsed();
    assert!(took >= Duration::from_millis(250), "{took:?}");
    assert!(took < Duration::from_secs(3), "{took:?}");
    assert!(silent.expect_closed().await?.is_empty());

    // Hello but never Auth: the whole handshake is bounded too.
    let mut slow = TestClient::connect_raw(hub.local_addr()).await?;
    slow.send(proto::Hello {
        protocol_version: PROTOCOL_VERSION,
        client_id: "slow".into(),
        client_nonce: vec![0; 16].into(),
        ..Default::default()
    })
    .await?;
    assert!(matches!(
        slow.expect().await?.kind,
        Some(Kind::Challenge(_))
    ));
    slow.expect_error(0, ErrorCode::HandshakeTimeout).await?;
    hub.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_hellos_are_refused() -> Result<()> {
    let hub = start().await;
    let hello = |version: u32, id: &str, nonce_len: usize| proto::Hello {
        protocol_version: version,
        client_id: id.into(),
        client_nonce: vec![7; nonce_len].into(),
        ..Default::default()
    };
    let cases = [
        (
            hello(PROTOCOL_VERSION + 1, "a", 16),
            ErrorCode::UnsupportedVersion,
        ),
        (hello(0, "a", 16), ErrorCode::UnsupportedVersion),
        (hello(PROTOCOL_VERSION, "", 16), ErrorCode::InvalidArgument),
        (
            hello(PROTOCOL_VERSION, &"x".repeat(257), 16),
            ErrorCode::InvalidArgument,
        ),
        (
            hello(PROTOCOL_VERSION, "bell\u{7}", 16),
            ErrorCode::InvalidArgument,
        ),
        (hello(PROTOCOL_VERSION, "a", 15), ErrorCode::InvalidArgument),
    ];
    for (hello, code) in cases {
        let mut c = TestClient::connect_raw(hub.local_addr()).await?;
        c.send(hello).await?;
        c.expect_error(0, code).await?;
        assert!(c.expect_closed().await?.is_empty());
    }
    // A first frame that is neither Hello nor Probe.
    let mut c = TestClient::connect_raw(hub.local_addr()).await?;
    c.send(Frame::publish("a", "b")).await?;
    c.expect_error(0, ErrorCode::BadFrame).await?;
    assert!(c.expect_closed().await?.is_empty());
    // A 256-byte id is fine.
    TestClient::connect(hub.local_addr(), &"y".repeat(256)).await?;
    hub.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_garbage_and_truncated_input_close_only_the_offender() -> Result<()> {
    let mut config = config();
    config.limits.max_frame = 64 * 1024;
    let hub = Hub::start(config).await?;
    let addr = hub.local_addr();
    let mut bystander = TestClient::connect(addr, "bystander").await?;
    bystander.subscribe(1, "news", "").await?;
    let mut publisher = TestClient::connect(addr, "publisher").await?;

    // Before authentication the limit is 4 KiB.
    let mut c = TestClient::connect_raw(addr).await?;
    c.send_bytes(&5000u32.to_be_bytes()).await?;
    c.expect_error(0, ErrorCode::LimitExceeded).await?;
    assert!(c.expect_closed().await?.is_empty());
    // Text protocols read as an enormous length.
    let mut c = TestClient::connect_raw(addr).await?;
    c.send_bytes(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").await?;
    c.expect_error(0, ErrorCode::LimitExceeded).await?;
    // Garbage inside a plausible length.
    let mut c = TestClient::connect_raw(addr).await?;
    c.send_bytes(&[0, 0, 0, 6, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff])
        .await?;
    c.expect_error(0, ErrorCode::BadFrame).await?;
    assert!(c.expect_closed().await?.is_empty());

    // After authentication: the configured limit.
    let mut big = TestClient::connect(addr, "big").await?;
    big.send(Frame::publish("news", vec![0u8; 60 * 1024]))
        .await?;
    big.sync().await?;
    big.send_bytes(&(100 * 1024u32).to_be_bytes()).await?;
    let msg = big.expect_error(0, ErrorCode::LimitExceeded).await?;
    assert!(msg.contains("65536"), "{msg}");
    assert!(big.expect_closed().await?.is_empty());

    let mut garbage = TestClient::connect(addr, "garbage").await?;
    garbage.send_bytes(&[0, 0, 0, 3, 0xff, 0xff, 0xff]).await?;
    garbage.expect_error(0, ErrorCode::BadFrame).await?;
    assert!(garbage.expect_closed().await?.is_empty());

    let mut truncated = TestClient::connect(addr, "truncated").await?;
    truncated.send_bytes(&[0, 0, 0, 100, 1, 2, 3]).await?;
    truncated.stream.shutdown().await?;
    let frames = truncated.expect_closed().await?;
    assert!(frames.len() <= 1, "{frames:?}");

    // The bystander got the one good publish and still works.
    match bystander.expect().await?.kind {
        Some(Kind::Deliver(d)) => assert_eq!(d.payload.len(), 60 * 1024),
        other => bail!("{other:?}"),
    }
    publisher.send(Frame::publish("news", "still here")).await?;
    match bystander.expect().await?.kind {
        Some(Kind::Deliver(d)) => assert_eq!(d.payload, Bytes::from("still here")),
        other => bail!("{other:?}"),
    }
    hub.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_frame_kind_gets_unsupported_and_the_connection_continues() -> Result<()> {
    let hub = start().await;
    let mut c = TestClient::connect(hub.local_addr(), "future").await?;
    // Field 200 (length-delimited, 2 bytes): a kind this version does not know.
    let body = [0xC2, 0x0C, 0x02, 0xAA, 0xBB];
    let mut bytes = (body.len() as u32).to_be_bytes().to_vec();
    bytes.extend_from_slice(&body);
    c.send_bytes(&bytes).await?;
    c.expect_error(0, ErrorCode::Unsupported).await?;
    // A kind a client may not send.
    c.send(proto::Deliver::default()).await?;
    c.expect_error(0, ErrorCode::Unsupported).await?;
    c.sync().await?;
    hub.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duplicate_id_takes_over() -> Result<()> {
    let hub = start().await;
    let addr = hub.local_addr();
    let mut watcher = TestClient::connect(addr, "watcher").await?;
    watcher
        .send(proto::PresenceWatch { id: 1, stop: false })
        .await?;
    assert!(matches!(
        watcher.expect().await?.kind,
        Some(Kind::ClientList(_))
    ));
    let mut old = TestClient::connect(addr, "worker").await?;
    let mut new = TestClient::connect(addr, "worker").await?;
    let frames = old.expect_closed().await?;
    match frames.last().and_then(|f| f.kind.clone()) {
        Some(Kind::Goodbye(g)) => assert_eq!(g.code, ErrorCode::IdTakenOver as i32),
        other => bail!("{other:?}"),
    }
    // Presence: joined, left (taken over), joined.
    let mut events = Vec::new();
    for _ in 0..3 {
        match watcher.expect().await?.kind {
            Some(Kind::Presence(p)) => events.push(p.kind),
            other => bail!("{other:?}"),
        }
    }
    let (j, l) = (
        proto::PresenceKind::Joined as i32,
        proto::PresenceKind::Left as i32,
    );
    assert_eq!(events, vec![j, l, j]);
    watcher
        .send(Frame::direct("worker", "for the new one"))
        .await?;
    match new.expect().await?.kind {
        Some(Kind::Direct(d)) => assert_eq!(d.from, "watcher"),
        other => bail!("{other:?}"),
    }
    hub.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn direct_request_reply_and_broadcast() -> Result<()> {
    let hub = start().await;
    let addr = hub.local_addr();
    let mut a = TestClient::connect(addr, "a").await?;
    let mut b = TestClient::connect(addr, "b").await?;
    let mut c = TestClient::connect(addr, "c").await?;

    a.send(proto::Direct {
        id: 5,
        to: "b".into(),
        payload: "hello".into(),
        ..Default::default()
    })
    .await?;
    assert_eq!(a.expect().await?, Frame::ok(5));
    match b.expect().await?.kind {
        Some(Kind::Direct(d)) => {
            assert_eq!((d.from.as_str(), d.payload.as_ref()), ("a", &b"hello"[..]))
        }
        other => bail!("{other:?}"),
    }
    a.send(proto::Direct {
        id: 6,
        to: "zed".into(),
        ..Default::default()
    })
    .await?;
    a.expect_error(6, ErrorCode::NoSuchClient).await?;

    // Request/reply.
    a.send(Frame::request(7, "b", "2+2")).await?;
    let req = match b.expect().await?.kind {
        Some(Kind::Request(r)) => r,
        other => bail!("{other:?}"),
    };
    assert_eq!((req.id, req.from.as_str()), (7, "a"));
    b.send(Frame::reply(req.id, req.from, "4")).await?;
    match a.expect().await?.kind {
        Some(Kind::Reply(r)) => assert_eq!(
            (r.id, r.from.as_str(), r.payload.as_ref()),
            (7, "b", &b"4"[..])
        ),
        other => bail!("{other:?}"),
    }
    a.send(Frame::request(8, "nobody", "x")).await?;
    a.expect_error(8, ErrorCode::NoSuchClient).await?;

    // Timeout, and the late reply is dropped.
    a.send(proto::Request {
        id: 9,
        to: "b".into(),
        timeout_ms: 200,
        ..Default::default()
    })
    .await?;
    let started = Instant::now();
    assert!(matches!(b.expect().await?.kind, Some(Kind::Request(_))));
    a.expect_error(9, ErrorCode::Timeout).await?;
    assert!(started.elapsed() >= Duration::from_millis(150));
    b.send(Frame::reply(9, "a", "late")).await?;
    a.sync().await?;

    // Target leaves while a request is outstanding.
    a.send(Frame::request(10, "c", "x")).await?;
    assert!(matches!(c.expect().await?.kind, Some(Kind::Request(_))));
    drop(c);
    a.expect_error(10, ErrorCode::TargetGone).await?;

    // Broadcast reaches everyone else.
    let mut d = TestClient::connect(addr, "d").await?;
    b.send(proto::Broadcast {
        id: 11,
        payload: "all".into(),
        ..Default::default()
    })
    .await?;
    assert_eq!(b.expect().await?, Frame::ok(11));
    for client in [&mut a, &mut d] {
        match client.expect().await?.kind {
            Some(Kind::Broadcast(m)) => assert_eq!(m.from, "b"),
            other => bail!("{other:?}"),
        }
    }
    hub.shutdown().await;
    Ok(())
}

fn deliver(f: Frame) -> Result<proto::Deliver> {
    match f.kind {
        Some(Kind::Deliver(d)) => Ok(d),
        other => bail!("expected a delivery, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pubsub_wildcards_queue_groups_and_invalid_patterns() -> Result<()> {
    let hub = start().await;
    let addr = hub.local_addr();
    let mut p = TestClient::connect(addr, "pub").await?;
    let mut star = TestClient::connect(addr, "star").await?;
    let mut rest = TestClient::connect(addr, "rest").await?;
    star.subscribe(1, "metrics.*.cpu", "").await?;
    rest.subscribe(2, "metrics.>", "").await?;

    p.send(Frame::publish("metrics.host1.cpu", "1")).await?;
    p.send(Frame::publish("metrics.host1.mem.free", "2"))
        .await?;
    p.send(Frame::publish("metrics", "3")).await?;
    p.send(Frame::publish("metrics.host2.cpu", "4")).await?;
    p.sync().await?;
    let d = deliver(star.expect().await?)?;
    assert_eq!(
        (d.sub_id, d.topic.as_str(), d.from.as_str()),
        (1, "metrics.host1.cpu", "pub")
    );
    assert_eq!(deliver(star.expect().await?)?.payload, Bytes::from("4"));
    let got: Vec<Bytes> = [
        rest.expect().await?,
        rest.expect().await?,
        rest.expect().await?,
    ]
    .into_iter()
    .map(|f| deliver(f).map(|d| d.payload))
    .collect::<Result<_>>()?;
    assert_eq!(
        got,
        vec![Bytes::from("1"), Bytes::from("2"), Bytes::from("4")]
    );

    // Invalid pattern and topic.
    star.send(proto::Subscribe {
        id: 40,
        sub_id: 40,
        pattern: "metrics.>.cpu".into(),
        queue_group: String::new(),
        ..Default::default()
    })
    .await?;
    let msg = star.expect_error(40, ErrorCode::InvalidArgument).await?;
    assert!(msg.contains("metrics.>.cpu"), "{msg}");
    p.send(proto::Publish {
        id: 41,
        topic: "bad topic".into(),
        ..Default::default()
    })
    .await?;
    p.expect_error(41, ErrorCode::InvalidArgument).await?;

    // Queue group: three workers share, each message to exactly one.
    let mut workers = Vec::new();
    for i in 0..3 {
        let mut w = TestClient::connect(addr, &format!("worker{i}")).await?;
        w.subscribe(7, "jobs.*", "pool").await?;
        workers.push(w);
    }
    for i in 0..30u32 {
        p.send(Frame::publish("jobs.build", i.to_string())).await?;
    }
    p.sync().await?;
    let mut seen = Vec::new();
    for w in &mut workers {
        for _ in 0..10 {
            seen.push(deliver(w.expect().await?)?.payload);
        }
        w.sync().await?; // nothing else was queued before the pong
    }
    seen.sort();
    seen.dedup();
    assert_eq!(seen.len(), 30, "every job delivered exactly once");
    hub.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kv_state_and_the_login_token_scenario() -> Result<()> {
    let hub = start().await;
    let addr = hub.local_addr();
    let mut login = TestClient::connect(addr, "login").await?;
    let mut app1 = TestClient::connect(addr, "app1").await?;
    let mut app2 = TestClient::connect(addr, "app2").await?;

    // app1 watches the token key, app2 the whole "auth." prefix.
    app1.send(proto::KvWatch {
        id: 1,
        watch_id: 10,
        key: "auth.token".into(),
        prefix: false,
    })
    .await?;
    assert_eq!(app1.expect().await?, Frame::ok(1));
    app2.send(proto::KvWatch {
        id: 1,
        watch_id: 20,
        key: "auth.".into(),
        prefix: true,
    })
    .await?;
    assert_eq!(app2.expect().await?, Frame::ok(1));

    let set = |id: u64, value: &str, expect: Option<u64>| proto::KvSet {
        id,
        key: "auth.token".into(),
        value: value.to_owned().into(),
        expect_version: expect,
    };
    login.send(set(2, "tok-1", Some(0))).await?;
    match login.expect().await?.kind {
        Some(Kind::KvValue(v)) => assert_eq!((v.id, v.version, v.found), (2, 1, true)),
        other => bail!("{other:?}"),
    }
    login.send(set(3, "tok-x", Some(0))).await?;
    login.expect_error(3, ErrorCode::VersionMismatch).await?;
    login.send(set(4, "tok-2", Some(1))).await?;
    assert!(matches!(login.expect().await?.kind, Some(Kind::KvValue(v)) if v.version == 2));
    login
        .send(proto::KvDelete {
            id: 5,
            key: "auth.token".into(),
            expect_version: None,
        })
        .await?;
    assert!(
        matches!(login.expect().await?.kind, Some(Kind::KvValue(v)) if v.version == 3 && !v.found)
    );
    login
        .send(proto::KvGet {
            id: 6,
            key: "auth.token".into(),
        })
        .await?;
    assert!(matches!(login.expect().await?.kind, Some(Kind::KvValue(v)) if v.id == 6 && !v.found));

    for (watcher, watch_id) in [(&mut app1, 10), (&mut app2, 20)] {
        let mut updates = Vec::new();
        for _ in 0..3 {
            match watcher.expect().await?.kind {
                Some(Kind::KvUpdate(u)) => {
                    assert_eq!((u.watch_id, u.by.as_str()), (watch_id, "login"));
                    updates.push((u.version, u.deleted, u.value));
                }
                other => bail!("{other:?}"),
            }
        }
        assert_eq!(
            updates,
            vec![
                (1, false, Bytes::from("tok-1")),
                (2, false, Bytes::from("tok-2")),
                (3, true, Bytes::new()),
            ]
        );
    }
    // A late watcher first gets the current value.
    login.send(set(7, "tok-3", None)).await?;
    login.expect().await?;
    let mut late = TestClient::connect(addr, "late").await?;
    late.send(proto::KvWatch {
        id: 1,
        watch_id: 1,
        key: "auth.token".into(),
        prefix: false,
    })
    .await?;
    assert_eq!(late.expect().await?, Frame::ok(1));
    match late.expect().await?.kind {
        Some(Kind::KvUpdate(u)) => assert_eq!(
            (u.version, u.value, u.by),
            (4, Bytes::from("tok-3"), String::new())
        ),
        other => bail!("{other:?}"),
    }
    hub.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn presence_and_client_list() -> Result<()> {
    let hub = start().await;
    let addr = hub.local_addr();
    let mut w = TestClient::connect(addr, "watcher").await?;
    w.send(proto::PresenceWatch { id: 3, stop: false }).await?;
    match w.expect().await?.kind {
        Some(Kind::ClientList(l)) => {
            assert_eq!(l.id, 3);
            assert_eq!(l.clients[0].client_id, "watcher");
            assert_eq!(l.clients[0].transport, "tcp");
        }
        other => bail!("{other:?}"),
    }
    let x = TestClient::connect(addr, "x").await?;
    match w.expect().await?.kind {
        Some(Kind::Presence(p)) => {
            assert_eq!(p.kind, proto::PresenceKind::Joined as i32);
            let info = p.client.unwrap();
            assert_eq!(info.client_id, "x");
            assert_eq!(info.agent, "hub tests");
        }
        other => bail!("{other:?}"),
    }
    drop(x);
    match w.expect().await?.kind {
        Some(Kind::Presence(p)) => assert_eq!(p.kind, proto::PresenceKind::Left as i32),
        other => bail!("{other:?}"),
    }
    w.send(proto::ListClients { id: 4 }).await?;
    match w.expect().await?.kind {
        Some(Kind::ClientList(l)) => assert_eq!(l.clients.len(), 1),
        other => bail!("{other:?}"),
    }
    w.send(proto::StatusRequest { id: 5 }).await?;
    match w.expect().await?.kind {
        Some(Kind::Status(s)) => {
            assert_eq!((s.id, s.clients), (5, 1));
            assert!(s.msgs_in >= 3);
        }
        other => bail!("{other:?}"),
    }
    hub.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_frames_route_between_agent_and_manager() -> Result<()> {
    let hub = start().await;
    let addr = hub.local_addr();
    let mut agent = TestClient::connect(addr, "cpe-1").await?;
    let mut manager = TestClient::connect(addr, "acs").await?;
    // The manager reaches the agent, which only has its outbound connection.
    manager
        .send(proto::Session {
            peer: "cpe-1".into(),
            session_id: 0,
            body: Some(proto::session::Body::ConnectionRequest(
                proto::ConnectionRequest { nonce: 9 },
            )),
        })
        .await?;
    match agent.expect().await?.kind {
        Some(Kind::Session(s)) => assert_eq!(s.peer, "acs"),
        other => bail!("{other:?}"),
    }
    agent
        .send(proto::Session {
            peer: "acs".into(),
            session_id: 0,
            body: Some(proto::session::Body::ConnectionRequestAck(
                proto::ConnectionRequestAck { nonce: 9 },
            )),
        })
        .await?;
    match manager.expect().await?.kind {
        Some(Kind::Session(s)) => assert_eq!(s.peer, "cpe-1"),
        other => bail!("{other:?}"),
    }
    manager
        .send(proto::Session {
            peer: "cpe-2".into(),
            ..Default::default()
        })
        .await?;
    let msg = manager.expect_error(0, ErrorCode::NoSuchClient).await?;
    assert!(msg.contains("cpe-2"), "{msg}");
    hub.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscriber_that_never_reads_does_not_stall_others() -> Result<()> {
    let mut config = config();
    config.limits.queue_frames = 64;
    config.limits.queue_bytes = 256 * 1024;
    let hub = Hub::start(config).await?;
    let addr = hub.local_addr();
    let mut stuck = TestClient::connect(addr, "stuck").await?;
    stuck.subscribe(1, "feed", "").await?;
    let mut fast = TestClient::connect(addr, "fast").await?;
    fast.subscribe(1, "feed", "").await?;
    let mut p = TestClient::connect(addr, "pub").await?;

    // Enough to fill the stuck client's socket buffers many times over. The
    // publisher goes at the pace of the reading subscriber (windows of 32),
    // which must get every message while the stuck one's queue overflows.
    const N: u32 = 4_000;
    let payload = vec![0x5a; 8 * 1024];
    for window in 0..N / 32 {
        for i in window * 32..(window + 1) * 32 {
            let mut body = i.to_be_bytes().to_vec();
            body.extend_from_slice(&payload);
            p.send(Frame::publish("feed", body)).await?;
        }
        for i in window * 32..(window + 1) * 32 {
            let d = deliver(fast.expect().await?)?;
            assert_eq!(
                u32::from_be_bytes(d.payload[..4].try_into()?),
                i,
                "in order, none lost"
            );
        }
    }
    // The stuck client's queue stayed bounded and its losses are counted.
    p.send(proto::StatusRequest { id: 1 }).await?;
    let status = match p.expect().await?.kind {
        Some(Kind::Status(s)) => s,
        other => bail!("{other:?}"),
    };
    assert!(status.dropped > 0, "{status:?}");
    assert!(status.queue_depth <= 64 + 1, "{status:?}");
    // When it finally reads it learns how much it lost, and gets the newest.
    let mut flow = None;
    let mut last = 0;
    for _ in 0..N {
        let f = stuck.expect().await?;
        match f.kind {
            Some(Kind::Flow(fl)) => flow = Some(fl.dropped),
            Some(Kind::Deliver(d)) => {
                last = u32::from_be_bytes(d.payload[..4].try_into()?);
                if last == N - 1 {
                    break;
                }
            }
            other => bail!("{other:?}"),
        }
    }
    assert_eq!(last, N - 1);
    assert!(flow.unwrap_or(0) > 0);
    hub.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn probe_on_the_same_listener_and_hint_lifecycle() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let mut config = config();
    config.write_hint = true;
    config.hint_dir = Some(dir.path().to_owned());
    let hub = Hub::start(config).await?;
    let addr = hub.local_addr();
    let found =
        switchboard_discovery::probe(addr, "hubtest", &Secret::from_token(TOKEN), WAIT).await?;
    assert_eq!(found.identity, hub.identity());
    // A probe for another service gets no answer.
    assert!(
        switchboard_discovery::probe(addr, "other", &Secret::from_token(TOKEN), WAIT)
            .await
            .is_err()
    );
    let hint_path = hub.hint_path().expect("hint written");
    assert!(hint_path.starts_with(dir.path()));
    let hint = switchboard_discovery::Hint::read(&hint_path)?;
    assert_eq!(
        (hint.port, hint.instance_id.as_str()),
        (addr.port(), hub.identity().instance_id.as_str())
    );

    let mut c = TestClient::connect(addr, "c").await?;
    hub.shutdown().await;
    let frames = c.expect_closed().await?;
    match frames.last().and_then(|f| f.kind.clone()) {
        Some(Kind::Goodbye(g)) => assert_eq!(g.code, ErrorCode::ShuttingDown as i32),
        other => bail!("{other:?}"),
    }
    assert!(!hint_path.exists(), "hint removed on shutdown");
    assert!(
        tokio::net::TcpStream::connect(addr).await.is_err(),
        "listener closed"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_clients_exchange_requests() -> Result<()> {
    const N: usize = 1_000;
    let hub = start().await;
    let addr = hub.local_addr();
    let started = Instant::now();
    let mut clients = Vec::with_capacity(N);
    for chunk in (0..N).collect::<Vec<_>>().chunks(100) {
        let conns = chunk
            .iter()
            .map(|i| async move { TestClient::connect(addr, &format!("client-{i}")).await });
        for c in futures::future::join_all(conns).await {
            clients.push(c?);
        }
    }
    let barrier = std::sync::Arc::new(tokio::sync::Barrier::new(N));
    let mut tasks = Vec::with_capacity(N);
    for (i, mut c) in clients.into_iter().enumerate() {
        let barrier = barrier.clone();
        tasks.push(tokio::spawn(async move {
            barrier.wait().await;
            let target = format!("client-{}", (i + 1) % N);
            c.send(Frame::request(1, target.clone(), format!("{i}")))
                .await?;
            // Serve one request and receive one reply, in either order.
            let (mut served, mut answered) = (false, false);
            while !(served && answered) {
                match c.expect().await?.kind {
                    Some(Kind::Request(r)) => {
                        let reply = Frame::reply(r.id, r.from, r.payload);
                        c.send(reply).await?;
                        served = true;
                    }
                    Some(Kind::Reply(r)) => {
                        assert_eq!((r.id, r.from.as_str()), (1, target.as_str()));
                        assert_eq!(r.payload, Bytes::from(i.to_string()));
                        answered = true;
                    }
                    other => bail!("client {i}: {other:?}"),
                }
            }
            anyhow::Ok(())
        }));
    }
    for t in tasks {
        t.await??;
    }
    assert!(started.elapsed() < Duration::from_secs(30));
    hub.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hub_only_kinds_are_refused_without_decoding() -> Result<()> {
    let hub = start().await;
    let mut c = TestClient::connect(hub.local_addr(), "hostile").await?;
    // 200,000 empty list entries: 400 KB on the wire, far more decoded.
    let list = Frame::from(proto::ClientList {
        id: 1,
        clients: vec![proto::ClientInfo::default(); 200_000],
    });
    c.send(list).await?;
    let msg = c.expect_error(0, ErrorCode::Unsupported).await?;
    assert!(msg.contains("client_list"), "{msg}");
    // A session frame over its kind's cap is skipped too; the connection
    // continues.
    let inform = proto::Session {
        peer: "x".into(),
        body: Some(proto::session::Body::Inform(proto::Inform {
            events: vec![proto::Event::default(); 600_000],
            ..Default::default()
        })),
        ..Default::default()
    };
    c.send(inform).await?;
    c.expect_error(0, ErrorCode::LimitExceeded).await?;
    c.sync().await?;
    // Before authentication such a frame is simply not a Hello.
    let mut raw = TestClient::connect_raw(hub.local_addr()).await?;
    raw.send(proto::ClientList {
        id: 1,
        clients: vec![proto::ClientInfo::default(); 1000],
    })
    .await?;
    raw.expect_error(0, ErrorCode::BadFrame).await?;
    hub.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unusable_configurations_are_refused() {
    let mut cfg = common::config();
    cfg.limits.queue_hard_bytes = cfg.limits.queue_bytes - 1;
    assert!(matches!(
        Hub::start(cfg).await,
        Err(switchboard_hub::HubError::Config(_))
    ));
    let mut cfg = common::config();
    cfg.service = "not a service name".into();
    assert!(Hub::start(cfg).await.is_err());
}

/// Waits (up to [`WAIT`]) until the runtime holds `want` tasks; returns
/// the last count seen.
async fn settle_tasks(want: usize) -> usize {
    let metrics = tokio::runtime::Handle::current().metrics();
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let alive = metrics.num_alive_tasks();
        if alive == want || tokio::time::Instant::now() >= deadline {
            return alive;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// An idle connection holds one task, not two: its writer task stops once
/// its outbox was idle for a moment, and the next frame queued for it
/// spawns a writer again. Clients idle past that are answered, relayed
/// to, and taken over (last words, then the close) as before.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_connection_keeps_one_task_and_still_gets_every_frame() -> Result<()> {
    const N: usize = 8;
    let hub = start().await;
    let addr = hub.local_addr();
    let base = tokio::runtime::Handle::current()
        .metrics()
        .num_alive_tasks();
    let mut clients = Vec::new();
    for i in 0..N {
        clients.push(TestClient::connect(addr, &format!("idle-{i}")).await?);
    }
    // Each wrote its `Welcome`; then only the connections' tasks remain.
    assert_eq!(settle_tasks(base + N).await, base + N);

    for c in &mut clients {
        c.sync().await?;
    }
    assert_eq!(settle_tasks(base + N).await, base + N);
    clients[0]
        .send(Frame::direct("idle-1", "after a pause"))
        .await?;
    match clients[1].expect().await?.kind {
        Some(Kind::Direct(d)) => assert_eq!(d.from, "idle-0"),
        other => bail!("{other:?}"),
    }
    assert_eq!(settle_tasks(base + N).await, base + N);

    // Taken over while idle: the old connection gets its last words.
    let _new = TestClient::connect(addr, "idle-2").await?;
    let frames = clients[2].expect_closed().await?;
    match frames.last().and_then(|f| f.kind.clone()) {
        Some(Kind::Goodbye(g)) => assert_eq!(g.code, ErrorCode::IdTakenOver as i32),
        other => bail!("{other:?}"),
    }
    assert_eq!(settle_tasks(base + N).await, base + N);
    // Gone while idle: its task ends too.
    drop(clients.remove(3));
    assert_eq!(settle_tasks(base + N - 1).await, base + N - 1);
    hub.shutdown().await;
    Ok(())
}
