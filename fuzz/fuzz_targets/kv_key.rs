//! The key/value key checks and the key index behind them (exact and prefix
//! watches, prefix scans), against a reference model, through a `Router`.
//!
//! Input layout: up to 6 keys separated by `0xFF` (a part that is not UTF-8
//! is skipped). The first key is watched exactly and the last as a prefix
//! (both before any write), every key is set in order, read back, then the
//! second key is deleted, and finally the last key is watched as a prefix
//! again (its initial updates list the stored keys under the prefix).
//!
//! Checks: a key is accepted for a write exactly when it is 1 to
//! `kv_max_key` bytes without control characters (a prefix may also be
//! empty); refusals are `INVALID_ARGUMENT` with a bounded message; reads,
//! versions (growing per key) and deletions agree with a map; each watcher
//! sees exactly the changes of its key or prefix, in order, once; the late
//! prefix watch lists exactly the stored keys under the prefix, in key
//! order.

#![no_main]

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

use common::{connect, take};
use libfuzzer_sys::fuzz_target;
use switchboard_hub::router::{Input, Router, RouterConfig};
use switchboard_hub::stats::HubStats;
use switchboard_hub::{ConnId, Limits};
use switchboard_wire::proto::{self, frame::Kind};
use switchboard_wire::{ErrorCode, Frame};

const MAX_KEY: usize = 16;

fn valid(key: &str, allow_empty: bool) -> bool {
    (allow_empty || !key.is_empty()) && key.len() <= MAX_KEY && !key.chars().any(char::is_control)
}

fn send(router: &mut Router, now: Instant, conn: u64, frame: Frame) {
    router.handle(
        now,
        Input::Frames {
            conn: ConnId(conn),
            frames: vec![frame],
        },
    );
}

/// Checks the one answer to a call: `Ok` or `KvValue` when accepted,
/// `INVALID_ARGUMENT` with a bounded message when refused.
fn answered(frames: &[Frame], id: u64, accepted: bool, what: &str) -> Option<proto::KvValue> {
    assert_eq!(frames.len(), 1, "{what}: {frames:?}");
    match &frames[0].kind {
        Some(Kind::Ok(o)) if accepted && o.id == id => None,
        Some(Kind::KvValue(v)) if accepted && v.id == id => Some(v.clone()),
        Some(Kind::Error(e)) if !accepted && e.id == id => {
            assert_eq!(e.code, ErrorCode::InvalidArgument as i32, "{what}: {e:?}");
            assert!(e.message.len() <= 256, "{what}: {e:?}");
            None
        }
        _ => panic!("{what}: accepted {accepted}, got {frames:?}"),
    }
}

