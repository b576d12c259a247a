//! The routing core: a sans-IO state machine that owns every piece of hub
//! state and turns [`Input`]s into frames pushed onto clients'
//! [`Outbox`]es.
//!
//! It never touches sockets, spawns tasks or reads clocks: the caller passes
//! the current time into [`Router::handle`] and calls it again with
//! [`Input::Tick`] at [`Router::next_deadline`]. Its inputs, outputs and
//! state are std types (the outboxes are std-only too). One task owns the
//! router (`router_task.rs`, the driver); tests drive it directly with a
//! simulated clock, and a standby rebuilds the same state by replaying the
//! same inputs ([`replica`]).
//!
//! # Rooms
//!
//! The state is split by who owns it; each room is a struct with its state
//! and the methods on it, and imports only the leaves below it:
//!
//! * `registry.rs`: who is registered (by connection and client id),
//!   aliases of resumed connections, detached clients, listen flags,
//!   idleness; `Listen` and `Broadcast`.
//! * `output.rs`: each client's link (outbox and reliable numbering, from
//!   `reliable.rs`) and how frames are pushed: queue limits, the standby
//!   gate's tag, the change log (`journal.rs`), slow consumers. Every frame
//!   to a client goes through it.
//! * `pubsub.rs`: subscriptions, queue groups, service subscriptions;
//!   `Publish` fan-out and the service responder pick.
//! * `requests.rs`: pending requests and their deadlines, messages parked
//!   at full queues; `Direct`, `Request`, `Session`, `Reply`, `Cancel`.
//! * `kv.rs` (on the store in `kvstore.rs`): key/value frames and watches.
//! * `presence.rs`: presence watchers and recent events.
//! * `timers.rs`: acknowledgements owed, closing outboxes, idle checks.
//! * Leaves: `api.rs` (the public vocabulary), `common.rs`, `error.rs`.
//! * Seams: [`admission`] (asked before every registration and command;
//!   the permission check goes there) and [`remote`] (messages for client
//!   ids registered nowhere here, and every publish and broadcast, for a
//!   federation of hubs). Both are unset by default and then cost nothing.
//!
//! This file composes them and holds what spans rooms: dispatching frames,
//! joining, resuming and leaving, shutdown and the tick. Above the
//! [`Router`] sit `status.rs` (what it shows), `snapshot.rs` (snapshot and
//! restore) and [`replica`] (the change log's surface, the standby's
//! replica, ghosts); nothing below names them.
//!
//! The router keeps an `Arc<HubStats>` (std atomics): it reads the
//! transports' counters for `Status`, records request latency, and copies
//! its gauges there when the driver calls [`Router::publish_stats`].

use std::sync::Arc;
use std::time::{Duration, Instant};

use switchboard_wire::proto::{self, frame::Kind};
use switchboard_wire::{
    check_headers, ErrorCode, Frame, FEATURE_LISTEN, FEATURE_RELIABLE, FEATURE_RESUMED,
};

use crate::ids::ConnId;

pub mod admission;
mod api;
pub mod changes;
mod common;

pub use common::CLOSE_GRACE;
use common::{err, shown, PARK_RETRY};

mod error;
mod info;
mod journal;
mod kv;
mod kvstore;
mod output;
mod presence;
mod pubsub;
mod registry;
mod reliable;
pub mod remote;
mod requests;
mod snapshot;
mod status;
mod timers;

use crate::limits::Limits;
use crate::outbox::{Out, Outbox, QueueLimits};
use crate::stats::HubStats;
use admission::Admission;
pub use api::{Input, Inspection, RouterConfig};
use info::Info;
pub use journal::{ChangeLogLimits, ChangeLogOverflow};
use kv::Kv;
use output::Output;
use presence::Presence;
pub use presence::PresenceEvent;
use pubsub::PubSub;
use registry::Registry;
use reliable::AckNext;
use remote::{Handoff, Remote};
use requests::{Requests, Route};
use switchboard_wire::FrameExt;
use timers::Timers;

#[derive(Debug, Default)]
struct Counters {
    msgs_in: u64,
    slow_consumers: u64,
    takeovers: u64,
    unsupported: u64,
    duplicates: u64,
    resumes: u64,
    resume_expired: u64,
}

