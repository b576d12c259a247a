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
    let mut config =
        HubConfig::with_secret(switchboard::DEFAULT_SERVICE, Secret::from_token(TOKEN));
    config.write_hint = false;
    config.bind.port = switchboard::discovery::PortChoice::Os;
    let standby = switchboard::hub::Hub::standby(config, Some(primary.local_addr())).await?;
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
