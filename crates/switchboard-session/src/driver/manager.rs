//! Tokio driver of the manager: one task owns the state machines of every
//! agent; one task per attached transport moves frames.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, VecDeque};

use bytes::Bytes;
use futures::{FutureExt, SinkExt, StreamExt};
use switchboard_wire::{proto, Frame, Kind};
use tokio::sync::{broadcast, mpsc, oneshot};
use tokio::time::Instant;

use super::{boxed, session_of, unknown_kind_reply, BoxError, FrameIo, SessionError, BATCH};
use crate::{fault, fault_code, Manager, ManagerConfig, ManagerEvent, RpcId};

/// How agents are told apart on an attached transport.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LinkKind {
    /// A direct connection to one agent, named by the `device_id` of its
    /// first `Inform`. Anything before that `Inform` is answered with a
    /// fault. The engine does not authenticate the agent: a later
    /// connection naming the same `device_id` takes the agent over, so
    /// accept direct connections only from trusted peers (or run over the
    /// hub, which authenticates every client).
    Direct,
    /// A hub connection carrying many agents, named by `Session.peer`
    /// (which the hub sets to the sender's client id); outgoing messages
    /// carry the agent's name in `Session.peer`.
    Hub,
}

/// Settings of a manager driver.
#[derive(Clone, Debug)]
pub struct ManagerOptions {
    /// Settings of every agent's state machine.
    pub config: ManagerConfig,
    /// Most agents tracked (10 000).
    pub max_agents: usize,
    /// Most frames waiting to be written per transport (8192). A transport
    /// that falls this far behind is closed (its agents' sessions fail and
    /// are retried).
    pub link_queue: usize,
}

impl Default for ManagerOptions {
    fn default() -> Self {
        ManagerOptions {
            config: ManagerConfig::default(),
            max_agents: 10_000,
            link_queue: 8192,
        }
    }
}

type Reply = oneshot::Sender<Result<proto::RpcResult, SessionError>>;

enum Input {
    Rpc {
        agent: String,
        method: String,
        payload: Bytes,
        reply: Reply,
    },
    ConnectionRequest {
        agent: String,
        reply: oneshot::Sender<Result<bool, SessionError>>,
    },
    Attach {
        kind: LinkKind,
        tx: mpsc::Sender<Frame>,
        id: oneshot::Sender<u64>,
    },
    Frames {
        link: u64,
        msgs: Vec<proto::Session>,
    },
    Closed {
        link: u64,
    },
    Shutdown,
}

/// Handle to a running manager driver; cheap to clone.
#[derive(Clone, Debug)]
pub struct ManagerHandle {
    tx: mpsc::Sender<Input>,
    link_queue: usize,
    events: broadcast::Sender<(String, ManagerEvent)>,
}

impl std::fmt::Debug for Input {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Input")
    }
}

/// The answer to an RPC queued with [`ManagerHandle::push`].
#[derive(Debug)]
#[must_use = "the answer is lost unless awaited"]
pub struct PendingRpc {
    rx: oneshot::Receiver<Result<proto::RpcResult, SessionError>>,
}

impl std::future::Future for PendingRpc {
    type Output = Result<proto::RpcResult, SessionError>;
    fn poll(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Self::Output> {
        std::pin::Pin::new(&mut self.rx)
            .poll(cx)
            .map(|r| r.unwrap_or(Err(SessionError::Closed)))
    }
}

/// Starts a manager driver on the current tokio runtime.
pub fn spawn_manager(opts: ManagerOptions) -> ManagerHandle {
    let (tx, rx) = mpsc::channel(4096);
    let (events, _) = broadcast::channel(4096);
    let link_queue = opts.link_queue.max(1);
    tokio::spawn(central(opts, rx, events.clone()));
    ManagerHandle {
        tx,
        link_queue,
        events,
    }
}

impl ManagerHandle {
    /// Queues an RPC for `agent` (at any time, connected or not) and waits
    /// for its answer. The RPC is sent in the agent's next session; if none
    /// is open, the agent is asked for one.
    pub async fn rpc(
        &self,
        agent: impl Into<String>,
        method: impl Into<String>,
        payload: Bytes,
    ) -> Result<proto::RpcResult, SessionError> {
        self.push(agent, method, payload).await?.await
    }