/// The hub's routing core. See the module docs.
#[derive(Debug)]
pub struct Router {
    identity: proto::HubIdentity,
    limits: Limits,
    keepalive: Option<Duration>,
    stats: Arc<HubStats>,
    started: Option<Instant>,
    last_now: Option<Instant>,
    registry: Registry,
    pubsub: PubSub,
    requests: Requests,
    kv: Kv,
    presence: Presence,
    timers: Timers,
    shutting_down: bool,
    counters: Counters,
    /// The clients' links: outboxes, reliable numbering, the change log.
    output: Output,
    /// At shutdown a standby takes over: connections close without a
    /// goodbye, so reliable clients resume on it.
    handover: bool,
    /// Who may register and what they may do (`None`: everyone,
    /// everything); see [`admission`].
    admission: Option<Arc<dyn Admission>>,
    /// Where messages for clients of other hubs go (`None`: a single
    /// hub); see [`remote`].
    remote: Option<Arc<dyn Remote>>,
    /// The remote seam's port, once registered (see [`remote`]).
    port: Option<ConnId>,
}

impl Router {
    /// A router with no clients and an empty store.
    pub fn new(config: RouterConfig, stats: Arc<HubStats>) -> Router {
        let q = QueueLimits::of(&config.limits);
        Router {
            identity: config.identity,
            limits: config.limits,
            keepalive: config.keepalive,
            stats,
            started: None,
            last_now: None,
            registry: Registry::default(),
            pubsub: PubSub::default(),
            requests: Requests::default(),
            kv: Kv::default(),
            presence: Presence::default(),
            timers: Timers::default(),
            shutting_down: false,
            counters: Counters::default(),
            output: Output::new(q),
            handover: false,
            admission: None,
            remote: None,
            port: None,
        }
    }

    /// Asks `admission` before every registration and every command (the
    /// admission seam; see [`admission`]).
    pub fn set_admission(&mut self, admission: Arc<dyn Admission>) {
        self.admission = Some(admission);
    }

    /// Hands messages for unknown client ids, and every publish and
    /// broadcast, to `remote` (the remote seam; see [`remote`]).
    pub fn set_remote(&mut self, remote: Arc<dyn Remote>) {
        if remote.carries_groups() {
            self.pubsub.carry_groups_remotely();
        }
        self.remote = Some(remote);
        self.pubsub.track_patterns();
    }

    /// Tells the remote seam which subscription patterns came and went.
    fn report_patterns(&mut self) {
        if let Some(remote) = &self.remote {
            for (pattern, group, added) in self.pubsub.take_changes() {
                match (group, added) {
                    (None, true) => remote.subscribed(&pattern),
                    (None, false) => remote.unsubscribed(&pattern),
                    (Some(group), true) => remote.subscribed_group(&pattern, &group),
                    (Some(group), false) => remote.unsubscribed_group(&pattern, &group),
                }
            }
        }
    }

    /// The hub identity the router announces.
    pub fn identity(&self) -> &proto::HubIdentity {
        &self.identity
    }

    /// Registered clients.
    pub fn client_count(&self) -> usize {
        self.registry.len()
    }

    /// Requests outstanding.
    pub fn pending_requests(&self) -> usize {
        self.requests.pending_len()
    }

