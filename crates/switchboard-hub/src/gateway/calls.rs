//! What each POST body is and what it becomes: the request bodies, the
//! native frame each call sends, and the JSON each call answers.
//!
//! Most calls have one shape, [`ApiCall`]: a body naming a client, one
//! frame with a fresh correlation id, one answer from the router, one JSON
//! answer. `routes::call` serves all of them; [`check_body`] runs the same
//! steps without a hub.

use std::time::Duration;

use axum::body::Bytes;
use axum::http::StatusCode;
use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::{json, Map, Value};
use switchboard_wire::proto::{self, frame::Kind};
use switchboard_wire::Frame;
use utoipa::ToSchema;

use super::answers::{
    as_json, KvDeleted, KvWritten, Published, Queued, Sent, Subscribed, Unsubscribed, Unwatched,
    Watching,
};
use super::api::{parse, put_bytes, put_headers, ApiError, HeadersIn, PayloadIn};
use super::ANSWER_TIMEOUT;
use crate::config::HttpConfig;
use crate::Limits;
use switchboard_wire::validate_client_id;

/// Default timeout of a request made over HTTP.
const DEFAULT_REQUEST_TIMEOUT_MS: u64 = 30_000;

/// Most messages one poll returns by default.
const DEFAULT_POLL_MAX: usize = 100;

/// A call of the common shape. The steps, in order: parse the body,
/// [`check`](ApiCall::check), register the client, take a correlation id,
/// [`into_frame`](ApiCall::into_frame), send the frame and wait up to
/// [`wait`](ApiCall::wait) for the router's answer (an `Error` frame
/// becomes an [`ApiError`]), then [`answer`](ApiCall::answer).
pub(super) trait ApiCall: DeserializeOwned + Send + 'static {
    /// The client id the call acts for.
    fn client(&self) -> &str;

    /// Checks made before the client is registered.
    fn check(&mut self) -> Result<(), ApiError> {
        Ok(())
    }

    /// How long the call waits for the router's answer.
    fn wait(&self, _cfg: &HttpConfig, _limits: &Limits) -> Duration {
        ANSWER_TIMEOUT
    }

    /// The frame to send, with correlation id `id`, from client `from`.
    fn into_frame(self, id: u64, from: &str, cfg: &HttpConfig) -> Result<Frame, ApiError>;

    /// The JSON answer, from the router's answer to frame `id`.
    fn answer(id: u64, answer: Frame) -> Result<Value, ApiError>;
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(as = ListenRequest)]
pub(super) struct ListenReq {
    /// Your client id (1 to 256 bytes, no control characters); registers
    /// the HTTP client on first use.
    #[schema(
        min_length = 1,
        max_length = 256,
        pattern = r"^[^\x00-\x1f\x7f-\x9f]+$"
    )]
    pub(super) client: String,
    /// How long to hold the poll when nothing waits, milliseconds
    /// (default 25,000; at most the gateway's maximum, 120,000 by default).
    timeout_ms: Option<u64>,
    /// Most messages to return (default 100; taken within 1 ..= 10,000).
    max: Option<usize>,
    /// Acknowledged mode: drop messages up to this `seq` and return the
    /// rest without removing them until acknowledged; without it, returned
    /// messages are removed.
    pub(super) ack: Option<u64>,
}

impl ListenReq {
    /// How long to hold the poll and how many messages to return at most.
    pub(super) fn bounds(&self, cfg: &HttpConfig) -> (Duration, usize) {
        let wait = self
            .timeout_ms
            .map_or(cfg.poll_timeout, Duration::from_millis)
            .min(cfg.max_poll_timeout);
        let max = self.max.unwrap_or(DEFAULT_POLL_MAX).clamp(1, 10_000);
        (wait, max)
    }
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(as = SendRequest)]
pub(super) struct SendReq {
    /// Your client id (1 to 256 bytes, no control characters); registers
    /// the HTTP client on first use.
    #[schema(
        min_length = 1,
        max_length = 256,
        pattern = r"^[^\x00-\x1f\x7f-\x9f]+$"
    )]
    client: String,
    to: String,
    #[serde(flatten)]
    #[schema(inline)]
    payload: PayloadIn,
    #[serde(flatten)]
    #[schema(inline)]
    headers: HeadersIn,
}

impl ApiCall for SendReq {
    fn client(&self) -> &str {
        &self.client
    }

    /// A direct message may wait parked for room at its target up to the
    /// hub's default request timeout.
    fn wait(&self, _: &HttpConfig, limits: &Limits) -> Duration {
        limits.default_request_timeout + ANSWER_TIMEOUT
    }

