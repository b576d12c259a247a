//! Direct messages, requests and replies, sessions, broadcasts, waiting
//! for room at a full queue, cancels, and the request deadline heap.

use super::*;

#[test]
fn direct_messages() {
    let mut sim = Sim::new();
    let a = sim.connect("a");
    let b = sim.connect("b");
    sim.send(
        a,
        proto::Direct {
            id: 7,
            to: "b".into(),
            from: "forged".into(),
            payload: "hi".into(),
            ..Default::default()
        },
    );
    assert_eq!(sim.recv_one(a), Frame::ok(7));
    match sim.recv_one(b).kind {
        Some(Kind::Direct(d)) => {
            assert_eq!(d.from, "a", "hub fills in the sender");
            assert_eq!(d.payload, Bytes::from("hi"));
        }
        other => panic!("{other:?}"),
    }
    sim.send(a, Frame::direct("nobody", "x"));
    assert!(
        sim.recv(a).is_empty(),
        "fire-and-forget to nobody is silent"
    );
    sim.send(
        a,
        proto::Direct {
            id: 8,
            to: "nobody".into(),
            ..Default::default()
        },
    );
    assert_eq!(
        code_of(&sim.recv_one(a)),
        Some((8, ErrorCode::NoSuchClient))
    );
}

#[test]
fn request_reply_timeout_and_target_gone() {
    let mut sim = Sim::new();
    let req = sim.connect("req");
    let srv = sim.connect("srv");

    // Unknown target: immediate error.
    sim.send(req, Frame::request(1, "ghost", "x"));
    assert_eq!(
        code_of(&sim.recv_one(req)),
        Some((1, ErrorCode::NoSuchClient))
    );

    // Round trip.
    sim.send(req, Frame::request(2, "srv", "ping"));
    let fwd = sim.recv_one(srv);
    match &fwd.kind {
        Some(Kind::Request(r)) => {
            assert_eq!((r.id, r.from.as_str()), (2, "req"));
        }
        other => panic!("{other:?}"),
    }
    // A reply from someone else is not accepted.
    let other = sim.connect("other");
    sim.send(other, Frame::reply(2, "req", "fake"));
    assert!(sim.recv(req).is_empty());
    sim.send(srv, Frame::reply(2, "req", "pong"));
    match sim.recv_one(req).kind {
        Some(Kind::Reply(r)) => {
            assert_eq!((r.id, r.from.as_str()), (2, "srv"));
            assert_eq!(r.payload, Bytes::from("pong"));
        }
        other => panic!("{other:?}"),
    }
    // A duplicate reply is dropped.
    sim.send(srv, Frame::reply(2, "req", "again"));
    assert!(sim.recv(req).is_empty());
    assert_eq!(sim.router.pending_requests(), 0);

    // Timeout: nothing before the deadline, TIMEOUT at it, late reply dropped.
    sim.send(
        req,
        proto::Request {
            id: 3,
            to: "srv".into(),
            timeout_ms: 100,
            ..Default::default()
        },
    );
    sim.recv(srv);
    assert_eq!(
        sim.router.next_deadline(),
        Some(sim.now + Duration::from_millis(100))
    );
    sim.advance(Duration::from_millis(99));
    assert!(sim.recv(req).is_empty());
    sim.advance(Duration::from_millis(1));
    assert_eq!(code_of(&sim.recv_one(req)), Some((3, ErrorCode::Timeout)));
    sim.send(srv, Frame::reply(3, "req", "late"));
    assert!(sim.recv(req).is_empty());

    // Duplicate outstanding id.
    sim.send(req, Frame::request(4, "srv", "x"));
    sim.send(req, Frame::request(4, "srv", "x"));
    assert_eq!(
        code_of(&sim.recv_one(req)),
        Some((4, ErrorCode::InvalidArgument))
    );

    // Target leaves while outstanding.
    sim.router.handle(
        sim.now,
        Input::Disconnected {
            conn: srv,
            notice: None,
            reason: "disconnected".into(),
        },
    );
    assert_eq!(
        code_of(&sim.recv_one(req)),
        Some((4, ErrorCode::TargetGone))
    );
    assert_eq!(sim.router.pending_requests(), 0);
    sim.advance(Duration::from_secs(60));
    assert!(sim.recv(req).is_empty(), "no timeout after TARGET_GONE");
}

