//! Starting, running and stopping a hub.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use parking_lot::Mutex;
use std::sync::atomic::AtomicBool;
use switchboard_discovery::{bind, new_instance_id, now_ms, validate_service, Hint, HintGuard};
use switchboard_wire::proto;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch, Notify, Semaphore};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::config::{HubConfig, HubError};
use crate::conn::{serve as serve_conn, Shared};
use crate::outbox::Gate;
use crate::router::{HubStats, Router, RouterConfig};

/// Entry point: [`Hub::start`].
#[derive(Debug)]
pub struct Hub;

/// A running hub. Dropping it starts a shutdown without waiting for it;
/// call [`HubHandle::shutdown`] to wait.
#[derive(Debug)]
pub struct HubHandle {
    local_addr: SocketAddr,
    http_addr: Option<SocketAddr>,
    http_token: String,
    identity: proto::HubIdentity,
    stats: Arc<HubStats>,
    started: Instant,
    shutdown: CancellationToken,
    closed: watch::Receiver<bool>,
    hint: Arc<Mutex<Option<HintGuard>>>,
    fenced: Arc<AtomicBool>,
    /// Weak: a handle must not keep the router's inbox open.
    inbox: mpsc::WeakSender<crate::router::Input>,
    /// Opens in-memory connections.
    memory: MemoryConnector,
    secret: switchboard_discovery::Secret,
}

/// Opens in-process connections to a hub (see
/// [`HubHandle::connect_in_memory`]); cheap to clone, and holding one does
/// not keep the hub running.
#[derive(Clone)]
pub struct MemoryConnector {
    /// Weak like the handle's inbox.
    shared: std::sync::Weak<Shared>,
    /// Handshakes of in-memory connections in progress.
    handshakes: Arc<Semaphore>,
}

impl std::fmt::Debug for MemoryConnector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryConnector").finish_non_exhaustive()
    }
}

impl MemoryConnector {
    /// Opens a connection through an in-process pipe: the client end of a
    /// `tokio::io::duplex`, on which a client performs the ordinary
    /// handshake. The hub serves it like a TCP connection (transport
    /// `"memory"`). Fails once the hub has stopped, or when too many
    /// connections are in the handshake.
    pub fn connect(&self) -> Result<tokio::io::DuplexStream, HubError> {
        let gone = || HubError::Config("the hub has stopped".into());
        let shared = self.shared.upgrade().ok_or_else(gone)?;
        if shared.shutdown.is_cancelled() {
            return Err(gone());
        }
        let permit = self.handshakes.clone().try_acquire_owned().map_err(|_| {
            HubError::Config("too many in-memory connections in the handshake; retry".into())
        })?;
        let (client, server) = tokio::io::duplex(64 * 1024);
        let conn = shared.alloc_conn();
        let peer = SocketAddr::from(([127, 0, 0, 1], 0));
        let span = tracing::debug_span!("conn", id = conn.0, transport = "memory");
        tokio::spawn(serve_conn(server, peer, conn, shared, permit, "memory").instrument(span));
        Ok(client)
    }
}

impl Hub {
    /// Binds the listener, writes the hint (if configured) and starts
    /// serving on the current tokio runtime.
    pub async fn start(config: HubConfig) -> Result<HubHandle, HubError> {
        check_config(&config)?;
        let listener = bind(&config.bind).await.map_err(|source| HubError::Bind {
            addr: format!("{}", config.bind.ip),
            source,
        })?;
        let local_addr = listener.local_addr().map_err(|source| HubError::Bind {
            addr: format!("{}", config.bind.ip),
            source,
        })?;
        let (identity, router, stats) = new_primary(&config, local_addr.port());
        serve(config, Some(listener), identity, router, stats).await
    }

    /// Starts a hub that listens on no port and writes no hint: clients
    /// reach it only through [`HubHandle::connect_in_memory`] (the
    /// `switchboard` facade's `Hub::in_memory`). It is the same hub, with
    /// the same router, handshake and limits; only the transport is an
    /// in-process pipe. For tests and for programs that embed a hub for
    /// their own tasks. An HTTP gateway, when configured, still listens.
    pub async fn start_in_memory(config: HubConfig) -> Result<HubHandle, HubError> {
        check_config(&config)?;
        let (identity, router, stats) = new_primary(&config, 0);
        serve(config, None, identity, router, stats).await
    }

    /// Starts a hot standby of `config.service`: it finds the primary
    /// (at `primary` when given, else by discovery, waiting until one
    /// appears), mirrors it, and takes over its address when it fails.
    /// See [`StandbyHandle`](crate::StandbyHandle).
    pub async fn standby(
        config: HubConfig,
        primary: Option<SocketAddr>,
    ) -> Result<crate::StandbyHandle, HubError> {
        check_config(&config)?;
        Ok(crate::standby::start(config, primary))
    }
}