    fn into_frame(self, id: u64, from: &str, _: &HttpConfig) -> Result<Frame, ApiError> {
        Ok(Frame::from(proto::Direct {
            id,
            to: self.to,
            from: from.to_owned(),
            payload: self.payload.bytes()?,
            headers: self.headers.into_headers()?,
        }))
    }

    fn answer(_: u64, _: Frame) -> Result<Value, ApiError> {
        Ok(as_json(Queued { queued: true }))
    }
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(as = RequestRequest)]
pub(super) struct RequestReq {
    /// Your client id (1 to 256 bytes, no control characters); registers
    /// the HTTP client on first use.
    #[schema(
        min_length = 1,
        max_length = 256,
        pattern = r"^[^\x00-\x1f\x7f-\x9f]+$"
    )]
    client: String,
    /// The target client id (give exactly one of `to` and `service`).
    to: Option<String>,
    /// A service subject: one responder among its service subscribers.
    service: Option<String>,
    /// The method name the responder sees.
    method: Option<String>,
    /// Milliseconds to wait for the reply (default 30,000; taken within
    /// 1 ..= the gateway's maximum).
    timeout_ms: Option<u64>,
    #[serde(flatten)]
    #[schema(inline)]
    payload: PayloadIn,
    #[serde(flatten)]
    #[schema(inline)]
    headers: HeadersIn,
}

impl RequestReq {
    /// The request's timeout: as asked, within the gateway's bounds.
    fn timeout_ms(&self, cfg: &HttpConfig) -> u64 {
        let max_ms = cfg.max_request_timeout.as_millis() as u64;
        self.timeout_ms
            .unwrap_or(DEFAULT_REQUEST_TIMEOUT_MS)
            .clamp(1, max_ms.max(1))
    }
}

impl ApiCall for RequestReq {
    fn client(&self) -> &str {
        &self.client
    }

    /// The hub answers TIMEOUT itself at the deadline; the slack covers a
    /// busy hub.
    fn wait(&self, cfg: &HttpConfig, _: &Limits) -> Duration {
        Duration::from_millis(self.timeout_ms(cfg)) + ANSWER_TIMEOUT
    }

    fn into_frame(self, id: u64, from: &str, cfg: &HttpConfig) -> Result<Frame, ApiError> {
        let timeout_ms = self.timeout_ms(cfg);
        let (to, service) = match (self.to, self.service) {
            (Some(to), None) => (to, String::new()),
            (None, Some(service)) => (String::new(), service),
            _ => {
                return Err(ApiError::bad(
                    "give exactly one of 'to' (a client id) and 'service' (a service subject)",
                ))
            }
        };
        Ok(Frame::from(proto::Request {
            id,
            to,
            from: from.to_owned(),
            timeout_ms: u32::try_from(timeout_ms).unwrap_or(u32::MAX),
            payload: self.payload.bytes()?,
            method: self.method.unwrap_or_default(),
            headers: self.headers.into_headers()?,
            service,
            sub_id: 0,
        }))
    }

    fn answer(_: u64, answer: Frame) -> Result<Value, ApiError> {
        let Some(Kind::Reply(r)) = answer.kind else {
            return Err(ApiError::new(
                StatusCode::BAD_GATEWAY,
                "internal",
                "the hub answered a request with something other than a reply",
            ));
        };
        let mut o = Map::new();
        o.insert("from".into(), json!(r.from));
        o.insert("is_error".into(), json!(r.is_error));
        put_bytes(&mut o, "payload", &r.payload);
        put_headers(&mut o, &r.headers);
        Ok(Value::Object(o))
    }
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(as = ReplyRequest)]
pub(super) struct ReplyReq {
    /// Your client id (1 to 256 bytes, no control characters); registers
    /// the HTTP client on first use.
    #[schema(
        min_length = 1,
        max_length = 256,
        pattern = r"^[^\x00-\x1f\x7f-\x9f]+$"
    )]
    pub(super) client: String,
    /// The `id` of a request received through `listen`.
    pub(super) id: u64,
    /// The request's `from`; may be left out when the gateway remembers
    /// the requester.
    pub(super) to: Option<String>,
    /// Whether the reply is an error answer.
    #[serde(default)]
    is_error: bool,
    #[serde(flatten)]
    #[schema(inline)]
    payload: PayloadIn,
    #[serde(flatten)]
    #[schema(inline)]
    headers: HeadersIn,
}

