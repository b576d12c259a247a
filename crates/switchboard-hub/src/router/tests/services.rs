//! Service requests: round-robin over matching responders, refusals,
//! pending to the responder, full responders skipped, the choice logged.

use super::*;

#[test]
fn service_requests_go_round_robin_to_matching_responders() {
    let mut sim = Sim::new();
    let a = sim.connect("a");
    let b = sim.connect("b");
    // The requests-side Listen flag does not apply to service requests.
    let c = sim.connect_listening("c", false);
    sim.subscribe_service(b, 1, "svc.>");
    sim.subscribe_service(b, 2, "svc.echo");
    sim.subscribe_service(c, 3, "svc.*");
    sim.subscribe_service(c, 4, "other");

    // Service subscriptions take no publishes.
    sim.send(
        a,
        proto::Publish {
            id: 1,
            topic: "svc.echo".into(),
            ..Default::default()
        },
    );
    assert_eq!(sim.recv_one(a), Frame::ok(1));
    assert!(sim.recv(b).is_empty() && sim.recv(c).is_empty());

    let mut picked = Vec::new();
    for id in 10..16 {
        sim.send(
            a,
            proto::Request {
                headers: sample_headers(),
                ..service_request(id, "svc.echo")
            },
        );
        for (conn, name) in [(b, "b"), (c, "c")] {
            for f in sim.recv(conn) {
                let Some(Kind::Request(r)) = f.kind else {
                    panic!("{f:?}")
                };
                assert_eq!(
                    (r.id, r.to.as_str(), r.from.as_str(), r.service.as_str()),
                    (id, name, "a", "svc.echo")
                );
                assert_eq!(r.headers, sample_headers());
                picked.push((name, r.sub_id));
                sim.send(conn, Frame::reply(id, "a", name));
            }
        }
        match sim.recv_one(a).kind {
            Some(Kind::Reply(r)) => {
                assert_eq!((r.id, r.from.as_str()), (id, picked[picked.len() - 1].0))
            }
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(picked.len(), 6);
    let mut first: Vec<_> = picked[..3].to_vec();
    assert_eq!(picked[3..], first[..], "the same turn again");
    first.sort();
    assert_eq!(
        first,
        [("b", 1), ("b", 2), ("c", 3)],
        "each responder once a turn"
    );
    assert_eq!(sim.router.pending_requests(), 0);
}

#[test]
fn service_requests_refused_clearly() {
    let limits = Limits {
        max_subscriptions: 2,
        ..Limits::default()
    };
    let mut sim = Sim::with(limits, None);
    let a = sim.connect("a");
    let b = sim.connect("b");
    sim.send(a, service_request(1, "svc.x"));
    let (id, code, message) = error_of(&sim.recv_one(a));
    assert_eq!((id, code), (1, ErrorCode::NoResponders));
    assert!(message.contains("svc.x"), "{message}");
    sim.send(
        a,
        proto::Request {
            to: "b".into(),
            ..service_request(2, "svc.x")
        },
    );
    assert_eq!(
        code_of(&sim.recv_one(a)),
        Some((2, ErrorCode::InvalidArgument))
    );
    sim.send(a, service_request(3, "svc.*"));
    assert_eq!(
        code_of(&sim.recv_one(a)),
        Some((3, ErrorCode::InvalidArgument))
    );
    for (pattern, group) in [("svc.x", "g"), ("bad pattern", ""), ("a.>.b", "")] {
        sim.send(
            b,
            proto::Subscribe {
                id: 4,
                sub_id: 9,
                pattern: pattern.into(),
                queue_group: group.into(),
                service: true,
            },
        );
        assert_eq!(
            code_of(&sim.recv_one(b)),
            Some((4, ErrorCode::InvalidArgument)),
            "{pattern} {group}"
        );
    }
    assert!(sim.recv(b).is_empty());
    // Service subscriptions count toward the limit and are in the snapshot.
    sim.subscribe_service(b, 1, "svc.x");
    sim.subscribe(b, 2, "t", "");
    sim.send(
        b,
        proto::Subscribe {
            id: 5,
            sub_id: 3,
            pattern: "svc.y".into(),
            service: true,
            ..Default::default()
        },
    );
    assert_eq!(
        code_of(&sim.recv_one(b)),
        Some((5, ErrorCode::LimitExceeded))
    );
    let snap = sim.router.snapshot();
    let subs = &snap.clients[1].subscriptions;
    assert_eq!(
        subs[0],
        proto::Subscribe {
            id: 0,
            sub_id: 1,
            pattern: "svc.x".into(),
            queue_group: String::new(),
            service: true,
        }
    );
    assert!(!subs[1].service);
    assert_eq!(sim.router.status(sim.now, 0).subscriptions, 2);
    // Unsubscribed like any subscription.
    sim.send(b, proto::Unsubscribe { id: 6, sub_id: 1 });
    assert_eq!(sim.recv_one(b), Frame::ok(6));
    sim.send(a, service_request(7, "svc.x"));
    assert_eq!(
        code_of(&sim.recv_one(a)),
        Some((7, ErrorCode::NoResponders))
    );
    assert_eq!(sim.router.status(sim.now, 0).counters["no_responders"], 2);
    assert_eq!(sim.router.pending_requests(), 0);
}

#[test]
fn a_service_request_is_pending_to_its_responder() {
    let mut sim = Sim::new();
    let a = sim.connect("a");
    let b = sim.connect("b");
    let c = sim.connect("c");
    sim.subscribe_service(b, 1, "svc");
    sim.subscribe_service(c, 1, "svc");
    let timed = |id| proto::Request {
        timeout_ms: 100,
        ..service_request(id, "svc")
    };

    // The responder leaves: TARGET_GONE.
    sim.send(a, timed(1));
    let (chosen, _) = who_got(&mut sim, &[b, c]);
    let other = if chosen == b { c } else { b };
    sim.router.handle(
        sim.now,
        Input::Disconnected {
            conn: chosen,
            notice: None,
            reason: "gone".into(),
        },
    );
    assert_eq!(code_of(&sim.recv_one(a)), Some((1, ErrorCode::TargetGone)));

    // Cancelled: no timeout, the late reply is dropped.
    sim.send(a, timed(2));
    assert_eq!(who_got(&mut sim, &[other]), (other, 2));
    sim.send(a, proto::Cancel { id: 2 });
    sim.advance(Duration::from_millis(200));
    let name = if other == b { "b" } else { "c" };
    sim.send(other, Frame::reply(2, "a", "late"));
    assert!(sim.recv(a).is_empty());

    // Unanswered: TIMEOUT. Answered by someone else: dropped.
    sim.send(a, timed(3));
    who_got(&mut sim, &[other]);
    let x = sim.connect("x");
    sim.send(x, Frame::reply(3, "a", "not asked"));
    assert!(sim.recv(a).is_empty());
    sim.advance(Duration::from_millis(100));
    assert_eq!(code_of(&sim.recv_one(a)), Some((3, ErrorCode::Timeout)));

    sim.send(a, timed(4));
    who_got(&mut sim, &[other]);
    sim.send(other, Frame::reply(4, "a", "ok"));
    assert!(matches!(sim.recv_one(a).kind, Some(Kind::Reply(r)) if r.from == name));
    let counters = sim.router.status(sim.now, 0).counters;
    assert_eq!(counters["replies_dropped"], 2);
    assert_eq!(counters["requests_cancelled"], 1);
}

#[test]
fn a_full_responder_is_skipped_while_another_has_room() {
    let limits = Limits {
        queue_frames: 1,
        ..Limits::default()
    };
    let mut sim = Sim::with(limits, None);
    let a = sim.connect("a");
    let b = sim.connect("b");
    let c = sim.connect("c");
    sim.subscribe_service(b, 1, "svc");
    sim.subscribe_service(c, 1, "svc");
    sim.send(a, Frame::direct("b", "fills b's queue"));
    for id in 1..=2 {
        sim.send(a, service_request(id, "svc"));
        assert_eq!(who_got(&mut sim, &[c]), (c, id), "b is full");
    }
    assert_eq!(sim.recv(b).len(), 1, "only the direct message");
}

#[test]
fn the_responder_picked_travels_in_the_change_log() {
    let limits = Limits {
        queue_frames: 1,
        ..Limits::default()
    };
    let mut sim = Sim::with(limits.clone(), None);
    let stats = || Arc::new(HubStats::default());
    let empty = sim.router.snapshot();
    let mut replica = Replica::new(sim.now, &empty, config(limits, None), stats()).unwrap();
    sim.router.enable_change_log(ChangeLogLimits::default());
    let a = sim.connect("a");
    let b = sim.connect("b");
    let c = sim.connect("c");
    sim.subscribe_service(b, 1, "svc");
    sim.subscribe_service(c, 2, "svc");
    // b's queue is full: the primary picks c; the replica, whose ghosts
    // never fill, must not pick b.
    sim.send(a, Frame::direct("b", "fills b's queue"));
    sim.send(a, service_request(1, "svc"));
    assert_eq!(who_got(&mut sim, &[c]), (c, 1));
    // Both `to` and `service`: refused, and refused on replay too.
    sim.send(
        a,
        proto::Request {
            to: "c".into(),
            sub_id: 2,
            ..service_request(2, "svc")
        },
    );
    assert_eq!(
        code_of(&sim.recv_one(a)),
        Some((2, ErrorCode::InvalidArgument))
    );
    let mut changes = Vec::new();
    sim.router.take_changes(&mut changes).unwrap();
    for change in changes {
        assert!(replica.apply(sim.now, change).unwrap());
    }
    let r = replica.router();
    assert_eq!(r.snapshot(), sim.router.snapshot());
    assert_eq!(r.requests.pending_len(), 1, "only the accepted request");
    let (key, p) = r.requests.pending().next().unwrap();
    let id = |conn| r.registry.get(conn).map(|c| c.id());
    assert_eq!((id(key.0).unwrap(), key.1), ("a", 1));
    assert_eq!(id(p.target).unwrap(), "c", "the primary's choice");
}