    /// Processes one input at time `now`.
    pub fn handle(&mut self, now: Instant, input: Input) {
        self.started.get_or_insert(now);
        self.last_now = Some(now);
        self.output.set_now(now);
        match input {
            Input::Connect { conn, info, outbox } => self.on_connect(now, conn, info, outbox),
            Input::Resume {
                conn,
                info,
                outbox,
                resume,
            } => self.on_resume(now, conn, info, outbox, resume),
            Input::Frames { conn, frames } => {
                let Some(key) = self.resolve(conn) else {
                    return;
                };
                // Frames are handled where they lie (256 bytes each: a
                // move per frame cost more than most of its routing).
                let mut frames = frames;
                for frame in &mut frames {
                    // A run of publishes queues its deliveries a client
                    // at a time; anything else sees them queued.
                    let publish = matches!(frame.kind, Some(Kind::Publish(_)));
                    self.output.set_staging(publish);
                    match self.output.take_in(key, frame) {
                        None => break,
                        Some(false) => self.counters.duplicates += 1,
                        Some(true) => {
                            self.on_frame(now, key, frame);
                            self.apply_kills();
                        }
                    }
                }
                self.output.set_staging(false);
                self.flush_ack(now, key);
            }
            Input::Acked { conn, up_to } => {
                if let Some(key) = self.resolve(conn) {
                    if let Some(c) = self.registry.get_mut(key) {
                        c.last_seen = now;
                    }
                    self.output.client_acked(key, up_to);
                }
            }
            Input::Disconnected {
                conn,
                notice,
                reason,
            } => {
                if let Some(key) = self.resolve(conn) {
                    self.disconnected(now, key, notice, &reason);
                }
            }
            Input::Refused { conn, notice } => {
                if let Some(key) = self.resolve(conn) {
                    if let Some(c) = self.registry.get_mut(key) {
                        c.last_seen = now;
                        self.counters.msgs_in += 1;
                        self.counters.unsupported += 1;
                        self.send(key, notice);
                    }
                }
            }
            Input::Drained { conn } => {
                if let Some(key) = self.resolve(conn) {
                    self.requests.drained(&mut self.output, now, key);
                }
            }
            Input::RemoteFailed {
                conn,
                requester,
                id,
                code,
                message,
            } => {
                if let Some(port) = self.resolve(conn).filter(|k| Some(*k) == self.port) {
                    if id == 0 {
                        // A session frame of `requester` the remote side
                        // could not deliver: told as a local one is.
                        if let Some(to) = self.registry.lookup(&requester) {
                            self.send(to, err(0, code, message));
                        }
                    } else {
                        let (out, registry) = (&mut self.output, &self.registry);
                        self.requests
                            .fail_remote(out, registry, port, &requester, id, code, &message);
                    }
                }
            }
            Input::RemoteClose {
                conn,
                id,
                code,
                message,
            } => {
                if self.resolve(conn).is_some_and(|k| Some(k) == self.port) {
                    self.remote_close(now, &id, code, message);
                }
            }
            Input::RemoteGroup {
                conn,
                pattern,
                group,
                publish,
            } => {
                if self.resolve(conn).is_some_and(|k| Some(k) == self.port) {
                    self.counters.msgs_in += 1;
                    self.pubsub
                        .publish_group(&mut self.output, &pattern, &group, publish);
                }
            }
            Input::RemoteSession { conn, to, session } => {
                if let Some(port) = self.resolve(conn).filter(|k| Some(*k) == self.port) {
                    self.counters.msgs_in += 1;
                    let (out, registry) = (&mut self.output, &self.registry);
                    self.requests.session(
                        out,
                        registry,
                        now,
                        port,
                        session,
                        &self.limits,
                        Some(&to),
                    );
                }
            }
            Input::RemotePresence { conn, info, joined } => {
                if let Some(port) = self.resolve(conn).filter(|k| Some(*k) == self.port) {
                    if let Some(info) = self.registry.remote_presence(info, joined) {
                        let (kind, reason) = if joined {
                            (proto::PresenceKind::Joined, "")
                        } else {
                            (proto::PresenceKind::Left, "left the federation")
                        };
                        self.presence
                            .event(&mut self.output, port, info, kind, reason);
                    }
                }
            }
            Input::RemoteAnswer {
                conn,
                requester,
                id,
                frame,
            } => {
                if let Some(port) = self.resolve(conn).filter(|k| Some(*k) == self.port) {
                    let (out, registry) = (&mut self.output, &self.registry);
                    self.requests
                        .answer_remote(out, registry, port, &requester, id, frame);
                }
            }
            Input::RemoteDirect {
                conn,
                direct,
                taken,
            } => {
                if let Some(port) = self.resolve(conn).filter(|k| Some(*k) == self.port) {
                    self.counters.msgs_in += 1;
                    let there = self
                        .registry
                        .lookup(&direct.to)
                        .and_then(|k| self.registry.get(k))
                        .is_some_and(|c| c.takes_messages());
                    let route = Route {
                        via: None,
                        from_port: true,
                    };
                    let (out, registry) = (&mut self.output, &self.registry);
                    self.requests
                        .direct(out, registry, now, port, direct, &self.limits, route);
                    let _ = taken.send(there);
                }
            }
            Input::Tick => self.tick(now),
            Input::Shutdown => self.shutdown(now),
        }
        self.apply_kills();
        if self.remote.is_some() {
            self.report_patterns();
        }
    }

    /// The registry id of the client a transport's input is about, if that
    /// transport is still the one attached to it (inputs of a replaced
    /// connection are ignored).
    fn resolve(&self, conn: ConnId) -> Option<ConnId> {
        let key = self.registry.key_of(conn);
        let link = self.output.get(key)?;
        (link.outbox.conn() == conn).then_some(key)
    }

    fn disconnected(&mut self, now: Instant, key: ConnId, notice: Option<Frame>, reason: &str) {
        let (Some(client), Some(link)) = (self.registry.get(key), self.output.get(key)) else {
            return;
        };
        let outbox = link.outbox.clone();
        self.timers.close(now, outbox, notice);
        if link.reliable.is_on() && !self.output.replaying() {
            // Kept while it reconnects: frames for it are numbered and
            // kept in its retransmit buffer (the closed outbox discards
            // them), and it leaves when the resume window ends.
            tracing::debug!(client = %client.id(), reason, "reliable client detached; waiting for it to resume");
            self.registry.detach(key, now + self.limits.resume_window);
        } else {
            self.leave(key, reason);
        }
    }