/// The identity, router and counters of a new primary listening on `port`
/// (0: in memory only).
fn new_primary(config: &HubConfig, port: u16) -> (proto::HubIdentity, Router, Arc<HubStats>) {
    let identity = proto::HubIdentity {
        service: config.service.clone(),
        instance_id: new_instance_id(),
        pid: std::process::id(),
        port: u32::from(port),
        epoch: config.epoch,
        started_at_ms: now_ms(),
        role: proto::Role::Primary as i32,
    };
    let stats = Arc::new(HubStats::default());
    let router = Router::new(
        RouterConfig {
            identity: identity.clone(),
            limits: config.limits.clone(),
            keepalive: config.keepalive,
        },
        stats.clone(),
    );
    (identity, router, stats)
}

fn check_config(config: &HubConfig) -> Result<(), HubError> {
    validate_service(&config.service)?;
    if config.limits.pre_auth_max_frame < 64 || config.limits.max_frame < 1024 {
        return Err(HubError::Config(
            "frame limits are too small; allow at least 64 bytes before and 1 KiB after authentication".into(),
        ));
    }
    if config.limits.queue_hard_bytes < config.limits.queue_bytes {
        return Err(HubError::Config(
            "queue_hard_bytes is below queue_bytes; the hard limit must be at least the soft one"
                .into(),
        ));
    }
    if config.heartbeat_interval.is_zero() || config.heartbeat_misses == 0 {
        return Err(HubError::Config(
            "heartbeat_interval and heartbeat_misses must be above zero".into(),
        ));
    }
    Ok(())
}

/// Serves `router` on `listener` as a primary with `identity`: writes the
/// hint, starts the gateway, the router task and the accept loop. Without
/// a listener the hub is reached in memory only (no hint either).
pub(crate) async fn serve(
    config: HubConfig,
    listener: Option<TcpListener>,
    identity: proto::HubIdentity,
    router: Router,
    stats: Arc<HubStats>,
) -> Result<HubHandle, HubError> {
    let local_addr = match &listener {
        Some(listener) => listener.local_addr().map_err(|source| HubError::Bind {
            addr: format!("{}", config.bind.ip),
            source,
        })?,
        None => SocketAddr::from(([127, 0, 0, 1], 0)),
    };
    let hint = if config.write_hint && listener.is_some() {
        let mut hint = Hint::new(&config.service, local_addr, &identity.instance_id);
        hint.started_at_ms = identity.started_at_ms;
        Some(match &config.hint_dir {
            Some(dir) => hint.write_in(dir)?,
            None => hint.write()?,
        })
    } else {
        None
    };
    let (inbox_tx, inbox_rx) = mpsc::channel(config.limits.router_inbox.max(1));
    let (standby_tx, standby_rx) = mpsc::channel(4);
    let shutdown = CancellationToken::new();
    let (closed_tx, closed_rx) = watch::channel(false);
    let hint = Arc::new(Mutex::new(hint));
    let fenced = Arc::new(AtomicBool::new(false));
    let shared = Arc::new(Shared {
        identity: identity.clone(),
        secret: config.secret.clone(),
        handshake_timeout: config.handshake_timeout,
        inbox: inbox_tx.clone(),
        stats: stats.clone(),
        shutdown: shutdown.clone(),
        limits: config.limits.clone(),
        next_conn: std::sync::atomic::AtomicU64::new(0),
        gate: Gate::open(),
        standby: standby_tx,
        higher_epoch: Arc::new(Notify::new()),
        heartbeat: (config.heartbeat_interval, config.heartbeat_misses),
    });
    let http_addr = match config.http.clone() {
        Some(http) => Some(crate::gateway::start(http, shared.clone()).await?.0),
        None => None,
    };
    let span = tracing::info_span!("hub", service = %identity.service, addr = %local_addr);
    tracing::info!(parent: &span, instance = %identity.instance_id, epoch = identity.epoch, "hub listening");
    let task = crate::standby::RouterTask {
        router,
        inbox: inbox_rx,
        standby: standby_rx,
        shared: crate::standby::TaskShared::of(&shared),
        hint: hint.clone(),
        closed: closed_tx,
        local_addr,
        hint_dir: config.hint_dir.clone(),
        fenced: fenced.clone(),
    };
    tokio::spawn(task.run().instrument(span.clone()));
    let weak = Arc::downgrade(&shared);
    if let Some(listener) = listener {
        tokio::spawn(accept_loop(listener, shared).instrument(span));
    } else {
        // The handle's weak reference is all that reaches the hub; keep
        // its state alive until shutdown like the accept loop would.
        let token = shutdown.clone();
        tokio::spawn(async move {
            token.cancelled().await;
            drop(shared);
        });
    }
    Ok(HubHandle {
        memory: MemoryConnector {
            shared: weak,
            handshakes: Arc::new(Semaphore::new(config.limits.max_handshakes.max(1))),
        },
        secret: config.secret.clone(),
        local_addr,
        http_addr,
        http_token: crate::http_token(&config.secret),
        identity,
        stats,
        started: Instant::now(),
        shutdown,
        closed: closed_rx,
        hint,
        fenced,
        inbox: inbox_tx.downgrade(),
    })
}

