//! The remote seam: the one place where the router hands over what its
//! own clients cannot take — a message for a client id registered nowhere
//! on this hub, and every publish and broadcast, for clients of other hubs.
//!
//! Without a [`Remote`] (the default) the router behaves as a single hub:
//! a `Direct`, `Request` or `Session` to an unknown id is answered with
//! `NO_SUCH_CLIENT`, and publishes reach local subscribers only. A
//! federation of hubs implements the trait and sets it with
//! [`Router::set_remote`](super::Router::set_remote); the router learns
//! nothing about how the frames travel.
//!
//! The implementation must not block: it runs on the router task. It
//! answers from its local view and returns.
//!
//! # The port
//!
//! When the hub starts it registers one virtual connection for the remote
//! side, the *port* (client id [`PORT_ID`], transport [`PORT_TRANSPORT`]),
//! and hands it to [`Remote::attach`] as a [`RemotePort`]. A message
//! [`Remote::route`] says another hub serves ([`Handoff::Taken`]) is then
//! delivered by the router to the port, exactly as to a local client: a
//! `Direct` (with `to` kept and `from` filled in), a `Request` (pending
//! on the requester with its timeout, so the requester gets `TIMEOUT` as
//! locally). The port's queue is bounded like every client's: when the
//! remote side does not keep up, messages park and then fail with
//! `QUEUE_FULL`, and the router never waits.
//!
//! The remote side answers and delivers through the port
//! (`PortSender`): frames from the port keep the `from` they carry (the
//! client of another hub who sent them); a `Request` from the port is
//! answered back to the port (whatever its `to` names); a `Reply` for a
//! request the router handed to the port goes to its local requester; and
//! `PortSender::fail` answers such a request with an error.
//! Without a port (no [`Remote::attach`] yet) `Taken` messages are
//! dropped and counted as undeliverable.

use std::fmt::Debug;

use switchboard_wire::{proto, Frame};

use super::admission::Refusal;

/// The port as the remote side gets it in [`Remote::attach`]: its methods
/// (`recv`, `sender`) and the `PortSender` are in the hub's `port`
/// module, which builds it; the router core knows no more of it.
pub struct RemotePort(pub(crate) Box<dyn std::any::Any + Send>);

impl Debug for RemotePort {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RemotePort")
    }
}

/// The client id of the port (see the module docs); never claimed or
/// announced to the remote side.
pub const PORT_ID: &str = "~remote";

/// The transport name of the port's registration (no client can have
/// it: transports are named by the hub).
pub const PORT_TRANSPORT: &str = "remote";

/// What became of a message handed to [`Remote::route`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Handoff {
    /// Another hub serves the target: the remote side delivers the frame
    /// and answers the sender (`Ok`, `Reply`, or an error) when asked to.
    Taken,
    /// No hub knows the target: the sender is told `NO_SUCH_CLIENT`, as
    /// on a single hub.
    Unknown,
    /// Another hub serves the target, but the remote side cannot reach
    /// it now (e.g. the federation lost its cluster): the sender is told
    /// at once, `NO_SUCH_CLIENT` with this message, rather than waiting
    /// for a timeout. A `Direct` without id is counted as undeliverable.
    Unreachable(String),
}

/// What the remote side reports about itself ([`Remote::status`]); the
/// router puts it into the hub's status counters as `federation_*`
/// entries (see [`RemoteStatus::counters`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RemoteStatus {
    /// Whether the link to the remote side is up now.
    pub connected: bool,
    /// The server the link goes to now (no credentials in it).
    pub server: String,
    /// The name of the cluster that server belongs to, if it has one.
    pub cluster: String,
    /// The last measured round trip to the server, microseconds (0: not
    /// measured yet).
    pub rtt_us: u64,
    /// The other hubs heard from within their lease, sorted.
    pub members: Vec<String>,
    /// Milliseconds since this hub's own last heartbeat came back from
    /// the cluster (`None`: none came back yet).
    pub lease_age_ms: Option<u64>,
    /// Counters and gauges of the remote side, by name (e.g. `sent`,
    /// `dropped`, `patterns`).
    pub figures: Vec<(&'static str, u64)>,
}

impl RemoteStatus {
    /// The status as counter entries: `federation_connected` (0 or 1),
    /// `federation_rtt_us`, `federation_members`, `federation_lease_age_ms`
    /// (absent until a heartbeat came back), `federation_<figure>` for each
    /// figure, and the strings as keys with the value 1:
    /// `federation_server:URL`, `federation_cluster:NAME`,
    /// `federation_member:HUB` (like `dropped:CLIENT_ID`).
    pub fn counters(&self) -> Vec<(String, u64)> {
        let mut c = vec![
            ("federation_connected".to_owned(), u64::from(self.connected)),
            ("federation_rtt_us".to_owned(), self.rtt_us),
            ("federation_members".to_owned(), self.members.len() as u64),
        ];
        if let Some(age) = self.lease_age_ms {
            c.push(("federation_lease_age_ms".to_owned(), age));
        }
        c.extend(
            self.figures
                .iter()
                .map(|(k, v)| (format!("federation_{k}"), *v)),
        );
        if !self.server.is_empty() {
            c.push((format!("federation_server:{}", self.server), 1));
        }
        if !self.cluster.is_empty() {
            c.push((format!("federation_cluster:{}", self.cluster), 1));
        }
        c.extend(
            self.members
                .iter()
                .map(|m| (format!("federation_member:{m}"), 1)),
        );
        c
    }
}

