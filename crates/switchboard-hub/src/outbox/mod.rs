//! Per-client outbound queues, shared between the router (which fills them)
//! and a transport writer (which drains them).
//!
//! The router never waits on an [`Outbox`]: pushing takes a short,
//! uncontended lock and wakes the writer only when the queue goes from
//! empty to non-empty. The writer takes a whole batch under one lock,
//! encodes it into one buffer and writes it with one system call.
//!
//! One frame at a time is *stamped* with the moment it was queued (the
//! router's current time, which it passes in): the first frame queued
//! after the previous stamped frame left. The writer
//! gets that moment with the batch that holds the frame
//! ([`Taken::stamped`]) and reports the wait (the delivery queue delay),
//! so the clock is read about once per batch on each side, never per
//! frame.
//!
//! Like the router, this is std-only: the writer waits with
//! [`Outbox::notified`] and [`Outbox::cancelled`], plain futures on
//! atomics and wakers that any executor can poll.

mod out;
mod wake;

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Instant;

use parking_lot::Mutex;
use switchboard_wire::blocks::Blocks;
use switchboard_wire::{proto, Frame, LENGTH_PREFIX_LEN};

pub use out::{Out, Shared};
use wake::Wakeup;
pub use wake::{Cancel, Cancelled, Notified};

use crate::ids::ConnId;

/// An empty queue that held at most this many frames at once gives its
/// memory back when its writer goes idle ([`Outbox::release_idle`]); a
/// busier one keeps it for the next burst: one block of at most
/// [`switchboard_wire::blocks::BLOCK`] frames, however long it grew (the
/// queue is stored in blocks, and an emptied one keeps only its last).
pub const IDLE_KEEP_FRAMES: usize = 64;

/// Frames an empty queue without memory (new, or given back by
/// [`Outbox::release_idle`]) makes room for at its first push: one
/// allocation for a batch, not a regrowth and copy at 4, 8 and 16 frames
/// every time a busy writer goes idle between batches.
pub const QUEUE_START_FRAMES: usize = 16;

/// What one queued frame costs an outbox beyond its encoded size, bytes:
/// the queue's entry for it (the frame's fields, its length, its tag). A
/// queue's byte count (against [`crate::Limits::queue_bytes`] and
/// [`crate::Limits::queue_hard_bytes`]) adds it to every frame, so the
/// byte limits bound the queue's memory however small its frames are.
pub const ENTRY_COST: usize = std::mem::size_of::<Entry>();

/// Queue limits an [`Outbox`] applies (a copy of the hub's limits).
#[derive(Debug, Clone, Copy)]
pub(crate) struct QueueLimits {
    /// Frames before the queue counts as full (`usize::MAX`: no count
    /// limit, the byte limit alone applies).
    pub frames: usize,
    /// Bytes (encoded size plus [`ENTRY_COST`] per frame) before the queue
    /// counts as full.
    pub bytes: usize,
    /// Bytes (counted the same way) above which the client is disconnected.
    pub hard_bytes: usize,
}

impl QueueLimits {
    /// The limits of `limits` (`queue_frames` 0: no count limit).
    pub fn of(limits: &crate::Limits) -> QueueLimits {
        QueueLimits {
            frames: match limits.queue_frames {
                0 => usize::MAX,
                n => n,
            },
            // At most `u32::MAX` droppable frames fit below it (see
            // `Inner::droppable`): 240 GiB, beyond any real limit.
            bytes: limits
                .queue_bytes
                .clamp(1, (u32::MAX as usize).saturating_mul(ENTRY_COST)),
            hard_bytes: limits.queue_hard_bytes,
        }
    }
}

#[derive(Debug)]
struct Entry {
    out: Out,
    len: usize,
    droppable: bool,
    /// The sampled frame: queued at `Inner::since`.
    stamped: bool,
    /// Replication sequence number the standby must hold before this
    /// frame may leave (0: none).
    tag: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Open,
    /// Deliver what is queued, then close.
    Closing,
    /// Close now; the queue is cleared.
    Killed,
}

