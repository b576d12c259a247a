//! The admission and remote seams: what the router asks and hands over,
//! and that without them nothing changes.

use super::*;
use crate::router::admission::{Admission, ClientRef, Refusal};
use crate::router::remote::{Handoff, Remote, PORT_ID, PORT_TRANSPORT};
use parking_lot::Mutex;

/// Refuses the client id "intruder", and publishes under `secret.`.
#[derive(Debug)]
struct NoSecrets;

impl Admission for NoSecrets {
    fn admit_client(&self, info: &proto::ClientInfo) -> Result<(), Refusal> {
        match info.client_id.as_str() {
            "intruder" => Err(Refusal::forbidden("client id 'intruder' is not yours")),
            _ => Ok(()),
        }
    }

    fn admit(&self, client: ClientRef<'_>, command: &Frame) -> Result<(), Refusal> {
        match &command.kind {
            Some(Kind::Publish(p)) if p.topic.starts_with("secret.") => Err(Refusal::forbidden(
                format!("'{}' may not publish to '{}'", client.client_id, p.topic),
            )),
            _ => Ok(()),
        }
    }
}

#[test]
fn a_refused_command_gets_forbidden_and_the_connection_stays() {
    let mut sim = Sim::new();
    sim.router.set_admission(Arc::new(NoSecrets));
    let a = sim.connect("a");
    let b = sim.connect("b");
    sim.subscribe(b, 1, "secret.>", "");
    sim.subscribe(b, 2, "open.>", "");
    sim.send(
        a,
        proto::Publish {
            id: 5,
            topic: "secret.plans".into(),
            payload: "x".into(),
            ..Default::default()
        },
    );
    let (id, code, message) = error_of(&sim.recv_one(a));
    assert_eq!((id, code), (5, ErrorCode::Forbidden));
    assert!(message.contains("secret.plans"), "{message}");
    assert!(sim.recv(b).is_empty(), "the refused publish went nowhere");
    // The same client goes on: an allowed publish is delivered.
    sim.send(a, Frame::publish("open.news", "y"));
    let got = deliveries(&sim.recv(b));
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!(got[0].1, "open.news");
}

#[test]
fn a_refused_client_is_closed_and_takes_over_nothing() {
    let mut sim = Sim::new();
    sim.router.set_admission(Arc::new(NoSecrets));
    let first = sim.connect_raw("intruder");
    let got = sim.recv(first);
    let (_, code, message) = error_of(&got[0]);
    assert_eq!(code, ErrorCode::Forbidden);
    assert!(message.contains("intruder"), "{message}");
    assert_eq!(sim.router.client_count(), 0);
    sim.connect("a");
    assert_eq!(sim.router.client_count(), 1);
}

