//! Per-client outbound queues, shared between the router (which fills them)
//! and a transport writer (which drains them).
//!
//! The router never waits on an [`Outbox`]: pushing takes a short,
//! uncontended lock and wakes the writer only when the queue goes from
//! empty to non-empty. The writer takes a whole batch under one lock,
//! encodes it into one buffer and writes it with one system call.
//!
//! Like the router, this is std-only: the writer waits with
//! [`Outbox::notified`] and [`Outbox::cancelled`], plain futures on
//! atomics and wakers that any executor can poll.

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll, Waker};

use bytes::{BufMut, Bytes, BytesMut};
use futures::task::AtomicWaker;
use parking_lot::Mutex;
use prost::encoding::{encode_key, encode_varint, encoded_len_varint, WireType};
use prost::Message;
use switchboard_wire::proto::frame::Kind;
use switchboard_wire::{proto, put_varint, FastBuf, Frame, LENGTH_PREFIX_LEN};

use crate::ids::ConnId;

/// Field number of `Frame.deliver`.
const FRAME_DELIVER_FIELD: u32 = 47;

/// One frame waiting in an outbox.
#[derive(Debug, Clone, PartialEq)]
pub enum Out {
    /// Any frame (boxed: frames are large and rarely queued in bulk).
    Frame(Box<Frame>),
    /// A pub/sub delivery, pre-encoded: the fields shared by every
    /// subscriber (topic, publisher, reply-to, headers) are encoded once per
    /// publish into `head`; the payload is shared, never copied.
    Deliver {
        /// `Frame.seq` (0: not sequenced).
        seq: u64,
        /// `Frame.acked` (0: acknowledges nothing).
        acked: u64,
        /// The subscriber's subscription id.
        sub_id: u64,
        /// Encoded `Deliver` fields 2, 3, 5 and 6.
        head: DeliverHead,
        /// The payload.
        payload: Bytes,
    },
}

impl From<Frame> for Out {
    fn from(frame: Frame) -> Out {
        Out::Frame(Box::new(frame))
    }
}

/// The encoded fields of a `Deliver` that every subscriber of one publish
/// shares, in prost's field order around the payload (field 4): topic and
/// publisher (fields 2 and 3) go before it, reply-to and headers (5 and 6)
/// after it. A delivery is thus byte for byte what prost would encode.
///
/// One shared allocation, cloned per subscriber with one reference count
/// increment; it keeps [`Out`] small (80 bytes), which every queued frame
/// pays for.
#[derive(Debug, Clone, PartialEq)]
pub struct DeliverHead {
    bytes: Arc<[u8]>,
    /// Length of the part that goes before the payload.
    split: usize,
}

impl DeliverHead {
    /// Encodes the shared fields of a delivery of a publish to `topic`
    /// by `from`.
    pub fn new(topic: &str, from: &str, reply_to: &str, headers: &[proto::Header]) -> DeliverHead {
        let headers_len: usize = headers
            .iter()
            .map(|h| prost::encoding::message::encoded_len(6, h))
            .sum();
        let mut buf =
            Vec::with_capacity(topic.len() + from.len() + reply_to.len() + 15 + headers_len);
        let put_str = |tag: u32, s: &str, buf: &mut Vec<u8>| {
            if !s.is_empty() {
                encode_key(tag, WireType::LengthDelimited, buf);
                encode_varint(s.len() as u64, buf);
                buf.put_slice(s.as_bytes());
            }
        };
        put_str(2, topic, &mut buf);
        put_str(3, from, &mut buf);
        let split = buf.len();
        put_str(5, reply_to, &mut buf);
        for h in headers {
            prost::encoding::message::encode(6, h, &mut buf);
        }
        DeliverHead {
            bytes: buf.into(),
            split,
        }
    }

    /// Encoded length of the shared fields.
    pub fn len(&self) -> usize {
        self.bytes.len()
    }

    /// Whether no shared field is set.
    pub fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }
}

impl Out {
    /// Sets `Frame.seq`.
    pub fn set_seq(&mut self, seq: u64) {
        match self {
            Out::Frame(f) => f.seq = seq,
            Out::Deliver { seq: s, .. } => *s = seq,
        }
    }

    /// Sets `Frame.acked`: the cumulative acknowledgement it carries.
    pub fn set_acked(&mut self, up_to: u64) {
        match self {
            Out::Frame(f) => f.acked = up_to,
            Out::Deliver { acked, .. } => *acked = up_to,
        }
    }

