//! Clients find hubs by service name through the rendezvous hint in a
//! private runtime directory, and re-discover a restarted hub on a new port.

use std::time::Duration;

use futures::StreamExt;
use switchboard::{Client, ClientError, Hub};
use switchboard_tests::{private_runtime_dir, wait_generation, within, TOKEN};

#[tokio::test]
async fn find_by_service_and_rediscover_after_restart() -> anyhow::Result<()> {
    private_runtime_dir();
    let service = "disc-restart";
    let hub = Hub::builder().service(service).token(TOKEN).start().await?;
    let found = switchboard::discover(
        service,
        &switchboard::Secret::from_token(TOKEN),
        true,
        Duration::from_secs(2),
    )
    .await?;
    assert_eq!(found.len(), 1);
    assert_eq!(found[0].addr, hub.local_addr());

    let client = Client::builder("finder")
        .service(service)
        .token(TOKEN)
        .backoff(Duration::from_millis(10), Duration::from_millis(100))
        .connect()
        .await?;
    assert_eq!(client.hub_addr(), Some(hub.local_addr()));
    let mut sub = client.subscribe("t").await?;
    let old = hub.local_addr();
    hub.shutdown().await;

    // A new hub of the same service, on another random port.
    let hub2 = Hub::builder().service(service).token(TOKEN).start().await?;
    assert_ne!(hub2.local_addr(), old);
    wait_generation(&client, 2).await?;
    assert_eq!(client.hub_addr(), Some(hub2.local_addr()));

    let other = Client::builder("other")
        .service(service)
        .token(TOKEN)
        .connect()
        .await?;
    other.publish("t", "again").await?;
    assert_eq!(
        &within(sub.next()).await?.expect("delivery").payload[..],
        b"again"
    );
    Ok(())
}

#[tokio::test]
async fn unknown_service_is_not_found() -> anyhow::Result<()> {
    private_runtime_dir();
    match Client::builder("x")
        .service("nobody-serves-this")
        .token(TOKEN)
        .connect_timeout(Duration::from_secs(2))
        .connect()
        .await
    {
        Err(e) => assert!(e.is_not_found(), "{e}"),
        Ok(_) => panic!("connected to a service nobody serves"),
    }
    match switchboard::discover(
        "nobody-serves-this",
        &switchboard::Secret::from_token(TOKEN),
        true,
        Duration::from_secs(1),
    )
    .await
    {
        Err(ClientError::NotFound { .. }) => Ok(()),
        other => panic!("expected NotFound, got {other:?}"),
    }
}