    /// After a batch from a reliable client: nothing when a frame to it
    /// carried the acknowledgement; an `Ack` now when
    /// [`ACK_EVERY`](switchboard_wire::ACK_EVERY) frames wait for one; else
    /// an `Ack` in [`ACK_DELAY`](switchboard_wire::ACK_DELAY) unless a frame
    /// carries it first.
    fn flush_ack(&mut self, now: Instant, key: ConnId) {
        match self.output.after_batch(key) {
            AckNext::Nothing => {}
            AckNext::Now => self.output.send_ack(key),
            AckNext::Later => self.timers.ack_later(now, key),
        }
    }

    /// When the router next needs an [`Input::Tick`], if ever.
    pub fn next_deadline(&self) -> Option<Instant> {
        let parked = self
            .requests
            .has_parked()
            .then_some(self.last_now)
            .flatten();
        [
            self.requests.next_timeout(),
            self.timers.next(),
            parked.map(|now| now + PARK_RETRY),
            self.registry.next_expiry(),
        ]
        .into_iter()
        .flatten()
        .min()
    }

    // ---- sending ----

    fn send(&mut self, conn: ConnId, frame: Frame) {
        self.output.send(conn, frame);
    }

    fn apply_kills(&mut self) {
        while let Some(conn) = self.output.next_slow_consumer() {
            self.counters.slow_consumers += 1;
            self.leave(conn, "slow consumer");
        }
    }

    // ---- lifecycle ----

    fn on_connect(
        &mut self,
        now: Instant,
        conn: ConnId,
        info: proto::ClientInfo,
        outbox: Arc<Outbox>,
    ) {
        if self.shutting_down {
            let bye = Frame::goodbye(
                ErrorCode::ShuttingDown,
                "the hub is shutting down; reconnect later",
            );
            return self.timers.close(now, outbox, Some(bye));
        }
        let is_port = self.remote.is_some() && info.transport == remote::PORT_TRANSPORT;
        if !is_port && self.refused_client(now, &info, &outbox) {
            return;
        }
        let id = info.client_id.clone();
        if !is_port && self.refused_by_remote(now, &info, &outbox) {
            return;
        }
        if let Some(old) = self.registry.lookup(&id) {
            if let Some(old_outbox) = self.output.outbox(old).cloned() {
                tracing::info!(client = %id, "client id taken over by a new connection");
                let bye = Frame::goodbye(
                    ErrorCode::IdTakenOver,
                    format!(
                        "client id '{}' was registered by a newer connection; give each process its own id",
                        shown(&id)
                    ),
                );
                self.timers.close(now, old_outbox, Some(bye));
                self.counters.takeovers += 1;
                self.leave(old, "taken over by a new connection");
            }
        } else if self.registry.len() >= self.limits.max_clients {
            let refusal = err(
                0,
                ErrorCode::LimitExceeded,
                format!(
                    "the hub already serves {} clients, its limit; try again later or raise the limit",
                    self.registry.len()
                ),
            );
            return self.timers.close(now, outbox, Some(refusal));
        }
        self.output.journal.joined(&info);
        match &self.remote {
            Some(_) if is_port => self.port = Some(conn),
            Some(remote) => remote.joined(&id),
            None => {}
        }
        let welcome = self.welcome(&info, false, 0);
        let id = self.registry.register(conn, &info, now);
        self.output.insert(conn, id, outbox.clone(), info.reliable);
        self.output.push(conn, &outbox, Out::from(welcome));
        self.timers.watch_idle(now, self.keepalive);
        self.presence.event(
            &mut self.output,
            conn,
            info,
            proto::PresenceKind::Joined,
            "",
        );
    }

    /// The `Welcome` for client `info`: the features it asked for that
    /// this hub supports, and "resumed" when it continues its earlier
    /// state.
    fn welcome(&self, info: &proto::ClientInfo, resumed: bool, last_received: u64) -> Frame {
        let mut features = Vec::new();
        if info.reliable {
            features.push(FEATURE_RELIABLE.to_owned());
        }
        if resumed {
            features.push(FEATURE_RESUMED.to_owned());
        }
        if info.listen {
            features.push(FEATURE_LISTEN.to_owned());
        }
        Frame::from(proto::Welcome {
            client_id: info.client_id.clone(),
            features,
            epoch: self.identity.epoch,
            last_received,
            max_frame: u32::try_from(self.limits.max_frame).unwrap_or(u32::MAX),
            keepalive_ms: self
                .keepalive
                .map_or(0, |k| u32::try_from(k.as_millis()).unwrap_or(u32::MAX)),
            identity: Some(self.identity.clone()),
        })
    }

