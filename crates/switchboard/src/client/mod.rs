//! The client: connect to a hub and talk to other clients through it.

mod conn;
mod kv;
mod session;
mod streams;
mod types;

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use parking_lot::Mutex;
use switchboard_discovery::Secret;
use switchboard_wire::{proto, Frame, Kind};
use tokio::sync::{mpsc, oneshot, watch};

use crate::ClientError;

pub use kv::{Kv, KvWatch};
pub use session::SessionLink;
pub use streams::{IncomingRequest, Messages, Presence, Requests, ServeHandle, Subscription};
pub use types::{
    ClientInfo, ConnectionState, HubStatus, KvEntry, KvEvent, Message, MessageKind, PresenceEvent,
};

/// Default time a request waits for its reply.
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// Largest client id, in bytes.
pub const MAX_CLIENT_ID_LEN: usize = 256;

/// Where a client finds its hub.
#[derive(Debug, Clone)]
enum Target {
    Service(String),
    Addr(String),
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

    /// Bounds of the exponential reconnect backoff (50 ms to 5 s); each wait
    /// is drawn at random from the upper half of the current step.
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
    /// requests), in items; when an application does not keep up, further
    /// items are dropped and counted in [`Client::dropped`] (default 4096).
    pub fn stream_capacity(mut self, capacity: usize) -> Self {
        self.cfg.stream_capacity = capacity.max(1);
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
        let (state_tx, _) = watch::channel(ConnectionState::Connecting);
        let (close_tx, _) = watch::channel(false);
        let shared = Arc::new(Shared {
            cfg,
            secret,
            next_id: AtomicU64::new(1),
            state: state_tx,
            close: close_tx,
            reg: Mutex::new(Registry::default()),
            dropped: AtomicU64::new(0),
        });
        let first = conn::connect_once(&shared, None).await?;
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
}

pub(crate) struct SubEntry {
    pub pattern: String,
    pub group: String,
    pub tx: mpsc::Sender<Message>,
}

pub(crate) struct WatchEntry {
    pub key: String,
    pub prefix: bool,
    pub tx: mpsc::Sender<KvEvent>,
}

/// Everything the reader routes to, under one lock.
#[derive(Default)]
pub(crate) struct Registry {
    pub conn: Option<ConnTx>,
    pub pending: HashMap<u64, oneshot::Sender<Frame>>,
    pub subs: HashMap<u64, SubEntry>,
    pub watches: HashMap<u64, WatchEntry>,
    pub presence: HashMap<u64, mpsc::Sender<PresenceEvent>>,
    pub known_clients: BTreeMap<String, ClientInfo>,
    pub messages: Option<mpsc::Sender<Message>>,
    pub requests: Option<mpsc::Sender<IncomingRequest>>,
    pub sessions: HashMap<String, (u64, mpsc::Sender<proto::Session>)>,
    pub session_any: Option<(u64, mpsc::Sender<proto::Session>)>,
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
}

impl Shared {
    /// A fresh correlation, subscription or watch id.
    pub fn next_id(&self) -> u64 {
        self.next_id.fetch_add(1, Ordering::Relaxed)
    }

