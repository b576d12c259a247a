//! Hand-written encoding of the frame a hub sends most, `Deliver`: the
//! encoder beside its decoder ([`fast`](crate::fast)).
//!
//! One publish fans out to many subscribers whose deliveries differ only
//! in the subscription id (and, for reliable clients, `Frame.seq` and
//! `Frame.acked`). The fields they share (topic, publisher, reply-to,
//! headers) are encoded once per publish into a [`DeliverHead`]; each
//! delivery is then a few varints in a stack buffer, the shared head and
//! the shared payload — byte for byte what prost encodes for the same
//! frame (tested against prost here, and by a proptest on any delivery).

use std::ops::Range;
use std::sync::Arc;

use bytes::{BufMut, Bytes, BytesMut};
use prost::encoding::{encoded_len_varint, WireType};

use crate::fast::{envelope, fields, KEY_DELIVER};
use crate::layout::{put_varint, LENGTH_PREFIX_LEN};
use crate::proto;

/// Field number of `Frame.deliver`.
const FRAME_DELIVER_FIELD: u32 = 47;

/// The encoded fields of a `Deliver` that every subscriber of one publish
/// shares, in prost's field order around the payload (field 4): topic and
/// publisher (fields 2 and 3) go before it, reply-to and headers (5 and 6)
/// after it. A delivery is thus byte for byte what prost would encode.
///
/// One shared allocation, cloned per subscriber with one reference count
/// increment; it keeps a queued delivery small.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeliverHead {
    bytes: Arc<[u8]>,
    /// Length of the part that goes before the payload.
    split: usize,
}

impl DeliverHead {
    /// Encodes the shared fields of a delivery of a publish to `topic`
    /// by `from`.
    pub fn new(topic: &str, from: &str, reply_to: &str, headers: &[proto::Header]) -> DeliverHead {
        let headers_len: usize = headers
            .iter()
            .map(|h| prost::encoding::message::encoded_len(6, h))
            .sum();
        let mut buf =
            Vec::with_capacity(topic.len() + from.len() + reply_to.len() + 15 + headers_len);
        put_str(KEY_TOPIC, topic, &mut buf);
        put_str(KEY_FROM, from, &mut buf);
        let split = buf.len();
        put_str(KEY_REPLY_TO, reply_to, &mut buf);
        for h in headers {
            prost::encoding::message::encode(6, h, &mut buf);
        }
        DeliverHead {
            bytes: buf.into(),
            split,
        }
    }

    /// Whether this head holds exactly `topic`, `from` and `reply_to` (as
    /// bytes) and no headers: what [`DeliverHead::new`] would encode for
    /// them, compared without encoding anything.
    pub fn is(&self, topic: &[u8], from: &[u8], reply_to: &[u8]) -> bool {
        let b: &[u8] = &self.bytes;
        let mut pos = 0;
        let same = same_str(b, &mut pos, KEY_TOPIC, topic) && same_str(b, &mut pos, KEY_FROM, from);
        same && pos == self.split && same_str(b, &mut pos, KEY_REPLY_TO, reply_to) && pos == b.len()
    }

    /// Encoded length of the shared fields.
    pub fn len(&self) -> usize {
        self.bytes.len()
    }

    /// Whether no shared field is set.
    pub fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }
}

/// One subscriber's delivery, ready to encode: its numbering, its
/// subscription id, and the head and payload it shares with the other
/// subscribers of the publish.
#[derive(Debug, Clone, Copy)]
pub struct DeliverFrame<'a> {
    /// `Frame.seq` (0: not sequenced).
    pub seq: u64,
    /// `Frame.acked` (0: acknowledges nothing).
    pub acked: u64,
    /// `Deliver.sub_id`.
    pub sub_id: u64,
    /// The shared fields.
    pub head: &'a DeliverHead,
    /// `Deliver.payload`.
    pub payload: &'a Bytes,
}

