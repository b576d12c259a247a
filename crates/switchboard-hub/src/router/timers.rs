//! The router's own timers: acknowledgements owed to reliable clients,
//! closing connections to cut when their grace ends, and the next look for
//! idle clients. (Request deadlines live with the requests, resume windows
//! with the registry; [`Router::next_deadline`](super::Router::next_deadline)
//! gathers them all.)

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use switchboard_wire::{Frame, ACK_DELAY};

use super::common::{CLOSE_GRACE, IDLE_CHECK};
use crate::ids::ConnId;
use crate::outbox::Outbox;

/// Deadlines kept in time order.
#[derive(Debug, Default)]
pub(super) struct Timers {
    /// Reliable clients owed an `Ack` at these times (in time order: the
    /// delay is constant), unless a frame to them carries it first.
    acks: VecDeque<(Instant, ConnId)>,
    /// Closed outboxes, cut at these times if their writer has not
    /// finished (in time order: the grace is constant).
    closing: VecDeque<(Instant, Arc<Outbox>)>,
    /// When to look for idle clients next (with a keepalive).
    idle_check: Option<Instant>,
}

impl Timers {
    /// The earliest of these deadlines.
    pub fn next(&self) -> Option<Instant> {
        [
            self.closing.front().map(|(t, _)| *t),
            self.idle_check,
            self.acks.front().map(|(t, _)| *t),
        ]
        .into_iter()
        .flatten()
        .min()
    }

    /// Client `key` is owed an `Ack` [`ACK_DELAY`] from `now`.
    pub fn ack_later(&mut self, now: Instant, key: ConnId) {
        self.acks.push_back((now + ACK_DELAY, key));
    }

    /// The next client whose `Ack` is due by `now`.
    pub fn due_ack(&mut self, now: Instant) -> Option<ConnId> {
        let &(deadline, key) = self.acks.front()?;
        if deadline > now {
            return None;
        }
        self.acks.pop_front();
        Some(key)
    }

    /// Closes `outbox` after what is queued and `last`, and cuts it
    /// [`CLOSE_GRACE`] from `now` if its writer has not finished by then.
    pub fn close(&mut self, now: Instant, outbox: Arc<Outbox>, last: Option<Frame>) {
        outbox.close(last);
        self.closing.push_back((now + CLOSE_GRACE, outbox));
    }

    /// Cuts the closing outboxes whose grace ended by `now`.
    pub fn cut_closing(&mut self, now: Instant) {
        while let Some((deadline, _)) = self.closing.front() {
            if *deadline > now {
                break;
            }
            if let Some((_, outbox)) = self.closing.pop_front() {
                // Harmless if the writer already finished.
                outbox.kill(None);
            }
        }
    }

    /// With a keepalive, idle clients are looked for from `now` on (unless
    /// a look is planned already).
    pub fn watch_idle(&mut self, now: Instant, keepalive: Option<Duration>) {
        if let Some(k) = keepalive {
            self.idle_check.get_or_insert(now + k.min(IDLE_CHECK));
        }
    }

    /// Plans the next look for idle clients afresh (`None`: no more
    /// looks, no keepalive or no clients).
    pub fn plan_idle(&mut self, now: Instant, keepalive: Option<Duration>, clients: bool) {
        self.idle_check = keepalive
            .filter(|_| clients)
            .map(|k| now + k.min(IDLE_CHECK));
    }

    /// The keepalive, when a look for idle clients is due at `now`.
    pub fn idle_due(&self, now: Instant, keepalive: Option<Duration>) -> Option<Duration> {
        let (k, t) = (keepalive?, self.idle_check?);
        (t <= now).then_some(k)
    }
}
