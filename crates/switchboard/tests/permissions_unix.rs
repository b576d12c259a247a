//! The permission policy over the Unix socket with peer credentials: a
//! client that proves nothing is who the kernel says it is. The hub's own
//! uid is the owner unless a principal names it in `unix_uid`; then it is
//! that principal and confined by its rights.
//!
//! One test in its own binary: it points the runtime directory at an empty
//! directory (no secret file, so the client proves nothing) before any
//! thread reads the environment.

mod common;
use common::{forbidden, within, WAIT};

use std::path::Path;
use std::sync::Arc;

use switchboard::hub::{HubConfig, Policy, UnixSocket};
use switchboard::{Client, ClientError, HubHandle, Secret};

async fn hub_at(socket: &Path, policy: &str) -> HubHandle {
    let mut config = HubConfig::with_secret("perms-unix", Secret::from_token("unused token"));
    config.write_hint = false;
    config.unix = UnixSocket::at(socket);
    config.admission = Some(Arc::new(Policy::parse(policy).expect("a valid policy")));
    switchboard::hub::Hub::start(config).await.expect("hub")
}

/// Connects `id` over `socket` without a secret.
async fn connect(socket: &Path, id: &str) -> Result<Client, ClientError> {
    within(
        Client::builder(id)
            .unix(socket)
            .reconnect(false)
            .connect_timeout(WAIT)
            .connect(),
    )
    .await
}

#[test]
fn peer_credentials_make_the_owner_or_the_principal_that_names_the_uid() {
    let dir = tempfile::tempdir().unwrap();
    // Before the runtime starts: no other thread reads the environment.
    std::env::set_var("SWITCHBOARD_RUNTIME_DIR", dir.path().join("rt"));
    tokio::runtime::Runtime::new()
        .unwrap()
        .block_on(run(dir.path()));
}

async fn run(dir: &Path) {
    let uid = switchboard::discovery::current_uid();

    // No principal names the hub's uid: it is the owner, with every right.
    let socket = dir.join("owner.sock");
    let hub = hub_at(&socket, "owner = \"all\"\n").await;
    let owner = connect(&socket, "anything").await.expect("the owner");
    within(owner.publish("any.subject", "x")).await.unwrap();
    let listed = within(owner.clients()).await.expect("every right");
    assert_eq!(listed[0].principal, "owner", "{listed:?}");
    assert_eq!(listed[0].uid, Some(uid), "{listed:?}");
    owner.close().await;
    hub.shutdown().await;

    // owner = "none": the hub's uid without a proof is refused.
    let socket = dir.join("none.sock");
    let hub = hub_at(&socket, "owner = \"none\"\n").await;
    forbidden(
        connect(&socket, "anything").await,
        &["own uid", "owner = \"none\""],
    );
    hub.shutdown().await;

    // A principal names the uid: confined by its rights.
    let socket = dir.join("local.sock");
    let policy = format!(
        r#"
[[principal]]
name = "local"
unix_uid = [{uid}]
ids = ["local-{{uid}}-*"]
publish = {{ allow = ["local.>"] }}
"#
    );
    let hub = hub_at(&socket, &policy).await;
    forbidden(connect(&socket, "local-1").await, &["'local'", "'local-1'"]);
    let id = format!("local-{uid}-a");
    let local = connect(&socket, &id).await.expect("its {uid} id");
    within(local.publish("local.news", "1")).await.unwrap();
    forbidden(
        within(local.publish("other.news", "2")).await,
        &["'local'", "publish", "'other.news'"],
    );
    forbidden(within(local.clients()).await, &["'local'", "list clients"]);
    within(local.publish("local.news", "3")).await.unwrap();
    local.close().await;
    hub.shutdown().await;
}