impl ReplyReq {
    /// The reply; `remembered` is what the gateway remembers of request
    /// `id`: nothing, its requester, or `None` when several requesters used
    /// the id.
    pub(super) fn frame(
        self,
        from: &str,
        remembered: Option<Option<String>>,
    ) -> Result<Frame, ApiError> {
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

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(as = BroadcastRequest)]
pub(super) struct BroadcastReq {
    /// Your client id (1 to 256 bytes, no control characters); registers
    /// the HTTP client on first use.
    #[schema(
        min_length = 1,
        max_length = 256,
        pattern = r"^[^\x00-\x1f\x7f-\x9f]+$"
    )]
    client: String,
    #[serde(flatten)]
    #[schema(inline)]
    payload: PayloadIn,
    #[serde(flatten)]
    #[schema(inline)]
    headers: HeadersIn,
}

impl ApiCall for BroadcastReq {
    fn client(&self) -> &str {
        &self.client
    }

    fn into_frame(self, id: u64, from: &str, _: &HttpConfig) -> Result<Frame, ApiError> {
        Ok(Frame::from(proto::Broadcast {
            id,
            from: from.to_owned(),
            payload: self.payload.bytes()?,
            headers: self.headers.into_headers()?,
        }))
    }

    fn answer(_: u64, _: Frame) -> Result<Value, ApiError> {
        Ok(as_json(Sent { sent: true }))
    }
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(as = PublishRequest)]
pub(super) struct PublishReq {
    /// Your client id (1 to 256 bytes, no control characters); registers
    /// the HTTP client on first use.
    #[schema(
        min_length = 1,
        max_length = 256,
        pattern = r"^[^\x00-\x1f\x7f-\x9f]+$"
    )]
    client: String,
    /// The topic (dot-separated tokens).
    topic: String,
    /// A topic replies should go to.
    reply_to: Option<String>,
    #[serde(flatten)]
    #[schema(inline)]
    payload: PayloadIn,
    #[serde(flatten)]
    #[schema(inline)]
    headers: HeadersIn,
}

impl ApiCall for PublishReq {
    fn client(&self) -> &str {
        &self.client
    }

    fn into_frame(self, id: u64, from: &str, _: &HttpConfig) -> Result<Frame, ApiError> {
        Ok(Frame::from(proto::Publish {
            id,
            topic: self.topic,
            from: from.to_owned(),
            payload: self.payload.bytes()?,
            reply_to: self.reply_to.unwrap_or_default(),
            headers: self.headers.into_headers()?,
        }))
    }

    fn answer(_: u64, _: Frame) -> Result<Value, ApiError> {
        Ok(as_json(Published { published: true }))
    }
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(as = SubscribeRequest)]
pub(super) struct SubscribeReq {
    /// Your client id (1 to 256 bytes, no control characters); registers
    /// the HTTP client on first use.
    #[schema(
        min_length = 1,
        max_length = 256,
        pattern = r"^[^\x00-\x1f\x7f-\x9f]+$"
    )]
    client: String,
    /// The topic pattern (`*` one token, `>` the rest).
    pattern: String,
    /// A queue group: each message goes to one member.
    queue_group: Option<String>,
    /// A service subscription: requests to `pattern` as a service come
    /// here.
    #[serde(default)]
    service: bool,
}

impl ApiCall for SubscribeReq {
    fn client(&self) -> &str {
        &self.client
    }

    /// The subscription id is the call's correlation id.
    fn into_frame(self, id: u64, _: &str, _: &HttpConfig) -> Result<Frame, ApiError> {
        Ok(Frame::from(proto::Subscribe {
            id,
            sub_id: id,
            pattern: self.pattern,
            queue_group: self.queue_group.unwrap_or_default(),
            service: self.service,
        }))
    }

    fn answer(id: u64, _: Frame) -> Result<Value, ApiError> {
        Ok(as_json(Subscribed { sub_id: id }))
    }
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(as = UnsubscribeRequest)]
pub(super) struct UnsubscribeReq {
    /// Your client id (1 to 256 bytes, no control characters); registers
    /// the HTTP client on first use.
    #[schema(
        min_length = 1,
        max_length = 256,
        pattern = r"^[^\x00-\x1f\x7f-\x9f]+$"
    )]
    client: String,
    sub_id: u64,
}

impl ApiCall for UnsubscribeReq {
    fn client(&self) -> &str {
        &self.client
    }

    fn into_frame(self, id: u64, _: &str, _: &HttpConfig) -> Result<Frame, ApiError> {
        Ok(Frame::from(proto::Unsubscribe {
            id,
            sub_id: self.sub_id,
        }))
    }

