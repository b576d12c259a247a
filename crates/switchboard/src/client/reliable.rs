//! Sequencing state of reliable delivery, without I/O, on the core the hub
//! shares ([`switchboard_wire::reliable`]).
//!
//! [`Outbound`] numbers the frames of logged kinds this client sends and
//! keeps them (bounded) until the hub acknowledges them; [`Inbound`] tracks
//! the highest sequence number taken from the hub, drops duplicates and
//! decides when to acknowledge. Both outlive a connection: a resumed
//! connection continues where the previous one stopped.

use switchboard_wire::reliable::Retransmit;
use switchboard_wire::Frame;

pub(crate) use switchboard_wire::reliable::Inbound;

/// Default most frames kept for retransmission.
pub const DEFAULT_RETAIN_FRAMES: usize = 65_536;

/// Default most bytes (encoded) kept for retransmission.
pub const DEFAULT_RETAIN_BYTES: usize = 64 * 1024 * 1024;

pub(crate) use switchboard_wire::is_logged_kind as logged_kind;

/// Client → hub: the sequence counter and the retention buffer (the shared
/// [`Retransmit`] core), bounded.
pub(crate) struct Outbound {
    kept: Retransmit<Frame>,
    max_frames: usize,
    max_bytes: usize,
}

impl Outbound {
    /// An empty buffer holding at most `max_frames` frames and `max_bytes`
    /// bytes (a single frame larger than `max_bytes` still fits into an
    /// empty buffer, so nothing is refused for good).
    pub fn new(max_frames: usize, max_bytes: usize) -> Outbound {
        Outbound {
            kept: Retransmit::default(),
            max_frames: max_frames.max(1),
            max_bytes,
        }
    }

    /// Whether a frame of `bytes` bytes fits now.
    pub fn has_room(&self, bytes: usize) -> bool {
        self.kept.is_empty()
            || (self.kept.len() < self.max_frames
                && self.kept.bytes().saturating_add(bytes) <= self.max_bytes)
    }

    /// Numbers `frame` with the next sequence number and keeps a copy.
    /// The caller checked [`has_room`](Self::has_room) and sends the frame
    /// before anything else can be numbered (under the same lock), so
    /// sequence order is wire order.
    pub fn push(&mut self, frame: &mut Frame, bytes: usize) -> u64 {
        let seq = self.kept.number();
        frame.seq = seq;
        self.kept.keep(seq, bytes, frame.clone());
        seq
    }

    /// Forgets every kept frame with `seq <= up_to`; returns how many.
    pub fn ack(&mut self, up_to: u64) -> usize {
        self.kept.ack(up_to)
    }

    /// For a resumed connection: forgets what the hub holds (`seq <=
    /// last_received`) and returns copies of the rest, in order, to be sent
    /// before any new frame.
    pub fn replay_after(&mut self, last_received: u64) -> Vec<Frame> {
        self.kept.ack(last_received);
        self.kept.iter().cloned().collect()
    }

    /// Forgets every kept frame (a fresh session: their outcome is
    /// unknown). The counter continues.
    pub fn clear(&mut self) {
        self.kept.clear();
    }

    /// Frames kept.
    pub fn len(&self) -> usize {
        self.kept.len()
    }

    /// Bytes kept.
    pub fn bytes(&self) -> usize {
        self.kept.bytes()
    }

    /// The sequence number the next frame gets.
    #[cfg(test)]
    pub fn next_seq(&self) -> u64 {
        self.kept.next_seq()
    }
}

