//! The reader of one connection: takes the hub's frames, drops what a
//! resumed session sent twice, routes answers to waiting commands and
//! everything else to its stream (waiting while a stream is full), and
//! acknowledges what the streams took.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytestring::ByteString;
use futures::{FutureExt, StreamExt};
use switchboard_wire::ACK_DELAY;
use switchboard_wire::{proto, Delivery, ErrorCode, Frame, Incoming, IncomingCodec, Kind};
use tokio::sync::mpsc;
use tokio_util::codec::{Decoder, FramedRead};

use super::events::ClientEvent;
use super::queue::{Pushed, Queue};
use super::registry::{Out, Registry, SubSink};
use super::reliable::Inbound;
use super::request::{error_reply, IncomingRequest};
use super::shared::Shared;
use super::transport::Rd;
use super::types::{ClientInfo, Headers, KvEvent, Message, MessageKind, PresenceEvent};

/// Most clients remembered for presence resync after a reconnect; beyond
/// it, joins still reach the streams but are not remembered.
const MAX_KNOWN_CLIENTS: usize = 100_000;

/// How soon the reader tries again to queue an acknowledgement that found
/// the send queue full.
const ACK_RETRY: Duration = Duration::from_millis(10);

/// Most frames of one read batch taken before the reader reads the clock
/// again for the keepalive's last-heard time (it reads it once per batch).
const CLOCK_EVERY: u32 = 256;

/// Why a driven connection ended.
pub(crate) enum End {
    /// The connection dropped; `shutting_down` when the hub said so in its
    /// goodbye.
    Lost { reason: String, shutting_down: bool },
    /// Another connection took over the client id.
    TakenOver,
    /// The application closed the client.
    Closed,
}

impl End {
    pub(crate) fn lost(reason: impl Into<String>) -> End {
        End::Lost {
            reason: reason.into(),
            shutting_down: false,
        }
    }
}

/// Queues the acknowledgement `inbound` owes, if any; it stays owed when
/// the send queue is full.
fn send_ack(inbound: &mut Inbound, tx: &mpsc::Sender<Out>) {
    if let Some(up_to) = inbound.owed_ack() {
        if tx.try_send(Frame::ack(up_to).into()).is_ok() {
            inbound.acked(up_to);
        }
    }
}