fuzz_target!(|data: &[u8]| {
    let keys: Vec<&str> = data
        .split(|b| *b == 0xFF)
        .take(6)
        .filter_map(|p| std::str::from_utf8(p).ok())
        .collect();
    let Some((&exact, _)) = keys.split_first() else {
        return;
    };
    let prefix = *keys.last().unwrap_or(&exact);

    let mut router = Router::new(
        RouterConfig {
            identity: proto::HubIdentity::default(),
            limits: Limits {
                kv_max_key: MAX_KEY,
                ..Limits::default()
            },
            keepalive: None,
        },
        Arc::new(HubStats::default()),
    );
    let now = Instant::now();
    let watcher = connect(&mut router, now, 1, "watcher", "");
    let writer = connect(&mut router, now, 2, "writer", "");
    take(&watcher);
    take(&writer);

    // Watches before any write: exact on the first key, prefix on the last.
    let exact_ok = valid(exact, false);
    let prefix_ok = valid(prefix, true);
    let watch = |key: &str, watch_id: u64, prefix: bool| -> Frame {
        proto::KvWatch {
            id: watch_id,
            watch_id,
            key: key.into(),
            prefix,
        }
        .into()
    };
    send(&mut router, now, 1, watch(exact, 1, false));
    answered(&take(&watcher), 1, exact_ok, "exact watch");
    send(&mut router, now, 1, watch(prefix, 2, true));
    answered(&take(&watcher), 2, prefix_ok, "prefix watch");

    let mut model: BTreeMap<String, (String, u64)> = BTreeMap::new();
    let mut expected: Vec<(u64, String, u64, bool)> = Vec::new();
    let note = |expected: &mut Vec<_>, key: &str, version: u64, deleted: bool| {
        if exact_ok && key == exact {
            expected.push((1, key.to_owned(), version, deleted));
        }
        if prefix_ok && key.starts_with(prefix) {
            expected.push((2, key.to_owned(), version, deleted));
        }
    };

    for (i, key) in keys.iter().enumerate() {
        let id = 100 + i as u64;
        let value = format!("v{i}");
        send(
            &mut router,
            now,
            2,
            proto::KvSet {
                id,
                key: (*key).into(),
                value: value.clone().into(),
                expect_version: None,
            }
            .into(),
        );
        let ok = valid(key, false);
        if let Some(v) = answered(&take(&writer), id, ok, "set") {
            let before = model.get(*key).map_or(0, |(_, version)| *version);
            assert!(v.version > before, "a key's version grows: {v:?}");
            model.insert((*key).to_owned(), (value, v.version));
            note(&mut expected, key, v.version, false);
        }
    }

    for (i, key) in keys.iter().enumerate() {
        let id = 200 + i as u64;
        send(
            &mut router,
            now,
            2,
            proto::KvGet {
                id,
                key: (*key).into(),
            }
            .into(),
        );
        let v = answered(&take(&writer), id, true, "get").expect("a value");
        match model.get(*key) {
            Some((value, version)) => {
                assert!(v.found, "{key:?} stored");
                assert_eq!((v.value.as_ref(), v.version), (value.as_bytes(), *version));
            }
            None => assert!(!v.found, "{key:?} never stored: {v:?}"),
        }
    }

    if let Some(&gone) = keys.get(1) {
        send(
            &mut router,
            now,
            2,
            proto::KvDelete {
                id: 300,
                key: gone.into(),
                expect_version: None,
            }
            .into(),
        );
        let answer = take(&writer);
        assert_eq!(answer.len(), 1, "delete: {answer:?}");
        match (&answer[0].kind, model.remove(gone)) {
            (Some(Kind::KvValue(v)), Some((_, version))) => {
                assert!(!v.found && v.version > version, "{v:?}");
                note(&mut expected, gone, v.version, true);
            }
            (Some(Kind::Error(e)), None) => {
                assert_eq!(e.code, ErrorCode::NotFound as i32, "{e:?}");
                assert!(e.message.len() <= 256, "{e:?}");
            }
            (other, stored) => panic!("delete of {gone:?} (stored {stored:?}): {other:?}"),
        }
    }

    let seen: Vec<(u64, String, u64, bool)> = take(&watcher)
        .into_iter()
        .map(|f| match f.kind {
            Some(Kind::KvUpdate(u)) => (u.watch_id, u.key, u.version, u.deleted),
            other => panic!("watcher got {other:?}"),
        })
        .collect();
    assert_eq!(seen, expected, "keys {keys:?}");

    // A late prefix watch lists the stored keys under the prefix.
    send(&mut router, now, 1, watch(prefix, 3, true));
    let frames = take(&watcher);
    if !prefix_ok {
        answered(&frames, 3, false, "late prefix watch");
        return;
    }
    assert!(
        matches!(frames.first(), Some(Frame { kind: Some(Kind::Ok(o)), .. }) if o.id == 3),
        "{frames:?}"
    );
    let listed: Vec<(String, u64)> = frames[1..]
        .iter()
        .map(|f| match &f.kind {
            Some(Kind::KvUpdate(u)) if u.watch_id == 3 && !u.deleted => (u.key.clone(), u.version),
            other => panic!("late watch got {other:?}"),
        })
        .collect();
    let want: Vec<(String, u64)> = model
        .iter()
        .filter(|(k, _)| k.starts_with(prefix))
        .map(|(k, (_, v))| (k.clone(), *v))
        .collect();
    assert_eq!(listed, want, "prefix {prefix:?}");
});