#[derive(Debug)]
struct Inner {
    /// In blocks: a queue that grows under a burst copies nothing it
    /// holds, and an emptied one keeps at most one block.
    queue: Blocks<Entry>,
    /// Frames in `queue` (kept beside it: read on every push).
    frames: usize,
    bytes: usize,
    /// Droppable frames queued. 32 bits, so that an idle outbox stays
    /// one 256-byte allocation: a droppable frame is queued only below
    /// [`QueueLimits::bytes`], which [`QueueLimits::of`] keeps under
    /// `u32::MAX` frames' worth of [`ENTRY_COST`].
    droppable: u32,
    dropped_unreported: u64,
    dropped_total: u64,
    state: State,
    want_drained: bool,
    /// Frame to write when killed, if the stream is at a frame boundary
    /// (boxed: rarely set, and every connection's outbox holds the field).
    last_words: Option<Box<Frame>>,
    /// When the stamped frame was queued; `None` while no queued frame is
    /// stamped (the next one queued will be).
    since: Option<Instant>,
}

/// A delivery held back for a moment to be queued together with others
/// to the same client ([`Outbox::push_droppable_many`]): its frame, its
/// encoded length (without the length prefix) and its release tag.
#[derive(Debug)]
pub(crate) struct Staged {
    /// The frame.
    pub out: Out,
    /// [`Out::encoded_len`].
    pub len: usize,
    /// Replication sequence number the standby must hold before it may
    /// leave (0: none).
    pub tag: u64,
}

impl Staged {
    /// What the frame counts against the queue's byte limits once queued.
    pub fn bytes(&self) -> usize {
        LENGTH_PREFIX_LEN + self.len + ENTRY_COST
    }
}

/// Outcome of pushing a frame that must not be dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Pushed {
    /// Queued.
    Queued,
    /// Queued, but the queue is now above the hard limit: disconnect.
    OverHardLimit,
    /// The outbox is closed; nothing was queued.
    Closed,
}

/// What a writer got from [`Outbox::take`].
#[derive(Debug, Default)]
pub struct Taken {
    /// Frames to write, in order.
    pub frames: Vec<Out>,
    /// Encoded size of `frames`, length prefixes included: a writer
    /// reserves its buffer once for the whole batch.
    pub bytes: usize,
    /// Pub/sub deliveries dropped since the last take; the writer tells the
    /// client with a `Flow` notice.
    pub dropped: u64,
    /// Frames still queued after this take.
    pub remaining: usize,
    /// The router asked to hear when the queue has room (a message is
    /// waiting for it); the transport sends `Input::Drained`.
    pub want_drained: bool,
    /// The outbox is closing and this take emptied it: close the
    /// connection after writing.
    pub close: bool,
    /// The outbox was killed: stop writing now.
    pub killed: bool,
    /// Non-zero: the next frame waits until the standby holds change
    /// `held` (see [`Gate`]); wait with [`Gate::wait`].
    pub held: u64,
    /// When the stamped frame among `frames` was queued, if this take
    /// holds it: once the batch is written, the time since is a sample
    /// of the delivery queue delay.
    pub stamped: Option<Instant>,
}

/// The outbound queue of one connection.
#[derive(Debug)]
pub struct Outbox {
    conn: ConnId,
    inner: Mutex<Inner>,
    depth: AtomicUsize,
    wakeup: Wakeup,
    cancel: Cancel,
    gate: Arc<Gate>,
    /// Tag the writer waits for, while the outbox is in its gate's list
    /// (0 when not; see [`Gate::wait`]).
    held: AtomicU64,
}

impl Outbox {
    /// A new, empty, open outbox for connection `conn`.
    pub fn new(conn: ConnId) -> Arc<Outbox> {
        Outbox::gated(conn, Gate::open())
    }

    /// An outbox whose frames leave only as `gate` releases them.
    pub fn gated(conn: ConnId, gate: Arc<Gate>) -> Arc<Outbox> {
        Arc::new(Outbox {
            gate,
            conn,
            inner: Mutex::new(Inner {
                queue: Blocks::default(),
                frames: 0,
                bytes: 0,
                droppable: 0,
                dropped_unreported: 0,
                dropped_total: 0,
                state: State::Open,
                want_drained: false,
                last_words: None,
                since: None,
            }),
            depth: AtomicUsize::new(0),
            wakeup: Wakeup::default(),
            cancel: Cancel::default(),
            held: AtomicU64::new(0),
        })
    }

