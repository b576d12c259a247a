//! The manager (ACS-like) side: a sans-IO state machine for one agent.
//!
//! RPCs can be queued at any time. They are sent only inside a session,
//! after the agent's `Inform` was accepted and the agent said it has nothing
//! more (`Empty`); at most `max_in_flight` are outstanding at once (1 for
//! strict TR-069). When nothing is left the manager sends `Empty` and the
//! session ends. With RPCs queued and no session open it sends a
//! `ConnectionRequest`.

use std::collections::VecDeque;
use std::fmt;
use std::time::{Duration, Instant};

use bytes::Bytes;
use switchboard_wire::proto::{self, session::Body};

use crate::common::{fault, fault_code, FailReason, QueueFull};

/// Settings of a [`Manager`].
#[derive(Clone, Debug)]
pub struct ManagerConfig {
    /// How long to wait for the agent before the session fails (30 s).
    pub response_timeout: Duration,
    /// Most RPCs outstanding at once within a session. 1 (the default) is
    /// strict TR-069: the next RPC goes only after the previous answer.
    /// Larger values pipeline RPCs; the agent still runs them one at a time
    /// and answers in order. Keep it at or below the agent's
    /// `AgentConfig::max_queue` (1024 by default): pushes beyond the agent's
    /// queue are refused with fault 8004.
    pub max_in_flight: usize,
    /// Most RPCs sent per session when the agent's `Inform` does not say
    /// (255); the agent's own `max_rpcs` wins when set.
    pub max_rpcs_per_session: u32,
    /// Most RPCs queued and outstanding per agent (10 000).
    pub max_queue: usize,
}

impl Default for ManagerConfig {
    fn default() -> Self {
        ManagerConfig {
            response_timeout: Duration::from_secs(30),
            max_in_flight: 1,
            max_rpcs_per_session: 255,
            max_queue: 10_000,
        }
    }
}

/// Handle of an RPC queued with [`Manager::queue_rpc`]; its decimal form is
/// the id sent on the wire.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RpcId(pub u64);

impl fmt::Display for RpcId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// Why an RPC failed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RpcError {
    /// The agent answered with a fault.
    #[error("the agent answered with fault {code}: {message}")]
    Fault {
        /// Fault code (see [`crate::fault_code`]).
        code: u32,
        /// The agent's explanation.
        message: String,
    },
    /// No answer came within the response timeout; whether the RPC ran is
    /// unknown.
    #[error(
        "no answer within the response timeout: the rpc may or may not have run; check the agent"
    )]
    Timeout,
}

/// What the manager tells its application.
#[derive(Clone, Debug, PartialEq)]
pub enum ManagerEvent {
    /// The agent opened a session; the `Inform` was accepted.
    SessionStarted {
        /// The agent's session number.
        session_id: u64,
        /// The `Inform` (device id, events, retry count, parameters).
        inform: proto::Inform,
    },
    /// The session ended normally.
    SessionEnded {
        /// The session's number.
        session_id: u64,
    },
    /// The session failed.
    SessionFailed {
        /// The session's number.
        session_id: u64,
        /// Why.
        reason: FailReason,
    },
    /// An RPC finished.
    RpcCompleted {
        /// The RPC's handle.
        id: RpcId,
        /// The agent's answer.
        result: Result<proto::RpcResult, RpcError>,
    },
    /// The agent sent a request of its own; answer it with
    /// [`Manager::respond`].
    AgentRequest {
        /// The request's id.
        id: String,
        /// Method name, e.g. `"TransferComplete"`.
        method: String,
        /// Arguments.
        payload: Bytes,
    },
    /// A result or fault whose id matches nothing outstanding was discarded.
    UnknownResultDiscarded {
        /// The id it carried.
        id: String,
    },
    /// A message that does not fit the session state was answered with a
    /// fault (or ignored).
    Rejected {
        /// The fault sent back.
        fault: proto::Fault,
    },
    /// The agent acknowledged a connection request.
    ConnectionRequestAcked {
        /// The request's nonce.
        nonce: u64,
    },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    Idle,
    /// `InformResponse` sent; the agent sends its requests, then `Empty`.
    AgentRequests,
    /// The agent sent `Empty`; the manager sends its RPCs.
    Rpcs,
}

#[derive(Debug)]
struct Queued {
    rid: RpcId,
    method: String,
    payload: Bytes,
}

#[derive(Debug)]
struct Outstanding {
    rid: RpcId,
    id: String,
    method: String,
    payload: Bytes,
}

