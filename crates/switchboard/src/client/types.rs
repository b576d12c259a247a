//! Plain data types handed to applications.

use bytes::Bytes;
use bytestring::ByteString;
use switchboard_wire::proto;

/// State of a client's connection to its hub, observed through
/// [`Client::state`](crate::Client::state).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ConnectionState {
    /// The first connection is being made.
    Connecting,
    /// Connected and authenticated.
    Connected {
        /// Address of the hub.
        addr: std::net::SocketAddr,
        /// Instance id of the hub.
        instance_id: String,
        /// How many times the client has connected so far (1 for the first
        /// connection).
        generation: u64,
        /// Whether this connection resumed the previous one's reliable
        /// session (subscriptions, watches and waiting commands kept, lost
        /// frames sent again); `false` for the first connection and for a
        /// fresh session, after which subscriptions and watches were
        /// restored.
        resumed: bool,
    },
    /// The connection dropped; reconnecting with backoff.
    Reconnecting {
        /// Attempts made since the connection dropped.
        attempt: u32,
        /// Why the last connection ended.
        reason: String,
    },
    /// Closed for good (by [`Client::close`](crate::Client::close), a taken
    /// over id, or reconnecting being disabled or given up).
    Closed {
        /// Why.
        reason: String,
    },
}

impl MessageKind {
    /// `"direct"`, `"broadcast"` or `"publish"`.
    pub fn as_str(&self) -> &'static str {
        match self {
            MessageKind::Direct => "direct",
            MessageKind::Broadcast => "broadcast",
            MessageKind::Publish => "publish",
        }
    }
}

impl ConnectionState {
    /// Whether the state is [`ConnectionState::Connected`].
    pub fn is_connected(&self) -> bool {
        matches!(self, ConnectionState::Connected { .. })
    }
}

/// How a [`Message`] reached this client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum MessageKind {
    /// Sent to this client's id.
    Direct,
    /// Broadcast to every client.
    Broadcast,
    /// Published to a topic this client subscribed to.
    Publish,
}

/// A message received by this client.
///
/// The strings are [`ByteString`]s (a `str` that shares its buffer): a
/// delivery's topic, sender and reply topic point into the bytes received,
/// like its payload, so receiving costs no allocation per message. They
/// deref to `&str` and compare with `&str` and `String`
/// (`msg.topic == "orders.eu"`); `String::from(msg.topic)` makes an owned
/// copy.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Message {
    /// How it arrived.
    pub kind: MessageKind,
    /// Sender's client id.
    pub from: ByteString,
    /// Topic, for published messages; empty otherwise.
    pub topic: ByteString,
    /// The publisher's reply topic, if it gave one; empty otherwise.
    pub reply_to: ByteString,
    /// The payload.
    pub payload: Bytes,
    /// The sender's headers (empty when it gave none).
    pub headers: Headers,
}

/// Application headers of a message, request or reply: string keys with
/// opaque values, in order; a key may repeat. At most
/// [`MAX_HEADERS`](switchboard_wire::headers::MAX_HEADERS) (64) headers of
/// at most 64 KiB together, keys of 1 to 256 bytes without control
/// characters; more is refused with
/// [`ClientError::InvalidArgument`](crate::ClientError::InvalidArgument) or
/// [`LimitExceeded`](crate::ClientError::LimitExceeded).
///
/// ```
/// let mut h = switchboard::Headers::new();
/// h.insert("trace-id", "abc");
/// h.append("tag", "a");
/// h.append("tag", "b");
/// assert_eq!(h.get("trace-id").map(|v| &v[..]), Some(&b"abc"[..]));
/// assert_eq!(h.get_all("tag").count(), 2);
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Headers {
    entries: Vec<(String, Bytes)>,
}

impl Headers {
    /// No headers.
    pub fn new() -> Headers {
        Headers::default()
    }

    /// Sets `key` to `value`, replacing every earlier value of `key`.
    pub fn insert(&mut self, key: impl Into<String>, value: impl Into<Bytes>) -> &mut Self {
        let key = key.into();
        self.entries.retain(|(k, _)| *k != key);
        self.entries.push((key, value.into()));
        self
    }

    /// Adds a value for `key`, keeping earlier ones.
    pub fn append(&mut self, key: impl Into<String>, value: impl Into<Bytes>) -> &mut Self {
        self.entries.push((key.into(), value.into()));
        self
    }

    /// The first value of `key`.
    pub fn get(&self, key: &str) -> Option<&Bytes> {
        self.entries.iter().find(|(k, _)| k == key).map(|(_, v)| v)
    }

    /// The first value of `key` as text, if it is UTF-8.
    pub fn get_str(&self, key: &str) -> Option<&str> {
        self.get(key).and_then(|v| std::str::from_utf8(v).ok())
    }