/// Reads frames from the hub and routes them. Sequenced frames already
/// taken are dropped. What was taken is acknowledged by the next frames
/// this client sends (`Frame.acked`, stamped by the writer in `conn.rs`);
/// a separate `Ack` goes out every [`ACK_EVERY`] frames, or [`ACK_DELAY`]
/// after a batch when nothing sent meanwhile carried the acknowledgement.
///
/// [`ACK_EVERY`]: switchboard_wire::ACK_EVERY
/// [`ACK_DELAY`]: switchboard_wire::ACK_DELAY
pub(crate) async fn read_loop(
    shared: Arc<Shared>,
    mut reader: FramedRead<Rd, IncomingCodec>,
    tx: mpsc::Sender<Out>,
    base: tokio::time::Instant,
    last_rx: Arc<AtomicU64>,
    carried: Arc<AtomicU64>,
) -> End {
    let mut goodbye: Option<proto::Goodbye> = None;
    let mut inbound = Inbound::starting_at(shared.in_last.load(Ordering::Relaxed));
    // Highest acknowledgement of ours the hub sent (its frames' `acked`).
    let mut peer_acked = 0u64;
    // Armed while an acknowledgement is owed and not carried.
    let ack_timer = tokio::time::sleep(ACK_DELAY);
    tokio::pin!(ack_timer);
    let mut armed = false;
    let mut slow = Slow::new();
    // Frames still taken before the receive time is read again (0: read
    // it at the next frame).
    let mut unclocked = 0u32;
    // Frames already buffered are decoded straight out of the read buffer
    // (the reader's own codec never changes while it runs); the stream's
    // `poll_next` (and its wrapping of every frame) only when the buffer
    // holds no whole frame.
    let mut codec = reader.decoder().clone();
    loop {
        let buffered = match codec.decode(reader.read_buffer_mut()) {
            Ok(Some(item)) => Some(Some(Ok(item))),
            Ok(None) => None,
            Err(e) => Some(Some(Err(e))),
        };
        let next = match buffered.or_else(|| reader.next().now_or_never()) {
            Some(next) => next,
            None => {
                // Nothing more buffered: the batch is done.
                unclocked = 0;
                if !slow.is_empty() {
                    announce_drops(&shared, &mut slow);
                }
                inbound.acked(carried.load(Ordering::Relaxed));
                if inbound.ack_due() {
                    send_ack(&mut inbound, &tx);
                }
                if inbound.owed_ack().is_some() {
                    if !armed {
                        armed = true;
                        ack_timer
                            .as_mut()
                            .reset(tokio::time::Instant::now() + ACK_DELAY);
                    }
                    tokio::select! {
                        next = reader.next() => next,
                        _ = &mut ack_timer => {
                            armed = false;
                            inbound.acked(carried.load(Ordering::Relaxed));
                            send_ack(&mut inbound, &tx);
                            if inbound.owed_ack().is_some() {
                                // The send queue is full: try again soon.
                                armed = true;
                                ack_timer
                                    .as_mut()
                                    .reset(tokio::time::Instant::now() + ACK_RETRY);
                            }
                            continue;
                        }
                    }
                } else {
                    armed = false;
                    reader.next().await
                }
            }
        };
        let frame = match next {
            Some(Ok(f)) => {
                // One clock read per batch (the first frame after a wait),
                // and at least every `CLOCK_EVERY` frames of a batch that
                // never ends: a hub that sends is not silent.
                if unclocked == 0 {
                    last_rx.store(base.elapsed().as_millis() as u64, Ordering::Relaxed);
                    unclocked = CLOCK_EVERY;
                }
                unclocked -= 1;
                f
            }
            Some(Err(e)) => return End::lost(format!("bad frame from the hub: {e}")),
            None => {
                return match goodbye {
                    Some(g) if g.code == ErrorCode::IdTakenOver as i32 => End::TakenOver,
                    Some(g) => End::Lost {
                        reason: format!("hub said goodbye: {}", g.message),
                        shutting_down: g.code == ErrorCode::ShuttingDown as i32,
                    },
                    None => End::lost("the hub closed the connection"),
                }
            }
        };
        let (seq, acked) = match &frame {
            Incoming::Delivery(d) => (d.seq, d.acked),
            Incoming::Frame(f) => (f.seq, f.acked),
        };
        if acked > peer_acked {
            peer_acked = acked;
            shared.acknowledged(acked);
        }
        if inbound.is_duplicate(seq) {
            // Sent again after a resume; already handled.
            continue;
        }
        let route = match frame {
            Incoming::Delivery(d) => deliver_now(&shared, d, &mut slow),
            Incoming::Frame(f) => match f.kind {
                Some(Kind::Goodbye(g)) => {
                    if g.code == ErrorCode::IdTakenOver as i32 {
                        return End::TakenOver;
                    }
                    if g.code == ErrorCode::Fenced as i32 {
                        shared.emit(ClientEvent::Fenced {
                            message: g.message.clone(),
                        });
                    }
                    goodbye = Some(g);
                    Route::Nowhere
                }
                Some(Kind::Error(e)) if e.id == 0 => {
                    tracing::warn!(client = %shared.cfg.id, code = e.code, message = %e.message, "hub reported a connection error");
                    shared.emit(ClientEvent::HubError {
                        code: crate::ErrorCode::from_wire(e.code),
                        message: e.message,
                    });
                    Route::Nowhere
                }
                Some(Kind::Ack(a)) => {
                    shared.acknowledged(a.up_to);
                    Route::Nowhere
                }
                Some(kind) => dispatch(&shared, kind, &tx),
                None => {
                    tracing::debug!(client = %shared.cfg.id, "ignoring a frame of an unknown kind");
                    Route::Nowhere
                }
            },
        };
        // The application's stream takes it (waiting while the stream is
        // full) before the frame counts as received: only then may it be
        // acknowledged.
        route.deliver(&shared, &mut slow).await;
        inbound.accept(seq);
        if seq != 0 {
            shared
                .in_last
                .store(inbound.last_received(), Ordering::Relaxed);
            if inbound.ack_due() {
                send_ack(&mut inbound, &tx);
            }
        }
    }
}

