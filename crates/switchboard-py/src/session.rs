//! The session engine over the hub: a manager that pushes ordered RPCs to
//! agents, and an agent whose RPCs a Python function answers.

use std::sync::Arc;

use parking_lot::Mutex;
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyList};
use switchboard::session::driver::{
    AgentHandle, AgentOptions, ManagerHandle, ManagerOptions, SessionError,
};
use switchboard::session::{fault, fault_code, AgentEvent, ManagerEvent};
use switchboard::{Bytes, Client};
use tokio::sync::{broadcast, mpsc, oneshot, watch};

use crate::observe::Event;

use crate::glue::{awaited, describe, in_runtime, HandlerFuture};
use crate::payload;

/// A session error as a Python exception: `Fault` (with `fault_code`) when
/// the agent answered with a fault, `RequestTimeout` without an answer in
/// time, `SessionError` otherwise; the message is the Rust one.
fn session_err(e: SessionError) -> PyErr {
    let (name, fault) = match &e {
        SessionError::Fault { code, .. } => ("Fault", Some(*code)),
        SessionError::Timeout => ("RequestTimeout", None),
        _ => ("SessionError", None),
    };
    let message = e.to_string();
    crate::glue::attach(|py| {
        let make = || -> PyResult<PyErr> {
            let class = py.import("switchboard._errors")?.getattr(name)?;
            let exc = class.call1((message,))?;
            exc.setattr("fault_code", fault)?;
            Ok(PyErr::from_value(exc))
        };
        make().unwrap_or_else(|err| err)
    })
}

/// An RPC to queue: agent, method, payload, and where its result goes.
type Push = (
    String,
    String,
    Bytes,
    oneshot::Sender<Result<Bytes, SessionError>>,
);

/// The manager side (ACS-like): pushes RPCs to agents by client id; each
/// agent runs its RPCs one at a time, in the order `rpc` was called.
#[pyclass(frozen, module = "switchboard._native")]
pub struct SessionManager {
    handle: ManagerHandle,
    /// RPCs in call order, queued by one task: awaitables run as separate
    /// tasks, which would queue them in any order.
    pushes: mpsc::UnboundedSender<Push>,
    /// Set by `close`, and dropped with the manager: either ends the
    /// event streams (the handle's event sender outlives both, in clones
    /// the client keeps for re-attaching after reconnects).
    closed: watch::Sender<bool>,
}

impl Drop for SessionManager {
    fn drop(&mut self) {
        // A manager nobody can reach any more: stop it.
        let handle = self.handle.clone();
        in_runtime(|| {
            tokio::spawn(async move { handle.shutdown().await });
        });
    }
}

impl SessionManager {
    pub(crate) fn start(client: &Client, options: ManagerOptions) -> SessionManager {
        in_runtime(|| {
            let handle = client.session_manager(options);
            let (pushes, mut rx) = mpsc::unbounded_channel::<Push>();
            let pusher = handle.clone();
            tokio::spawn(async move {
                while let Some((agent, method, payload, reply)) = rx.recv().await {
                    match pusher.push(agent, method, payload).await {
                        Ok(pending) => {
                            tokio::spawn(async move {
                                let _ = reply.send(pending.await.map(|r| r.payload));
                            });
                        }
                        Err(e) => {
                            let _ = reply.send(Err(e));
                        }
                    }
                }
            });
            SessionManager {
                handle,
                pushes,
                closed: watch::channel(false).0,
            }
        })
    }
}

#[pymethods]
impl SessionManager {
    /// Runs `method` with `payload` on agent `agent`, after the RPCs this
    /// manager was asked for before; resolves to the result's payload as
    /// `bytes`.
    fn rpc<'py>(
        &self,
        py: Python<'py>,
        agent: String,
        method: String,
        payload: &Bound<'py, PyAny>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let payload = payload::from_py(payload)?;
        let (reply, result) = oneshot::channel();
        // Queued now, in call order.
        let queued = self.pushes.send((agent, method, payload, reply)).is_ok();
        crate::glue::future_into_py(py, async move {
            if !queued {
                return Err(session_err(SessionError::Closed));
            }
            let result = result
                .await
                .unwrap_or(Err(SessionError::Closed))
                .map_err(session_err)?;
            Ok(crate::glue::attach(|py| payload::to_py(py, &result)))
        })
    }

    /// Asks agent `agent` to open a session now; resolves to `False` when
    /// it is not connected or already in a session.
    fn connection_request<'py>(
        &self,
        py: Python<'py>,
        agent: String,
    ) -> PyResult<Bound<'py, PyAny>> {
        let handle = self.handle.clone();
        crate::glue::future_into_py(py, async move {
            handle.connection_request(agent).await.map_err(session_err)
        })
    }

    /// The manager's events from now on (every agent's), as
    /// [`SessionEvents`]; they end once the manager is closed or dropped.
    fn events(&self) -> SessionEvents {
        SessionEvents::new(Source::Manager(
            self.handle.subscribe(),
            self.closed.subscribe(),
        ))
    }

    /// Stops the manager: pending RPCs fail, and its event streams end
    /// (after the events already sent).
    fn close<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let handle = self.handle.clone();
        self.closed.send_replace(true);
        crate::glue::future_into_py(py, async move {
            handle.shutdown().await;
            Ok(())
        })
    }
}

