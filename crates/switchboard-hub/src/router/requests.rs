//! The requests room: messages to one client (`Direct`, `Request`,
//! `Session`) and the answers that find their way back (`Reply`,
//! `Cancel`). It owns the pending requests and their deadlines, and the
//! messages parked at a client whose queue is full, with the waiter each
//! one answers when it goes out or fails.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, VecDeque};
use std::time::{Duration, Instant};

use switchboard_wire::{proto, ErrorCode, Frame};

use super::common::{err, shown};
use super::output::Output;
use super::pubsub::PubSub;
use super::registry::Registry;
use crate::ids::{ConnId, IdMap, IdSet};
use crate::limits::Limits;
use crate::outbox::{Out, ENTRY_COST};

/// What kind of message a [`Waiter`] waits on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum WaitKind {
    Direct,
    Request,
    Session,
}

/// The sender of a message that may wait for room at its target, told
/// when it goes out or fails.
#[derive(Debug, Clone, Copy)]
struct Waiter {
    sender: ConnId,
    /// The sender's correlation id (0: fire-and-forget).
    corr: u64,
    deadline: Instant,
    kind: WaitKind,
}

/// A request outstanding to its target.
#[derive(Debug, Clone, Copy)]
pub(super) struct Pending {
    pub target: ConnId,
    deadline: Instant,
    started: Instant,
}

/// A message waiting for room at its target.
#[derive(Debug)]
struct Parked {
    out: Out,
    len: usize,
    waiter: Waiter,
}

/// A client's part of the room.
#[derive(Debug, Default)]
struct Party {
    /// Request ids outstanding from this client.
    outgoing: IdSet<u64>,
    /// Requests outstanding to this client, `(requester, id)`.
    incoming: IdSet<(ConnId, u64)>,
    /// Messages waiting for room in its queue, in order.
    parked: VecDeque<Parked>,
    parked_bytes: usize,
}

/// Where a message goes when not to the client its `to` names, and whose
/// `from` it keeps (see [`remote`](super::remote)).
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct Route {
    /// Another hub serves the target: deliver to the remote seam's port.
    pub via: Option<ConnId>,
    /// The message came from the port: it names its sender already.
    pub from_port: bool,
}

/// What the room counted (for `Status`).
#[derive(Debug, Default, Clone, Copy)]
pub(super) struct RequestCounters {
    pub undeliverable: u64,
    pub replies_dropped: u64,
    pub timeouts: u64,
    pub queue_full: u64,
    pub parked_total: u64,
    pub not_listening: u64,
    pub cancels: u64,
}

/// Pending requests and parked messages.
#[derive(Debug, Default)]
pub(super) struct Requests {
    pending: IdMap<(ConnId, u64), Pending>,
    /// Deadlines of pending requests, earliest first; answered requests
    /// leave theirs behind until they come up (or the heap is rebuilt).
    timeouts: BinaryHeap<Reverse<(Instant, ConnId, u64)>>,
    parties: IdMap<ConnId, Party>,
    /// Clients with messages parked (or just emptied: forgotten at the
    /// next retry).
    parked_clients: IdSet<ConnId>,
    counters: RequestCounters,
}

impl Requests {
    /// Requests outstanding.
    pub fn pending_len(&self) -> usize {
        self.pending.len()
    }

