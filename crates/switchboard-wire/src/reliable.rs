//! Reliable delivery's numbering, one core for both ends: the hub's router
//! and the client keep the same books, so the rules live here once.
//!
//! * [`Inbound`] is the receiving side of one direction: the highest
//!   sequence number taken, duplicate detection (`0 < seq <=
//!   last_received`; gaps are allowed) and the acknowledgement owed
//!   ([`ACK_EVERY`] frames, else within [`ACK_DELAY`](crate::ACK_DELAY)
//!   unless a frame going the other way carries it in `Frame.acked`).
//! * [`Retransmit`] is the sending side: the next sequence number and the
//!   numbered items kept, with their encoded sizes, until a cumulative
//!   acknowledgement covers them, or the sender forgets one it dropped
//!   (a gap the peer was told of). It is generic over what is kept (the
//!   client keeps [`Frame`](crate::Frame)s, the hub its queued frames).
//!
//! Neither reads a clock: the caller decides when a batch ends and when a
//! delay has passed.

use crate::blocks::Blocks;
use crate::ACK_EVERY;

/// The receiving side of one direction of a reliable connection: what was
/// taken and what was acknowledged. It outlives a connection: a resumed
/// connection continues from here.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Inbound {
    last_received: u64,
    acked: u64,
}

impl Inbound {
    /// Starts from `last_received` (0 for a fresh session), with everything
    /// up to it taken as acknowledged.
    pub fn starting_at(last_received: u64) -> Inbound {
        Inbound {
            last_received,
            acked: last_received,
        }
    }

    /// Whether a frame with `seq` is to be handled: `false` for a duplicate
    /// (`0 < seq <= last_received`). Unsequenced frames (`seq = 0`) are
    /// always handled; gaps are allowed (the sender may drop frames and say
    /// so), and a taken `seq` becomes [`last_received`](Self::last_received).
    #[inline]
    pub fn accept(&mut self, seq: u64) -> bool {
        if seq == 0 {
            return true;
        }
        if seq <= self.last_received {
            return false;
        }
        self.last_received = seq;
        true
    }

    /// Whether a frame with `seq` was taken already (`0 < seq <=
    /// last_received`): a resent duplicate. For a receiver that takes a
    /// frame (with [`accept`](Self::accept)) only once it was handed on.
    #[inline]
    pub fn is_duplicate(&self, seq: u64) -> bool {
        seq != 0 && seq <= self.last_received
    }

    /// Whether [`ACK_EVERY`] sequence numbers went by without an
    /// acknowledgement: one goes out now, not after the delay (gaps count:
    /// acknowledging early costs little).
    #[inline]
    pub fn ack_due(&self) -> bool {
        self.last_received - self.acked >= ACK_EVERY
    }

    /// The `up_to` an acknowledgement owes now, if the last one sent (or
    /// carried) does not cover everything taken. Call
    /// [`acked`](Self::acked) once it is queued.
    #[inline]
    pub fn owed_ack(&self) -> Option<u64> {
        (self.last_received > self.acked).then_some(self.last_received)
    }

    /// Records that an acknowledgement of `up_to` went out: an `Ack`, or a
    /// frame carrying `acked = up_to`. Older ones change nothing.
    #[inline]
    pub fn acked(&mut self, up_to: u64) {
        self.acked = self.acked.max(up_to);
    }

    /// Highest sequence number taken.
    #[inline]
    pub fn last_received(&self) -> u64 {
        self.last_received
    }
}

/// Forgotten entries a [`Retransmit`] leaves in place before it compacts
/// (above this, once they are half of its entries).
const COMPACT_AFTER: usize = 64;

/// One numbered item kept for retransmission (`None`: forgotten, a gap
/// left until an acknowledgement or a compaction removes it).
#[derive(Debug, Clone)]
struct Kept<T> {
    seq: u64,
    bytes: usize,
    item: Option<T>,
}

