//! The replication link's changes: their field numbers (the one home of
//! the layout `journal.rs` writes by hand on the primary) and the
//! standby's hand-written decoder, the mirror of that encoder.
//!
//! prost decodes a change through three or four nested messages (`Frame`,
//! `Change`, `ClientFrame`, the client's `Frame`), each a generic merge
//! loop, copying every string; on a standby that was about half of all its
//! instructions. [`decode_link_frame`] reads the layout the primary writes
//! directly: client ids are [`ByteString`]s pointing into the received
//! buffer, a client's `Publish` and a `sent` `Deliver` go through the
//! wire crate's hand decoders (payloads are slices of the buffer), and a
//! `sent` frame is kept as the [`Out`] the replica's retransmit buffer
//! holds (a delivery stays pre-encoded, never a boxed `Frame`).
//!
//! The link is authenticated but still hostile input: every malformed,
//! truncated or unexpected encoding is a [`ChangeError`] (the standby
//! drops the link and starts again from a snapshot), never a panic, and
//! nothing is allocated beyond what the received frame's own bytes bound.
//! Frames that are not a lone change (heartbeats, snapshots, errors, and
//! a change with further envelope fields, which the primary never writes)
//! are decoded with prost.

use std::ops::Range;

use bytes::Bytes;
use bytestring::ByteString;
use prost::Message;
use switchboard_wire::deliver::DeliverHead;
use switchboard_wire::peek::peek_kind;
use switchboard_wire::proto::{self, change::Op, frame::Kind};
use switchboard_wire::{
    decode_frame, decode_ok, decode_publish, decode_queued_delivery_reusing, Frame, WireError,
};

use crate::outbox::{Out, Shared};

/// Field numbers of the link frame a change travels in: `Frame.change`,
/// and within `Change` its `repl_seq` and each operation.
pub(super) const FRAME_CHANGE_FIELD: u32 = 92;
pub(super) const CHANGE_SEQ_FIELD: u32 = 1;
pub(super) const CHANGE_CLIENT_FRAME_FIELD: u32 = 10;
pub(super) const CHANGE_JOINED_FIELD: u32 = 11;
pub(super) const CHANGE_LEFT_FIELD: u32 = 12;
pub(super) const CHANGE_SENT_FIELD: u32 = 13;
pub(super) const CHANGE_CLIENT_ACK_FIELD: u32 = 14;
const CHANGE_KV_FIELD: u32 = 15;
pub(super) const CHANGE_CLIENT_DROPPED_FIELD: u32 = 16;
/// Field numbers within `ClientFrame` and `ClientAck` (the client id is
/// field 1 of both).
pub(super) const CLIENT_ID_FIELD: u32 = 1;
pub(super) const CLIENT_FRAME_FRAME_FIELD: u32 = 2;
pub(super) const CLIENT_ACK_UP_TO_FIELD: u32 = 2;
/// `ClientDropped.seqs` (its client id is field 1 too).
pub(super) const CLIENT_DROPPED_SEQS_FIELD: u32 = 2;

/// Protobuf wire types.
const VARINT: u8 = 0;
const FIXED64: u8 = 1;
const DELIMITED: u8 = 2;
const FIXED32: u8 = 5;

/// One change from the primary, as a standby applies it
/// ([`Replica::apply_change`](super::replica::Replica::apply_change)).
#[derive(Debug, Clone, PartialEq)]
pub struct Change {
    /// `Change.repl_seq`.
    pub repl_seq: u64,
    /// The operation (`None`: the change had none, which a replica refuses).
    pub op: Option<ChangeOp>,
}

/// The operation of a [`Change`] (`proto::change::Op`, with client ids
/// that point into the received buffer and `sent` frames ready for the
/// retransmit buffer).
///
/// Kept small (the large messages behind a pointer), since a change is
/// moved from the decoder to the replica by value: a `Frame` held inline
/// made every move a `memcpy` call, about 10 % of a standby's
/// instructions.
#[derive(Debug, Clone, PartialEq)]
pub enum ChangeOp {
    /// `client_frame`: a frame the primary's router handled for a client.
    ClientFrame {
        /// The client id.
        client_id: ByteString,
        /// The frame, as the list the router takes (one frame; empty when
        /// the change had none).
        frames: Vec<Frame>,
    },
    /// `client_joined`.
    ClientJoined(Box<proto::ClientInfo>),
    /// `client_left`: the client id.
    ClientLeft(ByteString),
    /// `sent`: a frame numbered for a reliable client.
    Sent {
        /// The client id.
        client_id: ByteString,
        /// The frame as a queue entry (`None` when the change had none).
        out: Option<Out>,
    },
    /// `client_ack`.
    ClientAck {
        /// The client id.
        client_id: ByteString,
        /// Highest hub-to-client seq acknowledged.
        up_to: u64,
    },
    /// `kv` (no primary logs it; a replica refuses it).
    Kv(Box<proto::KvEntry>),
    /// `client_dropped`: numbered frames dropped from a reliable client's
    /// queue, to forget.
    ClientDropped {
        /// The client id.
        client_id: ByteString,
        /// Their seqs.
        seqs: Vec<u64>,
    },
}

