//! switchboard hubs federated over a NATS cluster with JetStream.
//!
//! A hub stays the local rendezvous for its processes and becomes one NATS
//! client of the cluster. [`Federation`] implements the hub's remote seam
//! ([`Remote`]): the router asks it whether a client id may register
//! ([`Remote::claim`]) and tells it who joined and left; the federation
//! keeps the ids unique cluster-wide in a JetStream KV bucket, leased per
//! hub. See ARCHITECTURE.md, "Federation", for the whole design and what
//! this crate does so far.
//!
//! ```no_run
//! # async fn run() -> Result<(), switchboard_federation::FederationError> {
//! use switchboard_federation::{Federation, FederationOptions};
//! let fed = Federation::connect(FederationOptions::new(
//!     "my-service",
//!     vec!["nats://127.0.0.1:4222".into()],
//! ))
//! .await?;
//! // HubConfig::remote = Some(fed.remote()), or HubBuilder::remote(fed.remote())
//! # Ok(()) }
//! ```

pub mod directory;
pub mod kv;
pub mod lossless;
pub mod routing;
pub mod sessions;
pub mod subject;
pub mod throttle;
mod watch;

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use switchboard_hub::router::admission::Refusal;
use switchboard_hub::router::remote::{Handoff, Remote, RemotePort, RemoteStatus};
use switchboard_wire::{proto, Frame, Kind};
use tokio_util::sync::CancellationToken;

pub use directory::Directory;
pub use kv::{KvStats, SharedKv};
use lossless::Lossless;
pub use lossless::LosslessStats;
use routing::Routing;
pub use routing::RoutingStats;
use sessions::Sessions;

/// The default lease: a hub whose heartbeat is this old is taken as dead
/// and its client ids are released.
pub const DEFAULT_LEASE: Duration = Duration::from_secs(10);

/// How long [`Federation::connect`] keeps trying to reach the cluster and
/// open its buckets (a fresh cluster elects its JetStream leader first).
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(20);

/// Commands queued from the router task to the federation's task, at most
/// this many; beyond, a command is dropped, counted and logged (the router
/// never waits on NATS).
pub const COMMAND_QUEUE: usize = 65_536;

/// How often the round trip to the NATS server is measured (a ping).
pub const RTT_INTERVAL: Duration = Duration::from_secs(5);

/// How a hub joins the cluster.
///
/// Its `Debug` output shows the server URLs without their credentials.
#[derive(Clone)]
pub struct FederationOptions {
    /// The switchboard service; hubs of one service form one federation
    /// (bucket and subject names carry it, escaped).
    pub service: String,
    /// NATS server URLs (`nats://host:port`), any node of the cluster. A
    /// URL may carry credentials: `nats://USER:PASSWORD@host:port` (user
    /// and password) or `nats://TOKEN@host:port` (a token),
    /// percent-encoded; they are taken out of the URL before it is used
    /// or shown, and every URL that carries some must carry the same.
    pub servers: Vec<String>,
    /// This hub's name in the cluster; unique among the live hubs.
    /// Default: random.
    pub hub_name: String,
    /// The hub's epoch, written with every id it holds.
    pub epoch: u64,
    /// A NATS credentials file, if the cluster wants one: either a
    /// `.creds` file (user JWT and nkey seed, as `nsc` writes it) or a
    /// file holding an nkey user seed (`SU…`, as `nk -gen user` writes
    /// it); which one is told by the content.
    pub creds: Option<PathBuf>,
    /// A CA certificate (PEM) to verify the servers' TLS certificates;
    /// set, the connection requires TLS.
    pub tls_ca: Option<PathBuf>,
    /// A client certificate and its private key (PEM files) for servers
    /// that verify their clients (`tls { verify: true }`).
    pub tls_client: Option<(PathBuf, PathBuf)>,
    /// Replicas of the KV buckets; `None`: as many as the cluster has
    /// servers, at most 3.
    pub replicas: Option<usize>,
    /// See [`DEFAULT_LEASE`].
    pub lease: Duration,
    /// See [`DEFAULT_CONNECT_TIMEOUT`].
    pub connect_timeout: Duration,
    /// The largest message taken from the federation subjects, bytes
    /// (default [`routing::MAX_MESSAGE`]); larger ones are dropped and
    /// counted.
    pub max_message: usize,
    /// Whether the NATS client also reconnects to the servers the cluster
    /// announces (default `true`); `false`: only to `servers`.
    pub discover_servers: bool,
    /// The most live keys the shared key/value store holds and this hub
    /// caches (default: the hub's default, 100,000; `switchboard hub`
    /// sets the hub's `kv_max_keys`); see [`kv`].
    pub kv_max_keys: usize,
    /// The bytes of publishes and broadcasts for other hubs that may wait
    /// to go out to NATS (default: a client's outbox, the hub's default
    /// `queue_bytes`, 32 MiB; `switchboard hub` sets the hub's
    /// `queue_bytes`). Each counts its subject, payload (envelope and frame) and queue
    /// entry ([`routing::FANOUT_ENTRY_COST`]); beyond, they are dropped
    /// and counted, like a slow client's pub/sub deliveries.
    pub queue_bytes: usize,
    /// A hot standby's federation (default `false`): `hub_name` is the
    /// primary's, and until the hub takes over (when it attaches its
    /// port) the federation only watches — no heartbeat, no ids, no
    /// subscriptions. Taking over, it joins under that name with an
    /// epoch above the primary's and rewrites the primary's ids, which
    /// fences the old primary cluster-wide (see ARCHITECTURE.md,
    /// "Federation", Standby).
    pub standby: bool,
    /// Whether confirmed directs (a `Direct` with an id, as
    /// `Client::send` sends) to clients of other hubs go over the
    /// replicated JetStream stream, confirmed after its publish ack
    /// (default `true`; see [`lossless`]). `false`: over core NATS like
    /// every other message, confirmed when this hub handed them on.
    pub lossless: bool,
}

