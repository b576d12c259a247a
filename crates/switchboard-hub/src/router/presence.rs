//! Presence: who watches clients join and leave, and the latest events
//! for operators.

use std::collections::VecDeque;

use switchboard_wire::{proto, Frame};

use super::output::Output;
use crate::ids::{ConnId, IdSet};

/// Presence events kept for [`Inspection::presence`](super::Inspection::presence).
const RECENT_PRESENCE: usize = 50;

/// One presence event remembered for
/// [`Inspection::presence`](super::Inspection::presence).
#[derive(Debug, Clone)]
pub struct PresenceEvent {
    /// Number of the event since the hub started.
    pub seq: u64,
    /// Joined (true) or left.
    pub joined: bool,
    /// The client.
    pub client: proto::ClientInfo,
    /// Why it left.
    pub reason: String,
}

/// The presence watchers and the recent events.
#[derive(Debug, Default)]
pub(super) struct Presence {
    watchers: IdSet<ConnId>,
    recent: VecDeque<PresenceEvent>,
    seq: u64,
}

impl Presence {
    /// `conn` watches from now on.
    pub fn watch(&mut self, conn: ConnId) {
        self.watchers.insert(conn);
    }

    /// `conn` stops watching (it said so, or it left).
    pub fn unwatch(&mut self, conn: ConnId) {
        self.watchers.remove(&conn);
    }

    /// Whether `conn` watches.
    pub fn is_watching(&self, conn: ConnId) -> bool {
        self.watchers.contains(&conn)
    }

    /// How many watch.
    pub fn watchers(&self) -> usize {
        self.watchers.len()
    }

    /// Nobody watches any more (shutdown).
    pub fn clear(&mut self) {
        self.watchers.clear();
    }

    /// The latest events, oldest first.
    pub fn recent(&self) -> impl Iterator<Item = &PresenceEvent> + '_ {
        self.recent.iter()
    }

    /// Client `about` (`info`) joined or left: remembered, and told to
    /// every watcher but itself.
    pub fn event(
        &mut self,
        out: &mut Output,
        about: ConnId,
        info: proto::ClientInfo,
        kind: proto::PresenceKind,
        reason: &str,
    ) {
        self.seq += 1;
        if self.recent.len() >= RECENT_PRESENCE {
            self.recent.pop_front();
        }
        self.recent.push_back(PresenceEvent {
            seq: self.seq,
            joined: kind == proto::PresenceKind::Joined,
            client: info.clone(),
            reason: reason.to_owned(),
        });
        if self.watchers.is_empty() {
            return;
        }
        let frame = Frame::from(proto::Presence {
            client: Some(info),
            kind: kind as i32,
            reason: reason.to_owned(),
        });
        for &w in self.watchers.iter().filter(|c| **c != about) {
            out.send(w, frame.clone());
        }
    }
}
