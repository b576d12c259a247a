//! Deterministic tests of the routing core: a simulated clock, no sockets.

use super::replica::Replica;
use super::*;
use crate::outbox::Taken;
use bytes::{Bytes, BytesMut};
use std::collections::HashMap;
use switchboard_wire::headers::MAX_HEADERS;
use switchboard_wire::{ACK_DELAY, ACK_EVERY, FEATURE_LISTEN};

struct Sim {
    router: Router,
    now: Instant,
    outboxes: HashMap<ConnId, Arc<Outbox>>,
    next: u64,
}

fn frame(kind: impl Into<Frame>) -> Frame {
    kind.into()
}

fn code_of(f: &Frame) -> Option<(u64, ErrorCode)> {
    match &f.kind {
        Some(Kind::Error(e)) => Some((e.id, ErrorCode::from_wire(e.code))),
        _ => None,
    }
}

fn config(limits: Limits, keepalive: Option<Duration>) -> RouterConfig {
    RouterConfig {
        identity: proto::HubIdentity {
            service: "test".into(),
            instance_id: "i1".into(),
            epoch: 1,
            ..Default::default()
        },
        limits,
        keepalive,
    }
}

impl Sim {
    fn new() -> Sim {
        Sim::with(Limits::default(), None)
    }

    fn with(limits: Limits, keepalive: Option<Duration>) -> Sim {
        let router = Router::new(config(limits, keepalive), Arc::new(HubStats::default()));
        Sim {
            router,
            now: Instant::now(),
            outboxes: HashMap::new(),
            next: 0,
        }
    }

    fn connect_raw(&mut self, id: &str) -> ConnId {
        self.connect_as(id, false)
    }

    /// Connects `id`, asking for reliable delivery or not; nothing read.
    fn connect_as(&mut self, id: &str, reliable: bool) -> ConnId {
        self.connect_info(proto::ClientInfo {
            client_id: id.into(),
            transport: "tcp".into(),
            reliable,
            ..Default::default()
        })
    }

    /// Connects a client described by `info`; nothing read.
    fn connect_info(&mut self, info: proto::ClientInfo) -> ConnId {
        self.next += 1;
        let conn = ConnId(self.next);
        let outbox = Outbox::new(conn);
        self.outboxes.insert(conn, outbox.clone());
        self.router
            .handle(self.now, Input::Connect { conn, info, outbox });
        conn
    }

    /// Connects and consumes the Welcome.
    fn connect(&mut self, id: &str) -> ConnId {
        let conn = self.connect_raw(id);
        let got = self.recv(conn);
        assert!(
            matches!(got.first().and_then(|f| f.kind.as_ref()), Some(Kind::Welcome(w)) if w.client_id == id),
            "{got:?}"
        );
        conn
    }

    fn send(&mut self, conn: ConnId, f: impl Into<Frame>) {
        self.router.handle(
            self.now,
            Input::Frames {
                conn,
                frames: vec![f.into()],
            },
        );
    }

    fn recv(&mut self, conn: ConnId) -> Vec<Frame> {
        let mut taken = Taken::default();
        self.outboxes[&conn].take(usize::MAX, &mut taken);
        taken.frames.drain(..).map(Out::into_frame).collect()
    }

    fn recv_one(&mut self, conn: ConnId) -> Frame {
        let mut got = self.recv(conn);
        assert_eq!(got.len(), 1, "expected one frame, got {got:?}");
        got.remove(0)
    }

    fn advance(&mut self, d: Duration) {
        self.now += d;
        self.router.handle(self.now, Input::Tick);
    }

    fn subscribe(&mut self, conn: ConnId, sub_id: u64, pattern: &str, group: &str) {
        self.send(
            conn,
            proto::Subscribe {
                id: 1000 + sub_id,
                sub_id,
                pattern: pattern.into(),
                queue_group: group.into(),
                ..Default::default()
            },
        );
        assert_eq!(self.recv_one(conn), Frame::ok(1000 + sub_id));
    }
}

