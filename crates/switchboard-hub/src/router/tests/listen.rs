//! The "listen" feature: flags gating direct messages, requests and
//! broadcasts, kept across resume, snapshot and restore.

use super::*;

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
