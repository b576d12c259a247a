//! A session across hubs: a manager on one hub drives an agent on another
//! (each hub on its own node of a 3-node nats-server cluster) through a
//! session with several RPCs, which run and answer in push order.

mod common;

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{nats_server, wait_members, Cluster, FedHub, WAIT};
use switchboard::session::driver::{ManagerOptions, Methods};
use switchboard::session::AgentConfig;
use switchboard::Bytes;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_manager_drives_an_agent_on_another_hub_in_order() -> anyhow::Result<()> {
    let Some(bin) = nats_server() else {
        return Ok(());
    };
    let cluster = Cluster::start(&bin, 3).await?;
    let lease = Duration::from_secs(5);
    let a = FedHub::start("hub-a", &cluster.nodes[0].url, lease).await?;
    let b = FedHub::start("hub-b", &cluster.nodes[1].url, lease).await?;
    wait_members(&[&a, &b]).await;

    let acs = a.client("acs").await?;
    let cpe = b.client("cpe-1").await?;
    // Each hub knows the other's client before the session starts.
    common::eventually("the hubs know each other's clients", || {
        a.fed.directory().holder("cpe-1").as_deref() == Some("hub-b")
            && b.fed.directory().holder("acs").as_deref() == Some("hub-a")
    })
    .await;
    let manager = acs.session_manager(ManagerOptions::default());

    let ran = Arc::new(Mutex::new(Vec::<String>::new()));
    let log = ran.clone();
    let methods = Methods::new().add("SetParameterValues", move |p: Bytes| {
        let log = log.clone();
        async move {
            let text = String::from_utf8_lossy(&p).to_string();
            // A slower first task: later ones still wait their turn.
            if text.ends_with("=1") {
                tokio::time::sleep(Duration::from_millis(30)).await;
            }
            log.lock().expect("log").push(text.clone());
            Ok(Bytes::from(format!("applied {text}")))
        }
    });
    let agent = cpe.session_agent("acs", AgentConfig::new("cpe-1"), methods);

    const N: usize = 8;
    let mut pending = Vec::new();
    for i in 1..=N {
        let rpc = manager
            .push(
                "cpe-1",
                "SetParameterValues",
                Bytes::from(format!("Device.Volume={i}")),
            )
            .await?;
        pending.push(rpc);
    }
    for (i, rpc) in pending.into_iter().enumerate() {
        let result = tokio::time::timeout(WAIT, rpc).await??;
        assert_eq!(
            String::from_utf8_lossy(&result.payload),
            format!("applied Device.Volume={}", i + 1)
        );
    }
    let order = ran.lock().expect("log").clone();
    let want: Vec<String> = (1..=N).map(|i| format!("Device.Volume={i}")).collect();
    assert_eq!(order, want, "the agent ran the RPCs in push order");
    for hub in [&a, &b] {
        let stats = hub.fed.routing_stats();
        assert_eq!(stats.rejected(), 0);
        // The session crossed, both ways.
        assert!(stats.sent.load(Ordering::Relaxed) > N as u64);
        assert!(stats.received.load(Ordering::Relaxed) > N as u64);
    }
    let _ = agent.shutdown().await;
    manager.shutdown().await;
    Ok(())
}
