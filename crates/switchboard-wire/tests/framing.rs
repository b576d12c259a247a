//! Stream framing: partial reads, size limits, truncation and garbage.

mod common;

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{BufMut, Bytes, BytesMut};
use futures::StreamExt;
use proptest::prelude::*;
use prost::Message;
use switchboard_wire::{
    decode_frame, encode_frame, proto, Direction, ErrorCode, Frame, FrameCodec, WireError,
    DEFAULT_MAX_FRAME, LENGTH_PREFIX_LEN,
};
use tokio::io::{AsyncRead, ReadBuf};
use tokio_util::codec::{Decoder, Encoder, FramedRead};

// ---- fixtures -------------------------------------------------------------

fn encode_all(frames: &[Frame]) -> Bytes {
    let mut codec = FrameCodec::default();
    let mut buf = BytesMut::new();
    for frame in frames {
        codec.encode(frame, &mut buf).unwrap();
    }
    buf.freeze()
}

/// A publish frame whose protobuf encoding is exactly `len` bytes (`len` of
/// at least 6).
fn publish_of_encoded_len(len: usize) -> Frame {
    // Varint length fields make some sizes unreachable with one layout, so
    // try a few.
    for seq in [0, 1] {
        for topic_len in 1..=3 {
            for payload_len in (0..=len).rev() {
                let frame = Frame::publish("t".repeat(topic_len), vec![0xA5; payload_len]);
                let frame = frame.with_seq(seq);
                if frame.encoded_len() == len {
                    return frame;
                }
            }
        }
    }
    panic!("cannot build a frame of exactly {len} bytes")
}

/// Frames of several kinds and sizes, nested ones included.
fn assorted_frames() -> Vec<Frame> {
    let snapshot = Frame::from(proto::Snapshot {
        epoch: 3,
        repl_seq: 40,
        clients: vec![proto::ClientState {
            info: Some(proto::ClientInfo {
                client_id: "alpha".into(),
                transport: "tcp".into(),
                ..Default::default()
            }),
            unacked: vec![Frame::publish("a.b", "one").with_seq(5), Frame::ack(4)],
            ..Default::default()
        }],
        config: [("limit".to_string(), "10".to_string())].into(),
        ..Default::default()
    });
    let change = Frame::from(proto::Change {
        repl_seq: 41,
        op: Some(proto::change::Op::ClientFrame(Box::new(
            proto::ClientFrame {
                client_id: "alpha".into(),
                frame: Some(Box::new(Frame::request(1, "beta", "ping"))),
            },
        ))),
    });
    let session = Frame::from(proto::Session {
        peer: "cpe-1".into(),
        session_id: 2,
        body: Some(proto::session::Body::Inform(proto::Inform {
            device_id: "cpe-1".into(),
            events: vec![proto::Event {
                code: "1 BOOT".into(),
                command_key: String::new(),
            }],
            parameters: [("Device.Uptime".to_string(), "12".to_string())].into(),
            ..Default::default()
        })),
    });
    vec![
        Frame::ok(1),
        // An empty body: the prefix says 0 bytes.
        Frame::default(),
        Frame::publish("orders.created", vec![7u8; 64]).with_seq(u64::MAX),
        snapshot,
        Frame::direct("beta", vec![1u8; 300]),
        change,
        session,
        Frame::error(9, ErrorCode::NotFound, "no such key; check the name"),
    ]
}

/// Drains every complete frame from `buf`.
fn drain(codec: &mut FrameCodec, buf: &mut BytesMut, out: &mut Vec<Frame>) {
    for _ in 0..10_000 {
        match codec.decode(buf).unwrap() {
            Some(frame) => out.push(frame),
            None => return,
        }
    }
    panic!("decoder produced frames without end");
}

// ---- split at every byte boundary ----------------------------------------

