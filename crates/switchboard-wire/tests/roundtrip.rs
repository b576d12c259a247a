//! Every frame kind survives encoding and decoding unchanged; kind names.

mod common;

use std::collections::BTreeSet;

use bytes::{BufMut, Bytes, BytesMut};
use proptest::prelude::*;
use proptest::strategy::ValueTree;
use proptest::test_runner::TestRunner;
use prost::Message;
use switchboard_wire::{
    decode_frame, encode_frame, proto, ErrorCode, Frame, FrameCodec, FrameExt, Kind,
    DEFAULT_MAX_FRAME, KIND_NAMES, LENGTH_PREFIX_LEN,
};
use tokio_util::codec::{Decoder, Encoder};

use common::{kind_index, one_of_every_kind, KIND_COUNT};

/// A `seq` or `acked`: any value, or one of the small ones a connection
/// numbers first (varints of one to three bytes, each with its own path
/// in the hand decoder).
fn varint_value() -> impl Strategy<Value = u64> {
    prop_oneof![
        any::<u64>(),
        0u64..128,
        128u64..1 << 14,
        1u64 << 14..1 << 21
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn codec_round_trips_every_kind(frame in common::frame()) {
        let mut codec = FrameCodec::default();
        let mut buf = BytesMut::new();
        codec.encode(&frame, &mut buf).unwrap();
        prop_assert_eq!(buf.len(), frame.wire_len());
        let announced = u32::from_be_bytes(buf[..4].try_into().unwrap()) as usize;
        prop_assert_eq!(announced, frame.encoded_len());
        // The length a sender checks before queueing is prost's too.
        prop_assert_eq!(switchboard_wire::frame_len(&frame), frame.encoded_len());
        // Kinds with a hand encoder (`Publish`, `Ok`) write prost's bytes.
        prop_assert_eq!(&buf[4..], &frame.encode_to_vec()[..]);

        let decoded = codec.decode(&mut buf).unwrap();
        prop_assert_eq!(decoded.as_ref(), Some(&frame));
        prop_assert!(buf.is_empty(), "{} bytes left over", buf.len());
        prop_assert!(codec.decode_eof(&mut buf).unwrap().is_none());
    }

    #[test]
    fn owned_encoder_matches_borrowed_encoder(frame in common::frame()) {
        let mut codec = FrameCodec::default();
        let mut by_ref = BytesMut::new();
        let mut by_value = BytesMut::new();
        codec.encode(&frame, &mut by_ref).unwrap();
        codec.encode(frame, &mut by_value).unwrap();
        prop_assert_eq!(by_ref, by_value);
    }

    #[test]
    fn helper_functions_round_trip_every_kind(frame in common::frame()) {
        let wire = encode_frame(&frame, DEFAULT_MAX_FRAME).unwrap();
        prop_assert_eq!(wire.len(), frame.wire_len());
        // The helper output is exactly what the codec would have written.
        let mut codec_out = BytesMut::new();
        FrameCodec::default().encode(&frame, &mut codec_out).unwrap();
        prop_assert_eq!(&wire[..], &codec_out[..]);

        // The body without the prefix is what travels in a WebSocket message.
        let body = wire.slice(LENGTH_PREFIX_LEN..);
        let decoded = decode_frame(body.clone(), body.len()).unwrap();
        prop_assert_eq!(&decoded, &frame);
        prop_assert_eq!(decoded.kind_name(), frame.kind_name());
    }

    /// Publishes are decoded by hand too (by hubs); on any bytes, even
    /// damaged ones, the result is prost's, from a slice or shared bytes.
    #[test]
    fn hand_decoded_publishes_match_prost(
        p in common::publish(),
        seq in varint_value(),
        acked in varint_value(),
        damage in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 0..3),
        cut in any::<prop::sample::Index>(),
        truncate in any::<bool>(),
    ) {
        let frame = Frame { seq, acked, kind: Some(Kind::Publish(p)) };
        let body = damaged(&frame, &damage, truncate.then_some(cut));
        let prost = Frame::decode(&body[..]).ok();
        let shared = Bytes::from(body.clone());
        for f in [
            switchboard_wire::decode_publish(&body, None),
            switchboard_wire::decode_publish(&shared, Some(&shared)),
        ]
        .into_iter()
        .flatten()
        {
            prop_assert_eq!(Some(f), prost.clone());
        }
        // What a hub decodes by hand passes a client frame's check too:
        // the hub skips that check for it.
        if let Some(f) = switchboard_wire::decode_client_publish(&body, None) {
            prop_assert!(switchboard_wire::peek::check_client_frame(&body).is_ok());
            prop_assert_eq!(Some(f), prost.clone());
        }
        prop_assert_eq!(decode_frame(shared, usize::MAX).ok(), prost.clone());
        // Varints of 10 bytes (values from 2^63) are left to prost.
        let short = |v: u64| v < 1 << 63;
        let (id, headers) = match &frame.kind {
            Some(Kind::Publish(p)) => (p.id, p.headers.len()),
            _ => (0, 0),
        };
        // Publishes with headers are left to prost too.
        if damage.is_empty() && !truncate && short(seq) && short(acked) && short(id) && headers == 0 {
            prop_assert_eq!(switchboard_wire::decode_publish(&body, None), Some(frame));
        }
    }

    /// Publishes are encoded by hand; the bytes are prost's.
    #[test]
    fn hand_encoded_publishes_are_prosts_bytes(
        id in any::<u64>(),
        topic in common::text(),
        from in common::text(),
        payload in common::payload(),
        reply_to in common::text(),
        seq in any::<u64>(),
        acked in any::<u64>(),
    ) {
        let frame = Frame {
            seq,
            acked,
            kind: Some(Kind::Publish(proto::Publish { id, topic, from, payload, reply_to, ..Default::default() })),
        };
        let mut ours = BytesMut::new();
        FrameCodec::with_max_frame(usize::MAX).encode(&frame, &mut ours).unwrap();
        let mut want = BytesMut::new();
        want.put_u32(frame.encoded_len() as u32);
        want.extend_from_slice(&frame.encode_to_vec());
        prop_assert_eq!(&ours[..], &want[..]);
        prop_assert_eq!(switchboard_wire::frame_len(&frame), frame.encoded_len());
        // The outbound limit applies as to any frame.
        let mut small = FrameCodec::with_max_frame(frame.encoded_len() - 1);
        prop_assert!(small.encode(&frame, &mut BytesMut::new()).is_err());
    }

    /// Deliveries are decoded by hand (see `fast.rs`); on any bytes, even
    /// damaged ones, the result is prost's.
    #[test]
    fn hand_decoded_deliveries_match_prost(
        d in common::deliver(),
        seq in varint_value(),
        acked in varint_value(),
        damage in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 0..3),
        cut in any::<prop::sample::Index>(),
        truncate in any::<bool>(),
    ) {
        let frame = Frame { seq, acked, kind: Some(Kind::Deliver(d)) };
        let body = Bytes::from(damaged(&frame, &damage, truncate.then_some(cut)));
        let ours = decode_frame(body.clone(), usize::MAX);
        let prost = Frame::decode(body.clone());
        match (ours, prost) {
            (Ok(a), Ok(b)) => prop_assert_eq!(a, b),
            (Err(_), Err(_)) => {}
            (a, b) => prop_assert!(false, "ours {:?}, prost {:?}", a, b),
        }
        if damage.is_empty() && !truncate {
            let mut buf = BytesMut::new();
            buf.put_u32(body.len() as u32);
            buf.extend_from_slice(&body);
            let decoded = FrameCodec::with_max_frame(usize::MAX).decode(&mut buf).unwrap();
            prop_assert_eq!(decoded, Some(frame));
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    #[test]
    fn several_frames_in_one_buffer_come_out_in_order(
        frames in proptest::collection::vec(common::frame_at_depth(1), 0..6)
    ) {
        let mut codec = FrameCodec::default();
        let mut buf = BytesMut::new();
        for frame in &frames {
            codec.encode(frame, &mut buf).unwrap();
        }
        let mut out = Vec::new();
        while let Some(frame) = codec.decode(&mut buf).unwrap() {
            out.push(frame);
            prop_assert!(out.len() <= frames.len());
        }
        prop_assert!(codec.decode_eof(&mut buf).unwrap().is_none());
        prop_assert_eq!(out, frames);
    }
}

#[test]
fn strategy_produces_every_kind() {
    let mut runner = TestRunner::deterministic();
    // Depth 0 draws kinds exactly as deeper levels do, only without nesting,
    // which keeps this fast.
    let strategy = common::kind_at_depth(0);
    let mut seen = [0usize; KIND_COUNT];
    for _ in 0..1000 {
        seen[kind_index(&strategy.new_tree(&mut runner).unwrap().current())] += 1;
    }
    let missing: Vec<&str> = seen
        .iter()
        .zip(KIND_NAMES)
        .filter(|(count, _)| **count == 0)
        .map(|(_, name)| *name)
        .collect();
    assert!(missing.is_empty(), "strategy never produced {missing:?}");
}

#[test]
fn strategy_nests_frames_and_leaves_some_without_kind() {
    let mut runner = TestRunner::deterministic();
    let strategy = common::frame();
    let (mut kindless, mut in_snapshot, mut in_change) = (0, 0, 0);
    for _ in 0..2000 {
        match strategy.new_tree(&mut runner).unwrap().current().kind {
            None => kindless += 1,
            Some(Kind::Snapshot(s)) if s.clients.iter().any(|c| !c.unacked.is_empty()) => {
                in_snapshot += 1
            }
            Some(Kind::Change(c)) => match c.op {
                Some(proto::change::Op::ClientFrame(f) | proto::change::Op::Sent(f))
                    if f.frame.is_some() =>
                {
                    in_change += 1
                }
                _ => {}
            },
            _ => {}
        }
    }
    assert!(
        kindless > 0,
        "strategy never produced a frame without a kind"
    );
    assert!(in_snapshot > 0, "no snapshot carried nested frames");
    assert!(in_change > 0, "no change carried a nested frame");
}

#[test]
fn session_strategy_produces_every_body() {
    let mut runner = TestRunner::deterministic();
    let strategy = common::session_body();
    let mut bodies = BTreeSet::new();
    for _ in 0..400 {
        let body = strategy.new_tree(&mut runner).unwrap().current();
        // The oneof field number identifies the variant.
        let encoded = proto::Session {
            body: Some(body),
            ..Default::default()
        }
        .encode_to_vec();
        let mut b = &encoded[..];
        let key = prost::encoding::decode_varint(&mut b).unwrap();
        bodies.insert(key >> 3);
    }
    assert_eq!(bodies, (10..=17).collect(), "session bodies seen");
}

/// `frame` encoded, with bytes overwritten at `damage` and cut at `cut`.
fn damaged(
    frame: &Frame,
    damage: &[(prop::sample::Index, u8)],
    cut: Option<prop::sample::Index>,
) -> Vec<u8> {
    let mut body = frame.encode_to_vec();
    for (at, byte) in damage {
        let i = at.index(body.len());
        body[i] = *byte;
    }
    if let Some(cut) = cut {
        body.truncate(cut.index(body.len() + 1));
    }
    body
}

/// Field number of a frame's kind, read from its encoding.
fn kind_field_number(frame: &Frame) -> u64 {
    let encoded = Frame {
        seq: 0,
        acked: 0,
        kind: frame.kind.clone(),
    }
    .encode_to_vec();
    let mut b = &encoded[..];
    prost::encoding::decode_varint(&mut b).unwrap() >> 3
}

#[test]
fn kind_names_cover_every_kind_in_proto_order() {
    let mut frames = one_of_every_kind();
    assert_eq!(frames.len(), KIND_COUNT);
    assert_eq!(KIND_NAMES.len(), KIND_COUNT);
    frames.sort_by_key(kind_field_number);

    let names: Vec<&str> = frames.iter().map(Frame::kind_name).collect();
    assert_eq!(names, KIND_NAMES, "kind_name in field-number order");

    let distinct: BTreeSet<&str> = names.iter().copied().collect();
    assert_eq!(distinct.len(), KIND_COUNT, "kind names are distinct");
    assert!(!distinct.contains("unknown"));
    for name in names {
        assert!(
            name.chars().all(|c| c.is_ascii_lowercase() || c == '_'),
            "{name} is not snake_case"
        );
    }
}

#[test]
fn kind_names_follow_the_proto_field_names() {
    // Spot checks against the `.proto` field names.
    let expect = [
        (Frame::publish("t", "p"), "publish"),
        (Frame::from(proto::KvSet::default()), "kv_set"),
        (Frame::from(proto::ProbeReply::default()), "probe_reply"),
        (Frame::from(proto::Change::default()), "change"),
        (
            Frame::from(proto::StatusRequest::default()),
            "status_request",
        ),
    ];
    for (frame, name) in expect {
        assert_eq!(frame.kind_name(), name);
    }
}

#[test]
fn frame_without_kind_is_unknown() {
    let frame = Frame::default().with_seq(7);
    assert_eq!(frame.kind_name(), "unknown");
    let wire = encode_frame(&frame, 64).unwrap();
    let decoded = decode_frame(wire.slice(LENGTH_PREFIX_LEN..), 64).unwrap();
    assert_eq!(decoded.seq, 7);
    assert!(decoded.kind.is_none());
}

#[test]
fn unknown_kind_from_a_newer_peer_decodes_to_no_kind() {
    // seq = 9, then field 250 (not in the oneof) as a length-delimited
    // message, then field 251 as a varint.
    let mut body = BytesMut::new();
    prost::encoding::encode_key(1, prost::encoding::WireType::Varint, &mut body);
    prost::encoding::encode_varint(9, &mut body);
    prost::encoding::encode_key(250, prost::encoding::WireType::LengthDelimited, &mut body);
    prost::encoding::encode_varint(3, &mut body);
    body.put_slice(&[0x08, 0x96, 0x01]);
    prost::encoding::encode_key(251, prost::encoding::WireType::Varint, &mut body);
    prost::encoding::encode_varint(u64::MAX, &mut body);
    let body = body.freeze();

    let frame = decode_frame(body.clone(), 1024).unwrap();
    assert_eq!(frame.seq, 9);
    assert!(frame.kind.is_none());
    assert_eq!(frame.kind_name(), "unknown");

    // Through the stream codec as well.
    let mut buf = BytesMut::new();
    buf.put_u32(body.len() as u32);
    buf.put_slice(&body);
    let frame = FrameCodec::default().decode(&mut buf).unwrap().unwrap();
    assert_eq!(frame.kind_name(), "unknown");
    assert_eq!(frame.seq, 9);
}

#[test]
fn unknown_fields_inside_a_known_kind_are_skipped() {
    let mut publish = proto::Publish {
        id: 5,
        topic: "a.b".into(),
        payload: Bytes::from_static(b"xyz"),
        ..Default::default()
    }
    .encode_to_vec();
    // Field 99 of Publish is unknown.
    prost::encoding::encode_key(99, prost::encoding::WireType::LengthDelimited, &mut publish);
    prost::encoding::encode_varint(2, &mut publish);
    publish.extend_from_slice(b"??");

    let mut body = Vec::new();
    prost::encoding::encode_key(44, prost::encoding::WireType::LengthDelimited, &mut body);
    prost::encoding::encode_varint(publish.len() as u64, &mut body);
    body.extend_from_slice(&publish);

    let frame = decode_frame(Bytes::from(body), 1024).unwrap();
    let expected = Frame::from(proto::Publish {
        id: 5,
        topic: "a.b".into(),
        payload: Bytes::from_static(b"xyz"),
        ..Default::default()
    });
    assert_eq!(frame, expected);
}

#[test]
fn constructors_carry_their_correlation_ids() {
    let cases = [
        (Frame::error(11, ErrorCode::NotFound, "no such key"), 11),
        (Frame::ok(12), 12),
        (Frame::request(13, "b", "q"), 13),
        (Frame::reply(14, "a", "r"), 14),
        (Frame::direct("b", "m"), 0),
        (Frame::publish("t", "m"), 0),
        (Frame::ack(99), 0),
        (Frame::goodbye(ErrorCode::ShuttingDown, "bye"), 0),
    ];
    for (frame, id) in cases {
        assert_eq!(frame.correlation_id(), id, "{}", frame.kind_name());
        let wire = encode_frame(&frame, 1024).unwrap();
        let back = decode_frame(wire.slice(LENGTH_PREFIX_LEN..), 1024).unwrap();
        assert_eq!(back.correlation_id(), id);
        assert_eq!(back, frame);
    }
}

#[test]
fn error_code_from_wire_maps_unknown_values_to_unspecified() {
    assert_eq!(ErrorCode::from_wire(9), ErrorCode::LimitExceeded);
    assert_eq!(ErrorCode::from_wire(0), ErrorCode::Unspecified);
    assert_eq!(ErrorCode::from_wire(12345), ErrorCode::Unspecified);
    assert_eq!(ErrorCode::from_wire(-1), ErrorCode::Unspecified);
}