impl DeliverFrame<'_> {
    /// Length of the protobuf encoding (without the length prefix).
    #[inline]
    pub fn encoded_len(&self) -> usize {
        let body = self.body_len();
        envelope_len(self.seq, self.acked) + 2 + encoded_len_varint(body as u64) + body
    }

    /// Appends the length prefix and the protobuf encoding to `buf`.
    #[inline]
    pub fn encode(&self, buf: &mut BytesMut) {
        self.encode_with(true, buf);
    }

    /// Appends only the protobuf encoding (no length prefix), e.g. for a
    /// WebSocket message or a frame nested in another.
    #[inline]
    pub fn encode_body(&self, buf: &mut BytesMut) {
        self.encode_with(false, buf);
    }

    /// Length of the `Deliver` message.
    #[inline]
    fn body_len(&self) -> usize {
        let mut len = self.head.len();
        if self.sub_id != 0 {
            len += 1 + encoded_len_varint(self.sub_id);
        }
        if !self.payload.is_empty() {
            len += 1 + encoded_len_varint(self.payload.len() as u64) + self.payload.len();
        }
        len
    }

    /// The fixed fields go through a stack buffer, so the whole frame costs
    /// four `put_slice` calls (five with a reply-to or headers; the varints
    /// written byte by byte into the `BytesMut` cost more than everything
    /// else in the hub's write path).
    #[inline]
    fn encode_with(&self, prefix: bool, buf: &mut BytesMut) {
        let (seq, acked, sub_id) = (self.seq, self.acked, self.sub_id);
        let body = self.body_len();
        // prefix 4 + seq 11 + acked 11 + Frame.deliver key 2 + body length
        // 10 + sub_id 11
        let mut fixed = [0u8; 49];
        let mut n = 0;
        let total = envelope_len(seq, acked) + 2 + encoded_len_varint(body as u64) + body;
        if prefix {
            fixed[..LENGTH_PREFIX_LEN].copy_from_slice(&(total as u32).to_be_bytes());
            n = LENGTH_PREFIX_LEN;
        }
        n = put_frame_head(&mut fixed, n, seq, acked, FRAME_DELIVER_FIELD, body);
        if sub_id != 0 {
            fixed[n] = 0x08; // Deliver.sub_id, varint
            n = put_varint(&mut fixed, n + 1, sub_id);
        }
        buf.reserve(usize::from(prefix) * LENGTH_PREFIX_LEN + total);
        buf.put_slice(&fixed[..n]);
        let shared: &[u8] = &self.head.bytes;
        if self.head.split < shared.len() {
            // Reply-to or headers follow the payload: the rare case.
            return put_split(shared, self.head.split, self.payload, buf);
        }
        buf.put_slice(shared);
        put_payload(self.payload, buf);
    }
}

/// Field numbers of `Frame.ok` and `Frame.publish`.
const FRAME_OK_FIELD: u32 = 30;
const FRAME_PUBLISH_FIELD: u32 = 44;

/// A frame other than a delivery that has a hand encoder: what a hub's
/// change log writes most for a standby besides deliveries (a client's
/// `Publish` without headers, an `Ok` confirmation). prost encodes each
/// field through a generic path (a `Publish` cost a primary about 800
/// instructions); this writes the fixed fields from a stack buffer, byte
/// for byte what prost encodes (tested against prost below).
#[derive(Debug, Clone, Copy)]
pub enum HandFrame<'a> {
    /// `Frame{seq, acked, publish}` whose `Publish` has no headers, from
    /// its parts: a `proto::Publish` ([`HandFrame::of`]) or a client's
    /// borrowed topic and payload (nothing allocated to publish).
    Publish {
        /// `Frame.seq`.
        seq: u64,
        /// `Frame.acked`.
        acked: u64,
        /// `Publish.id`.
        id: u64,
        /// `Publish.topic`.
        topic: &'a str,
        /// `Publish.from`.
        from: &'a str,
        /// `Publish.reply_to`.
        reply_to: &'a str,
        /// `Publish.payload`.
        payload: &'a Bytes,
    },
    /// `Frame{seq, acked, ok{id}}`.
    Ok {
        /// `Frame.seq`.
        seq: u64,
        /// `Frame.acked`.
        acked: u64,
        /// `Ok.id`.
        id: u64,
    },
}

