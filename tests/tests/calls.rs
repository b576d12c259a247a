//! Calls of the client API that register something at the hub: listening
//! for direct messages and requests, services, headers, serving options,
//! and what a call dropped part-way leaves behind (nothing).

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use switchboard::{ClientError, Headers, MessageKind, RequestOptions, ServeOptions};
use switchboard_tests::{client, memory_hub, within};

/// Polls `check` until it holds, for at most the test bound (each try one
/// round trip, no sleeping).
async fn eventually<F, Fut>(mut check: F) -> anyhow::Result<()>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    within(async {
        while !check().await {
            tokio::task::yield_now().await;
        }
    })
    .await
}

#[tokio::test]
async fn direct_messages_and_requests_reach_only_a_listening_client() -> anyhow::Result<()> {
    let hub = memory_hub().await?;
    let quiet = client(&hub, "quiet").await?;
    let sender = client(&hub, "sender").await?;
    // Nobody confirms what nobody will read.
    match sender.send("quiet", "hello?").await {
        Err(ClientError::NotListening(msg)) => assert!(msg.contains("quiet"), "{msg}"),
        other => panic!("expected not listening, got {other:?}"),
    }
    match sender.request("quiet", "anyone?").await {
        Err(ClientError::NotListening(_)) => {}
        other => panic!("expected not listening, got {other:?}"),
    }
    sender.broadcast("to all listeners").await?;

    // Once it listens, every confirmed message arrives.
    let mut inbox = quiet.messages().await?;
    for i in 0..100u8 {
        sender.send("quiet", vec![i]).await?;
    }
    for i in 0..100u8 {
        let m = within(inbox.next()).await?.expect("message");
        assert_eq!((m.kind, m.payload[0]), (MessageKind::Direct, i));
    }
    sender.broadcast("now you hear me").await?;
    let b = within(inbox.next()).await?.expect("broadcast");
    assert_eq!(
        (b.kind, &b.payload[..]),
        (MessageKind::Broadcast, &b"now you hear me"[..])
    );

    // Dropping the stream stops listening again.
    drop(inbox);
    eventually(|| async {
        matches!(
            sender.send("quiet", "gone?").await,
            Err(ClientError::NotListening(_))
        )
    })
    .await?;
    Ok(())
}

#[tokio::test]
async fn services_spread_requests_over_their_responders() -> anyhow::Result<()> {
    let hub = memory_hub().await?;
    let mut servers = Vec::new();
    for name in ["worker-a", "worker-b"] {
        let c = client(&hub, name).await?;
        let me = name.to_string();
        let handle = c
            .serve_service("thumbnails", ServeOptions::default(), move |req| {
                let me = me.clone();
                async move {
                    assert_eq!(req.service(), Some("thumbnails"));
                    Ok::<_, String>(format!("{me}:{}", req.payload().len()).into())
                }
            })
            .await?;
        servers.push((c, handle));
    }
    let asker = client(&hub, "asker").await?;
    let mut by = std::collections::BTreeMap::<String, u32>::new();
    for _ in 0..10 {
        let reply = asker
            .request_service("thumbnails", "img", RequestOptions::default())
            .await?;
        *by.entry(reply.from.clone()).or_default() += 1;
        assert!(reply.payload.ends_with(b":3"));
    }
    assert_eq!(by.get("worker-a"), Some(&5), "{by:?}");
    assert_eq!(by.get("worker-b"), Some(&5), "{by:?}");
    // A service nobody serves fails at once.
    match asker
        .request_service("nobody", "x", RequestOptions::default())
        .await
    {
        Err(ClientError::NoResponders(_)) => {}
        other => panic!("expected no responders, got {other:?}"),
    }
    Ok(())
}

