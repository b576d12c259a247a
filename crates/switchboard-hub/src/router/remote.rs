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
//! queues the frame for its own task (a channel) and returns. What comes
//! back from other hubs (answers, deliveries) enters the router as
//! [`Input`](super::Input)s of a connection the federation registers, the
//! way the HTTP gateway's virtual clients do.

use std::fmt::Debug;

use switchboard_wire::{proto, Frame};

use super::admission::Refusal;

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
}
