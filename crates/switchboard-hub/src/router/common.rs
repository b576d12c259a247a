//! Leaf helpers every room uses: error frames, names shortened for
//! messages, the timing constants, and who waits for a message to go out.
//! Nothing here knows any room.

use std::time::{Duration, Instant};

use switchboard_wire::proto::{self, frame::Kind};
use switchboard_wire::{ErrorCode, Frame};

use crate::ids::ConnId;

/// How long a closing connection may take to write its last frames before
/// it is cut.
pub const CLOSE_GRACE: Duration = Duration::from_secs(2);

/// How often the router retries messages waiting for room in a full queue
/// when no drain notice arrives.
pub(super) const PARK_RETRY: Duration = Duration::from_millis(5);

/// How often idle clients are looked for, when a keepalive is configured.
pub(super) const IDLE_CHECK: Duration = Duration::from_secs(1);

/// An `Error` frame answering correlation id `id`.
pub(super) fn err(id: u64, code: ErrorCode, message: impl Into<String>) -> Frame {
    Frame::error(id, code, message)
}

/// Checks a key/value key chosen by a client; the error says what to mend.
pub(super) fn validate_client_key(key: &str, max: usize, allow_empty: bool) -> Result<(), String> {
    if key.is_empty() && !allow_empty {
        return Err("key is empty; use a non-empty key".into());
    }
    if key.len() > max {
        return Err(format!(
            "key is {} bytes, more than the limit of {max}; use a shorter key",
            key.len()
        ));
    }
    if key.chars().any(char::is_control) {
        return Err("key contains a control character; use printable text".into());
    }
    Ok(())
}

/// Cuts a client-supplied name for use in an error message.
pub(super) fn shown(s: &str) -> String {
    let mut out: String = s.chars().take(64).filter(|c| !c.is_control()).collect();
    if s.chars().count() > 64 {
        out.push('…');
    }
    out
}

/// The application headers of a frame that carries some, and the
/// correlation id a refusal of them answers (0 for a reply, whose id is the
/// requester's). Most frames carry none: they cost no call to
/// `check_headers`.
pub(super) fn headers_of(kind: &Kind) -> Option<(&[proto::Header], u64)> {
    let (headers, id) = match kind {
        Kind::Direct(d) => (&d.headers, d.id),
        Kind::Request(r) => (&r.headers, r.id),
        Kind::Reply(r) => (&r.headers, 0),
        Kind::Broadcast(b) => (&b.headers, b.id),
        Kind::Publish(p) => (&p.headers, p.id),
        _ => return None,
    };
    (!headers.is_empty()).then_some((headers, id))
}

/// What kind of message a [`Waiter`] waits on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum WaitKind {
    Direct,
    Request,
    Session,
}

/// The sender of a message that may wait for room at its target, told
/// when it goes out or fails.
#[derive(Debug, Clone, Copy)]
pub(super) struct Waiter {
    pub sender: ConnId,
    /// The sender's correlation id (0: fire-and-forget).
    pub corr: u64,
    pub deadline: Instant,
    pub kind: WaitKind,
}