/// The manager state machine for one agent.
#[derive(Debug)]
pub struct Manager {
    config: ManagerConfig,
    connected: bool,
    phase: Phase,
    session_id: u64,
    agent_max: u32,
    sent_this_session: u32,
    queue: VecDeque<Queued>,
    outstanding: VecDeque<Outstanding>,
    /// Outstanding RPCs outlived a failed session: send them again (same
    /// ids) when the next session reaches its RPC phase.
    resend: bool,
    agent_request: Option<String>,
    deadline: Option<Instant>,
    cr_wait_until: Option<Instant>,
    next_rpc: u64,
    next_nonce: u64,
    transmit: VecDeque<proto::Session>,
    out_events: VecDeque<ManagerEvent>,
}

impl Manager {
    /// A new manager for one agent, disconnected and idle.
    pub fn new(config: ManagerConfig) -> Manager {
        Manager {
            config,
            connected: false,
            phase: Phase::Idle,
            session_id: 0,
            agent_max: 0,
            sent_this_session: 0,
            queue: VecDeque::new(),
            outstanding: VecDeque::new(),
            resend: false,
            agent_request: None,
            deadline: None,
            cr_wait_until: None,
            next_rpc: 1,
            next_nonce: 1,
            transmit: VecDeque::new(),
            out_events: VecDeque::new(),
        }
    }

    /// The manager's settings.
    pub fn config(&self) -> &ManagerConfig {
        &self.config
    }

    /// Whether a session is open.
    pub fn in_session(&self) -> bool {
        self.phase != Phase::Idle
    }

    /// RPCs queued but not yet sent.
    pub fn queued(&self) -> usize {
        self.queue.len()
    }

    /// RPCs sent and not yet answered.
    pub fn outstanding(&self) -> usize {
        self.outstanding.len()
    }

    /// Queues an RPC for the agent. It is sent in the current session if
    /// possible; otherwise a connection request asks the agent for one.
    pub fn queue_rpc(
        &mut self,
        now: Instant,
        method: impl Into<String>,
        payload: Bytes,
    ) -> Result<RpcId, QueueFull> {
        if self.queue.len() + self.outstanding.len() >= self.config.max_queue {
            return Err(QueueFull {
                limit: self.config.max_queue,
            });
        }
        let rid = RpcId(self.next_rpc);
        self.next_rpc += 1;
        self.queue.push_back(Queued {
            rid,
            method: method.into(),
            payload,
        });
        match self.phase {
            Phase::Rpcs => self.pump(now),
            Phase::Idle => self.maybe_request_connection(now),
            Phase::AgentRequests => {}
        }
        Ok(rid)
    }

    /// Asks the agent to open a session now (`ConnectionRequest`), unless one
    /// is open. Returns the nonce, or `None` when not connected or in a
    /// session.
    pub fn request_connection(&mut self, now: Instant) -> Option<u64> {
        if !self.connected || self.phase != Phase::Idle {
            return None;
        }
        let nonce = self.next_nonce;
        self.next_nonce += 1;
        self.send(Body::ConnectionRequest(proto::ConnectionRequest { nonce }));
        self.cr_wait_until = Some(now + self.config.response_timeout);
        Some(nonce)
    }

    /// Answers the agent request `id` announced by
    /// [`ManagerEvent::AgentRequest`]. Returns false if `id` is not the
    /// request waiting for an answer.
    pub fn respond(&mut self, now: Instant, id: &str, result: Result<Bytes, proto::Fault>) -> bool {
        if self.agent_request.as_deref() != Some(id) || self.phase != Phase::AgentRequests {
            return false;
        }
        self.agent_request = None;
        let body = match result {
            Ok(payload) => Body::RpcResult(proto::RpcResult {
                id: id.to_owned(),
                method: String::new(),
                payload,
            }),
            Err(mut f) => {
                f.id = id.to_owned();
                Body::Fault(f)
            }
        };
        self.send(body);
        self.arm_deadline(now);
        true
    }

    /// The connection to the agent is up.
    pub fn connected(&mut self, now: Instant) {
        self.connected = true;
        if self.outstanding.is_empty() {
            self.maybe_request_connection(now);
        } else {
            // The agent holds these RPCs and retries on its own after its
            // retry wait; ask only if it stays silent.
            self.cr_wait_until = Some(now + self.config.response_timeout);
        }
    }

    /// The connection is lost: an open session fails. Outstanding RPCs stay
    /// outstanding and are sent again, with the same ids, in the next
    /// session (the agent runs each id at most once); they fail with
    /// [`RpcError::Timeout`] if that session does not bring their answers in
    /// time.
    pub fn disconnected(&mut self, _now: Instant) {
        self.connected = false;
        self.cr_wait_until = None;
        if self.phase != Phase::Idle {
            self.end(FailReason::Disconnected);
        }
    }

