//! The agent (CPE-like) side: a sans-IO state machine.
//!
//! The agent keeps a long connection to its manager. Every RPC the manager
//! pushes becomes a task in a bounded queue; one task runs at a time, in
//! queue order, and only inside a session after the `InformResponse`; each
//! result leaves in queue order with the request's id unchanged.

use std::collections::{BTreeMap, HashSet, VecDeque};
use std::time::{Duration, Instant};

use bytes::Bytes;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use switchboard_wire::proto::{self, session::Body};

use crate::common::{fault, fault_code, Event, EventClass, FailReason, QueueFull, RetryPolicy};

/// Settings of an [`Agent`].
#[derive(Clone, Debug)]
pub struct AgentConfig {
    /// Identity reported in every `Inform`.
    pub device_id: String,
    /// Parameter values reported in every `Inform`.
    pub parameters: BTreeMap<String, String>,
    /// How long to wait for the manager before the session fails (30 s).
    pub response_timeout: Duration,
    /// Waits between failed sessions.
    pub retry: RetryPolicy,
    /// Most RPCs accepted per session (255); more are answered with fault
    /// 8004 without running.
    pub max_rpcs_per_session: u32,
    /// Most tasks queued, running or waiting to send their result (1024); a
    /// push beyond it is answered at once with fault 8004 and not accepted.
    pub max_queue: usize,
    /// Most agent requests waiting to be sent (64).
    pub max_requests: usize,
    /// Most distinct pending events (64).
    pub max_events: usize,
}

impl Default for AgentConfig {
    fn default() -> Self {
        AgentConfig {
            device_id: String::new(),
            parameters: BTreeMap::new(),
            response_timeout: Duration::from_secs(30),
            retry: RetryPolicy::default(),
            max_rpcs_per_session: 255,
            max_queue: 1024,
            max_requests: 64,
            max_events: 64,
        }
    }
}

impl AgentConfig {
    /// Default settings for the agent called `device_id`.
    pub fn new(device_id: impl Into<String>) -> Self {
        AgentConfig {
            device_id: device_id.into(),
            ..Default::default()
        }
    }
}

/// Local handle of a task the application must run
/// ([`AgentEvent::RunTask`]) and report with [`Agent::task_done`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TaskId(pub u64);

/// What the agent tells its application.
#[derive(Clone, Debug, PartialEq)]
pub enum AgentEvent {
    /// Run this task now and report it with [`Agent::task_done`]. Exactly
    /// one task runs at a time.
    RunTask {
        /// Handle to report the result with.
        task: TaskId,
        /// The RPC's id (as sent by the manager).
        id: String,
        /// Method name.
        method: String,
        /// Arguments.
        payload: Bytes,
    },
    /// An `Inform` opening session `session_id` was sent.
    SessionStarted {
        /// The session's number.
        session_id: u64,
        /// Consecutive failed attempts before this one.
        retry_count: u32,
        /// Events carried by the `Inform`.
        events: Vec<Event>,
    },
    /// The manager accepted the `Inform`; its events are delivered.
    InformAccepted {
        /// The session's number.
        session_id: u64,
    },
    /// The session ended normally.
    SessionEnded {
        /// The session's number.
        session_id: u64,
    },
    /// The session failed; the next attempt waits `wait` (unless new work
    /// arrives first).
    SessionFailed {
        /// The session's number.
        session_id: u64,
        /// Why it failed.
        reason: FailReason,
        /// Number of this retry (consecutive failures so far).
        retry: u32,
        /// Wait drawn from the retry table.
        wait: Duration,
    },
    /// An agent request queued with [`Agent::queue_request`] was answered.
    RequestCompleted {
        /// The request's id.
        id: String,
        /// The manager's answer.
        result: Result<proto::RpcResult, proto::Fault>,
    },
    /// A result or fault whose id matches nothing outstanding was discarded.
    UnknownResultDiscarded {
        /// The id it carried.
        id: String,
    },
    /// A push whose id is already queued or running was ignored.
    DuplicateIgnored {
        /// The duplicate id.
        id: String,
    },
    /// A push was refused (queue full or malformed) and answered at once.
    PushRejected {
        /// The fault sent back.
        fault: proto::Fault,
    },
    /// The manager sent a connection request (already acknowledged).
    ConnectionRequested {
        /// The request's nonce.
        nonce: u64,
    },
    /// Answers given in failed sessions were sent again at the start of the
    /// RPC phase (they may have been lost with the connection).
    AnswersResent {
        /// How many.
        count: usize,
    },
    /// The set of persistent events changed; a driver with a journal writes
    /// [`Agent::journal`] out.
    JournalChanged,
    /// A message that does not fit the session state was ignored.
    Ignored {
        /// What was wrong.
        detail: String,
    },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    /// No session open.
    Idle,
    /// `Inform` sent, waiting for `InformResponse`.
    AwaitInformResponse,
    /// Sending the agent's own requests.
    Requests,
    /// `Empty` sent: running the manager's RPCs.
    Rpcs,
}

