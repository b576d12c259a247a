//! The sending side of the router: each registered client's [`Link`] (its
//! outbox and reliable numbering) and what every push needs: the queue
//! limits, the standby gate's tag, the change log that records numbered
//! frames, and the clients to disconnect because their queues grew past
//! the hard limit. Rooms send through [`Output`]; nothing else pushes onto
//! an outbox.

use std::sync::Arc;
use std::time::Instant;

use switchboard_wire::{is_logged_kind, ErrorCode, Frame};

use super::journal::Journal;
use super::reliable::{ack_frame, AckNext, Reliable};
use crate::ids::{ConnId, IdMap};
use crate::outbox::{Out, Outbox, Pushed, QueueLimits, Staged};

/// Deliveries staged for one client before they are queued together
/// ([`Output::set_staging`]); a client with this many staged gets them
/// queued at once, so a long run neither delays its first deliveries
/// much nor holds much memory. Lower when the queue limits are small:
/// a stage is queued once it holds half the queue's frame limit or half
/// its byte limit, so a whole stage never overflows an empty queue.
const STAGE_MAX: usize = 64;

/// Bytes (as a queue counts them) of deliveries staged for one client
/// before they are queued, at most: a few large payloads go at once.
const STAGE_MAX_BYTES: usize = 256 * 1024;

/// Deliveries staged for all clients together before every stage is
/// queued: a publish to thousands of subscribers does not hold their
/// first deliveries back for 64 publishes' fan-out.
const STAGED_MAX: usize = 4096;

/// Emptied stages whose memory is kept for the next run, at most.
const SPARE_STAGES: usize = 128;

/// A registered client's way out.
#[derive(Debug)]
pub(super) struct Link {
    /// The client id its frames are logged under (shared with the
    /// registry's by-id map).
    pub id: Arc<str>,
    /// Its outbound queue (the current connection's, or a ghost's).
    pub outbox: Arc<Outbox>,
    /// Reliable delivery's numbering.
    pub reliable: Reliable,
    /// Its stage in [`Output::stages`] while deliveries to it are staged.
    stage: Option<u32>,
}

/// Deliveries to one client's outbox staged during a run of publishes.
#[derive(Debug)]
struct Stage {
    conn: ConnId,
    outbox: Arc<Outbox>,
    entries: Vec<Staged>,
    /// What `entries` count against the queue's byte limits.
    bytes: usize,
}

/// Every client's [`Link`], and how frames are pushed onto them.
#[derive(Debug)]
pub(super) struct Output {
    /// Boxed: every slot of the hash table, empty ones too, takes an
    /// entry's size (16,384 slots at 10,000 clients), and a link is 112
    /// bytes; a slot holding a pointer is 16 (`a_link_slot_stays_small`).
    links: IdMap<ConnId, Box<Link>>,
    q: QueueLimits,
    /// Replication change log (see [`replica`](super::replica)).
    pub journal: Journal,
    /// A standby is attached: frames are tagged for the
    /// [`Gate`](crate::outbox::Gate).
    gating: bool,
    /// A standby's replica: frames are not numbered here (the primary's
    /// numbering arrives as `sent` changes) and nobody is acknowledged.
    replaying: bool,
    /// Clients whose queues passed the hard limit.
    to_kill: Vec<ConnId>,
    /// Pub/sub deliveries dropped for slow consumers.
    dropped: u64,
    /// Scratch for the seqs one push dropped (kept for its capacity).
    dropped_seqs: Vec<u64>,
    /// The time of the input being handled: frames are queued at it
    /// (the outboxes' delivery delay stamp).
    now: Option<Instant>,
    /// Deliveries are staged (see [`Output::set_staging`]).
    staging: bool,
    /// The clients with staged deliveries, in the order first staged.
    stages: Vec<Stage>,
    /// Deliveries in all stages.
    staged: usize,
    /// Emptied stages' entry vectors, for their capacity.
    spare: Vec<Vec<Staged>>,
}

impl Output {
    /// No links yet; pushes apply `q`.
    pub fn new(q: QueueLimits) -> Output {
        Output {
            links: IdMap::default(),
            q,
            journal: Journal::default(),
            gating: false,
            replaying: false,
            to_kill: Vec::new(),
            dropped: 0,
            dropped_seqs: Vec::new(),
            now: None,
            staging: false,
            stages: Vec::new(),
            staged: 0,
            spare: Vec::new(),
        }
    }