    /// Asks the admission seam whether `info` may register, and take the
    /// id over from its holder if it is held; a refused connection is
    /// closed with the refusal and nothing else changes.
    fn refused_client(
        &mut self,
        now: Instant,
        info: &proto::ClientInfo,
        outbox: &Arc<Outbox>,
    ) -> bool {
        let Some(admission) = &self.admission else {
            return false;
        };
        let holder = self
            .registry
            .lookup(&info.client_id)
            .and_then(|key| self.registry.get(key));
        let verdict = admission.admit_client(info).and_then(|()| match holder {
            Some(holder) => admission.admit_takeover(info, &holder.info.to_proto()),
            None => Ok(()),
        });
        let Err(r) = verdict else {
            return false;
        };
        self.timers
            .close(now, outbox.clone(), Some(err(0, r.code, r.message)));
        true
    }

    /// Closes the local client `id` at the remote side's word (another
    /// hub holds the id), like a takeover.
    #[cold]
    fn remote_close(&mut self, now: Instant, id: &str, code: ErrorCode, message: String) {
        let Some(key) = self.registry.lookup(id).filter(|k| Some(*k) != self.port) else {
            return;
        };
        if let Some(outbox) = self.output.outbox(key).cloned() {
            tracing::info!(client = %id, "client closed: its id is held by another hub");
            self.timers
                .close(now, outbox, Some(Frame::goodbye(code, message)));
            self.counters.takeovers += 1;
            self.leave(key, "its id is held by another hub");
        }
    }

    /// Asks the remote seam whether `info`'s id may register here (it is
    /// not held by another hub); a refused connection is closed with the
    /// refusal.
    fn refused_by_remote(
        &mut self,
        now: Instant,
        info: &proto::ClientInfo,
        outbox: &Arc<Outbox>,
    ) -> bool {
        let Some(remote) = &self.remote else {
            return false;
        };
        let Err(r) = remote.claim(info) else {
            return false;
        };
        self.timers
            .close(now, outbox.clone(), Some(err(0, r.code, r.message)));
        true
    }

    fn on_resume(
        &mut self,
        now: Instant,
        conn: ConnId,
        info: proto::ClientInfo,
        outbox: Arc<Outbox>,
        resume: proto::Resume,
    ) {
        let key = self.registry.lookup(&info.client_id);
        match key {
            Some(key)
                if info.reliable
                    && !self.shutting_down
                    && self.output.get(key).is_some_and(|l| l.reliable.is_on()) =>
            {
                // (A plain registration asks in `on_connect`.)
                if !self.refused_client(now, &info, &outbox) {
                    self.reattach(now, key, conn, info, outbox, resume.last_received);
                }
            }
            _ => self.on_connect(now, conn, info, outbox),
        }
    }

    /// Attaches a new connection (`conn`, `outbox`) to the registered
    /// client `key`: everything it holds is kept, what it has not
    /// received (above `received`) is sent again, and presence watchers
    /// see no change.
    fn reattach(
        &mut self,
        now: Instant,
        key: ConnId,
        conn: ConnId,
        info: proto::ClientInfo,
        outbox: Arc<Outbox>,
        received: u64,
    ) {
        let (Some(c), Some(link)) = (self.registry.get_mut(key), self.output.get_mut(key)) else {
            return;
        };
        let old = std::mem::replace(&mut link.outbox, outbox.clone());
        // An older connection of the same client, if still open, is
        // replaced without a word (the client itself moved on).
        old.kill(None);
        // The "listen" feature stays what it was, like its flags.
        let registered = proto::ClientInfo {
            reliable: true,
            listen: c.info.listen(),
            ..info
        };
        c.info = Info::new(&registered);
        let acked = link.reliable.resume(received);
        let id = c.id().to_owned();
        let last_received = link.reliable.last_received();
        self.registry.realias(old.conn(), conn, key);
        self.registry.attach(key, now);
        if acked {
            self.output.journal.client_ack(&id, received);
        }
        self.pubsub.forget_head(key);
        self.pubsub.rewire(key, &outbox);
        self.counters.resumes += 1;
        let welcome = self.welcome(&registered, true, last_received);
        self.output.resend(key, welcome);
        self.timers.watch_idle(now, self.keepalive);
        tracing::debug!(client = %id, received, "client resumed");
        self.requests.retry_one(&mut self.output, now, key);
    }

    /// Unregisters `conn` and cleans up everything it owned. Its outbox must
    /// already be closed or killed by the caller.
    fn leave(&mut self, conn: ConnId, reason: &str) {
        let via = self.output.remove(conn).map(|l| l.outbox.conn());
        let Some(client) = self.registry.remove(conn, via) else {
            return;
        };
        self.output.journal.left(client.id());
        if self.port == Some(conn) {
            self.port = None;
        } else if let Some(remote) = &self.remote {
            remote.left(client.id());
        }
        self.pubsub.forget(conn);
        self.kv.forget(conn);
        self.presence.unwatch(conn);
        // Requests to this client: their requesters learn it left.
        let gone = format!(
            "client '{}' left before answering ({reason}); retry when it is back",
            shown(client.id())
        );
        tracing::debug!(client = %client.id(), reason, "client left");
        self.requests.client_left(&mut self.output, conn, &gone);
        self.presence.event(
            &mut self.output,
            conn,
            client.info.to_proto(),
            proto::PresenceKind::Left,
            reason,
        );
    }

