//! The hub's shared state: what every connection (of every transport) and
//! the gateway need to reach the router task and each other.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use parking_lot::Mutex;
use switchboard_discovery::Secret;
use switchboard_wire::proto;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::inbox::Inbox;
use crate::outbox::Gate;
use crate::router::admission::Admission;
use crate::stats::HubStats;
use crate::{ConnId, Limits};

/// What every connection needs to know.
pub(crate) struct Shared {
    pub identity: proto::HubIdentity,
    pub secret: Secret,
    pub limits: Limits,
    pub handshake_timeout: Duration,
    pub inbox: Inbox,
    pub stats: Arc<HubStats>,
    pub shutdown: CancellationToken,
    /// Last connection id handed out (ids are shared by all transports).
    pub next_conn: AtomicU64,
    /// Holds frames back until the standby holds their changes.
    pub gate: Arc<Gate>,
    /// Where standby replication links are handed to the router task.
    pub standby: mpsc::Sender<Attach>,
    /// Told when a client shows an epoch above this hub's (this hub may
    /// be an old primary).
    pub higher_epoch: Arc<tokio::sync::Notify>,
    /// Replication heartbeat interval and misses.
    pub heartbeat: (Duration, u32),
    /// The keepalive interval the router holds clients to (`None`: off).
    pub keepalive: Option<Duration>,
    /// The permission policy (`None`: single-user mode); the router holds
    /// the same object.
    pub admission: Option<Arc<dyn Admission>>,
}

impl Shared {
    /// A fresh connection id.
    pub fn alloc_conn(&self) -> ConnId {
        ConnId(self.next_conn.fetch_add(1, Ordering::Relaxed) + 1)
    }
}

/// A standby link handed to the router task by the connection that
/// authenticated it.
pub(crate) struct Attach {
    /// The standby's address.
    pub addr: String,
    /// Encoded batches for the link's writer.
    pub out: mpsc::Sender<Bytes>,
    /// Cancelled when the link is lost.
    pub alive: CancellationToken,
    /// Commit points shipped and not yet acknowledged, `(repl_seq, bytes
    /// sent up to it)`.
    pub commits: Arc<Mutex<VecDeque<(u64, u64)>>>,
    /// The standby is taking a snapshot in: a commit point plus one that
    /// its acknowledgement reaches when it is done, or 0 when it is not
    /// (the link allows it the handshake's silence meanwhile).
    pub restoring: Arc<AtomicU64>,
}