    /// Queues an RPC without waiting for its answer: once this returns, the
    /// RPC is queued behind every RPC pushed before it from this task, and
    /// the returned [`PendingRpc`] resolves to its answer.
    pub async fn push(
        &self,
        agent: impl Into<String>,
        method: impl Into<String>,
        payload: Bytes,
    ) -> Result<PendingRpc, SessionError> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Input::Rpc {
                agent: agent.into(),
                method: method.into(),
                payload,
                reply,
            })
            .await
            .map_err(|_| SessionError::Closed)?;
        Ok(PendingRpc { rx })
    }

    /// Sends `agent` a connection request now. Returns false when the agent
    /// is not connected or already in a session.
    pub async fn connection_request(&self, agent: impl Into<String>) -> Result<bool, SessionError> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Input::ConnectionRequest {
                agent: agent.into(),
                reply,
            })
            .await
            .map_err(|_| SessionError::Closed)?;
        rx.await.map_err(|_| SessionError::Closed)?
    }

    /// Serves a transport of wire frames (until it ends or fails).
    pub async fn attach<T, E>(&self, transport: T, kind: LinkKind) -> Result<(), SessionError>
    where
        T: futures::Stream<Item = Result<Frame, E>> + futures::Sink<Frame> + Send + Unpin + 'static,
        E: Into<BoxError>,
        <T as futures::Sink<Frame>>::Error: Into<BoxError>,
    {
        let io = boxed(transport);
        let (ftx, frx) = mpsc::channel(self.link_queue);
        let (idtx, idrx) = oneshot::channel();
        self.tx
            .send(Input::Attach {
                kind,
                tx: ftx,
                id: idtx,
            })
            .await
            .map_err(|_| SessionError::Closed)?;
        let link = idrx.await.map_err(|_| SessionError::Closed)?;
        tokio::spawn(link_task(link, io, frx, self.tx.clone()));
        Ok(())
    }

    /// A stream of `(agent, event)` pairs (all events but `RpcCompleted`,
    /// which goes to the caller of [`ManagerHandle::rpc`]). Agent requests
    /// (`AgentRequest`) are answered by the driver with an empty result and
    /// reported here. Bounded: a receiver that falls more than 4096 events
    /// behind skips the oldest.
    pub fn subscribe(&self) -> broadcast::Receiver<(String, ManagerEvent)> {
        self.events.subscribe()
    }

    /// Stops the driver; pending RPCs fail with [`SessionError::Closed`].
    pub async fn shutdown(&self) {
        let _ = self.tx.send(Input::Shutdown).await;
    }
}

async fn link_task(
    link: u64,
    mut io: Box<dyn FrameIo>,
    mut frx: mpsc::Receiver<Frame>,
    tx: mpsc::Sender<Input>,
) {
    let mut batch = Vec::with_capacity(BATCH);
    loop {
        tokio::select! {
            f = io.next() => {
                let mut next = Some(f);
                let mut n = 0;
                let mut done = false;
                let mut msgs = Vec::new();
                let mut replies = Vec::new();
                while let Some(f) = next.take() {
                    match f {
                        Some(Ok(frame)) => {
                            if let Some(reply) = unknown_kind_reply(&frame) {
                                replies.push(reply);
                            }
                            if let Some(msg) = session_of(frame) {
                                msgs.push(msg);
                            }
                        }
                        Some(Err(e)) => {
                            tracing::debug!(error = %e, link, "session manager: link failed");
                            done = true;
                        }
                        None => done = true,
                    }
                    n += 1;
                    if !done && n < BATCH {
                        next = io.next().now_or_never();
                    }
                }
                if !msgs.is_empty() && tx.send(Input::Frames { link, msgs }).await.is_err() {
                    return;
                }
                if !replies.is_empty() {
                    let mut ok = true;
                    for r in replies {
                        ok = ok && io.feed(r).await.is_ok();
                    }
                    if !ok || io.flush().await.is_err() {
                        break;
                    }
                }
                if done {
                    break;
                }
            }
            n = frx.recv_many(&mut batch, BATCH) => {
                if n == 0 {
                    break; // the central task closed this link
                }
                let mut ok = true;
                for f in batch.drain(..) {
                    if io.feed(f).await.is_err() {
                        ok = false;
                        break;
                    }
                }
                if !ok || io.flush().await.is_err() {
                    break;
                }
            }
        }
    }
    let _ = io.close().await;
    let _ = tx.send(Input::Closed { link }).await;
}

struct Slot {
    core: Manager,
    link: Option<u64>,
    /// Callers waiting for answers, in queueing order (answers come in
    /// order, so the front is almost always the one).
    waiters: VecDeque<(RpcId, Reply)>,
    /// Earliest timer entry in the heap for this agent.
    armed: Option<Instant>,
}

struct Link {
    kind: LinkKind,
    tx: mpsc::Sender<Frame>,
    /// Direct links: the agent bound by its first Inform.
    agent: Option<std::sync::Arc<str>>,
}

