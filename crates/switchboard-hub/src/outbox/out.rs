//! [`Out`]: one frame waiting in an outbox, either any [`Frame`] or a
//! pub/sub delivery pre-encoded by the wire's
//! [`deliver`](switchboard_wire::deliver) encoder.

use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use prost::Message;
use switchboard_wire::deliver::{DeliverFrame, DeliverHead, HandFrame};
use switchboard_wire::proto::frame::Kind;
use switchboard_wire::{put_frame, FastBuf, Frame};

/// One frame waiting in an outbox.
#[derive(Debug, Clone, PartialEq)]
pub enum Out {
    /// Any frame (boxed: frames are large and rarely queued in bulk).
    Frame(Box<Frame>),
    /// A pub/sub delivery, pre-encoded: what every subscriber of one
    /// publish shares is in `shared`, and only the numbering and the
    /// subscription id are the subscriber's own (a queued delivery is 40
    /// bytes, and cloning it for the retransmit buffer one reference
    /// count increment).
    Deliver {
        /// `Frame.seq` (0: not sequenced).
        seq: u64,
        /// `Frame.acked` (0: acknowledges nothing).
        acked: u64,
        /// The subscriber's subscription id.
        sub_id: u64,
        /// The publish's shared fields and payload.
        shared: Arc<Shared>,
    },
}

/// What every subscriber's delivery of one publish shares, in one
/// allocation per publish.
#[derive(Debug, PartialEq)]
pub struct Shared {
    /// Encoded `Deliver` fields 2, 3, 5 and 6 (topic, publisher,
    /// reply-to, headers).
    pub head: DeliverHead,
    /// The payload (never copied per subscriber).
    pub payload: Bytes,
}

impl Shared {
    /// The shared part of the deliveries of a publish.
    pub fn new(head: DeliverHead, payload: Bytes) -> Arc<Shared> {
        Arc::new(Shared { head, payload })
    }
}

impl From<Frame> for Out {
    fn from(frame: Frame) -> Out {
        Out::Frame(Box::new(frame))
    }
}

impl Out {
    /// Sets `Frame.seq`.
    pub fn set_seq(&mut self, seq: u64) {
        match self {
            Out::Frame(f) => f.seq = seq,
            Out::Deliver { seq: s, .. } => *s = seq,
        }
    }

    /// Sets `Frame.acked`: the cumulative acknowledgement it carries.
    pub fn set_acked(&mut self, up_to: u64) {
        match self {
            Out::Frame(f) => f.acked = up_to,
            Out::Deliver { acked, .. } => *acked = up_to,
        }
    }

    /// `Frame.seq`.
    pub fn seq(&self) -> u64 {
        match self {
            Out::Frame(f) => f.seq,
            Out::Deliver { seq, .. } => *seq,
        }
    }

    /// Whether frames like this one are numbered for a reliable client:
    /// everything but the connection-level kinds.
    pub fn is_sequenced(&self) -> bool {
        match self {
            Out::Deliver { .. } => true,
            Out::Frame(f) => !matches!(
                f.kind,
                Some(
                    Kind::Welcome(_)
                        | Kind::Goodbye(_)
                        | Kind::Ack(_)
                        | Kind::Pong(_)
                        | Kind::Flow(_)
                )
            ),
        }
    }

    /// A pre-encoded delivery as the wire's encoder takes it, or the frame.
    #[inline]
    fn delivery(&self) -> Result<DeliverFrame<'_>, &Frame> {
        match self {
            Out::Frame(f) => Err(f),
            Out::Deliver {
                seq,
                acked,
                sub_id,
                shared,
            } => Ok(DeliverFrame {
                seq: *seq,
                acked: *acked,
                sub_id: *sub_id,
                head: &shared.head,
                payload: &shared.payload,
            }),
        }
    }

    /// Length of the protobuf encoding (without the length prefix).
    pub fn encoded_len(&self) -> usize {
        match self.delivery() {
            Ok(d) => d.encoded_len(),
            Err(f) => switchboard_wire::frame_len(f),
        }
    }

    /// Appends the length prefix and the protobuf encoding to `buf`. A
    /// publisher's `Ok` (the frame queued most after deliveries) is
    /// written by the wire crate's hand encoder, prost's bytes exactly.
    pub fn encode(&self, buf: &mut BytesMut) {
        match self.delivery() {
            Ok(d) => d.encode(buf),
            Err(f) => match HandFrame::of(f) {
                Some(h) => h.encode(buf),
                None => put_frame(f, buf),
            },
        }
    }

    /// Appends only the protobuf encoding (no length prefix), e.g. for a
    /// WebSocket message.
    pub fn encode_body(&self, buf: &mut BytesMut) {
        match self.delivery() {
            Ok(d) => d.encode_body(buf),
            Err(f) => match HandFrame::of(f) {
                Some(h) => {
                    buf.reserve(h.encoded_len());
                    h.encode_body(buf);
                }
                None => {
                    buf.reserve(f.encoded_len());
                    // Cannot fail: capacity was reserved above.
                    let _ = f.encode(&mut FastBuf(buf));
                }
            },
        }
    }

    /// The frame this entry stands for (decodes a pre-encoded delivery).
    pub fn into_frame(self) -> Frame {
        match self {
            Out::Frame(f) => *f,
            deliver => {
                let mut buf = BytesMut::new();
                deliver.encode_body(&mut buf);
                Frame::decode(buf.freeze()).unwrap_or_else(|e| {
                    Frame::error(0, switchboard_wire::ErrorCode::Internal, e.to_string())
                })
            }
        }
    }
}