#[tokio::test]
async fn headers_travel_with_every_kind_of_message() -> anyhow::Result<()> {
    let hub = memory_hub().await?;
    let a = client(&hub, "h-a").await?;
    let b = client(&hub, "h-b").await?;
    let mut inbox = b.messages().await?;
    let mut sub = b.subscribe("h.>").await?;
    let headers = Headers::from([("trace-id", "t-1"), ("kind", "test")]);

    a.send_with_headers("h-b", "direct", headers.clone())
        .await?;
    let m = within(inbox.next()).await?.expect("direct");
    assert_eq!(m.headers, headers);

    a.publish_with_headers("h.x", "published", headers.clone())
        .await?;
    let m = within(sub.next()).await?.expect("delivery");
    assert_eq!(m.headers, headers);
    a.publish_with_reply("h.y", "inbox.a", "with reply").await?;
    let m = within(sub.next()).await?.expect("delivery");
    assert_eq!((&*m.reply_to, m.headers.len()), ("inbox.a", 0));

    let _serving = b
        .serve(|req| async move {
            assert_eq!(req.headers().get_str("trace-id"), Some("t-1"));
            Ok::<_, String>("ok".into())
        })
        .await?;
    a.request_with_options(
        "h-b",
        "q",
        RequestOptions::default().headers(headers.clone()),
    )
    .await?;
    let mut requests = a.requests().await?;
    tokio::spawn(async move {
        while let Some(req) = requests.next().await {
            let reply = Headers::from([("answered-by", "h-a")]);
            let _ = req.reply_with_headers("r", reply).await;
        }
    });
    let reply = b
        .request_with_options("h-a", "q", RequestOptions::default())
        .await?;
    assert_eq!(reply.headers.get_str("answered-by"), Some("h-a"));

    // Bad headers are refused before anything is sent.
    let bad = Headers::from([("", "empty key")]);
    assert!(matches!(
        a.send_with_headers("h-b", "x", bad).await,
        Err(ClientError::InvalidArgument(_))
    ));
    let mut many = Headers::new();
    for i in 0..=switchboard::wire::headers::MAX_HEADERS {
        many.append(i.to_string(), "v");
    }
    assert!(matches!(
        a.publish_with_headers("h.x", "x", many).await,
        Err(ClientError::LimitExceeded(_))
    ));
    Ok(())
}

#[tokio::test]
async fn serve_options_bound_concurrency_and_time_and_stop_waits() -> anyhow::Result<()> {
    let hub = memory_hub().await?;
    let server = client(&hub, "bounded").await?;
    let running = Arc::new(AtomicUsize::new(0));
    let most = Arc::new(AtomicUsize::new(0));
    let finished = Arc::new(AtomicBool::new(false));
    let (r, m, f) = (running.clone(), most.clone(), finished.clone());
    let handle = server
        .serve_with(
            ServeOptions::default()
                .concurrency(2)
                .timeout(Duration::from_millis(300)),
            move |req| {
                let (r, m, f) = (r.clone(), m.clone(), f.clone());
                async move {
                    let now = r.fetch_add(1, Ordering::SeqCst) + 1;
                    m.fetch_max(now, Ordering::SeqCst);
                    let wait = if &req.payload()[..] == b"hang" {
                        10_000
                    } else {
                        50
                    };
                    tokio::time::sleep(Duration::from_millis(wait)).await;
                    r.fetch_sub(1, Ordering::SeqCst);
                    f.store(true, Ordering::SeqCst);
                    Ok::<_, String>("done".into())
                }
            },
        )
        .await?;
    let asker = client(&hub, "asker").await?;
    let calls = (0..8).map(|_| asker.request("bounded", "work"));
    for r in within(futures::future::join_all(calls)).await? {
        assert_eq!(&r?[..], b"done");
    }
    let most = most.load(Ordering::SeqCst);
    assert!((1..=2).contains(&most), "at most two at once: {most}");
    match within(asker.request("bounded", "hang")).await? {
        Err(ClientError::Remote(msg)) => assert!(msg.contains("did not finish"), "{msg}"),
        other => panic!("expected the handler's timeout, got {other:?}"),
    }

    // stop() returns once the running handler has replied. (The handler
    // dropped at its timeout never counted itself out.)
    running.store(0, Ordering::SeqCst);
    finished.store(false, Ordering::SeqCst);
    let slow = {
        let asker = asker.clone();
        tokio::spawn(async move { asker.request("bounded", "work").await })
    };
    eventually(|| async { running.load(Ordering::SeqCst) == 1 }).await?;
    within(handle.stop()).await?;
    assert!(
        finished.load(Ordering::SeqCst),
        "stop waited for the handler"
    );
    assert_eq!(&within(slow).await???[..], b"done");
    match asker.request("bounded", "after").await {
        Err(ClientError::NotListening(_)) => {}
        other => panic!("expected not listening after stop, got {other:?}"),
    }
    Ok(())
}