    /// `Frame.seq`.
    pub fn seq(&self) -> u64 {
        match self {
            Out::Frame(f) => f.seq,
            Out::Deliver { seq, .. } => *seq,
        }
    }

    /// Whether frames like this one are numbered for a reliable client:
    /// everything but the connection-level kinds.
    pub fn is_sequenced(&self) -> bool {
        match self {
            Out::Deliver { .. } => true,
            Out::Frame(f) => !matches!(
                f.kind,
                Some(
                    Kind::Welcome(_)
                        | Kind::Goodbye(_)
                        | Kind::Ack(_)
                        | Kind::Pong(_)
                        | Kind::Flow(_)
                )
            ),
        }
    }

    /// Encoded length of `Frame.seq` and `Frame.acked`.
    fn envelope_len(seq: u64, acked: u64) -> usize {
        let mut len = 0;
        if seq != 0 {
            len += 1 + encoded_len_varint(seq);
        }
        if acked != 0 {
            len += 1 + encoded_len_varint(acked);
        }
        len
    }

    fn deliver_body_len(sub_id: u64, head: &DeliverHead, payload: &Bytes) -> usize {
        let mut len = head.len();
        if sub_id != 0 {
            len += 1 + encoded_len_varint(sub_id);
        }
        if !payload.is_empty() {
            len += 1 + encoded_len_varint(payload.len() as u64) + payload.len();
        }
        len
    }

    /// Length of the protobuf encoding (without the length prefix).
    pub fn encoded_len(&self) -> usize {
        match self {
            Out::Frame(f) => f.encoded_len(),
            Out::Deliver {
                seq,
                acked,
                sub_id,
                head,
                payload,
            } => {
                let body = Self::deliver_body_len(*sub_id, head, payload);
                Self::envelope_len(*seq, *acked) + 2 + encoded_len_varint(body as u64) + body
            }
        }
    }

    /// Appends the length prefix and the protobuf encoding to `buf`.
    pub fn encode(&self, buf: &mut BytesMut) {
        self.encode_with(true, buf);
    }

    /// Appends only the protobuf encoding (no length prefix), e.g. for a
    /// WebSocket message.
    pub fn encode_body(&self, buf: &mut BytesMut) {
        self.encode_with(false, buf);
    }

    fn encode_with(&self, prefix: bool, buf: &mut BytesMut) {
        match self {
            Out::Frame(f) => {
                let len = f.encoded_len();
                if prefix {
                    buf.reserve(LENGTH_PREFIX_LEN + len);
                    buf.put_u32(len as u32);
                } else {
                    buf.reserve(len);
                }
                // Cannot fail: `BytesMut` grows as needed.
                let _ = f.encode(&mut FastBuf(buf));
            }
            Out::Deliver {
                seq,
                acked,
                sub_id,
                head,
                payload,
            } => Self::encode_deliver([*seq, *acked], *sub_id, head, payload, prefix, buf),
        }
    }

    /// Encodes a pre-encoded delivery: the fixed fields go through a
    /// stack buffer, so the whole frame costs four `put_slice` calls (five
    /// with a reply-to or headers; the varints written byte by byte into
    /// the `BytesMut` cost more than everything else in the hub's write
    /// path).
    fn encode_deliver(
        [seq, acked]: [u64; 2],
        sub_id: u64,
        head: &DeliverHead,
        payload: &Bytes,
        prefix: bool,
        buf: &mut BytesMut,
    ) {
        let body = Self::deliver_body_len(sub_id, head, payload);
        // prefix 4 + seq 11 + acked 11 + Frame.deliver key 2 + body length
        // 10 + sub_id 11
        let mut fixed = [0u8; 49];
        let mut n = 0;
        let total = Self::envelope_len(seq, acked) + 2 + encoded_len_varint(body as u64) + body;
        if prefix {
            fixed[..4].copy_from_slice(&(total as u32).to_be_bytes());
            n = 4;
        }
        if seq != 0 {
            fixed[n] = 0x08; // Frame.seq, varint
            n = put_varint(&mut fixed, n + 1, seq);
        }
        if acked != 0 {
            fixed[n] = 0x10; // Frame.acked, varint
            n = put_varint(&mut fixed, n + 1, acked);
        }
        n = put_varint(
            &mut fixed,
            n,
            u64::from(FRAME_DELIVER_FIELD << 3 | WireType::LengthDelimited as u32),
        );
        n = put_varint(&mut fixed, n, body as u64);
        if sub_id != 0 {
            fixed[n] = 0x08; // Deliver.sub_id, varint
            n = put_varint(&mut fixed, n + 1, sub_id);
        }
        buf.reserve(usize::from(prefix) * LENGTH_PREFIX_LEN + total);
        buf.put_slice(&fixed[..n]);
        let shared: &[u8] = &head.bytes;
        if head.split < shared.len() {
            // Reply-to or headers follow the payload: the rare case.
            return Self::put_split(shared, head.split, payload, buf);
        }
        buf.put_slice(shared);
        Self::put_payload(payload, buf);
    }