impl Default for Outbound {
    fn default() -> Outbound {
        Outbound::new(DEFAULT_RETAIN_FRAMES, DEFAULT_RETAIN_BYTES)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use switchboard_wire::{proto, Kind};

    fn publish(n: u8) -> Frame {
        Frame::publish("t", vec![n])
    }

    fn payload(f: &Frame) -> u8 {
        match &f.kind {
            Some(Kind::Publish(p)) => p.payload[0],
            _ => panic!("not a publish"),
        }
    }

    #[test]
    fn numbers_from_one_and_keeps_copies_until_acknowledged() {
        let mut out = Outbound::new(16, 1 << 20);
        for n in 0..5u8 {
            let mut f = publish(n);
            let seq = out.push(&mut f, 10);
            assert_eq!(seq, u64::from(n) + 1);
            assert_eq!(f.seq, seq, "the sent frame carries its number");
        }
        assert_eq!((out.len(), out.bytes()), (5, 50));
        assert_eq!(out.ack(3), 3);
        assert_eq!((out.len(), out.bytes()), (2, 20));
        // Acknowledgements are cumulative; an older one changes nothing.
        assert_eq!(out.ack(2), 0);
        assert_eq!(out.ack(5), 2);
        assert_eq!((out.len(), out.bytes()), (0, 0));
        assert_eq!(out.next_seq(), 6);
    }

    #[test]
    fn replay_skips_what_the_hub_holds_and_keeps_order() {
        let mut out = Outbound::new(16, 1 << 20);
        for n in 0..6u8 {
            out.push(&mut publish(n), 1);
        }
        out.ack(1);
        let replay = out.replay_after(3);
        let seqs: Vec<u64> = replay.iter().map(|f| f.seq).collect();
        assert_eq!(seqs, [4, 5, 6]);
        let payloads: Vec<u8> = replay.iter().map(payload).collect();
        assert_eq!(payloads, [3, 4, 5]);
        // The replayed frames stay kept until acknowledged.
        assert_eq!(out.len(), 3);
        // A hub holding less than the last ack resends from there.
        assert_eq!(out.replay_after(0).len(), 3);
    }

    #[test]
    fn a_fresh_session_forgets_kept_frames_but_not_the_counter() {
        let mut out = Outbound::new(16, 1 << 20);
        out.push(&mut publish(0), 7);
        out.push(&mut publish(1), 7);
        out.clear();
        assert_eq!((out.len(), out.bytes()), (0, 0));
        assert_eq!(out.push(&mut publish(2), 7), 3);
    }

    #[test]
    fn room_is_bounded_by_frames_and_bytes() {
        let mut out = Outbound::new(3, 100);
        assert!(out.has_room(1000), "an empty buffer takes any frame");
        out.push(&mut publish(0), 60);
        assert!(out.has_room(40));
        assert!(!out.has_room(41), "bytes bound");
        out.push(&mut publish(1), 10);
        out.push(&mut publish(2), 10);
        assert!(!out.has_room(1), "frame bound");
        out.ack(1);
        assert!(out.has_room(80));
        assert!(!out.has_room(81));
    }

    #[test]
    fn logged_kinds_match_the_contract() {
        let logged: Vec<Frame> = vec![
            Frame::publish("t", "x"),
            Frame::direct("c", "x"),
            Frame::request(1, "c", "x"),
            Frame::reply(1, "c", "x"),
            proto::Broadcast::default().into(),
            proto::Session::default().into(),
            proto::Subscribe::default().into(),
            proto::Unsubscribe::default().into(),
            proto::KvSet::default().into(),
            proto::KvDelete::default().into(),
            proto::KvWatch::default().into(),
            proto::KvUnwatch::default().into(),
            proto::PresenceWatch::default().into(),
        ];
        for f in &logged {
            assert!(logged_kind(f.kind.as_ref().unwrap()), "{}", f.kind_name());
        }
        let unlogged: Vec<Frame> = vec![
            proto::Ping::default().into(),
            proto::Pong::default().into(),
            proto::KvGet::default().into(),
            proto::ListClients::default().into(),
            proto::StatusRequest::default().into(),
            Frame::ack(3),
            Frame::goodbye(switchboard_wire::ErrorCode::Unspecified, "bye"),
        ];
        for f in &unlogged {
            assert!(!logged_kind(f.kind.as_ref().unwrap()), "{}", f.kind_name());
        }
    }
}