impl HubHandle {
    /// The address the hub listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The address of the HTTP/WebSocket gateway, when
    /// [`HubConfig::http`](crate::HubConfig::http) asked for one.
    pub fn http_addr(&self) -> Option<SocketAddr> {
        self.http_addr
    }

    /// The bearer token of the HTTP gateway (see [`http_token`](crate::http_token)).
    pub fn http_token(&self) -> String {
        self.http_token.clone()
    }

    /// The hub's identity (as sent in probe replies and handshakes).
    pub fn identity(&self) -> proto::HubIdentity {
        self.identity.clone()
    }

    /// Status and counters. Gauges (clients, subscriptions, pending
    /// requests, keys) are as the router last published them, after its
    /// latest batch of work.
    pub fn status(&self) -> proto::Status {
        self.stats.status(&self.identity, self.started.elapsed())
    }

    /// Stops accepting connections, says `Goodbye{SHUTTING_DOWN}` to every
    /// client, removes the hint and waits until every connection is closed
    /// (each gets a short grace period to take its last frames).
    pub async fn shutdown(self) {
        self.shutdown.cancel();
        self.closed().await;
    }

    /// The hub's replicable state as a standby would receive it
    /// (registry, subscriptions, watches, key/value entries, per-client
    /// sequence state); `None` once the hub has stopped.
    pub async fn snapshot(&self) -> Option<proto::Snapshot> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let inbox = self.inbox.upgrade()?;
        inbox.send(crate::router::Input::Snapshot(tx)).await.ok()?;
        rx.await.ok()
    }

    /// Path of the hint file while the hub runs and keeps one.
    pub fn hint_path(&self) -> Option<std::path::PathBuf> {
        self.hint.lock().as_ref().map(|g| g.path().to_owned())
    }

    /// Whether the hub stopped because it found a primary of its service
    /// with a higher epoch: it was an old primary, and must not serve (run
    /// it as a standby instead).
    pub fn fenced(&self) -> bool {
        self.fenced.load(std::sync::atomic::Ordering::Acquire)
    }

    /// Opens a connection to this hub through an in-process pipe (see
    /// [`MemoryConnector::connect`]); the client proves
    /// [`secret`](Self::secret) as over TCP.
    pub fn connect_in_memory(&self) -> Result<tokio::io::DuplexStream, HubError> {
        self.memory.connect()
    }

    /// A connector for in-memory connections that outlives this borrow.
    pub fn memory_connector(&self) -> MemoryConnector {
        self.memory.clone()
    }

    /// The secret clients of this hub prove (for in-memory clients; the
    /// hub's own process holds it anyway).
    pub fn secret(&self) -> switchboard_discovery::Secret {
        self.secret.clone()
    }

    /// Waits until the hub has stopped.
    pub async fn closed(&self) {
        let mut rx = self.closed.clone();
        let _ = rx.wait_for(|closed| *closed).await;
    }
}

impl Drop for HubHandle {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

async fn accept_loop(listener: TcpListener, shared: Arc<Shared>) {
    let handshakes = Arc::new(Semaphore::new(shared.limits.max_handshakes.max(1)));
    loop {
        let accepted = tokio::select! {
            r = listener.accept() => r,
            _ = shared.shutdown.cancelled() => break,
        };
        match accepted {
            Ok((stream, peer)) => {
                let Ok(permit) = handshakes.clone().try_acquire_owned() else {
                    tracing::warn!(%peer, "too many connections in handshake; refusing one");
                    drop(stream);
                    continue;
                };
                let _ = stream.set_nodelay(true);
                let conn = shared.alloc_conn();
                let span = tracing::debug_span!("conn", id = conn.0, %peer);
                tokio::spawn(
                    serve_conn(stream, peer, conn, shared.clone(), permit, "tcp").instrument(span),
                );
            }
            Err(e) => {
                // Out of file descriptors and the like: back off briefly.
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            }
        }
    }
    tracing::debug!("listener closed");
}
