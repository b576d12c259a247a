//! The lossless path across hubs: confirmed directs (`Client::send`) go
//! over the replicated JetStream stream, each hub on its own node of a
//! 3-node nats-server cluster.

mod common;

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use common::{eventually, nats_server, two_hubs, wait_members, Cluster, FedHub, WAIT};
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
    let Some((_cluster, a, b)) = two_hubs().await? else {
        return Ok(());
    };
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
    // Counted once the router took the message, which may be after the
    // client has it.
    eventually("hub-b counted every delivery", || {
        sb.delivered.load(Ordering::Relaxed) >= N as u64
    })
    .await;
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
    eventually("hub-b counted the direct received", || {
        b.fed.routing_stats().received.load(Ordering::Relaxed) >= 1
    })
    .await;
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_malformed_message_on_the_stream_is_dropped_counted_and_acknowledged(
) -> anyhow::Result<()> {
    use async_nats::HeaderMap;
    use prost::Message as _;
    use switchboard::wire::proto;
    use switchboard_federation::routing::H_ORIGIN;

    let Some((cluster, a, b)) = two_hubs().await? else {
        return Ok(());
    };
    let sender = a.client("sender").await?;
    let target = b.client("target").await?;
    let mut inbox = target.messages().await?;
    sees(&a, "target", "hub-b").await;

    // Garbage stored on hub-b's subject of the stream by a raw client.
    let raw = async_nats::connect(cluster.nodes[2].url.as_str()).await?;
    let js = async_nats::jetstream::new(raw);
    let subject = format!("sb.{}.m.hub-b", common::SERVICE);
    let direct = |id: u64, from: &str| {
        proto::Frame::from(proto::Direct {
            to: "target".into(),
            from: from.into(),
            id,
            payload: b"garbage".to_vec().into(),
            ..Default::default()
        })
        .encode_to_vec()
    };
    let origin = |o: &str| {
        let mut h = HeaderMap::new();
        h.insert(H_ORIGIN, o);
        h
    };
    let garbage: Vec<(HeaderMap, Vec<u8>)> = vec![
        (HeaderMap::new(), direct(0, "x")), // no origin
        (origin("=zz"), direct(0, "x")),    // origin not escaped
        (origin("hub-a"), b"\xff\xfe not protobuf".to_vec()),
        (origin("hub-a"), Vec::new()),     // empty
        (origin("hub-a"), direct(7, "x")), // carries an id
        (origin("hub-a"), direct(0, "")),  // names no sender
        (origin("hub-b"), direct(0, "x")), // from the target hub
        (
            origin("hub-a"),
            proto::Frame::from(proto::Ping { nonce: 1 }).encode_to_vec(),
        ),
    ];
    let bad = garbage.len() as u64;
    for (headers, body) in garbage {
        js.publish_with_headers(subject.clone(), headers, body.into())
            .await?
            .await?;
    }
    // A well-formed confirmed direct after them still arrives, alone.
    sender.send("target", "after").await?;
    let m = tokio::time::timeout(WAIT, inbox.recv())
        .await?
        .expect("a message");
    assert_eq!(&m.payload[..], b"after");
    let stats = b.fed.lossless_stats().expect("on");
    assert_eq!(stats.malformed.load(Ordering::Relaxed), bad);
    // Counted once the router took it, which may be after the client
    // has it.
    eventually("hub-b counted the delivery", || {
        stats.delivered.load(Ordering::Relaxed) >= 1
    })
    .await;
    assert_eq!(stats.delivered.load(Ordering::Relaxed), 1);
    // Acknowledged: nothing waits for the consumer, nothing comes again.
    assert_eq!(consumer_pending(&b, "hub-b").await?, 0, "acknowledged");
    assert_eq!(stats.redelivered.load(Ordering::Relaxed), 0);
    assert!(
        tokio::time::timeout(Duration::from_millis(500), inbox.recv())
            .await
            .is_err(),
        "no garbage reached the client"
    );
    // Hub-b still works both ways.
    let back = b.client("back").await?;
    sees(&b, "sender", "hub-a").await;
    let mut sender_inbox = sender.messages().await?;
    back.send("sender", "fine").await?;
    let m = tokio::time::timeout(WAIT, sender_inbox.recv())
        .await?
        .expect("a message");
    assert_eq!(&m.payload[..], b"fine");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_stream_fails_the_confirmed_send_never_confirmed_then_lost() -> anyhow::Result<()> {
    use async_nats::jetstream::stream;
    use switchboard::ErrorCode;

    let Some(bin) = nats_server() else {
        return Ok(());
    };
    let cluster = Cluster::start(&bin, 3).await?;
    // The stream made beforehand with room for FULL messages only (the
    // hubs open the stream as they find it): `discard: new` as the hubs
    // make it, so a full stream refuses.
    const FULL: usize = 5;
    let raw = async_nats::connect(cluster.nodes[2].url.as_str()).await?;
    let js = async_nats::jetstream::new(raw);
    let deadline = Instant::now() + WAIT;
    loop {
        let made = js
            .get_or_create_stream(stream::Config {
                name: format!("sb_{}_msgs", common::SERVICE),
                subjects: vec![format!("sb.{}.m.*", common::SERVICE)],
                storage: stream::StorageType::File,
                num_replicas: 3,
                discard: stream::DiscardPolicy::New,
                max_messages: FULL as i64,
                duplicate_window: Duration::from_secs(120),
                ..Default::default()
            })
            .await;
        match made {
            Ok(_) => break,
            Err(e) if Instant::now() > deadline => anyhow::bail!("cannot make the stream: {e}"),
            Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    }
    let lease = Duration::from_secs(5);
    let a = FedHub::start("hub-a", &cluster.nodes[0].url, lease).await?;
    let b = FedHub::start("hub-b", &cluster.nodes[1].url, lease).await?;
    wait_members(&[&a, &b]).await;
    let sender = a.client("sender").await?;
    let target = b.client("target").await?;
    let mut inbox = target.messages().await?;
    sees(&a, "target", "hub-b").await;

    for i in 0..FULL {
        sender.send("target", i.to_string()).await?;
    }
    // Full: the next confirmed send fails at once with a clear error.
    let t = Instant::now();
    let e = sender
        .send("target", "one too many")
        .await
        .expect_err("the stream is full");
    assert_eq!(e.code(), Some(ErrorCode::QueueFull), "{e}");
    assert!(e.to_string().contains("stream is full"), "{e}");
    assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());
    // Every confirmed one arrives, in order; the refused one never does.
    for i in 0..FULL {
        let m = tokio::time::timeout(WAIT, inbox.recv())
            .await?
            .expect("a message");
        assert_eq!(m.payload, i.to_string().as_bytes(), "in order");
    }
    assert!(
        tokio::time::timeout(Duration::from_millis(500), inbox.recv())
            .await
            .is_err(),
        "the refused message was not delivered"
    );
    let stats = a.fed.lossless_stats().expect("on");
    assert_eq!(stats.stored.load(Ordering::Relaxed), FULL as u64);
    assert_eq!(stats.failed.load(Ordering::Relaxed), 1);
    assert_eq!(stats.queue_full.load(Ordering::Relaxed), 1);
    assert_eq!(
        stats.retried.load(Ordering::Relaxed),
        0,
        "a full stream is not asked again"
    );
    // The operator sees it in the hub's status (and so in /metrics).
    let status = sender.status().await?;
    assert_eq!(
        status.counters.get("federation_lossless_queue_full"),
        Some(&1),
        "{:?}",
        status.counters
    );
    Ok(())
}