    /// `Deliver.payload`, when not empty.
    #[inline(always)]
    fn put_payload(payload: &Bytes, buf: &mut BytesMut) {
        if !payload.is_empty() {
            let mut key = [0u8; 11];
            key[0] = 0x22; // Deliver.payload, length-delimited
            let k = put_varint(&mut key, 1, payload.len() as u64);
            buf.put_slice(&key[..k]);
            buf.put_slice(payload);
        }
    }

    /// The shared fields around the payload: kept out of line so that the
    /// plain delivery's path stays as short as it was before headers.
    #[cold]
    #[inline(never)]
    fn put_split(shared: &[u8], split: usize, payload: &Bytes, buf: &mut BytesMut) {
        let (before, after) = shared.split_at(split);
        buf.put_slice(before);
        Self::put_payload(payload, buf);
        buf.put_slice(after);
    }

    /// The frame this entry stands for (decodes a pre-encoded delivery).
    pub fn into_frame(self) -> Frame {
        match self {
            Out::Frame(f) => *f,
            deliver => {
                let mut buf = BytesMut::new();
                deliver.encode_body(&mut buf);
                Frame::decode(buf.freeze()).unwrap_or_else(|e| {
                    Frame::error(0, switchboard_wire::ErrorCode::Internal, e.to_string())
                })
            }
        }
    }
}

/// Wakes the one task that writes an outbox's frames: a flag that stays
/// set until [`Notified`] sees it, so a wake-up before the writer waits is
/// not lost.
#[derive(Debug, Default)]
struct Wakeup {
    waker: AtomicWaker,
    woken: AtomicBool,
}

impl Wakeup {
    fn wake(&self) {
        self.woken.store(true, Ordering::Release);
        self.waker.wake();
    }
}

/// What [`Outbox::notified`] returns: resolves once the outbox was woken
/// since it last resolved.
#[derive(Debug)]
#[must_use = "futures do nothing unless polled"]
pub struct Notified<'a> {
    wakeup: &'a Wakeup,
}

impl Future for Notified<'_> {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let wakeup = self.wakeup;
        if wakeup.woken.swap(false, Ordering::AcqRel) {
            return Poll::Ready(());
        }
        wakeup.waker.register(cx.waker());
        // Woken between the check and the registration: not lost.
        if wakeup.woken.swap(false, Ordering::AcqRel) {
            return Poll::Ready(());
        }
        Poll::Pending
    }
}

/// Set once, when an outbox is killed or its transport gives up: every
/// task waiting in [`Cancel::cancelled`] wakes (the connection's reader
/// and writer both stop). Clones share the flag.
#[derive(Debug, Clone, Default)]
pub struct Cancel(Arc<CancelInner>);

#[derive(Debug, Default)]
struct CancelInner {
    done: AtomicBool,
    /// Waiting futures' wakers, by key.
    waiting: Mutex<Vec<(u64, Waker)>>,
    next_key: AtomicU64,
}

impl Cancel {
    /// Sets the flag and wakes every waiter; later calls do nothing.
    pub fn cancel(&self) {
        if self.0.done.swap(true, Ordering::AcqRel) {
            return;
        }
        let waiting = std::mem::take(&mut *self.0.waiting.lock());
        for (_, waker) in waiting {
            waker.wake();
        }
    }

    /// Whether the flag is set.
    pub fn is_cancelled(&self) -> bool {
        self.0.done.load(Ordering::Acquire)
    }

    /// Resolves once the flag is set.
    pub fn cancelled(&self) -> Cancelled<'_> {
        Cancelled {
            cancel: self,
            key: None,
        }
    }
}

