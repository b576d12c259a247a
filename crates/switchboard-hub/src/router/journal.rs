//! The replication change log a primary keeps while a standby is attached:
//! each input the router handles that changes replicated state, numbered
//! with consecutive `repl_seq`s (see [`replica`](super::replica) for what
//! is logged and why replaying it reproduces the state), and each
//! sequenced frame sent to a reliable client (`sent`).

use bytes::{BufMut, BytesMut};
use prost::Message;
use switchboard_wire::deliver::HandFrame;
use switchboard_wire::proto::{self, change::Op, frame::Kind};
use switchboard_wire::{
    decode_frame, is_logged_kind, put_frame, put_varint, FastBuf, Frame, LENGTH_PREFIX_LEN,
};

use super::changes::{
    CHANGE_CLIENT_ACK_FIELD, CHANGE_CLIENT_DROPPED_FIELD, CHANGE_CLIENT_FRAME_FIELD,
    CHANGE_JOINED_FIELD, CHANGE_LEFT_FIELD, CHANGE_SENT_FIELD, CHANGE_SEQ_FIELD,
    CLIENT_ACK_UP_TO_FIELD, CLIENT_DROPPED_SEQS_FIELD, CLIENT_FRAME_FRAME_FIELD, CLIENT_ID_FIELD,
    FRAME_CHANGE_FIELD,
};
use crate::outbox::Out;

/// Bounds of the change log a primary buffers between two
/// [`Router::take_changes`](super::Router::take_changes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChangeLogLimits {
    /// Most changes buffered.
    pub max_changes: usize,
    /// Most bytes buffered (encoded size of the changes).
    pub max_bytes: usize,
}

impl Default for ChangeLogLimits {
    fn default() -> Self {
        ChangeLogLimits::of(&crate::Limits::default())
    }
}

impl ChangeLogLimits {
    /// The bounds a hub's [`Limits`](crate::Limits) set
    /// (`change_log_changes`, `change_log_bytes`).
    pub fn of(limits: &crate::Limits) -> Self {
        ChangeLogLimits {
            max_changes: limits.change_log_changes,
            max_bytes: limits.change_log_bytes,
        }
    }
}

/// The share of the log's bounds (one `SEND_AT`th) at which the router
/// task sends the changes without waiting for the end of its batch of
/// inputs ([`Journal::wants_sending`]).
pub(crate) const SEND_AT: usize = 16;

/// Room a batch of changes keeps free at its end for the commit point the
/// router task appends (a `Heartbeat` frame: epoch, `repl_seq` and role,
/// under 40 bytes), so that appending it never copies the batch.
pub(crate) const COMMIT_ROOM: usize = 64;

/// Largest buffer a take hands on to the next batch as its starting
/// capacity (a burst's large buffer is not kept for every later batch).
const MAX_NEXT_CAPACITY: usize = 1 << 20;

/// Smallest starting capacity a take hands on to the next batch.
const MIN_NEXT_CAPACITY: usize = 1 << 10;

/// Changes were discarded because they were not taken in time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the change log overflowed and {lost} changes were discarded; send the standby a fresh snapshot")]
pub struct ChangeLogOverflow {
    /// How many changes were discarded.
    pub lost: u64,
}

/// Encoded length of a length-delimited field `field` of `len` bytes
/// (key, length and body); 0 for an empty string field (`proto3` leaves
/// it out).
fn delimited_len(field: u32, len: usize, omit_empty: bool) -> usize {
    use prost::encoding::{encoded_len_varint, key_len};
    if omit_empty && len == 0 {
        0
    } else {
        key_len(field) + encoded_len_varint(len as u64) + len
    }
}

/// Key of length-delimited field `field`, as a varint's value.
const fn delimited_key(field: u32) -> u64 {
    (field as u64) << 3 | 2
}