    fn shutdown(&mut self, now: Instant) {
        self.shutting_down = true;
        for (_, link) in self.output.links() {
            let bye = (!self.handover).then(|| {
                Frame::goodbye(
                    ErrorCode::ShuttingDown,
                    "the hub is shutting down; reconnect later",
                )
            });
            self.timers.close(now, link.outbox.clone(), bye);
        }
        self.registry.clear();
        self.output.clear();
        self.requests.clear();
        self.presence.clear();
        self.kv.clear_watches();
        self.pubsub.clear();
    }

    fn tick(&mut self, now: Instant) {
        while let Some(key) = self.timers.due_ack(now) {
            let owed = self
                .output
                .get_mut(key)
                .and_then(|l| l.reliable.timer_fired());
            let attached = self.registry.get(key).is_some_and(|c| c.is_attached());
            if owed.is_some() && attached {
                self.output.send_ack(key);
            }
        }
        self.requests.expire(&mut self.output, now);
        self.requests.retry_all(&mut self.output, now);
        self.timers.cut_closing(now);
        for key in self.registry.expired(now) {
            self.counters.resume_expired += 1;
            self.leave(key, "did not resume");
        }
        if let Some(k) = self.timers.idle_due(now, self.keepalive) {
            let limit = k * 3;
            for conn in self.registry.idle(now, limit) {
                if let Some(outbox) = self.output.outbox(conn).cloned() {
                    let bye = Frame::goodbye(
                        ErrorCode::Timeout,
                        format!(
                            "no traffic for {} ms; send a Ping at least every {} ms",
                            limit.as_millis(),
                            k.as_millis()
                        ),
                    );
                    self.timers.close(now, outbox, Some(bye));
                    self.leave(conn, "idle");
                }
            }
            let clients = self.registry.len() > 0;
            self.timers.plan_idle(now, self.keepalive, clients);
        }
    }

    // ---- frames ----

    /// Asks the admission seam whether `conn`'s client may run `frame`;
    /// the answer to a refused one.
    fn refused_command(&self, conn: ConnId, frame: &Frame) -> Option<Frame> {
        let admission = self.admission.as_ref()?;
        let client = self.registry.get(conn)?.info.view();
        let r = admission.admit(client, frame).err()?;
        // A reply's id is the requester's, not the replier's.
        let id = match frame.kind {
            Some(Kind::Reply(_)) => 0,
            _ => frame.correlation_id(),
        };
        Some(err(id, r.code, r.message))
    }

    /// Asks the remote seam about a message for `to`, registered nowhere
    /// here: the port to deliver it to when another hub serves `to`.
    /// What came from the port itself is never handed back.
    /// `Err(message)`: another hub serves `to` but the remote side cannot
    /// reach it now ([`Handoff::Unreachable`]).
    fn routed_away(
        &self,
        conn: ConnId,
        to: &str,
        frame: impl FnOnce() -> Frame,
    ) -> Result<Option<ConnId>, String> {
        let (Some(remote), Some(port)) = (self.remote.as_ref(), self.port) else {
            return Ok(None);
        };
        if conn == port || self.registry.lookup(to).is_some() {
            return Ok(None);
        }
        match remote.route(self.output.id(conn), to, &frame()) {
            Handoff::Taken => Ok(Some(port)),
            Handoff::Unknown => Ok(None),
            Handoff::Unreachable(message) => Err(message),
        }
    }

    /// Answers message `id` of `conn` (a `Direct` or `Request` for a
    /// client of another hub the remote side cannot reach now) with
    /// `NO_SUCH_CLIENT` and `message`; a `Direct` without id is counted
    /// as undeliverable.
    #[cold]
    fn unreachable(&mut self, conn: ConnId, id: u64, message: String) {
        if id != 0 {
            self.send(conn, err(id, ErrorCode::NoSuchClient, message));
        } else {
            self.requests.count_undeliverable();
        }
    }

    /// Hands a publish or broadcast, delivered here, to the remote seam
    /// (never one that came from the port: nothing from other hubs goes
    /// back out).
    #[cold]
    fn fan_out(&self, conn: ConnId, frame: Frame) {
        if let Some(remote) = &self.remote {
            if self.port != Some(conn) {
                remote.fan_out(self.output.id(conn), &frame);
            }
        }
    }

