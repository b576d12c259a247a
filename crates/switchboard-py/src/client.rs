//! The native client and the objects it hands to Python.

use std::sync::Arc;

use parking_lot::Mutex;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyList, PyMapping};
use switchboard::{
    Client, Headers, IncomingRequest, MessageKind, Overflow, RequestOptions, ServeHandle,
    ServeOptions, SubscribeOptions,
};

use crate::glue::{awaited, describe, in_runtime, seconds, HandlerFuture};
use crate::{error, payload};

/// A running handler, until it is stopped (then `None`).
type ServeSlot = Arc<Mutex<Option<ServeHandle>>>;

/// A connected client (`switchboard.Client` wraps it).
#[pyclass(frozen, module = "switchboard._native")]
pub struct NativeClient {
    client: Client,
    /// Handlers started by `serve` and not stopped: they live as long as
    /// the client, whether or not Python keeps their `Serving`.
    serving: Arc<Mutex<Vec<ServeSlot>>>,
}

impl NativeClient {
    pub(crate) fn new(client: Client) -> NativeClient {
        NativeClient {
            client,
            serving: Arc::default(),
        }
    }
}

impl NativeClient {
    /// `ClientClosed` once the client is closed: for the calls that start
    /// something without asking the hub (which would find out only later,
    /// or never).
    fn ensure_open(&self) -> PyResult<()> {
        let closed = matches!(
            *self.client.state().borrow(),
            switchboard::ConnectionState::Closed { .. }
        );
        if closed {
            return Err(error::to_py(switchboard::ClientError::Closed));
        }
        Ok(())
    }
}

impl Drop for NativeClient {
    fn drop(&mut self) {
        let serving = std::mem::take(&mut *self.serving.lock());
        in_runtime(|| drop(serving));
    }
}

#[pymethods]
impl NativeClient {
    /// The client id.
    #[getter]
    fn id(&self) -> &str {
        self.client.id()
    }

