//! The JSON answers' types (each deriving its OpenAPI schema with utoipa's
//! `ToSchema`) and the references to the header maps' schemas, for the
//! handlers and the generated document (the `openapi` room).

use serde::Serialize;
use serde_json::Value;
use utoipa::openapi::Ref;
use utoipa::ToSchema;

/// An answer type as the JSON the handler returns.
pub(super) fn as_json<T: Serialize>(t: T) -> Value {
    serde_json::to_value(t).unwrap_or(Value::Null)
}

/// `headers` of a body: a reference to the `Headers` schema.
pub(super) fn headers_ref() -> Ref {
    Ref::from_schema_name("Headers")
}

/// `headers_b64` of a body: a reference to the `HeadersB64` schema.
pub(super) fn headers_b64_ref() -> Ref {
    Ref::from_schema_name("HeadersB64")
}

/// An error answer.
#[derive(Serialize, ToSchema)]
#[schema(as = Error)]
pub(super) struct ErrorBody {
    /// A short code, e.g. `no_such_client`, `no_responders`,
    /// `not_listening`, `timeout`, `unauthorized`.
    pub(super) error: String,
    /// What went wrong and what to do.
    pub(super) message: String,
}

/// Declares answer types of one boolean field that is always `true`.
macro_rules! flag_answer {
    ($($name:ident { $field:ident }),* $(,)?) => {$(
        #[doc = concat!("`{\"", stringify!($field), "\": true}`.")]
        #[derive(Serialize, ToSchema)]
        pub(super) struct $name {
            #[doc = concat!("Always `true`.")]
            pub(super) $field: bool,
        }
    )*};
}

flag_answer!(
    Queued { queued },
    Sent { sent },
    Published { published },
    Unsubscribed { unsubscribed },
    Unwatched { unwatched },
    Left { left },
);

/// The answer to `subscribe`.
#[derive(Serialize, ToSchema)]
pub(super) struct Subscribed {
    /// The subscription's id (the gateway's, unique per HTTP client);
    /// deliveries carry it.
    pub(super) sub_id: u64,
}

/// The answer to `kv/watch`.
#[derive(Serialize, ToSchema)]
pub(super) struct Watching {
    /// The watch's id; each `kv_update` message `listen` returns carries
    /// it.
    pub(super) watch_id: u64,
}

/// The answer to `kv/set`.
#[derive(Serialize, ToSchema)]
pub(super) struct KvWritten {
    /// The key.
    pub(super) key: String,
    /// Its new version.
    pub(super) version: u64,
}

/// The answer to `kv/delete`.
#[derive(Serialize, ToSchema)]
pub(super) struct KvDeleted {
    /// The key.
    pub(super) key: String,
    /// Always `true` (a key that does not exist is `404 not_found`).
    pub(super) deleted: bool,
    /// The deletion's version.
    pub(super) version: u64,
}

/// The answer to `kv/get`.
#[derive(Serialize, ToSchema)]
#[allow(dead_code)] // the answer is built field by field (value or value_b64)
pub(super) struct KvRead {
    /// The key.
    key: String,
    /// Whether the key has a value.
    found: bool,
    /// The key's version (of its deletion when not found).
    version: u64,
    /// The value when found and UTF-8.
    value: Option<String>,
    /// The value when found and not UTF-8, as base64.
    #[schema(format = Byte)]
    value_b64: Option<String>,
}

/// The answer to `request`: the reply.
#[derive(Serialize, ToSchema)]
#[allow(dead_code)] // built field by field (payload or payload_b64)
pub(super) struct RequestAnswer {
    /// The responder's client id.
    from: String,
    /// Whether the responder answered with an error.
    is_error: bool,
    /// The reply's payload when UTF-8 (absent when empty).
    payload: Option<String>,
    /// The reply's payload when not UTF-8, as base64.
    #[schema(format = Byte)]
    payload_b64: Option<String>,
    /// UTF-8 header values.
    #[schema(schema_with = headers_ref, required = false)]
    headers: Option<Value>,
    /// Other header values, as base64.
    #[schema(schema_with = headers_b64_ref, required = false)]
    headers_b64: Option<Value>,
}

