//! Plain data types handed to applications.

use bytes::Bytes;
use bytestring::ByteString;
use switchboard_wire::proto;

/// State of a client's connection to its hub, observed through
/// [`Client::state`](crate::Client::state).
#[derive(Debug, Clone, PartialEq, Eq)]
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

impl ConnectionState {
    /// Whether the state is [`ConnectionState::Connected`].
    pub fn is_connected(&self) -> bool {
        matches!(self, ConnectionState::Connected { .. })
    }
}

/// How a [`Message`] reached this client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
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
}

/// A key's value and version as read from the hub.
#[derive(Debug, Clone, PartialEq, Eq)]
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
pub type ClientInfo = proto::ClientInfo;

/// Hub status and counters, from [`Client::status`](crate::Client::status).
pub type HubStatus = proto::Status;

/// A client joining or leaving the hub.
#[derive(Debug, Clone, PartialEq, Eq)]
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
