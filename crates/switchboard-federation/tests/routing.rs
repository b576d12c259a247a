//! Direct messages and request/reply across hubs, each hub on its own node
//! of a 3-node nats-server cluster.

mod common;

use std::time::{Duration, Instant};

use common::{eventually, two_hubs, WAIT};
use switchboard::{ErrorCode, Headers, RequestOptions, ServeOptions};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn direct_and_request_reply_cross_hubs_both_ways() -> anyhow::Result<()> {
    let Some((_cluster, a, b)) = two_hubs().await? else {
        return Ok(());
    };

    // An id with characters NATS treats specially, on each hub.
    let on_a = a.client("dev.a *>").await?;
    let on_b = b.client("dev.b").await?;
    let mut a_msgs = on_a.messages().await?;
    let mut b_msgs = on_b.messages().await?;
    let a_serve = on_a
        .serve_with_headers(ServeOptions::default(), |req| async move {
            let mut h = Headers::new();
            h.insert("answered-by", "a");
            Ok::<_, String>(([b"a got ".as_slice(), req.payload()].concat().into(), h))
        })
        .await?;
    let b_serve = on_b
        .serve_with_headers(ServeOptions::default(), |req| async move {
            let mut h = Headers::new();
            h.insert("answered-by", "b");
            if let Some(v) = req.headers().get("trace") {
                h.insert("trace", v.clone());
            }
            Ok::<_, String>(([b"b got ".as_slice(), req.payload()].concat().into(), h))
        })
        .await?;
    for (hub, id, holder) in [(&a, "dev.b", "hub-b"), (&b, "dev.a *>", "hub-a")] {
        eventually("each hub sees the other's client", || {
            hub.fed.directory().holder(id).as_deref() == Some(holder)
        })
        .await;
    }

    // Direct, both ways, headers kept, the sender named.
    let mut h = Headers::new();
    h.insert("k", "v");
    on_a.send_with_headers("dev.b", "hello b", h.clone())
        .await?;
    let m = tokio::time::timeout(WAIT, b_msgs.recv())
        .await?
        .expect("a message");
    assert_eq!((&*m.from, &m.payload[..]), ("dev.a *>", &b"hello b"[..]));
    assert_eq!(m.headers.get_str("k"), Some("v"));
    on_b.send("dev.a *>", "hello a").await?;
    let m = tokio::time::timeout(WAIT, a_msgs.recv())
        .await?
        .expect("a message");
    assert_eq!((&*m.from, &m.payload[..]), ("dev.b", &b"hello a"[..]));

    // Request/reply, both ways, headers both ways.
    let mut h = Headers::new();
    h.insert("trace", "t-1");
    let reply = on_a
        .request_with_options("dev.b", "q1", RequestOptions::default().headers(h))
        .await?;
    assert_eq!(&reply.payload[..], b"b got q1");
    assert_eq!(reply.from, "dev.b");
    assert_eq!(reply.headers.get_str("answered-by"), Some("b"));
    assert_eq!(reply.headers.get_str("trace"), Some("t-1"));
    assert_eq!(&on_b.request("dev.a *>", "q2").await?[..], b"a got q2");
    // Many in flight at once, answered each to its own.
    let calls = (0..50).map(|i| {
        let c = &on_a;
        async move { c.request("dev.b", format!("n{i}")).await }
    });
    for (i, r) in futures::future::join_all(calls)
        .await
        .into_iter()
        .enumerate()
    {
        assert_eq!(r?, format!("b got n{i}").as_bytes());
    }

    // An id known nowhere: NO_SUCH_CLIENT at once.
    let t = Instant::now();
    let e = on_a.request("nobody", "x").await.expect_err("unknown");
    assert_eq!(e.code(), Some(ErrorCode::NoSuchClient), "{e}");
    let e = on_a.send("nobody", "x").await.expect_err("unknown");
    assert_eq!(e.code(), Some(ErrorCode::NoSuchClient), "{e}");
    // At once: far within the default request timeout (generous for a
    // loaded machine running a debug build).
    assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());

    // Known on the other hub but not serving requests: NOT_LISTENING.
    let idle = b.client("idle.b").await?;
    eventually("hub-a sees idle.b", || {
        a.fed.directory().holder("idle.b").is_some()
    })
    .await;
    let e = on_a
        .request("idle.b", "x")
        .await
        .expect_err("not listening");
    assert_eq!(e.code(), Some(ErrorCode::NotListening), "{e}");

    // Serving but silent: TIMEOUT from the requester's hub, in time.
    let slow = b.client("slow.b").await?;
    let mut slow_reqs = slow.requests().await?;
    eventually("hub-a sees slow.b", || {
        a.fed.directory().holder("slow.b").is_some()
    })
    .await;
    let t = Instant::now();
    let e = on_a
        .request_with("slow.b", "", "x", Duration::from_millis(500))
        .await
        .expect_err("no answer");
    assert_eq!(e.code(), Some(ErrorCode::Timeout), "{e}");
    // In time: the wait a request without its timeout would see is
    // WAIT (60 s); the bound leaves a loaded machine room.
    assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());
    // The request did reach it; its late answer goes nowhere.
    let late = tokio::time::timeout(WAIT, slow_reqs.recv())
        .await?
        .expect("the request");
    let _ = late.reply("too late").await;

    drop(idle);
    a_serve.stop().await;
    b_serve.stop().await;
    assert_eq!(a.fed.routing_stats().rejected(), 0);
    assert_eq!(b.fed.routing_stats().rejected(), 0);
    Ok(())
}
