//! Serving as the primary: the shared state, the gateway, the router
//! task and the TCP accept loop of a hub that starts (or of a standby
//! that takes over).

use std::net::SocketAddr;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Instant;

use parking_lot::Mutex;
use switchboard_discovery::Hint;
use switchboard_wire::proto;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch, Notify, Semaphore};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::config::{HubConfig, HubError};
use crate::conn::serve as serve_conn;
use crate::handle::{HubHandle, MemoryConnector};
use crate::inbox::Inbox;
use crate::outbox::Gate;
use crate::router::admission::Peer;
use crate::router::Router;
use crate::router_task::{RouterTask, TaskShared};
use crate::shared::Shared;
use crate::stats::HubStats;
use crate::tls::TlsServer;

/// Serves `router` on `listener` as a primary with `identity`: writes the
/// hint, starts the gateway, the router task and the accept loop. Without
/// a listener the hub is reached in memory only (no hint either).
pub(crate) async fn serve(
    config: HubConfig,
    listener: Option<TcpListener>,
    identity: proto::HubIdentity,
    mut router: Router,
    stats: Arc<HubStats>,
) -> Result<HubHandle, HubError> {
    if let Some(admission) = &config.admission {
        router.set_admission(admission.clone());
    }
    if let Some(remote) = &config.remote {
        router.set_remote(remote.clone());
    }
    let local_addr = match &listener {
        Some(listener) => listener.local_addr().map_err(|source| HubError::Bind {
            addr: format!("{}", config.bind.ip),
            source,
        })?,
        None => SocketAddr::from(([127, 0, 0, 1], 0)),
    };
    let unix = match &listener {
        Some(_) => crate::listen_unix::bind(&config, &identity.instance_id).await?,
        None => None,
    };
    let unix_path = unix.as_ref().map(|u| u.path().to_owned());
    let hint = if config.write_hint && listener.is_some() {
        let mut hint = Hint::new(&config.service, local_addr, &identity.instance_id);
        hint.started_at_ms = identity.started_at_ms;
        hint.unix = unix_path.clone();
        Some(match &config.hint_dir {
            Some(dir) => hint.write_in(dir)?,
            None => hint.write()?,
        })
    } else {
        None
    };
    let (inbox_tx, inbox_rx) = Inbox::channel(config.limits.router_inbox);
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
        keepalive: config.keepalive,
        admission: config.admission.clone(),
    });
    let http_addr = match config.http.clone() {
        Some(http) => Some(
            crate::gateway::start(http, shared.clone(), config.tls.clone())
                .await?
                .0,
        ),
        None => None,
    };
    let span = tracing::info_span!("hub", service = %identity.service, addr = %local_addr);
    tracing::info!(parent: &span, instance = %identity.instance_id, epoch = identity.epoch,
                   unix = ?unix_path, "hub listening");
    let task = RouterTask {
        router,
        inbox: inbox_rx,
        standby: standby_rx,
        shared: TaskShared::of(&shared),
        hint: hint.clone(),
        closed: closed_tx,
        local_addr,
        hint_dir: config.hint_dir.clone(),
        fenced: fenced.clone(),
    };
    tokio::spawn(task.run().instrument(span.clone()));
    if let Some(remote) = &config.remote {
        crate::port::open(&shared, remote.as_ref()).await;
    }
    let weak = Arc::downgrade(&shared);
    let handshakes = Arc::new(Semaphore::new(config.limits.max_handshakes.max(1)));
    #[cfg(unix)]
    if let Some(unix) = unix {
        let accept = unix.accept_loop(shared.clone(), handshakes.clone());
        tokio::spawn(accept.instrument(span.clone()));
    }
    if let Some(listener) = listener {
        tokio::spawn(
            accept_loop(listener, shared, handshakes, config.tls.clone()).instrument(span),
        );
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
        unix_path,
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

async fn accept_loop(
    listener: TcpListener,
    shared: Arc<Shared>,
    handshakes: Arc<Semaphore>,
    tls: Option<TlsServer>,
) {
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
                if let Some(tls) = &tls {
                    let span = tracing::debug_span!("conn", %peer);
                    let serve =
                        crate::tls::serve_native(stream, peer, tls.clone(), shared.clone(), permit);
                    tokio::spawn(serve.instrument(span));
                    continue;
                }
                let conn = shared.alloc_conn();
                let span = tracing::debug_span!("conn", id = conn.0, %peer);
                tokio::spawn(serve_conn(
                    stream,
                    Peer::tcp(peer),
                    conn,
                    shared.clone(),
                    permit,
                    span,
                ));
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