impl<'a> HandFrame<'a> {
    /// The hand encoder of `frame`, if it has one.
    #[inline]
    pub fn of(frame: &'a crate::Frame) -> Option<HandFrame<'a>> {
        let (seq, acked) = (frame.seq, frame.acked);
        match &frame.kind {
            Some(crate::Kind::Publish(p)) if p.headers.is_empty() => Some(HandFrame::Publish {
                seq,
                acked,
                id: p.id,
                topic: &p.topic,
                from: &p.from,
                reply_to: &p.reply_to,
                payload: &p.payload,
            }),
            Some(crate::Kind::Ok(ok)) => Some(HandFrame::Ok {
                seq,
                acked,
                id: ok.id,
            }),
            _ => None,
        }
    }

    /// `Frame.seq`, `Frame.acked`, the kind's field number and the kind's
    /// body length.
    #[inline]
    fn parts(&self) -> (u64, u64, u32, usize) {
        match *self {
            HandFrame::Publish {
                seq,
                acked,
                id,
                topic,
                from,
                reply_to,
                payload,
            } => {
                let mut len = str_len(topic) + str_len(from) + str_len(reply_to);
                if id != 0 {
                    len += 1 + encoded_len_varint(id);
                }
                if !payload.is_empty() {
                    len += 1 + encoded_len_varint(payload.len() as u64) + payload.len();
                }
                (seq, acked, FRAME_PUBLISH_FIELD, len)
            }
            HandFrame::Ok { seq, acked, id } => {
                let len = if id == 0 {
                    0
                } else {
                    1 + encoded_len_varint(id)
                };
                (seq, acked, FRAME_OK_FIELD, len)
            }
        }
    }

    /// Length of the protobuf encoding (without the length prefix).
    #[inline]
    pub fn encoded_len(&self) -> usize {
        let (seq, acked, _, body) = self.parts();
        envelope_len(seq, acked) + 2 + encoded_len_varint(body as u64) + body
    }

    /// Appends the length prefix and the protobuf encoding to `buf`, as
    /// [`put_frame`](crate::put_frame) does.
    #[inline]
    pub fn encode(&self, buf: &mut BytesMut) {
        let len = self.encoded_len();
        buf.reserve(LENGTH_PREFIX_LEN + len);
        buf.put_u32(len as u32);
        self.encode_body(buf);
    }

    /// Appends the protobuf encoding (no length prefix) to `buf`.
    #[inline]
    pub fn encode_body(&self, buf: &mut BytesMut) {
        let (seq, acked, field, body) = self.parts();
        // seq 11 + acked 11 + kind key 2 + body length 10 + first field 11
        let mut fixed = [0u8; 45];
        let mut n = 0;
        n = put_frame_head(&mut fixed, n, seq, acked, field, body);
        // Field 1 of both kinds: `Publish.id`, `Ok.id`.
        let id = match *self {
            HandFrame::Publish { id, .. } => id,
            HandFrame::Ok { id, .. } => id,
        };
        if id != 0 {
            fixed[n] = 0x08;
            n = put_varint(&mut fixed, n + 1, id);
        }
        buf.reserve(n + body);
        buf.put_slice(&fixed[..n]);
        if let HandFrame::Publish {
            topic,
            from,
            reply_to,
            payload,
            ..
        } = *self
        {
            put_str(KEY_TOPIC, topic, buf);
            put_str(KEY_FROM, from, buf);
            put_payload(payload, buf);
            put_str(KEY_REPLY_TO, reply_to, buf);
        }
    }
}

/// Writes a `Frame`'s head into `fixed` from `n`: its `seq` and `acked`
/// (left out when 0), then the key of its kind (`field`, length-delimited)
/// and the kind's body length; returns the new end.
#[inline]
fn put_frame_head(
    fixed: &mut [u8],
    mut n: usize,
    seq: u64,
    acked: u64,
    field: u32,
    body: usize,
) -> usize {
    if seq != 0 {
        fixed[n] = 0x08; // Frame.seq, varint
        n = put_varint(fixed, n + 1, seq);
    }
    if acked != 0 {
        fixed[n] = 0x10; // Frame.acked, varint
        n = put_varint(fixed, n + 1, acked);
    }
    n = put_varint(
        fixed,
        n,
        u64::from(field << 3 | WireType::LengthDelimited as u32),
    );
    put_varint(fixed, n, body as u64)
}

/// Encoded length of a string field (left out when empty).
#[inline]
fn str_len(s: &str) -> usize {
    if s.is_empty() {
        0
    } else {
        1 + encoded_len_varint(s.len() as u64) + s.len()
    }
}

/// Keys (field number and wire type, one byte) of the string fields
/// `Deliver` and `Publish` share: the same numbers in both messages.
const KEY_TOPIC: u8 = 2 << 3 | WireType::LengthDelimited as u8;
/// See [`KEY_TOPIC`].
const KEY_FROM: u8 = 3 << 3 | WireType::LengthDelimited as u8;
/// See [`KEY_TOPIC`].
const KEY_REPLY_TO: u8 = 5 << 3 | WireType::LengthDelimited as u8;

/// A string field with one-byte key `key`, when not empty.
#[inline]
fn put_str(key: u8, s: &str, buf: &mut impl BufMut) {
    if !s.is_empty() {
        let (head, k) = str_head(key, s.len());
        buf.put_slice(&head[..k]);
        buf.put_slice(s.as_bytes());
    }
}

/// The key and length that go before a string field of `len` bytes, and
/// how many bytes of the array they take.
#[inline]
fn str_head(key: u8, len: usize) -> ([u8; 11], usize) {
    let mut head = [0u8; 11];
    head[0] = key;
    let k = put_varint(&mut head, 1, len as u64);
    (head, k)
}

/// Whether `b[*pos..]` starts with string field `s` (one-byte key
/// `key`), as [`put_str`] writes it (nothing when `s` is empty); moves
/// `*pos` past it.
#[inline]
fn same_str(b: &[u8], pos: &mut usize, key: u8, s: &[u8]) -> bool {
    if s.is_empty() {
        return true;
    }
    let (head, n) = str_head(key, s.len());
    let end = *pos + n + s.len();
    if b.get(*pos..*pos + n) != Some(&head[..n]) || b.get(*pos + n..end) != Some(s) {
        return false;
    }
    *pos = end;
    true
}

/// Encoded length of `Frame.seq` and `Frame.acked`.
#[inline]
fn envelope_len(seq: u64, acked: u64) -> usize {
    let mut len = 0;
    if seq != 0 {
        len += 1 + encoded_len_varint(seq);
    }
    if acked != 0 {
        len += 1 + encoded_len_varint(acked);
    }
    len
}

/// `Deliver.payload`, when not empty.
#[inline(always)]
fn put_payload(payload: &Bytes, buf: &mut BytesMut) {
    if !payload.is_empty() {
        let mut key = [0u8; 11];
        key[0] = 0x22; // Deliver.payload, length-delimited
        let k = put_varint(&mut key, 1, payload.len() as u64);
        buf.put_slice(&key[..k]);
        buf.put_slice(payload);
    }
}

/// The shared fields around the payload: kept out of line so that the
/// plain delivery's path stays as short as it was before headers.
#[cold]
#[inline(never)]
fn put_split(shared: &[u8], split: usize, payload: &Bytes, buf: &mut BytesMut) {
    let (before, after) = shared.split_at(split);
    buf.put_slice(before);
    put_payload(payload, buf);
    buf.put_slice(after);
}

/// A `Deliver` frame as a hub queues it for a reliable client: the
/// fields every subscriber shares re-encoded into a [`DeliverHead`], the
/// payload a slice of the received buffer. No string is built: a standby
/// keeps the deliveries the primary numbered this way
/// ([`decode_queued_delivery`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueuedDelivery {
    /// `Frame.seq`.
    pub seq: u64,
    /// `Frame.acked`.
    pub acked: u64,
    /// `Deliver.sub_id`.
    pub sub_id: u64,
    /// `Deliver.topic`, `from` and `reply_to`, encoded.
    pub head: DeliverHead,
    /// `Deliver.payload`.
    pub payload: Bytes,
}

