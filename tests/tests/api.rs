//! Every messaging pattern through the `Client` API against an in-process
//! hub, plus the bad inputs a client can cause.

use std::time::Duration;

use futures::StreamExt;
use switchboard::{
    Client, ClientError, ClientEvent, Hub, MessageKind, Overflow, PresenceEvent, SubscribeOptions,
};
use switchboard_tests::{client, hub, within, TOKEN};

#[tokio::test]
async fn request_reply_and_error_replies() -> anyhow::Result<()> {
    let hub = hub().await?;
    let server = client(&hub, "upper").await?;
    let _serving = server
        .serve(|req| async move {
            if req.payload().as_ref() == b"fail" {
                return Err("refusing to shout".to_string());
            }
            if req.payload().as_ref() == b"panic" {
                panic!("handler bug");
            }
            Ok(String::from_utf8_lossy(req.payload()).to_uppercase().into())
        })
        .await?;
    let asker = client(&hub, "asker").await?;
    let reply = within(asker.request("upper", "hello")).await??;
    assert_eq!(&reply[..], b"HELLO");

    match within(asker.request("upper", "fail")).await? {
        Err(ClientError::Remote(msg)) => assert!(msg.contains("refusing"), "{msg}"),
        other => panic!("expected a remote error, got {other:?}"),
    }
    match within(asker.request("upper", "panic")).await? {
        Err(ClientError::Remote(msg)) => assert!(msg.contains("panicked"), "{msg}"),
        other => panic!("expected a remote error, got {other:?}"),
    }
    // The server keeps serving after a panicking handler.
    assert_eq!(
        &within(asker.request("upper", "again")).await??[..],
        b"AGAIN"
    );
    Ok(())
}

#[tokio::test]
async fn requests_stream_and_method() -> anyhow::Result<()> {
    let hub = hub().await?;
    let server = client(&hub, "stream-server").await?;
    let mut requests = server.requests().await?;
    tokio::spawn(async move {
        while let Some(req) = requests.next().await {
            let answer = format!("{}:{}:{}", req.from(), req.method(), req.payload().len());
            let _ = req.reply(answer).await;
        }
    });
    let asker = client(&hub, "stream-asker").await?;
    let reply = within(asker.request_with("stream-server", "len", "abcd", Duration::from_secs(5)))
        .await??;
    assert_eq!(&reply[..], b"stream-asker:len:4");
    Ok(())
}

#[tokio::test]
async fn request_errors_are_typed_and_immediate() -> anyhow::Result<()> {
    let hub = hub().await?;
    let asker = client(&hub, "asker").await?;

    // Unknown target: immediate NoSuchClient.
    let start = std::time::Instant::now();
    match within(asker.request("nobody", "x")).await? {
        Err(ClientError::NoSuchClient(_)) => {}
        other => panic!("expected NoSuchClient, got {other:?}"),
    }
    assert!(start.elapsed() < Duration::from_secs(5));

    // A target that never answers: Timeout after the requested time.
    let silent = client(&hub, "silent").await?;
    let mut requests = silent.requests().await?;
    let hold = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Some(r) = requests.next().await {
            held.push(r);
        }
    });
    let start = std::time::Instant::now();
    match within(asker.request_with("silent", "", "x", Duration::from_millis(300))).await? {
        Err(ClientError::Timeout(_)) => {}
        other => panic!("expected Timeout, got {other:?}"),
    }
    assert!(start.elapsed() >= Duration::from_millis(250));

    // A target that leaves while the request is outstanding: TargetGone.
    let pending = {
        let asker = asker.clone();
        tokio::spawn(async move {
            asker
                .request_with("silent", "", "y", Duration::from_secs(20))
                .await
        })
    };
    // Wait until the hub holds the request before the target leaves.
    within(async {
        loop {
            if asker
                .status()
                .await
                .map(|s| s.pending_requests)
                .unwrap_or(0)
                > 0
            {
                break;
            }
            tokio::task::yield_now().await;
        }
    })
    .await?;
    silent.close().await;
    hold.abort();
    match within(pending).await?? {
        Err(ClientError::TargetGone(_)) => {}
        other => panic!("expected TargetGone, got {other:?}"),
    }

    // A client that serves no requests is refused by the hub at once.
    let _plain = client(&hub, "plain").await?;
    match within(asker.request("plain", "x")).await? {
        Err(ClientError::NotListening(msg)) => assert!(msg.contains("plain"), "{msg}"),
        other => panic!("expected not listening, got {other:?}"),
    }
    Ok(())
}