/// The agent side (CPE-like): reports to a manager and answers its RPCs
/// with a Python function.
#[pyclass(frozen, module = "switchboard._native")]
pub struct SessionAgent {
    /// Read-locked by calls to the running agent (which may wait long: a
    /// request waits for a session), write-locked by `close`, which first
    /// sets `closing` to end those waits.
    handle: Arc<tokio::sync::RwLock<Option<AgentHandle>>>,
    closing: watch::Sender<bool>,
    /// The agent's events, forwarded from its handle until the agent
    /// stops: `events()` resubscribes here without waiting for the
    /// handle's lock (this receiver's own backlog is never read).
    events: Mutex<broadcast::Receiver<AgentEvent>>,
}

impl Drop for SessionAgent {
    fn drop(&mut self) {
        self.closing.send_replace(true);
        if let Ok(mut handle) = self.handle.try_write() {
            let handle = handle.take();
            in_runtime(|| drop(handle));
        }
    }
}

impl SessionAgent {
    pub(crate) fn start(
        py: Python<'_>,
        client: &Client,
        manager_id: &str,
        options: AgentOptions,
        handler: Py<PyAny>,
    ) -> PyResult<SessionAgent> {
        let locals = pyo3_async_runtimes::tokio::get_current_locals(py)?;
        let handler = Arc::new(handler);
        let run = move |method: String, body: Bytes| {
            let handler = handler.clone();
            let locals = locals.clone();
            async move {
                let started = crate::glue::attach(|py| -> PyResult<HandlerFuture> {
                    let body = payload::to_py(py, &body);
                    awaited(&locals, handler.call1(py, (method, body))?.into_bound(py))
                });
                let result = match started {
                    Ok(fut) => fut.await,
                    Err(e) => Err(e),
                };
                crate::glue::attach(|py| {
                    result
                        .and_then(|v| payload::from_py(v.bind(py)))
                        .map_err(|e| {
                            // An exception's `fault_code` (an int) becomes the
                            // fault's code; otherwise an internal error.
                            let code = e
                                .value(py)
                                .getattr("fault_code")
                                .and_then(|c| c.extract::<u32>())
                                .unwrap_or(fault_code::INTERNAL_ERROR);
                            fault("", code, describe(py, &e))
                        })
                })
            }
        };
        let (tx, events) = broadcast::channel(1024);
        let handle = in_runtime(|| {
            let handle = client.session_agent_with(manager_id, options, run);
            let mut rx = handle.subscribe();
            tokio::spawn(async move {
                loop {
                    match rx.recv().await {
                        Ok(e) => {
                            let _ = tx.send(e);
                        }
                        Err(broadcast::error::RecvError::Lagged(_)) => continue,
                        Err(broadcast::error::RecvError::Closed) => break,
                    }
                }
            });
            handle
        });
        Ok(SessionAgent {
            handle: Arc::new(tokio::sync::RwLock::new(Some(handle))),
            closing: watch::channel(false).0,
            events: Mutex::new(events),
        })
    }
}

