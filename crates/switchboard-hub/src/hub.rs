//! Starting, running and stopping a hub.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use parking_lot::Mutex;
use switchboard_discovery::{bind, new_instance_id, now_ms, validate_service, Hint, HintGuard};
use switchboard_wire::proto;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch, Semaphore};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::config::{HubConfig, HubError};
use crate::conn::{serve, Shared};
use crate::router::{HubStats, Input, Router, RouterConfig};

/// Most inputs the router task takes from its inbox per wake-up.
const ROUTER_BATCH: usize = 64;

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
}

impl Hub {
    /// Binds the listener, writes the hint (if configured) and starts
    /// serving on the current tokio runtime.
    pub async fn start(config: HubConfig) -> Result<HubHandle, HubError> {
        validate_service(&config.service)?;
        if config.limits.pre_auth_max_frame < 64 || config.limits.max_frame < 1024 {
            return Err(HubError::Config(
                "frame limits are too small; allow at least 64 bytes before and 1 KiB after authentication".into(),
            ));
        }
        if config.limits.queue_hard_bytes < config.limits.queue_bytes {
            return Err(HubError::Config(
                "queue_hard_bytes is below queue_bytes; the hard limit must be at least the soft one".into(),
            ));
        }
        let listener = bind(&config.bind).await.map_err(|source| HubError::Bind {
            addr: format!("{}", config.bind.ip),
            source,
        })?;
        let local_addr = listener.local_addr().map_err(|source| HubError::Bind {
            addr: format!("{}", config.bind.ip),
            source,
        })?;
        let identity = proto::HubIdentity {
            service: config.service.clone(),
            instance_id: new_instance_id(),
            pid: std::process::id(),
            port: u32::from(local_addr.port()),
            epoch: config.epoch,
            started_at_ms: now_ms(),
            role: proto::Role::Primary as i32,
        };
        let hint = if config.write_hint {
            let mut hint = Hint::new(&config.service, local_addr, &identity.instance_id);
            hint.started_at_ms = identity.started_at_ms;
            Some(match &config.hint_dir {
                Some(dir) => hint.write_in(dir)?,
                None => hint.write()?,
            })
        } else {
            None
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
        let (inbox_tx, inbox_rx) = mpsc::channel(config.limits.router_inbox.max(1));
        let shutdown = CancellationToken::new();
        let (closed_tx, closed_rx) = watch::channel(false);
        let hint = Arc::new(Mutex::new(hint));
        let shared = Arc::new(Shared {
            identity: identity.clone(),
            secret: config.secret.clone(),
            handshake_timeout: config.handshake_timeout,
            inbox: inbox_tx,
            stats: stats.clone(),
            shutdown: shutdown.clone(),
            limits: config.limits,
            next_conn: std::sync::atomic::AtomicU64::new(0),
        });
        let http_addr = match config.http {
            Some(http) => Some(crate::gateway::start(http, shared.clone()).await?.0),
            None => None,
        };
        let span = tracing::info_span!("hub", service = %identity.service, addr = %local_addr);
        tracing::info!(parent: &span, instance = %identity.instance_id, "hub listening");
        tokio::spawn(
            run_router(router, inbox_rx, shutdown.clone(), hint.clone(), closed_tx)
                .instrument(span.clone()),
        );
        tokio::spawn(accept_loop(listener, shared).instrument(span));
        Ok(HubHandle {
            local_addr,
            http_addr,
            http_token: crate::http_token(&config.secret),
            identity,
            stats,
            started: Instant::now(),
            shutdown,
            closed: closed_rx,
            hint,
        })
    }
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

    /// Path of the hint file while the hub runs and keeps one.
    pub fn hint_path(&self) -> Option<std::path::PathBuf> {
        self.hint.lock().as_ref().map(|g| g.path().to_owned())
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
                    serve(stream, peer, conn, shared.clone(), permit, "tcp").instrument(span),
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

async fn run_router(
    mut router: Router,
    mut inbox: mpsc::Receiver<Input>,
    shutdown: CancellationToken,
    hint: Arc<Mutex<Option<HintGuard>>>,
    closed: watch::Sender<bool>,
) {
    let mut batch = Vec::with_capacity(ROUTER_BATCH);
    let mut shutting_down = false;
    let far = || tokio::time::Instant::now() + std::time::Duration::from_secs(3600);
    let sleep = tokio::time::sleep_until(far());
    tokio::pin!(sleep);
    let mut armed: Option<Instant> = None;
    loop {
        let deadline = router.next_deadline();
        if deadline != armed {
            armed = deadline;
            sleep
                .as_mut()
                .reset(deadline.map_or_else(far, tokio::time::Instant::from_std));
        }
        tokio::select! {
            biased;
            _ = shutdown.cancelled(), if !shutting_down => {
                shutting_down = true;
                tracing::info!("hub shutting down");
                router.handle(Instant::now(), Input::Shutdown);
                if let Some(guard) = hint.lock().take() {
                    if let Err(e) = guard.remove() {
                        tracing::warn!(error = %e, "could not remove the hint");
                    }
                }
            }
            n = inbox.recv_many(&mut batch, ROUTER_BATCH) => {
                if n == 0 {
                    break;
                }
                let now = Instant::now();
                for input in batch.drain(..) {
                    router.handle(now, input);
                }
                if router.next_deadline().is_some_and(|d| d <= now) {
                    router.handle(now, Input::Tick);
                }
            }
            _ = &mut sleep, if armed.is_some() => {
                armed = None;
                router.handle(Instant::now(), Input::Tick);
            }
        }
        router.publish_stats();
    }
    if let Some(guard) = hint.lock().take() {
        let _ = guard.remove();
    }
    tracing::info!("hub stopped");
    let _ = closed.send(true);
}
