//! A hot standby in this process: it joins a primary under load and ends
//! with exactly the primary's replicated state.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use switchboard::hub::{HubConfig, StandbyState};
use switchboard::{Bytes, Secret};
use switchboard_tests::{client, hub, within, TOKEN};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_standby_joining_under_load_ends_with_the_primarys_state() -> anyhow::Result<()> {
    let primary = hub().await?;
    let stop = Arc::new(AtomicBool::new(false));
    let mut load = Vec::new();
    let mut keep = Vec::new();
    for n in 0..4 {
        let c = client(&primary, &format!("worker-{n}")).await?;
        // Subscriptions and watches for the snapshot to carry, and streams
        // that keep numbered deliveries flowing to these clients (read, so
        // a full stream never holds the client's answers back).
        let mut sub = c.subscribe("load.>").await?;
        let mut watch = c.kv().watch_prefix("load.").await?;
        keep.push(tokio::spawn(async move {
            loop {
                tokio::select! {
                    m = sub.recv() => if m.is_none() { break },
                    e = watch.recv() => if e.is_none() { break },
                }
            }
        }));
        let stop = stop.clone();
        load.push(tokio::spawn(async move {
            let mut i = 0u64;
            while !stop.load(Ordering::Relaxed) {
                c.publish(&format!("load.{n}"), Bytes::from(i.to_string()))
                    .await?;
                if i % 10 == 0 {
                    c.kv()
                        .set(&format!("load.key{}", i % 50), Bytes::from(i.to_string()))
                        .await?;
                }
                if i % 97 == 0 {
                    let _ = c.kv().delete(&format!("load.key{}", i % 50)).await;
                }
                i += 1;
            }
            anyhow::Ok((c, i))
        }));
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let standby =
        switchboard::hub::Hub::standby(standby_config(), Some(primary.local_addr())).await?;
    let mut state = standby.watch();
    within(state.wait_for(|s| matches!(s, StandbyState::Following { .. }))).await??;
    // Traffic goes on while it catches up.
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, Ordering::Relaxed);
    let mut clients = Vec::new();
    let mut published = 0;
    for t in load {
        let (c, n) = within(t).await???;
        published += n;
        clients.push(c);
    }
    assert!(published > 100, "the load ran: {published} publishes");
    // Once the clients' last acknowledgements are in, both hold the same
    // state: registry, subscriptions, watches, kv with versions and
    // markers, and every client's sequence numbers and unacknowledged
    // frames.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let p = primary.snapshot().await.expect("primary snapshot");
        let s = standby.snapshot().await.expect("standby snapshot");
        if p == s {
            assert!(p.repl_seq > 0 && !p.clients.is_empty() && !p.kv.is_empty());
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the standby's state differs from the primary's: repl_seq {} vs {}, clients equal: {}, kv equal: {}",
            p.repl_seq,
            s.repl_seq,
            p.clients == s.clients,
            p.kv == s.kv
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for reader in keep {
        reader.abort();
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_to_many_reliable_subscribers_reaches_the_standby_without_a_fresh_snapshot(
) -> anyhow::Result<()> {
    // One read batch of publishes (up to 1,024) fanned out to 10 reliable
    // subscribers logs about 11,000 changes: under the log's 16,384, but
    // a few batches in one turn of the router are not. The log is sent
    // whenever it is half full, so the burst never overflows it.
    let limits = switchboard::hub::Limits {
        change_log_changes: 16_384,
        ..Default::default()
    };
    let primary = switchboard::Hub::builder()
        .token(TOKEN)
        .listen("127.0.0.1:0")
        .write_hint(false)
        .limits(limits)
        .start()
        .await?;
    let standby =
        switchboard::hub::Hub::standby(standby_config(), Some(primary.local_addr())).await?;
    let mut state = standby.watch();
    within(state.wait_for(|s| matches!(s, StandbyState::Following { .. }))).await??;

    const SUBSCRIBERS: usize = 10;
    const MESSAGES: usize = 20_000;
    let mut readers = Vec::new();
    let mut subscribers = Vec::new();
    for n in 0..SUBSCRIBERS {
        let c = client(&primary, &format!("sub-{n}")).await?;
        let mut sub = c.subscribe("burst").await?;
        readers.push(tokio::spawn(async move {
            let mut got = 0;
            while got < MESSAGES && sub.recv().await.is_some() {
                got += 1;
            }
            got
        }));
        subscribers.push(c);
    }
    let publisher = client(&primary, "publisher").await?;
    let payload = Bytes::from_static(&[7; 64]);
    for _ in 0..MESSAGES {
        publisher.publish_nowait("burst", payload.clone()).await?;
    }
    for r in readers {
        // A subscriber that falls behind may see drops (announced); the
        // burst must not make the standby start over.
        within(r).await??;
    }
    assert_eq!(primary.status().counters["standby_resyncs"], 0);
    assert!(matches!(*state.borrow(), StandbyState::Following { .. }));
    Ok(())
}

/// A standby's configuration: the tests' token, no hint, any free port.
fn standby_config() -> HubConfig {
    let mut config =
        HubConfig::with_secret(switchboard::DEFAULT_SERVICE, Secret::from_token(TOKEN));
    config.write_hint = false;
    config.bind.port = switchboard::discovery::PortChoice::Os;
    config
}
