//! Queue groups across hubs: a group with members on three hubs, each on
//! its own node of a 3-node nats-server cluster, gets each publish once
//! cluster-wide (one NATS queue subscription per hub, one local member
//! per message), spread over the hubs; a plain subscriber still gets
//! every publish; a hub with members serves its own clients' publishes.

mod common;

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::time::Duration;

use common::{eventually, nats_server, wait_members, Cluster, FedHub, WAIT};
use switchboard::Subscription;

/// The payload of the probes sent while the cluster's interest spreads.
const PROBE: &str = "probe";

/// Takes what is waiting on `sub` within `quiet`: (payload) per message.
async fn drain(sub: &mut Subscription, quiet: Duration) -> Vec<String> {
    let mut got = Vec::new();
    while let Ok(Some(m)) = tokio::time::timeout(quiet, sub.recv()).await {
        got.push(String::from_utf8_lossy(&m.payload).into_owned());
    }
    got
}

/// Like [`drain`], without the probes (one may still come in late).
async fn drain_work(sub: &mut Subscription, quiet: Duration) -> Vec<String> {
    let mut got = drain(sub, quiet).await;
    got.retain(|m| m != PROBE);
    got
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_queue_group_across_three_hubs_gets_each_publish_once() -> anyhow::Result<()> {
    let Some(bin) = nats_server() else {
        return Ok(());
    };
    // A fourth node for the publisher's hub, which has no members: its
    // publishes are the cluster's to spread.
    let cluster = Cluster::start(&bin, 4).await?;
    let lease = Duration::from_secs(5);
    let a = FedHub::start("hub-a", &cluster.nodes[0].url, lease).await?;
    let b = FedHub::start("hub-b", &cluster.nodes[1].url, lease).await?;
    let c = FedHub::start("hub-c", &cluster.nodes[2].url, lease).await?;
    let d = FedHub::start("hub-d", &cluster.nodes[3].url, lease).await?;
    wait_members(&[&a, &b, &c, &d]).await;

    let publisher = d.client("pub").await?;
    // Two members of group "workers" on every hub.
    let mut clients = Vec::new();
    let mut members: Vec<(String, Subscription)> = Vec::new();
    for (hub, name) in [(&a, "a"), (&b, "b"), (&c, "c")] {
        for i in 0..2 {
            let client = hub.client(&format!("worker.{name}{i}")).await?;
            members.push((
                name.to_owned(),
                client.subscribe_group("g.>", "workers").await?,
            ));
            clients.push(client);
        }
    }
    // A plain subscriber on hub-c.
    let plain_client = c.client("plain.c").await?;
    let mut plain = plain_client.subscribe("g.*").await?;
    eventually("each hub holds its NATS subscriptions", || {
        let n = |h: &FedHub| h.fed.routing_stats().patterns.load(Ordering::Relaxed);
        n(&a) == 1 && n(&b) == 1 && n(&c) == 2 && n(&d) == 0
    })
    .await;

    // Interest reaches the other NATS nodes a moment later: probe until
    // the plain subscriber and every hub's members have had one.
    let deadline = tokio::time::Instant::now() + WAIT;
    let mut seen = HashMap::new();
    let mut plain_seen = false;
    while !(plain_seen && seen.len() == 3) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the cluster never carried probes to every hub: {seen:?}"
        );
        publisher.publish("g.probe", PROBE).await?;
        for (hub, sub) in &mut members {
            if !drain(sub, Duration::from_millis(20)).await.is_empty() {
                seen.insert(hub.clone(), ());
            }
        }
        plain_seen |= !drain(&mut plain, Duration::from_millis(20))
            .await
            .is_empty();
    }
    // Probes still on their way are told apart by their payload below.

    const N: usize = 300;
    for i in 0..N {
        publisher.publish("g.work", format!("m{i}")).await?;
    }
    let mut per_hub: HashMap<String, usize> = HashMap::new();
    let mut all = Vec::new();
    let deadline = tokio::time::Instant::now() + WAIT;
    while all.len() < N && tokio::time::Instant::now() < deadline {
        for (hub, sub) in &mut members {
            let got = drain_work(sub, Duration::from_millis(100)).await;
            *per_hub.entry(hub.clone()).or_default() += got.len();
            all.extend(got);
        }
    }
    // Nothing more (no second copies) within a quiet period.
    tokio::time::sleep(Duration::from_millis(500)).await;
    for (_, sub) in &mut members {
        all.extend(drain_work(sub, Duration::from_millis(50)).await);
    }
    let mut want: Vec<String> = (0..N).map(|i| format!("m{i}")).collect();
    all.sort();
    want.sort();
    assert_eq!(all.len(), want.len(), "{per_hub:?}");
    assert_eq!(all, want, "each publish to exactly one member cluster-wide");
    for hub in ["a", "b", "c"] {
        assert!(
            per_hub.get(hub).copied().unwrap_or(0) > 0,
            "hub-{hub}'s members got none: {per_hub:?}"
        );
    }

    // The plain subscriber got every publish, in order.
    let mut got = Vec::new();
    while got.len() < N {
        match tokio::time::timeout(WAIT, plain.recv()).await {
            Ok(Some(m)) if m.payload == PROBE.as_bytes() => {}
            Ok(Some(m)) => got.push(String::from_utf8_lossy(&m.payload).into_owned()),
            _ => break,
        }
    }
    let want: Vec<String> = (0..N).map(|i| format!("m{i}")).collect();
    assert_eq!(got, want, "the plain subscriber: every publish, in order");
    for hub in [&a, &b, &c, &d] {
        assert_eq!(hub.fed.routing_stats().rejected(), 0);
    }

    // A publish from a hub with members of the group goes to one of its
    // own (as NATS prefers local queue subscribers); the member the
    // cluster picks elsewhere is not given a second copy.
    let local = a.client("pub.a").await?;
    for i in 0..20 {
        local.publish("g.work", format!("l{i}")).await?;
    }
    // All 20 arrive, then nothing more (no second copy) within a quiet
    // period.
    let mut got = Vec::new();
    let deadline = tokio::time::Instant::now() + WAIT;
    while got.len() < 20 && tokio::time::Instant::now() < deadline {
        for (hub, sub) in &mut members {
            for m in drain_work(sub, Duration::from_millis(100)).await {
                got.push(format!("{hub}:{m}"));
            }
        }
    }
    for (hub, sub) in &mut members {
        for m in drain_work(sub, Duration::from_millis(300)).await {
            got.push(format!("{hub}:{m}"));
        }
    }
    got.sort();
    let mut want: Vec<String> = (0..20).map(|i| format!("a:l{i}")).collect();
    want.sort();
    assert_eq!(got, want, "a local publish: one local member each");
    Ok(())
}
