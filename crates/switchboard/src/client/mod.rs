//! The client: connect to a hub and talk to other clients through it.

mod conn;
mod events;
mod kv;
mod queue;
mod reliable;
mod session;
mod streams;
mod transport;
pub(crate) mod typed;
mod types;

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use parking_lot::Mutex;
use switchboard_discovery::Secret;
use switchboard_wire::{proto, Frame, Kind};
use tokio::sync::futures::Notified;
use tokio::sync::{broadcast, mpsc, oneshot, watch, Notify};
use tokio::time::Instant;

use crate::ClientError;

pub use events::{ClientEvent, Events};
pub use kv::{Kv, KvWatch};
pub use queue::Overflow;
pub use session::SessionLink;
pub use streams::{
    IncomingRequest, Messages, Presence, Requests, ServeHandle, ServeOptions, SubscribeOptions,
    Subscription,
};
pub use types::{
    ClientInfo, CloseReport, ConnectionState, Headers, HubInfo, HubStatus, KvEntry, KvEvent,
    Message, MessageKind, PresenceEvent, Reply, RequestOptions,
};

use queue::Queue;

/// Default time a request waits for its reply.
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// Default of [`ClientBuilder::resume_wait`].
pub const DEFAULT_RESUME_WAIT: Duration = Duration::from_secs(5);

pub use reliable::{DEFAULT_RETAIN_BYTES, DEFAULT_RETAIN_FRAMES};

/// Largest client id, in bytes.
pub use switchboard_wire::MAX_CLIENT_ID_LEN;

/// Where a client finds its hub.
#[derive(Debug, Clone)]
enum Target {
    Service(String),
    Addr(String),
    /// Not a TCP address: an in-memory hub or a WebSocket endpoint.
    #[cfg_attr(not(any(feature = "hub", feature = "websocket")), allow(dead_code))]
    Dialer(transport::Dialer),
}

/// Settings of a [`Client`], collected by [`ClientBuilder`].
#[derive(Debug, Clone)]
pub(crate) struct Config {
    pub id: String,
    target: Target,
    secret: Option<Secret>,
    pub agent: String,
    pub request_timeout: Duration,
    pub connect_timeout: Duration,
    pub keepalive: Duration,
    pub reconnect: bool,
    pub backoff_min: Duration,
    pub backoff_max: Duration,
    pub max_reconnect_attempts: Option<u32>,
    pub stream_capacity: usize,
    pub send_queue: usize,
    pub reliable: bool,
    pub resume_wait: Duration,
    pub retain_frames: usize,
    pub retain_bytes: usize,
}

/// Builds a [`Client`]: where the hub is, which secret to prove, and how to
/// behave when the connection drops.
///
/// ```no_run
/// # async fn run() -> Result<(), switchboard::ClientError> {
/// let client = switchboard::Client::builder("worker-1")
///     .service("switchboard")       // find the hub by service name (the default)
///     .token("correct horse")       // or leave out to use the per-user secret file
///     .connect()
///     .await?;
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct ClientBuilder {
    cfg: Config,
}

impl ClientBuilder {
    fn new(id: impl Into<String>) -> Self {
        ClientBuilder {
            cfg: Config {
                id: id.into(),
                target: Target::Service(crate::DEFAULT_SERVICE.to_string()),
                secret: None,
                agent: format!("switchboard/{}", env!("CARGO_PKG_VERSION")),
                request_timeout: DEFAULT_REQUEST_TIMEOUT,
                connect_timeout: Duration::from_secs(5),
                keepalive: Duration::from_secs(10),
                reconnect: true,
                backoff_min: Duration::from_millis(50),
                backoff_max: Duration::from_secs(5),
                max_reconnect_attempts: None,
                stream_capacity: 4096,
                send_queue: 1024,
                reliable: true,
                resume_wait: DEFAULT_RESUME_WAIT,
                retain_frames: reliable::DEFAULT_RETAIN_FRAMES,
                retain_bytes: reliable::DEFAULT_RETAIN_BYTES,
            },
        }
    }

    /// Finds the hub by service name through discovery (hint file, then the
    /// OS socket table, then a port scan). This is the default, with service
    /// [`DEFAULT_SERVICE`](crate::DEFAULT_SERVICE).
    pub fn service(mut self, name: impl Into<String>) -> Self {
        self.cfg.target = Target::Service(name.into());
        self
    }

    /// Connects to the hub at `addr` (`host:port`) instead of discovering it.
    pub fn addr(mut self, addr: impl Into<String>) -> Self {
        self.cfg.target = Target::Addr(addr.into());
        self
    }

    /// Connects to an in-memory hub ([`Hub::in_memory`](crate::Hub::in_memory)
    /// or any [`HubHandle`](crate::HubHandle)) through an in-process pipe,
    /// proving that hub's secret: the same handshake, router and
    /// semantics as over TCP, without a port. Reconnects re-open the pipe.
    #[cfg(feature = "hub")]
    pub fn in_memory(mut self, hub: &switchboard_hub::HubHandle) -> Self {
        self.cfg.target = Target::Dialer(transport::Dialer::memory(hub.memory_connector()));
        self.cfg.secret = Some(hub.secret());
        self
    }

    /// Connects over WebSocket to a hub's gateway, e.g.
    /// `ws://127.0.0.1:8080/v1/ws` (the hub's `--http` listener): the same
    /// frames, one per binary message, with reliable delivery and resume
    /// as over TCP.
    #[cfg(feature = "websocket")]
    pub fn websocket(mut self, url: impl Into<String>) -> Self {
        self.cfg.target = Target::Dialer(transport::Dialer::websocket(url.into()));
        self
    }

    /// The secret both the client and the hub prove they know. Without it
    /// the per-user secret file in the runtime directory is used.
    pub fn secret(mut self, secret: Secret) -> Self {
        self.cfg.secret = Some(secret);
        self
    }

    /// Shorthand for [`secret`](Self::secret) with a shared token.
    pub fn token(self, token: &str) -> Self {
        self.secret(Secret::from_token(token))
    }

    /// Free-form description of this program, shown in client lists.
    pub fn agent(mut self, agent: impl Into<String>) -> Self {
        self.cfg.agent = agent.into();
        self
    }

    /// Default timeout of requests and other commands (30 s).
    pub fn request_timeout(mut self, timeout: Duration) -> Self {
        self.cfg.request_timeout = timeout;
        self
    }

