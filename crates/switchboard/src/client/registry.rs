//! What the reader routes to, under one lock ([`Registry`]): the current
//! connection's send queue, commands waiting for answers, and the queues
//! of every stream the application holds.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use switchboard_wire::{proto, Frame};
use tokio::sync::{mpsc, oneshot};

use super::queue::Queue;
use super::reliable;
use super::request::IncomingRequest;
use super::types::{ClientInfo, KvEvent, Message, PresenceEvent};

/// The current connection's outbound queue.
#[derive(Clone)]
pub(crate) struct ConnTx {
    pub tx: mpsc::Sender<Frame>,
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
    pub pending: HashMap<u64, Pending>,
    pub subs: HashMap<u64, SubEntry>,
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
        permit.send(std::mem::take(frame));
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
