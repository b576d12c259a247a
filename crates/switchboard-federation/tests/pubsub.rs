//! Publish/subscribe and broadcast across three hubs, each on its own node
//! of a 3-node nats-server cluster: every subscriber gets every message
//! exactly once and in the order it was published, whatever hub it is on
//! and however its hub's patterns overlap.

mod common;

use std::time::Duration;

use common::{
    eventually, nats_server, two_hubs, wait_interest, wait_members, Cluster, FedHub, SERVICE, WAIT,
};
use switchboard::{Client, Subscription};

/// Collects `sub`'s messages until none came for a while; their payloads.
async fn collect(sub: &mut Subscription, want: usize) -> Vec<String> {
    let mut got = Vec::new();
    while got.len() < want {
        match tokio::time::timeout(WAIT, sub.recv()).await {
            // Probes sent while the cluster's interest spread (see below).
            Ok(Some(m)) if m.payload.starts_with(b"probe") => {}
            Ok(Some(m)) => got.push(format!(
                "{}:{}",
                m.from,
                String::from_utf8_lossy(&m.payload)
            )),
            _ => break,
        }
    }
    // Nothing more (no duplicates) within a short quiet period.
    if let Ok(Some(m)) = tokio::time::timeout(Duration::from_millis(500), sub.recv()).await {
        got.push(format!("extra {}", String::from_utf8_lossy(&m.payload)));
    }
    got
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_subscriber_gets_each_publish_once_across_three_hubs() -> anyhow::Result<()> {
    let Some(bin) = nats_server() else {
        return Ok(());
    };
    let cluster = Cluster::start(&bin, 3).await?;
    let lease = Duration::from_secs(5);
    let a = FedHub::start("hub-a", &cluster.nodes[0].url, lease).await?;
    let b = FedHub::start("hub-b", &cluster.nodes[1].url, lease).await?;
    let c = FedHub::start("hub-c", &cluster.nodes[2].url, lease).await?;
    wait_members(&[&a, &b, &c]).await;

    let publisher = a.client("pub.a").await?;
    // On the publisher's own hub, on a hub with overlapping patterns
    // (two clients, three subscriptions), and on a third hub.
    let sa = a.client("sub.a").await?;
    let sb1 = b.client("sub.b1").await?;
    let sb2 = b.client("sub.b2").await?;
    let sc = c.client("sub.c").await?;
    let mut subs: Vec<(&str, &Client, Subscription)> = vec![
        ("a t.*", &sa, sa.subscribe("t.*").await?),
        ("b1 t.>", &sb1, sb1.subscribe("t.>").await?),
        ("b1 t.x", &sb1, sb1.subscribe("t.x").await?),
        ("b2 *.x", &sb2, sb2.subscribe("*.x").await?),
        ("c t.x", &sc, sc.subscribe("t.x").await?),
    ];
    // A pattern nobody publishes to, and one that ends again.
    let other = sc.subscribe("u.>").await?;
    other.unsubscribe().await?;
    eventually("the hubs hold their NATS subscriptions", || {
        a.fed
            .routing_stats()
            .patterns
            .load(std::sync::atomic::Ordering::Relaxed)
            == 1
            && b.fed
                .routing_stats()
                .patterns
                .load(std::sync::atomic::Ordering::Relaxed)
                == 3
            && c.fed
                .routing_stats()
                .patterns
                .load(std::sync::atomic::Ordering::Relaxed)
                == 1
    })
    .await;

    // A NATS subscription reaches the other nodes of the cluster a moment
    // after its own node has it (core NATS is at-most-once meanwhile):
    // probe until every subscriber has seen one, within the test bound.
    // `collect` skips the probes; the publisher's order puts them first.
    let deadline = tokio::time::Instant::now() + WAIT;
    let mut seen = vec![false; subs.len()];
    while seen.iter().any(|s| !s) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the cluster never carried a probe to every subscriber"
        );
        publisher.publish("t.x", "probe").await?;
        for (i, (_, _, sub)) in subs.iter_mut().enumerate() {
            while let Ok(Some(_)) =
                tokio::time::timeout(Duration::from_millis(50), sub.recv()).await
            {
                seen[i] = true;
            }
        }
    }

    const N: usize = 100;
    for i in 0..N {
        publisher.publish("t.x", format!("m{i}")).await?;
    }
    // Matched by `t.*` (hub-a) and `t.>` (hub-b) only; its second
    // segment escaped on NATS.
    publisher.publish("t.y=1~", "other").await?;
    let want: Vec<String> = (0..N).map(|i| format!("pub.a:m{i}")).collect();
    for (name, _, sub) in &mut subs {
        let also_other = name.starts_with("a ") || name.starts_with("b1 t.>");
        let mut got = collect(sub, N + usize::from(also_other)).await;
        if also_other {
            // These also match "t.y=1~".
            let at = got.iter().position(|m| m == "pub.a:other");
            got.remove(at.unwrap_or_else(|| panic!("{name}: the escaped topic")));
        }
        // Hub-b holds three overlapping NATS subscriptions; its ordered
        // intake keeps the publisher's order all the same.
        assert_eq!(got, want, "{name}: each message exactly once, in order");
    }
    for hub in [&a, &b, &c] {
        assert_eq!(hub.fed.routing_stats().rejected(), 0);
    }

    // Broadcast across hubs: every listening client of every hub, once.
    let mut inboxes = vec![
        sb1.messages().await?,
        sc.messages().await?,
        sa.messages().await?,
    ];
    publisher.broadcast("hello all").await?;
    for inbox in &mut inboxes {
        let m = tokio::time::timeout(WAIT, inbox.recv())
            .await?
            .expect("the broadcast");
        assert_eq!((&*m.from, &m.payload[..]), ("pub.a", &b"hello all"[..]));
        assert!(
            tokio::time::timeout(Duration::from_millis(300), inbox.recv())
                .await
                .is_err(),
            "once"
        );
    }
    Ok(())
}

