//! The HTTP gateway: long-poll clients (seed 002), WebSocket clients carrying
//! native frames, operations endpoints and the dashboard, on one listener.
//!
//! An HTTP client is a *virtual connection*: the gateway registers it with
//! the router like any TCP client (its own [`Outbox`](crate::Outbox),
//! transport `"http"`), turns each HTTP call into native frames, and moves
//! what the router queues for it into a bounded mailbox that long polls
//! drain. Endpoints, auth and limits: the project's `docs/PROTOCOL.md`
//! ("HTTP gateway").

use std::net::SocketAddr;
use std::time::Duration;

use switchboard_discovery::{client_proof, Secret};

pub(crate) mod dashboard;
pub(crate) mod http;
pub(crate) mod ws;

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
        }
    }
}

pub(crate) use http::start;
#[doc(hidden)]
pub use http::{check_body, CheckedBody};

/// Every route the gateway serves, as `(method, path)`; the OpenAPI
/// document lists exactly these (checked by a test).
pub fn routes() -> &'static [(&'static str, &'static str)] {
    http::ROUTES
}

/// The OpenAPI 3 document of the gateway (also served at `/openapi.json`).
pub const OPENAPI: &str = include_str!("../../openapi.json");