/// The sending side of one direction of a reliable connection: the next
/// sequence number, and every numbered item (with its size in bytes) until
/// the peer acknowledges it, in sequence order. It outlives a connection:
/// what a resumed peer did not take is sent again from here.
#[derive(Debug, Clone)]
pub struct Retransmit<T> {
    next_seq: u64,
    /// In blocks: growing never copies what is kept (see
    /// [`Blocks`]).
    kept: Blocks<Kept<T>>,
    bytes: usize,
    /// Entries of `kept` whose item was forgotten.
    forgotten: usize,
}

impl<T> Default for Retransmit<T> {
    fn default() -> Self {
        Retransmit::starting_at(1)
    }
}

impl<T> Retransmit<T> {
    /// An empty buffer whose next sequence number is `next_seq` (at least
    /// 1: sequence numbers start there, 0 means "not numbered").
    pub fn starting_at(next_seq: u64) -> Retransmit<T> {
        Retransmit {
            next_seq: next_seq.max(1),
            kept: Blocks::default(),
            bytes: 0,
            forgotten: 0,
        }
    }

    /// The sequence number the next item gets.
    #[inline]
    pub fn next_seq(&self) -> u64 {
        self.next_seq
    }

    /// Numbers the next item: returns its sequence number, which the
    /// caller writes into the item before [`keep`](Self::keep)ing it.
    #[inline]
    pub fn number(&mut self) -> u64 {
        let seq = self.next_seq;
        self.next_seq += 1;
        seq
    }

    /// Keeps `item`, numbered `seq`, of `bytes` bytes until an
    /// acknowledgement covers it. Items are kept in the order they are
    /// numbered.
    #[inline]
    pub fn keep(&mut self, seq: u64, bytes: usize, item: T) {
        debug_assert!(self.kept.back().is_none_or(|k| k.seq < seq));
        self.bytes += bytes;
        self.kept.push_back(Kept {
            seq,
            bytes,
            item: Some(item),
        });
    }

    /// Keeps an item numbered elsewhere (a standby copying its primary's
    /// numbering): `false`, and nothing kept, when `seq` is below
    /// [`next_seq`](Self::next_seq); otherwise numbering continues after
    /// it.
    pub fn record(&mut self, seq: u64, bytes: usize, item: T) -> bool {
        if seq < self.next_seq {
            return false;
        }
        self.next_seq = seq + 1;
        self.keep(seq, bytes, item);
        true
    }

    /// Forgets every kept item with `seq <= up_to` (acknowledgements are
    /// cumulative); returns how many went.
    pub fn ack(&mut self, up_to: u64) -> usize {
        let (mut n, mut bytes, mut forgotten) = (0, 0, 0);
        self.kept.pop_front_while(
            |k| k.seq <= up_to,
            |k| {
                bytes += k.bytes;
                if k.item.is_some() {
                    n += 1;
                } else {
                    forgotten += 1;
                }
            },
        );
        self.bytes -= bytes;
        self.forgotten -= forgotten;
        n
    }

    /// Forgets the item numbered `seq`, if kept: the sender dropped it
    /// and told the peer so (a gap), so it is never sent again and no
    /// longer counts in [`bytes`](Self::bytes). Whether it was kept.
    ///
    /// Forgotten entries leave with the acknowledgement that passes them;
    /// once they outnumber the items still kept (a peer that acknowledges
    /// nothing while its sender drops) they are compacted away, so memory
    /// stays proportional to what is kept: O(1) amortised per call.
    pub fn forget(&mut self, seq: u64) -> bool {
        let Ok(i) = self.kept.binary_search_by_key(&seq, |k| k.seq) else {
            return false;
        };
        let Some(k) = self.kept.get_mut(i) else {
            return false;
        };
        if k.item.take().is_none() {
            return false;
        }
        self.bytes -= std::mem::take(&mut k.bytes);
        self.forgotten += 1;
        while self.kept.front().is_some_and(|k| k.item.is_none()) {
            self.kept.pop_front();
            self.forgotten -= 1;
        }
        if self.forgotten > COMPACT_AFTER && self.forgotten > self.kept.len() / 2 {
            self.kept.retain(|k| k.item.is_some());
            self.forgotten = 0;
        }
        true
    }