#[test]
fn every_frame_alone_split_at_every_boundary() {
    for frame in assorted_frames() {
        let wire = encode_all(std::slice::from_ref(&frame));
        for split in 0..=wire.len() {
            let mut codec = FrameCodec::default();
            let mut buf = BytesMut::new();
            buf.extend_from_slice(&wire[..split]);
            let first = codec.decode(&mut buf).unwrap();
            if split < wire.len() {
                assert_eq!(first, None, "split {split} of {}", wire.len());
                assert_eq!(buf.len(), split, "a partial frame is left untouched");
                buf.extend_from_slice(&wire[split..]);
                assert_eq!(codec.decode(&mut buf).unwrap(), Some(frame.clone()));
            } else {
                assert_eq!(first, Some(frame.clone()));
            }
            assert!(buf.is_empty());
            assert_eq!(codec.decode_eof(&mut buf).unwrap(), None);
        }
    }
}

#[test]
fn multi_frame_stream_split_at_every_boundary() {
    let frames = assorted_frames();
    let wire = encode_all(&frames);
    for split in 0..=wire.len() {
        let mut codec = FrameCodec::default();
        let mut buf = BytesMut::new();
        let mut out = Vec::new();
        buf.extend_from_slice(&wire[..split]);
        drain(&mut codec, &mut buf, &mut out);
        buf.extend_from_slice(&wire[split..]);
        drain(&mut codec, &mut buf, &mut out);
        assert_eq!(codec.decode_eof(&mut buf).unwrap(), None);
        assert_eq!(out, frames, "split at {split}");
    }
}

#[test]
fn small_stream_split_at_every_pair_of_boundaries() {
    let frames = vec![
        Frame::from(proto::Ping { nonce: 3 }),
        Frame::default().with_seq(1),
        Frame::publish("x", "yz"),
        Frame::ok(300),
    ];
    let wire = encode_all(&frames);
    for a in 0..=wire.len() {
        for b in a..=wire.len() {
            let mut codec = FrameCodec::default();
            let mut buf = BytesMut::new();
            let mut out = Vec::new();
            for piece in [&wire[..a], &wire[a..b], &wire[b..]] {
                buf.extend_from_slice(piece);
                drain(&mut codec, &mut buf, &mut out);
            }
            assert_eq!(codec.decode_eof(&mut buf).unwrap(), None);
            assert_eq!(out, frames, "splits at {a} and {b}");
        }
    }
}

#[test]
fn byte_by_byte_yields_each_frame_exactly_at_its_last_byte() {
    let frames = assorted_frames();
    let wire = encode_all(&frames);
    let mut ends = Vec::new();
    let mut end = 0;
    for frame in &frames {
        end += frame.wire_len();
        ends.push(end);
    }

    let mut codec = FrameCodec::default();
    let mut buf = BytesMut::new();
    let mut out = Vec::new();
    let mut produced_at = Vec::new();
    for (i, byte) in wire.iter().enumerate() {
        buf.put_u8(*byte);
        let before = out.len();
        drain(&mut codec, &mut buf, &mut out);
        for _ in before..out.len() {
            produced_at.push(i + 1);
        }
    }
    assert_eq!(out, frames);
    assert_eq!(
        produced_at, ends,
        "each frame comes out as soon as it is complete"
    );
}

/// An `AsyncRead` that hands out `data` in chunks of scripted sizes, and
/// returns `Pending` (after waking itself) before every other chunk, like a
/// socket on which bytes trickle in.
struct Trickle {
    data: Bytes,
    sizes: Vec<usize>,
    next_size: usize,
    pending_next: bool,
}

impl Trickle {
    fn new(data: Bytes, sizes: Vec<usize>) -> Self {
        assert!(sizes.iter().all(|&s| s > 0));
        Trickle {
            data,
            sizes,
            next_size: 0,
            pending_next: true,
        }
    }
}

