//! HTTP routes, authentication, and the virtual connections of HTTP clients.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::{Body, Bytes};
use axum::extract::rejection::BytesRejection;
use axum::extract::{ConnectInfo, DefaultBodyLimit, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use base64::Engine as _;
use parking_lot::Mutex;
use serde::Deserialize;
use serde_json::{json, Value};
use switchboard_wire::proto::{self, frame::Kind};
use switchboard_wire::{check_headers, ErrorCode, Frame, FrameExt};
use tokio::sync::{oneshot, Notify, OnceCell};
use tokio_util::sync::CancellationToken;

use super::HttpConfig;
use crate::config::HubError;
use crate::inbox::Command;
use crate::outbox::{Outbox, Taken};
use crate::router::{Input, Inspection};
use crate::shared::Shared;
use crate::ConnId;
use switchboard_wire::validate_client_id;

/// Every route, `(method, path)`, as the OpenAPI document must list them.
pub(crate) const ROUTES: &[(&str, &str)] = &[
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
    ("post", "/v1/leave"),
];

/// How long a call other than a request waits for the router's answer.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(10);

/// Default timeout of a request made over HTTP.
const DEFAULT_REQUEST_TIMEOUT_MS: u64 = 30_000;

/// Most messages one poll returns by default.
const DEFAULT_POLL_MAX: usize = 100;

/// Requests received by one HTTP client whose sender is remembered for a
/// reply without `to`.
const MAX_REMEMBERED_REQUESTS: usize = 10_000;

/// WebSocket connections in the handshake at once (each may buffer one
/// message of up to `max_frame` bytes before authentication).
const MAX_WS_HANDSHAKES: usize = 64;

/// How often idle HTTP clients are looked for.
const REAP_EVERY: Duration = Duration::from_millis(500);

/// The gateway's shared state.
pub(crate) struct Gateway {
    pub shared: Arc<Shared>,
    pub cfg: HttpConfig,
    token: String,
    loopback: bool,
    clients: Mutex<HashMap<String, Arc<HttpClient>>>,
    polls: AtomicUsize,
    /// WebSocket connections still in the handshake.
    pub ws_handshakes: Arc<tokio::sync::Semaphore>,
}

/// One HTTP client: a virtual connection.
struct HttpClient {
    id: String,
    conn: ConnId,
    outbox: Arc<Outbox>,
    registered: OnceCell<Result<(), ApiError>>,
    welcome: Mutex<Option<oneshot::Sender<Result<(), ApiError>>>>,
    state: Mutex<ClientState>,
    notify: Notify,
    gone: CancellationToken,
    polls: AtomicUsize,
    next_id: AtomicU64,
    last_active: Mutex<Instant>,
}

#[derive(Default)]
struct ClientState {
    mailbox: VecDeque<Mail>,
    mailbox_bytes: usize,
    next_seq: u64,
    dropped: u64,
    waiters: HashMap<u64, oneshot::Sender<Frame>>,
    /// Request id → requester, for replies that do not name `to`; `None`
    /// when requests from more than one requester carry the id (ids are
    /// per connection), so such a reply must name `to`.
    requests: HashMap<u64, Option<String>>,
}

struct Mail {
    seq: u64,
    bytes: usize,
    droppable: bool,
    frame: Frame,
}

/// An error answer: status and a message saying what to do.
#[derive(Debug, Clone)]
pub(crate) struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
}

impl ApiError {
    fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            code,
            message: message.into(),
        }
    }

    fn bad(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, "invalid_argument", message)
    }

    fn from_frame(e: &proto::Error) -> ApiError {
        let code = ErrorCode::try_from(e.code).unwrap_or(ErrorCode::Internal);
        let status = match code {
            ErrorCode::NoSuchClient
            | ErrorCode::TargetGone
            | ErrorCode::NotFound
            | ErrorCode::NoResponders => StatusCode::NOT_FOUND,
            ErrorCode::Timeout => StatusCode::GATEWAY_TIMEOUT,
            ErrorCode::QueueFull | ErrorCode::ShuttingDown | ErrorCode::SlowConsumer => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            ErrorCode::LimitExceeded => StatusCode::TOO_MANY_REQUESTS,
            ErrorCode::VersionMismatch => StatusCode::CONFLICT,
            ErrorCode::Forbidden | ErrorCode::IdTakenOver | ErrorCode::NotListening => {
                StatusCode::CONFLICT
            }
            ErrorCode::InvalidArgument | ErrorCode::BadFrame | ErrorCode::Unsupported => {
                StatusCode::BAD_REQUEST
            }
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        };
        ApiError {
            status,
            code: code_name(code),
            message: e.message.clone(),
        }
    }
}

fn code_name(code: ErrorCode) -> &'static str {
    match code {
        ErrorCode::NoSuchClient => "no_such_client",
        ErrorCode::TargetGone => "target_gone",
        ErrorCode::NotFound => "not_found",
        ErrorCode::Timeout => "timeout",
        ErrorCode::QueueFull => "queue_full",
        ErrorCode::ShuttingDown => "shutting_down",
        ErrorCode::SlowConsumer => "slow_consumer",
        ErrorCode::LimitExceeded => "limit_exceeded",
        ErrorCode::VersionMismatch => "version_mismatch",
        ErrorCode::InvalidArgument => "invalid_argument",
        ErrorCode::IdTakenOver => "id_taken_over",
        ErrorCode::Unsupported => "unsupported",
        ErrorCode::BadFrame => "bad_frame",
        ErrorCode::Forbidden => "forbidden",
        ErrorCode::NotListening => "not_listening",
        ErrorCode::NoResponders => "no_responders",
        _ => "internal",
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = json!({ "error": self.code, "message": self.message });
        (self.status, axum::Json(body)).into_response()
    }
}

type ApiResult = Result<Response, ApiError>;

fn ok_json(v: Value) -> ApiResult {
    Ok(axum::Json(v).into_response())
}

// ---- request bodies ----

fn parse<T: serde::de::DeserializeOwned>(
    body: Result<Bytes, BytesRejection>,
) -> Result<T, ApiError> {
    let body = body.map_err(|r| {
        let status = r.status();
        if status == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::new(
                status,
                "too_large",
                "request body exceeds the gateway's limit; send a smaller payload",
            )
        } else {
            ApiError::new(
                status,
                "bad_body",
                format!("cannot read the request body: {r}"),
            )
        }
    })?;
    serde_json::from_slice(&body).map_err(|e| {
        ApiError::bad(format!(
            "malformed JSON body: {}; see /openapi.json",
            clipped(&e.to_string())
        ))
    })
}

/// Cuts text that may quote the client's input (serde quotes unknown field
/// names and mistyped strings whole) for an error message: at most about
/// 300 characters, keeping the end, where serde says where the error is.
fn clipped(s: &str) -> String {
    const HEAD: usize = 240;
    const TAIL: usize = 48;
    let n = s.chars().count();
    if n <= HEAD + TAIL {
        return s.to_owned();
    }
    let head: String = s.chars().take(HEAD).collect();
    let tail: String = s.chars().skip(n - TAIL).collect();
    format!("{head} … {tail}")
}

