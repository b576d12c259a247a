//! A hub that loses the NATS cluster and gets it back: messages for
//! clients of other hubs fail at once while it is cut off, local traffic
//! goes on, drops towards NATS show in the hub's status; on reconnection
//! the hub writes its ids again, closes a local client whose id another
//! hub took meanwhile, and routing and pub/sub across hubs work again.

mod common;

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use common::{eventually, nats_server, wait_members, Cluster, FedHub, WAIT};
use futures::StreamExt;
use switchboard::{ClientEvent, ErrorCode};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hub_cut_off_fails_fast_and_recovers_on_reconnect() -> anyhow::Result<()> {
    let Some(bin) = nats_server() else {
        return Ok(());
    };
    let mut cluster = Cluster::start(&bin, 3).await?;
    let lease = Duration::from_secs(2);
    // Hub A reaches the cluster through node 0 only, so killing node 0
    // cuts it off. Its queue towards NATS holds 1 MiB, so that the
    // publishes below overflow it.
    let a = FedHub::start_with("hub-a", &cluster.nodes[0].url, lease, |o| {
        o.discover_servers = false;
        o.queue_bytes = 1024 * 1024;
    })
    .await?;
    let b = FedHub::start("hub-b", &cluster.nodes[1].url, lease).await?;
    wait_members(&[&a, &b]).await;

    let on_a = a.client("req.a").await?;
    let dup_a = a.client("dup").await?;
    let mut dup_events = dup_a.events();
    let local = a.client("local.a").await?;
    let _local_serve = local
        .serve(|req| async move { Ok::<_, String>(req.payload().clone()) })
        .await?;
    let sub_a = a.client("sub.a").await?;
    let mut news = sub_a.subscribe("news.>").await?;
    let far = b.client("far.b").await?;
    let _far_serve =
        far.serve(|req| async move {
            Ok::<_, String>([b"b: ".as_slice(), req.payload()].concat().into())
        })
        .await?;
    eventually("each hub sees the other's clients", || {
        a.fed.directory().holder("far.b").as_deref() == Some("hub-b")
            && b.fed.directory().holder("dup").as_deref() == Some("hub-a")
            && b.fed.directory().holder("req.a").as_deref() == Some("hub-a")
    })
    .await;
    assert_eq!(&on_a.request("far.b", "x").await?[..], b"b: x");

    // 1. Cut off: a message for a client of hub B fails at once.
    cluster.nodes[0].kill();
    eventually("hub A notices it lost the cluster", || {
        !a.fed.is_connected()
    })
    .await;
    let t = Instant::now();
    let e = on_a
        .request_with("far.b", "", "x", Duration::from_secs(10))
        .await
        .expect_err("cut off");
    assert_eq!(e.code(), Some(ErrorCode::NoSuchClient), "{e}");
    assert!(e.to_string().contains("NATS cluster"), "{e}");
    let e = on_a.send("far.b", "x").await.expect_err("cut off");
    assert_eq!(e.code(), Some(ErrorCode::NoSuchClient), "{e}");
    // At once: well within the request's 10 s (generous for a loaded
    // machine running a debug build).
    assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());
    // Local traffic goes on.
    assert_eq!(&on_a.request("local.a", "ping").await?[..], b"ping");

    // 3. Publishes for other hubs beyond the queue towards NATS are
    // dropped, counted and shown in the hub's status like a slow
    // client's drops.
    for i in 0..30_000 {
        on_a.publish("load.x", format!("m{i}")).await?;
    }
    let stats = a.fed.routing_stats();
    eventually("the queue towards NATS overflowed", || {
        stats.queue_full.load(Ordering::Relaxed) > 0
    })
    .await;
    let status = on_a.status().await?;
    let shown = status.counters.get("dropped:~remote").copied().unwrap_or(0);
    assert!(shown > 0, "{:?}", status.counters);
    assert!(status.dropped >= shown, "{} < {shown}", status.dropped);
    assert!(shown >= stats.queue_full.load(Ordering::Relaxed) - 1);

    // Longer than the lease: hub B releases hub A's ids, and a client
    // named like one of them joins hub B.
    eventually("hub B released hub A's ids", || {
        b.fed.directory().holder("dup").is_none() && b.fed.directory().holder("req.a").is_none()
    })
    .await;
    let dup_b = b.client("dup").await?;
    eventually("hub B wrote dup", || {
        b.fed.directory().stats().written() >= 2
    })
    .await;

    // 2. Back: hub A writes its ids again and closes its own "dup".
    cluster.nodes[0].restart().await?;
    eventually("hub A reconnected", || a.fed.is_connected()).await;
    let closed = tokio::time::timeout(WAIT, async {
        while let Some(ev) = dup_events.next().await {
            if let ClientEvent::Closed { reason } = ev {
                return Some(reason);
            }
        }
        None
    })
    .await?
    .expect("hub A's dup was closed");
    // (The client says why in its own words: ID_TAKEN_OVER.)
    assert!(closed.contains("took over"), "{closed}");
    // Counted once, by whichever path comes to it first: the id write
    // after the reconnection, the id watch seeing hub B's entry, or the
    // watch's claim of the released id losing to hub B's entry. (The
    // count may come just after the client saw its close.)
    let taken_back = || a.fed.directory().stats().taken_back.load(Ordering::Relaxed);
    eventually("hub A counted its dup taken back", || taken_back() >= 1).await;
    assert_eq!(taken_back(), 1);
    eventually("hub B sees hub A's ids again", || {
        b.fed.directory().holder("req.a").as_deref() == Some("hub-a")
            && b.fed.directory().holder("sub.a").as_deref() == Some("hub-a")
            && b.fed.directory().holder("local.a").as_deref() == Some("hub-a")
            && b.fed.directory().holder("dup").as_deref() == Some("hub-b")
    })
    .await;
    // Hub A learns it from its own watch, which may trail hub B's.
    eventually("hub A sees hub B hold dup", || {
        a.fed.directory().holder("dup").as_deref() == Some("hub-b")
    })
    .await;
    // Hub A routes to a live holder only, and judges hub B's liveness by
    // the heartbeats it has seen since it came back.
    eventually("hub A sees far.b on a live hub B again", || {
        a.fed.directory().holder("far.b").as_deref() == Some("hub-b")
            && a.fed.directory().is_live("hub-b")
    })
    .await;

    // Routing across hubs works again, both ways.
    assert_eq!(&on_a.request("far.b", "y").await?[..], b"b: y");
    assert_eq!(&far.request("local.a", "z").await?[..], b"z");
    // Pub/sub: hub A's NATS subscriptions came back with the connection.
    let deadline = Instant::now() + WAIT;
    let got = loop {
        assert!(
            Instant::now() < deadline,
            "no publish from hub B reached hub A"
        );
        dup_b.publish("news.x", "again").await?;
        if let Ok(Some(m)) = tokio::time::timeout(Duration::from_millis(200), news.recv()).await {
            break m;
        }
    };
    assert_eq!(&got.payload[..], b"again");
    assert_eq!(a.fed.routing_stats().rejected(), 0);
    assert_eq!(b.fed.routing_stats().rejected(), 0);
    Ok(())
}
