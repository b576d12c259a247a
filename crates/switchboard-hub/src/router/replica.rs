//! Replication at the router's surface: on a primary, the change log its
//! router task ships ([`Router::enable_change_log`], [`Router::take_encoded`])
//! and the gate tags ([`Router::set_gating`]); on a standby, the copy of the
//! primary's router ([`Replica`]) kept current by that log, and the ghosts
//! it holds until their clients come back ([`Router::ghost_conn`],
//! [`Router::claim`]). It sits above the [`Router`]: the replica feeds a
//! router the primary's inputs. The log is written by `journal.rs`, the
//! snapshot it starts from by `snapshot.rs`; the link that carries both is
//! `crate::replication`.
//!
//! # State-machine replication
//!
//! The standby does not receive hand-written diffs of the primary's state.
//! It receives the primary's *inputs*, in the order the primary handled
//! them, and runs them through its own [`Router`], so the routing logic
//! exists once. Each input becomes a [`proto::Change`] with consecutive
//! `repl_seq` numbers:
//!
//! * `client_joined`: a connection registered a client id (logged after
//!   the router accepted it; refused connections are not logged);
//! * `client_frame`: a frame the router processed for a registered client,
//!   for every kind that can change state or carries a client's message
//!   (publish, direct, request, reply, broadcast, session, subscribe,
//!   unsubscribe, key/value set, delete, watch, unwatch, presence watch,
//!   cancel, listen); read-only kinds (ping, key/value get, status, client
//!   list) are not logged, nor is `Goodbye` (its `client_left` follows). A
//!   request to a service is logged naming the responder the primary
//!   picked (see below);
//! * `client_left`: a client's registration ended, whatever the cause
//!   (disconnect, goodbye, id takeover, slow consumer, idle timeout);
//! * `sent` and `client_ack`: the hub-to-client numbering of reliable
//!   clients, copied rather than recomputed (a frame numbered and kept for
//!   retransmission; an acknowledgement that trimmed the buffer).
//!
//! `Shutdown` is not logged: a primary shutting down ends replication.
//! [`Router::claim`] is not logged either: which socket serves a client is
//! not replicated state.
//!
//! # Determinism rules
//!
//! Replaying the log reproduces the replicated state (what
//! [`Router::snapshot`] shows: registry, subscriptions, queue groups,
//! service subscriptions, watches, presence watchers, listen flags,
//! key/value entries with versions, deletion markers and the version
//! floor) because:
//!
//! * the router reads no clock: time only enters as `now`, and only
//!   decides deadlines and idleness, which are not replicated;
//! * nothing depends on randomness; maps keyed by client-chosen strings use
//!   randomly seeded hashing but are never iterated, and every iteration
//!   over connection-keyed maps either sorts (snapshot, client list; idle
//!   and slow-consumer departures go in client id order) or only decides
//!   the order of frames across *different* clients; so the change log
//!   itself does not depend on connection ids;
//! * the one hidden input, how full a client's outbox is (which the writer
//!   drains at socket speed), only decides dropped deliveries, parked
//!   messages, the queue-group member chosen, the responder of a service
//!   request and slow-consumer disconnects. The first three affect neither
//!   the replicated state nor later decisions about it; the responder
//!   decides where the request is pending (and so where its reply is
//!   routed after a takeover), so the logged request is amended to name it
//!   (`to`, `sub_id`) and a replica takes that choice; a slow-consumer
//!   disconnect is logged as `client_left`, and a replica never
//!   disconnects anyone on its own (its clients are *ghosts* whose
//!   outboxes discard everything);
//! * connection ids differ between primary and replica: changes name
//!   clients by client id, and ghosts get ids from [`GHOST_CONN_BASE`] up,
//!   so they never collide with the ids a hub assigns to sockets;
//! * the replica must run with the primary's limits: [`Router::restore`]
//!   refuses a snapshot whose limits differ from its own.
//!
//! Frames the router sends to clients are not reproduced exactly (counters
//! in `Status`, flow control, timeouts are local); what a reliable client
//! may still be sent again is, through `sent` and `client_ack`.

