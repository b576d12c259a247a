//! The hub's shared counters: set by the router (as it publishes them),
//! the transports and the replication link; read by
//! [`HubHandle::status`](crate::HubHandle::status) and the gateway's
//! `/metrics` and status endpoints.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use switchboard_wire::proto;

use crate::ids::ConnId;
use crate::ids::IdMap;
use crate::outbox::Outbox;

/// Counters shared between the router, the transports and
/// [`HubHandle::status`](crate::HubHandle::status).
#[derive(Debug, Default)]
pub struct HubStats {
    /// Bytes received from clients (counted by transports).
    pub bytes_in: AtomicU64,
    /// Frames written to clients (counted by transports).
    pub msgs_out: AtomicU64,
    /// Bytes written to clients (counted by transports).
    pub bytes_out: AtomicU64,
    pub(crate) msgs_in: AtomicU64,
    pub(crate) clients: AtomicU64,
    pub(crate) subscriptions: AtomicU64,
    pub(crate) pending: AtomicU64,
    pub(crate) kv_keys: AtomicU64,
    pub(crate) dropped: AtomicU64,
    pub(crate) outboxes: Mutex<IdMap<ConnId, Arc<Outbox>>>,
    /// Replication: the attached standby, lag, role.
    pub repl: ReplStats,
    /// Counters by frame kind and the request latency histogram (for
    /// `/metrics`).
    pub metrics: crate::metrics::Metrics,
}

impl HubStats {
    /// Registers a connection's outbox so its depth counts in the status.
    pub fn track(&self, outbox: &Arc<Outbox>) {
        self.outboxes.lock().insert(outbox.conn(), outbox.clone());
    }

    /// Forgets a connection's outbox.
    pub fn untrack(&self, conn: ConnId) {
        self.outboxes.lock().remove(&conn);
    }

    /// Sum of all tracked outboxes' depths, frames.
    pub fn queue_depth(&self) -> u64 {
        self.outboxes
            .lock()
            .values()
            .map(|o| o.depth() as u64)
            .sum()
    }

    /// Records how long a request took from `Request` to `Reply` (the
    /// router measures it; `/metrics` shows the histogram).
    pub fn observe_request_latency(&self, took: Duration) {
        self.metrics.request_latency.observe(took);
    }

    /// A status from the shared counters (as last published by the router).
    pub fn status(&self, identity: &proto::HubIdentity, uptime: Duration) -> proto::Status {
        let mut status = proto::Status {
            id: 0,
            identity: Some(identity.clone()),
            uptime_s: uptime.as_secs(),
            clients: self.clients.load(Ordering::Relaxed),
            subscriptions: self.subscriptions.load(Ordering::Relaxed),
            msgs_in: self.msgs_in.load(Ordering::Relaxed),
            msgs_out: self.msgs_out.load(Ordering::Relaxed),
            bytes_in: self.bytes_in.load(Ordering::Relaxed),
            bytes_out: self.bytes_out.load(Ordering::Relaxed),
            dropped: self.dropped.load(Ordering::Relaxed),
            queue_depth: self.queue_depth(),
            pending_requests: self.pending.load(Ordering::Relaxed),
            kv_keys: self.kv_keys.load(Ordering::Relaxed),
            ..Default::default()
        };
        self.repl.fill(&mut status);
        status
    }
}

/// Replication figures, set by the hub's replication link.
#[derive(Debug, Default)]
pub struct ReplStats {
    /// Address of the attached standby ("" when none); on a standby, the
    /// primary it follows.
    pub peer: Mutex<String>,
    /// Last change logged (primary) or applied (standby).
    pub seq: AtomicU64,
    /// Last change the standby acknowledged.
    pub acked: AtomicU64,
    /// Bytes of changes sent to the standby.
    pub bytes_sent: AtomicU64,
    /// Bytes of changes the standby acknowledged.
    pub bytes_acked: AtomicU64,
    /// Fresh snapshots sent to an attached standby because the change log
    /// overflowed (the opening snapshot of a link is not counted).
    pub resyncs: AtomicU64,
}

impl ReplStats {
    pub(crate) fn fill(&self, status: &mut proto::Status) {
        status.standby_addr = self.peer.lock().clone();
        if !status.standby_addr.is_empty() {
            let seq = self.seq.load(Ordering::Relaxed);
            let acked = self.acked.load(Ordering::Relaxed);
            status.repl_lag_changes = seq.saturating_sub(acked);
            status.repl_lag_bytes = self
                .bytes_sent
                .load(Ordering::Relaxed)
                .saturating_sub(self.bytes_acked.load(Ordering::Relaxed));
        }
        status
            .counters
            .insert("repl_seq".into(), self.seq.load(Ordering::Relaxed));
        status.counters.insert(
            "standby_resyncs".into(),
            self.resyncs.load(Ordering::Relaxed),
        );
    }
}
