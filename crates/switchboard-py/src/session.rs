//! The session engine over the hub: a manager that pushes ordered RPCs to
//! agents, and an agent whose RPCs a Python function answers.

use std::sync::Arc;

use parking_lot::Mutex;
use pyo3::prelude::*;
use switchboard::session::driver::{AgentHandle, ManagerHandle, ManagerOptions, SessionError};
use switchboard::session::{fault, fault_code, AgentConfig};
use switchboard::{Bytes, Client};
use tokio::sync::{mpsc, oneshot};

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
}

impl SessionManager {
    pub(crate) fn start(client: &Client) -> SessionManager {
        in_runtime(|| {
            let handle = client.session_manager(ManagerOptions::default());
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
            SessionManager { handle, pushes }
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

    /// Stops the manager.
    fn close<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let handle = self.handle.clone();
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
    handle: Arc<Mutex<Option<AgentHandle>>>,
}

impl Drop for SessionAgent {
    fn drop(&mut self) {
        let handle = self.handle.lock().take();
        in_runtime(|| drop(handle));
    }
}

impl SessionAgent {
    pub(crate) fn start(
        py: Python<'_>,
        client: &Client,
        manager_id: &str,
        device_id: &str,
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
        let handle =
            in_runtime(|| client.session_agent(manager_id, AgentConfig::new(device_id), run));
        Ok(SessionAgent {
            handle: Arc::new(Mutex::new(Some(handle))),
        })
    }
}

#[pymethods]
impl SessionAgent {
    /// Stops the agent.
    fn close<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let handle = self.handle.lock().take();
        crate::glue::future_into_py(py, async move {
            if let Some(h) = handle {
                // Stopping reports how the agent ended; closing wants it
                // stopped, whatever that was.
                let _ = h.shutdown().await;
            }
            Ok(())
        })
    }
}