impl AsyncRead for Trickle {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if self.pending_next && !self.data.is_empty() {
            self.pending_next = false;
            cx.waker().wake_by_ref();
            return Poll::Pending;
        }
        self.pending_next = true;
        let size = self.sizes[self.next_size % self.sizes.len()];
        self.next_size += 1;
        let n = size.min(self.data.len()).min(buf.remaining());
        let chunk = self.data.split_to(n);
        buf.put_slice(&chunk);
        Poll::Ready(Ok(()))
    }
}

fn read_all(reader: Trickle, codec: FrameCodec) -> Vec<Result<Frame, WireError>> {
    futures::executor::block_on(FramedRead::new(reader, codec).collect::<Vec<_>>())
}

#[test]
fn framed_read_over_one_byte_reads() {
    let frames = assorted_frames();
    let results = read_all(
        Trickle::new(encode_all(&frames), vec![1]),
        FrameCodec::default(),
    );
    let out: Vec<Frame> = results.into_iter().map(Result::unwrap).collect();
    assert_eq!(out, frames);
}

#[test]
fn framed_read_over_every_fixed_chunk_size() {
    let frames = assorted_frames();
    let wire = encode_all(&frames);
    for size in 1..=wire.len() + 1 {
        let results = read_all(
            Trickle::new(wire.clone(), vec![size]),
            FrameCodec::default(),
        );
        let out: Vec<Frame> = results.into_iter().map(Result::unwrap).collect();
        assert_eq!(out, frames, "chunks of {size}");
    }
}

#[test]
fn framed_read_reports_truncation_at_eof() {
    let frames = assorted_frames();
    let wire = encode_all(&frames);
    let cut = wire.len() - 3;
    let results = read_all(
        Trickle::new(wire.slice(..cut), vec![2, 5]),
        FrameCodec::default(),
    );
    let (last, complete) = results.split_last().unwrap();
    let complete: Vec<Frame> = complete
        .iter()
        .map(|r| r.as_ref().unwrap().clone())
        .collect();
    assert_eq!(complete, frames[..frames.len() - 1]);
    let last_len = frames.last().unwrap().wire_len();
    match last {
        Err(WireError::Truncated { buffered }) => assert_eq!(*buffered, last_len - 3),
        other => panic!("expected a truncation error, got {other:?}"),
    }
}

#[test]
fn framed_read_stops_at_an_oversized_prefix() {
    let mut wire = BytesMut::new();
    wire.extend_from_slice(&encode_all(&[Frame::ok(1)]));
    wire.put_u32(0xFFFF_FFFF);
    wire.put_slice(&[0u8; 32]);
    let results = read_all(
        Trickle::new(wire.freeze(), vec![3]),
        FrameCodec::with_max_frame(1024),
    );
    assert_eq!(results.len(), 2, "{results:?}");
    assert_eq!(results[0].as_ref().unwrap(), &Frame::ok(1));
    assert!(matches!(
        results[1],
        Err(WireError::FrameTooLarge {
            direction: Direction::Inbound,
            len: 0xFFFF_FFFF,
            limit: 1024
        })
    ));
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn framed_read_with_random_chunking(
        frames in proptest::collection::vec(common::frame_at_depth(1), 0..5),
        sizes in proptest::collection::vec(1usize..40, 1..8),
    ) {
        let results = read_all(Trickle::new(encode_all(&frames), sizes), FrameCodec::default());
        let out: Vec<Frame> = results.into_iter().map(Result::unwrap).collect();
        prop_assert_eq!(out, frames);
    }

    #[test]
    fn random_split_points_decode_the_same(
        frames in proptest::collection::vec(common::frame(), 1..4),
        cuts in proptest::collection::vec(any::<prop::sample::Index>(), 0..6),
    ) {
        let wire = encode_all(&frames);
        let mut cuts: Vec<usize> = cuts.iter().map(|i| i.index(wire.len() + 1)).collect();
        cuts.push(wire.len());
        cuts.sort_unstable();
        let mut codec = FrameCodec::default();
        let mut buf = BytesMut::new();
        let mut out = Vec::new();
        let mut at = 0;
        for cut in cuts {
            buf.extend_from_slice(&wire[at..cut]);
            at = cut;
            drain(&mut codec, &mut buf, &mut out);
        }
        prop_assert_eq!(codec.decode_eof(&mut buf).unwrap(), None);
        prop_assert_eq!(out, frames);
    }
}