impl FederationOptions {
    /// Options with the defaults for `service` on `servers`.
    pub fn new(service: impl Into<String>, servers: Vec<String>) -> FederationOptions {
        FederationOptions {
            service: service.into(),
            servers,
            hub_name: format!("hub-{}", hex::encode(rand::random::<[u8; 6]>())),
            epoch: 1,
            creds: None,
            tls_ca: None,
            tls_client: None,
            replicas: None,
            lease: DEFAULT_LEASE,
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            max_message: routing::MAX_MESSAGE,
            discover_servers: true,
            kv_max_keys: switchboard_hub::limits::Limits::default().kv_max_keys,
            queue_bytes: switchboard_hub::limits::Limits::default().queue_bytes,
            standby: false,
            lossless: true,
        }
    }

    /// Splits a `--federate` value, `nats://h1:4222,nats://h2:4222`, into
    /// server URLs.
    pub fn parse_servers(list: &str) -> Result<Vec<String>, FederationError> {
        let servers: Vec<String> = list
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
            .collect();
        if servers.is_empty() {
            return Err(FederationError::Config(
                "no NATS server given; use nats://HOST:PORT[,nats://HOST:PORT...]".into(),
            ));
        }
        for s in &servers {
            if !(s.starts_with("nats://") || s.starts_with("tls://")) {
                return Err(FederationError::Config(format!(
                    "{:?} is not a NATS URL; use nats://HOST:PORT or tls://HOST:PORT",
                    redact(s)
                )));
            }
        }
        Ok(servers)
    }
}

impl std::fmt::Debug for FederationOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let servers: Vec<String> = self.servers.iter().map(|s| redact(s)).collect();
        f.debug_struct("FederationOptions")
            .field("service", &self.service)
            .field("servers", &servers)
            .field("hub_name", &self.hub_name)
            .field("epoch", &self.epoch)
            .field("creds", &self.creds)
            .field("tls_ca", &self.tls_ca)
            .field("tls_client", &self.tls_client)
            .field("replicas", &self.replicas)
            .field("lease", &self.lease)
            .field("connect_timeout", &self.connect_timeout)
            .field("max_message", &self.max_message)
            .field("queue_bytes", &self.queue_bytes)
            .field("standby", &self.standby)
            .field("lossless", &self.lossless)
            .finish()
    }
}

/// `url` without the credentials it may carry (`nats://host:port`).
pub fn redact(url: &str) -> String {
    split_userinfo(url).0
}

/// `url` split into the URL without its user information and that
/// information (`USER:PASSWORD` or `TOKEN`, still percent-encoded).
fn split_userinfo(url: &str) -> (String, Option<String>) {
    let Some((scheme, rest)) = url.split_once("://") else {
        return (url.to_owned(), None);
    };
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    match rest[..authority_end].rfind('@') {
        Some(at) => (
            format!("{scheme}://{}", &rest[at + 1..]),
            Some(rest[..at].to_owned()),
        ),
        None => (url.to_owned(), None),
    }
}