/// Appends `Frame{change: Change{repl_seq, <field>: body}}` to `buf`,
/// length-prefixed, where operation `field` is length-delimited and
/// `body` writes its `body_len` bytes. Returns the bytes appended. The
/// prefix, keys and lengths go through a stack buffer: one `put_slice`
/// (prost's `encode_varint` into the `BytesMut`, byte by byte, cost more
/// than the rest of the change).
fn put_change(
    buf: &mut BytesMut,
    repl_seq: u64,
    field: u32,
    body_len: usize,
    body: impl FnOnce(&mut BytesMut),
) -> usize {
    use prost::encoding::{encoded_len_varint, key_len};
    let change = key_len(CHANGE_SEQ_FIELD)
        + encoded_len_varint(repl_seq)
        + delimited_len(field, body_len, false);
    let frame = delimited_len(FRAME_CHANGE_FIELD, change, false);
    buf.reserve(LENGTH_PREFIX_LEN + frame + COMMIT_ROOM);
    // prefix 4 + key 2 + length 10 + seq key 1 + seq 10 + key 2 + length 10
    let mut head = [0u8; 39];
    head[..LENGTH_PREFIX_LEN].copy_from_slice(&(frame as u32).to_be_bytes());
    let mut n = put_varint(
        &mut head,
        LENGTH_PREFIX_LEN,
        delimited_key(FRAME_CHANGE_FIELD),
    );
    n = put_varint(&mut head, n, change as u64);
    n = put_varint(&mut head, n, u64::from(CHANGE_SEQ_FIELD << 3));
    n = put_varint(&mut head, n, repl_seq);
    n = put_varint(&mut head, n, delimited_key(field));
    n = put_varint(&mut head, n, body_len as u64);
    buf.put_slice(&head[..n]);
    body(buf);
    LENGTH_PREFIX_LEN + frame
}

/// Writes a client id as field 1 (left out when empty, as `proto3` does).
fn put_client_id(b: &mut BytesMut, client_id: &str) {
    if !client_id.is_empty() {
        let mut head = [0u8; 11];
        let n = put_varint(&mut head, 0, delimited_key(CLIENT_ID_FIELD));
        let n = put_varint(&mut head, n, client_id.len() as u64);
        b.put_slice(&head[..n]);
        b.put_slice(client_id.as_bytes());
    }
}

/// Appends a `ClientFrame` change (`field`: `client_frame` or `sent`) for
/// `client_id` whose frame is `frame_len` bytes written by `frame`.
fn put_client_frame(
    buf: &mut BytesMut,
    repl_seq: u64,
    field: u32,
    client_id: &str,
    frame_len: usize,
    frame: impl FnOnce(&mut BytesMut),
) -> usize {
    let body = delimited_len(CLIENT_ID_FIELD, client_id.len(), true)
        + delimited_len(CLIENT_FRAME_FRAME_FIELD, frame_len, false);
    put_change(buf, repl_seq, field, body, |b| {
        put_client_id(b, client_id);
        let mut head = [0u8; 11];
        let n = put_varint(&mut head, 0, delimited_key(CLIENT_FRAME_FRAME_FIELD));
        let n = put_varint(&mut head, n, frame_len as u64);
        b.put_slice(&head[..n]);
        frame(b);
    })
}

/// The primary's side of the change log, kept in the router. Logging off
/// (no standby) costs one branch per call. Changes are encoded as they
/// are logged, straight into the link frames the router task ships (no
/// `Change` built, no client id or frame copied), except a client's
/// `Request`: it stays a [`proto::Change`] until the next change, because
/// [`Journal::amend_request`] may still name its responder.
#[derive(Debug, Default)]
pub(super) struct Journal {
    /// `Some` while changes are logged.
    limits: Option<ChangeLogLimits>,
    /// Sequence number of the last change (or the snapshot restored).
    seq: u64,
    /// The changes logged since the last take, as length-prefixed
    /// `Frame{change}`s (`request` not included).
    buf: BytesMut,
    /// Changes logged since the last take (`request` included).
    count: usize,
    /// The last change logged, when it is a client's `Request`.
    request: Option<proto::Change>,
    /// Changes discarded since the last take.
    lost: u64,
}