    /// Publishes `payload` on `topic`, with optional headers.
    #[pyo3(signature = (topic, payload, headers=None))]
    fn publish<'py>(
        &self,
        py: Python<'py>,
        topic: String,
        payload: &Bound<'py, PyAny>,
        headers: Option<&Bound<'py, PyAny>>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let payload = payload::from_py(payload)?;
        let headers = headers.map(headers_from_py).transpose()?;
        let client = self.client.clone();
        crate::glue::future_into_py(py, async move {
            match headers {
                Some(h) => client.publish_with_headers(&topic, payload, h).await,
                None => client.publish(&topic, payload).await,
            }
            .map_err(error::to_py)
        })
    }

    /// Publishes `payload` on `topic` without the hub's confirmation
    /// (the facade's `publish_nowait`): queued on the connection at once
    /// when the send queue has room, and then `None` is returned (no
    /// awaitable, no wake-up of the event loop). When the queue is full it
    /// returns an awaitable that resolves once the message is queued
    /// (backpressure).
    fn publish_nowait<'py>(
        &self,
        py: Python<'py>,
        topic: String,
        payload: &Bound<'py, PyAny>,
    ) -> PyResult<Option<Bound<'py, PyAny>>> {
        let payload = payload::from_py(payload)?;
        let client = self.client.clone();
        use std::future::Future;
        let mut fut = Box::pin(async move {
            client
                .publish_nowait(&topic, payload)
                .await
                .map_err(error::to_py)
        });
        // One poll here, inside the runtime (the queue may arm a timer):
        // done at once unless the send queue is full.
        let first = in_runtime(|| {
            let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
            fut.as_mut().poll(&mut cx)
        });
        match first {
            std::task::Poll::Ready(r) => r.map(|()| None),
            std::task::Poll::Pending => crate::glue::future_into_py(py, fut).map(Some),
        }
    }

    /// Sends a one-way message to client `to`, with optional headers (a
    /// mapping or pairs of `str` keys and payload values).
    #[pyo3(signature = (to, payload, headers=None))]
    fn send<'py>(
        &self,
        py: Python<'py>,
        to: String,
        payload: &Bound<'py, PyAny>,
        headers: Option<&Bound<'py, PyAny>>,
    ) -> PyResult<Bound<'py, PyAny>> {
        check_target(&to)?;
        let payload = payload::from_py(payload)?;
        let headers = headers
            .map(headers_from_py)
            .transpose()?
            .unwrap_or_default();
        let client = self.client.clone();
        crate::glue::future_into_py(py, async move {
            client
                .send_with_headers(&to, payload, headers)
                .await
                .map_err(error::to_py)
        })
    }

    /// Direct messages (from `send`) and broadcasts to this client, from
    /// now on; resolves to an [`Inbox`].
    fn messages<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let client = self.client.clone();
        crate::glue::future_into_py(py, async move {
            let inbox = client.messages().await.map_err(error::to_py)?;
            Ok(Inbox {
                inner: Arc::new(tokio::sync::Mutex::new(Some(inbox))),
            })
        })
    }

    /// Sends a request to client `to` (or, with `service=True`, to one of
    /// the clients serving the service `to`); the reply's payload as
    /// `bytes`.
    /// With `full=True`, resolves to the whole [`Reply`] (payload, the
    /// replier's headers and id) instead.
    #[pyo3(signature = (to, payload, timeout=None, headers=None, method=None, service=false, full=false))]
    #[allow(clippy::too_many_arguments)] // Python's keyword arguments
    fn request<'py>(
        &self,
        py: Python<'py>,
        to: String,
        payload: &Bound<'py, PyAny>,
        timeout: Option<f64>,
        headers: Option<&Bound<'py, PyAny>>,
        method: Option<String>,
        service: bool,
        full: bool,
    ) -> PyResult<Bound<'py, PyAny>> {
        if !service {
            check_target(&to)?;
        }
        let payload = payload::from_py(payload)?;
        let mut options = RequestOptions::default();
        if let Some(t) = timeout {
            options = options.timeout(seconds("timeout", t)?);
        }
        if let Some(h) = headers {
            options = options.headers(headers_from_py(h)?);
        }
        if let Some(m) = method {
            options = options.method(m);
        }
        let client = self.client.clone();
        crate::glue::future_into_py(py, async move {
            let reply = if service {
                client.request_service(&to, payload, options).await
            } else {
                client.request_with_options(&to, payload, options).await
            }
            .map_err(error::to_py)?;
            crate::glue::attach(|py| -> PyResult<Py<PyAny>> {
                if full {
                    let reply = Reply {
                        payload: reply.payload,
                        headers: reply.headers,
                        sender: reply.from,
                    };
                    Ok(Py::new(py, reply)?.into_any())
                } else {
                    Ok(payload::to_py(py, &reply.payload).into_any())
                }
            })
        })
    }

    /// Subscribes to `pattern`; resolves to a [`Subscription`]. Options:
    /// a queue group (each message goes to one member), the stream's
    /// capacity, what to do when it is full (`"block"`, the default, pushes
    /// back; `"drop_newest"` and `"drop_oldest"` drop and count), and a
    /// number of messages after which the subscription ends by itself.
    #[pyo3(signature = (pattern, queue_group=None, capacity=None, overflow=None, max_messages=None))]
    fn subscribe<'py>(
        &self,
        py: Python<'py>,
        pattern: String,
        queue_group: Option<String>,
        capacity: Option<usize>,
        overflow: Option<&str>,
        max_messages: Option<u64>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let mut options = SubscribeOptions::default();
        if let Some(g) = queue_group {
            options = options.queue_group(g);
        }
        if let Some(c) = capacity {
            options = options.capacity(c);
        }
        if let Some(o) = overflow {
            options = options.overflow(match o {
                "block" => Overflow::Block,
                "drop_newest" => Overflow::DropNewest,
                "drop_oldest" => Overflow::DropOldest,
                other => {
                    return Err(pyo3::exceptions::PyValueError::new_err(format!(
                        "overflow is \"block\", \"drop_newest\" or \"drop_oldest\", not {other:?}"
                    )))
                }
            });
        }
        if let Some(n) = max_messages {
            options = options.max_messages(n);
        }
        let client = self.client.clone();
        crate::glue::future_into_py(py, async move {
            let sub = client
                .subscribe_with(&pattern, options)
                .await
                .map_err(error::to_py)?;
            Ok(Subscription {
                pattern,
                inner: Arc::new(tokio::sync::Mutex::new(Some(sub))),
            })
        })
    }

    /// Answers requests with `handler(request)`, a coroutine function (or
    /// a plain function) returning `bytes` or `str`; an exception becomes
    /// an error reply. Handlers run on the event loop that called `serve`.
    /// With `service`, answers the requests to that service (a name, or a
    /// pattern with `*` and `>`) instead of those to this client.
    #[pyo3(signature = (handler, concurrency=None, service=None))]
    fn serve<'py>(
        &self,
        py: Python<'py>,
        handler: Py<PyAny>,
        concurrency: Option<usize>,
        service: Option<String>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let locals = pyo3_async_runtimes::tokio::get_current_locals(py)?;
        let handler = Arc::new(handler);
        let mut options = ServeOptions::default();
        if let Some(n) = concurrency {
            options = options.concurrency(n);
        }
        let client = self.client.clone();
        let serving = self.serving.clone();
        let run = move |req: IncomingRequest| {
            let handler = handler.clone();
            let locals = locals.clone();
            async move {
                let started = crate::glue::attach(|py| -> PyResult<HandlerFuture> {
                    let request = Py::new(py, Request::new(py, &req)?)?;
                    awaited(&locals, handler.call1(py, (request,))?.into_bound(py))
                });
                let result = match started {
                    Ok(fut) => fut.await,
                    Err(e) => Err(e),
                };
                crate::glue::attach(|py| result.and_then(|v| reply_from_py(v.bind(py))))
                    .map_err(|e| crate::glue::attach(|py| describe(py, &e)))
            }
        };
        crate::glue::future_into_py(py, async move {
            let handle = match service {
                Some(name) => client.serve_service_with_headers(&name, options, run).await,
                None => client.serve_with_headers(options, run).await,
            }
            .map_err(error::to_py)?;
            let slot = Arc::new(Mutex::new(Some(handle)));
            serving.lock().push(slot.clone());
            Ok(Serving { slot })
        })
    }

    /// The value of `key` as `bytes`, or `None`.
    fn kv_get<'py>(&self, py: Python<'py>, key: String) -> PyResult<Bound<'py, PyAny>> {
        let kv = self.client.kv();
        crate::glue::future_into_py(py, async move {
            let entry = kv.get(&key).await.map_err(error::to_py)?;
            Ok(crate::glue::attach(|py| {
                entry.map(|e| payload::to_py(py, &e.value))
            }))
        })
    }

    /// Sets `key` to `value`; resolves to the new version.
    fn kv_set<'py>(
        &self,
        py: Python<'py>,
        key: String,
        value: &Bound<'py, PyAny>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let value = payload::from_py(value)?;
        let kv = self.client.kv();
        crate::glue::future_into_py(py, async move {
            kv.set(&key, value).await.map_err(error::to_py)
        })
    }

    /// Deletes `key`; resolves to whether it existed.
    fn kv_delete<'py>(&self, py: Python<'py>, key: String) -> PyResult<Bound<'py, PyAny>> {
        let kv = self.client.kv();
        crate::glue::future_into_py(
            py,
            async move { kv.delete(&key).await.map_err(error::to_py) },
        )
    }

    /// Presence: the clients connected now, then who joins and leaves;
    /// resolves to a [`Presence`](crate::observe::Presence).
    fn presence<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let client = self.client.clone();
        crate::glue::future_into_py(py, async move {
            let presence = client.presence().await.map_err(error::to_py)?;
            crate::glue::attach(|py| crate::observe::Presence::new(py, presence))
        })
    }

    /// The clients connected to the hub now, as a list of
    /// [`ClientInfo`](crate::observe::ClientInfo).
    fn clients<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let client = self.client.clone();
        crate::glue::future_into_py(py, async move {
            let clients = client.clients().await.map_err(error::to_py)?;
            crate::glue::attach(|py| crate::observe::clients_to_py(py, &clients))
        })
    }

    /// The hub's counters (clients, subscriptions, pending requests,
    /// messages and bytes in and out, ...) as a `dict`.
    fn status<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let client = self.client.clone();
        crate::glue::future_into_py(py, async move {
            let st = client.status().await.map_err(error::to_py)?;
            crate::glue::attach(|py| {
                let d = pyo3::types::PyDict::new(py);
                d.set_item("uptime_s", st.uptime_s)?;
                d.set_item("clients", st.clients)?;
                d.set_item("subscriptions", st.subscriptions)?;
                d.set_item("pending_requests", st.pending_requests)?;
                d.set_item("msgs_in", st.msgs_in)?;
                d.set_item("msgs_out", st.msgs_out)?;
                d.set_item("bytes_in", st.bytes_in)?;
                d.set_item("bytes_out", st.bytes_out)?;
                d.set_item("dropped", st.dropped)?;
                d.set_item("queue_depth", st.queue_depth)?;
                d.set_item("kv_keys", st.kv_keys)?;
                d.set_item("standby_addr", st.standby_addr)?;
                d.set_item("counters", st.counters)?;
                Ok(d.unbind())
            })
        })
    }

    /// Runs the session engine's manager over the hub: agents are the
    /// clients that run an agent for this client's id. Options (each
    /// `None` for the engine's default): `response_timeout` (seconds an
    /// agent may take to answer, 30), `max_in_flight` (RPCs outstanding
    /// at once in a session, 1), `max_rpcs_per_session` (255, when the
    /// agent does not say), `max_queue` (RPCs queued per agent, 10 000),
    /// `max_agents` (agents tracked, 10 000), `link_queue` (frames waiting
    /// to be written before the link is dropped, 8192).
    #[pyo3(signature = (response_timeout=None, max_in_flight=None, max_rpcs_per_session=None, max_queue=None, max_agents=None, link_queue=None))]
    #[allow(clippy::too_many_arguments)] // Python's keyword arguments
    fn session_manager(
        &self,
        response_timeout: Option<f64>,
        max_in_flight: Option<usize>,
        max_rpcs_per_session: Option<u32>,
        max_queue: Option<usize>,
        max_agents: Option<usize>,
        link_queue: Option<usize>,
    ) -> PyResult<crate::session::SessionManager> {
        self.ensure_open()?;
        let mut options = switchboard::session::driver::ManagerOptions::default();
        if let Some(t) = response_timeout {
            options.config.response_timeout = seconds("response_timeout", t)?;
        }
        if let Some(n) = max_in_flight {
            options.config.max_in_flight = at_least_one("max_in_flight", n)?;
        }
        if let Some(n) = max_rpcs_per_session {
            options.config.max_rpcs_per_session = at_least_one("max_rpcs_per_session", n)?;
        }
        if let Some(n) = max_queue {
            options.config.max_queue = at_least_one("max_queue", n)?;
        }
        if let Some(n) = max_agents {
            options.max_agents = at_least_one("max_agents", n)?;
        }
        if let Some(n) = link_queue {
            options.link_queue = at_least_one("link_queue", n)?;
        }
        Ok(crate::session::SessionManager::start(&self.client, options))
    }

    /// Runs the session engine's agent, reporting to the manager
    /// `manager_id`; `handler(method, payload)` (a coroutine function or a
    /// plain one) answers its RPCs one at a time, in order, with `bytes` or
    /// `str`. An exception becomes a fault: its `fault_code` attribute
    /// when it has one, else 8002 (internal error). `device_id` (default:
    /// the client id) and `parameters` are reported in every `Inform`;
    /// `response_timeout` is how long the agent waits for the manager
    /// before the session fails (default 30 s). The retry policy after a
    /// failed session: `retry_min_wait` (seconds, default 5) and
    /// `retry_multiplier` (default 2.0): retry `n` waits a random time in
    /// `[m·k^(n−1), m·k^n]`. Limits: `max_rpcs_per_session` (255),
    /// `max_queue` (RPCs queued, 1024; more are refused with fault 8004),
    /// `max_requests` (the agent's own requests waiting, 64) and
    /// `max_events` (distinct pending events, 64). The driver:
    /// `task_timeout` (seconds a handler may run before its RPC is
    /// answered with fault 8002, 25), `reconnect_min`/`reconnect_max`
    /// (the back-off between connect attempts, 0.05 and 5 s), `journal`
    /// (a file keeping persistent events across restarts) and
    /// `boot_event` (report `"1 BOOT"` at start, true; without it a
    /// manager learns of the agent at its first event).
    #[pyo3(signature = (manager_id, handler, device_id=None, parameters=None, response_timeout=None, retry_min_wait=None, retry_multiplier=None, max_rpcs_per_session=None, max_queue=None, max_requests=None, max_events=None, task_timeout=None, reconnect_min=None, reconnect_max=None, journal=None, boot_event=true))]
    #[allow(clippy::too_many_arguments)] // Python's keyword arguments
    fn session_agent(
        &self,
        py: Python<'_>,
        manager_id: String,
        handler: Py<PyAny>,
        device_id: Option<String>,
        parameters: Option<std::collections::BTreeMap<String, String>>,
        response_timeout: Option<f64>,
        retry_min_wait: Option<f64>,
        retry_multiplier: Option<f64>,
        max_rpcs_per_session: Option<u32>,
        max_queue: Option<usize>,
        max_requests: Option<usize>,
        max_events: Option<usize>,
        task_timeout: Option<f64>,
        reconnect_min: Option<f64>,
        reconnect_max: Option<f64>,
        journal: Option<std::path::PathBuf>,
        boot_event: bool,
    ) -> PyResult<crate::session::SessionAgent> {
        self.ensure_open()?;
        let device_id = device_id.unwrap_or_else(|| self.client.id().to_owned());
        let mut config = switchboard::session::AgentConfig::new(device_id);
        if let Some(p) = parameters {
            config.parameters = p;
        }
        if let Some(t) = response_timeout {
            config.response_timeout = seconds("response_timeout", t)?;
        }
        if let Some(t) = retry_min_wait {
            config.retry.min_wait = seconds("retry_min_wait", t)?;
        }
        if let Some(k) = retry_multiplier {
            if !(1.0..=1000.0).contains(&k) {
                return Err(pyo3::exceptions::PyValueError::new_err(format!(
                    "retry_multiplier is between 1 and 1000, not {k}"
                )));
            }
            config.retry.multiplier = (k * 1000.0).round() as u32;
        }
        if let Some(n) = max_rpcs_per_session {
            config.max_rpcs_per_session = at_least_one("max_rpcs_per_session", n)?;
        }
        if let Some(n) = max_queue {
            config.max_queue = at_least_one("max_queue", n)?;
        }
        if let Some(n) = max_requests {
            config.max_requests = at_least_one("max_requests", n)?;
        }
        if let Some(n) = max_events {
            config.max_events = at_least_one("max_events", n)?;
        }
        let mut options = switchboard::session::driver::AgentOptions::new(config);
        if let Some(t) = task_timeout {
            options.task_timeout = seconds("task_timeout", t)?;
        }
        if let Some(t) = reconnect_min {
            options.reconnect_min = seconds("reconnect_min", t)?;
        }
        if let Some(t) = reconnect_max {
            options.reconnect_max = seconds("reconnect_max", t)?;
        }
        if options.reconnect_max < options.reconnect_min {
            return Err(pyo3::exceptions::PyValueError::new_err(
                "reconnect_max is at least reconnect_min",
            ));
        }
        options.journal = journal;
        options.boot_event = boot_event;
        crate::session::SessionAgent::start(py, &self.client, &manager_id, options, handler)
    }

    /// The client's events from now on.
    fn events(&self) -> PyResult<crate::observe::Events> {
        self.ensure_open()?;
        Ok(in_runtime(|| {
            crate::observe::Events::new(self.client.events())
        }))
    }

    /// Watches `key` (or, with `prefix`, every key starting with it);
    /// resolves to a [`KvWatch`] that yields the current value first.
    #[pyo3(signature = (key, prefix=false))]
    fn kv_watch<'py>(
        &self,
        py: Python<'py>,
        key: String,
        prefix: bool,
    ) -> PyResult<Bound<'py, PyAny>> {
        let kv = self.client.kv();
        crate::glue::future_into_py(py, async move {
            let watch = if prefix {
                kv.watch_prefix(&key).await
            } else {
                kv.watch(&key).await
            }
            .map_err(error::to_py)?;
            Ok(KvWatch {
                inner: Arc::new(tokio::sync::Mutex::new(Some(watch))),
            })
        })
    }

    /// Ends the client gracefully within `timeout` seconds: stops the
    /// handlers, ends deliveries, lets the streams be read to their end,
    /// waits until everything sent is acknowledged, then closes. Resolves
    /// to whether everything was acknowledged and taken in time.
    #[pyo3(signature = (timeout=5.0))]
    fn drain<'py>(&self, py: Python<'py>, timeout: f64) -> PyResult<Bound<'py, PyAny>> {
        let timeout = seconds("timeout", timeout)?;
        let client = self.client.clone();
        let serving = std::mem::take(&mut *self.serving.lock());
        crate::glue::future_into_py(py, async move {
            stop_all(serving).await;
            Ok(client.drain(timeout).await.is_clean())
        })
    }

    /// Stops every handler and closes the connection.
    fn close<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let client = self.client.clone();
        let serving = std::mem::take(&mut *self.serving.lock());
        crate::glue::future_into_py(py, async move {
            stop_all(serving).await;
            client.close().await;
            Ok(())
        })
    }
}