/// Decodes `body` (a frame body without its length prefix) if it is a
/// `Deliver` in the layout [`decode_delivery`](crate::decode_delivery) takes, into the parts a
/// hub's queue keeps; `None` means "decode it with prost". Its strings
/// are checked to be UTF-8 as prost would, but never copied into their
/// own allocations.
pub fn decode_queued_delivery(body: &Bytes) -> Option<QueuedDelivery> {
    decode_queued_delivery_reusing(body, None)
}

/// [`decode_queued_delivery`], sharing `last` (one more reference, no
/// encoding, no UTF-8 check: its bytes were checked when it was built)
/// when the delivery's topic, publisher and reply-to are the ones `last`
/// holds, as they are for consecutive deliveries of one topic.
pub fn decode_queued_delivery_reusing(
    body: &Bytes,
    last: Option<&DeliverHead>,
) -> Option<QueuedDelivery> {
    let (seq, acked, range) = envelope(body, KEY_DELIVER)?;
    let (sub_id, [topic, from, payload, reply_to]) = fields(body, range)?;
    let head = match last {
        Some(h)
            if h.is(
                &body[topic.clone()],
                &body[from.clone()],
                &body[reply_to.clone()],
            ) =>
        {
            h.clone()
        }
        _ => {
            let text = |r: Range<usize>| std::str::from_utf8(&body[r]).ok();
            DeliverHead::new(text(topic)?, text(from)?, text(reply_to)?, &[])
        }
    };
    Some(QueuedDelivery {
        seq,
        acked,
        sub_id,
        head,
        payload: body.slice(payload),
    })
}

