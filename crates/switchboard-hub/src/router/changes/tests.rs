use bytes::BytesMut;
use proptest::prelude::*;
use switchboard_wire::deliver::DeliverHead;
use switchboard_wire::split_frame;

use super::*;
use crate::router::journal::{ChangeLogLimits, Journal};

/// A `sent` entry as a frame, so that a pre-encoded delivery compares
/// equal to the frame prost decodes.
fn plain(c: Change) -> Change {
    let op = c.op.map(|op| match op {
        ChangeOp::Sent { client_id, out } => ChangeOp::Sent {
            client_id,
            out: out.map(|o| Out::from(o.into_frame())),
        },
        other => other,
    });
    Change {
        repl_seq: c.repl_seq,
        op,
    }
}

/// prost's decoding of a link frame, as a [`LinkFrame`].
fn by_prost(body: &Bytes) -> Result<LinkFrame, prost::DecodeError> {
    let frame = Frame::decode(body.clone())?;
    Ok(match frame.kind {
        Some(Kind::Change(c)) => LinkFrame::Change(Change::from(*c)),
        _ => LinkFrame::Other(frame),
    })
}

fn plain_frame(f: LinkFrame) -> LinkFrame {
    match f {
        LinkFrame::Change(c) => LinkFrame::Change(plain(c)),
        other => other,
    }
}

/// Whatever the hand decoder accepts, prost decodes the same way.
fn agrees_with_prost(body: &Bytes) {
    if let Ok(hand) = decode_link_frame(body.clone()) {
        let prost = by_prost(body).expect("prost decodes what the hand decoder accepts");
        assert_eq!(plain_frame(hand), plain_frame(prost));
    }
}

/// One change of every kind, written by the primary's hand encoder; the
/// frame bodies (length prefixes removed).
fn samples() -> Vec<Bytes> {
    let mut j = Journal::default();
    j.enable(ChangeLogLimits::default());
    let publish = Frame {
        seq: 7,
        acked: 3,
        kind: Some(Kind::Publish(proto::Publish {
            topic: "a.b".into(),
            payload: Bytes::from_static(b"payload"),
            id: 9,
            reply_to: "r".into(),
            ..Default::default()
        })),
    };
    let with_headers = Frame::from(proto::Publish {
        topic: "h".into(),
        headers: vec![proto::Header {
            key: "k".into(),
            value: "v".into(),
        }],
        ..Default::default()
    });
    let deliver = Out::Deliver {
        seq: 5,
        acked: 2,
        sub_id: 300,
        shared: crate::outbox::Shared::new(
            DeliverHead::new("a.b", "pub", "inbox", &[]),
            Bytes::from_static(&[7; 100]),
        ),
    };
    let info = proto::ClientInfo {
        client_id: "sub".into(),
        reliable: true,
        ..Default::default()
    };
    j.joined(&info);
    j.frame("pub", &publish);
    j.frame("", &publish);
    j.frame("pub", &with_headers);
    j.frame("pub", &Frame::from(proto::Subscribe::default()));
    j.frame(
        "pub",
        &Frame::from(proto::Request {
            id: 4,
            service: "svc".into(),
            ..Default::default()
        }),
    );
    j.amend_request(4, |r| r.to = "responder".into());
    j.sent("sub", &deliver);
    j.sent("sub", &Out::from(Frame::ok(9).with_seq(6)));
    j.client_ack("sub", 5);
    j.client_ack("sub", 0);
    j.client_ack("", u64::MAX);
    j.left("sub");
    j.left("");
    j.client_dropped("sub", &[6, 300]);
    j.client_dropped("", &[u64::MAX]);
    let mut buf = BytesMut::new();
    j.take_encoded(&mut buf).expect("no overflow");
    let mut bodies = Vec::new();
    while let Some(body) = split_frame(&mut buf, usize::MAX).expect("whole frames") {
        bodies.push(body);
    }
    bodies
}