    /// Every value of `key`, in order.
    pub fn get_all<'a>(&'a self, key: &'a str) -> impl Iterator<Item = &'a Bytes> + 'a {
        self.entries
            .iter()
            .filter(move |(k, _)| k == key)
            .map(|(_, v)| v)
    }

    /// Removes every value of `key`; returns whether there was one.
    pub fn remove(&mut self, key: &str) -> bool {
        let before = self.entries.len();
        self.entries.retain(|(k, _)| k != key);
        self.entries.len() != before
    }

    /// All headers, in order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &Bytes)> {
        self.entries.iter().map(|(k, v)| (k.as_str(), v))
    }

    /// Number of headers.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub(crate) fn from_wire(headers: Vec<proto::Header>) -> Headers {
        Headers {
            entries: headers.into_iter().map(|h| (h.key, h.value)).collect(),
        }
    }

    pub(crate) fn to_wire(&self) -> Vec<proto::Header> {
        self.entries
            .iter()
            .map(|(key, value)| proto::Header {
                key: key.clone(),
                value: value.clone(),
            })
            .collect()
    }

    /// Checks the bounds before anything is sent.
    pub(crate) fn check(wire: &[proto::Header]) -> Result<(), crate::ClientError> {
        // The hub's own answer to the same headers, refused early.
        switchboard_wire::check_headers(wire)
            .map_err(|e| crate::ClientError::from_hub(e.code() as i32, e.to_string()))
    }
}

impl<K: Into<String>, V: Into<Bytes>> FromIterator<(K, V)> for Headers {
    fn from_iter<I: IntoIterator<Item = (K, V)>>(iter: I) -> Headers {
        Headers {
            entries: iter
                .into_iter()
                .map(|(k, v)| (k.into(), v.into()))
                .collect(),
        }
    }
}

impl<K: Into<String>, V: Into<Bytes>, const N: usize> From<[(K, V); N]> for Headers {
    fn from(pairs: [(K, V); N]) -> Headers {
        pairs.into_iter().collect()
    }
}

/// A key's value and version as read from the hub.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct KvEntry {
    /// Key.
    pub key: String,
    /// Value.
    pub value: Bytes,
    /// Version: 1 on creation, one more on each change.
    pub version: u64,
}

/// A change to a watched key.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct KvEvent {
    /// Key.
    pub key: String,
    /// New value (empty when deleted).
    pub value: Bytes,
    /// Version after the change.
    pub version: u64,
    /// Whether the key was deleted.
    pub deleted: bool,
    /// Client id that made the change; empty for the current value sent when
    /// a watch starts (or restarts after a reconnect).
    pub by: String,
}

impl From<proto::KvUpdate> for KvEvent {
    fn from(u: proto::KvUpdate) -> Self {
        KvEvent {
            key: u.key,
            value: u.value,
            version: u.version,
            deleted: u.deleted,
            by: u.by,
        }
    }
}

/// A connected client, as listed by the hub.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ClientInfo {
    /// Its id.
    pub client_id: String,
    /// Transport: `"tcp"`, `"tls"`, `"unix"`, `"ws"`, `"wss"`, `"http"`
    /// or `"memory"`.
    pub transport: String,
    /// Remote address as text.
    pub addr: String,
    /// When it connected, ms since the Unix epoch.
    pub connected_at_ms: u64,
    /// What it says it is (program and version).
    pub agent: String,
    /// Whether it uses reliable delivery.
    pub reliable: bool,
    /// The principal of the hub's permission policy it connected as
    /// (`"owner"` for the hub's own user); empty without a policy.
    pub principal: String,
    /// Its process's Unix user id, when it connected over the hub's Unix
    /// socket (peer credentials).
    pub uid: Option<u32>,
}

impl From<proto::ClientInfo> for ClientInfo {
    fn from(c: proto::ClientInfo) -> ClientInfo {
        ClientInfo {
            client_id: c.client_id,
            transport: c.transport,
            addr: c.addr,
            connected_at_ms: c.connected_at_ms,
            agent: c.agent,
            reliable: c.reliable,
            principal: c.principal,
            uid: c.uid,
        }
    }
}

/// Who a hub is: from discovery, or a hub's [`HubStatus`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct HubInfo {
    /// Service name.
    pub service: String,
    /// Random id of the hub process.
    pub instance_id: String,
    /// Process id.
    pub pid: u32,
    /// Port it listens on (0 for a hub reached in memory only).
    pub port: u32,
    /// Epoch: one more after each standby takeover.
    pub epoch: u64,
    /// When it started, ms since the Unix epoch.
    pub started_at_ms: u64,
    /// `"primary"` or `"standby"`.
    pub role: &'static str,
}

