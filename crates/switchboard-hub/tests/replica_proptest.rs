//! State-machine replication of the routing core, with a simulated clock and
//! no sockets: a primary router driven by random inputs logs its changes; a
//! replica started from a snapshot taken at a random point applies them and
//! ends with the primary's state.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use proptest::prelude::*;
use switchboard_hub::outbox::{Taken, ENTRY_COST};
use switchboard_hub::router::replica::Replica;
use switchboard_hub::router::{ChangeLogLimits, Input, Router, RouterConfig};
use switchboard_hub::stats::HubStats;
use switchboard_hub::{ConnId, Limits, Outbox};
use switchboard_wire::proto::{self, frame::Kind};
use switchboard_wire::Frame;

const IDS: [&str; 4] = ["alpha", "beta", "gamma", "delta"];
const PATTERNS: [&str; 5] = ["t.a", "t.*", "t.>", "u.b", "bad pattern"];
const TOPICS: [&str; 4] = ["t.a", "t.b", "u.b", "t.a.deep"];
const KEYS: [&str; 5] = ["k.a", "k.b", "k.c", "j.x", "j.y"];
const WATCH_KEYS: [&str; 3] = ["k.a", "k.", "j."];

fn limits() -> Limits {
    Limits {
        // Small queues and markers so slow-consumer disconnects, drops and
        // forgotten deletion markers all happen.
        queue_frames: 16,
        queue_bytes: 4 * 1024,
        queue_hard_bytes: 4 * 1024,
        kv_max_keys: 4,
        kv_max_tombstones: 2,
        max_subscriptions: 3,
        max_watches: 2,
        max_clients: 3,
        ..Limits::default()
    }
}

fn config() -> RouterConfig {
    config_with(2)
}

fn config_with(kv_max_tombstones: usize) -> RouterConfig {
    RouterConfig {
        identity: proto::HubIdentity {
            service: "repl".into(),
            instance_id: "p".into(),
            epoch: 4,
            ..Default::default()
        },
        limits: Limits {
            kv_max_tombstones,
            ..limits()
        },
        keepalive: Some(Duration::from_millis(300)),
    }
}

#[derive(Debug, Clone)]
enum Op {
    Connect(usize),
    Disconnect(usize),
    Send(usize, F),
    /// Two frames in one batch.
    Batch(usize, F, F),
    Drain(usize),
    Advance(u64),
    /// A reliable client sends its last sequenced frame again.
    Resend(usize),
    /// A client acknowledges hub-to-client frames up to this seq, with an
    /// `Ack` or (`true`) in another frame's `acked`.
    Ack(usize, u64, bool),
    /// A client reconnects and resumes from this seq.
    Resume(usize, u64),
}

/// Headers on a frame: none, valid ones, or a refused set.
#[derive(Debug, Clone, Copy)]
enum Headers {
    None,
    Valid,
    Invalid,
}

impl Headers {
    fn make(self) -> Vec<proto::Header> {
        let h = |key: &str| proto::Header {
            key: key.into(),
            value: Bytes::from_static(b"v"),
        };
        match self {
            Headers::None => Vec::new(),
            Headers::Valid => vec![h("trace"), h("trace")],
            Headers::Invalid => vec![h("")],
        }
    }
}

fn headers_strategy() -> impl Strategy<Value = Headers> {
    prop_oneof![
        2 => Just(Headers::None),
        2 => Just(Headers::Valid),
        1 => Just(Headers::Invalid),
    ]
}

#[derive(Debug, Clone)]
enum F {
    Sub(u64, usize, bool),
    Unsub(u64),
    Publish(usize, usize),
    Set(usize, Option<u64>, usize),
    Delete(usize, Option<u64>),
    Watch(u64, usize),
    Unwatch(u64),
    Presence(bool),
    Request(usize, u64, u32),
    Reply(usize, u64),
    Direct(usize, Headers),
    Broadcast,
    /// A service subscription (with a queue group: refused).
    Service(u64, usize, bool),
    /// A request to service `TOPICS[t]` (also naming a client: refused).
    ServiceRequest(usize, u64, u32, bool),
    Cancel(u64),
    Listen(bool, bool),
    PublishWith(usize, Headers),
    Ping,
    Goodbye,
}