fn percent_decode(s: &str) -> Result<String, FederationError> {
    let bad = || {
        FederationError::Config("a NATS URL's credentials are not valid percent-encoding".into())
    };
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = s.get(i + 1..i + 3).ok_or_else(bad)?;
            out.push(u8::from_str_radix(hex, 16).map_err(|_| bad())?);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| bad())
}

/// Credentials found in the server URLs.
#[derive(PartialEq, Eq)]
enum UrlAuth {
    UserPassword(String, String),
    Token(String),
}

/// The server URLs without credentials, and the credentials they carry.
fn url_auth(servers: &[String]) -> Result<(Vec<String>, Option<UrlAuth>), FederationError> {
    let mut clean = Vec::new();
    let mut auth: Option<UrlAuth> = None;
    for s in servers {
        let (url, info) = split_userinfo(s);
        if let Some(info) = info {
            let this = match info.split_once(':') {
                Some((u, p)) => UrlAuth::UserPassword(percent_decode(u)?, percent_decode(p)?),
                None => UrlAuth::Token(percent_decode(&info)?),
            };
            if auth.as_ref().is_some_and(|a| *a != this) {
                return Err(FederationError::Config(
                    "the NATS URLs carry different credentials; give the same on every URL (or on one)".into(),
                ));
            }
            auth = Some(this);
        }
        clean.push(url);
    }
    Ok((clean, auth))
}

/// Reads a credentials file (see [`FederationOptions::creds`]) into `opts`.
fn load_creds(
    opts: async_nats::ConnectOptions,
    path: &std::path::Path,
) -> Result<async_nats::ConnectOptions, FederationError> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        FederationError::Config(format!(
            "cannot read the NATS credentials file {}: {e}",
            path.display()
        ))
    })?;
    if text.contains("-----BEGIN NATS USER JWT-----") {
        return opts.credentials(&text).map_err(|_| {
            FederationError::Config(format!(
                "the NATS credentials file {} is not a valid .creds file (user JWT and nkey seed)",
                path.display()
            ))
        });
    }
    let seed = text
        .lines()
        .map(str::trim)
        .find(|l| l.starts_with("SU"))
        .filter(|l| {
            l.len() == 58
                && l.bytes()
                    .all(|b| b.is_ascii_uppercase() || (b'2'..=b'7').contains(&b))
        });
    match seed {
        Some(seed) => Ok(opts.nkey(seed.to_owned())),
        None => Err(FederationError::Config(format!(
            "the NATS credentials file {} is neither a .creds file (user JWT and nkey seed) nor an nkey user seed (SU...)",
            path.display()
        ))),
    }
}

/// Why joining the cluster failed.
#[derive(Debug, thiserror::Error)]
pub enum FederationError {
    /// The options are unusable.
    #[error("federation: {0}")]
    Config(String),
    /// No NATS server could be reached.
    #[error("federation: cannot reach the NATS cluster at {servers}: {message}")]
    Connect {
        /// The servers tried.
        servers: String,
        /// What went wrong.
        message: String,
    },
    /// A NATS server refused this hub's credentials (or wanted some and
    /// got none). The message never contains a secret.
    #[error("federation: the NATS server at {servers} refused to authenticate this hub: {message}; check --federate-creds or the credentials in the URL")]
    Auth {
        /// The servers tried (without credentials).
        servers: String,
        /// What the server said.
        message: String,
    },
    /// The cluster answered but its JetStream buckets could not be opened.
    #[error("federation: JetStream on the NATS cluster is not usable: {0}")]
    JetStream(String),
}

/// A hub's membership in the cluster: implements [`Remote`]. Cheap to
/// clone; when the last clone is dropped, its tasks stop (heartbeats
/// end, and the hub's ids are released by the others after the lease).
#[derive(Debug, Clone)]
pub struct Federation {
    inner: Arc<Handle>,
}

#[derive(Debug)]
struct Handle {
    directory: Arc<Directory>,
    routing: Arc<Routing>,
    sessions: Arc<Sessions>,
    kv: Arc<SharedKv>,
    /// The lossless path, unless turned off.
    lossless: Option<Arc<Lossless>>,
    /// This hub's subscription, until the hub attaches its port (a
    /// standby's: none, it subscribes when it takes over).
    inbound: Mutex<Option<async_nats::Subscriber>>,
    /// Whether a hub attached its port already.
    attached: std::sync::atomic::AtomicBool,
    client: async_nats::Client,
    /// The last measured round trip to the server, microseconds.
    rtt_us: Arc<AtomicU64>,
    /// What the NATS client said about itself (slow consumers).
    nats_events: Arc<NatsEvents>,
    /// One message per (re)connection to the cluster, and per heartbeat
    /// that reached it again after failing, until the hub attaches its
    /// port.
    connected: Mutex<Option<tokio::sync::mpsc::UnboundedReceiver<()>>>,
    stop: CancellationToken,
}

