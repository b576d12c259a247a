//! What the other modules share: the runtime, durations from Python, and
//! running a Python handler from Rust.

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;

/// Seconds from Python as a [`Duration`]; `what` names the argument.
pub(crate) fn seconds(what: &str, secs: f64) -> PyResult<Duration> {
    Duration::try_from_secs_f64(secs).map_err(|_| {
        PyValueError::new_err(format!(
            "{what} must be a finite number of seconds >= 0, not {secs}"
        ))
    })
}

/// Runs `f` inside the binding's tokio runtime: dropping client objects
/// may start background tasks, and Python drops them on its own threads.
pub(crate) fn in_runtime<T>(f: impl FnOnce() -> T) -> T {
    let _guard = pyo3_async_runtimes::tokio::get_runtime().enter();
    f()
}

/// A Python handler's pending result.
pub(crate) type HandlerFuture = Pin<Box<dyn Future<Output = PyResult<Py<PyAny>>> + Send>>;

/// A handler's exception as the error reply's text: `Type: message`.
pub(crate) fn describe(py: Python<'_>, e: &PyErr) -> String {
    let name = e
        .get_type(py)
        .name()
        .map(|n| n.to_string())
        .unwrap_or_else(|_| "Exception".into());
    format!("{name}: {}", e.value(py))
}

/// What a Python handler returned, as a future: awaited on the handler's
/// event loop when it is awaitable (a coroutine), ready otherwise.
pub(crate) fn awaited(
    locals: &pyo3_async_runtimes::TaskLocals,
    out: Bound<'_, PyAny>,
) -> PyResult<HandlerFuture> {
    if out.hasattr("__await__")? {
        Ok(Box::pin(pyo3_async_runtimes::into_future_with_locals(
            locals, out,
        )?))
    } else {
        let value = out.unbind();
        Ok(Box::pin(async move { Ok(value) }))
    }
}