    /// Timeout of one connection attempt, handshake included (5 s).
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.cfg.connect_timeout = timeout;
        self
    }

    /// How often to ping the hub (10 s, or half the hub's keepalive if
    /// shorter). A hub silent for three intervals is taken as gone and the
    /// connection is re-made.
    pub fn keepalive(mut self, interval: Duration) -> Self {
        self.cfg.keepalive = interval.max(Duration::from_millis(10));
        self
    }

    /// Whether to reconnect automatically after the connection drops
    /// (default: yes).
    pub fn reconnect(mut self, on: bool) -> Self {
        self.cfg.reconnect = on;
        self
    }

    /// Bounds of the reconnect backoff (50 ms to 5 s). After a lost
    /// connection the first attempt is made at once (a failover to a
    /// standby then costs no wait); the next three wait `min`, later ones
    /// twice as long as the one before, up to `max`. Each wait is drawn at
    /// random from the upper quarter of its step. Every attempt tries the
    /// last hub's address first, then discovers the hub again by service
    /// name (highest epoch first).
    pub fn backoff(mut self, min: Duration, max: Duration) -> Self {
        self.cfg.backoff_min = min.max(Duration::from_millis(1));
        self.cfg.backoff_max = max.max(self.cfg.backoff_min);
        self
    }

    /// Gives up reconnecting after this many failed attempts in a row
    /// (default: never).
    pub fn max_reconnect_attempts(mut self, attempts: u32) -> Self {
        self.cfg.max_reconnect_attempts = Some(attempts);
        self
    }

    /// Capacity of each incoming stream (subscriptions, watches, messages,
    /// requests, presence), in items (default 4096). When an application
    /// does not keep up and a stream is full, the connection stops reading
    /// until the application takes an item ([`Overflow::Block`]): nothing
    /// the hub numbered is acknowledged, or lost, before the application's
    /// stream took it. A subscription may choose a drop policy and its own
    /// capacity instead ([`SubscribeOptions`]).
    ///
    /// Head of line: one connection carries everything, so while one stream
    /// is full, frames behind it on the connection (replies, other
    /// streams) wait too, and the hub's queue for this client fills; past
    /// its limits the hub drops pub/sub deliveries for this client and says
    /// so ([`ClientEvent::HubDropped`]). Read every stream you open, or
    /// give slow ones a drop policy.
    pub fn stream_capacity(mut self, capacity: usize) -> Self {
        self.cfg.stream_capacity = capacity.max(1);
        self
    }

    /// Asks for reliable delivery (default: on). When the hub supports it
    /// too (its `Welcome` lists `"reliable"`), both directions are
    /// sequenced:
    ///
    /// * every frame of a state-changing or message kind this client sends
    ///   (publish, direct, request, reply, broadcast, subscribe,
    ///   unsubscribe, key/value set, delete, watch and unwatch, presence
    ///   watch) is numbered and kept until the hub acknowledges it; after a
    ///   lost connection it is sent again, and the hub drops what it already
    ///   has, so each is handled once;
    /// * frames from the hub are numbered too; duplicates are dropped before
    ///   they reach the application, and what was taken is acknowledged in
    ///   batches.
    ///
    /// After a lost connection the client asks the hub (the same one, or a
    /// standby that took over) to **resume** the session. A resumed session
    /// keeps subscriptions, watches and commands waiting for an answer as
    /// they were: nothing is lost or delivered twice, and no resubscription
    /// happens. A hub that holds no state for the client starts a fresh
    /// session instead, and the client behaves as without reliable
    /// delivery: waiting commands fail with [`ClientError::Disconnected`]
    /// (their outcome is unknown), then subscriptions and watches are
    /// restored. See [`resume_wait`](Self::resume_wait) for how long calls
    /// wait across a lost connection.
    ///
    /// Not covered: the `*_nowait` calls ([`Client::send_nowait`],
    /// [`Client::publish_nowait`]) stay at-most-once, and frames of a
    /// [`SessionLink`] are not retransmitted (a link ends with its
    /// connection; the session engine retries instead). With a hub that
    /// does not offer the feature, the client works as with `false`.
    pub fn reliable(mut self, on: bool) -> Self {
        self.cfg.reliable = on;
        self
    }

    /// With reliable delivery: how long after a lost connection calls wait
    /// for the session to be resumed (default 5 s). Commands waiting for an
    /// answer stay waiting (their frames are sent again on the resumed
    /// connection), and new calls wait for the connection instead of
    /// failing, each also within its own timeout. Past this time, or when
    /// the hub said it is shutting down, waiting commands fail with
    /// [`ClientError::Disconnected`] and new calls fail at once until the
    /// client is connected again; kept frames are still sent again if the
    /// session is later resumed. Commands that change nothing (key/value
    /// reads, client lists, status) fail at once when the connection drops,
    /// as they are not retransmitted.
    pub fn resume_wait(mut self, wait: Duration) -> Self {
        self.cfg.resume_wait = wait;
        self
    }

    /// With reliable delivery: the most frames and bytes (encoded) kept
    /// until the hub acknowledges them (default
    /// [`DEFAULT_RETAIN_FRAMES`] = 65,536 and [`DEFAULT_RETAIN_BYTES`] =
    /// 64 MiB). When the buffer is full, sending calls wait for
    /// acknowledgements (within their timeout, then
    /// [`ClientError::Timeout`]); calls that cannot wait (the unsubscribe
    /// sent when a [`Subscription`] is dropped, the error reply of a dropped
    /// [`IncomingRequest`]) are dropped, as when the send queue is full.
    pub fn retention(mut self, frames: usize, bytes: usize) -> Self {
        self.cfg.retain_frames = frames.max(1);
        self.cfg.retain_bytes = bytes.max(1);
        self
    }

    /// Connects, authenticates and returns the client. Fails without
    /// retrying when no hub is found, the connection is refused or the
    /// authentication fails; after that, a dropped connection is re-made in
    /// the background.
    pub async fn connect(self) -> Result<Client, ClientError> {
        let cfg = self.cfg;
        if cfg.id.is_empty() || cfg.id.len() > MAX_CLIENT_ID_LEN {
            return Err(ClientError::InvalidArgument(format!(
                "client id must be 1..={MAX_CLIENT_ID_LEN} bytes, got {}",
                cfg.id.len()
            )));
        }
        let secret = match &cfg.secret {
            Some(s) => s.clone(),
            None => Secret::load_default().map_err(|e| ClientError::Secret(e.to_string()))?,
        };
        let (cfg_frames, cfg_bytes) = (cfg.retain_frames, cfg.retain_bytes);
        let (state_tx, _) = watch::channel(ConnectionState::Connecting);
        let (close_tx, _) = watch::channel(false);
        let (events, _) = broadcast::channel(events::EVENTS_CAPACITY);
        let shared = Arc::new(Shared {
            cfg,
            secret,
            next_id: AtomicU64::new(1),
            state: state_tx,
            close: close_tx,
            reg: Mutex::new(Registry {
                out: reliable::Outbound::new(cfg_frames, cfg_bytes),
                ..Registry::default()
            }),
            dropped: AtomicU64::new(0),
            in_last: AtomicU64::new(0),
            max_epoch: AtomicU64::new(0),
            wake: Notify::new(),
            events,
            listen_lock: tokio::sync::Mutex::new(()),
            presence_lock: tokio::sync::Mutex::new(()),
            reader_blocked: std::sync::atomic::AtomicBool::new(false),
        });
        let first = conn::connect_once(&shared, None, shared.cfg.connect_timeout).await?;
        let mut state = shared.state.subscribe();
        tokio::spawn(conn::supervise(shared.clone(), first));
        let _ = state
            .wait_for(|s| !matches!(s, ConnectionState::Connecting))
            .await;
        Ok(Client {
            inner: Arc::new(ClientInner { shared }),
        })
    }
}

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