use std::sync::Arc;
use std::time::Instant;

use bytes::BytesMut;
use switchboard_wire::is_logged_kind as logged_kind;
use switchboard_wire::proto;

use super::changes::{Change, ChangeOp};
use super::error::ReplicaError;
use super::journal::{ChangeLogLimits, ChangeLogOverflow};
pub use super::snapshot::GHOST_CONN_BASE;
use super::snapshot::{ghost_outbox, validate_client_id};
use super::{Input, Router, RouterConfig};
use crate::ids::ConnId;
use crate::outbox::Outbox;
use crate::stats::HubStats;

/// The primary's side: the change log its router task ships to the
/// standby, the gate that holds frames until the standby has them, and the
/// handover at shutdown.
impl Router {
    /// Starts logging changes (see the module docs); they are numbered on from
    /// [`Router::repl_seq`]. Already logging: only the limits change.
    pub fn enable_change_log(&mut self, limits: ChangeLogLimits) {
        self.output.journal.enable(limits);
    }

    /// Stops logging changes and discards the ones not taken.
    pub fn disable_change_log(&mut self) {
        self.output.journal.disable();
    }

    /// Sequence number of the last change logged (or of the snapshot this
    /// router was restored from); [`Router::snapshot`] reports it.
    pub fn repl_seq(&self) -> u64 {
        self.output.journal.repl_seq()
    }

    /// Moves the changes logged since the last call onto `out`, in order.
    /// When more piled up than the [`ChangeLogLimits`] allow, they were
    /// discarded and this says how many: the standby must start again from
    /// a fresh snapshot (logging goes on).
    pub fn take_changes(&mut self, out: &mut Vec<proto::Change>) -> Result<(), ChangeLogOverflow> {
        self.output.journal.take(out)
    }

    /// Drops the changes logged since the last take without converting
    /// them (they are in a snapshot, or nobody will receive them); logging
    /// goes on.
    pub fn discard_changes(&mut self) {
        self.output.journal.discard();
    }

    /// The change log's bounds this router's [`Limits`](crate::Limits)
    /// set (`change_log_changes`, `change_log_bytes`).
    pub fn change_log_limits(&self) -> ChangeLogLimits {
        ChangeLogLimits::of(&self.limits)
    }

    /// Whether the change log holds a sixteenth of its bounds or more (see
    /// [`ChangeLogLimits`]): the router task sends it then without waiting
    /// for the end of its batch of inputs.
    pub fn change_log_wants_sending(&self) -> bool {
        self.output.journal.wants_sending()
    }

    /// Like [`Router::take_changes`], but appends the changes to `buf` as
    /// length-prefixed `Frame{change}`s, ready for the replication link;
    /// returns how many.
    pub fn take_encoded(&mut self, buf: &mut BytesMut) -> Result<usize, ChangeLogOverflow> {
        self.output.journal.take_encoded(buf)
    }

    /// Starts (or stops) holding every frame until the standby holds the
    /// changes that produced it.
    pub fn set_gating(&mut self, on: bool) {
        self.output.set_gating(on);
    }

    /// Whether a standby will take over when this router shuts down (see
    /// [`Input::Shutdown`]): clients are then not told goodbye.
    pub fn set_handover(&mut self, on: bool) {
        self.handover = on;
    }
}

impl Router {
    /// The connection id of `client_id` if a ghost holds it (a client
    /// restored from a snapshot or replicated, with no socket yet).
    pub fn ghost_conn(&self, client_id: &str) -> Option<ConnId> {
        let conn = self.registry.lookup(client_id)?;
        // A ghost's outbox was never open; a claimed one is.
        let ghost = conn.0 >= GHOST_CONN_BASE && !self.output.outbox(conn)?.is_open();
        ghost.then_some(conn)
    }