impl From<Op> for ChangeOp {
    fn from(op: Op) -> ChangeOp {
        match op {
            Op::ClientFrame(cf) => ChangeOp::ClientFrame {
                client_id: cf.client_id.into(),
                frames: cf.frame.map(|f| vec![*f]).unwrap_or_default(),
            },
            Op::ClientJoined(info) => ChangeOp::ClientJoined(Box::new(info)),
            Op::ClientLeft(id) => ChangeOp::ClientLeft(id.into()),
            Op::Sent(cf) => ChangeOp::Sent {
                client_id: cf.client_id.into(),
                out: cf.frame.map(|f| Out::from(*f)),
            },
            Op::ClientAck(a) => ChangeOp::ClientAck {
                client_id: a.client_id.into(),
                up_to: a.up_to,
            },
            Op::Kv(e) => ChangeOp::Kv(Box::new(e)),
            Op::ClientDropped(d) => ChangeOp::ClientDropped {
                client_id: d.client_id.into(),
                seqs: d.seqs,
            },
        }
    }
}

impl From<proto::Change> for Change {
    fn from(c: proto::Change) -> Change {
        Change {
            repl_seq: c.repl_seq,
            op: c.op.map(ChangeOp::from),
        }
    }
}

/// A frame read from the replication link.
#[derive(Debug, Clone, PartialEq)]
pub enum LinkFrame {
    /// A change.
    Change(Change),
    /// Any other frame (heartbeat, snapshot, error, ...).
    Other(Frame),
}

/// Why a frame from the primary could not be decoded. The standby drops
/// the link over any of them.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ChangeError {
    /// A field's key, length or value runs past the end of its message.
    #[error("a change ends in the middle of a field")]
    Truncated,
    /// A varint longer than 10 bytes, or above 2^64.
    #[error("a change holds a varint that does not fit 64 bits")]
    Varint,
    /// Field number 0, or a group (wire types 3 and 4, which the protocol
    /// never uses), or a wire type that does not exist.
    #[error("a change holds an invalid field key {0:#x}")]
    Key(u64),
    /// A known field with the wrong wire type.
    #[error("field {field} of a change has wire type {wire_type}, not {expected}")]
    WireType {
        /// The field number.
        field: u32,
        /// The wire type found.
        wire_type: u8,
        /// The wire type the field has.
        expected: u8,
    },
    /// A field that the primary writes once appears again (or a second
    /// operation).
    #[error("field {0} appears twice in a change")]
    Repeated(u32),
    /// A client id that is not UTF-8.
    #[error("a change holds a client id that is not UTF-8")]
    Utf8,
    /// A nested message (a client's frame, a client's registration, a
    /// key/value entry) or a frame that is not a lone change did not
    /// decode.
    #[error("a frame from the primary did not decode: {0}")]
    Frame(#[from] WireError),
}

impl From<prost::DecodeError> for ChangeError {
    fn from(e: prost::DecodeError) -> ChangeError {
        ChangeError::Frame(WireError::Decode(e))
    }
}

/// Decodes one link frame (`body`: the frame without its length prefix,
/// already bounded by the link's frame limit). A frame that is exactly
/// one `Frame.change` field, as the primary writes it, is decoded by hand;
/// anything else by prost (a change among it converted to a [`Change`]).
/// A standby decodes with one [`ChangeDecoder`] instead, which shares the
/// encoded fields of consecutive deliveries.
pub fn decode_link_frame(body: Bytes) -> Result<LinkFrame, ChangeError> {
    ChangeDecoder::default().decode(body)
}

/// The standby's decoder of link frames ([`decode_link_frame`]), which
/// remembers the shared fields of the last `sent` delivery: the next
/// delivery of the same topic by the same publisher shares them (one
/// reference count) instead of encoding them again into a new allocation
/// (about 600 instructions per delivery).
#[derive(Debug, Default)]
pub struct ChangeDecoder {
    /// The head of the last `sent` delivery decoded.
    last_head: Option<DeliverHead>,
}