pub(crate) struct SubEntry {
    pub pattern: String,
    pub group: String,
    pub service: bool,
    pub sink: SubSink,
    /// Deliveries still taken before the subscription ends by itself
    /// ([`Subscription::unsubscribe_after`]).
    pub remaining: Option<u64>,
}

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
    /// Direct and broadcast messages, while a [`Messages`] stream exists.
    pub messages: Option<Arc<Queue<Message>>>,
    /// Requests to this client id, while a [`Requests`] stream exists.
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
    fn queue_now(&mut self, frame: &mut Frame, len: usize, logged: bool) -> Option<bool> {
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

/// What a sending call waits for.
#[derive(Clone, Copy)]
enum Wait {
    Connection,
    Retention,
}

/// Whether a frame may be sequenced when the connection is reliable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Delivery {
    /// Sequenced and retransmitted when its kind is logged.
    Reliable,
    /// Sent with `seq = 0`, never retransmitted; fails at once while
    /// disconnected.
    AtMostOnce,
}

/// State shared by the client handles, its streams and its tasks.
pub(crate) struct Shared {
    pub cfg: Config,
    pub secret: Secret,
    next_id: AtomicU64,
    pub state: watch::Sender<ConnectionState>,
    pub close: watch::Sender<bool>,
    pub reg: Mutex<Registry>,
    pub dropped: AtomicU64,
    /// Highest hub → client sequence number taken (the reader of the
    /// current connection updates it).
    pub in_last: AtomicU64,
    /// Highest hub epoch seen.
    pub max_epoch: AtomicU64,
    /// Woken when the connection changes, the resume window ends, the
    /// client closes or acknowledgements free retention space.
    pub wake: Notify,
    /// [`ClientEvent`]s for [`Client::events`].
    pub events: broadcast::Sender<ClientEvent>,
    /// Held while a `Listen` is computed and queued, so they leave in the
    /// order of the changes they report.
    pub listen_lock: tokio::sync::Mutex<()>,
    /// Held while the presence watch is started or stopped at the hub, so
    /// a stop decided for the last watcher never overtakes the start of a
    /// new one.
    pub presence_lock: tokio::sync::Mutex<()>,
    /// The reader waits for room in a full stream (the hub is not silent,
    /// the application is slow).
    pub reader_blocked: std::sync::atomic::AtomicBool,
}

impl Shared {
    /// A fresh correlation, subscription or watch id.
    pub fn next_id(&self) -> u64 {
        self.next_id.fetch_add(1, Ordering::Relaxed)
    }

    fn down_error(&self) -> ClientError {
        if *self.close.borrow() {
            ClientError::Closed
        } else if let ConnectionState::Closed { reason } = &*self.state.borrow() {
            if reason.contains("took over") {
                ClientError::TakenOver(self.cfg.id.clone())
            } else {
                ClientError::Closed
            }
        } else {
            ClientError::Disconnected
        }
    }

    fn check_size(len: usize, conn: &ConnTx) -> Result<(), ClientError> {
        if len > conn.max_frame {
            return Err(ClientError::InvalidArgument(format!(
                "message of {len} bytes exceeds the hub's limit of {} bytes; send a smaller payload",
                conn.max_frame
            )));
        }
        Ok(())
    }

    /// Queues `frame` on the current connection, numbering and keeping it
    /// when the connection is reliable, its kind is logged and `delivery`
    /// allows it; registers `waiter` for its answer in the same step.
    ///
    /// Waits (until `deadline`) for room in the send queue, for room in the
    /// retention buffer, and, within the resume window of a lost reliable
    /// connection, for the next connection.
    async fn enqueue(
        &self,
        mut frame: Frame,
        mut waiter: Option<(u64, oneshot::Sender<Frame>)>,
        delivery: Delivery,
        deadline: Instant,
    ) -> Result<(), ClientError> {
        let len = prost::Message::encoded_len(&frame);
        let logged = delivery == Delivery::Reliable
            && frame.kind.as_ref().is_some_and(reliable::logged_kind);
        // Armed (registered with `wake`) before the conditions are checked
        // again, so no wake-up between check and wait is lost; only made
        // when a wait is needed, so the common path costs no registration.
        let mut woken: Option<Pin<Box<Notified<'_>>>> = None;
        // The common case: connected with room in the send queue. One lock,
        // no timer and no clone of the connection's sender.
        {
            let mut reg = self.reg.lock();
            if let Some(conn) = &reg.conn {
                Self::check_size(len, conn)?;
                if let Some(sequenced) = reg.queue_now(&mut frame, len, logged) {
                    // Under the same lock: the reader cannot see the answer
                    // before the waiter is registered.
                    if let Some((id, tx)) = waiter.take() {
                        reg.pending.insert(id, Pending { tx, sequenced });
                    }
                    return Ok(());
                }
            }
        }
        loop {
            let found = {
                let reg = self.reg.lock();
                match &reg.conn {
                    Some(c) => Ok(c.clone()),
                    None if reg.holding
                        && delivery == Delivery::Reliable
                        && !*self.close.borrow() =>
                    {
                        Err(None)
                    }
                    None => Err(Some(self.down_error())),
                }
            };
            let why = match found {
                Ok(conn) => {
                    Self::check_size(len, &conn)?;
                    let reserved = tokio::time::timeout_at(deadline, conn.tx.reserve()).await;
                    match reserved {
                        Ok(Ok(permit)) => {
                            let mut reg = self.reg.lock();
                            if reg.conn.as_ref().map(|c| c.generation) != Some(conn.generation) {
                                // Reconnected meanwhile: start over on the
                                // new connection.
                                continue;
                            }
                            let sequenced = logged && conn.reliable;
                            if !sequenced || reg.out.has_room(len) {
                                if sequenced {
                                    reg.out.push(&mut frame, len);
                                }
                                if let Some((id, tx)) = waiter.take() {
                                    reg.pending.insert(id, Pending { tx, sequenced });
                                }
                                permit.send(frame);
                                return Ok(());
                            }
                            Wait::Retention
                        }
                        // The connection's writer is gone; wait until the
                        // supervisor has noticed.
                        Ok(Err(_)) => Wait::Connection,
                        Err(_) => {
                            return Err(ClientError::Timeout(
                                "the send queue stayed full; the hub is not reading".to_string(),
                            ))
                        }
                    }
                }
                Err(Some(e)) => return Err(e),
                // Within the resume window: wait for the next connection.
                Err(None) => Wait::Connection,
            };
            match woken.take() {
                None => {
                    let mut armed = Box::pin(self.wake.notified());
                    armed.as_mut().enable();
                    woken = Some(armed);
                }
                Some(armed) => {
                    if tokio::time::timeout_at(deadline, armed).await.is_err() {
                        return Err(match why {
                            Wait::Connection => ClientError::Disconnected,
                            Wait::Retention => ClientError::Timeout(format!(
                                "the retention buffer stayed full ({} frames or {} bytes \
                                 not acknowledged by the hub)",
                                self.cfg.retain_frames, self.cfg.retain_bytes
                            )),
                        });
                    }
                }
            }
        }
    }

