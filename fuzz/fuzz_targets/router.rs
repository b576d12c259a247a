//! Drives the hub's sans-IO routing core with arbitrary inputs: clients
//! connecting and leaving, arbitrary decoded frames (raw protobuf bodies and
//! structured frames built from small pools of ids, topics and keys), writers
//! draining some queues and not others, ticks, time jumps and shutdown.
//!
//! Input layout: a sequence of operations, each a selector byte followed by
//! the bytes it consumes (see `Op`). Limits are small so that every limit is
//! reachable within a short input.
//!
//! Checks: never panics; the registry, subscriptions, pending requests and
//! key/value store stay within their limits; every request a connected
//! client sent (to a client id or a service) and did not cancel is answered
//! exactly once (a reply or an error) once time has run past every
//! deadline; nothing is answered that was never asked.

#![no_main]

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use prost::Message;
use switchboard_hub::router::{Input, Router, RouterConfig};
use switchboard_hub::stats::HubStats;
use switchboard_hub::{ConnId, Limits, Outbox};
use switchboard_wire::proto::{self, frame::Kind};
use switchboard_wire::{check_client_frame, ErrorCode, Frame, WireError};

const IDS: &[&str] = &["a", "b", "c", "ünï€ødé", "d.e", "x"];
const TOPICS: &[&str] = &[
    "a", "a.b", "a.b.c", "*", "a.*", ">", "a.>", "*.b", "", "a..b", "a b", "ä.ö", "a.*.c", "b",
];
const KEYS: &[&str] = &["k", "k/1", "k/2", "", "ünï", "k/"];
/// Header sets: none, a repeated key with a binary value, a refused key.
const HEADERS: &[&[(&str, &[u8])]] = &[&[], &[("k", b"v"), ("k", &[0xff])], &[("", b"")]];

struct Conn {
    conn: ConnId,
    outbox: Arc<Outbox>,
    /// Requests sent, by id, and whether an answer arrived.
    requests: HashMap<u64, u32>,
    /// Requests delivered to this client: (id, from).
    inbox: Vec<(u64, String)>,
    next_id: u64,
    answers_checked: bool,
}

struct Cursor<'a>(&'a [u8]);

impl Cursor<'_> {
    fn byte(&mut self) -> Option<u8> {
        let (first, rest) = self.0.split_first()?;
        self.0 = rest;
        Some(*first)
    }
    fn bytes(&mut self, n: usize) -> &[u8] {
        let n = n.min(self.0.len());
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        head
    }
    fn pick<'p>(&mut self, pool: &[&'p str]) -> &'p str {
        pool[usize::from(self.byte().unwrap_or(0)) % pool.len()]
    }
}

fn limits() -> Limits {
    Limits {
        queue_frames: 8,
        queue_bytes: 2048,
        queue_hard_bytes: 8192,
        max_parked_frames: 4,
        max_parked_bytes: 1024,
        write_batch_bytes: 512,
        max_subscriptions: 6,
        max_watches: 4,
        max_pending_requests: 5,
        max_clients: 4,
        max_handshakes: 4,
        kv_max_value: 64,
        kv_max_key: 16,
        kv_max_keys: 5,
        kv_max_tombstones: 3,
        max_subject: 24,
        default_request_timeout: Duration::from_millis(500),
        ..Limits::default()
    }
}

