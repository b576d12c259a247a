//! Hand-written decoding of the frame a client receives most: a `Deliver`.
//!
//! prost decodes every field through a generic merge loop and copies every
//! string into its own allocation, which cost a subscriber about 1,700
//! instructions per 64-byte delivery, more than everything else it does
//! with the message. [`decode_delivery`] reads the one layout a hub writes
//! (the envelope's `seq` and `acked`, then the `deliver` body with each
//! field at most once) directly, and its strings point into the receive
//! buffer like the payload does; anything else (another kind, a repeated or
//! unknown field, an odd wire type, a varint longer than 9 bytes, invalid
//! UTF-8) returns `None` and the caller decodes with prost. Whenever it
//! returns a delivery, it is the frame prost would decode from the same
//! bytes.

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
            })),
        }
    }
}

/// `Frame.seq`, varint.
const KEY_SEQ: u64 = 1 << 3;
/// `Frame.acked`, varint.
const KEY_ACKED: u64 = 2 << 3;
/// `Frame.deliver`, length-delimited.
const KEY_DELIVER: u64 = 47 << 3 | 2;

/// Reads a varint of at most 9 bytes (values below 2^63) at `*pos`.
#[inline]
fn varint(b: &[u8], pos: &mut usize) -> Option<u64> {
    let mut value = 0u64;
    for shift in (0..63).step_by(7) {
        let byte = *b.get(*pos)?;
        *pos += 1;
        value |= u64::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            return Some(value);
        }
    }
    None
}

/// Reads a length and returns the range it covers, within `end`.
#[inline]
fn span(b: &[u8], pos: &mut usize, end: usize) -> Option<std::ops::Range<usize>> {
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
fn text(body: &Bytes, range: std::ops::Range<usize>) -> Option<ByteString> {
    ByteString::try_from(body.slice(range)).ok()
}

/// Decodes `body` (a frame without its length prefix) if it is a plain
/// `Deliver`; `None` means "use prost".
pub(crate) fn decode_deliver(body: &Bytes) -> Option<Frame> {
    decode_delivery(body).map(Frame::from)
}

/// Decodes `body` (a frame body without its length prefix) if it is a
/// `Deliver` in the layout a hub writes; `None` means "decode it with
/// prost" (which gives the same frame when this returns one).
pub fn decode_delivery(body: &Bytes) -> Option<Delivery> {
    let b = &body[..];
    let mut pos = 0;
    let (mut seq, mut acked, mut kind) = (None, None, None);
    while pos < b.len() {
        match varint(b, &mut pos)? {
            KEY_SEQ if seq.is_none() => seq = Some(varint(b, &mut pos)?),
            KEY_ACKED if acked.is_none() => acked = Some(varint(b, &mut pos)?),
            KEY_DELIVER if kind.is_none() => kind = Some(span(b, &mut pos, b.len())?),
            _ => return None,
        }
    }
    let range = kind?;
    let end = range.end;
    let mut pos = range.start;
    let mut d = Delivery {
        seq: seq.unwrap_or(0),
        acked: acked.unwrap_or(0),
        ..Delivery::default()
    };
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
                d.sub_id = varint(b, &mut pos)?;
                if pos > end {
                    return None;
                }
            }
            0x12 => d.topic = text(body, span(b, &mut pos, end)?)?,
            0x1a => d.from = text(body, span(b, &mut pos, end)?)?,
            0x22 => d.payload = body.slice(span(b, &mut pos, end)?),
            0x2a => d.reply_to = text(body, span(b, &mut pos, end)?)?,
            _ => return None,
        }
    }
    Some(d)
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message;

    fn deliver() -> Frame {
        let mut f = Frame::from(proto::Deliver {
            sub_id: 300,
            topic: "orders.eu".into(),
            from: "alice".into(),
            payload: Bytes::from_static(&[7; 100]),
            reply_to: "inbox.1".into(),
        })
        .with_seq(1 << 40);
        f.acked = 5;
        f
    }

    #[test]
    fn decodes_what_prost_decodes() {
        let f = deliver();
        let body = Bytes::from(f.encode_to_vec());
        assert_eq!(decode_deliver(&body), Some(f));
        let empty = Frame::from(proto::Deliver::default());
        let body = Bytes::from(empty.encode_to_vec());
        assert_eq!(decode_deliver(&body), Some(empty));
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
        let publish = Frame::publish("t", "x").encode_to_vec();
        assert_eq!(decode_deliver(&Bytes::from(publish)), None);
        let mut twice = deliver().encode_to_vec();
        twice.extend_from_slice(&Frame::from(proto::Deliver::default()).encode_to_vec());
        assert_eq!(decode_deliver(&Bytes::from(twice)), None, "merged by prost");
        let mut bad = Frame::from(proto::Deliver {
            topic: "ab".into(),
            ..Default::default()
        })
        .encode_to_vec();
        let n = bad.len();
        bad[n - 1] = 0xff;
        assert_eq!(decode_deliver(&Bytes::from(bad.clone())), None);
        assert!(Frame::decode(&bad[..]).is_err(), "invalid UTF-8");
        let truncated = deliver().encode_to_vec();
        for cut in 0..truncated.len() {
            let body = Bytes::copy_from_slice(&truncated[..cut]);
            if let Some(f) = decode_deliver(&body) {
                assert_eq!(Frame::decode(body).ok(), Some(f), "cut at {cut}");
            }
        }
    }
}
