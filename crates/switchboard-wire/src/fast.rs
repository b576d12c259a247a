//! Hand-written decoding of the frames sent most: `Deliver` (what a
//! client receives) and `Publish` (what a hub receives).
//!
//! prost decodes every field through a generic merge loop and copies every
//! string into its own allocation, which cost a subscriber about 1,700
//! instructions per 64-byte delivery, more than everything else it does
//! with the message. [`decode_delivery`] reads the one layout a hub writes
//! (the envelope's `seq` and `acked`, then the `deliver` body with each
//! field at most once) directly, and its strings point into the receive
//! buffer like the payload does; anything else (another kind, a repeated or
//! unknown field, headers, an odd wire type, a varint longer than 9 bytes, invalid
//! UTF-8) returns `None` and the caller decodes with prost. Whenever it
//! returns a delivery, it is the frame prost would decode from the same
//! bytes.

use std::ops::Range;

use bytes::Bytes;
use bytestring::ByteString;

use crate::{proto, Frame, Kind};

/// A `Deliver` frame decoded without copying: the strings and the payload
/// point into the receive buffer.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Delivery {
    /// `Frame.seq`.
    pub seq: u64,
    /// `Frame.acked`.
    pub acked: u64,
    /// `Deliver.sub_id`.
    pub sub_id: u64,
    /// `Deliver.topic`.
    pub topic: ByteString,
    /// `Deliver.from`.
    pub from: ByteString,
    /// `Deliver.payload`.
    pub payload: Bytes,
    /// `Deliver.reply_to`.
    pub reply_to: ByteString,
}

impl From<Delivery> for Frame {
    fn from(d: Delivery) -> Frame {
        Frame {
            seq: d.seq,
            acked: d.acked,
            kind: Some(Kind::Deliver(proto::Deliver {
                sub_id: d.sub_id,
                topic: d.topic.into(),
                from: d.from.into(),
                payload: d.payload,
                reply_to: d.reply_to.into(),
                headers: Vec::new(),
            })),
        }
    }
}

/// `Frame.seq`, varint.
const KEY_SEQ: u64 = 1 << 3;
/// `Frame.acked`, varint.
const KEY_ACKED: u64 = 2 << 3;
/// `Frame.deliver`, length-delimited.
pub(crate) const KEY_DELIVER: u64 = 47 << 3 | 2;
/// `Frame.publish`, length-delimited.
const KEY_PUBLISH: u64 = 44 << 3 | 2;
/// `Frame.ok`, length-delimited.
const KEY_OK: u64 = 30 << 3 | 2;

/// Reads a varint of at most 9 bytes (values below 2^63) at `*pos`. A
/// one-byte varint (keys, small lengths and ids: most of them) takes the
/// short path, a two-byte one (lengths and sequence numbers below 16,384)
/// the next shortest.
#[inline]
fn varint(b: &[u8], pos: &mut usize) -> Option<u64> {
    let byte = *b.get(*pos)?;
    if byte < 0x80 {
        *pos += 1;
        return Some(u64::from(byte));
    }
    if let Some(&next) = b.get(*pos + 1) {
        if next < 0x80 {
            *pos += 2;
            return Some(u64::from(byte & 0x7f) | u64::from(next) << 7);
        }
    }
    varint_long(b, pos)
}

/// [`varint`] of two bytes or more.
#[inline(never)]
fn varint_long(b: &[u8], pos: &mut usize) -> Option<u64> {
    let mut value = 0u64;
    let mut i = *pos;
    for shift in [0, 7, 14, 21, 28, 35, 42, 49, 56] {
        let byte = *b.get(i)?;
        i += 1;
        value |= u64::from(byte & 0x7f) << shift;
        if byte < 0x80 {
            *pos = i;
            return Some(value);
        }
    }
    None
}

/// Reads a length and returns the range it covers, within `end`.
#[inline]
fn span(b: &[u8], pos: &mut usize, end: usize) -> Option<Range<usize>> {
    let len = usize::try_from(varint(b, pos)?).ok()?;
    let start = *pos;
    let stop = start.checked_add(len)?;
    if stop > end {
        return None;
    }
    *pos = stop;
    Some(start..stop)
}

#[inline]
fn text(body: &Bytes, range: Range<usize>) -> Option<ByteString> {
    if range.is_empty() {
        return Some(ByteString::new());
    }
    ByteString::try_from(body.slice(range)).ok()
}