/// What [`Cancel::cancelled`] returns.
#[derive(Debug)]
#[must_use = "futures do nothing unless polled"]
pub struct Cancelled<'a> {
    cancel: &'a Cancel,
    /// Its entry among the waiters, once polled.
    key: Option<u64>,
}

impl Future for Cancelled<'_> {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let inner = &self.cancel.0;
        if inner.done.load(Ordering::Acquire) {
            return Poll::Ready(());
        }
        let mut waiting = inner.waiting.lock();
        // `cancel` sets the flag before it takes the waiters: checked again
        // under the lock, a waiter is either seen here or woken there.
        if inner.done.load(Ordering::Acquire) {
            return Poll::Ready(());
        }
        match self.key {
            Some(key) => {
                if let Some((_, waker)) = waiting.iter_mut().find(|(k, _)| *k == key) {
                    if !waker.will_wake(cx.waker()) {
                        *waker = cx.waker().clone();
                    }
                }
            }
            None => {
                let key = inner.next_key.fetch_add(1, Ordering::Relaxed);
                waiting.push((key, cx.waker().clone()));
                drop(waiting);
                self.key = Some(key);
            }
        }
        Poll::Pending
    }
}

impl Drop for Cancelled<'_> {
    fn drop(&mut self) {
        if let Some(key) = self.key {
            self.cancel.0.waiting.lock().retain(|(k, _)| *k != key);
        }
    }
}

/// Queue limits an [`Outbox`] applies (a copy of the hub's limits).
#[derive(Debug, Clone, Copy)]
pub(crate) struct QueueLimits {
    pub frames: usize,
    pub bytes: usize,
    pub hard_bytes: usize,
}

#[derive(Debug)]
struct Entry {
    out: Out,
    len: usize,
    droppable: bool,
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
    queue: VecDeque<Entry>,
    bytes: usize,
    droppable: usize,
    dropped_unreported: u64,
    dropped_total: u64,
    state: State,
    want_drained: bool,
    /// Frame to write when killed, if the stream is at a frame boundary.
    last_words: Option<Frame>,
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
    /// Tag the writer waits for (see [`Gate::wait`]).
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
                queue: VecDeque::new(),
                bytes: 0,
                droppable: 0,
                dropped_unreported: 0,
                dropped_total: 0,
                state: State::Open,
                want_drained: false,
                last_words: None,
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

    fn wake_if(&self, was_empty: bool) {
        if was_empty {
            self.wakeup.wake();
        }
    }

    fn append(inner: &mut Inner, out: Out, droppable: bool, tag: u64) {
        let len = LENGTH_PREFIX_LEN + out.encoded_len();
        inner.bytes += len;
        inner.droppable += usize::from(droppable);
        inner.queue.push_back(Entry {
            out,
            len,
            droppable,
            tag,
        });
    }

    fn full(inner: &Inner, limits: &QueueLimits) -> bool {
        !inner.queue.is_empty()
            && (inner.queue.len() >= limits.frames || inner.bytes >= limits.bytes)
    }

    /// Queues a frame that must not be dropped (answers, key/value updates,
    /// presence, replies).
    pub(crate) fn push_control(&self, out: Out, limits: &QueueLimits, tag: u64) -> Pushed {
        let mut inner = self.inner.lock();
        if inner.state != State::Open {
            return Pushed::Closed;
        }
        let was_empty = inner.queue.is_empty();
        Self::append(&mut inner, out, false, tag);
        self.depth.store(inner.queue.len(), Ordering::Relaxed);
        let over = inner.bytes > limits.hard_bytes;
        drop(inner);
        self.wake_if(was_empty);
        if over {
            Pushed::OverHardLimit
        } else {
            Pushed::Queued
        }
    }

    /// Queues a pub/sub delivery. When the queue is full, this client's
    /// oldest deliveries are dropped to make room (or, when nothing queued
    /// may be dropped, the new one). Returns how many were dropped.
    pub(crate) fn push_droppable(&self, out: Out, limits: &QueueLimits, tag: u64) -> u64 {
        let mut inner = self.inner.lock();
        if inner.state != State::Open {
            return 0;
        }
        let mut dropped = 0;
        while Self::full(&inner, limits) {
            if inner.droppable == 0 {
                inner.dropped_unreported += 1;
                inner.dropped_total += 1;
                return 1;
            }
            let pos = inner
                .queue
                .iter()
                .position(|e| e.droppable)
                .unwrap_or_default();
            if let Some(e) = inner.queue.remove(pos) {
                inner.bytes -= e.len;
                inner.droppable -= 1;
                dropped += 1;
            }
        }
        inner.dropped_unreported += dropped;
        inner.dropped_total += dropped;
        let was_empty = inner.queue.is_empty();
        Self::append(&mut inner, out, true, tag);
        self.depth.store(inner.queue.len(), Ordering::Relaxed);
        drop(inner);
        self.wake_if(was_empty);
        dropped
    }

