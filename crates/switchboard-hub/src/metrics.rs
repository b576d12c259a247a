//! Counters by transport and frame kind, the request latency and delivery
//! queue delay histograms, kept in atomics on the hot path and read by the
//! gateway's `/metrics` (which renders them with `prometheus-client`).
//!
//! Per-transport figures live in fixed arrays indexed by [`Via`]: a
//! connection resolves its transport's name to a [`Via`] once, and every
//! frame after that costs the same relaxed `fetch_add`s as before the
//! label existed (no lock, no allocation, no lookup by name).

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use switchboard_wire::Frame;

/// Frame kinds counted separately; anything else counts as `other`.
const KINDS: [&str; 24] = [
    "ack",
    "broadcast",
    "client_list",
    "deliver",
    "direct",
    "error",
    "flow",
    "goodbye",
    "kv_delete",
    "kv_get",
    "kv_set",
    "kv_unwatch",
    "kv_update",
    "kv_value",
    "kv_watch",
    "ok",
    "other",
    "ping",
    "pong",
    "presence",
    "publish",
    "reply",
    "request",
    "session",
];

/// The transport a frame travelled on: the `transport` label of the frame,
/// byte and delivery delay families. A connection resolves its
/// transport's name once ([`Via::of`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Via {
    /// Plain TCP.
    Tcp,
    /// TLS over TCP.
    Tls,
    /// The Unix socket.
    Unix,
    /// WebSocket.
    Ws,
    /// WebSocket over TLS.
    Wss,
    /// The HTTP gateway's virtual clients.
    Http,
    /// In-process pipes ([`HubHandle`](crate::HubHandle) connections).
    Memory,
    /// The remote seam's port (the federation of hubs).
    Remote,
}

impl Via {
    /// Every transport, in declaration order (the order of the
    /// per-transport arrays).
    pub const ALL: [Via; 8] = [
        Via::Tcp,
        Via::Tls,
        Via::Unix,
        Via::Ws,
        Via::Wss,
        Via::Http,
        Via::Memory,
        Via::Remote,
    ];

    /// The transport named `name` (the names of
    /// [`Peer::transport`](crate::router::admission::Peer::transport) and
    /// [`PORT_TRANSPORT`](crate::router::remote::PORT_TRANSPORT)); an
    /// unknown name counts as `memory`.
    pub fn of(name: &str) -> Via {
        match name {
            "tcp" => Via::Tcp,
            "tls" => Via::Tls,
            "unix" => Via::Unix,
            "ws" => Via::Ws,
            "wss" => Via::Wss,
            "http" => Via::Http,
            crate::router::remote::PORT_TRANSPORT => Via::Remote,
            _ => Via::Memory,
        }
    }