/// A payload given as UTF-8 text or as base64.
#[derive(Debug, Default, Deserialize)]
struct PayloadIn {
    payload: Option<String>,
    payload_b64: Option<String>,
}

impl PayloadIn {
    fn bytes(self) -> Result<bytes::Bytes, ApiError> {
        match (self.payload, self.payload_b64) {
            (Some(_), Some(_)) => Err(ApiError::bad(
                "give either payload or payload_b64, not both",
            )),
            (Some(s), None) => Ok(bytes::Bytes::from(s)),
            (None, Some(b)) => base64::engine::general_purpose::STANDARD
                .decode(b.as_bytes())
                .map(bytes::Bytes::from)
                .map_err(|e| ApiError::bad(format!("payload_b64 is not valid base64: {e}"))),
            (None, None) => Ok(bytes::Bytes::new()),
        }
    }
}

/// Application headers given as JSON, like a payload: `headers` maps keys to
/// UTF-8 values, `headers_b64` to base64 values; a key that repeats maps to
/// an array of its values. Entries keep their order, `headers` first.
#[derive(Debug, Default, Deserialize)]
struct HeadersIn {
    headers: Option<HeaderObject>,
    headers_b64: Option<HeaderObject>,
}

/// A JSON object of header keys to a string or an array of strings, in
/// document order (a key given twice stays twice).
#[derive(Debug, Default)]
struct HeaderObject(Vec<(String, HeaderValues)>);

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum HeaderValues {
    One(String),
    Many(Vec<String>),
}

impl HeaderValues {
    fn into_vec(self) -> Vec<String> {
        match self {
            HeaderValues::One(v) => vec![v],
            HeaderValues::Many(v) => v,
        }
    }
}

impl<'de> Deserialize<'de> for HeaderObject {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Entries;
        impl<'de> serde::de::Visitor<'de> for Entries {
            type Value = HeaderObject;

            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("an object of header keys to strings or arrays of strings")
            }

            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> Result<HeaderObject, A::Error> {
                // Bounded by the body (each entry takes a few bytes of
                // it); `check_headers` refuses too many afterwards.
                let mut entries = Vec::new();
                while let Some(entry) = map.next_entry::<String, HeaderValues>()? {
                    entries.push(entry);
                }
                Ok(HeaderObject(entries))
            }
        }
        d.deserialize_map(Entries)
    }
}

impl HeadersIn {
    /// The headers, checked against the protocol's bounds.
    fn into_headers(self) -> Result<Vec<proto::Header>, ApiError> {
        let mut out = Vec::new();
        for (key, values) in self.headers.unwrap_or_default().0 {
            for value in values.into_vec() {
                out.push(proto::Header {
                    key: key.clone(),
                    value: bytes::Bytes::from(value),
                });
            }
        }
        for (key, values) in self.headers_b64.unwrap_or_default().0 {
            for value in values.into_vec() {
                let value = base64::engine::general_purpose::STANDARD
                    .decode(value.as_bytes())
                    .map_err(|e| {
                        ApiError::bad(format!(
                            "headers_b64 value of '{}' is not valid base64: {e}",
                            clipped(&key)
                        ))
                    })?;
                out.push(proto::Header {
                    key: key.clone(),
                    value: value.into(),
                });
            }
        }
        check_headers(&out).map_err(|e| {
            ApiError::new(StatusCode::BAD_REQUEST, code_name(e.code()), e.to_string())
        })?;
        Ok(out)
    }
}

/// Puts `headers` into `obj` as `headers` (UTF-8 values) and `headers_b64`
/// (the others, base64), the way [`HeadersIn`] reads them; nothing when
/// there are none.
fn put_headers(obj: &mut serde_json::Map<String, Value>, headers: &[proto::Header]) {
    let (mut text, mut b64) = (serde_json::Map::new(), serde_json::Map::new());
    for h in headers {
        let (group, value) = match std::str::from_utf8(&h.value) {
            Ok(s) => (&mut text, s.to_owned()),
            Err(_) => (
                &mut b64,
                base64::engine::general_purpose::STANDARD.encode(&h.value),
            ),
        };
        match group.get_mut(&h.key) {
            None => {
                group.insert(h.key.clone(), Value::String(value));
            }
            Some(Value::Array(values)) => values.push(Value::String(value)),
            Some(first) => *first = Value::Array(vec![first.take(), Value::String(value)]),
        }
    }
    if !text.is_empty() {
        obj.insert("headers".into(), Value::Object(text));
    }
    if !b64.is_empty() {
        obj.insert("headers_b64".into(), Value::Object(b64));
    }
}

