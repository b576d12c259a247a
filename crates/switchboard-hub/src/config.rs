//! Hub configuration and start-up errors.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use switchboard_discovery::{BindOptions, DiscoveryError, Secret, SecretError};

use crate::router::admission::Admission;
use crate::router::remote::Remote;
use crate::Limits;

/// Default time a new connection has to complete the handshake.
pub const DEFAULT_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);

/// How to run a hub. Start from [`HubConfig::new`] (per-user secret file) or
/// [`HubConfig::with_secret`], then change fields.
#[derive(Debug, Clone)]
pub struct HubConfig {
    /// Service name clients discover the hub by (1 to 64 ASCII letters,
    /// digits, `.`, `_` or `-`).
    pub service: String,
    /// Where to listen (default: loopback, a random free port).
    pub bind: BindOptions,
    /// Key of every proof; clients must hold the same secret.
    pub secret: Secret,
    /// Write a rendezvous hint for discovery (default true); it is removed
    /// on shutdown.
    pub write_hint: bool,
    /// Directory for the hint (default: the per-user runtime directory).
    pub hint_dir: Option<PathBuf>,
    /// Time a connection has to complete the whole handshake (default 5 s).
    pub handshake_timeout: Duration,
    /// Limits and queue sizes.
    pub limits: Limits,
    /// When set, clients are asked (in `Welcome.keepalive_ms`) to send
    /// traffic or a `Ping` at least this often, and a client silent for three
    /// intervals (only whole frames count) is disconnected with
    /// `Goodbye{TIMEOUT}`. Default: [`DEFAULT_KEEPALIVE`] (30 s), so a
    /// vanished or dribbling peer is shed within 90 s; `None` turns it off.
    pub keepalive: Option<Duration>,
    /// Primary epoch announced in the identity (default 1).
    pub epoch: u64,
    /// When set, an HTTP listener for the long-poll gateway, the
    /// WebSocket transport, metrics and the dashboard (default: none).
    pub http: Option<HttpConfig>,
    /// Replication link heartbeat interval, both ways (default 50 ms).
    pub heartbeat_interval: Duration,
    /// Missed heartbeat intervals after which the peer of a replication
    /// link is taken as dead (default 4: 200 ms). A killed peer's socket
    /// closes at once, which counts too.
    pub heartbeat_misses: u32,
    /// Who may connect and what each client may do (a permission policy);
    /// `None` (the default) is single-user mode: whoever holds the secret,
    /// or connects over the Unix socket as the hub's own user, may do
    /// everything.
    pub admission: Option<Arc<dyn Admission>>,
    /// Where messages for clients of other hubs go (a federation; see
    /// [`Remote`]); `None` (the default): this hub stands alone.
    pub remote: Option<Arc<dyn Remote>>,
    /// The Unix domain socket (default: on Unix, `<hint dir or runtime
    /// dir>/<service>.<instance_id>.sock`, mode 0600); named in the hint.
    pub unix: UnixSocket,
    /// TLS on the native listener and the HTTP/WebSocket listener
    /// (default: none). With it, the native port still answers plaintext
    /// discovery probes and refuses any other plaintext connection.
    pub tls: Option<crate::TlsServer>,
    /// TLS for the links this hub opens (a standby's link to its primary):
    /// the CAs it trusts (default: none, plaintext links).
    pub tls_client: Option<switchboard_discovery::tls::ClientTls>,
    /// Allow a non-loopback listener without TLS (default false: such a
    /// configuration is refused; when allowed, every start warns).
    pub insecure_plaintext: bool,
    /// A listening TCP socket to serve on instead of binding `bind`
    /// (default: none), e.g. one passed by systemd's socket activation.
    /// Only [`Hub::start`](crate::Hub::start) uses it; a standby taking
    /// over binds the primary's port.
    pub listener: Option<Arc<std::net::TcpListener>>,
}

/// Default replication heartbeat interval.
pub const DEFAULT_HEARTBEAT_INTERVAL: Duration = Duration::from_millis(50);
/// Default missed heartbeats before a replication peer is taken as dead.
pub const DEFAULT_HEARTBEAT_MISSES: u32 = 4;

/// Default keepalive interval a hub asks of its clients.
pub const DEFAULT_KEEPALIVE: Duration = Duration::from_secs(30);

impl HubConfig {
    /// A configuration with defaults and the per-user secret file
    /// (created if missing).
    pub fn new(service: impl Into<String>) -> Result<HubConfig, HubError> {
        let secret = Secret::load_default()?;
        Ok(HubConfig::with_secret(service, secret))
    }

    /// A configuration with defaults and the given secret.
    pub fn with_secret(service: impl Into<String>, secret: Secret) -> HubConfig {
        HubConfig {
            service: service.into(),
            bind: BindOptions::default(),
            secret,
            write_hint: true,
            hint_dir: None,
            handshake_timeout: DEFAULT_HANDSHAKE_TIMEOUT,
            limits: Limits::default(),
            keepalive: Some(DEFAULT_KEEPALIVE),
            epoch: 1,
            http: None,
            heartbeat_interval: DEFAULT_HEARTBEAT_INTERVAL,
            heartbeat_misses: DEFAULT_HEARTBEAT_MISSES,
            admission: None,
            remote: None,
            unix: UnixSocket::default(),
            tls: None,
            tls_client: None,
            insecure_plaintext: false,
            listener: None,
        }
    }
}