impl ChangeDecoder {
    /// Decodes one link frame, as [`decode_link_frame`] does.
    pub fn decode(&mut self, body: Bytes) -> Result<LinkFrame, ChangeError> {
        let mut pos = 0;
        if let Some(range) = lone_change(&body, &mut pos) {
            return self.decode_change(&body, range?).map(LinkFrame::Change);
        }
        let frame = decode_frame(body, usize::MAX)?;
        Ok(match frame.kind {
            Some(Kind::Change(c)) => LinkFrame::Change(Change::from(*c)),
            _ => LinkFrame::Other(frame),
        })
    }
}

/// The range of the change's body when `b` is one `Frame.change` field and
/// nothing else; `None` for any other frame (decoded by prost).
fn lone_change(b: &[u8], pos: &mut usize) -> Option<Result<Range<usize>, ChangeError>> {
    const KEY: u64 = (FRAME_CHANGE_FIELD as u64) << 3 | DELIMITED as u64;
    // The key is a two-byte varint: compared as bytes.
    const _: () = assert!(KEY >= 1 << 7 && KEY < 1 << 14);
    const KEY_BYTES: [u8; 2] = [(KEY & 0x7f) as u8 | 0x80, (KEY >> 7) as u8];
    if b.get(*pos..*pos + 2)? != KEY_BYTES {
        return None;
    }
    *pos += 2;
    let range = span(b, pos, b.len());
    match range {
        Ok(r) if r.end == b.len() => Some(Ok(r)),
        // Fields after the change: prost merges them.
        Ok(_) => None,
        Err(e) => Some(Err(e)),
    }
}

/// Reads a varint at `*pos` as prost does (at most 10 bytes, the last
/// holding one bit). A one-byte varint (most keys, lengths and ids)
/// takes the short path.
#[inline]
fn varint(b: &[u8], pos: &mut usize) -> Result<u64, ChangeError> {
    let byte = *b.get(*pos).ok_or(ChangeError::Truncated)?;
    if byte < 0x80 {
        *pos += 1;
        return Ok(u64::from(byte));
    }
    varint_long(b, pos)
}

/// [`varint`] of two bytes or more.
#[inline(never)]
fn varint_long(b: &[u8], pos: &mut usize) -> Result<u64, ChangeError> {
    let mut value = 0u64;
    for i in 0..10 {
        let byte = *b.get(*pos).ok_or(ChangeError::Truncated)?;
        *pos += 1;
        if i == 9 && byte > 1 {
            return Err(ChangeError::Varint);
        }
        value |= u64::from(byte & 0x7f) << (7 * i);
        if byte & 0x80 == 0 {
            return Ok(value);
        }
    }
    Err(ChangeError::Varint)
}

/// Reads a length at `*pos` and returns the range it covers, within `end`.
#[inline]
fn span(b: &[u8], pos: &mut usize, end: usize) -> Result<Range<usize>, ChangeError> {
    let len = usize::try_from(varint(b, pos)?).map_err(|_| ChangeError::Truncated)?;
    let start = *pos;
    let stop = start.checked_add(len).ok_or(ChangeError::Truncated)?;
    if stop > end {
        return Err(ChangeError::Truncated);
    }
    *pos = stop;
    Ok(start..stop)
}

/// Reads a field key at `*pos` (within `end`): `(field, wire type)`.
#[inline]
fn key(b: &[u8], pos: &mut usize, end: usize) -> Result<(u32, u8), ChangeError> {
    let k = varint(b, pos)?;
    if *pos > end {
        return Err(ChangeError::Truncated);
    }
    // A key is at most 32 bits (field numbers below 2^29).
    let key = u32::try_from(k).map_err(|_| ChangeError::Key(k))?;
    let (field, wire_type) = (key >> 3, (key & 7) as u8);
    if field == 0 || !matches!(wire_type, VARINT | FIXED64 | DELIMITED | FIXED32) {
        return Err(ChangeError::Key(k));
    }
    Ok((field, wire_type))
}

/// Checks that known `field` has wire type `expected`.
#[inline]
fn expect(field: u32, wire_type: u8, expected: u8) -> Result<(), ChangeError> {
    if wire_type == expected {
        Ok(())
    } else {
        Err(ChangeError::WireType {
            field,
            wire_type,
            expected,
        })
    }
}

/// Skips the value of an unknown field (prost skips them too).
fn skip(b: &[u8], pos: &mut usize, end: usize, wire_type: u8) -> Result<(), ChangeError> {
    let stop = match wire_type {
        VARINT => {
            varint(b, pos)?;
            *pos
        }
        FIXED64 => pos.checked_add(8).ok_or(ChangeError::Truncated)?,
        FIXED32 => pos.checked_add(4).ok_or(ChangeError::Truncated)?,
        _ => span(b, pos, end)?.end,
    };
    if stop > end {
        return Err(ChangeError::Truncated);
    }
    *pos = stop;
    Ok(())
}

