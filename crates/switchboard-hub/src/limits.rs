//! Configurable limits of a hub, with their defaults.

use std::time::Duration;

/// Most changes one commit point of the replication link may carry: a
/// standby refuses a longer run of changes without a commit point, so
/// [`Limits::change_log_changes`] may not exceed it.
pub const MAX_CHANGES_PER_COMMIT: usize = 1 << 20;

/// Every limit the hub enforces. A client that hits one gets a typed error
/// (`LIMIT_EXCEEDED`, `QUEUE_FULL`, `SLOW_CONSUMER`, ...) on its own
/// connection only.
///
/// The defaults suit a hub serving up to a few thousand local processes; see
/// the field docs for each default.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// Largest frame accepted from an authenticated client, bytes (default
    /// 16 MiB).
    pub max_frame: usize,
    /// Largest frame accepted before authentication, bytes (default 4 KiB).
    pub pre_auth_max_frame: usize,
    /// Outbound queue of one client: frames before it counts as full, as
    /// well as [`Limits::queue_bytes`] (default 0: no count limit, the
    /// queue is bounded in bytes alone).
    pub queue_frames: usize,
    /// Outbound queue of one client: bytes before it counts as full (default
    /// 32 MiB: about 170 k deliveries of 64 B, half of
    /// [`Limits::queue_hard_bytes`], so a reliable client's queue plus what
    /// is in its sockets stays under the hard limit). Each queued frame counts its encoded size plus the queue's
    /// entry for it ([`ENTRY_COST`](crate::outbox::ENTRY_COST)), so this
    /// bounds the queue's memory whatever the frames' size. When full,
    /// pub/sub deliveries drop that client's oldest deliveries; direct
    /// messages and requests wait (see [`Limits::max_parked_frames`]).
    pub queue_bytes: usize,
    /// Outbound queue of one client: bytes (counted as for
    /// [`Limits::queue_bytes`]) above which the client is disconnected with
    /// `Goodbye{SLOW_CONSUMER}` (default 64 MiB). Only frames that are
    /// never dropped (answers, key/value updates, presence) can push a
    /// queue this far.
    pub queue_hard_bytes: usize,
    /// Direct messages, requests and session frames waiting for room in one
    /// target's full queue, frames (default 4,096); beyond it the sender gets
    /// `QUEUE_FULL` at once.
    pub max_parked_frames: usize,
    /// The same bound in bytes (default 16 MiB).
    pub max_parked_bytes: usize,
    /// Most frames a connection's writer takes from its queue for one write,
    /// as bytes (default 256 KiB; at least one frame is always taken).
    pub write_batch_bytes: usize,
    /// Subscriptions per client (default 10,000).
    pub max_subscriptions: usize,
    /// Key/value watches per client (default 1,000).
    pub max_watches: usize,
    /// Requests outstanding from one requester (default 10,000).
    pub max_pending_requests: usize,
    /// Registered clients (default 10,000).
    pub max_clients: usize,
    /// Connections still in the handshake (default 1,024); further
    /// connections are closed at once.
    pub max_handshakes: usize,
    /// Largest key/value value, bytes (default 1 MiB).
    pub kv_max_value: usize,
    /// Largest key, bytes (default 1,024).
    pub kv_max_key: usize,
    /// Live keys (default 100,000).
    pub kv_max_keys: usize,
    /// Deletion markers kept so versions never repeat (default 100,000). When
    /// exceeded the oldest marker is forgotten and the store's version floor
    /// rises above it, so a key created afterwards starts above every
    /// forgotten version instead of at 1.
    pub kv_max_tombstones: usize,
    /// Longest topic or subscription pattern, bytes (default 1,024).
    pub max_subject: usize,
    /// Request timeout used when a request says 0 (default 30 s); also how
    /// long a direct message may wait for room in a full queue.
    pub default_request_timeout: Duration,
    /// Capacity of the router's inbox, in batches of frames (default 1,024).
    /// Connection readers wait when it is full, which pushes back on the
    /// senders through TCP.
    pub router_inbox: usize,
    /// How long a reliable client that lost its connection (or a client
    /// of a hub that took over from a failed primary) keeps its
    /// registration, subscriptions and queued frames while it reconnects
    /// and resumes (default 30 s). It leaves when the window ends.
    pub resume_window: Duration,
    /// Changes the primary logs for its standby before it sends them
    /// (default and most [`MAX_CHANGES_PER_COMMIT`], 1,048,576; at least
    /// 1). The router sends what is logged after each batch of inputs, and
    /// after any input that leaves the log a sixteenth full; a single input
    /// that logs more than the bound (a burst of publishes fanned out to
    /// many reliable subscribers) makes the primary send the standby a
    /// fresh snapshot instead, which is costly: the whole state, and the
    /// handshake's time of silence allowed while the standby restores it.
    pub change_log_changes: usize,
    /// The same bound in encoded bytes (default 64 MiB; at least 1).
    pub change_log_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_frame: switchboard_wire::DEFAULT_MAX_FRAME,
            pre_auth_max_frame: 4 * 1024,
            queue_frames: 0,
            queue_bytes: 32 * 1024 * 1024,
            queue_hard_bytes: 64 * 1024 * 1024,
            max_parked_frames: 4_096,
            max_parked_bytes: 16 * 1024 * 1024,
            write_batch_bytes: 256 * 1024,
            max_subscriptions: 10_000,
            max_watches: 1_000,
            max_pending_requests: 10_000,
            max_clients: 10_000,
            max_handshakes: 1_024,
            kv_max_value: 1024 * 1024,
            kv_max_key: 1_024,
            kv_max_keys: 100_000,
            kv_max_tombstones: 100_000,
            max_subject: 1_024,
            default_request_timeout: Duration::from_secs(30),
            router_inbox: 1_024,
            resume_window: Duration::from_secs(30),
            change_log_changes: MAX_CHANGES_PER_COMMIT,
            change_log_bytes: 64 * 1024 * 1024,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_soft_limit_leaves_half_the_hard_limit_for_frames_in_flight() {
        // A reliable client's retransmit buffer counts what is queued and
        // what was written but not acknowledged against the hard limit: a
        // queue at the soft limit must leave room for the latter, or a
        // stalled subscriber is disconnected instead of told of drops.
        let l = Limits::default();
        assert!(l.queue_bytes * 2 <= l.queue_hard_bytes);
        assert!(l.queue_bytes > 0 && l.queue_frames == 0);
    }
}