    fn answer(_: u64, _: Frame) -> Result<Value, ApiError> {
        Ok(as_json(Unsubscribed { unsubscribed: true }))
    }
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(as = KvGetRequest)]
pub(super) struct KvGetReq {
    /// Your client id (1 to 256 bytes, no control characters); registers
    /// the HTTP client on first use.
    #[schema(
        min_length = 1,
        max_length = 256,
        pattern = r"^[^\x00-\x1f\x7f-\x9f]+$"
    )]
    client: String,
    key: String,
}

impl ApiCall for KvGetReq {
    fn client(&self) -> &str {
        &self.client
    }

    fn into_frame(self, id: u64, _: &str, _: &HttpConfig) -> Result<Frame, ApiError> {
        Ok(Frame::from(proto::KvGet { id, key: self.key }))
    }

    fn answer(_: u64, answer: Frame) -> Result<Value, ApiError> {
        let Some(Kind::KvValue(v)) = answer.kind else {
            return Err(ApiError::new(
                StatusCode::BAD_GATEWAY,
                "internal",
                "unexpected answer to a key/value read",
            ));
        };
        let mut o = Map::new();
        o.insert("key".into(), json!(v.key));
        o.insert("found".into(), json!(v.found));
        o.insert("version".into(), json!(v.version));
        if v.found {
            put_bytes(&mut o, "value", &v.value);
        }
        Ok(Value::Object(o))
    }
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(as = KvSetRequest)]
pub(super) struct KvSetReq {
    /// Your client id (1 to 256 bytes, no control characters); registers
    /// the HTTP client on first use.
    #[schema(
        min_length = 1,
        max_length = 256,
        pattern = r"^[^\x00-\x1f\x7f-\x9f]+$"
    )]
    client: String,
    key: String,
    /// The value as UTF-8 text.
    value: Option<String>,
    /// The value as base64 (give one of `value`, `value_b64`).
    #[schema(format = Byte)]
    value_b64: Option<String>,
    /// Compare-and-set: fail with 409 unless the key is at this version
    /// (0: absent).
    expect_version: Option<u64>,
    /// The value, decoded by [`ApiCall::check`].
    #[serde(skip)]
    decoded: bytes::Bytes,
}

impl ApiCall for KvSetReq {
    fn client(&self) -> &str {
        &self.client
    }

    /// Decodes the value (refused before the client is registered).
    fn check(&mut self) -> Result<(), ApiError> {
        self.decoded = PayloadIn {
            payload: self.value.take(),
            payload_b64: self.value_b64.take(),
        }
        .bytes()
        .map_err(|e| ApiError::bad(e.message.replace("payload", "value")))?;
        Ok(())
    }

    fn into_frame(self, id: u64, _: &str, _: &HttpConfig) -> Result<Frame, ApiError> {
        Ok(Frame::from(proto::KvSet {
            id,
            key: self.key,
            value: self.decoded,
            expect_version: self.expect_version,
        }))
    }

    fn answer(_: u64, answer: Frame) -> Result<Value, ApiError> {
        let Some(Kind::KvValue(v)) = answer.kind else {
            return Err(ApiError::new(
                StatusCode::BAD_GATEWAY,
                "internal",
                "unexpected answer to a key/value write",
            ));
        };
        Ok(as_json(KvWritten {
            key: v.key,
            version: v.version,
        }))
    }
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(as = KvDeleteRequest)]
pub(super) struct KvDeleteReq {
    /// Your client id (1 to 256 bytes, no control characters); registers
    /// the HTTP client on first use.
    #[schema(
        min_length = 1,
        max_length = 256,
        pattern = r"^[^\x00-\x1f\x7f-\x9f]+$"
    )]
    client: String,
    key: String,
    /// Compare-and-delete: fail with 409 unless the key is at this
    /// version.
    expect_version: Option<u64>,
}

impl ApiCall for KvDeleteReq {
    fn client(&self) -> &str {
        &self.client
    }

    fn into_frame(self, id: u64, _: &str, _: &HttpConfig) -> Result<Frame, ApiError> {
        Ok(Frame::from(proto::KvDelete {
            id,
            key: self.key,
            expect_version: self.expect_version,
        }))
    }

    /// The deletion's version (a delete of a missing key is one too).
    fn answer(_: u64, answer: Frame) -> Result<Value, ApiError> {
        let Some(Kind::KvValue(v)) = answer.kind else {
            return Err(ApiError::new(
                StatusCode::BAD_GATEWAY,
                "internal",
                "unexpected answer to a key/value delete",
            ));
        };
        Ok(as_json(KvDeleted {
            key: v.key,
            deleted: true,
            version: v.version,
        }))
    }
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(as = KvWatchRequest)]
pub(super) struct KvWatchReq {
    /// Your client id (1 to 256 bytes, no control characters); registers
    /// the HTTP client on first use.
    #[schema(
        min_length = 1,
        max_length = 256,
        pattern = r"^[^\x00-\x1f\x7f-\x9f]+$"
    )]
    client: String,
    /// The key, or the prefix when `prefix` is true.
    key: String,
    /// Watch every key starting with `key`.
    #[serde(default)]
    prefix: bool,
}

