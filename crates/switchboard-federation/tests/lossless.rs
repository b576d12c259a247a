//! The lossless path across hubs: confirmed directs (`Client::send`) go
//! over the replicated JetStream stream, each hub on its own node of a
//! 3-node nats-server cluster.

mod common;

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use common::{eventually, nats_server, wait_members, Cluster, FedHub, WAIT};
use switchboard::Client;

const N: usize = 1000;

/// Waits until `hub` sees `id` held by `holder`.
async fn sees(hub: &FedHub, id: &str, holder: &str) {
    eventually("the sender's hub sees the target's", || {
        hub.fed.directory().holder(id).as_deref() == Some(holder)
    })
    .await;
}

/// Sends `0..N` from `from` to `to`, each confirmed or not: the numbers
/// confirmed. With `midway`, called once after `N / 3` sends.
async fn send_all(from: &Client, to: &str, mut midway: impl FnMut()) -> Vec<usize> {
    let mut confirmed = Vec::new();
    for i in 0..N {
        if i == N / 3 {
            midway();
        }
        match tokio::time::timeout(Duration::from_secs(20), from.send(to, i.to_string())).await {
            Ok(Ok(())) => confirmed.push(i),
            Ok(Err(e)) => eprintln!("send {i}: {e}"),
            Err(_) => eprintln!("send {i}: no answer within 20 s"),
        }
    }
    confirmed
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn confirmed_directs_arrive_once_and_in_order() -> anyhow::Result<()> {
    let Some(bin) = nats_server() else {
        return Ok(());
    };
    let cluster = Cluster::start(&bin, 3).await?;
    let lease = Duration::from_secs(5);
    let a = FedHub::start("hub-a", &cluster.nodes[0].url, lease).await?;
    let b = FedHub::start("hub-b", &cluster.nodes[1].url, lease).await?;
    wait_members(&[&a, &b]).await;
    let sender = a.client("sender").await?;
    let target = b.client("target").await?;
    let mut inbox = target.messages().await?;
    sees(&a, "target", "hub-b").await;

    let t = Instant::now();
    let confirmed = send_all(&sender, "target", || {}).await;
    assert_eq!(confirmed.len(), N, "every confirmed send is confirmed");
    eprintln!("{N} confirmed directs across hubs in {:?}", t.elapsed());
    for i in 0..N {
        let m = tokio::time::timeout(WAIT, inbox.recv())
            .await?
            .expect("a message");
        assert_eq!(&*m.from, "sender");
        assert_eq!(m.payload, i.to_string().as_bytes(), "in order");
    }
    assert!(
        tokio::time::timeout(Duration::from_millis(500), inbox.recv())
            .await
            .is_err(),
        "no message twice"
    );
    let (sa, sb) = (
        a.fed.lossless_stats().expect("on"),
        b.fed.lossless_stats().expect("on"),
    );
    assert_eq!(sa.stored.load(Ordering::Relaxed), N as u64);
    assert_eq!(sb.delivered.load(Ordering::Relaxed), N as u64);
    assert_eq!(sb.undeliverable.load(Ordering::Relaxed), 0);
    // Nothing went over core NATS for them.
    assert_eq!(b.fed.routing_stats().received.load(Ordering::Relaxed), 0);
    // A direct without confirmation still goes over core NATS.
    sender.send_nowait("target", "nowait").await?;
    let m = tokio::time::timeout(WAIT, inbox.recv())
        .await?
        .expect("a message");
    assert_eq!(&m.payload[..], b"nowait");
    assert_eq!(b.fed.routing_stats().received.load(Ordering::Relaxed), 1);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nothing_confirmed_is_lost_when_a_nats_node_is_killed() -> anyhow::Result<()> {
    let Some(bin) = nats_server() else {
        return Ok(());
    };
    let mut cluster = Cluster::start(&bin, 3).await?;
    let lease = Duration::from_secs(10);
    let a = FedHub::start("hub-a", &cluster.nodes[0].url, lease).await?;
    let b = FedHub::start("hub-b", &cluster.nodes[1].url, lease).await?;
    wait_members(&[&a, &b]).await;
    let sender = a.client("sender").await?;
    let target = b.client("target").await?;
    let mut inbox = target.messages().await?;
    sees(&a, "target", "hub-b").await;

    // The third node (neither hub's) is killed a third of the way in.
    let mut third = cluster.nodes.remove(2);
    let confirmed = send_all(&sender, "target", || third.kill()).await;
    eprintln!("{} of {N} confirmed around the kill", confirmed.len());
    assert!(
        confirmed.len() >= N / 2,
        "most sends confirmed: {}",
        confirmed.len()
    );
    assert!(
        confirmed.contains(&(N - 1)),
        "the path works after the kill"
    );

    // Every confirmed message arrives; what arrives comes once, in order.
    let mut received: Vec<usize> = Vec::new();
    let deadline = Instant::now() + WAIT;
    while received.last() != Some(&(N - 1)) {
        let left = deadline.saturating_duration_since(Instant::now());
        let m = tokio::time::timeout(left, inbox.recv())
            .await?
            .expect("a message");
        received.push(std::str::from_utf8(&m.payload)?.parse()?);
    }
    assert!(
        received.windows(2).all(|w| w[0] < w[1]),
        "in order, once each: {received:?}"
    );
    let missing: Vec<usize> = confirmed
        .iter()
        .filter(|i| received.binary_search(i).is_err())
        .copied()
        .collect();
    assert!(missing.is_empty(), "confirmed but lost: {missing:?}");
    Ok(())
}

#[test]
fn a_confirmed_direct_for_a_hub_that_died_is_stored_and_counted_when_it_returns(
) -> anyhow::Result<()> {
    let Some(bin) = nats_server() else {
        return Ok(());
    };
    // hub-b runs on a runtime of its own, so that it can be killed
    // without a word (its ids stay in the directory for the lease).
    let victim = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let cluster = rt.block_on(Cluster::start(&bin, 3))?;
    let lease = Duration::from_secs(30);
    let url_b = cluster.nodes[1].url.clone();
    let b = victim.block_on(FedHub::start("hub-b", &url_b, lease))?;
    let (a, sender) = rt.block_on(async {
        let a = FedHub::start("hub-a", &cluster.nodes[0].url, lease).await?;
        wait_members(&[&a, &b]).await;
        let sender = a.client("sender").await?;
        let target = b.client("target").await?;
        let mut inbox = target.messages().await?;
        sees(&a, "target", "hub-b").await;
        sender.send("target", "first").await?;
        let m = tokio::time::timeout(WAIT, inbox.recv())
            .await?
            .expect("a message");
        assert_eq!(&m.payload[..], b"first");
        assert_eq!(consumer_pending(&b, "hub-b").await?, 0, "acknowledged");
        anyhow::Ok((a, sender))
    })?;
    victim.shutdown_background();
    std::mem::forget(b);
    rt.block_on(async {
        // hub-b is gone, its id not yet released: the message is stored
        // and confirmed.
        sender.send("target", "while away").await?;
        let stored = a
            .fed
            .lossless_stats()
            .expect("on")
            .stored
            .load(Ordering::Relaxed);
        assert_eq!(stored, 2);
        // hub-b comes back under its name, its old client not with it:
        // its consumer takes the stored message, finds no target, counts
        // and acknowledges it.
        let b = FedHub::start("hub-b", &url_b, lease).await?;
        let stats = b.fed.lossless_stats().expect("on");
        eventually("hub-b counts the message undeliverable", || {
            stats.undeliverable.load(Ordering::Relaxed) == 1
        })
        .await;
        // The hub's status counts it too.
        let status = b.client("probe").await?.status().await?;
        assert_eq!(status.counters.get("undeliverable"), Some(&1));
        assert_eq!(
            status.counters.get("federation_lossless_undeliverable"),
            Some(&1)
        );
        assert_eq!(stats.delivered.load(Ordering::Relaxed), 0);
        // Acknowledged: a third start does not get it again.
        let pending = consumer_pending(&b, "hub-b").await?;
        assert_eq!(pending, 0, "acknowledged");
        anyhow::Ok(())
    })?;
    Ok(())
}

/// Messages of hub `hub`'s consumer not yet acknowledged or delivered.
async fn consumer_pending(fed: &FedHub, hub: &str) -> anyhow::Result<u64> {
    let deadline = Instant::now() + WAIT;
    loop {
        let n = fed.fed.lossless_consumer_backlog().await;
        match n {
            Ok(0) => return Ok(0),
            Ok(n) if Instant::now() > deadline => return Ok(n),
            Err(e) if Instant::now() > deadline => anyhow::bail!("{hub}: {e}"),
            _ => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}