/// Puts `data` into `obj` as `<name>` (UTF-8) or `<name>_b64`.
fn put_bytes(obj: &mut serde_json::Map<String, Value>, name: &str, data: &[u8]) {
    match std::str::from_utf8(data) {
        Ok(s) => {
            obj.insert(name.to_owned(), Value::String(s.to_owned()));
        }
        Err(_) => {
            obj.insert(
                format!("{name}_b64"),
                Value::String(base64::engine::general_purpose::STANDARD.encode(data)),
            );
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ListenReq {
    client: String,
    timeout_ms: Option<u64>,
    max: Option<usize>,
    ack: Option<u64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SendReq {
    client: String,
    to: String,
    #[serde(flatten)]
    payload: PayloadIn,
    #[serde(flatten)]
    headers: HeadersIn,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RequestReq {
    client: String,
    to: Option<String>,
    service: Option<String>,
    method: Option<String>,
    timeout_ms: Option<u64>,
    #[serde(flatten)]
    payload: PayloadIn,
    #[serde(flatten)]
    headers: HeadersIn,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ReplyReq {
    client: String,
    id: u64,
    to: Option<String>,
    #[serde(default)]
    is_error: bool,
    #[serde(flatten)]
    payload: PayloadIn,
    #[serde(flatten)]
    headers: HeadersIn,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct BroadcastReq {
    client: String,
    #[serde(flatten)]
    payload: PayloadIn,
    #[serde(flatten)]
    headers: HeadersIn,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PublishReq {
    client: String,
    topic: String,
    reply_to: Option<String>,
    #[serde(flatten)]
    payload: PayloadIn,
    #[serde(flatten)]
    headers: HeadersIn,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SubscribeReq {
    client: String,
    pattern: String,
    queue_group: Option<String>,
    #[serde(default)]
    service: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct UnsubscribeReq {
    client: String,
    sub_id: u64,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct KvGetReq {
    client: String,
    key: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct KvSetReq {
    client: String,
    key: String,
    value: Option<String>,
    value_b64: Option<String>,
    expect_version: Option<u64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct LeaveReq {
    client: String,
}

// What each body turns into, shared by the handlers and `check_body`.

impl ListenReq {
    /// How long to hold the poll and how many messages to return at most.
    fn bounds(&self, cfg: &HttpConfig) -> (Duration, usize) {
        let wait = self
            .timeout_ms
            .map_or(cfg.poll_timeout, Duration::from_millis)
            .min(cfg.max_poll_timeout);
        let max = self.max.unwrap_or(DEFAULT_POLL_MAX).clamp(1, 10_000);
        (wait, max)
    }
}

impl SendReq {
    fn frame(self, id: u64, from: &str) -> Result<Frame, ApiError> {
        Ok(Frame::from(proto::Direct {
            id,
            to: self.to,
            from: from.to_owned(),
            payload: self.payload.bytes()?,
            headers: self.headers.into_headers()?,
        }))
    }
}

impl RequestReq {
    /// The request frame and its timeout in milliseconds.
    fn frame(self, id: u64, from: &str, cfg: &HttpConfig) -> Result<(Frame, u64), ApiError> {
        let max_ms = cfg.max_request_timeout.as_millis() as u64;
        let timeout_ms = self
            .timeout_ms
            .unwrap_or(DEFAULT_REQUEST_TIMEOUT_MS)
            .clamp(1, max_ms.max(1));
        let (to, service) = match (self.to, self.service) {
            (Some(to), None) => (to, String::new()),
            (None, Some(service)) => (String::new(), service),
            _ => {
                return Err(ApiError::bad(
                    "give exactly one of 'to' (a client id) and 'service' (a service subject)",
                ))
            }
        };
        let frame = Frame::from(proto::Request {
            id,
            to,
            from: from.to_owned(),
            timeout_ms: u32::try_from(timeout_ms).unwrap_or(u32::MAX),
            payload: self.payload.bytes()?,
            method: self.method.unwrap_or_default(),
            headers: self.headers.into_headers()?,
            service,
            sub_id: 0,
        });
        Ok((frame, timeout_ms))
    }
}

impl ReplyReq {
    /// The reply; `remembered` is what the gateway remembers of request
    /// `id`: nothing, its requester, or `None` when several requesters used
    /// the id.
    fn frame(self, from: &str, remembered: Option<Option<String>>) -> Result<Frame, ApiError> {
        let to = match (self.to, remembered) {
            (Some(to), _) => to,
            (None, Some(Some(to))) => to,
            (None, Some(None)) => {
                return Err(ApiError::new(
                    StatusCode::CONFLICT,
                    "ambiguous",
                    format!(
                        "requests from more than one client carry id {}; give 'to' (the request's 'from')",
                        self.id
                    ),
                ))
            }
            (None, None) => {
                return Err(ApiError::new(
                    StatusCode::NOT_FOUND,
                    "not_found",
                    format!(
                        "no request {} is waiting for client '{}'; reply to the id of a request you received, and give 'to' if it came long ago",
                        self.id, from
                    ),
                ))
            }
        };
        Ok(Frame::from(proto::Reply {
            id: self.id,
            to,
            from: from.to_owned(),
            payload: self.payload.bytes()?,
            is_error: self.is_error,
            headers: self.headers.into_headers()?,
        }))
    }
}

impl BroadcastReq {
    fn frame(self, id: u64, from: &str) -> Result<Frame, ApiError> {
        Ok(Frame::from(proto::Broadcast {
            id,
            from: from.to_owned(),
            payload: self.payload.bytes()?,
            headers: self.headers.into_headers()?,
        }))
    }
}

impl PublishReq {
    fn frame(self, id: u64, from: &str) -> Result<Frame, ApiError> {
        Ok(Frame::from(proto::Publish {
            id,
            topic: self.topic,
            from: from.to_owned(),
            payload: self.payload.bytes()?,
            reply_to: self.reply_to.unwrap_or_default(),
            headers: self.headers.into_headers()?,
        }))
    }
}

impl SubscribeReq {
    fn frame(self, id: u64) -> Frame {
        Frame::from(proto::Subscribe {
            id,
            sub_id: id,
            pattern: self.pattern,
            queue_group: self.queue_group.unwrap_or_default(),
            service: self.service,
        })
    }
}

impl UnsubscribeReq {
    fn frame(&self, id: u64) -> Frame {
        Frame::from(proto::Unsubscribe {
            id,
            sub_id: self.sub_id,
        })
    }
}

impl KvGetReq {
    fn frame(self, id: u64) -> Frame {
        Frame::from(proto::KvGet { id, key: self.key })
    }
}

impl KvSetReq {
    /// Takes the value out (checked before the client is registered).
    fn value(&mut self) -> Result<bytes::Bytes, ApiError> {
        PayloadIn {
            payload: self.value.take(),
            payload_b64: self.value_b64.take(),
        }
        .bytes()
        .map_err(|e| ApiError::bad(e.message.replace("payload", "value")))
    }

    fn frame(self, id: u64, value: bytes::Bytes) -> Frame {
        Frame::from(proto::KvSet {
            id,
            key: self.key,
            value,
            expect_version: self.expect_version,
        })
    }
}

/// What one POST body becomes before anything reaches the router: the
/// result of [`check_body`].
#[doc(hidden)]
#[derive(Debug)]
pub struct CheckedBody {
    /// The client id the call acts for.
    pub client: String,
    /// The frames the handler hands the router, in order, with correlation
    /// id 1 (a reply also sends a ping with nonce 1).
    pub frames: Vec<Frame>,
    /// Whether the handler waits for an answer with correlation id 1.
    pub awaits_answer: bool,
    /// For a listen: how long the poll is held and the most messages it
    /// returns.
    pub poll: Option<(Duration, usize)>,
}

/// Parses and checks a POST body for `path` (e.g. `/v1/send`) exactly as
/// its handler does before it talks to the router (JSON shape, client id,
/// payload encodings, clamped timeouts), without a hub. An error gives the
/// status, error code and message the handler would answer. For the fuzz
/// target `gateway_body`; not a stable API.
#[doc(hidden)]
pub fn check_body(
    path: &str,
    body: &[u8],
    cfg: &HttpConfig,
) -> Result<CheckedBody, (u16, &'static str, String)> {
    let body = Ok(Bytes::copy_from_slice(body));
    let checked = |client: &str| validate_client_id(client).map_err(ApiError::bad);
    let out = |client: String, frames: Vec<Frame>, awaits_answer: bool| CheckedBody {
        client,
        frames,
        awaits_answer,
        poll: None,
    };
    let r = match path {
        "/v1/listen" => parse::<ListenReq>(body).and_then(|req| {
            checked(&req.client)?;
            let poll = Some(req.bounds(cfg));
            Ok(CheckedBody {
                poll,
                ..out(req.client, Vec::new(), false)
            })
        }),
        "/v1/send" => parse::<SendReq>(body).and_then(|req| {
            checked(&req.client)?;
            let client = req.client.clone();
            let frame = req.frame(1, &client)?;
            Ok(out(client, vec![frame], true))
        }),
        "/v1/request" => parse::<RequestReq>(body).and_then(|req| {
            checked(&req.client)?;
            let client = req.client.clone();
            let (frame, _) = req.frame(1, &client, cfg)?;
            Ok(out(client, vec![frame], true))
        }),
        "/v1/reply" => parse::<ReplyReq>(body).and_then(|req| {
            checked(&req.client)?;
            let client = req.client.clone();
            let frame = req.frame(&client, None)?;
            let ping = Frame::from(proto::Ping { nonce: 1 });
            Ok(out(client, vec![frame, ping], false))
        }),
        "/v1/broadcast" => parse::<BroadcastReq>(body).and_then(|req| {
            checked(&req.client)?;
            let client = req.client.clone();
            let frame = req.frame(1, &client)?;
            Ok(out(client, vec![frame], true))
        }),
        "/v1/publish" => parse::<PublishReq>(body).and_then(|req| {
            checked(&req.client)?;
            let client = req.client.clone();
            let frame = req.frame(1, &client)?;
            Ok(out(client, vec![frame], true))
        }),
        "/v1/subscribe" => parse::<SubscribeReq>(body).and_then(|req| {
            checked(&req.client)?;
            let client = req.client.clone();
            Ok(out(client, vec![req.frame(1)], true))
        }),
        "/v1/unsubscribe" => parse::<UnsubscribeReq>(body).and_then(|req| {
            checked(&req.client)?;
            let frame = req.frame(1);
            Ok(out(req.client, vec![frame], true))
        }),
        "/v1/kv/get" => parse::<KvGetReq>(body).and_then(|req| {
            checked(&req.client)?;
            let client = req.client.clone();
            Ok(out(client, vec![req.frame(1)], true))
        }),
        "/v1/kv/set" => parse::<KvSetReq>(body).and_then(|mut req| {
            let value = req.value()?;
            checked(&req.client)?;
            let client = req.client.clone();
            Ok(out(client, vec![req.frame(1, value)], true))
        }),
        "/v1/leave" => parse::<LeaveReq>(body).map(|req| out(req.client, Vec::new(), false)),
        _ => Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            "no such POST route",
        )),
    };
    r.map_err(|e| (e.status.as_u16(), e.code, e.message))
}

// ---- start ----

/// Binds the gateway's listener and serves it until the hub shuts down.
pub(crate) async fn start(
    cfg: HttpConfig,
    shared: Arc<Shared>,
) -> Result<(SocketAddr, tokio::task::JoinHandle<()>), HubError> {
    let listener = tokio::net::TcpListener::bind(cfg.addr)
        .await
        .map_err(|source| HubError::Bind {
            addr: cfg.addr.to_string(),
            source,
        })?;
    let local_addr = listener.local_addr().map_err(|source| HubError::Bind {
        addr: cfg.addr.to_string(),
        source,
    })?;
    let gw = Arc::new(Gateway {
        token: super::http_token(&shared.secret),
        loopback: local_addr.ip().is_loopback(),
        shared,
        cfg,
        clients: Mutex::new(HashMap::new()),
        polls: AtomicUsize::new(0),
        ws_handshakes: Arc::new(tokio::sync::Semaphore::new(MAX_WS_HANDSHAKES)),
    });
    let app = router(gw.clone());
    let shutdown = gw.shared.shutdown.clone();
    tokio::spawn(reap_idle(gw.clone()));
    tracing::info!(addr = %local_addr, "http gateway listening");
    let task = tokio::spawn(async move {
        let served = axum::serve(
            listener,
            app.into_make_service_with_connect_info::<SocketAddr>(),
        )
        .with_graceful_shutdown(shutdown.cancelled_owned())
        .await;
        if let Err(e) = served {
            tracing::warn!(error = %e, "http gateway stopped");
        }
    });
    Ok((local_addr, task))
}

fn router(gw: Arc<Gateway>) -> Router {
    let api = Router::new()
        .route("/metrics", get(metrics))
        .route("/v1/status", get(status))
        .route("/v1/clients", get(clients))
        .route("/v1/listen", post(listen))
        .route("/v1/send", post(send))
        .route("/v1/request", post(request))
        .route("/v1/reply", post(reply))
        .route("/v1/broadcast", post(broadcast))
        .route("/v1/publish", post(publish))
        .route("/v1/subscribe", post(subscribe))
        .route("/v1/unsubscribe", post(unsubscribe))
        .route("/v1/kv/get", post(kv_get))
        .route("/v1/kv/set", post(kv_set))
        .route("/v1/leave", post(leave))
        .route("/v1/feed", get(super::dashboard::feed))
        .route_layer(middleware::from_fn_with_state(gw.clone(), require_token));
    Router::new()
        .route("/", get(super::dashboard::page))
        .route("/dashboard.js", get(super::dashboard::script))
        .route("/dashboard.css", get(super::dashboard::style))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/openapi.json", get(openapi))
        .route("/v1/ws", get(super::ws::upgrade))
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
        super::OPENAPI,
    )
        .into_response()
}

// ---- guards ----

/// Whether `host` (a Host header or an origin's host, port allowed) names
/// this machine's loopback.
pub(crate) fn is_loopback_host(host: &str) -> bool {
    let host = host.trim();
    let name = if let Some(rest) = host.strip_prefix('[') {
        // [::1]:port
        match rest.split_once(']') {
            Some((ip, _)) => ip,
            None => return false,
        }
    } else {
        match host.rsplit_once(':') {
            Some((h, port)) if port.chars().all(|c| c.is_ascii_digit()) => h,
            _ => host,
        }
    };
    let name = name.trim_end_matches('.').to_ascii_lowercase();
    if name == "localhost" || name.ends_with(".localhost") {
        return true;
    }
    name.parse::<std::net::IpAddr>()
        .is_ok_and(|ip| ip.is_loopback())
}

fn origin_host(origin: &str) -> Option<&str> {
    let rest = origin.split_once("://")?.1;
    Some(rest.split('/').next().unwrap_or(rest))
}

/// DNS-rebinding defence (loopback listeners only) and response counting.
async fn guard(State(gw): State<Arc<Gateway>>, req: Request, next: Next) -> Response {
    if gw.loopback {
        if let Err(e) = check_local(req.headers()) {
            gw.shared.stats.metrics.http_response(e.status.as_u16());
            return e.into_response();
        }
    }
    let resp = next.run(req).await;
    gw.shared
        .stats
        .metrics
        .http_response(resp.status().as_u16());
    resp
}

fn check_local(headers: &HeaderMap) -> Result<(), ApiError> {
    let forbidden = |what: &str| {
        ApiError::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            format!("{what} is not a loopback name; this gateway listens on loopback and only serves pages of this machine (use localhost or 127.0.0.1)"),
        )
    };
    let host = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .ok_or_else(|| forbidden("the Host header is missing, or"))?;
    if !is_loopback_host(host) {
        return Err(forbidden("the Host header"));
    }
    if let Some(origin) = headers.get(header::ORIGIN) {
        let ok = origin
            .to_str()
            .ok()
            .and_then(origin_host)
            .is_some_and(is_loopback_host);
        if !ok {
            return Err(forbidden("the Origin header"));
        }
    }
    Ok(())
}

/// Bearer token check; the live feed (opened by a browser, which cannot
/// set headers on a WebSocket) may pass it as `?token=`.
async fn require_token(State(gw): State<Arc<Gateway>>, req: Request, next: Next) -> Response {
    let header_token = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|h| h.to_str().ok())
        .and_then(|h| h.strip_prefix("Bearer "))
        .map(str::trim);
    let query_token = req
        .uri()
        .query()
        .and_then(|q| q.split('&').find_map(|kv| kv.strip_prefix("token=")));
    let given = header_token.or(query_token);
    let ok = given.is_some_and(|t| {
        use subtle::ConstantTimeEq;
        t.len() == gw.token.len() && bool::from(t.as_bytes().ct_eq(gw.token.as_bytes()))
    });
    if !ok {
        let msg = if given.is_none() {
            "missing bearer token; send 'Authorization: Bearer <token>' (print it with 'switchboard token')"
        } else {
            "wrong bearer token; use the token of this hub's secret ('switchboard token')"
        };
        let mut resp = ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", msg).into_response();
        resp.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_static("Bearer realm=\"switchboard\""),
        );
        return resp;
    }
    next.run(req).await
}

// ---- virtual connections ----

fn shutting_down() -> ApiError {
    ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "shutting_down",
        "the hub is shutting down; retry against the new hub",
    )
}

fn gone() -> ApiError {
    ApiError::new(
        StatusCode::GONE,
        "gone",
        "this client was deregistered (taken over by another connection, idle, or the hub is stopping); call again to register anew",
    )
}

impl Gateway {
    /// The registered HTTP client `id`, registering it first if needed.
    async fn client(
        self: &Arc<Self>,
        id: &str,
        peer: SocketAddr,
        headers: &HeaderMap,
    ) -> Result<Arc<HttpClient>, ApiError> {
        validate_client_id(id).map_err(ApiError::bad)?;
        let client = {
            let mut map = self.clients.lock();
            match map.get(id) {
                Some(c) if !c.gone.is_cancelled() => c.clone(),
                _ => {
                    let conn = self.shared.alloc_conn();
                    let c = Arc::new(HttpClient {
                        id: id.to_owned(),
                        conn,
                        outbox: Outbox::gated(conn, self.shared.gate.clone()),
                        registered: OnceCell::new(),
                        welcome: Mutex::new(None),
                        state: Mutex::new(ClientState::default()),
                        notify: Notify::new(),
                        gone: CancellationToken::new(),
                        polls: AtomicUsize::new(0),
                        next_id: AtomicU64::new(1),
                        last_active: Mutex::new(Instant::now()),
                    });
                    map.insert(id.to_owned(), c.clone());
                    c
                }
            }
        };
        let registered = client
            .registered
            .get_or_init(|| {
                let agent: String = headers
                    .get(header::USER_AGENT)
                    .and_then(|h| h.to_str().ok())
                    .unwrap_or("http")
                    .chars()
                    .take(256)
                    .collect();
                self.register(client.clone(), peer, agent)
            })
            .await
            .clone();
        registered?;
        client.touch();
        Ok(client)
    }

    /// Registers a new HTTP client with the router, like a TCP connection
    /// that finished its handshake.
    async fn register(
        self: &Arc<Self>,
        client: Arc<HttpClient>,
        peer: SocketAddr,
        agent: String,
    ) -> Result<(), ApiError> {
        let (tx, rx) = oneshot::channel();
        *client.welcome.lock() = Some(tx);
        self.shared.stats.track(&client.outbox);
        let info = proto::ClientInfo {
            client_id: client.id.clone(),
            transport: "http".into(),
            addr: peer.to_string(),
            connected_at_ms: switchboard_discovery::now_ms(),
            agent,
            // HTTP clients take every kind of message, always.
            reliable: false,
            listen: false,
        };
        let connect = Input::Connect {
            conn: client.conn,
            info,
            outbox: client.outbox.clone(),
        };
        tokio::spawn(pump(self.clone(), client.clone()));
        if self.shared.inbox.send(connect).await.is_err() {
            client.outbox.kill(None);
            return Err(shutting_down());
        }
        match tokio::time::timeout(ANSWER_TIMEOUT, rx).await {
            Ok(Ok(r)) => r,
            _ => Err(shutting_down()),
        }
    }
}

impl HttpClient {
    fn touch(&self) {
        *self.last_active.lock() = Instant::now();
    }

    /// Hands a frame from the router to a waiting call or to the mailbox.
    fn dispatch(&self, frame: Frame, cfg: &HttpConfig) -> Option<&'static str> {
        match &frame.kind {
            Some(Kind::Welcome(_)) => {
                if let Some(tx) = self.welcome.lock().take() {
                    let _ = tx.send(Ok(()));
                }
                return None;
            }
            Some(Kind::Goodbye(_)) | Some(Kind::Pong(_)) => return None,
            Some(Kind::Flow(f)) => {
                self.state.lock().dropped += f.dropped;
                self.notify.notify_waiters();
                return None;
            }
            Some(Kind::Error(e)) if e.id == 0 => {
                if let Some(tx) = self.welcome.lock().take() {
                    let _ = tx.send(Err(ApiError::from_frame(e)));
                    return None;
                }
            }
            Some(
                Kind::Ok(_)
                | Kind::Error(_)
                | Kind::Reply(_)
                | Kind::KvValue(_)
                | Kind::ClientList(_)
                | Kind::Status(_),
            ) => {
                let id = frame.correlation_id();
                let waiter = self.state.lock().waiters.remove(&id);
                match waiter {
                    Some(tx) => {
                        let _ = tx.send(frame);
                        return None;
                    }
                    // A late answer to an abandoned call; an error still
                    // interests the client (e.g. QUEUE_FULL for a message).
                    None if matches!(frame.kind, Some(Kind::Error(_))) => {}
                    None => return None,
                }
            }
            _ => {}
        }
        let droppable = matches!(
            frame.kind,
            Some(Kind::Deliver(_) | Kind::Broadcast(_) | Kind::Presence(_) | Kind::KvUpdate(_))
        );
        let bytes = mail_bytes(&frame);
        let mut st = self.state.lock();
        if let Some(Kind::Request(r)) = &frame.kind {
            let room = st.requests.len() < MAX_REMEMBERED_REQUESTS;
            match st.requests.entry(r.id) {
                std::collections::hash_map::Entry::Occupied(mut e) => {
                    if e.get().as_deref() != Some(r.from.as_str()) {
                        e.insert(None);
                    }
                }
                std::collections::hash_map::Entry::Vacant(e) => {
                    if room {
                        e.insert(Some(r.from.clone()));
                    }
                }
            }
        }
        while st.mailbox.len() >= cfg.mailbox_messages.max(1)
            || st.mailbox_bytes + bytes > cfg.mailbox_bytes
        {
            let Some(pos) = st.mailbox.iter().position(|m| m.droppable) else {
                return Some("its mailbox is full of messages nobody polled");
            };
            if let Some(m) = st.mailbox.remove(pos) {
                st.mailbox_bytes -= m.bytes;
                st.dropped += 1;
            }
            if st.mailbox.is_empty() {
                break;
            }
        }
        st.next_seq += 1;
        let seq = st.next_seq;
        st.mailbox_bytes += bytes;
        st.mailbox.push_back(Mail {
            seq,
            bytes,
            droppable,
            frame,
        });
        drop(st);
        self.notify.notify_waiters();
        None
    }

    /// Registers interest in the answer with correlation id `id`.
    fn expect(&self, id: u64) -> oneshot::Receiver<Frame> {
        let (tx, rx) = oneshot::channel();
        self.state.lock().waiters.insert(id, tx);
        rx
    }

    fn next_id(&self) -> u64 {
        self.next_id.fetch_add(1, Ordering::Relaxed)
    }
}

fn mail_bytes(frame: &Frame) -> usize {
    use prost::Message;
    frame.encoded_len()
}

/// Moves what the router queues for an HTTP client to its waiting calls
/// and its mailbox, until the router closes the outbox.
async fn pump(gw: Arc<Gateway>, client: Arc<HttpClient>) {
    let outbox = client.outbox.clone();
    let cancel = outbox.cancelled().clone();
    let mut taken = Taken::default();
    let batch = gw.shared.limits.write_batch_bytes;
    loop {
        outbox.take(batch, &mut taken);
        if taken.killed {
            break;
        }
        if taken.want_drained {
            let _ = gw
                .shared
                .inbox
                .try_send(Input::Drained { conn: client.conn });
        }
        if taken.dropped > 0 {
            client.state.lock().dropped += taken.dropped;
            client.notify.notify_waiters();
        }
        if taken.frames.is_empty() {
            if taken.close {
                break;
            }
            if taken.held != 0 && !outbox.gate().wait(&outbox, taken.held) {
                continue;
            }
            tokio::select! {
                _ = outbox.notified() => {}
                _ = cancel.cancelled() => {}
            }
            continue;
        }
        let mut slow = None;
        for out in taken.frames.drain(..) {
            let len = out.encoded_len();
            let frame = out.into_frame();
            gw.shared.stats.metrics.frame_out(frame.kind_name(), len);
            gw.shared.stats.msgs_out.fetch_add(1, Ordering::Relaxed);
            gw.shared
                .stats
                .bytes_out
                .fetch_add(len as u64, Ordering::Relaxed);
            if slow.is_none() {
                slow = client.dispatch(frame, &gw.cfg);
            }
        }
        if let Some(why) = slow {
            tracing::info!(client = %client.id, "http client disconnected: {why}");
            let notice = Frame::goodbye(ErrorCode::SlowConsumer, why);
            let _ = gw
                .shared
                .inbox
                .send(Input::Disconnected {
                    conn: client.conn,
                    notice: Some(notice),
                    reason: format!("slow consumer: {why}"),
                })
                .await;
        }
        if taken.close {
            break;
        }
    }
    client.gone.cancel();
    if let Some(tx) = client.welcome.lock().take() {
        let _ = tx.send(Err(shutting_down()));
    }
    // Calls still waiting get `gone` when their senders drop here.
    client.state.lock().waiters.clear();
    client.notify.notify_waiters();
    gw.shared.stats.untrack(client.conn);
    let mut map = gw.clients.lock();
    if map.get(&client.id).is_some_and(|c| c.conn == client.conn) {
        map.remove(&client.id);
    }
}

/// Deregisters HTTP clients with no poll held and no call for the idle
/// timeout.
async fn reap_idle(gw: Arc<Gateway>) {
    let mut tick = tokio::time::interval(REAP_EVERY.min(gw.cfg.idle_timeout));
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = gw.shared.shutdown.cancelled() => return,
        }
        let idle: Vec<Arc<HttpClient>> = gw
            .clients
            .lock()
            .values()
            .filter(|c| {
                c.polls.load(Ordering::Relaxed) == 0
                    && c.last_active.lock().elapsed() > gw.cfg.idle_timeout
                    && !c.gone.is_cancelled()
            })
            .cloned()
            .collect();
        for c in idle {
            tracing::debug!(client = %c.id, "http client idle; deregistering");
            deregister(&gw, &c, "idle").await;
        }
    }
}

async fn deregister(gw: &Gateway, c: &HttpClient, reason: &str) {
    let sent = gw
        .shared
        .inbox
        .send(Input::Disconnected {
            conn: c.conn,
            notice: None,
            reason: reason.to_owned(),
        })
        .await;
    if sent.is_err() {
        c.outbox.kill(None);
    }
    c.gone.cancel();
}

/// Sends `frame` from `client` and waits for its answer.
async fn call(
    gw: &Gateway,
    client: &HttpClient,
    id: u64,
    frame: Frame,
    wait: Duration,
) -> Result<Frame, ApiError> {
    let rx = client.expect(id);
    let len = {
        use prost::Message;
        frame.encoded_len()
    };
    gw.shared.stats.metrics.frame_in(&frame, len);
    gw.shared
        .stats
        .bytes_in
        .fetch_add(len as u64, Ordering::Relaxed);
    let input = Input::Frames {
        conn: client.conn,
        frames: vec![frame],
    };
    if gw.shared.inbox.send(input).await.is_err() {
        return Err(shutting_down());
    }
    let answer = tokio::select! {
        r = tokio::time::timeout(wait, rx) => r,
        _ = client.gone.cancelled() => return Err(gone()),
    };
    match answer {
        Ok(Ok(frame)) => match frame.kind {
            Some(Kind::Error(e)) => Err(ApiError::from_frame(&e)),
            _ => Ok(frame),
        },
        Ok(Err(_)) => Err(gone()),
        Err(_) => {
            client.state.lock().waiters.remove(&id);
            Err(ApiError::new(
                StatusCode::GATEWAY_TIMEOUT,
                "timeout",
                "the hub did not answer in time; retry",
            ))
        }
    }
}

// ---- handlers ----

type Peer = ConnectInfo<SocketAddr>;

async fn listen(
    State(gw): State<Arc<Gateway>>,
    ConnectInfo(peer): Peer,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult {
    let req: ListenReq = parse(body)?;
    let client = gw.client(&req.client, peer, &headers).await?;
    let _slot = PollSlot::take(&gw, &client)?;
    let (wait, max) = req.bounds(&gw.cfg);
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        let notified = client.notify.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        if let Some(v) = take_mail(&client, req.ack, max, false) {
            return ok_json(v);
        }
        tokio::select! {
            _ = notified => {}
            _ = tokio::time::sleep_until(deadline) => break,
            _ = client.gone.cancelled() => return Err(gone()),
            _ = gw.shared.shutdown.cancelled() => break,
        }
    }
    client.touch();
    // Checked once more under the same lock that fixes `ack`, so a message
    // arriving at the timeout is returned, never acknowledged unseen.
    ok_json(take_mail(&client, req.ack, max, true).unwrap_or(Value::Null))
}

/// Takes (or, in acknowledged mode, shows) waiting messages; `None` when
/// there is nothing to report, unless `always` (then an empty answer whose
/// `ack` covers every message delivered so far).
fn take_mail(client: &HttpClient, ack: Option<u64>, max: usize, always: bool) -> Option<Value> {
    let mut st = client.state.lock();
    if let Some(ack) = ack {
        while st.mailbox.front().is_some_and(|m| m.seq <= ack) {
            if let Some(m) = st.mailbox.pop_front() {
                st.mailbox_bytes -= m.bytes;
            }
        }
    }
    if st.mailbox.is_empty() && st.dropped == 0 {
        // Everything up to `next_seq` has left the mailbox.
        return always.then(|| json!({ "messages": [], "dropped": 0, "ack": st.next_seq }));
    }
    let n = st.mailbox.len().min(max);
    let mut messages = Vec::with_capacity(n);
    let mut last = 0;
    if ack.is_some() {
        for m in st.mailbox.iter().take(n) {
            messages.push(mail_json(m.seq, &m.frame));
            last = m.seq;
        }
    } else {
        for _ in 0..n {
            if let Some(m) = st.mailbox.pop_front() {
                st.mailbox_bytes -= m.bytes;
                messages.push(mail_json(m.seq, &m.frame));
                last = m.seq;
            }
        }
    }
    let dropped = std::mem::take(&mut st.dropped);
    if last == 0 {
        last = ack
            .unwrap_or(0)
            .max(st.next_seq.min(ack.unwrap_or(st.next_seq)));
    }
    Some(json!({ "messages": messages, "dropped": dropped, "ack": last }))
}

fn mail_json(seq: u64, frame: &Frame) -> Value {
    let mut o = serde_json::Map::new();
    o.insert("seq".into(), json!(seq));
    o.insert("kind".into(), json!(frame.kind_name()));
    match &frame.kind {
        Some(Kind::Direct(d)) => {
            o.insert("from".into(), json!(d.from));
            put_bytes(&mut o, "payload", &d.payload);
            put_headers(&mut o, &d.headers);
        }
        Some(Kind::Request(r)) => {
            o.insert("id".into(), json!(r.id));
            o.insert("from".into(), json!(r.from));
            o.insert("method".into(), json!(r.method));
            o.insert("timeout_ms".into(), json!(r.timeout_ms));
            if !r.service.is_empty() {
                o.insert("service".into(), json!(r.service));
                o.insert("sub_id".into(), json!(r.sub_id));
            }
            put_bytes(&mut o, "payload", &r.payload);
            put_headers(&mut o, &r.headers);
        }
        Some(Kind::Broadcast(b)) => {
            o.insert("from".into(), json!(b.from));
            put_bytes(&mut o, "payload", &b.payload);
            put_headers(&mut o, &b.headers);
        }
        Some(Kind::Deliver(d)) => {
            o.insert("sub_id".into(), json!(d.sub_id));
            o.insert("topic".into(), json!(d.topic));
            o.insert("from".into(), json!(d.from));
            if !d.reply_to.is_empty() {
                o.insert("reply_to".into(), json!(d.reply_to));
            }
            put_bytes(&mut o, "payload", &d.payload);
            put_headers(&mut o, &d.headers);
        }
        Some(Kind::Presence(p)) => {
            let kind = if p.kind == proto::PresenceKind::Joined as i32 {
                "joined"
            } else {
                "left"
            };
            o.insert("event".into(), json!(kind));
            if let Some(c) = &p.client {
                o.insert("client".into(), client_json(c));
            }
            o.insert("reason".into(), json!(p.reason));
        }
        Some(Kind::KvUpdate(u)) => {
            o.insert("watch_id".into(), json!(u.watch_id));
            o.insert("key".into(), json!(u.key));
            o.insert("version".into(), json!(u.version));
            o.insert("deleted".into(), json!(u.deleted));
            o.insert("by".into(), json!(u.by));
            put_bytes(&mut o, "value", &u.value);
        }
        Some(Kind::Error(e)) => {
            o.insert("id".into(), json!(e.id));
            let code = ErrorCode::try_from(e.code).unwrap_or(ErrorCode::Internal);
            o.insert("code".into(), json!(code_name(code)));
            o.insert("message".into(), json!(e.message));
        }
        Some(Kind::Session(s)) => {
            use prost::Message;
            o.insert("peer".into(), json!(s.peer));
            o.insert(
                "frame_b64".into(),
                json!(base64::engine::general_purpose::STANDARD.encode(frame.encode_to_vec())),
            );
        }
        _ => {}
    }
    Value::Object(o)
}

pub(crate) fn client_json(c: &proto::ClientInfo) -> Value {
    json!({
        "client_id": c.client_id,
        "transport": c.transport,
        "addr": c.addr,
        "connected_at_ms": c.connected_at_ms,
        "agent": c.agent,
    })
}

/// A held poll; released when the poll ends or is abandoned.
struct PollSlot {
    gw: Arc<Gateway>,
    client: Arc<HttpClient>,
}

impl PollSlot {
    fn take(gw: &Arc<Gateway>, client: &Arc<HttpClient>) -> Result<PollSlot, ApiError> {
        let mine = client.polls.fetch_add(1, Ordering::AcqRel) + 1;
        let all = gw.polls.fetch_add(1, Ordering::AcqRel) + 1;
        let slot = PollSlot {
            gw: gw.clone(),
            client: client.clone(),
        };
        gw.shared
            .stats
            .metrics
            .http_polls_held
            .fetch_add(1, Ordering::Relaxed);
        if mine > gw.cfg.max_polls_per_client {
            return Err(ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "too_many_polls",
                format!(
                    "client '{}' already holds {} polls; wait for one to return",
                    client.id, gw.cfg.max_polls_per_client
                ),
            ));
        }
        if all > gw.cfg.max_polls {
            return Err(ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "too_many_polls",
                "the gateway holds as many polls as it allows; retry shortly",
            ));
        }
        Ok(slot)
    }
}

impl Drop for PollSlot {
    fn drop(&mut self) {
        self.client.polls.fetch_sub(1, Ordering::AcqRel);
        self.gw.polls.fetch_sub(1, Ordering::AcqRel);
        self.gw
            .shared
            .stats
            .metrics
            .http_polls_held
            .fetch_sub(1, Ordering::Relaxed);
        self.client.touch();
    }
}

async fn send(
    State(gw): State<Arc<Gateway>>,
    ConnectInfo(peer): Peer,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult {
    let req: SendReq = parse(body)?;
    let client = gw.client(&req.client, peer, &headers).await?;
    let id = client.next_id();
    let frame = req.frame(id, &client.id)?;
    let wait = gw.shared.limits.default_request_timeout + ANSWER_TIMEOUT;
    call(&gw, &client, id, frame, wait).await?;
    ok_json(json!({ "queued": true }))
}

async fn request(
    State(gw): State<Arc<Gateway>>,
    ConnectInfo(peer): Peer,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult {
    let req: RequestReq = parse(body)?;
    let client = gw.client(&req.client, peer, &headers).await?;
    let id = client.next_id();
    let (frame, timeout_ms) = req.frame(id, &client.id, &gw.cfg)?;
    // The hub answers TIMEOUT itself at the deadline; the slack covers a
    // busy hub.
    let wait = Duration::from_millis(timeout_ms) + ANSWER_TIMEOUT;
    let answer = call(&gw, &client, id, frame, wait).await?;
    let Some(Kind::Reply(r)) = answer.kind else {
        return Err(ApiError::new(
            StatusCode::BAD_GATEWAY,
            "internal",
            "the hub answered a request with something other than a reply",
        ));
    };
    let mut o = serde_json::Map::new();
    o.insert("from".into(), json!(r.from));
    o.insert("is_error".into(), json!(r.is_error));
    put_bytes(&mut o, "payload", &r.payload);
    put_headers(&mut o, &r.headers);
    ok_json(Value::Object(o))
}

async fn reply(
    State(gw): State<Arc<Gateway>>,
    ConnectInfo(peer): Peer,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult {
    let req: ReplyReq = parse(body)?;
    let client = gw.client(&req.client, peer, &headers).await?;
    let remembered = {
        let mut st = client.state.lock();
        match (&req.to, st.requests.get(&req.id)) {
            // Answered: forget it. An ambiguous id stays so until the
            // remembered set is dropped with the client.
            (None, Some(Some(_))) => st.requests.remove(&req.id),
            (Some(to), Some(Some(known))) if to == known => st.requests.remove(&req.id),
            (_, known) => known.cloned(),
        }
    };
    let frame = req.frame(&client.id, remembered)?;
    // Replies have no answer; a ping behind it tells when the router took it.
    let nonce = client.next_id();
    let frames = vec![frame, Frame::from(proto::Ping { nonce })];
    for f in &frames {
        use prost::Message;
        gw.shared.stats.metrics.frame_in(f, f.encoded_len());
    }
    if gw
        .shared
        .inbox
        .send(Input::Frames {
            conn: client.conn,
            frames,
        })
        .await
        .is_err()
    {
        return Err(shutting_down());
    }
    ok_json(json!({ "sent": true }))
}

async fn broadcast(
    State(gw): State<Arc<Gateway>>,
    ConnectInfo(peer): Peer,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult {
    let req: BroadcastReq = parse(body)?;
    let client = gw.client(&req.client, peer, &headers).await?;
    let id = client.next_id();
    let frame = req.frame(id, &client.id)?;
    call(&gw, &client, id, frame, ANSWER_TIMEOUT).await?;
    ok_json(json!({ "sent": true }))
}

async fn publish(
    State(gw): State<Arc<Gateway>>,
    ConnectInfo(peer): Peer,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult {
    let req: PublishReq = parse(body)?;
    let client = gw.client(&req.client, peer, &headers).await?;
    let id = client.next_id();
    let frame = req.frame(id, &client.id)?;
    call(&gw, &client, id, frame, ANSWER_TIMEOUT).await?;
    ok_json(json!({ "published": true }))
}

async fn subscribe(
    State(gw): State<Arc<Gateway>>,
    ConnectInfo(peer): Peer,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult {
    let req: SubscribeReq = parse(body)?;
    let client = gw.client(&req.client, peer, &headers).await?;
    let id = client.next_id();
    let frame = req.frame(id);
    call(&gw, &client, id, frame, ANSWER_TIMEOUT).await?;
    ok_json(json!({ "sub_id": id }))
}

async fn unsubscribe(
    State(gw): State<Arc<Gateway>>,
    ConnectInfo(peer): Peer,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult {
    let req: UnsubscribeReq = parse(body)?;
    let client = gw.client(&req.client, peer, &headers).await?;
    let id = client.next_id();
    let frame = req.frame(id);
    call(&gw, &client, id, frame, ANSWER_TIMEOUT).await?;
    ok_json(json!({ "unsubscribed": true }))
}

async fn kv_get(
    State(gw): State<Arc<Gateway>>,
    ConnectInfo(peer): Peer,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult {
    let req: KvGetReq = parse(body)?;
    let client = gw.client(&req.client, peer, &headers).await?;
    let id = client.next_id();
    let frame = req.frame(id);
    let answer = call(&gw, &client, id, frame, ANSWER_TIMEOUT).await?;
    let Some(Kind::KvValue(v)) = answer.kind else {
        return Err(ApiError::new(
            StatusCode::BAD_GATEWAY,
            "internal",
            "unexpected answer to a key/value read",
        ));
    };
    let mut o = serde_json::Map::new();
    o.insert("key".into(), json!(v.key));
    o.insert("found".into(), json!(v.found));
    o.insert("version".into(), json!(v.version));
    if v.found {
        put_bytes(&mut o, "value", &v.value);
    }
    ok_json(Value::Object(o))
}

async fn kv_set(
    State(gw): State<Arc<Gateway>>,
    ConnectInfo(peer): Peer,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult {
    let mut req: KvSetReq = parse(body)?;
    let value = req.value()?;
    let client = gw.client(&req.client, peer, &headers).await?;
    let id = client.next_id();
    let frame = req.frame(id, value);
    let answer = call(&gw, &client, id, frame, ANSWER_TIMEOUT).await?;
    let Some(Kind::KvValue(v)) = answer.kind else {
        return Err(ApiError::new(
            StatusCode::BAD_GATEWAY,
            "internal",
            "unexpected answer to a key/value write",
        ));
    };
    ok_json(json!({ "key": v.key, "version": v.version }))
}

async fn leave(State(gw): State<Arc<Gateway>>, body: Result<Bytes, BytesRejection>) -> ApiResult {
    let req: LeaveReq = parse(body)?;
    let found = gw.clients.lock().get(&req.client).cloned();
    match found {
        Some(c) => {
            deregister(&gw, &c, "left").await;
            ok_json(json!({ "left": true }))
        }
        None => Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("no HTTP client '{}' is registered", clipped(&req.client)),
        )),
    }
}

/// Asks the router for its current view (clients, topics, presence).
pub(crate) async fn inspect(gw: &Gateway) -> Result<Inspection, ApiError> {
    let (tx, rx) = oneshot::channel();
    if gw.shared.inbox.send(Command::Inspect(tx)).await.is_err() {
        return Err(shutting_down());
    }
    match tokio::time::timeout(ANSWER_TIMEOUT, rx).await {
        Ok(Ok(i)) => Ok(i),
        _ => Err(shutting_down()),
    }
}

pub(crate) fn status_json(i: &Inspection) -> Value {
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

async fn status(State(gw): State<Arc<Gateway>>) -> ApiResult {
    let i = inspect(&gw).await?;
    ok_json(status_json(&i))
}

async fn clients(State(gw): State<Arc<Gateway>>) -> ApiResult {
    let i = inspect(&gw).await?;
    let list: Vec<Value> = i.clients.iter().map(client_json).collect();
    ok_json(json!({ "clients": list }))
}

async fn metrics(State(gw): State<Arc<Gateway>>) -> ApiResult {
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
