//! The process's one tokio runtime.

use std::sync::OnceLock;

use tokio::runtime::{Handle, Runtime};

static RUNTIME: OnceLock<Runtime> = OnceLock::new();

/// The runtime, started on first use (two worker threads named
/// `switchboard-rt`). It lives until the process exits.
pub(crate) fn handle() -> &'static Handle {
    RUNTIME
        .get_or_init(|| {
            tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .thread_name("switchboard-rt")
                .enable_all()
                .build()
                .expect("starting the switchboard runtime")
        })
        .handle()
}

/// Runs `future` to completion on the runtime, blocking the calling thread.
///
/// Called from a runtime worker thread (a C callback that was not run on
/// the blocking pool or inside `block_in_place`) this would panic; the
/// boundary turns that into `SB_ERR_PANIC`. Callbacks run on the blocking
/// pool, and `sb_serve` handlers inside `tokio::task::block_in_place`,
/// where blocking is allowed.
pub(crate) fn block_on<F: std::future::Future>(future: F) -> F::Output {
    handle().block_on(future)
}
