//! Discovery against real sockets on loopback.

mod common;

use std::net::{IpAddr, Ipv6Addr};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use common::*;
use switchboard_discovery::{
    discover, probe, DiscoverError, DiscoverOptions, PortChoice, ProbeError, Secret, Via,
    MAX_PROBE_LEN,
};

fn opts(dir: &std::path::Path, secret: &Secret) -> DiscoverOptions {
    DiscoverOptions {
        hint_dirs: vec![dir.to_owned()],
        secret: Some(secret.clone()),
        ..Default::default()
    }
}

fn only_hints(mut o: DiscoverOptions) -> DiscoverOptions {
    o.use_table = false;
    o.use_scan = false;
    o
}

fn narrow(o: DiscoverOptions, around: u16, width: u16) -> DiscoverOptions {
    DiscoverOptions {
        range: around.saturating_sub(width).max(1)..=around.saturating_add(width),
        ..o
    }
}

#[tokio::test]
async fn found_via_hint() {
    let dir = tempfile::tempdir().unwrap();
    let secret = Secret::random();
    // A service name of its own: other tests scan nearby ports for "svc",
    // and their probes would count here.
    let hub = hub("svc-hint", &secret, V4).await;
    let _g = hub.hint(dir.path());
    let found = discover("svc-hint", &only_hints(opts(dir.path(), &secret)))
        .await
        .unwrap();
    assert_eq!(found.len(), 1);
    assert_eq!(found[0].addr, hub.addr);
    assert_eq!(found[0].via, Via::Hint);
    assert_eq!(found[0].identity, hub.identity);
    assert_eq!(hub.probes.load(Ordering::Relaxed), 1);
}

#[cfg(target_os = "linux")]
#[tokio::test]
async fn found_via_table_without_hint() {
    let dir = tempfile::tempdir().unwrap();
    let secret = Secret::random();
    let hub = hub("svc-table", &secret, V4).await;
    let o = DiscoverOptions {
        use_hints: false,
        use_scan: false,
        ..opts(dir.path(), &secret)
    };
    let found = discover("svc-table", &o).await.unwrap();
    assert_eq!(found[0].addr, hub.addr);
    assert_eq!(found[0].via, Via::Table);
}

#[tokio::test]
async fn found_via_narrow_scan_without_table() {
    let dir = tempfile::tempdir().unwrap();
    let secret = Secret::random();
    let hub = hub("svc-scan", &secret, V4).await;
    let o = DiscoverOptions {
        use_hints: false,
        use_table: false,
        ..narrow(opts(dir.path(), &secret), hub.addr.port(), 200)
    };
    let found = discover("svc-scan", &o).await.unwrap();
    assert_eq!(found[0].addr, hub.addr);
    assert_eq!(found[0].via, Via::Scan);
}

#[tokio::test]
async fn found_via_full_scan() {
    let dir = tempfile::tempdir().unwrap();
    let secret = Secret::random();
    let hub = hub("svc-full", &secret, V4).await;
    let o = DiscoverOptions {
        use_hints: false,
        use_table: false,
        all: true,
        deadline: Duration::from_secs(20),
        ..opts(dir.path(), &secret)
    };
    let t = Instant::now();
    let found = discover("svc-full", &o).await.unwrap();
    assert_eq!(found.len(), 1, "{found:?}");
    assert_eq!(found[0].addr, hub.addr);
    assert!(t.elapsed() < Duration::from_secs(15), "{:?}", t.elapsed());
}

#[tokio::test]
async fn stale_hint_to_dead_port_is_rejected_quickly() {
    let dir = tempfile::tempdir().unwrap();
    let secret = Secret::random();
    let dead = dead_port();
    let _g = switchboard_discovery::Hint::new("svc", dead, "0123456789abcdef")
        .write_in(dir.path())
        .unwrap();
    let t = Instant::now();
    let err = discover("svc", &only_hints(opts(dir.path(), &secret)))
        .await
        .unwrap_err();
    assert!(
        t.elapsed() < Duration::from_millis(300),
        "{:?}",
        t.elapsed()
    );
    let msg = err.to_string();
    assert!(matches!(err, DiscoverError::NotFound { .. }));
    assert!(
        msg.contains("1 hint(s)") && msg.contains("1 stale"),
        "{msg}"
    );
}