// ---- size limits ----------------------------------------------------------

/// Capacity a buffer may have after a rejected prefix: what it started with.
const SMALL: usize = 64;

fn prefix_only(len: u32, extra: &[u8]) -> BytesMut {
    let mut buf = BytesMut::with_capacity(SMALL);
    buf.put_u32(len);
    buf.put_slice(extra);
    buf
}

#[test]
fn prefix_of_u32_max_is_rejected_without_allocating() {
    for codec in [FrameCodec::default(), FrameCodec::with_max_frame(100)] {
        let limit = codec.inbound_limit();
        for extra in [&[][..], &[1, 2, 3][..]] {
            let mut codec = codec.clone();
            let mut buf = prefix_only(0xFFFF_FFFF, extra);
            let err = codec.decode(&mut buf).unwrap_err();
            match err {
                WireError::FrameTooLarge {
                    direction,
                    len,
                    limit: l,
                } => {
                    assert_eq!(direction, Direction::Inbound);
                    assert_eq!(len, 0xFFFF_FFFF);
                    assert_eq!(l, limit);
                }
                other => panic!("expected FrameTooLarge, got {other:?}"),
            }
            assert!(
                buf.capacity() <= SMALL,
                "capacity grew to {} after a hostile prefix",
                buf.capacity()
            );
            // decode_eof must reject it the same way rather than call it
            // truncated.
            let mut buf = prefix_only(0xFFFF_FFFF, extra);
            assert!(matches!(
                codec.decode_eof(&mut buf),
                Err(WireError::FrameTooLarge { .. })
            ));
            assert!(buf.capacity() <= SMALL);
        }
    }
}

#[test]
fn one_over_the_limit_is_rejected_without_allocating() {
    for limit in [0usize, 1, 100, 4096, DEFAULT_MAX_FRAME] {
        let mut codec = FrameCodec::with_max_frame(limit);
        let mut buf = prefix_only((limit + 1) as u32, &[0x08]);
        match codec.decode(&mut buf) {
            Err(WireError::FrameTooLarge {
                direction: Direction::Inbound,
                len,
                limit: l,
            }) => {
                assert_eq!(len, limit as u64 + 1);
                assert_eq!(l, limit);
            }
            other => panic!("limit {limit}: expected FrameTooLarge, got {other:?}"),
        }
        assert!(
            buf.capacity() <= SMALL,
            "limit {limit}: capacity {}",
            buf.capacity()
        );
    }
}

#[test]
fn frame_of_exactly_the_limit_is_accepted() {
    for limit in [0usize, 6, 100, 131, 70_000] {
        let frame = if limit == 0 {
            Frame::default()
        } else {
            publish_of_encoded_len(limit)
        };
        assert_eq!(frame.encoded_len(), limit);
        let mut codec = FrameCodec::with_max_frame(limit);
        let mut buf = BytesMut::new();
        codec.encode(&frame, &mut buf).unwrap();
        assert_eq!(buf.len(), LENGTH_PREFIX_LEN + limit);
        assert_eq!(codec.decode(&mut buf).unwrap(), Some(frame.clone()));

        let wire = encode_frame(&frame, limit).unwrap();
        let body = wire.slice(LENGTH_PREFIX_LEN..);
        assert_eq!(decode_frame(body, limit).unwrap(), frame);
    }
}

