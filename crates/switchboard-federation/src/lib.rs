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
pub mod routing;
pub mod subject;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use switchboard_hub::router::admission::Refusal;
use switchboard_hub::router::remote::{Handoff, Remote, RemotePort};
use switchboard_wire::{proto, Frame, Kind};
use tokio_util::sync::CancellationToken;

pub use directory::Directory;
pub use kv::{KvStats, SharedKv};
use routing::Routing;
pub use routing::RoutingStats;

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

/// How a hub joins the cluster.
#[derive(Debug, Clone)]
pub struct FederationOptions {
    /// The switchboard service; hubs of one service form one federation
    /// (bucket and subject names carry it, escaped).
    pub service: String,
    /// NATS server URLs (`nats://host:port`), any node of the cluster.
    pub servers: Vec<String>,
    /// This hub's name in the cluster; unique among the live hubs.
    /// Default: random.
    pub hub_name: String,
    /// The hub's epoch, written with every id it holds.
    pub epoch: u64,
    /// A NATS credentials file (JWT and nkey seed), if the cluster wants one.
    pub creds: Option<PathBuf>,
    /// A CA certificate (PEM) to verify the servers' TLS certificates;
    /// set, the connection requires TLS.
    pub tls_ca: Option<PathBuf>,
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
    /// The most live keys the shared key/value store holds (default: the
    /// hub's default, 100,000); see [`kv`].
    pub kv_max_keys: usize,
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
            replicas: None,
            lease: DEFAULT_LEASE,
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            max_message: routing::MAX_MESSAGE,
            kv_max_keys: switchboard_hub::limits::Limits::default().kv_max_keys,
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
                    "{s:?} is not a NATS URL; use nats://HOST:PORT or tls://HOST:PORT"
                )));
            }
        }
        Ok(servers)
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
    kv: Arc<SharedKv>,
    /// This hub's subscription, until the hub attaches its port.
    inbound: Mutex<Option<async_nats::Subscriber>>,
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
        let client = connect_nats(&options).await?;
        let stop = CancellationToken::new();
        let directory = Directory::open(client.clone(), &options, stop.clone()).await?;
        let replicas = options
            .replicas
            .unwrap_or_else(|| client.server_info().connect_urls.len().clamp(1, 3));
        let deadline = std::time::Instant::now() + options.connect_timeout;
        let kv = SharedKv::open(
            client.clone(),
            &options.service,
            replicas,
            options.kv_max_keys,
            deadline,
        )
        .await?;
        let routing = Routing::new(
            client,
            &options.service,
            directory.clone(),
            options.max_message,
        );
        let inbound = routing
            .subscribe()
            .await
            .map_err(|e| FederationError::Connect {
                servers: options.servers.join(","),
                message: format!("cannot subscribe to this hub's subject: {e}"),
            })?;
        spawn_until(stop.clone(), routing.clone().publisher());
        Ok(Federation {
            inner: Arc::new(Handle {
                directory,
                routing,
                kv,
                inbound: Mutex::new(Some(inbound)),
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

    /// The counters of routing across hubs.
    pub fn routing_stats(&self) -> &RoutingStats {
        self.inner.routing.stats()
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
    fn route(&self, _from: &str, to: &str, frame: &Frame) -> Handoff {
        // Sessions across hubs are not carried yet (see ARCHITECTURE.md,
        // "Federation"): the sender gets the single-hub answer.
        let carried = matches!(frame.kind, Some(Kind::Direct(_) | Kind::Request(_)));
        match self.inner.routing.holder(to) {
            Some(_) if carried => Handoff::Taken,
            _ => Handoff::Unknown,
        }
    }

    fn fan_out(&self, from: &str, frame: &Frame) {
        self.inner.routing.fan_out(from, frame);
    }

    fn kv(&self, from: &str, frame: &Frame) -> Handoff {
        self.inner.kv.take(from, frame)
    }

    fn subscribed(&self, pattern: &str) {
        self.inner.routing.subscribed(pattern);
    }

    fn unsubscribed(&self, pattern: &str) {
        self.inner.routing.unsubscribed(pattern);
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
        let Some(inbound) = self.inner.inbound.lock().take() else {
            tracing::warn!("federation: a second hub attached to one federation; ignored");
            return;
        };
        spawn_until(
            self.inner.stop.clone(),
            self.inner.kv.clone().run(port.sender()),
        );
        let routing = self.inner.routing.clone();
        let stop = self.inner.stop.clone();
        tokio::spawn(async move {
            tokio::select! {
                () = stop.cancelled() => {}
                () = routing.run(port, inbound) => {}
            }
        });
    }
}

async fn connect_nats(options: &FederationOptions) -> Result<async_nats::Client, FederationError> {
    let servers: Vec<async_nats::ServerAddr> = options
        .servers
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
        .connection_timeout(Duration::from_secs(5));
    if let Some(creds) = &options.creds {
        opts = opts.credentials_file(creds).await.map_err(|e| {
            FederationError::Config(format!(
                "cannot read the NATS credentials file {}: {e}",
                creds.display()
            ))
        })?;
    }
    if let Some(ca) = &options.tls_ca {
        opts = opts.add_root_certificates(ca.clone()).require_tls(true);
    }
    let shown = options.servers.join(",");
    tokio::time::timeout(options.connect_timeout, opts.connect(servers))
        .await
        .map_err(|_| FederationError::Connect {
            servers: shown.clone(),
            message: "timed out".into(),
        })?
        .map_err(|e| FederationError::Connect {
            servers: shown,
            message: e.to_string(),
        })
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
