//! Python bindings of the switchboard client: the native module
//! `switchboard._native`, wrapped by the pure-Python package `switchboard`
//! (`python/switchboard/`), which is the API users see.
//!
//! Every call that waits returns an asyncio awaitable
//! ([`pyo3_async_runtimes`]): the work runs on one tokio runtime per
//! process, without the GIL; Python handlers run on the caller's event
//! loop. Errors become the exceptions of `switchboard._errors`.

use pyo3::prelude::*;
use switchboard::Client;

use crate::glue::seconds;

mod client;
mod error;
mod glue;
mod observe;
mod payload;
mod session;

pub use client::{
    Inbox, KvEvent, KvWatch, Message, NativeClient, Reply, Request, Serving, Subscription,
};
pub use observe::{ClientInfo, Event, Events, Presence, PresenceChange};
pub use session::{SessionAgent, SessionEvents, SessionManager};

/// Connects to a hub as `client_id`: by address when `addr` is given,
/// otherwise by discovery of `service`. The token, when given, replaces the
/// per-user secret file.
///
/// `resume_wait` is how long, after losing the hub, the client keeps
/// looking for it (or its standby) to resume the session; `stream_capacity`
/// how many items each subscription or inbox holds before pushing back.
#[pyfunction]
#[allow(clippy::too_many_arguments)] // Python's keyword arguments
#[pyo3(signature = (client_id, addr=None, token=None, service=None, request_timeout=None, connect_timeout=None, resume_wait=None, stream_capacity=None))]
fn connect<'py>(
    py: Python<'py>,
    client_id: String,
    addr: Option<String>,
    token: Option<String>,
    service: Option<String>,
    request_timeout: Option<f64>,
    connect_timeout: Option<f64>,
    resume_wait: Option<f64>,
    stream_capacity: Option<usize>,
) -> PyResult<Bound<'py, PyAny>> {
    let mut builder = Client::builder(client_id);
    if let Some(addr) = addr {
        builder = builder.addr(addr);
    }
    if let Some(token) = token {
        builder = builder.token(&token);
    }
    if let Some(service) = service {
        builder = builder.service(service);
    }
    if let Some(t) = request_timeout {
        builder = builder.request_timeout(seconds("request_timeout", t)?);
    }
    if let Some(t) = connect_timeout {
        builder = builder.connect_timeout(seconds("connect_timeout", t)?);
    }
    if let Some(t) = resume_wait {
        builder = builder.resume_wait(seconds("resume_wait", t)?);
    }
    if let Some(n) = stream_capacity {
        builder = builder.stream_capacity(n);
    }
    crate::glue::future_into_py(py, async move {
        let client = builder.connect().await.map_err(error::to_py)?;
        Ok(NativeClient::new(client))
    })
}

/// The native module.
#[pymodule]
fn _native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    glue::init_runtime();
    m.add_function(wrap_pyfunction!(connect, m)?)?;
    m.add_function(wrap_pyfunction!(glue::exiting, m)?)?;
    m.add_class::<NativeClient>()?;
    m.add_class::<Message>()?;
    m.add_class::<Request>()?;
    m.add_class::<Reply>()?;
    m.add_class::<Subscription>()?;
    m.add_class::<Serving>()?;
    m.add_class::<Inbox>()?;
    m.add_class::<KvEvent>()?;
    m.add_class::<KvWatch>()?;
    m.add_class::<ClientInfo>()?;
    m.add_class::<Presence>()?;
    m.add_class::<PresenceChange>()?;
    m.add_class::<Event>()?;
    m.add_class::<Events>()?;
    m.add_class::<SessionManager>()?;
    m.add_class::<SessionAgent>()?;
    m.add_class::<SessionEvents>()?;
    Ok(())
}
