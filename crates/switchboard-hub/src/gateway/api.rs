//! The JSON side of the HTTP API: the error answer, reading a body, and
//! payloads and headers in and out of JSON.

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use serde::Deserialize;
use serde_json::{Map, Value};
use switchboard_wire::proto;
use switchboard_wire::{check_headers, ErrorCode};

/// An error answer, `{"error": code, "message"}`: status, a code name and a
/// message saying what to do.
#[derive(Debug, Clone)]
pub(super) struct ApiError {
    pub(super) status: StatusCode,
    pub(super) code: &'static str,
    pub(super) message: String,
}

impl ApiError {
    pub(super) fn new(
        status: StatusCode,
        code: &'static str,
        message: impl Into<String>,
    ) -> ApiError {
        ApiError {
            status,
            code,
            message: message.into(),
        }
    }

    /// `400 invalid_argument`.
    pub(super) fn bad(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, "invalid_argument", message)
    }

    /// The answer to a call the hub refused with an `Error` frame.
    pub(super) fn from_frame(e: &proto::Error) -> ApiError {
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
            ErrorCode::Forbidden => StatusCode::FORBIDDEN,
            ErrorCode::VersionMismatch | ErrorCode::IdTakenOver | ErrorCode::NotListening => {
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

    /// `503 shutting_down`.
    pub(super) fn shutting_down() -> ApiError {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "shutting_down",
            "the hub is shutting down; retry against the new hub",
        )
    }

    /// `410 gone`: the call's client was deregistered while it waited.
    pub(super) fn gone() -> ApiError {
        ApiError::new(
            StatusCode::GONE,
            "gone",
            "this client was deregistered (taken over by another connection, idle, or the hub is stopping); call again to register anew",
        )
    }
}

/// The JSON name of an error code.
pub(super) fn code_name(code: ErrorCode) -> &'static str {
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
        let body = super::answers::ErrorBody {
            error: self.code.to_owned(),
            message: self.message,
        };
        (self.status, axum::Json(body)).into_response()
    }
}

/// What a handler answers.
pub(super) type ApiResult = Result<Response, ApiError>;

/// `200` with a JSON body.
pub(super) fn ok_json(v: Value) -> ApiResult {
    Ok(axum::Json(v).into_response())
}

/// Reads a JSON request body: `413 too_large` over the body limit, `400`
/// when it is not the expected JSON.
pub(super) fn parse<T: serde::de::DeserializeOwned>(
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
    serde_json::from_slice(&body)
        .or_else(|e| {
            // JSON has one number type: `5.0` is the integer 5 to a JSON
            // Schema validator (and to JavaScript), so it is one here too.
            // Other errors keep serde's message (with its position).
            let Ok(mut v) = serde_json::from_slice::<Value>(&body) else {
                return Err(e);
            };
            if !whole_numbers_as_integers(&mut v) {
                return Err(e);
            }
            serde_json::from_value(v)
        })
        .map_err(|e| {
            ApiError::bad(format!(
                "malformed JSON body: {}; see /openapi.json",
                clipped(&e.to_string())
            ))
        })
}

/// Turns every number with no fractional part that fits in `u64` or `i64`
/// (written like `5.0` or `5e0`) into that integer; tells whether it
/// changed any.
fn whole_numbers_as_integers(v: &mut Value) -> bool {
    match v {
        Value::Number(n) if !n.is_i64() && !n.is_u64() => {
            let Some(f) = n.as_f64().filter(|f| f.fract() == 0.0) else {
                return false;
            };
            if (0.0..18_446_744_073_709_551_616.0).contains(&f) {
                *v = Value::from(f as u64);
            } else if (-9_223_372_036_854_775_808.0..0.0).contains(&f) {
                *v = Value::from(f as i64);
            } else {
                return false;
            }
            true
        }
        Value::Array(a) => a
            .iter_mut()
            .fold(false, |changed, x| whole_numbers_as_integers(x) | changed),
        Value::Object(o) => o
            .values_mut()
            .fold(false, |changed, x| whole_numbers_as_integers(x) | changed),
        _ => false,
    }
}

/// Cuts text that may quote the client's input (serde quotes unknown field
/// names and mistyped strings whole) for an error message: at most about
/// 300 characters, keeping the end, where serde says where the error is.
pub(super) fn clipped(s: &str) -> String {
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
#[derive(Debug, Default, Deserialize, utoipa::ToSchema)]
pub(super) struct PayloadIn {
    /// The payload as UTF-8 text.
    pub(super) payload: Option<String>,
    /// The payload as base64 (give one of `payload`, `payload_b64`).
    #[schema(format = Byte)]
    pub(super) payload_b64: Option<String>,
}

impl PayloadIn {
    /// The payload's bytes (empty when neither field is given).
    pub(super) fn bytes(self) -> Result<bytes::Bytes, ApiError> {
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
#[derive(Debug, Default, Deserialize, utoipa::ToSchema)]
pub(super) struct HeadersIn {
    #[schema(schema_with = super::answers::headers_ref, required = false)]
    headers: Option<HeaderObject>,
    #[schema(schema_with = super::answers::headers_b64_ref, required = false)]
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
    pub(super) fn into_headers(self) -> Result<Vec<proto::Header>, ApiError> {
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
pub(super) fn put_headers(obj: &mut Map<String, Value>, headers: &[proto::Header]) {
    let (mut text, mut b64) = (Map::new(), Map::new());
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
pub(super) fn put_bytes(obj: &mut Map<String, Value>, name: &str, data: &[u8]) {
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