impl From<proto::HubIdentity> for HubInfo {
    fn from(h: proto::HubIdentity) -> HubInfo {
        HubInfo {
            role: if h.role == proto::Role::Standby as i32 {
                "standby"
            } else {
                "primary"
            },
            service: h.service,
            instance_id: h.instance_id,
            pid: h.pid,
            port: h.port,
            epoch: h.epoch,
            started_at_ms: h.started_at_ms,
        }
    }
}

/// Hub status and counters, from [`Client::status`](crate::Client::status).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct HubStatus {
    /// The hub.
    pub hub: HubInfo,
    /// Seconds since start.
    pub uptime_s: u64,
    /// Connected clients.
    pub clients: u64,
    /// Active subscriptions.
    pub subscriptions: u64,
    /// Frames received from clients.
    pub msgs_in: u64,
    /// Frames sent to clients.
    pub msgs_out: u64,
    /// Bytes received from clients.
    pub bytes_in: u64,
    /// Bytes sent to clients.
    pub bytes_out: u64,
    /// Pub/sub deliveries dropped for slow consumers.
    pub dropped: u64,
    /// Frames queued for all clients.
    pub queue_depth: u64,
    /// Requests outstanding through the hub.
    pub pending_requests: u64,
    /// Key/value entries.
    pub kv_keys: u64,
    /// Address of the attached standby, empty if none.
    pub standby_addr: String,
    /// Replication lag in changes.
    pub repl_lag_changes: u64,
    /// Replication lag in bytes.
    pub repl_lag_bytes: u64,
    /// Further counters by name, sorted.
    pub counters: std::collections::BTreeMap<String, u64>,
}

impl From<proto::Status> for HubStatus {
    fn from(s: proto::Status) -> HubStatus {
        HubStatus {
            hub: s.identity.unwrap_or_default().into(),
            uptime_s: s.uptime_s,
            clients: s.clients,
            subscriptions: s.subscriptions,
            msgs_in: s.msgs_in,
            msgs_out: s.msgs_out,
            bytes_in: s.bytes_in,
            bytes_out: s.bytes_out,
            dropped: s.dropped,
            queue_depth: s.queue_depth,
            pending_requests: s.pending_requests,
            kv_keys: s.kv_keys,
            standby_addr: s.standby_addr,
            repl_lag_changes: s.repl_lag_changes,
            repl_lag_bytes: s.repl_lag_bytes,
            counters: s.counters.into_iter().collect(),
        }
    }
}

/// A client joining or leaving the hub.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum PresenceEvent {
    /// The client registered.
    Joined(ClientInfo),
    /// The client left.
    Left {
        /// The client.
        client: ClientInfo,
        /// Why, as the hub reported it.
        reason: String,
    },
}

impl PresenceEvent {
    /// The client's id.
    pub fn client_id(&self) -> &str {
        match self {
            PresenceEvent::Joined(c) => &c.client_id,
            PresenceEvent::Left { client, .. } => &client.client_id,
        }
    }
}

/// What [`Client::close`](crate::Client::close) or
/// [`Client::drain`](crate::Client::drain) could not finish.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct CloseReport {
    /// Frames sent but not acknowledged by the hub when the connection
    /// ended: the hub may or may not have them (0 without reliable
    /// delivery, where nothing is counted).
    pub unacknowledged: usize,
    /// Their encoded size in bytes.
    pub unacknowledged_bytes: usize,
    /// Items still in the application's streams when `drain` ran out of
    /// time (always 0 for `close`, which does not wait for the
    /// application).
    pub undelivered: usize,
}

impl CloseReport {
    /// Whether everything was acknowledged and taken.
    pub fn is_clean(&self) -> bool {
        self.unacknowledged == 0 && self.undelivered == 0
    }
}

/// Settings of one request, for
/// [`Client::request_with_options`](crate::Client::request_with_options) and
/// [`Client::request_service`](crate::Client::request_service).
#[derive(Debug, Clone, Default)]
#[non_exhaustive]
pub struct RequestOptions {
    /// How long to wait for the reply (`None`: the client's request
    /// timeout).
    pub timeout: Option<std::time::Duration>,
    /// Method name for the target's dispatch (may be empty).
    pub method: String,
    /// Headers sent with the request.
    pub headers: Headers,
}

impl RequestOptions {
    /// Sets the timeout.
    pub fn timeout(mut self, timeout: std::time::Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }

    /// Sets the method name.
    pub fn method(mut self, method: impl Into<String>) -> Self {
        self.method = method.into();
        self
    }

    /// Sets the headers.
    pub fn headers(mut self, headers: Headers) -> Self {
        self.headers = headers;
        self
    }
}

/// A reply to a request, with its headers.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Reply {
    /// Client id of the replier (for a service request: the responder the
    /// hub picked).
    pub from: String,
    /// The payload.
    pub payload: Bytes,
    /// The replier's headers.
    pub headers: Headers,
}