    fn conn(&self) -> Result<ConnTx, ClientError> {
        let reg = self.reg.lock();
        reg.conn.clone().ok_or_else(|| self.down_error())
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

    fn check_size(frame: &Frame, conn: &ConnTx) -> Result<(), ClientError> {
        let len = prost::Message::encoded_len(frame);
        if len > conn.max_frame {
            return Err(ClientError::InvalidArgument(format!(
                "message of {len} bytes exceeds the hub's limit of {} bytes; send a smaller payload",
                conn.max_frame
            )));
        }
        Ok(())
    }

    /// Queues a frame that expects no answer.
    pub async fn post(&self, frame: Frame) -> Result<(), ClientError> {
        let conn = self.conn()?;
        Self::check_size(&frame, &conn)?;
        conn.tx
            .send(frame)
            .await
            .map_err(|_| ClientError::Disconnected)
    }

    /// Queues a frame without waiting; drops it when not connected or when
    /// the queue is full (used from `Drop` impls).
    pub fn post_now(&self, frame: Frame) {
        if let Some(conn) = self.reg.lock().conn.clone() {
            let _ = conn.tx.try_send(frame);
        }
    }

    /// Sends the command built by `make` with a fresh correlation id and
    /// waits for its answer, turning `Error` answers into typed errors.
    pub async fn command(
        &self,
        timeout: Duration,
        make: impl FnOnce(u64) -> Frame,
    ) -> Result<Frame, ClientError> {
        let id = self.next_id();
        let frame = make(id);
        let (tx, rx) = oneshot::channel();
        let conn = {
            let mut reg = self.reg.lock();
            let Some(conn) = reg.conn.clone() else {
                drop(reg);
                return Err(self.down_error());
            };
            Self::check_size(&frame, &conn)?;
            reg.pending.insert(id, tx);
            conn
        };
        if conn.tx.send(frame).await.is_err() {
            self.reg.lock().pending.remove(&id);
            return Err(ClientError::Disconnected);
        }
        let answer = match tokio::time::timeout(timeout, rx).await {
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
            kind => Ok(Frame { seq: 0, kind }),
        }
    }

    /// [`command`](Self::command) expecting a plain `Ok`.
    pub async fn command_ok(&self, make: impl FnOnce(u64) -> Frame) -> Result<(), ClientError> {
        match self.command(self.cfg.request_timeout, make).await?.kind {
            Some(Kind::Ok(_)) => Ok(()),
            other => Err(unexpected("ok", other)),
        }
    }
}

pub(crate) fn unexpected(wanted: &str, got: Option<Kind>) -> ClientError {
    let got = Frame { seq: 0, kind: got };
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
/// queued frames in batches. When the connection drops, calls in flight fail
/// with [`ClientError::Disconnected`] and the client reconnects with
/// exponential backoff and jitter (re-discovering the hub when found by
/// service name), then restores its subscriptions, watches and presence
/// watch before reporting [`ConnectionState::Connected`] again.
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

    /// Items dropped so far because an incoming stream was full (this
    /// client's streams) or the hub's queue for this client was full (as the
    /// hub reported in `Flow` notices).
    pub fn dropped(&self) -> u64 {
        self.shared().dropped.load(Ordering::Relaxed)
    }

    /// Sends `payload` to client `to` and waits until the hub has queued it
    /// for the target. Fails with [`ClientError::NoSuchClient`] when the
    /// target is not connected.
    pub async fn send(&self, to: &str, payload: impl Into<Bytes>) -> Result<(), ClientError> {
        let payload = payload.into();
        self.shared()
            .command_ok(|id| {
                proto::Direct {
                    id,
                    to: to.to_string(),
                    payload,
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
        self.shared().post(Frame::direct(to, payload.into())).await
    }

    /// Sends a request to client `to` and waits for its reply, up to the
    /// client's default request timeout.
    pub async fn request(&self, to: &str, payload: impl Into<Bytes>) -> Result<Bytes, ClientError> {
        self.request_with(to, "", payload, self.shared().cfg.request_timeout)
            .await
    }

    /// Sends a request with a method name and an explicit timeout. The hub
    /// answers [`ClientError::Timeout`] when the target does not reply in
    /// time; a local timer a little longer guards against a silent hub.
    /// An unknown target gives [`ClientError::NoSuchClient`] at once, a
    /// target that leaves meanwhile [`ClientError::TargetGone`], and an
    /// error reply [`ClientError::Remote`].
    pub async fn request_with(
        &self,
        to: &str,
        method: &str,
        payload: impl Into<Bytes>,
        timeout: Duration,
    ) -> Result<Bytes, ClientError> {
        let payload = payload.into();
        let timeout_ms = u32::try_from(timeout.as_millis())
            .unwrap_or(u32::MAX)
            .max(1);
        let local = timeout + Duration::from_millis(250);
        let answer = self
            .shared()
            .command(local, |id| {
                proto::Request {
                    id,
                    to: to.to_string(),
                    timeout_ms,
                    payload,
                    method: method.to_string(),
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
                    Ok(r.payload)
                }
            }
            Ok(other) => Err(unexpected("reply", other.kind)),
            Err(ClientError::Timeout(_)) => Err(ClientError::Timeout(format!(
                "no reply from {to:?} within {} ms",
                timeout.as_millis()
            ))),
            Err(e) => Err(e),
        }
    }

    /// Broadcasts `payload` to every other connected client and waits for
    /// the hub's confirmation.
    pub async fn broadcast(&self, payload: impl Into<Bytes>) -> Result<(), ClientError> {
        let payload = payload.into();
        self.shared()
            .command_ok(|id| {
                proto::Broadcast {
                    id,
                    payload,
                    ..Default::default()
                }
                .into()
            })
            .await
    }

    /// Publishes `payload` to `topic` and waits until the hub has routed it
    /// (an invalid topic fails with [`ClientError::InvalidArgument`]).
    pub async fn publish(&self, topic: &str, payload: impl Into<Bytes>) -> Result<(), ClientError> {
        let payload = payload.into();
        self.shared()
            .command_ok(|id| {
                proto::Publish {
                    id,
                    topic: topic.to_string(),
                    payload,
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
            .post(Frame::publish(topic, payload.into()))
            .await
    }

    /// Subscribes to topics matching `pattern` (`.`-separated segments; `*`
    /// matches one segment, a final `>` one or more). Messages arrive on the
    /// returned stream; dropping it unsubscribes. The subscription is
    /// restored automatically after a reconnect.
    pub async fn subscribe(&self, pattern: &str) -> Result<Subscription, ClientError> {
        self.subscribe_group(pattern, "").await
    }

    /// Subscribes as a member of queue group `group`: each message matching
    /// `pattern` goes to one member of the group only.
    pub async fn subscribe_group(
        &self,
        pattern: &str,
        group: &str,
    ) -> Result<Subscription, ClientError> {
        Subscription::start(self.shared().clone(), pattern, group).await
    }

    /// Incoming direct and broadcast messages. Calling it again replaces
    /// the earlier stream (which then ends). Messages that arrive while no
    /// stream exists are dropped.
    pub fn messages(&self) -> Messages {
        Messages::start(self.shared())
    }

    /// Incoming requests, each answered with
    /// [`IncomingRequest::reply`]. Calling it again (or
    /// [`serve`](Self::serve)) replaces the earlier stream. While no stream
    /// exists, requests are answered at once with an error reply.
    pub fn requests(&self) -> Requests {
        Requests::start(self.shared())
    }

    /// Answers every incoming request with `handler`, each in its own task.
    /// `Ok(bytes)` becomes the reply; `Err(e)` an error reply carrying
    /// `e.to_string()`; a panicking handler an error reply too. At most 1024
    /// requests run at once; more wait in the stream. Serving stops when the returned handle is dropped.
    pub fn serve<F, Fut, E>(&self, handler: F) -> ServeHandle
    where
        F: Fn(IncomingRequest) -> Fut + Send + Sync + 'static,
        Fut: std::future::Future<Output = Result<Bytes, E>> + Send + 'static,
        E: std::fmt::Display + Send + 'static,
    {
        ServeHandle::start(self.requests(), handler)
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
            Some(Kind::ClientList(list)) => Ok(list.clients),
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
            Some(Kind::Status(s)) => Ok(s),
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

    /// Closes the connection (telling the hub goodbye) and stops
    /// reconnecting. Calls in flight fail with [`ClientError::Closed`].
    pub async fn close(&self) {
        self.shared().close.send_replace(true);
        let mut state = self.state();
        let _ = tokio::time::timeout(
            Duration::from_secs(2),
            state.wait_for(|s| matches!(s, ConnectionState::Closed { .. })),
        )
        .await;
    }
}