    /// Gives a ghost a real connection: `outbox` (created for the id
    /// [`Router::ghost_conn`] returned, which the transport then uses in
    /// its inputs) replaces the ghost's, keeping the client's
    /// subscriptions, queue-group memberships, watches, presence watch and
    /// requests. The client gets a `Welcome`; presence watchers see no
    /// change. Returns the connection id, or `None` when `client_id` is not
    /// held by a ghost (a normal `Input::Connect` takes it over then).
    pub fn claim(&mut self, now: Instant, client_id: &str, outbox: Arc<Outbox>) -> Option<ConnId> {
        let conn = self.ghost_conn(client_id)?;
        let info = self.registry.get(conn)?.info.to_proto();
        self.output.get_mut(conn)?.outbox = outbox.clone();
        self.registry.attach(conn, now);
        self.pubsub.forget_head(conn);
        self.pubsub.rewire(conn, &outbox);
        self.timers.watch_idle(now, self.keepalive);
        let welcome = self.welcome(&info, false, 0);
        self.send(conn, welcome);
        self.apply_kills();
        Some(conn)
    }
}

/// A standby's copy of the primary's router: restored from a snapshot,
/// then kept current by applying the primary's changes in order.
#[derive(Debug)]
pub struct Replica {
    router: Router,
    next_ghost: u64,
    stopped: bool,
}

impl Replica {
    /// A replica starting from `snapshot` (see [`Router::restore`]). The
    /// replica never disconnects idle clients, so `config.keepalive` is
    /// ignored here.
    pub fn new(
        now: Instant,
        snapshot: &proto::Snapshot,
        mut config: RouterConfig,
        stats: Arc<HubStats>,
    ) -> Result<Replica, ReplicaError> {
        config.keepalive = None;
        let mut router = Router::restore(now, snapshot, config, stats)?;
        router.output.set_replaying(true);
        Ok(Replica {
            router,
            next_ghost: GHOST_CONN_BASE + snapshot.clients.len() as u64,
            stopped: false,
        })
    }

    /// Sequence number of the last change applied.
    pub fn repl_seq(&self) -> u64 {
        self.router.repl_seq()
    }

    /// The primary's epoch, as of the snapshot.
    pub fn epoch(&self) -> u64 {
        self.router.identity.epoch
    }

    /// The replicated state, as [`Router::snapshot`] of the primary at the
    /// same `repl_seq` shows it.
    pub fn snapshot(&self) -> proto::Snapshot {
        self.router.snapshot()
    }

    /// The router the replica maintains.
    pub fn router(&self) -> &Router {
        &self.router
    }

    /// Turns the replica into the serving router of a hub taking over at
    /// `now`: `identity` (with the raised epoch) replaces the primary's,
    /// frames are numbered from where the primary stopped, and every
    /// client waits (a ghost with its queues) until it resumes or the
    /// resume window ends.
    pub fn into_router(
        self,
        now: Instant,
        identity: proto::HubIdentity,
        keepalive: Option<std::time::Duration>,
    ) -> Router {
        let mut r = self.router;
        r.output.set_replaying(false);
        r.identity = identity;
        r.keepalive = keepalive;
        let until = now + r.limits.resume_window;
        let keys: Vec<ConnId> = r.registry.iter().map(|(k, _)| *k).collect();
        for key in keys {
            r.registry.detach(key, until);
            if let Some(c) = r.registry.get_mut(key) {
                c.last_seen = now;
            }
        }
        r.timers.plan_idle(now, keepalive, true);
        r
    }

    /// Applies the primary's next change at time `now`. Returns `false` for
    /// a change already held (its `repl_seq` is not above
    /// [`Replica::repl_seq`]), `true` when applied. Any error stops the
    /// replica.
    pub fn apply(&mut self, now: Instant, change: proto::Change) -> Result<bool, ReplicaError> {
        self.apply_change(now, Change::from(change))
    }

    /// [`Replica::apply`] for a change as the standby decodes it from the
    /// link ([`decode_link_frame`](super::changes::decode_link_frame)).
    pub fn apply_change(&mut self, now: Instant, change: Change) -> Result<bool, ReplicaError> {
        if self.stopped {
            return Err(ReplicaError::Stopped);
        }
        let held = self.router.repl_seq();
        if change.repl_seq <= held {
            return Ok(false);
        }
        let result = self.apply_op(now, change.repl_seq, held, change.op);
        if result.is_err() {
            self.stopped = true;
        }
        result.map(|()| true)
    }

