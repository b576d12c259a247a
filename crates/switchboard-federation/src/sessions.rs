//! Session frames across hubs, and telling their sender when they cannot
//! arrive.
//!
//! - A session frame for a client of another live hub goes to that hub's
//!   subject (`sb.<svc>.h.<hub>`, like a direct), `peer` naming the
//!   sender and [`H_TO`] the target. One task sends them, in order (NATS
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
//!   and [`H_TO`] naming the sender, see `routing`).

use std::sync::atomic::Ordering;
use std::sync::Arc;

use async_nats::HeaderMap;
use futures::StreamExt;
use parking_lot::Mutex;
use switchboard_hub::port::PortSender;
use switchboard_wire::{ErrorCode, Frame, Kind};
use tokio::sync::mpsc;

use crate::directory::Directory;
use crate::routing::{Routing, H_EPOCH, H_ORIGIN, H_TO};
use crate::subject::{escape, unescape};
use crate::throttle::Throttle;

/// Session frames waiting to go out to NATS, at most; beyond, they are
/// dropped and counted.
pub const QUEUE: usize = 8192;

/// A session frame on its way: the target's hub, the sender, the target,
/// the frame (`peer` naming the sender).
type Outgoing = (String, String, String, Frame);

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
                let mut headers = HeaderMap::new();
                headers.insert(H_ORIGIN, me.as_str());
                headers.insert(H_EPOCH, self.directory.epoch().to_string().as_str());
                headers.insert(H_TO, escape(&to).as_str());
                let reply = format!(
                    "sb.{}.s.{me}.{}.{}",
                    self.service,
                    escape(&from),
                    escape(&to)
                );
                let body = prost::Message::encode_to_vec(&frame);
                let stats = self.routing.stats();
                match self
                    .client
                    .publish_with_reply_and_headers(
                        self.routing.hub_subject(&hub),
                        reply,
                        headers,
                        body.into(),
                    )
                    .await
                {
                    Ok(()) => stats.sent.fetch_add(1, Ordering::Relaxed),
                    Err(_) => stats.dropped.fetch_add(1, Ordering::Relaxed),
                };
            }
        };
        tokio::join!(send, self.no_responders(replies, &port));
    }

    /// The NATS server's "no responders" answers to this hub's session
    /// frames: each tells its sender `NO_SUCH_CLIENT`, as locally.
    async fn no_responders(&self, mut replies: async_nats::Subscriber, port: &PortSender) {
        while let Some(msg) = replies.next().await {
            if msg.status != Some(async_nats::StatusCode::NO_RESPONDERS) {
                continue;
            }
            // sb.<svc>.s.<me>.<from>.<to>
            let mut tokens = msg.subject.split('.').skip(4);
            let (Some(from), Some(to), None) = (
                tokens.next().and_then(unescape),
                tokens.next().and_then(unescape),
                tokens.next(),
            ) else {
                continue;
            };
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