    /// Whether a waitable frame would have to wait.
    pub(crate) fn is_full(&self, limits: &QueueLimits) -> bool {
        Self::full(&self.inner.lock(), limits)
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
            Self::append(&mut inner, Out::from(frame), false, 0);
        }
        inner.state = State::Closing;
        self.depth.store(inner.queue.len(), Ordering::Relaxed);
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
        inner.queue.clear();
        inner.bytes = 0;
        inner.droppable = 0;
        inner.last_words = last;
        self.depth.store(0, Ordering::Relaxed);
        drop(inner);
        self.cancel.cancel();
        self.wakeup.wake();
    }

    /// The frame left for a killed outbox's writer to try, once.
    pub fn take_last_words(&self) -> Option<Frame> {
        self.inner.lock().last_words.take()
    }

    /// Takes queued frames, at least one and up to about `max_bytes`, into
    /// `taken.frames` (which is cleared first).
    pub fn take(&self, max_bytes: usize, taken: &mut Taken) {
        taken.frames.clear();
        let mut inner = self.inner.lock();
        let mut bytes = 0;
        let released = self.gate.released();
        taken.held = 0;
        while let Some(e) = inner.queue.pop_front() {
            if e.tag > released {
                taken.held = e.tag;
                inner.queue.push_front(e);
                break;
            }
            bytes += e.len;
            inner.bytes -= e.len;
            inner.droppable -= usize::from(e.droppable);
            taken.frames.push(e.out);
            if bytes >= max_bytes {
                break;
            }
        }
        taken.dropped = std::mem::take(&mut inner.dropped_unreported);
        taken.remaining = inner.queue.len();
        // Reported only when this take made room; otherwise kept for the
        // next take.
        taken.want_drained = inner.want_drained && bytes > 0;
        if taken.want_drained {
            inner.want_drained = false;
        }
        taken.killed = inner.state == State::Killed;
        taken.close = inner.state == State::Closing && inner.queue.is_empty();
        self.depth.store(inner.queue.len(), Ordering::Relaxed);
    }
}

/// Encodes a `Flow` notice about `dropped` deliveries.
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
        let mut w = self.waiting.lock();
        if self.released() >= tag {
            return false;
        }
        outbox.held.store(tag, Ordering::Relaxed);
        if !w.iter().any(|o| Arc::ptr_eq(o, outbox)) {
            w.push(outbox.clone());
        }
        true
    }
}