#[cfg(test)]
mod tests {
    use prost::Message;

    use super::*;
    use crate::{put_frame, Frame};

    fn header(key: &str, value: &[u8]) -> proto::Header {
        proto::Header {
            key: key.into(),
            value: Bytes::copy_from_slice(value),
        }
    }

    /// Publishes and `Ok`s encode by hand as prost encodes them.
    #[test]
    fn hand_frames_are_prosts_encoding() {
        let publishes = [
            proto::Publish::default(),
            proto::Publish {
                id: 300,
                topic: "orders.eu".into(),
                from: "alice".into(),
                payload: Bytes::from_static(&[7; 200]),
                reply_to: "inbox.1".into(),
                headers: Vec::new(),
            },
            proto::Publish {
                topic: "t".repeat(200),
                payload: Bytes::from_static(b"x"),
                ..Default::default()
            },
        ];
        let mut frames: Vec<Frame> = publishes.into_iter().map(Frame::from).collect();
        frames.extend([0, 1, 1 << 40].map(Frame::ok));
        for mut f in frames {
            for (seq, acked) in [(0, 0), (1, 0), (0, 5), (1 << 50, 1 << 33)] {
                f.seq = seq;
                f.acked = acked;
                let hand = HandFrame::of(&f).expect("a hand frame");
                let mut got = BytesMut::new();
                hand.encode_body(&mut got);
                assert_eq!(&got[..], &f.encode_to_vec()[..], "{f:?}");
                assert_eq!(hand.encoded_len(), f.encoded_len());
                let (mut got, mut want) = (BytesMut::new(), BytesMut::new());
                hand.encode(&mut got);
                put_frame(&f, &mut want);
                assert_eq!(got, want, "length-prefixed: {f:?}");
            }
        }
        let with_headers = Frame::from(proto::Publish {
            headers: vec![header("k", b"v")],
            ..Default::default()
        });
        assert!(HandFrame::of(&with_headers).is_none());
        assert!(HandFrame::of(&Frame::from(proto::Ping::default())).is_none());
    }

    /// The delivery of `d` with `seq` and `acked` encodes as prost does:
    /// the same length, the same bytes (prefix included, and without it),
    /// and the same frame back.
    fn assert_same_as_prost(d: proto::Deliver, seq: u64, acked: u64) {
        let head = DeliverHead::new(&d.topic, &d.from, &d.reply_to, &d.headers);
        let out = DeliverFrame {
            seq,
            acked,
            sub_id: d.sub_id,
            head: &head,
            payload: &d.payload,
        };
        let mut expected = Frame::from(d.clone());
        expected.seq = seq;
        expected.acked = acked;
        assert_eq!(out.encoded_len(), expected.encoded_len());
        let mut got = BytesMut::new();
        out.encode(&mut got);
        assert_eq!(got.len(), expected.wire_len());
        let mut want = BytesMut::new();
        put_frame(&expected, &mut want);
        assert_eq!(got, want, "same bytes as prost, prefix included");
        let mut body = BytesMut::new();
        out.encode_body(&mut body);
        assert_eq!(body[..], want[LENGTH_PREFIX_LEN..]);
        assert_eq!(Frame::decode(body.freeze()).unwrap(), expected);
    }

    #[test]
    fn pre_encoded_delivery_matches_prost() {
        let headers = vec![
            header("trace-id", b"abc"),
            header("bin", &[0, 255, 7]),
            header("trace-id", b""),
        ];
        for (sub_id, payload, reply_to, headers) in [
            (7, &b"hello"[..], "", vec![]),
            (0, b"", "", vec![]),
            (u64::MAX, &[0u8; 300][..], "", vec![]),
            (7, b"hi", "inbox.1", vec![]),
            (7, b"hi", "", headers.clone()),
            (1, b"", "inbox.1", headers.clone()),
            (9, &[1u8; 200][..], "r", vec![header("k", &[2u8; 300])]),
        ] {
            let d = proto::Deliver {
                sub_id,
                topic: "orders.eu".into(),
                from: "alice".into(),
                payload: Bytes::copy_from_slice(payload),
                reply_to: reply_to.into(),
                headers,
            };
            assert_same_as_prost(d, 0, 0);
        }
    }

