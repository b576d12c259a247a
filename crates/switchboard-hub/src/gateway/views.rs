//! The router's view of the hub (`Command::Inspect`) and its JSON shapes,
//! shared by the API routes, the metrics and the dashboard.

use serde_json::{json, Value};
use switchboard_wire::proto;
use tokio::sync::oneshot;

use super::api::ApiError;
use super::{Gateway, ANSWER_TIMEOUT};
use crate::inbox::Command;
use crate::router::Inspection;

/// Asks the router for its current view (clients, topics, presence).
pub(super) async fn inspect(gw: &Gateway) -> Result<Inspection, ApiError> {
    let (tx, rx) = oneshot::channel();
    if gw.shared.inbox.send(Command::Inspect(tx)).await.is_err() {
        return Err(ApiError::shutting_down());
    }
    match tokio::time::timeout(ANSWER_TIMEOUT, rx).await {
        Ok(Ok(i)) => Ok(i),
        _ => Err(ApiError::shutting_down()),
    }
}

/// One registered client, as `/v1/clients`, presence events and the
/// dashboard show it.
pub(super) fn client_json(c: &proto::ClientInfo) -> Value {
    json!({
        "client_id": c.client_id,
        "transport": c.transport,
        "addr": c.addr,
        "connected_at_ms": c.connected_at_ms,
        "agent": c.agent,
    })
}

/// The hub's status and counters, as `/v1/status` and the dashboard show
/// them.
pub(super) fn status_json(i: &Inspection) -> Value {
    let s = &i.status;
    json!({
        "service": s.identity.as_ref().map(|id| id.service.clone()),
        "instance_id": s.identity.as_ref().map(|id| id.instance_id.clone()),
        "uptime_s": s.uptime_s,
        "clients": s.clients,
        "subscriptions": s.subscriptions,
        "msgs_in": s.msgs_in,
        "msgs_out": s.msgs_out,
        "bytes_in": s.bytes_in,
        "bytes_out": s.bytes_out,
        "dropped": s.dropped,
        "queue_depth": s.queue_depth,
        "pending_requests": s.pending_requests,
        "kv_keys": s.kv_keys,
        "counters": s.counters,
    })
}