#[test]
fn default_request_timeout_applies() {
    let limits = Limits {
        default_request_timeout: Duration::from_secs(2),
        ..Limits::default()
    };
    let mut sim = Sim::with(limits, None);
    let req = sim.connect("req");
    sim.connect("srv");
    sim.send(req, Frame::request(1, "srv", "x"));
    sim.advance(Duration::from_millis(1999));
    assert!(sim.recv(req).is_empty());
    sim.advance(Duration::from_millis(1));
    assert_eq!(code_of(&sim.recv_one(req)), Some((1, ErrorCode::Timeout)));
}

#[test]
fn broadcast_reaches_everyone_but_the_sender() {
    let mut sim = Sim::new();
    let a = sim.connect("a");
    let b = sim.connect("b");
    let c = sim.connect("c");
    sim.send(
        a,
        proto::Broadcast {
            id: 3,
            from: String::new(),
            payload: "all".into(),
            ..Default::default()
        },
    );
    assert_eq!(sim.recv_one(a), Frame::ok(3));
    for conn in [b, c] {
        match sim.recv_one(conn).kind {
            Some(Kind::Broadcast(m)) => {
                assert_eq!((m.from.as_str(), m.payload.as_ref()), ("a", &b"all"[..]))
            }
            other => panic!("{other:?}"),
        }
    }
}

#[test]
fn direct_to_full_queue_waits_then_succeeds_or_fails() {
    let limits = Limits {
        queue_frames: 2,
        default_request_timeout: Duration::from_secs(1),
        ..Limits::default()
    };
    let mut sim = Sim::with(limits, None);
    let a = sim.connect("a");
    let b = sim.connect("b");
    for id in 1..=4 {
        sim.send(
            a,
            proto::Direct {
                id,
                to: "b".into(),
                payload: "x".into(),
                ..Default::default()
            },
        );
    }
    assert_eq!(
        sim.recv(a),
        vec![Frame::ok(1), Frame::ok(2)],
        "two fit, two wait"
    );
    // The writer drains and reports; the waiting ones move in, in order.
    let mut taken = Taken::default();
    sim.outboxes[&b].take(usize::MAX, &mut taken);
    assert_eq!(taken.frames.len(), 2);
    assert!(taken.want_drained);
    sim.router.handle(sim.now, Input::Drained { conn: b });
    assert_eq!(sim.recv(a), vec![Frame::ok(3), Frame::ok(4)]);
    assert_eq!(sim.recv(b).len(), 2);

    // Now b stops reading: the queue fills, and a waiting message fails
    // with QUEUE_FULL at the sender's deadline.
    for id in 10..=12 {
        sim.send(
            a,
            proto::Direct {
                id,
                to: "b".into(),
                payload: "x".into(),
                ..Default::default()
            },
        );
    }
    sim.send(
        a,
        proto::Request {
            id: 13,
            to: "b".into(),
            timeout_ms: 500,
            ..Default::default()
        },
    );
    assert_eq!(sim.recv(a), vec![Frame::ok(10), Frame::ok(11)]);
    sim.advance(Duration::from_millis(500));
    assert_eq!(code_of(&sim.recv_one(a)), Some((13, ErrorCode::QueueFull)));
    sim.advance(Duration::from_millis(500));
    assert_eq!(code_of(&sim.recv_one(a)), Some((12, ErrorCode::QueueFull)));
    assert_eq!(sim.router.pending_requests(), 0);
}

