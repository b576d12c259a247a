//! What the reader routes to, under one lock ([`Registry`]): the current
//! connection's send queue, commands waiting for answers, and the queues
//! of every stream the application holds.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use bytes::Bytes;
use switchboard_wire::deliver::HandFrame;
use switchboard_wire::{proto, Frame};
use tokio::sync::{mpsc, oneshot};

use super::queue::Queue;
use super::reliable;
use super::request::IncomingRequest;
use super::types::{ClientInfo, KvEvent, Message, PresenceEvent};

/// Maps keyed by ids this client hands out itself (subscription and
/// correlation ids, never chosen by the hub): hashed with foldhash, not
/// SipHash (the reader looks a subscription up for every delivery).
pub(crate) type IdMap<V> = HashMap<u64, V, foldhash::fast::RandomState>;

/// Longest topic a [`Out::Publish`] holds in place; a publish to a longer
/// one is queued as a [`Frame`].
pub(crate) const INLINE_TOPIC: usize = 96;

/// What the send queue carries to the connection's writer.
pub(crate) enum Out {
    /// Any frame.
    Frame(Frame),
    /// An at-most-once publish without headers, kept as its parts: the
    /// topic in place, so publishing allocates nothing (a
    /// `proto::Publish` owns its topic as a `String`). The writer encodes
    /// it by hand ([`Out::hand`]).
    Publish {
        /// The topic.
        topic: InlineTopic,
        /// The payload.
        payload: Bytes,
    },
}

/// A topic of at most [`INLINE_TOPIC`] bytes held in place. Built only
/// from a `&str` (its fields are private), so its bytes are UTF-8.
pub(crate) struct InlineTopic {
    bytes: [u8; INLINE_TOPIC],
    len: u8,
}

impl InlineTopic {
    /// `topic` in place, if it fits.
    fn new(topic: &str) -> Option<InlineTopic> {
        if topic.len() > INLINE_TOPIC {
            return None;
        }
        let mut bytes = [0u8; INLINE_TOPIC];
        bytes[..topic.len()].copy_from_slice(topic.as_bytes());
        Some(InlineTopic {
            bytes,
            len: topic.len() as u8,
        })
    }

    /// The topic.
    fn as_str(&self) -> &str {
        let bytes = &self.bytes[..usize::from(self.len)];
        // SAFETY: the bytes are a prefix of `bytes` cut at `len`, both set
        // only by `new` from a `&str` of exactly `len` bytes: valid UTF-8.
        // (Checking it again cost a publish about 100 instructions.)
        unsafe { std::str::from_utf8_unchecked(bytes) }
    }
}

impl From<Frame> for Out {
    fn from(frame: Frame) -> Out {
        Out::Frame(frame)
    }
}

impl Out {
    /// A publish of `payload` to `topic` held in place; the payload back
    /// when the topic is longer than [`INLINE_TOPIC`].
    pub fn publish(topic: &str, payload: Bytes) -> Result<Out, Bytes> {
        match InlineTopic::new(topic) {
            Some(topic) => Ok(Out::Publish { topic, payload }),
            None => Err(payload),
        }
    }

    /// The hand encoder of a [`Out::Publish`] acknowledging `acked`.
    pub fn hand(&self, acked: u64) -> Option<HandFrame<'_>> {
        match self {
            Out::Frame(_) => None,
            Out::Publish { topic, payload } => Some(HandFrame::Publish {
                seq: 0,
                acked,
                id: 0,
                topic: topic.as_str(),
                from: "",
                reply_to: "",
                payload,
            }),
        }
    }
}

/// The current connection's outbound queue.
#[derive(Clone)]
pub(crate) struct ConnTx {
    pub tx: mpsc::Sender<Out>,
    pub max_frame: usize,
    /// Which connection this is (one more per connection made).
    pub generation: u64,
    /// Whether both sides agreed on reliable delivery.
    pub reliable: bool,
    /// Whether the hub takes `Listen` (directs and requests reach this
    /// client only while it says it reads them).
    pub listen: bool,
}

/// Where a subscription's items go.
pub(crate) enum SubSink {
    /// Publishes, as messages.
    Messages(Arc<Queue<Message>>),
    /// A service subscription: requests.
    Requests(Arc<Queue<IncomingRequest>>),
}

/// A subscription (plain or service) as the registry holds it, to route
/// its deliveries and to restore it on a fresh session.
pub(crate) struct SubEntry {
    pub pattern: String,
    pub group: String,
    pub service: bool,
    pub sink: SubSink,
    /// Deliveries still taken before the subscription ends by itself
    /// ([`Subscription::unsubscribe_after`](crate::Subscription::unsubscribe_after)).
    pub remaining: Option<u64>,
}

/// A key/value watch, to route its updates and to restore it.
pub(crate) struct WatchEntry {
    pub key: String,
    pub prefix: bool,
    pub queue: Arc<Queue<KvEvent>>,
}

/// A command waiting for its answer.
pub(crate) struct Pending {
    pub tx: oneshot::Sender<Frame>,
    /// Whether its frame was sequenced (kept for retransmission): only those
    /// can wait across a lost connection.
    pub sequenced: bool,
}