/// Subscriptions whose drop policy dropped messages not yet announced.
type Slow = HashMap<u64, (String, Arc<Queue<Message>>)>;

/// Announces the drops of `slow` subscriptions as events.
fn announce_drops(shared: &Shared, slow: &mut Slow) {
    for (sub_id, (pattern, queue)) in slow.drain() {
        let dropped = queue.take_unannounced();
        if dropped > 0 {
            shared.emit(ClientEvent::SlowConsumer {
                sub_id,
                pattern,
                dropped,
                total: queue.dropped(),
            });
        }
    }
}

/// Where one frame from the hub goes.
enum Route {
    /// Handled already (answers, acks, pings) or nowhere to go.
    Nowhere,
    /// A publish for subscription `sub_id`; `last` when it ends the
    /// subscription ([`Subscription::unsubscribe_after`]).
    ///
    /// [`Subscription::unsubscribe_after`]: crate::Subscription::unsubscribe_after
    Publish {
        queue: Arc<Queue<Message>>,
        msg: Message,
        sub_id: u64,
        counted: bool,
    },
    /// A direct or broadcast message, to the messages stream if any.
    Message(Option<Arc<Queue<Message>>>, Message),
    /// A request for a requests or service stream.
    Request(Arc<Queue<IncomingRequest>>, IncomingRequest),
    /// A key change for a watch.
    Kv(Arc<Queue<KvEvent>>, KvEvent),
    /// A presence event for every presence stream.
    Presence(Vec<Arc<Queue<PresenceEvent>>>, PresenceEvent),
}

/// Pushes into `queue`, marking the reader as blocked while it waits.
async fn push<T>(shared: &Shared, queue: &Queue<T>, item: T) -> Pushed {
    push_with(shared, queue, item, |_| {}).await
}

/// [`push`], calling `on_put` on the item when it is really queued. The
/// common case (room, or a drop policy) takes one lock and no wait.
async fn push_with<T>(shared: &Shared, queue: &Queue<T>, item: T, on_put: fn(&mut T)) -> Pushed {
    let item = match queue.offer_with(item, on_put) {
        Ok(pushed) => return pushed,
        Err(item) => item,
    };
    /// Clears the flag however the wait ends (the reader is aborted while
    /// it waits when the connection drops).
    struct Blocked<'a>(&'a std::sync::atomic::AtomicBool);
    impl Drop for Blocked<'_> {
        fn drop(&mut self) {
            self.0.store(false, Ordering::Relaxed);
        }
    }
    shared.reader_blocked.store(true, Ordering::Relaxed);
    let _blocked = Blocked(&shared.reader_blocked);
    queue.push_with(item, on_put).await
}

impl Route {
    async fn deliver(self, shared: &Arc<Shared>, slow: &mut Slow) {
        match self {
            Route::Nowhere => {}
            Route::Publish {
                queue,
                msg,
                sub_id,
                counted,
            } => {
                let pushed = push(shared, &queue, msg).await;
                if counted {
                    count_down(shared, sub_id, &queue);
                }
                if pushed == Pushed::Dropped {
                    note_drop(shared, slow, sub_id, &queue, || {
                        shared
                            .reg
                            .lock()
                            .subs
                            .get(&sub_id)
                            .map(|s| s.pattern.clone())
                            .unwrap_or_default()
                    });
                }
            }
            Route::Message(Some(queue), msg) => {
                if push(shared, &queue, msg).await == Pushed::Closed {
                    undelivered(shared, "messages");
                }
            }
            Route::Message(None, _) => undelivered(shared, "messages"),
            Route::Request(queue, req) => {
                // Armed (an unanswered drop replies with an error) only
                // once the stream took it: a reader aborted while it waits
                // drops it silently, and the hub sends it again on resume.
                let (id, from) = (req.id(), req.from().to_string());
                if push_with(shared, &queue, req, IncomingRequest::arm).await == Pushed::Closed {
                    shared.post_detached(error_reply(
                        id,
                        from,
                        format!("client {:?} does not serve these requests", shared.cfg.id),
                    ));
                }
            }
            Route::Kv(queue, event) => {
                push(shared, &queue, event).await;
            }
            Route::Presence(queues, event) => {
                for queue in queues {
                    push(shared, &queue, event.clone()).await;
                }
            }
        }
    }
}