impl Journal {
    /// Sequence number of the last change logged (or applied).
    pub fn repl_seq(&self) -> u64 {
        self.seq
    }

    /// Continues numbering after `seq` (a restored snapshot, an applied
    /// change).
    pub fn set_repl_seq(&mut self, seq: u64) {
        self.seq = seq;
    }

    /// Whether changes are logged.
    pub fn is_on(&self) -> bool {
        self.limits.is_some()
    }

    /// Whether the changes not yet taken fill [`SEND_AT`] of the log or
    /// more (by count or bytes): time to send them, so that the next
    /// input overflows the log only if it alone logs almost all of it.
    pub fn wants_sending(&self) -> bool {
        self.limits.is_some_and(|l| {
            self.lost == 0
                && (self.count >= l.max_changes / SEND_AT
                    || self.buf.len() >= l.max_bytes / SEND_AT)
        })
    }

    /// Starts logging (or changes the limits).
    pub fn enable(&mut self, limits: ChangeLogLimits) {
        self.limits = Some(limits);
    }

    /// Stops logging and discards the changes not taken.
    pub fn disable(&mut self) {
        self.limits = None;
        self.buf = BytesMut::new();
        self.count = 0;
        self.request = None;
        self.lost = 0;
    }

    /// Logs a frame a client sent, if it is of a logged kind.
    pub fn frame(&mut self, client_id: &str, frame: &Frame) {
        if self.limits.is_none() {
            return;
        }
        match &frame.kind {
            Some(Kind::Request(_)) => {
                let Some(seq) = self.admit(frame.encoded_len() + client_id.len() + 32) else {
                    return;
                };
                self.request = Some(proto::Change {
                    repl_seq: seq,
                    op: Some(Op::ClientFrame(Box::new(proto::ClientFrame {
                        client_id: client_id.to_owned(),
                        frame: Some(Box::new(frame.clone())),
                    }))),
                });
            }
            Some(kind) if is_logged_kind(kind) => {
                let hand = HandFrame::of(frame);
                let len = hand.map_or_else(|| frame.encoded_len(), |h| h.encoded_len());
                let Some(seq) = self.admit(len + client_id.len() + 32) else {
                    return;
                };
                put_client_frame(
                    &mut self.buf,
                    seq,
                    CHANGE_CLIENT_FRAME_FIELD,
                    client_id,
                    len,
                    |b| match hand {
                        Some(h) => h.encode_body(b),
                        None => frame.encode_raw(&mut FastBuf(b)),
                    },
                );
            }
            _ => {}
        }
    }

    /// Logs a registration the router accepted.
    pub fn joined(&mut self, info: &proto::ClientInfo) {
        let len = info.encoded_len();
        if let Some(seq) = self.admit(len + 16) {
            put_change(&mut self.buf, seq, CHANGE_JOINED_FIELD, len, |b| {
                info.encode_raw(&mut FastBuf(b))
            });
        }
    }

    /// Logs the end of a registration.
    pub fn left(&mut self, client_id: &str) {
        if let Some(seq) = self.admit(client_id.len() + 16) {
            put_change(
                &mut self.buf,
                seq,
                CHANGE_LEFT_FIELD,
                client_id.len(),
                |b| b.put_slice(client_id.as_bytes()),
            );
        }
    }

