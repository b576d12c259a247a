//! A simulated link between an agent and a manager core, with a simulated
//! clock. No tokio, no sockets.

#![allow(dead_code)]

use std::time::{Duration, Instant};

use bytes::Bytes;
use switchboard_session::{
    Agent, AgentConfig, AgentEvent, Manager, ManagerConfig, ManagerEvent, TaskId,
};
use switchboard_wire::proto::{self, session::Body};

/// Direction of a message on the simulated link.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dir {
    ToManager,
    ToAgent,
}

pub struct Sim {
    pub origin: Instant,
    pub now: Instant,
    pub agent: Agent,
    pub manager: Manager,
    pub agent_events: Vec<AgentEvent>,
    pub manager_events: Vec<ManagerEvent>,
    /// Every message that crossed the link, in order.
    pub wire: Vec<(Dir, proto::Session)>,
    /// Run tasks at once, answering with the payload echoed.
    pub auto_run: bool,
    /// Tasks started but not reported (when `auto_run` is off).
    pub running: Vec<(TaskId, String, String, Bytes)>,
    pub up: bool,
}

impl Sim {
    pub fn new(agent: AgentConfig, manager: ManagerConfig) -> Sim {
        let now = Instant::now();
        Sim {
            origin: now,
            now,
            agent: Agent::new(agent, 42),
            manager: Manager::new(manager),
            agent_events: Vec::new(),
            manager_events: Vec::new(),
            wire: Vec::new(),
            auto_run: true,
            running: Vec::new(),
            up: false,
        }
    }

    pub fn default_pair() -> Sim {
        Sim::new(AgentConfig::new("cpe-1"), ManagerConfig::default())
    }

    pub fn connect(&mut self) {
        self.up = true;
        self.agent.connected(self.now);
        self.manager.connected(self.now);
        self.settle();
    }

    pub fn disconnect(&mut self) {
        self.up = false;
        // In-flight messages are lost with the connection.
        while self.agent.poll_transmit().is_some() {}
        while self.manager.poll_transmit().is_some() {}
        self.agent.disconnected(self.now);
        self.manager.disconnected(self.now);
        self.settle();
    }

    /// Exchanges messages and events until nothing moves.
    pub fn settle(&mut self) {
        for _ in 0..100_000 {
            let mut moved = false;
            while let Some(m) = self.agent.poll_transmit() {
                moved = true;
                if self.up {
                    self.wire.push((Dir::ToManager, m.clone()));
                    self.manager.handle_message(self.now, m);
                }
            }
            while let Some(m) = self.manager.poll_transmit() {
                moved = true;
                if self.up {
                    self.wire.push((Dir::ToAgent, m.clone()));
                    self.agent.handle_message(self.now, m);
                }
            }
            while let Some(ev) = self.agent.poll_event() {
                moved = true;
                if let AgentEvent::RunTask {
                    task,
                    id,
                    method,
                    payload,
                } = &ev
                {
                    if self.auto_run {
                        self.agent.task_done(self.now, *task, Ok(payload.clone()));
                    } else {
                        self.running
                            .push((*task, id.clone(), method.clone(), payload.clone()));
                    }
                }
                self.agent_events.push(ev);
            }
            while let Some(ev) = self.manager.poll_event() {
                moved = true;
                self.manager_events.push(ev);
            }
            if !moved {
                return;
            }
        }
        panic!("simulation did not settle");
    }

    /// Advances the clock by `d`, firing timers on the way.
    pub fn advance(&mut self, d: Duration) {
        let end = self.now + d;
        for _ in 0..10_000 {
            let next = [self.agent.poll_timeout(), self.manager.poll_timeout()]
                .into_iter()
                .flatten()
                .filter(|t| *t <= end)
                .min();
            let Some(t) = next else { break };
            self.now = t.max(self.now);
            self.agent.handle_timeout(self.now);
            self.manager.handle_timeout(self.now);
            self.settle();
        }
        self.now = end;
        self.agent.handle_timeout(self.now);
        self.manager.handle_timeout(self.now);
        self.settle();
    }

    /// Finishes the oldest started task (manual mode).
    pub fn finish(&mut self, result: Result<Bytes, proto::Fault>) -> String {
        let (task, id, _, _) = self.running.remove(0);
        self.agent.task_done(self.now, task, result);
        self.settle();
        id
    }

    /// Delivers a message to the agent as if the manager had sent it.
    pub fn deliver_to_agent(&mut self, body: Body, session_id: u64) {
        let m = proto::Session {
            peer: String::new(),
            session_id,
            body: Some(body),
        };
        self.wire.push((Dir::ToAgent, m.clone()));
        self.agent.handle_message(self.now, m);
        self.settle();
    }

    /// Delivers a message to the manager as if the agent had sent it.
    pub fn deliver_to_manager(&mut self, body: Body, session_id: u64) {
        let m = proto::Session {
            peer: String::new(),
            session_id,
            body: Some(body),
        };
        self.wire.push((Dir::ToManager, m.clone()));
        self.manager.handle_message(self.now, m);
        self.settle();
    }

    pub fn sent(&self, dir: Dir) -> Vec<&Body> {
        self.wire
            .iter()
            .filter(|(d, _)| *d == dir)
            .filter_map(|(_, m)| m.body.as_ref())
            .collect()
    }

    pub fn count_informs(&self) -> usize {
        self.sent(Dir::ToManager)
            .into_iter()
            .filter(|b| matches!(b, Body::Inform(_)))
            .count()
    }

    pub fn informs(&self) -> Vec<proto::Inform> {
        self.sent(Dir::ToManager)
            .into_iter()
            .filter_map(|b| match b {
                Body::Inform(i) => Some(i.clone()),
                _ => None,
            })
            .collect()
    }

    pub fn completed(&self) -> Vec<(u64, Result<Bytes, String>)> {
        self.manager_events
            .iter()
            .filter_map(|e| match e {
                ManagerEvent::RpcCompleted { id, result } => Some((
                    id.0,
                    result
                        .as_ref()
                        .map(|r| r.payload.clone())
                        .map_err(|e| e.to_string()),
                )),
                _ => None,
            })
            .collect()
    }

    pub fn failures(&self) -> Vec<(u32, Duration)> {
        self.agent_events
            .iter()
            .filter_map(|e| match e {
                AgentEvent::SessionFailed { retry, wait, .. } => Some((*retry, *wait)),
                _ => None,
            })
            .collect()
    }
}

pub fn rpc(id: &str, method: &str, payload: &'static [u8]) -> Body {
    Body::Rpc(proto::Rpc {
        id: id.into(),
        method: method.into(),
        payload: Bytes::from_static(payload),
        hold_requests: false,
    })
}
