//! The hub's side of reliable delivery for one client, on the numbering
//! core it shares with the client ([`switchboard_wire::reliable`]): what
//! was taken from the client (duplicates dropped, acknowledgements owed)
//! and what was sent to it (numbered, kept until acknowledged).

use switchboard_wire::reliable::{Inbound, Retransmit};
use switchboard_wire::{proto, Frame};

use crate::outbox::Out;

/// What an acknowledgement owed after a batch calls for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum AckNext {
    /// Nothing is owed, or a timer already waits.
    Nothing,
    /// [`ACK_EVERY`](switchboard_wire::ACK_EVERY) frames wait: an `Ack`
    /// now.
    Now,
    /// An `Ack` after [`ACK_DELAY`](switchboard_wire::ACK_DELAY) unless a
    /// frame carries it first: arm a timer.
    Later,
}

/// Reliable delivery's state for one client; for a client without the
/// feature it stays empty and unused.
#[derive(Debug)]
pub(super) struct Reliable {
    on: bool,
    /// Client → hub: highest seq taken, and the acknowledgement carried.
    inbound: Inbound,
    /// Hub → client: next seq, and the numbered frames not yet
    /// acknowledged with their encoded lengths.
    sent: Retransmit<Out>,
    /// Took sequenced frames in the current batch.
    ack_due: bool,
    /// Waits in the router's ack timers.
    ack_timer: bool,
}

impl Reliable {
    /// The state of a new client; `on` for a reliable one.
    pub fn new(on: bool) -> Reliable {
        Reliable {
            on,
            inbound: Inbound::default(),
            sent: Retransmit::default(),
            ack_due: false,
            ack_timer: false,
        }
    }

    /// Whether frames are numbered both ways.
    pub fn is_on(&self) -> bool {
        self.on
    }

    /// Takes a numbered frame of a logged kind from the client; `false`
    /// for a duplicate (resent after a resume, already taken).
    pub fn take(&mut self, seq: u64) -> bool {
        if !self.inbound.accept(seq) {
            return false;
        }
        self.ack_due = true;
        true
    }

    /// Numbers `out` and keeps a copy until the client acknowledges it;
    /// returns the bytes the retransmit buffer holds now, and `out`'s
    /// encoded length as numbered (what its queue entry counts too).
    pub fn number(&mut self, out: &mut Out) -> (usize, usize) {
        let seq = self.sent.number();
        out.set_seq(seq);
        // Every frame carries the acknowledgement (not only a new one): a
        // dropped delivery never takes the only copy with it, the newer
        // frames kept carry as much.
        let up_to = self.inbound.last_received();
        out.set_acked(up_to);
        self.inbound.acked(up_to);
        let len = out.encoded_len();
        self.sent.keep(seq, len, out.clone());
        (self.sent.bytes(), len)
    }

    /// Forgets the frame numbered `seq`: it was dropped from the queue
    /// (see [`Retransmit::forget`]); whether it was kept.
    pub fn forget(&mut self, seq: u64) -> bool {
        self.sent.forget(seq)
    }

    /// Forgets retransmit-buffer frames up to `up_to`; whether any went.
    pub fn acked(&mut self, up_to: u64) -> bool {
        self.sent.ack(up_to) > 0
    }

    /// After a batch from the client: what its acknowledgement needs
    /// (always nothing when `quiet`: a replica acknowledges nothing).
    pub fn after_batch(&mut self, quiet: bool) -> AckNext {
        if !std::mem::take(&mut self.ack_due) || quiet || self.inbound.owed_ack().is_none() {
            return AckNext::Nothing;
        }
        if self.inbound.ack_due() {
            AckNext::Now
        } else if !self.ack_timer {
            self.ack_timer = true;
            AckNext::Later
        } else {
            AckNext::Nothing
        }
    }

    /// The ack timer went off: the acknowledgement still owed, if any.
    pub fn timer_fired(&mut self) -> Option<u64> {
        self.ack_timer = false;
        self.inbound.owed_ack()
    }

    /// An `Ack` for everything taken: its `up_to`, now counted as sent.
    pub fn ack_all(&mut self) -> u64 {
        let up_to = self.inbound.last_received();
        self.inbound.acked(up_to);
        up_to
    }

    /// A new connection continues this state: nothing is owed on it yet,
    /// the frames the client took (`received`) are forgotten (whether any
    /// went is returned), the rest is to be sent again.
    pub fn resume(&mut self, received: u64) -> bool {
        self.ack_due = false;
        self.inbound.acked(self.inbound.last_received());
        self.acked(received)
    }

    /// Highest seq taken from the client.
    pub fn last_received(&self) -> u64 {
        self.inbound.last_received()
    }

    /// The next hub → client seq, as a snapshot shows it (0 when off).
    pub fn next_send(&self) -> u64 {
        if self.on {
            self.sent.next_seq()
        } else {
            0
        }
    }

    /// The frames sent and not yet acknowledged, oldest first.
    pub fn unacked(&self) -> impl Iterator<Item = &Out> + '_ {
        self.sent.iter()
    }

    /// Rebuilds the state a snapshot holds: `last_received`, `next_send`
    /// and the unacknowledged frames, which must be numbered in order
    /// below `next_send` (and only for a reliable client); `false` if not.
    pub fn restore(&mut self, last_received: u64, next_send: u64, unacked: &[Frame]) -> bool {
        self.inbound.accept(last_received);
        self.sent = Retransmit::starting_at(next_send);
        let mut last = 0;
        for f in unacked {
            if !self.on || f.seq <= last || f.seq >= self.sent.next_seq() {
                return false;
            }
            last = f.seq;
            let out = Out::from(f.clone());
            self.sent.keep(f.seq, out.encoded_len(), out);
        }
        true
    }

    /// Keeps a frame the primary numbered and sent (a replica copying its
    /// numbering), as the queue entry a resume sends again; `false` when
    /// the client is not reliable or its seq is not above the last.
    pub fn record_sent(&mut self, out: Out) -> bool {
        if !self.on {
            return false;
        }
        let seq = out.seq();
        self.sent.record(seq, out.encoded_len(), out)
    }

    /// The last seq sent, for messages.
    pub fn last_sent(&self) -> u64 {
        self.sent.next_seq().saturating_sub(1)
    }

    /// Encoded bytes of the frames waiting for the client's
    /// acknowledgement (what [`number`](Self::number) compares with the
    /// hard limit).
    pub fn unacked_bytes(&self) -> usize {
        self.sent.bytes()
    }

    /// How many frames wait for the client's acknowledgement.
    pub fn unacked_len(&self) -> usize {
        self.sent.len()
    }
}

/// The `Ack` frame for `up_to`.
pub(super) fn ack_frame(up_to: u64) -> Frame {
    Frame::from(proto::Ack { up_to })
}