#[tokio::test]
async fn calls_dropped_part_way_leave_nothing_at_the_hub() -> anyhow::Result<()> {
    let hub = memory_hub().await?;
    let c = client(&hub, "canceller").await?;
    let server = client(&hub, "never-answers").await?;
    // Takes requests and keeps them unanswered.
    let mut requests = server.requests().await?;
    let held = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Some(r) = requests.next().await {
            held.push(r);
        }
        held
    });
    let zero = Duration::ZERO;
    for i in 0..100 {
        let _ = tokio::time::timeout(zero, c.subscribe(&format!("s.{i}"))).await;
        let kv = c.kv();
        let _ = tokio::time::timeout(zero, kv.watch(&format!("k.{i}"))).await;
        let _ = tokio::time::timeout(zero, c.presence()).await;
        let _ = tokio::time::timeout(zero, c.request("never-answers", "x")).await;
        let _ = tokio::time::timeout(zero, c.messages()).await;
        let _ = tokio::time::timeout(zero, c.service(&format!("svc.{i}"))).await;
        let _ = tokio::time::timeout(
            zero,
            c.serve(|_req| async move { Ok::<_, String>("x".into()) }),
        )
        .await;
        // A select! branch that loses.
        let group = format!("g.{i}");
        tokio::select! {
            _ = c.subscribe_group(&group, "q") => {}
            _ = tokio::task::yield_now() => {}
        }
    }
    // Whatever reached the hub was undone there. (An undo that found the
    // send queue full is queued by a task: it may land after the flush, so
    // the hub's state is polled, one round trip a time.)
    within(c.flush()).await??;
    let clean = |s: &switchboard::HubStatus| {
        let counter = |name: &str| s.counters.get(name).copied().unwrap_or(0);
        s.subscriptions == 0
            && s.pending_requests == 0
            && counter("kv_watches") == 0
            && counter("presence_watchers") == 0
            && counter("queue_groups") == 0
    };
    let mut status = within(c.status()).await??;
    let tries = std::time::Instant::now();
    while !clean(&status) && tries.elapsed() < switchboard_tests::WAIT {
        tokio::task::yield_now().await;
        status = within(c.status()).await??;
    }
    assert!(clean(&status), "{status:?}");
    // Not listening either.
    assert!(matches!(
        server.send("canceller", "x").await,
        Err(ClientError::NotListening(_))
    ));
    assert!(matches!(
        server.request("canceller", "x").await,
        Err(ClientError::NotListening(_))
    ));
    drop(server);
    drop(held);
    Ok(())
}

#[tokio::test]
async fn listening_and_headers_over_websocket() -> anyhow::Result<()> {
    let hub = switchboard::Hub::builder()
        .token(switchboard_tests::TOKEN)
        .listen("127.0.0.1:0")
        .http("127.0.0.1:0")
        .write_hint(false)
        .start()
        .await?;
    let url = format!("ws://{}/v1/ws", hub.http_addr().expect("gateway"));
    let web = switchboard::Client::builder("web")
        .websocket(&url)
        .token(switchboard_tests::TOKEN)
        .connect()
        .await?;
    let tcp = client(&hub, "tcp").await?;
    // Not listening yet: refused at once, in both directions.
    assert!(matches!(
        tcp.send("web", "x").await,
        Err(ClientError::NotListening(_))
    ));
    assert!(matches!(
        web.send("tcp", "x").await,
        Err(ClientError::NotListening(_))
    ));
    let mut web_inbox = web.messages().await?;
    let mut tcp_inbox = tcp.messages().await?;
    let headers = Headers::from([("via", "ws")]);
    tcp.send_with_headers("web", "to web", headers.clone())
        .await?;
    web.send_with_headers("tcp", "to tcp", headers.clone())
        .await?;
    let m = within(web_inbox.next()).await?.expect("message");
    assert_eq!((&m.payload[..], &m.headers), (&b"to web"[..], &headers));
    let m = within(tcp_inbox.next()).await?.expect("message");
    assert_eq!((&m.payload[..], &m.headers), (&b"to tcp"[..], &headers));
    assert_eq!(
        within(tcp.clients())
            .await??
            .iter()
            .find(|c| c.client_id == "web")
            .map(|c| c.transport.clone()),
        Some("ws".to_string())
    );
    Ok(())
}

#[tokio::test]
async fn a_reply_over_the_frame_limit_reaches_the_requester_as_an_error() -> anyhow::Result<()> {
    let hub = memory_hub().await?;
    let server = client(&hub, "bulky").await?;
    let _serving = server
        .serve(|req| async move {
            if &req.payload()[..] == b"big" {
                Ok::<_, String>(vec![0u8; switchboard::wire::DEFAULT_MAX_FRAME + 1].into())
            } else {
                Ok("small".into())
            }
        })
        .await?;
    let asker = client(&hub, "asker").await?;
    // Well inside the 30 s default timeout: the requester is told at once.
    let options = RequestOptions::default().timeout(Duration::from_secs(30));
    let started = std::time::Instant::now();
    match within(asker.request_with_options("bulky", "big", options)).await? {
        Err(ClientError::Remote(msg)) => {
            assert!(msg.contains("could not send its reply"), "{msg}");
            assert!(msg.contains("exceeds the hub's limit"), "{msg}");
        }
        other => panic!("expected an error reply, got {other:?}"),
    }
    assert!(started.elapsed() < Duration::from_secs(25));
    // The responder keeps serving.
    assert_eq!(
        &within(asker.request("bulky", "again")).await??[..],
        b"small"
    );
    Ok(())
}