#[tokio::test]
async fn direct_and_broadcast_messages() -> anyhow::Result<()> {
    let hub = hub().await?;
    let a = client(&hub, "a").await?;
    let b = client(&hub, "b").await?;
    let c = client(&hub, "c").await?;
    let mut b_msgs = b.messages().await?;
    let mut c_msgs = c.messages().await?;

    a.send("b", "to b").await?;
    let m = within(b_msgs.next()).await?.expect("a message");
    assert_eq!(
        (m.kind, &*m.from, &m.payload[..]),
        (MessageKind::Direct, "a", &b"to b"[..])
    );

    a.send_nowait("c", "to c").await?;
    let m = within(c_msgs.next()).await?.expect("a message");
    assert_eq!(&m.payload[..], b"to c");

    match a.send("nobody", "x").await {
        Err(ClientError::NoSuchClient(_)) => {}
        other => panic!("expected NoSuchClient, got {other:?}"),
    }

    a.broadcast("all").await?;
    for msgs in [&mut b_msgs, &mut c_msgs] {
        let m = within(msgs.next()).await?.expect("a broadcast");
        assert_eq!(
            (m.kind, &m.payload[..]),
            (MessageKind::Broadcast, &b"all"[..])
        );
    }
    Ok(())
}

#[tokio::test]
async fn pubsub_wildcards_fan_out_and_queue_groups() -> anyhow::Result<()> {
    let hub = hub().await?;
    let publisher = client(&hub, "pub").await?;
    let s1 = client(&hub, "s1").await?;
    let s2 = client(&hub, "s2").await?;
    let mut star = s1.subscribe("orders.*.created").await?;
    let mut tail = s2.subscribe("orders.>").await?;

    publisher.publish("orders.eu.created", "o1").await?;
    publisher.publish("orders.us.shipped", "o2").await?;
    let m = within(star.next()).await?.expect("delivery");
    assert_eq!(
        (&*m.topic, &m.payload[..], &*m.from),
        ("orders.eu.created", &b"o1"[..], "pub")
    );
    let got: Vec<_> = within(async {
        let mut v = Vec::new();
        while v.len() < 2 {
            v.push(tail.next().await.expect("delivery").topic);
        }
        v
    })
    .await?;
    assert_eq!(got, ["orders.eu.created", "orders.us.shipped"]);

    // Queue group: each message to exactly one member.
    let w1 = client(&hub, "w1").await?;
    let w2 = client(&hub, "w2").await?;
    let mut g1 = w1.subscribe_group("jobs.>", "workers").await?;
    let mut g2 = w2.subscribe_group("jobs.>", "workers").await?;
    for i in 0..20 {
        publisher.publish(&format!("jobs.{i}"), "job").await?;
    }
    let total = within(async {
        let mut n = 0;
        while n < 20 {
            tokio::select! {
                Some(_) = g1.next() => n += 1,
                Some(_) = g2.next() => n += 1,
            }
        }
        n
    })
    .await?;
    assert_eq!(total, 20);
    // Nothing more arrives: each job went to one member only.
    assert!(tokio::time::timeout(Duration::from_millis(100), g1.next())
        .await
        .is_err());
    assert!(tokio::time::timeout(Duration::from_millis(10), g2.next())
        .await
        .is_err());

    // Invalid patterns and topics are refused with a typed error.
    match s1.subscribe("orders.>.x").await {
        Err(ClientError::InvalidArgument(_)) => {}
        other => panic!("expected InvalidArgument, got {other:?}"),
    }
    match publisher.publish("bad topic", "x").await {
        Err(ClientError::InvalidArgument(_)) => {}
        other => panic!("expected InvalidArgument, got {other:?}"),
    }

    // Dropping a subscription unsubscribes it.
    drop(star);
    within(async {
        while s1
            .status()
            .await
            .map(|s| s.subscriptions)
            .unwrap_or(u64::MAX)
            > 3
        {
            tokio::task::yield_now().await;
        }
    })
    .await?;
    Ok(())
}

#[tokio::test]
async fn kv_sync_login_token() -> anyhow::Result<()> {
    let hub = hub().await?;
    let login = client(&hub, "login").await?;
    let app = client(&hub, "app").await?;
    let kv = app.kv();
    assert_eq!(kv.get("session.token").await?, None);
    let mut watch = kv.watch("session.token").await?;

    let v1 = login.kv().set("session.token", "t-1").await?;
    assert_eq!(v1, 1);
    let ev = within(watch.next()).await?.expect("update");
    assert_eq!(
        (&ev.value[..], ev.version, ev.by.as_str()),
        (&b"t-1"[..], 1, "login")
    );

    // Compare-and-set by version.
    let v2 = login.kv().cas("session.token", 1, "t-2").await?;
    assert_eq!(v2, 2);
    match login.kv().cas("session.token", 1, "stale").await {
        Err(ClientError::VersionMismatch(_)) => {}
        other => panic!("expected VersionMismatch, got {other:?}"),
    }
    let ev = within(watch.next()).await?.expect("update");
    assert_eq!((&ev.value[..], ev.version), (&b"t-2"[..], 2));

    // A late watcher starts with the current value.
    let late = client(&hub, "late").await?;
    let mut late_watch = late.kv().watch_prefix("session.").await?;
    let ev = within(late_watch.next()).await?.expect("current value");
    assert_eq!(
        (ev.key.as_str(), &ev.value[..], ev.version),
        ("session.token", &b"t-2"[..], 2)
    );

    assert!(login.kv().delete("session.token").await?);
    assert!(!login.kv().delete("session.token").await?);
    let ev = within(watch.next()).await?.expect("deletion");
    assert!(ev.deleted);
    assert_eq!(kv.get("session.token").await?, None);
    Ok(())
}