/// A varint field's value, within `end`.
#[inline]
fn varint_in(b: &[u8], pos: &mut usize, end: usize) -> Result<u64, ChangeError> {
    let v = varint(b, pos)?;
    if *pos > end {
        return Err(ChangeError::Truncated);
    }
    Ok(v)
}

/// A string field as a slice of `body`.
#[inline]
fn text(body: &Bytes, range: Range<usize>) -> Result<ByteString, ChangeError> {
    if range.is_empty() {
        return Ok(ByteString::new());
    }
    ByteString::try_from(body.slice(range)).map_err(|_| ChangeError::Utf8)
}

impl ChangeDecoder {
    /// Decodes the `Change` message in `body[range]`.
    fn decode_change(&mut self, body: &Bytes, range: Range<usize>) -> Result<Change, ChangeError> {
        let b = &body[..];
        let end = range.end;
        let mut pos = range.start;
        let mut repl_seq = None;
        let mut op = None;
        while pos < end {
            let (field, wire_type) = key(b, &mut pos, end)?;
            match field {
                CHANGE_SEQ_FIELD => {
                    expect(field, wire_type, VARINT)?;
                    once(&mut repl_seq, varint_in(b, &mut pos, end)?, field)?;
                }
                CHANGE_CLIENT_FRAME_FIELD..=CHANGE_KV_FIELD | CHANGE_CLIENT_DROPPED_FIELD => {
                    expect(field, wire_type, DELIMITED)?;
                    if op.is_some() {
                        return Err(ChangeError::Repeated(field));
                    }
                    let r = span(b, &mut pos, end)?;
                    op = Some(match field {
                        CHANGE_CLIENT_FRAME_FIELD => {
                            let (client_id, frame) = client_frame(body, r)?;
                            let frames = match frame {
                                Some(f) => vec![client_frame_of(f)?],
                                None => Vec::new(),
                            };
                            ChangeOp::ClientFrame { client_id, frames }
                        }
                        CHANGE_JOINED_FIELD => ChangeOp::ClientJoined(Box::new(
                            proto::ClientInfo::decode(body.slice(r))?,
                        )),
                        CHANGE_LEFT_FIELD => ChangeOp::ClientLeft(text(body, r)?),
                        CHANGE_SENT_FIELD => {
                            let (client_id, frame) = client_frame(body, r)?;
                            let out = frame.map(|f| self.sent_out(f)).transpose()?;
                            ChangeOp::Sent { client_id, out }
                        }
                        CHANGE_CLIENT_ACK_FIELD => client_ack(body, r)?,
                        CHANGE_CLIENT_DROPPED_FIELD => client_dropped(body, r)?,
                        _ => ChangeOp::Kv(Box::new(proto::KvEntry::decode(body.slice(r))?)),
                    });
                }
                _ => skip(b, &mut pos, end, wire_type)?,
            }
        }
        Ok(Change {
            repl_seq: repl_seq.unwrap_or(0),
            op,
        })
    }
}

/// Stores `value` in `slot`, the one occurrence field `field` may have.
fn once<T>(slot: &mut Option<T>, value: T, field: u32) -> Result<(), ChangeError> {
    match slot.replace(value) {
        Some(_) => Err(ChangeError::Repeated(field)),
        None => Ok(()),
    }
}

/// The client id and the frame's bytes of the `ClientFrame` in
/// `body[range]`.
fn client_frame(
    body: &Bytes,
    range: Range<usize>,
) -> Result<(ByteString, Option<Bytes>), ChangeError> {
    let b = &body[..];
    let end = range.end;
    let mut pos = range.start;
    let mut client_id = None;
    let mut frame = None;
    while pos < end {
        let (field, wire_type) = key(b, &mut pos, end)?;
        match field {
            CLIENT_ID_FIELD => {
                expect(field, wire_type, DELIMITED)?;
                let r = span(b, &mut pos, end)?;
                once(&mut client_id, text(body, r)?, field)?;
            }
            CLIENT_FRAME_FRAME_FIELD => {
                expect(field, wire_type, DELIMITED)?;
                let r = span(b, &mut pos, end)?;
                once(&mut frame, body.slice(r), field)?;
            }
            _ => skip(b, &mut pos, end, wire_type)?,
        }
    }
    Ok((client_id.unwrap_or_default(), frame))
}

