//! The lossless path across hubs: confirmed directs on a replicated
//! JetStream stream.
//!
//! - The stream `sb_<svc>_msgs` (made like the buckets: file storage, as
//!   many replicas, `discard: new` so that a full stream refuses rather
//!   than loses; at most [`MAX_MSGS`] messages, [`MAX_BYTES`] bytes, each
//!   kept at most [`MAX_AGE`]) holds subjects `sb.<svc>.m.<hub>`, one per
//!   target hub.
//! - Sending: a `Direct` with an id (its sender asked for a confirmation,
//!   as `Client::send` does) for a client another live hub holds is taken
//!   from the router ([`Remote::confirmed_direct`](switchboard_hub::router::remote::Remote::confirmed_direct)),
//!   which holds it pending on the port. One task stores the queued
//!   directs in JetStream one at a time, in order
//!   ([`crate::routing::H_ORIGIN`], `Nats-Msg-Id` = `<hub>-<run>-<seq>`),
//!   repeating a failed publish under the same id (the stream keeps it
//!   once) until [`STORE_DEADLINE`], and answers each sender: `Ok` after
//!   the publish ack (stored on a majority of the stream's replicas),
//!   `QUEUE_FULL` when the stream is full (or the queue towards it,
//!   [`QUEUE`]), `TIMEOUT` when it was not stored in time. One at a
//!   time, so that a repeat is never overtaken by a later direct.
//! - Receiving: one durable pull consumer per hub, `sb_<hub>`, on its
//!   subject (explicit ack, at most [`MAX_ACK_PENDING`] unacknowledged),
//!   read one message at a time: each is handed to the router through the
//!   port (`PortSender::deliver_direct`) and acknowledged only after the
//!   router took it (queued for the local target, or waiting for room as
//!   any direct). A target that left meanwhile: dropped, counted
//!   ([`LosslessStats::undeliverable`]) and acknowledged (its sender had
//!   its `Ok` already). A message redelivered while the hub runs (its ack
//!   lost) is recognised by its stream sequence and dropped
//!   ([`LosslessStats::redelivered`]); after a restart of the hub under
//!   the same name, what was handed over but not acknowledged comes again:
//!   at least once.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, consumer, stream};
use async_nats::HeaderMap;
use futures::{FutureExt, StreamExt};
use parking_lot::Mutex;
use switchboard_hub::port::PortSender;
use switchboard_hub::router::remote::Handoff;
use switchboard_wire::{decode_frame, ErrorCode, Frame, Kind};
use tokio::sync::mpsc;

use crate::directory::Directory;
use crate::routing::H_ORIGIN;
use crate::subject::{escape, unescape};
use crate::FederationError;

/// The most messages the stream holds; beyond, publishes are refused
/// (`QUEUE_FULL` to their senders).
pub const MAX_MSGS: i64 = 1_000_000;
/// The most bytes the stream holds (256 MiB); beyond, publishes are
/// refused.
pub const MAX_BYTES: i64 = 256 * 1024 * 1024;
/// How long a stored message waits for its hub's consumer at most (a hub
/// that never comes back under its name).
pub const MAX_AGE: Duration = Duration::from_secs(24 * 3600);
/// The stream's duplicate window for `Nats-Msg-Id`.
pub const DUPLICATE_WINDOW: Duration = Duration::from_secs(120);
/// Unacknowledged messages a hub's consumer may have out at once.
pub const MAX_ACK_PENDING: i64 = 1024;
/// How long the stream has to acknowledge a publish.
pub const PUBLISH_TIMEOUT: Duration = Duration::from_secs(5);
/// Confirmed directs waiting to be published, at most; beyond, a direct
/// is refused (`QUEUE_FULL`).
pub const QUEUE: usize = 8192;
/// How long the hub keeps trying to store one direct (repeating the
/// publish while the stream has no leader or does not answer) before its
/// sender is told `TIMEOUT`.
pub const STORE_DEADLINE: Duration = Duration::from_secs(10);
/// The pause before a publish is repeated.
pub const RETRY_PAUSE: Duration = Duration::from_millis(100);

