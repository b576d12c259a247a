//! The admission seam: the one place where the router asks whether a
//! client may register and whether a command it sent may run.
//!
//! Without an [`Admission`] (the default, single-user mode: whoever holds
//! the hub's secret may do everything) the router asks nothing and pays
//! nothing per frame. A permission policy implements the trait and is set
//! with [`Router::set_admission`](super::Router::set_admission):
//!
//! - [`Admission::admit_client`] runs before a connection is registered
//!   (a new client or a resume); a refusal closes that connection with the
//!   refusal as its last frame and changes nothing else (an id held by
//!   another client is not taken over).
//! - [`Admission::admit`] runs before each command from a registered client
//!   is dispatched; a refusal answers the command with
//!   `Error{id, code, message}` (`id` the command's correlation id, 0 for a
//!   reply) and drops it; the connection stays up.
//!
//! The implementation must be quick and must not block: it runs on the
//! router task for every frame. It sees the registration's
//! [`ClientInfo`](proto::ClientInfo) (client id, transport, address,
//! agent), which is where a principal's identity (token, peer credentials,
//! certificate) is carried.

use std::fmt::Debug;

use switchboard_wire::{proto, ErrorCode, Frame};

/// Why a client or a command was refused; the client is told `code` and
/// `message` in an `Error` frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// The error code (usually [`ErrorCode::Forbidden`]).
    pub code: ErrorCode,
    /// What was refused and why, naming the subject, key or id.
    pub message: String,
}

impl Refusal {
    /// A `FORBIDDEN` refusal.
    pub fn forbidden(message: impl Into<String>) -> Refusal {
        Refusal {
            code: ErrorCode::Forbidden,
            message: message.into(),
        }
    }
}

/// Decides what clients may do. See the module docs.
pub trait Admission: Send + Sync + Debug {
    /// Whether `info` may register (or resume) on this hub.
    fn admit_client(&self, info: &proto::ClientInfo) -> Result<(), Refusal> {
        let _ = info;
        Ok(())
    }

    /// Whether the registered client `client` may run `command`.
    fn admit(&self, client: &proto::ClientInfo, command: &Frame) -> Result<(), Refusal> {
        let _ = (client, command);
        Ok(())
    }
}

/// Admits every client and every command: the single-user mode, and what
/// a router without an [`Admission`] does.
#[derive(Debug, Default, Clone, Copy)]
pub struct OpenAdmission;

impl Admission for OpenAdmission {}
