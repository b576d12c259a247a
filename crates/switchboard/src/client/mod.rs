//! The client: connect to a hub and talk to other clients through it.
//!
//! This file only declares the rooms and re-exports the public types; the
//! arrows between the rooms go one way:
//!
//! * [`Client`] (`handle.rs`) and the rooms that add calls to it
//!   (`builder.rs`, `sending.rs`, `session.rs`, `typed.rs`) use the streams
//!   (`streams.rs`, `serve.rs`, `presence.rs`, `kv.rs`) and the connection
//!   (`connect.rs`, `conn.rs`, `reader.rs`);
//! * all of them use the shared state (`shared.rs`: settings and the send
//!   path; `registry.rs`: what the reader routes to);
//! * at the bottom are rooms that name no other: `request.rs` (an incoming
//!   request, answering through the `Outlet` trait that `Shared`
//!   implements), `queue.rs`, `types.rs`, `events.rs`, `reliable.rs` and
//!   `transport.rs`.
//!
//! The handshake itself is `switchboard_discovery::handshake`, without I/O.

mod builder;
mod conn;
mod connect;
mod events;
mod handle;
mod kv;
mod presence;
mod queue;
mod reader;
mod registry;
mod reliable;
mod request;
mod sending;
mod serve;
mod session;
mod shared;
mod streams;
mod tls;
mod transport;
pub(crate) mod typed;
mod types;
mod unix;

pub use builder::{ClientBuilder, DEFAULT_REQUEST_TIMEOUT, DEFAULT_RESUME_WAIT};
pub use events::{ClientEvent, Events};
pub use handle::Client;
pub use kv::{Kv, KvWatch};
pub use presence::Presence;
pub use queue::Overflow;
pub use reliable::{DEFAULT_RETAIN_BYTES, DEFAULT_RETAIN_FRAMES};
pub use request::IncomingRequest;
pub use serve::{ServeHandle, ServeOptions};
pub use session::SessionLink;
pub use streams::{Messages, Requests, SubscribeOptions, Subscription};
pub use tls::TlsOptions;
pub use types::{
    ClientInfo, CloseReport, ConnectionState, Headers, HubInfo, HubStatus, KvEntry, KvEvent,
    Message, MessageKind, PresenceEvent, Reply, RequestOptions,
};

/// Largest client id, in bytes.
pub use switchboard_wire::MAX_CLIENT_ID_LEN;