    /// Handles a message from the agent.
    pub fn handle_message(&mut self, now: Instant, msg: proto::Session) {
        let Some(body) = msg.body else {
            self.reject(
                String::new(),
                "session message without a body: send an inform to open a session",
            );
            return;
        };
        match (self.phase, body) {
            (_, Body::Inform(inform)) => {
                if self.phase != Phase::Idle {
                    self.end(FailReason::Superseded);
                }
                self.session_id = msg.session_id;
                self.phase = Phase::AgentRequests;
                self.agent_max = if inform.max_rpcs == 0 {
                    self.config.max_rpcs_per_session
                } else {
                    inform.max_rpcs
                };
                self.sent_this_session = 0;
                self.agent_request = None;
                self.cr_wait_until = None;
                self.deadline = None;
                self.send(Body::InformResponse(proto::InformResponse {
                    max_envelopes: 1,
                }));
                self.out_events.push_back(ManagerEvent::SessionStarted {
                    session_id: msg.session_id,
                    inform,
                });
                self.arm_deadline(now);
            }
            (_, Body::ConnectionRequestAck(ack)) => {
                self.out_events
                    .push_back(ManagerEvent::ConnectionRequestAcked { nonce: ack.nonce });
            }
            (Phase::Idle, Body::RpcResult(r)) => {
                self.out_events
                    .push_back(ManagerEvent::UnknownResultDiscarded { id: r.id });
            }
            (Phase::Idle, Body::Fault(f)) if !f.id.is_empty() => {
                self.out_events
                    .push_back(ManagerEvent::UnknownResultDiscarded { id: f.id });
            }
            (Phase::Idle, Body::Fault(_)) => {}
            (Phase::Idle, Body::Rpc(rpc)) => {
                self.reject(
                    rpc.id,
                    "no session open: every session begins with an inform",
                );
            }
            (Phase::Idle, _) => {
                self.reject(
                    String::new(),
                    "no session open: every session begins with an inform",
                );
            }
            (_, Body::RpcResult(r)) => {
                let id = r.id.clone();
                self.answer(now, id, Ok(r));
            }
            (_, Body::Fault(f)) if f.id.is_empty() => {
                self.end(FailReason::Aborted {
                    code: f.code,
                    message: f.message,
                });
            }
            (_, Body::Fault(f)) => {
                let id = f.id.clone();
                self.answer(
                    now,
                    id,
                    Err(RpcError::Fault {
                        code: f.code,
                        message: f.message,
                    }),
                );
            }
            (Phase::AgentRequests, Body::Rpc(rpc)) => {
                if self.agent_request.is_some() {
                    self.reject(
                        rpc.id,
                        "one agent request at a time: wait for the answer to the previous one",
                    );
                    return;
                }
                self.agent_request = Some(rpc.id.clone());
                self.deadline = None;
                self.out_events.push_back(ManagerEvent::AgentRequest {
                    id: rpc.id,
                    method: rpc.method,
                    payload: rpc.payload,
                });
            }
            (Phase::AgentRequests, Body::Empty(_)) => {
                self.phase = Phase::Rpcs;
                self.agent_request = None;
                self.deadline = None;
                if std::mem::take(&mut self.resend) {
                    // The agent ignores the ones it still holds (duplicate
                    // ids), has re-sent the answers it already gave, and
                    // runs the ones lost on the way.
                    let again: Vec<proto::Rpc> = self
                        .outstanding
                        .iter()
                        .map(|o| proto::Rpc {
                            id: o.id.clone(),
                            method: o.method.clone(),
                            payload: o.payload.clone(),
                            hold_requests: false,
                        })
                        .collect();
                    self.sent_this_session =
                        self.sent_this_session.saturating_add(again.len() as u32);
                    for rpc in again {
                        self.send(Body::Rpc(rpc));
                    }
                }
                self.pump(now);
            }
            (Phase::Rpcs, Body::Rpc(rpc)) => {
                self.reject(
                    rpc.id,
                    "request denied: after empty the agent may only answer",
                );
            }
            (Phase::Rpcs, Body::Empty(_)) => {}
            (_, Body::InformResponse(_) | Body::ConnectionRequest(_)) => {
                self.reject(String::new(), "message only an agent receives");
            }
        }
    }