    /// Hands a key/value command to the remote seam when it keeps the
    /// store ([`Remote::kv`]); `true` when it was handled (taken and held
    /// pending on the port, or refused for an id already outstanding).
    fn kv_away(
        &mut self,
        now: Instant,
        conn: ConnId,
        id: u64,
        frame: impl FnOnce() -> Frame,
    ) -> bool {
        let (Some(remote), Some(port)) = (&self.remote, self.port) else {
            return false;
        };
        if conn == port {
            return false;
        }
        if let Some(refusal) = self.requests.hold_conflict(conn, id) {
            self.send(conn, refusal);
            return true;
        }
        if remote.kv(self.output.id(conn), &frame()) != Handoff::Taken {
            return false;
        }
        let timeout = self.limits.default_request_timeout;
        self.requests.hold_remote(now, conn, id, port, timeout);
        true
    }

    /// Hands a `Direct` with id for a client registered nowhere here to
    /// the remote seam's confirmed path ([`Remote::confirmed_direct`]);
    /// `true` when it was handled (taken and held pending on the port,
    /// answered as unreachable, or refused for an id already outstanding).
    fn confirmed_away(&mut self, now: Instant, conn: ConnId, d: &proto::Direct) -> bool {
        let (Some(remote), Some(port)) = (&self.remote, self.port) else {
            return false;
        };
        if conn == port || self.registry.lookup(&d.to).is_some() {
            return false;
        }
        let remote = remote.clone();
        if let Some(refusal) = self.requests.hold_conflict(conn, d.id) {
            self.send(conn, refusal);
            return true;
        }
        match remote.confirmed_direct(self.output.id(conn), &d.to, &Frame::from(d.clone())) {
            Handoff::Taken => {
                let timeout = self.limits.default_request_timeout;
                self.requests.hold_remote(now, conn, d.id, port, timeout);
                true
            }
            Handoff::Unknown => false,
            Handoff::Unreachable(message) => {
                self.unreachable(conn, d.id, message);
                true
            }
        }
    }

