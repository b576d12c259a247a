//! Registration, presence, id takeover, limits, unknown kinds, shutdown,
//! idle clients and status counters.

use super::*;

#[test]
fn welcome_presence_and_client_list() {
    let mut sim = Sim::new();
    let watcher = sim.connect("watcher");
    sim.send(watcher, proto::PresenceWatch { id: 5, stop: false });
    match sim.recv_one(watcher).kind {
        Some(Kind::ClientList(l)) => {
            assert_eq!(l.id, 5);
            assert_eq!(l.clients.len(), 1);
        }
        other => panic!("{other:?}"),
    }
    let b = sim.connect("bob");
    let a = sim.connect("alice");
    let events: Vec<(String, i32)> = sim
        .recv(watcher)
        .into_iter()
        .map(|f| match f.kind {
            Some(Kind::Presence(p)) => (p.client.unwrap().client_id, p.kind),
            other => panic!("{other:?}"),
        })
        .collect();
    let joined = proto::PresenceKind::Joined as i32;
    assert_eq!(
        events,
        vec![("bob".into(), joined), ("alice".into(), joined)]
    );

    sim.send(a, proto::ListClients { id: 9 });
    match sim.recv_one(a).kind {
        Some(Kind::ClientList(l)) => {
            let ids: Vec<_> = l.clients.iter().map(|c| c.client_id.as_str()).collect();
            assert_eq!(ids, vec!["alice", "bob", "watcher"], "sorted by id");
        }
        other => panic!("{other:?}"),
    }
    sim.router.handle(
        sim.now,
        Input::Disconnected {
            conn: b,
            notice: None,
            reason: "disconnected".into(),
        },
    );
    match sim.recv_one(watcher).kind {
        Some(Kind::Presence(p)) => {
            assert_eq!(p.kind, proto::PresenceKind::Left as i32);
            assert_eq!(p.client.unwrap().client_id, "bob");
            assert_eq!(p.reason, "disconnected");
        }
        other => panic!("{other:?}"),
    }
    sim.send(watcher, proto::PresenceWatch { id: 6, stop: true });
    assert_eq!(sim.recv_one(watcher), Frame::ok(6));
    sim.connect("carol");
    assert!(sim.recv(watcher).is_empty(), "no events after stop");
}

#[test]
fn id_takeover_closes_the_old_connection() {
    let mut sim = Sim::new();
    let req = sim.connect("req");
    let old = sim.connect("svc");
    sim.send(req, Frame::request(1, "svc", "x"));
    sim.recv(old);
    let new = sim.connect("svc");
    let got = sim.recv(old);
    match got.last().and_then(|f| f.kind.clone()) {
        Some(Kind::Goodbye(g)) => assert_eq!(g.code, ErrorCode::IdTakenOver as i32),
        other => panic!("{other:?}"),
    }
    assert!(!sim.outboxes[&old].is_open());
    assert_eq!(
        code_of(&sim.recv_one(req)),
        Some((1, ErrorCode::TargetGone))
    );
    // The id now routes to the new connection.
    sim.send(req, Frame::direct("svc", "hello"));
    assert_eq!(sim.recv(new).len(), 1);
    // The old connection's later disconnect does not unregister the new one.
    sim.router.handle(
        sim.now,
        Input::Disconnected {
            conn: old,
            notice: None,
            reason: "closed".into(),
        },
    );
    assert_eq!(sim.router.client_count(), 2);
}

#[test]
fn unknown_and_forbidden_kinds_are_refused_and_the_connection_continues() {
    let mut sim = Sim::new();
    let a = sim.connect("a");
    sim.send(
        a,
        Frame {
            seq: 0,
            acked: 0,
            kind: None,
        },
    );
    assert_eq!(code_of(&sim.recv_one(a)), Some((0, ErrorCode::Unsupported)));
    sim.send(a, frame(proto::Welcome::default()));
    assert_eq!(code_of(&sim.recv_one(a)), Some((0, ErrorCode::Unsupported)));
    sim.send(a, frame(proto::Deliver::default()));
    assert_eq!(code_of(&sim.recv_one(a)), Some((0, ErrorCode::Unsupported)));
    sim.send(a, proto::Ping { nonce: 42 });
    assert_eq!(sim.recv_one(a), frame(proto::Pong { nonce: 42 }));
}

