//! Property test: random interleavings of pushes, results, connection
//! requests, timeouts and disconnects, against the sans-IO cores.
//!
//! Checked: (a) no two sessions overlap (on either side), (b) every accepted
//! RPC is run once and answered with its id, and every RPC the manager
//! queued completes exactly once, (c) answers leave in queue order, (d) every
//! retry wait lies inside the table's range; and, once the link is left up,
//! everything finishes. (Answers given in a failed session are sent again in
//! the next one, since they may have been lost with the connection; those
//! repeats are counted apart.)

use std::collections::{HashSet, VecDeque};
use std::time::{Duration, Instant};

use bytes::Bytes;
use proptest::prelude::*;
use switchboard_session::{
    fault, Agent, AgentConfig, AgentEvent, Event, Manager, ManagerConfig, ManagerEvent,
    RetryPolicy, TaskId,
};
use switchboard_wire::proto::{self, session::Body};

#[derive(Clone, Debug)]
enum Op {
    ManagerRpc,
    ForeignPush,
    DuplicatePush,
    Finish(bool),
    ManagerConnectionRequest,
    ForeignConnectionRequest,
    AddEvent(u8),
    Deliver(u8, bool),
    Advance(u16),
    Disconnect,
    Connect,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => Just(Op::ManagerRpc),
        2 => Just(Op::ForeignPush),
        1 => Just(Op::DuplicatePush),
        4 => any::<bool>().prop_map(Op::Finish),
        1 => Just(Op::ManagerConnectionRequest),
        1 => Just(Op::ForeignConnectionRequest),
        1 => (0u8..4).prop_map(Op::AddEvent),
        8 => (1u8..8, any::<bool>()).prop_map(|(n, d)| Op::Deliver(n, d)),
        2 => (0u16..45_000).prop_map(Op::Advance),
        1 => Just(Op::Disconnect),
        2 => Just(Op::Connect),
    ]
}

struct World {
    now: Instant,
    agent: Agent,
    manager: Manager,
    up: bool,
    to_agent: VecDeque<proto::Session>,
    to_manager: VecDeque<proto::Session>,
    running: VecDeque<TaskId>,
    /// Ids the agent accepted, in acceptance order.
    accepted: Vec<String>,
    /// Ids the agent answered, in sending order.
    answered: Vec<String>,
    /// Ids queued or running at the agent.
    pending: Vec<String>,
    answered_set: HashSet<String>,
    resent: usize,
    completed_ids: HashSet<u64>,
    next_foreign: u64,
    agent_open: bool,
    manager_open: bool,
    queued_rpcs: usize,
    completed_rpcs: usize,
    policy: RetryPolicy,
}

impl World {
    fn new(max_in_flight: usize) -> World {
        let mut acfg = AgentConfig::new("cpe-prop");
        acfg.max_queue = 16;
        acfg.max_rpcs_per_session = 6;
        let mcfg = ManagerConfig {
            max_in_flight,
            ..ManagerConfig::default()
        };
        World {
            now: Instant::now(),
            policy: acfg.retry,
            agent: Agent::new(acfg, 9),
            manager: Manager::new(mcfg),
            up: false,
            to_agent: VecDeque::new(),
            to_manager: VecDeque::new(),
            running: VecDeque::new(),
            accepted: Vec::new(),
            answered: Vec::new(),
            pending: Vec::new(),
            answered_set: HashSet::new(),
            resent: 0,
            completed_ids: HashSet::new(),
            next_foreign: 0,
            agent_open: false,
            manager_open: false,
            queued_rpcs: 0,
            completed_rpcs: 0,
        }
    }

    /// Collects outputs of both cores and checks the invariants on events.
    fn collect(&mut self) -> Result<(), TestCaseError> {
        let events: Vec<_> = std::iter::from_fn(|| self.agent.poll_event()).collect();
        self.collect_with(events)
    }