#[derive(Debug)]
enum TaskState {
    Queued,
    Running,
    Done(Result<Bytes, proto::Fault>),
}

#[derive(Debug)]
struct Task {
    handle: TaskId,
    id: String,
    method: String,
    payload: Bytes,
    state: TaskState,
}

#[derive(Debug)]
struct Request {
    id: String,
    method: String,
    payload: Bytes,
}

#[derive(Debug)]
struct PendingEvent {
    event: Event,
    /// Carried by the `Inform` of the open session.
    in_flight: bool,
}

/// The agent state machine. See the [crate docs](crate) for the protocol.
///
/// Feed it with `handle_*`, [`Agent::connected`], [`Agent::add_event`],
/// [`Agent::task_done`]; then drain [`Agent::poll_transmit`] (messages to
/// send), [`Agent::poll_event`] (things for the application) and call
/// [`Agent::handle_timeout`] at [`Agent::poll_timeout`].
#[derive(Debug)]
pub struct Agent {
    config: AgentConfig,
    connected: bool,
    phase: Phase,
    session_id: u64,
    retry_count: u32,
    retry_at: Option<Instant>,
    deadline: Option<Instant>,
    events: Vec<PendingEvent>,
    requests: VecDeque<Request>,
    request_outstanding: bool,
    next_request: u64,
    hold: bool,
    manager_done: bool,
    /// Tasks still to finish before the session may end (set by the
    /// manager's `Empty`).
    end_after: Option<usize>,
    tasks: VecDeque<Task>,
    ids: HashSet<String>,
    running: bool,
    next_task: u64,
    pushes_this_session: u32,
    /// Answers sent in the open session (the newest `max_queue`): if the
    /// session fails they may not have arrived.
    sent: VecDeque<Body>,
    /// Answers of failed sessions the manager may not have received; sent
    /// again at the start of each RPC phase until a session succeeds.
    replay: VecDeque<Body>,
    /// Since a failed session and until a session succeeds, ids answered
    /// recently: the manager sends outstanding RPCs again after a failure,
    /// and those must not run twice.
    recovering: bool,
    answered: HashSet<String>,
    rng: StdRng,
    wall: Option<(Instant, u64)>,
    transmit: VecDeque<proto::Session>,
    out_events: VecDeque<AgentEvent>,
}

impl Agent {
    /// A new agent, disconnected and idle. `seed` seeds the generator of
    /// retry jitter (the agent reads no randomness source itself).
    pub fn new(config: AgentConfig, seed: u64) -> Agent {
        Agent {
            config,
            connected: false,
            phase: Phase::Idle,
            session_id: 0,
            retry_count: 0,
            retry_at: None,
            deadline: None,
            events: Vec::new(),
            requests: VecDeque::new(),
            request_outstanding: false,
            next_request: 1,
            hold: false,
            manager_done: false,
            end_after: None,
            tasks: VecDeque::new(),
            ids: HashSet::new(),
            running: false,
            next_task: 1,
            pushes_this_session: 0,
            sent: VecDeque::new(),
            replay: VecDeque::new(),
            recovering: false,
            answered: HashSet::new(),
            rng: StdRng::seed_from_u64(seed),
            wall: None,
            transmit: VecDeque::new(),
            out_events: VecDeque::new(),
        }
    }

    /// The agent's settings.
    pub fn config(&self) -> &AgentConfig {
        &self.config
    }