    /// The label value.
    pub fn name(self) -> &'static str {
        match self {
            Via::Tcp => "tcp",
            Via::Tls => "tls",
            Via::Unix => "unix",
            Via::Ws => "ws",
            Via::Wss => "wss",
            Via::Http => "http",
            Via::Memory => "memory",
            Via::Remote => "remote",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// Upper bounds of the latency histogram buckets, seconds.
const BUCKETS: [f64; 14] = [
    0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0,
    5.0,
];

/// Index of `other` in [`KINDS`].
const OTHER: usize = 16;

/// Index of `deliver` in [`KINDS`].
const DELIVER: usize = 3;

/// Index of `name` in [`KINDS`] (`other` when not listed). A `match`
/// compiles to a length switch and one comparison; this runs for every
/// frame in and out, where a binary search over the names cost about 250
/// instructions.
fn kind_index(name: &str) -> usize {
    match name {
        "ack" => 0,
        "broadcast" => 1,
        "client_list" => 2,
        "deliver" => DELIVER,
        "direct" => 4,
        "error" => 5,
        "flow" => 6,
        "goodbye" => 7,
        "kv_delete" => 8,
        "kv_get" => 9,
        "kv_set" => 10,
        "kv_unwatch" => 11,
        "kv_update" => 12,
        "kv_value" => 13,
        "kv_watch" => 14,
        "ok" => 15,
        "ping" => 17,
        "pong" => 18,
        "presence" => 19,
        "publish" => 20,
        "reply" => 21,
        "request" => 22,
        "session" => 23,
        _ => OTHER,
    }
}

#[derive(Debug, Default)]
struct PerKind {
    msgs: [AtomicU64; KINDS.len()],
    bytes: [AtomicU64; KINDS.len()],
}

impl PerKind {
    fn add(&self, kind: &str, bytes: usize) {
        self.add_at(kind_index(kind), 1, bytes as u64);
    }

    fn add_at(&self, i: usize, msgs: u64, bytes: u64) {
        self.msgs[i].fetch_add(msgs, Ordering::Relaxed);
        self.bytes[i].fetch_add(bytes, Ordering::Relaxed);
    }

    fn read(&self) -> Vec<(&'static str, u64, u64)> {
        KINDS
            .iter()
            .zip(self.msgs.iter().zip(&self.bytes))
            .map(|(k, (m, b))| (*k, m.load(Ordering::Relaxed), b.load(Ordering::Relaxed)))
            .collect()
    }
}

/// [`PerKind`] for each transport.
#[derive(Debug, Default)]
struct PerTransport([PerKind; Via::ALL.len()]);

impl PerTransport {
    fn of(&self, via: Via) -> &PerKind {
        &self.0[via.index()]
    }

    /// `(transport, kind, frames, bytes)` for every kind of every transport
    /// that carried a frame; transports that carried none are left out.
    fn read(&self) -> Vec<(&'static str, &'static str, u64, u64)> {
        let mut rows = Vec::new();
        for via in Via::ALL {
            let kinds = self.of(via).read();
            if kinds.iter().any(|(_, m, _)| *m > 0) {
                rows.extend(kinds.into_iter().map(|(k, m, b)| (via.name(), k, m, b)));
            }
        }
        rows
    }
}

/// A fixed-bucket latency histogram.
#[derive(Debug, Default)]
pub struct Histogram {
    buckets: [AtomicU64; BUCKETS.len()],
    count: AtomicU64,
    sum_micros: AtomicU64,
}

impl Histogram {
    /// Records one observation.
    pub fn observe(&self, d: Duration) {
        let secs = d.as_secs_f64();
        if let Some(i) = BUCKETS.iter().position(|b| secs <= *b) {
            self.buckets[i].fetch_add(1, Ordering::Relaxed);
        }
        self.count.fetch_add(1, Ordering::Relaxed);
        self.sum_micros.fetch_add(
            d.as_micros().min(u128::from(u64::MAX)) as u64,
            Ordering::Relaxed,
        );
    }

    /// Observations so far.
    pub fn count(&self) -> u64 {
        self.count.load(Ordering::Relaxed)
    }

    /// The buckets `(upper bound in seconds, observations in this bucket
    /// alone, not cumulative)`, the sum of
    /// the observations in seconds and their count, read at one moment
    /// (each atomic on its own; a scrape may see one observation in the
    /// count and not yet in a bucket).
    pub fn snapshot(&self) -> (Vec<(f64, u64)>, f64, u64) {
        let buckets = BUCKETS
            .iter()
            .zip(&self.buckets)
            .map(|(b, n)| (*b, n.load(Ordering::Relaxed)))
            .collect();
        let sum = self.sum_micros.load(Ordering::Relaxed) as f64 / 1e6;
        (buckets, sum, self.count())
    }
}

/// Counters the transports and the router feed; the gateway renders them
/// at `/metrics`.
#[derive(Debug, Default)]
pub struct Metrics {
    frames_in: PerTransport,
    frames_out: PerTransport,
    /// Time from a request reaching the hub to its reply reaching the hub.
    pub request_latency: Histogram,
    /// Time a sampled frame waited in a client's outbox, from being queued
    /// to being written (handed over, for HTTP clients and the remote
    /// port), by transport.
    delivery_delay: [Histogram; Via::ALL.len()],
    /// Time a message waits in an HTTP client's mailbox until a poll first
    /// returns it.
    pub http_mailbox_delay: Histogram,
    /// HTTP gateway requests answered, by outcome class.
    http_responses: [AtomicU64; 5],
    /// Long polls currently held.
    pub http_polls_held: AtomicU64,
}

impl Metrics {
    /// Counts one frame received from a client on `via` (`bytes` with its
    /// prefix).
    pub fn frame_in(&self, via: Via, frame: &Frame, bytes: usize) {
        self.frames_in.of(via).add(frame.kind_name(), bytes);
    }

    /// Counts one frame of kind `kind` sent to a client on `via`.
    pub fn frame_out(&self, via: Via, kind: &str, bytes: usize) {
        self.frames_out.of(via).add(kind, bytes);
    }

    /// Counts `msgs` pub/sub deliveries of `bytes` bytes in all sent to a
    /// client on `via` (a writer adds up a whole batch).
    pub fn delivers_out(&self, via: Via, msgs: u64, bytes: u64) {
        if msgs > 0 {
            self.frames_out.of(via).add_at(DELIVER, msgs, bytes);
        }
    }

    /// Records how long a sampled frame waited in an outbox of a client on
    /// `via`, from being queued to being written.
    pub fn observe_delivery_delay(&self, via: Via, waited: Duration) {
        self.delivery_delay[via.index()].observe(waited);
    }

    /// The delivery queue delay histogram of `via` (see
    /// [`Histogram::snapshot`]).
    pub fn delivery_delay(&self, via: Via) -> &Histogram {
        &self.delivery_delay[via.index()]
    }

    /// Counts an HTTP response by its status code.
    pub fn http_response(&self, status: u16) {
        let class = usize::from(status / 100).clamp(1, 5) - 1;
        self.http_responses[class].fetch_add(1, Ordering::Relaxed);
    }

    /// Frames received of `kind` so far, on all transports.
    pub fn frames_in_of(&self, kind: &str) -> u64 {
        let i = kind_index(kind);
        self.frames_in
            .0
            .iter()
            .map(|t| t.msgs[i].load(Ordering::Relaxed))
            .sum()
    }

    /// Frames and bytes received, by transport and frame kind:
    /// `(transport, kind, frames, bytes)`, every kind of each transport
    /// that received a frame.
    pub fn received(&self) -> Vec<(&'static str, &'static str, u64, u64)> {
        self.frames_in.read()
    }

    /// Frames and bytes sent, the same way as [`Metrics::received`].
    pub fn sent(&self) -> Vec<(&'static str, &'static str, u64, u64)> {
        self.frames_out.read()
    }

    /// Gateway HTTP responses by status class: `(class, count)`, `1xx`..`5xx`.
    pub fn http_responses_by_class(&self) -> [(&'static str, u64); 5] {
        let n = |i: usize| self.http_responses[i].load(Ordering::Relaxed);
        [
            ("1xx", n(0)),
            ("2xx", n(1)),
            ("3xx", n(2)),
            ("4xx", n(3)),
            ("5xx", n(4)),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use switchboard_wire::proto;

    #[test]
    fn kinds_are_sorted_and_counted() {
        let mut sorted = KINDS;
        sorted.sort_unstable();
        assert_eq!(sorted, KINDS);
        for (i, kind) in KINDS.iter().enumerate() {
            assert_eq!(kind_index(kind), i, "{kind}");
        }
        assert_eq!(kind_index("status_request"), OTHER);
        let m = Metrics::default();
        m.frame_in(Via::Tcp, &Frame::from(proto::Publish::default()), 10);
        m.frame_in(Via::Ws, &Frame::from(proto::StatusRequest::default()), 7);
        assert_eq!(m.frames_in_of("publish"), 1);
        assert_eq!(m.frames_in_of("other"), 1);
        m.request_latency.observe(Duration::from_millis(3));
        let (buckets, sum, count) = m.request_latency.snapshot();
        assert_eq!(count, 1);
        assert!((sum - 0.003).abs() < 1e-9);
        assert!(buckets.contains(&(0.005, 1)));
        assert!(buckets.contains(&(0.002_5, 0)));
        let received = m.received();
        let row = |t: &str, k: &str| received.iter().find(|r| r.0 == t && r.1 == k).copied();
        assert_eq!(row("tcp", "publish"), Some(("tcp", "publish", 1, 10)));
        assert_eq!(row("ws", "other"), Some(("ws", "other", 1, 7)));
        assert_eq!(row("ws", "publish"), Some(("ws", "publish", 0, 0)));
        // Transports that carried nothing have no rows.
        assert_eq!(row("unix", "publish"), None);
        assert_eq!(received.len(), 2 * KINDS.len());
    }

    #[test]
    fn transports_round_trip_their_names() {
        for (i, via) in Via::ALL.into_iter().enumerate() {
            assert_eq!(via.index(), i);
            assert_eq!(Via::of(via.name()), via);
        }
        assert_eq!(Via::of("carrier pigeon"), Via::Memory);
        let m = Metrics::default();
        m.observe_delivery_delay(Via::Unix, Duration::from_micros(70));
        assert_eq!(m.delivery_delay(Via::Unix).count(), 1);
        assert_eq!(m.delivery_delay(Via::Tcp).count(), 0);
    }

    #[test]
    fn deliveries_are_counted_per_batch() {
        let m = Metrics::default();
        m.frame_out(Via::Tcp, "deliver", 10);
        m.delivers_out(Via::Tcp, 3, 30);
        m.delivers_out(Via::Tcp, 0, 0);
        let deliver = m.sent().into_iter().find(|k| k.1 == "deliver");
        assert_eq!(deliver, Some(("tcp", "deliver", 4, 40)));
    }
}