#[tokio::test]
async fn presence_clients_and_status() -> anyhow::Result<()> {
    let hub = hub().await?;
    let watcher = client(&hub, "watcher").await?;
    let mut presence = watcher.presence().await?;
    assert!(presence.current().iter().any(|c| c.client_id == "watcher"));

    let other = client(&hub, "other").await?;
    let ev = within(presence.next()).await?.expect("joined");
    assert!(
        matches!(&ev, PresenceEvent::Joined(c) if c.client_id == "other"),
        "{ev:?}"
    );

    let ids: Vec<_> = watcher
        .clients()
        .await?
        .into_iter()
        .map(|c| c.client_id)
        .collect();
    assert_eq!(ids, ["other", "watcher"]);
    let status = watcher.status().await?;
    assert_eq!(status.clients, 2);

    other.close().await;
    let ev = within(presence.next()).await?.expect("left");
    assert!(
        matches!(&ev, PresenceEvent::Left { client, .. } if client.client_id == "other"),
        "{ev:?}"
    );
    Ok(())
}

#[tokio::test]
async fn wrong_token_impostor_and_bad_ids_are_refused() -> anyhow::Result<()> {
    let hub = hub().await?;
    let addr = hub.local_addr().to_string();
    // The hub proves itself with its token first; a client with another
    // token sees that proof fail and refuses the hub.
    match Client::builder("x")
        .addr(&addr)
        .token("wrong")
        .connect()
        .await
    {
        Err(e @ (ClientError::HubUnverified { .. } | ClientError::AuthFailed(_))) => {
            assert_eq!(e.code(), Some(switchboard::ErrorCode::AuthFailed));
        }
        other => panic!("expected an authentication error, got {other:?}"),
    }
    match Client::builder("").addr(&addr).token(TOKEN).connect().await {
        Err(ClientError::InvalidArgument(_)) => {}
        other => panic!("expected InvalidArgument, got {other:?}"),
    }
    match Client::builder("x")
        .addr("127.0.0.1:1")
        .token(TOKEN)
        .connect()
        .await
    {
        Err(ClientError::Connect { .. }) => {}
        other => panic!("expected Connect, got {other:?}"),
    }
    // Nothing listens as a hub here: an echo-less TCP peer that closes.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let fake = listener.local_addr()?.to_string();
    tokio::spawn(async move {
        while let Ok((s, _)) = listener.accept().await {
            drop(s);
        }
    });
    assert!(Client::builder("x")
        .addr(&fake)
        .token(TOKEN)
        .connect()
        .await
        .is_err());
    Ok(())
}

#[tokio::test]
async fn id_takeover_closes_the_older_client() -> anyhow::Result<()> {
    let hub = hub().await?;
    let first = client(&hub, "dup").await?;
    let second = client(&hub, "dup").await?;
    let mut state = first.state();
    within(state.wait_for(|s| matches!(s, switchboard::ConnectionState::Closed { .. }))).await??;
    match first.send("dup", "x").await {
        Err(ClientError::TakenOver(_) | ClientError::Closed) => {}
        other => panic!("expected the older client to be closed, got {other:?}"),
    }
    // The newer one works.
    let peer = client(&hub, "peer").await?;
    let mut msgs = second.messages().await?;
    peer.send("dup", "hi").await?;
    assert_eq!(
        &within(msgs.next()).await?.expect("message").payload[..],
        b"hi"
    );
    Ok(())
}

#[tokio::test]
async fn hub_builder_runs_with_defaults_for_a_private_service() -> anyhow::Result<()> {
    let hub = Hub::builder()
        .service("api-builder-test")
        .token(TOKEN)
        .listen("127.0.0.1:0")
        .write_hint(false)
        .start()
        .await?;
    assert_eq!(hub.identity().service, "api-builder-test");
    assert!(hub.local_addr().ip().is_loopback());
    Ok(())
}