#[test]
fn limits_are_enforced_per_client() {
    let limits = Limits {
        max_subscriptions: 2,
        max_clients: 2,
        max_watches: 1,
        ..Limits::default()
    };
    let mut sim = Sim::with(limits, None);
    let a = sim.connect("a");
    sim.subscribe(a, 1, "x", "");
    sim.subscribe(a, 2, "y", "");
    sim.send(
        a,
        proto::Subscribe {
            id: 3,
            sub_id: 3,
            pattern: "z".into(),
            queue_group: String::new(),
            ..Default::default()
        },
    );
    assert_eq!(
        code_of(&sim.recv_one(a)),
        Some((3, ErrorCode::LimitExceeded))
    );
    for id in 1..=2 {
        sim.send(
            a,
            proto::KvWatch {
                id,
                watch_id: id,
                key: "k".into(),
                prefix: false,
            },
        );
    }
    let got = sim.recv(a);
    assert_eq!(got[0], Frame::ok(1));
    assert_eq!(code_of(&got[1]), Some((2, ErrorCode::LimitExceeded)));
    sim.connect("b");
    let c = sim.connect_raw("c");
    let got = sim.recv(c);
    assert_eq!(code_of(&got[0]), Some((0, ErrorCode::LimitExceeded)));
    assert!(!sim.outboxes[&c].is_open());
    assert_eq!(sim.router.client_count(), 2);
}

#[test]
fn shutdown_says_goodbye_to_everyone() {
    let mut sim = Sim::new();
    let a = sim.connect("a");
    let b = sim.connect("b");
    sim.router.handle(sim.now, Input::Shutdown);
    for conn in [a, b] {
        match sim.recv_one(conn).kind {
            Some(Kind::Goodbye(g)) => assert_eq!(g.code, ErrorCode::ShuttingDown as i32),
            other => panic!("{other:?}"),
        }
        assert!(!sim.outboxes[&conn].is_open());
    }
    let late = sim.connect_raw("late");
    match sim.recv_one(late).kind {
        Some(Kind::Goodbye(g)) => assert_eq!(g.code, ErrorCode::ShuttingDown as i32),
        other => panic!("{other:?}"),
    }
    // Writers that do not finish are cut after the grace period.
    assert_eq!(sim.router.next_deadline(), Some(sim.now + CLOSE_GRACE));
    sim.advance(CLOSE_GRACE);
    assert!(sim.outboxes[&a].cancelled().is_cancelled());
}

#[test]
fn idle_clients_are_disconnected_when_keepalive_is_set() {
    let mut sim = Sim::with(Limits::default(), Some(Duration::from_secs(1)));
    let quiet = sim.connect("quiet");
    let chatty = sim.connect("chatty");
    for _ in 0..4 {
        sim.advance(Duration::from_secs(1));
        sim.send(chatty, proto::Ping { nonce: 1 });
        sim.recv(chatty);
    }
    match sim.recv(quiet).last().and_then(|f| f.kind.clone()) {
        Some(Kind::Goodbye(g)) => assert_eq!(g.code, ErrorCode::Timeout as i32),
        other => panic!("{other:?}"),
    }
    assert_eq!(sim.router.client_count(), 1);
}

#[test]
fn status_counts() {
    let mut sim = Sim::new();
    let a = sim.connect("a");
    sim.subscribe(a, 1, "t", "");
    sim.send(a, Frame::publish("t", "x"));
    sim.send(
        a,
        proto::KvSet {
            id: 2,
            key: "k".into(),
            value: "v".into(),
            expect_version: None,
        },
    );
    sim.send(a, proto::StatusRequest { id: 77 });
    let status = match sim.recv(a).pop().and_then(|f| f.kind) {
        Some(Kind::Status(s)) => s,
        other => panic!("{other:?}"),
    };
    assert_eq!(status.id, 77);
    assert_eq!(status.clients, 1);
    assert_eq!(status.subscriptions, 1);
    assert_eq!(status.kv_keys, 1);
    assert_eq!(status.msgs_in, 4);
    assert_eq!(status.identity.unwrap().service, "test");
    sim.router.publish_stats();
    let shared = sim
        .router
        .stats
        .status(sim.router.identity(), Duration::ZERO);
    assert_eq!(
        (shared.clients, shared.subscriptions, shared.kv_keys),
        (1, 1, 1)
    );
}