    /// Tells the agent the wall-clock time (ms since the Unix epoch) at
    /// `now`, so `Inform.current_time_ms` can be filled in.
    pub fn set_wall_clock(&mut self, now: Instant, unix_ms: u64) {
        self.wall = Some((now, unix_ms));
    }

    /// Restores persistent events read from a journal at start-up.
    pub fn restore(&mut self, events: impl IntoIterator<Item = Event>) {
        for e in events {
            if e.class() == EventClass::Persistent {
                self.push_event(e);
            }
        }
    }

    /// The persistent events not yet delivered: what a journal must hold.
    pub fn journal(&self) -> Vec<Event> {
        self.events
            .iter()
            .filter(|p| p.event.class() == EventClass::Persistent)
            .map(|p| p.event.clone())
            .collect()
    }

    /// Whether a session is open.
    pub fn in_session(&self) -> bool {
        self.phase != Phase::Idle
    }

    /// Number of the current (or last) session.
    pub fn session_id(&self) -> u64 {
        self.session_id
    }

    /// Consecutive failed sessions so far.
    pub fn retry_count(&self) -> u32 {
        self.retry_count
    }

    /// Tasks queued, running or waiting to send their result.
    pub fn queued_tasks(&self) -> usize {
        self.tasks.len()
    }

    /// Events not yet delivered.
    pub fn pending_events(&self) -> Vec<Event> {
        self.events.iter().map(|p| p.event.clone()).collect()
    }

    /// The connection is up: a session starts if there is work and no retry
    /// wait is running.
    pub fn connected(&mut self, now: Instant) {
        self.connected = true;
        self.maybe_start(now);
    }

    /// The connection is lost: an open session fails (nothing queued is
    /// lost; a running task keeps running and its result is sent in the next
    /// session).
    pub fn disconnected(&mut self, now: Instant) {
        self.connected = false;
        self.fail(now, FailReason::Disconnected);
    }

    /// Adds an event to report. A new event starts a session at once, even
    /// during a retry wait; during a session it is reported in the next one.
    pub fn add_event(&mut self, now: Instant, event: Event) -> Result<(), QueueFull> {
        if !self.events.iter().any(|p| p.event == event && !p.in_flight) {
            if self.events.len() >= self.config.max_events {
                return Err(QueueFull {
                    limit: self.config.max_events,
                });
            }
            let persistent = event.class() == EventClass::Persistent;
            self.push_event(event);
            if persistent {
                self.out_events.push_back(AgentEvent::JournalChanged);
            }
        }
        self.new_work(now);
        Ok(())
    }

    /// Queues a request of the agent's own (e.g. `TransferComplete`),
    /// sent in the next session before the agent's `Empty`. Returns its id;
    /// the answer comes as [`AgentEvent::RequestCompleted`].
    pub fn queue_request(
        &mut self,
        now: Instant,
        method: impl Into<String>,
        payload: Bytes,
    ) -> Result<String, QueueFull> {
        if self.requests.len() >= self.config.max_requests {
            return Err(QueueFull {
                limit: self.config.max_requests,
            });
        }
        let id = format!("a{}", self.next_request);
        self.next_request += 1;
        self.requests.push_back(Request {
            id: id.clone(),
            method: method.into(),
            payload,
        });
        self.new_work(now);
        Ok(id)
    }

    /// Reports the outcome of a task started by [`AgentEvent::RunTask`].
    /// A fault's `id` is filled in by the agent. Unknown handles are ignored.
    pub fn task_done(&mut self, now: Instant, task: TaskId, result: Result<Bytes, proto::Fault>) {
        let Some(t) = self.tasks.iter_mut().find(|t| t.handle == task) else {
            return;
        };
        if !matches!(t.state, TaskState::Running) {
            return;
        }
        t.state = TaskState::Done(result);
        self.running = false;
        self.pump(now);
    }