    /// Queues a frame that expects no answer, sequenced when reliable
    /// (waits as [`enqueue`](Self::enqueue), up to the request timeout).
    pub async fn post(&self, frame: Frame) -> Result<(), ClientError> {
        let deadline = Instant::now() + self.cfg.request_timeout;
        self.enqueue(frame, None, Delivery::Reliable, deadline)
            .await
    }

    /// Queues a frame at most once: never sequenced, fails at once while
    /// disconnected.
    pub async fn post_at_most_once(&self, frame: Frame) -> Result<(), ClientError> {
        let deadline = Instant::now() + self.cfg.request_timeout;
        self.enqueue(frame, None, Delivery::AtMostOnce, deadline)
            .await
    }

    /// Queues a frame that must not be lost for want of room (unregistering
    /// a dropped stream): at once when possible, else from a task that
    /// waits as [`post`](Self::post) does. Needs a tokio runtime for the
    /// second case; without one the frame is dropped (the client is being
    /// torn down).
    pub fn post_detached(self: &Arc<Self>, frame: Frame) {
        if let Some(frame) = self.try_post(frame) {
            if let Ok(rt) = tokio::runtime::Handle::try_current() {
                let shared = self.clone();
                rt.spawn(async move {
                    let _ = shared.post(frame).await;
                });
            }
        }
    }

    /// [`post_now`](Self::post_now), giving the frame back when the send
    /// queue or the retention buffer has no room.
    fn try_post(&self, mut frame: Frame) -> Option<Frame> {
        let len = prost::Message::encoded_len(&frame);
        let logged = frame.kind.as_ref().is_some_and(reliable::logged_kind);
        let mut reg = self.reg.lock();
        match &reg.conn {
            Some(conn) if len > conn.max_frame => None,
            Some(_) => reg
                .queue_now(&mut frame, len, logged)
                .is_none()
                .then_some(frame),
            None if logged && reg.resumable && reg.out.has_room(len) => {
                reg.out.push(&mut frame, len);
                None
            }
            // A fresh session restores state from the registry instead.
            None => (logged && reg.resumable).then_some(frame),
        }
    }

    /// Reports `event` to every [`Events`] stream.
    pub fn emit(&self, event: ClientEvent) {
        let _ = self.events.send(event);
    }

    /// Tells the hub what this client takes now (`Listen`), if the hub
    /// supports it, and waits for its `Ok`. Concurrent calls are queued in
    /// the order of the changes they report.
    pub async fn sync_listen(self: &Arc<Self>) -> Result<(), ClientError> {
        let _order = self.listen_lock.lock().await;
        let (messages, requests, supported) = {
            let reg = self.reg.lock();
            (
                reg.messages.is_some(),
                reg.requests.is_some(),
                reg.conn.as_ref().is_none_or(|c| c.listen),
            )
        };
        if !supported {
            return Ok(());
        }
        self.command_ok(|id| {
            proto::Listen {
                id,
                messages,
                requests,
            }
            .into()
        })
        .await
    }

    /// [`sync_listen`](Self::sync_listen) from a task (for `Drop`).
    pub fn sync_listen_detached(self: &Arc<Self>) {
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            let shared = self.clone();
            rt.spawn(async move {
                let _ = shared.sync_listen().await;
            });
        }
    }

    /// The hub acknowledged every sequenced frame up to `up_to`.
    pub fn acknowledged(&self, up_to: u64) {
        let freed = self.reg.lock().out.ack(up_to);
        if freed > 0 {
            self.wake.notify_waiters();
        }
    }

    /// Sends the command built by `make` with a fresh correlation id and
    /// waits for its answer, turning `Error` answers into typed errors.
    pub async fn command(
        self: &Arc<Self>,
        timeout: Duration,
        make: impl FnOnce(u64) -> Frame,
    ) -> Result<Frame, ClientError> {
        let deadline = Instant::now() + timeout;
        let id = self.next_id();
        let frame = make(id);
        let cancel = matches!(frame.kind, Some(Kind::Request(_)));
        let (tx, rx) = oneshot::channel();
        self.enqueue(frame, Some((id, tx)), Delivery::Reliable, deadline)
            .await?;
        // From here the command is on its way: a caller that stops waiting
        // (a dropped future) forgets it, and a request is cancelled at the
        // hub so it leaves nothing behind there.
        let guard = Waiting {
            shared: self,
            id,
            cancel,
        };
        let answer = tokio::time::timeout_at(deadline, rx).await;
        std::mem::forget(guard);
        let answer = match answer {
            Ok(Ok(frame)) => frame,
            Ok(Err(_)) => return Err(self.down_error()),
            Err(_) => {
                self.reg.lock().pending.remove(&id);
                return Err(ClientError::Timeout(format!(
                    "no answer from the hub within {} ms",
                    timeout.as_millis()
                )));
            }
        };
        match answer.kind {
            Some(Kind::Error(e)) => Err(ClientError::from_hub(e.code, e.message)),
            kind => Ok(Frame {
                seq: 0,
                acked: 0,
                kind,
            }),
        }
    }

    /// [`command`](Self::command) expecting a plain `Ok`.
    pub async fn command_ok(
        self: &Arc<Self>,
        make: impl FnOnce(u64) -> Frame,
    ) -> Result<(), ClientError> {
        match self.command(self.cfg.request_timeout, make).await?.kind {
            Some(Kind::Ok(_)) => Ok(()),
            other => Err(unexpected("ok", other)),
        }
    }
}