struct Central {
    opts: ManagerOptions,
    agents: HashMap<String, Slot>,
    links: HashMap<u64, Link>,
    next_link: u64,
    timers: BinaryHeap<Reverse<(Instant, String)>>,
    events: broadcast::Sender<(String, ManagerEvent)>,
    /// The time of the batch being handled (one clock read per batch).
    now: std::time::Instant,
}

fn now_std() -> std::time::Instant {
    Instant::now().into_std()
}

async fn central(
    opts: ManagerOptions,
    mut rx: mpsc::Receiver<Input>,
    events: broadcast::Sender<(String, ManagerEvent)>,
) {
    let mut c = Central {
        opts,
        agents: HashMap::new(),
        links: HashMap::new(),
        next_link: 1,
        timers: BinaryHeap::new(),
        events,
        now: now_std(),
    };
    let mut inputs = Vec::with_capacity(BATCH);
    loop {
        let next_timer = c.timers.peek().map(|Reverse((t, _))| *t);
        tokio::select! {
            n = rx.recv_many(&mut inputs, BATCH) => {
                if n == 0 {
                    return;
                }
                c.now = now_std();
                for input in inputs.drain(..) {
                    if matches!(input, Input::Shutdown) {
                        return;
                    }
                    c.input(input);
                }
            }
            _ = async { tokio::time::sleep_until(next_timer.expect("guarded")).await }, if next_timer.is_some() => {
                let now = Instant::now();
                c.now = now.into_std();
                while let Some(Reverse((t, _))) = c.timers.peek() {
                    if *t > now {
                        break;
                    }
                    let Reverse((t, agent)) = c.timers.pop().expect("peeked");
                    let Some(slot) = c.agents.get_mut(&agent) else { continue };
                    if slot.armed != Some(t) {
                        continue; // superseded by an earlier entry
                    }
                    slot.armed = None;
                    slot.core.handle_timeout(c.now);
                    c.after(&agent);
                }
            }
        }
    }
}

impl Central {
    fn slot(&mut self, agent: &str) -> Result<&mut Slot, SessionError> {
        if !self.agents.contains_key(agent) {
            if self.agents.len() >= self.opts.max_agents {
                return Err(SessionError::TooManyAgents {
                    limit: self.opts.max_agents,
                });
            }
            self.agents.insert(
                agent.to_owned(),
                Slot {
                    core: Manager::new(self.opts.config.clone()),
                    link: None,
                    waiters: VecDeque::new(),
                    armed: None,
                },
            );
        }
        Ok(self.agents.get_mut(agent).expect("inserted"))
    }

    fn input(&mut self, input: Input) {
        match input {
            Input::Rpc {
                agent,
                method,
                payload,
                reply,
            } => {
                let now = self.now;
                let slot = match self.slot(&agent) {
                    Ok(s) => s,
                    Err(e) => {
                        let _ = reply.send(Err(e));
                        return;
                    }
                };
                match slot.core.queue_rpc(now, method, payload) {
                    Ok(id) => {
                        slot.waiters.push_back((id, reply));
                    }
                    Err(q) => {
                        let _ = reply.send(Err(SessionError::QueueFull { limit: q.limit }));
                    }
                }
                self.after(&agent);
            }
            Input::ConnectionRequest { agent, reply } => {
                let sent = match self.agents.get_mut(&agent) {
                    Some(slot) => slot.core.request_connection(self.now).is_some(),
                    None => false,
                };
                let _ = reply.send(Ok(sent));
                self.after(&agent);
            }
            Input::Attach { kind, tx, id } => {
                let link = self.next_link;
                self.next_link += 1;
                self.links.insert(
                    link,
                    Link {
                        kind,
                        tx,
                        agent: None,
                    },
                );
                let _ = id.send(link);
            }
            Input::Frames { link, msgs } => {
                for msg in msgs {
                    self.frame(link, msg);
                }
            }
            Input::Closed { link } => self.close_link(link),
            Input::Shutdown => {}
        }
    }

