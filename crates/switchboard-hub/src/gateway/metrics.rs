//! `GET /metrics`: the router's view, the hub's counters
//! ([`Metrics`](crate::metrics::Metrics)) and the process's own figures in
//! the Prometheus text format (0.0.4), encoded by `prometheus-client`.
//!
//! The hot path keeps its plain atomics; a scrape reads them once into a
//! [`Scrape`] and hands that to a fresh registry as a collector, so the
//! library owns the format (names, `_total`, units, escaping) and no lock
//! is added per frame. The names are listed in `docs/OPERATIONS.md`
//! ("Metrics").

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::State;
use axum::http::{header, HeaderValue};
use axum::response::IntoResponse;
use axum::Extension;
use prometheus_client::encoding::{prometheus_text, DescriptorEncoder, NoLabelSet};
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::{Registry, Unit};

use super::api::{ApiError, ApiResult};
use super::views::inspect;
use super::Gateway;
use crate::metrics::Via;
use crate::router::admission::Identity;

/// A histogram's per-bucket counts, sum (seconds) and count.
type Histogram = (Vec<(f64, u64)>, f64, u64);

/// The transports a client may be registered on.
const TRANSPORTS: [&str; 7] = ["http", "memory", "tcp", "tls", "unix", "ws", "wss"];

/// `GET /metrics`: the figures of one scrape, in the Prometheus text format.
pub(super) async fn serve(
    State(gw): State<Arc<Gateway>>,
    Extension(identity): Extension<Identity>,
) -> ApiResult {
    gw.may_list(&identity)?;
    let i = inspect(&gw).await?;
    let s = &i.status;
    let counter = |k: &str| s.counters.get(k).copied().unwrap_or(0);
    let m = &gw.shared.stats.metrics;
    // Every transport has a row, 0 when none of its clients is registered.
    let mut clients: BTreeMap<String, u64> =
        TRANSPORTS.iter().map(|t| ((*t).to_owned(), 0)).collect();
    for c in &i.clients {
        *clients.entry(c.transport.clone()).or_default() += 1;
    }
    let scrape = Scrape {
        clients,
        gauges: vec![
            ("subscriptions", "subscriptions", s.subscriptions),
            (
                "topics",
                "distinct subscription patterns",
                i.topics.len() as u64,
            ),
            ("queue_depth", "frames queued to all clients", s.queue_depth),
            (
                "pending_requests",
                "requests awaiting a reply",
                s.pending_requests,
            ),
            ("kv_keys", "live keys", s.kv_keys),
            (
                "parked_messages",
                "messages waiting for room in a full queue",
                counter("parked_now"),
            ),
            (
                "http_polls_held",
                "long polls held by the gateway",
                m.http_polls_held.load(Ordering::Relaxed),
            ),
        ],
        counters: vec![
            (
                "dropped_deliveries",
                "pub/sub deliveries dropped for slow consumers",
                s.dropped,
            ),
            (
                "undeliverable",
                "messages to unknown clients",
                counter("undeliverable"),
            ),
            (
                "requests_timed_out",
                "requests that timed out",
                counter("requests_timed_out"),
            ),
            (
                "requests_cancelled",
                "requests their requester cancelled",
                counter("requests_cancelled"),
            ),
            (
                "no_responders",
                "service requests that found no responder",
                counter("no_responders"),
            ),
            (
                "queue_full",
                "messages refused with QUEUE_FULL",
                counter("queue_full"),
            ),
            (
                "not_listening",
                "direct messages and requests refused because the target does not listen",
                counter("not_listening"),
            ),
            (
                "slow_consumer_disconnects",
                "clients disconnected for not reading",
                counter("slow_consumer_disconnects"),
            ),
            (
                "standby_resyncs",
                "fresh snapshots sent to the standby because the change log overflowed",
                counter("standby_resyncs"),
            ),
        ],
        received: m.received(),
        sent: m.sent(),
        http_responses: m.http_responses_by_class(),
        request_latency: m.request_latency.snapshot(),
        http_mailbox_delay: m.http_mailbox_delay.snapshot(),
        delivery_delay: Via::ALL
            .iter()
            .map(|v| (v.name(), m.delivery_delay(*v).snapshot()))
            .filter(|(_, (_, _, count))| *count > 0)
            .collect(),
        process: Process::read(s.uptime_s),
        federation: Federation::read(&s.counters),
    };
    let mut registry = Registry::default();
    registry.register_collector(Box::new(scrape));
    let mut text = String::with_capacity(8 * 1024);
    prometheus_text::encode(&mut text, &registry).map_err(|_| {
        ApiError::new(
            axum::http::StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "the metrics could not be encoded",
        )
    })?;
    Ok((
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static(prometheus_text::CONTENT_TYPE),
        )],
        Body::from(text),
    )
        .into_response())
}