impl ApiCall for KvWatchReq {
    fn client(&self) -> &str {
        &self.client
    }

    /// The watch id is the call's correlation id; the updates (current
    /// values first) arrive through `listen`.
    fn into_frame(self, id: u64, _: &str, _: &HttpConfig) -> Result<Frame, ApiError> {
        Ok(Frame::from(proto::KvWatch {
            id,
            watch_id: id,
            key: self.key,
            prefix: self.prefix,
        }))
    }

    fn answer(id: u64, _: Frame) -> Result<Value, ApiError> {
        Ok(as_json(Watching { watch_id: id }))
    }
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(as = KvUnwatchRequest)]
pub(super) struct KvUnwatchReq {
    /// Your client id (1 to 256 bytes, no control characters); registers
    /// the HTTP client on first use.
    #[schema(
        min_length = 1,
        max_length = 256,
        pattern = r"^[^\x00-\x1f\x7f-\x9f]+$"
    )]
    client: String,
    watch_id: u64,
}

impl ApiCall for KvUnwatchReq {
    fn client(&self) -> &str {
        &self.client
    }

    fn into_frame(self, id: u64, _: &str, _: &HttpConfig) -> Result<Frame, ApiError> {
        Ok(Frame::from(proto::KvUnwatch {
            id,
            watch_id: self.watch_id,
        }))
    }

    fn answer(_: u64, _: Frame) -> Result<Value, ApiError> {
        Ok(as_json(Unwatched { unwatched: true }))
    }
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(as = LeaveRequest)]
pub(super) struct LeaveReq {
    /// Your client id (1 to 256 bytes, no control characters); registers
    /// the HTTP client on first use.
    #[schema(
        min_length = 1,
        max_length = 256,
        pattern = r"^[^\x00-\x1f\x7f-\x9f]+$"
    )]
    pub(super) client: String,
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
    let out = |client: String, frames: Vec<Frame>| CheckedBody {
        client,
        frames,
        awaits_answer: false,
        poll: None,
    };
    let r = match path {
        "/v1/listen" => parse::<ListenReq>(body).and_then(|req| {
            checked(&req.client)?;
            let poll = Some(req.bounds(cfg));
            Ok(CheckedBody {
                poll,
                ..out(req.client, Vec::new())
            })
        }),
        "/v1/send" => check::<SendReq>(body, cfg),
        "/v1/request" => check::<RequestReq>(body, cfg),
        "/v1/reply" => parse::<ReplyReq>(body).and_then(|req| {
            checked(&req.client)?;
            let client = req.client.clone();
            let frame = req.frame(&client, None)?;
            let ping = Frame::from(proto::Ping { nonce: 1 });
            Ok(out(client, vec![frame, ping]))
        }),
        "/v1/broadcast" => check::<BroadcastReq>(body, cfg),
        "/v1/publish" => check::<PublishReq>(body, cfg),
        "/v1/subscribe" => check::<SubscribeReq>(body, cfg),
        "/v1/unsubscribe" => check::<UnsubscribeReq>(body, cfg),
        "/v1/kv/get" => check::<KvGetReq>(body, cfg),
        "/v1/kv/set" => check::<KvSetReq>(body, cfg),
        "/v1/kv/delete" => check::<KvDeleteReq>(body, cfg),
        "/v1/kv/watch" => check::<KvWatchReq>(body, cfg),
        "/v1/kv/unwatch" => check::<KvUnwatchReq>(body, cfg),
        "/v1/leave" => parse::<LeaveReq>(body).map(|req| out(req.client, Vec::new())),
        _ => Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            "no such POST route",
        )),
    };
    r.map_err(|e| (e.status.as_u16(), e.code, e.message))
}

/// The steps of [`ApiCall`] up to the frame, with correlation id 1.
fn check<Req: ApiCall>(
    body: Result<Bytes, axum::extract::rejection::BytesRejection>,
    cfg: &HttpConfig,
) -> Result<CheckedBody, ApiError> {
    let mut req: Req = parse(body)?;
    req.check()?;
    let client = req.client().to_owned();
    validate_client_id(&client).map_err(ApiError::bad)?;
    let frame = req.into_frame(1, &client, cfg)?;
    Ok(CheckedBody {
        client,
        frames: vec![frame],
        awaits_answer: true,
        poll: None,
    })
}