#[tokio::test]
async fn a_subscriber_that_never_reads_stalls_no_one_else_and_loses_nothing() -> anyhow::Result<()>
{
    let hub = hub().await?;
    let addr = hub.local_addr().to_string();
    let lazy = Client::builder("lazy")
        .addr(&addr)
        .token(TOKEN)
        .stream_capacity(16)
        .connect()
        .await?;
    let mut unread = lazy.subscribe("flood").await?;
    let eager = client(&hub, "eager").await?;
    let mut eager_sub = eager.subscribe("flood").await?;
    let publisher = client(&hub, "publisher").await?;

    for i in 0..1000u32 {
        publisher.publish("flood", i.to_be_bytes().to_vec()).await?;
    }
    // The reading subscriber gets everything, in order, while the lazy
    // one's full stream holds its connection back.
    within(async {
        for i in 0..1000u32 {
            let m = eager_sub.next().await.expect("delivery");
            assert_eq!(&m.payload[..], &i.to_be_bytes());
        }
    })
    .await?;
    // Nothing was dropped for the lazy one: it reads everything later.
    within(async {
        for i in 0..1000u32 {
            let m = unread.next().await.expect("delivery");
            assert_eq!(&m.payload[..], &i.to_be_bytes());
        }
    })
    .await?;
    assert_eq!((lazy.dropped(), unread.dropped()), (0, 0));
    Ok(())
}

#[tokio::test]
async fn a_drop_policy_keeps_replies_flowing_and_counts_every_drop() -> anyhow::Result<()> {
    let hub = hub().await?;
    let lazy = client(&hub, "lazy").await?;
    let mut events = lazy.events();
    let options = SubscribeOptions::default()
        .capacity(16)
        .overflow(Overflow::DropNewest);
    let mut never_read = lazy.subscribe_with("flood", options).await?;
    let echo = client(&hub, "echo").await?;
    let _serving = echo
        .serve(|req| async move { Ok::<_, String>(req.payload().clone()) })
        .await?;
    let publisher = client(&hub, "publisher").await?;
    for i in 0..1000u32 {
        publisher.publish("flood", i.to_be_bytes().to_vec()).await?;
    }
    // Its replies are not held up by the full subscription.
    let reply = within(lazy.request("echo", "still here")).await??;
    assert_eq!(&reply[..], b"still here");
    // The first 16 are kept, the rest dropped, and each drop announced.
    let mut announced = 0;
    within(async {
        while announced < 1000 - 16 {
            match events.recv().await {
                Some(ClientEvent::SlowConsumer { sub_id, total, .. }) => {
                    assert_eq!(sub_id, never_read.id());
                    announced = total;
                }
                Some(_) => {}
                None => panic!("events ended"),
            }
        }
    })
    .await?;
    assert_eq!(announced, 1000 - 16);
    assert_eq!(never_read.dropped(), 1000 - 16);
    assert_eq!(lazy.dropped(), 1000 - 16);
    for i in 0..16u32 {
        let m = within(never_read.next()).await?.expect("kept");
        assert_eq!(&m.payload[..], &i.to_be_bytes());
    }
    Ok(())
}

#[tokio::test]
async fn oversized_payloads_are_refused_locally() -> anyhow::Result<()> {
    let hub = hub().await?;
    let a = client(&hub, "big-a").await?;
    let b = client(&hub, "big-b").await?;
    let _inbox = b.messages().await?;
    let huge = vec![0u8; switchboard::wire::DEFAULT_MAX_FRAME + 1];
    match a.send("big-b", huge).await {
        Err(ClientError::InvalidArgument(msg)) => assert!(msg.contains("limit"), "{msg}"),
        other => panic!("expected InvalidArgument, got {other:?}"),
    }
    // The connection is unharmed.
    a.send("big-b", "small").await?;
    Ok(())
}

#[tokio::test]
async fn a_dropped_request_stream_or_request_answers_at_once() -> anyhow::Result<()> {
    let hub = hub().await?;
    let server = client(&hub, "fickle").await?;
    let asker = client(&hub, "asker").await?;

    // A request taken from the stream and dropped unanswered.
    let mut requests = server.requests().await?;
    let dropper = tokio::spawn(async move {
        let req = requests.next().await;
        drop(req);
        requests
    });
    match within(asker.request("fickle", "x")).await? {
        Err(ClientError::Remote(msg)) => assert!(msg.contains("without a reply"), "{msg}"),
        other => panic!("expected a remote error, got {other:?}"),
    }
    // The stream itself dropped: later requests are refused at once.
    drop(within(dropper).await??);
    match within(asker.request("fickle", "y")).await? {
        Err(ClientError::Remote(msg)) => assert!(msg.contains("does not serve"), "{msg}"),
        other => panic!("expected a remote error, got {other:?}"),
    }
    Ok(())
}