/// Counters of the lossless path.
#[derive(Debug, Default)]
pub struct LosslessStats {
    /// Directs stored in the stream (their senders told `Ok`).
    pub stored: AtomicU64,
    /// Directs the stream refused (full) or did not acknowledge in time
    /// (their senders told `QUEUE_FULL` or `TIMEOUT`).
    pub failed: AtomicU64,
    /// Of `failed`: directs refused with `QUEUE_FULL` (the queue towards
    /// the stream or the stream itself full), each also told to the
    /// operator by a warning at most once a second.
    pub queue_full: AtomicU64,
    /// Publishes repeated (the stream had no leader or did not answer).
    pub retried: AtomicU64,
    /// Directs from the stream handed to a local target.
    pub delivered: AtomicU64,
    /// Directs from the stream whose target was not here (dropped,
    /// acknowledged).
    pub undeliverable: AtomicU64,
    /// Directs the consumer got again after handing them over (dropped).
    pub redelivered: AtomicU64,
    /// Messages from the stream that were not a well-formed direct
    /// (dropped, acknowledged).
    pub malformed: AtomicU64,
}

/// A confirmed direct on its way to the stream.
#[derive(Debug)]
struct Queued {
    /// The local sender and its direct's id (to answer).
    from: String,
    id: u64,
    /// The hub holding the target.
    hub: String,
    /// The direct as it travels: `from` filled in, id 0.
    frame: Frame,
}

/// The lossless path's state.
#[derive(Debug)]
pub(crate) struct Lossless {
    js: jetstream::Context,
    stream: stream::Stream,
    service: String,
    directory: Arc<Directory>,
    max_message: usize,
    queue: mpsc::Sender<Queued>,
    queued: Mutex<Option<mpsc::Receiver<Queued>>>,
    port: OnceLock<PortSender>,
    run: u64,
    seq: AtomicU64,
    stats: LosslessStats,
    /// Warnings about directs refused with `QUEUE_FULL` (rate-limited).
    full_log: crate::throttle::Throttle,
}

