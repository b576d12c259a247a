//! A hub whose NATS node is gone: local traffic goes on, the router never
//! waits on NATS (publishes for other hubs wait in a bounded queue, or in
//! the NATS client's own buffer while it reconnects).

mod common;

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use common::{eventually, nats_server, wait_members, Cluster, FedHub, WAIT};

/// Hub A's queue towards NATS, bytes.
const QUEUE: usize = 2 * 1024 * 1024;

/// Generous bound on the local publishes while the NATS node is gone.
const ALL_LOCAL: Duration = Duration::from_secs(240);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_traffic_goes_on_when_the_hubs_nats_node_is_gone() -> anyhow::Result<()> {
    let Some(bin) = nats_server() else {
        return Ok(());
    };
    let mut cluster = Cluster::start(&bin, 3).await?;
    let lease = Duration::from_secs(5);
    let a = FedHub::start_with("hub-a", &cluster.nodes[0].url, lease, |o| {
        o.queue_bytes = QUEUE;
    })
    .await?;
    let b = FedHub::start("hub-b", &cluster.nodes[1].url, lease).await?;
    wait_members(&[&a, &b]).await;
    let publisher = a.client("pub").await?;
    let local = a.client("local").await?;
    let far = b.client("far").await?;
    let mut local_sub = local.subscribe("load.>").await?;
    let _far_sub = far.subscribe("load.>").await?;
    eventually("hub-b subscribed", || {
        b.fed.routing_stats().patterns.load(Ordering::Relaxed) == 1
    })
    .await;

    cluster.nodes[0].kill();
    // Twice what hub A's queue towards NATS holds (each publish counts
    // at least its queue entry): more than the queue and the NATS
    // client's own buffer take while it reconnects.
    const N: usize = 2 * QUEUE / switchboard_federation::routing::FANOUT_ENTRY_COST + 1;
    let reader = tokio::spawn(async move {
        let mut n = 0;
        while n < N {
            match tokio::time::timeout(WAIT, local_sub.recv()).await {
                Ok(Some(_)) => n += 1,
                _ => break,
            }
        }
        n
    });
    let t = Instant::now();
    for i in 0..N {
        publisher.publish("load.x", format!("m{i}")).await?;
    }
    assert_eq!(reader.await?, N, "every local delivery made");
    eprintln!(
        "{N} publishes, each delivered locally, in {:?}",
        t.elapsed()
    );
    // Speed is not the point (a debug build on a loaded 2-core machine
    // took 63 s): a router that waited on NATS would take far longer —
    // a publish waiting even 5 ms would add 290 s — or never finish.
    assert!(t.elapsed() < ALL_LOCAL, "{:?}", t.elapsed());
    // Local request/reply too.
    let _serve = local
        .serve(|req| async move { Ok::<_, String>(req.payload().clone()) })
        .await?;
    assert_eq!(&publisher.request("local", "ping").await?[..], b"ping");
    Ok(())
}