impl Drop for Handle {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

impl Federation {
    /// Connects to the cluster, opens (or creates) the buckets, starts the
    /// heartbeat and the watches. Waits up to `options.connect_timeout`.
    pub async fn connect(options: FederationOptions) -> Result<Federation, FederationError> {
        if options.lease < Duration::from_millis(300) {
            return Err(FederationError::Config(
                "the lease must be at least 300 ms".into(),
            ));
        }
        let (connected_tx, connected) = tokio::sync::mpsc::unbounded_channel();
        let nats_events = Arc::new(NatsEvents::default());
        let client = connect_nats(&options, connected_tx.clone(), nats_events.clone()).await?;
        let stop = CancellationToken::new();
        let directory =
            Directory::open(client.clone(), &options, stop.clone(), connected_tx).await?;
        let rtt_us = Arc::new(AtomicU64::new(0));
        spawn_until(stop.clone(), measure_rtt(client.clone(), rtt_us.clone()));
        let replicas = options
            .replicas
            .unwrap_or_else(|| client.server_info().connect_urls.len().clamp(1, 3));
        let deadline = std::time::Instant::now() + options.connect_timeout;
        let kv = SharedKv::open(
            client.clone(),
            &options.service,
            replicas,
            options.kv_max_keys,
            options.lease / 3,
            deadline,
        )
        .await?;
        let lossless = if options.lossless {
            Some(
                Lossless::open(
                    client.clone(),
                    &options.service,
                    directory.clone(),
                    replicas,
                    options.max_message,
                    deadline,
                )
                .await?,
            )
        } else {
            None
        };
        let routing = Routing::new(
            client.clone(),
            &options.service,
            directory.clone(),
            options.max_message,
            options.queue_bytes,
        );
        let failed = |message: String| FederationError::Connect {
            servers: options
                .servers
                .iter()
                .map(|s| redact(s))
                .collect::<Vec<_>>()
                .join(","),
            message,
        };
        // A standby subscribes to the hub's subject only when it takes over.
        let inbound = if options.standby {
            None
        } else {
            // Joining (ARCHITECTURE.md, "joining"): the subscription has
            // reached this hub's server (the flush's PONG comes after the
            // server took the SUB and queued the interest to its routes)
            // before the first heartbeat makes this hub live for others.
            let inbound = routing
                .subscribe_flushed()
                .await
                .map_err(|e| failed(format!("cannot subscribe to this hub's subject: {e}")))?;
            directory.join(stop.clone()).await?;
            Some(inbound)
        };
        spawn_until(stop.clone(), routing.clone().publisher());
        let sessions = Sessions::new(
            client.clone(),
            &options.service,
            directory.clone(),
            routing.clone(),
        );
        Ok(Federation {
            inner: Arc::new(Handle {
                directory,
                routing,
                sessions,
                kv,
                lossless,
                inbound: Mutex::new(inbound),
                attached: std::sync::atomic::AtomicBool::new(false),
                client,
                rtt_us,
                nats_events,
                connected: Mutex::new(Some(connected)),
                stop,
            }),
        })
    }

    /// This federation as the hub's remote seam (`HubConfig::remote`).
    pub fn remote(&self) -> Arc<dyn Remote> {
        Arc::new(self.clone())
    }

    /// This hub's name in the cluster.
    pub fn hub_name(&self) -> &str {
        self.inner.directory.hub_name()
    }

    /// The id directory (who holds which id, which hubs are live).
    pub fn directory(&self) -> &Directory {
        &self.inner.directory
    }

    /// Whether the hub's connection to the NATS cluster is up now. While
    /// it is down, messages for clients of other hubs fail at once
    /// (`NO_SUCH_CLIENT`, naming the cluster as unreachable).
    pub fn is_connected(&self) -> bool {
        self.inner.routing.connected()
    }

    /// This hub's epoch in the cluster now (a standby's rises above the
    /// primary's when it takes over).
    pub fn epoch(&self) -> u64 {
        self.inner.directory.epoch()
    }

    /// Whether this hub was fenced: a standby took over its name with a
    /// higher epoch. Its federation stopped (no heartbeat, nothing sent
    /// as that hub), its clients were closed with `FENCED`, and new ones
    /// are refused with it; the owner should stop the hub.
    pub fn is_fenced(&self) -> bool {
        self.inner.directory.is_fenced()
    }