/// Checks a target client id here, so a bad one is `InvalidArgument`
/// (with what is wrong) rather than the hub's `NoSuchClient`.
fn check_target(to: &str) -> PyResult<()> {
    switchboard::wire::validate_client_id(to).map_err(|m| {
        error::to_py(switchboard::ClientError::InvalidArgument(format!(
            "target {m}"
        )))
    })
}

/// Stops the handlers in `serving` (waiting for running ones).
async fn stop_all(serving: Vec<ServeSlot>) {
    for slot in serving {
        let handle = slot.lock().take();
        if let Some(h) = handle {
            h.stop().await;
        }
    }
}

/// `n` when it is at least 1; a `ValueError` naming `what` otherwise.
fn at_least_one<N: PartialOrd + From<u8> + std::fmt::Display>(what: &str, n: N) -> PyResult<N> {
    if n >= N::from(1) {
        Ok(n)
    } else {
        Err(pyo3::exceptions::PyValueError::new_err(format!(
            "{what} is at least 1, not {n}"
        )))
    }
}

/// Headers from Python: a mapping, or an iterable of `(key, value)` pairs.
fn headers_from_py(obj: &Bound<'_, PyAny>) -> PyResult<Headers> {
    let pairs = match obj.cast::<PyMapping>() {
        Ok(m) => m.items()?.into_any(),
        Err(_) => obj.clone(),
    };
    let mut headers = Headers::new();
    for pair in pairs.try_iter()? {
        let (key, value): (String, Bound<'_, PyAny>) = pair?.extract()?;
        headers.append(key, payload::from_py(&value)?);
    }
    Ok(headers)
}

/// A serve handler's result: a [`Reply`] (payload and headers), or a
/// payload (`bytes`, `bytearray` or `str`) without headers.
fn reply_from_py(obj: &Bound<'_, PyAny>) -> PyResult<(switchboard::Bytes, Headers)> {
    match obj.cast::<Reply>() {
        Ok(reply) => {
            let reply = reply.get();
            Ok((reply.payload.clone(), reply.headers.clone()))
        }
        Err(_) => Ok((payload::from_py(obj)?, Headers::new())),
    }
}

/// A reply with headers: what a `serve` handler may return instead of a
/// bare payload, and what `request(..., full=True)` resolves to.
#[pyclass(frozen, module = "switchboard._native")]
pub struct Reply {
    payload: switchboard::Bytes,
    headers: Headers,
    sender: String,
}

#[pymethods]
impl Reply {
    /// A reply of `payload` (`bytes`, `bytearray` or `str`) with `headers`
    /// (a mapping, or `(key, value)` pairs; a key may repeat).
    #[new]
    #[pyo3(signature = (payload, headers=None))]
    fn py_new(payload: &Bound<'_, PyAny>, headers: Option<&Bound<'_, PyAny>>) -> PyResult<Reply> {
        Ok(Reply {
            payload: payload::from_py(payload)?,
            headers: headers
                .map(headers_from_py)
                .transpose()?
                .unwrap_or_default(),
            sender: String::new(),
        })
    }

    /// The payload.
    #[getter]
    fn payload(&self, py: Python<'_>) -> Py<PyBytes> {
        payload::to_py(py, &self.payload)
    }

    /// The replier's headers: `(key, value)` pairs in order.
    #[getter]
    fn headers(&self, py: Python<'_>) -> PyResult<Py<PyList>> {
        headers_to_py(py, &self.headers)
    }

    /// The replier's client id (for a service request, the responder the
    /// hub picked); `""` for a reply made in Python.
    #[getter]
    fn sender(&self) -> &str {
        &self.sender
    }

    /// The first value of header `key`, or `None`.
    fn header(&self, py: Python<'_>, key: &str) -> Option<Py<PyBytes>> {
        self.headers
            .iter()
            .find(|(k, _)| *k == key)
            .map(|(_, v)| payload::to_py(py, v))
    }

    fn __repr__(&self) -> String {
        format!(
            "Reply(sender={:?}, payload={} bytes, headers={})",
            self.sender,
            self.payload.len(),
            self.headers.iter().count()
        )
    }
}

/// Headers for Python: a list of `(key, value)` pairs, in order.
fn headers_to_py(py: Python<'_>, headers: &Headers) -> PyResult<Py<PyList>> {
    let pairs: Vec<(String, Py<PyBytes>)> = headers
        .iter()
        .map(|(k, v)| (k.to_owned(), payload::to_py(py, v)))
        .collect();
    Ok(PyList::new(py, pairs)?.unbind())
}

/// Moves the messages waiting in `sub` into `out` until it holds `max`
/// (at least one more is never waited for); whether the subscription
/// ended (and is empty).
fn drain(
    sub: &mut switchboard::Subscription,
    max: usize,
    out: &mut Vec<switchboard::Message>,
) -> bool {
    use std::future::Future;
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    while out.len() < max.max(1) {
        // `recv` is cancel-safe: a pending one dropped loses nothing.
        match std::pin::pin!(sub.recv()).poll(&mut cx) {
            std::task::Poll::Ready(Some(m)) => out.push(m),
            std::task::Poll::Ready(None) => return true,
            std::task::Poll::Pending => return false,
        }
    }
    false
}

/// A received message as a Python [`Message`].
fn message_to_py(m: switchboard::Message) -> PyResult<Py<Message>> {
    crate::glue::attach(|py| message_to_py_in(py, m))
}

/// [`message_to_py`] for a caller that holds the GIL.
fn message_to_py_in(py: Python<'_>, m: switchboard::Message) -> PyResult<Py<Message>> {
    {
        let kind = match m.kind {
            MessageKind::Direct => "direct",
            MessageKind::Broadcast => "broadcast",
            MessageKind::Publish => "publish",
            _ => "other",
        };
        Py::new(
            py,
            Message {
                kind,
                topic: m.topic.to_string(),
                payload: payload::to_py(py, &m.payload),
                sender: m.from.to_string(),
                reply_to: m.reply_to.to_string(),
                headers: headers_to_py(py, &m.headers)?,
            },
        )
    }
}

/// A message received on a subscription.
#[pyclass(frozen, get_all, module = "switchboard._native")]
pub struct Message {
    /// How it arrived: `"publish"`, `"direct"` or `"broadcast"`.
    kind: &'static str,
    /// The topic it was published on (`""` unless published).
    topic: String,
    /// The payload.
    payload: Py<PyBytes>,
    /// The publisher's client id.
    sender: String,
    /// The publisher's reply topic, or `""`.
    reply_to: String,
    /// The sender's headers: `(key, value)` pairs in order.
    headers: Py<PyList>,
}

#[pymethods]
impl Message {
    fn __repr__(&self) -> String {
        format!("Message(topic={:?}, sender={:?})", self.topic, self.sender)
    }
}

/// A request given to a `serve` handler.
#[pyclass(frozen, get_all, module = "switchboard._native")]
pub struct Request {
    /// The requester's client id.
    sender: String,
    /// The payload.
    payload: Py<PyBytes>,
    /// The method name, or `""`.
    method: String,
    /// The requester's headers: `(key, value)` pairs in order.
    headers: Py<PyList>,
    /// The service it was sent to, or `None` when sent to this client.
    service: Option<String>,
}

impl Request {
    fn new(py: Python<'_>, req: &IncomingRequest) -> PyResult<Request> {
        Ok(Request {
            sender: req.from().to_owned(),
            payload: payload::to_py(py, req.payload()),
            method: req.method().to_owned(),
            headers: headers_to_py(py, req.headers())?,
            service: req.service().map(str::to_owned),
        })
    }
}

#[pymethods]
impl Request {
    fn __repr__(&self) -> String {
        format!(
            "Request(sender={:?}, method={:?})",
            self.sender, self.method
        )
    }
}

/// A subscription: `next()` resolves to the next [`Message`], or `None`
/// once it ended.
#[pyclass(frozen, module = "switchboard._native")]
pub struct Subscription {
    pattern: String,
    inner: Arc<tokio::sync::Mutex<Option<switchboard::Subscription>>>,
}

impl Drop for Subscription {
    fn drop(&mut self) {
        if let Ok(mut sub) = self.inner.try_lock() {
            let sub = sub.take();
            in_runtime(|| drop(sub));
        }
    }
}

#[pymethods]
impl Subscription {
    /// The subscribed pattern.
    #[getter]
    fn pattern(&self) -> &str {
        &self.pattern
    }

    /// The next message, or `None` when the subscription ended.
    fn next<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let inner = self.inner.clone();
        crate::glue::future_into_py(py, async move {
            let mut guard = inner.lock().await;
            let Some(sub) = guard.as_mut() else {
                return Ok(None);
            };
            let Some(m) = sub.recv().await else {
                return Ok(None);
            };
            message_to_py(m).map(Some)
        })
    }

    /// Up to `max` messages already waiting, without waiting: `[]` when
    /// none is (or another call is receiving), `None` once the
    /// subscription ended and every message was taken.
    fn take(&self, py: Python<'_>, max: usize) -> PyResult<Option<Vec<Py<Message>>>> {
        let Ok(mut guard) = self.inner.try_lock() else {
            return Ok(Some(Vec::new()));
        };
        let Some(sub) = guard.as_mut() else {
            return Ok(None);
        };
        let mut out = Vec::new();
        let ended = drain(sub, max, &mut out);
        if ended && out.is_empty() {
            return Ok(None);
        }
        out.into_iter()
            .map(|m| message_to_py_in(py, m))
            .collect::<PyResult<Vec<_>>>()
            .map(Some)
    }

    /// Waits for the next message, then takes the ones waiting behind it,
    /// up to `max` in all; resolves to the list, or `None` when the
    /// subscription ended.
    fn next_batch<'py>(&self, py: Python<'py>, max: usize) -> PyResult<Bound<'py, PyAny>> {
        let inner = self.inner.clone();
        crate::glue::future_into_py(py, async move {
            let mut guard = inner.lock().await;
            let Some(sub) = guard.as_mut() else {
                return Ok(None);
            };
            let Some(first) = sub.recv().await else {
                return Ok(None);
            };
            let mut out = vec![first];
            drain(sub, max, &mut out);
            drop(guard);
            crate::glue::attach(|py| {
                out.into_iter()
                    .map(|m| message_to_py_in(py, m))
                    .collect::<PyResult<Vec<_>>>()
                    .map(Some)
            })
        })
    }

    /// Ends the subscription at the hub.
    fn unsubscribe<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let inner = self.inner.clone();
        crate::glue::future_into_py(py, async move {
            let sub = inner.lock().await.take();
            if let Some(sub) = sub {
                sub.unsubscribe().await.map_err(error::to_py)?;
            }
            Ok(())
        })
    }
}