fn frame_strategy() -> impl Strategy<Value = F> {
    prop_oneof![
        3 => (0..4u64, 0..PATTERNS.len(), any::<bool>()).prop_map(|(s, p, g)| F::Sub(s, p, g)),
        1 => (0..4u64).prop_map(F::Unsub),
        3 => (0..TOPICS.len(), 0..2000usize).prop_map(|(t, n)| F::Publish(t, n)),
        4 => (0..KEYS.len(), proptest::option::of(0..4u64), 0..3000usize)
            .prop_map(|(k, e, n)| F::Set(k, e, n)),
        3 => (0..KEYS.len(), proptest::option::of(0..4u64)).prop_map(|(k, e)| F::Delete(k, e)),
        2 => (0..3u64, 0..WATCH_KEYS.len()).prop_map(|(w, k)| F::Watch(w, k)),
        1 => (0..3u64).prop_map(F::Unwatch),
        1 => any::<bool>().prop_map(F::Presence),
        2 => (0..IDS.len(), 0..4u64, 0..400u32).prop_map(|(t, id, ms)| F::Request(t, id, ms)),
        2 => (0..IDS.len(), 0..4u64).prop_map(|(t, id)| F::Reply(t, id)),
        1 => (0..IDS.len(), headers_strategy()).prop_map(|(t, h)| F::Direct(t, h)),
        1 => Just(F::Broadcast),
        2 => (0..4u64, 0..PATTERNS.len(), proptest::bool::weighted(0.1))
            .prop_map(|(s, p, g)| F::Service(s, p, g)),
        2 => (0..TOPICS.len(), 0..4u64, 0..400u32, proptest::bool::weighted(0.1))
            .prop_map(|(t, id, ms, to)| F::ServiceRequest(t, id, ms, to)),
        1 => (0..4u64).prop_map(F::Cancel),
        1 => (any::<bool>(), any::<bool>()).prop_map(|(m, r)| F::Listen(m, r)),
        1 => (0..TOPICS.len(), headers_strategy()).prop_map(|(t, h)| F::PublishWith(t, h)),
        1 => Just(F::Ping),
        1 => Just(F::Goodbye),
    ]
}

fn op_strategy() -> impl Strategy<Value = Op> {
    let who = 0..IDS.len();
    prop_oneof![
        3 => who.clone().prop_map(Op::Connect),
        1 => who.clone().prop_map(Op::Disconnect),
        12 => (who.clone(), frame_strategy()).prop_map(|(c, f)| Op::Send(c, f)),
        2 => (who.clone(), frame_strategy(), frame_strategy()).prop_map(|(c, a, b)| Op::Batch(c, a, b)),
        2 => who.clone().prop_map(Op::Drain),
        2 => (0..500u64).prop_map(Op::Advance),
        1 => who.clone().prop_map(Op::Resend),
        2 => (who.clone(), 0..40u64, any::<bool>()).prop_map(|(c, n, carried)| Op::Ack(c, n, carried)),
        1 => (who, 0..40u64).prop_map(|(c, n)| Op::Resume(c, n)),
    ]
}

fn to_frame(f: &F) -> Frame {
    match f {
        F::Sub(sub_id, p, g) => proto::Subscribe {
            id: 1,
            sub_id: *sub_id,
            pattern: PATTERNS[*p].into(),
            queue_group: if *g { "workers".into() } else { String::new() },
            ..Default::default()
        }
        .into(),
        F::Unsub(sub_id) => proto::Unsubscribe {
            id: 2,
            sub_id: *sub_id,
        }
        .into(),
        F::Publish(t, n) => Frame::publish(TOPICS[*t], vec![7u8; *n]),
        F::Set(k, expect, n) => proto::KvSet {
            id: 3,
            key: KEYS[*k].into(),
            value: Bytes::from(vec![1u8; *n]),
            expect_version: *expect,
        }
        .into(),
        F::Delete(k, expect) => proto::KvDelete {
            id: 4,
            key: KEYS[*k].into(),
            expect_version: *expect,
        }
        .into(),
        F::Watch(w, k) => proto::KvWatch {
            id: 5,
            watch_id: *w,
            key: WATCH_KEYS[*k].into(),
            prefix: WATCH_KEYS[*k].ends_with('.'),
        }
        .into(),
        F::Unwatch(w) => proto::KvUnwatch {
            id: 6,
            watch_id: *w,
        }
        .into(),
        F::Presence(stop) => proto::PresenceWatch { id: 7, stop: *stop }.into(),
        F::Request(t, id, ms) => proto::Request {
            id: *id,
            to: IDS[*t].into(),
            timeout_ms: *ms,
            payload: Bytes::from_static(b"q"),
            ..Default::default()
        }
        .into(),
        F::Reply(t, id) => proto::Reply {
            id: *id,
            to: IDS[*t].into(),
            payload: Bytes::from_static(b"a"),
            ..Default::default()
        }
        .into(),
        F::Direct(t, h) => proto::Direct {
            id: 8,
            to: IDS[*t].into(),
            payload: Bytes::from_static(b"d"),
            headers: h.make(),
            ..Default::default()
        }
        .into(),
        F::Service(sub_id, p, g) => proto::Subscribe {
            id: 10,
            sub_id: *sub_id,
            pattern: PATTERNS[*p].into(),
            queue_group: if *g { "workers".into() } else { String::new() },
            service: true,
        }
        .into(),
        F::ServiceRequest(t, id, ms, to) => proto::Request {
            id: *id,
            to: if *to { IDS[0].into() } else { String::new() },
            service: TOPICS[*t].into(),
            timeout_ms: *ms,
            payload: Bytes::from_static(b"s"),
            ..Default::default()
        }
        .into(),
        F::Cancel(id) => proto::Cancel { id: *id }.into(),
        F::Listen(messages, requests) => proto::Listen {
            id: 11,
            messages: *messages,
            requests: *requests,
        }
        .into(),
        F::PublishWith(t, h) => proto::Publish {
            topic: TOPICS[*t].into(),
            payload: Bytes::from_static(b"p"),
            headers: h.make(),
            ..Default::default()
        }
        .into(),
        F::Broadcast => proto::Broadcast {
            id: 9,
            payload: Bytes::from_static(b"b"),
            ..Default::default()
        }
        .into(),
        F::Ping => proto::Ping { nonce: 1 }.into(),
        F::Goodbye => proto::Goodbye {
            code: 0,
            message: "bye".into(),
        }
        .into(),
    }
}

