//! What the other modules share: the runtime, durations from Python, and
//! running a Python handler from Rust.

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::IntoPyObjectExt;

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
        // Polled under the exit gate: the future enters Python itself
        // when the event loop drops the coroutine unfinished.
        let mut inner = Box::pin(pyo3_async_runtimes::into_future_with_locals(locals, out)?);
        Ok(Box::pin(std::future::poll_fn(move |cx| {
            let exiting = EXITING.read_recursive();
            if *exiting {
                return std::task::Poll::Pending;
            }
            inner.as_mut().poll(cx)
        })))
    } else {
        let value = out.unbind();
        Ok(Box::pin(async move { Ok(value) }))
    }
}

/// Whether the interpreter is exiting: set once by [`exiting`] (the
/// package's `atexit` hook), read around every entry into Python from a
/// Rust thread.
///
/// Why: a Rust thread that enters Python (`Python::attach`) while the
/// interpreter finalizes is ended by CPython (3.9 to 3.13) with
/// `pthread_exit`, whose forced unwind through Rust frames aborts the
/// process. It happened to a program that ends right after an `await`:
/// the runtime thread that resolved the awaitable still held, or waited
/// for, the GIL (calling `loop.call_soon_threadsafe` runs Python code, and
/// the GIL can be handed to the main thread in the middle of it), so the
/// main thread ran on, finalized, and the thread came back into a
/// finalizing interpreter. Every entry from a Rust thread now goes through
/// [`attach`]: it holds this lock (shared) while in Python, and once the
/// flag is set it does not enter at all.
static EXITING: parking_lot::RwLock<bool> = parking_lot::const_rwlock(false);

thread_local! {
    /// Whether this thread is one of the binding's runtime threads.
    static RUNTIME_THREAD: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Sets up the binding's tokio runtime (before its first use): multi-thread,
/// with its threads (workers and blocking ones) marked as runtime threads.
pub(crate) fn init_runtime() {
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    builder
        .enable_all()
        .on_thread_start(|| RUNTIME_THREAD.set(true));
    pyo3_async_runtimes::tokio::init(builder);
}

/// Marks the interpreter as exiting, after waiting (without the GIL) for
/// every Rust thread now in Python to leave it. Called by the package's
/// `atexit` hook, which runs before finalization starts.
#[pyfunction]
pub(crate) fn exiting(py: Python<'_>) {
    py.detach(|| *EXITING.write() = true);
}

/// [`Python::attach`] for code on the binding's Rust threads: once the
/// interpreter is exiting, the thread stays parked here for good instead
/// of entering Python (which would abort the process; CPython 3.14 parks
/// such threads itself). Nothing waits for these threads at exit.
/// Python threads (the main one, or a user's) enter directly: the
/// interpreter runs them, and finalization may call into the binding.
pub(crate) fn attach<R>(f: impl for<'py> FnOnce(Python<'py>) -> R) -> R {
    if !RUNTIME_THREAD.get() {
        return Python::attach(f);
    }
    let exiting = EXITING.read_recursive();
    if *exiting {
        drop(exiting);
        loop {
            std::thread::park();
        }
    }
    Python::attach(f)
}

/// A Rust future as an asyncio awaitable on the caller's event loop, like
/// `pyo3_async_runtimes::tokio::future_into_py`, but resolved through
/// [`attach`] so that no thread enters Python while it finalizes.
/// Cancelling the awaitable drops the future.
pub(crate) fn future_into_py<'py, F, T>(py: Python<'py>, fut: F) -> PyResult<Bound<'py, PyAny>>
where
    F: Future<Output = PyResult<T>> + Send + 'static,
    T: for<'a> IntoPyObject<'a> + Send + 'static,
{
    let locals = pyo3_async_runtimes::tokio::get_current_locals(py)?;
    let event_loop = locals.event_loop(py);
    let py_fut = event_loop.call_method0("create_future")?;
    let (cancel_tx, cancel_rx) = tokio::sync::oneshot::channel::<()>();
    py_fut.call_method1(
        "add_done_callback",
        (OnDone {
            cancel: parking_lot::Mutex::new(Some(cancel_tx)),
        },),
    )?;
    let target = py_fut.clone().unbind();
    let event_loop = event_loop.unbind();
    pyo3_async_runtimes::tokio::get_runtime().spawn(async move {
        let run = pyo3_async_runtimes::tokio::scope(locals, fut);
        let result = tokio::select! {
            result = run => result,
            Ok(()) = cancel_rx => return,
        };
        // Entering Python blocks: not on a runtime worker.
        tokio::task::spawn_blocking(move || {
            attach(move |py| {
                let (method, value) = match result.and_then(|v| v.into_py_any(py)) {
                    Ok(v) => ("set_result", v),
                    Err(e) => ("set_exception", e.into_value(py).into_any()),
                };
                let resolve = Resolve {
                    future: target.clone_ref(py),
                    method,
                    value,
                };
                if let Err(e) = event_loop
                    .bind(py)
                    .call_method1("call_soon_threadsafe", (resolve,))
                {
                    // The loop is closed: nobody waits for the result.
                    drop(e);
                }
                drop(target);
                drop(event_loop);
            })
        });
    });
    Ok(py_fut)
}

/// The done-callback of an awaitable from [`future_into_py`]: cancelling
/// the awaitable cancels the Rust future.
#[pyclass(frozen)]
struct OnDone {
    cancel: parking_lot::Mutex<Option<tokio::sync::oneshot::Sender<()>>>,
}

#[pymethods]
impl OnDone {
    fn __call__(&self, future: &Bound<'_, PyAny>) -> PyResult<()> {
        if future.call_method0("cancelled")?.is_truthy()? {
            if let Some(tx) = self.cancel.lock().take() {
                let _ = tx.send(());
            }
        }
        Ok(())
    }
}

/// Sets an awaitable's result or exception on its event loop, unless it
/// was cancelled meanwhile.
#[pyclass(frozen)]
struct Resolve {
    future: Py<PyAny>,
    method: &'static str,
    value: Py<PyAny>,
}

#[pymethods]
impl Resolve {
    fn __call__(&self, py: Python<'_>) -> PyResult<()> {
        let future = self.future.bind(py);
        if !future.call_method0("done")?.is_truthy()? {
            future.call_method1(self.method, (self.value.clone_ref(py),))?;
        }
        Ok(())
    }
}
