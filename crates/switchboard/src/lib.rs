//! switchboard: a message hub and client library for cooperating processes.
//!
//! A hub binds a random free port; clients find it by service name, prove
//! they share a secret, register under a client id and then reach each other
//! through it: direct messages, request/reply, broadcast, topic
//! publish/subscribe with wildcards and queue groups, shared key/value state
//! with watches, presence, and ordered TR-069-style sessions.
//!
//! This crate is the facade: it re-exports the parts ([`wire`],
//! [`discovery`], [`session`], `hub`) and adds the async [`Client`], a typed
//! layer over it ([`Codec`], [`Client::publish_typed`] and the other
//! `*_typed` calls) and a `Hub` builder that runs a hub in-process.
//!
//! # Features
//!
//! | feature | what it adds | on by default |
//! |---|---|---|
//! | `client` | [`Client`], [`discover`](fn@discover), the typed layer, the `wire`, `discovery` and `session` re-exports | yes |
//! | `hub` | the in-process `Hub` and `HubBuilder`, the `hub` re-export of `switchboard-hub` (implies `client`) | yes |
//! | `cli` | the `switchboard` binary (implies `hub`) | yes |
//! | `mimalloc` | the binary allocates with mimalloc (implies `cli`) | yes |
//!
//! An application that only talks to a hub depends on the client alone,
//! which compiles no server or CLI crate (no axum, hyper, clap,
//! tracing-subscriber or mimalloc):
//!
//! ```toml
//! switchboard = { version = "0.1", default-features = false, features = ["client"] }
//! ```
//!
//! # Example
//!
//! With the `hub` feature, a hub in this process and two clients of it:
//!
//! ```
//! # #[cfg(not(feature = "hub"))]
//! # fn main() {}
//! # #[cfg(feature = "hub")]
//! # #[tokio::main]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use switchboard::{Client, Hub};
//!
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
#![cfg_attr(docsrs, feature(doc_cfg))]

#[cfg(feature = "client")]
mod client;
#[cfg(feature = "client")]
mod discover;
#[cfg(feature = "client")]
mod error;
#[cfg(feature = "hub")]
mod hub_builder;

#[cfg(feature = "client")]
#[cfg_attr(docsrs, doc(cfg(feature = "client")))]
pub use switchboard_discovery as discovery;
#[cfg(feature = "federation")]
#[cfg_attr(docsrs, doc(cfg(feature = "federation")))]
pub use switchboard_federation as federation;
#[cfg(feature = "hub")]
#[cfg_attr(docsrs, doc(cfg(feature = "hub")))]
pub use switchboard_hub as hub;
#[cfg(feature = "client")]
#[cfg_attr(docsrs, doc(cfg(feature = "client")))]
pub use switchboard_session as session;
#[cfg(feature = "client")]
#[cfg_attr(docsrs, doc(cfg(feature = "client")))]
pub use switchboard_wire as wire;

#[cfg(feature = "client")]
pub use bytes::Bytes;
#[cfg(feature = "client")]
pub use bytestring::ByteString;
#[cfg(feature = "client")]
#[cfg_attr(docsrs, doc(cfg(feature = "client")))]
pub use client::typed::{
    Codec, CodecError, DecodeError, Json, Typed, TypedClient, TypedSubscription,
};
#[cfg(feature = "client")]
#[cfg_attr(docsrs, doc(cfg(feature = "client")))]
pub use client::{
    Client, ClientBuilder, ClientEvent, ClientInfo, CloseReport, ConnectionState, Events, Headers,
    HubInfo, HubStatus, IncomingRequest, Kv, KvEntry, KvEvent, KvWatch, Message, MessageKind,
    Messages, Overflow, Presence, PresenceEvent, Reply, RequestOptions, Requests, ServeHandle,
    ServeOptions, SessionLink, SubscribeOptions, Subscription, TlsOptions, DEFAULT_REQUEST_TIMEOUT,
    DEFAULT_RESUME_WAIT, DEFAULT_RETAIN_BYTES, DEFAULT_RETAIN_FRAMES, MAX_CLIENT_ID_LEN,
};
#[cfg(feature = "client")]
#[cfg_attr(docsrs, doc(cfg(feature = "client")))]
pub use discover::{discover, DiscoveredHub};
#[cfg(feature = "client")]
#[cfg_attr(docsrs, doc(cfg(feature = "client")))]
pub use error::{ClientError, ErrorCode};
#[cfg(feature = "hub")]
#[cfg_attr(docsrs, doc(cfg(feature = "hub")))]
pub use hub_builder::{Hub, HubBuilder, HubTls};
#[cfg(feature = "client")]
#[cfg_attr(docsrs, doc(cfg(feature = "client")))]
pub use switchboard_discovery::Secret;
#[cfg(feature = "client")]
#[cfg_attr(docsrs, doc(cfg(feature = "client")))]
pub use switchboard_discovery::DEFAULT_SERVICE;
#[cfg(feature = "hub")]
#[cfg_attr(docsrs, doc(cfg(feature = "hub")))]
pub use switchboard_hub::{HubError, HubHandle};