    /// Handles the passing of time: response timeouts and unanswered
    /// connection requests (sent again).
    pub fn handle_timeout(&mut self, now: Instant) {
        if self.deadline.is_some_and(|d| now >= d) {
            self.deadline = None;
            self.send(Body::Fault(fault(
                String::new(),
                fault_code::INTERNAL_ERROR,
                "session aborted: no answer within the response timeout",
            )));
            let outstanding: Vec<_> = self.outstanding.drain(..).collect();
            for o in outstanding {
                self.out_events.push_back(ManagerEvent::RpcCompleted {
                    id: o.rid,
                    result: Err(RpcError::Timeout),
                });
            }
            self.end(FailReason::ResponseTimeout);
            self.maybe_request_connection(now);
        }
        if let Some(at) = self.cr_wait_until {
            if now >= at {
                self.cr_wait_until = None;
                self.maybe_request_connection(now);
            }
        }
    }

    /// The next message to send to the agent.
    pub fn poll_transmit(&mut self) -> Option<proto::Session> {
        self.transmit.pop_front()
    }

    /// The next event for the application.
    pub fn poll_event(&mut self) -> Option<ManagerEvent> {
        self.out_events.pop_front()
    }

    /// When [`Manager::handle_timeout`] must be called next.
    pub fn poll_timeout(&self) -> Option<Instant> {
        match (self.deadline, self.cr_wait_until) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    // ---- internals ----

    fn send(&mut self, body: Body) {
        self.transmit.push_back(proto::Session {
            peer: String::new(),
            session_id: if self.phase == Phase::Idle {
                0
            } else {
                self.session_id
            },
            body: Some(body),
        });
    }

    fn reject(&mut self, id: String, message: &str) {
        let f = fault(id, fault_code::REQUEST_DENIED, message);
        self.send(Body::Fault(f.clone()));
        self.out_events
            .push_back(ManagerEvent::Rejected { fault: f });
    }

    fn maybe_request_connection(&mut self, now: Instant) {
        if self.connected
            && self.phase == Phase::Idle
            && self.cr_wait_until.is_none()
            && (!self.queue.is_empty() || !self.outstanding.is_empty())
        {
            self.request_connection(now);
        }
    }

    fn answer(&mut self, now: Instant, id: String, result: Result<proto::RpcResult, RpcError>) {
        let Some(pos) = self.outstanding.iter().position(|o| o.id == id) else {
            self.out_events
                .push_back(ManagerEvent::UnknownResultDiscarded { id });
            return;
        };
        let o = self.outstanding.remove(pos).expect("position is valid");
        self.deadline = None;
        self.out_events
            .push_back(ManagerEvent::RpcCompleted { id: o.rid, result });
        if self.phase == Phase::Rpcs {
            self.pump(now);
        } else {
            self.arm_deadline(now);
        }
    }

    /// Sends what may be sent; ends the session when nothing is left.
    fn pump(&mut self, now: Instant) {
        while self.outstanding.len() < self.config.max_in_flight.max(1)
            && self.sent_this_session < self.agent_max
        {
            let Some(q) = self.queue.pop_front() else {
                break;
            };
            let id = q.rid.to_string();
            self.send(Body::Rpc(proto::Rpc {
                id: id.clone(),
                method: q.method.clone(),
                payload: q.payload.clone(),
                hold_requests: false,
            }));
            self.sent_this_session += 1;
            self.outstanding.push_back(Outstanding {
                rid: q.rid,
                id,
                method: q.method,
                payload: q.payload,
            });
        }
        if self.outstanding.is_empty()
            && (self.queue.is_empty() || self.sent_this_session >= self.agent_max)
        {
            self.send(Body::Empty(proto::Empty {}));
            let session_id = self.session_id;
            self.phase = Phase::Idle;
            self.deadline = None;
            self.out_events
                .push_back(ManagerEvent::SessionEnded { session_id });
            self.maybe_request_connection(now);
            return;
        }
        self.arm_deadline(now);
    }

    fn arm_deadline(&mut self, now: Instant) {
        let waiting = match self.phase {
            Phase::Idle => false,
            Phase::AgentRequests => self.agent_request.is_none(),
            Phase::Rpcs => !self.outstanding.is_empty(),
        };
        if !waiting {
            self.deadline = None;
        } else if self.deadline.is_none() {
            self.deadline = Some(now + self.config.response_timeout);
        }
    }

    fn end(&mut self, reason: FailReason) {
        let session_id = self.session_id;
        self.resend = !self.outstanding.is_empty();
        self.phase = Phase::Idle;
        self.deadline = None;
        self.agent_request = None;
        self.out_events
            .push_back(ManagerEvent::SessionFailed { session_id, reason });
    }
}