    /// Waits until this hub is fenced (see [`is_fenced`](Self::is_fenced)).
    pub async fn fenced(&self) {
        self.inner.directory.fenced().await;
    }

    /// The counters of routing across hubs.
    pub fn routing_stats(&self) -> &RoutingStats {
        self.inner.routing.stats()
    }

    /// The federation's state now, as the hub's status shows it (see
    /// [`Remote::status`]).
    pub fn status(&self) -> RemoteStatus {
        let info = self.inner.client.server_info();
        let connected = matches!(
            self.inner.client.connection_state(),
            async_nats::connection::State::Connected
        );
        let s = self.routing_stats();
        let d = self.directory().stats();
        let n = |a: &AtomicU64| a.load(Ordering::Relaxed);
        RemoteStatus {
            connected,
            server: format!("{} ({}:{})", info.server_name, info.host, info.port),
            cluster: info.cluster.unwrap_or_default(),
            rtt_us: n(&self.inner.rtt_us),
            members: self.directory().members(),
            lease_age_ms: self.directory().lease_age().map(|a| a.as_millis() as u64),
            figures: vec![
                ("patterns", n(&s.patterns)),
                ("sent", n(&s.sent)),
                ("received", n(&s.received)),
                ("dropped", n(&s.dropped)),
                ("malformed", n(&s.malformed)),
                ("oversized", n(&s.oversized)),
                ("foreign", n(&s.foreign)),
                ("stale", n(&s.stale)),
                ("duplicates", n(&s.duplicates)),
                ("ids_written", d.written()),
                (
                    "lossless_stored",
                    self.lossless_stats().map_or(0, |l| n(&l.stored)),
                ),
                (
                    "lossless_failed",
                    self.lossless_stats().map_or(0, |l| n(&l.failed)),
                ),
                (
                    "lossless_queue_full",
                    self.lossless_stats().map_or(0, |l| n(&l.queue_full)),
                ),
                (
                    "lossless_delivered",
                    self.lossless_stats().map_or(0, |l| n(&l.delivered)),
                ),
                (
                    "lossless_undeliverable",
                    self.lossless_stats().map_or(0, |l| n(&l.undeliverable)),
                ),
                ("ids_released_dead", n(&d.released_dead)),
                ("ids_reclaimed", n(&d.reclaimed)),
                ("ids_taken_back", n(&d.taken_back)),
                ("queue_full", n(&s.queue_full)),
                ("group_served_by_origin", n(&s.served_by_origin)),
                ("session_unconfirmed", n(&s.session_unconfirmed)),
                (
                    "nats_slow_consumer",
                    n(&self.inner.nats_events.slow_consumer),
                ),
                ("kv_changes", self.kv().stats().changes()),
                ("kv_malformed", self.kv().stats().malformed()),
                ("kv_dropped", n(&self.kv().stats().dropped)),
                ("kv_uncached", self.kv().stats().uncached()),
                ("ids_taken_over", n(&d.taken_over)),
                (
                    "watch_stalled",
                    n(&d.watch_stalled) + n(&self.kv().stats().watch_stalled),
                ),
                ("epoch", self.epoch()),
                ("fenced", u64::from(self.is_fenced())),
            ],
        }
    }

    /// The counters of the lossless path (`None`: turned off, see
    /// [`FederationOptions::lossless`]).
    pub fn lossless_stats(&self) -> Option<&LosslessStats> {
        self.inner.lossless.as_ref().map(|l| l.stats())
    }

    /// Messages on the lossless path waiting for this hub: stored and
    /// not yet handed to its router, or handed over and not yet
    /// acknowledged (0 when the path is off).
    pub async fn lossless_consumer_backlog(&self) -> Result<u64, FederationError> {
        match &self.inner.lossless {
            Some(l) => l.backlog().await.map_err(FederationError::JetStream),
            None => Ok(0),
        }
    }

    /// The shared key/value store.
    pub fn kv(&self) -> &SharedKv {
        &self.inner.kv
    }

    /// Releases this hub's ids and its heartbeat entry now (a clean leave),
    /// then stops. Without it the others release them after the lease.
    pub async fn shutdown(self) {
        self.inner.directory.release_all().await;
        self.inner.stop.cancel();
    }
}

impl Remote for Federation {
    fn status(&self) -> Option<RemoteStatus> {
        Some(Federation::status(self))
    }

