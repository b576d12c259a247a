//! The gateway's OpenAPI document, generated once when first asked for: the
//! schema of every request body is derived (utoipa's `ToSchema`) from the
//! very serde type the handler deserializes, the answer schemas from the
//! types the handlers answer with ([`answers`](super::answers)), and the
//! paths from [`OPERATIONS`], which a test holds equal to the routes
//! served. Served at `/openapi.json`; nothing is written twice by hand.

use std::sync::OnceLock;

use serde_json::{json, Map, Value};
use utoipa::openapi::{RefOr, Schema};
use utoipa::ToSchema;

use super::answers::{
    ClientList, ErrorBody, KvDeleted, KvRead, KvWritten, Left, Polled, Published, Queued,
    RequestAnswer, Sent, Status, Subscribed, TopicList, Unsubscribed, Unwatched, Watching,
};
use super::calls::{
    BroadcastReq, KvDeleteReq, KvGetReq, KvSetReq, KvUnwatchReq, KvWatchReq, LeaveReq, ListenReq,
    PublishReq, ReplyReq, RequestReq, SendReq, SubscribeReq, UnsubscribeReq,
};

/// How an operation is reached: `(method, path, summary, request body
/// schema, answer)`.
struct Operation {
    method: &'static str,
    path: &'static str,
    summary: &'static str,
    /// The body's schema name (POST routes).
    body: Option<&'static str>,
    /// Status and content of the success answer.
    ok: Answer,
    /// The error answers it may give, by name in `components.responses`.
    errors: &'static [&'static str],
    /// Whether the bearer token is needed.
    bearer: bool,
}