/// Takes every message for ids starting with "far-", records everything.
#[derive(Debug, Default)]
struct Recorder {
    routed: Mutex<Vec<(String, String, &'static str)>>,
    fanned: Mutex<Vec<(String, &'static str)>>,
    patterns: Mutex<Vec<String>>,
}

impl Remote for Recorder {
    fn route(&self, from: &str, to: &str, frame: &Frame) -> Handoff {
        self.routed
            .lock()
            .push((from.into(), to.into(), frame.kind_name()));
        if to.starts_with("far-") {
            Handoff::Taken
        } else {
            Handoff::Unknown
        }
    }

    fn fan_out(&self, from: &str, frame: &Frame) {
        self.fanned.lock().push((from.into(), frame.kind_name()));
    }

    fn subscribed(&self, pattern: &str) {
        self.patterns.lock().push(format!("+{pattern}"));
    }

    fn unsubscribed(&self, pattern: &str) {
        self.patterns.lock().push(format!("-{pattern}"));
    }
}

/// Registers the remote seam's port; its Welcome consumed.
fn port(sim: &mut Sim) -> ConnId {
    let port = sim.connect_info(proto::ClientInfo {
        client_id: PORT_ID.into(),
        transport: PORT_TRANSPORT.into(),
        ..Default::default()
    });
    sim.recv(port);
    port
}

#[test]
fn messages_for_unknown_ids_go_to_the_port_and_publishes_fan_out() {
    let mut sim = Sim::new();
    let remote = Arc::new(Recorder::default());
    sim.router.set_remote(remote.clone());
    let port = port(&mut sim);
    let a = sim.connect("a");
    let b = sim.connect("b");
    sim.subscribe(b, 1, "t", "");
    // Taken by another hub: delivered to the port, sender named, `to` kept.
    sim.send(
        a,
        proto::Direct {
            id: 1,
            to: "far-x".into(),
            ..Default::default()
        },
    );
    // Handed to the port: that is what the `Ok` says.
    assert_eq!(sim.recv_one(a), Frame::ok(1));
    sim.send(
        a,
        proto::Request {
            id: 2,
            to: "far-y".into(),
            ..Default::default()
        },
    );
    assert!(sim.recv(a).is_empty());
    let got = sim.recv(port);
    assert!(
        matches!(&got[0].kind, Some(Kind::Direct(d)) if d.to == "far-x" && d.from == "a"),
        "{got:?}"
    );
    assert!(
        matches!(&got[1].kind, Some(Kind::Request(r)) if r.to == "far-y" && r.from == "a" && r.id == 2),
        "{got:?}"
    );
    // Known nowhere: NO_SUCH_CLIENT, as on a single hub.
    sim.send(
        a,
        proto::Direct {
            id: 3,
            to: "nobody".into(),
            ..Default::default()
        },
    );
    assert_eq!(error_of(&sim.recv_one(a)).1, ErrorCode::NoSuchClient);
    // A local target never reaches the remote.
    sim.send(
        a,
        proto::Direct {
            id: 4,
            to: "b".into(),
            ..Default::default()
        },
    );
    assert_eq!(sim.recv_one(a), Frame::ok(4));
    sim.recv(b);
    // A publish is delivered here and handed on.
    sim.send(a, Frame::publish("t", "p"));
    assert_eq!(deliveries(&sim.recv(b)).len(), 1);
    assert_eq!(
        *remote.routed.lock(),
        vec![
            ("a".into(), "far-x".into(), "direct"),
            ("a".into(), "far-y".into(), "request"),
            ("a".into(), "nobody".into(), "direct"),
        ]
    );
    assert_eq!(*remote.fanned.lock(), vec![("a".into(), "publish")]);
    // What comes from the port is never handed back: a publish from it
    // reaches local subscribers only, a message for an unknown id is not
    // routed again.
    sim.send(port, Frame::publish("t", "from afar"));
    assert_eq!(deliveries(&sim.recv(b)).len(), 1);
    sim.send(
        port,
        proto::Direct {
            to: "far-z".into(),
            from: "x".into(),
            ..Default::default()
        },
    );
    assert_eq!(remote.routed.lock().len(), 3);
    assert_eq!(*remote.fanned.lock(), vec![("a".into(), "publish")]);
    // The port never registers with the remote side.
    assert_eq!(sim.router.client_count(), 3);
    // Subscription patterns are reported as they come and go (a leave
    // ends them too).
    sim.subscribe(a, 2, "t", "g");
    sim.send(a, proto::Unsubscribe { id: 9, sub_id: 2 });
    sim.router.handle(
        sim.now,
        Input::Disconnected {
            conn: b,
            notice: None,
            reason: "closed".into(),
        },
    );
    assert_eq!(*remote.patterns.lock(), vec!["+t", "+t", "-t", "-t"]);
}

#[test]
fn subscriptions_held_before_the_remote_is_set_are_reported() {
    // A standby's router, restored from the primary, gets the remote seam
    // only when it takes over: what it holds then is reported first.
    let mut sim = Sim::new();
    let a = sim.connect("a");
    sim.subscribe(a, 1, "t.>", "");
    sim.subscribe(a, 2, "u", "");
    let remote = Arc::new(Recorder::default());
    sim.router.set_remote(remote.clone());
    sim.advance(Duration::from_millis(1));
    let mut got = remote.patterns.lock().clone();
    got.sort();
    assert_eq!(got, vec!["+t.>", "+u"]);
}

#[test]
fn answers_come_back_through_the_port() {
    let mut sim = Sim::new();
    sim.router.set_remote(Arc::new(Recorder::default()));
    let port = port(&mut sim);
    let a = sim.connect("a");
    let b = sim.connect("b");
    let request = |id, to: &str| proto::Request {
        id,
        to: to.into(),
        timeout_ms: 1_000,
        ..Default::default()
    };
    // A reply from the port goes to the requester, naming the far replier.
    sim.send(a, request(1, "far-y"));
    sim.recv(port);
    sim.send(
        port,
        proto::Reply {
            id: 1,
            to: "a".into(),
            from: "far-y".into(),
            payload: "hi".into(),
            ..Default::default()
        },
    );
    let got = sim.recv_one(a);
    assert!(
        matches!(&got.kind, Some(Kind::Reply(r)) if r.id == 1 && r.from == "far-y"),
        "{got:?}"
    );
    // An error answer from the far side.
    sim.send(a, request(2, "far-y"));
    sim.router.handle(
        sim.now,
        Input::RemoteFailed {
            conn: port,
            requester: "a".into(),
            id: 2,
            code: ErrorCode::NotListening,
            message: "not listening".into(),
        },
    );
    assert_eq!(error_of(&sim.recv_one(a)).1, ErrorCode::NotListening);
    // No answer: TIMEOUT from this hub, and a late reply goes nowhere.
    sim.send(a, request(3, "far-y"));
    sim.advance(Duration::from_millis(1_001));
    assert_eq!(error_of(&sim.recv_one(a)).1, ErrorCode::Timeout);
    sim.send(
        port,
        proto::Reply {
            id: 3,
            to: "a".into(),
            from: "far-y".into(),
            ..Default::default()
        },
    );
    assert!(sim.recv(a).is_empty());
    // A request from the port keeps its sender and its answer goes back
    // to the port, whatever its `to` says.
    sim.send(
        port,
        proto::Request {
            id: 7,
            to: "b".into(),
            from: "far-x".into(),
            ..Default::default()
        },
    );
    let got = sim.recv_one(b);
    assert!(
        matches!(&got.kind, Some(Kind::Request(r)) if r.from == "far-x" && r.id == 7),
        "{got:?}"
    );
    sim.send(b, Frame::reply(7, "far-x", "back"));
    let got = sim.recv(port);
    assert!(
        matches!(&got[..], [.., f] if matches!(&f.kind, Some(Kind::Reply(r)) if r.id == 7 && r.from == "b" && r.to == "far-x")),
        "{got:?}"
    );
}

#[test]
fn without_seams_nothing_is_asked() {
    // The default router refuses nothing and knows no other hub.
    let mut sim = Sim::new();
    let a = sim.connect("intruder");
    sim.send(
        a,
        proto::Direct {
            id: 1,
            to: "far-x".into(),
            ..Default::default()
        },
    );
    assert_eq!(error_of(&sim.recv_one(a)).1, ErrorCode::NoSuchClient);
    sim.send(
        a,
        proto::Publish {
            id: 2,
            topic: "secret.plans".into(),
            ..Default::default()
        },
    );
    assert_eq!(sim.recv_one(a), Frame::ok(2));
}

/// Refuses ids another hub holds ("held-" prefix); records joins and
/// leaves, as a federation's id directory sees them.
#[derive(Debug, Default)]
struct Directory {
    events: Mutex<Vec<String>>,
}

impl Remote for Directory {
    fn route(&self, _from: &str, _to: &str, _frame: &Frame) -> Handoff {
        Handoff::Unknown
    }

    fn fan_out(&self, _from: &str, _frame: &Frame) {}

    fn claim(&self, info: &proto::ClientInfo) -> Result<(), Refusal> {
        if info.client_id.starts_with("held-") {
            return Err(Refusal {
                code: ErrorCode::IdTakenOver,
                message: format!("client id '{}' is registered on hub 'b'", info.client_id),
            });
        }
        Ok(())
    }

    fn joined(&self, id: &str) {
        self.events.lock().push(format!("+{id}"));
    }

    fn left(&self, id: &str) {
        self.events.lock().push(format!("-{id}"));
    }
}

#[test]
fn the_remote_refuses_ids_held_elsewhere_and_hears_joins_and_leaves() {
    let mut sim = Sim::new();
    let remote = Arc::new(Directory::default());
    sim.router.set_remote(remote.clone());
    let refused = sim.connect_raw("held-x");
    let (_, code, message) = error_of(&sim.recv(refused)[0]);
    assert_eq!(code, ErrorCode::IdTakenOver);
    assert!(message.contains("hub 'b'"), "{message}");
    assert_eq!(sim.router.client_count(), 0);
    let a = sim.connect("a");
    // A local takeover: the old connection leaves, the new one joins.
    let _a2 = sim.connect_raw("a");
    sim.router.handle(
        sim.now,
        Input::Disconnected {
            conn: a,
            notice: None,
            reason: "closed".into(),
        },
    );
    assert_eq!(*remote.events.lock(), vec!["+a", "-a", "+a"]);
}

/// Knows ids starting with "far-" on another hub but cannot reach it;
/// has dropped 7 messages for other hubs.
#[derive(Debug)]
struct CutOff;

impl Remote for CutOff {
    fn route(&self, _from: &str, to: &str, _frame: &Frame) -> Handoff {
        if to.starts_with("far-") {
            Handoff::Unreachable(format!("'{to}' is out of reach"))
        } else {
            Handoff::Unknown
        }
    }

    fn fan_out(&self, _from: &str, _frame: &Frame) {}

    fn dropped(&self) -> u64 {
        7
    }
}

#[test]
fn unreachable_targets_fail_at_once_and_remote_drops_show_in_status() {
    let mut sim = Sim::new();
    sim.router.set_remote(Arc::new(CutOff));
    let port = port(&mut sim);
    let a = sim.connect("a");
    sim.send(
        a,
        proto::Direct {
            id: 1,
            to: "far-x".into(),
            ..Default::default()
        },
    );
    let (id, code, message) = error_of(&sim.recv_one(a));
    assert_eq!((id, code), (1, ErrorCode::NoSuchClient));
    assert!(message.contains("out of reach"), "{message}");
    sim.send(a, Frame::request(2, "far-y", "x"));
    assert_eq!(
        code_of(&sim.recv_one(a)),
        Some((2, ErrorCode::NoSuchClient))
    );
    // A session frame: told as for a peer that is not connected, with
    // the remote side's reason.
    sim.send(
        a,
        proto::Session {
            peer: "far-z".into(),
            ..Default::default()
        },
    );
    let (id, code, message) = error_of(&sim.recv_one(a));
    assert_eq!((id, code), (0, ErrorCode::NoSuchClient));
    assert!(message.contains("out of reach"), "{message}");
    // Without id: nobody to tell, counted.
    sim.send(
        a,
        proto::Direct {
            to: "far-x".into(),
            ..Default::default()
        },
    );
    assert!(sim.recv(a).is_empty());
    assert!(sim.recv(port).is_empty());
    let status = sim.router.status(sim.now, 0);
    assert_eq!(status.counters["undeliverable"], 1);
    assert_eq!(status.counters["dropped:~remote"], 7);
    assert_eq!(status.dropped, 7);
}

#[test]
fn the_port_closes_a_local_client_like_a_takeover() {
    let mut sim = Sim::new();
    sim.router.set_remote(Arc::new(CutOff));
    let port = port(&mut sim);
    let a = sim.connect("a");
    let b = sim.connect("b");
    let close = |conn, id: &str| Input::RemoteClose {
        conn,
        id: id.into(),
        code: ErrorCode::IdTakenOver,
        message: "held by hub-b".into(),
    };
    // Only the port may ask.
    sim.router.handle(sim.now, close(b, "a"));
    assert!(sim.outboxes[&a].is_open());
    sim.router.handle(sim.now, close(port, "a"));
    match sim.recv(a).last().and_then(|f| f.kind.clone()) {
        Some(Kind::Goodbye(g)) => {
            assert_eq!(g.code, ErrorCode::IdTakenOver as i32);
            assert_eq!(g.message, "held by hub-b");
        }
        other => panic!("{other:?}"),
    }
    assert!(!sim.outboxes[&a].is_open());
    assert_eq!(sim.router.client_count(), 2);
    // An id not registered: nothing happens.
    sim.router.handle(sim.now, close(port, "nobody"));
    assert_eq!(sim.router.client_count(), 2);
    assert_eq!(sim.router.status(sim.now, 0).counters["takeovers"], 1);
}

/// Keeps the key/value store elsewhere: takes every `KvSet`, `KvGet` and
/// `KvDelete`, records them.
#[derive(Debug, Default)]
struct KvKeeper {
    taken: Mutex<Vec<(String, &'static str)>>,
}

impl Remote for KvKeeper {
    fn route(&self, _: &str, _: &str, _: &Frame) -> Handoff {
        Handoff::Unknown
    }

    fn fan_out(&self, _: &str, _: &Frame) {}

    fn kv(&self, from: &str, frame: &Frame) -> Handoff {
        self.taken.lock().push((from.into(), frame.kind_name()));
        Handoff::Taken
    }
}

#[test]
fn a_remote_store_answers_kv_commands_and_feeds_watchers() {
    let mut sim = Sim::new();
    let keeper = Arc::new(KvKeeper::default());
    sim.router.set_remote(keeper.clone());
    let port = port(&mut sim);
    let a = sim.connect("a");
    let b = sim.connect("b");
    let set = |id, key: &str| proto::KvSet {
        id,
        key: key.into(),
        value: "v".into(),
        expect_version: None,
    };
    // Handed to the remote side, answered through the port.
    sim.send(a, set(1, "k1"));
    assert!(sim.recv(a).is_empty(), "no local answer");
    let answer = proto::KvValue {
        id: 1,
        key: "k1".into(),
        version: 41,
        found: true,
        ..Default::default()
    };
    sim.router.handle(
        sim.now,
        Input::RemoteAnswer {
            conn: port,
            requester: "a".into(),
            id: 1,
            frame: answer.clone().into(),
        },
    );
    assert_eq!(sim.recv_one(a), Frame::from(answer.clone()));
    // A second answer for the same command goes nowhere.
    sim.router.handle(
        sim.now,
        Input::RemoteAnswer {
            conn: port,
            requester: "a".into(),
            id: 1,
            frame: answer.into(),
        },
    );
    assert!(sim.recv(a).is_empty());
    // The remote side's error answer, with the local store's code.
    sim.send(
        a,
        proto::KvDelete {
            id: 2,
            key: "k1".into(),
            expect_version: Some(3),
        },
    );
    sim.router.handle(
        sim.now,
        Input::RemoteFailed {
            conn: port,
            requester: "a".into(),
            id: 2,
            code: ErrorCode::VersionMismatch,
            message: "at 41".into(),
        },
    );
    assert_eq!(
        error_of(&sim.recv_one(a)),
        (2, ErrorCode::VersionMismatch, "at 41".into())
    );
    // The hub's limits hold before anything is handed over.
    sim.send(a, set(3, ""));
    assert_eq!(error_of(&sim.recv_one(a)).1, ErrorCode::InvalidArgument);
    // An id outstanding already is refused; no answer at all: TIMEOUT.
    sim.send(
        a,
        proto::KvGet {
            id: 4,
            key: "k1".into(),
        },
    );
    sim.send(
        a,
        proto::KvGet {
            id: 4,
            key: "k1".into(),
        },
    );
    assert_eq!(error_of(&sim.recv_one(a)).1, ErrorCode::InvalidArgument);
    let timeout = sim.router.limits.default_request_timeout;
    sim.advance(timeout + Duration::from_millis(1));
    let (id, code, _) = error_of(&sim.recv_one(a));
    assert_eq!((id, code), (4, ErrorCode::Timeout));
    assert_eq!(
        *keeper.taken.lock(),
        vec![
            ("a".into(), "kv_set"),
            ("a".into(), "kv_delete"),
            ("a".into(), "kv_get"),
        ]
    );
    // Changes of the shared store come in through the port: watchers are
    // told once per version, and the local cache serves new watches.
    sim.send(
        b,
        proto::KvWatch {
            id: 5,
            watch_id: 1,
            key: "k".into(),
            prefix: true,
        },
    );
    assert_eq!(sim.recv_one(b), Frame::ok(5));
    let change = proto::KvUpdate {
        watch_id: 0,
        key: "k1".into(),
        value: "v".into(),
        version: 41,
        deleted: false,
        by: "far".into(),
    };
    sim.send(port, change.clone());
    sim.send(port, change.clone());
    let got = sim.recv(b);
    assert_eq!(got.len(), 1, "{got:?}");
    assert!(
        matches!(&got[0].kind, Some(Kind::KvUpdate(u)) if u.watch_id == 1 && u.version == 41 && u.by == "far"),
        "{got:?}"
    );
    sim.send(
        b,
        proto::KvWatch {
            id: 6,
            watch_id: 2,
            key: "k1".into(),
            prefix: false,
        },
    );
    let got = sim.recv(b);
    assert!(
        matches!(&got[1].kind, Some(Kind::KvUpdate(u)) if u.watch_id == 2 && u.version == 41 && u.value == "v"),
        "{got:?}"
    );
    // A client may not send such changes.
    sim.send(a, change);
    assert_eq!(error_of(&sim.recv_one(a)).1, ErrorCode::Unsupported);
    assert!(sim.recv(b).is_empty());
}

#[test]
fn without_a_remote_store_kv_stays_local() {
    let mut sim = Sim::new();
    sim.router.set_remote(Arc::new(Recorder::default()));
    port(&mut sim);
    let a = sim.connect("a");
    sim.send(
        a,
        proto::KvSet {
            id: 1,
            key: "k".into(),
            value: "v".into(),
            expect_version: None,
        },
    );
    let got = sim.recv_one(a);
    assert!(
        matches!(&got.kind, Some(Kind::KvValue(v)) if v.id == 1 && v.version == 1),
        "{got:?}"
    );
}