#[test]
fn decodes_every_kind_of_change_as_prost_does() {
    let bodies = samples();
    assert_eq!(bodies.len(), 15);
    let mut kinds = Vec::new();
    for body in &bodies {
        let hand = decode_link_frame(body.clone()).expect("decodes");
        let LinkFrame::Change(c) = &hand else {
            panic!("not a change: {hand:?}")
        };
        kinds.push(std::mem::discriminant(c.op.as_ref().expect("an operation")));
        assert_eq!(plain_frame(hand), plain_frame(by_prost(body).unwrap()));
    }
    kinds.dedup();
    assert_eq!(
        kinds.len(),
        6,
        "joined, frame, sent, ack, left, dropped in order"
    );
}

#[test]
fn ids_and_payloads_point_into_the_received_buffer() {
    let bodies = samples();
    let inside = |body: &Bytes, p: *const u8| {
        let start = body.as_ptr() as usize;
        (start..start + body.len()).contains(&(p as usize))
    };
    let body = &bodies[1];
    let Ok(LinkFrame::Change(Change {
        op: Some(ChangeOp::ClientFrame { client_id, frames }),
        ..
    })) = decode_link_frame(body.clone())
    else {
        panic!("a client frame")
    };
    assert_eq!(&*client_id, "pub");
    assert!(inside(body, client_id.as_ptr()));
    let [Frame {
        kind: Some(Kind::Publish(p)),
        ..
    }] = &frames[..]
    else {
        panic!("a publish")
    };
    assert!(inside(body, p.payload.as_ptr()));
    let body = &bodies[6];
    let Ok(LinkFrame::Change(Change {
        op: Some(ChangeOp::Sent { client_id, out }),
        ..
    })) = decode_link_frame(body.clone())
    else {
        panic!("a sent frame")
    };
    assert!(inside(body, client_id.as_ptr()));
    let Some(Out::Deliver { shared, seq, .. }) = out else {
        panic!("a delivery kept pre-encoded: {out:?}")
    };
    assert_eq!((seq, shared.payload.len()), (5, 100));
    assert!(inside(body, shared.payload.as_ptr()));
}

#[test]
fn other_frames_go_to_prost() {
    let hb = Frame::from(proto::Heartbeat {
        repl_seq: 3,
        ..Default::default()
    });
    let body = Bytes::from(hb.encode_to_vec());
    assert_eq!(decode_link_frame(body).unwrap(), LinkFrame::Other(hb));
    // A change with envelope fields after it: prost's merge.
    let mut body = samples()[12].to_vec();
    body.extend_from_slice(&[0x08, 0x01]);
    agrees_with_prost(&Bytes::from(body.clone()));
    assert!(matches!(
        decode_link_frame(Bytes::from(body)),
        Ok(LinkFrame::Change(_))
    ));
}