/// The `ClientAck` in `body[range]`.
fn client_ack(body: &Bytes, range: Range<usize>) -> Result<ChangeOp, ChangeError> {
    let b = &body[..];
    let end = range.end;
    let mut pos = range.start;
    let mut client_id = None;
    let mut up_to = None;
    while pos < end {
        let (field, wire_type) = key(b, &mut pos, end)?;
        match field {
            CLIENT_ID_FIELD => {
                expect(field, wire_type, DELIMITED)?;
                let r = span(b, &mut pos, end)?;
                once(&mut client_id, text(body, r)?, field)?;
            }
            CLIENT_ACK_UP_TO_FIELD => {
                expect(field, wire_type, VARINT)?;
                once(&mut up_to, varint_in(b, &mut pos, end)?, field)?;
            }
            _ => skip(b, &mut pos, end, wire_type)?,
        }
    }
    Ok(ChangeOp::ClientAck {
        client_id: client_id.unwrap_or_default(),
        up_to: up_to.unwrap_or(0),
    })
}

/// The `ClientDropped` in `body[range]`: its seqs packed (as the primary
/// writes them) or one per field, as protobuf allows; at most one seq per
/// byte of the frame is allocated.
fn client_dropped(body: &Bytes, range: Range<usize>) -> Result<ChangeOp, ChangeError> {
    let b = &body[..];
    let end = range.end;
    let mut pos = range.start;
    let mut client_id = None;
    let mut seqs = Vec::new();
    while pos < end {
        let (field, wire_type) = key(b, &mut pos, end)?;
        match (field, wire_type) {
            (CLIENT_ID_FIELD, _) => {
                expect(field, wire_type, DELIMITED)?;
                let r = span(b, &mut pos, end)?;
                once(&mut client_id, text(body, r)?, field)?;
            }
            (CLIENT_DROPPED_SEQS_FIELD, DELIMITED) => {
                let r = span(b, &mut pos, end)?;
                let mut p = r.start;
                while p < r.end {
                    seqs.push(varint_in(b, &mut p, r.end)?);
                }
            }
            (CLIENT_DROPPED_SEQS_FIELD, _) => {
                expect(field, wire_type, VARINT)?;
                seqs.push(varint_in(b, &mut pos, end)?);
            }
            _ => skip(b, &mut pos, end, wire_type)?,
        }
    }
    Ok(ChangeOp::ClientDropped {
        client_id: client_id.unwrap_or_default(),
        seqs,
    })
}

impl ChangeDecoder {
    /// A `sent` frame as the queue entry a retransmit buffer keeps: a
    /// delivery in the hub's layout stays pre-encoded (its shared fields those
    /// of the last delivery when they are the same, else re-encoded once; no
    /// string built, the payload a slice of the buffer), an `Ok` is read by
    /// hand, anything else is decoded by prost.
    fn sent_out(&mut self, frame: Bytes) -> Result<Out, ChangeError> {
        if let Some(d) = decode_queued_delivery_reusing(&frame, self.last_head.as_ref()) {
            self.last_head = Some(d.head.clone());
            return Ok(Out::Deliver {
                seq: d.seq,
                acked: d.acked,
                sub_id: d.sub_id,
                shared: Shared::new(d.head, d.payload),
            });
        }
        // A publisher's confirmation, the other frame sent most.
        if let Some(ok) = decode_ok(&frame) {
            return Ok(Out::from(ok));
        }
        Ok(Out::from(Frame::decode(frame)?))
    }
}

/// A client's frame: a `Publish` (what clients send most) by hand, its
/// payload a slice of the buffer; anything else by prost (clients send no
/// `Deliver`, so the wire crate's decoder of those is not tried).
fn client_frame_of(frame: Bytes) -> Result<Frame, ChangeError> {
    if let Some(f) = decode_publish(&frame, Some(&frame)) {
        return Ok(f);
    }
    Ok(Frame::decode(frame)?)
}

/// Whether `body` is a frame whose kind is a change (the standby keeps
/// such frames as they are until their commit point, then decodes them
/// with [`decode_link_frame`]); `false` for any other frame, and for one
/// whose layout is broken (decoding it then says why). A lone change, as
/// the primary writes every one, is recognised from its key and length
/// alone; anything else is peeked.
pub fn is_change(body: &[u8]) -> bool {
    let mut pos = 0;
    matches!(lone_change(body, &mut pos), Some(Ok(_)))
        || peek_kind(body).is_ok_and(|k| k.tag == FRAME_CHANGE_FIELD)
}

#[cfg(test)]
mod tests;
