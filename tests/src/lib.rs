//! Shared helpers for switchboard's workspace-level integration tests.
//!
//! The tests run hubs in-process on `127.0.0.1:0` with a shared token and
//! connect clients by address, so they never depend on the user's runtime
//! directory. Tests of discovery by service name call [`private_runtime_dir`]
//! first, which points `SWITCHBOARD_RUNTIME_DIR` at a temporary directory for
//! the whole test binary. The CLI run as separate processes is tested in
//! `crates/switchboard/tests/cli.rs`, where Cargo provides the binary's path.

pub mod proxy;

pub use proxy::Proxy;

use std::path::Path;
use std::sync::OnceLock;
use std::time::Duration;

use switchboard::{Client, ConnectionState, Hub, HubHandle};

/// Token used by the test hubs.
pub const TOKEN: &str = "integration-test-token";

/// Upper bound for any single wait in a test.
pub const WAIT: Duration = Duration::from_secs(10);

/// Points `SWITCHBOARD_RUNTIME_DIR` at a temporary directory private to this
/// test binary (created once) and returns it. Call it first in every test of
/// a binary that relies on discovery, before any hub or client starts.
pub fn private_runtime_dir() -> &'static Path {
    static DIR: OnceLock<tempfile::TempDir> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = tempfile::tempdir().expect("a temporary directory");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o700))
                .expect("a private temporary directory");
        }
        // Set once, before any other thread of this binary reads it.
        std::env::set_var(switchboard::discovery::RUNTIME_DIR_ENV, dir.path());
        dir
    })
    .path()
}

/// A hub on a free loopback port with [`TOKEN`] and no hint file.
pub async fn hub() -> anyhow::Result<HubHandle> {
    Ok(Hub::builder()
        .token(TOKEN)
        .listen("127.0.0.1:0")
        .write_hint(false)
        .start()
        .await?)
}

/// A hub reached in memory only ([`Hub::in_memory`]): no port; its
/// clients from [`client`] connect through an in-process pipe.
pub async fn memory_hub() -> anyhow::Result<HubHandle> {
    Ok(Hub::in_memory().await?)
}

/// A client of `hub` with id `id` (by address, or in memory for a hub
/// without a port).
pub async fn client(hub: &HubHandle, id: &str) -> anyhow::Result<Client> {
    let builder = Client::builder(id);
    let builder = if hub.local_addr().port() == 0 {
        builder.in_memory(hub)
    } else {
        builder.addr(hub.local_addr().to_string()).token(TOKEN)
    };
    Ok(builder.connect().await?)
}

/// Runs `fut` with the test time bound.
pub async fn within<T>(fut: impl std::future::Future<Output = T>) -> anyhow::Result<T> {
    tokio::time::timeout(WAIT, fut)
        .await
        .map_err(|_| anyhow::anyhow!("timed out after {WAIT:?}"))
}

/// Waits until the client's connection reaches generation `generation`
/// (2 after the first reconnect).
pub async fn wait_generation(client: &Client, generation: u64) -> anyhow::Result<()> {
    let mut state = client.state();
    within(state.wait_for(
        |s| matches!(s, ConnectionState::Connected { generation: g, .. } if *g >= generation),
    ))
    .await??;
    Ok(())
}
