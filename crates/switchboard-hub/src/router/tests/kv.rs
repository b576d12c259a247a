//! Key/value: versions, compare-and-set, deletion markers, watches.

use super::*;

#[test]
fn kv_set_get_delete_cas() {
    let mut sim = Sim::new();
    let a = sim.connect("a");
    let kv_value = |f: Frame| match f.kind {
        Some(Kind::KvValue(v)) => (v.id, v.version, v.found, v.value),
        other => panic!("{other:?}"),
    };
    sim.send(
        a,
        proto::KvSet {
            id: 1,
            key: "token".into(),
            value: "t1".into(),
            expect_version: Some(0),
        },
    );
    assert_eq!(kv_value(sim.recv_one(a)), (1, 1, true, Bytes::new()));
    sim.send(
        a,
        proto::KvSet {
            id: 2,
            key: "token".into(),
            value: "t2".into(),
            expect_version: Some(0),
        },
    );
    assert_eq!(
        code_of(&sim.recv_one(a)),
        Some((2, ErrorCode::VersionMismatch))
    );
    sim.send(
        a,
        proto::KvSet {
            id: 3,
            key: "token".into(),
            value: "t2".into(),
            expect_version: Some(1),
        },
    );
    assert_eq!(kv_value(sim.recv_one(a)).1, 2);
    sim.send(
        a,
        proto::KvGet {
            id: 4,
            key: "token".into(),
        },
    );
    assert_eq!(kv_value(sim.recv_one(a)), (4, 2, true, Bytes::from("t2")));
    sim.send(
        a,
        proto::KvDelete {
            id: 5,
            key: "token".into(),
            expect_version: None,
        },
    );
    assert_eq!(kv_value(sim.recv_one(a)), (5, 3, false, Bytes::new()));
    sim.send(
        a,
        proto::KvDelete {
            id: 6,
            key: "token".into(),
            expect_version: None,
        },
    );
    assert_eq!(code_of(&sim.recv_one(a)), Some((6, ErrorCode::NotFound)));
    sim.send(
        a,
        proto::KvGet {
            id: 7,
            key: "token".into(),
        },
    );
    assert_eq!(kv_value(sim.recv_one(a)), (7, 3, false, Bytes::new()));
    // Limits and validation.
    sim.send(
        a,
        proto::KvSet {
            id: 8,
            key: String::new(),
            ..Default::default()
        },
    );
    assert_eq!(
        code_of(&sim.recv_one(a)),
        Some((8, ErrorCode::InvalidArgument))
    );
    sim.send(
        a,
        proto::KvSet {
            id: 9,
            key: "big".into(),
            value: vec![0u8; Limits::default().kv_max_value + 1].into(),
            expect_version: None,
        },
    );
    assert_eq!(
        code_of(&sim.recv_one(a)),
        Some((9, ErrorCode::LimitExceeded))
    );
}

#[test]
fn kv_watch_key_and_prefix_in_order() {
    let mut sim = Sim::new();
    let setter = sim.connect("login");
    let watcher = sim.connect("ui");
    let set = |sim: &mut Sim, id: u64, key: &str, value: &str| {
        sim.send(
            setter,
            proto::KvSet {
                id,
                key: key.into(),
                value: value.to_owned().into(),
                expect_version: None,
            },
        );
        sim.recv(setter);
    };
    set(&mut sim, 1, "session.token", "abc");
    set(&mut sim, 2, "session.user", "ann");
    set(&mut sim, 3, "other", "x");
    sim.send(
        watcher,
        proto::KvWatch {
            id: 10,
            watch_id: 1,
            key: "session.token".into(),
            prefix: false,
        },
    );
    sim.send(
        watcher,
        proto::KvWatch {
            id: 11,
            watch_id: 2,
            key: "session.".into(),
            prefix: true,
        },
    );
    let got = sim.recv(watcher);
    let summary: Vec<String> = got
        .iter()
        .map(|f| match &f.kind {
            Some(Kind::Ok(o)) => format!("ok {}", o.id),
            Some(Kind::KvUpdate(u)) => format!(
                "w{} {}={:?}@{} by '{}'",
                u.watch_id, u.key, u.value, u.version, u.by
            ),
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(
        summary,
        vec![
            "ok 10",
            "w1 session.token=b\"abc\"@1 by ''",
            "ok 11",
            "w2 session.token=b\"abc\"@1 by ''",
            "w2 session.user=b\"ann\"@1 by ''",
        ]
    );
    // The login token changes: both watches see every change, in order.
    set(&mut sim, 4, "session.token", "def");
    sim.send(
        setter,
        proto::KvDelete {
            id: 5,
            key: "session.token".into(),
            expect_version: None,
        },
    );
    set(&mut sim, 6, "other", "y");
    let got: Vec<(u64, u64, bool, String)> = sim
        .recv(watcher)
        .into_iter()
        .map(|f| match f.kind {
            Some(Kind::KvUpdate(u)) => (u.watch_id, u.version, u.deleted, u.by),
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(
        got,
        vec![
            (1, 2, false, "login".into()),
            (2, 2, false, "login".into()),
            (1, 3, true, "login".into()),
            (2, 3, true, "login".into()),
        ]
    );
    sim.send(
        watcher,
        proto::KvUnwatch {
            id: 20,
            watch_id: 1,
        },
    );
    assert_eq!(sim.recv_one(watcher), Frame::ok(20));
    set(&mut sim, 7, "session.token", "ghi");
    let got = sim.recv(watcher);
    assert_eq!(got.len(), 1, "only the prefix watch remains: {got:?}");
    let snap = sim.router.snapshot();
    let ui = snap
        .clients
        .iter()
        .find(|c| c.info.as_ref().unwrap().client_id == "ui")
        .unwrap();
    assert_eq!(ui.watches.len(), 1);
    assert_eq!(snap.kv.len(), 3);
}