/// A message with no stream to take it (the application dropped its
/// stream while the hub still sent to it): counted and announced.
fn undelivered(shared: &Shared, stream: &'static str) {
    shared.dropped.fetch_add(1, Ordering::Relaxed);
    shared.emit(ClientEvent::Undelivered { stream, dropped: 1 });
}

/// Finds the subscription of a delivery.
fn route_publish(shared: &Arc<Shared>, sub_id: u64, msg: Message) -> Route {
    let reg = shared.reg.lock();
    let Some(sub) = reg.subs.get(&sub_id) else {
        // Unsubscribed meanwhile.
        return Route::Nowhere;
    };
    let SubSink::Messages(queue) = &sub.sink else {
        return Route::Nowhere;
    };
    Route::Publish {
        queue: queue.clone(),
        msg,
        sub_id,
        counted: sub.remaining.is_some(),
    }
}

/// After a delivery reached its stream: counts down
/// [`unsubscribe_after`](crate::Subscription::unsubscribe_after), and at
/// zero ends the subscription (the stream ends after what it holds). Done
/// only once the push finished, so a delivery sent again after a lost
/// connection is counted once.
fn count_down(shared: &Arc<Shared>, sub_id: u64, queue: &Queue<Message>) {
    let mut reg = shared.reg.lock();
    let Some(left) = reg.subs.get_mut(&sub_id).and_then(|s| s.remaining.as_mut()) else {
        return;
    };
    *left = left.saturating_sub(1);
    if *left > 0 {
        return;
    }
    reg.subs.remove(&sub_id);
    drop(reg);
    queue.close_tx();
    let id = shared.next_id();
    shared.post_detached(proto::Unsubscribe { id, sub_id }.into());
}

/// Counts a delivery the drop policy of subscription `sub_id` dropped, to
/// be announced at the end of the batch.
fn note_drop(
    shared: &Shared,
    slow: &mut Slow,
    sub_id: u64,
    queue: &Arc<Queue<Message>>,
    pattern: impl FnOnce() -> String,
) {
    shared.dropped.fetch_add(1, Ordering::Relaxed);
    slow.entry(sub_id)
        .or_insert_with(|| (pattern(), queue.clone()));
}

/// Routes a delivery and, in the common case (room in its stream, or a
/// drop policy), queues it at once under the registry's lock: no [`Route`]
/// is built and nothing waits. Only a delivery for a full stream that
/// pushes back comes out as a route to wait on.
fn deliver_now(shared: &Arc<Shared>, d: Delivery, slow: &mut Slow) -> Route {
    let sub_id = d.sub_id;
    let msg = Message {
        kind: MessageKind::Publish,
        from: d.from,
        topic: d.topic,
        reply_to: d.reply_to,
        payload: d.payload,
        headers: Headers::default(),
    };
    let reg = shared.reg.lock();
    let Some(sub) = reg.subs.get(&sub_id) else {
        // Unsubscribed meanwhile.
        return Route::Nowhere;
    };
    let SubSink::Messages(queue) = &sub.sink else {
        return Route::Nowhere;
    };
    let counted = sub.remaining.is_some();
    match queue.offer(msg) {
        Ok(pushed) => {
            if pushed == Pushed::Dropped {
                note_drop(shared, slow, sub_id, queue, || sub.pattern.clone());
            }
            if counted {
                let queue = queue.clone();
                drop(reg);
                count_down(shared, sub_id, &queue);
            }
            Route::Nowhere
        }
        Err(msg) => Route::Publish {
            queue: queue.clone(),
            msg,
            sub_id,
            counted,
        },
    }
}

