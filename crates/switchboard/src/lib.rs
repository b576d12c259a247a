//! switchboard: a message hub and client library for cooperating processes.
//!
//! A hub binds a random free port; clients find it by service name, prove
//! they share a secret, register under a client id and then reach each other
//! through it: direct messages, request/reply, broadcast, topic
//! publish/subscribe with wildcards and queue groups, shared key/value state
//! with watches, presence, and ordered TR-069-style sessions.
//!
//! This crate is the facade: it re-exports the parts ([`wire`],
//! [`discovery`], [`session`], [`hub`]) and adds a [`Hub`] builder that runs
//! a hub in-process and the async [`Client`].
//!
//! # Example
//!
//! ```
//! use switchboard::{Client, Hub};
//!
//! # #[tokio::main]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! // A hub on a free loopback port, with a shared token.
//! let hub = Hub::builder()
//!     .token("s3cret")
//!     .listen("127.0.0.1:0")
//!     .write_hint(false) // clients below connect by address
//!     .start()
//!     .await?;
//! let addr = hub.local_addr().to_string();
//!
//! // One client answers requests...
//! let server = Client::builder("adder").addr(&addr).token("s3cret").connect().await?;
//! let _serving = server.serve(|req| async move {
//!     let text = String::from_utf8_lossy(req.payload()).to_uppercase();
//!     Ok::<_, String>(text.into())
//! }).await?;
//!
//! // ...another one asks.
//! let client = Client::builder("asker").addr(&addr).token("s3cret").connect().await?;
//! let reply = client.request("adder", "hello").await?;
//! assert_eq!(&reply[..], b"HELLO");
//!
//! client.close().await;
//! server.close().await;
//! hub.shutdown().await;
//! # Ok(())
//! # }
//! ```

#![warn(missing_docs)]

mod client;
mod discover;
mod error;
mod hub_builder;

pub use switchboard_discovery as discovery;
pub use switchboard_hub as hub;
pub use switchboard_session as session;
pub use switchboard_wire as wire;

pub use bytes::Bytes;
pub use bytestring::ByteString;
pub use client::{
    Client, ClientBuilder, ClientEvent, ClientInfo, CloseReport, ConnectionState, Events, Headers,
    HubStatus, IncomingRequest, Kv, KvEntry, KvEvent, KvWatch, Message, MessageKind, Messages,
    Overflow, Presence, PresenceEvent, Reply, RequestOptions, Requests, ServeHandle, ServeOptions,
    SessionLink, SubscribeOptions, Subscription, DEFAULT_REQUEST_TIMEOUT, DEFAULT_RESUME_WAIT,
    DEFAULT_RETAIN_BYTES, DEFAULT_RETAIN_FRAMES, MAX_CLIENT_ID_LEN,
};
pub use discover::discover;
pub use error::ClientError;
pub use hub_builder::{Hub, HubBuilder};
pub use switchboard_discovery::Secret;
pub use switchboard_hub::{HubError, HubHandle};

/// Service name used when none is given.
pub const DEFAULT_SERVICE: &str = "switchboard";
