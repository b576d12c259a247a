//! A hot standby of a federated hub takes over the hub's name, epoch and
//! ids in the cluster; an old primary that still runs is fenced
//! cluster-wide (its messages dropped by the other hubs, its id writes
//! failing on the moved revision, its clients closed with `FENCED`).

mod common;

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use common::{eventually, nats_server, wait_interest, Cluster, FedHub, SERVICE, TOKEN, WAIT};
use switchboard::federation::{Federation, FederationOptions};
use switchboard::hub::StandbyState;
use switchboard::wire::proto;
use switchboard::{Client, ErrorCode, Hub};
use switchboard_federation::directory::Holder;
use switchboard_federation::routing::Envelope;

/// The federation of a standby of hub `name`, through `url`.
async fn standby_federation(name: &str, url: &str, lease: Duration) -> anyhow::Result<Federation> {
    let mut opts = FederationOptions::new(SERVICE, vec![url.to_owned()]);
    opts.hub_name = name.to_owned();
    opts.replicas = Some(3);
    opts.lease = lease;
    opts.standby = true;
    Ok(Federation::connect(opts).await?)
}

fn hub_builder(fed: &Federation) -> switchboard::HubBuilder {
    Hub::builder()
        .service(SERVICE)
        .token(TOKEN)
        .listen("127.0.0.1:0")
        .write_hint(false)
        .unix(switchboard::hub::UnixSocket::disabled())
        .remote(fed.remote())
}