/// The primary: a router with real (undrained unless told) outboxes.
struct Primary {
    router: Router,
    now: Instant,
    next_conn: u64,
    conns: HashMap<usize, (ConnId, Arc<Outbox>)>,
    changes: Vec<proto::Change>,
    /// Number connections in a scrambled order instead of 1, 2, 3...
    scramble: bool,
    /// Client-to-hub seq counters and last sequenced frame of the
    /// reliable clients (even indexes).
    seqs: HashMap<usize, (u64, Option<Frame>)>,
    /// No client asks for reliable delivery.
    plain: bool,
}

/// Whether client `i` asks for reliable delivery.
fn reliable(i: usize) -> bool {
    i % 2 == 0
}

/// Whether client `i` announces the "listen" feature (one reliable client,
/// one not).
fn listens(i: usize) -> bool {
    i == 1 || i == 2
}

fn logged(f: &Frame) -> bool {
    !matches!(
        f.kind,
        Some(Kind::Ping(_)) | Some(Kind::Goodbye(_)) | Some(Kind::Ack(_)) | None
    )
}

impl Primary {
    fn new() -> Primary {
        Primary::with(config())
    }

    fn with(config: RouterConfig) -> Primary {
        let mut router = Router::new(config, Arc::new(HubStats::default()));
        router.enable_change_log(ChangeLogLimits::default());
        Primary {
            router,
            now: Instant::now(),
            next_conn: 0,
            conns: HashMap::new(),
            changes: Vec::new(),
            scramble: false,
            seqs: HashMap::new(),
            plain: false,
        }
    }

    fn collect(&mut self) {
        self.router
            .take_changes(&mut self.changes)
            .expect("the default limits hold a whole test run");
    }

    fn step(&mut self, op: &Op) {
        self.step_only(op);
        self.collect();
    }

    /// [`Primary::step`] without taking the changes.
    fn step_only(&mut self, op: &Op) {
        match op {
            Op::Connect(i) | Op::Resume(i, _) => {
                self.next_conn += 1;
                let conn = if self.scramble {
                    // A bijection on the low 62 bits: distinct, unordered.
                    ConnId(self.next_conn.wrapping_mul(0x9E37_79B9_7F4A_7C15) & ((1 << 62) - 1))
                } else {
                    ConnId(self.next_conn)
                };
                let outbox = Outbox::new(conn);
                self.conns.insert(*i, (conn, outbox.clone()));
                let info = proto::ClientInfo {
                    client_id: IDS[*i].into(),
                    transport: "tcp".into(),
                    reliable: reliable(*i) && !self.plain,
                    listen: listens(*i),
                    ..Default::default()
                };
                let input = match op {
                    Op::Resume(_, n) => Input::Resume {
                        conn,
                        info,
                        outbox,
                        resume: proto::Resume {
                            last_received: *n,
                            epoch: 4,
                        },
                    },
                    _ => Input::Connect { conn, info, outbox },
                };
                self.router.handle(self.now, input);
            }
            Op::Resend(i) => {
                if let Some(f) = self.seqs.get(i).and_then(|(_, f)| f.clone()) {
                    self.send_raw(*i, vec![f]);
                }
            }
            Op::Ack(i, n, false) => self.send_raw(*i, vec![proto::Ack { up_to: *n }.into()]),
            Op::Ack(i, n, true) => {
                let mut ping = Frame::from(proto::Ping { nonce: 0 });
                ping.acked = *n;
                self.send_raw(*i, vec![ping]);
            }
            Op::Disconnect(i) => {
                if let Some((conn, _)) = self.conns.remove(i) {
                    self.router.handle(
                        self.now,
                        Input::Disconnected {
                            conn,
                            notice: None,
                            reason: "test".into(),
                        },
                    );
                }
            }
            Op::Send(i, f) => self.send(*i, vec![to_frame(f)]),
            Op::Batch(i, a, b) => self.send(*i, vec![to_frame(a), to_frame(b)]),
            Op::Drain(i) => {
                if let Some((conn, outbox)) = self.conns.get(i) {
                    let mut taken = Taken::default();
                    outbox.take(usize::MAX, &mut taken);
                    if taken.want_drained {
                        let conn = *conn;
                        self.router.handle(self.now, Input::Drained { conn });
                    }
                }
            }
            Op::Advance(ms) => {
                self.now += Duration::from_millis(*ms);
                self.router.handle(self.now, Input::Tick);
            }
        }
    }