/// A success answer.
enum Answer {
    /// `200` JSON of this schema.
    Json(&'static str),
    /// `200` of this media type, no schema.
    Media(&'static str),
    /// `101 Switching Protocols`.
    Upgrade,
}

/// The errors of every API call that takes a body.
const BODY: &[&str] = &[
    "BadRequest",
    "Unauthorized",
    "Forbidden",
    "Gone",
    "TooLarge",
    "Unavailable",
];

/// Every operation the gateway serves (the test holds this to the routes).
const OPERATIONS: &[Operation] = &[
    Operation { method: "get", path: "/", summary: "dashboard page (assets embedded; give the token as #token=...)", body: None, ok: Answer::Media("text/html"), errors: &[], bearer: false },
    Operation { method: "get", path: "/dashboard.js", summary: "dashboard script", body: None, ok: Answer::Media("text/javascript"), errors: &[], bearer: false },
    Operation { method: "get", path: "/dashboard.css", summary: "dashboard style", body: None, ok: Answer::Media("text/css"), errors: &[], bearer: false },
    Operation { method: "get", path: "/healthz", summary: "liveness (no token needed)", body: None, ok: Answer::Media("text/plain"), errors: &[], bearer: false },
    Operation { method: "get", path: "/openapi.json", summary: "this document", body: None, ok: Answer::Media("application/json"), errors: &[], bearer: false },
    Operation { method: "get", path: "/metrics", summary: "Prometheus metrics (text format 0.0.4; names in docs/OPERATIONS.md)", body: None, ok: Answer::Media("text/plain"), errors: &["Unauthorized", "Forbidden"], bearer: true },
    Operation { method: "get", path: "/v1/status", summary: "hub status and counters", body: None, ok: Answer::Json("Status"), errors: &["Unauthorized", "Forbidden", "Unavailable"], bearer: true },
    Operation { method: "get", path: "/v1/clients", summary: "registered clients of every transport", body: None, ok: Answer::Json("ClientList"), errors: &["Unauthorized", "Forbidden", "Unavailable"], bearer: true },
    Operation { method: "get", path: "/v1/ws", summary: "WebSocket carrying native protobuf frames, one Frame per binary message, no length prefix; authenticated by the native Hello/Challenge/Auth handshake", body: None, ok: Answer::Upgrade, errors: &["Forbidden", "TooMany"], bearer: false },
    Operation { method: "get", path: "/v1/feed", summary: "WebSocket sending the dashboard view as JSON text twice a second (the token may be given as ?token=)", body: None, ok: Answer::Upgrade, errors: &["Unauthorized", "Forbidden"], bearer: true },
    Operation { method: "get", path: "/v1/topics", summary: "subscribed patterns with their subscriber counts (the dashboard's topics table)", body: None, ok: Answer::Json("TopicList"), errors: &["Unauthorized", "Forbidden", "Unavailable"], bearer: true },
    Operation { method: "post", path: "/v1/listen", summary: "long poll: wait for messages for this client (held until a message arrives or the timeout passes; messages between polls wait in the client's bounded mailbox)", body: Some("ListenRequest"), ok: Answer::Json("Polled"), errors: &["BadRequest", "Unauthorized", "Forbidden", "Gone", "TooLarge", "Unavailable", "TooMany"], bearer: true },
    Operation { method: "post", path: "/v1/send", summary: "send a direct message to a client id", body: Some("SendRequest"), ok: Answer::Json("Queued"), errors: &["BadRequest", "Unauthorized", "Forbidden", "Gone", "TooLarge", "Unavailable", "NotFound", "TooMany", "Conflict"], bearer: true },
    Operation { method: "post", path: "/v1/request", summary: "send a request and wait for the target's reply", body: Some("RequestRequest"), ok: Answer::Json("RequestAnswer"), errors: &["BadRequest", "Unauthorized", "Forbidden", "Gone", "TooLarge", "Unavailable", "NotFound", "TooMany", "Timeout", "Conflict"], bearer: true },
    Operation { method: "post", path: "/v1/reply", summary: "answer a request received through listen", body: Some("ReplyRequest"), ok: Answer::Json("Sent"), errors: &["BadRequest", "Unauthorized", "Forbidden", "NotFound", "Conflict", "Gone", "TooLarge", "Unavailable"], bearer: true },
    Operation { method: "post", path: "/v1/broadcast", summary: "send to every other connected client", body: Some("BroadcastRequest"), ok: Answer::Json("Sent"), errors: BODY, bearer: true },
    Operation { method: "post", path: "/v1/publish", summary: "publish to a topic", body: Some("PublishRequest"), ok: Answer::Json("Published"), errors: &["BadRequest", "Unauthorized", "Forbidden", "Gone", "TooLarge", "Unavailable", "TooMany"], bearer: true },
    Operation { method: "post", path: "/v1/subscribe", summary: "subscribe this client to a topic pattern (deliveries arrive through listen)", body: Some("SubscribeRequest"), ok: Answer::Json("Subscribed"), errors: &["BadRequest", "Unauthorized", "Forbidden", "Gone", "TooLarge", "Unavailable", "TooMany"], bearer: true },
    Operation { method: "post", path: "/v1/unsubscribe", summary: "cancel a subscription", body: Some("UnsubscribeRequest"), ok: Answer::Json("Unsubscribed"), errors: &["BadRequest", "Unauthorized", "Forbidden", "Gone", "TooLarge", "Unavailable", "NotFound"], bearer: true },
    Operation { method: "post", path: "/v1/kv/get", summary: "read a key", body: Some("KvGetRequest"), ok: Answer::Json("KvRead"), errors: BODY, bearer: true },
    Operation { method: "post", path: "/v1/kv/set", summary: "write a key", body: Some("KvSetRequest"), ok: Answer::Json("KvWritten"), errors: &["BadRequest", "Unauthorized", "Forbidden", "Gone", "TooLarge", "Unavailable", "Conflict", "TooMany"], bearer: true },
    Operation { method: "post", path: "/v1/kv/delete", summary: "delete a key", body: Some("KvDeleteRequest"), ok: Answer::Json("KvDeleted"), errors: &["BadRequest", "Unauthorized", "Forbidden", "Gone", "TooLarge", "Unavailable", "NotFound", "Conflict", "TooMany"], bearer: true },
    Operation { method: "post", path: "/v1/kv/watch", summary: "watch a key or a prefix; the current values, then each change, arrive through /v1/listen as kv_update messages", body: Some("KvWatchRequest"), ok: Answer::Json("Watching"), errors: &["BadRequest", "Unauthorized", "Forbidden", "Gone", "TooLarge", "Unavailable", "TooMany"], bearer: true },
    Operation { method: "post", path: "/v1/kv/unwatch", summary: "stop a watch", body: Some("KvUnwatchRequest"), ok: Answer::Json("Unwatched"), errors: &["BadRequest", "Unauthorized", "Forbidden", "Gone", "TooLarge", "Unavailable", "NotFound", "TooMany"], bearer: true },
    Operation { method: "post", path: "/v1/leave", summary: "deregister this HTTP client now (otherwise it is deregistered after the idle timeout without polls)", body: Some("LeaveRequest"), ok: Answer::Json("Left"), errors: &["BadRequest", "Unauthorized", "Forbidden", "Gone", "TooLarge", "Unavailable", "NotFound"], bearer: true },
];

/// The error answers, by name: `(name, status, description)`.
const ERRORS: &[(&str, &str, &str)] = &[
    ("BadRequest", "400", "malformed JSON, unknown field, or an invalid argument"),
    ("Unauthorized", "401", "missing or wrong bearer token"),
    ("Forbidden", "403", "the listener is on loopback and the Host or Origin header is not a loopback name (DNS-rebinding defence), or the client may not do this"),
    ("NotFound", "404", "no such client (or the target left), no responder for a service, no such request to reply to, no such key to delete, or no such watch"),
    ("Conflict", "409", "compare-and-set version mismatch, or the target does not take this kind of message now (not_listening)"),
    ("Gone", "410", "this HTTP client was deregistered meanwhile (taken over, idle, shutdown); call again"),
    ("TooLarge", "413", "request body over the gateway's limit (default 2 MiB)"),
    ("TooMany", "429", "too many polls held (per client or in total), or a hub limit was reached"),
    ("Unavailable", "503", "the target's queue stayed full, or the hub is shutting down"),
    ("Timeout", "504", "no reply within the request's timeout"),
];

/// The document, built once.
pub(super) fn document() -> &'static str {
    static DOC: OnceLock<String> = OnceLock::new();
    DOC.get_or_init(|| serde_json::to_string_pretty(&build()).unwrap_or_default())
}

/// `T`'s schema as JSON, registered under its name in `schemas`, with the
/// schemas it names.
fn add<T: ToSchema>(schemas: &mut Map<String, Value>) {
    let mut named: Vec<(String, RefOr<Schema>)> = vec![(T::name().into_owned(), T::schema())];
    T::schemas(&mut named);
    for (name, schema) in named {
        let v = serde_json::to_value(schema).unwrap_or(Value::Null);
        schemas.insert(name, v);
    }
}

/// A request body's schema: flattened parts (`allOf` of objects, from
/// `#[serde(flatten)]`) merged into one object, which refuses unknown
/// fields as the serde type does (`deny_unknown_fields`).
fn add_body<T: ToSchema>(schemas: &mut Map<String, Value>) {
    let name = T::name().into_owned();
    let v = serde_json::to_value(T::schema()).unwrap_or(Value::Null);
    let parts = match v.get("allOf").and_then(Value::as_array) {
        Some(parts) => parts.clone(),
        None => vec![v],
    };
    let mut properties = Map::new();
    let mut required: Vec<Value> = Vec::new();
    for part in parts {
        if let Some(p) = part.get("properties").and_then(Value::as_object) {
            properties.extend(p.clone());
        }
        if let Some(r) = part.get("required").and_then(Value::as_array) {
            required.extend(r.iter().cloned());
        }
    }
    let mut o = json!({
        "type": "object",
        "additionalProperties": false,
        "properties": properties,
    });
    if !required.is_empty() {
        o["required"] = Value::Array(required);
    }
    refine(&name, &mut o);
    schemas.insert(name, o);
}

/// No control characters (Rust's `char::is_control`).
const PRINTABLE: &str = r"^[^\x00-\x1f\x7f-\x9f]*$";

/// No whitespace or control characters (queue groups).
const SPACELESS: &str = r"^[^\s\x00-\x1f\x7f-\x9f]*$";

/// One segment of a topic: no dot, wildcard, whitespace or control
/// character (`subject::validate_topic`).
const SEGMENT: &str = r"[^.*>\s\x00-\x1f\x7f-\x9f]+";

/// What the handlers check beyond the serde types, in the schema, so a
/// body the schema allows is one the gateway takes: keys, topics and
/// patterns and queue groups by their grammar, one of `payload`/`payload_b64` (and
/// `value`/`value_b64`), exactly one of `to`/`service` for a request, no
/// queue group on a service subscription, and
/// header maps that may be `null` like every optional field.
fn refine(name: &str, o: &mut Value) {
    let topic = format!("^{SEGMENT}(\\.{SEGMENT})*$");
    let pattern = format!("^((\\*|{SEGMENT})\\.)*(\\*|>|{SEGMENT})$");
    let Some(props) = o["properties"].as_object_mut() else {
        return;
    };
    for (field, schema) in props.iter_mut() {
        match field.as_str() {
            "headers" | "headers_b64" => {
                *schema = json!({ "anyOf": [schema.clone(), { "type": "null" }] });
            }
            // Reads and deletes take any key (one that cannot exist is
            // not found); writes and watches check it.
            "key" if name == "KvSetRequest" => {
                schema["pattern"] = json!(PRINTABLE);
                schema["minLength"] = json!(1);
            }
            "key" if name == "KvWatchRequest" => schema["pattern"] = json!(PRINTABLE),
            "queue_group" => schema["pattern"] = json!(SPACELESS),
            "topic" => schema["pattern"] = json!(topic),
            "service" if name == "RequestRequest" => schema["pattern"] = json!(topic),
            "pattern" => schema["pattern"] = json!(pattern),
            _ => {}
        }
    }
    let has = |f: &str| o["properties"].get(f).is_some();
    let mut rules = Vec::new();
    for (text, b64) in [("payload", "payload_b64"), ("value", "value_b64")] {
        if has(text) && has(b64) {
            rules.push(json!({ "not": {
                "required": [text, b64],
                "properties": { text: { "type": "string" }, b64: { "type": "string" } },
            } }));
        }
    }
    if name == "RequestRequest" {
        let given = |f: &str| json!({ "required": [f], "properties": { f: { "type": "string" } } });
        rules.push(json!({ "oneOf": [given("to"), given("service")] }));
    }
    if name == "SubscribeRequest" {
        // A service subscription takes no queue group.
        rules.push(json!({ "not": {
            "required": ["service", "queue_group"],
            "properties": {
                "service": { "const": true },
                "queue_group": { "type": "string", "minLength": 1 },
            },
        } }));
    }
    if name == "KvWatchRequest" {
        // An empty key watches everything, as a prefix only.
        rules.push(json!({ "anyOf": [
            { "properties": { "key": { "minLength": 1 } } },
            { "required": ["prefix"], "properties": { "prefix": { "const": true } } },
        ] }));
    }
    if !rules.is_empty() {
        o["allOf"] = Value::Array(rules);
    }
}

/// The header maps' schemas (`Headers`, `HeadersB64`), which no serde type
/// describes (a hand-written deserializer keeps the order of entries).
fn header_schemas(schemas: &mut Map<String, Value>) {
    let values = |format: Option<&str>| {
        let mut s = json!({ "type": "string" });
        if let Some(f) = format {
            s["format"] = json!(f);
        }
        json!({ "oneOf": [s.clone(), { "type": "array", "items": s, "maxItems": 64 }] })
    };
    // Header keys: 1 to 256 bytes without control characters.
    let keys = json!({ "minLength": 1, "maxLength": 256, "pattern": PRINTABLE });
    schemas.insert(
        "Headers".into(),
        json!({
            "type": "object",
            "maxProperties": 64,
            "propertyNames": keys.clone(),
            "additionalProperties": values(None),
            "description": "application headers: keys (1 to 256 bytes, no control characters) to UTF-8 values; a key that repeats maps to an array of its values. At most 64 headers of 64 KiB together (with headers_b64). JSON objects carry no order between keys; the values of one key keep theirs",
        }),
    );
    schemas.insert(
        "HeadersB64".into(),
        json!({
            "type": "object",
            "maxProperties": 64,
            "propertyNames": keys,
            "additionalProperties": values(Some("byte")),
            "description": "application headers whose values are not UTF-8, as base64 (the way payload_b64 goes with payload); read after headers",
        }),
    );
}

/// Builds the document.
fn build() -> Value {
    let mut schemas = Map::new();
    add_body::<ListenReq>(&mut schemas);
    add_body::<SendReq>(&mut schemas);
    add_body::<RequestReq>(&mut schemas);
    add_body::<ReplyReq>(&mut schemas);
    add_body::<BroadcastReq>(&mut schemas);
    add_body::<PublishReq>(&mut schemas);
    add_body::<SubscribeReq>(&mut schemas);
    add_body::<UnsubscribeReq>(&mut schemas);
    add_body::<KvGetReq>(&mut schemas);
    add_body::<KvSetReq>(&mut schemas);
    add_body::<KvDeleteReq>(&mut schemas);
    add_body::<KvWatchReq>(&mut schemas);
    add_body::<KvUnwatchReq>(&mut schemas);
    add_body::<LeaveReq>(&mut schemas);
    header_schemas(&mut schemas);
    add::<ErrorBody>(&mut schemas);
    add::<Queued>(&mut schemas);
    add::<Sent>(&mut schemas);
    add::<Published>(&mut schemas);
    add::<Unsubscribed>(&mut schemas);
    add::<Unwatched>(&mut schemas);
    add::<Left>(&mut schemas);
    add::<Subscribed>(&mut schemas);
    add::<Watching>(&mut schemas);
    add::<KvWritten>(&mut schemas);
    add::<KvDeleted>(&mut schemas);
    add::<KvRead>(&mut schemas);
    add::<RequestAnswer>(&mut schemas);
    add::<Polled>(&mut schemas);
    add::<ClientList>(&mut schemas);
    add::<TopicList>(&mut schemas);
    add::<Status>(&mut schemas);

    let error =
        json!({ "application/json": { "schema": { "$ref": "#/components/schemas/Error" } } });
    let mut responses = Map::new();
    for (name, _, description) in ERRORS {
        responses.insert(
            (*name).into(),
            json!({ "description": description, "content": error }),
        );
    }
    let mut paths = Map::new();
    for op in OPERATIONS {
        let mut answers = Map::new();
        match op.ok {
            Answer::Json(schema) => answers.insert(
                "200".into(),
                json!({ "description": "done", "content": { "application/json": { "schema": { "$ref": format!("#/components/schemas/{schema}") } } } }),
            ),
            Answer::Media(media) => answers.insert(
                "200".into(),
                json!({ "description": "done", "content": { media: {} } }),
            ),
            Answer::Upgrade => answers.insert(
                "101".into(),
                json!({ "description": "switching protocols" }),
            ),
        };
        for name in op.errors {
            let status = ERRORS
                .iter()
                .find(|(n, ..)| n == name)
                .map_or("500", |(_, s, _)| s);
            answers.insert(
                status.into(),
                json!({ "$ref": format!("#/components/responses/{name}") }),
            );
        }
        let mut o = json!({ "summary": op.summary, "responses": answers });
        if op.bearer {
            o["security"] = json!([{ "bearer": [] }]);
        }
        if let Some(body) = op.body {
            o["requestBody"] = json!({
                "required": true,
                "content": { "application/json": { "schema": { "$ref": format!("#/components/schemas/{body}") } } },
            });
        }
        if op.path == "/v1/feed" {
            o["parameters"] = json!([{ "name": "token", "in": "query", "required": false, "schema": { "type": "string" } }]);
        }
        let item = paths.entry(op.path).or_insert_with(|| json!({}));
        item[op.method] = o;
    }
    json!({
        "openapi": "3.1.0",
        "info": {
            "title": "switchboard hub gateway",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "HTTP long-poll gateway, WebSocket transport and operations endpoints of a switchboard hub. Authenticate with 'Authorization: Bearer <token>' where the token is printed by 'switchboard token' (hex HMAC of the hub secret). On a loopback listener, requests whose Host or Origin is not a loopback name are refused. Generated from the gateway's code.",
        },
        "paths": paths,
        "components": {
            "securitySchemes": { "bearer": { "type": "http", "scheme": "bearer" } },
            "schemas": schemas,
            "responses": responses,
        },
    })
}
