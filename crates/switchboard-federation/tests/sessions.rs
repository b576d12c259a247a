//! A session across hubs: a manager on one hub drives an agent on another
//! (each hub on its own node of a 3-node nats-server cluster) through a
//! session with several RPCs, which run and answer in push order.

mod common;

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{nats_server, two_hubs, wait_members, Cluster, FedHub, WAIT};
use switchboard::session::driver::{ManagerOptions, Methods};
use switchboard::session::AgentConfig;
use switchboard::Bytes;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_manager_drives_an_agent_on_another_hub_in_order() -> anyhow::Result<()> {
    let Some((_cluster, a, b)) = two_hubs().await? else {
        return Ok(());
    };

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
        // The session crossed, both ways (a frame is counted received
        // once the router took it, which may be after its client has it).
        common::eventually("the session's frames counted", || {
            stats.sent.load(Ordering::Relaxed) > N as u64
                && stats.received.load(Ordering::Relaxed) > N as u64
        })
        .await;
        assert_eq!(stats.rejected(), 0);
    }
    let _ = agent.shutdown().await;
    manager.shutdown().await;
    Ok(())
}

/// Sends one session frame from `client` to `peer` through a session link.
async fn session_frame(client: &switchboard::Client, peer: &str) -> anyhow::Result<()> {
    use futures::SinkExt;
    let mut link = client.session_link(Some(peer))?;
    link.send(switchboard::wire::Frame::from(
        switchboard::wire::proto::Session {
            peer: peer.into(),
            session_id: 1,
            ..Default::default()
        },
    ))
    .await?;
    Ok(())
}

/// The next `HubError` on `events` within [`WAIT`]: its code and message.
async fn hub_error(events: &mut switchboard::Events) -> (switchboard::ErrorCode, String) {
    let got = tokio::time::timeout(WAIT, async {
        while let Some(ev) = events.recv().await {
            if let switchboard::ClientEvent::HubError { code, message } = ev {
                return Some((code, message));
            }
        }
        None
    })
    .await;
    got.expect("told in time").expect("an error event")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_frame_whose_peer_cannot_be_reached_is_refused_at_once() -> anyhow::Result<()> {
    use async_nats::HeaderMap;
    use prost::Message as _;
    use switchboard::ErrorCode;
    use switchboard_federation::routing::{H_EPOCH, H_ORIGIN, H_TO};

    let Some(bin) = nats_server() else {
        return Ok(());
    };
    // No advertised URLs, and hubs that stay on their own node: stopping
    // a node cuts its hub off.
    let mut cluster = Cluster::start_with(&bin, 3, "no_advertise: true").await?;
    // A long lease: hub-b stays a live member for hub-a throughout.
    let lease = Duration::from_secs(60);
    let own_node = |o: &mut switchboard::federation::FederationOptions| o.discover_servers = false;
    let a = FedHub::start_with("hub-a", &cluster.nodes[0].url, lease, own_node).await?;
    let b = FedHub::start_with("hub-b", &cluster.nodes[1].url, lease, own_node).await?;
    wait_members(&[&a, &b]).await;
    let acs = a.client("acs").await?;
    let _cpe = b.client("cpe-1").await?;
    common::eventually("the hubs know each other's clients", || {
        a.fed.directory().holder("cpe-1").as_deref() == Some("hub-b")
            && b.fed.directory().holder("acs").as_deref() == Some("hub-a")
    })
    .await;
    let mut events = acs.events();

    // 1. The far hub serves, but the peer is not there (it left before
    // the sender's hub heard of it; made here with a raw message as from
    // hub-a): hub-b answers, hub-a tells the sender.
    let raw = async_nats::connect(cluster.nodes[2].url.as_str()).await?;
    let mut h = HeaderMap::new();
    h.insert(H_ORIGIN, "hub-a");
    h.insert(H_EPOCH, "1");
    h.insert(H_TO, "gone");
    let frame = switchboard::wire::proto::Frame::from(switchboard::wire::proto::Session {
        peer: "acs".into(),
        ..Default::default()
    })
    .encode_to_vec();
    raw.publish_with_headers(format!("sb.{}.h.hub-b", common::SERVICE), h, frame.into())
        .await?;
    raw.flush().await?;
    let (code, message) = hub_error(&mut events).await;
    assert_eq!(code, ErrorCode::NoSuchClient, "{message}");
    assert!(
        message.contains("'gone'") && message.contains("hub-b"),
        "{message}"
    );

    // 2. The far hub is cut off (its node stopped; hub-a still counts it
    // live within the lease): the NATS server finds nobody for its
    // subject, and the sender learns it at once.
    cluster.nodes[1].kill();
    let t = Instant::now();
    let mut told = None;
    // (Until hub-a's node noticed the loss of the route, a frame may
    // still go to the dead route; each try is told or lost, so try a
    // few times, within the test bound.)
    while t.elapsed() < WAIT {
        session_frame(&acs, "cpe-1").await?;
        let got = tokio::time::timeout(Duration::from_millis(500), async {
            while let Some(ev) = events.recv().await {
                if let switchboard::ClientEvent::HubError { code, message } = ev {
                    return Some((code, message));
                }
            }
            None
        })
        .await;
        if let Ok(Some(e)) = got {
            told = Some(e);
            break;
        }
    }
    let (code, message) = told.expect("the sender was told");
    eprintln!("told after {:?}: {message}", t.elapsed());
    assert_eq!(code, ErrorCode::NoSuchClient, "{message}");
    assert!(
        message.contains("cpe-1") && message.contains("hub-b"),
        "{message}"
    );
    assert!(a.fed.directory().is_live("hub-b"), "still within the lease");
    // (Late answers to earlier tries, if any.)
    while let Ok(Some(_)) = tokio::time::timeout(Duration::from_millis(300), events.recv()).await {}

    // 3. The sender's own hub is cut off: refused at once, as a direct
    // or a request is.
    cluster.nodes[0].kill();
    common::eventually("hub-a lost the cluster", || !a.fed.is_connected()).await;
    session_frame(&acs, "cpe-1").await?;
    let (code, message) = hub_error(&mut events).await;
    assert_eq!(code, ErrorCode::NoSuchClient, "{message}");
    assert!(message.contains("lost its connection"), "{message}");
    Ok(())
}
