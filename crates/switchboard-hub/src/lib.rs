//! The switchboard relay hub: processes connect over TCP, authenticate with
//! the per-user secret, register a client id, and reach each other by id —
//! direct messages, request/reply, broadcast, topic publish/subscribe with
//! wildcards and queue groups, shared key/value state with watches, presence
//! events, and session-engine frames.
//!
//! # Shape
//!
//! * A **sans-IO routing core**, [`router::Router`], owns all state
//!   (registry, subscription trie, queue groups, pending requests, key/value
//!   store, watchers, counters). It takes [`router::Input`]s and the current
//!   time, and pushes frames onto per-client [`Outbox`]es. It never blocks,
//!   never reads a clock and never touches a socket, so tests drive it with
//!   a simulated clock and a standby can replay its inputs.
//! * **One router task** owns the router, fed by one bounded channel from
//!   the connections' reader tasks; it handles everything available per
//!   wake-up before yielding.
//! * Per connection, a **reader task** (decode frames, hand them to the
//!   router in batches) and a **writer task** (take everything queued in the
//!   outbox, encode it into one buffer, one write).
//! * **Slow consumers**: a full outbox drops that client's oldest pub/sub
//!   deliveries (the client gets a `Flow` notice with the count), direct
//!   messages and requests wait up to the sender's timeout and then fail with
//!   `QUEUE_FULL`, and a client whose queue passes the hard limit is
//!   disconnected with `Goodbye{SLOW_CONSUMER}`. Nobody else waits.
//!
//! * **Other transports**: with [`HubConfig::http`] set, a second listener
//!   serves WebSocket clients (the same frames and handshake, through the
//!   same connection code), HTTP long-poll clients registered as virtual
//!   connections, `/metrics`, a JSON status and a live dashboard; see
//!   [`gateway`].
//!
//! The handshake and the limits a client meets are described in the
//! project's `docs/PROTOCOL.md`, the concurrency design in its
//! `ARCHITECTURE.md`; every limit and its default is on [`Limits`].
//!
//! # Id takeover
//!
//! A client id belongs to the newest connection that registered it: when a
//! second connection authenticates with an id already in use, the older
//! connection receives `Goodbye{ID_TAKEN_OVER}` and is closed, presence
//! watchers see it leave and the new one join, and requests outstanding to
//! the old connection fail with `TARGET_GONE`. This is what lets a
//! restarted process reclaim its id at once (MQTT behaves the same way).
//!
//! # Example
//!
//! ```
//! use switchboard_discovery::{BindOptions, PortChoice, Secret};
//! use switchboard_hub::{Hub, HubConfig};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let mut config = HubConfig::with_secret("example", Secret::from_token("let me in"));
//! config.bind = BindOptions {
//!     ip: "127.0.0.1".parse()?,
//!     port: PortChoice::Os,
//!     ..BindOptions::default()
//! };
//! config.write_hint = false;
//!
//! let hub = Hub::start(config).await?;
//! assert_eq!(hub.identity().port, u32::from(hub.local_addr().port()));
//! assert_eq!(hub.status().clients, 0);
//! hub.shutdown().await;
//! # Ok(())
//! # }
//! ```

#![warn(missing_docs)]

mod config;
mod conn;
pub mod gateway;
mod handle;
mod hub;
mod ids;
mod inbox;
pub mod limits;
mod listen_unix;
pub mod metrics;
pub mod outbox;
pub mod policy;
pub mod port;
mod primary;
mod replication;
pub mod router;
mod router_task;
mod shared;
pub mod stats;
pub mod subject;
mod tls;
mod transport;

pub use config::HttpConfig;
pub use config::{
    HubConfig, HubError, DEFAULT_HANDSHAKE_TIMEOUT, DEFAULT_HEARTBEAT_INTERVAL,
    DEFAULT_HEARTBEAT_MISSES, DEFAULT_KEEPALIVE,
};
pub use config::{UnixSocket, DEFAULT_UNIX_MODE};
pub use gateway::http_token;
pub use handle::{HubHandle, MemoryConnector};
pub use hub::Hub;
pub use ids::ConnId;
pub use limits::Limits;
pub use outbox::{Out, Outbox};
pub use policy::{Policy, PolicyError};
pub use replication::follower::{StandbyHandle, StandbyState};
pub use switchboard_discovery::tls::{ClientTls, TlsError};
pub use tls::TlsServer;
