//! Watching the hub and the connection: presence (who is connected) and
//! the client's events (connected, resumed, slow consumer, ...).

use std::sync::Arc;

use pyo3::prelude::*;
use pyo3::types::{PyDict, PyList};
use switchboard::{ClientEvent, PresenceEvent};

use crate::glue::in_runtime;

/// A client connected to the hub.
#[pyclass(frozen, get_all, module = "switchboard._native")]
pub struct ClientInfo {
    /// Its id.
    client_id: String,
    /// Transport: `"tcp"`, `"tls"`, `"unix"`, `"ws"`, `"wss"`, `"http"` or
    /// `"memory"`.
    transport: String,
    /// Remote address as text.
    addr: String,
    /// When it connected, ms since the Unix epoch.
    connected_at_ms: u64,
    /// What it says it is (program and version).
    agent: String,
    /// Whether it uses reliable delivery.
    reliable: bool,
    /// The principal of the hub's permission policy; `""` without a policy.
    principal: String,
}

#[pymethods]
impl ClientInfo {
    fn __repr__(&self) -> String {
        format!(
            "ClientInfo(client_id={:?}, transport={:?}, addr={:?})",
            self.client_id, self.transport, self.addr
        )
    }
}

impl ClientInfo {
    pub(crate) fn from_rust(c: &switchboard::ClientInfo) -> ClientInfo {
        ClientInfo {
            client_id: c.client_id.clone(),
            transport: c.transport.clone(),
            addr: c.addr.clone(),
            connected_at_ms: c.connected_at_ms,
            agent: c.agent.clone(),
            reliable: c.reliable,
            principal: c.principal.clone(),
        }
    }
}

/// A list of [`ClientInfo`] for Python.
pub(crate) fn clients_to_py(
    py: Python<'_>,
    clients: &[switchboard::ClientInfo],
) -> PyResult<Py<PyList>> {
    let items = clients
        .iter()
        .map(|c| Py::new(py, ClientInfo::from_rust(c)))
        .collect::<PyResult<Vec<_>>>()?;
    Ok(PyList::new(py, items)?.unbind())
}

/// A client joining (`kind == "joined"`) or leaving (`"left"`) the hub.
#[pyclass(frozen, get_all, module = "switchboard._native")]
pub struct PresenceChange {
    /// `"joined"` or `"left"`.
    kind: &'static str,
    /// The client.
    client: Py<ClientInfo>,
    /// Why it left, as the hub reported it; `""` on joining.
    reason: String,
}

/// Presence: `current` lists the clients connected when it started;
/// `next()` resolves to the next [`PresenceChange`], or `None` once the
/// client is closed.
#[pyclass(frozen, module = "switchboard._native")]
pub struct Presence {
    current: Py<PyList>,
    inner: Arc<tokio::sync::Mutex<Option<switchboard::Presence>>>,
}

impl Presence {
    pub(crate) fn new(py: Python<'_>, presence: switchboard::Presence) -> PyResult<Presence> {
        Ok(Presence {
            current: clients_to_py(py, presence.current())?,
            inner: Arc::new(tokio::sync::Mutex::new(Some(presence))),
        })
    }
}

impl Drop for Presence {
    fn drop(&mut self) {
        if let Ok(mut p) = self.inner.try_lock() {
            let p = p.take();
            in_runtime(|| drop(p));
        }
    }
}

#[pymethods]
impl Presence {
    /// The clients connected when presence started, sorted by id.
    #[getter]
    fn current(&self, py: Python<'_>) -> Py<PyList> {
        self.current.clone_ref(py)
    }

    /// The next change, or `None` once the client is closed.
    fn next<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let inner = self.inner.clone();
        crate::glue::future_into_py(py, async move {
            let mut guard = inner.lock().await;
            let Some(p) = guard.as_mut() else {
                return Ok(None);
            };
            let Some(event) = p.recv().await else {
                return Ok(None);
            };
            crate::glue::attach(|py| {
                let (kind, client, reason) = match event {
                    PresenceEvent::Joined(c) => ("joined", c, String::new()),
                    PresenceEvent::Left { client, reason } => ("left", client, reason),
                    _ => return Ok(None),
                };
                let client = Py::new(py, ClientInfo::from_rust(&client))?;
                Py::new(
                    py,
                    PresenceChange {
                        kind,
                        client,
                        reason,
                    },
                )
                .map(Some)
            })
        })
    }

    /// Stops watching presence.
    fn close<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let inner = self.inner.clone();
        crate::glue::future_into_py(py, async move {
            let p = inner.lock().await.take();
            drop(p);
            Ok(())
        })
    }
}