/// A running handler from `serve`; `stop()` ends it (closing the client
/// does too).
#[pyclass(frozen, module = "switchboard._native")]
pub struct Serving {
    slot: ServeSlot,
}

#[pymethods]
impl Serving {
    /// Stops taking requests.
    fn stop<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let handle = self.slot.lock().take();
        crate::glue::future_into_py(py, async move {
            if let Some(h) = handle {
                h.stop().await;
            }
            Ok(())
        })
    }
}

/// Direct messages and broadcasts to this client: `next()` resolves to the
/// next [`Message`], or `None` once the inbox ended.
#[pyclass(frozen, module = "switchboard._native")]
pub struct Inbox {
    inner: Arc<tokio::sync::Mutex<Option<switchboard::Messages>>>,
}

impl Drop for Inbox {
    fn drop(&mut self) {
        if let Ok(mut inbox) = self.inner.try_lock() {
            let inbox = inbox.take();
            in_runtime(|| drop(inbox));
        }
    }
}

#[pymethods]
impl Inbox {
    /// The next message, or `None` when the inbox ended.
    fn next<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let inner = self.inner.clone();
        crate::glue::future_into_py(py, async move {
            let mut guard = inner.lock().await;
            let Some(inbox) = guard.as_mut() else {
                return Ok(None);
            };
            match inbox.recv().await {
                Some(m) => message_to_py(m).map(Some),
                None => Ok(None),
            }
        })
    }

    /// Stops taking direct messages.
    fn close<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let inner = self.inner.clone();
        crate::glue::future_into_py(py, async move {
            let inbox = inner.lock().await.take();
            drop(inbox);
            Ok(())
        })
    }
}

