//! Application headers: passed through unchanged, violations refused.

use super::*;

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