    /// The queue limits pushes apply.
    pub fn q(&self) -> &QueueLimits {
        &self.q
    }

    /// Registers client `id`'s link.
    pub fn insert(&mut self, conn: ConnId, id: Arc<str>, outbox: Arc<Outbox>, reliable: bool) {
        let link = Link {
            id,
            outbox,
            reliable: Reliable::new(reliable),
            stage: None,
        };
        self.links.insert(conn, Box::new(link));
    }

    /// Forgets a client's link (what was staged for it is queued first).
    pub fn remove(&mut self, conn: ConnId) -> Option<Link> {
        self.flush_link(conn);
        self.links.remove(&conn).map(|l| *l)
    }

    /// Forgets every link (shutdown).
    pub fn clear(&mut self) {
        self.links.clear();
    }

    /// A client's link.
    pub fn get(&self, conn: ConnId) -> Option<&Link> {
        self.links.get(&conn).map(Box::as_ref)
    }

    /// A client's link, to change.
    pub fn get_mut(&mut self, conn: ConnId) -> Option<&mut Link> {
        self.links.get_mut(&conn).map(Box::as_mut)
    }

    /// Every link, in no particular order.
    pub fn links(&self) -> impl Iterator<Item = (&ConnId, &Link)> + '_ {
        self.links.iter().map(|(conn, l)| (conn, &**l))
    }

    /// A client's outbox.
    pub fn outbox(&self, conn: ConnId) -> Option<&Arc<Outbox>> {
        self.links.get(&conn).map(|l| &l.outbox)
    }

    /// A client's id ("" when it is not registered).
    pub fn id(&self, conn: ConnId) -> &str {
        self.links.get(&conn).map_or("", |l| &*l.id)
    }

    /// Whether this is a standby's replica.
    pub fn replaying(&self) -> bool {
        self.replaying
    }

    /// Marks this router a replica (or the serving router again).
    pub fn set_replaying(&mut self, on: bool) {
        self.replaying = on;
    }

    /// Starts (or stops) tagging frames for the standby gate.
    pub fn set_gating(&mut self, on: bool) {
        self.gating = on;
    }

    /// Pub/sub deliveries dropped so far.
    pub fn dropped(&self) -> u64 {
        self.dropped
    }

    /// The release tag for frames queued now (see
    /// [`Gate`](crate::outbox::Gate)).
    pub fn tag(&self) -> u64 {
        if self.gating {
            self.journal.repl_seq()
        } else {
            0
        }
    }

    /// Numbers `out` for a reliable client `key`, logs it for the standby
    /// and keeps it until the client acknowledges it; returns the tag to
    /// queue it with, and `out`'s encoded length if numbering measured it.
    fn stamp(&mut self, key: ConnId, out: &mut Out) -> (u64, Option<usize>) {
        let mut measured = None;
        if !self.replaying && out.is_sequenced() {
            if let Some(link) = self.links.get_mut(&key) {
                if link.reliable.is_on() {
                    let (retained, len) = link.reliable.number(out);
                    if retained > self.q.hard_bytes {
                        self.to_kill.push(key);
                    }
                    measured = Some(len);
                    if self.journal.is_on() {
                        self.journal.sent(&link.id, out);
                    }
                }
            }
        }
        (self.tag(), measured)
    }

    /// Sets the time frames pushed from now on are queued at (the router
    /// calls it with each input).
    pub fn set_now(&mut self, now: Instant) {
        self.now = Some(now);
    }

    /// Sends `frame` to client `conn` (never dropped).
    pub fn send(&mut self, conn: ConnId, frame: Frame) {
        if let Some(link) = self.links.get(&conn) {
            let outbox = link.outbox.clone();
            self.push(conn, &outbox, Out::from(frame));
        }
    }

    /// Sends `out` to client `conn` through `outbox` (never dropped).
    pub fn push(&mut self, conn: ConnId, outbox: &Arc<Outbox>, mut out: Out) {
        self.flush_link(conn);
        let (tag, _) = self.stamp(conn, &mut out);
        if outbox.push_control(out, &self.q, tag, self.now) == Pushed::OverHardLimit {
            self.to_kill.push(conn);
        }
    }

    /// Sends a pub/sub delivery or broadcast to client `conn` through
    /// `outbox`: a full queue drops its oldest such frames. While
    /// [staging](Self::set_staging), the delivery waits in the client's
    /// stage, to be queued with the others of the run.
    pub fn push_droppable(&mut self, conn: ConnId, outbox: &Arc<Outbox>, mut out: Out) {
        let (tag, measured) = self.stamp(conn, &mut out);
        let len = measured.unwrap_or_else(|| out.encoded_len());
        if self.staging {
            if let Some(i) = self.stage_of(conn, outbox) {
                let stage = &mut self.stages[i];
                let staged = Staged { out, len, tag };
                stage.bytes += staged.bytes();
                stage.entries.push(staged);
                self.staged += 1;
                let (frames, bytes) = (stage.entries.len(), stage.bytes);
                if frames >= STAGE_MAX.min(self.q.frames / 2).max(1)
                    || bytes >= STAGE_MAX_BYTES.min(self.q.bytes / 2)
                {
                    self.flush_stage(i);
                } else if self.staged >= STAGED_MAX {
                    self.flush_stages();
                }
                return;
            }
        }
        let mut seqs = std::mem::take(&mut self.dropped_seqs);
        self.dropped += outbox.push_droppable(out, len, &self.q, tag, self.now, &mut seqs);
        self.after_drops(conn, seqs);
    }

    /// Turns staging on or off (off queues everything staged). While on,
    /// the deliveries [`push_droppable`](Self::push_droppable) is given
    /// wait in a stage per client and are queued a run at a time: one
    /// lock of the client's outbox, and one wake-up of its writer, for up
    /// to [`STAGE_MAX`] deliveries rather than one each (a run of
    /// publishes in one batch from a client). Whatever else is pushed to
    /// a client queues its staged deliveries first, so each client sees
    /// its frames in the order they were pushed; and
    /// [`is_full`](Self::is_full) counts them.
    pub fn set_staging(&mut self, on: bool) {
        if !on && !self.stages.is_empty() {
            self.flush_stages();
            for stage in self.stages.drain(..) {
                if let Some(link) = self.links.get_mut(&stage.conn) {
                    link.stage = None;
                }
                if self.spare.len() < SPARE_STAGES {
                    self.spare.push(stage.entries);
                }
            }
        }
        self.staging = on;
    }

    /// Whether client `conn`'s queue, `outbox`, is full, counting what is
    /// staged for it (conservatively: as if queueing the stage dropped
    /// nothing, where a full queue of large deliveries could make room
    /// for small ones).
    pub fn is_full(&self, conn: ConnId, outbox: &Arc<Outbox>) -> bool {
        let stage = self
            .links
            .get(&conn)
            .and_then(|l| l.stage)
            .map(|i| &self.stages[i as usize])
            .filter(|s| Arc::ptr_eq(&s.outbox, outbox));
        match stage {
            Some(s) => outbox.is_full_with(s.entries.len(), s.bytes, &self.q),
            None => outbox.is_full(&self.q),
        }
    }

    /// Client `conn`'s stage for deliveries to `outbox`, opened if need
    /// be; `None` for a client without a link, or whose stage holds
    /// deliveries to another outbox (the delivery is queued at once).
    fn stage_of(&mut self, conn: ConnId, outbox: &Arc<Outbox>) -> Option<usize> {
        let link = self.links.get_mut(&conn)?;
        if let Some(i) = link.stage {
            let i = i as usize;
            return Arc::ptr_eq(&self.stages[i].outbox, outbox).then_some(i);
        }
        let i = self.stages.len();
        let entries = self
            .spare
            .pop()
            .unwrap_or_else(|| Vec::with_capacity(STAGE_MAX));
        self.stages.push(Stage {
            conn,
            outbox: outbox.clone(),
            entries,
            bytes: 0,
        });
        link.stage = Some(u32::try_from(i).ok()?);
        Some(i)
    }

    /// Queues what is staged for client `conn`, if anything.
    fn flush_link(&mut self, conn: ConnId) {
        if self.stages.is_empty() {
            return;
        }
        if let Some(i) = self.links.get(&conn).and_then(|l| l.stage) {
            self.flush_stage(i as usize);
        }
    }

    /// Queues what every stage holds (they stay open, empty).
    fn flush_stages(&mut self) {
        for i in 0..self.stages.len() {
            self.flush_stage(i);
        }
    }

    /// Queues the deliveries of stage `i` (which stays open, empty).
    fn flush_stage(&mut self, i: usize) {
        let stage = &mut self.stages[i];
        if stage.entries.is_empty() {
            return;
        }
        stage.bytes = 0;
        self.staged -= stage.entries.len();
        let mut seqs = std::mem::take(&mut self.dropped_seqs);
        self.dropped +=
            stage
                .outbox
                .push_droppable_many(&mut stage.entries, &self.q, self.now, &mut seqs);
        let conn = stage.conn;
        self.after_drops(conn, seqs);
    }

    /// Forgets the numbered deliveries `seqs` a push dropped for `conn`;
    /// keeps the vector for its capacity.
    fn after_drops(&mut self, conn: ConnId, mut seqs: Vec<u64>) {
        if !seqs.is_empty() {
            self.forget_dropped(conn, &seqs);
            seqs.clear();
        }
        self.dropped_seqs = seqs;
    }

    /// A reliable client's numbered deliveries `seqs` were dropped from its
    /// queue (the client is told how many, and sees the gap): its
    /// retransmit buffer forgets them, so they neither count against the
    /// hard limit nor go out again on a resume, and the standby is told
    /// to forget them the same way (a `client_dropped` change).
    fn forget_dropped(&mut self, conn: ConnId, seqs: &[u64]) {
        if self.replaying {
            // A replica forgets what the primary's change says.
            return;
        }
        let Some(link) = self.links.get_mut(&conn) else {
            return;
        };
        if !link.reliable.is_on() {
            return;
        }
        for &seq in seqs {
            link.reliable.forget(seq);
        }
        if self.journal.is_on() {
            self.journal.client_dropped(&link.id, seqs);
        }
    }

    /// A resumed client's new connection: `welcome`, then every frame it
    /// has not acknowledged, as numbered before.
    pub fn resend(&mut self, key: ConnId, welcome: Frame) {
        self.flush_link(key);
        let Some(link) = self.links.get(&key) else {
            return;
        };
        let tag = self.tag();
        let outbox = &link.outbox;
        let now = self.now;
        let mut over =
            outbox.push_control(Out::from(welcome), &self.q, tag, now) == Pushed::OverHardLimit;
        for out in link.reliable.unacked() {
            over |= outbox.push_control(out.clone(), &self.q, tag, now) == Pushed::OverHardLimit;
        }
        if over {
            self.to_kill.push(key);
        }
    }

    /// Takes frame `frame` from client `key` in: its acknowledgement
    /// (`Frame.acked`) is applied, a numbered frame of a logged kind from a
    /// reliable client is taken in order (`Some(false)`: a duplicate,
    /// resent after a resume, to drop), and the frame is logged for the
    /// standby. `None` when the client is gone (the rest of its batch is
    /// dropped).
    pub fn take_in(&mut self, key: ConnId, frame: &Frame) -> Option<bool> {
        if frame.acked != 0 {
            self.client_acked(key, frame.acked);
        }
        let link = self.links.get_mut(&key)?;
        if frame.seq != 0
            && link.reliable.is_on()
            && frame.kind.as_ref().is_some_and(is_logged_kind)
            && !link.reliable.take(frame.seq)
        {
            return Some(false);
        }
        self.journal.frame(&link.id, frame);
        Some(true)
    }

    /// A reliable client acknowledged everything up to `up_to`.
    pub fn client_acked(&mut self, key: ConnId, up_to: u64) {
        let Some(link) = self.links.get_mut(&key) else {
            return;
        };
        if link.reliable.is_on() && link.reliable.acked(up_to) && self.journal.is_on() {
            self.journal.client_ack(&link.id, up_to);
        }
    }

    /// After a batch from client `key`: what its acknowledgement needs.
    pub fn after_batch(&mut self, key: ConnId) -> AckNext {
        let quiet = self.replaying;
        self.links
            .get_mut(&key)
            .map_or(AckNext::Nothing, |l| l.reliable.after_batch(quiet))
    }

    /// Sends a separate `Ack` for everything taken from `key`.
    pub fn send_ack(&mut self, key: ConnId) {
        let Some(link) = self.links.get_mut(&key) else {
            return;
        };
        let ack = ack_frame(link.reliable.ack_all());
        self.send(key, ack);
    }

    /// The next client to disconnect as a slow consumer, in client id
    /// order (not connection order, so the departures and the change log
    /// do not depend on connection ids): its outbox is killed with a
    /// goodbye. `None` when nobody is over the limit.
    pub fn next_slow_consumer(&mut self) -> Option<ConnId> {
        while !self.to_kill.is_empty() {
            let links = &self.links;
            let id = |c: &ConnId| links.get(c).map(|l| &*l.id);
            self.to_kill.sort_unstable_by(|a, b| id(b).cmp(&id(a)));
            let conn = self.to_kill.pop()?;
            self.flush_link(conn);
            if let Some(link) = self.links.get(&conn) {
                let limit = self.q.hard_bytes;
                // What passed the limit: the queue, or (a reliable client)
                // the frames numbered and not yet acknowledged.
                let queued = link.outbox.depth();
                let retained_bytes = link.reliable.unacked_bytes();
                let retained = link.reliable.unacked_len();
                tracing::warn!(
                    client = %link.id,
                    limit,
                    queued,
                    retained,
                    retained_bytes,
                    "disconnecting slow consumer"
                );
                link.outbox.kill(Some(Frame::goodbye(
                    ErrorCode::SlowConsumer,
                    format!(
                        "outbound queue exceeded {limit} bytes because frames were not read; read faster or subscribe to less"
                    ),
                )));
                return Some(conn);
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every registered client has a link (112 bytes: the shared client
    /// id, the outbox, reliable delivery's numbering with its retransmit
    /// buffer, and its stage), boxed in the links' hash table.
    #[test]
    fn a_link_stays_small() {
        let link = std::mem::size_of::<Link>();
        assert!(link <= 112, "link {link} bytes");
    }

    fn delivery(n: u64) -> Out {
        Out::Deliver {
            seq: 0,
            acked: 0,
            sub_id: n,
            shared: crate::outbox::Shared::new(
                switchboard_wire::deliver::DeliverHead::new("t", "p", "", &[]),
                bytes::Bytes::from_static(b"payload"),
            ),
        }
    }

    /// An output with `n` clients, their outboxes, and staging on.
    fn staging(limits: &crate::Limits, n: u64) -> (Output, Vec<Arc<Outbox>>) {
        let mut out = Output::new(QueueLimits::of(limits));
        let outboxes: Vec<Arc<Outbox>> = (1..=n)
            .map(|i| {
                let outbox = Outbox::new(ConnId(i));
                out.insert(ConnId(i), format!("c{i}").into(), outbox.clone(), false);
                outbox
            })
            .collect();
        out.set_staging(true);
        (out, outboxes)
    }

    #[test]
    fn a_stage_is_queued_at_half_a_small_queue_so_it_never_overflows_an_empty_one() {
        let limits = crate::Limits {
            queue_frames: 8,
            ..crate::Limits::default()
        };
        let (mut out, outboxes) = staging(&limits, 1);
        for i in 0..3 {
            out.push_droppable(ConnId(1), &outboxes[0], delivery(i));
        }
        assert_eq!(outboxes[0].depth(), 0, "staged");
        out.push_droppable(ConnId(1), &outboxes[0], delivery(3));
        assert_eq!(outboxes[0].depth(), 4, "half the frame limit: queued");
        out.push_droppable(ConnId(1), &outboxes[0], delivery(4));
        assert_eq!(outboxes[0].depth(), 4);
        out.set_staging(false);
        assert_eq!((outboxes[0].depth(), out.dropped()), (5, 0));
    }

    #[test]
    fn every_stage_is_queued_once_many_deliveries_are_staged_in_all() {
        let clients = STAGED_MAX.div_ceil(STAGE_MAX - 1) as u64;
        let (mut out, outboxes) = staging(&crate::Limits::default(), clients);
        let mut pushed = 0;
        'run: for i in 0..STAGE_MAX as u64 - 1 {
            for (c, outbox) in outboxes.iter().enumerate() {
                out.push_droppable(ConnId(c as u64 + 1), outbox, delivery(i));
                pushed += 1;
                if pushed == STAGED_MAX {
                    break 'run;
                }
            }
        }
        let queued: usize = outboxes.iter().map(|o| o.depth()).sum();
        assert_eq!(queued, STAGED_MAX, "every stage queued, none full");
        assert_eq!(out.staged, 0);
    }

    /// Every slot of the links' hash table, empty ones too, takes an
    /// entry's size: the connection id and the box, not the link (112
    /// bytes a slot when it held the link).
    #[test]
    fn a_link_slot_stays_small() {
        let slot = std::mem::size_of::<(ConnId, Box<Link>)>();
        assert_eq!(slot, 16, "link table slot {slot} bytes");
    }
}