    fn collect_with(&mut self, agent_events: Vec<AgentEvent>) -> Result<(), TestCaseError> {
        while let Some(m) = self.agent.poll_transmit() {
            let answer = match &m.body {
                Some(Body::RpcResult(r)) => Some(r.id.clone()),
                Some(Body::Fault(f)) if !f.id.is_empty() && !f.message.contains("queue full") => {
                    Some(f.id.clone())
                }
                _ => None,
            };
            if let Some(id) = answer {
                // Ids are never reused here, so an id answered before is a
                // re-sent answer of a failed session, not a second run.
                if !self.answered_set.insert(id.clone()) {
                    self.resent += 1;
                } else {
                    self.answered.push(id);
                }
            }
            if let Some(Body::RpcResult(r)) = &m.body {
                self.pending.retain(|p| *p != r.id);
            }
            if let Some(Body::Fault(f)) = &m.body {
                if let Some(pos) = self.pending.iter().position(|p| *p == f.id) {
                    if !f.message.contains("queue full") {
                        self.pending.remove(pos);
                    }
                }
            }
            if self.up {
                self.to_manager.push_back(m);
            }
        }
        while let Some(m) = self.manager.poll_transmit() {
            if self.up {
                self.to_agent.push_back(m);
            }
        }
        for ev in agent_events
            .into_iter()
            .chain(std::iter::from_fn(|| self.agent.poll_event()))
        {
            match ev {
                AgentEvent::RunTask { task, .. } => {
                    prop_assert!(self.running.is_empty(), "two tasks running at once");
                    self.running.push_back(task);
                }
                AgentEvent::SessionStarted { .. } => {
                    prop_assert!(!self.agent_open, "agent sessions overlap");
                    self.agent_open = true;
                }
                AgentEvent::SessionEnded { .. } => {
                    prop_assert!(self.agent_open);
                    self.agent_open = false;
                }
                AgentEvent::SessionFailed { retry, wait, .. } => {
                    prop_assert!(self.agent_open);
                    self.agent_open = false;
                    let (lo, hi) = self.policy.range(retry);
                    prop_assert!(
                        wait >= lo && wait <= hi,
                        "retry {} waited {:?}",
                        retry,
                        wait
                    );
                }
                _ => {}
            }
        }
        while let Some(ev) = self.manager.poll_event() {
            match ev {
                ManagerEvent::SessionStarted { .. } => {
                    // A new Inform may supersede a session the manager still
                    // had open; that is reported as a failure first.
                    prop_assert!(!self.manager_open, "manager sessions overlap");
                    self.manager_open = true;
                }
                ManagerEvent::SessionEnded { .. } | ManagerEvent::SessionFailed { .. } => {
                    prop_assert!(self.manager_open);
                    self.manager_open = false;
                }
                ManagerEvent::RpcCompleted { id, .. } => {
                    prop_assert!(
                        self.completed_ids.insert(id.0),
                        "rpc {} completed twice",
                        id.0
                    );
                    self.completed_rpcs += 1;
                }
                _ => {}
            }
        }
        Ok(())
    }

    /// Delivers a message to the agent, recording whether a push was accepted.
    fn deliver_to_agent(&mut self, m: proto::Session) -> Result<(), TestCaseError> {
        let push = match &m.body {
            Some(Body::Rpc(r)) => Some(r.id.clone()),
            _ => None,
        };
        self.agent.handle_message(self.now, m);
        let events: Vec<_> = std::iter::from_fn(|| self.agent.poll_event()).collect();
        if let Some(id) = push {
            // Accepted unless refused, ignored or a duplicate.
            let refused = events.iter().any(|e| {
                matches!(
                    e,
                    AgentEvent::DuplicateIgnored { .. }
                        | AgentEvent::PushRejected { .. }
                        | AgentEvent::Ignored { .. }
                )
            });
            if !refused {
                self.accepted.push(id.clone());
                self.pending.push(id);
            }
        }
        self.collect_with(events)
    }