    fn route(&self, from: &str, to: &str, frame: &Frame) -> Handoff {
        let Some(hub) = self.inner.routing.holder(to) else {
            return Handoff::Unknown;
        };
        if !matches!(
            frame.kind,
            Some(Kind::Direct(_) | Kind::Request(_) | Kind::Session(_))
        ) {
            return Handoff::Unknown;
        }
        if self.inner.directory.is_fenced() {
            return Handoff::Unreachable(fenced_message(to, &hub));
        }
        if !self.inner.routing.connected() {
            return Handoff::Unreachable(cut_off(to, &hub));
        }
        if matches!(frame.kind, Some(Kind::Session(_))) {
            // Carried like a direct, to the holder hub's subject; queued
            // here (the router does not hand sessions to the port).
            self.inner.sessions.send(&hub, from, to, frame);
        }
        Handoff::Taken
    }

    fn confirmed_direct(&self, from: &str, to: &str, frame: &Frame) -> Handoff {
        let Some(lossless) = &self.inner.lossless else {
            return Handoff::Unknown;
        };
        let Some(hub) = self.inner.routing.holder(to) else {
            return Handoff::Unknown;
        };
        if self.inner.directory.is_fenced() {
            return Handoff::Unreachable(fenced_message(to, &hub));
        }
        if !self.inner.routing.connected() {
            return Handoff::Unreachable(cut_off(to, &hub));
        }
        lossless.take(from, &hub, frame)
    }