    /// Handles a message from the manager.
    pub fn handle_message(&mut self, now: Instant, msg: proto::Session) {
        let Some(body) = msg.body else {
            self.ignore("session message without a body");
            return;
        };
        let current = self.phase != Phase::Idle && msg.session_id == self.session_id;
        match body {
            Body::Rpc(rpc) => self.handle_push(now, rpc),
            Body::ConnectionRequest(cr) => {
                self.send(Body::ConnectionRequestAck(proto::ConnectionRequestAck {
                    nonce: cr.nonce,
                }));
                self.out_events
                    .push_back(AgentEvent::ConnectionRequested { nonce: cr.nonce });
                let ev = Event::new(Event::CONNECTION_REQUEST);
                if !self.events.iter().any(|p| p.event == ev && !p.in_flight)
                    && self.events.len() < self.config.max_events
                {
                    self.push_event(ev);
                }
                self.new_work(now);
            }
            Body::InformResponse(_) => {
                if self.phase != Phase::AwaitInformResponse || !current {
                    self.ignore("inform response outside the wait for one");
                    return;
                }
                let before = self.journal().len();
                self.events.retain(|p| !p.in_flight);
                if self.journal().len() != before {
                    self.out_events.push_back(AgentEvent::JournalChanged);
                }
                self.out_events.push_back(AgentEvent::InformAccepted {
                    session_id: self.session_id,
                });
                self.phase = Phase::Requests;
                self.deadline = None;
                self.pump(now);
            }
            Body::RpcResult(r) => self.handle_answer(now, r.id.clone(), Ok(r)),
            Body::Fault(f) => {
                if f.id.is_empty() {
                    if self.phase != Phase::Idle && current {
                        self.fail(
                            now,
                            FailReason::Aborted {
                                code: f.code,
                                message: f.message,
                            },
                        );
                    } else {
                        self.ignore("session fault outside a session");
                    }
                } else {
                    self.handle_answer(now, f.id.clone(), Err(f));
                }
            }
            Body::Empty(_) => {
                if self.phase == Phase::Idle || self.phase == Phase::AwaitInformResponse {
                    self.ignore("empty outside a session");
                    return;
                }
                if !self.manager_done {
                    self.manager_done = true;
                    // Only the work accepted so far belongs to this session.
                    self.end_after = Some(self.tasks.len());
                }
                self.deadline = None;
                self.pump(now);
            }
            Body::Inform(_) | Body::ConnectionRequestAck(_) => {
                self.ignore("message only a manager receives");
            }
        }
    }

    /// Handles the passing of time: response timeouts and retry waits.
    pub fn handle_timeout(&mut self, now: Instant) {
        if self.deadline.is_some_and(|d| now >= d) {
            self.deadline = None;
            self.fail(now, FailReason::ResponseTimeout);
        }
        if self.retry_at.is_some_and(|t| now >= t) {
            self.retry_at = None;
            self.maybe_start(now);
        }
    }

    /// The next message to send to the manager.
    pub fn poll_transmit(&mut self) -> Option<proto::Session> {
        self.transmit.pop_front()
    }

    /// The next event for the application.
    pub fn poll_event(&mut self) -> Option<AgentEvent> {
        self.out_events.pop_front()
    }