fn structured(c: &mut Cursor<'_>, conn: &mut Conn) -> Option<Frame> {
    let sel = c.byte()?;
    let id = conn.next_id;
    conn.next_id += 1;
    let payload =
        Bytes::copy_from_slice(c.bytes(usize::from(c.0.first().copied().unwrap_or(0) % 96)));
    let headers: Vec<proto::Header> = HEADERS[usize::from(c.byte()?) % HEADERS.len()]
        .iter()
        .map(|(key, value)| proto::Header {
            key: (*key).into(),
            value: Bytes::from_static(value),
        })
        .collect();
    let frame: Frame = match sel % 20 {
        0 => proto::Direct {
            id: u64::from(c.byte()? % 2) * id,
            to: c.pick(IDS).into(),
            from: String::new(),
            payload,
            headers,
        }
        .into(),
        1 => {
            let frame = proto::Request {
                id,
                to: c.pick(IDS).into(),
                timeout_ms: u32::from(c.byte()?) * 4,
                payload,
                headers,
                ..Default::default()
            }
            .into();
            // Tracked only once it is certain to be sent.
            conn.requests.insert(id, 0);
            frame
        }
        2 => {
            // Answer one request this client received (or a made-up one).
            let (rid, to) = if conn.inbox.is_empty() || c.byte()? == 0 {
                (u64::from(c.byte()?), c.pick(IDS).to_owned())
            } else {
                let i = usize::from(c.byte()?) % conn.inbox.len();
                conn.inbox.swap_remove(i)
            };
            proto::Reply {
                id: rid,
                to,
                payload,
                is_error: c.byte()? % 2 == 1,
                ..Default::default()
            }
            .into()
        }
        3 => proto::Broadcast {
            id: 0,
            payload,
            ..Default::default()
        }
        .into(),
        4 => proto::Publish {
            id: u64::from(c.byte()? % 2) * id,
            topic: c.pick(TOPICS).into(),
            payload,
            reply_to: c.pick(TOPICS).into(),
            headers,
            ..Default::default()
        }
        .into(),
        5 => proto::Subscribe {
            id,
            sub_id: u64::from(c.byte()? % 8),
            pattern: c.pick(TOPICS).into(),
            queue_group: ["", "g", "h"][usize::from(c.byte()? % 3)].into(),
            service: c.byte()? % 3 == 0,
        }
        .into(),
        6 => proto::Unsubscribe {
            id,
            sub_id: u64::from(c.byte()? % 8),
        }
        .into(),
        7 => proto::KvSet {
            id,
            key: c.pick(KEYS).into(),
            value: payload,
            expect_version: match c.byte()? {
                0..=200 => None,
                v => Some(u64::from(v % 4)),
            },
        }
        .into(),
        8 => proto::KvGet {
            id,
            key: c.pick(KEYS).into(),
        }
        .into(),
        9 => proto::KvDelete {
            id,
            key: c.pick(KEYS).into(),
            expect_version: None,
        }
        .into(),
        10 => proto::KvWatch {
            id,
            watch_id: u64::from(c.byte()? % 6),
            key: c.pick(KEYS).into(),
            prefix: c.byte()? % 2 == 1,
        }
        .into(),
        11 => proto::KvUnwatch {
            id,
            watch_id: u64::from(c.byte()? % 6),
        }
        .into(),
        12 => proto::PresenceWatch {
            id,
            stop: c.byte()? % 2 == 1,
        }
        .into(),
        13 => proto::ListClients { id }.into(),
        14 => proto::Session {
            peer: c.pick(IDS).into(),
            session_id: u64::from(c.byte()?),
            body: Some(proto::session::Body::Empty(proto::Empty {})),
        }
        .into(),
        15 => {
            // A request to a service (sometimes naming a client too,
            // which is refused): answered exactly once like any request.
            let to = if c.byte()? % 8 == 0 {
                c.pick(IDS).into()
            } else {
                String::new()
            };
            let frame = proto::Request {
                id,
                to,
                service: c.pick(TOPICS).into(),
                timeout_ms: u32::from(c.byte()?) * 4,
                payload,
                headers,
                ..Default::default()
            }
            .into();
            conn.requests.insert(id, 0);
            frame
        }
        16 => {
            // Cancel one of this client's requests (or a made-up id): a
            // cancelled request may go unanswered.
            let ids: Vec<u64> = conn.requests.keys().copied().collect();
            let rid = match c.byte()? {
                0 => u64::from(c.byte()?),
                n if !ids.is_empty() => ids[usize::from(n) % ids.len()],
                n => u64::from(n),
            };
            conn.requests.remove(&rid);
            proto::Cancel { id: rid }.into()
        }
        17 => {
            let flags = c.byte()?;
            proto::Listen {
                id: u64::from(flags % 2) * id,
                messages: flags & 2 != 0,
                requests: flags & 4 != 0,
            }
            .into()
        }
        18 => proto::Broadcast {
            id,
            payload,
            headers,
            ..Default::default()
        }
        .into(),
        _ => match c.byte()? % 3 {
            0 => proto::Ping { nonce: id }.into(),
            1 => proto::StatusRequest { id }.into(),
            _ => proto::Goodbye::default().into(),
        },
    };
    Some(frame)
}