/// A reliable client (it resumes on the standby after a takeover).
async fn reliable(id: &str, addr: std::net::SocketAddr) -> anyhow::Result<Client> {
    Ok(Client::builder(id)
        .addr(addr.to_string())
        .token(TOKEN)
        .resume_wait(Duration::from_secs(30))
        .connect_timeout(Duration::from_secs(5))
        .connect()
        .await?)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_standby_of_a_killed_federated_hub_takes_over_its_name_and_ids() -> anyhow::Result<()> {
    let Some(bin) = nats_server() else {
        return Ok(());
    };
    let cluster = Cluster::start(&bin, 3).await?;
    let lease = Duration::from_secs(3);
    let q = FedHub::start("q", &cluster.nodes[1].url, lease).await?;

    // The primary "p" runs on a runtime of its own, so that it can be
    // killed at once (every task dropped: no goodbye, no release).
    // Held in a guard that shuts it down without waiting on every path, so
    // an early error is reported as itself (dropping a runtime inside the
    // test's runtime panics and would hide it).
    let mut p_rt = Background(Some(
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()?,
    ));
    let (tx, rx) = tokio::sync::oneshot::channel();
    let url = cluster.nodes[0].url.clone();
    p_rt.0.as_ref().expect("running").spawn(async move {
        match FedHub::start("p", &url, lease).await {
            Ok(p) => {
                let _ = tx.send(Ok((p.hub.local_addr(), p.fed.clone())));
                std::future::pending::<()>().await;
                drop(p);
            }
            Err(e) => {
                let _ = tx.send(Err(e));
            }
        }
    });
    let (p_addr, p_fed) = rx.await??;
    eventually("q sees p", || q.fed.directory().is_member("p")).await;

    // A client of p with a subscription and a service; a requester on q.
    let dev = reliable("dev", p_addr).await?;
    let _serving = dev
        .serve(|req| async move {
            Ok::<_, String>([b"dev got ".as_slice(), req.payload()].concat().into())
        })
        .await?;
    let mut news = dev.subscribe("news.>").await?;
    let req = q.client("req").await?;
    eventually("q sees dev on p", || {
        q.fed.directory().holder("dev").as_deref() == Some("p")
    })
    .await;
    // p was just started: its hub subject (held through node 0) must have
    // reached q's node before q sends it a request, and q's subject p's
    // node for the answer (core NATS drops what nobody is known to want).
    wait_interest(cluster.nodes[1].http_port, &format!("sb.{SERVICE}.h.p")).await;
    wait_interest(cluster.nodes[0].http_port, &format!("sb.{SERVICE}.h.q")).await;
    // (On failure: where the request or its answer went.)
    let answer = req.request("dev", "a").await.map_err(|e| {
        anyhow::anyhow!(
            "{e}; routing of q: {:?}; of p: {:?}",
            q.fed.routing_stats(),
            p_fed.routing_stats()
        )
    })?;
    assert_eq!(&answer[..], b"dev got a");
    // Shared state before the takeover: a key set by dev, watched on q.
    let v1 = dev.kv().set("cfg.a", "1").await?;
    let mut q_watch = req.kv().watch_prefix("cfg.").await?;
    let first = tokio::time::timeout(WAIT, q_watch.recv())
        .await?
        .expect("q's watch starts with the current value");
    assert_eq!((first.key.as_str(), first.version), ("cfg.a", v1));

    // The standby: same name, standing by (not a member, no writes).
    let s_fed = standby_federation("p", &cluster.nodes[2].url, lease).await?;
    let standby = hub_builder(&s_fed).start_standby(Some(p_addr)).await?;
    let mut state = standby.watch();
    tokio::time::timeout(
        WAIT,
        state.wait_for(|s| matches!(s, StandbyState::Following { .. })),
    )
    .await??;
    assert!(s_fed.directory().is_standby());
    eventually("the standby's watch shows dev on p", || {
        s_fed.directory().holder("dev").as_deref() == Some("p")
    })
    .await;
    let p_epoch = p_fed.epoch();

    // Kill p; q writes a key while p's clients have no hub.
    let killed = Instant::now();
    p_rt.kill();
    let during = req.kv().set("cfg.during", "q").await?;
    let promoted = tokio::time::timeout(WAIT, standby.promoted())
        .await?
        .expect("the standby reports its takeover")?;
    assert_eq!(promoted.local_addr(), p_addr, "the standby took p's port");
    eventually("the standby took over in the cluster", || {
        !s_fed.directory().is_standby()
    })
    .await;
    assert_eq!(s_fed.epoch(), p_epoch + 1, "the takeover epoch");

    // Requests from q reach dev again, on the standby.
    let deadline = Instant::now() + WAIT;
    loop {
        match req.request("dev", "b").await {
            Ok(answer) => {
                assert_eq!(&answer[..], b"dev got b");
                break;
            }
            Err(e) => {
                assert!(Instant::now() < deadline, "dev not reachable again: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
    eprintln!("dev answered q again {:?} after the kill", killed.elapsed());
    eventually("q sees dev's entry with the new epoch", || {
        q.fed.directory().holding("dev").is_some_and(|(h, _)| {
            h == Holder {
                hub: "p".into(),
                epoch: p_epoch + 1,
            }
        })
    })
    .await;
    assert!(s_fed.directory().stats().taken_over.load(Ordering::Relaxed) >= 1);

    // The standby serves the shared store as p did: what dev wrote and
    // what q wrote while p was dead, with their versions; compare-and-set
    // across hubs on those versions; q's watch sees dev's change once.
    let a = dev.kv().get("cfg.a").await?.expect("cfg.a survives");
    assert_eq!((&a.value[..], a.version), (&b"1"[..], v1));
    let d = dev
        .kv()
        .get("cfg.during")
        .await?
        .expect("q's write is seen");
    assert_eq!((&d.value[..], d.version), (&b"q"[..], during));
    let stale = dev.kv().cas("cfg.a", v1 + 1_000_000, "no").await;
    assert!(
        matches!(stale, Err(switchboard::ClientError::VersionMismatch(_))),
        "a stale version is refused: {stale:?}"
    );
    let v2 = dev.kv().cas("cfg.a", v1, "2").await?;
    assert!(v2 > during, "versions keep growing across the takeover");
    loop {
        let e = tokio::time::timeout(WAIT, q_watch.recv())
            .await?
            .expect("q's watch keeps running");
        if e.key == "cfg.a" && e.version == v2 {
            assert_eq!((&e.value[..], e.by.as_str()), (&b"2"[..], "dev"));
            break;
        }
        assert!(e.version < v2, "in version order: {e:?}");
    }
    assert_eq!(req.kv().cas("cfg.a", v2, "3").await?, v2 + 1);

    // The subscriptions held by the replicated router reached the
    // federation on takeover: q's publishes reach dev.
    eventually("the standby subscribed for news", || {
        s_fed.routing_stats().patterns.load(Ordering::Relaxed) >= 1
    })
    .await;
    // q publishes through node 1: it must know of the standby's
    // subscription (held through node 2) first.
    wait_interest(
        cluster.nodes[1].http_port,
        &format!("sb.{SERVICE}.t.news.>"),
    )
    .await;
    req.publish("news.x", "hello").await?;
    let m = tokio::time::timeout(WAIT, news.recv())
        .await?
        .expect("a publish after the takeover");
    assert_eq!((&*m.from, &m.payload[..]), ("req", &b"hello"[..]));

    // The ids stay held past the lease: the standby heartbeats as p.
    tokio::time::sleep(lease * 2).await;
    assert_eq!(q.fed.directory().holder("dev").as_deref(), Some("p"));
    assert_eq!(
        q.fed
            .directory()
            .stats()
            .released_dead
            .load(Ordering::Relaxed),
        0,
        "nothing released"
    );
    assert_eq!(&req.request("dev", "c").await?[..], b"dev got c");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stale_primary_is_fenced_cluster_wide() -> anyhow::Result<()> {
    let Some(bin) = nats_server() else {
        return Ok(());
    };
    let cluster = Cluster::start(&bin, 3).await?;
    let lease = Duration::from_secs(3);
    let q = FedHub::start("q", &cluster.nodes[1].url, lease).await?;
    let p = FedHub::start("p", &cluster.nodes[0].url, lease).await?;
    eventually("q sees p", || q.fed.directory().is_member("p")).await;
    let target = q.client("target").await?;
    let mut inbox = target.messages().await?;
    let dev = p.client("dev").await?;
    eventually("p wrote dev", || {
        p.fed
            .directory()
            .holding("dev")
            .is_some_and(|(_, rev)| rev > 0)
    })
    .await;
    let (_, p_rev) = p.fed.directory().holding("dev").expect("dev");
    eventually("p sees target", || {
        p.fed.directory().holder("target").is_some()
    })
    .await;
    dev.send("target", "before").await?;
    let m = tokio::time::timeout(WAIT, inbox.recv())
        .await?
        .expect("a message");
    assert_eq!(&m.payload[..], b"before");

    // A partition: p keeps running, yet its standby takes over (forced
    // here: a hub started with the standby's federation takes over at
    // once).
    let s_fed = standby_federation("p", &cluster.nodes[2].url, lease).await?;
    let s_hub = hub_builder(&s_fed).start().await?;
    eventually("the standby took over", || !s_fed.directory().is_standby()).await;
    assert_eq!(s_fed.epoch(), 2);

    // p learns it from the watch and fences itself.
    eventually("p is fenced", || p.fed.is_fenced()).await;
    let refused = p
        .client("newcomer")
        .await
        .expect_err("a fenced hub refuses");
    assert_eq!(refused.code(), Some(ErrorCode::Fenced), "{refused}");
    let state = dev.state();
    eventually("p's client closed", || !state.borrow().is_connected()).await;
    // p says so: in its federation's status, which the router puts into
    // the hub's status counters (`switchboard status`, `check`,
    // `/metrics`; p refuses clients now, so asked here directly).
    assert!(p.fed.status().figures.contains(&("fenced", 1)));
    assert!(p
        .fed
        .status()
        .counters()
        .contains(&("federation_fenced".to_owned(), 1)));
    assert!(q.fed.status().figures.contains(&("fenced", 0)));

    // p's id write at the revision it held fails: the revision moved.
    let raw = async_nats::connect(cluster.nodes[2].url.as_str()).await?;
    let js = async_nats::jetstream::new(raw.clone());
    let ids = js.get_key_value(format!("sb_{SERVICE}_ids")).await?;
    let old = serde_json::to_vec(&Holder {
        hub: "p".into(),
        epoch: 1,
    })?;
    assert!(
        ids.update("dev", old.into(), p_rev).await.is_err(),
        "a write at the old primary's revision"
    );
    let entry = ids.entry("dev").await?.expect("dev still held");
    let holder: Holder = serde_json::from_slice(&entry.value)?;
    assert_eq!(
        holder,
        Holder {
            hub: "p".into(),
            epoch: 2
        }
    );

    // q drops what comes as p with the old epoch, takes the new one.
    eventually("q saw p's new epoch", || {
        q.fed.directory().newest_epoch("p") == 2
    })
    .await;
    // A direct as from p with `epoch`, in its envelope.
    let direct = |payload: &str, epoch: u64| {
        let frame = proto::Frame::from(proto::Direct {
            to: "target".into(),
            from: "dev".into(),
            payload: payload.to_owned().into_bytes().into(),
            ..Default::default()
        });
        Envelope {
            origin: "p".into(),
            epoch,
            ..Default::default()
        }
        .encode(&frame)
    };
    let subject = format!("sb.{SERVICE}.h.q");
    raw.publish(subject.clone(), direct("stale", 1).into())
        .await?;
    raw.publish(subject, direct("fresh", 2).into()).await?;
    raw.flush().await?;
    let m = tokio::time::timeout(WAIT, inbox.recv())
        .await?
        .expect("a message");
    assert_eq!(&m.payload[..], b"fresh", "the stale one was dropped");
    assert_eq!(q.fed.routing_stats().stale.load(Ordering::Relaxed), 1);
    s_hub.shutdown().await;
    Ok(())
}

/// A runtime shut down in the background when killed or dropped.
struct Background(Option<tokio::runtime::Runtime>);

impl Background {
    /// Drops every task of the runtime at once.
    fn kill(&mut self) {
        if let Some(rt) = self.0.take() {
            rt.shutdown_background();
        }
    }
}

impl Drop for Background {
    fn drop(&mut self) {
        self.kill();
    }
}
