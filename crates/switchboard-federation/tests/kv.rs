//! The key/value store is one store across federated hubs: three hubs,
//! each on its own node of a 3-node nats-server cluster, share the
//! JetStream KV bucket `sb_<service>_kv`.

mod common;

use std::time::{Duration, Instant};

use common::{eventually, nats_server, Cluster, FedHub, WAIT};
use switchboard::hub::limits::Limits;
use switchboard::{ClientError, ErrorCode, KvEvent, KvWatch};

/// The next watch event, at most [`WAIT`] away.
async fn next(w: &mut KvWatch) -> KvEvent {
    tokio::time::timeout(WAIT, w.recv())
        .await
        .unwrap_or_else(|_| panic!("no watch event within {WAIT:?}"))
        .expect("the watch is open")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_kv_is_one_store_across_hubs() -> anyhow::Result<()> {
    let Some(bin) = nats_server() else {
        return Ok(());
    };
    let cluster = Cluster::start(&bin, 3).await?;
    let lease = Duration::from_secs(5);
    let a = FedHub::start("hub-a", &cluster.nodes[0].url, lease).await?;
    let b = FedHub::start("hub-b", &cluster.nodes[1].url, lease).await?;
    let c = FedHub::start("hub-c", &cluster.nodes[2].url, lease).await?;
    let ca = a.client("on-a").await?;
    let cb = b.client("on-b").await?;
    let cc = c.client("on-c").await?;
    let (kva, kvc) = (ca.kv(), cc.kv());

    // Watches on hub B, before anything is written: a prefix and a key.
    let mut prefix = cb.kv().watch_prefix("shared.").await?;
    let mut exact = cb.kv().watch("shared.exact").await?;

    // A set on hub A is read on hub C at once (reads go to the stream
    // leader, so no waiting for a watch).
    let v1 = ca.kv().set("shared.k", "from a").await?;
    let got = cc.kv().get("shared.k").await?.expect("set on hub A");
    assert_eq!((&got.value[..], got.version), (&b"from a"[..], v1));

    // Compare-and-set across hubs: two hubs race on one version, exactly
    // one wins, the other gets VERSION_MISMATCH.
    let (ra, rc) = tokio::join!(
        kva.cas("shared.k", v1, "a wins"),
        kvc.cas("shared.k", v1, "c wins"),
    );
    let (won, lost) = match (ra, rc) {
        (Ok(v), Err(e)) | (Err(e), Ok(v)) => (v, e),
        other => panic!("exactly one compare-and-set wins: {other:?}"),
    };
    assert!(won > v1);
    assert!(matches!(lost, ClientError::VersionMismatch(_)), "{lost}");
    // Create races the same way (expect 0: the key must not exist).
    let (ra, rc) = tokio::join!(kva.cas("shared.new", 0, "a"), kvc.cas("shared.new", 0, "c"),);
    assert!(ra.is_ok() != rc.is_ok(), "one create wins: {ra:?} {rc:?}");
    let taken = cb.kv().cas("shared.new", 0, "b").await.expect_err("exists");
    assert_eq!(taken.code(), Some(ErrorCode::VersionMismatch), "{taken}");

    // Deletes are seen everywhere.
    assert!(ca.kv().delete("shared.new").await?);
    assert!(cc.kv().get("shared.new").await?.is_none());
    assert!(!cc.kv().delete("shared.new").await?, "already deleted");
    // The key may be created again after its deletion.
    cb.kv().cas("shared.new", 0, "again").await?;

    // The exact watch: changes made on A and C, in order, with who.
    let e1 = ca.kv().set("shared.exact", "1").await?;
    let e2 = cc.kv().set("shared.exact", "2").await?;
    assert!(cc.kv().delete("shared.exact").await?);
    let ev = next(&mut exact).await;
    assert_eq!(
        (ev.version, &ev.value[..], ev.by.as_str()),
        (e1, &b"1"[..], "on-a")
    );
    let ev = next(&mut exact).await;
    assert_eq!(
        (ev.version, &ev.value[..], ev.by.as_str()),
        (e2, &b"2"[..], "on-c")
    );
    let ev = next(&mut exact).await;
    assert!(ev.deleted && ev.version > e2 && ev.by == "on-c", "{ev:?}");

    // The prefix watch on B saw every change made on A, B and C, in
    // revision order. Then writers on A and C interleave.
    let writers = async {
        let wa = async {
            for i in 0..20 {
                ca.kv().set("shared.order.a", format!("{i}")).await?;
            }
            anyhow::Ok(())
        };
        let wc = async {
            for i in 0..20 {
                cc.kv().set("shared.order.c", format!("{i}")).await?;
            }
            anyhow::Ok(())
        };
        let (x, y) = tokio::join!(wa, wc);
        x.and(y)
    };
    writers.await?;
    // Before the writers: the set and the winning CAS of shared.k, the
    // create, delete and re-create of shared.new, 2 sets and a delete of
    // shared.exact.
    let mut events = Vec::new();
    while events.len() < 8 + 40 {
        events.push(next(&mut prefix).await);
    }
    for w in events.windows(2) {
        assert!(w[0].version < w[1].version, "revision order: {w:?}");
    }
    for key in ["shared.order.a", "shared.order.c"] {
        let values: Vec<String> = events
            .iter()
            .filter(|e| e.key == key)
            .map(|e| String::from_utf8_lossy(&e.value).into_owned())
            .collect();
        let want: Vec<String> = (0..20).map(|i| i.to_string()).collect();
        assert_eq!(values, want, "{key} in the order written");
    }
    assert_eq!(events[0].key, "shared.k");
    assert_eq!(events[0].by, "on-a");
    // No more than those.
    assert!(
        tokio::time::timeout(Duration::from_millis(300), prefix.recv())
            .await
            .is_err(),
        "nothing else"
    );

    // A new watch on another hub starts from the shared values.
    let mut late = cc.kv().watch("shared.order.a").await?;
    let ev = next(&mut late).await;
    assert_eq!(&ev.value[..], b"19");

    // Entries no hub wrote (a key that does not unescape, a value without
    // the envelope) are skipped and counted, never reach a client.
    let nats = async_nats::connect(cluster.nodes[1].url.as_str()).await?;
    let js = async_nats::jetstream::new(nats);
    js.publish("$KV.sb_fedtest_kv.bad=zz", "x".into())
        .await?
        .await?;
    js.publish("$KV.sb_fedtest_kv.shared=2Eraw", "no envelope".into())
        .await?
        .await?;
    ca.kv().set("shared.after", "ok").await?;
    let ev = next(&mut prefix).await;
    assert_eq!(ev.key, "shared.after", "the hostile entries were skipped");
    eventually("every hub counted both", || {
        [&a, &b, &c]
            .iter()
            .all(|h| h.fed.kv().stats().malformed() >= 2)
    })
    .await;
    assert!(cb.kv().get("shared.raw").await?.is_none(), "read as absent");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_kv_keeps_working_when_a_nats_node_is_killed() -> anyhow::Result<()> {
    let Some(bin) = nats_server() else {
        return Ok(());
    };
    let mut cluster = Cluster::start(&bin, 3).await?;
    let lease = Duration::from_secs(5);
    let a = FedHub::start("hub-a", &cluster.nodes[0].url, lease).await?;
    let b = FedHub::start("hub-b", &cluster.nodes[1].url, lease).await?;
    let ca = a.client("on-a").await?;
    let cb = b.client("on-b").await?;
    let before = ca.kv().set("durable.before", "1").await?;

    cluster.nodes[2].kill();
    // The bucket may need a new leader first: retry, bounded.
    let deadline = Instant::now() + WAIT;
    let after = loop {
        match cb.kv().set("durable.after", "2").await {
            Ok(v) => break v,
            Err(e) => {
                assert!(Instant::now() < deadline, "no write after the kill: {e}");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    };
    assert!(after > before);
    for c in [&ca, &cb] {
        let got = c.kv().get("durable.before").await?.expect("kept");
        assert_eq!((&got.value[..], got.version), (&b"1"[..], before));
        let got = c.kv().get("durable.after").await?.expect("written");
        assert_eq!((&got.value[..], got.version), (&b"2"[..], after));
    }
    Ok(())
}

/// The key limit holds across hubs, and what other writers put beyond it
/// never grows a hub's memory: hubs with `kv_max_keys` 5, a raw NATS
/// client writing 30 more keys into the bucket.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_kv_cache_is_bounded_by_the_key_limit() -> anyhow::Result<()> {
    const MAX: usize = 5;
    let Some(bin) = nats_server() else {
        return Ok(());
    };
    let cluster = Cluster::start(&bin, 3).await?;
    let lease = Duration::from_secs(5);
    let limits = Limits {
        kv_max_keys: MAX,
        ..Limits::default()
    };
    let a = FedHub::start_limited(
        "hub-a",
        &cluster.nodes[0].url,
        lease,
        limits.clone(),
        |_| {},
    )
    .await?;
    let b = FedHub::start_limited("hub-b", &cluster.nodes[1].url, lease, limits, |_| {}).await?;
    let ca = a.client("on-a").await?;
    let cb = b.client("on-b").await?;
    let mut watch = cb.kv().watch_prefix("raw").await?;

    for i in 0..MAX {
        ca.kv().set(&format!("k{i}"), "v").await?;
    }
    eventually("hub B saw the keys written on hub A", || {
        b.fed.kv().live_keys() == MAX
    })
    .await;
    // A new key on hub B: the typed error a local set gets.
    let refused = cb
        .kv()
        .set("one.more", "v")
        .await
        .expect_err("over the limit");
    assert_eq!(refused.code(), Some(ErrorCode::LimitExceeded), "{refused}");
    // A key that exists may still change.
    cb.kv().set("k0", "changed").await?;

    // Another writer ignores the limit: 30 keys more in the bucket.
    let nats = async_nats::connect(cluster.nodes[2].url.as_str()).await?;
    let js = async_nats::jetstream::new(nats);
    const RAW: usize = 30;
    for i in 0..RAW {
        // The envelope: format 1, `by` of 3 bytes, the value.
        js.publish(
            format!("$KV.sb_fedtest_kv.raw{i}"),
            b"\x01\x00\x03rawv"[..].into(),
        )
        .await?
        .await?;
    }
    // Hub B's watcher sees every change, the last one included ...
    let deadline = Instant::now() + WAIT;
    loop {
        let ev = next(&mut watch).await;
        if ev.key == format!("raw{}", RAW - 1) {
            assert_eq!((&ev.value[..], ev.by.as_str()), (&b"v"[..], "raw"));
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the raw keys never reached the watcher"
        );
    }
    // ... but neither hub keeps more than its limit.
    eventually("both hubs counted the keys beyond the limit", || {
        [&a, &b]
            .iter()
            .all(|h| h.fed.kv().stats().uncached() >= RAW as u64)
    })
    .await;
    for (h, c) in [(&a, &ca), (&b, &cb)] {
        assert_eq!(h.fed.kv().live_keys(), MAX);
        assert_eq!(c.status().await?.kv_keys, MAX as u64, "the router's cache");
    }
    // Reads go to the bucket: a key beyond the cache is read all the same.
    let got = ca.kv().get("raw7").await?.expect("in the bucket");
    assert_eq!(&got.value[..], b"v");
    // Deletes free room in the count; a new key then fits again.
    assert!(cb.kv().delete("k1").await?);
    eventually("hub A saw the delete", || a.fed.kv().live_keys() == MAX - 1).await;
    ca.kv().set("fits", "v").await?;
    Ok(())
}