/// Takes up to `max_bytes` from a client's queue, as its writer would, and
/// records the answers it sees.
fn drain(conn: &mut Conn, max_bytes: usize) {
    let mut taken = switchboard_hub::outbox::Taken::default();
    conn.outbox.take(max_bytes, &mut taken);
    for out in taken.frames.drain(..) {
        let frame = out.into_frame();
        match frame.kind {
            Some(Kind::Reply(r)) => answer(conn, r.id),
            Some(Kind::Error(e)) if conn.requests.contains_key(&e.id) => {
                // Errors for other frames reuse ids only when the input
                // reused them; structured frames never do.
                assert_ne!(e.code, ErrorCode::Unspecified as i32);
                answer(conn, e.id);
            }
            Some(Kind::Request(r)) => {
                assert!(!r.from.is_empty(), "a delivered request names its sender");
                conn.inbox.push((r.id, r.from));
            }
            _ => {}
        }
    }
}

fn answer(conn: &mut Conn, id: u64) {
    // Raw frames may carry any id; only structured request ids are tracked.
    if let Some(n) = conn.requests.get_mut(&id) {
        *n += 1;
        assert!(*n <= 1, "request {id} answered twice");
    }
}

fn check_bounds(router: &Router, now: Instant, l: &Limits) {
    let status = router.status(now, 0);
    assert!(router.client_count() <= l.max_clients);
    assert!(status.subscriptions as usize <= l.max_clients * l.max_subscriptions);
    assert!(router.pending_requests() <= l.max_clients * l.max_pending_requests);
    assert!(status.kv_keys as usize <= l.kv_max_keys);
    let counter = |name: &str| {
        status
            .counters
            .iter()
            .find(|(k, _)| k.as_str() == name)
            .map_or(0, |(_, v)| *v)
    };
    assert!(counter("kv_watches") as usize <= l.max_clients * l.max_watches);
    assert!(counter("kv_tombstones") as usize <= l.kv_max_tombstones);
    assert!(counter("parked_now") as usize <= l.max_clients * l.max_parked_frames);
}

