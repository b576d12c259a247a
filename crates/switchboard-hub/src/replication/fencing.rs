//! Fencing: a primary that lost its standby (or saw a client with a
//! higher epoch) looks for a newer primary of its service before it goes
//! on alone; if one serves, this hub steps down.

use std::path::PathBuf;
use std::time::Duration;

use switchboard_discovery::{discover, DiscoverOptions};
use switchboard_wire::proto;
use tokio::sync::oneshot;

/// How long a primary that lost its standby looks for a newer primary.
const FENCE_CHECK: Duration = Duration::from_millis(500);

/// A hub of `identity.service` other than `identity` with a higher epoch,
/// found through the hint files and the listening table.
async fn newer_primary(
    identity: &proto::HubIdentity,
    secret: &switchboard_discovery::Secret,
    hint_dir: Option<PathBuf>,
) -> Option<switchboard_discovery::FoundHub> {
    let opts = DiscoverOptions {
        hint_dirs: hint_dir.into_iter().collect(),
        all: true,
        use_scan: false,
        deadline: FENCE_CHECK,
        probe_timeout: Duration::from_millis(200),
        secret: Some(secret.clone()),
        ..DiscoverOptions::default()
    };
    let found = discover(&identity.service, &opts).await.ok()?;
    found.into_iter().find(|h| {
        h.identity.instance_id != identity.instance_id
            && h.identity.epoch > identity.epoch
            && h.identity.role == proto::Role::Primary as i32
    })
}

/// Starts a look for a newer primary of `identity.service`; the answer
/// (`true`: one serves, this hub must step down) arrives on the receiver.
pub(crate) fn start_check(
    identity: proto::HubIdentity,
    secret: switchboard_discovery::Secret,
    hint_dir: Option<PathBuf>,
) -> oneshot::Receiver<bool> {
    let (tx, rx) = oneshot::channel();
    tokio::spawn(async move {
        let newer = newer_primary(&identity, &secret, hint_dir).await;
        if let Some(hub) = &newer {
            tracing::warn!(addr = %hub.addr, epoch = hub.identity.epoch, "a primary with a higher epoch serves this service");
        }
        let _ = tx.send(newer.is_some());
    });
    rx
}
