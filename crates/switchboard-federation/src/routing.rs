//! Routing across hubs: messages for clients of other hubs, and what other
//! hubs send here, over core NATS.
//!
//! - Every hub subscribes to its own subject `sb.<svc>.h.<hub>` (escaped
//!   service and hub name). A `Direct` or `Request` for a client another
//!   live hub holds (the id directory says which) goes there; so do the
//!   answers to requests (`Reply`, or an `Error` naming the requester).
//! - Every message carries no NATS headers: its payload is an
//!   [`Envelope`] (origin, epoch; for a publish or broadcast its number
//!   and the queue groups served; for an error answer or a session frame
//!   the client it is for) followed by the encoded switchboard frame (at
//!   most `FederationOptions::max_message` bytes, default
//!   [`MAX_MESSAGE`]). So no header map is built, written, parsed or
//!   allocated per message on any routing subject.
//! - Session frames (a manager on one hub, an agent on another) go to the
//!   holder hub's subject like a direct (sent by [`crate::sessions`]),
//!   and the far hub hands them in with the port's `session`; one for a
//!   client no longer here is answered to its sender's hub with an
//!   `Error` of id 0 (`NO_SUCH_CLIENT`, [`Envelope::to`] naming the sender), as
//!   the router answers one locally.
//! - The router hands such messages to the hub's port (see
//!   `switchboard_hub::router::remote`): the requester's hub keeps the
//!   request pending with its timeout, so the requester gets `TIMEOUT`
//!   exactly as locally. The answering hub sends the request into its
//!   router under a fresh id of its port and maps the answer back.
//! - Publish and broadcast: the router reports each local subscription's
//!   pattern as it comes and goes; the hub holds one NATS subscription per
//!   distinct pattern (`sb.<svc>.t.<pattern>`, counted), and every hub
//!   subscribes to `sb.<svc>.b` for broadcasts. A local client's publish
//!   or broadcast goes out once, numbered in its [`Envelope`] (this run of
//!   the hub and a sequence number); a hub whose patterns overlap gets a message once
//!   per matching subscription and keeps only the first (the last
//!   [`DEDUP_WINDOW`] numbers per sender are remembered). One task takes
//!   what all these subscriptions got: each time it wakes, everything
//!   already waiting on any of them, ordered by origin and number, so each
//!   origin's publishes reach the router in the order they were sent even
//!   when patterns overlap (the ordered intake). What comes from
//!   NATS enters the router through the port, and the router never hands
//!   what came from the port back out, so nothing is published twice.
//! - The way out never blocks the router: publishes and broadcasts wait in
//!   a queue bounded in bytes like a client's outbox
//!   (`FederationOptions::queue_bytes`, the hub's outbox default, 32 MiB; each counts its
//!   subject, payload (envelope and frame) and [`FANOUT_ENTRY_COST`]); a full queue drops and counts
//!   ([`RoutingStats::dropped`]; a warning at most once a second per
//!   cause, with the count since the last, see [`crate::throttle`]), like a slow
//!   client's pub/sub deliveries. Directs and requests wait in the port's
//!   outbox, bounded like every client's (then `QUEUE_FULL`).
//! - What arrives is checked before anything reaches the router: a
//!   message that does not decode, is larger than the limit, is of
//!   a kind not carried, or names an origin that is not a live member
//!   (or this hub) is dropped and counted ([`RoutingStats`]).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

use async_nats::Subject;
use futures::{FutureExt, StreamExt};
use parking_lot::Mutex;
use switchboard_hub::port::{PortSender, RemotePort};
use switchboard_wire::{decode_frame, ErrorCode, Frame, Kind};

use crate::directory::Directory;
use crate::subject::{escape, unescape};
use crate::throttle::Throttle;

/// The NATS header naming the hub a message comes from, on the lossless
/// stream only (see [`crate::lossless`]); the routing subjects carry the
/// origin in the [`Envelope`].
pub const H_ORIGIN: &str = "Sb-Origin";
/// The first byte of every message on the routing subjects: its
/// [`Envelope`] (version 2) follows. Version 1 (`0xEB`, publishes and
/// broadcasts only, without [`Envelope::to`]) is no longer taken: a
/// message of another version is dropped as malformed (the hubs of one
/// federation run one release).
pub const ENVELOPE_V2: u8 = 0xEC;
/// What one publish or broadcast waiting to go out to NATS counts against
/// the queue's byte limit (`FederationOptions::queue_bytes`) besides its
/// subject and its payload (envelope and frame, encoded when queued): the
/// queue's entry for it.
pub const FANOUT_ENTRY_COST: usize = std::mem::size_of::<Fanned>();
/// Publishes and broadcasts the publisher takes from the queue towards
/// NATS per wake, at most.
pub const PUBLISH_BATCH: usize = 256;
/// How many message numbers per sending hub are remembered to drop a
/// second copy (overlapping patterns).
pub const DEDUP_WINDOW: u64 = 4096;
/// The default largest message taken from NATS (encoded frame), bytes
/// (`FederationOptions::max_message`); larger ones are dropped and counted.
pub const MAX_MESSAGE: usize = 1024 * 1024;