    fn send(&mut self, i: usize, mut frames: Vec<Frame>) {
        if reliable(i) && !self.plain {
            let (n, last) = self.seqs.entry(i).or_default();
            for f in &mut frames {
                if logged(f) {
                    *n += 1;
                    f.seq = *n;
                    *last = Some(f.clone());
                }
            }
        }
        self.send_raw(i, frames);
    }

    fn send_raw(&mut self, i: usize, frames: Vec<Frame>) {
        if let Some((conn, _)) = self.conns.get(&i) {
            let conn = *conn;
            self.router.handle(self.now, Input::Frames { conn, frames });
        }
    }
}

fn stats() -> Arc<HubStats> {
    Arc::new(HubStats::default())
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: std::env::var("PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(96),
        ..ProptestConfig::default()
    })]

    #[test]
    fn replica_from_any_snapshot_point_ends_equal(
        ops in proptest::collection::vec(op_strategy(), 1..160),
        cut in 0.0f64..1.0,
        replica_offset_ms in 0..10_000u64,
        start_clients in prop_oneof![1 => Just(0usize), 4 => Just(3usize)],
    ) {
        // One deletion marker at most: forgotten markers raise the version
        // floor often.
        let config = || config_with(1);
        let mut primary = Primary::with(config());
        // Most runs start with clients present (three of four ids fit).
        for i in 0..start_clients {
            primary.step(&Op::Connect(i));
        }
        let cut = ((ops.len() as f64) * cut) as usize;
        let mut snapshot = None;
        for (n, op) in ops.iter().enumerate() {
            if n == cut {
                snapshot = Some(primary.router.snapshot());
            }
            primary.step(op);
        }
        let snapshot = snapshot.unwrap_or_else(|| primary.router.snapshot());
        let want = primary.router.snapshot();
        prop_assert_eq!(want.repl_seq, primary.changes.len() as u64);

        // The replica's clock is unrelated to the primary's.
        let mut now = Instant::now() + Duration::from_millis(replica_offset_ms);
        let mut replica = Replica::new(now, &snapshot, config(), stats())
            .expect("a snapshot of a router with the same limits restores");
        prop_assert_eq!(&replica.snapshot(), &snapshot, "restore(snapshot) has an equal snapshot");
        let mut applied = 0u64;
        for change in &primary.changes {
            now += Duration::from_millis(1);
            if replica.apply(now, change.clone()).expect("changes apply in order") {
                applied += 1;
            }
        }
        prop_assert_eq!(applied, want.repl_seq - snapshot.repl_seq);
        prop_assert_eq!(replica.repl_seq(), want.repl_seq);
        prop_assert_eq!(&replica.snapshot(), &want);

        // And the final state restores to itself as well.
        let again = Router::restore(now, &want, config(), stats()).expect("restores");
        prop_assert_eq!(again.snapshot(), want);
    }
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: std::env::var("PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(64),
        ..ProptestConfig::default()
    })]

    /// The change log is a function of the inputs alone: connection ids
    /// (which differ between hubs) do not change it.
    #[test]
    fn change_log_does_not_depend_on_connection_ids(
        ops in proptest::collection::vec(op_strategy(), 1..160),
    ) {
        let run = |scramble: bool| {
            let mut p = Primary::with(config_with(1));
            p.scramble = scramble;
            for i in 0..3 {
                p.step(&Op::Connect(i));
            }
            for op in &ops {
                p.step(op);
            }
            (p.changes, p.router.snapshot())
        };
        let (log_a, snap_a) = run(false);
        let (log_b, snap_b) = run(true);
        prop_assert_eq!(log_a, log_b);
        prop_assert_eq!(snap_a, snap_b);
    }
}

/// Answer frames for `conn` in `outbox`.
fn frames_of(outbox: &Outbox) -> Vec<Frame> {
    let mut taken = Taken::default();
    outbox.take(usize::MAX, &mut taken);
    taken.frames.into_iter().map(|o| o.into_frame()).collect()
}

fn kv_answer(frames: &[Frame], id: u64) -> Option<(u64, bool)> {
    frames.iter().find_map(|f| match &f.kind {
        Some(Kind::KvValue(v)) if v.id == id => Some((v.version, v.found)),
        _ => None,
    })
}