/// The envelope of a frame whose kind is the length-delimited field
/// `kind_key`: `(seq, acked, range of the kind's body)`.
pub(crate) fn envelope(b: &[u8], kind_key: u64) -> Option<(u64, u64, Range<usize>)> {
    let mut pos = 0;
    let (mut seq, mut acked, mut kind) = (None, None, None);
    while pos < b.len() {
        match varint(b, &mut pos)? {
            KEY_SEQ if seq.is_none() => seq = Some(varint(b, &mut pos)?),
            KEY_ACKED if acked.is_none() => acked = Some(varint(b, &mut pos)?),
            key if key == kind_key && kind.is_none() => kind = Some(span(b, &mut pos, b.len())?),
            _ => return None,
        }
    }
    Some((seq.unwrap_or(0), acked.unwrap_or(0), kind?))
}

/// The fields of a `Deliver` or a `Publish` body in `b[range]` (the two
/// share their layout: 1 a varint, 2–5 strings and bytes), each at most
/// once: the varint and the ranges of fields 2–5 (empty when absent).
pub(crate) fn fields(b: &[u8], range: Range<usize>) -> Option<(u64, [Range<usize>; 4])> {
    let end = range.end;
    let mut pos = range.start;
    let mut first = 0;
    let mut spans: [Range<usize>; 4] = [0..0, 0..0, 0..0, 0..0];
    let mut seen = 0u8;
    while pos < end {
        let key = varint(b, &mut pos)?;
        if pos > end {
            return None;
        }
        let field = key >> 3;
        if !(1..=5).contains(&field) || seen & (1 << field) != 0 {
            return None;
        }
        seen |= 1 << field;
        match key {
            0x08 => {
                first = varint(b, &mut pos)?;
                if pos > end {
                    return None;
                }
            }
            0x12 | 0x1a | 0x22 | 0x2a => spans[field as usize - 2] = span(b, &mut pos, end)?,
            _ => return None,
        }
    }
    Some((first, spans))
}

/// Decodes `body` (a frame without its length prefix) if it is a plain
/// `Deliver` or `Publish`; `None` means "use prost".
pub(crate) fn decode(body: &Bytes) -> Option<Frame> {
    decode_delivery(body)
        .map(Frame::from)
        .or_else(|| decode_publish(body, Some(body)))
}

/// Decodes `body` (a frame body without its length prefix) if it is a
/// `Deliver` in the layout a hub writes; `None` means "decode it with
/// prost" (which gives the same frame when this returns one).
pub fn decode_delivery(body: &Bytes) -> Option<Delivery> {
    let (seq, acked, range) = envelope(body, KEY_DELIVER)?;
    let (sub_id, [topic, from, payload, reply_to]) = fields(body, range)?;
    Some(Delivery {
        seq,
        acked,
        sub_id,
        topic: text(body, topic)?,
        from: text(body, from)?,
        payload: body.slice(payload),
        reply_to: text(body, reply_to)?,
    })
}

/// Decodes `b` (a frame body without its length prefix) if it is an `Ok`
/// (`seq`, `acked` and the `ok` body, each at most once, the body holding
/// at most its `id`); `None` means "decode it with prost" (which gives the
/// same frame when this returns one).
pub fn decode_ok(b: &[u8]) -> Option<Frame> {
    let (seq, acked, range) = envelope(b, KEY_OK)?;
    let mut pos = range.start;
    let mut id = None;
    while pos < range.end {
        match varint(b, &mut pos)? {
            0x08 if id.is_none() => id = Some(varint(b, &mut pos)?),
            _ => return None,
        }
    }
    if pos > range.end {
        return None;
    }
    Some(Frame {
        seq,
        acked,
        kind: Some(Kind::Ok(proto::Ok {
            id: id.unwrap_or(0),
        })),
    })
}