/// A command's answer being waited for; dropped early (the caller's future
/// was dropped), it forgets the command and cancels a request at the hub.
struct Waiting<'a> {
    shared: &'a Arc<Shared>,
    id: u64,
    cancel: bool,
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        let waiting = self.shared.reg.lock().pending.remove(&self.id).is_some();
        if waiting && self.cancel {
            self.shared
                .post_detached(proto::Cancel { id: self.id }.into());
        }
    }
}

pub(crate) fn unexpected(wanted: &str, got: Option<Kind>) -> ClientError {
    let got = Frame {
        seq: 0,
        acked: 0,
        kind: got,
    };
    ClientError::Protocol(format!(
        "expected {wanted} but the hub answered {}",
        got.kind_name()
    ))
}

struct ClientInner {
    shared: Arc<Shared>,
}

impl Drop for ClientInner {
    fn drop(&mut self) {
        self.shared.close.send_replace(true);
    }
}

/// A connection to a hub under one client id.
///
/// Cheap to clone; every clone shares the connection. The connection closes
/// when [`close`](Client::close) is called or the last clone is dropped.
/// While connected, a background task reads from the hub and routes answers
/// to waiting calls and incoming messages to their streams; another writes
/// queued frames in batches. When the connection drops, the client
/// reconnects with backoff and jitter (the first attempt at once; the last
/// address first, then re-discovering the hub when found by service name).
///
/// With [reliable delivery](ClientBuilder::reliable) (the default, when the
/// hub offers it) the client asks to resume its session: frames the hub did
/// not get are sent again, duplicates are dropped on both sides, and calls
/// in flight keep waiting for their answers, for up to
/// [`resume_wait`](ClientBuilder::resume_wait). If the hub resumes the
/// session, subscriptions and watches simply continue
/// ([`ConnectionState::Connected`] with `resumed: true`). Otherwise, and
/// always without reliable delivery, calls in flight fail with
/// [`ClientError::Disconnected`] and the client restores its subscriptions,
/// watches and presence watch before reporting
/// [`ConnectionState::Connected`] again.
///
/// The client remembers the highest hub epoch it has seen and never uses a
/// hub of a lower one (an old primary that a standby replaced): such a hub
/// fails the attempt with [`ClientError::Fenced`] and the client looks
/// further.
///
/// # Delivery
///
/// A message the hub confirmed to its sender reaches this client's
/// stream, or the application is told: a numbered frame is acknowledged to
/// the hub only once the stream took it; a full stream pushes back
/// ([`Overflow::Block`], the default) or drops by the subscription's
/// announced policy ([`SubscribeOptions::overflow`],
/// [`ClientEvent::SlowConsumer`]); direct messages and requests are refused
/// to their senders ([`ClientError::NotListening`]) until
/// [`messages`](Client::messages) / [`requests`](Client::requests) /
/// [`serve`](Client::serve) is called. See [`Client::events`].
///
/// # Cancel safety
///
/// Every async method may be dropped at any await point (a `select!`
/// branch that loses, a timeout):
///
/// * registering calls — [`subscribe`](Client::subscribe) and its
///   variants, [`messages`](Client::messages),
///   [`requests`](Client::requests), [`serve`](Client::serve) and its
///   variants, [`service`](Client::service), [`presence`](Client::presence),
///   [`Kv::watch`] and [`Kv::watch_prefix`] — are undone, locally and at
///   the hub, when dropped before they return (a `messages`, `requests` or
///   `serve` call that replaced an earlier stream leaves that stream
///   ended);
/// * requests ([`request`](Client::request) and its variants) are cancelled
///   at the hub (a late reply is discarded);
/// * sending calls ([`send`](Client::send), [`publish`](Client::publish),
///   [`broadcast`](Client::broadcast), their variants, [`Kv::set`],
///   [`Kv::cas`], [`Kv::delete`]) leave nothing registered, but the message
///   or change may or may not have been sent (once queued, reliable
///   delivery delivers it);
/// * reads ([`Kv::get`], [`clients`](Client::clients),
///   [`status`](Client::status)), [`flush`](Client::flush) and
///   [`wait_connected`](Client::wait_connected) change nothing;
/// * every stream's `recv()` and `Stream::poll_next` take an item only when
///   they return it;
/// * [`close`](Client::close) closes anyway; [`drain`](Client::drain)
///   dropped part-way leaves the client draining but open;
///   [`ServeHandle::stop`] dropped part-way lets the handlers finish.
#[derive(Clone)]
pub struct Client {
    inner: Arc<ClientInner>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("id", &self.id())
            .field("state", &*self.shared().state.borrow())
            .finish()
    }
}

impl Client {
    /// Starts building a client that will register as `id` (1 to 256 bytes
    /// of UTF-8).
    pub fn builder(id: impl Into<String>) -> ClientBuilder {
        ClientBuilder::new(id)
    }

    pub(crate) fn shared(&self) -> &Arc<Shared> {
        &self.inner.shared
    }

    /// This client's id.
    pub fn id(&self) -> &str {
        &self.shared().cfg.id
    }

    /// The connection state, as a watch channel that changes on every
    /// transition.
    pub fn state(&self) -> watch::Receiver<ConnectionState> {
        self.shared().state.subscribe()
    }

    /// Address of the hub while connected.
    pub fn hub_addr(&self) -> Option<SocketAddr> {
        match &*self.shared().state.borrow() {
            ConnectionState::Connected { addr, .. } => Some(*addr),
            _ => None,
        }
    }

    /// Items lost so far, in all: dropped by subscriptions with a drop
    /// policy ([`Overflow::DropNewest`], [`Overflow::DropOldest`]), dropped
    /// by the hub because its queue for this client was full (its `Flow`
    /// notices), and messages that arrived for a stream the application had
    /// just dropped. Each is also announced on [`events`](Client::events).
    /// Always 0 while every stream blocks and the hub's queue has room.
    pub fn dropped(&self) -> u64 {
        self.shared().dropped.load(Ordering::Relaxed)
    }

    /// With reliable delivery: how many frames this client has sent that
    /// the hub has not acknowledged yet, and their encoded size in bytes
    /// (kept for sending again after a lost connection). Always `(0, 0)`
    /// on a connection without reliable delivery.
    pub fn unacknowledged(&self) -> (usize, usize) {
        let reg = self.shared().reg.lock();
        (reg.out.len(), reg.out.bytes())
    }

    /// Whether the current (or, while reconnecting, the last) connection
    /// uses reliable delivery: this client asked for it and the hub
    /// offered it.
    pub fn is_reliable(&self) -> bool {
        let reg = self.shared().reg.lock();
        match &reg.conn {
            Some(c) => c.reliable,
            None => reg.resumable,
        }
    }