#[test]
fn key_versions_never_repeat_after_restore() {
    let mut p = Primary::new();
    p.step(&Op::Connect(0));
    // k.a reaches version 3 and is deleted; two more deletions push its
    // marker out (at most 2 markers are kept), which raises the floor.
    for f in [
        F::Set(0, None, 1),
        F::Set(0, None, 1),
        F::Delete(0, None),
        F::Set(1, None, 1),
        F::Delete(1, None),
        F::Set(2, None, 1),
        F::Delete(2, None),
    ] {
        p.step(&Op::Send(0, f));
    }
    let snap = p.router.snapshot();
    assert!(
        !snap.kv.iter().any(|e| e.key == "k.a"),
        "k.a's marker was forgotten: {:?}",
        snap.kv
    );
    assert_eq!(
        snap.config.get("kv_version_floor").map(String::as_str),
        Some("3")
    );

    let now = p.now;
    let mut restored = Router::restore(now, &snap, config(), stats()).expect("restores");
    assert_eq!(restored.snapshot(), snap);
    // A client connects to the restored router and sets the forgotten key,
    // and a key whose marker is kept.
    let conn = ConnId(1);
    let outbox = Outbox::new(conn);
    let info = proto::ClientInfo {
        client_id: "alpha".into(),
        ..Default::default()
    };
    restored.handle(
        now,
        Input::Connect {
            conn,
            info,
            outbox: outbox.clone(),
        },
    );
    let set = |id: u64, key: &str| -> Frame {
        proto::KvSet {
            id,
            key: key.into(),
            value: Bytes::from_static(b"v"),
            expect_version: None,
        }
        .into()
    };
    restored.handle(
        now,
        Input::Frames {
            conn,
            frames: vec![set(10, "k.a"), set(11, "k.c")],
        },
    );
    let got = frames_of(&outbox);
    let (va, found) = kv_answer(&got, 10).expect("an answer to the first set");
    assert!(found);
    assert!(va > 3, "k.a restarts above every version it had: {va}");
    let (vc, _) = kv_answer(&got, 11).expect("an answer to the second set");
    let before = snap.kv.iter().find(|e| e.key == "k.c").map(|e| e.version);
    assert_eq!(Some(vc - 1), before, "k.c continues from its kept marker");
}

#[test]
fn change_log_overflow_is_reported_and_numbering_goes_on() {
    let mut router = Router::new(config(), stats());
    router.enable_change_log(ChangeLogLimits {
        max_changes: 2,
        max_bytes: 1 << 20,
    });
    let mut now = Instant::now();
    for (n, id) in IDS.iter().take(3).enumerate() {
        let conn = ConnId(n as u64 + 1);
        let info = proto::ClientInfo {
            client_id: (*id).into(),
            ..Default::default()
        };
        let outbox = Outbox::new(conn);
        router.handle(now, Input::Connect { conn, info, outbox });
        now += Duration::from_millis(1);
    }
    let mut out = Vec::new();
    let lost = router
        .take_changes(&mut out)
        .expect_err("three changes, room for two");
    assert_eq!(lost.lost, 3);
    assert!(out.is_empty());
    assert_eq!(router.repl_seq(), 3);
    router.handle(
        now,
        Input::Disconnected {
            conn: ConnId(1),
            notice: None,
            reason: "test".into(),
        },
    );
    router.take_changes(&mut out).expect("room again");
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].repl_seq, 4);
    assert_eq!(
        out[0].op,
        Some(proto::change::Op::ClientLeft("alpha".into()))
    );
}

#[test]
fn replica_refuses_gaps_and_stops() {
    let mut p = Primary::new();
    p.step(&Op::Connect(0));
    p.step(&Op::Send(0, F::Set(0, None, 3)));
    p.step(&Op::Send(0, F::Sub(1, 0, false)));
    let snap0 = Router::new(config(), stats()).snapshot();
    let mut replica = Replica::new(p.now, &snap0, config(), stats()).expect("restores");
    assert!(replica.apply(p.now, p.changes[0].clone()).expect("applies"));
    // An old change again is already held.
    assert!(!replica.apply(p.now, p.changes[0].clone()).expect("held"));
    let err = replica
        .apply(p.now, p.changes[2].clone())
        .expect_err("change 2 is missing");
    assert_eq!(
        err,
        switchboard_hub::router::ReplicaError::Gap {
            expected: 2,
            got: 3
        }
    );
    assert!(err.to_string().contains("fresh snapshot"), "{err}");
    assert_eq!(
        replica.apply(p.now, p.changes[1].clone()),
        Err(switchboard_hub::router::ReplicaError::Stopped)
    );
}

