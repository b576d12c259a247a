//! Cost of the replication change log in the routing core, without sockets:
//! the same inputs through a router with the log off, with the log on
//! (changes taken every 64 inputs, as the router task would), and the rate
//! at which a replica applies the log.
//!
//! Run: `cargo bench -p switchboard-hub --bench replication` (release mode).
//! `--inputs N` sets the inputs per workload (default 1,000,000).

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use switchboard_hub::outbox::Taken;
use switchboard_hub::router::replica::Replica;
use switchboard_hub::router::{ChangeLogLimits, Input, Router, RouterConfig};
use switchboard_hub::stats::HubStats;
use switchboard_hub::{ConnId, Limits, Outbox};
use switchboard_wire::{proto, Frame};

const SUBSCRIBERS: u64 = 4;

fn config() -> RouterConfig {
    RouterConfig {
        identity: proto::HubIdentity {
            service: "bench".into(),
            ..Default::default()
        },
        limits: Limits::default(),
        keepalive: None,
    }
}

/// A router with one publisher (conn 1) and `SUBSCRIBERS` subscribers of
/// `t.*`; returns the outboxes to drain.
fn setup(log: bool) -> (Router, Vec<Arc<Outbox>>) {
    let mut router = Router::new(config(), Arc::new(HubStats::default()));
    if log {
        router.enable_change_log(ChangeLogLimits::default());
    }
    let now = Instant::now();
    let mut outboxes = Vec::new();
    for n in 1..=SUBSCRIBERS + 1 {
        let conn = ConnId(n);
        let outbox = Outbox::new(conn);
        outboxes.push(outbox.clone());
        let info = proto::ClientInfo {
            client_id: format!("c{n}"),
            ..Default::default()
        };
        router.handle(now, Input::Connect { conn, info, outbox });
        if n > 1 {
            let sub: Frame = proto::Subscribe {
                id: 0,
                sub_id: 1,
                pattern: "t.*".into(),
                queue_group: String::new(),
                ..Default::default()
            }
            .into();
            router.handle(
                now,
                Input::Frames {
                    conn,
                    frames: vec![sub],
                },
            );
        }
    }
    (router, outboxes)
}

fn workload(kind: &str, i: u64) -> Frame {
    match kind {
        "publish" => Frame::publish("t.a", vec![0u8; 64]),
        _ => proto::KvSet {
            id: i + 1,
            key: format!("k{}", i % 1000),
            value: Bytes::from_static(&[0u8; 64]),
            expect_version: None,
        }
        .into(),
    }
}

/// Runs `inputs` frames (batches of 16) and returns the elapsed time and,
/// when `keep`, the changes logged (otherwise they are dropped once taken,
/// as a link would after sending them).
fn run(
    kind: &str,
    inputs: u64,
    log: bool,
    keep: bool,
) -> (Duration, Vec<proto::Change>, proto::Snapshot) {
    let (mut router, outboxes) = setup(log);
    let start_snapshot = router.snapshot();
    let mut changes = Vec::new();
    let mut kept = Vec::new();
    let mut taken = Taken::default();
    let now = Instant::now();
    let started = Instant::now();
    let mut i = 0;
    let mut batches = 0u64;
    while i < inputs {
        let frames: Vec<Frame> = (0..16).map(|k| workload(kind, i + k)).collect();
        i += 16;
        router.handle(
            now,
            Input::Frames {
                conn: ConnId(1),
                frames,
            },
        );
        batches += 1;
        if batches % 4 == 0 {
            if log {
                router
                    .take_changes(&mut changes)
                    .expect("changes are taken often enough");
                if keep {
                    kept.append(&mut changes);
                } else {
                    changes.clear();
                }
            }
            for o in &outboxes {
                o.take(usize::MAX, &mut taken);
            }
        }
    }
    if log {
        router
            .take_changes(&mut changes)
            .expect("changes are taken often enough");
        kept.append(&mut changes);
    }
    (started.elapsed(), kept, start_snapshot)
}

fn main() {
    let mut inputs: u64 = 1_000_000;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        if a == "--inputs" {
            inputs = args
                .next()
                .and_then(|v| v.parse().ok())
                .expect("--inputs takes a number");
        }
    }
    println!("inputs per workload: {inputs}; publish fans out to {SUBSCRIBERS} subscribers");
    for kind in ["publish", "kv_set"] {
        let (off, _, _) = run(kind, inputs, false, false);
        let (on, _, _) = run(kind, inputs, true, false);
        let (_, changes, snapshot) = run(kind, inputs, true, true);
        let rate = |d: Duration| inputs as f64 / d.as_secs_f64() / 1e6;
        let mut replica = Replica::new(
            Instant::now(),
            &snapshot,
            config(),
            Arc::new(HubStats::default()),
        )
        .expect("restores");
        let n = changes.len();
        let now = Instant::now();
        let started = Instant::now();
        for c in changes {
            replica.apply(now, c).expect("applies");
        }
        let apply = started.elapsed();
        println!(
            "{kind:8} log off {:.2} M/s, log on {:.2} M/s ({:.0}% of off); replica applies {n} changes at {:.2} M/s",
            rate(off),
            rate(on),
            100.0 * off.as_secs_f64() / on.as_secs_f64(),
            n as f64 / apply.as_secs_f64() / 1e6,
        );
    }
}