/// Decodes `b` (a frame body without its length prefix) if it is a
/// `Publish` with each field at most once; `None` means "decode it with
/// prost" (which gives the same frame when this returns one). The payload
/// is sliced out of `shared` when given (`b` must be its contents), else
/// copied.
pub fn decode_publish(b: &[u8], shared: Option<&Bytes>) -> Option<Frame> {
    let (seq, acked, range) = envelope(b, KEY_PUBLISH)?;
    let (id, [topic, from, payload, reply_to]) = fields(b, range)?;
    let owned = |r: Range<usize>| -> Option<String> {
        if r.is_empty() {
            Some(String::new())
        } else {
            std::str::from_utf8(&b[r]).ok().map(str::to_owned)
        }
    };
    let payload = match shared {
        Some(body) => body.slice(payload),
        None => Bytes::copy_from_slice(&b[payload]),
    };
    Some(Frame {
        seq,
        acked,
        kind: Some(Kind::Publish(proto::Publish {
            id,
            topic: owned(topic)?,
            from: owned(from)?,
            payload,
            reply_to: owned(reply_to)?,
            headers: Vec::new(),
        })),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message;

    use crate::test_frames::sample_deliver as deliver;

    /// Varints of every length this decoder reads come out as prost
    /// reads them; a cut one, or one of 10 bytes, does not.
    #[test]
    fn varints_read_as_prost_reads_them() {
        let values = [0, 1, 127, 128, 300, 16_383, 16_384, (1 << 21) - 1, 1 << 21];
        for v in values
            .into_iter()
            .chain((28..63).step_by(7).map(|s| 1 << s))
        {
            let mut b = Vec::new();
            prost::encoding::encode_varint(v, &mut b);
            let mut pos = 0;
            assert_eq!(varint(&b, &mut pos), Some(v), "{v}");
            assert_eq!(pos, b.len());
            for cut in 0..b.len() {
                assert_eq!(varint(&b[..cut], &mut 0), None, "{v} cut at {cut}");
            }
            // After other bytes, as in a frame.
            let mut after = vec![0x08];
            after.extend_from_slice(&b);
            let mut pos = 1;
            assert_eq!(varint(&after, &mut pos), Some(v));
            assert_eq!(pos, after.len());
        }
        let mut ten = Vec::new();
        prost::encoding::encode_varint(u64::MAX, &mut ten);
        assert_eq!(varint(&ten, &mut 0), None);
    }

    #[test]
    fn decodes_what_prost_decodes() {
        let f = deliver();
        let body = Bytes::from(f.encode_to_vec());
        assert_eq!(decode(&body), Some(f));
        let empty = Frame::from(proto::Deliver::default());
        let body = Bytes::from(empty.encode_to_vec());
        assert_eq!(decode(&body), Some(empty));
    }

    #[test]
    fn strings_and_payload_point_into_the_body() {
        let body = Bytes::from(deliver().encode_to_vec());
        let d = decode_delivery(&body).expect("decoded");
        let inside = body.as_ptr() as usize..body.as_ptr() as usize + body.len();
        for p in [
            d.payload.as_ptr(),
            d.topic.as_ptr(),
            d.from.as_ptr(),
            d.reply_to.as_ptr(),
        ] {
            assert!(inside.contains(&(p as usize)));
        }
        assert_eq!(
            (&*d.topic, &*d.from, &*d.reply_to),
            ("orders.eu", "alice", "inbox.1")
        );
    }

    #[test]
    fn leaves_everything_else_to_prost() {
        let ping = Frame::from(proto::Ping { nonce: 3 }).encode_to_vec();
        assert_eq!(decode(&Bytes::from(ping)), None);
        let publish = Frame::publish("t", "x");
        let body = Bytes::from(publish.encode_to_vec());
        assert_eq!(
            decode(&body),
            Some(publish.clone()),
            "publishes are decoded too"
        );
        assert_eq!(decode_publish(&body, None), Some(publish));
        let mut twice = deliver().encode_to_vec();
        twice.extend_from_slice(&Frame::from(proto::Deliver::default()).encode_to_vec());
        assert_eq!(decode(&Bytes::from(twice)), None, "merged by prost");
        let bad = crate::test_frames::deliver_with_bad_utf8();
        assert_eq!(decode(&Bytes::from(bad.clone())), None);
        assert!(Frame::decode(&bad[..]).is_err(), "invalid UTF-8");
        let truncated = deliver().encode_to_vec();
        for cut in 0..truncated.len() {
            let body = Bytes::copy_from_slice(&truncated[..cut]);
            if let Some(f) = decode(&body) {
                assert_eq!(Frame::decode(body).ok(), Some(f), "cut at {cut}");
            }
        }
    }

    /// `Ok`s decode as prost decodes them; anything else is left to prost,
    /// and no prefix of one decodes into something prost would not.
    #[test]
    fn oks_decode_as_prost_decodes_them() {
        for (seq, acked, id) in [(0, 0, 0), (3, 0, 9), (0, 7, 1 << 40), (1 << 50, 2, 1)] {
            let mut f = Frame::ok(id);
            f.seq = seq;
            f.acked = acked;
            let body = f.encode_to_vec();
            assert_eq!(decode_ok(&body), Some(f), "{seq} {acked} {id}");
            for cut in 0..body.len() {
                if let Some(g) = decode_ok(&body[..cut]) {
                    assert_eq!(Frame::decode(&body[..cut]).ok(), Some(g), "cut at {cut}");
                }
            }
        }
        assert_eq!(decode_ok(&deliver().encode_to_vec()), None);
        let mut twice = Frame::ok(1).encode_to_vec();
        twice.extend_from_slice(&Frame::ok(2).encode_to_vec());
        assert_eq!(decode_ok(&twice), None, "merged by prost");
        // An `Ok` body with a field it does not have.
        let odd = [0xf2, 0x01, 0x02, 0x10, 0x01];
        assert_eq!(decode_ok(&odd), None);
    }
}
