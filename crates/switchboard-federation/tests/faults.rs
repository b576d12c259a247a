//! Faults of a whole hub: killed without a word (its runtime stopped,
//! nothing released), and cut off from the cluster (its NATS node
//! stopped) and healed (the node started again on the same ports and
//! store).

mod common;

use std::time::{Duration, Instant};

use common::{eventually, nats_server, wait_members, Cluster, FedHub, WAIT};
use switchboard::{Client, ClientError};

/// A request from `from` to `to` that succeeds within `WAIT`, each try
/// bounded by a short timeout.
async fn answered_eventually(from: &Client, to: &str, what: &str) -> Duration {
    let t = Instant::now();
    loop {
        if let Ok(Ok(reply)) =
            tokio::time::timeout(Duration::from_secs(2), from.request(to, "ping")).await
        {
            assert_eq!(&reply[..], b"ping", "{what}");
            return t.elapsed();
        }
        assert!(t.elapsed() < WAIT, "{what}: no answer within {WAIT:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn echo(c: &Client) -> Result<switchboard::ServeHandle, ClientError> {
    c.serve(|req| async move { Ok::<_, String>(req.payload().clone()) })
        .await
}

#[test]
fn a_killed_hubs_ids_are_released_after_the_lease_and_register_elsewhere() -> anyhow::Result<()> {
    let Some(bin) = nats_server() else {
        return Ok(());
    };
    let lease = Duration::from_millis(1500);
    // hub-a runs on a runtime of its own, so that it can be killed: the
    // runtime is stopped without a shutdown of the hub or the federation
    // (no id released, no heartbeat deleted, its sockets just close).
    let victim = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let cluster = rt.block_on(Cluster::start(&bin, 3))?;
    let url_a = cluster.nodes[0].url.clone();
    let a = victim.block_on(FedHub::start("hub-a", &url_a, lease))?;
    rt.block_on(async {
        let b = FedHub::start("hub-b", &cluster.nodes[1].url, lease).await?;
        wait_members(&[&a, &b]).await;
        let held = a.client("worker-7").await?;
        let _serve = echo(&held).await?;
        let asker = b.client("asker").await?;
        answered_eventually(&asker, "worker-7", "hub-b reaches hub-a's client").await;
        assert!(b.client("worker-7").await.is_err(), "held on hub-a");

        // Kill hub-a.
        victim.shutdown_background();
        std::mem::forget(a);
        let died = Instant::now();

        eventually("hub-b releases hub-a's id after the lease", || {
            b.fed.directory().holder("worker-7").is_none()
        })
        .await;
        assert!(
            died.elapsed() >= lease / 2,
            "released after {:?}, before the lease of {lease:?} could run out",
            died.elapsed()
        );
        assert!(!b.fed.directory().is_live("hub-a"));
        assert!(b.fed.status().members.is_empty());
        // The killed hub's client comes back on hub-b under its id.
        drop(held);
        let moved = b.client("worker-7").await?;
        let _serve = echo(&moved).await?;
        assert_eq!(&asker.request("worker-7", "ping").await?[..], b"ping");
        // A third hub sees the id on hub-b.
        let c = FedHub::start("hub-c", &cluster.nodes[2].url, lease).await?;
        eventually("hub-c sees the id on hub-b", || {
            c.fed.directory().holder("worker-7").as_deref() == Some("hub-b")
        })
        .await;
        anyhow::Ok(())
    })?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partitioned_hub_serves_locally_and_rejoins_after_healing() -> anyhow::Result<()> {
    let Some(bin) = nats_server() else {
        return Ok(());
    };
    // No advertised URLs: hub-a knows only its own node, so stopping that
    // node cuts it off (instead of it moving to another node).
    let mut cluster = Cluster::start_with(&bin, 3, "no_advertise: true").await?;
    let lease = Duration::from_secs(2);
    let a = FedHub::start("hub-a", &cluster.nodes[0].url, lease).await?;
    let b = FedHub::start("hub-b", &cluster.nodes[1].url, lease).await?;
    wait_members(&[&a, &b]).await;
    let a1 = a.client("a1").await?;
    let a2 = a.client("a2").await?;
    let b1 = b.client("b1").await?;
    let b2 = b.client("b2").await?;
    let _sa = echo(&a1).await?;
    let _sb = echo(&b1).await?;
    answered_eventually(&a2, "b1", "a → b before the partition").await;
    answered_eventually(&b2, "a1", "b → a before the partition").await;

    // Partition: hub-a's node stops.
    cluster.nodes[0].kill();
    eventually("hub-a sees it is cut off", || !a.fed.status().connected).await;
    // Local traffic on hub-a goes on: request/reply and pub/sub.
    let t = Instant::now();
    assert_eq!(&a2.request("a1", "ping").await?[..], b"ping");
    let mut sub = a1.subscribe("local.>").await?;
    a2.publish("local.x", "m").await?;
    let m = tokio::time::timeout(WAIT, sub.recv())
        .await?
        .expect("a message");
    assert_eq!(&m.payload[..], b"m");
    assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());
    // Longer than the lease: hub-b takes hub-a for dead and frees its ids.
    eventually("hub-b releases hub-a's ids", || {
        b.fed.directory().holder("a1").is_none() && !b.fed.directory().is_live("hub-a")
    })
    .await;

    // Heal: the node comes back on the same ports and store.
    let healed = Instant::now();
    cluster.nodes[0].restart().await?;
    eventually("hub-a is connected again", || a.fed.status().connected).await;
    let ab = answered_eventually(&a2, "b1", "a → b after healing").await;
    let ba = answered_eventually(&b2, "a1", "b → a after healing").await;
    eprintln!(
        "healed: a → b after {ab:?}, b → a after {ba:?}, in all {:?}",
        healed.elapsed()
    );
    assert_eq!(
        b.fed.directory().holder("a1").as_deref(),
        Some("hub-a"),
        "hub-a claimed its clients' ids again"
    );
    // Written again on reconnection (or, had the connection stayed up,
    // when the watch showed the release): either way both ids are hub-a's.
    eventually("hub-a's ids are its own again on hub-b", || {
        b.fed.directory().holder("a2").as_deref() == Some("hub-a")
    })
    .await;
    assert_eq!(b.fed.status().members, ["hub-a"]);
    Ok(())
}