/// Everything the reader routes to, under one lock.
#[derive(Default)]
pub(crate) struct Registry {
    pub conn: Option<ConnTx>,
    pub pending: IdMap<Pending>,
    pub subs: IdMap<SubEntry>,
    pub watches: HashMap<u64, WatchEntry>,
    pub presence: HashMap<u64, Arc<Queue<PresenceEvent>>>,
    pub known_clients: BTreeMap<String, ClientInfo>,
    /// Direct and broadcast messages, while a [`Messages`](crate::Messages)
    /// stream exists.
    pub messages: Option<Arc<Queue<Message>>>,
    /// Requests to this client id, while a [`Requests`](crate::Requests)
    /// stream exists.
    pub requests: Option<Arc<Queue<IncomingRequest>>>,
    pub sessions: HashMap<String, (u64, mpsc::Sender<proto::Session>)>,
    pub session_any: Option<(u64, mpsc::Sender<proto::Session>)>,
    /// Sequence counter and frames kept until the hub acknowledges them.
    pub out: reliable::Outbound,
    /// The last connection was reliable: the next `Hello` asks to resume.
    pub resumable: bool,
    /// A reliable connection was lost less than `resume_wait` ago: calls
    /// wait for the next connection instead of failing.
    pub holding: bool,
    /// Connections lost so far (tells a resume timer whether its loss is
    /// still the current one).
    pub losses: u64,
    /// Frames and bytes not acknowledged when the client closed.
    pub lost_at_close: (usize, usize),
}

impl Registry {
    /// Queues `frame` (`len` bytes encoded; `logged`: of a kind reliable
    /// delivery numbers) on the current connection if the send queue and,
    /// for a numbered frame, the retention buffer have room now (taking
    /// the frame). Returns whether it was numbered; `None` (the frame
    /// left in place) when there is no room or no connection.
    pub(crate) fn queue_now(
        &mut self,
        frame: &mut Frame,
        len: usize,
        logged: bool,
    ) -> Option<bool> {
        let conn = self.conn.as_ref()?;
        let sequenced = logged && conn.reliable;
        if sequenced && !self.out.has_room(len) {
            return None;
        }
        let permit = conn.tx.try_reserve().ok()?;
        if sequenced {
            self.out.push(frame, len);
        }
        permit.send(Out::Frame(std::mem::take(frame)));
        Some(sequenced)
    }

    /// Ends every stream: each ends for its reader after what it holds, and
    /// takes nothing more. Returns, per stream, how much it still holds.
    pub fn end_streams(&mut self) -> Vec<Box<dyn Fn() -> usize + Send>> {
        fn ended<T: Send + Sync + 'static>(q: Arc<Queue<T>>) -> Box<dyn Fn() -> usize + Send> {
            q.close_tx();
            Box::new(move || q.len())
        }
        let mut held = Vec::new();
        for (_, sub) in self.subs.drain() {
            held.push(match sub.sink {
                SubSink::Messages(q) => ended(q),
                SubSink::Requests(q) => ended(q),
            });
        }
        held.extend(self.watches.drain().map(|(_, w)| ended(w.queue)));
        held.extend(self.presence.drain().map(|(_, p)| ended(p)));
        held.extend(self.messages.take().map(ended));
        held.extend(self.requests.take().map(ended));
        held
    }
}

#[cfg(test)]
mod tests {
    use bytes::BytesMut;
    use switchboard_wire::FrameCodec;
    use tokio_util::codec::Encoder;

    use super::*;

    /// A publish queued as its parts is written as the same publish queued
    /// as a frame: prost's bytes, the acknowledgement stamped the same way.
    #[test]
    fn a_publish_in_place_writes_what_the_frame_writes() {
        let payload = Bytes::from_static(&[7; 64]);
        let longest = "t".repeat(INLINE_TOPIC);
        for topic in ["", "a", "orders.eu.π", longest.as_str()] {
            for acked in [0, 1, 300, 1 << 40] {
                let out = Out::publish(topic, payload.clone())
                    .unwrap_or_else(|_| panic!("{topic:?} fits"));
                let mut frame = Frame::publish(topic, payload.clone());
                frame.acked = acked;
                let codec = FrameCodec::default();
                let (mut got, mut want) = (BytesMut::new(), BytesMut::new());
                let hand = out.hand(acked).expect("a publish");
                codec.encode_hand(&hand, &mut got).expect("encodes");
                FrameCodec::default()
                    .encode(&frame, &mut want)
                    .expect("encodes");
                assert_eq!(got, want, "{topic:?} acked {acked}");
                assert_eq!(got.len(), 4 + switchboard_wire::frame_len(&frame));
            }
        }
        let too_long = "t".repeat(INLINE_TOPIC + 1);
        let back = Out::publish(&too_long, payload.clone()).err();
        assert_eq!(back, Some(payload), "a longer topic goes as a frame");
        assert!(Out::from(Frame::ok(1)).hand(0).is_none());
    }

    /// Holding the topic in place does not make the queue's items larger.
    #[test]
    fn a_publish_in_place_is_no_larger_than_a_frame() {
        assert_eq!(std::mem::size_of::<Out>(), std::mem::size_of::<Frame>());
    }
}