fuzz_target!(|data: &[u8]| {
    let l = limits();
    let config = RouterConfig {
        identity: proto::HubIdentity {
            service: "fuzz".into(),
            ..Default::default()
        },
        limits: l.clone(),
        keepalive: None,
    };
    let mut router = Router::new(config, Arc::new(HubStats::default()));
    let start = Instant::now();
    let mut now = start;
    let mut conns: Vec<Conn> = Vec::new();
    let mut next_conn = 1u64;
    let mut shut = false;
    let mut c = Cursor(data);
    let mut steps = 0;

    while let Some(op) = c.byte() {
        steps += 1;
        if steps > 2000 {
            break;
        }
        let pick = usize::from(c.byte().unwrap_or(0));
        match op % 10 {
            0 => {
                let conn = ConnId(next_conn);
                next_conn += 1;
                let outbox = Outbox::new(conn);
                let info = proto::ClientInfo {
                    client_id: c.pick(IDS).into(),
                    transport: "fuzz".into(),
                    // Some clients take direct messages and requests only
                    // once they say so (`Listen`).
                    listen: c.byte().unwrap_or(0) % 4 == 0,
                    ..Default::default()
                };
                router.handle(
                    now,
                    Input::Connect {
                        conn,
                        info,
                        outbox: outbox.clone(),
                    },
                );
                conns.push(Conn {
                    conn,
                    outbox,
                    requests: HashMap::new(),
                    inbox: Vec::new(),
                    next_id: 1 << 32,
                    answers_checked: true,
                });
            }
            1 | 2 | 3 if !conns.is_empty() => {
                let i = pick % conns.len();
                let n = usize::from(c.byte().unwrap_or(1) % 8) + 1;
                let mut frames = Vec::new();
                for _ in 0..n {
                    if op % 10 == 1 {
                        // A raw body, screened like the transport does.
                        conns[i].answers_checked = false;
                        let len = usize::from(c.byte().unwrap_or(0));
                        let body = c.bytes(len).to_vec();
                        match check_client_frame(&body) {
                            Err(WireError::Rejected { .. })
                            | Err(WireError::Malformed { .. })
                            | Err(WireError::FrameTooLarge { .. })
                            | Err(WireError::OverLimit { .. }) => continue,
                            _ => {}
                        }
                        match Frame::decode(body.as_slice()) {
                            Ok(f) => frames.push(f),
                            Err(_) => {}
                        }
                    } else if let Some(f) = structured(&mut c, &mut conns[i]) {
                        frames.push(f);
                    }
                }
                router.handle(
                    now,
                    Input::Frames {
                        conn: conns[i].conn,
                        frames,
                    },
                );
            }
            4 if !conns.is_empty() => {
                let i = pick % conns.len();
                let gone = conns.swap_remove(i);
                router.handle(
                    now,
                    Input::Disconnected {
                        conn: gone.conn,
                        notice: None,
                        reason: "fuzz".into(),
                    },
                );
            }
            5 | 6 if !conns.is_empty() => {
                let i = pick % conns.len();
                let max = usize::from(c.byte().unwrap_or(0)) * 16;
                drain(&mut conns[i], max);
                router.handle(
                    now,
                    Input::Drained {
                        conn: conns[i].conn,
                    },
                );
            }
            7 => {
                now += Duration::from_millis(u64::from(c.byte().unwrap_or(0)) * 8);
                router.handle(now, Input::Tick);
            }
            8 => {
                if let Some(d) = router.next_deadline() {
                    assert!(d <= now + Duration::from_secs(3600), "deadline in range");
                    now = now.max(d);
                    router.handle(now, Input::Tick);
                }
            }
            9 if pick == 255 => {
                router.handle(now, Input::Shutdown);
                shut = true;
            }
            _ => {}
        }
        check_bounds(&router, now, &l);
    }

    // Let every deadline pass with writers draining everything, then every
    // tracked request of a still-open client must have exactly one answer.
    for _ in 0..64 {
        for conn in conns.iter_mut() {
            drain(conn, usize::MAX);
            router.handle(now, Input::Drained { conn: conn.conn });
        }
        now += Duration::from_secs(1);
        router.handle(now, Input::Tick);
        if router.pending_requests() == 0 && router.next_deadline().is_none() {
            break;
        }
    }
    for conn in conns.iter_mut() {
        drain(conn, usize::MAX);
    }
    check_bounds(&router, now, &l);
    if !shut {
        for conn in &conns {
            if !conn.outbox.is_open() || !conn.answers_checked {
                continue;
            }
            let mut taken = switchboard_hub::outbox::Taken::default();
            conn.outbox.take(0, &mut taken);
            if taken.close || taken.killed {
                continue;
            }
            for (id, n) in &conn.requests {
                assert_eq!(*n, 1, "request {id} of {} answered {n} times", conn.conn);
            }
        }
    }
});