    #[test]
    fn sequenced_delivery_matches_prost() {
        for (seq, acked) in [(1, 0), (300, 1), (u64::MAX, u64::MAX), (0, 70_000)] {
            let d = proto::Deliver {
                sub_id: 7,
                topic: "a.b".into(),
                from: "pub".into(),
                payload: Bytes::from_static(b"hi"),
                reply_to: "inbox.1".into(),
                headers: vec![],
            };
            assert_same_as_prost(d, seq, acked);
        }
    }

    proptest::proptest! {
        /// A head is its own fields and no others (long ones included,
        /// whose lengths take two bytes).
        #[test]
        fn a_head_is_exactly_its_fields(
            a in proptest::array::uniform3("(|a|b|ab|a{130})"),
            b in proptest::array::uniform3("(|a|b|ab|a{130})"),
        ) {
            let head = DeliverHead::new(&a[0], &a[1], &a[2], &[]);
            proptest::prop_assert_eq!(
                head.is(b[0].as_bytes(), b[1].as_bytes(), b[2].as_bytes()),
                a == b
            );
        }

        /// Any delivery, headers or not: prost's bytes exactly.
        #[test]
        fn any_delivery_matches_prost(
            sub_id in proptest::prelude::any::<u64>(),
            seq in proptest::prelude::any::<u64>(),
            acked in proptest::prelude::any::<u64>(),
            topic in "[a-z.]{0,20}",
            from in "\\PC{0,10}",
            reply_to in "[a-z.]{0,300}",
            payload in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..400),
            headers in proptest::collection::vec(
                ("\\PC{0,20}", proptest::collection::vec(proptest::prelude::any::<u8>(), 0..200)),
                0..5,
            ),
        ) {
            let d = proto::Deliver {
                sub_id,
                topic,
                from,
                payload: payload.into(),
                reply_to,
                headers: headers.iter().map(|(k, v)| header(k, v)).collect(),
            };
            assert_same_as_prost(d, seq, acked);
        }
    }

    /// A queued delivery holds what the hub's own queue entry for the
    /// delivery holds, and refuses what `decode_delivery` refuses.
    #[test]
    fn queued_deliveries_match_the_decoded_ones() {
        let body = Bytes::from(crate::test_frames::sample_deliver().encode_to_vec());
        let d = crate::decode_delivery(&body).expect("a delivery");
        let q = decode_queued_delivery(&body).expect("a queued delivery");
        assert_eq!((q.seq, q.acked, q.sub_id), (d.seq, d.acked, d.sub_id));
        assert_eq!(q.payload, d.payload);
        assert_eq!(
            q.head,
            DeliverHead::new(&d.topic, &d.from, &d.reply_to, &[])
        );
        // Sharing a head that holds the same fields gives the same entry;
        // a head that differs in any of them is not shared.
        let same = DeliverHead::new("orders.eu", "alice", "inbox.1", &[]);
        assert_eq!(
            decode_queued_delivery_reusing(&body, Some(&same)),
            Some(q.clone())
        );
        for other in [
            DeliverHead::new("orders.e", "alice", "inbox.1", &[]),
            DeliverHead::new("orders.eu", "alicf", "inbox.1", &[]),
            DeliverHead::new("orders.eu", "alice", "", &[]),
            DeliverHead::new("orders.eu", "alice", "inbox.1", &[header("k", b"v")]),
            DeliverHead::new("", "", "", &[]),
        ] {
            assert!(!other.is(b"orders.eu", b"alice", b"inbox.1"), "{other:?}");
            assert_eq!(
                decode_queued_delivery_reusing(&body, Some(&other)),
                Some(q.clone())
            );
        }
        assert!(same.is(b"orders.eu", b"alice", b"inbox.1"));
        assert!(DeliverHead::new("", "", "", &[]).is(b"", b"", b""));
        assert!(!DeliverHead::new("t", "", "", &[]).is(b"", b"t", b""));
        assert!(!DeliverHead::new("", "", "r", &[]).is(b"", b"", b""));
        let ping = Bytes::from(Frame::from(proto::Ping { nonce: 3 }).encode_to_vec());
        assert_eq!(decode_queued_delivery(&ping), None);
        let bad = crate::test_frames::deliver_with_bad_utf8();
        assert_eq!(
            decode_queued_delivery(&Bytes::from(bad)),
            None,
            "invalid UTF-8"
        );
    }
}