#[test]
fn replica_refuses_unknown_clients_and_other_limits() {
    use switchboard_hub::router::ReplicaError;
    let snap = Router::new(config(), stats()).snapshot();
    let mut other = config();
    other.limits.max_watches += 1;
    match Replica::new(Instant::now(), &snap, other, stats()) {
        Err(ReplicaError::ConfigMismatch { key, .. }) => assert_eq!(key, "max_watches"),
        other => panic!("expected a limit mismatch, got {other:?}"),
    }
    let mut replica = Replica::new(Instant::now(), &snap, config(), stats()).expect("restores");
    let change = proto::Change {
        repl_seq: 1,
        op: Some(proto::change::Op::ClientFrame(Box::new(
            proto::ClientFrame {
                client_id: "nobody".into(),
                frame: Some(Box::new(Frame::publish("t.a", b"x".to_vec()))),
            },
        ))),
    };
    assert_eq!(
        replica.apply(Instant::now(), change),
        Err(ReplicaError::UnknownClient("nobody".into()))
    );

    // Unacknowledged frames of a client that is not reliable, or out of
    // order, are refused.
    let mut p = Primary::new();
    p.step(&Op::Connect(1));
    let mut snap = p.router.snapshot();
    snap.clients[0].unacked = vec![Frame {
        seq: 1,
        ..Frame::ok(1)
    }];
    match Router::restore(p.now, &snap, config(), stats()) {
        Err(ReplicaError::Invalid(_)) => {}
        other => panic!("expected invalid, got {other:?}"),
    }
    let mut p = Primary::new();
    p.step(&Op::Connect(0));
    let mut snap = p.router.snapshot();
    snap.clients[0].next_send = 3;
    snap.clients[0].unacked = vec![
        Frame {
            seq: 2,
            ..Frame::ok(1)
        },
        Frame {
            seq: 1,
            ..Frame::ok(2)
        },
    ];
    match Router::restore(p.now, &snap, config(), stats()) {
        Err(ReplicaError::Invalid(_)) => {}
        other => panic!("expected invalid, got {other:?}"),
    }
}

#[test]
fn ghosts_keep_subscriptions_and_a_reconnect_takes_the_id_over() {
    let mut p = Primary::new();
    p.step(&Op::Connect(0));
    p.step(&Op::Connect(1));
    p.step(&Op::Send(0, F::Sub(1, 1, false)));
    p.step(&Op::Send(1, F::Sub(2, 1, true)));
    p.step(&Op::Send(1, F::Watch(0, 1)));
    p.step(&Op::Send(0, F::Presence(false)));
    let snap = p.router.snapshot();
    let mut restored = Router::restore(p.now, &snap, config(), stats()).expect("restores");
    assert_eq!(restored.client_count(), 2);
    // A real client joins and publishes: the ghosts' subscriptions are
    // there (the publish is accepted and answered), nothing is delivered to
    // a socket, and the ghost "alpha" watching presence costs no memory.
    let conn = ConnId(1);
    let outbox = Outbox::new(conn);
    let info = proto::ClientInfo {
        client_id: "gamma".into(),
        ..Default::default()
    };
    restored.handle(
        p.now,
        Input::Connect {
            conn,
            info,
            outbox: outbox.clone(),
        },
    );
    let mut publish = Frame::publish("t.b", b"x".to_vec());
    if let Some(Kind::Publish(pb)) = &mut publish.kind {
        pb.id = 77;
    }
    restored.handle(
        p.now,
        Input::Frames {
            conn,
            frames: vec![publish],
        },
    );
    let got = frames_of(&outbox);
    assert!(got.contains(&Frame::ok(77)), "{got:?}");
    // "alpha" reconnects: the ghost is taken over like any old connection.
    let conn2 = ConnId(2);
    let outbox2 = Outbox::new(conn2);
    let info = proto::ClientInfo {
        client_id: "alpha".into(),
        ..Default::default()
    };
    restored.handle(
        p.now,
        Input::Connect {
            conn: conn2,
            info,
            outbox: outbox2.clone(),
        },
    );
    let got = frames_of(&outbox2);
    assert!(
        matches!(got.first().and_then(|f| f.kind.as_ref()), Some(Kind::Welcome(w)) if w.epoch == 4),
        "{got:?}"
    );
    assert_eq!(restored.client_count(), 3);
    let status = restored.status(p.now, 0);
    assert_eq!(status.counters.get("takeovers"), Some(&1));
}

#[test]
fn restored_markers_are_forgotten_in_deletion_order() {
    let mut p = Primary::new();
    p.step(&Op::Connect(0));
    // Markers made in the order k.b, k.a (not key order).
    for f in [
        F::Set(0, None, 1),
        F::Set(1, None, 1),
        F::Set(1, None, 1),
        F::Delete(1, None),
        F::Delete(0, None),
    ] {
        p.step(&Op::Send(0, f));
    }
    let snap = p.router.snapshot();
    let mut replica = Replica::new(p.now, &snap, config(), stats()).expect("restores");
    let from = p.changes.len();
    // A third marker pushes out the oldest one, k.b, on both.
    p.step(&Op::Send(0, F::Set(2, None, 1)));
    p.step(&Op::Send(0, F::Delete(2, None)));
    for change in &p.changes[from..] {
        assert!(replica.apply(p.now, change.clone()).expect("applies"));
    }
    let want = p.router.snapshot();
    let markers: Vec<&str> = want
        .kv
        .iter()
        .filter(|e| e.deleted)
        .map(|e| e.key.as_str())
        .collect();
    assert_eq!(markers, ["k.a", "k.c"]);
    assert_eq!(replica.snapshot(), want);
}