fn deliveries(frames: &[Frame]) -> Vec<(u64, String, Bytes)> {
    frames
        .iter()
        .filter_map(|f| match &f.kind {
            Some(Kind::Deliver(d)) => Some((d.sub_id, d.topic.clone(), d.payload.clone())),
            _ => None,
        })
        .collect()
}

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
fn pubsub_wildcards_and_validation() {
    let mut sim = Sim::new();
    let p = sim.connect("pub");
    let s = sim.connect("sub");
    sim.subscribe(s, 1, "orders.*.created", "");
    sim.subscribe(s, 2, "orders.>", "");
    sim.subscribe(s, 3, "orders.eu.created", "");
    sim.send(p, Frame::publish("orders.eu.created", "1"));
    let mut got = deliveries(&sim.recv(s));
    got.sort();
    assert_eq!(got.iter().map(|d| d.0).collect::<Vec<_>>(), vec![1, 2, 3]);
    assert!(got.iter().all(|d| d.1 == "orders.eu.created" && d.2 == "1"));

    sim.send(p, Frame::publish("orders.us.shipped.late", "2"));
    assert_eq!(
        deliveries(&sim.recv(s))
            .iter()
            .map(|d| d.0)
            .collect::<Vec<_>>(),
        vec![2]
    );
    sim.send(p, Frame::publish("orders", "3"));
    assert!(
        sim.recv(s).is_empty(),
        "'>' needs at least one more segment"
    );

    // Deliver carries the publisher and reply-to.
    sim.send(
        p,
        proto::Publish {
            id: 4,
            topic: "orders.x.created".into(),
            reply_to: "inbox.pub".into(),
            payload: "4".into(),
            ..Default::default()
        },
    );
    assert_eq!(sim.recv_one(p), Frame::ok(4));
    for f in sim.recv(s) {
        match f.kind {
            Some(Kind::Deliver(d)) => {
                assert_eq!((d.from.as_str(), d.reply_to.as_str()), ("pub", "inbox.pub"));
            }
            other => panic!("{other:?}"),
        }
    }

    for bad in ["orders.>.x", "a..b", "or*ders", ""] {
        sim.send(
            s,
            proto::Subscribe {
                id: 50,
                sub_id: 50,
                pattern: bad.into(),
                queue_group: String::new(),
                ..Default::default()
            },
        );
        assert_eq!(
            code_of(&sim.recv_one(s)),
            Some((50, ErrorCode::InvalidArgument)),
            "{bad}"
        );
    }
    sim.send(
        p,
        proto::Publish {
            id: 51,
            topic: "orders.*".into(),
            ..Default::default()
        },
    );
    assert_eq!(
        code_of(&sim.recv_one(p)),
        Some((51, ErrorCode::InvalidArgument))
    );
    // Same sub id twice.
    sim.send(
        s,
        proto::Subscribe {
            id: 52,
            sub_id: 1,
            pattern: "x".into(),
            queue_group: String::new(),
            ..Default::default()
        },
    );
    assert_eq!(
        code_of(&sim.recv_one(s)),
        Some((52, ErrorCode::InvalidArgument))
    );

    sim.send(s, proto::Unsubscribe { id: 60, sub_id: 2 });
    assert_eq!(sim.recv_one(s), Frame::ok(60));
    sim.send(s, proto::Unsubscribe { id: 61, sub_id: 2 });
    assert_eq!(code_of(&sim.recv_one(s)), Some((61, ErrorCode::NotFound)));
    sim.send(p, Frame::publish("orders.us.shipped.late", "5"));
    assert!(sim.recv(s).is_empty());
    assert_eq!(sim.router.status(sim.now, 0).subscriptions, 2);
}

#[test]
fn queue_groups_share_round_robin() {
    let mut sim = Sim::new();
    let p = sim.connect("pub");
    let w: Vec<ConnId> = (0..3).map(|i| sim.connect(&format!("w{i}"))).collect();
    for (i, conn) in w.iter().enumerate() {
        sim.subscribe(*conn, i as u64 + 1, "jobs.>", "workers");
    }
    let plain = sim.connect("plain");
    sim.subscribe(plain, 9, "jobs.>", "");
    let other_group = sim.connect("other");
    sim.subscribe(other_group, 10, "jobs.>", "auditors");
    for i in 0..9 {
        sim.send(p, Frame::publish("jobs.run", format!("{i}")));
    }
    let counts: Vec<usize> = w.iter().map(|c| deliveries(&sim.recv(*c)).len()).collect();
    assert_eq!(counts, vec![3, 3, 3], "each message to exactly one member");
    assert_eq!(deliveries(&sim.recv(plain)).len(), 9);
    assert_eq!(
        deliveries(&sim.recv(other_group)).len(),
        9,
        "every group gets each message"
    );
    // A member leaves; the rest share.
    sim.router.handle(
        sim.now,
        Input::Disconnected {
            conn: w[0],
            notice: None,
            reason: "gone".into(),
        },
    );
    for i in 0..4 {
        sim.send(p, Frame::publish("jobs.run", format!("{i}")));
    }
    let counts: Vec<usize> = w[1..]
        .iter()
        .map(|c| deliveries(&sim.recv(*c)).len())
        .collect();
    assert_eq!(counts, vec![2, 2]);
}

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