    /// The requests outstanding, by `(requester, id)`.
    #[cfg(test)]
    pub fn pending(&self) -> impl Iterator<Item = (&(ConnId, u64), &Pending)> + '_ {
        self.pending.iter()
    }

    /// Entries in the deadline heap (answered requests' included).
    #[cfg(test)]
    pub fn timeouts_len(&self) -> usize {
        self.timeouts.len()
    }

    /// Counts a message that could not be delivered and had no one to
    /// tell (a `Direct` without id).
    pub fn count_undeliverable(&mut self) {
        self.counters.undeliverable += 1;
    }

    /// What the room counted.
    pub fn counters(&self) -> RequestCounters {
        self.counters
    }

    /// Messages parked now.
    pub fn parked_now(&self) -> usize {
        self.parties.values().map(|p| p.parked.len()).sum()
    }

    /// The earliest request deadline, if any.
    pub fn next_timeout(&self) -> Option<Instant> {
        self.timeouts.peek().map(|Reverse((t, _, _))| *t)
    }

    /// Whether messages wait for room somewhere (then the router retries
    /// them every [`PARK_RETRY`](super::common::PARK_RETRY)).
    pub fn has_parked(&self) -> bool {
        !self.parked_clients.is_empty()
    }

    /// Forgets everything (shutdown).
    pub fn clear(&mut self) {
        self.pending.clear();
        self.timeouts.clear();
        self.parties.clear();
        self.parked_clients.clear();
    }

    /// `Direct`: to the client named `d.to` (or to `route.via`), waiting
    /// for room if its queue is full; `Ok` when `d.id` asks for it.
    #[allow(clippy::too_many_arguments)]
    pub fn direct(
        &mut self,
        out: &mut Output,
        registry: &Registry,
        now: Instant,
        conn: ConnId,
        mut d: proto::Direct,
        limits: &Limits,
        route: Route,
    ) {
        let Some(target) = route.via.or_else(|| registry.lookup(&d.to)) else {
            if d.id != 0 {
                let msg = format!(
                    "no client named '{}' is connected; check the id or wait for it to join",
                    shown(&d.to)
                );
                out.send(conn, err(d.id, ErrorCode::NoSuchClient, msg));
            } else {
                self.counters.undeliverable += 1;
            }
            return;
        };
        if let Some(t) = registry.get(target).filter(|t| !t.takes_messages()) {
            self.counters.not_listening += 1;
            if d.id != 0 {
                let msg = format!(
                    "client '{}' does not take direct messages now; retry once it listens",
                    shown(t.id())
                );
                out.send(conn, err(d.id, ErrorCode::NotListening, msg));
            } else {
                self.counters.undeliverable += 1;
            }
            return;
        }
        let waiter = Waiter {
            sender: conn,
            corr: d.id,
            deadline: now + limits.default_request_timeout,
            kind: WaitKind::Direct,
        };
        if !route.from_port {
            d.from = out.id(conn).to_owned();
        }
        d.id = 0;
        self.deliver(out, target, Out::from(Frame::from(d)), waiter, limits);
    }

    /// `Request`: to the client named `r.to` (or to `route.via`), or to a
    /// responder of service `r.service`; pending until answered,
    /// cancelled, timed out or the target leaves.
    #[allow(clippy::too_many_arguments)]
    pub fn request(
        &mut self,
        out: &mut Output,
        registry: &Registry,
        pubsub: &mut PubSub,
        now: Instant,
        conn: ConnId,
        mut r: proto::Request,
        limits: &Limits,
        route: Route,
    ) {
        if r.id == 0 {
            let msg = "request id 0 is reserved; number requests from 1";
            return out.send(conn, err(0, ErrorCode::InvalidArgument, msg));
        }
        let (target, sub_id) = if let Some(port) = route.via {
            (port, 0)
        } else if r.service.is_empty() {
            let Some(target) = registry.lookup(&r.to) else {
                let msg = format!(
                    "no client named '{}' is connected; check the id or wait for it to join",
                    shown(&r.to)
                );
                return out.send(conn, err(r.id, ErrorCode::NoSuchClient, msg));
            };
            if let Some(t) = registry.get(target).filter(|t| !t.takes_requests()) {
                self.counters.not_listening += 1;
                let msg = format!(
                    "client '{}' does not serve requests now; retry once it listens",
                    shown(t.id())
                );
                return out.send(conn, err(r.id, ErrorCode::NotListening, msg));
            }
            (target, 0)
        } else {
            let named = registry.lookup(&r.to);
            match pubsub.pick_responder(out, &mut r, named, limits.max_subject) {
                Ok(picked) => picked,
                Err((code, msg)) => return out.send(conn, err(r.id, code, msg)),
            }
        };
        let party = self.parties.entry(conn).or_default();
        if party.outgoing.contains(&r.id) {
            let msg = format!(
                "request id {} is already outstanding on this connection; use a fresh id",
                r.id
            );
            return out.send(conn, err(r.id, ErrorCode::InvalidArgument, msg));
        }
        if party.outgoing.len() >= limits.max_pending_requests {
            let msg = format!(
                "{} requests are already outstanding, the limit; wait for answers before sending more",
                party.outgoing.len()
            );
            return out.send(conn, err(r.id, ErrorCode::LimitExceeded, msg));
        }
        let timeout = if r.timeout_ms == 0 {
            limits.default_request_timeout
        } else {
            Duration::from_millis(u64::from(r.timeout_ms))
        };
        let deadline = now + timeout;
        party.outgoing.insert(r.id);
        if !route.from_port {
            r.from = out.id(conn).to_owned();
        }
        r.sub_id = sub_id;
        self.parties
            .entry(target)
            .or_default()
            .incoming
            .insert((conn, r.id));
        self.pending.insert(
            (conn, r.id),
            Pending {
                target,
                deadline,
                started: now,
            },
        );
        // Answered requests leave their heap entries behind until their
        // deadline; rebuild when those dominate so memory follows the
        // outstanding requests, not the request rate.
        if self.timeouts.len() > 2 * self.pending.len() + 4_096 {
            self.timeouts = self
                .pending
                .iter()
                .map(|((c, id), p)| Reverse((p.deadline, *c, *id)))
                .collect();
        }
        self.timeouts.push(Reverse((deadline, conn, r.id)));
        let waiter = Waiter {
            sender: conn,
            corr: r.id,
            deadline,
            kind: WaitKind::Request,
        };
        self.deliver(out, target, Out::from(Frame::from(r)), waiter, limits);
    }

    /// `Session`: to the client named `s.peer`, which then names the
    /// sender; from the remote seam's port, to the client `to`, `s.peer`
    /// already naming the sender (a client of another hub).
    #[allow(clippy::too_many_arguments)]
    pub fn session(
        &mut self,
        out: &mut Output,
        registry: &Registry,
        now: Instant,
        conn: ConnId,
        mut s: proto::Session,
        limits: &Limits,
        to: Option<&str>,
    ) {
        // From the remote seam's port: `to` names the target and `peer`
        // already the sender (a client of another hub).
        let target_id = to.unwrap_or(&s.peer);
        let Some(target) = registry.lookup(target_id) else {
            let msg = format!(
                "no client named '{}' is connected; the session frame was not delivered",
                shown(target_id)
            );
            return out.send(conn, err(0, ErrorCode::NoSuchClient, msg));
        };
        if to.is_none() {
            s.peer = out.id(conn).to_owned();
        }
        let waiter = Waiter {
            sender: conn,
            corr: 0,
            deadline: now + limits.default_request_timeout,
            kind: WaitKind::Session,
        };
        self.deliver(out, target, Out::from(Frame::from(s)), waiter, limits);
    }

    /// `Reply`: routed to the requester only if that request is
    /// outstanding to the replier; returns how long the request took. A
    /// request that came from the remote seam's `port` is answered to the
    /// port (its `to` names a client of another hub), and a reply from
    /// the port keeps its `from`.
    pub fn reply(
        &mut self,
        out: &mut Output,
        registry: &Registry,
        now: Instant,
        conn: ConnId,
        mut r: proto::Reply,
        port: Option<ConnId>,
    ) -> Option<Duration> {
        let asked = |requester: ConnId| {
            self.pending
                .get(&(requester, r.id))
                .is_some_and(|p| p.target == conn)
        };
        let requester = match registry.lookup(&r.to) {
            Some(c) if asked(c) => c,
            _ => match port {
                Some(p) if asked(p) => p,
                _ => {
                    // Late (timed out), duplicate or not asked for.
                    self.counters.replies_dropped += 1;
                    return None;
                }
            },
        };
        let took = self
            .pending
            .remove(&(requester, r.id))
            .map(|p| now.saturating_duration_since(p.started));
        self.forget(requester, r.id, Some(conn));
        if port != Some(conn) {
            r.from = out.id(conn).to_owned();
        }
        out.send(requester, r.into());
        took
    }

    /// The remote side's error answer to request `id` of the client named
    /// `requester`, pending on the remote seam's `port`.
    #[allow(clippy::too_many_arguments)]
    pub fn fail_remote(
        &mut self,
        out: &mut Output,
        registry: &Registry,
        port: ConnId,
        requester: &str,
        id: u64,
        code: ErrorCode,
        message: &str,
    ) {
        self.answer_remote(out, registry, port, requester, id, err(id, code, message));
    }

    /// The remote side's answer `frame` to command `id` of the client
    /// named `requester`, pending on the remote seam's `port` (a request,
    /// or a key/value command [`hold_remote`](Self::hold_remote) holds).
    pub fn answer_remote(
        &mut self,
        out: &mut Output,
        registry: &Registry,
        port: ConnId,
        requester: &str,
        id: u64,
        frame: Frame,
    ) {
        let Some(requester) = registry.lookup(requester) else {
            return;
        };
        if self
            .pending
            .get(&(requester, id))
            .is_none_or(|p| p.target != port)
        {
            return;
        }
        self.pending.remove(&(requester, id));
        self.forget(requester, id, Some(port));
        out.send(requester, frame);
    }

    /// Why command `id` of `conn` cannot be held pending now (its id is
    /// outstanding already), as the answer to send.
    pub fn hold_conflict(&self, conn: ConnId, id: u64) -> Option<Frame> {
        self.pending.contains_key(&(conn, id)).then(|| {
            let msg = format!(
                "command id {id} is already outstanding on this connection; use a fresh id"
            );
            err(id, ErrorCode::InvalidArgument, msg)
        })
    }

    /// Holds command `id` of `conn` (a key/value command the remote seam
    /// took) pending on `port` until the remote side answers, or
    /// `timeout` from `now` (then `TIMEOUT`). Check
    /// [`hold_conflict`](Self::hold_conflict) first.
    pub fn hold_remote(
        &mut self,
        now: Instant,
        conn: ConnId,
        id: u64,
        port: ConnId,
        timeout: Duration,
    ) {
        let deadline = now + timeout;
        self.parties.entry(conn).or_default().outgoing.insert(id);
        self.parties
            .entry(port)
            .or_default()
            .incoming
            .insert((conn, id));
        self.pending.insert(
            (conn, id),
            Pending {
                target: port,
                deadline,
                started: now,
            },
        );
        if self.timeouts.len() > 2 * self.pending.len() + 4_096 {
            self.timeouts = self
                .pending
                .iter()
                .map(|((c, id), p)| Reverse((p.deadline, *c, *id)))
                .collect();
        }
        self.timeouts.push(Reverse((deadline, conn, id)));
    }

    /// `Cancel`: the requester's request `id` is forgotten (and not
    /// delivered if it still waits for room); nothing is answered.
    pub fn cancel(&mut self, conn: ConnId, id: u64) {
        let Some(p) = self.pending.remove(&(conn, id)) else {
            return;
        };
        self.forget(conn, id, Some(p.target));
        self.counters.cancels += 1;
        // Still waiting for room at the target: it need not go at all.
        if let Some(t) = self.parties.get_mut(&p.target) {
            if !t.parked.is_empty() {
                t.parked.retain(|q| {
                    !(q.waiter.kind == WaitKind::Request
                        && q.waiter.sender == conn
                        && q.waiter.corr == id)
                });
                t.parked_bytes = t.parked.iter().map(|q| q.len).sum();
                if t.parked.is_empty() {
                    self.parked_clients.remove(&p.target);
                }
            }
        }
    }

    /// Client `conn` left: its requests are forgotten, its requesters told
    /// (`gone` says why), and the senders of messages parked at it told.
    pub fn client_left(&mut self, out: &mut Output, conn: ConnId, gone: &str) {
        self.parked_clients.remove(&conn);
        let party = self.parties.remove(&conn).unwrap_or_default();
        // Requests this client made: forget them (answers have nobody to go to).
        for id in &party.outgoing {
            if let Some(p) = self.pending.remove(&(conn, *id)) {
                if let Some(t) = self.parties.get_mut(&p.target) {
                    t.incoming.remove(&(conn, *id));
                }
            }
        }
        if !party.outgoing.is_empty() {
            for t in &self.parked_clients {
                if let Some(t) = self.parties.get_mut(t) {
                    t.parked
                        .retain(|p| p.waiter.kind != WaitKind::Request || p.waiter.sender != conn);
                    t.parked_bytes = t.parked.iter().map(|p| p.len).sum();
                }
            }
        }
        // Requests to this client: their requesters learn it left.
        let mut incoming: Vec<(ConnId, u64)> = party.incoming.iter().copied().collect();
        incoming.sort_unstable();
        for (requester, id) in incoming {
            if self.pending.remove(&(requester, id)).is_some() {
                if let Some(r) = self.parties.get_mut(&requester) {
                    r.outgoing.remove(&id);
                }
                out.send(requester, err(id, ErrorCode::TargetGone, gone));
            }
        }
        // Other messages waiting for it.
        for p in party.parked {
            if p.waiter.kind != WaitKind::Request {
                self.fail(out, p.waiter, ErrorCode::TargetGone, gone);
            }
        }
    }

    /// Fails the requests whose deadline passed by `now` with `TIMEOUT`
    /// (or `QUEUE_FULL` when they still wait for room: the clearer error).
    pub fn expire(&mut self, out: &mut Output, now: Instant) {
        while let Some(Reverse((deadline, requester, id))) = self.timeouts.peek().copied() {
            if deadline > now {
                break;
            }
            self.timeouts.pop();
            let Some(p) = self.pending.get(&(requester, id)).copied() else {
                continue;
            };
            if p.deadline != deadline {
                continue;
            }
            // Waiting in a full queue until now: that is the clearer error.
            if self.parked_clients.contains(&p.target) {
                self.retry(out, now, p.target);
            }
            if self
                .pending
                .get(&(requester, id))
                .is_none_or(|p| p.deadline != deadline)
            {
                continue;
            }
            self.pending.remove(&(requester, id));
            self.forget(requester, id, Some(p.target));
            self.counters.timeouts += 1;
            let target = out.get(p.target).map(|l| shown(&l.id)).unwrap_or_default();
            let msg = format!(
                "no reply from '{target}' within the request timeout; retry or raise timeout_ms"
            );
            out.send(requester, err(id, ErrorCode::Timeout, msg));
        }
    }

    /// Moves parked messages of every client with some into their queues
    /// while there is room; fails the ones past their deadline.
    pub fn retry_all(&mut self, out: &mut Output, now: Instant) {
        let parked: Vec<ConnId> = self.parked_clients.iter().copied().collect();
        for conn in parked {
            self.retry(out, now, conn);
        }
    }

    /// Like [`retry_all`](Self::retry_all) for client `conn` alone, if it
    /// has messages parked.
    pub fn retry_one(&mut self, out: &mut Output, now: Instant, conn: ConnId) {
        if self.parked_clients.contains(&conn) {
            self.retry(out, now, conn);
        }
    }

    /// `Drained`: client `conn`'s queue has room again.
    pub fn drained(&mut self, out: &mut Output, now: Instant, conn: ConnId) {
        self.retry(out, now, conn);
    }

    /// Delivers a frame that may wait for room; answers or fails the waiter.
    fn deliver(
        &mut self,
        out: &mut Output,
        target: ConnId,
        frame: Out,
        waiter: Waiter,
        limits: &Limits,
    ) {
        let Some(outbox) = out.outbox(target).cloned() else {
            return self.fail(out, waiter, ErrorCode::TargetGone, "the target left");
        };
        let t = self.parties.entry(target).or_default();
        if t.parked.is_empty() && !outbox.is_full(out.q()) {
            out.push(target, &outbox, frame);
            return self.done(out, waiter);
        }
        let len = frame.encoded_len();
        if t.parked.len() >= limits.max_parked_frames
            || t.parked_bytes + len > limits.max_parked_bytes
        {
            let id = shown(out.id(target));
            return self.fail(
                out,
                waiter,
                ErrorCode::QueueFull,
                &format!("client '{id}' is not reading and too many messages already wait for it; retry later"),
            );
        }
        t.parked_bytes += len;
        t.parked.push_back(Parked {
            out: frame,
            len,
            waiter,
        });
        outbox.request_drained();
        self.parked_clients.insert(target);
        self.counters.parked_total += 1;
    }

    /// A waited-for message went out.
    fn done(&mut self, out: &mut Output, waiter: Waiter) {
        if waiter.kind == WaitKind::Direct && waiter.corr != 0 {
            out.send(waiter.sender, Frame::ok(waiter.corr));
        }
    }

    /// A waited-for message could not go out: its sender learns why.
    fn fail(&mut self, out: &mut Output, waiter: Waiter, code: ErrorCode, why: &str) {
        if code == ErrorCode::QueueFull {
            self.counters.queue_full += 1;
        }
        match waiter.kind {
            WaitKind::Request => {
                if self.pending.remove(&(waiter.sender, waiter.corr)).is_none() {
                    return;
                }
                self.forget(waiter.sender, waiter.corr, None);
                out.send(waiter.sender, err(waiter.corr, code, why));
            }
            WaitKind::Direct if waiter.corr != 0 => {
                out.send(waiter.sender, err(waiter.corr, code, why));
            }
            WaitKind::Direct => self.counters.undeliverable += 1,
            WaitKind::Session => {
                let msg = format!("session frame not delivered: {why}");
                out.send(waiter.sender, err(0, code, msg));
            }
        }
    }

    /// Removes the bookkeeping of request `(requester, id)` (already removed
    /// from `pending`).
    fn forget(&mut self, requester: ConnId, id: u64, target: Option<ConnId>) {
        if let Some(r) = self.parties.get_mut(&requester) {
            r.outgoing.remove(&id);
        }
        if let Some(t) = target {
            if let Some(t) = self.parties.get_mut(&t) {
                t.incoming.remove(&(requester, id));
            }
        } else {
            for c in self.parties.values_mut() {
                if c.incoming.remove(&(requester, id)) {
                    break;
                }
            }
        }
    }

    /// Moves client `conn`'s parked messages into its queue while there is
    /// room, fails those past their deadline.
    fn retry(&mut self, out: &mut Output, now: Instant, conn: ConnId) {
        let mut ready = Vec::new();
        let mut expired = Vec::new();
        let (Some(t), Some(outbox)) = (self.parties.get_mut(&conn), out.outbox(conn).cloned())
        else {
            self.parked_clients.remove(&conn);
            return;
        };
        let q = out.q();
        let (room, room_bytes) = outbox.room(q);
        if !outbox.is_full(q) {
            // at least one, then while the queue has room for them
            let mut bytes = 0;
            while ready.is_empty() || (ready.len() < room && bytes < room_bytes) {
                let Some(p) = t.parked.pop_front() else { break };
                t.parked_bytes -= p.len;
                bytes += p.len + ENTRY_COST;
                ready.push(p);
            }
        }
        if !t.parked.is_empty() {
            let mut kept = VecDeque::with_capacity(t.parked.len());
            for p in t.parked.drain(..) {
                if p.waiter.deadline <= now {
                    t.parked_bytes -= p.len;
                    expired.push(p.waiter);
                } else {
                    kept.push_back(p);
                }
            }
            t.parked = kept;
        }
        if t.parked.is_empty() {
            self.parked_clients.remove(&conn);
        } else {
            outbox.request_drained();
        }
        let target = shown(out.id(conn));
        for p in ready {
            out.push(conn, &outbox, p.out);
            self.done(out, p.waiter);
        }
        let why =
            format!("client '{target}' did not read its queue within the timeout; retry later");
        for w in expired {
            self.fail(out, w, ErrorCode::QueueFull, &why);
        }
    }
}