#[pymethods]
impl SessionAgent {
    /// Reports an event (`code`, e.g. `"4 VALUE CHANGE"`, with an optional
    /// command key): a session carrying it starts at once.
    #[pyo3(signature = (code, command_key=String::new()))]
    fn add_event<'py>(
        &self,
        py: Python<'py>,
        code: String,
        command_key: String,
    ) -> PyResult<Bound<'py, PyAny>> {
        let handle = self.handle.clone();
        let closing = self.closing.subscribe();
        crate::glue::future_into_py(py, async move {
            let event = switchboard::session::Event { code, command_key };
            let run = async move {
                match handle.read().await.as_ref() {
                    Some(h) => h.add_event(event).await,
                    None => Err(SessionError::Closed),
                }
            };
            until_closed(closing, run).await.map_err(session_err)
        })
    }

    /// Sends a request of the agent's own (`method`, e.g.
    /// `"TransferComplete"`, with `payload`) in its next session (one
    /// starts at once) and resolves to the manager's answer as `bytes`
    /// (a manager of this engine answers with an empty payload and
    /// reports the request as an `"agent_request"` event).
    #[pyo3(signature = (method, payload=None))]
    fn request<'py>(
        &self,
        py: Python<'py>,
        method: String,
        payload: Option<&Bound<'py, PyAny>>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let payload = payload
            .map(payload::from_py)
            .transpose()?
            .unwrap_or_default();
        let handle = self.handle.clone();
        let closing = self.closing.subscribe();
        crate::glue::future_into_py(py, async move {
            let run = async move {
                match handle.read().await.as_ref() {
                    Some(h) => h.request(method, payload).await,
                    None => Err(SessionError::Closed),
                }
            };
            let result = until_closed(closing, run).await.map_err(session_err)?;
            Ok(crate::glue::attach(|py| {
                payload::to_py(py, &result.payload)
            }))
        })
    }

    /// The agent's events from now on, as [`SessionEvents`].
    fn events(&self) -> SessionEvents {
        SessionEvents::new(Source::Agent(self.events.lock().resubscribe()))
    }

    /// Stops the agent.
    fn close<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let handle = self.handle.clone();
        self.closing.send_replace(true);
        crate::glue::future_into_py(py, async move {
            let handle = handle.write().await.take();
            if let Some(h) = handle {
                // Stopping reports how the agent ended; closing wants it
                // stopped, whatever that was.
                let _ = h.shutdown().await;
            }
            Ok(())
        })
    }
}

/// Runs `run` (a call on the agent, holding its read lock) until the
/// agent is closing: then fails with [`SessionError::Closed`], dropping
/// the call and its lock, so `close` need not wait for it.
async fn until_closed<T>(
    mut closing: watch::Receiver<bool>,
    run: impl std::future::Future<Output = Result<T, SessionError>>,
) -> Result<T, SessionError> {
    tokio::select! {
        r = run => r,
        _ = closing.wait_for(|c| *c) => Err(SessionError::Closed),
    }
}

/// Where session events come from.
enum Source {
    Agent(broadcast::Receiver<AgentEvent>),
    /// A manager's events, and whether it was closed.
    Manager(
        broadcast::Receiver<(String, ManagerEvent)>,
        watch::Receiver<bool>,
    ),
}

/// The next of a closed manager's events already sent; `Closed` after
/// the last.
fn drain<T: Clone>(rx: &mut broadcast::Receiver<T>) -> Result<T, broadcast::error::RecvError> {
    use broadcast::error::{RecvError, TryRecvError};
    match rx.try_recv() {
        Ok(e) => Ok(e),
        Err(TryRecvError::Lagged(n)) => Err(RecvError::Lagged(n)),
        Err(_) => Err(RecvError::Closed),
    }
}

/// A session engine's events: `next()` resolves to the next
/// [`Event`](crate::observe::Event) (`kind` and `data`; a manager's carry
/// `data["agent"]`), or `None` once the agent or manager stopped (was
/// closed or dropped). A reader that falls behind gets a `"lagged"`
/// event with the number missed.
#[pyclass(frozen, module = "switchboard._native")]
pub struct SessionEvents {
    inner: Arc<tokio::sync::Mutex<Source>>,
}

impl SessionEvents {
    fn new(source: Source) -> SessionEvents {
        SessionEvents {
            inner: Arc::new(tokio::sync::Mutex::new(source)),
        }
    }
}

