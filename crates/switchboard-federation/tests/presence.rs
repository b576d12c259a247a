//! Presence and client lists across hubs (each hub on its own node of a
//! 3-node nats-server cluster): a presence watcher on one hub sees a
//! client of another hub join and leave; `ListClients` on a third hub
//! lists the clients of the other two (transport "remote", `addr` the
//! holder hub).

mod common;

use std::time::Duration;

use common::{nats_server, wait_members, Cluster, FedHub, WAIT};
use switchboard::PresenceEvent;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn presence_and_client_lists_span_the_hubs() -> anyhow::Result<()> {
    let Some(bin) = nats_server() else {
        return Ok(());
    };
    let cluster = Cluster::start(&bin, 3).await?;
    let lease = Duration::from_secs(5);
    let a = FedHub::start("hub-a", &cluster.nodes[0].url, lease).await?;
    let b = FedHub::start("hub-b", &cluster.nodes[1].url, lease).await?;
    let c = FedHub::start("hub-c", &cluster.nodes[2].url, lease).await?;
    wait_members(&[&a, &b, &c]).await;

    let watcher = a.client("watcher.a").await?;
    let mut presence = watcher.presence().await?;

    let joiner = b.client("joiner.b").await?;
    let event = tokio::time::timeout(WAIT, async {
        loop {
            match presence.recv().await {
                Some(PresenceEvent::Joined(info)) if info.client_id == "joiner.b" => {
                    return Some(info)
                }
                Some(_) => {}
                None => return None,
            }
        }
    })
    .await?
    .expect("a joined event");
    assert_eq!((&*event.transport, &*event.addr), ("remote", "hub-b"));

    // ListClients on hub-c: its own, then those of hub-a and hub-b.
    let lister = c.client("lister.c").await?;
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let list = lister.clients().await?;
        let shown: Vec<(String, String, String)> = list
            .iter()
            .map(|c| (c.client_id.clone(), c.transport.clone(), c.addr.clone()))
            .collect();
        let has = |id: &str, hub: &str| {
            shown
                .iter()
                .any(|(i, t, a)| i == id && t == "remote" && a == hub)
        };
        if has("watcher.a", "hub-a") && has("joiner.b", "hub-b") {
            assert!(shown
                .iter()
                .any(|(i, t, _)| i == "lister.c" && t != "remote"));
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "hub-c's list: {shown:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // The joiner leaves hub-b: the watcher on hub-a is told.
    joiner.close().await;
    let left = tokio::time::timeout(WAIT, async {
        loop {
            match presence.recv().await {
                Some(PresenceEvent::Left { client, .. }) if client.client_id == "joiner.b" => {
                    return true
                }
                Some(_) => {}
                None => return false,
            }
        }
    })
    .await?;
    assert!(left, "a left event");
    // And hub-c stops listing it.
    let deadline = tokio::time::Instant::now() + WAIT;
    while lister
        .clients()
        .await?
        .iter()
        .any(|c| c.client_id == "joiner.b")
    {
        assert!(tokio::time::Instant::now() < deadline, "still listed");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(())
}