/// One scrape's figures, read once and encoded by the registry.
#[derive(Debug)]
struct Scrape {
    /// Registered clients by transport.
    clients: BTreeMap<String, u64>,
    /// Unlabelled gauges: name without the `switchboard_` prefix, help,
    /// value.
    gauges: Vec<(&'static str, &'static str, u64)>,
    /// Unlabelled counters: name without prefix and `_total`, help, value.
    counters: Vec<(&'static str, &'static str, u64)>,
    /// `(transport, kind, frames, bytes)` received.
    received: Vec<(&'static str, &'static str, u64, u64)>,
    /// `(transport, kind, frames, bytes)` sent.
    sent: Vec<(&'static str, &'static str, u64, u64)>,
    /// Gateway responses by status class.
    http_responses: [(&'static str, u64); 5],
    /// Request latency: per-bucket counts, sum (seconds), count.
    request_latency: (Vec<(f64, u64)>, f64, u64),
    /// HTTP mailbox delay, the same way.
    http_mailbox_delay: (Vec<(f64, u64)>, f64, u64),
    /// Delivery queue delay of each transport with a sample, the same way.
    delivery_delay: Vec<(&'static str, Histogram)>,
    /// The process's own figures.
    process: Process,
    /// The federation's, when the hub is federated.
    federation: Option<Federation>,
}

/// The federation's figures (`switchboard_federation_*`), from the
/// status counters `federation_*` (see
/// [`RemoteStatus::counters`](crate::router::remote::RemoteStatus::counters)).
#[derive(Debug, Default)]
struct Federation {
    /// `(server, cluster)` of `switchboard_federation_info`.
    info: (String, String),
    /// Unlabelled gauges: name without `switchboard_federation_`, help,
    /// value.
    gauges: Vec<(&'static str, &'static str, u64)>,
    /// The round trip to the NATS server, seconds.
    rtt: f64,
    /// Seconds since this hub's last heartbeat came back.
    lease_age: Option<f64>,
    /// Counters: name without prefix and `_total`, help, value.
    counters: Vec<(&'static str, &'static str, u64)>,
}

impl Federation {
    /// The figures, or `None` when the status has no `federation_connected`
    /// (the hub is not federated).
    fn read(c: &BTreeMap<String, u64>) -> Option<Federation> {
        let connected = *c.get("federation_connected")?;
        let n = |k: &str| c.get(&format!("federation_{k}")).copied().unwrap_or(0);
        let named = |prefix: &str| {
            c.keys()
                .find_map(|k| k.strip_prefix(prefix))
                .unwrap_or("")
                .to_owned()
        };
        Some(Federation {
            info: (named("federation_server:"), named("federation_cluster:")),
            gauges: vec![
                (
                    "connected",
                    "1 while the hub is connected to a NATS server",
                    connected,
                ),
                (
                    "members",
                    "other hubs of the federation heard from within their lease",
                    n("members"),
                ),
                (
                    "patterns",
                    "NATS subscriptions held for publish patterns",
                    n("patterns"),
                ),
                (
                    "fenced",
                    "1 once a standby took this hub's name over (a higher epoch): the hub no longer serves in the federation",
                    n("fenced"),
                ),
            ],
            rtt: n("rtt_us") as f64 / 1e6,
            lease_age: c.get("federation_lease_age_ms").map(|ms| *ms as f64 / 1e3),
            counters: vec![
                ("sent", "messages published to other hubs", n("sent")),
                (
                    "received",
                    "messages from other hubs handed to the router",
                    n("received"),
                ),
                (
                    "dropped",
                    "messages towards NATS dropped (queue full or publish failed)",
                    n("dropped"),
                ),
                (
                    "malformed",
                    "messages from NATS dropped: not decodable or of a kind not carried",
                    n("malformed"),
                ),
                (
                    "oversized",
                    "messages from NATS dropped: larger than the limit",
                    n("oversized"),
                ),
                (
                    "foreign",
                    "messages from NATS dropped: origin not a live member",
                    n("foreign"),
                ),
                (
                    "duplicates",
                    "second copies of a publish dropped",
                    n("duplicates"),
                ),
                (
                    "stale",
                    "messages from NATS dropped: their origin's epoch is older than the newest seen (a fenced hub)",
                    n("stale"),
                ),
                (
                    "kv_changes",
                    "changes of the shared key/value store applied from the cluster",
                    n("kv_changes"),
                ),
                (
                    "lossless_failed",
                    "confirmed messages to other hubs not stored in the federation's stream (their senders told QUEUE_FULL, TIMEOUT or LIMIT_EXCEEDED)",
                    n("lossless_failed"),
                ),
                (
                    "lossless_queue_full",
                    "confirmed messages to other hubs refused with QUEUE_FULL (the federation's stream or the queue towards it full)",
                    n("lossless_queue_full"),
                ),
                (
                    "kv_uncached",
                    "changes of keys beyond kv_max_keys passed to watchers but not cached",
                    n("kv_uncached"),
                ),
                (
                    "nats_slow_consumer",
                    "messages from NATS the NATS client dropped because one of this hub's subscriptions fell behind (from its slow-consumer events: a lower bound)",
                    n("nats_slow_consumer"),
                ),
                (
                    "watch_stalled",
                    "watches of the federation's buckets (ids, heartbeats, key/value) found silent while their bucket moved on, and reopened (each also logged as a warning)",
                    n("watch_stalled"),
                ),
            ],
        })
    }

    fn encode(&self, enc: &mut DescriptorEncoder) -> std::fmt::Result {
        let name = |n: &str| format!("switchboard_federation_{n}");
        let info_name = name("info");
        let mut info = enc.encode_descriptor(
            &info_name,
            "the NATS server the hub is connected to and its cluster; always 1",
            None,
            MetricType::Gauge,
        )?;
        info.encode_family(&[
            ("server", self.info.0.as_str()),
            ("cluster", self.info.1.as_str()),
        ])?
        .encode_gauge(&1u64)?;
        for (n, help, v) in &self.gauges {
            gauge(enc, &name(n), help, None, *v)?;
        }
        gauge(
            enc,
            &name("rtt"),
            "round trip to the NATS server, last measured",
            Some(&Unit::Seconds),
            self.rtt,
        )?;
        if let Some(age) = self.lease_age {
            gauge(
                enc,
                &name("lease_age"),
                "time since this hub's own heartbeat last came back from the cluster",
                Some(&Unit::Seconds),
                age,
            )?;
        }
        for (n, help, v) in &self.counters {
            counter(enc, &name(n), help, None, *v)?;
        }
        Ok(())
    }
}

/// The process's figures (`process_*`), from `/proc/self` on Linux.
#[derive(Debug, Default)]
struct Process {
    /// Unix time the process started, seconds.
    start_time: f64,
    /// User plus system CPU time, seconds.
    cpu_seconds: Option<f64>,
    /// Resident set size, bytes.
    resident_bytes: Option<u64>,
    /// Virtual memory size, bytes.
    virtual_bytes: Option<u64>,
    /// Open file descriptors.
    open_fds: Option<u64>,
}

impl Process {
    /// Reads `/proc/self` where there is one; elsewhere only the start time,
    /// taken as the hub's start (`uptime_s` ago).
    fn read(uptime_s: u64) -> Process {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs_f64())
            .unwrap_or(0.0);
        let mut p = Process {
            start_time: now - uptime_s as f64,
            ..Process::default()
        };
        #[cfg(target_os = "linux")]
        p.read_proc();
        p
    }

    /// Fills in the figures `/proc` has (each left out when unreadable).
    #[cfg(target_os = "linux")]
    fn read_proc(&mut self) {
        // USER_HZ, the unit of the times in /proc/self/stat, is 100 on
        // every Linux architecture (the kernel's ABI fixes it).
        const TICKS: f64 = 100.0;
        if let Ok(stat) = std::fs::read_to_string("/proc/self/stat") {
            // Fields after the command name, which is in parentheses and may
            // itself hold spaces: state is field 3, utime 14, stime 15,
            // starttime 22.
            if let Some(rest) = stat.rfind(')').map(|i| &stat[i + 2..]) {
                let f: Vec<&str> = rest.split_whitespace().collect();
                let num = |field: usize| f.get(field - 3).and_then(|v| v.parse::<u64>().ok());
                if let (Some(u), Some(s)) = (num(14), num(15)) {
                    self.cpu_seconds = Some((u + s) as f64 / TICKS);
                }
                let boot = std::fs::read_to_string("/proc/stat").ok().and_then(|s| {
                    s.lines()
                        .find_map(|l| l.strip_prefix("btime "))
                        .and_then(|v| v.trim().parse::<u64>().ok())
                });
                if let (Some(boot), Some(start)) = (boot, num(22)) {
                    self.start_time = boot as f64 + start as f64 / TICKS;
                }
            }
        }
        // Memory from /proc/self/status in kB, which needs no page size.
        if let Ok(status) = std::fs::read_to_string("/proc/self/status") {
            let kb = |key: &str| {
                status.lines().find_map(|l| {
                    let v = l.strip_prefix(key)?.trim().strip_suffix("kB")?;
                    v.trim().parse::<u64>().ok().map(|k| k * 1024)
                })
            };
            self.resident_bytes = kb("VmRSS:");
            self.virtual_bytes = kb("VmSize:");
        }
        if let Ok(dir) = std::fs::read_dir("/proc/self/fd") {
            self.open_fds = Some(dir.count() as u64);
        }
    }
}

/// Writes one unlabelled gauge.
fn gauge<V: prometheus_client::encoding::EncodeGaugeValue>(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    unit: Option<&Unit>,
    v: V,
) -> std::fmt::Result {
    enc.encode_descriptor(name, help, unit, MetricType::Gauge)?
        .encode_gauge(&v)
}

/// Writes one unlabelled counter (the encoder adds `_total`).
fn counter<V: prometheus_client::encoding::EncodeCounterValue>(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    unit: Option<&Unit>,
    v: V,
) -> std::fmt::Result {
    enc.encode_descriptor(name, help, unit, MetricType::Counter)?
        .encode_counter::<NoLabelSet, V, u64>(&v, None)
}

/// Writes a counter family labelled by transport and frame kind.
fn transport_kind_family<'a>(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    unit: Option<&Unit>,
    rows: impl Iterator<Item = (&'a str, &'a str, u64)>,
) -> std::fmt::Result {
    let mut m = enc.encode_descriptor(name, help, unit, MetricType::Counter)?;
    for (transport, kind, n) in rows {
        m.encode_family(&[("transport", transport), ("kind", kind)])?
            .encode_counter::<NoLabelSet, u64, u64>(&n, None)?;
    }
    Ok(())
}

/// Writes a counter family with one label (`label`) per row.
fn counter_family<'a>(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    unit: Option<&Unit>,
    label: &str,
    rows: impl Iterator<Item = (&'a str, u64)>,
) -> std::fmt::Result {
    let mut m = enc.encode_descriptor(name, help, unit, MetricType::Counter)?;
    for (value, n) in rows {
        m.encode_family(&[(label, value)])?
            .encode_counter::<NoLabelSet, u64, u64>(&n, None)?;
    }
    Ok(())
}

impl prometheus_client::collector::Collector for Scrape {
    fn encode(&self, mut enc: DescriptorEncoder) -> std::fmt::Result {
        let name = |n: &str| format!("switchboard_{n}");
        let info_name = name("build_info");
        let mut info = enc.encode_descriptor(
            &info_name,
            "the hub's version; always 1",
            None,
            MetricType::Gauge,
        )?;
        info.encode_family(&[("version", env!("CARGO_PKG_VERSION"))])?
            .encode_gauge(&1u64)?;
        let clients_name = name("clients");
        let mut clients = enc.encode_descriptor(
            &clients_name,
            "registered clients by transport",
            None,
            MetricType::Gauge,
        )?;
        for (transport, n) in &self.clients {
            clients
                .encode_family(&[("transport", transport.as_str())])?
                .encode_gauge(n)?;
        }
        for (n, help, v) in &self.gauges {
            gauge(&mut enc, &name(n), help, None, *v)?;
        }
        for (n, help, v) in &self.counters {
            counter(&mut enc, &name(n), help, None, *v)?;
        }
        if let Some(f) = &self.federation {
            f.encode(&mut enc)?;
        }
        for (dir, rows) in [("received", &self.received), ("sent", &self.sent)] {
            transport_kind_family(
                &mut enc,
                &name(&format!("frames_{dir}")),
                &format!("frames {dir} by transport and frame kind"),
                None,
                rows.iter().map(|(t, k, f, _)| (*t, *k, *f)),
            )?;
            transport_kind_family(
                &mut enc,
                &name(dir),
                &format!(
                    "bytes of frames {dir} (with their length prefix) by transport and frame kind"
                ),
                Some(&Unit::Bytes),
                rows.iter().map(|(t, k, _, b)| (*t, *k, *b)),
            )?;
        }
        counter_family(
            &mut enc,
            &name("http_responses"),
            "gateway HTTP responses by status class",
            None,
            "class",
            self.http_responses.iter().copied(),
        )?;
        for (n, help, (buckets, sum, count)) in [
            (
                "request_latency",
                "time from a request reaching the hub to its reply reaching the hub",
                &self.request_latency,
            ),
            (
                "http_mailbox_delay",
                "time a message waits in an HTTP client's mailbox until a poll first returns it",
                &self.http_mailbox_delay,
            ),
        ] {
            enc.encode_descriptor(&name(n), help, Some(&Unit::Seconds), MetricType::Histogram)?
                .encode_histogram::<NoLabelSet>(*sum, *count, buckets, None)?;
        }
        let delay_name = name("delivery_queue_delay");
        let mut delay = enc.encode_descriptor(
            &delay_name,
            "time a sampled frame waits in a client's queue from being queued to being written, by transport",
            Some(&Unit::Seconds),
            MetricType::Histogram,
        )?;
        for (transport, (buckets, sum, count)) in &self.delivery_delay {
            delay
                .encode_family(&[("transport", *transport)])?
                .encode_histogram::<NoLabelSet>(*sum, *count, buckets, None)?;
        }
        let p = &self.process;
        gauge(
            &mut enc,
            "process_start_time",
            "start time of the process since the Unix epoch",
            Some(&Unit::Seconds),
            p.start_time,
        )?;
        if let Some(v) = p.cpu_seconds {
            counter(
                &mut enc,
                "process_cpu",
                "user and system CPU time spent",
                Some(&Unit::Seconds),
                v,
            )?;
        }
        if let Some(v) = p.resident_bytes {
            gauge(
                &mut enc,
                "process_resident_memory",
                "resident memory size",
                Some(&Unit::Bytes),
                v,
            )?;
        }
        if let Some(v) = p.virtual_bytes {
            gauge(
                &mut enc,
                "process_virtual_memory",
                "virtual memory size",
                Some(&Unit::Bytes),
                v,
            )?;
        }
        if let Some(v) = p.open_fds {
            gauge(
                &mut enc,
                "process_open_fds",
                "open file descriptors",
                None,
                v,
            )?;
        }
        Ok(())
    }
}
