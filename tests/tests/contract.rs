//! The client's delivery contract: what the hub confirmed to a sender
//! reaches the application, or the application is told where and how much
//! was lost; calls dropped part-way leave nothing behind; graceful ends.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use futures::StreamExt;
use switchboard::hub::Limits;
use switchboard::{Client, ClientEvent, Hub, HubHandle, Overflow, SubscribeOptions};
use switchboard_tests::{client, memory_hub, within, TOKEN};

/// Publishing lanes; each publishes its numbers in order, confirmed.
const LANES: u32 = 8;

/// Confirmed publishes in all (the figure), overridable for quick
/// runs with `SWITCHBOARD_CONTRACT_MESSAGES`.
fn total() -> u32 {
    std::env::var("SWITCHBOARD_CONTRACT_MESSAGES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200_000)
}

/// A hub whose queue for one client holds the whole run, so a subscriber
/// that falls far behind meets its own stream's policy, not the hub's
/// slow-consumer policy (which drops the oldest deliveries and says so).
async fn roomy_hub() -> anyhow::Result<HubHandle> {
    let limits = Limits {
        queue_frames: 1 << 20,
        queue_bytes: 256 << 20,
        queue_hard_bytes: 512 << 20,
        ..Limits::default()
    };
    Ok(Hub::builder()
        .token(TOKEN)
        .listen("127.0.0.1:0")
        .http("127.0.0.1:0")
        .write_hint(false)
        .limits(limits)
        .start()
        .await?)
}

fn payload(lane: u32, n: u32) -> Vec<u8> {
    let mut p = lane.to_be_bytes().to_vec();
    p.extend_from_slice(&n.to_be_bytes());
    p.resize(64, 0);
    p
}

fn parse(p: &[u8]) -> (u32, u32) {
    let lane = u32::from_be_bytes(p[..4].try_into().expect("lane"));
    let n = u32::from_be_bytes(p[4..8].try_into().expect("number"));
    (lane, n)
}

/// Publishes `per_lane` confirmed messages on each lane, concurrently;
/// sets `done` at the end.
async fn publish_lanes(publisher: &Client, topic: &str, per_lane: u32, done: &AtomicBool) {
    let lanes = (0..LANES).map(|lane| async move {
        for n in 0..per_lane {
            publisher
                .publish(topic, payload(lane, n))
                .await
                .expect("publish confirmed");
        }
    });
    futures::future::join_all(lanes).await;
    done.store(true, Ordering::Relaxed);
}

/// Reads slowly (1 ms per message) while the publishers run, then at full
/// speed; checks every lane is in order. Returns how many it read.
async fn read_slowly(
    sub: &mut switchboard::Subscription,
    expect: u32,
    done: &AtomicBool,
    gaps_allowed: bool,
) -> u32 {
    let mut next = vec![0u32; LANES as usize];
    let mut got = 0;
    while got < expect {
        let Some(m) = sub.next().await else { break };
        let (lane, n) = parse(&m.payload);
        let want = &mut next[lane as usize];
        if gaps_allowed {
            assert!(n >= *want, "lane {lane}: {n} after {want}");
        } else {
            assert_eq!(n, *want, "lane {lane} out of order or lost");
        }
        *want = n + 1;
        got += 1;
        if !done.load(Ordering::Relaxed) {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }
    got
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_subscriber_gets_every_confirmed_publish_once_in_order() -> anyhow::Result<()> {
    let hub = roomy_hub().await?;
    let subscriber = Client::builder("slow")
        .addr(hub.local_addr().to_string())
        .token(TOKEN)
        .stream_capacity(64)
        .connect()
        .await?;
    slow_subscriber_run(&hub, subscriber).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_websocket_subscriber_gets_every_confirmed_publish_once_in_order(
) -> anyhow::Result<()> {
    let hub = roomy_hub().await?;
    let http = hub.http_addr().expect("gateway");
    let subscriber = Client::builder("slow-ws")
        .websocket(format!("ws://{http}/v1/ws"))
        .token(TOKEN)
        .stream_capacity(64)
        .connect()
        .await?;
    slow_subscriber_run(&hub, subscriber).await
}

/// The slow reader of [`read_slowly`] against [`LANES`] fast publishers.
async fn slow_subscriber_run(hub: &HubHandle, subscriber: Client) -> anyhow::Result<()> {
    let mut sub = subscriber.subscribe("contract.block").await?;
    let publisher = client(hub, "fast").await?;
    let per_lane = total() / LANES;
    let done = AtomicBool::new(false);
    let bound = Duration::from_secs(600);
    let (_, got) = tokio::time::timeout(bound, async {
        tokio::join!(
            publish_lanes(&publisher, "contract.block", per_lane, &done),
            read_slowly(&mut sub, per_lane * LANES, &done, false)
        )
    })
    .await?;
    assert_eq!(got, per_lane * LANES);
    assert_eq!((subscriber.dropped(), sub.dropped()), (0, 0));
    // Nothing more: every message came exactly once.
    assert!(
        tokio::time::timeout(Duration::from_millis(200), sub.next())
            .await
            .is_err(),
        "a duplicate arrived"
    );
    assert_eq!(hub.status().dropped, 0, "the hub dropped nothing either");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drop_newest_tells_exactly_how_many_were_lost() -> anyhow::Result<()> {
    let hub = roomy_hub().await?;
    let subscriber = client(&hub, "slow").await?;
    let mut events = subscriber.events();
    let mut sub = subscriber
        .subscribe_with(
            "contract.drop",
            SubscribeOptions::default()
                .capacity(64)
                .overflow(Overflow::DropNewest),
        )
        .await?;
    let publisher = client(&hub, "fast").await?;
    let per_lane = total() / LANES;
    let all = per_lane * LANES;
    let done = AtomicBool::new(false);
    publish_lanes(&publisher, "contract.drop", per_lane, &done).await;
    // Everything published is confirmed; what the stream kept can be read,
    // the rest was counted. A round trip after the last publish makes sure
    // every delivery has reached the client.
    subscriber.flush().await?;
    within(publisher.flush()).await??;
    let mut got = 0u64;
    while let Ok(Some(m)) = tokio::time::timeout(Duration::from_millis(300), sub.next()).await {
        let _ = parse(&m.payload);
        got += 1;
    }
    assert!(got >= 64, "the stream kept its capacity: {got}");
    assert_eq!(got + sub.dropped(), u64::from(all), "kept + dropped = sent");
    // Events may be missed by a slow reader of events (`Lagged`); each
    // carries the running total, so the last one tells the whole count.
    let mut announced = 0;
    while announced < sub.dropped() {
        match within(events.recv()).await? {
            Some(ClientEvent::SlowConsumer { sub_id, total, .. }) => {
                assert_eq!(sub_id, sub.id());
                announced = total;
            }
            Some(_) => {}
            None => break,
        }
    }
    assert_eq!(announced, sub.dropped(), "every drop announced");
    Ok(())
}

#[tokio::test]
async fn slow_consumer_events_name_the_subscription() -> anyhow::Result<()> {
    let hub = memory_hub().await?;
    let c = client(&hub, "evented").await?;
    let mut events = c.events();
    let mut oldest = c
        .subscribe_with(
            "e.oldest",
            SubscribeOptions::default()
                .capacity(2)
                .overflow(Overflow::DropOldest),
        )
        .await?;
    let p = client(&hub, "pub").await?;
    for i in 0..10u8 {
        p.publish("e.oldest", vec![i]).await?;
    }
    match within(events.recv()).await? {
        Some(ClientEvent::SlowConsumer {
            sub_id, pattern, ..
        }) => {
            assert_eq!(sub_id, oldest.id());
            assert_eq!(pattern, "e.oldest");
        }
        other => panic!("expected a slow-consumer event, got {other:?}"),
    }
    // DropOldest keeps the newest.
    within(c.flush()).await??;
    let mut kept = Vec::new();
    while let Ok(Some(m)) = tokio::time::timeout(Duration::from_millis(100), oldest.next()).await {
        kept.push(m.payload[0]);
    }
    assert_eq!(kept, [8, 9]);
    assert_eq!(oldest.dropped(), 8);
    Ok(())
}

#[tokio::test]
async fn unsubscribe_after_ends_the_stream_after_n() -> anyhow::Result<()> {
    let hub = memory_hub().await?;
    let c = client(&hub, "counted").await?;
    let mut sub = c
        .subscribe_with("n.>", SubscribeOptions::default().max_messages(3))
        .await?;
    let p = client(&hub, "pub").await?;
    for i in 0..10u8 {
        p.publish("n.x", vec![i]).await?;
    }
    let got: Vec<u8> = within(sub.by_ref().map(|m| m.payload[0]).collect::<Vec<_>>()).await?;
    assert_eq!(got, [0, 1, 2]);
    // The hub no longer holds the subscription.
    within(c.flush()).await??;
    let status = hub.status();
    assert_eq!(status.subscriptions, 0, "{status:?}");
    Ok(())
}

#[tokio::test]
async fn events_follow_the_connection() -> anyhow::Result<()> {
    let hub = memory_hub().await?;
    let c = client(&hub, "watched").await?;
    let mut events = c.events();
    c.close().await;
    match within(events.recv()).await? {
        Some(ClientEvent::Closed { reason }) => assert!(reason.contains("closed"), "{reason}"),
        other => panic!("expected closed, got {other:?}"),
    }
    assert_eq!(within(events.recv()).await?, None, "the stream ends");
    Ok(())
}

#[tokio::test]
async fn flush_waits_for_the_hub_and_close_reports_nothing_lost() -> anyhow::Result<()> {
    let hub = memory_hub().await?;
    let a = client(&hub, "flusher").await?;
    let b = client(&hub, "sink").await?;
    let mut sub = b.subscribe("f").await?;
    for i in 0..100u8 {
        a.publish_nowait("f", vec![i]).await?;
    }
    within(a.flush()).await??;
    assert_eq!(a.unacknowledged(), (0, 0));
    // The hub had every publish when flush returned.
    assert!(hub.status().msgs_in >= 100);
    let report = a.close().await;
    assert!(report.is_clean(), "{report:?}");
    for i in 0..100u8 {
        assert_eq!(within(sub.next()).await?.expect("message").payload[0], i);
    }
    Ok(())
}

#[tokio::test]
async fn drain_lets_the_application_take_what_is_queued() -> anyhow::Result<()> {
    let hub = memory_hub().await?;
    let c = client(&hub, "drainer").await?;
    let mut sub = c.subscribe("d").await?;
    let p = client(&hub, "pub").await?;
    for i in 0..50u8 {
        p.publish("d", vec![i]).await?;
    }
    within(c.flush()).await??;
    let reader = tokio::spawn(async move {
        let mut got = Vec::new();
        while let Some(m) = sub.next().await {
            got.push(m.payload[0]);
        }
        got
    });
    let report = within(c.drain(Duration::from_secs(5))).await?;
    assert!(report.is_clean(), "{report:?}");
    let got = within(reader).await??;
    assert_eq!(
        got,
        (0..50).collect::<Vec<u8>>(),
        "every queued message, then the end"
    );
    assert!(
        c.publish("d", "late").await.is_err(),
        "drained means closed"
    );
    Ok(())
}