/// Why a hub could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum HubError {
    /// The secret file could not be loaded or created.
    #[error("cannot load the hub secret: {0}")]
    Secret(#[from] SecretError),
    /// The service name is not valid, or the hint could not be written.
    #[error(transparent)]
    Discovery(#[from] DiscoveryError),
    /// No listener could be bound.
    #[error("cannot listen on {addr}: {source}; choose another address or port")]
    Bind {
        /// What was asked for.
        addr: String,
        /// The underlying error.
        source: std::io::Error,
    },
    /// A configuration value is unusable.
    #[error("invalid hub configuration: {0}")]
    Config(String),
}

/// Settings of the HTTP/WebSocket listener ([`HubConfig::http`](crate::HubConfig::http)).
#[derive(Debug, Clone)]
pub struct HttpConfig {
    /// Where to listen (`127.0.0.1:0` picks a free loopback port).
    pub addr: SocketAddr,
    /// How long a listen request is held when nothing arrives (default
    /// 25 s; a request may ask for less, or up to `max_poll_timeout`).
    pub poll_timeout: Duration,
    /// Longest hold a listen request may ask for (default 120 s).
    pub max_poll_timeout: Duration,
    /// An HTTP client that has no poll held and made no call for this long
    /// is deregistered (presence: left, reason `idle`) (default 60 s).
    pub idle_timeout: Duration,
    /// Largest request body, bytes (default 2 MiB); larger → 413.
    pub max_body: usize,
    /// Polls held at once for one client id (default 4); more → 429.
    pub max_polls_per_client: usize,
    /// Polls held at once in total (default 1,024); more → 429.
    pub max_polls: usize,
    /// Messages waiting in one HTTP client's mailbox between polls (default
    /// 10,000). When full, the oldest pub/sub delivery, broadcast or
    /// presence event is dropped (reported as `dropped` on the next poll);
    /// when only direct messages and requests wait, the client is
    /// disconnected as a slow consumer.
    pub mailbox_messages: usize,
    /// The same bound in payload bytes (default 16 MiB).
    pub mailbox_bytes: usize,
    /// Longest a request made over HTTP may wait for its answer (default
    /// 300 s; the request's own `timeout_ms` applies first).
    pub max_request_timeout: Duration,
    /// Serve on this listening socket instead of binding `addr` (e.g. one
    /// passed by systemd's socket activation); `addr` should then be its
    /// address. Each start serves a duplicate of it.
    pub listener: Option<std::sync::Arc<std::net::TcpListener>>,
}

impl HttpConfig {
    /// Defaults, listening on `addr`.
    pub fn new(addr: SocketAddr) -> HttpConfig {
        HttpConfig {
            addr,
            poll_timeout: Duration::from_secs(25),
            max_poll_timeout: Duration::from_secs(120),
            idle_timeout: Duration::from_secs(60),
            max_body: 2 * 1024 * 1024,
            max_polls_per_client: 4,
            max_polls: 1024,
            mailbox_messages: 10_000,
            mailbox_bytes: 16 * 1024 * 1024,
            max_request_timeout: Duration::from_secs(300),
            listener: None,
        }
    }
}

/// Default mode of the socket file: the hub's own user only.
pub const DEFAULT_UNIX_MODE: u32 = 0o600;

/// Where and how the hub listens on a Unix domain socket
/// ([`HubConfig::unix`](crate::HubConfig::unix)).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnixSocket {
    /// Whether to listen on a socket at all (default: yes on Unix; always
    /// off elsewhere). A hub started in memory never does.
    pub enabled: bool,
    /// The socket's path. `None` (the default):
    /// `<hint dir or runtime dir>/<service>.<instance_id>.sock`, and a
    /// failure to bind it is only a warning (the hub serves over TCP). A
    /// path given here must be bound, or the hub does not start.
    pub path: Option<PathBuf>,
    /// Mode of the socket file (default 0600). Other users can connect
    /// only with write permission on it (e.g. 0666, for a policy that
    /// admits them) and search permission on every directory above it, so
    /// such a socket needs a `path` outside the 0700 runtime directory.
    pub mode: u32,
}

impl Default for UnixSocket {
    fn default() -> Self {
        UnixSocket {
            enabled: cfg!(unix),
            path: None,
            mode: DEFAULT_UNIX_MODE,
        }
    }
}

impl UnixSocket {
    /// No socket.
    pub fn disabled() -> UnixSocket {
        UnixSocket {
            enabled: false,
            ..UnixSocket::default()
        }
    }

    /// A socket at `path` (bound, or the hub does not start).
    pub fn at(path: impl Into<PathBuf>) -> UnixSocket {
        UnixSocket {
            path: Some(path.into()),
            ..UnixSocket::default()
        }
    }

    /// The default path of a hub's socket in `dir`.
    pub fn default_path(dir: &Path, service: &str, instance_id: &str) -> PathBuf {
        dir.join(format!("{service}.{instance_id}.sock"))
    }
}