impl Lossless {
    /// Opens (or creates) the stream `sb_<service>_msgs` with
    /// `replicas`, trying until `deadline`.
    pub(crate) async fn open(
        client: async_nats::Client,
        service: &str,
        directory: Arc<Directory>,
        replicas: usize,
        max_message: usize,
        deadline: Instant,
    ) -> Result<Arc<Lossless>, FederationError> {
        let mut js = jetstream::new(client);
        js.set_timeout(PUBLISH_TIMEOUT);
        let service = escape(service);
        let name = format!("sb_{service}_msgs");
        let stream = loop {
            let err = match js
                .get_or_create_stream(stream::Config {
                    name: name.clone(),
                    subjects: vec![format!("sb.{service}.m.*")],
                    storage: stream::StorageType::File,
                    num_replicas: replicas,
                    discard: stream::DiscardPolicy::New,
                    max_messages: MAX_MSGS,
                    max_bytes: MAX_BYTES,
                    max_age: MAX_AGE,
                    duplicate_window: DUPLICATE_WINDOW,
                    ..Default::default()
                })
                .await
            {
                Ok(s) => break s,
                Err(e) => e.to_string(),
            };
            if Instant::now() >= deadline {
                return Err(FederationError::JetStream(format!(
                    "cannot open or create the stream {name} with {replicas} replica(s): {err}"
                )));
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        };
        let (queue, queued) = mpsc::channel(QUEUE);
        Ok(Arc::new(Lossless {
            js,
            stream,
            service,
            directory,
            max_message,
            queue,
            queued: Mutex::new(Some(queued)),
            port: OnceLock::new(),
            run: rand::random::<u64>() >> 1,
            seq: AtomicU64::new(0),
            stats: LosslessStats::default(),
            full_log: crate::throttle::Throttle::new(),
        }))
    }

    /// The counters.
    pub(crate) fn stats(&self) -> &LosslessStats {
        &self.stats
    }

    fn subject(&self, hub: &str) -> String {
        format!("sb.{}.m.{}", self.service, escape(hub))
    }

    /// A confirmed direct from the local client `from` for a client of
    /// the live hub `hub` (router task: queued, never waits).
    pub(crate) fn take(&self, from: &str, hub: &str, frame: &Frame) -> Handoff {
        let Some(Kind::Direct(d)) = &frame.kind else {
            return Handoff::Unknown;
        };
        let mut travelling = d.clone();
        travelling.from = from.to_owned();
        travelling.id = 0;
        let q = Queued {
            from: from.to_owned(),
            id: d.id,
            hub: hub.to_owned(),
            frame: Frame::from(travelling),
        };
        if let Err(e) = self.queue.try_send(q) {
            self.stats.failed.fetch_add(1, Ordering::Relaxed);
            self.refused_full("the queue towards the federation's message stream is full");
            let q = e.into_inner();
            if let Some(port) = self.port.get().cloned() {
                tokio::spawn(async move {
                    let msg = format!(
                        "{QUEUE} confirmed messages already wait for the federation's stream; retry later"
                    );
                    port.fail(&q.from, q.id, ErrorCode::QueueFull, msg).await;
                });
            }
        }
        Handoff::Taken
    }

    /// Counts a confirmed direct refused with `QUEUE_FULL` and tells the
    /// operator (at most one line a second, with the count since the
    /// previous one): its sender was told, but a full stream or queue is
    /// the operator's to fix.
    fn refused_full(&self, why: &str) {
        self.stats.queue_full.fetch_add(1, Ordering::Relaxed);
        if let Some(n) = self.full_log.hit() {
            tracing::warn!(
                refused = n,
                "federation: {why}; confirmed messages to other hubs refused with QUEUE_FULL (count since the last such line)"
            );
        }
    }

    /// Runs the publisher and this hub's consumer, answering and
    /// delivering through `port`, until the hub stops.
    pub(crate) async fn run(self: Arc<Self>, port: PortSender) {
        let _ = self.port.set(port.clone());
        crate::join_branches(vec![
            self.publisher(&port).boxed(),
            self.consumer(&port).boxed(),
        ])
        .await;
    }

    async fn publisher(&self, port: &PortSender) {
        let Some(mut rx) = self.queued.lock().take() else {
            return;
        };
        let me = escape(self.directory.hub_name());
        while let Some(q) = rx.recv().await {
            let seq = self.seq.fetch_add(1, Ordering::Relaxed) + 1;
            let mut headers = HeaderMap::new();
            headers.insert(H_ORIGIN, me.as_str());
            headers.insert(
                "Nats-Msg-Id",
                format!("{me}-{:x}-{seq:x}", self.run).as_str(),
            );
            let body = bytes::Bytes::from(prost::Message::encode_to_vec(&q.frame));
            if body.len() > self.max_message {
                self.stats.failed.fetch_add(1, Ordering::Relaxed);
                let msg = format!(
                    "the message is larger than the federation carries ({} bytes)",
                    self.max_message
                );
                port.fail(&q.from, q.id, ErrorCode::LimitExceeded, msg)
                    .await;
                continue;
            }
            match self.store(&q.hub, headers, body).await {
                Ok(()) => {
                    self.stats.stored.fetch_add(1, Ordering::Relaxed);
                    port.answer(&q.from, q.id, Frame::ok(q.id)).await;
                }
                Err(e) => {
                    self.stats.failed.fetch_add(1, Ordering::Relaxed);
                    if is_full(&e) {
                        self.refused_full("the federation's message stream is full");
                    }
                    let (code, msg) = refusal(&e, &q.hub);
                    port.fail(&q.from, q.id, code, msg).await;
                }
            }
            if !port.is_open() {
                return;
            }
        }
    }

    /// Publishes one direct to the stream and waits for its ack; a
    /// publish that failed (no stream leader while one is elected, no
    /// ack in time) is repeated with the same `Nats-Msg-Id`, so that the
    /// stream keeps it once, until [`STORE_DEADLINE`]. A full stream is
    /// not asked again.
    async fn store(
        &self,
        hub: &str,
        headers: HeaderMap,
        body: bytes::Bytes,
    ) -> Result<(), jetstream::context::PublishError> {
        let deadline = Instant::now() + STORE_DEADLINE;
        loop {
            let r = match self
                .js
                .publish_with_headers(self.subject(hub), headers.clone(), body.clone())
                .await
            {
                Ok(ack) => ack.await.map(drop),
                Err(e) => Err(e),
            };
            match r {
                Ok(()) => return Ok(()),
                Err(e) if is_full(&e) || Instant::now() + RETRY_PAUSE >= deadline => return Err(e),
                Err(_) => {
                    self.stats.retried.fetch_add(1, Ordering::Relaxed);
                    tokio::time::sleep(RETRY_PAUSE).await;
                }
            }
        }
    }

    async fn consumer(&self, port: &PortSender) {
        let name = format!("sb_{}", escape(self.directory.hub_name()));
        let filter = self.subject(self.directory.hub_name());
        let mut last_seq = 0u64;
        loop {
            let pull = self
                .stream
                .get_or_create_consumer::<consumer::pull::Config>(
                    &name,
                    consumer::pull::Config {
                        durable_name: Some(name.clone()),
                        filter_subject: filter.clone(),
                        ack_policy: consumer::AckPolicy::Explicit,
                        ack_wait: Duration::from_secs(30),
                        max_ack_pending: MAX_ACK_PENDING,
                        ..Default::default()
                    },
                )
                .await;
            let mut messages = match pull {
                Ok(c) => match c.messages().await {
                    Ok(m) => m,
                    Err(e) => {
                        tracing::debug!(error = %e, "federation: cannot read the stream; retrying");
                        tokio::time::sleep(Duration::from_millis(500)).await;
                        continue;
                    }
                },
                Err(e) => {
                    tracing::debug!(error = %e, "federation: cannot open this hub's consumer; retrying");
                    tokio::time::sleep(Duration::from_millis(500)).await;
                    continue;
                }
            };
            while let Some(next) = messages.next().await {
                let Ok(msg) = next else {
                    // A missed heartbeat or a leader change: the
                    // stream goes on (or ends, then it is opened again).
                    continue;
                };
                let seq = msg.info().map(|i| i.stream_sequence).unwrap_or(0);
                if seq != 0 && seq <= last_seq {
                    self.stats.redelivered.fetch_add(1, Ordering::Relaxed);
                    let _ = msg.ack().await;
                    continue;
                }
                match self.check(&msg) {
                    Some(direct) => match port.deliver_direct(direct).await {
                        Some(true) => {
                            self.stats.delivered.fetch_add(1, Ordering::Relaxed);
                        }
                        Some(false) => {
                            self.stats.undeliverable.fetch_add(1, Ordering::Relaxed);
                        }
                        // The hub stopped: not acknowledged, comes again.
                        None => return,
                    },
                    None => {
                        self.stats.malformed.fetch_add(1, Ordering::Relaxed);
                    }
                }
                last_seq = last_seq.max(seq);
                let _ = msg.ack().await;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Messages waiting for this hub's consumer: not yet delivered to
    /// it, or delivered and not yet acknowledged.
    pub(crate) async fn backlog(&self) -> Result<u64, String> {
        let name = format!("sb_{}", escape(self.directory.hub_name()));
        let mut c: consumer::Consumer<consumer::pull::Config> = self
            .stream
            .get_consumer(&name)
            .await
            .map_err(|e| e.to_string())?;
        let info = c.info().await.map_err(|e| e.to_string())?;
        Ok(info.num_pending + info.num_ack_pending as u64)
    }

    /// A message from the stream as the direct it carries, or `None`
    /// when it is not a well-formed one. Its origin hub is not required
    /// to be live: the message was confirmed to its sender when stored,
    /// and a hub that stopped since still had it delivered.
    fn check(&self, msg: &jetstream::Message) -> Option<switchboard_wire::proto::Direct> {
        if msg.payload.len() > self.max_message {
            return None;
        }
        let origin = msg
            .headers
            .as_ref()
            .and_then(|h| h.get(H_ORIGIN))
            .and_then(|v| unescape(v.as_str()))?;
        if origin == self.directory.hub_name() {
            return None;
        }
        let frame = decode_frame(msg.payload.clone(), self.max_message).ok()?;
        match frame.kind {
            Some(Kind::Direct(d)) if !d.from.is_empty() && d.id == 0 && frame.seq == 0 => Some(d),
            _ => None,
        }
    }
}

/// What the sender of a direct the stream did not store is told.
fn refusal(e: &jetstream::context::PublishError, hub: &str) -> (ErrorCode, String) {
    let detail = match std::error::Error::source(e) {
        Some(source) => format!("{e}: {source}"),
        None => e.to_string(),
    };
    if is_full(e) {
        return (
            ErrorCode::QueueFull,
            format!("the federation's message stream is full ({detail}); retry later"),
        );
    }
    (
        ErrorCode::Timeout,
        format!(
            "the federation's message stream did not store the message for hub '{hub}' ({detail}); it may or may not arrive; retry"
        ),
    )
}

/// Whether the stream refused a publish for being full (`discard: new`).
fn is_full(e: &jetstream::context::PublishError) -> bool {
    e.kind() == jetstream::context::PublishErrorKind::Other
        && std::error::Error::source(e).is_some_and(|s| s.to_string().contains("maximum"))
}
