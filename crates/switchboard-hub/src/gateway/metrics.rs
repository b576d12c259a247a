//! `GET /metrics`: the router's view and the hub's counters
//! ([`Metrics`](crate::metrics::Metrics)) in the Prometheus text format.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::State;
use axum::http::{header, HeaderValue};
use axum::response::IntoResponse;
use axum::Extension;

use super::api::ApiResult;
use super::views::inspect;
use super::Gateway;
use crate::router::admission::Identity;

/// `GET /metrics`: the router's view and these counters, in the Prometheus
/// text format.
pub(super) async fn serve(
    State(gw): State<Arc<Gateway>>,
    Extension(identity): Extension<Identity>,
) -> ApiResult {
    gw.may_list(&identity)?;
    let i = inspect(&gw).await?;
    let s = &i.status;
    let counter = |k: &str| s.counters.get(k).copied().unwrap_or(0);
    let by_transport = |t: &str| i.clients.iter().filter(|c| c.transport == t).count() as u64;
    let gauges = [
        ("switchboard_clients", "registered clients", s.clients),
        (
            "switchboard_clients_tcp",
            "registered clients on native TCP",
            by_transport("tcp"),
        ),
        (
            "switchboard_clients_http",
            "registered HTTP long-poll clients",
            by_transport("http"),
        ),
        (
            "switchboard_clients_ws",
            "registered WebSocket clients",
            by_transport("ws"),
        ),
        (
            "switchboard_subscriptions",
            "subscriptions",
            s.subscriptions,
        ),
        (
            "switchboard_topics",
            "distinct subscription patterns",
            i.topics.len() as u64,
        ),
        (
            "switchboard_queue_depth",
            "frames queued to all clients",
            s.queue_depth,
        ),
        (
            "switchboard_pending_requests",
            "requests awaiting a reply",
            s.pending_requests,
        ),
        ("switchboard_kv_keys", "live keys", s.kv_keys),
        (
            "switchboard_parked",
            "messages waiting for room in a full queue",
            counter("parked_now"),
        ),
        (
            "switchboard_http_polls_held",
            "long polls held by the gateway",
            gw.shared
                .stats
                .metrics
                .http_polls_held
                .load(Ordering::Relaxed),
        ),
        (
            "switchboard_uptime_seconds",
            "seconds since the hub started",
            s.uptime_s,
        ),
    ];
    let counters = [
        (
            "switchboard_messages_received_total",
            "frames received from clients",
            s.msgs_in,
        ),
        (
            "switchboard_messages_sent_total",
            "frames sent to clients",
            s.msgs_out,
        ),
        (
            "switchboard_received_bytes_total",
            "bytes received from clients",
            s.bytes_in,
        ),
        (
            "switchboard_sent_bytes_total",
            "bytes sent to clients",
            s.bytes_out,
        ),
        (
            "switchboard_dropped_total",
            "pub/sub deliveries dropped for slow consumers",
            s.dropped,
        ),
        (
            "switchboard_undeliverable_total",
            "messages to unknown clients",
            counter("undeliverable"),
        ),
        (
            "switchboard_requests_timed_out_total",
            "requests that timed out",
            counter("requests_timed_out"),
        ),
        (
            "switchboard_queue_full_total",
            "messages refused with QUEUE_FULL",
            counter("queue_full"),
        ),
        (
            "switchboard_slow_consumer_disconnects_total",
            "clients disconnected for not reading",
            counter("slow_consumer_disconnects"),
        ),
        (
            "switchboard_not_listening_total",
            "direct messages and requests refused because the target does not listen",
            counter("not_listening"),
        ),
        (
            "switchboard_no_responders_total",
            "service requests that found no responder",
            counter("no_responders"),
        ),
        (
            "switchboard_requests_cancelled_total",
            "requests their requester cancelled",
            counter("requests_cancelled"),
        ),
    ];
    let text = gw.shared.stats.metrics.render(&gauges, &counters);
    Ok((
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
        )],
        Body::from(text),
    )
        .into_response())
}