    fn held_tag(&self) -> u64 {
        self.held.load(Ordering::Relaxed)
    }

    /// The gate this outbox's frames pass.
    pub fn gate(&self) -> &Arc<Gate> {
        &self.gate
    }

    /// The connection this outbox belongs to.
    pub fn conn(&self) -> ConnId {
        self.conn
    }

    /// Frames queued right now.
    pub fn depth(&self) -> usize {
        self.depth.load(Ordering::Relaxed)
    }

    /// Pub/sub deliveries dropped for this client so far.
    pub fn dropped_total(&self) -> u64 {
        self.inner.lock().dropped_total
    }

    /// Cancelled when the outbox is killed (slow consumer, shutdown of a
    /// stuck connection): transports stop reading and writing at once.
    pub fn cancelled(&self) -> &Cancel {
        &self.cancel
    }

    /// Resolves once something may have been queued (or the outbox closed,
    /// or the gate released what it held) since it last resolved. For the
    /// one task that writes this outbox's frames.
    pub fn notified(&self) -> Notified<'_> {
        Notified {
            wakeup: &self.wakeup,
        }
    }

    /// Wakes the writer for a frame tagged `tag` queued into a queue that
    /// `was_empty`. A frame the gate holds back does not wake it: the
    /// outbox waits in the gate instead, woken once the standby holds the
    /// change (a writer woken now would find nothing to take, and wait in
    /// the gate itself).
    fn wake_if(self: &Arc<Self>, was_empty: bool, tag: u64) {
        if !was_empty {
            return;
        }
        if tag > self.gate.released() && self.gate.wait(self, tag) {
            return;
        }
        self.wakeup.wake();
    }

    /// Queues `out`, whose encoding (without the length prefix) is
    /// `encoded_len` bytes.
    #[inline(always)]
    fn append(
        inner: &mut Inner,
        out: Out,
        encoded_len: usize,
        droppable: bool,
        tag: u64,
        now: Option<Instant>,
    ) {
        let len = LENGTH_PREFIX_LEN + encoded_len;
        inner.bytes += len + ENTRY_COST;
        inner.droppable += u32::from(droppable);
        let stamped = inner.since.is_none() && now.is_some();
        if stamped {
            inner.since = now;
        }
        if inner.frames == 0 {
            inner.queue.reserve_start(QUEUE_START_FRAMES);
        }
        inner.frames += 1;
        inner.queue.push_back(Entry {
            out,
            len,
            droppable,
            stamped,
            tag,
        });
    }

    fn full(inner: &Inner, limits: &QueueLimits) -> bool {
        inner.frames != 0 && (inner.frames >= limits.frames || inner.bytes >= limits.bytes)
    }

    /// Queues a frame that must not be dropped (answers, key/value updates,
    /// presence, replies) at time `now` (`None`: not a candidate for the
    /// stamp).
    pub(crate) fn push_control(
        self: &Arc<Self>,
        out: Out,
        limits: &QueueLimits,
        tag: u64,
        now: Option<Instant>,
    ) -> Pushed {
        let encoded_len = out.encoded_len();
        let over = self.put_open(tag, |inner| {
            Self::append(inner, out, encoded_len, false, tag, now);
            inner.bytes > limits.hard_bytes
        });
        match over {
            None => Pushed::Closed,
            Some(true) => Pushed::OverHardLimit,
            Some(false) => Pushed::Queued,
        }
    }

    /// Queues a pub/sub delivery. When the queue is full, this client's
    /// oldest deliveries are dropped to make room (or, when nothing queued
    /// may be dropped, the new one). Returns how many were dropped, and
    /// appends the seqs of the numbered ones (a reliable client's) to
    /// `dropped_seqs`, oldest first. `now` as for [`Outbox::push_control`];
    /// `encoded_len` is `out`'s [`Out::encoded_len`] (the router knows it
    /// already for a numbered delivery).
    pub(crate) fn push_droppable(
        self: &Arc<Self>,
        out: Out,
        encoded_len: usize,
        limits: &QueueLimits,
        tag: u64,
        now: Option<Instant>,
        dropped_seqs: &mut Vec<u64>,
    ) -> u64 {
        self.put_open(tag, |inner| {
            Self::put_droppable(inner, out, encoded_len, limits, tag, now, dropped_seqs)
        })
        .unwrap_or(0)
    }

    /// [`push_droppable`](Self::push_droppable) for each of `staged` in
    /// turn, under one lock and with at most one wake-up: a run of
    /// deliveries to this client (see [`Staged`]). Empties `staged`;
    /// returns how many were dropped in all.
    pub(crate) fn push_droppable_many(
        self: &Arc<Self>,
        staged: &mut Vec<Staged>,
        limits: &QueueLimits,
        now: Option<Instant>,
        dropped_seqs: &mut Vec<u64>,
    ) -> u64 {
        let Some(first_tag) = staged.first().map(|s| s.tag) else {
            return 0;
        };
        let dropped = self.put_open(first_tag, |inner| {
            staged
                .drain(..)
                .map(|s| Self::put_droppable(inner, s.out, s.len, limits, s.tag, now, dropped_seqs))
                .sum()
        });
        // A closed outbox takes nothing.
        staged.clear();
        dropped.unwrap_or(0)
    }

    /// Every push: runs `put` under the lock if the outbox is open (`None`
    /// if not), then wakes the writer if the queue was empty: the first
    /// frame `put` queues is tagged `first_tag` (an empty queue is never
    /// full, so the first frame put into one goes in).
    fn put_open<R>(
        self: &Arc<Self>,
        first_tag: u64,
        put: impl FnOnce(&mut Inner) -> R,
    ) -> Option<R> {
        let mut inner = self.inner.lock();
        if inner.state != State::Open {
            return None;
        }
        let was_empty = inner.frames == 0;
        let r = put(&mut inner);
        self.depth.store(inner.frames, Ordering::Relaxed);
        drop(inner);
        self.wake_if(was_empty, first_tag);
        Some(r)
    }

    /// Queues the delivery `out`, dropping the oldest deliveries while
    /// the queue is full, or `out` itself when nothing queued may be
    /// dropped; returns how many were dropped.
    fn put_droppable(
        inner: &mut Inner,
        out: Out,
        encoded_len: usize,
        limits: &QueueLimits,
        tag: u64,
        now: Option<Instant>,
        dropped_seqs: &mut Vec<u64>,
    ) -> u64 {
        let mut dropped = 0;
        while Self::full(inner, limits) {
            if inner.droppable == 0 {
                inner.dropped_unreported += dropped + 1;
                inner.dropped_total += dropped + 1;
                if out.seq() != 0 {
                    dropped_seqs.push(out.seq());
                }
                return dropped + 1;
            }
            if let Some(e) = inner.queue.remove_first(|e| e.droppable) {
                inner.frames -= 1;
                inner.bytes -= e.len + ENTRY_COST;
                inner.droppable -= 1;
                dropped += 1;
                if e.out.seq() != 0 {
                    dropped_seqs.push(e.out.seq());
                }
                if e.stamped {
                    // The sample is lost; the next frame queued is stamped.
                    inner.since = None;
                }
            }
        }
        inner.dropped_unreported += dropped;
        inner.dropped_total += dropped;
        Self::append(inner, out, encoded_len, true, tag, now);
        dropped
    }

    /// Whether a waitable frame would have to wait. An empty queue never
    /// is, and says so without the lock: only the router queues frames,
    /// so a depth of 0 it reads is not stale in the direction that
    /// matters (a queue group's pick asks this of a member per delivery).
    pub(crate) fn is_full(&self, limits: &QueueLimits) -> bool {
        self.depth() != 0 && Self::full(&self.inner.lock(), limits)
    }

    /// Whether the queue would be full with `frames` more frames of
    /// `bytes` bytes (as [`Staged::bytes`] counts them) queued: what
    /// [`is_full`](Self::is_full) would say once a run staged for this
    /// client is pushed, conservatively (as if pushing it dropped
    /// nothing).
    pub(crate) fn is_full_with(&self, frames: usize, bytes: usize, limits: &QueueLimits) -> bool {
        if frames == 0 {
            return self.is_full(limits);
        }
        let inner = self.inner.lock();
        inner.frames + frames >= limits.frames || inner.bytes + bytes >= limits.bytes
    }

    /// Room left before the queue counts as full: frames, and bytes as
    /// [`QueueLimits::bytes`] counts them.
    pub(crate) fn room(&self, limits: &QueueLimits) -> (usize, usize) {
        let inner = self.inner.lock();
        (
            limits.frames.saturating_sub(inner.frames),
            limits.bytes.saturating_sub(inner.bytes),
        )
    }

    /// Asks the writer to report when the queue drains.
    pub(crate) fn request_drained(&self) {
        self.inner.lock().want_drained = true;
    }

    /// Whether the outbox still accepts frames.
    pub fn is_open(&self) -> bool {
        self.inner.lock().state == State::Open
    }

    /// Closes after everything queued (and `last`, if given) is written.
    pub fn close(&self, last: Option<Frame>) {
        let mut inner = self.inner.lock();
        if inner.state != State::Open {
            return;
        }
        if let Some(frame) = last {
            let out = Out::from(frame);
            let encoded_len = out.encoded_len();
            Self::append(&mut inner, out, encoded_len, false, 0, None);
        }
        inner.state = State::Closing;
        self.depth.store(inner.frames, Ordering::Relaxed);
        drop(inner);
        self.wakeup.wake();
    }

    /// Closes now, discarding the queue; `last` is written if the writer is
    /// between frames and the socket has room.
    pub fn kill(&self, last: Option<Frame>) {
        let mut inner = self.inner.lock();
        if inner.state == State::Killed {
            return;
        }
        inner.state = State::Killed;
        inner.queue = Blocks::default();
        inner.frames = 0;
        inner.bytes = 0;
        inner.droppable = 0;
        inner.since = None;
        inner.last_words = last.map(Box::new);
        self.depth.store(0, Ordering::Relaxed);
        drop(inner);
        self.cancel.cancel();
        self.wakeup.wake();
    }

    /// The frame left for a killed outbox's writer to try, once.
    pub fn take_last_words(&self) -> Option<Frame> {
        self.inner.lock().last_words.take().map(|f| *f)
    }

    /// Gives the queue's memory back if it is empty and no larger than
    /// [`IDLE_KEEP_FRAMES`]: called by the writer before it waits, so an
    /// idle connection holds no queue (a busy one keeps its capacity), nor
    /// the [`Cancel`]'s list of further waiters.
    pub fn release_idle(&self) {
        let mut inner = self.inner.lock();
        if inner.frames == 0 {
            let capacity = inner.queue.capacity();
            if capacity > 0 && capacity <= IDLE_KEEP_FRAMES {
                inner.queue = Blocks::default();
            }
        }
        drop(inner);
        self.cancel.release_idle();
    }

    /// Capacity of the queue, in frames (for tests of
    /// [`Outbox::release_idle`]).
    #[cfg(test)]
    pub(crate) fn queue_capacity(&self) -> usize {
        self.inner.lock().queue.capacity()
    }

    /// Takes queued frames, at least one and up to about `max_bytes`, into
    /// `taken.frames` (which is cleared first).
    pub fn take(&self, max_bytes: usize, taken: &mut Taken) {
        taken.frames.clear();
        let mut inner = self.inner.lock();
        // Room for the batch at once (frames are rarely under 64 bytes).
        taken.frames.reserve(inner.frames.min(max_bytes / 64 + 1));
        let mut bytes = 0;
        let released = self.gate.released();
        taken.held = 0;
        taken.stamped = None;
        let Inner {
            queue,
            frames,
            bytes: queued_bytes,
            droppable,
            since,
            ..
        } = &mut *inner;
        let held = &mut taken.held;
        let (out, stamped) = (&mut taken.frames, &mut taken.stamped);
        queue.pop_front_until(
            |e| {
                // At least one frame, then up to `max_bytes`.
                if bytes > 0 && bytes >= max_bytes {
                    return false;
                }
                if e.tag > released {
                    *held = e.tag;
                    return false;
                }
                bytes += e.len;
                true
            },
            |e| {
                *frames -= 1;
                *queued_bytes -= e.len + ENTRY_COST;
                *droppable -= u32::from(e.droppable);
                if e.stamped {
                    *stamped = since.take();
                }
                out.push(e.out);
            },
        );
        taken.bytes = bytes;
        taken.dropped = std::mem::take(&mut inner.dropped_unreported);
        taken.remaining = inner.frames;
        // Reported only when this take made room; otherwise kept for the
        // next take.
        taken.want_drained = inner.want_drained && bytes > 0;
        if taken.want_drained {
            inner.want_drained = false;
        }
        taken.killed = inner.state == State::Killed;
        taken.close = inner.state == State::Closing && inner.frames == 0;
        self.depth.store(inner.frames, Ordering::Relaxed);
    }
}