    fn apply_op(
        &mut self,
        now: Instant,
        seq: u64,
        held: u64,
        op: Option<ChangeOp>,
    ) -> Result<(), ReplicaError> {
        if seq != held + 1 {
            return Err(ReplicaError::Gap {
                expected: held + 1,
                got: seq,
            });
        }
        let r = &mut self.router;
        match op {
            None => {
                return Err(ReplicaError::Invalid(
                    "a change without an operation".into(),
                ))
            }
            Some(ChangeOp::ClientFrame { client_id, frames }) => {
                let Some(conn) = r.registry.lookup(&client_id) else {
                    return Err(ReplicaError::UnknownClient(super::shown(&client_id)));
                };
                // One frame, of a logged kind (the list goes to the router
                // as it is: no frame moved).
                if !matches!(&frames[..], [f] if f.kind.as_ref().is_some_and(logged_kind)) {
                    return Err(ReplicaError::Invalid(
                        "a client frame of a kind that is not replicated".into(),
                    ));
                }
                r.handle(now, Input::Frames { conn, frames });
            }
            Some(ChangeOp::ClientJoined(info)) => {
                let info = *info;
                validate_client_id(&info.client_id)?;
                let conn = ConnId(self.next_ghost);
                self.next_ghost += 1;
                let id = info.client_id.clone();
                let outbox = ghost_outbox(conn);
                r.handle(now, Input::Connect { conn, info, outbox });
                if r.registry.lookup(&id) != Some(conn) {
                    return Err(ReplicaError::Diverged(format!(
                        "client '{}' could not be registered",
                        super::shown(&id)
                    )));
                }
            }
            Some(ChangeOp::ClientLeft(id)) => {
                let Some(conn) = r.registry.lookup(&id) else {
                    return Err(ReplicaError::UnknownClient(super::shown(&id)));
                };
                r.handle(
                    now,
                    Input::Disconnected {
                        conn,
                        notice: None,
                        reason: "left the primary".into(),
                    },
                );
            }
            Some(ChangeOp::Sent { client_id, out }) => {
                let Some(conn) = r.registry.lookup(&client_id) else {
                    return Err(ReplicaError::UnknownClient(super::shown(&client_id)));
                };
                let Some(link) = r.output.get_mut(conn) else {
                    return Err(ReplicaError::UnknownClient(super::shown(&client_id)));
                };
                let out = out
                    .ok_or_else(|| ReplicaError::Invalid("a sent change without a frame".into()))?;
                let seq = out.seq();
                if !link.reliable.record_sent(out) {
                    return Err(ReplicaError::Invalid(format!(
                        "frame {seq} sent to client '{}' is not reliable or not above its last ({})",
                        super::shown(&link.id),
                        link.reliable.last_sent()
                    )));
                }
            }
            Some(ChangeOp::ClientAck { client_id, up_to }) => {
                let Some(conn) = r.registry.lookup(&client_id) else {
                    return Err(ReplicaError::UnknownClient(super::shown(&client_id)));
                };
                if let Some(link) = r.output.get_mut(conn) {
                    link.reliable.acked(up_to);
                }
            }
            Some(ChangeOp::Kv(_)) => {
                return Err(ReplicaError::Unsupported("a key/value entry change"))
            }
            Some(ChangeOp::ClientDropped { client_id, seqs }) => {
                let Some(conn) = r.registry.lookup(&client_id) else {
                    return Err(ReplicaError::UnknownClient(super::shown(&client_id)));
                };
                if let Some(link) = r.output.get_mut(conn) {
                    for seq in seqs {
                        link.reliable.forget(seq);
                    }
                }
            }
        }
        r.output.journal.set_repl_seq(seq);
        // Local timers only: request timeouts and closing ghosts.
        if r.next_deadline().is_some_and(|t| t <= now) {
            r.handle(now, Input::Tick);
        }
        Ok(())
    }
}