/// A burst of publishes larger than the queue towards NATS used to hold
/// (8,192 entries), sent as fast as the client can: while NATS keeps up,
/// the queue's byte limit (a client outbox's, 32 MiB) takes the burst,
/// and every publish reaches the other hub's subscriber once, in order,
/// nothing dropped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_crosses_hubs_without_drops_while_nats_keeps_up() -> anyhow::Result<()> {
    use std::sync::atomic::Ordering;
    let Some((cluster, a, b)) = two_hubs().await? else {
        return Ok(());
    };
    let publisher = a.client("burst.pub").await?;
    let subscriber = b.client("burst.sub").await?;
    let mut sub = subscriber.subscribe("burst.x").await?;
    // Hub A's node must know of hub B's subscription before the burst.
    wait_interest(
        cluster.nodes[0].http_port,
        &format!("sb.{SERVICE}.t.burst.x"),
    )
    .await;
    let dropped_before = a.fed.routing_stats().dropped.load(Ordering::Relaxed);

    const N: usize = 20_000;
    let reader = tokio::spawn(async move { collect(&mut sub, N).await });
    for i in 0..N {
        publisher.publish_nowait("burst.x", format!("m{i}")).await?;
    }
    let got = reader.await?;
    let want: Vec<String> = (0..N).map(|i| format!("burst.pub:m{i}")).collect();
    let stats = a.fed.routing_stats();
    assert_eq!(
        stats.dropped.load(Ordering::Relaxed) - dropped_before,
        0,
        "nothing dropped towards NATS (queue full: {})",
        stats.queue_full.load(Ordering::Relaxed)
    );
    assert_eq!(got.len(), N, "every publish arrived");
    assert!(got == want, "each once, in order");
    assert_eq!(b.fed.routing_stats().rejected(), 0);
    Ok(())
}