/// Counters of routing across hubs.
#[derive(Debug, Default)]
pub struct RoutingStats {
    /// Messages published to other hubs.
    pub sent: AtomicU64,
    /// Messages from other hubs handed to the router.
    pub received: AtomicU64,
    /// Messages from NATS that did not decode or were of a kind not
    /// carried (dropped).
    pub malformed: AtomicU64,
    /// Messages from NATS larger than the limit (dropped).
    pub oversized: AtomicU64,
    /// Messages from NATS whose origin is not a live member, or is this
    /// hub (dropped).
    pub foreign: AtomicU64,
    /// Messages towards NATS dropped because a queue was full or the
    /// publish failed. The hub's `Status` shows them (`dropped` and
    /// `dropped:~remote`), as it does a slow client's dropped deliveries.
    pub dropped: AtomicU64,
    /// Of [`dropped`](Self::dropped): publishes and broadcasts dropped
    /// because the queue towards NATS was full (its byte limit,
    /// `FederationOptions::queue_bytes`, reached).
    pub queue_full: AtomicU64,
    /// Messages from NATS whose epoch ([`Envelope::epoch`]) is below the newest epoch seen
    /// for their origin hub: sent by an old primary (dropped).
    pub stale: AtomicU64,
    /// Second copies of a publish dropped (a hub's patterns overlap).
    pub duplicates: AtomicU64,
    /// NATS subscriptions for publish patterns (and queue groups) held now.
    pub patterns: AtomicU64,
    /// Publishes the cluster handed this hub for a queue group that the
    /// origin hub's own members of the group took already (dropped).
    pub served_by_origin: AtomicU64,
    /// Session frames the target's hub did not confirm within
    /// [`sessions::ACK_TIMEOUT`](crate::sessions::ACK_TIMEOUT) (their
    /// senders told `NO_SUCH_CLIENT`).
    pub session_unconfirmed: AtomicU64,
}

impl RoutingStats {
    /// Messages dropped on the way in: malformed, oversized or foreign.
    pub fn rejected(&self) -> u64 {
        self.malformed.load(Ordering::Relaxed)
            + self.oversized.load(Ordering::Relaxed)
            + self.foreign.load(Ordering::Relaxed)
            + self.stale.load(Ordering::Relaxed)
    }
}

/// A request from another hub, sent into the router under a port id.
#[derive(Debug)]
struct Foreign {
    origin: String,
    requester: String,
    id: u64,
}

/// A publish subscription as the hub holds it on NATS: a pattern, and
/// the queue group for a group's (`None`: plain).
type Lane = (String, Option<String>);

/// What the pattern task is told.
#[derive(Debug)]
enum PatternChange {
    Add(Lane),
    Remove(Lane),
}

/// Message numbers seen from one run of one hub.
#[derive(Debug, Default)]
struct Seen {
    max: u64,
    set: std::collections::HashSet<u64>,
}

impl Seen {
    /// Whether `seq` is new; remembers it.
    fn first(&mut self, seq: u64) -> bool {
        if seq + DEDUP_WINDOW <= self.max || !self.set.insert(seq) {
            return false;
        }
        if seq > self.max {
            self.max = seq;
            if self.set.len() as u64 > 2 * DEDUP_WINDOW {
                let floor = self.max.saturating_sub(DEDUP_WINDOW);
                self.set.retain(|s| *s > floor);
            }
        }
        true
    }
}

/// A publish or broadcast on its way to NATS: subject, payload (its
/// envelope and frame, encoded once on the router task into a buffer of
/// exactly its size), and what it counts against the queue's byte limit.
/// Small (a few words), so that moving it through the queue and into the
/// publisher's batch copies little.
type Fanned = (Subject, bytes::Bytes, usize);

/// What every message on the routing subjects carries besides its frame,
/// in its payload rather than in NATS headers (no header map to build,
/// send and parse per message). The one home of the layout: the payload
/// is [`ENVELOPE_V2`], then `epoch`, `run` and `seq` as protobuf varints,
/// then `origin`, `served` and `to`, each a varint length and that many
/// UTF-8 bytes, then the encoded frame (the rest of the payload).
/// Directs, requests, answers and session frames (on a hub's subject)
/// carry `run` and `seq` 0 and `served` empty; publishes and broadcasts
/// carry `to` empty.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Envelope {
    /// The sending hub's name, escaped.
    pub origin: String,
    /// The sending hub's epoch. A message whose epoch is below the
    /// newest seen for its origin hub comes from an old primary a
    /// standby replaced: dropped and counted ([`RoutingStats::stale`]).
    pub epoch: u64,
    /// The sending hub's run: random per start of the hub (0 on a hub's
    /// subject).
    pub run: u64,
    /// A publish's or broadcast's number in that run (from 1): a hub
    /// whose patterns overlap keeps only the first copy, and takes each
    /// origin's messages in this order (0 on a hub's subject).
    pub seq: u64,
    /// The queue groups the origin hub delivered the publish to itself
    /// (its own members come first, as NATS prefers local queue
    /// subscribers): `<pattern>/<group>` escaped, `,`-separated, `""` for
    /// none. A hub the cluster picks for one of these groups drops its
    /// copy.
    pub served: String,
    /// The client (escaped) an error answer is for (the requester, or a
    /// session frame's sender) or a session frame is for (the target);
    /// `""` for none (an escaped name is never empty).
    pub to: String,
}

impl Envelope {
    /// The payload: this envelope, then `frame` encoded, in one buffer of
    /// exactly its size.
    pub fn encode(&self, frame: &Frame) -> Vec<u8> {
        Head {
            origin: &self.origin,
            epoch: self.epoch,
            run: self.run,
            seq: self.seq,
            served: &self.served,
            to: &self.to,
        }
        .encode(frame)
    }

    /// A payload split into its envelope and the frame's bytes; `None`
    /// when it is not one (another first byte, a varint or length that
    /// runs past the end, a name that is not UTF-8).
    pub fn decode(payload: &bytes::Bytes) -> Option<(Envelope, bytes::Bytes)> {
        let mut rest: &[u8] = payload;
        let (&first, tail) = rest.split_first()?;
        if first != ENVELOPE_V2 {
            return None;
        }
        rest = tail;
        let epoch = prost::encoding::decode_varint(&mut rest).ok()?;
        let run = prost::encoding::decode_varint(&mut rest).ok()?;
        let seq = prost::encoding::decode_varint(&mut rest).ok()?;
        let origin = take_str(&mut rest)?;
        let served = take_str(&mut rest)?;
        let to = take_str(&mut rest)?;
        let at = payload.len() - rest.len();
        Some((
            Envelope {
                origin,
                epoch,
                run,
                seq,
                served,
                to,
            },
            payload.slice(at..),
        ))
    }
}