#[test]
fn malformed_changes_are_typed_errors() {
    let left = samples()[11].clone();
    // Every cut of a change is an error, never a panic.
    for cut in 1..left.len() {
        let err = decode_link_frame(left.slice(..cut));
        assert!(err.is_err(), "cut at {cut}: {err:?}");
    }
    // A change whose operation appears twice.
    let body = Bytes::from_static(&[
        0xe2, 0x05, 0x08, 0x08, 0x01, 0x62, 0x01, b'a', 0x62, 0x01, b'b',
    ]);
    assert!(matches!(
        decode_link_frame(body),
        Err(ChangeError::Repeated(12))
    ));
    // An overlong varint.
    let body = Bytes::from_static(&[
        0xe2, 0x05, 0x0b, 0x08, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x7f,
    ]);
    assert!(decode_link_frame(body).is_err());
    // A client id that is not UTF-8.
    let body = Bytes::from_static(&[0xe2, 0x05, 0x05, 0x08, 0x01, 0x62, 0x01, 0xff]);
    assert!(matches!(decode_link_frame(body), Err(ChangeError::Utf8)));
    // The wrong wire type for a known field.
    let body = Bytes::from_static(&[0xe2, 0x05, 0x02, 0x60, 0x01]);
    assert!(matches!(
        decode_link_frame(body),
        Err(ChangeError::WireType { field: 12, .. })
    ));
    // A group.
    let body = Bytes::from_static(&[0xe2, 0x05, 0x02, 0x0b, 0x0c]);
    assert!(matches!(decode_link_frame(body), Err(ChangeError::Key(_))));
    // A length far beyond the frame.
    let body = Bytes::from_static(&[0xe2, 0x05, 0xff, 0xff, 0xff, 0xff, 0x0f]);
    assert!(matches!(
        decode_link_frame(body),
        Err(ChangeError::Truncated)
    ));
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2_000))]

    /// Random bytes after a change's key: an error or prost's decoding.
    #[test]
    fn random_changes_never_panic(tail in proptest::collection::vec(any::<u8>(), 0..64)) {
        let mut body = vec![0xe2, 0x05, tail.len() as u8];
        body.extend_from_slice(&tail);
        agrees_with_prost(&Bytes::from(body));
        agrees_with_prost(&Bytes::from(tail));
    }

    /// Valid changes with bytes flipped, cut or appended: an error or
    /// prost's decoding.
    #[test]
    fn damaged_changes_never_panic(
        which in 0usize..13,
        at in any::<prop::sample::Index>(),
        byte in any::<u8>(),
        cut in any::<prop::sample::Index>(),
        extra in proptest::collection::vec(any::<u8>(), 0..8),
    ) {
        let body = samples()[which].to_vec();
        let mut flipped = body.clone();
        let i = at.index(flipped.len());
        flipped[i] = byte;
        agrees_with_prost(&Bytes::from(flipped.clone()));
        flipped.truncate(cut.index(flipped.len() + 1));
        agrees_with_prost(&Bytes::from(flipped));
        let mut longer = body;
        longer.extend_from_slice(&extra);
        agrees_with_prost(&Bytes::from(longer));
    }
}

#[test]
fn changes_are_told_apart_from_other_frames() {
    for body in samples() {
        assert!(is_change(&body));
    }
    let hb = Frame::from(proto::Heartbeat {
        repl_seq: 3,
        ..Default::default()
    });
    assert!(!is_change(&hb.encode_to_vec()));
    assert!(
        !is_change(&[0xe2, 0x05, 0x7f]),
        "broken: left to the decoder"
    );
}

/// One decoder over many `sent` deliveries (as a standby decodes): each
/// is what prost decodes, whether its head is the last one's or not.
#[test]
fn a_decoder_shares_only_equal_heads() {
    let mut j = Journal::default();
    j.enable(ChangeLogLimits::default());
    let heads = [
        ("a.b", "pub", ""),
        ("a.b", "pub", ""),
        ("a.c", "pub", ""),
        ("a.c", "pub2", ""),
        ("a.c", "pub2", "inbox"),
        ("a.c", "pub2", "inbox"),
        ("a.b", "pub", ""),
    ];
    for (i, (topic, from, reply_to)) in heads.iter().enumerate() {
        let out = Out::Deliver {
            seq: i as u64 + 1,
            acked: 0,
            sub_id: 1,
            shared: crate::outbox::Shared::new(
                DeliverHead::new(topic, from, reply_to, &[]),
                Bytes::from_static(b"x"),
            ),
        };
        j.sent("sub", &out);
    }
    let mut buf = BytesMut::new();
    j.take_encoded(&mut buf).expect("no overflow");
    let mut decoder = ChangeDecoder::default();
    let mut n = 0;
    while let Some(body) = split_frame(&mut buf, usize::MAX).expect("whole frames") {
        let hand = decoder.decode(body.clone()).expect("decodes");
        assert_eq!(plain_frame(hand), plain_frame(by_prost(&body).unwrap()));
        n += 1;
    }
    assert_eq!(n, heads.len());
}