#[test]
fn a_claimed_ghost_keeps_its_subscriptions_and_gets_deliveries() {
    let mut p = Primary::new();
    p.step(&Op::Connect(0));
    p.step(&Op::Connect(1));
    p.step(&Op::Send(0, F::Sub(1, 1, false)));
    p.step(&Op::Send(0, F::Sub(2, 0, true)));
    p.step(&Op::Send(0, F::Watch(0, 1)));
    let snap = p.router.snapshot();
    let now = p.now;
    let mut r = Router::restore(now, &snap, config(), stats()).expect("restores");
    assert_eq!(r.ghost_conn("gamma"), None, "not held at all");
    let ghost = r.ghost_conn("alpha").expect("alpha is a ghost");
    let outbox = Outbox::new(ghost);
    assert_eq!(r.claim(now, "alpha", outbox.clone()), Some(ghost));
    assert_eq!(r.ghost_conn("alpha"), None, "claimed once only");
    assert_eq!(r.claim(now, "alpha", Outbox::new(ghost)), None);
    assert_eq!(r.snapshot(), snap, "claiming changes no replicated state");
    let got = frames_of(&outbox);
    assert!(
        matches!(got.first().and_then(|f| f.kind.as_ref()), Some(Kind::Welcome(w)) if w.client_id == "alpha"),
        "{got:?}"
    );
    // "beta" (still a ghost) publishes: alpha's plain subscription (t.*)
    // and its queue group (t.a) both deliver to the new outbox; a key
    // change reaches its watch.
    let beta = r.ghost_conn("beta").expect("beta is a ghost");
    let set: Frame = proto::KvSet {
        id: 1,
        key: "k.b".into(),
        value: Bytes::from_static(b"v"),
        expect_version: None,
    }
    .into();
    r.handle(
        now,
        Input::Frames {
            conn: beta,
            frames: vec![Frame::publish("t.a", b"x".to_vec()), set],
        },
    );
    let got = frames_of(&outbox);
    let subs: Vec<u64> = got
        .iter()
        .filter_map(|f| match &f.kind {
            Some(Kind::Deliver(d)) => Some(d.sub_id),
            _ => None,
        })
        .collect();
    assert_eq!(subs.len(), 2, "{got:?}");
    assert!(subs.contains(&1) && subs.contains(&2), "{subs:?}");
    assert!(
        got.iter().any(
            |f| matches!(&f.kind, Some(Kind::KvUpdate(u)) if u.key == "k.b" && u.watch_id == 0)
        ),
        "{got:?}"
    );
    // A second connection takes a claimed id over the usual way.
    let conn = ConnId(5);
    let second = Outbox::new(conn);
    let info = proto::ClientInfo {
        client_id: "alpha".into(),
        ..Default::default()
    };
    assert_eq!(r.claim(now, "beta", Outbox::new(beta)), Some(beta));
    r.handle(
        now,
        Input::Connect {
            conn,
            info,
            outbox: second,
        },
    );
    assert_eq!(r.ghost_conn("alpha"), None);
    assert!(!outbox.is_open(), "the claimed connection was taken over");
}

#[test]
fn restore_refuses_key_value_state_over_the_limits() {
    use switchboard_hub::router::ReplicaError;
    let mut snap = Router::new(config(), stats()).snapshot();
    snap.kv = (0..5)
        .map(|i| proto::KvEntry {
            key: format!("k{i}"),
            value: Bytes::from_static(b"v"),
            version: 1,
            deleted: false,
        })
        .collect();
    match Router::restore(Instant::now(), &snap, config(), stats()) {
        Err(ReplicaError::Invalid(why)) => assert!(why.contains("5 keys"), "{why}"),
        other => panic!("expected too many keys, got {other:?}"),
    }
    snap.kv.truncate(1);
    snap.kv[0].version = 0;
    assert!(matches!(
        Router::restore(Instant::now(), &snap, config(), stats()),
        Err(ReplicaError::Invalid(_))
    ));
    snap.kv[0].version = 2;
    snap.kv[0].key = String::new();
    assert!(matches!(
        Router::restore(Instant::now(), &snap, config(), stats()),
        Err(ReplicaError::Invalid(_))
    ));
    snap.kv[0].key = "ok".into();
    let r = Router::restore(Instant::now(), &snap, config(), stats()).expect("restores");
    assert_eq!(r.snapshot().kv, snap.kv);
}