#[tokio::test]
async fn stale_hint_to_reused_port_is_rejected_and_hub_found_elsewhere() {
    let dir = tempfile::tempdir().unwrap();
    let secret = Secret::random();
    // The hint's port now belongs to a silent foreign service.
    let squatter = foreign(Foreign::Silent, listener(V4, PortChoice::Os).await.unwrap()).await;
    let _g = switchboard_discovery::Hint::new("svc-stale", squatter.addr, "0123456789abcdef")
        .write_in(dir.path())
        .unwrap();
    let hub = hub("svc-stale", &secret, V4).await;
    let o = DiscoverOptions {
        use_table: false,
        ..narrow(opts(dir.path(), &secret), hub.addr.port(), 50)
    };
    let t = Instant::now();
    let found = discover("svc-stale", &o).await.unwrap();
    assert_eq!(found[0].addr, hub.addr);
    assert_eq!(found[0].via, Via::Scan);
    assert!(t.elapsed() < Duration::from_secs(3), "{:?}", t.elapsed());
    // The squatter got the probe and nothing else.
    let probes = squatter.probes_for("svc-stale");
    assert_eq!(probes.len(), 1);
    assert!(probes[0] <= MAX_PROBE_LEN);
}

#[tokio::test]
async fn impostor_is_skipped_and_real_hub_found() {
    let dir = tempfile::tempdir().unwrap();
    let secret = Secret::random();
    let impostor = foreign(
        Foreign::Impostor,
        listener(V4, PortChoice::Os).await.unwrap(),
    )
    .await;
    let _gi = switchboard_discovery::Hint::new("svc", impostor.addr, "aaaaaaaaaaaaaaaa")
        .write_in(dir.path())
        .unwrap();
    let hub = hub("svc", &secret, V4).await;
    let _gh = hub.hint(dir.path());
    let o = DiscoverOptions {
        all: true,
        ..only_hints(opts(dir.path(), &secret))
    };
    let found = discover("svc", &o).await.unwrap();
    assert_eq!(found.len(), 1, "{found:?}");
    assert_eq!(found[0].addr, hub.addr);
    // Directly: the impostor's answer is recognised as unverified.
    let err = probe(impostor.addr, "svc", &secret, Duration::from_secs(1))
        .await
        .unwrap_err();
    assert!(err.is_unverified(), "{err}");
}

#[tokio::test]
async fn foreign_services_do_not_delay_discovery() {
    let secret = Secret::random();
    let dir = tempfile::tempdir().unwrap();
    let kinds = [
        Foreign::Silent,
        Foreign::NoAccept,
        Foreign::Closes,
        Foreign::Junk,
        Foreign::Endless,
        Foreign::Echo,
        Foreign::Impostor,
    ];
    let (base, mut ls) = cluster(kinds.len() + 1).await;
    let hub_listener = ls.pop().unwrap();
    let mut services = Vec::new();
    for (kind, l) in kinds.iter().zip(ls) {
        services.push((*kind, foreign(*kind, l).await));
    }
    let hub = hub_on("svc-foreign", &secret, hub_listener);
    let probe_timeout = Duration::from_millis(300);
    let o = DiscoverOptions {
        use_hints: false,
        use_table: false,
        all: true,
        probe_timeout,
        range: base..=base + kinds.len() as u16,
        ..opts(dir.path(), &secret)
    };
    let t = Instant::now();
    let found = discover("svc-foreign", &o).await.unwrap();
    let took = t.elapsed();
    assert_eq!(found.len(), 1);
    assert_eq!(found[0].addr, hub.addr);
    // Every foreign candidate is settled within one probe timeout (plus
    // scheduling slack), however it misbehaves.
    assert!(
        took < probe_timeout + Duration::from_millis(700),
        "{took:?}"
    );
    for (kind, s) in &services {
        let probes = s.probes_for("svc-foreign");
        if matches!(
            kind,
            Foreign::Silent | Foreign::Junk | Foreign::Echo | Foreign::Impostor
        ) {
            assert_eq!(probes.len(), 1, "{kind:?}");
        }
        assert!(probes.len() <= 1, "{kind:?} got more than one probe");
        assert!(probes.iter().all(|&n| n <= MAX_PROBE_LEN), "{kind:?}");
    }
    // Each misbehaviour yields the expected typed error.
    for (kind, s) in &services {
        let err = probe(s.addr, "svc-foreign", &secret, probe_timeout)
            .await
            .unwrap_err();
        let ok = match kind {
            Foreign::Silent | Foreign::NoAccept => matches!(err, ProbeError::Timeout { .. }),
            Foreign::Closes => matches!(err, ProbeError::Closed { .. }),
            Foreign::Junk | Foreign::Endless => matches!(err, ProbeError::Wire { .. }),
            Foreign::Echo => matches!(err, ProbeError::Unexpected { kind: "probe", .. }),
            Foreign::Impostor => err.is_unverified(),
        };
        assert!(ok, "{kind:?}: {err:?}");
    }
}

