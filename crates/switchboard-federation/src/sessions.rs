//! Session frames across hubs, and telling their sender when they cannot
//! arrive.
//!
//! - A session frame for a client of another live hub goes to that hub's
//!   subject (`sb.<svc>.h.<hub>`, like a direct, in its
//!   [`Envelope`](crate::routing::Envelope)), `peer` naming the sender
//!   and the envelope's `to` the target. One task sends them, in order (NATS
//!   keeps order per publisher and subject), from a queue of
//!   [`QUEUE`] frames (full: dropped, counted in
//!   [`RoutingStats::dropped`](crate::RoutingStats::dropped), warned
//!   about at most once a second).
//! - Each carries a reply subject `sb.<svc>.s.<this hub>.<sender>.<target>`
//!   (escaped tokens) that this hub subscribes to (one wildcard
//!   subscription). When no hub subscribes to the target hub's subject
//!   any more (that hub stopped or lost the cluster, within its lease),
//!   the NATS server answers the reply subject at once with a
//!   "no responders" status (503); this hub then sends the sender the
//!   error a session frame for an absent client gets locally:
//!   `Error{id: 0, NO_SUCH_CLIENT}` (through `PortSender::fail` with id
//!   0), naming the target's hub. A hub that still serves, yet no longer
//!   holds the target (it left before the sender's hub heard of it),
//!   answers the same error to the sender's hub (an `Error` with id 0
//!   and the envelope's `to` naming the sender, see `routing`).
//! - A hub that still holds its subscription but takes nothing (its
//!   process stopped, or its connection half-dead until the NATS server's
//!   ping timeout notices, minutes by default) draws no "no responders".
//!   So the target's hub confirms each session frame it took (handed in,
//!   or answered as above) with an empty message on the frame's reply
//!   subject, which ends in the frame's number; a frame not confirmed
//!   within [`ACK_TIMEOUT`] (checked every [`CHECK_EVERY`]) makes this
//!   hub tell its sender `NO_SUCH_CLIENT` (one error per sender and
//!   target per check, counted in
//!   [`RoutingStats::session_unconfirmed`](crate::RoutingStats::session_unconfirmed)):
//!   the sender learns within `ACK_TIMEOUT + CHECK_EVERY` that the frame
//!   may be lost. The confirmation costs one small message back per
//!   frame, sent without waiting: the sending side never waits for it.
//!   At most [`MAX_UNCONFIRMED`] frames wait for one; a frame sent beyond
//!   that is not watched (as before: told only by "no responders").

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::{FutureExt, StreamExt};
use parking_lot::Mutex;
use switchboard_hub::port::PortSender;
use switchboard_wire::{ErrorCode, Frame, Kind};
use tokio::sync::mpsc;

use crate::directory::Directory;
use crate::routing::Routing;
use crate::subject::{escape, unescape};
use crate::throttle::Throttle;

/// Session frames waiting to go out to NATS, at most; beyond, they are
/// dropped and counted.
pub const QUEUE: usize = 8192;

/// How long the target's hub has to confirm a session frame before its
/// sender is told it may be lost. Above a loaded hub's usual delay (a
/// spurious error says only "may not have arrived"), well below a lease.
pub const ACK_TIMEOUT: Duration = Duration::from_secs(3);

/// How often frames waiting for confirmation are checked.
pub const CHECK_EVERY: Duration = Duration::from_millis(250);

/// Session frames waiting for confirmation, at most.
pub const MAX_UNCONFIRMED: usize = 8192;

/// A session frame on its way: the target's hub, the sender, the target,
/// the frame (`peer` naming the sender).
type Outgoing = (String, String, String, Frame);

/// A session frame sent and not yet confirmed: target's hub, sender,
/// target, when it went out.
#[derive(Debug)]
struct Unconfirmed {
    hub: String,
    from: String,
    to: String,
    sent: Instant,
}

/// See the module docs.
#[derive(Debug)]
pub(crate) struct Sessions {
    client: async_nats::Client,
    service: String,
    directory: Arc<Directory>,
    routing: Arc<Routing>,
    queue: mpsc::Sender<Outgoing>,
    queued: Mutex<Option<mpsc::Receiver<Outgoing>>>,
    full_log: Throttle,
    /// Frames sent and not yet confirmed, by number (numbers grow with
    /// the time sent: one task sends).
    unconfirmed: Mutex<BTreeMap<u64, Unconfirmed>>,
    /// The last frame number given.
    seq: AtomicU64,
}

impl Sessions {
    pub(crate) fn new(
        client: async_nats::Client,
        service: &str,
        directory: Arc<Directory>,
        routing: Arc<Routing>,
    ) -> Arc<Sessions> {
        let (queue, queued) = mpsc::channel(QUEUE);
        Arc::new(Sessions {
            client,
            service: escape(service),
            directory,
            routing,
            queue,
            queued: Mutex::new(Some(queued)),
            full_log: Throttle::new(),
            unconfirmed: Mutex::new(BTreeMap::new()),
            seq: AtomicU64::new(0),
        })
    }

    /// The reply subjects of this hub's session frames (all of them).
    fn replies(&self) -> String {
        format!(
            "sb.{}.s.{}.>",
            self.service,
            escape(self.directory.hub_name())
        )
    }

