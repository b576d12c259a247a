//! The remote seam's port in `/metrics`: frames handed to and taken from
//! the remote side count under `transport="remote"`, and the port's queue
//! has a delivery delay like a client's.

mod common;

use std::sync::Arc;

use anyhow::{bail, Result};
use common::{sample, scrape, TestClient, WAIT};
use parking_lot::Mutex;
use switchboard_hub::port::RemotePort;
use switchboard_hub::router::remote::{Handoff, Remote};
use switchboard_hub::{HttpConfig, Hub};
use switchboard_wire::proto::{self, frame::Kind};
use switchboard_wire::Frame;

/// A remote side that takes every message to `elsewhere` and keeps the
/// port for the test.
#[derive(Debug, Default)]
struct Elsewhere {
    port: Mutex<Option<RemotePort>>,
}

impl Remote for Elsewhere {
    fn route(&self, _from: &str, to: &str, _frame: &Frame) -> Handoff {
        if to == "elsewhere" {
            Handoff::Taken
        } else {
            Handoff::Unknown
        }
    }

    fn fan_out(&self, _from: &str, _frame: &Frame) {}

    fn attach(&self, port: RemotePort) {
        *self.port.lock() = Some(port);
    }
}

#[tokio::test]
async fn the_remote_port_counts_frames_and_queue_delay_under_its_transport() -> Result<()> {
    let remote = Arc::new(Elsewhere::default());
    let mut config = common::config();
    config.http = Some(HttpConfig::new("127.0.0.1:0".parse().unwrap()));
    config.remote = Some(remote.clone());
    let hub = Hub::start(config).await.expect("hub starts");
    let mut port = remote
        .port
        .lock()
        .take()
        .expect("the hub attached the port");
    let mut a = TestClient::connect(hub.local_addr(), "a").await?;
    a.send(proto::Request {
        id: 7,
        to: "elsewhere".into(),
        payload: "q".into(),
        ..Default::default()
    })
    .await?;
    // The other hub's client answers through the port.
    // (The port is welcomed like a client first.)
    let r = loop {
        match tokio::time::timeout(WAIT, port.recv())
            .await?
            .and_then(|f| f.kind)
        {
            Some(Kind::Request(r)) => break r,
            Some(Kind::Welcome(_)) => {}
            other => bail!("the port expected a request, got {other:?}"),
        }
    };
    let reply = proto::Reply {
        id: r.id,
        to: r.from,
        from: "elsewhere".into(),
        payload: "a".into(),
        ..Default::default()
    };
    assert!(port.sender().send(vec![reply.into()]).await);
    assert!(matches!(a.expect().await?.kind, Some(Kind::Reply(r)) if r.id == 7));

    let m = scrape(&hub).await?;
    let remote =
        |name: &str, kind: &str| sample(&m, name, &[("transport", "remote"), ("kind", kind)]);
    assert_eq!(
        remote("switchboard_frames_sent_total", "request"),
        Some(1.0)
    );
    assert_eq!(
        remote("switchboard_frames_received_total", "reply"),
        Some(1.0)
    );
    assert!(remote("switchboard_sent_bytes_total", "request").is_some_and(|b| b > 4.0));
    assert!(remote("switchboard_received_bytes_total", "reply").is_some_and(|b| b > 4.0));
    // Recorded once the port's batch was handed over, which may be a
    // moment after the test got the request.
    let delay = "switchboard_delivery_queue_delay_seconds";
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let m = scrape(&hub).await?;
        if sample(&m, delay, &[("transport", "remote")]).is_some_and(|n| n >= 1.0) {
            break;
        }
        if tokio::time::Instant::now() > deadline {
            bail!("no delivery queue delay sampled for the port");
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    hub.shutdown().await;
    Ok(())
}
