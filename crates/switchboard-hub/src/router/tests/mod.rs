//! Deterministic tests of the routing core: a simulated clock, no sockets.
//! The harness ([`Sim`]) is here; the tests are grouped by room.

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

/// A reliable client "a" subscribed to "t" (its subscribe numbered 1, the
/// hub's answer numbered 1).
fn reliable_subscriber_of_t(sim: &mut Sim) -> ConnId {
    let a = sim.connect_reliable("a");
    sim.send(
        a,
        Frame::from(proto::Subscribe {
            id: 9,
            sub_id: 1,
            pattern: "t".into(),
            ..Default::default()
        })
        .with_seq(1),
    );
    assert_eq!(sim.recv_one(a).seq, 1);
    a
}

mod headers;
mod kv;
mod listen;
mod policy;
mod pubsub;
mod registry;
mod reliable;
mod requests;
mod seams;
mod services;
mod staging;
