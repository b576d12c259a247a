//! The dashboard page (assets compiled into the binary) and the JSON feed.
//!
//! The page's script is a client of the hub: it is generated from
//! `clients/typescript/dashboard/dashboard.ts` (the TypeScript client over
//! `/v1/ws`, authenticated by the native handshake with the shared token
//! from the URL fragment or a password field) by `npm run dashboard`, and
//! checked in; `cargo xtask codegen --check` finds a stale one. The page no
//! longer reads `/v1/feed`, which stays for other consumers.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::State;
use axum::http::{header, HeaderValue};
use axum::response::{IntoResponse, Response};
use axum::Extension;
use serde_json::{json, Value};

use super::views::{client_json, inspect, status_json};
use super::Gateway;
use crate::router::admission::Identity;
use crate::router::Inspection;

const PAGE: &str = include_str!("../../assets/dashboard.html");
const SCRIPT: &str = include_str!("../../assets/dashboard.js");
const STYLE: &str = include_str!("../../assets/dashboard.css");

/// How often the feed sends a fresh view.
const FEED_EVERY: Duration = Duration::from_millis(500);

fn asset(body: &'static str, mime: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, HeaderValue::from_static(mime)),
            (header::CACHE_CONTROL, HeaderValue::from_static("no-cache")),
            (
                header::CONTENT_SECURITY_POLICY,
                HeaderValue::from_static(
                    "default-src 'self'; connect-src 'self'; img-src 'self' data:; frame-ancestors 'none'",
                ),
            ),
        ],
        body,
    )
        .into_response()
}

/// `GET /`.
pub(super) async fn page() -> Response {
    asset(PAGE, "text/html; charset=utf-8")
}

/// `GET /dashboard.js`.
pub(super) async fn script() -> Response {
    asset(SCRIPT, "text/javascript; charset=utf-8")
}

/// `GET /dashboard.css`.
pub(super) async fn style() -> Response {
    asset(STYLE, "text/css; charset=utf-8")
}

/// The subscribed patterns with their subscriber counts, as JSON.
fn topics_json(i: &Inspection) -> Vec<Value> {
    i.topics
        .iter()
        .map(|(pattern, n)| json!({ "pattern": pattern, "subscribers": n }))
        .collect()
}

/// `GET /v1/topics`: the subscribed patterns with their subscriber counts
/// (the native protocol has no frame for them; the page reads them here).
pub(super) async fn topics(
    State(gw): State<Arc<Gateway>>,
    Extension(identity): Extension<Identity>,
) -> Response {
    if let Err(e) = gw.may_list(&identity) {
        return e.into_response();
    }
    match inspect(&gw).await {
        Ok(i) => axum::Json(json!({ "topics": topics_json(&i) })).into_response(),
        Err(e) => e.into_response(),
    }
}

/// The dashboard's view of the hub, as JSON.
fn view_json(i: &Inspection) -> Value {
    let clients: Vec<Value> = i.clients.iter().map(client_json).collect();
    let topics = topics_json(i);
    let presence: Vec<Value> = i
        .presence
        .iter()
        .map(|p| {
            json!({
                "seq": p.seq,
                "event": if p.joined { "joined" } else { "left" },
                "client": client_json(&p.client),
                "reason": p.reason,
            })
        })
        .collect();
    json!({
        "status": status_json(i),
        "clients": clients,
        "topics": topics,
        "presence": presence,
        "time_ms": switchboard_discovery::now_ms(),
    })
}

/// `GET /v1/feed`: a WebSocket sending the view as JSON text twice a second.
pub(super) async fn feed(
    State(gw): State<Arc<Gateway>>,
    Extension(identity): Extension<Identity>,
    ws: WebSocketUpgrade,
) -> Response {
    if let Err(e) = gw.may_list(&identity) {
        return e.into_response();
    }
    ws.max_message_size(4096)
        .on_upgrade(move |socket| run_feed(gw, socket))
        .into_response()
}

async fn run_feed(gw: Arc<Gateway>, mut socket: WebSocket) {
    let mut tick = tokio::time::interval(FEED_EVERY);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            msg = socket.recv() => match msg {
                Some(Ok(Message::Close(_))) | Some(Err(_)) | None => return,
                Some(Ok(_)) => continue,
            },
            _ = gw.shared.shutdown.cancelled() => {
                let _ = socket.send(Message::Close(None)).await;
                return;
            }
        }
        let Ok(view) = inspect(&gw).await else {
            return;
        };
        let text = view_json(&view).to_string();
        if socket.send(Message::Text(text.into())).await.is_err() {
            return;
        }
    }
}
