//! The router's vocabulary with its driver: what it is told ([`Input`]),
//! what it is built from ([`RouterConfig`]) and what it shows operators
//! ([`Inspection`]).

use std::sync::Arc;
use std::time::Duration;

use switchboard_wire::{proto, Frame};

use super::presence::PresenceEvent;
use crate::ids::ConnId;
use crate::limits::Limits;
use crate::outbox::Outbox;

/// What the router is told.
#[derive(Debug)]
pub enum Input {
    /// A connection finished its handshake and wants to be registered as
    /// `info.client_id`. The router answers with `Welcome` on `outbox` (or
    /// closes it when the hub is full or shutting down).
    Connect {
        /// The connection.
        conn: ConnId,
        /// Who it is; `client_id` must already be validated.
        info: proto::ClientInfo,
        /// Its outbound queue.
        outbox: Arc<Outbox>,
    },
    /// Like [`Input::Connect`], for a reliable client that reconnects and
    /// wants to continue where it stopped (`Hello.resume`). When the
    /// router holds the client's state it attaches the connection to it
    /// and resends what the client has not received; otherwise this is a
    /// plain registration.
    Resume {
        /// The connection.
        conn: ConnId,
        /// Who it is (`reliable` set).
        info: proto::ClientInfo,
        /// Its outbound queue.
        outbox: Arc<Outbox>,
        /// Where the client stands.
        resume: proto::Resume,
    },
    /// Frames received from a registered connection, in order.
    Frames {
        /// The connection.
        conn: ConnId,
        /// The frames.
        frames: Vec<Frame>,
    },
    /// A reliable client acknowledged everything up to `up_to` (its `Ack`
    /// frames and the `Frame.acked` its other frames carry). Readers send
    /// it ahead of the frames still queued for the router (see
    /// the inbox's `send_ack`): it only frees
    /// the client's retransmit buffer, and acknowledgements are cumulative,
    /// so taking it early changes nothing else, and the frames the client
    /// took stop counting against its limit as soon as it says so.
    Acked {
        /// The connection.
        conn: ConnId,
        /// The highest seq acknowledged.
        up_to: u64,
    },
    /// The connection ended or broke the protocol. `notice` (e.g. an
    /// `Error` frame) is queued before the outbox closes.
    Disconnected {
        /// The connection.
        conn: ConnId,
        /// Last frame to send, if any.
        notice: Option<Frame>,
        /// Why, for presence events and logs.
        reason: String,
    },
    /// A whole frame from the connection was refused before decoding (a
    /// kind clients may not send, or over its kind's size cap): `notice`
    /// goes to the client, in order with the answers to its other frames.
    Refused {
        /// The connection.
        conn: ConnId,
        /// The `Error` frame to send.
        notice: Frame,
    },
    /// The connection's outbox has room again.
    Drained {
        /// The connection.
        conn: ConnId,
    },
    /// The remote side's error answer to request `id` of the local
    /// client `requester`, which the router handed to the port `conn`
    /// (see [`remote`](super::remote)); ignored unless that request is
    /// pending on the port.
    RemoteFailed {
        /// The port.
        conn: ConnId,
        /// The requesting local client.
        requester: String,
        /// Its request id.
        id: u64,
        /// The error.
        code: switchboard_wire::ErrorCode,
        /// Its message.
        message: String,
    },
    /// The remote side found the local client `id` registered elsewhere
    /// as well (another hub of a federation holds the id): the router
    /// closes it with `code` and `message`, like a local takeover. Only
    /// from the port `conn`; ignored when no client `id` is registered.
    RemoteClose {
        /// The port.
        conn: ConnId,
        /// The local client.
        id: String,
        /// The `Goodbye` code (`ID_TAKEN_OVER`).
        code: switchboard_wire::ErrorCode,
        /// Its message.
        message: String,
    },
    /// A publish the remote side took for the queue group `group` on
    /// `pattern` (a queue subscription across hubs picked this hub):
    /// delivered to one local member of that group; ignored unless `conn`
    /// is the port.
    RemoteGroup {
        /// The port.
        conn: ConnId,
        /// The group's pattern.
        pattern: String,
        /// The group's name.
        group: String,
        /// The publish, `from` naming its sender.
        publish: switchboard_wire::proto::Publish,
    },
    /// A session frame from a client of another hub (its `peer` names
    /// that client) for the local client `to`; ignored unless `conn` is
    /// the port.
    RemoteSession {
        /// The port.
        conn: ConnId,
        /// The local target.
        to: String,
        /// The frame, `peer` naming the sender.
        session: switchboard_wire::proto::Session,
    },
    /// A client of another hub joined (`joined`) or left the federation
    /// (see [`remote`](super::remote)): told to local presence watchers,
    /// and listed by `ListClients` while it stays; ignored unless `conn`
    /// is the port.
    RemotePresence {
        /// The port.
        conn: ConnId,
        /// The client: transport [`PORT_TRANSPORT`](super::remote::PORT_TRANSPORT),
        /// `addr` naming its hub.
        info: switchboard_wire::proto::ClientInfo,
        /// Joined (true) or left.
        joined: bool,
    },
    /// The remote side's answer `frame` (a `KvValue`) to command `id` of
    /// the local client `requester`, which the router handed to the
    /// remote seam (see [`Remote::kv`](super::remote::Remote::kv));
    /// ignored unless that command is pending on the port `conn`.
    RemoteAnswer {
        /// The port.
        conn: ConnId,
        /// The local client that sent the command.
        requester: String,
        /// Its command id.
        id: u64,
        /// The answer.
        frame: switchboard_wire::Frame,
    },
    /// A `Direct` from a client of another hub (`from` naming it, id 0)
    /// for a local client, handed in by the port `conn`; `taken` is told
    /// whether the target was there to take it (registered and taking
    /// direct messages: then it is queued for it, or waits for room like
    /// any direct), or not (dropped and counted undeliverable). Ignored
    /// unless `conn` is the port.
    RemoteDirect {
        /// The port.
        conn: ConnId,
        /// The direct.
        direct: proto::Direct,
        /// Told whether the target took it.
        taken: futures::channel::oneshot::Sender<bool>,
    },
    /// Time passed: expire timeouts and retry waiting messages.
    Tick,
    /// Tell every client goodbye and stop accepting registrations.
    Shutdown,
}

/// The router's view for operators ([`Router::inspect`](super::Router::inspect)).
#[derive(Debug, Clone, Default)]
pub struct Inspection {
    /// Status and counters.
    pub status: proto::Status,
    /// Registered clients, sorted by id.
    pub clients: Vec<proto::ClientInfo>,
    /// Subscription patterns with their subscriber counts, sorted.
    pub topics: Vec<(String, u64)>,
    /// The latest presence events, oldest first.
    pub presence: Vec<PresenceEvent>,
}

/// Fixed facts the router needs.
#[derive(Debug, Clone)]
pub struct RouterConfig {
    /// Who the hub is (sent in `Welcome` and `Status`).
    pub identity: proto::HubIdentity,
    /// Limits.
    pub limits: Limits,
    /// When set, clients are told to send traffic at least this often and
    /// are disconnected after three silent intervals.
    pub keepalive: Option<Duration>,
}
