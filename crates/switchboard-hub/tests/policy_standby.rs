//! The standby right of the permission policy, on the wire: a standby link
//! (a `Hello` with the standby role) opened with the token of a principal
//! that lacks the right is refused with `FORBIDDEN` naming the principal;
//! with the right it gets the replication stream (`ReplHello`).

mod common;

use std::sync::Arc;

use anyhow::{bail, Result};
use common::TestClient;
use switchboard_hub::{Hub, Policy};
use switchboard_wire::proto::frame::Kind;
use switchboard_wire::ErrorCode;

const APP: &str = "standby test app token";
const REPLICA: &str = "standby test replica token";

/// Opens a standby link proving `token`; the first frame after `Auth`.
async fn standby_link(addr: std::net::SocketAddr, token: &str) -> Result<Kind> {
    let (_, first) = TestClient::connect_standby(addr, token, "a-standby").await?;
    first.kind.ok_or_else(|| anyhow::anyhow!("an empty frame"))
}

#[tokio::test]
async fn a_standby_link_needs_the_standby_right() -> Result<()> {
    let policy = format!(
        r#"
[[principal]]
name = "app"
token_sha256 = ["{}"]
ids = ["app"]

[[principal]]
name = "replica"
token_sha256 = ["{}"]
standby = true
"#,
        Policy::hash_token(APP),
        Policy::hash_token(REPLICA)
    );
    let mut config = common::config();
    config.admission = Some(Arc::new(Policy::parse(&policy)?));
    let hub = Hub::start(config).await?;
    match standby_link(hub.local_addr(), APP).await? {
        Kind::Error(e) => {
            assert_eq!(e.code, ErrorCode::Forbidden as i32, "{e:?}");
            assert!(
                e.message.contains("'app'") && e.message.contains("standby"),
                "{}",
                e.message
            );
        }
        other => bail!("a standby link without the right was not refused: {other:?}"),
    }
    match standby_link(hub.local_addr(), REPLICA).await? {
        Kind::ReplHello(_) => {}
        other => bail!("a standby link with the right got {other:?}"),
    }
    hub.shutdown().await;
    Ok(())
}