/// Carries frames to clients of other hubs. See the module docs.
pub trait Remote: Send + Sync + Debug {
    /// A `Direct`, `Request` (to a client id) or `Session` frame from the
    /// local client `from` to `to`, a client id registered nowhere on this
    /// hub. `frame` is as the router received it (the hub's `from` not yet
    /// filled in). A `Session` the remote side takes ([`Handoff::Taken`])
    /// is its own to carry (it is not delivered to the port); the far side
    /// hands it in with `PortSender::session`. [`Handoff::Unreachable`]
    /// answers the sender at once with `NO_SUCH_CLIENT` and the message
    /// (for a `Session`: `Error{id: 0}`, as for a session frame to a
    /// client that is not connected).
    fn route(&self, from: &str, to: &str, frame: &Frame) -> Handoff;

    /// A `Publish` or `Broadcast` from the local client `from`, after the
    /// router delivered it to its own clients.
    fn fan_out(&self, from: &str, frame: &Frame);

    /// Whether `info` may register its id here, asked before a new
    /// registration (after the admission seam). A federation refuses an
    /// id another live hub holds; the refusal closes the newcomer, as
    /// [`Admission::admit_client`](super::admission::Admission::admit_client)'s
    /// does. The default admits every id.
    fn claim(&self, info: &proto::ClientInfo) -> Result<(), Refusal> {
        let _ = info;
        Ok(())
    }

    /// The client `id` registered here (a new registration; a resume of
    /// a client still held is none).
    fn joined(&self, id: &str) {
        let _ = id;
    }

    /// The client `id` left this hub (closed, taken over, slow, or its
    /// resume window ended).
    fn left(&self, id: &str) {
        let _ = id;
    }

    /// A local client subscribed to publishes on `pattern` (plain or in a
    /// queue group); called once per subscription, so a federation counts
    /// them to hold one subscription per distinct pattern.
    fn subscribed(&self, pattern: &str) {
        let _ = pattern;
    }

    /// One subscription to `pattern` ended (unsubscribed, or its client
    /// left).
    fn unsubscribed(&self, pattern: &str) {
        let _ = pattern;
    }

    /// The remote side's state for the hub's status, quickly from what it
    /// already knows (called on the router task, at each status request).
    /// The default: `None`, no remote side to show.
    fn status(&self) -> Option<RemoteStatus> {
        None
    }

    /// Messages for other hubs the remote side dropped so far (its way
    /// out was full, or the send failed); the hub's `Status` adds them
    /// to `dropped` and shows them as `dropped:~remote`, as it does a
    /// slow client's dropped deliveries. The default: none.
    fn dropped(&self) -> u64 {
        0
    }

    /// A local client joined queue group `group` on `pattern`; called
    /// once per such subscription instead of [`subscribed`](Self::subscribed).
    /// The default reports it as a plain subscription to `pattern`.
    fn subscribed_group(&self, pattern: &str, group: &str) {
        let _ = group;
        self.subscribed(pattern);
    }

    /// One member of queue group `group` on `pattern` left it. The
    /// default reports it as [`unsubscribed`](Self::unsubscribed).
    fn unsubscribed_group(&self, pattern: &str, group: &str) {
        let _ = group;
        self.unsubscribed(pattern);
    }

    /// Whether this remote side carries queue groups across hubs: then a
    /// publish from the port reaches local plain subscriptions only, and
    /// the remote side hands each group the messages the cluster picked
    /// this hub for (`PortSender::publish_group`). The default: no, each
    /// hub's groups get a copy of every publish from the port.
    fn carries_groups(&self) -> bool {
        false
    }

    /// A `KvSet`, `KvGet` or `KvDelete` from the local client `from`
    /// (a `KvSet` already checked against the hub's key and value
    /// limits). [`Handoff::Taken`]: the remote side keeps the key/value
    /// store; the router holds the command pending on the port with the
    /// default request timeout (the client gets `TIMEOUT` when no answer
    /// comes) and the remote side answers it with
    /// `PortSender::answer` (a `KvValue`) or `PortSender::fail` (the error
    /// the local store would give). Watches stay in the router: the
    /// remote side sends every change of the shared store into the
    /// router through the port as a `KvUpdate` (its `watch_id` ignored),
    /// which the router keeps in its local store as a cache (the initial
    /// values of new watches) and tells its watchers. The default,
    /// [`Handoff::Unknown`], keeps the hub's own store.
    fn kv(&self, from: &str, frame: &Frame) -> Handoff {
        let _ = (from, frame);
        Handoff::Unknown
    }

    /// A `Direct` with an id (one its sender wants confirmed) from the
    /// local client `from` to `to`, a client id registered nowhere on
    /// this hub; asked before [`route`](Self::route).
    /// [`Handoff::Taken`]: the remote side carries it on a path of its
    /// own (e.g. a durable stream) and confirms it itself: the router
    /// does not answer `Ok` at hand-over but holds the direct pending on
    /// the port with the default request timeout (the sender gets
    /// `TIMEOUT` when no answer comes), and the remote side answers with
    /// `PortSender::answer` (an `Ok`) or `PortSender::fail`.
    /// [`Handoff::Unreachable`] answers at once as for `route`. The
    /// default, [`Handoff::Unknown`], leaves it to `route`.
    fn confirmed_direct(&self, from: &str, to: &str, frame: &Frame) -> Handoff {
        let _ = (from, to, frame);
        Handoff::Unknown
    }

    /// The hub registered the port (see the module docs); called once
    /// when the hub starts serving. The default drops it (then nothing
    /// comes back from other hubs).
    fn attach(&self, port: RemotePort) {
        let _ = port;
    }
}
