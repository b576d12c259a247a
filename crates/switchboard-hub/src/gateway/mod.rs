//! The HTTP gateway: long-poll clients (seed 002), WebSocket clients carrying
//! native frames, operations endpoints and the dashboard, on one listener.
//!
//! An HTTP client is a *virtual connection*: the gateway registers it with
//! the router like any TCP client (its own [`Outbox`](crate::Outbox),
//! transport `"http"`), turns each HTTP call into native frames, and moves
//! what the router queues for it into a bounded mailbox that long polls
//! drain. Endpoints, auth and limits: the project's `docs/PROTOCOL.md`
//! ("HTTP gateway").
//!
//! Rooms, each importing only those above it:
//!
//! * `answers`: the JSON answers' types (and their schemas);
//! * `api`: the error answer, reading bodies, payloads and headers in JSON;
//! * `calls`: each POST body, the frame it becomes and the JSON it answers
//!   (the `ApiCall` trait), and [`check_body`];
//! * `views`: the router's view (`Command::Inspect`) and its JSON;
//! * `mailbox`, `virtual_client`: HTTP clients as virtual connections;
//! * `auth`: the loopback guard and the bearer token;
//! * `metrics`, `dashboard`, `ws`: `/metrics`, the dashboard, `/v1/ws`;
//! * `openapi`: the generated OpenAPI document;
//! * `routes`: the router of paths to handlers, and the API handlers.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::AtomicUsize;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use switchboard_discovery::{client_proof, Secret};

use crate::config::{HttpConfig, HubError};
use crate::shared::Shared;
use crate::tls::{plain_listener, HttpPeer, TlsListener, TlsServer};

mod answers;
mod api;
mod auth;
mod calls;
mod dashboard;
mod mailbox;
mod metrics;
mod openapi;
mod routes;
mod views;
mod virtual_client;
mod ws;

#[doc(hidden)]
pub use calls::{check_body, CheckedBody};

/// Domain label of the HTTP bearer token derivation.
const TOKEN_LABEL: &[u8] = b"switchboard/v1/http-token";

/// The bearer token HTTP clients present (`Authorization: Bearer <token>`):
/// 64 lower-case hex digits of an HMAC-SHA-256 keyed by the hub's secret
/// over a fixed label, so anyone holding the secret file (or the token the
/// hub was started with) can compute it, and the token reveals nothing of
/// the secret.
pub fn http_token(secret: &Secret) -> String {
    // The client-proof MAC with a label in the nonce position: real
    // handshake nonces are 16 bytes, this label is longer, so the token can
    // never equal a handshake proof.
    let mac = client_proof(secret, TOKEN_LABEL, b"", "http");
    mac.iter().map(|b| format!("{b:02x}")).collect()
}

/// Every route the gateway serves, as `(method, path)`; the OpenAPI
/// document lists exactly these (checked by a test).
pub fn routes() -> &'static [(&'static str, &'static str)] {
    routes::ROUTES
}

/// The OpenAPI 3.1 document of the gateway, as served at `/openapi.json`:
/// generated from the gateway's request and answer types and its table of
/// operations.
pub fn openapi() -> &'static str {
    openapi::document()
}

/// How long a call other than a request waits for the router's answer.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(10);

/// The gateway's shared state, the state of every handler.
struct Gateway {
    shared: Arc<Shared>,
    cfg: HttpConfig,
    /// The bearer token ([`http_token`]).
    token: String,
    /// Whether the listener is on loopback (then the loopback guard runs).
    loopback: bool,
    /// Registered HTTP clients by client id.
    clients: Mutex<HashMap<String, Arc<virtual_client::HttpClient>>>,
    /// Polls held at once, all clients.
    polls: AtomicUsize,
    /// WebSocket connections still in the handshake.
    ws_handshakes: Arc<tokio::sync::Semaphore>,
}

/// Binds the gateway's listener and serves it until the hub shuts down.
pub(crate) async fn start(
    cfg: HttpConfig,
    shared: Arc<Shared>,
    tls: Option<TlsServer>,
) -> Result<(SocketAddr, tokio::task::JoinHandle<()>), HubError> {
    let bind_error = |source: std::io::Error| HubError::Bind {
        addr: cfg.addr.to_string(),
        source,
    };
    let listener = match &cfg.listener {
        Some(given) => {
            let l = given.try_clone().map_err(bind_error)?;
            l.set_nonblocking(true).map_err(bind_error)?;
            tokio::net::TcpListener::from_std(l).map_err(bind_error)?
        }
        None => tokio::net::TcpListener::bind(cfg.addr)
            .await
            .map_err(bind_error)?,
    };
    let local_addr = listener.local_addr().map_err(bind_error)?;
    // Plaintext, or TLS accepted in a task per connection.
    let listener = match tls {
        Some(tls) => {
            let cap = shared.limits.max_clients;
            Err(
                TlsListener::new(listener, tls, shared.handshake_timeout, cap)
                    .map_err(bind_error)?,
            )
        }
        None => Ok(plain_listener(listener, shared.limits.max_clients)),
    };
    let gw = Arc::new(Gateway {
        token: http_token(&shared.secret),
        loopback: local_addr.ip().is_loopback(),
        shared,
        cfg,
        clients: Mutex::new(HashMap::new()),
        polls: AtomicUsize::new(0),
        ws_handshakes: Arc::new(tokio::sync::Semaphore::new(ws::MAX_HANDSHAKES)),
    });
    let app = routes::router(gw.clone());
    let shutdown = gw.shared.shutdown.clone();
    tokio::spawn(virtual_client::reap_idle(gw.clone()));
    tracing::info!(addr = %local_addr, "http gateway listening");
    let task = tokio::spawn(async move {
        let service = app.into_make_service_with_connect_info::<HttpPeer>();
        let served = match listener {
            Ok(plain) => {
                axum::serve(plain, service)
                    .with_graceful_shutdown(shutdown.cancelled_owned())
                    .await
            }
            Err(tls) => {
                axum::serve(tls, service)
                    .with_graceful_shutdown(shutdown.cancelled_owned())
                    .await
            }
        };
        if let Err(e) = served {
            tracing::warn!(error = %e, "http gateway stopped");
        }
    });
    Ok((local_addr, task))
}