    /// Sends `payload` to client `to` and waits until the hub has queued it
    /// for the target. Fails with [`ClientError::NoSuchClient`] when the
    /// target is not connected and with [`ClientError::NotListening`] when
    /// it does not read direct messages (it has no
    /// [`messages`](Self::messages) stream). Cancel-safe in that a dropped
    /// call leaves nothing registered; the message may or may not have been
    /// sent.
    pub async fn send(&self, to: &str, payload: impl Into<Bytes>) -> Result<(), ClientError> {
        self.send_with_headers(to, payload, Headers::new()).await
    }

    /// [`send`](Self::send) with headers.
    pub async fn send_with_headers(
        &self,
        to: &str,
        payload: impl Into<Bytes>,
        headers: Headers,
    ) -> Result<(), ClientError> {
        let payload = payload.into();
        let headers = headers.to_wire();
        Headers::check(&headers)?;
        self.shared()
            .command_ok(|id| {
                proto::Direct {
                    id,
                    to: to.to_string(),
                    payload,
                    headers,
                    ..Default::default()
                }
                .into()
            })
            .await
    }

    /// Sends `payload` to client `to` without confirmation: returns once the
    /// message is queued on this connection.
    pub async fn send_nowait(
        &self,
        to: &str,
        payload: impl Into<Bytes>,
    ) -> Result<(), ClientError> {
        self.shared()
            .post_at_most_once(Frame::direct(to, payload.into()))
            .await
    }

    /// Sends a request to client `to` and waits for its reply, up to the
    /// client's default request timeout. Cancel-safe: a dropped call
    /// cancels the request at the hub (a late reply is discarded).
    pub async fn request(&self, to: &str, payload: impl Into<Bytes>) -> Result<Bytes, ClientError> {
        self.request_with(to, "", payload, self.shared().cfg.request_timeout)
            .await
    }

    /// Sends a request with a method name and an explicit timeout. The hub
    /// answers [`ClientError::Timeout`] when the target does not reply in
    /// time; a local timer a little longer guards against a silent hub.
    /// An unknown target gives [`ClientError::NoSuchClient`] at once, a
    /// target that serves no requests [`ClientError::NotListening`], a
    /// target that leaves meanwhile [`ClientError::TargetGone`], and an
    /// error reply [`ClientError::Remote`]. Cancel-safe.
    pub async fn request_with(
        &self,
        to: &str,
        method: &str,
        payload: impl Into<Bytes>,
        timeout: Duration,
    ) -> Result<Bytes, ClientError> {
        let options = RequestOptions::default().method(method).timeout(timeout);
        self.request_inner(to, "", payload.into(), options)
            .await
            .map(|r| r.payload)
    }

    /// Sends a request with [`RequestOptions`] (timeout, method, headers)
    /// and returns the whole [`Reply`], headers included. Cancel-safe.
    pub async fn request_with_options(
        &self,
        to: &str,
        payload: impl Into<Bytes>,
        options: RequestOptions,
    ) -> Result<Reply, ClientError> {
        self.request_inner(to, "", payload.into(), options).await
    }

    /// Sends a request to a *service*: the hub gives it to one of the
    /// clients serving a matching service ([`Client::serve_service`]),
    /// round-robin, and fails it at once with
    /// [`ClientError::NoResponders`] when none does. Cancel-safe.
    pub async fn request_service(
        &self,
        service: &str,
        payload: impl Into<Bytes>,
        options: RequestOptions,
    ) -> Result<Reply, ClientError> {
        self.request_inner("", service, payload.into(), options)
            .await
    }

    async fn request_inner(
        &self,
        to: &str,
        service: &str,
        payload: Bytes,
        options: RequestOptions,
    ) -> Result<Reply, ClientError> {
        let timeout = options.timeout.unwrap_or(self.shared().cfg.request_timeout);
        let timeout_ms = u32::try_from(timeout.as_millis())
            .unwrap_or(u32::MAX)
            .max(1);
        let headers = options.headers.to_wire();
        Headers::check(&headers)?;
        let local = timeout + Duration::from_millis(250);
        let answer = self
            .shared()
            .command(local, |id| {
                proto::Request {
                    id,
                    to: to.to_string(),
                    timeout_ms,
                    payload,
                    method: options.method,
                    headers,
                    service: service.to_string(),
                    ..Default::default()
                }
                .into()
            })
            .await;
        match answer {
            Ok(Frame {
                kind: Some(Kind::Reply(r)),
                ..
            }) => {
                if r.is_error {
                    Err(ClientError::Remote(
                        String::from_utf8_lossy(&r.payload).into_owned(),
                    ))
                } else {
                    Ok(Reply {
                        from: r.from,
                        payload: r.payload,
                        headers: Headers::from_wire(r.headers),
                    })
                }
            }
            Ok(other) => Err(unexpected("reply", other.kind)),
            Err(ClientError::Timeout(_)) => {
                let target = if service.is_empty() {
                    format!("{to:?}")
                } else {
                    format!("service {service:?}")
                };
                Err(ClientError::Timeout(format!(
                    "no reply from {target} within {} ms",
                    timeout.as_millis()
                )))
            }
            Err(e) => Err(e),
        }
    }

    /// Broadcasts `payload` to every other connected client that reads
    /// direct messages, and waits for the hub's confirmation.
    pub async fn broadcast(&self, payload: impl Into<Bytes>) -> Result<(), ClientError> {
        self.broadcast_with_headers(payload, Headers::new()).await
    }

    /// [`broadcast`](Self::broadcast) with headers.
    pub async fn broadcast_with_headers(
        &self,
        payload: impl Into<Bytes>,
        headers: Headers,
    ) -> Result<(), ClientError> {
        let payload = payload.into();
        let headers = headers.to_wire();
        Headers::check(&headers)?;
        self.shared()
            .command_ok(|id| {
                proto::Broadcast {
                    id,
                    payload,
                    headers,
                    ..Default::default()
                }
                .into()
            })
            .await
    }

    /// Publishes `payload` to `topic` and waits until the hub has routed it
    /// (an invalid topic fails with [`ClientError::InvalidArgument`]).
    pub async fn publish(&self, topic: &str, payload: impl Into<Bytes>) -> Result<(), ClientError> {
        self.publish_full(topic, "", payload.into(), Vec::new())
            .await
    }

    /// [`publish`](Self::publish) with headers.
    pub async fn publish_with_headers(
        &self,
        topic: &str,
        payload: impl Into<Bytes>,
        headers: Headers,
    ) -> Result<(), ClientError> {
        let headers = headers.to_wire();
        Headers::check(&headers)?;
        self.publish_full(topic, "", payload.into(), headers).await
    }

