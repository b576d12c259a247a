//! Leaf helpers the rooms share: error frames, names shortened for
//! messages, and the timing constants. Nothing here knows any room.

use std::time::Duration;

use switchboard_wire::{ErrorCode, Frame};

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

/// Cuts a client-supplied name for use in an error message.
pub(super) fn shown(s: &str) -> String {
    let mut out: String = s.chars().take(64).filter(|c| !c.is_control()).collect();
    if s.chars().count() > 64 {
        out.push('…');
    }
    out
}