    /// Queues the session frame `frame` of the local client `from` for
    /// client `to` of hub `hub` (router task: never waits).
    pub(crate) fn send(&self, hub: &str, from: &str, to: &str, frame: &Frame) {
        let Some(Kind::Session(s)) = &frame.kind else {
            return;
        };
        let mut s = s.clone();
        s.peer = from.to_owned();
        let item = (
            hub.to_owned(),
            from.to_owned(),
            to.to_owned(),
            Frame::from(s),
        );
        if self.queue.try_send(item).is_err() {
            let stats = self.routing.stats();
            stats.queue_full.fetch_add(1, Ordering::Relaxed);
            stats.dropped.fetch_add(1, Ordering::Relaxed);
            if let Some(n) = self.full_log.hit() {
                tracing::warn!(
                    dropped = n,
                    "federation: session queue towards NATS full; session frames to other hubs dropped (count since the last such line)"
                );
            }
        }
    }

    /// Sends the queued frames and tells their senders of those no hub
    /// took, until the hub stops.
    pub(crate) async fn run(self: Arc<Self>, port: PortSender) {
        let Some(mut rx) = self.queued.lock().take() else {
            return;
        };
        // Subscribed before the first frame goes out, so that no "no
        // responders" answer is missed (the client subscribes again
        // after a reconnection by itself).
        let replies = loop {
            match self.client.subscribe(self.replies()).await {
                Ok(sub) => break sub,
                Err(e) => {
                    tracing::warn!(error = %e, "federation: cannot subscribe to session replies yet");
                    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
                }
            }
        };
        let send = async {
            let me = escape(self.directory.hub_name());
            while let Some((hub, from, to, frame)) = rx.recv().await {
                let to_escaped = escape(&to);
                let Some(payload) = self.routing.hub_payload(&frame, &to_escaped) else {
                    continue;
                };
                let seq = self.seq.fetch_add(1, Ordering::Relaxed) + 1;
                let reply = format!(
                    "sb.{}.s.{me}.{}.{to_escaped}.{seq:x}",
                    self.service,
                    escape(&from),
                );
                let stats = self.routing.stats();
                {
                    let mut waiting = self.unconfirmed.lock();
                    if waiting.len() < MAX_UNCONFIRMED {
                        waiting.insert(
                            seq,
                            Unconfirmed {
                                hub: hub.clone(),
                                from,
                                to,
                                sent: Instant::now(),
                            },
                        );
                    }
                }
                match self
                    .client
                    .publish_with_reply(self.routing.hub_subject(&hub), reply, payload)
                    .await
                {
                    Ok(()) => stats.sent.fetch_add(1, Ordering::Relaxed),
                    Err(_) => {
                        self.unconfirmed.lock().remove(&seq);
                        stats.dropped.fetch_add(1, Ordering::Relaxed)
                    }
                };
            }
        };
        crate::join_branches(vec![
            send.boxed(),
            self.no_responders(replies, &port).boxed(),
            self.expire(&port).boxed(),
        ])
        .await;
    }

    /// Tells the senders of frames not confirmed within [`ACK_TIMEOUT`],
    /// every [`CHECK_EVERY`], until the hub stops.
    async fn expire(&self, port: &PortSender) {
        let mut tick = tokio::time::interval(CHECK_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        while port.is_open() {
            tick.tick().await;
            let now = Instant::now();
            // Per sender and target: the target's hub and how many.
            let mut late: BTreeMap<(String, String), (String, usize)> = BTreeMap::new();
            {
                let mut waiting = self.unconfirmed.lock();
                while let Some(entry) = waiting.first_entry() {
                    if now.duration_since(entry.get().sent) < ACK_TIMEOUT {
                        break;
                    }
                    let u = entry.remove();
                    late.entry((u.from, u.to)).or_insert((u.hub, 0)).1 += 1;
                }
            }
            for ((from, to), (hub, n)) in late {
                self.routing
                    .stats()
                    .session_unconfirmed
                    .fetch_add(n as u64, Ordering::Relaxed);
                let message = format!(
                    "client '{to}' is on hub '{hub}', which did not confirm {n} session frame(s) within {ACK_TIMEOUT:?} (stopped, cut off or overloaded); they may not have been delivered"
                );
                if !port.fail(&from, 0, ErrorCode::NoSuchClient, message).await {
                    return;
                }
            }
        }
    }

    /// Answers on this hub's session reply subjects: a confirmation (an
    /// empty message) ends the frame's wait; the NATS server's "no
    /// responders" tells its sender `NO_SUCH_CLIENT`, as locally.
    async fn no_responders(&self, mut replies: async_nats::Subscriber, port: &PortSender) {
        while let Some(msg) = replies.next().await {
            // sb.<svc>.s.<me>.<from>.<to>.<number>
            let mut tokens = msg.subject.split('.').skip(4);
            let (Some(from), Some(to), Some(seq), None) = (
                tokens.next().and_then(unescape),
                tokens.next().and_then(unescape),
                tokens.next().and_then(|t| u64::from_str_radix(t, 16).ok()),
                tokens.next(),
            ) else {
                continue;
            };
            // Either answer ends the wait ("no responders" comes at once,
            // long before the wait would end).
            self.unconfirmed.lock().remove(&seq);
            if msg.status != Some(async_nats::StatusCode::NO_RESPONDERS) {
                continue;
            }
            let hub = self
                .directory
                .holder(&to)
                .unwrap_or_else(|| "another hub".into());
            let message = format!(
                "client '{to}' is on hub '{hub}', which no longer takes messages from the federation (stopped or cut off); the session frame was not delivered"
            );
            if !port.fail(&from, 0, ErrorCode::NoSuchClient, message).await {
                return;
            }
        }
    }
}