/// Something that happened to the client's connection or streams: `kind`
/// names it (`"connected"`, `"disconnected"`, `"resumed"`, `"state_lost"`,
/// `"slow_consumer"`, `"hub_dropped"`, `"undelivered"`, `"hub_error"`,
/// `"fenced"`, `"closed"`, `"lagged"`), `data` holds its fields.
#[pyclass(frozen, get_all, module = "switchboard._native")]
pub struct Event {
    /// What happened.
    kind: &'static str,
    /// Its fields, by name.
    data: Py<PyDict>,
}

impl Event {
    /// An event of `kind` with the fields `data`.
    pub(crate) fn new(kind: &'static str, data: Py<PyDict>) -> Event {
        Event { kind, data }
    }
}

#[pymethods]
impl Event {
    fn __repr__(&self, py: Python<'_>) -> String {
        format!("Event(kind={:?}, data={})", self.kind, self.data.bind(py))
    }
}

fn event_to_py(py: Python<'_>, e: ClientEvent) -> PyResult<Py<Event>> {
    let d = PyDict::new(py);
    let kind = match e {
        ClientEvent::Connected { addr } => {
            d.set_item("addr", addr.to_string())?;
            "connected"
        }
        ClientEvent::Disconnected { reason } => {
            d.set_item("reason", reason)?;
            "disconnected"
        }
        ClientEvent::Resumed { addr, generation } => {
            d.set_item("addr", addr.to_string())?;
            d.set_item("generation", generation)?;
            "resumed"
        }
        ClientEvent::StateLost { addr, generation } => {
            d.set_item("addr", addr.to_string())?;
            d.set_item("generation", generation)?;
            "state_lost"
        }
        ClientEvent::SlowConsumer {
            sub_id,
            pattern,
            dropped,
            total,
        } => {
            d.set_item("sub_id", sub_id)?;
            d.set_item("pattern", pattern)?;
            d.set_item("dropped", dropped)?;
            d.set_item("total", total)?;
            "slow_consumer"
        }
        ClientEvent::HubDropped {
            dropped,
            queue_depth,
        } => {
            d.set_item("dropped", dropped)?;
            d.set_item("queue_depth", queue_depth)?;
            "hub_dropped"
        }
        ClientEvent::Undelivered { stream, dropped } => {
            d.set_item("stream", stream)?;
            d.set_item("dropped", dropped)?;
            "undelivered"
        }
        ClientEvent::HubError { code, message } => {
            d.set_item("code", code.as_str())?;
            d.set_item("message", message)?;
            "hub_error"
        }
        ClientEvent::Fenced { message } => {
            d.set_item("message", message)?;
            "fenced"
        }
        ClientEvent::Closed { reason } => {
            d.set_item("reason", reason)?;
            "closed"
        }
        ClientEvent::Lagged { missed } => {
            d.set_item("missed", missed)?;
            "lagged"
        }
        other => {
            d.set_item("description", format!("{other:?}"))?;
            "other"
        }
    };
    Py::new(
        py,
        Event {
            kind,
            data: d.unbind(),
        },
    )
}

/// The client's events from now on: `next()` resolves to the next
/// [`Event`], or `None` after the `"closed"` one.
#[pyclass(frozen, module = "switchboard._native")]
pub struct Events {
    inner: Arc<tokio::sync::Mutex<switchboard::Events>>,
}

impl Events {
    pub(crate) fn new(events: switchboard::Events) -> Events {
        Events {
            inner: Arc::new(tokio::sync::Mutex::new(events)),
        }
    }
}

#[pymethods]
impl Events {
    /// The next event, or `None` once the stream ended.
    fn next<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let inner = self.inner.clone();
        crate::glue::future_into_py(py, async move {
            let Some(e) = inner.lock().await.recv().await else {
                return Ok(None);
            };
            crate::glue::attach(|py| event_to_py(py, e)).map(Some)
        })
    }
}