/// An [`Envelope`] of borrowed parts: what the per-message paths encode
/// from (one buffer of exactly the payload's size, nothing else
/// allocated; a `Bytes` made of it takes the buffer as it is).
#[derive(Debug, Clone, Copy)]
struct Head<'a> {
    origin: &'a str,
    epoch: u64,
    run: u64,
    seq: u64,
    served: &'a str,
    to: &'a str,
}

impl Head<'_> {
    /// The payload: this envelope, then `frame` encoded ([`Envelope`]
    /// gives the layout).
    fn encode(&self, frame: &Frame) -> Vec<u8> {
        use prost::encoding::encode_varint;
        let len = self.len(prost::Message::encoded_len(frame));
        let mut buf = Vec::with_capacity(len);
        buf.push(ENVELOPE_V2);
        encode_varint(self.epoch, &mut buf);
        encode_varint(self.run, &mut buf);
        encode_varint(self.seq, &mut buf);
        for s in [self.origin, self.served, self.to] {
            encode_varint(s.len() as u64, &mut buf);
            buf.extend_from_slice(s.as_bytes());
        }
        // A Vec grows as needed: encoding into it cannot fail.
        let _ = prost::Message::encode(frame, &mut buf);
        debug_assert_eq!(buf.len(), len);
        buf
    }

    /// The payload's length with a frame of `frame_len` bytes.
    fn len(&self, frame_len: usize) -> usize {
        use prost::encoding::encoded_len_varint;
        let text = |s: &str| encoded_len_varint(s.len() as u64) + s.len();
        1 + encoded_len_varint(self.epoch)
            + encoded_len_varint(self.run)
            + encoded_len_varint(self.seq)
            + text(self.origin)
            + text(self.served)
            + text(self.to)
            + frame_len
    }
}

/// Subjects made from names (topics, hub names), kept so that a name
/// seen before is not escaped and formatted again per message. Bounded:
/// emptied when it holds [`SubjectCache::MAX`] names.
#[derive(Debug, Default)]
struct SubjectCache(Mutex<HashMap<String, Subject>>);

impl SubjectCache {
    /// Names held at most.
    const MAX: usize = 4096;

    /// The subject of `name`, made by `make` when not held.
    fn get(&self, name: &str, make: impl FnOnce() -> String) -> Subject {
        let mut map = self.0.lock();
        if let Some(s) = map.get(name) {
            return s.clone();
        }
        if map.len() >= Self::MAX {
            map.clear();
        }
        let s = Subject::from(make());
        map.insert(name.to_owned(), s.clone());
        s
    }
}

/// A varint length and that many UTF-8 bytes, taken from `rest`.
fn take_str(rest: &mut &[u8]) -> Option<String> {
    let n = usize::try_from(prost::encoding::decode_varint(rest).ok()?).ok()?;
    if n > rest.len() {
        return None;
    }
    let (s, tail) = rest.split_at(n);
    *rest = tail;
    String::from_utf8(s.to_vec()).ok()
}

/// The routing state shared by the tasks.
#[derive(Debug)]
pub(crate) struct Routing {
    client: async_nats::Client,
    service: String,
    directory: Arc<Directory>,
    /// This hub's name, escaped ([`Envelope::origin`] of everything it
    /// sends).
    origin: String,
    /// Subjects of hubs (`sb.<svc>.h.<hub>`) and of topics
    /// (`sb.<svc>.t.<topic>`), and the broadcast subject.
    hub_subjects: SubjectCache,
    topic_subjects: SubjectCache,
    broadcasts: Subject,
    stats: RoutingStats,
    max_message: usize,
    /// Requests from other hubs, by the id they carry in this router.
    foreign: Mutex<HashMap<u64, Foreign>>,
    next_id: AtomicU64,
    /// Local subscriptions per pattern (and queue group).
    patterns: Mutex<HashMap<Lane, usize>>,
    changes: tokio::sync::mpsc::UnboundedSender<PatternChange>,
    changes_rx: Mutex<Option<tokio::sync::mpsc::UnboundedReceiver<PatternChange>>>,
    /// The queue towards NATS, bounded in bytes by `queue_bytes` (counted
    /// in `queued`) rather than in entries, like a client's outbox.
    fanout: tokio::sync::mpsc::UnboundedSender<Fanned>,
    fanout_rx: Mutex<Option<tokio::sync::mpsc::UnboundedReceiver<Fanned>>>,
    queued: AtomicUsize,
    queue_bytes: usize,
    run: u64,
    seq: AtomicU64,
    seen: Mutex<HashMap<(String, u64), Seen>>,
    /// Warnings about drops: the fan-out queue full, a publish failed.
    full_log: Throttle,
    failed_log: Throttle,
}

impl Routing {
    pub(crate) fn new(
        client: async_nats::Client,
        service: &str,
        directory: Arc<Directory>,
        max_message: usize,
        queue_bytes: usize,
    ) -> Arc<Routing> {
        let (changes, changes_rx) = tokio::sync::mpsc::unbounded_channel();
        let (fanout, fanout_rx) = tokio::sync::mpsc::unbounded_channel();
        Arc::new(Routing {
            client,
            service: escape(service),
            origin: escape(directory.hub_name()),
            hub_subjects: SubjectCache::default(),
            topic_subjects: SubjectCache::default(),
            broadcasts: Subject::from(format!("sb.{}.b", escape(service))),
            directory,
            stats: RoutingStats::default(),
            max_message,
            foreign: Mutex::new(HashMap::new()),
            next_id: AtomicU64::new(0),
            patterns: Mutex::new(HashMap::new()),
            changes,
            changes_rx: Mutex::new(Some(changes_rx)),
            fanout,
            fanout_rx: Mutex::new(Some(fanout_rx)),
            queued: AtomicUsize::new(0),
            queue_bytes,
            run: rand::random::<u64>() >> 1,
            seq: AtomicU64::new(0),
            seen: Mutex::new(HashMap::new()),
            full_log: Throttle::new(),
            failed_log: Throttle::new(),
        })
    }

