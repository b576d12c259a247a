//! [`ClientBuilder`]: where the hub is, which secret to prove, how to
//! behave when the connection drops; [`ClientBuilder::connect`] makes the
//! first connection and starts the supervisor that keeps it.

use std::time::Duration;

use switchboard_discovery::{Secret, DEFAULT_SERVICE};
use switchboard_wire::validate_client_id;

use super::handle::Client;
use super::reliable;
use super::shared::{Config, Shared, Target};
use super::types::ConnectionState;
use super::{conn, connect};
use crate::ClientError;

/// Default time a request waits for its reply.
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// Default of [`ClientBuilder::resume_wait`].
pub const DEFAULT_RESUME_WAIT: Duration = Duration::from_secs(5);

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
    tls: Option<super::tls::TlsOptions>,
}

impl Client {
    /// Starts building a client that will register as `id` (1 to 256 bytes
    /// of UTF-8).
    pub fn builder(id: impl Into<String>) -> ClientBuilder {
        ClientBuilder::new(id)
    }
}

impl ClientBuilder {
    fn new(id: impl Into<String>) -> Self {
        ClientBuilder {
            cfg: Config {
                id: id.into(),
                target: Target::Service(DEFAULT_SERVICE.to_string()),
                secret: None,
                unix_owners: Vec::new(),
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
                tls: None,
            },
            tls: None,
        }
    }

    /// Finds the hub by service name through discovery (hint file, then the
    /// OS socket table, then a port scan). This is the default, with service
    /// [`DEFAULT_SERVICE`](crate::DEFAULT_SERVICE).
    pub fn service(mut self, name: impl Into<String>) -> Self {
        self.cfg.target = Target::Service(name.into());
        self
    }

    /// Connects to the hub at `addr` (`host:port`) instead of discovering
    /// it; `unix:/path` (or `unix:///path`) is the hub's Unix socket, as
    /// with [`unix`](Self::unix).
    pub fn addr(mut self, addr: impl Into<String>) -> Self {
        let addr = addr.into();
        self.cfg.target = match super::unix::parse_addr(&addr) {
            Some(path) => Target::Unix(path),
            None => Target::Addr(addr),
        };
        self
    }

    /// Connects to the hub's Unix domain socket at `path` (Unix only).
    /// The socket must be owned by this user, root or an owner allowed
    /// with [`unix_owner`](Self::unix_owner), in a directory that others
    /// cannot write (or with the sticky bit), else the connection is
    /// refused with [`ClientError::UnsafeSocket`]. Without a
    /// [`secret`](Self::secret) or [`token`](Self::token), the per-user
    /// secret file is used if it exists; when there is none the client
    /// authenticates by its peer credentials alone (the hub admits its own
    /// user, or whom its policy admits) and trusts the hub by the socket's
    /// owner.
    pub fn unix(mut self, path: impl Into<std::path::PathBuf>) -> Self {
        self.cfg.target = Target::Unix(path.into());
        self
    }

    /// Trusts a hub's Unix socket owned by `uid` too (besides this user and
    /// root): a hub run by another user for this one. May be called more
    /// than once.
    pub fn unix_owner(mut self, uid: u32) -> Self {
        self.cfg.unix_owners.push(uid);
        self
    }

    /// Connects to an in-memory hub ([`Hub::in_memory`](crate::Hub::in_memory)
    /// or any [`HubHandle`](crate::HubHandle)) through an in-process pipe,
    /// proving that hub's secret: the same handshake, router and
    /// semantics as over TCP, without a port. Reconnects re-open the pipe.
    #[cfg(feature = "hub")]
    pub fn in_memory(mut self, hub: &switchboard_hub::HubHandle) -> Self {
        self.cfg.target = Target::Dialer(super::transport::Dialer::memory(hub.memory_connector()));
        self.cfg.secret = Some(hub.secret());
        self
    }

    /// Connects over WebSocket to a hub's gateway, e.g.
    /// `ws://127.0.0.1:8080/v1/ws` (the hub's `--http` listener): the same
    /// frames, one per binary message, with reliable delivery and resume
    /// as over TCP.
    #[cfg(feature = "websocket")]
    pub fn websocket(mut self, url: impl Into<String>) -> Self {
        self.cfg.target = Target::Dialer(super::transport::Dialer::websocket(url.into()));
        self
    }

    /// Speaks TLS to the hub, trusting and showing what `options` say
    /// (files are read by [`connect`](Self::connect)). Every connection
    /// uses it, reconnections too; an address written `tls://host:port`
    /// asks for TLS and has its certificate checked against `host`.
    pub fn tls(mut self, options: super::tls::TlsOptions) -> Self {
        self.tls = Some(options);
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
    ///
    /// [`Overflow::Block`]: crate::Overflow::Block
    /// [`SubscribeOptions`]: crate::SubscribeOptions
    /// [`ClientEvent::HubDropped`]: crate::ClientEvent::HubDropped
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
    ///
    /// [`SessionLink`]: crate::SessionLink
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
    ///
    /// [`DEFAULT_RETAIN_FRAMES`]: crate::DEFAULT_RETAIN_FRAMES
    /// [`DEFAULT_RETAIN_BYTES`]: crate::DEFAULT_RETAIN_BYTES
    /// [`Subscription`]: crate::Subscription
    /// [`IncomingRequest`]: crate::IncomingRequest
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
        let mut cfg = self.cfg;
        cfg.tls = self.tls.map(|o| o.build()).transpose()?;
        validate_client_id(&cfg.id).map_err(ClientError::InvalidArgument)?;
        let secret = match (&cfg.secret, &cfg.target) {
            (Some(s), _) => Some(s.clone()),
            // Over a Unix socket a missing secret file is no error: the
            // peer credentials speak for the client. None is created.
            (None, Target::Unix(_)) => switchboard_discovery::runtime_dir().ok().and_then(|dir| {
                Secret::load(&dir.join(switchboard_discovery::SECRET_FILE_NAME)).ok()
            }),
            (None, _) => {
                Some(Secret::load_default().map_err(|e| ClientError::Secret(e.to_string()))?)
            }
        };
        let shared = Shared::new(cfg, secret);
        let first = connect::connect_once(&shared, None, shared.cfg.connect_timeout).await?;
        let mut state = shared.state.subscribe();
        tokio::spawn(conn::supervise(shared.clone(), first));
        let _ = state
            .wait_for(|s| !matches!(s, ConnectionState::Connecting))
            .await;
        Ok(Client::new(shared))
    }
}
