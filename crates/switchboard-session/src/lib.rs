//! TR-069-style ordered sessions over a long connection.
//!
//! An **agent** (CPE-like) keeps a long connection to a **manager**
//! (ACS-like) so the manager can reach it at any time. The manager may push
//! RPCs whenever it likes; the agent turns every push into a task in a
//! bounded queue, runs one task at a time in queue order, and sends each
//! result back with the request's id unchanged. Pushes never interleave with
//! the session rules:
//!
//! ```text
//! agent                                   manager
//!   │ ── Inform{events, retry_count} ────▶ │  anything else first: Fault 8001
//!   │ ◀─ InformResponse ────────────────── │  events delivered (cleared)
//!   │ ── Rpc (agent request) ────────────▶ │  optional, one at a time,
//!   │ ◀─ RpcResult / Fault ─────────────── │  unless the manager holds them
//!   │ ── Empty ("nothing more") ─────────▶ │
//!   │ ◀─ Rpc{id} ───────────────────────── │  ≤ max_in_flight outstanding
//!   │ ── RpcResult{id} / Fault{id} ──────▶ │  in queue order, one task at a time
//!   │ ◀─ Empty ─────────────────────────── │  session over on both sides
//! ```
//!
//! The protocol logic lives in two sans-IO state machines, [`Agent`] and
//! [`Manager`]: they take messages and the current time, and return messages
//! to send, the next timer and events for the application. They never touch
//! sockets, spawn tasks, read clocks or draw randomness of their own (the
//! agent's retry jitter comes from a caller-given seed). The [`driver`]
//! module runs them on tokio over any framed duplex of wire frames.
//!
//! # Example: the two state machines talking in memory
//!
//! ```
//! use std::time::Instant;
//! use switchboard_session::{Agent, AgentConfig, AgentEvent, Event, Manager, ManagerConfig, ManagerEvent};
//!
//! let now = Instant::now();
//! let mut agent = Agent::new(AgentConfig::new("cpe-1"), 7);
//! let mut manager = Manager::new(ManagerConfig::default());
//! agent.connected(now);
//! manager.connected(now);
//!
//! // The manager queues an RPC at any time; the agent reports a boot.
//! let rpc = manager.queue_rpc(now, "GetParameterValues", "Device.".into())?;
//! agent.add_event(now, Event::new(Event::BOOT))?;
//!
//! let mut answer = None;
//! for _ in 0..20 {
//!     while let Some(m) = agent.poll_transmit() { manager.handle_message(now, m); }
//!     while let Some(m) = manager.poll_transmit() { agent.handle_message(now, m); }
//!     while let Some(ev) = agent.poll_event() {
//!         if let AgentEvent::RunTask { task, method, payload, .. } = ev {
//!             assert_eq!(method, "GetParameterValues");
//!             let mut out = payload.to_vec();
//!             out.extend_from_slice(b"Uptime=42");
//!             agent.task_done(now, task, Ok(out.into()));
//!         }
//!     }
//!     while let Some(ev) = manager.poll_event() {
//!         if let ManagerEvent::RpcCompleted { id, result } = ev {
//!             assert_eq!(id, rpc);
//!             answer = Some(result?.payload);
//!         }
//!     }
//! }
//! assert_eq!(answer.as_deref(), Some(&b"Device.Uptime=42"[..]));
//! assert!(!agent.in_session() && !manager.in_session());
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! # Rules the engine keeps
//!
//! - A session begins with `Inform`; no manager RPC runs before the
//!   `InformResponse`; RPCs run one at a time in arrival order and each answer
//!   carries its request's id. A push during a session is queued and runs in
//!   order; a push received after the manager's `Empty` waits for the next
//!   session.
//! - Connection requests are acknowledged at once; several before or during
//!   a session produce exactly one follow-up session carrying
//!   `"6 CONNECTION REQUEST"`.
//! - Unknown method → fault 8000, handler error → its fault, handler panic →
//!   fault 8002; the queue continues in every case.
//! - No answer within the response timeout (30 s) fails the session; failed
//!   sessions are retried after [`RetryPolicy::wait`]; a new event during the
//!   wait starts the session at once. Events survive failures by
//!   [`EventClass`].
//! - Limits: RPCs per session, queue lengths, duplicate ids ignored while the
//!   original is queued or running.
//! - A failed session loses nothing accepted: the agent keeps its queue and
//!   re-sends the answers it gave in the failed session; the manager re-sends
//!   its unanswered RPCs with the same ids; an id runs at most once.
//!
//! The drivers in [`driver`] put this on tokio; `examples/agent_manager.rs`
//! shows an agent and a manager talking over loopback TCP.
//!
//! # Pipelining
//!
//! Strict TR-069 allows one outstanding request per direction, which is
//! [`ManagerConfig::max_in_flight`]`= 1` (the default). A larger value lets
//! the manager push many RPCs without waiting; the agent queues them and
//! still runs them one at a time and answers in order, which is what the
//! seed's long-connection queue is for.

#![warn(missing_docs)]

mod agent;
mod common;
pub mod driver;
mod manager;

pub use agent::{Agent, AgentConfig, AgentEvent, TaskId};
pub use common::{fault, fault_code, Event, EventClass, FailReason, QueueFull, RetryPolicy};
pub use manager::{Manager, ManagerConfig, ManagerEvent, RpcError, RpcId};
