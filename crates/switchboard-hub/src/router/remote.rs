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
//! ([`PortSender`]): frames from the port keep the `from` they carry (the
//! client of another hub who sent them); a `Request` from the port is
//! answered back to the port (whatever its `to` names); a `Reply` for a
//! request the router handed to the port goes to its local requester; and
//! [`PortSender::fail`] answers such a request with an error.
//! Without a port (no [`Remote::attach`] yet) `Taken` messages are
//! dropped and counted as undeliverable.

use std::fmt::Debug;
use std::sync::Arc;

use switchboard_wire::{proto, ErrorCode, Frame};
use tokio::sync::mpsc;

use super::admission::Refusal;
use super::Input;
use crate::ids::ConnId;
use crate::inbox::{Inbox, WeakInbox};
use crate::outbox::Outbox;

/// The client id of the port (see the module docs); never claimed or
/// announced to the remote side.
pub const PORT_ID: &str = "~remote";

/// The transport name of the port's registration (no client can have
/// it: transports are named by the hub).
pub const PORT_TRANSPORT: &str = "remote";

/// Frames the port's reader holds between the router and the remote side;
/// beyond, the port's outbox fills and the router parks and then fails
/// messages (`QUEUE_FULL`).
pub const PORT_BUFFER: usize = 1024;

/// The remote side's end of the port: frames the router delivered to it
/// ([`RemotePort::recv`]) and a [`PortSender`] for the way back.
#[derive(Debug)]
pub struct RemotePort {
    sender: PortSender,
    frames: mpsc::Receiver<Frame>,
}

impl RemotePort {
    pub(crate) fn new(sender: PortSender, frames: mpsc::Receiver<Frame>) -> RemotePort {
        RemotePort { sender, frames }
    }

    /// The next frame the router delivered to the port; `None` when the
    /// hub stopped.
    pub async fn recv(&mut self) -> Option<Frame> {
        self.frames.recv().await
    }

    /// Sends into the router as the port.
    pub fn sender(&self) -> PortSender {
        self.sender.clone()
    }
}

/// Sends frames into the router as the port (see the module docs).
#[derive(Debug, Clone)]
pub struct PortSender {
    /// Weak: the port must not keep the router task running.
    inbox: WeakInbox,
    conn: ConnId,
    outbox: Arc<Outbox>,
}

impl PortSender {
    pub(crate) fn new(inbox: &Inbox, conn: ConnId, outbox: Arc<Outbox>) -> PortSender {
        PortSender {
            inbox: inbox.downgrade(),
            conn,
            outbox,
        }
    }

    /// Hands `frames` to the router, in order, waiting while its inbox is
    /// full; `false` when the hub stopped.
    pub async fn send(&self, frames: Vec<Frame>) -> bool {
        let Some(inbox) = self.inbox.upgrade() else {
            return false;
        };
        inbox
            .send(Input::Frames {
                conn: self.conn,
                frames,
            })
            .await
            .is_ok()
    }

    /// Fails request `id` of the local client `requester`, handed to the
    /// port earlier, with `code` and `message` (an answer of the other
    /// hub: `NO_SUCH_CLIENT`, `NOT_LISTENING`, `TARGET_GONE`...). Ignored
    /// when that request is no longer pending. `false` when the hub
    /// stopped.
    pub async fn fail(&self, requester: &str, id: u64, code: ErrorCode, message: String) -> bool {
        let Some(inbox) = self.inbox.upgrade() else {
            return false;
        };
        inbox
            .send(Input::RemoteFailed {
                conn: self.conn,
                requester: requester.to_owned(),
                id,
                code,
                message,
            })
            .await
            .is_ok()
    }

    /// Whether the hub still runs the port.
    pub fn is_open(&self) -> bool {
        self.outbox.is_open()
    }
}

/// What became of a message handed to [`Remote::route`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Handoff {
    /// Another hub serves the target: the remote side delivers the frame
    /// and answers the sender (`Ok`, `Reply`, or an error) when asked to.
    Taken,
    /// No hub knows the target: the sender is told `NO_SUCH_CLIENT`, as
    /// on a single hub.
    Unknown,
}

/// Carries frames to clients of other hubs. See the module docs.
pub trait Remote: Send + Sync + Debug {
    /// A `Direct`, `Request` (to a client id) or `Session` frame from the
    /// local client `from` to `to`, a client id registered nowhere on this
    /// hub. `frame` is as the router received it (the hub's `from` not yet
    /// filled in).
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

    /// The hub registered the port (see the module docs); called once
    /// when the hub starts serving. The default drops it (then nothing
    /// comes back from other hubs).
    fn attach(&self, port: RemotePort) {
        let _ = port;
    }
}