#[test]
fn slow_subscriber_loses_only_its_own_oldest_deliveries() {
    let limits = Limits {
        queue_frames: 8,
        ..Limits::default()
    };
    let mut sim = Sim::with(limits, None);
    let p = sim.connect("pub");
    let slow = sim.connect("slow");
    let fast = sim.connect("fast");
    sim.subscribe(slow, 1, "t", "");
    sim.subscribe(fast, 1, "t", "");
    let mut fast_got = Vec::new();
    for i in 0..100u32 {
        sim.send(p, Frame::publish("t", i.to_be_bytes().to_vec()));
        fast_got.extend(deliveries(&sim.recv(fast)));
    }
    assert_eq!(fast_got.len(), 100, "the fast subscriber gets everything");
    let mut taken = Taken::default();
    sim.outboxes[&slow].take(usize::MAX, &mut taken);
    assert_eq!(taken.frames.len(), 8, "bounded");
    assert_eq!(taken.dropped, 92);
    let kept: Vec<u32> = taken
        .frames
        .drain(..)
        .map(|o| match o.into_frame().kind {
            Some(Kind::Deliver(d)) => u32::from_be_bytes(d.payload[..].try_into().unwrap()),
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(kept, (92..100).collect::<Vec<_>>(), "the newest are kept");
    assert_eq!(sim.router.status(sim.now, 0).dropped, 92);
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
fn hard_limit_disconnects_slow_consumer() {
    let limits = Limits {
        queue_hard_bytes: 2_000,
        ..Limits::default()
    };
    let mut sim = Sim::with(limits, None);
    let watcher = sim.connect("watcher");
    let other = sim.connect("other");
    let setter = sim.connect("setter");
    for (conn, id) in [(watcher, 1), (other, 2)] {
        sim.send(
            conn,
            proto::KvWatch {
                id,
                watch_id: 1,
                key: "k".into(),
                prefix: false,
            },
        );
    }
    sim.recv(watcher);
    for i in 0..40u64 {
        sim.send(
            setter,
            proto::KvSet {
                id: i + 1,
                key: "k".into(),
                value: vec![b'v'; 100].into(),
                expect_version: None,
            },
        );
        sim.recv(other);
        sim.recv(setter);
    }
    assert!(sim.outboxes[&watcher].cancelled().is_cancelled(), "killed");
    match sim.outboxes[&watcher].take_last_words().map(|f| f.kind) {
        Some(Some(Kind::Goodbye(g))) => assert_eq!(g.code, ErrorCode::SlowConsumer as i32),
        other => panic!("{other:?}"),
    }
    assert_eq!(sim.router.client_count(), 2);
    assert_eq!(
        sim.router.status(sim.now, 0).counters["slow_consumer_disconnects"],
        1
    );
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

impl Sim {
    /// Connects a client asking for reliable delivery; consumes the Welcome.
    fn connect_reliable(&mut self, id: &str) -> ConnId {
        let conn = self.connect_as(id, true);
        let got = self.recv(conn);
        assert!(
            matches!(
                got.first().and_then(|f| f.kind.as_ref()),
                Some(Kind::Welcome(_))
            ),
            "{got:?}"
        );
        conn
    }

    fn unacked_frames(&self) -> u64 {
        let s = self.router.status(self.now, 0);
        s.counters.get("unacked_frames").copied().unwrap_or(0)
    }
}

fn acks(frames: &[Frame]) -> Vec<u64> {
    frames
        .iter()
        .filter_map(|f| match &f.kind {
            Some(Kind::Ack(a)) => Some(a.up_to),
            _ => None,
        })
        .collect()
}

#[test]
fn answers_carry_the_acknowledgement_and_no_separate_ack_goes_out() {
    let mut sim = Sim::new();
    let a = sim.connect_reliable("a");
    sim.send(
        a,
        Frame::from(proto::Publish {
            id: 7,
            topic: "t".into(),
            ..Default::default()
        })
        .with_seq(1),
    );
    let got = sim.recv(a);
    assert_eq!(got.len(), 1, "only the answer: {got:?}");
    assert_eq!(got[0].kind, Frame::ok(7).kind);
    assert_eq!(
        (got[0].seq, got[0].acked),
        (1, 1),
        "numbered, and acknowledges seq 1"
    );
    sim.advance(ACK_DELAY * 2);
    assert!(
        sim.recv(a).is_empty(),
        "the answer carried it: no Ack later either"
    );
}

#[test]
fn an_unanswered_frame_is_acknowledged_after_the_delay() {
    let mut sim = Sim::new();
    let a = sim.connect_reliable("a");
    let b = sim.connect_reliable("b");
    // A request to b, then b's reply: the reply gets no answer of its own.
    sim.send(a, Frame::request(5, "b", "q").with_seq(1));
    let to_b = sim.recv(b);
    assert_eq!(to_b.len(), 1, "{to_b:?}");
    assert_eq!(to_b[0].acked, 0, "b sent nothing yet");
    assert!(
        sim.recv(a).is_empty(),
        "the reply will carry a's acknowledgement"
    );
    sim.send(b, Frame::reply(5, "a", "r").with_seq(1));
    let to_a = sim.recv(a);
    assert_eq!(to_a.len(), 1, "{to_a:?}");
    assert_eq!(to_a[0].acked, 1, "the reply acknowledges a's request");
    assert!(sim.recv(b).is_empty(), "nothing for b yet");
    assert_eq!(
        sim.router.next_deadline(),
        Some(sim.now + ACK_DELAY),
        "b's Ack is scheduled"
    );
    sim.advance(ACK_DELAY / 2);
    assert!(sim.recv(b).is_empty());
    sim.advance(ACK_DELAY / 2);
    assert_eq!(acks(&sim.recv(b)), [1]);
    sim.advance(ACK_DELAY * 3);
    assert!(sim.recv(b).is_empty(), "one Ack only");
}

#[test]
fn a_frame_sent_before_the_delay_carries_the_owed_acknowledgement() {
    let mut sim = Sim::new();
    let a = sim.connect_reliable("a");
    let b = sim.connect_reliable("b");
    sim.send(a, Frame::request(5, "b", "q").with_seq(1));
    sim.recv(b);
    sim.send(b, Frame::reply(5, "a", "r").with_seq(1));
    sim.recv(a);
    // Before b's Ack is due, another request reaches b: it carries it.
    sim.send(a, Frame::request(6, "b", "q2").with_seq(2));
    let to_b = sim.recv(b);
    assert_eq!(to_b.len(), 1, "{to_b:?}");
    assert_eq!(to_b[0].acked, 1);
    sim.advance(ACK_DELAY * 2);
    assert!(acks(&sim.recv(b)).is_empty(), "already carried");
}

#[test]
fn a_long_unanswered_batch_is_acknowledged_at_once() {
    let mut sim = Sim::new();
    let a = sim.connect_reliable("a");
    let frames: Vec<Frame> = (1..=ACK_EVERY)
        .map(|seq| Frame::reply(seq, "nobody", "r").with_seq(seq))
        .collect();
    sim.router
        .handle(sim.now, Input::Frames { conn: a, frames });
    assert_eq!(acks(&sim.recv(a)), [ACK_EVERY]);
}

#[test]
fn acknowledgements_carried_by_client_frames_free_the_retransmit_buffer() {
    let mut sim = Sim::new();
    let a = sim.connect_reliable("a");
    let sub = proto::Subscribe {
        id: 9,
        sub_id: 1,
        pattern: "t".into(),
        queue_group: String::new(),
        ..Default::default()
    };
    sim.send(a, Frame::from(sub).with_seq(1));
    let ok = sim.recv_one(a);
    assert_eq!((ok.seq, ok.acked), (1, 1));
    let p = sim.connect("p");
    for _ in 0..3 {
        sim.send(p, Frame::publish("t", "x"));
    }
    let got = sim.recv(a);
    assert_eq!(got.iter().map(|f| f.seq).collect::<Vec<_>>(), [2, 3, 4]);
    assert!(
        got.iter().all(|f| f.acked == 1),
        "every frame carries it: {got:?}"
    );
    assert_eq!(sim.unacked_frames(), 4, "the Ok and three deliveries");
    // Any frame from a may carry the acknowledgement, numbered or not.
    let mut ping = Frame::from(proto::Ping { nonce: 1 });
    ping.acked = 3;
    sim.send(a, ping);
    assert_eq!(sim.unacked_frames(), 1);
    let mut publish = Frame::publish("other", "y").with_seq(2);
    publish.acked = 4;
    sim.send(a, publish);
    assert_eq!(sim.unacked_frames(), 0);
}

// ---- headers ----

fn header(key: &str, value: &[u8]) -> proto::Header {
    proto::Header {
        key: key.into(),
        value: Bytes::copy_from_slice(value),
    }
}

/// Headers with a repeated key, an empty value and a binary one.
fn sample_headers() -> Vec<proto::Header> {
    vec![
        header("trace-id", b"t1"),
        header("bin", &[0, 255, 7]),
        header("trace-id", b""),
    ]
}

fn error_of(f: &Frame) -> (u64, ErrorCode, String) {
    match &f.kind {
        Some(Kind::Error(e)) => (e.id, ErrorCode::from_wire(e.code), e.message.clone()),
        other => panic!("expected an error, got {other:?}"),
    }
}

impl Sim {
    /// What is queued for `conn`, as queued (deliveries stay pre-encoded).
    fn take_raw(&mut self, conn: ConnId) -> Vec<Out> {
        let mut taken = Taken::default();
        self.outboxes[&conn].take(usize::MAX, &mut taken);
        std::mem::take(&mut taken.frames)
    }
}

#[test]
fn headers_pass_through_every_kind_unchanged() {
    let mut sim = Sim::new();
    let a = sim.connect("a");
    let b = sim.connect("b");
    let hs = sample_headers();
    sim.send(
        a,
        proto::Direct {
            id: 1,
            to: "b".into(),
            payload: "d".into(),
            headers: hs.clone(),
            ..Default::default()
        },
    );
    assert_eq!(sim.recv_one(a), Frame::ok(1));
    match sim.recv_one(b).kind {
        Some(Kind::Direct(d)) => assert_eq!(d.headers, hs),
        other => panic!("{other:?}"),
    }
    sim.send(
        a,
        proto::Request {
            id: 2,
            to: "b".into(),
            headers: hs.clone(),
            ..Default::default()
        },
    );
    match sim.recv_one(b).kind {
        Some(Kind::Request(r)) => assert_eq!(r.headers, hs),
        other => panic!("{other:?}"),
    }
    let back = vec![header("status", b"fine")];
    sim.send(
        b,
        proto::Reply {
            id: 2,
            to: "a".into(),
            headers: back.clone(),
            ..Default::default()
        },
    );
    match sim.recv_one(a).kind {
        Some(Kind::Reply(r)) => assert_eq!(r.headers, back),
        other => panic!("{other:?}"),
    }
    sim.send(
        a,
        proto::Broadcast {
            id: 3,
            headers: hs.clone(),
            ..Default::default()
        },
    );
    assert_eq!(sim.recv_one(a), Frame::ok(3));
    match sim.recv_one(b).kind {
        Some(Kind::Broadcast(m)) => assert_eq!(m.headers, hs),
        other => panic!("{other:?}"),
    }

    // Publish → Deliver, to a plain subscription and a queue group, with
    // and without reply-to and headers, in an order that would reuse a
    // cached head wrongly: prost's bytes exactly, every time.
    sim.subscribe(b, 1, "t.*", "");
    let c = sim.connect("c");
    sim.subscribe(c, 2, "t.>", "g");
    for (reply_to, headers) in [
        ("", vec![]),
        ("", hs.clone()),
        ("inbox", hs.clone()),
        ("", vec![]),
        ("", vec![header("other", b"1")]),
        ("", vec![]),
    ] {
        sim.send(
            a,
            proto::Publish {
                topic: "t.x".into(),
                payload: "p".into(),
                reply_to: reply_to.into(),
                headers: headers.clone(),
                ..Default::default()
            },
        );
        for (conn, sub_id) in [(b, 1), (c, 2)] {
            let outs = sim.take_raw(conn);
            assert_eq!(outs.len(), 1, "{outs:?}");
            assert!(matches!(outs[0], Out::Deliver { .. }), "pre-encoded");
            let want = Out::from(Frame::from(proto::Deliver {
                sub_id,
                topic: "t.x".into(),
                from: "a".into(),
                payload: "p".into(),
                reply_to: reply_to.into(),
                headers: headers.clone(),
            }));
            let (mut got, mut expected) = (BytesMut::new(), BytesMut::new());
            outs[0].encode(&mut got);
            want.encode(&mut expected);
            assert_eq!(got, expected, "{reply_to:?} {headers:?}");
        }
    }
}

#[test]
fn header_violations_are_refused_and_the_connection_continues() {
    let mut sim = Sim::new();
    let a = sim.connect("a");
    let b = sim.connect("b");
    let bad_key = vec![header("bad\nkey", b"v")];
    let bad = check_headers(&bad_key).unwrap_err();
    let many: Vec<proto::Header> = (0..=MAX_HEADERS)
        .map(|i| header(&format!("k{i}"), b""))
        .collect();
    let too_many = check_headers(&many).unwrap_err();
    sim.send(
        a,
        proto::Direct {
            id: 4,
            to: "b".into(),
            headers: bad_key.clone(),
            ..Default::default()
        },
    );
    assert_eq!(
        sim.recv_one(a),
        Frame::error(4, ErrorCode::InvalidArgument, bad.to_string())
    );
    // Fire-and-forget: answered with id 0, like an invalid topic.
    sim.send(
        a,
        proto::Publish {
            topic: "t".into(),
            headers: many.clone(),
            ..Default::default()
        },
    );
    assert_eq!(
        sim.recv_one(a),
        Frame::error(0, ErrorCode::LimitExceeded, too_many.to_string())
    );
    sim.send(
        a,
        proto::Request {
            id: 5,
            to: "b".into(),
            headers: bad_key.clone(),
            ..Default::default()
        },
    );
    assert_eq!(
        code_of(&sim.recv_one(a)),
        Some((5, ErrorCode::InvalidArgument))
    );
    assert_eq!(sim.router.pending_requests(), 0);
    sim.send(
        a,
        proto::Broadcast {
            id: 6,
            headers: many,
            ..Default::default()
        },
    );
    assert_eq!(
        code_of(&sim.recv_one(a)),
        Some((6, ErrorCode::LimitExceeded))
    );
    assert!(sim.recv(b).is_empty(), "nothing refused reached b");

    // A reply's id is the requester's: its replier hears with id 0, and
    // the request still waits for a good reply.
    sim.send(a, Frame::request(7, "b", "q"));
    sim.recv(b);
    sim.send(
        b,
        proto::Reply {
            id: 7,
            to: "a".into(),
            headers: bad_key,
            ..Default::default()
        },
    );
    let (id, code, message) = error_of(&sim.recv_one(b));
    assert_eq!((id, code), (0, ErrorCode::InvalidArgument));
    assert!(message.contains("request 7"), "{message}");
    assert!(sim.recv(a).is_empty());
    sim.send(b, Frame::reply(7, "a", "fine"));
    assert!(matches!(sim.recv_one(a).kind, Some(Kind::Reply(r)) if r.id == 7));
    sim.send(a, Frame::direct("b", "still connected"));
    assert_eq!(sim.recv(b).len(), 1);
}

// ---- cancel ----

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

// ---- listen ----

impl Sim {
    /// Connects a client with the "listen" feature; checks its Welcome
    /// lists the feature.
    fn connect_listening(&mut self, id: &str, reliable: bool) -> ConnId {
        let conn = self.connect_info(proto::ClientInfo {
            client_id: id.into(),
            transport: "tcp".into(),
            reliable,
            listen: true,
            ..Default::default()
        });
        match self.recv_one(conn).kind {
            Some(Kind::Welcome(w)) => {
                assert!(w.features.iter().any(|f| f == FEATURE_LISTEN), "{w:?}")
            }
            other => panic!("{other:?}"),
        }
        conn
    }
}

fn listen(id: u64, messages: bool, requests: bool) -> proto::Listen {
    proto::Listen {
        id,
        messages,
        requests,
    }
}

#[test]
fn listen_gates_direct_messages_requests_and_broadcasts() {
    let mut sim = Sim::new();
    let a = sim.connect("a");
    let l = sim.connect_listening("l", false);
    let plain = sim.connect("plain");
    sim.send(
        a,
        proto::Direct {
            id: 1,
            to: "l".into(),
            payload: "x".into(),
            ..Default::default()
        },
    );
    let (id, code, message) = error_of(&sim.recv_one(a));
    assert_eq!((id, code), (1, ErrorCode::NotListening));
    assert!(message.contains("'l'"), "names the target: {message}");
    sim.send(a, Frame::direct("l", "dropped"));
    assert!(sim.recv(a).is_empty(), "fire-and-forget: dropped quietly");
    sim.send(a, Frame::request(2, "l", "q"));
    assert_eq!(
        code_of(&sim.recv_one(a)),
        Some((2, ErrorCode::NotListening))
    );
    assert_eq!(sim.router.pending_requests(), 0, "nothing left pending");
    sim.send(
        a,
        proto::Broadcast {
            id: 3,
            payload: "all".into(),
            ..Default::default()
        },
    );
    assert_eq!(sim.recv_one(a), Frame::ok(3));
    assert_eq!(sim.recv(plain).len(), 1);
    assert!(sim.recv(l).is_empty(), "nothing reached l");

    // Messages on, requests still off.
    sim.send(l, listen(4, true, false));
    assert_eq!(sim.recv_one(l), Frame::ok(4));
    sim.send(
        a,
        proto::Direct {
            id: 5,
            to: "l".into(),
            ..Default::default()
        },
    );
    assert_eq!(sim.recv_one(a), Frame::ok(5));
    sim.send(
        a,
        proto::Broadcast {
            id: 6,
            ..Default::default()
        },
    );
    assert_eq!(sim.recv_one(a), Frame::ok(6));
    let kinds: Vec<&str> = sim.recv(l).iter().map(|f| f.kind_name()).collect();
    assert_eq!(kinds, ["direct", "broadcast"]);
    assert_eq!(sim.recv(plain).len(), 1);
    sim.send(a, Frame::request(7, "l", "q"));
    assert_eq!(
        code_of(&sim.recv_one(a)),
        Some((7, ErrorCode::NotListening))
    );

    // Requests on too; id 0 asks for no answer.
    sim.send(l, listen(0, true, true));
    assert!(sim.recv(l).is_empty());
    sim.send(a, Frame::request(8, "l", "q"));
    assert!(matches!(sim.recv_one(l).kind, Some(Kind::Request(r)) if r.id == 8));

    // Frames already queued stay when it stops listening.
    sim.send(a, Frame::direct("l", "queued"));
    sim.send(l, listen(9, false, false));
    let got = sim.recv(l);
    assert_eq!(got.len(), 2, "{got:?}");
    assert!(matches!(&got[0].kind, Some(Kind::Direct(d)) if d.payload == "queued"));
    assert_eq!(got[1], Frame::ok(9));

    // A client without the feature takes everything and cannot opt out.
    sim.send(plain, listen(10, false, false));
    assert_eq!(
        code_of(&sim.recv_one(plain)),
        Some((10, ErrorCode::Unsupported))
    );
    sim.send(
        a,
        proto::Direct {
            id: 11,
            to: "plain".into(),
            ..Default::default()
        },
    );
    assert_eq!(sim.recv_one(a), Frame::ok(11));
    let counters = sim.router.status(sim.now, 0).counters;
    assert_eq!(counters["not_listening"], 4);
    assert_eq!(counters["undeliverable"], 1);
}

#[test]
fn listen_flags_survive_resume_snapshot_and_restore() {
    let mut sim = Sim::new();
    let a = sim.connect("a");
    let l = sim.connect_listening("l", true);
    sim.send(l, Frame::from(listen(1, true, false)).with_seq(1));
    assert_eq!(sim.recv_one(l).kind, Frame::ok(1).kind);

    // The flags are replicated state: only a client with the feature has
    // them.
    let snap = sim.router.snapshot();
    let state = |id: &str| {
        snap.clients
            .iter()
            .find(|c| c.info.as_ref().is_some_and(|i| i.client_id == id))
            .cloned()
            .expect("in the snapshot")
    };
    assert_eq!(state("l").listen, Some(listen(0, true, false)));
    assert!(state("l").info.is_some_and(|i| i.listen));
    assert_eq!(state("a").listen, None);
    let mut restored = Router::restore(
        sim.now,
        &snap,
        config(Limits::default(), None),
        Arc::new(HubStats::default()),
    )
    .expect("restores");
    assert_eq!(restored.snapshot(), snap);
    let x = ConnId(100);
    let outbox = Outbox::new(x);
    restored.handle(
        sim.now,
        Input::Connect {
            conn: x,
            info: proto::ClientInfo {
                client_id: "x".into(),
                ..Default::default()
            },
            outbox: outbox.clone(),
        },
    );
    let direct = proto::Direct {
        id: 2,
        to: "l".into(),
        ..Default::default()
    };
    restored.handle(
        sim.now,
        Input::Frames {
            conn: x,
            frames: vec![direct.clone().into(), Frame::request(3, "l", "q")],
        },
    );
    let mut taken = Taken::default();
    outbox.take(usize::MAX, &mut taken);
    let got: Vec<Frame> = taken.frames.drain(..).map(Out::into_frame).collect();
    assert_eq!(got[1], Frame::ok(2), "{got:?}");
    assert_eq!(code_of(&got[2]), Some((3, ErrorCode::NotListening)));

    // A resume keeps them.
    sim.router.handle(
        sim.now,
        Input::Disconnected {
            conn: l,
            notice: None,
            reason: "cut".into(),
        },
    );
    let l2 = ConnId(50);
    let outbox = Outbox::new(l2);
    sim.outboxes.insert(l2, outbox.clone());
    sim.router.handle(
        sim.now,
        Input::Resume {
            conn: l2,
            info: proto::ClientInfo {
                client_id: "l".into(),
                reliable: true,
                listen: true,
                ..Default::default()
            },
            outbox,
            resume: proto::Resume {
                last_received: 1,
                epoch: 1,
            },
        },
    );
    match sim.recv_one(l2).kind {
        Some(Kind::Welcome(w)) => assert_eq!(w.features, ["reliable", "resumed", "listen"]),
        other => panic!("{other:?}"),
    }
    sim.send(a, direct);
    assert_eq!(sim.recv_one(a), Frame::ok(2));
    sim.send(a, Frame::request(3, "l", "q"));
    assert_eq!(
        code_of(&sim.recv_one(a)),
        Some((3, ErrorCode::NotListening))
    );
    let listens: Vec<_> = sim
        .router
        .snapshot()
        .clients
        .iter()
        .map(|c| c.listen)
        .collect();
    assert_eq!(listens, [None, Some(listen(0, true, false))]);
}

// ---- service requests ----

impl Sim {
    fn subscribe_service(&mut self, conn: ConnId, sub_id: u64, pattern: &str) {
        self.send(
            conn,
            proto::Subscribe {
                id: 1000 + sub_id,
                sub_id,
                pattern: pattern.into(),
                service: true,
                ..Default::default()
            },
        );
        assert_eq!(self.recv_one(conn), Frame::ok(1000 + sub_id));
    }
}

fn service_request(id: u64, service: &str) -> proto::Request {
    proto::Request {
        id,
        service: service.into(),
        payload: "q".into(),
        ..Default::default()
    }
}

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

/// Which of `conns` got a request, and its id.
fn who_got(sim: &mut Sim, conns: &[ConnId]) -> (ConnId, u64) {
    let mut got = None;
    for conn in conns {
        for f in sim.recv(*conn) {
            match f.kind {
                Some(Kind::Request(r)) => {
                    assert!(got.is_none(), "one responder only");
                    got = Some((*conn, r.id));
                }
                other => panic!("{other:?}"),
            }
        }
    }
    got.expect("a responder got it")
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