    /// [`publish`](Self::publish) naming a topic subscribers should answer
    /// to ([`Message::reply_to`]).
    pub async fn publish_with_reply(
        &self,
        topic: &str,
        reply_to: &str,
        payload: impl Into<Bytes>,
    ) -> Result<(), ClientError> {
        self.publish_full(topic, reply_to, payload.into(), Vec::new())
            .await
    }

    async fn publish_full(
        &self,
        topic: &str,
        reply_to: &str,
        payload: Bytes,
        headers: Vec<proto::Header>,
    ) -> Result<(), ClientError> {
        self.shared()
            .command_ok(|id| {
                proto::Publish {
                    id,
                    topic: topic.to_string(),
                    payload,
                    reply_to: reply_to.to_string(),
                    headers,
                    ..Default::default()
                }
                .into()
            })
            .await
    }

    /// Publishes without confirmation: returns once queued on this
    /// connection. The fastest way to publish.
    pub async fn publish_nowait(
        &self,
        topic: &str,
        payload: impl Into<Bytes>,
    ) -> Result<(), ClientError> {
        self.shared()
            .post_at_most_once(Frame::publish(topic, payload.into()))
            .await
    }

    /// Subscribes to topics matching `pattern` (`.`-separated segments; `*`
    /// matches one segment, a final `>` one or more). Messages arrive on the
    /// returned stream; dropping it unsubscribes. The subscription is
    /// restored automatically after a reconnect.
    ///
    /// Cancel-safe: a call dropped before it returns leaves no subscription
    /// behind (locally or at the hub).
    pub async fn subscribe(&self, pattern: &str) -> Result<Subscription, ClientError> {
        self.subscribe_with(pattern, SubscribeOptions::default())
            .await
    }

    /// Subscribes as a member of queue group `group`: each message matching
    /// `pattern` goes to one member of the group only. Cancel-safe.
    pub async fn subscribe_group(
        &self,
        pattern: &str,
        group: &str,
    ) -> Result<Subscription, ClientError> {
        self.subscribe_with(pattern, SubscribeOptions::default().queue_group(group))
            .await
    }

    /// Subscribes with options: queue group, the stream's capacity and
    /// overflow policy, and a number of messages after which the
    /// subscription ends by itself. Cancel-safe.
    ///
    /// ```no_run
    /// # async fn run(client: switchboard::Client) -> Result<(), switchboard::ClientError> {
    /// use switchboard::{Overflow, SubscribeOptions};
    /// // A dashboard that only wants the latest readings.
    /// let mut readings = client
    ///     .subscribe_with(
    ///         "sensors.>",
    ///         SubscribeOptions::default().capacity(64).overflow(Overflow::DropOldest),
    ///     )
    ///     .await?;
    /// while let Some(msg) = readings.recv().await {
    ///     println!("{}: {} bytes ({} dropped so far)", msg.topic, msg.payload.len(), readings.dropped());
    /// }
    /// # Ok(()) }
    /// ```
    pub async fn subscribe_with(
        &self,
        pattern: &str,
        options: SubscribeOptions,
    ) -> Result<Subscription, ClientError> {
        Subscription::start(self.shared().clone(), pattern, options).await
    }

    /// Incoming direct and broadcast messages. Until this is called the hub
    /// refuses direct messages to this client with
    /// [`ClientError::NotListening`] (their senders learn it at once) and
    /// leaves it out of broadcasts; once it returns, every direct message
    /// confirmed to its sender reaches this stream. Calling it again
    /// replaces the earlier stream, which ends after what it already holds.
    /// Dropping the stream stops listening. Cancel-safe: dropped before it
    /// returns, it stops listening (a stream it replaced has ended
    /// already).
    pub async fn messages(&self) -> Result<Messages, ClientError> {
        Messages::start(self.shared().clone()).await
    }

    /// Incoming requests to this client's id, each answered with
    /// [`IncomingRequest::reply`]. Until this (or [`serve`](Self::serve))
    /// is called, requests to this client fail at once with
    /// [`ClientError::NotListening`]. Calling it again (or `serve`)
    /// replaces the earlier stream. While no stream exists, requests are
    /// refused. Cancel-safe.
    pub async fn requests(&self) -> Result<Requests, ClientError> {
        Requests::start(self.shared().clone()).await
    }

    /// Answers every incoming request with `handler`, each in its own task
    /// (at most 1,024 at once; see [`serve_with`](Self::serve_with)).
    /// `Ok(bytes)` becomes the reply; `Err(e)` an error reply carrying
    /// `e.to_string()`; a panicking handler an error reply too. Serving
    /// stops when the returned handle is dropped or
    /// [stopped](ServeHandle::stop). Cancel-safe.
    pub async fn serve<F, Fut, E>(&self, handler: F) -> Result<ServeHandle, ClientError>
    where
        F: Fn(IncomingRequest) -> Fut + Send + Sync + 'static,
        Fut: std::future::Future<Output = Result<Bytes, E>> + Send + 'static,
        E: std::fmt::Display + Send + 'static,
    {
        self.serve_with(ServeOptions::default(), handler).await
    }

    /// [`serve`](Self::serve) with options: how many requests run at once,
    /// and how long a handler may run before the requester gets an error
    /// reply (the handler is then dropped). Cancel-safe.
    pub async fn serve_with<F, Fut, E>(
        &self,
        options: ServeOptions,
        handler: F,
    ) -> Result<ServeHandle, ClientError>
    where
        F: Fn(IncomingRequest) -> Fut + Send + Sync + 'static,
        Fut: std::future::Future<Output = Result<Bytes, E>> + Send + 'static,
        E: std::fmt::Display + Send + 'static,
    {
        let requests = self.requests().await?;
        Ok(ServeHandle::start(
            self.shared().clone(),
            requests,
            options,
            handler,
        ))
    }

    /// Requests sent to service `name` (or a service subject matching the
    /// pattern `name`, with `*` and `>`) by
    /// [`request_service`](Self::request_service): the hub spreads them
    /// round-robin over every client serving a matching service. Dropping
    /// the stream stops serving. Cancel-safe.
    pub async fn service(&self, name: &str) -> Result<Requests, ClientError> {
        Requests::start_service(self.shared().clone(), name).await
    }