    fn on_frame(&mut self, now: Instant, conn: ConnId, frame: &mut Frame) {
        self.counters.msgs_in += 1;
        if let Some(c) = self.registry.get_mut(conn) {
            c.last_seen = now;
        }
        let from_port = self.port == Some(conn);
        if !from_port {
            if let Some(refusal) = self.refused_command(conn, frame) {
                return self.send(conn, refusal);
            }
        }
        let Some(kind) = frame.kind.as_mut() else {
            self.counters.unsupported += 1;
            return self.send(
                conn,
                err(
                    0,
                    ErrorCode::Unsupported,
                    "frame kind unknown to this hub (protocol version 1); it was ignored",
                ),
            );
        };
        if let Some((headers, id)) = headers_of(kind) {
            if let Err(e) = check_headers(headers) {
                let message = match &*kind {
                    // A reply's id is the requester's: the replier is
                    // told with id 0 which reply went nowhere.
                    Kind::Reply(r) => format!("reply to request {} not delivered: {e}", r.id),
                    _ => e.to_string(),
                };
                return self.send(conn, err(id, e.code(), message));
            }
        }
        // Publishes, the bulk of the traffic, are routed where they lie (a
        // kind is 232 bytes, a publish 136: moving them cost more than
        // most of the routing).
        if let Kind::Publish(p) = kind {
            let copy = self.remote.is_some().then(|| p.clone());
            self.pubsub.publish(
                &mut self.output,
                conn,
                p,
                self.limits.max_subject,
                from_port,
            );
            if let Some(p) = copy {
                self.fan_out(conn, Frame::from(p));
            }
            return;
        }
        let Some(kind) = frame.kind.take() else {
            return;
        };
        match kind {
            // Routed above.
            Kind::Publish(_) => {}
            Kind::Direct(d) => {
                if d.id != 0 && self.confirmed_away(now, conn, &d) {
                    return;
                }
                let via = match self.routed_away(conn, &d.to, || Frame::from(d.clone())) {
                    Ok(via) => via,
                    Err(message) => return self.unreachable(conn, d.id, message),
                };
                let route = Route { via, from_port };
                let (out, registry) = (&mut self.output, &self.registry);
                self.requests
                    .direct(out, registry, now, conn, d, &self.limits, route);
            }
            Kind::Request(r) => {
                let via = if r.service.is_empty() && r.id != 0 {
                    match self.routed_away(conn, &r.to, || Frame::from(r.clone())) {
                        Ok(via) => via,
                        Err(message) => return self.unreachable(conn, r.id, message),
                    }
                } else {
                    None
                };
                let route = Route { via, from_port };
                let (out, registry) = (&mut self.output, &self.registry);
                self.requests.request(
                    out,
                    registry,
                    &mut self.pubsub,
                    now,
                    conn,
                    r,
                    &self.limits,
                    route,
                );
            }
            Kind::Reply(r) => {
                let (out, registry) = (&mut self.output, &self.registry);
                if let Some(took) = self.requests.reply(out, registry, now, conn, r, self.port) {
                    self.stats.observe_request_latency(took);
                }
            }
            Kind::Broadcast(b) => {
                let copy = self.remote.is_some().then(|| b.clone());
                self.registry
                    .broadcast(&mut self.output, conn, b, from_port);
                if let Some(b) = copy {
                    self.fan_out(conn, Frame::from(b));
                }
            }
            Kind::Subscribe(s) => self
                .pubsub
                .subscribe(&mut self.output, conn, s, &self.limits),
            Kind::Unsubscribe(u) => self.pubsub.unsubscribe(&mut self.output, conn, u),
            Kind::KvSet(s) => {
                if let Some(refusal) = self.kv.refuse_set(&s, &self.limits) {
                    return self.send(conn, refusal);
                }
                if !self.kv_away(now, conn, s.id, || Frame::from(s.clone())) {
                    self.kv.set(&mut self.output, conn, s, &self.limits);
                }
            }
            Kind::KvGet(g) => {
                if !self.kv_away(now, conn, g.id, || Frame::from(g.clone())) {
                    self.kv.get(&mut self.output, conn, g);
                }
            }
            Kind::KvDelete(d) => {
                if !self.kv_away(now, conn, d.id, || Frame::from(d.clone())) {
                    self.kv.delete(&mut self.output, conn, d, &self.limits);
                }
            }
            Kind::KvUpdate(u) if from_port => {
                self.kv.remote_change(&mut self.output, u, &self.limits);
            }
            Kind::KvWatch(w) => self.kv.watch(&mut self.output, conn, w, &self.limits),
            Kind::KvUnwatch(u) => self.kv.unwatch(&mut self.output, conn, u),
            Kind::PresenceWatch(p) => {
                if p.stop {
                    self.presence.unwatch(conn);
                    self.send(conn, Frame::ok(p.id));
                } else {
                    self.presence.watch(conn);
                    let list = self.registry.client_list(p.id);
                    self.send(conn, list);
                }
            }
            Kind::ListClients(l) => {
                let list = self.registry.client_list(l.id);
                self.send(conn, list);
            }
            Kind::StatusRequest(s) => {
                let status = self.status(now, s.id);
                self.send(conn, status.into());
            }
            Kind::Session(s) => {
                match self.routed_away(conn, &s.peer, || Frame::from(s.clone())) {
                    // Another hub holds the peer: the remote side took
                    // the frame (`Remote::route`) and carries it there.
                    Ok(Some(_)) => return,
                    // ... but cannot reach it now: told as for a peer
                    // that is not connected, with the remote side's why.
                    Err(message) => {
                        return self.send(conn, err(0, ErrorCode::NoSuchClient, message));
                    }
                    Ok(None) => {}
                }
                let (out, registry) = (&mut self.output, &self.registry);
                self.requests
                    .session(out, registry, now, conn, s, &self.limits, None);
            }
            Kind::Cancel(c) => self.requests.cancel(conn, c.id),
            Kind::Listen(l) => self.registry.listen(&mut self.output, conn, l),
            Kind::Ping(p) => self.send(conn, proto::Pong { nonce: p.nonce }.into()),
            Kind::Pong(_) => {}
            Kind::Ack(a) => self.output.client_acked(conn, a.up_to),
            Kind::Goodbye(_) => {
                if let Some(outbox) = self.output.outbox(conn).cloned() {
                    self.timers.close(now, outbox, None);
                    self.leave(conn, "said goodbye");
                }
            }
            other => {
                self.counters.unsupported += 1;
                let name = Frame::from(other).kind_name();
                self.send(
                    conn,
                    err(
                        0,
                        ErrorCode::Unsupported,
                        format!("a client may not send '{name}' frames to the hub; it was ignored"),
                    ),
                );
            }
        }
    }
}

/// The application headers of a frame that carries some, and the
/// correlation id a refusal of them answers (0 for a reply, whose id is the
/// requester's). Most frames carry none: they cost no call to
/// `check_headers`.
fn headers_of(kind: &Kind) -> Option<(&[proto::Header], u64)> {
    let (headers, id) = match kind {
        Kind::Direct(d) => (&d.headers, d.id),
        Kind::Request(r) => (&r.headers, r.id),
        Kind::Reply(r) => (&r.headers, 0),
        Kind::Broadcast(b) => (&b.headers, b.id),
        Kind::Publish(p) => (&p.headers, p.id),
        _ => return None,
    };
    (!headers.is_empty()).then_some((headers, id))
}

pub use error::ReplicaError;
pub mod replica;

#[cfg(test)]
mod tests;