/// One message a poll returns; which fields it has depends on `kind`.
#[derive(Serialize, ToSchema)]
#[allow(dead_code)] // built field by field from the frame
pub(super) struct Message {
    /// Position in the client's mailbox (send it as `ack`).
    seq: u64,
    /// What the message is.
    #[schema(pattern = "^(direct|request|broadcast|deliver|presence|kv_update|error|session)$")]
    kind: String,
    /// `request`: its id (reply with it); `error`: the failed call's id.
    id: Option<u64>,
    /// The sender's client id.
    from: Option<String>,
    /// `request`: the method name.
    method: Option<String>,
    /// `request`: the requester's timeout, milliseconds.
    timeout_ms: Option<u64>,
    /// `request` through a service subscription: the service subject.
    service: Option<String>,
    /// `deliver`: the topic.
    topic: Option<String>,
    /// `deliver` and service `request`: the subscription's id.
    sub_id: Option<u64>,
    /// `deliver`: where replies should go.
    reply_to: Option<String>,
    /// The payload when UTF-8 (absent when empty).
    payload: Option<String>,
    /// The payload when not UTF-8, as base64.
    #[schema(format = Byte)]
    payload_b64: Option<String>,
    /// `presence`: `joined` or `left`.
    event: Option<String>,
    /// `presence`: the client.
    client: Option<ClientInfo>,
    /// `presence`: why.
    reason: Option<String>,
    /// `kv_update`: the watch's id.
    watch_id: Option<u64>,
    /// `kv_update`: the key.
    key: Option<String>,
    /// `kv_update`: the key's version.
    version: Option<u64>,
    /// `kv_update`: whether the key was deleted.
    deleted: Option<bool>,
    /// `kv_update`: who wrote it.
    by: Option<String>,
    /// `kv_update`: the value when UTF-8.
    value: Option<String>,
    /// `kv_update`: the value when not UTF-8, as base64.
    #[schema(format = Byte)]
    value_b64: Option<String>,
    /// `error`: the code's name.
    code: Option<String>,
    /// `error`: what went wrong.
    message: Option<String>,
    /// `session`: the peer.
    peer: Option<String>,
    /// `session`: the whole native frame, as base64.
    #[schema(format = Byte)]
    frame_b64: Option<String>,
    /// UTF-8 header values.
    #[schema(schema_with = headers_ref, required = false)]
    headers: Option<Value>,
    /// Other header values, as base64.
    #[schema(schema_with = headers_b64_ref, required = false)]
    headers_b64: Option<Value>,
}

/// The answer to `listen`.
#[derive(Serialize, ToSchema)]
#[allow(dead_code)] // built by the mailbox
pub(super) struct Polled {
    /// The messages, oldest first (empty when the poll timed out).
    messages: Vec<Message>,
    /// Deliveries dropped since the last poll because the mailbox was full.
    dropped: u64,
    /// `seq` of the last message returned (send it as `ack` next time).
    ack: u64,
}

/// One registered client.
#[derive(Serialize, ToSchema)]
#[allow(dead_code)] // built by views::client_json
pub(super) struct ClientInfo {
    /// Its id.
    client_id: String,
    /// How it is connected (`tcp`, `tls`, `unix`, `http`, `ws`, `memory`).
    transport: String,
    /// Its peer address.
    addr: String,
    /// When it registered, Unix milliseconds.
    connected_at_ms: u64,
    /// What it says it is.
    agent: String,
}

/// The answer to `GET /v1/clients`.
#[derive(Serialize, ToSchema)]
#[allow(dead_code)]
pub(super) struct ClientList {
    /// Sorted by id.
    clients: Vec<ClientInfo>,
}

/// One subscribed pattern.
#[derive(Serialize, ToSchema)]
#[allow(dead_code)]
pub(super) struct Topic {
    /// The pattern.
    pattern: String,
    /// Subscriptions with it.
    subscribers: u64,
}

/// The answer to `GET /v1/topics`.
#[derive(Serialize, ToSchema)]
#[allow(dead_code)]
pub(super) struct TopicList {
    /// Sorted by pattern.
    topics: Vec<Topic>,
}

/// The answer to `GET /v1/status`.
#[derive(Serialize, ToSchema)]
#[allow(dead_code)] // built by views::status_json
pub(super) struct Status {
    /// The hub's service name.
    service: Option<String>,
    /// The hub's instance id.
    instance_id: Option<String>,
    /// Seconds since the hub started.
    uptime_s: u64,
    /// Registered clients.
    clients: u64,
    /// Subscriptions.
    subscriptions: u64,
    /// Frames received.
    msgs_in: u64,
    /// Frames sent.
    msgs_out: u64,
    /// Bytes received.
    bytes_in: u64,
    /// Bytes sent.
    bytes_out: u64,
    /// Deliveries dropped for slow consumers.
    dropped: u64,
    /// Frames queued to all clients.
    queue_depth: u64,
    /// Requests awaiting a reply.
    pending_requests: u64,
    /// Live keys.
    kv_keys: u64,
    /// Further counters by name.
    counters: std::collections::BTreeMap<String, u64>,
}