#[test]
fn partial_frame_reserves_at_most_about_one_frame() {
    let limit = 100_000;
    let mut codec = FrameCodec::with_max_frame(limit);
    let mut buf = prefix_only(limit as u32, &[0x0A]);
    assert_eq!(codec.decode(&mut buf).unwrap(), None);
    let cap = buf.capacity();
    assert!(cap >= LENGTH_PREFIX_LEN + limit, "reserved {cap}");
    assert!(cap <= 2 * (LENGTH_PREFIX_LEN + limit), "reserved {cap}");
    // Asking again does not grow it further.
    assert_eq!(codec.decode(&mut buf).unwrap(), None);
    assert_eq!(buf.capacity(), cap);
}

#[test]
fn raising_the_inbound_limit_lets_a_buffered_frame_through() {
    let frame = publish_of_encoded_len(500);
    let mut buf = BytesMut::from(&encode_all(std::slice::from_ref(&frame))[..]);
    let mut codec = FrameCodec::with_max_frame(100);
    assert!(matches!(
        codec.decode(&mut buf),
        Err(WireError::FrameTooLarge { len: 500, .. })
    ));
    codec.set_max_inbound(500);
    assert_eq!(codec.inbound_limit(), 500);
    assert_eq!(codec.decode(&mut buf).unwrap(), Some(frame));
}

#[test]
fn outbound_limit_is_enforced_by_the_encoder() {
    let frame = publish_of_encoded_len(1000);
    let mut codec = FrameCodec::default().max_outbound(999).max_inbound(10);
    assert_eq!(codec.outbound_limit(), 999);
    let mut dst = BytesMut::new();
    dst.put_slice(b"earlier");
    match codec.encode(&frame, &mut dst) {
        Err(WireError::FrameTooLarge {
            direction: Direction::Outbound,
            len: 1000,
            limit: 999,
        }) => {}
        other => panic!("expected outbound FrameTooLarge, got {other:?}"),
    }
    assert_eq!(&dst[..], b"earlier", "nothing written on failure");
    // The inbound limit plays no part in encoding.
    codec.set_max_outbound(1000);
    codec.encode(&frame, &mut dst).unwrap();
    assert_eq!(dst.len(), 7 + LENGTH_PREFIX_LEN + 1000);

    assert!(matches!(
        encode_frame(&frame, 999),
        Err(WireError::FrameTooLarge {
            direction: Direction::Outbound,
            ..
        })
    ));
    assert_eq!(encode_frame(&frame, 1000).unwrap().len(), 1004);
}

#[test]
fn decode_frame_enforces_the_inbound_limit() {
    let frame = publish_of_encoded_len(300);
    let body = Bytes::from(frame.encode_to_vec());
    assert!(matches!(
        decode_frame(body.clone(), 299),
        Err(WireError::FrameTooLarge {
            direction: Direction::Inbound,
            len: 300,
            limit: 299
        })
    ));
    assert_eq!(decode_frame(body, 300).unwrap(), frame);
}

#[test]
fn errors_map_to_protocol_codes_and_read_as_advice() {
    let too_large = FrameCodec::with_max_frame(8)
        .decode(&mut prefix_only(9, &[]))
        .unwrap_err();
    assert_eq!(too_large.code(), ErrorCode::LimitExceeded);
    let text = too_large.to_string();
    assert!(text.contains('9') && text.contains('8'), "{text}");

    let truncated = FrameCodec::default()
        .decode_eof(&mut BytesMut::from(&[0u8, 0, 0][..]))
        .unwrap_err();
    assert_eq!(truncated.code(), ErrorCode::BadFrame);

    let malformed = decode_frame(Bytes::from_static(&[0xFF]), 10).unwrap_err();
    assert!(matches!(malformed, WireError::Decode(_)));
    assert_eq!(malformed.code(), ErrorCode::BadFrame);

    let io = WireError::from(io::Error::other("reset"));
    assert_eq!(io.code(), ErrorCode::Internal);

    for err in [too_large, truncated, malformed, io] {
        let text = err.to_string();
        assert!(text.starts_with(|c: char| c.is_lowercase()), "{text}");
        assert!(!text.ends_with('.'), "{text}");
    }
}

// ---- truncation at end of stream ------------------------------------------