    /// Answers requests to service `name` with `handler`, like
    /// [`serve_with`](Self::serve_with). Cancel-safe.
    pub async fn serve_service<F, Fut, E>(
        &self,
        name: &str,
        options: ServeOptions,
        handler: F,
    ) -> Result<ServeHandle, ClientError>
    where
        F: Fn(IncomingRequest) -> Fut + Send + Sync + 'static,
        Fut: std::future::Future<Output = Result<Bytes, E>> + Send + 'static,
        E: std::fmt::Display + Send + 'static,
    {
        let requests = self.service(name).await?;
        Ok(ServeHandle::start(
            self.shared().clone(),
            requests,
            options,
            handler,
        ))
    }

    /// The key/value store shared by all clients of the hub.
    pub fn kv(&self) -> Kv {
        Kv::new(self.shared().clone())
    }

    /// Watches clients joining and leaving. The stream's
    /// [`current`](Presence::current) holds the clients connected when the
    /// watch started; events follow. After a reconnect the differences are
    /// reported as events.
    pub async fn presence(&self) -> Result<Presence, ClientError> {
        Presence::start(self.shared().clone()).await
    }

    /// The clients connected to the hub, sorted by id.
    pub async fn clients(&self) -> Result<Vec<ClientInfo>, ClientError> {
        let shared = self.shared();
        let answer = shared
            .command(shared.cfg.request_timeout, |id| {
                proto::ListClients { id }.into()
            })
            .await?;
        match answer.kind {
            Some(Kind::ClientList(list)) => Ok(list.clients.into_iter().map(Into::into).collect()),
            other => Err(unexpected("client list", other)),
        }
    }

    /// The hub's status and counters.
    pub async fn status(&self) -> Result<HubStatus, ClientError> {
        let shared = self.shared();
        let answer = shared
            .command(shared.cfg.request_timeout, |id| {
                proto::StatusRequest { id }.into()
            })
            .await?;
        match answer.kind {
            Some(Kind::Status(s)) => Ok(s.into()),
            other => Err(unexpected("status", other)),
        }
    }

    /// Waits until the client is connected, up to `timeout`.
    pub async fn wait_connected(&self, timeout: Duration) -> Result<(), ClientError> {
        let mut state = self.state();
        let waited = tokio::time::timeout(
            timeout,
            state.wait_for(|s| {
                matches!(
                    s,
                    ConnectionState::Connected { .. } | ConnectionState::Closed { .. }
                )
            }),
        )
        .await;
        let connected = match waited {
            Ok(Ok(s)) => s.is_connected(),
            Ok(Err(_)) => false,
            Err(_) => {
                return Err(ClientError::Timeout(format!(
                    "not connected within {} ms",
                    timeout.as_millis()
                )))
            }
        };
        if connected {
            Ok(())
        } else {
            Err(self.shared().down_error())
        }
    }

    /// Events of this client's connection and streams (connected,
    /// disconnected, resumed, state lost, slow consumer, hub drops, hub
    /// errors, fenced, closed), from now on; see [`ClientEvent`].
    pub fn events(&self) -> Events {
        Events::new(self.shared().events.subscribe())
    }

    /// Waits until everything this client sent so far is taken over by the
    /// hub: with reliable delivery, until the hub acknowledged every
    /// numbered frame (across a resume, too); then one round trip, so
    /// unnumbered frames queued before the call (the `*_nowait` calls) were
    /// read by the hub as well. Fails with [`ClientError::Timeout`] after
    /// the request timeout. Cancel-safe.
    pub async fn flush(&self) -> Result<(), ClientError> {
        let shared = self.shared();
        let deadline = Instant::now() + shared.cfg.request_timeout;
        loop {
            let notified = shared.wake.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let kept = shared.reg.lock().out.len();
            if kept == 0 {
                break;
            }
            if *shared.close.borrow() {
                return Err(ClientError::Closed);
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return Err(ClientError::Timeout(format!(
                    "{kept} frames still not acknowledged by the hub"
                )));
            }
        }
        let left = deadline.saturating_duration_since(Instant::now());
        shared
            .command(left, |id| proto::StatusRequest { id }.into())
            .await
            .map(|_| ())
    }

    /// Ends the client gracefully within `timeout`: stops new deliveries
    /// (unsubscribes, ends watches and the presence watch, stops taking
    /// direct messages and requests), lets the application take what its
    /// streams already hold (each stream ends after its last item), waits
    /// until everything sent is acknowledged ([`flush`](Self::flush)), then
    /// closes. The report says what was left when the time ran out.
    /// Dropping the call part-way leaves the client draining but open.
    pub async fn drain(&self, timeout: Duration) -> CloseReport {
        let shared = self.shared();
        let deadline = Instant::now() + timeout;
        let (subs, watches, presence, queues) = {
            let mut reg = shared.reg.lock();
            let subs: Vec<u64> = reg.subs.keys().copied().collect();
            let watches: Vec<u64> = reg.watches.keys().copied().collect();
            let presence = !reg.presence.is_empty();
            (subs, watches, presence, reg.end_streams())
        };
        let unsubscribes = subs
            .into_iter()
            .map(|sub_id| shared.command_ok(move |id| proto::Unsubscribe { id, sub_id }.into()));
        let unwatches = watches
            .into_iter()
            .map(|watch_id| shared.command_ok(move |id| proto::KvUnwatch { id, watch_id }.into()));
        let stopping = async {
            futures::future::join(
                futures::future::join_all(unsubscribes),
                futures::future::join_all(unwatches),
            )
            .await;
            if presence {
                let _ = shared
                    .command_ok(|id| proto::PresenceWatch { id, stop: true }.into())
                    .await;
            }
            let _ = shared.sync_listen().await;
        };
        let _ = tokio::time::timeout_at(deadline, stopping).await;
        // Let the application take what its streams hold.
        while queues.iter().any(|len| len() > 0) && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let undelivered = queues.iter().map(|len| len()).sum();
        let left = deadline.saturating_duration_since(Instant::now());
        let _ = tokio::time::timeout(left, self.flush()).await;
        let mut report = self.close().await;
        report.undelivered = undelivered;
        report
    }

    /// Closes the connection (telling the hub goodbye after the frames
    /// already queued) and stops reconnecting. Calls in flight fail with
    /// [`ClientError::Closed`]. The report says how many frames the hub had
    /// not acknowledged when the connection ended (their fate is unknown);
    /// call [`flush`](Self::flush) or [`drain`](Self::drain) first to wait
    /// for them.
    pub async fn close(&self) -> CloseReport {
        self.shared().close.send_replace(true);
        let mut state = self.state();
        let _ = tokio::time::timeout(
            Duration::from_secs(2),
            state.wait_for(|s| matches!(s, ConnectionState::Closed { .. })),
        )
        .await;
        let (frames, bytes) = self.shared().reg.lock().lost_at_close;
        CloseReport {
            unacknowledged: frames,
            unacknowledged_bytes: bytes,
            undelivered: 0,
        }
    }
}