pub(crate) fn flow_notice(dropped: u64, depth: usize) -> Out {
    Out::from(Frame::from(proto::Flow {
        dropped,
        queue_depth: depth as u64,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: QueueLimits = QueueLimits {
        frames: 4,
        bytes: 1 << 20,
        hard_bytes: 1 << 21,
    };

    fn deliver(sub_id: u64, payload: &'static [u8]) -> Out {
        Out::Deliver {
            seq: 0,
            acked: 0,
            sub_id,
            head: DeliverHead::new("a.b", "pub", "inbox.1", &[]),
            payload: Bytes::from_static(payload),
        }
    }

    fn header(key: &str, value: &[u8]) -> proto::Header {
        proto::Header {
            key: key.into(),
            value: Bytes::copy_from_slice(value),
        }
    }

    /// The pre-encoded delivery of `d` with `seq` and `acked`, and the frame
    /// prost would encode for it.
    fn both(d: proto::Deliver, seq: u64, acked: u64) -> (Out, Frame) {
        let out = Out::Deliver {
            seq,
            acked,
            sub_id: d.sub_id,
            head: DeliverHead::new(&d.topic, &d.from, &d.reply_to, &d.headers),
            payload: d.payload.clone(),
        };
        let mut frame = Frame::from(d);
        frame.seq = seq;
        frame.acked = acked;
        (out, frame)
    }

    /// Same length, same bytes (prefix included, and without it), and the
    /// same frame back.
    fn assert_same_as_prost(out: Out, expected: &Frame) {
        assert_eq!(out.encoded_len(), expected.encoded_len());
        let mut got = BytesMut::new();
        out.encode(&mut got);
        assert_eq!(got.len(), expected.wire_len());
        let mut want = BytesMut::new();
        Out::from(expected.clone()).encode(&mut want);
        assert_eq!(got, want, "same bytes as prost, prefix included");
        let mut body = BytesMut::new();
        out.encode_body(&mut body);
        assert_eq!(body[..], want[LENGTH_PREFIX_LEN..]);
        assert_eq!(&out.into_frame(), expected);
    }

    #[test]
    fn pre_encoded_delivery_matches_prost() {
        let headers = vec![
            header("trace-id", b"abc"),
            header("bin", &[0, 255, 7]),
            header("trace-id", b""),
        ];
        for (sub_id, payload, reply_to, headers) in [
            (7, &b"hello"[..], "", vec![]),
            (0, b"", "", vec![]),
            (u64::MAX, &[0u8; 300][..], "", vec![]),
            (7, b"hi", "inbox.1", vec![]),
            (7, b"hi", "", headers.clone()),
            (1, b"", "inbox.1", headers.clone()),
            (9, &[1u8; 200][..], "r", vec![header("k", &[2u8; 300])]),
        ] {
            let d = proto::Deliver {
                sub_id,
                topic: "orders.eu".into(),
                from: "alice".into(),
                payload: Bytes::copy_from_slice(payload),
                reply_to: reply_to.into(),
                headers,
            };
            let (out, expected) = both(d, 0, 0);
            assert_same_as_prost(out, &expected);
        }
    }

    #[test]
    #[cfg(target_pointer_width = "64")]
    fn queued_entries_stay_small() {
        assert!(
            std::mem::size_of::<Out>() <= 80,
            "{}",
            std::mem::size_of::<Out>()
        );
    }

    #[test]
    fn sequenced_delivery_matches_prost() {
        for (seq, acked) in [(1, 0), (300, 1), (u64::MAX, u64::MAX), (0, 70_000)] {
            let mut out = deliver(7, b"hi");
            out.set_seq(seq);
            out.set_acked(acked);
            let mut expected = deliver(7, b"hi").into_frame();
            expected.seq = seq;
            expected.acked = acked;
            assert_eq!(out.seq(), seq);
            assert_same_as_prost(out, &expected);
        }
    }

    proptest::proptest! {
        /// Any delivery, headers or not: prost's bytes exactly.
        #[test]
        fn any_delivery_matches_prost(
            sub_id in proptest::prelude::any::<u64>(),
            seq in proptest::prelude::any::<u64>(),
            acked in proptest::prelude::any::<u64>(),
            topic in "[a-z.]{0,20}",
            from in "\\PC{0,10}",
            reply_to in "[a-z.]{0,300}",
            payload in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..400),
            headers in proptest::collection::vec(
                ("\\PC{0,20}", proptest::collection::vec(proptest::prelude::any::<u8>(), 0..200)),
                0..5,
            ),
        ) {
            let d = proto::Deliver {
                sub_id,
                topic,
                from,
                payload: payload.into(),
                reply_to,
                headers: headers.iter().map(|(k, v)| header(k, v)).collect(),
            };
            let (out, expected) = both(d, seq, acked);
            assert_same_as_prost(out, &expected);
        }
    }

    #[tokio::test]
    async fn gate_holds_frames_until_released() {
        let gate = Gate::open();
        gate.close_at(10);
        let outbox = Outbox::gated(ConnId(1), gate.clone());
        outbox.push_control(Out::from(Frame::ok(1)), &LIMITS, 10);
        outbox.push_control(Out::from(Frame::ok(2)), &LIMITS, 12);
        outbox.push_control(Out::from(Frame::ok(3)), &LIMITS, 11);
        // The first push left a wake-up.
        outbox.notified().await;
        let mut taken = Taken::default();
        outbox.take(usize::MAX, &mut taken);
        assert_eq!(taken.frames.len(), 1);
        assert_eq!(taken.held, 12);
        assert!(gate.wait(&outbox, taken.held));
        gate.release(11);
        // Not yet: the writer waits for 12.
        assert!(
            tokio::time::timeout(std::time::Duration::from_millis(20), outbox.notified())
                .await
                .is_err()
        );
        gate.release(12);
        tokio::time::timeout(std::time::Duration::from_secs(5), outbox.notified())
            .await
            .expect("woken on release");
        outbox.take(usize::MAX, &mut taken);
        // Frames leave in queue order, the one tagged 11 after the one tagged 12.
        assert_eq!(taken.frames.len(), 2);
        assert_eq!(taken.held, 0);
        assert!(!gate.wait(&outbox, 12));
    }

    #[tokio::test]
    async fn a_kill_wakes_every_task_waiting_on_the_outbox() {
        let outbox = Outbox::new(ConnId(1));
        let cancel = outbox.cancelled().clone();
        let waiters: Vec<_> = (0..3)
            .map(|_| {
                let cancel = cancel.clone();
                tokio::spawn(async move { cancel.cancelled().await })
            })
            .collect();
        // A waiter dropped before the kill leaves nothing behind.
        let dropped = cancel.clone();
        assert!(
            tokio::time::timeout(std::time::Duration::from_millis(5), dropped.cancelled())
                .await
                .is_err()
        );
        tokio::task::yield_now().await;
        assert!(!cancel.is_cancelled());
        outbox.kill(None);
        for waiter in waiters {
            tokio::time::timeout(std::time::Duration::from_secs(5), waiter)
                .await
                .expect("woken by the kill")
                .expect("no panic");
        }
        assert!(cancel.is_cancelled());
        cancel.cancelled().await;
        // The writer was woken too.
        outbox.notified().await;
    }

    #[test]
    fn drops_oldest_deliveries_only() {
        let outbox = Outbox::new(ConnId(1));
        assert_eq!(
            outbox.push_control(Out::from(Frame::ok(1)), &LIMITS, 0),
            Pushed::Queued
        );
        for i in 1..=3 {
            assert_eq!(outbox.push_droppable(deliver(i, b"x"), &LIMITS, 0), 0);
        }
        // Full (4 frames): the oldest delivery (sub 1) goes, the Ok stays.
        assert_eq!(outbox.push_droppable(deliver(4, b"x"), &LIMITS, 0), 1);
        assert!(outbox.is_full(&LIMITS));
        outbox.request_drained();
        let mut taken = Taken::default();
        outbox.take(usize::MAX, &mut taken);
        let ids: Vec<u64> = taken
            .frames
            .drain(..)
            .map(|o| match o.into_frame().kind {
                Some(proto::frame::Kind::Deliver(d)) => d.sub_id,
                Some(proto::frame::Kind::Ok(o)) => 100 + o.id,
                other => panic!("unexpected {other:?}"),
            })
            .collect();
        assert_eq!(ids, vec![101, 2, 3, 4]);
        assert_eq!(taken.dropped, 1);
        assert!(taken.want_drained);
        assert_eq!(outbox.dropped_total(), 1);
    }

    #[test]
    fn control_frames_never_dropped_and_hard_limit_reported() {
        let limits = QueueLimits {
            frames: 1,
            bytes: 10,
            hard_bytes: 100,
        };
        let outbox = Outbox::new(ConnId(1));
        let mut over = false;
        for i in 0..20 {
            if outbox.push_control(Out::from(Frame::ok(i + 1)), &limits, 0) == Pushed::OverHardLimit
            {
                over = true;
                break;
            }
        }
        assert!(over);
        // With no delivery to drop, the new delivery is the one dropped.
        assert_eq!(outbox.push_droppable(deliver(1, b"x"), &limits, 0), 1);
        outbox.kill(Some(Frame::ok(0)));
        assert_eq!(outbox.depth(), 0);
        assert!(outbox.cancelled().is_cancelled());
        assert_eq!(
            outbox.push_control(Out::from(Frame::ok(5)), &limits, 0),
            Pushed::Closed
        );
    }

    #[test]
    fn take_respects_batch_bytes_and_close() {
        let outbox = Outbox::new(ConnId(1));
        for i in 0..3 {
            outbox.push_control(Out::from(Frame::ok(i + 1)), &LIMITS, 0);
        }
        outbox.close(Some(Frame::ok(99)));
        let mut taken = Taken::default();
        outbox.take(1, &mut taken);
        assert_eq!(taken.frames.len(), 1);
        assert_eq!(taken.remaining, 3);
        assert!(!taken.close);
        outbox.take(usize::MAX, &mut taken);
        assert_eq!(taken.frames.len(), 3);
        assert!(taken.close);
    }
}