#[pymethods]
impl SessionEvents {
    /// The next event, or `None` once the engine stopped.
    fn next<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let inner = self.inner.clone();
        crate::glue::future_into_py(py, async move {
            let mut source = inner.lock().await;
            let item = match &mut *source {
                Source::Agent(rx) => rx.recv().await.map(|e| (None, Item::Agent(e))),
                Source::Manager(rx, closed) => {
                    let next = if *closed.borrow() {
                        drain(rx)
                    } else {
                        tokio::select! {
                            biased;
                            r = rx.recv() => r,
                            // closed, or the manager dropped
                            _ = closed.wait_for(|c| *c) => drain(rx),
                        }
                    };
                    next.map(|(a, e)| (Some(a), Item::Manager(e)))
                }
            };
            crate::glue::attach(|py| {
                let d = PyDict::new(py);
                let kind = match item {
                    Ok((agent, item)) => {
                        if let Some(agent) = agent {
                            d.set_item("agent", agent)?;
                        }
                        match item {
                            Item::Agent(e) => agent_event(&d, e)?,
                            Item::Manager(e) => manager_event(&d, e)?,
                        }
                    }
                    Err(broadcast::error::RecvError::Lagged(n)) => {
                        d.set_item("missed", n)?;
                        "lagged"
                    }
                    Err(broadcast::error::RecvError::Closed) => return Ok(None),
                };
                Py::new(py, Event::new(kind, d.unbind())).map(Some)
            })
        })
    }
}

/// An event of either side.
enum Item {
    Agent(AgentEvent),
    Manager(ManagerEvent),
}

/// `(code, command_key)` pairs.
fn events_to_py<'py>(
    py: Python<'py>,
    events: impl IntoIterator<Item = (String, String)>,
) -> PyResult<Bound<'py, PyList>> {
    PyList::new(py, events.into_iter().collect::<Vec<_>>())
}

/// An agent's event into `d`; its kind.
fn agent_event(d: &Bound<'_, PyDict>, e: AgentEvent) -> PyResult<&'static str> {
    let py = d.py();
    Ok(match e {
        AgentEvent::SessionStarted {
            session_id,
            retry_count,
            events,
        } => {
            d.set_item("session_id", session_id)?;
            d.set_item("retry_count", retry_count)?;
            let events = events.into_iter().map(|e| (e.code, e.command_key));
            d.set_item("events", events_to_py(py, events)?)?;
            "session_started"
        }
        AgentEvent::InformAccepted { session_id } => {
            d.set_item("session_id", session_id)?;
            "inform_accepted"
        }
        AgentEvent::SessionEnded { session_id } => {
            d.set_item("session_id", session_id)?;
            "session_ended"
        }
        AgentEvent::SessionFailed {
            session_id,
            reason,
            retry,
            wait,
        } => {
            d.set_item("session_id", session_id)?;
            d.set_item("reason", reason.to_string())?;
            d.set_item("retry", retry)?;
            d.set_item("wait", wait.as_secs_f64())?;
            "session_failed"
        }
        AgentEvent::ConnectionRequested { .. } => "connection_requested",
        AgentEvent::PushRejected { fault } => {
            d.set_item("fault_code", fault.code)?;
            d.set_item("message", fault.message)?;
            "push_rejected"
        }
        other => {
            d.set_item("description", format!("{other:?}"))?;
            "other"
        }
    })
}

/// A manager's event into `d`; its kind.
fn manager_event(d: &Bound<'_, PyDict>, e: ManagerEvent) -> PyResult<&'static str> {
    let py = d.py();
    Ok(match e {
        ManagerEvent::SessionStarted { session_id, inform } => {
            d.set_item("session_id", session_id)?;
            d.set_item("device_id", inform.device_id)?;
            d.set_item("retry_count", inform.retry_count)?;
            d.set_item("parameters", inform.parameters)?;
            let events = inform.events.into_iter().map(|e| (e.code, e.command_key));
            d.set_item("events", events_to_py(py, events)?)?;
            "session_started"
        }
        ManagerEvent::SessionEnded { session_id } => {
            d.set_item("session_id", session_id)?;
            "session_ended"
        }
        ManagerEvent::SessionFailed { session_id, reason } => {
            d.set_item("session_id", session_id)?;
            d.set_item("reason", reason.to_string())?;
            "session_failed"
        }
        ManagerEvent::AgentRequest {
            id,
            method,
            payload,
        } => {
            d.set_item("id", id)?;
            d.set_item("method", method)?;
            d.set_item("payload", crate::payload::to_py(py, &payload))?;
            "agent_request"
        }
        ManagerEvent::Rejected { fault } => {
            d.set_item("fault_code", fault.code)?;
            d.set_item("message", fault.message)?;
            "rejected"
        }
        ManagerEvent::ConnectionRequestAcked { nonce } => {
            d.set_item("nonce", nonce)?;
            "connection_request_acked"
        }
        other => {
            d.set_item("description", format!("{other:?}"))?;
            "other"
        }
    })
}