    /// When [`Agent::handle_timeout`] must be called next.
    pub fn poll_timeout(&self) -> Option<Instant> {
        match (self.deadline, self.retry_at) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    // ---- internals ----

    fn push_event(&mut self, event: Event) {
        if self.events.iter().any(|p| p.event == event && !p.in_flight) {
            return;
        }
        self.events.push(PendingEvent {
            event,
            in_flight: false,
        });
    }

    fn ignore(&mut self, detail: &str) {
        self.out_events.push_back(AgentEvent::Ignored {
            detail: detail.to_owned(),
        });
    }

    fn send(&mut self, body: Body) {
        self.transmit.push_back(proto::Session {
            peer: String::new(),
            session_id: self.session_id,
            body: Some(body),
        });
    }

    fn has_work(&self) -> bool {
        !self.events.is_empty()
            || !self.requests.is_empty()
            || !self.tasks.is_empty()
            || !self.replay.is_empty()
    }

    /// New work arrived: cut a retry wait short and start if possible.
    fn new_work(&mut self, now: Instant) {
        if self.phase == Phase::Idle {
            self.retry_at = None;
            self.maybe_start(now);
        }
    }

    fn maybe_start(&mut self, now: Instant) {
        if !self.connected || self.phase != Phase::Idle || !self.has_work() {
            return;
        }
        if self.retry_at.is_some_and(|t| now < t) {
            return;
        }
        self.retry_at = None;
        self.session_id += 1;
        self.phase = Phase::AwaitInformResponse;
        self.hold = false;
        self.manager_done = false;
        self.end_after = None;
        self.request_outstanding = false;
        let mut events = Vec::with_capacity(self.events.len());
        for p in &mut self.events {
            p.in_flight = true;
            events.push(p.event.clone());
        }
        let current_time_ms = self.wall.map_or(0, |(at, ms)| {
            ms + u64::try_from(now.saturating_duration_since(at).as_millis()).unwrap_or(0)
        });
        self.send(Body::Inform(proto::Inform {
            device_id: self.config.device_id.clone(),
            events: events.iter().cloned().map(Into::into).collect(),
            retry_count: self.retry_count,
            current_time_ms,
            parameters: self.config.parameters.clone(),
            max_rpcs: self.config.max_rpcs_per_session,
        }));
        self.deadline = Some(now + self.config.response_timeout);
        self.out_events.push_back(AgentEvent::SessionStarted {
            session_id: self.session_id,
            retry_count: self.retry_count,
            events,
        });
    }

    fn handle_push(&mut self, now: Instant, rpc: proto::Rpc) {
        if rpc.id.is_empty() {
            self.ignore("rpc without an id");
            return;
        }
        if self.ids.contains(&rpc.id) || (self.recovering && self.answered.contains(&rpc.id)) {
            self.out_events
                .push_back(AgentEvent::DuplicateIgnored { id: rpc.id });
            return;
        }
        if self.tasks.len() >= self.config.max_queue {
            let f = fault(
                rpc.id,
                fault_code::RESOURCES_EXCEEDED,
                format!(
                    "task queue full ({} tasks): wait for results before pushing more",
                    self.config.max_queue
                ),
            );
            self.send(Body::Fault(f.clone()));
            self.out_events
                .push_back(AgentEvent::PushRejected { fault: f });
            return;
        }
        if rpc.hold_requests {
            self.hold = true;
        }
        let handle = TaskId(self.next_task);
        self.next_task += 1;
        let state = if self.pushes_this_session >= self.config.max_rpcs_per_session {
            TaskState::Done(Err(fault(
                String::new(),
                fault_code::RESOURCES_EXCEEDED,
                format!(
                    "more than {} rpcs in one session: send the rest in a new session",
                    self.config.max_rpcs_per_session
                ),
            )))
        } else {
            TaskState::Queued
        };
        self.pushes_this_session = self.pushes_this_session.saturating_add(1);
        self.ids.insert(rpc.id.clone());
        self.tasks.push_back(Task {
            handle,
            id: rpc.id,
            method: rpc.method,
            payload: rpc.payload,
            state,
        });
        if self.phase == Phase::Idle {
            self.new_work(now);
        } else {
            self.pump(now);
        }
    }

    fn handle_answer(
        &mut self,
        now: Instant,
        id: String,
        result: Result<proto::RpcResult, proto::Fault>,
    ) {
        let matches = self.phase == Phase::Requests
            && self.request_outstanding
            && self.requests.front().is_some_and(|r| r.id == id);
        if !matches {
            self.out_events
                .push_back(AgentEvent::UnknownResultDiscarded { id });
            return;
        }
        self.requests.pop_front();
        self.request_outstanding = false;
        self.deadline = None;
        self.out_events
            .push_back(AgentEvent::RequestCompleted { id, result });
        self.pump(now);
    }

    /// Moves the open session forward as far as it can go.
    fn pump(&mut self, now: Instant) {
        if self.phase == Phase::Requests && !self.request_outstanding {
            if !self.hold {
                if let Some(r) = self.requests.front() {
                    let rpc = proto::Rpc {
                        id: r.id.clone(),
                        method: r.method.clone(),
                        payload: r.payload.clone(),
                        hold_requests: false,
                    };
                    self.send(Body::Rpc(rpc));
                    self.request_outstanding = true;
                }
            }
            if !self.request_outstanding {
                self.send(Body::Empty(proto::Empty {}));
                self.phase = Phase::Rpcs;
                let replay: Vec<Body> = self.replay.iter().cloned().collect();
                if !replay.is_empty() {
                    self.out_events.push_back(AgentEvent::AnswersResent {
                        count: replay.len(),
                    });
                }
                for body in replay {
                    self.send(body);
                }
            }
        }
        if self.phase == Phase::Rpcs {
            self.run_tasks();
            if self.manager_done && self.end_after == Some(0) {
                self.end_session(now);
                return;
            }
        }
        self.arm_deadline(now);
    }

    fn run_tasks(&mut self) {
        loop {
            if self.end_after == Some(0) {
                // Later pushes belong to the next session.
                return;
            }
            let Some(head) = self.tasks.front_mut() else {
                return;
            };
            match head.state {
                TaskState::Done(_) => {
                    let t = self.tasks.pop_front().expect("head exists");
                    self.ids.remove(&t.id);
                    let TaskState::Done(result) = t.state else {
                        unreachable!("checked above")
                    };
                    if self.recovering && self.answered.len() < 4 * self.config.max_queue {
                        self.answered.insert(t.id.clone());
                    }
                    let body = match result {
                        Ok(payload) => Body::RpcResult(proto::RpcResult {
                            id: t.id,
                            method: t.method,
                            payload,
                        }),
                        Err(mut f) => {
                            f.id = t.id;
                            Body::Fault(f)
                        }
                    };
                    if self.sent.len() >= self.config.max_queue {
                        self.sent.pop_front();
                    }
                    self.sent.push_back(body.clone());
                    self.send(body);
                    if let Some(n) = self.end_after.as_mut() {
                        *n = n.saturating_sub(1);
                    }
                }
                TaskState::Running => return,
                TaskState::Queued => {
                    if self.running {
                        return;
                    }
                    head.state = TaskState::Running;
                    self.running = true;
                    let ev = AgentEvent::RunTask {
                        task: head.handle,
                        id: head.id.clone(),
                        method: head.method.clone(),
                        payload: std::mem::take(&mut head.payload),
                    };
                    self.out_events.push_back(ev);
                    return;
                }
            }
        }
    }

    /// Waits on the manager get a response deadline; local work does not.
    fn arm_deadline(&mut self, now: Instant) {
        let waiting = match self.phase {
            Phase::Idle => false,
            Phase::AwaitInformResponse => true,
            Phase::Requests => self.request_outstanding,
            Phase::Rpcs => !self.manager_done && self.tasks.is_empty(),
        };
        if !waiting {
            self.deadline = None;
        } else if self.deadline.is_none() {
            self.deadline = Some(now + self.config.response_timeout);
        }
    }

    fn end_session(&mut self, now: Instant) {
        // The manager ended the session: it has every answer.
        self.sent.clear();
        self.replay.clear();
        self.answered.clear();
        self.recovering = false;
        self.phase = Phase::Idle;
        self.deadline = None;
        self.retry_count = 0;
        self.retry_at = None;
        self.pushes_this_session = 0;
        self.manager_done = false;
        self.end_after = None;
        self.out_events.push_back(AgentEvent::SessionEnded {
            session_id: self.session_id,
        });
        self.maybe_start(now);
    }

    fn fail(&mut self, now: Instant, reason: FailReason) {
        if self.phase == Phase::Idle {
            return;
        }
        self.phase = Phase::Idle;
        self.deadline = None;
        self.manager_done = false;
        self.end_after = None;
        self.request_outstanding = false;
        self.pushes_this_session = 0;
        let sent = std::mem::take(&mut self.sent);
        self.replay.extend(sent);
        while self.replay.len() > self.config.max_queue {
            self.replay.pop_front();
        }
        self.recovering = true;
        for body in &self.replay {
            let id = match body {
                Body::RpcResult(r) => &r.id,
                Body::Fault(f) => &f.id,
                _ => continue,
            };
            if self.answered.len() < 4 * self.config.max_queue {
                self.answered.insert(id.clone());
            }
        }
        self.events
            .retain(|p| p.event.class() != EventClass::DropOnFailure);
        for p in &mut self.events {
            p.in_flight = false;
        }
        self.retry_count = self.retry_count.saturating_add(1);
        let unit: f64 = self.rng.random();
        let wait = self.config.retry.wait(self.retry_count, unit);
        self.retry_at = Some(now + wait);
        self.out_events.push_back(AgentEvent::SessionFailed {
            session_id: self.session_id,
            reason,
            retry: self.retry_count,
            wait,
        });
    }
}