    /// The kept items, oldest first.
    pub fn iter(&self) -> impl Iterator<Item = &T> + '_ {
        self.kept.iter().filter_map(|k| k.item.as_ref())
    }

    /// Forgets every kept item; numbering continues.
    pub fn clear(&mut self) {
        self.kept.clear();
        self.bytes = 0;
        self.forgotten = 0;
    }

    /// Items kept (forgotten ones not counted).
    pub fn len(&self) -> usize {
        self.kept.len() - self.forgotten
    }

    /// Whether nothing is kept.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Bytes kept (the sum of the sizes given to [`keep`](Self::keep)).
    #[inline]
    pub fn bytes(&self) -> usize {
        self.bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Numbers and keeps `n` items of `bytes` bytes each.
    fn fill(out: &mut Retransmit<u64>, n: u64, bytes: usize) {
        for _ in 0..n {
            let seq = out.number();
            out.keep(seq, bytes, seq * 10);
        }
    }

    #[test]
    fn numbers_from_one_and_keeps_until_acknowledged() {
        let mut out = Retransmit::default();
        assert_eq!(out.next_seq(), 1);
        fill(&mut out, 5, 10);
        assert_eq!((out.len(), out.bytes()), (5, 50));
        assert_eq!(out.ack(3), 3);
        assert_eq!(out.iter().copied().collect::<Vec<_>>(), [40, 50]);
        assert_eq!((out.len(), out.bytes()), (2, 20));
        // Acknowledgements are cumulative; an older one changes nothing.
        assert_eq!(out.ack(2), 0);
        assert_eq!(out.ack(u64::MAX), 2);
        assert!(out.is_empty());
        assert_eq!((out.bytes(), out.next_seq()), (0, 6));
    }

    #[test]
    fn forgotten_items_are_never_resent_and_stop_counting() {
        let mut out = Retransmit::default();
        fill(&mut out, 5, 10);
        assert!(out.forget(2));
        assert!(!out.forget(2), "forgotten once");
        assert!(!out.forget(9), "never numbered");
        assert_eq!((out.len(), out.bytes()), (4, 40));
        assert_eq!(out.iter().copied().collect::<Vec<_>>(), [10, 30, 40, 50]);
        // An acknowledgement counts only the items it removed.
        assert_eq!(out.ack(3), 2);
        assert_eq!(out.iter().copied().collect::<Vec<_>>(), [40, 50]);
        // Forgetting the oldest removes it at once.
        assert!(out.forget(4));
        assert_eq!((out.len(), out.bytes()), (1, 10));
        assert_eq!(out.ack(u64::MAX), 1);
        assert!(out.is_empty());
        assert_eq!(out.bytes(), 0);
    }

    #[test]
    fn forgetting_without_acknowledgements_stays_bounded() {
        // A peer that acknowledges nothing while every new item displaces
        // the one before it (a sender dropping for a stalled reader).
        let mut out = Retransmit::default();
        // Seq 1 stays (written, not acknowledged): the forgotten ones
        // cannot leave from the front.
        fill(&mut out, 2, 10);
        for _ in 0..100_000 {
            let seq = out.number();
            out.keep(seq, 10, seq * 10);
            assert!(out.forget(seq - 1));
        }
        assert!(
            out.kept.len() <= 2 * COMPACT_AFTER + 4,
            "{}",
            out.kept.len()
        );
        assert_eq!(out.len(), 2);
        assert_eq!(out.bytes(), 20);
        assert_eq!(out.iter().copied().collect::<Vec<_>>(), [10, 1_000_020]);
    }

    #[test]
    fn clearing_keeps_the_counter() {
        let mut out = Retransmit::starting_at(0);
        assert_eq!(out.next_seq(), 1, "numbering starts at 1");
        fill(&mut out, 2, 7);
        out.clear();
        assert_eq!((out.len(), out.bytes()), (0, 0));
        assert_eq!(out.number(), 3);
    }

    #[test]
    fn recorded_numbers_must_grow() {
        let mut out = Retransmit::starting_at(5);
        assert!(!out.record(4, 1, 0), "below the next number");
        assert!(out.record(5, 1, 0));
        assert!(out.record(9, 2, 0), "gaps are allowed");
        assert!(!out.record(9, 1, 0), "the same number twice");
        assert_eq!((out.len(), out.bytes(), out.next_seq()), (2, 3, 10));
        assert_eq!(out.ack(8), 1);
    }

    #[test]
    fn inbound_drops_duplicates_and_allows_gaps() {
        let mut inb = Inbound::starting_at(0);
        assert!(inb.accept(1));
        assert!(inb.accept(2));
        assert!(!inb.accept(2), "duplicate");
        assert!(inb.is_duplicate(1));
        assert!(!inb.accept(1), "older duplicate");
        assert!(inb.accept(0), "unsequenced frames always pass");
        assert!(!inb.is_duplicate(0));
        assert!(inb.accept(0));
        assert!(inb.accept(5), "a gap (dropped deliveries) is allowed");
        assert!(!inb.accept(4), "below the highest taken");
        assert_eq!(inb.last_received(), 5);
    }

    #[test]
    fn acks_are_cumulative_and_only_when_something_is_new() {
        let mut inb = Inbound::starting_at(10);
        assert_eq!(inb.owed_ack(), None, "a resumed stream starts acknowledged");
        assert!(!inb.accept(10));
        assert_eq!(inb.owed_ack(), None);
        inb.accept(11);
        inb.accept(12);
        assert_eq!(inb.owed_ack(), Some(12));
        inb.acked(12);
        assert_eq!(inb.owed_ack(), None);
        inb.accept(13);
        assert_eq!(inb.owed_ack(), Some(13));
        assert_eq!(inb.owed_ack(), Some(13), "owed until queued");
        inb.acked(13);
        assert_eq!(inb.owed_ack(), None);
    }

    #[test]
    fn acks_are_due_every_64_frames_in_a_long_batch() {
        let mut inb = Inbound::starting_at(0);
        for seq in 1..ACK_EVERY {
            inb.accept(seq);
            assert!(!inb.ack_due());
        }
        inb.accept(ACK_EVERY);
        assert!(inb.ack_due());
        assert_eq!(inb.owed_ack(), Some(ACK_EVERY));
        inb.acked(ACK_EVERY);
        assert!(!inb.ack_due());
        // Duplicates and unsequenced frames do not count.
        for _ in 0..100 {
            inb.accept(0);
            inb.accept(1);
        }
        assert!(!inb.ack_due());
        // A gap counts as the frames it skipped.
        inb.accept(2 * ACK_EVERY);
        assert!(inb.ack_due());
        // A carried acknowledgement (a frame's `acked`) counts like an Ack.
        inb.acked(2 * ACK_EVERY - 1);
        assert!(!inb.ack_due());
        assert_eq!(inb.owed_ack(), Some(2 * ACK_EVERY));
    }

    #[test]
    fn acks_are_owed_for_what_is_new_and_due_every_ack_every() {
        let mut inb = Inbound::starting_at(10);
        assert_eq!(inb.owed_ack(), None, "a resumed stream starts acknowledged");
        inb.accept(11);
        assert_eq!(inb.owed_ack(), Some(11));
        assert!(!inb.ack_due());
        inb.acked(11);
        assert_eq!(inb.owed_ack(), None);
        inb.acked(3);
        assert_eq!(
            inb.owed_ack(),
            None,
            "an older acknowledgement changes nothing"
        );
        inb.accept(10 + ACK_EVERY);
        assert!(!inb.ack_due());
        inb.accept(11 + ACK_EVERY);
        assert!(inb.ack_due(), "a gap counts as the numbers it skipped");
        inb.acked(inb.last_received());
        assert!(!inb.ack_due());
        // A default receiver is one that has taken nothing.
        let mut fresh = Inbound::default();
        assert!(fresh.accept(7));
        assert_eq!(fresh.owed_ack(), Some(7));
    }
}