    fn frame(&mut self, link: u64, msg: proto::Session) {
        let Some(l) = self.links.get(&link) else {
            return;
        };
        let agent = match l.kind {
            LinkKind::Hub => {
                if msg.peer.is_empty() {
                    return;
                }
                msg.peer.clone()
            }
            LinkKind::Direct => match &l.agent {
                Some(a) => a.to_string(),
                None => match &msg.body {
                    Some(proto::session::Body::Inform(i)) if !i.device_id.is_empty() => {
                        i.device_id.clone()
                    }
                    _ => {
                        let id = match &msg.body {
                            Some(proto::session::Body::Rpc(r)) => r.id.clone(),
                            _ => String::new(),
                        };
                        let f = fault(
                                id,
                                fault_code::REQUEST_DENIED,
                                "no session open: every session begins with an inform carrying a device id",
                            );
                        let _ = l.tx.try_send(Frame::from(proto::Session {
                            peer: String::new(),
                            session_id: 0,
                            body: Some(proto::session::Body::Fault(f)),
                        }));
                        return;
                    }
                },
            },
        };
        let now = self.now;
        let old_link = match self.slot(&agent) {
            Ok(slot) => slot.link,
            Err(e) => {
                tracing::warn!(error = %e, agent, "session manager: agent refused");
                return;
            }
        };
        if old_link != Some(link) {
            if let Some(old) = old_link {
                // The agent moved to a new connection: the old one is stale.
                if self
                    .links
                    .get(&old)
                    .is_some_and(|l| l.kind == LinkKind::Direct)
                {
                    self.links.remove(&old);
                }
                let slot = self.agents.get_mut(&agent).expect("exists");
                slot.core.disconnected(now);
            }
            if let Some(l) = self.links.get_mut(&link) {
                if l.kind == LinkKind::Direct {
                    l.agent = Some(agent.as_str().into());
                }
            }
            let slot = self.agents.get_mut(&agent).expect("exists");
            slot.link = Some(link);
            if matches!(msg.body, Some(proto::session::Body::Inform(_))) {
                // The agent is opening a session: no connection request.
                slot.core.handle_message(now, msg);
                slot.core.connected(now);
                self.after(&agent);
                return;
            }
            slot.core.connected(now);
        }
        let slot = self.agents.get_mut(&agent).expect("exists");
        slot.core.handle_message(now, msg);
        self.after(&agent);
    }

    fn close_link(&mut self, link: u64) {
        let Some(_l) = self.links.remove(&link) else {
            return;
        };
        let names: Vec<String> = self
            .agents
            .iter()
            .filter(|(_, s)| s.link == Some(link))
            .map(|(n, _)| n.clone())
            .collect();
        for name in names {
            let slot = self.agents.get_mut(&name).expect("listed");
            slot.link = None;
            slot.core.disconnected(self.now);
            self.after(&name);
        }
    }

    /// Moves an agent's outputs: frames to its link, answers to waiters,
    /// events to subscribers, its timer into the heap.
    fn after(&mut self, agent: &str) {
        let Some(slot) = self.agents.get_mut(agent) else {
            return;
        };
        let mut close = None;
        for _ in 0..4 {
            let mut again = false;
            while let Some(ev) = slot.core.poll_event() {
                match ev {
                    ManagerEvent::RpcCompleted { id, result } => {
                        let pos = if slot.waiters.front().is_some_and(|(w, _)| *w == id) {
                            Some(0)
                        } else {
                            slot.waiters.iter().position(|(w, _)| *w == id)
                        };
                        if let Some((_, w)) = pos.and_then(|p| slot.waiters.remove(p)) {
                            let _ = w.send(result.map_err(SessionError::from));
                        }
                    }
                    ManagerEvent::AgentRequest {
                        id,
                        method,
                        payload,
                    } => {
                        // Agent requests are acknowledged with an empty
                        // result and reported to subscribers.
                        slot.core.respond(self.now, &id, Ok(Bytes::new()));
                        again = true;
                        let _ = self.events.send((
                            agent.to_owned(),
                            ManagerEvent::AgentRequest {
                                id,
                                method,
                                payload,
                            },
                        ));
                    }
                    other => {
                        let _ = self.events.send((agent.to_owned(), other));
                    }
                }
            }
            let link = slot.link.and_then(|l| self.links.get(&l).map(|x| (l, x)));
            while let Some(mut m) = slot.core.poll_transmit() {
                let Some((lid, l)) = link else { continue };
                if l.kind == LinkKind::Hub {
                    m.peer = agent.to_owned();
                }
                if l.tx.try_send(Frame::from(Kind::Session(m))).is_err() {
                    tracing::warn!(agent, "session manager: link too slow or gone; closing it");
                    close = Some(lid);
                    break;
                }
            }
            if !again {
                break;
            }
        }
        if let Some(t) = slot.core.poll_timeout() {
            let t = Instant::from_std(t);
            // One live entry per agent; a later deadline is picked up when
            // the earlier entry fires (handle_timeout ignores early calls).
            if slot.armed.is_none_or(|a| t < a) {
                slot.armed = Some(t);
                self.timers.push(Reverse((t, agent.to_owned())));
            }
        }
        if let Some(l) = close {
            self.close_link(l);
        }
    }
}