/// A change to a watched key.
#[pyclass(frozen, get_all, module = "switchboard._native")]
pub struct KvEvent {
    /// The key.
    key: String,
    /// The new value (`b""` when deleted).
    value: Py<PyBytes>,
    /// The version after the change.
    version: u64,
    /// Whether the key was deleted.
    deleted: bool,
    /// The client id that made the change; `""` for the current value a
    /// watch starts with.
    by: String,
}

#[pymethods]
impl KvEvent {
    fn __repr__(&self) -> String {
        format!(
            "KvEvent(key={:?}, version={}, deleted={}, by={:?})",
            self.key,
            self.version,
            if self.deleted { "True" } else { "False" },
            self.by
        )
    }
}

/// Changes to a watched key or prefix: `next()` resolves to the next
/// [`KvEvent`], or `None` once the watch ended.
#[pyclass(frozen, module = "switchboard._native")]
pub struct KvWatch {
    inner: Arc<tokio::sync::Mutex<Option<switchboard::KvWatch>>>,
}

impl Drop for KvWatch {
    fn drop(&mut self) {
        if let Ok(mut watch) = self.inner.try_lock() {
            let watch = watch.take();
            in_runtime(|| drop(watch));
        }
    }
}

#[pymethods]
impl KvWatch {
    /// The next change, or `None` when the watch ended.
    fn next<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let inner = self.inner.clone();
        crate::glue::future_into_py(py, async move {
            let mut guard = inner.lock().await;
            let Some(watch) = guard.as_mut() else {
                return Ok(None);
            };
            let Some(e) = watch.recv().await else {
                return Ok(None);
            };
            crate::glue::attach(|py| {
                Py::new(
                    py,
                    KvEvent {
                        key: e.key,
                        value: payload::to_py(py, &e.value),
                        version: e.version,
                        deleted: e.deleted,
                        by: e.by,
                    },
                )
            })
            .map(Some)
        })
    }

    /// Stops watching.
    fn close<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let inner = self.inner.clone();
        crate::glue::future_into_py(py, async move {
            let watch = inner.lock().await.take();
            drop(watch);
            Ok(())
        })
    }
}
