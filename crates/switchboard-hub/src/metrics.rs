//! Counters by frame kind and a request latency histogram, kept in atomics
//! on the hot path and read by the gateway's `/metrics` (which renders them
//! with `prometheus-client`).

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
    frames_in: PerKind,
    frames_out: PerKind,
    /// Time from a request reaching the hub to its reply reaching the hub.
    pub request_latency: Histogram,
    /// Time a message waits in an HTTP client's mailbox until a poll first
    /// returns it.
    pub http_mailbox_delay: Histogram,
    /// HTTP gateway requests answered, by outcome class.
    http_responses: [AtomicU64; 5],
    /// Long polls currently held.
    pub http_polls_held: AtomicU64,
}

impl Metrics {
    /// Counts one frame received from a client (`bytes` with its prefix).
    pub fn frame_in(&self, frame: &Frame, bytes: usize) {
        self.frames_in.add(frame.kind_name(), bytes);
    }

    /// Counts one frame of kind `kind` sent to a client.
    pub fn frame_out(&self, kind: &str, bytes: usize) {
        self.frames_out.add(kind, bytes);
    }

    /// Counts `msgs` pub/sub deliveries of `bytes` bytes in all sent to a
    /// client (a writer adds up a whole batch).
    pub fn delivers_out(&self, msgs: u64, bytes: u64) {
        if msgs > 0 {
            self.frames_out.add_at(DELIVER, msgs, bytes);
        }
    }

    /// Counts an HTTP response by its status code.
    pub fn http_response(&self, status: u16) {
        let class = usize::from(status / 100).clamp(1, 5) - 1;
        self.http_responses[class].fetch_add(1, Ordering::Relaxed);
    }

    /// Frames received of `kind` so far.
    pub fn frames_in_of(&self, kind: &str) -> u64 {
        self.frames_in.msgs[kind_index(kind)].load(Ordering::Relaxed)
    }

    /// Frames and bytes received, by frame kind: `(kind, frames, bytes)`.
    pub fn received_by_kind(&self) -> Vec<(&'static str, u64, u64)> {
        self.frames_in.read()
    }

    /// Frames and bytes sent, by frame kind: `(kind, frames, bytes)`.
    pub fn sent_by_kind(&self) -> Vec<(&'static str, u64, u64)> {
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
        m.frame_in(&Frame::from(proto::Publish::default()), 10);
        m.frame_in(&Frame::from(proto::StatusRequest::default()), 7);
        assert_eq!(m.frames_in_of("publish"), 1);
        assert_eq!(m.frames_in_of("other"), 1);
        m.request_latency.observe(Duration::from_millis(3));
        let (buckets, sum, count) = m.request_latency.snapshot();
        assert_eq!(count, 1);
        assert!((sum - 0.003).abs() < 1e-9);
        assert!(buckets.contains(&(0.005, 1)));
        assert!(buckets.contains(&(0.002_5, 0)));
        let publish = m.received_by_kind().into_iter().find(|k| k.0 == "publish");
        assert_eq!(publish, Some(("publish", 1, 10)));
    }

    #[test]
    fn deliveries_are_counted_per_batch() {
        let m = Metrics::default();
        m.frame_out("deliver", 10);
        m.delivers_out(3, 30);
        m.delivers_out(0, 0);
        let deliver = m.sent_by_kind().into_iter().find(|k| k.0 == "deliver");
        assert_eq!(deliver, Some(("deliver", 4, 40)));
    }
}
