//! The replication change log a primary keeps while a standby is attached:
//! each input the router handles that changes replicated state, numbered
//! with consecutive `repl_seq`s (see [`replica`](super::replica) for what
//! is logged and why replaying it reproduces the state), and each
//! sequenced frame sent to a reliable client (`sent`).

use bytes::{BufMut, BytesMut};
use prost::Message;
use switchboard_wire::proto::{self, change::Op, frame::Kind};
use switchboard_wire::{is_logged_kind, put_frame, Frame};

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
        ChangeLogLimits {
            max_changes: 65_536,
            max_bytes: 64 * 1024 * 1024,
        }
    }
}

/// Changes were discarded because they were not taken in time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the change log overflowed and {lost} changes were discarded; send the standby a fresh snapshot")]
pub struct ChangeLogOverflow {
    /// How many changes were discarded.
    pub lost: u64,
}

/// One logged change. A `sent` frame is kept as the queued [`Out`] and
/// encoded straight onto the link, never decoded into a `Frame`.
#[derive(Debug)]
enum Logged {
    Change(proto::Change),
    Sent {
        repl_seq: u64,
        client_id: String,
        out: Out,
    },
}

/// Field numbers used to encode a `sent` change by hand.
const FRAME_CHANGE_FIELD: u32 = 92;
const CHANGE_SENT_FIELD: u32 = 13;

impl Logged {
    fn into_change(self) -> proto::Change {
        match self {
            Logged::Change(c) => c,
            Logged::Sent {
                repl_seq,
                client_id,
                out,
            } => proto::Change {
                repl_seq,
                op: Some(Op::Sent(Box::new(proto::ClientFrame {
                    client_id,
                    frame: Some(Box::new(out.into_frame())),
                }))),
            },
        }
    }

    /// Lengths of a `sent` change's link frame, outermost first: the
    /// `Frame{change}` body, the `Change`, the `ClientFrame` and the frame
    /// sent.
    fn sent_lens(repl_seq: u64, client_id: &str, out: &Out) -> (usize, usize, usize, usize) {
        use prost::encoding::encoded_len_varint as v;
        let inner = out.encoded_len();
        let id = if client_id.is_empty() {
            0
        } else {
            1 + v(client_id.len() as u64) + client_id.len()
        };
        let cf = id + 1 + v(inner as u64) + inner;
        let change = 1 + v(repl_seq) + 1 + v(cf as u64) + cf;
        let frame = 2 + v(change as u64) + change;
        (frame, change, cf, inner)
    }

    /// Appends the length-prefixed link frame carrying this change.
    fn encode(self, buf: &mut BytesMut) {
        use prost::encoding::{encode_key, encode_varint, WireType};
        match self {
            Logged::Change(c) => put_frame(&Frame::from(c), buf),
            Logged::Sent {
                repl_seq,
                client_id,
                out,
            } => {
                let (frame, change, cf, inner) = Self::sent_lens(repl_seq, &client_id, &out);
                buf.reserve(4 + frame);
                buf.put_u32(frame as u32);
                encode_key(FRAME_CHANGE_FIELD, WireType::LengthDelimited, buf);
                encode_varint(change as u64, buf);
                encode_key(1, WireType::Varint, buf);
                encode_varint(repl_seq, buf);
                encode_key(CHANGE_SENT_FIELD, WireType::LengthDelimited, buf);
                encode_varint(cf as u64, buf);
                if !client_id.is_empty() {
                    encode_key(1, WireType::LengthDelimited, buf);
                    encode_varint(client_id.len() as u64, buf);
                    buf.put_slice(client_id.as_bytes());
                }
                encode_key(2, WireType::LengthDelimited, buf);
                encode_varint(inner as u64, buf);
                out.encode_body(buf);
            }
        }
    }

    fn len(&self) -> usize {
        match self {
            Logged::Change(c) => c.encoded_len(),
            Logged::Sent {
                repl_seq,
                client_id,
                out,
            } => Self::sent_lens(*repl_seq, client_id, out).0,
        }
    }
}

/// The primary's side of the change log, kept in the router. Logging off
/// (no standby) costs one branch per call.
#[derive(Debug, Default)]
pub(super) struct Journal {
    /// `Some` while changes are logged.
    limits: Option<ChangeLogLimits>,
    /// Sequence number of the last change (or the snapshot restored).
    seq: u64,
    changes: Vec<Logged>,
    bytes: usize,
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

