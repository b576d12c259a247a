//! Ordered sessions over the hub: the manager and the agent are two hub
//! clients; the agent has only its outbound connection.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use switchboard::session::driver::{ManagerOptions, Methods};
use switchboard::session::AgentConfig;
use switchboard::Bytes;
use switchboard_tests::{client, hub, within};

#[tokio::test]
async fn pushed_rpcs_run_one_at_a_time_in_order() -> anyhow::Result<()> {
    let hub = hub().await?;
    let acs = client(&hub, "acs").await?;
    let cpe = client(&hub, "cpe-1").await?;
    let mut opts = ManagerOptions::default();
    opts.config.max_in_flight = 8;
    let manager = acs.session_manager(opts);

    let order = Arc::new(Mutex::new(Vec::new()));
    let running = Arc::new(AtomicUsize::new(0));
    let overlap = Arc::new(AtomicUsize::new(0));
    let (o, r, ov) = (order.clone(), running.clone(), overlap.clone());
    let methods = Methods::new().add("Step", move |p: Bytes| {
        let (o, r, ov) = (o.clone(), r.clone(), ov.clone());
        async move {
            if r.fetch_add(1, Ordering::SeqCst) > 0 {
                ov.fetch_add(1, Ordering::SeqCst);
            }
            // Uneven work: later tasks would overtake earlier ones if the
            // queue did not run them one at a time.
            let n: u64 = String::from_utf8_lossy(&p).parse().unwrap_or(0);
            tokio::time::sleep(Duration::from_millis((10 - n % 10) * 2)).await;
            o.lock().expect("order lock").push(n);
            r.fetch_sub(1, Ordering::SeqCst);
            Ok(p)
        }
    });
    let agent = cpe.session_agent("acs", AgentConfig::new("cpe-1"), methods);

    let mut pending = Vec::new();
    for i in 0..20u64 {
        pending.push(
            manager
                .push("cpe-1", "Step", Bytes::from(i.to_string()))
                .await?,
        );
    }
    for (i, p) in pending.into_iter().enumerate() {
        let result = within(p).await??;
        assert_eq!(result.payload, Bytes::from(i.to_string()));
    }
    assert_eq!(
        *order.lock().expect("order lock"),
        (0..20).collect::<Vec<u64>>()
    );
    assert_eq!(overlap.load(Ordering::SeqCst), 0, "tasks overlapped");

    // An unknown method is a fault, and the queue carries on.
    match within(manager.rpc("cpe-1", "Nope", Bytes::new())).await? {
        Err(e) => assert!(e.to_string().contains("8000"), "{e}"),
        Ok(r) => panic!("unknown method succeeded: {r:?}"),
    }
    let r = within(manager.rpc("cpe-1", "Step", Bytes::from("5"))).await??;
    assert_eq!(r.payload, Bytes::from("5"));

    let _ = agent.shutdown().await;
    manager.shutdown().await;
    Ok(())
}

#[tokio::test]
async fn sessions_continue_after_a_hub_restart() -> anyhow::Result<()> {
    use switchboard::{Client, Hub};
    use switchboard_tests::{wait_generation, TOKEN};

    let start_hub = |addr: String| async move {
        let mut last = None;
        for _ in 0..50 {
            match Hub::builder()
                .token(TOKEN)
                .listen(&addr)
                .write_hint(false)
                .start()
                .await
            {
                Ok(h) => return Ok(h),
                Err(e) => last = Some(e),
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Err(anyhow::anyhow!("hub did not start: {last:?}"))
    };
    let hub = start_hub("127.0.0.1:0".to_string()).await?;
    let addr = hub.local_addr().to_string();
    let connect = |id: &'static str| {
        Client::builder(id)
            .addr(addr.clone())
            .token(TOKEN)
            .backoff(Duration::from_millis(10), Duration::from_millis(100))
            .connect()
    };
    let acs = connect("acs").await?;
    let cpe = connect("cpe-9").await?;
    let manager = acs.session_manager(ManagerOptions::default());
    let methods = Methods::new().add("Echo", |p: Bytes| async move { Ok(p) });
    // A short retry wait keeps the test quick (TR-069's minimum is 5 s).
    let mut config = AgentConfig::new("cpe-9");
    config.retry.min_wait = Duration::from_millis(50);
    let agent = cpe.session_agent("acs", config, methods);
    let r = within(manager.rpc("cpe-9", "Echo", Bytes::from("before"))).await??;
    assert_eq!(r.payload, Bytes::from("before"));

    hub.shutdown().await;
    let _hub2 = start_hub(addr.clone()).await?;
    wait_generation(&acs, 2).await?;
    wait_generation(&cpe, 2).await?;
    let r = within(manager.rpc("cpe-9", "Echo", Bytes::from("after"))).await??;
    assert_eq!(r.payload, Bytes::from("after"));
    let _ = agent.shutdown().await;
    manager.shutdown().await;
    Ok(())
}