#[tokio::test]
async fn two_services_side_by_side() {
    let dir = tempfile::tempdir().unwrap();
    let secret = Secret::random();
    let alpha = hub("alpha", &secret, V4).await;
    let beta = hub("beta", &secret, V4).await;
    let _ga = alpha.hint(dir.path());
    let _gb = beta.hint(dir.path());
    let o = DiscoverOptions {
        all: true,
        use_scan: false,
        ..opts(dir.path(), &secret)
    };
    let a = discover("alpha", &o).await.unwrap();
    let b = discover("beta", &o).await.unwrap();
    assert_eq!(a.len(), 1);
    assert_eq!(b.len(), 1);
    assert_eq!(a[0].addr, alpha.addr);
    assert_eq!(b[0].addr, beta.addr);
}

#[tokio::test]
async fn two_instances_both_listed() {
    let dir = tempfile::tempdir().unwrap();
    let secret = Secret::random();
    let one = hub("svc", &secret, V4).await;
    let two = hub("svc", &secret, V4).await;
    let _g1 = one.hint(dir.path());
    let _g2 = two.hint(dir.path());
    let o = DiscoverOptions {
        all: true,
        ..only_hints(opts(dir.path(), &secret))
    };
    let mut found: Vec<_> = discover("svc", &o)
        .await
        .unwrap()
        .into_iter()
        .map(|f| f.identity.instance_id)
        .collect();
    found.sort();
    let mut expected = vec![
        one.identity.instance_id.clone(),
        two.identity.instance_id.clone(),
    ];
    expected.sort();
    assert_eq!(found, expected);
    // First mode returns just one of them.
    let first = discover("svc", &only_hints(opts(dir.path(), &secret)))
        .await
        .unwrap();
    assert_eq!(first.len(), 1);
}

#[tokio::test]
async fn ipv6_only_hub_is_found() {
    let v6 = IpAddr::V6(Ipv6Addr::LOCALHOST);
    let Ok(l) = listener(v6, PortChoice::default()).await else {
        eprintln!("::1 unavailable, skipping");
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let secret = Secret::random();
    let hub = hub_on("svc6", &secret, l);
    // By hint.
    {
        let _g = hub.hint(dir.path());
        let found = discover("svc6", &only_hints(opts(dir.path(), &secret)))
            .await
            .unwrap();
        assert_eq!(found[0].addr, hub.addr);
    }
    // By scan (and table on Linux) on ::1, with both families asked for.
    let o = DiscoverOptions {
        use_hints: false,
        ..narrow(opts(dir.path(), &secret), hub.addr.port(), 20).both_loopbacks()
    };
    let found = discover("svc6", &o).await.unwrap();
    assert_eq!(found[0].addr, hub.addr);
    assert!(found[0].addr.is_ipv6());
}

#[tokio::test]
async fn wrong_secret_says_a_hub_answered_but_was_not_verified() {
    let dir = tempfile::tempdir().unwrap();
    // A service name of its own: other tests scan nearby ports for "svc",
    // and their probes would count here.
    let hub = hub("svc-wrong-secret", &Secret::random(), V4).await;
    let _g = hub.hint(dir.path());
    let o = DiscoverOptions {
        use_table: false,
        ..narrow(opts(dir.path(), &Secret::random()), hub.addr.port(), 10)
    };
    let err = discover("svc-wrong-secret", &o).await.unwrap_err();
    let msg = err.to_string();
    assert!(msg.contains("could not be verified"), "{msg}");
    assert!(msg.contains("wrong secret"), "{msg}");
    assert!(msg.contains(&hub.addr.to_string()), "{msg}");
    assert!(msg.contains("scanned"), "{msg}");
    // The hub was probed once via the hint; the scan skipped its port.
    assert_eq!(hub.probes.load(Ordering::Relaxed), 1);
}

#[tokio::test]
async fn invalid_service_names_are_refused() {
    let o = DiscoverOptions {
        secret: Some(Secret::random()),
        ..Default::default()
    };
    let long = "x".repeat(65);
    for bad in ["", "../etc", long.as_str(), "a b"] {
        assert!(matches!(
            discover(bad, &o).await,
            Err(DiscoverError::InvalidService(_))
        ));
    }
}

#[tokio::test]
async fn deadline_cuts_a_long_search_short() {
    let dir = tempfile::tempdir().unwrap();
    let o = DiscoverOptions {
        use_hints: false,
        use_table: false,
        all: true,
        deadline: Duration::from_millis(100),
        ..opts(dir.path(), &Secret::random())
    };
    let t = Instant::now();
    let err = discover("svc-nobody", &o).await.unwrap_err();
    assert!(t.elapsed() < Duration::from_secs(2), "{:?}", t.elapsed());
    let msg = err.to_string();
    assert!(msg.contains("deadline reached"), "{msg}");
    match err {
        DiscoverError::NotFound { tried, .. } => {
            let (_, n) = tried.scanned.unwrap();
            assert!(n < 64511, "{n}");
        }
        other => panic!("{other:?}"),
    }
}