    /// Starts logging (or changes the limits).
    pub fn enable(&mut self, limits: ChangeLogLimits) {
        self.limits = Some(limits);
    }

    /// Stops logging and discards the changes not taken.
    pub fn disable(&mut self) {
        self.limits = None;
        self.changes = Vec::new();
        self.bytes = 0;
        self.lost = 0;
    }

    /// Logs a frame a client sent, if it is of a logged kind.
    pub fn frame(&mut self, client_id: &str, frame: &Frame) {
        if self.limits.is_none() || !frame.kind.as_ref().is_some_and(is_logged_kind) {
            return;
        }
        self.push(Op::ClientFrame(Box::new(proto::ClientFrame {
            client_id: client_id.to_owned(),
            frame: Some(Box::new(frame.clone())),
        })));
    }

    /// Logs a registration the router accepted.
    pub fn joined(&mut self, info: &proto::ClientInfo) {
        if self.limits.is_some() {
            self.push(Op::ClientJoined(info.clone()));
        }
    }

    /// Logs the end of a registration.
    pub fn left(&mut self, client_id: &str) {
        if self.limits.is_some() {
            self.push(Op::ClientLeft(client_id.to_owned()));
        }
    }

    /// Logs a reliable client's acknowledgement that trimmed its
    /// retransmit buffer.
    pub fn client_ack(&mut self, client_id: &str, up_to: u64) {
        if self.limits.is_some() {
            self.push(Op::ClientAck(proto::ClientAck {
                client_id: client_id.to_owned(),
                up_to,
            }));
        }
    }

    /// Logs a sequenced frame queued for a reliable client.
    pub fn sent(&mut self, client_id: &str, out: Out) {
        if self.limits.is_none() {
            return;
        }
        self.push_logged(Logged::Sent {
            repl_seq: self.seq + 1,
            client_id: client_id.to_owned(),
            out,
        });
    }

    /// Rewrites the request of the last change logged, if that is a
    /// client's `Request` with correlation id `id` (the frame the router
    /// is handling: see `PubSub::pick_responder`).
    pub fn amend_request(&mut self, id: u64, amend: impl FnOnce(&mut proto::Request)) {
        let Some(Logged::Change(change)) = self.changes.last_mut() else {
            return;
        };
        let before = change.encoded_len();
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
        self.bytes = self.bytes - before + change.encoded_len();
    }

    /// Moves the changes logged since the last take onto `out`, in order;
    /// an error when some were discarded (see
    /// [`Router::take_changes`](super::Router::take_changes)).
    pub fn take(&mut self, out: &mut Vec<proto::Change>) -> Result<(), ChangeLogOverflow> {
        self.bytes = 0;
        if self.lost > 0 {
            let lost = std::mem::take(&mut self.lost);
            return Err(ChangeLogOverflow { lost });
        }
        out.extend(self.changes.drain(..).map(Logged::into_change));
        Ok(())
    }

    /// Appends the changes logged since the last take to `buf` as
    /// length-prefixed `Frame{change}`s; returns how many.
    pub fn take_encoded(&mut self, buf: &mut BytesMut) -> Result<usize, ChangeLogOverflow> {
        self.bytes = 0;
        if self.lost > 0 {
            let lost = std::mem::take(&mut self.lost);
            self.changes.clear();
            return Err(ChangeLogOverflow { lost });
        }
        let n = self.changes.len();
        for c in self.changes.drain(..) {
            c.encode(buf);
        }
        Ok(n)
    }

    /// Drops the changes logged since the last take; logging goes on.
    pub fn discard(&mut self) {
        self.changes.clear();
        self.bytes = 0;
        self.lost = 0;
    }

    fn push(&mut self, op: Op) {
        if self.limits.is_none() {
            return;
        }
        self.push_logged(Logged::Change(proto::Change {
            repl_seq: self.seq + 1,
            op: Some(op),
        }));
    }

    fn push_logged(&mut self, change: Logged) {
        let Some(limits) = self.limits else { return };
        self.seq += 1;
        if self.lost > 0 {
            self.lost += 1;
            return;
        }
        let len = change.len();
        if self.changes.len() >= limits.max_changes || self.bytes + len > limits.max_bytes {
            self.lost = self.changes.len() as u64 + 1;
            self.changes = Vec::new();
            self.bytes = 0;
            return;
        }
        self.bytes += len;
        self.changes.push(change);
    }
}