#[test]
fn empty_stream_at_eof_is_a_clean_end() {
    let mut codec = FrameCodec::default();
    assert_eq!(codec.decode_eof(&mut BytesMut::new()).unwrap(), None);
    assert_eq!(codec.decode(&mut BytesMut::new()).unwrap(), None);
}

#[test]
fn every_proper_prefix_of_a_frame_is_truncated_at_eof() {
    for frame in assorted_frames() {
        let wire = encode_all(std::slice::from_ref(&frame));
        for cut in 1..wire.len() {
            let mut buf = BytesMut::from(&wire[..cut]);
            match FrameCodec::default().decode_eof(&mut buf) {
                Err(WireError::Truncated { buffered }) => assert_eq!(buffered, cut),
                other => panic!("cut at {cut}/{}: got {other:?}", wire.len()),
            }
        }
    }
}

#[test]
fn complete_frames_before_a_truncated_tail_still_come_out() {
    let frames = assorted_frames();
    let mut wire = BytesMut::from(&encode_all(&frames)[..]);
    wire.put_slice(&[0, 0]);
    let mut codec = FrameCodec::default();
    let mut out = Vec::new();
    for _ in 0..=frames.len() {
        match codec.decode_eof(&mut wire) {
            Ok(Some(frame)) => out.push(frame),
            Ok(None) => panic!("a truncated tail is not a clean end"),
            Err(WireError::Truncated { buffered }) => {
                assert_eq!(buffered, 2);
                break;
            }
            Err(other) => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(out, frames);
}

// ---- garbage ----------------------------------------------------------------

#[test]
fn malformed_bodies_are_decode_errors() {
    let bodies: Vec<(&str, Vec<u8>)> = vec![
        ("bad wire type 7", vec![0x0F]),
        ("field number 0", vec![0x00, 0x01]),
        (
            "varint too long",
            vec![
                0x08, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0x01,
            ],
        ),
        ("truncated varint", vec![0x08, 0x80]),
        ("length beyond body", vec![0xE2, 0x02, 0x05, 0x12]),
        // Publish{topic: [0xFF]} is not UTF-8.
        (
            "invalid utf-8 string",
            vec![0xE2, 0x02, 0x03, 0x12, 0x01, 0xFF],
        ),
        ("kind field cut after its key", vec![0xE2, 0x02]),
        (
            "varint wire type for a message kind",
            vec![0xE0, 0x02, 0x01],
        ),
    ];
    for (what, body) in bodies {
        let mut buf = BytesMut::new();
        buf.put_u32(body.len() as u32);
        buf.put_slice(&body);
        match FrameCodec::default().decode(&mut buf) {
            Err(WireError::Decode(_)) => {}
            other => panic!("{what}: expected a decode error, got {other:?}"),
        }
        assert!(
            matches!(
                decode_frame(Bytes::from(body), 1024),
                Err(WireError::Decode(_))
            ),
            "{what}"
        );
    }
}

#[test]
fn deeply_nested_frames_are_refused_not_overflowed() {
    // Change{ClientFrame{frame: Change{...}}} nested far beyond prost's
    // recursion limit, built from the inside out as raw bytes.
    let mut inner: Vec<u8> = Vec::new();
    for _ in 0..1_000 {
        // ClientFrame { frame (2): inner }
        let mut client_frame = Vec::new();
        prost::encoding::bytes::encode(2, &inner, &mut client_frame);
        // Change { client_frame (10): ... }
        let mut change = Vec::new();
        prost::encoding::bytes::encode(10, &client_frame, &mut change);
        // Frame { change (92): ... }
        let mut frame = Vec::new();
        prost::encoding::bytes::encode(92, &change, &mut frame);
        inner = frame;
    }
    let mut buf = BytesMut::new();
    buf.put_u32(inner.len() as u32);
    buf.put_slice(&inner);
    assert!(matches!(
        FrameCodec::default().decode(&mut buf),
        Err(WireError::Decode(_))
    ));
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn random_bytes_never_panic(
        bytes in proptest::collection::vec(any::<u8>(), 0..600),
        limit in prop_oneof![Just(DEFAULT_MAX_FRAME), 0usize..700],
    ) {
        let mut codec = FrameCodec::with_max_frame(limit);
        let mut buf = BytesMut::from(&bytes[..]);
        let mut frames = 0;
        loop {
            match codec.decode(&mut buf) {
                Ok(Some(_)) => {
                    frames += 1;
                    // Each frame consumes at least its prefix.
                    prop_assert!(frames <= bytes.len() / LENGTH_PREFIX_LEN);
                }
                Ok(None) => {
                    // Only an incomplete frame remains, and within the limit.
                    if buf.len() >= LENGTH_PREFIX_LEN {
                        let len = u32::from_be_bytes(buf[..4].try_into().unwrap()) as usize;
                        prop_assert!(len <= limit);
                        prop_assert!(buf.len() < LENGTH_PREFIX_LEN + len);
                    }
                    match codec.decode_eof(&mut buf) {
                        Ok(None) => prop_assert!(buf.is_empty()),
                        Err(WireError::Truncated { buffered }) => {
                            prop_assert_eq!(buffered, buf.len());
                            prop_assert!(buffered > 0);
                        }
                        other => prop_assert!(false, "decode_eof after None gave {:?}", other),
                    }
                    break;
                }
                Err(WireError::FrameTooLarge { len, limit: l, .. }) => {
                    prop_assert_eq!(l, limit);
                    prop_assert!(len > limit as u64);
                    prop_assert!(buf.capacity() <= bytes.len().max(LENGTH_PREFIX_LEN));
                    break;
                }
                Err(WireError::Decode(_)) => break,
                Err(other) => prop_assert!(false, "unexpected error {:?}", other),
            }
        }
        let _ = decode_frame(Bytes::from(bytes), limit);
    }

    #[test]
    fn random_body_behind_a_random_prefix_never_panics(
        prefix in prop_oneof![any::<u32>(), 0u32..64],
        body in proptest::collection::vec(any::<u8>(), 0..80),
    ) {
        let mut buf = BytesMut::with_capacity(SMALL + body.len());
        buf.put_u32(prefix);
        buf.put_slice(&body);
        let mut codec = FrameCodec::with_max_frame(1 << 20);
        match codec.decode_eof(&mut buf) {
            Ok(Some(frame)) => {
                prop_assert!(prefix as usize <= body.len());
                // What decoded re-encodes within the same limit.
                prop_assert!(encode_frame(&frame, 1 << 20).is_ok());
            }
            Ok(None) => prop_assert!(false, "a non-empty buffer is never a clean end"),
            Err(WireError::Truncated { .. }) => prop_assert!(prefix as usize > body.len()),
            Err(WireError::FrameTooLarge { .. }) => {
                prop_assert!(prefix as usize > 1 << 20);
                prop_assert!(buf.capacity() <= SMALL + body.len());
            }
            Err(WireError::Decode(_)) => prop_assert!(prefix as usize <= body.len()),
            Err(other) => prop_assert!(false, "unexpected error {:?}", other),
        }
    }

}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(400))]

    #[test]
    fn mutated_valid_frames_never_panic(
        frame in common::frame(),
        flips in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..4),
    ) {
        let mut body = frame.encode_to_vec();
        if body.is_empty() {
            return Ok(());
        }
        for (at, byte) in flips {
            let i = at.index(body.len());
            body[i] ^= byte;
        }
        if let Ok(decoded) = decode_frame(Bytes::from(body), DEFAULT_MAX_FRAME) {
            // Whatever decoded is a well-formed frame again.
            let again = decode_frame(Bytes::from(decoded.encode_to_vec()), DEFAULT_MAX_FRAME);
            prop_assert_eq!(again.unwrap(), decoded);
        }
    }
}
