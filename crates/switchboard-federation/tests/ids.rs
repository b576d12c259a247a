//! Client ids are unique across federated hubs: three hubs, each on its
//! own node of a 3-node nats-server cluster.

mod common;

use std::time::Duration;

use common::{
    eventually, eventually_explained, nats_server, two_hubs, wait_members, Cluster, FedHub, WAIT,
};
use switchboard::{Client, ClientError, ConnectionState, ErrorCode};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_id_held_on_one_hub_is_refused_on_the_others_until_it_leaves() -> anyhow::Result<()> {
    let Some(bin) = nats_server() else {
        return Ok(());
    };
    let cluster = Cluster::start(&bin, 3).await?;
    let lease = Duration::from_secs(5);
    let a = FedHub::start("hub-a", &cluster.nodes[0].url, lease).await?;
    let b = FedHub::start("hub-b", &cluster.nodes[1].url, lease).await?;
    let c = FedHub::start("hub-c", &cluster.nodes[2].url, lease).await?;
    // A duplicate is refused while its holder is live, judged by its
    // heartbeats.
    wait_members(&[&a, &b, &c]).await;

    // An id with characters NATS treats specially.
    let id = "dev.1 *>";
    let holder = a.client(id).await?;
    for other in [&b, &c] {
        eventually("the others see hub-a hold the id", || {
            other.fed.directory().holder(id).as_deref() == Some("hub-a")
        })
        .await;
        let refused = other
            .client(id)
            .await
            .expect_err("a duplicate id is refused");
        assert_eq!(refused.code(), Some(ErrorCode::IdTakenOver), "{refused}");
        assert!(refused.to_string().contains("hub-a"), "{refused}");
    }
    // Other ids are not affected, on any hub.
    let _free = b.client("free-on-b").await?;

    // Released on leave: the id may then register on another hub.
    holder.close().await;
    eventually("hub-b sees the id released", || {
        b.fed.directory().holder(id).is_none()
    })
    .await;
    let moved = b.client(id).await?;
    eventually("hub-a sees hub-b hold the id", || {
        a.fed.directory().holder(id).as_deref() == Some("hub-b")
    })
    .await;
    let refused = a.client(id).await.expect_err("now held on hub-b");
    assert_eq!(refused.code(), Some(ErrorCode::IdTakenOver));

    // A hub that joins now knows, as soon as it is connected, the live
    // hubs (else it would drop their first messages as from no member)
    // and where every id is (else it would refuse a request for one as
    // for no client).
    let d = FedHub::start("hub-d", &cluster.nodes[2].url, lease).await?;
    let dir = d.fed.directory();
    assert_eq!(dir.members(), ["hub-a", "hub-b", "hub-c"]);
    assert_eq!(dir.holder(id).as_deref(), Some("hub-b"));
    assert_eq!(dir.holder("free-on-b").as_deref(), Some("hub-b"));
    drop(moved);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_hubs_ids_are_released_after_its_lease() -> anyhow::Result<()> {
    let Some(bin) = nats_server() else {
        return Ok(());
    };
    let cluster = Cluster::start(&bin, 3).await?;
    let lease = Duration::from_millis(1500);
    let a = FedHub::start("hub-a", &cluster.nodes[0].url, lease).await?;
    let b = FedHub::start("hub-b", &cluster.nodes[1].url, lease).await?;
    wait_members(&[&a, &b]).await;

    let _held = a.client("worker-7").await?;
    eventually("hub-b sees hub-a hold the id", || {
        b.fed.directory().holder("worker-7").as_deref() == Some("hub-a")
    })
    .await;
    assert!(b.client("worker-7").await.is_err());

    // hub-a dies without a word: its router and federation stop, its
    // heartbeats end, nothing is released.
    let FedHub { hub, fed } = a;
    drop(fed);
    hub.shutdown().await;
    let died = std::time::Instant::now();

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
    let _taken = b.client("worker-7").await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ids_stay_unique_when_a_nats_node_is_killed() -> anyhow::Result<()> {
    let Some(bin) = nats_server() else {
        return Ok(());
    };
    let mut cluster = Cluster::start(&bin, 3).await?;
    let lease = Duration::from_secs(5);
    let a = FedHub::start("hub-a", &cluster.nodes[0].url, lease).await?;
    let b = FedHub::start("hub-b", &cluster.nodes[1].url, lease).await?;
    let _before = a.client("before-kill").await?;
    eventually("hub-b sees the first id", || {
        b.fed.directory().holder("before-kill").is_some()
    })
    .await;

    // SIGKILL the node of hub-b: the buckets (3 replicas) keep working on
    // the other two, and hub-b reconnects to one of them by itself.
    cluster.nodes[1].kill();
    let killed = std::time::Instant::now();
    let _after = a.client("after-kill").await?;
    eprintln!("client on a after {:?}", killed.elapsed());
    eventually("hub-a wrote the id", || {
        a.fed.directory().stats().written() >= 2
    })
    .await;
    eprintln!("written after {:?}", killed.elapsed());
    // An id is refused while its holder is live, and hub-b judges that by
    // heartbeats: after a recovery longer than the lease, hub-b's own
    // heartbeat may be newer than the last one of hub-a it saw, until
    // hub-a's next one arrives.
    eventually_explained(
        "hub-b, reconnected, sees an id registered after the kill, held by a live hub-a",
        || {
            b.fed.directory().holder("after-kill").as_deref() == Some("hub-a")
                && b.fed.directory().is_live("hub-a")
        },
        || {
            let d = b.fed.directory();
            format!(
                "(hub-b: holder {:?}, hub-a live {}, own lease age {:?}, status {:?})",
                d.holder("after-kill"),
                d.is_live("hub-a"),
                d.lease_age(),
                b.fed.status()
            )
        },
    )
    .await;
    eprintln!(
        "hub-b caught up after {:?} (its watches reopened after a silence: {})",
        killed.elapsed(),
        b.fed
            .directory()
            .stats()
            .watch_stalled
            .load(std::sync::atomic::Ordering::Relaxed)
    );
    let refused = b.client("after-kill").await.expect_err("held on hub-a");
    assert_eq!(refused.code(), Some(ErrorCode::IdTakenOver));
    assert_eq!(
        b.fed.directory().holder("before-kill").as_deref(),
        Some("hub-a"),
        "what was written before the kill is still there"
    );
    // hub-b's own writes reach the others again.
    let _on_b = b.client("on-b").await?;
    eventually("hub-a sees hub-b's new id", || {
        a.fed.directory().holder("on-b").as_deref() == Some("hub-b")
    })
    .await;
    Ok(())
}

/// Waits until `client` is closed for good; the reason it gives.
async fn closed(client: &Client) -> String {
    let mut state = client.state();
    let reason = tokio::time::timeout(WAIT, async {
        loop {
            if let ConnectionState::Closed { reason } = &*state.borrow_and_update() {
                return reason.clone();
            }
            if state.changed().await.is_err() {
                return String::from("(state gone)");
            }
        }
    })
    .await;
    reason.expect("the client was closed in time")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn of_two_hubs_admitting_one_id_at_once_the_loser_closes_its_client() -> anyhow::Result<()> {
    let Some((_cluster, a, b)) = two_hubs().await? else {
        return Ok(());
    };

    // Each id connects on both hubs at the same moment: either one hub
    // already saw the other's entry (refused at once), or both admitted
    // it and the bucket decides (the loser's client is closed).
    const N: usize = 40;
    let pairs = futures::future::join_all((0..N).map(|i| {
        let (a, b) = (&a, &b);
        async move {
            let id = format!("racer-{i}");
            let (on_a, on_b) = tokio::join!(a.client(&id), b.client(&id));
            (id, on_a, on_b)
        }
    }))
    .await;
    let mut both_admitted = 0;
    let mut kept = Vec::new();
    for (id, on_a, on_b) in pairs {
        let refused = |r: &Result<Client, ClientError>| match r {
            Err(e) => {
                assert_eq!(e.code(), Some(ErrorCode::IdTakenOver), "{id}: {e}");
                true
            }
            Ok(_) => false,
        };
        let (ra, rb) = (refused(&on_a), refused(&on_b));
        assert!(!(ra && rb), "{id} refused on both hubs");
        // Both hubs come to agree on one holder.
        eventually("both hubs name one holder", || {
            let (ha, hb) = (
                a.fed.directory().holding(&id),
                b.fed.directory().holding(&id),
            );
            matches!((&ha, &hb), (Some((x, rx)), Some((y, ry))) if x == y && *rx > 0 && rx == ry)
        })
        .await;
        let holder = a.fed.directory().holder(&id).expect("held");
        let (winner, loser) = match holder.as_str() {
            "hub-a" => (on_a, on_b),
            "hub-b" => (on_b, on_a),
            other => panic!("{id} held by {other}"),
        };
        let winner =
            winner.unwrap_or_else(|e| panic!("{id}: the holder's client was refused: {e}"));
        if let Ok(loser) = loser {
            // Admitted on both: the loser's client is closed with the
            // duplicate-id error, like a refused duplicate.
            both_admitted += 1;
            let reason = closed(&loser).await;
            assert!(reason.contains("took over"), "{id}: {reason}");
        }
        kept.push((id, winner));
    }
    let lost = a
        .fed
        .directory()
        .stats()
        .races_lost
        .load(std::sync::atomic::Ordering::Relaxed)
        + b.fed
            .directory()
            .stats()
            .races_lost
            .load(std::sync::atomic::Ordering::Relaxed);
    eprintln!("{both_admitted} of {N} ids admitted on both hubs at once");
    assert_eq!(
        lost, both_admitted,
        "each double admission is one race lost"
    );
    // The holders' clients stay, and answer across the hubs.
    for (id, client) in &kept {
        assert!(client.state().borrow().is_connected(), "{id} was closed");
    }
    // Each holder's client gets a direct from the other hub.
    let (id, target) = &kept[0];
    let other = if a.fed.directory().holder(id).as_deref() == Some("hub-a") {
        &b
    } else {
        &a
    };
    let probe = other.client("probe").await?;
    let mut msgs = target.messages().await?;
    probe.send(id, "still here?").await?;
    let m = tokio::time::timeout(WAIT, msgs.recv())
        .await?
        .expect("a message");
    assert_eq!(&m.payload[..], b"still here?");
    Ok(())
}

/// Another live hub overwrites the entry of an id a client of this hub
/// holds (as a hub does that took this one for dead, cut off longer than
/// the lease, before the reaper deleted its entries): the id watch closes
/// the local client at once with `ID_TAKEN_OVER`, without waiting for a
/// reconnection, so the two clients of one id do not both stay. Made
/// here with a raw write of hub-b's entry at the revision hub-a wrote.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_id_taken_by_another_live_hub_closes_the_local_client_at_once() -> anyhow::Result<()> {
    use futures::StreamExt as _;
    use switchboard::ClientEvent;
    use switchboard_federation::directory::Holder;

    let Some((cluster, a, b)) = common::two_hubs().await? else {
        return Ok(());
    };
    let x = a.client("x").await?;
    let mut events = x.events();
    common::eventually("hub-a wrote x and hub-b sees it", || {
        a.fed
            .directory()
            .holding("x")
            .is_some_and(|(h, rev)| h.hub == "hub-a" && rev > 0)
            && b.fed.directory().holder("x").as_deref() == Some("hub-a")
    })
    .await;
    let (_, rev) = a.fed.directory().holding("x").expect("held");

    let raw = async_nats::connect(cluster.nodes[2].url.as_str()).await?;
    let js = async_nats::jetstream::new(raw);
    let ids = js
        .get_key_value(format!("sb_{}_ids", common::SERVICE))
        .await?;
    let theirs = serde_json::to_vec(&Holder {
        hub: "hub-b".into(),
        epoch: 1,
    })?;
    ids.update("x", theirs.into(), rev).await?;

    let reason = tokio::time::timeout(Duration::from_secs(15), async {
        while let Some(ev) = events.next().await {
            if let ClientEvent::Closed { reason } = ev {
                return Some(reason);
            }
        }
        None
    })
    .await?
    .expect("hub-a's x was closed");
    assert!(reason.contains("took over"), "{reason}");
    assert_eq!(
        a.fed
            .directory()
            .stats()
            .taken_back
            .load(std::sync::atomic::Ordering::Relaxed),
        1
    );
    assert_eq!(a.fed.directory().holder("x").as_deref(), Some("hub-b"));
    Ok(())
}