    /// Logs a reliable client's acknowledgement that trimmed its
    /// retransmit buffer.
    pub fn client_ack(&mut self, client_id: &str, up_to: u64) {
        use prost::encoding::{encode_key, encode_varint, encoded_len_varint, key_len, WireType};
        let Some(seq) = self.admit(client_id.len() + 32) else {
            return;
        };
        let up_to_len = if up_to == 0 {
            0
        } else {
            key_len(CLIENT_ACK_UP_TO_FIELD) + encoded_len_varint(up_to)
        };
        let body = delimited_len(CLIENT_ID_FIELD, client_id.len(), true) + up_to_len;
        put_change(&mut self.buf, seq, CHANGE_CLIENT_ACK_FIELD, body, |b| {
            put_client_id(b, client_id);
            if up_to != 0 {
                let b = &mut FastBuf(b);
                encode_key(CLIENT_ACK_UP_TO_FIELD, WireType::Varint, b);
                encode_varint(up_to, b);
            }
        });
    }

    /// Logs that a reliable client's numbered deliveries `seqs` were
    /// dropped from its queue (`ClientDropped`, its seqs packed).
    pub fn client_dropped(&mut self, client_id: &str, seqs: &[u64]) {
        use prost::encoding::{encode_key, encode_varint, encoded_len_varint, WireType};
        if self.limits.is_none() || seqs.is_empty() {
            return;
        }
        let packed: usize = seqs.iter().map(|&s| encoded_len_varint(s)).sum();
        let Some(seq) = self.admit(client_id.len() + packed + 32) else {
            return;
        };
        let body = delimited_len(CLIENT_ID_FIELD, client_id.len(), true)
            + delimited_len(CLIENT_DROPPED_SEQS_FIELD, packed, false);
        put_change(&mut self.buf, seq, CHANGE_CLIENT_DROPPED_FIELD, body, |b| {
            put_client_id(b, client_id);
            encode_key(CLIENT_DROPPED_SEQS_FIELD, WireType::LengthDelimited, b);
            encode_varint(packed as u64, b);
            for &s in seqs {
                encode_varint(s, b);
            }
        });
    }

    /// Logs a sequenced frame queued for a reliable client (encoded
    /// straight from the queued [`Out`], never decoded into a `Frame`).
    pub fn sent(&mut self, client_id: &str, out: &Out) {
        if self.limits.is_none() {
            return;
        }
        // Deliveries and a publisher's confirmations, the frames sent
        // most, `Out` encodes by hand itself.
        let len = out.encoded_len();
        let Some(seq) = self.admit(len + client_id.len() + 32) else {
            return;
        };
        put_client_frame(&mut self.buf, seq, CHANGE_SENT_FIELD, client_id, len, |b| {
            out.encode_body(b)
        });
    }

    /// Rewrites the request of the last change logged, if that is a
    /// client's `Request` with correlation id `id` (the frame the router
    /// is handling: see `PubSub::pick_responder`).
    pub fn amend_request(&mut self, id: u64, amend: impl FnOnce(&mut proto::Request)) {
        let Some(change) = self.request.as_mut() else {
            return;
        };
        let Some(Op::ClientFrame(cf)) = change.op.as_mut() else {
            return;
        };
        let Some(Kind::Request(r)) = cf.frame.as_mut().and_then(|f| f.kind.as_mut()) else {
            return;
        };
        if r.id != id {
            return;
        }
        amend(r);
    }