    fn step(&mut self, op: &Op) -> Result<(), TestCaseError> {
        match op {
            Op::ManagerRpc => {
                if self
                    .manager
                    .queue_rpc(self.now, "Get", Bytes::new())
                    .is_ok()
                {
                    self.queued_rpcs += 1;
                }
            }
            Op::ForeignPush | Op::DuplicatePush => {
                if self.up {
                    let id = match (op, self.pending.first()) {
                        (Op::DuplicatePush, Some(p)) => p.clone(),
                        _ => {
                            self.next_foreign += 1;
                            format!("f{}", self.next_foreign)
                        }
                    };
                    let m = proto::Session {
                        peer: String::new(),
                        session_id: self.agent.session_id(),
                        body: Some(Body::Rpc(proto::Rpc {
                            id,
                            method: "Foreign".into(),
                            payload: Bytes::new(),
                            hold_requests: false,
                        })),
                    };
                    self.deliver_to_agent(m)?;
                }
            }
            Op::Finish(ok) => {
                if let Some(t) = self.running.pop_front() {
                    let r = if *ok {
                        Ok(Bytes::new())
                    } else {
                        Err(fault("", 9000, "failed"))
                    };
                    self.agent.task_done(self.now, t, r);
                }
            }
            Op::ManagerConnectionRequest => {
                self.manager.request_connection(self.now);
            }
            Op::ForeignConnectionRequest => {
                if self.up {
                    let m = proto::Session {
                        peer: String::new(),
                        session_id: 0,
                        body: Some(Body::ConnectionRequest(proto::ConnectionRequest {
                            nonce: 77,
                        })),
                    };
                    self.deliver_to_agent(m)?;
                }
            }
            Op::AddEvent(k) => {
                let code = [
                    Event::BOOT,
                    Event::VALUE_CHANGE,
                    Event::TRANSFER_COMPLETE,
                    "M Reboot",
                ][*k as usize];
                let _ = self.agent.add_event(self.now, Event::new(code));
            }
            Op::Deliver(n, to_agent) => {
                for _ in 0..*n {
                    if *to_agent {
                        if let Some(m) = self.to_agent.pop_front() {
                            self.deliver_to_agent(m)?;
                        }
                    } else if let Some(m) = self.to_manager.pop_front() {
                        self.manager.handle_message(self.now, m);
                    }
                    self.collect()?;
                }
            }
            Op::Advance(ms) => {
                self.now += Duration::from_millis(u64::from(*ms));
                self.agent.handle_timeout(self.now);
                self.manager.handle_timeout(self.now);
            }
            Op::Disconnect => {
                if self.up {
                    self.up = false;
                    self.to_agent.clear();
                    self.to_manager.clear();
                    self.agent.disconnected(self.now);
                    self.manager.disconnected(self.now);
                }
            }
            Op::Connect => {
                if !self.up {
                    self.up = true;
                    self.agent.connected(self.now);
                    self.manager.connected(self.now);
                }
            }
        }
        self.collect()
    }

    /// Leaves the link up and runs everything to completion.
    fn finish_all(&mut self) -> Result<(), TestCaseError> {
        self.step(&Op::Connect)?;
        for _ in 0..20_000 {
            let mut moved = false;
            if let Some(t) = self.running.pop_front() {
                self.agent.task_done(self.now, t, Ok(Bytes::new()));
                moved = true;
            }
            if let Some(m) = self.to_agent.pop_front() {
                self.deliver_to_agent(m)?;
                moved = true;
            }
            if let Some(m) = self.to_manager.pop_front() {
                self.manager.handle_message(self.now, m);
                moved = true;
            }
            self.collect()?;
            if !moved {
                let next = [self.agent.poll_timeout(), self.manager.poll_timeout()]
                    .into_iter()
                    .flatten()
                    .min();
                match next {
                    Some(t) => {
                        self.now = self.now.max(t);
                        self.agent.handle_timeout(self.now);
                        self.manager.handle_timeout(self.now);
                        self.collect()?;
                    }
                    None => return Ok(()),
                }
            }
        }
        Err(TestCaseError::fail("did not finish"))
    }
}

fn check(ops: Vec<Op>, max_in_flight: usize) -> Result<(), TestCaseError> {
    let mut w = World::new(max_in_flight);
    for op in &ops {
        w.step(op)?;
    }
    w.finish_all()?;
    // (b) + (c): the answers are exactly the accepted ids, in order.
    prop_assert_eq!(&w.answered, &w.accepted);
    let unique: HashSet<_> = w.accepted.iter().collect();
    prop_assert_eq!(unique.len(), w.accepted.len(), "an id was accepted twice");
    prop_assert!(w.pending.is_empty(), "unanswered: {:?}", w.pending);
    // Every RPC the manager queued completed (answer, fault or timeout).
    prop_assert_eq!(w.completed_rpcs, w.queued_rpcs);
    prop_assert!(!w.agent.in_session() && !w.manager.in_session());
    Ok(())
}

proptest! {
    // PROPTEST_CASES raises the count for a longer search (default 200).
    #![proptest_config(ProptestConfig {
        cases: std::env::var("PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(200),
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    fn strict_tr069(ops in proptest::collection::vec(op(), 1..120)) {
        check(ops, 1)?;
    }

    #[test]
    fn pipelined(ops in proptest::collection::vec(op(), 1..120)) {
        check(ops, 4)?;
    }
}