fn dispatch(shared: &Arc<Shared>, kind: Kind, tx: &mpsc::Sender<Out>) -> Route {
    let mut reg = shared.reg.lock();
    match kind {
        Kind::Ok(m) => answer(&mut reg, m.id, Kind::Ok(m)),
        Kind::Error(m) => answer(&mut reg, m.id, Kind::Error(m)),
        Kind::Reply(m) => answer(&mut reg, m.id, Kind::Reply(m)),
        Kind::KvValue(m) => answer(&mut reg, m.id, Kind::KvValue(m)),
        Kind::ClientList(m) => answer(&mut reg, m.id, Kind::ClientList(m)),
        Kind::Status(m) => answer(&mut reg, m.id, Kind::Status(m)),
        Kind::Deliver(d) => {
            drop(reg);
            let msg = Message {
                kind: MessageKind::Publish,
                from: d.from.into(),
                topic: d.topic.into(),
                reply_to: d.reply_to.into(),
                payload: d.payload,
                headers: Headers::from_wire(d.headers),
            };
            return route_publish(shared, d.sub_id, msg);
        }
        Kind::Direct(d) => {
            let msg = Message {
                kind: MessageKind::Direct,
                from: d.from.into(),
                topic: ByteString::new(),
                reply_to: ByteString::new(),
                payload: d.payload,
                headers: Headers::from_wire(d.headers),
            };
            return Route::Message(reg.messages.clone(), msg);
        }
        Kind::Broadcast(b) => {
            let msg = Message {
                kind: MessageKind::Broadcast,
                from: b.from.into(),
                topic: ByteString::new(),
                reply_to: ByteString::new(),
                payload: b.payload,
                headers: Headers::from_wire(b.headers),
            };
            return Route::Message(reg.messages.clone(), msg);
        }
        Kind::Request(r) => {
            let target = if r.sub_id != 0 {
                match reg.subs.get(&r.sub_id).map(|s| &s.sink) {
                    Some(SubSink::Requests(q)) => Some(q.clone()),
                    _ => None,
                }
            } else {
                reg.requests.clone()
            };
            drop(reg);
            let Some(queue) = target else {
                let (id, from) = (r.id, r.from);
                shared.post_detached(error_reply(
                    id,
                    from,
                    format!("client {:?} does not serve these requests", shared.cfg.id),
                ));
                return Route::Nowhere;
            };
            return Route::Request(queue, IncomingRequest::new(shared, r, false));
        }
        Kind::KvUpdate(u) => {
            if let Some(w) = reg.watches.get(&u.watch_id) {
                return Route::Kv(w.queue.clone(), u.into());
            }
        }
        Kind::Presence(p) => {
            let client: ClientInfo = p.client.unwrap_or_default().into();
            let event = if p.kind == proto::PresenceKind::Left as i32 {
                reg.known_clients.remove(&client.client_id);
                PresenceEvent::Left {
                    client,
                    reason: p.reason,
                }
            } else {
                if reg.known_clients.len() < MAX_KNOWN_CLIENTS {
                    reg.known_clients
                        .insert(client.client_id.clone(), client.clone());
                }
                PresenceEvent::Joined(client)
            };
            return Route::Presence(reg.presence.values().cloned().collect(), event);
        }
        Kind::Flow(f) => {
            drop(reg);
            shared.dropped.fetch_add(f.dropped, Ordering::Relaxed);
            if f.dropped > 0 {
                shared.emit(ClientEvent::HubDropped {
                    dropped: f.dropped,
                    queue_depth: f.queue_depth,
                });
            }
        }
        Kind::Session(s) => {
            let target = reg
                .sessions
                .get(&s.peer)
                .or(reg.session_any.as_ref())
                .map(|(_, tx)| tx.clone());
            drop(reg);
            if let Some(target) = target {
                // Session links are at-most-once (the session engine
                // retries); a full link drops and is counted.
                if target.try_send(s).is_err() {
                    shared.dropped.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
        Kind::Ping(p) => {
            drop(reg);
            let _ = tx.try_send(Frame::from(proto::Pong { nonce: p.nonce }).into());
        }
        Kind::Pong(_) => {}
        other => {
            drop(reg);
            let f = Frame::from(other);
            tracing::debug!(client = %shared.cfg.id, kind = f.kind_name(), "ignoring an unexpected frame");
        }
    }
    Route::Nowhere
}

fn answer(reg: &mut Registry, id: u64, kind: Kind) {
    if let Some(waiter) = reg.pending.remove(&id) {
        let _ = waiter.tx.send(Frame::from(kind));
    }
}
