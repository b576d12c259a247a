//! A running hub's handle ([`HubHandle`]) and its in-memory connector.

use std::net::SocketAddr;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Instant;

use parking_lot::Mutex;
use switchboard_discovery::HintGuard;
use switchboard_wire::proto;
use tokio::sync::{watch, Semaphore};
use tokio_util::sync::CancellationToken;

use crate::config::HubError;
use crate::conn::serve as serve_conn;
use crate::inbox::{Command, WeakInbox};
use crate::router::admission::Peer;
use crate::shared::Shared;
use crate::stats::HubStats;

/// A running hub. Dropping it starts a shutdown without waiting for it;
/// call [`HubHandle::shutdown`] to wait.
#[derive(Debug)]
pub struct HubHandle {
    pub(crate) local_addr: SocketAddr,
    /// The Unix socket's path, when the hub listens on one.
    pub(crate) unix_path: Option<std::path::PathBuf>,
    pub(crate) http_addr: Option<SocketAddr>,
    pub(crate) http_token: String,
    pub(crate) identity: proto::HubIdentity,
    pub(crate) stats: Arc<HubStats>,
    pub(crate) started: Instant,
    pub(crate) shutdown: CancellationToken,
    pub(crate) closed: watch::Receiver<bool>,
    pub(crate) hint: Arc<Mutex<Option<HintGuard>>>,
    pub(crate) fenced: Arc<AtomicBool>,
    /// Weak: a handle must not keep the router's inbox open.
    pub(crate) inbox: WeakInbox,
    /// Opens in-memory connections.
    pub(crate) memory: MemoryConnector,
    pub(crate) secret: switchboard_discovery::Secret,
}

/// Opens in-process connections to a hub (see
/// [`HubHandle::connect_in_memory`]); cheap to clone, and holding one does
/// not keep the hub running.
#[derive(Clone)]
pub struct MemoryConnector {
    /// Weak like the handle's inbox.
    pub(crate) shared: std::sync::Weak<Shared>,
    /// Handshakes of in-memory connections in progress.
    pub(crate) handshakes: Arc<Semaphore>,
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
        let peer = Peer {
            transport: "memory",
            addr: "memory".into(),
            unix: None,
            cert: None,
        };
        let span = tracing::debug_span!("conn", id = conn.0, transport = "memory");
        tokio::spawn(serve_conn(server, peer, conn, shared, permit, span));
        Ok(client)
    }
}

impl HubHandle {
    /// The address the hub listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The path of the hub's Unix domain socket, when it listens on one
    /// ([`HubConfig::unix`](crate::HubConfig::unix)); clients connect to it
    /// as `unix:<path>`.
    pub fn unix_path(&self) -> Option<&std::path::Path> {
        self.unix_path.as_deref()
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
        inbox.send(Command::Snapshot(tx)).await.ok()?;
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