/// Holds back frames until the standby holds the changes that produced
/// them. The router tags each frame it queues with the replication
/// sequence number of its last change (0 when no standby is attached);
/// a writer takes a frame only once [`Gate::released`] reached its tag.
#[derive(Debug)]
pub struct Gate {
    released: AtomicU64,
    waiting: Mutex<Vec<Arc<Outbox>>>,
}

impl Gate {
    /// A gate that holds nothing back.
    pub fn open() -> Arc<Gate> {
        Arc::new(Gate {
            released: AtomicU64::new(u64::MAX),
            waiting: Mutex::new(Vec::new()),
        })
    }

    /// Highest change the standby holds: frames tagged up to it may leave.
    pub fn released(&self) -> u64 {
        self.released.load(Ordering::Acquire)
    }

    /// Starts holding frames tagged above `seq` (a standby attaches).
    pub fn close_at(&self, seq: u64) {
        self.released.store(seq, Ordering::Release);
    }

    /// The standby holds every change up to `seq`: wakes the writers
    /// waiting for it.
    pub fn release(&self, seq: u64) {
        let before = self.released.fetch_max(seq, Ordering::AcqRel);
        if seq <= before {
            return;
        }
        let waiting: Vec<Arc<Outbox>> = {
            let mut w = self.waiting.lock();
            if w.is_empty() {
                return;
            }
            let (ready, still): (Vec<_>, Vec<_>) = w.drain(..).partition(|o| o.held_tag() <= seq);
            *w = still;
            for o in &ready {
                // Out of the list (see `wait`).
                o.held.store(0, Ordering::Relaxed);
            }
            ready
        };
        for outbox in waiting {
            outbox.wakeup.wake();
        }
    }

    /// Lets every frame go (the standby is gone).
    pub fn open_all(&self) {
        self.release(u64::MAX);
    }

    /// Registers `outbox` to be woken once change `tag` is released;
    /// `false` when it already is (take again at once).
    pub fn wait(&self, outbox: &Arc<Outbox>, tag: u64) -> bool {
        // `held` marks membership of this gate's list only.
        debug_assert!(std::ptr::eq(Arc::as_ptr(&outbox.gate), self));
        let mut w = self.waiting.lock();
        if self.released() >= tag {
            return false;
        }
        // An outbox's `held` is non-zero exactly while it is in the list
        // (both change under this lock): no search of the list, which
        // holds every outbox of a fan-out.
        match outbox.held.load(Ordering::Relaxed) {
            0 => {
                outbox.held.store(tag, Ordering::Relaxed);
                w.push(outbox.clone());
            }
            held => outbox.held.store(held.min(tag), Ordering::Relaxed),
        }
        true
    }
}

/// Encodes a `Flow` notice about `dropped` deliveries.
pub(crate) fn flow_notice(dropped: u64, depth: usize) -> Out {
    Out::from(Frame::from(proto::Flow {
        dropped,
        queue_depth: depth as u64,
    }))
}

#[cfg(test)]
mod tests;