    pub(crate) fn stats(&self) -> &RoutingStats {
        &self.stats
    }

    /// The subject of hub `hub`.
    pub(crate) fn hub_subject(&self, hub: &str) -> Subject {
        self.hub_subjects
            .get(hub, || format!("sb.{}.h.{}", self.service, escape(hub)))
    }

    /// The envelope of a message to a hub's subject, `to` escaped (`""`:
    /// none).
    fn head<'a>(&'a self, epoch: u64, to: &'a str) -> Head<'a> {
        Head {
            origin: &self.origin,
            epoch,
            run: 0,
            seq: 0,
            served: "",
            to,
        }
    }

    /// A frame for hub `hub`'s subject in its envelope (`to` escaped,
    /// `""` for none), or `None` (counted as dropped) when the frame is
    /// larger than the limit.
    pub(crate) fn hub_payload(&self, frame: &Frame, to: &str) -> Option<bytes::Bytes> {
        if prost::Message::encoded_len(frame) > self.max_message {
            self.stats.dropped.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        Some(self.head(self.directory.epoch(), to).encode(frame).into())
    }

    /// A local subscription to `pattern` (in queue group `group`, if
    /// any) began (router task: no waiting).
    pub(crate) fn subscribed(&self, pattern: &str, group: Option<&str>) {
        let lane = (pattern.to_owned(), group.map(str::to_owned));
        let mut p = self.patterns.lock();
        let n = p.entry(lane.clone()).or_insert(0);
        *n += 1;
        if *n == 1 {
            let _ = self.changes.send(PatternChange::Add(lane));
        }
    }

    /// A local subscription to `pattern` (in `group`) ended.
    pub(crate) fn unsubscribed(&self, pattern: &str, group: Option<&str>) {
        let lane = (pattern.to_owned(), group.map(str::to_owned));
        let mut p = self.patterns.lock();
        if let Some(n) = p.get_mut(&lane) {
            *n -= 1;
            if *n == 0 {
                p.remove(&lane);
                let _ = self.changes.send(PatternChange::Remove(lane));
            }
        }
    }

    /// A local client's publish or broadcast, for the other hubs (router
    /// task: queued, or dropped and counted when the queue is full).
    ///
    /// The payload (envelope and frame) is encoded here, once, into a
    /// buffer of exactly its size, and numbered: the queue holds subject,
    /// payload and cost, and the publisher only hands them to the NATS
    /// client. Its cost is known before it is encoded, so a publish the
    /// queue has no room for is never encoded.
    pub(crate) fn fan_out(&self, from: &str, frame: &Frame) {
        let mut served = String::new();
        let (subject, frame) = match &frame.kind {
            Some(Kind::Publish(p)) => {
                // The router gave it to one local member of each
                // matching local group.
                let groups: Vec<String> = self
                    .patterns
                    .lock()
                    .keys()
                    .filter_map(|(pattern, group)| {
                        let group = group.as_ref()?;
                        crate::subject::matches(pattern, &p.topic)
                            .then(|| served_token(pattern, group))
                    })
                    .collect();
                served = groups.join(",");
                let subject = self.topic_subjects.get(&p.topic, || {
                    format!(
                        "sb.{}.t.{}",
                        self.service,
                        crate::subject::topic(&p.topic, false)
                    )
                });
                let p = switchboard_wire::proto::Publish {
                    id: 0,
                    topic: p.topic.clone(),
                    from: from.to_owned(),
                    payload: p.payload.clone(),
                    reply_to: p.reply_to.clone(),
                    headers: p.headers.clone(),
                };
                (subject, Frame::from(p))
            }
            Some(Kind::Broadcast(b)) => {
                let b = switchboard_wire::proto::Broadcast {
                    id: 0,
                    from: from.to_owned(),
                    payload: b.payload.clone(),
                    headers: b.headers.clone(),
                };
                (self.broadcasts.clone(), Frame::from(b))
            }
            _ => return,
        };
        // The router task is the only one adding, so the check and the
        // add cannot race with another add (the publisher only takes
        // away), and numbers are given in the queue's order.
        let head = Head {
            origin: &self.origin,
            epoch: self.directory.epoch(),
            run: self.run,
            seq: self.seq.load(Ordering::Relaxed) + 1,
            served: &served,
            to: "",
        };
        let cost =
            FANOUT_ENTRY_COST + subject.len() + head.len(prost::Message::encoded_len(&frame));
        let fits = self.queued.load(Ordering::Acquire) + cost <= self.queue_bytes;
        if fits {
            self.seq.store(head.seq, Ordering::Relaxed);
            self.queued.fetch_add(cost, Ordering::AcqRel);
        }
        if !fits
            || self
                .fanout
                .send((subject, head.encode(&frame).into(), cost))
                .is_err()
        {
            self.stats.queue_full.fetch_add(1, Ordering::Relaxed);
            self.stats.dropped.fetch_add(1, Ordering::Relaxed);
            if let Some(n) = self.full_log.hit() {
                tracing::warn!(
                    dropped = n,
                    "federation: queue towards NATS full; publishes to other hubs dropped (count since the last such line)"
                );
            }
        }
    }

    /// Sends the queued publishes and broadcasts to NATS, numbered: each
    /// wake takes everything queued (up to [`PUBLISH_BATCH`]) and hands
    /// it to the NATS client one after the other, which writes what it
    /// has been given with as few system calls as it can.
    pub(crate) async fn publisher(self: Arc<Self>) {
        let Some(mut rx) = self.fanout_rx.lock().take() else {
            return;
        };
        let mut batch = Vec::with_capacity(PUBLISH_BATCH);
        while rx.recv_many(&mut batch, PUBLISH_BATCH).await > 0 {
            let taken: usize = batch.iter().map(|item| item.2).sum();
            self.queued.fetch_sub(taken, Ordering::AcqRel);
            for (subject, payload, _) in batch.drain(..) {
                match self.client.publish(subject, payload).await {
                    Ok(()) => {
                        self.stats.sent.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(e) => self.publish_failed(&e),
                }
            }
        }
    }

    /// Counts a message towards NATS the client did not take (and warns,
    /// rate-limited).
    fn publish_failed(&self, e: &dyn std::fmt::Display) {
        self.stats.dropped.fetch_add(1, Ordering::Relaxed);
        if let Some(n) = self.failed_log.hit() {
            tracing::warn!(dropped = n, error = %e, "federation: publish to NATS failed; messages to other hubs dropped (count since the last such line)");
        }
    }

    /// Holds one NATS subscription per distinct pattern (and the
    /// broadcast subject) and takes what they get in order into the router
    /// (the ordered intake, see [`Routing::intake`]).
    async fn subscriptions(self: Arc<Self>, port: PortSender) {
        let Some(mut rx) = self.changes_rx.lock().take() else {
            return;
        };
        // `None`: the broadcast subject.
        let mut subs: Vec<(Option<Lane>, async_nats::Subscriber)> = Vec::new();
        match self.client.subscribe(self.broadcasts.clone()).await {
            Ok(sub) => subs.push((None, sub)),
            Err(e) => tracing::warn!(error = %e, "federation: cannot subscribe to broadcasts"),
        }
        loop {
            enum Wake {
                Change(Option<PatternChange>),
                Message(Option<(String, String)>, async_nats::Message),
            }
            let wake = tokio::select! {
                change = rx.recv() => Wake::Change(change),
                (group, msg) = next_any(&mut subs) => Wake::Message(group, msg),
            };
            match wake {
                Wake::Change(None) => return,
                Wake::Change(Some(change)) => self.change(&mut subs, change).await,
                Wake::Message(group, first) => {
                    if !self.intake((group, first), &mut subs, &port).await {
                        return;
                    }
                }
            }
        }
    }

    /// Subscribes to a new pattern, or drops the subscription of one that
    /// ended.
    async fn change(
        &self,
        subs: &mut Vec<(Option<Lane>, async_nats::Subscriber)>,
        change: PatternChange,
    ) {
        match change {
            PatternChange::Add(lane) => {
                let subject = format!(
                    "sb.{}.t.{}",
                    self.service,
                    crate::subject::topic(&lane.0, true)
                );
                // A queue group's members on all hubs share one NATS
                // queue subscription: the subject names service and
                // pattern, the queue the group (escaped).
                let sub = match &lane.1 {
                    None => self.client.subscribe(subject).await,
                    Some(group) => self.client.queue_subscribe(subject, escape(group)).await,
                };
                let pattern = &lane.0;
                match sub {
                    Ok(sub) => {
                        subs.retain(|(p, _)| p.as_ref() != Some(&lane));
                        subs.push((Some(lane), sub));
                    }
                    Err(e) => {
                        tracing::warn!(pattern = %pattern, error = %e, "federation: cannot subscribe to a pattern");
                    }
                }
            }
            // Dropping a subscriber unsubscribes it.
            PatternChange::Remove(lane) => subs.retain(|(p, _)| p.as_ref() != Some(&lane)),
        }
        let held = subs.iter().filter(|(p, _)| p.is_some()).count();
        self.stats.patterns.store(held as u64, Ordering::Relaxed);
    }

    /// The ordered intake: with `first` in hand, takes everything already
    /// waiting on all the subscriptions (rounds of polls that do not wait,
    /// until one round finds nothing), orders it by origin and message
    /// number ([`Envelope::run`], [`Envelope::seq`]), drops second copies, and hands it to the router
    /// in that order. The NATS client's reader pushes messages into the
    /// subscriptions' queues in the order they came on the connection, so
    /// when a publish has been taken, every earlier one of the same origin
    /// has been too (in this batch or an earlier one): the router gets
    /// each origin's publishes in the order it sent them, however the
    /// hub's patterns overlap. `false` when the hub stopped.
    async fn intake(
        &self,
        first: (Option<(String, String)>, async_nats::Message),
        subs: &mut [(Option<Lane>, async_nats::Subscriber)],
        port: &PortSender,
    ) -> bool {
        let mut batch = vec![first];
        loop {
            let before = batch.len();
            for (lane, sub) in subs.iter_mut() {
                while let Some(Some(msg)) = sub.next().now_or_never() {
                    batch.push((group_of(lane), msg));
                }
            }
            if batch.len() == before {
                break;
            }
        }
        let mut checked = Vec::with_capacity(batch.len());
        for (group, msg) in batch {
            if let Some((pattern, group)) = group {
                // One member cluster-wide: no order to keep, no copies.
                if let Some((_, frame, _, served)) = self.check_fanned(&msg, false) {
                    let token = served_token(&pattern, &group);
                    if served.split(',').any(|t| t == token) {
                        self.stats.served_by_origin.fetch_add(1, Ordering::Relaxed);
                        continue;
                    }
                    if let Some(Kind::Publish(p)) = frame.kind {
                        if !port.publish_group(&pattern, &group, p).await {
                            return false;
                        }
                        self.stats.received.fetch_add(1, Ordering::Relaxed);
                    } else {
                        self.stats.malformed.fetch_add(1, Ordering::Relaxed);
                    }
                }
                continue;
            }
            if let Some((origin, frame, number, _)) = self.check_fanned(&msg, true) {
                checked.push((origin, number, frame));
            }
        }
        checked.sort_by(|a, b| (&a.0, a.1).cmp(&(&b.0, b.1)));
        let frames: Vec<Frame> = checked.into_iter().map(|(_, _, frame)| frame).collect();
        if frames.is_empty() {
            return true;
        }
        let n = frames.len() as u64;
        if !port.send(frames).await {
            return false;
        }
        self.stats.received.fetch_add(n, Ordering::Relaxed);
        true
    }

    fn me(&self) -> &str {
        self.directory.hub_name()
    }

    /// Whether the NATS connection is up now.
    pub(crate) fn connected(&self) -> bool {
        self.client.connection_state() == async_nats::connection::State::Connected
    }

    /// The live other hub holding `id`, if any.
    pub(crate) fn holder(&self, id: &str) -> Option<String> {
        self.directory
            .holder(id)
            .filter(|h| h != self.me() && self.directory.is_live(h))
    }

    /// Subscribes to this hub's subject (before the hub serves, so nothing
    /// sent to it after `connect` is missed).
    pub(crate) async fn subscribe(&self) -> Result<async_nats::Subscriber, String> {
        self.client
            .subscribe(self.hub_subject(self.me()))
            .await
            .map_err(|e| e.to_string())
    }

    /// [`subscribe`](Self::subscribe), then a flush: once it returns, this
    /// hub's server took the subscription and queued its interest to its
    /// routes (ARCHITECTURE.md, "Joining").
    pub(crate) async fn subscribe_flushed(&self) -> Result<async_nats::Subscriber, String> {
        let sub = self.subscribe().await?;
        self.flush().await?;
        Ok(sub)
    }

    /// Waits until this hub's server took everything sent to it so far.
    pub(crate) async fn flush(&self) -> Result<(), String> {
        self.client
            .flush()
            .await
            .map_err(|e| format!("cannot flush this hub's subscription: {e}"))
    }

    /// Runs the port: frames the router hands over go to NATS, messages
    /// from NATS go into the router. Ends when the hub stops.
    pub(crate) async fn run(
        self: Arc<Self>,
        mut port: RemotePort,
        inbound: async_nats::Subscriber,
    ) {
        let sender = port.sender();
        // Taken straight from the port's outbox in this task: no task or
        // channel between the router and the NATS client.
        let out = async {
            let mut frames = Vec::new();
            while port.recv_many(&mut frames).await {
                for frame in frames.drain(..) {
                    self.outbound(frame, &sender).await;
                }
            }
        };
        let presence = async {
            let Some(mut rx) = self.directory.take_presence() else {
                return;
            };
            while let Some((id, hub)) = rx.recv().await {
                if !sender.presence(&id, hub.as_deref()).await {
                    return;
                }
            }
        };
        // Each branch polled only when it was woken (the request path
        // wakes `inbound` and `out`, not the other two).
        crate::join_branches(vec![
            self.clone().inbound(inbound, sender.clone()).boxed(),
            self.clone().subscriptions(sender.clone()).boxed(),
            out.boxed(),
            presence.boxed(),
        ])
        .await;
    }

    /// A frame the router delivered to the port.
    async fn outbound(&self, frame: Frame, port: &PortSender) {
        match frame.kind {
            Some(Kind::Direct(ref d)) => {
                if let Some(hub) = self.holder(&d.to) {
                    self.publish(&hub, &frame, None).await;
                } else {
                    self.stats.dropped.fetch_add(1, Ordering::Relaxed);
                }
            }
            Some(Kind::Request(ref r)) => match self.holder(&r.to) {
                Some(hub) => self.publish(&hub, &frame, None).await,
                None => {
                    let msg = format!(
                        "no client named '{}' is connected on any hub of the federation",
                        r.to
                    );
                    port.fail(&r.from, r.id, ErrorCode::NoSuchClient, msg).await;
                }
            },
            Some(Kind::Reply(mut r)) => {
                let Some(f) = self.foreign.lock().remove(&r.id) else {
                    return;
                };
                r.id = f.id;
                self.publish(&f.origin, &Frame::from(r), None).await;
            }
            Some(Kind::Error(mut e)) if e.id != 0 => {
                let Some(f) = self.foreign.lock().remove(&e.id) else {
                    return;
                };
                e.id = f.id;
                self.publish(&f.origin, &Frame::from(e), Some(&f.requester))
                    .await;
            }
            _ => {}
        }
    }

    /// Sends `frame` to hub `hub`'s subject in its envelope, `to` (an
    /// error answer's requester) named in it.
    async fn publish(&self, hub: &str, frame: &Frame, to: Option<&str>) {
        let to = to.map(escape).unwrap_or_default();
        let Some(payload) = self.hub_payload(frame, &to) else {
            return;
        };
        match self.client.publish(self.hub_subject(hub), payload).await {
            Ok(()) => {
                self.stats.sent.fetch_add(1, Ordering::Relaxed);
            }
            Err(e) => self.publish_failed(&e),
        }
    }

    /// Messages on this hub's subject, checked, into the router.
    async fn inbound(self: Arc<Self>, mut sub: async_nats::Subscriber, port: PortSender) {
        while let Some(msg) = sub.next().await {
            let Some((origin, frame, to)) = self.check(&msg) else {
                continue;
            };
            let ack = match (&frame.kind, &msg.reply) {
                (Some(Kind::Session(_)), Some(reply)) => self.session_ack(&origin, reply),
                _ => None,
            };
            if !self.deliver(origin, frame, to, &port).await {
                return;
            }
            self.stats.received.fetch_add(1, Ordering::Relaxed);
            if let Some(reply) = ack {
                // Taken (handed in, or its sender told the peer is
                // gone): the sender's hub stops waiting for it.
                if let Err(e) = self.client.publish(reply, bytes::Bytes::new()).await {
                    self.publish_failed(&e);
                }
            }
        }
    }

    /// The reply subject of a session frame from `origin`, when it is one
    /// of that hub's session reply subjects (`sb.<svc>.s.<origin>.…`, see
    /// [`crate::sessions`]); any other reply subject is never answered, so
    /// a message cannot make this hub publish where it names.
    fn session_ack(&self, origin: &str, reply: &str) -> Option<String> {
        let prefix = format!("sb.{}.s.{}.", self.service, escape(origin));
        reply.starts_with(&prefix).then(|| reply.to_owned())
    }

    /// A checked message into the router; `false` when the hub stopped.
    async fn deliver(
        &self,
        origin: String,
        frame: Frame,
        to: Option<String>,
        port: &PortSender,
    ) -> bool {
        match frame.kind {
            Some(Kind::Direct(_)) => port.send(vec![frame]).await,
            Some(Kind::Request(mut r)) => {
                let id = self.next_id.fetch_add(1, Ordering::Relaxed) + 1;
                self.foreign.lock().insert(
                    id,
                    Foreign {
                        origin,
                        requester: r.from.clone(),
                        id: r.id,
                    },
                );
                r.id = id;
                port.send(vec![Frame::from(r)]).await
            }
            Some(Kind::Reply(_)) => port.send(vec![frame]).await,
            Some(Kind::Session(s)) => match to {
                Some(to) if !self.directory.is_local(&to) => {
                    // Gone before the sender's hub heard of it: tell the
                    // sender, as a local session frame for no one is.
                    let message = format!(
                        "no client named '{to}' is connected on hub '{}'; the session frame was not delivered",
                        self.me()
                    );
                    let e = Frame::error(0, ErrorCode::NoSuchClient, message);
                    self.publish(&origin, &e, Some(&s.peer)).await;
                    true
                }
                Some(to) => port.session(&to, s).await,
                None => {
                    self.stats.malformed.fetch_add(1, Ordering::Relaxed);
                    true
                }
            },
            Some(Kind::Error(e)) => match to {
                Some(to) => {
                    port.fail(&to, e.id, ErrorCode::from_wire(e.code), e.message)
                        .await
                }
                None => {
                    self.stats.malformed.fetch_add(1, Ordering::Relaxed);
                    true
                }
            },
            _ => true,
        }
    }

    /// A message from NATS on this hub's subject as (origin, frame,
    /// requester of an error answer), or `None` after counting why it was
    /// dropped. Publishes and broadcasts come on their own subjects
    /// ([`Routing::check_fanned`]), never here.
    fn check(&self, msg: &async_nats::Message) -> Option<(String, Frame, Option<String>)> {
        let (origin, envelope, body) = self.open(msg)?;
        let to = if envelope.to.is_empty() {
            None
        } else {
            let Some(to) = unescape(&envelope.to) else {
                self.stats.malformed.fetch_add(1, Ordering::Relaxed);
                return None;
            };
            Some(to)
        };
        let frame = self.decode(body)?;
        let carried = match &frame.kind {
            Some(Kind::Direct(d)) => !d.from.is_empty() && d.id == 0,
            Some(Kind::Request(r)) => !r.from.is_empty() && r.id != 0 && r.service.is_empty(),
            Some(Kind::Reply(r)) => !r.from.is_empty() && r.id != 0,
            // id 0: a session frame's sender told its target is gone.
            Some(Kind::Error(_)) => to.is_some(),
            Some(Kind::Session(s)) => !s.peer.is_empty() && to.is_some(),
            _ => false,
        };
        if !carried || frame.seq != 0 {
            self.stats.malformed.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        Some((origin, frame, to))
    }

    /// A publish or broadcast from NATS (its [`Envelope`]) as (origin,
    /// frame, (run, number), served queue groups), or `None` after
    /// counting why it was dropped. `dedup`: drop a second copy.
    fn check_fanned(
        &self,
        msg: &async_nats::Message,
        dedup: bool,
    ) -> Option<(String, Frame, (u64, u64), String)> {
        let (origin, envelope, body) = self.open(msg)?;
        let frame = self.decode(body)?;
        let carried = match &frame.kind {
            Some(Kind::Publish(p)) => !p.from.is_empty() && p.id == 0,
            Some(Kind::Broadcast(b)) => !b.from.is_empty() && b.id == 0,
            _ => false,
        };
        if !carried || frame.seq != 0 {
            self.stats.malformed.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        let number = (envelope.run, envelope.seq);
        if dedup {
            let mut seen = self.seen.lock();
            if seen.len() > 1024 {
                seen.clear();
            }
            if !seen
                .entry((origin.clone(), number.0))
                .or_default()
                .first(number.1)
            {
                self.stats.duplicates.fetch_add(1, Ordering::Relaxed);
                return None;
            }
        }
        Some((origin, frame, number, envelope.served))
    }

    /// The first checks of every message from NATS: its size, its
    /// [`Envelope`] and its origin, a live member at a current epoch; the
    /// origin, the envelope and the frame's bytes, or `None` after
    /// counting why it was dropped.
    fn open(&self, msg: &async_nats::Message) -> Option<(String, Envelope, bytes::Bytes)> {
        if msg.payload.len() > self.max_message {
            self.stats.oversized.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        let Some((envelope, body)) = Envelope::decode(&msg.payload) else {
            self.stats.malformed.fetch_add(1, Ordering::Relaxed);
            return None;
        };
        let Some(origin) = unescape(&envelope.origin) else {
            self.stats.malformed.fetch_add(1, Ordering::Relaxed);
            return None;
        };
        let (origin, _) = self.admit(origin, envelope.epoch)?;
        Some((origin, envelope, body))
    }

    /// Whether a message's origin (unescaped) and epoch are admitted: the
    /// origin a live member other than this hub (else `foreign`), the
    /// epoch not below the newest seen for the origin (else `stale`);
    /// counted when not.
    fn admit(&self, origin: String, epoch: u64) -> Option<(String, u64)> {
        if origin == self.me() || !self.directory.is_member(&origin) {
            self.stats.foreign.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        if epoch < self.directory.newest_epoch(&origin) {
            self.stats.stale.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        Some((origin, epoch))
    }

    /// A frame from a message's payload (at most the limit), or `None`
    /// counted as malformed.
    fn decode(&self, body: bytes::Bytes) -> Option<Frame> {
        match decode_frame(body, self.max_message) {
            Ok(f) => Some(f),
            Err(_) => {
                self.stats.malformed.fetch_add(1, Ordering::Relaxed);
                None
            }
        }
    }
}

/// A queue group as named in [`Envelope::served`].
fn served_token(pattern: &str, group: &str) -> String {
    format!("{}/{}", escape(pattern), escape(group))
}

/// The queue group (pattern, group) of a subscription, if it is one.
fn group_of(lane: &Option<Lane>) -> Option<(String, String)> {
    match lane {
        Some((pattern, Some(group))) => Some((pattern.clone(), group.clone())),
        _ => None,
    }
}

/// The next message of any of `subs` and the queue group it came for (a
/// subscription whose stream ended is dropped); waits forever when there
/// is none.
async fn next_any(
    subs: &mut Vec<(Option<Lane>, async_nats::Subscriber)>,
) -> (Option<(String, String)>, async_nats::Message) {
    std::future::poll_fn(|cx| {
        let mut i = 0;
        while i < subs.len() {
            match subs[i].1.poll_next_unpin(cx) {
                std::task::Poll::Ready(Some(msg)) => {
                    return std::task::Poll::Ready((group_of(&subs[i].0), msg))
                }
                std::task::Poll::Ready(None) => {
                    subs.swap_remove(i);
                }
                std::task::Poll::Pending => i += 1,
            }
        }
        std::task::Poll::Pending
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use switchboard_wire::proto;

    /// One frame of every kind the envelope carries, `payload` inside.
    fn frames(payload: Vec<u8>) -> Vec<Frame> {
        vec![
            Frame::from(proto::Publish {
                topic: "t.x".into(),
                from: "c".into(),
                payload: payload.clone().into(),
                ..Default::default()
            }),
            Frame::from(proto::Direct {
                to: "x y".into(),
                from: "c".into(),
                payload: payload.clone().into(),
                ..Default::default()
            }),
            Frame::from(proto::Request {
                id: 9,
                to: "x".into(),
                from: "c".into(),
                payload: payload.clone().into(),
                ..Default::default()
            }),
            Frame::from(proto::Reply {
                id: 9,
                from: "x".into(),
                payload: payload.into(),
                ..Default::default()
            }),
            Frame::error(9, ErrorCode::NoSuchClient, "gone"),
        ]
    }

    proptest! {
        /// An envelope comes back as it was sent, with the frame's bytes,
        /// whatever the frame; its buffer is exactly its size.
        #[test]
        fn envelope_round_trips(
            origin in "\\PC{0,40}",
            served in "\\PC{0,40}",
            to in "\\PC{0,40}",
            epoch: u64,
            run: u64,
            seq: u64,
            payload in proptest::collection::vec(any::<u8>(), 0..64),
        ) {
            let env = Envelope { origin, epoch, run, seq, served, to };
            for frame in frames(payload.clone()) {
                let encoded = env.encode(&frame);
                prop_assert_eq!(encoded.len(), encoded.capacity());
                let body = bytes::Bytes::from(encoded);
                let (back, rest) = Envelope::decode(&body).expect("decodes");
                prop_assert_eq!(&back, &env);
                prop_assert_eq!(decode_frame(rest, MAX_MESSAGE).expect("the frame"), frame);
            }
        }

        /// Any bytes: decoding never panics.
        #[test]
        fn envelope_decode_takes_any_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
            let _ = Envelope::decode(&bytes::Bytes::from(bytes));
        }
    }

    #[test]
    fn a_cut_envelope_is_refused() {
        let env = Envelope {
            origin: "hub-a".into(),
            epoch: 300,
            run: u64::MAX,
            seq: 1,
            served: "p/g".into(),
            to: "req".into(),
        };
        let full = env.encode(&Frame::default());
        assert!(Envelope::decode(&bytes::Bytes::from(full.clone())).is_some());
        // Every cut inside the envelope (the frame here is empty).
        for end in 0..full.len() {
            assert!(Envelope::decode(&bytes::Bytes::copy_from_slice(&full[..end])).is_none());
        }
    }

    #[test]
    fn another_version_or_a_bad_name_is_refused() {
        let env = Envelope {
            origin: "hub-a".into(),
            epoch: 1,
            to: "req".into(),
            ..Default::default()
        };
        let full = env.encode(&Frame::default());
        // Version 1 (no `to`), any other first byte, a bare frame.
        for first in [0xEB, 0x00, 0x0A, 0xFF] {
            let mut bad = full.clone();
            bad[0] = first;
            assert!(Envelope::decode(&bytes::Bytes::from(bad)).is_none());
        }
        // A name that is not UTF-8 (the origin's first byte).
        let mut bad = full.clone();
        let at = full.iter().position(|b| *b == b'h').expect("the origin");
        bad[at] = 0xFF;
        assert!(Envelope::decode(&bytes::Bytes::from(bad)).is_none());
        // A length that runs past the end.
        let mut bad = full[..4].to_vec();
        bad.push(0x7F);
        assert!(Envelope::decode(&bytes::Bytes::from(bad)).is_none());
    }

    #[test]
    fn a_hub_subject_head_carries_no_number_and_no_groups() {
        let head = Head {
            origin: "hub-a",
            epoch: 2,
            run: 0,
            seq: 0,
            served: "",
            to: "req",
        };
        let frame = Frame::error(3, ErrorCode::Timeout, "late");
        let body = bytes::Bytes::from(head.encode(&frame));
        assert_eq!(body.len(), head.len(prost::Message::encoded_len(&frame)));
        let (env, rest) = Envelope::decode(&body).expect("decodes");
        assert_eq!((env.run, env.seq, env.served.as_str()), (0, 0, ""));
        assert_eq!(
            (env.origin.as_str(), env.epoch, env.to.as_str()),
            ("hub-a", 2, "req")
        );
        assert_eq!(decode_frame(rest, MAX_MESSAGE).expect("the frame"), frame);
    }
}