#[test]
fn session_frames_are_routed_by_peer() {
    let mut sim = Sim::new();
    let agent = sim.connect("agent");
    let manager = sim.connect("manager");
    sim.send(
        agent,
        proto::Session {
            peer: "manager".into(),
            session_id: 1,
            body: Some(proto::session::Body::Empty(proto::Empty {})),
        },
    );
    match sim.recv_one(manager).kind {
        Some(Kind::Session(s)) => assert_eq!((s.peer.as_str(), s.session_id), ("agent", 1)),
        other => panic!("{other:?}"),
    }
    sim.send(
        agent,
        proto::Session {
            peer: "nobody".into(),
            ..Default::default()
        },
    );
    let f = sim.recv_one(agent);
    assert_eq!(code_of(&f), Some((0, ErrorCode::NoSuchClient)));
    match f.kind {
        Some(Kind::Error(e)) => assert!(e.message.contains("nobody"), "{}", e.message),
        _ => unreachable!(),
    }
}

#[test]
fn answered_requests_do_not_accumulate_timers() {
    let mut sim = Sim::new();
    let req = sim.connect("req");
    let srv = sim.connect("srv");
    for id in 1..=20_000u64 {
        sim.send(req, Frame::request(id, "srv", "x"));
        sim.send(srv, Frame::reply(id, "req", "y"));
        if id % 1000 == 0 {
            sim.recv(req);
            sim.recv(srv);
        }
    }
    assert_eq!(sim.router.pending_requests(), 0);
    assert!(
        sim.router.requests.timeouts_len() <= 4_097,
        "{}",
        sim.router.requests.timeouts_len()
    );
}

#[test]
fn cancel_forgets_the_request() {
    let mut sim = Sim::new();
    let req = sim.connect("req");
    let srv = sim.connect("srv");
    sim.send(
        req,
        proto::Request {
            id: 1,
            to: "srv".into(),
            timeout_ms: 100,
            ..Default::default()
        },
    );
    assert_eq!(sim.recv(srv).len(), 1);
    sim.send(req, proto::Cancel { id: 1 });
    assert!(sim.recv(req).is_empty(), "nothing answers a cancel");
    assert_eq!(sim.router.pending_requests(), 0);
    sim.advance(Duration::from_millis(200));
    assert!(sim.recv(req).is_empty(), "no TIMEOUT");
    sim.send(srv, Frame::reply(1, "req", "late"));
    assert!(sim.recv(req).is_empty(), "the late reply is dropped");
    // An unknown id is ignored.
    sim.send(req, proto::Cancel { id: 99 });
    assert!(sim.recv(req).is_empty());
    // No TARGET_GONE either.
    sim.send(req, Frame::request(2, "srv", "x"));
    sim.recv(srv);
    sim.send(req, proto::Cancel { id: 2 });
    sim.router.handle(
        sim.now,
        Input::Disconnected {
            conn: srv,
            notice: None,
            reason: "gone".into(),
        },
    );
    sim.advance(Duration::from_secs(60));
    assert!(sim.recv(req).is_empty(), "no TARGET_GONE, no TIMEOUT");
    let counters = sim.router.status(sim.now, 0).counters;
    assert_eq!(counters["requests_cancelled"], 2);
    assert_eq!(counters["replies_dropped"], 1);
    assert_eq!(counters["requests_timed_out"], 0);
}

#[test]
fn a_cancelled_request_waiting_for_room_is_not_delivered() {
    let limits = Limits {
        queue_frames: 1,
        ..Limits::default()
    };
    let mut sim = Sim::with(limits, None);
    let req = sim.connect("req");
    let srv = sim.connect("srv");
    sim.send(req, Frame::direct("srv", "fills the queue"));
    sim.send(
        req,
        proto::Request {
            id: 3,
            to: "srv".into(),
            timeout_ms: 1_000,
            ..Default::default()
        },
    );
    let parked = |sim: &Sim| sim.router.status(sim.now, 0).counters["parked_now"];
    assert_eq!(parked(&sim), 1);
    sim.send(req, proto::Cancel { id: 3 });
    assert_eq!(parked(&sim), 0);
    assert_eq!(sim.router.pending_requests(), 0);
    assert_eq!(sim.recv(srv).len(), 1, "only the direct message");
    sim.router.handle(sim.now, Input::Drained { conn: srv });
    sim.advance(Duration::from_secs(2));
    assert!(sim.recv(srv).is_empty());
    assert!(sim.recv(req).is_empty());
}