    /// Moves the changes logged since the last take onto `out`, in order;
    /// an error when some were discarded (see
    /// [`Router::take_changes`](super::Router::take_changes)).
    pub fn take(&mut self, out: &mut Vec<proto::Change>) -> Result<(), ChangeLogOverflow> {
        let mut buf = BytesMut::new();
        self.take_encoded(&mut buf)?;
        let mut bytes = buf.freeze();
        while bytes.len() >= LENGTH_PREFIX_LEN {
            let len = u32::from_be_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]) as usize;
            let _ = bytes.split_to(LENGTH_PREFIX_LEN);
            let body = bytes.split_to(len.min(bytes.len()));
            // The journal wrote these frames itself.
            if let Ok(Frame {
                kind: Some(Kind::Change(c)),
                ..
            }) = decode_frame(body, usize::MAX)
            {
                out.push(*c);
            }
        }
        Ok(())
    }

    /// Appends the changes logged since the last take to `buf` as
    /// length-prefixed `Frame{change}`s; returns how many.
    pub fn take_encoded(&mut self, buf: &mut BytesMut) -> Result<usize, ChangeLogOverflow> {
        if self.lost > 0 {
            let lost = std::mem::take(&mut self.lost);
            self.discard();
            return Err(ChangeLogOverflow { lost });
        }
        self.seal();
        if self.buf.is_empty() {
            // Nothing logged: no buffer handed on.
        } else if buf.is_empty() {
            // The batch itself, with its free room for the commit point; a
            // split would leave it none (appending a heartbeat then copied
            // the whole batch), and would share its allocation with the
            // next batch.
            // The next batch starts with room for twice this one (a
            // batch a little larger than the last no longer grows, and so
            // copies, its buffer while it is written).
            let next = BytesMut::with_capacity(
                (2 * (self.buf.len() + COMMIT_ROOM)).clamp(MIN_NEXT_CAPACITY, MAX_NEXT_CAPACITY),
            );
            *buf = std::mem::replace(&mut self.buf, next);
        } else {
            buf.unsplit(self.buf.split());
        }
        Ok(std::mem::take(&mut self.count))
    }

    /// Drops the changes logged since the last take; logging goes on.
    pub fn discard(&mut self) {
        self.buf.clear();
        self.count = 0;
        self.request = None;
        self.lost = 0;
    }

    /// Encodes the request kept for [`Journal::amend_request`].
    fn seal(&mut self) {
        if let Some(c) = self.request.take() {
            put_frame(&Frame::from(c), &mut self.buf);
        }
    }

    /// Numbers the next change, whose link frame takes about `len` bytes;
    /// `None` when it is not to be written (logging off, or the log
    /// overflowed: everything since the last take is then discarded and
    /// counted).
    fn admit(&mut self, len: usize) -> Option<u64> {
        let limits = self.limits?;
        self.seq += 1;
        if self.lost > 0 {
            self.lost += 1;
            return None;
        }
        self.seal();
        if self.count >= limits.max_changes || self.buf.len() + len > limits.max_bytes {
            self.lost = self.count as u64 + 1;
            self.buf = BytesMut::new();
            self.count = 0;
            return None;
        }
        self.count += 1;
        Some(self.seq)
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;
    use switchboard_wire::deliver::DeliverHead;

    use super::*;

    fn change(repl_seq: u64, op: Op) -> proto::Change {
        proto::Change {
            repl_seq,
            op: Some(op),
        }
    }

    /// Each change written by hand is byte for byte what prost writes for
    /// the same `Frame{change}`.
    #[test]
    fn hand_encoded_changes_are_prosts_encoding() {
        let mut j = Journal::default();
        j.enable(ChangeLogLimits::default());
        let publish = Frame {
            seq: 7,
            acked: 3,
            kind: Some(Kind::Publish(proto::Publish {
                topic: "a.b".into(),
                payload: Bytes::from_static(b"payload"),
                id: 9,
                ..Default::default()
            })),
        };
        let deliver = Out::Deliver {
            seq: 5,
            acked: 0,
            sub_id: 2,
            shared: crate::outbox::Shared::new(
                DeliverHead::new("a.b", "pub", "", &[]),
                Bytes::from_static(b"payload"),
            ),
        };
        let info = proto::ClientInfo {
            client_id: "sub".into(),
            reliable: true,
            ..Default::default()
        };
        let request = Frame::from(proto::Request {
            id: 4,
            service: "svc".into(),
            ..Default::default()
        });
        j.joined(&info);
        j.frame("pub", &publish);
        j.frame("", &publish);
        j.frame("pub", &request);
        j.amend_request(4, |r| r.to = "responder".into());
        j.sent("sub", &deliver);
        j.sent("sub", &Out::from(Frame::ok(9)));
        j.client_ack("sub", 5);
        j.client_ack("sub", 0);
        j.left("sub");
        j.left("");
        j.client_dropped("sub", &[6, 300]);
        let mut amended = request.clone();
        if let Some(Kind::Request(r)) = amended.kind.as_mut() {
            r.to = "responder".into();
        }
        let cf = |id: &str, f: Frame| {
            Box::new(proto::ClientFrame {
                client_id: id.into(),
                frame: Some(Box::new(f)),
            })
        };
        let expected = [
            change(1, Op::ClientJoined(info.clone())),
            change(2, Op::ClientFrame(cf("pub", publish.clone()))),
            change(3, Op::ClientFrame(cf("", publish.clone()))),
            change(4, Op::ClientFrame(cf("pub", amended))),
            change(5, Op::Sent(cf("sub", deliver.clone().into_frame()))),
            change(6, Op::Sent(cf("sub", Frame::ok(9)))),
            change(
                7,
                Op::ClientAck(proto::ClientAck {
                    client_id: "sub".into(),
                    up_to: 5,
                }),
            ),
            change(
                8,
                Op::ClientAck(proto::ClientAck {
                    client_id: "sub".into(),
                    up_to: 0,
                }),
            ),
            change(9, Op::ClientLeft("sub".into())),
            change(10, Op::ClientLeft(String::new())),
            change(
                11,
                Op::ClientDropped(proto::ClientDropped {
                    client_id: "sub".into(),
                    seqs: vec![6, 300],
                }),
            ),
        ];
        let mut want = BytesMut::new();
        for c in &expected {
            put_frame(&Frame::from(c.clone()), &mut want);
        }
        let mut got = BytesMut::new();
        assert_eq!(j.take_encoded(&mut got), Ok(expected.len()));
        assert_eq!(got, want);
        assert_eq!(j.repl_seq(), 11);
        // And the decoded form, for `take_changes`.
        j.left("x");
        let mut out = Vec::new();
        j.take(&mut out).unwrap();
        assert_eq!(out, vec![change(12, Op::ClientLeft("x".into()))]);
    }

    #[test]
    fn an_overflow_discards_everything_since_the_last_take() {
        let mut j = Journal::default();
        j.enable(ChangeLogLimits {
            max_changes: 2,
            max_bytes: 1 << 20,
        });
        j.left("a");
        j.frame("a", &Frame::from(proto::Request::default()));
        j.left("b");
        j.left("c");
        let mut buf = BytesMut::new();
        assert_eq!(j.take_encoded(&mut buf), Err(ChangeLogOverflow { lost: 4 }));
        assert!(buf.is_empty());
        j.left("d");
        assert_eq!(j.take_encoded(&mut buf), Ok(1));
        assert_eq!(j.repl_seq(), 5);
    }

    #[test]
    fn the_log_wants_sending_at_a_sixteenth_of_either_bound() {
        let mut j = Journal::default();
        assert!(!j.wants_sending(), "not logging");
        j.enable(ChangeLogLimits {
            max_changes: 2 * SEND_AT,
            max_bytes: 1 << 20,
        });
        j.left("a");
        assert!(!j.wants_sending());
        j.left("b");
        assert!(j.wants_sending(), "two of 32 changes");
        j.take_encoded(&mut BytesMut::new()).unwrap();
        assert!(!j.wants_sending(), "taken");

        j.enable(ChangeLogLimits {
            max_changes: 1 << 20,
            max_bytes: 64 * SEND_AT,
        });
        j.left("a-client-id-long-enough-to-pass-sixty-four-bytes-of-change-log");
        assert!(j.wants_sending(), "64 of 1,024 bytes");

        // After an overflow only a fresh snapshot helps.
        j.enable(ChangeLogLimits {
            max_changes: 1,
            max_bytes: 1 << 20,
        });
        j.take_encoded(&mut BytesMut::new()).unwrap();
        j.left("a");
        j.left("b");
        assert!(!j.wants_sending());
        assert!(j.take_encoded(&mut BytesMut::new()).is_err());
    }
}