    fn dropped(&self) -> u64 {
        self.inner
            .routing
            .stats()
            .dropped
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    fn fan_out(&self, from: &str, frame: &Frame) {
        // Fenced: nothing more goes out as this hub (its publisher stopped).
        if self.inner.directory.is_fenced() {
            return;
        }
        self.inner.routing.fan_out(from, frame);
    }

    fn kv(&self, from: &str, frame: &Frame) -> Handoff {
        self.inner.kv.take(from, frame)
    }

    fn subscribed(&self, pattern: &str) {
        self.inner.routing.subscribed(pattern, None);
    }

    fn unsubscribed(&self, pattern: &str) {
        self.inner.routing.unsubscribed(pattern, None);
    }

    fn subscribed_group(&self, pattern: &str, group: &str) {
        self.inner.routing.subscribed(pattern, Some(group));
    }

    fn unsubscribed_group(&self, pattern: &str, group: &str) {
        self.inner.routing.unsubscribed(pattern, Some(group));
    }

    fn carries_groups(&self) -> bool {
        true
    }

    fn claim(&self, info: &proto::ClientInfo) -> Result<(), Refusal> {
        self.inner.directory.claim(&info.client_id)
    }

    fn joined(&self, id: &str) {
        self.inner.directory.joined(id);
    }

    fn left(&self, id: &str) {
        self.inner.directory.left(id);
    }

    fn attach(&self, mut port: RemotePort) {
        if self.inner.attached.swap(true, Ordering::AcqRel) {
            tracing::warn!("federation: a second hub attached to one federation; ignored");
            return;
        }
        let inbound = self.inner.inbound.lock().take();
        let directory = self.inner.directory.clone();
        directory.set_port(port.sender());
        let fence_port = port.sender();
        let fence_stop = self.inner.stop.clone();
        tokio::spawn(async move {
            // Fenced: close the local clients with FENCED, then stop the
            // federation (no heartbeat, nothing sent as this hub).
            tokio::select! {
                () = fence_stop.cancelled() => return,
                () = directory.fenced() => {}
            }
            for id in directory.local_ids() {
                let message = format!(
                    "hub '{}' was taken over by its standby (a higher epoch); connect to the new primary",
                    directory.hub_name()
                );
                fence_port
                    .close_client(&id, switchboard_wire::ErrorCode::Fenced, message)
                    .await;
            }
            fence_stop.cancel();
        });
        spawn_until(
            self.inner.stop.clone(),
            self.inner.kv.clone().run(port.sender()),
        );
        if let Some(lossless) = &self.inner.lossless {
            spawn_until(self.inner.stop.clone(), lossless.clone().run(port.sender()));
        }
        spawn_until(
            self.inner.stop.clone(),
            self.inner.sessions.clone().run(port.sender()),
        );
        let routing = self.inner.routing.clone();
        let stop = self.inner.stop.clone();
        if let Some(mut connected) = self.inner.connected.lock().take() {
            // On every reconnection to NATS, and when the heartbeat
            // reaches the cluster again after failing: write this hub's
            // ids again (the others may have released them after the
            // lease), closing the local clients whose id another hub took
            // meanwhile.
            let directory = self.inner.directory.clone();
            let sender = port.sender();
            spawn_until(stop.clone(), async move {
                while connected.recv().await.is_some() {
                    while connected.try_recv().is_ok() {}
                    directory.reregister(&sender).await;
                }
            });
        }
        let directory = self.inner.directory.clone();
        tokio::spawn(async move {
            let run = async move {
                let inbound = match inbound {
                    Some(inbound) => inbound,
                    None => {
                        // A standby taking over: subscribe to the hub's
                        // subject first (what arrives waits in the
                        // subscription while the takeover is written: no
                        // request is lost to a moment without a
                        // subscriber), then join under the primary's name
                        // with a higher epoch (which fences the old one).
                        let sub = loop {
                            match routing.subscribe().await {
                                Ok(sub) => break sub,
                                Err(e) => {
                                    tracing::warn!(error = %e, "federation: cannot subscribe to this hub's subject yet");
                                    tokio::time::sleep(Duration::from_millis(200)).await;
                                }
                            }
                        };
                        if let Err(e) = routing.flush().await {
                            tracing::warn!(error = %e, "federation: taking over without knowing the subscription arrived");
                        }
                        directory.activate().await;
                        sub
                    }
                };
                routing.run(port, inbound).await;
            };
            tokio::select! {
                () = stop.cancelled() => {}
                () = run => {}
            }
        });
    }
}

/// What the sender of a message for client `to` of hub `hub` is told
/// once this hub is fenced.
fn fenced_message(to: &str, hub: &str) -> String {
    format!(
        "client '{to}' is on hub '{hub}', but this hub was taken over by its standby and no longer serves in the federation; connect to the new primary"
    )
}

/// What the sender of a message for client `to` of hub `hub` is told
/// while this hub has lost the cluster.
fn cut_off(to: &str, hub: &str) -> String {
    format!(
        "client '{to}' is on hub '{hub}', but this hub has lost its connection to the federation's NATS cluster; retry once it is back"
    )
}

/// What the NATS client reports about itself through its events.
#[derive(Debug, Default)]
struct NatsEvents {
    /// Slow-consumer events: the client dropped a message for one of this
    /// hub's subscriptions because its channel was full (a lower bound of
    /// such drops: the client drops its own events when they pile up).
    slow_consumer: AtomicU64,
    /// Warnings about them (rate-limited).
    slow_log: throttle::Throttle,
}

impl NatsEvents {
    /// Takes one event of the NATS client: counts and tells slow
    /// consumers (a loss nobody else sees); `true` for a (re)connection.
    fn take(&self, event: &async_nats::Event) -> bool {
        match event {
            async_nats::Event::Connected => return true,
            async_nats::Event::SlowConsumer(sid) => {
                self.slow_consumer.fetch_add(1, Ordering::Relaxed);
                if let Some(n) = self.slow_log.hit() {
                    tracing::warn!(
                        subscription = sid,
                        events = n,
                        "federation: the NATS client dropped messages for this hub (a subscription fell behind; count of events since the last such line)"
                    );
                }
            }
            async_nats::Event::ServerError(e) => {
                tracing::warn!(error = %e, "federation: the NATS server reported an error");
            }
            _ => {}
        }
        false
    }
}

async fn connect_nats(
    options: &FederationOptions,
    connected: tokio::sync::mpsc::UnboundedSender<()>,
    events: Arc<NatsEvents>,
) -> Result<async_nats::Client, FederationError> {
    let (clean, auth) = url_auth(&options.servers)?;
    let servers: Vec<async_nats::ServerAddr> = clean
        .iter()
        .map(|s| {
            s.parse()
                .map_err(|e| FederationError::Config(format!("invalid NATS server URL {s:?}: {e}")))
        })
        .collect::<Result<_, _>>()?;
    // `no_echo`: this hub's own publishes never come back to it.
    let mut opts = async_nats::ConnectOptions::new()
        .no_echo()
        .name(format!("switchboard hub {}", options.hub_name))
        .connection_timeout(Duration::from_secs(5))
        .event_callback(move |event| {
            if events.take(&event) {
                let _ = connected.send(());
            }
            std::future::ready(())
        });
    if !options.discover_servers {
        opts = opts.ignore_discovered_servers();
    }
    match auth {
        Some(UrlAuth::UserPassword(user, password)) => {
            opts = opts.user_and_password(user, password);
        }
        Some(UrlAuth::Token(token)) => opts = opts.token(token),
        None => {}
    }
    if let Some(creds) = &options.creds {
        opts = load_creds(opts, creds)?;
    }
    if let Some(ca) = &options.tls_ca {
        opts = opts.add_root_certificates(ca.clone()).require_tls(true);
    }
    if let Some((cert, key)) = &options.tls_client {
        opts = opts
            .add_client_certificate(cert.clone(), key.clone())
            .require_tls(true);
    }
    let shown = clean.join(",");
    let client = tokio::time::timeout(options.connect_timeout, opts.connect(servers))
        .await
        .map_err(|_| FederationError::Connect {
            servers: shown.clone(),
            message: "timed out".into(),
        })?;
    client.map_err(|e| {
        use async_nats::ConnectErrorKind as K;
        match e.kind() {
            K::AuthorizationViolation | K::Authentication => FederationError::Auth {
                servers: shown,
                message: e.to_string(),
            },
            _ => FederationError::Connect {
                servers: shown,
                message: e.to_string(),
            },
        }
    })
}

/// Measures the round trip to the server every [`RTT_INTERVAL`] into
/// `rtt_us`: a request on a subject nobody subscribes to, which the
/// server itself answers ("no responders"), like a PING and its PONG.
async fn measure_rtt(client: async_nats::Client, rtt_us: Arc<AtomicU64>) {
    use async_nats::RequestErrorKind;
    let subject = format!("_sb_rtt.{}", hex::encode(rand::random::<[u8; 8]>()));
    loop {
        let t = std::time::Instant::now();
        let answered = match tokio::time::timeout(
            RTT_INTERVAL,
            client.request(subject.clone(), bytes::Bytes::new()),
        )
        .await
        {
            Ok(Ok(_)) => true,
            Ok(Err(e)) => e.kind() == RequestErrorKind::NoResponders,
            Err(_) => false,
        };
        if answered {
            rtt_us.store((t.elapsed().as_micros() as u64).max(1), Ordering::Relaxed);
        }
        tokio::time::sleep(RTT_INTERVAL).await;
    }
}

/// Runs `branches` of one task together until every one has ended.
/// Unlike `tokio::join!`, which polls every branch each time any of them
/// wakes the task, a branch is polled only when its own waker fired: a
/// message on one (say the request path's inbound subscription) does not
/// poll the others (pattern intake, outbox, presence). Dropping the
/// future drops every branch, as with `join!`.
pub(crate) async fn join_branches(branches: Vec<futures::future::BoxFuture<'_, ()>>) {
    use futures::StreamExt;
    let mut running: futures::stream::FuturesUnordered<_> = branches.into_iter().collect();
    while running.next().await.is_some() {}
}

fn spawn_until(
    stop: CancellationToken,
    task: impl std::future::Future<Output = ()> + Send + 'static,
) {
    tokio::spawn(async move {
        tokio::select! {
            () = stop.cancelled() => {}
            () = task => {}
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slow_consumer_events_are_counted_and_connections_told() {
        let events = NatsEvents::default();
        assert!(events.take(&async_nats::Event::Connected));
        assert!(!events.take(&async_nats::Event::SlowConsumer(7)));
        assert!(!events.take(&async_nats::Event::SlowConsumer(9)));
        assert!(!events.take(&async_nats::Event::Disconnected));
        assert_eq!(events.slow_consumer.load(Ordering::Relaxed), 2);
    }

    #[test]
    fn credentials_are_taken_out_of_the_urls() {
        assert_eq!(redact("nats://u:p@h:4222"), "nats://h:4222");
        assert_eq!(redact("tls://tok@h:4222/x@y"), "tls://h:4222/x@y");
        assert_eq!(redact("nats://h:4222"), "nats://h:4222");
        let (clean, auth) = url_auth(&["nats://u:p%40ss@a:1".into(), "nats://b:2".into()]).unwrap();
        assert_eq!(clean, ["nats://a:1", "nats://b:2"]);
        assert!(auth == Some(UrlAuth::UserPassword("u".into(), "p@ss".into())));
        let (_, auth) = url_auth(&["nats://t0k@a:1".into()]).unwrap();
        assert!(auth == Some(UrlAuth::Token("t0k".into())));
        // (UrlAuth has no Debug, so that no secret can be printed.)
        let Err(e) = url_auth(&["nats://a:b@a:1".into(), "nats://c@b:2".into()]) else {
            panic!("different credentials accepted");
        };
        assert!(!e.to_string().contains("a:b"), "{e}");
        assert!(url_auth(&["nats://a:%zz@a:1".into()]).is_err());
        let o = FederationOptions::new("s", vec!["nats://user:hunter2@h:1".into()]);
        assert!(!format!("{o:?}").contains("hunter2"));
    }
}