#[test]
fn simultaneous_slow_consumer_disconnects_are_logged_in_client_id_order() {
    let run = |scramble: bool, watchers: [usize; 2]| {
        let mut p = Primary::new();
        p.scramble = scramble;
        p.plain = true;
        for i in watchers {
            p.step(&Op::Connect(i));
            p.step(&Op::Send(i, F::Presence(false)));
            p.step(&Op::Send(i, F::Watch(0, 1)));
        }
        p.step(&Op::Connect(2));
        for i in watchers {
            p.step(&Op::Drain(i));
        }
        // Each watcher now gets an update just under the 4 KiB hard limit
        // (which counts the frame's queue entry too); the next presence
        // event takes both over it at once.
        p.step(&Op::Send(2, F::Set(0, None, 4060 - ENTRY_COST)));
        let from = p.changes.len();
        p.step(&Op::Disconnect(2));
        let left: Vec<String> = p.changes[from..]
            .iter()
            .filter_map(|c| match &c.op {
                Some(proto::change::Op::ClientLeft(id)) => Some(id.clone()),
                _ => None,
            })
            .collect();
        left
    };
    let want: Vec<String> = ["gamma", "alpha", "beta"].map(String::from).to_vec();
    for watchers in [[0, 1], [1, 0]] {
        assert_eq!(run(false, watchers), want, "watchers {watchers:?}");
        assert_eq!(
            run(true, watchers),
            want,
            "watchers {watchers:?}, scrambled ids"
        );
    }
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: std::env::var("PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(32),
        ..ProptestConfig::default()
    })]

    /// The link's encoding of the log (numbered frames encoded straight
    /// from the queue) decodes to exactly the changes `take_changes` gives.
    #[test]
    fn encoded_changes_decode_to_the_logged_ones(
        ops in proptest::collection::vec(op_strategy(), 1..120),
    ) {
        use tokio_util::codec::Decoder;
        let mut a = Primary::with(config_with(1));
        let mut b = Primary::with(config_with(1));
        let mut encoded = bytes::BytesMut::new();
        for i in 0..3 {
            a.step(&Op::Connect(i));
            b.step_only(&Op::Connect(i));
            b.router.take_encoded(&mut encoded).expect("no overflow");
        }
        for op in &ops {
            a.step(op);
            b.step_only(op);
            b.router.take_encoded(&mut encoded).expect("no overflow");
        }
        let mut codec = switchboard_wire::FrameCodec::new();
        let mut decoded = Vec::new();
        while let Some(f) = codec.decode(&mut encoded).expect("decodes") {
            match f.kind {
                Some(Kind::Change(c)) => decoded.push(*c),
                other => panic!("not a change: {other:?}"),
            }
        }
        prop_assert!(encoded.is_empty());
        prop_assert_eq!(decoded, a.changes);
    }
}

/// A reliable subscriber that reads nothing: its deliveries beyond the
/// queue's 16 frames are dropped, logged as `client_dropped`, and the
/// replica forgets them too (its snapshot, unacknowledged frames
/// included, ends equal), while the subscriber stays connected.
#[test]
fn deliveries_dropped_from_a_reliable_queue_are_forgotten_on_the_replica() {
    let mut p = Primary::new();
    p.step(&Op::Connect(0));
    p.step(&Op::Connect(1));
    p.step(&Op::Send(0, F::Sub(1, 0, false)));
    p.step(&Op::Drain(0));
    let snapshot = p.router.snapshot();
    for _ in 0..200 {
        p.step(&Op::Send(1, F::Publish(0, 8)));
    }
    let dropped: usize = p
        .changes
        .iter()
        .filter_map(|c| match &c.op {
            Some(proto::change::Op::ClientDropped(d)) => {
                assert_eq!(d.client_id, "alpha");
                Some(d.seqs.len())
            }
            _ => None,
        })
        .sum();
    assert_eq!(dropped, 200 - 16, "every delivery beyond the queue's 16");
    assert!(
        !p.changes
            .iter()
            .any(|c| matches!(&c.op, Some(proto::change::Op::ClientLeft(_)))),
        "not disconnected as a slow consumer"
    );
    let want = p.router.snapshot();
    let alpha = want
        .clients
        .iter()
        .find(|c| c.info.as_ref().is_some_and(|i| i.client_id == "alpha"))
        .expect("alpha is registered");
    assert_eq!(
        alpha.unacked.len(),
        1 + 16,
        "the subscription's answer (written, not acknowledged) and what is still queued"
    );
    let mut now = Instant::now();
    let mut replica = Replica::new(now, &snapshot, config(), stats()).expect("restores");
    for change in &p.changes[snapshot.repl_seq as usize..] {
        now += Duration::from_millis(1);
        replica.apply(now, change.clone()).expect("applies");
    }
    assert_eq!(replica.snapshot(), want);
}
