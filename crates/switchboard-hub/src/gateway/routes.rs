//! The gateway's routes: which handler serves which path behind which
//! guard, and the handlers of the HTTP API.

use crate::tls::HttpPeer;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{ConnectInfo, DefaultBodyLimit, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::middleware;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Router};
use serde_json::{json, Value};
use switchboard_wire::{proto, Frame};

use super::answers::{as_json, Left, Sent};
use super::api::{clipped, ok_json, parse, ApiError, ApiResult};
use super::auth::{guard, require_token};
use super::calls::{
    ApiCall, BroadcastReq, KvDeleteReq, KvGetReq, KvSetReq, KvUnwatchReq, KvWatchReq, LeaveReq,
    ListenReq, PublishReq, ReplyReq, RequestReq, SendReq, SubscribeReq, UnsubscribeReq,
};
use super::views::{client_json, inspect, status_json};
use super::{dashboard, metrics, ws, Gateway};
use crate::router::admission::Identity;

/// Every route, `(method, path)`, as the OpenAPI document must list them
/// (a test holds them equal).
pub(super) const ROUTES: &[(&str, &str)] = &[
    ("get", "/"),
    ("get", "/dashboard.js"),
    ("get", "/dashboard.css"),
    ("get", "/healthz"),
    ("get", "/openapi.json"),
    ("get", "/metrics"),
    ("get", "/v1/status"),
    ("get", "/v1/clients"),
    ("get", "/v1/ws"),
    ("get", "/v1/feed"),
    ("get", "/v1/topics"),
    ("post", "/v1/listen"),
    ("post", "/v1/send"),
    ("post", "/v1/request"),
    ("post", "/v1/reply"),
    ("post", "/v1/broadcast"),
    ("post", "/v1/publish"),
    ("post", "/v1/subscribe"),
    ("post", "/v1/unsubscribe"),
    ("post", "/v1/kv/get"),
    ("post", "/v1/kv/set"),
    ("post", "/v1/kv/delete"),
    ("post", "/v1/kv/watch"),
    ("post", "/v1/kv/unwatch"),
    ("post", "/v1/leave"),
];

/// The whole application: the API behind the bearer token, the pages,
/// liveness, the OpenAPI document and the WebSocket upgrade without it,
/// everything behind the loopback guard and the body limit.
pub(super) fn router(gw: Arc<Gateway>) -> Router {
    let api = Router::new()
        .route("/metrics", get(metrics::serve))
        .route("/v1/status", get(status))
        .route("/v1/clients", get(clients))
        .route("/v1/listen", post(listen))
        .route("/v1/send", post(call::<SendReq>))
        .route("/v1/request", post(call::<RequestReq>))
        .route("/v1/reply", post(reply))
        .route("/v1/broadcast", post(call::<BroadcastReq>))
        .route("/v1/publish", post(call::<PublishReq>))
        .route("/v1/subscribe", post(call::<SubscribeReq>))
        .route("/v1/unsubscribe", post(call::<UnsubscribeReq>))
        .route("/v1/kv/get", post(call::<KvGetReq>))
        .route("/v1/kv/set", post(call::<KvSetReq>))
        .route("/v1/kv/delete", post(call::<KvDeleteReq>))
        .route("/v1/kv/watch", post(call::<KvWatchReq>))
        .route("/v1/kv/unwatch", post(call::<KvUnwatchReq>))
        .route("/v1/leave", post(leave))
        .route("/v1/feed", get(dashboard::feed))
        .route("/v1/topics", get(dashboard::topics))
        .route_layer(middleware::from_fn_with_state(gw.clone(), require_token));
    Router::new()
        .route("/", get(dashboard::page))
        .route("/dashboard.js", get(dashboard::script))
        .route("/dashboard.css", get(dashboard::style))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/openapi.json", get(openapi))
        .route("/v1/ws", get(ws::upgrade))
        .merge(api)
        .layer(DefaultBodyLimit::max(gw.cfg.max_body))
        .layer(middleware::from_fn_with_state(gw.clone(), guard))
        .with_state(gw)
}

async fn openapi() -> Response {
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )],
        super::openapi::document(),
    )
        .into_response()
}

type Peer = ConnectInfo<HttpPeer>;

/// Every call of the common shape ([`ApiCall`]): register the client,
/// send one frame, wait for its answer, answer JSON.
async fn call<Req: ApiCall>(
    State(gw): State<Arc<Gateway>>,
    ConnectInfo(HttpPeer { addr: peer, .. }): Peer,
    Extension(identity): Extension<Identity>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult {
    let mut req: Req = parse(body)?;
    req.check()?;
    let client = gw.client(req.client(), peer, &headers, identity).await?;
    let id = client.next_id();
    let wait = req.wait(&gw.cfg, &gw.shared.limits);
    let frame = req.into_frame(id, &client.id, &gw.cfg)?;
    let answer = client.ask(&gw, id, frame, wait).await?;
    ok_json(Req::answer(id, answer)?)
}

/// `POST /v1/listen`: a long poll of the client's mailbox.
async fn listen(
    State(gw): State<Arc<Gateway>>,
    ConnectInfo(HttpPeer { addr: peer, .. }): Peer,
    Extension(identity): Extension<Identity>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult {
    let req: ListenReq = parse(body)?;
    let client = gw.client(&req.client, peer, &headers, identity).await?;
    let (wait, max) = req.bounds(&gw.cfg);
    ok_json(client.listen(&gw, req.ack, wait, max).await?)
}

/// `POST /v1/reply`: replies have no answer; a ping behind the reply tells
/// when the router took it.
async fn reply(
    State(gw): State<Arc<Gateway>>,
    ConnectInfo(HttpPeer { addr: peer, .. }): Peer,
    Extension(identity): Extension<Identity>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult {
    let req: ReplyReq = parse(body)?;
    let client = gw.client(&req.client, peer, &headers, identity).await?;
    let remembered = client.answering(req.id, req.to.as_deref());
    let frame = req.frame(&client.id, remembered)?;
    let nonce = client.next_id();
    client
        .post(&gw, vec![frame, Frame::from(proto::Ping { nonce })])
        .await?;
    ok_json(as_json(Sent { sent: true }))
}

/// `POST /v1/leave`: deregisters a client now.
async fn leave(
    State(gw): State<Arc<Gateway>>,
    Extension(identity): Extension<Identity>,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult {
    let req: LeaveReq = parse(body)?;
    if !gw.leave(&req.client, &identity).await? {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("no HTTP client '{}' is registered", clipped(&req.client)),
        ));
    }
    ok_json(as_json(Left { left: true }))
}

/// `GET /v1/status`.
async fn status(
    State(gw): State<Arc<Gateway>>,
    Extension(identity): Extension<Identity>,
) -> ApiResult {
    gw.may_list(&identity)?;
    let i = inspect(&gw).await?;
    ok_json(status_json(&i))
}

/// `GET /v1/clients`.
async fn clients(
    State(gw): State<Arc<Gateway>>,
    Extension(identity): Extension<Identity>,
) -> ApiResult {
    gw.may_list(&identity)?;
    let i = inspect(&gw).await?;
    let list: Vec<Value> = i.clients.iter().map(client_json).collect();
    ok_json(json!({ "clients": list }))
}
