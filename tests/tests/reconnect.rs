//! Clients survive a hub restart: they reconnect, resubscribe and re-watch,
//! and requests in flight at the disconnect fail instead of hanging.

use std::time::Duration;

use futures::StreamExt;
use switchboard::{Client, ClientError, ConnectionState, Hub};
use switchboard_tests::{wait_generation, within, TOKEN};

async fn hub_on(addr: &str) -> anyhow::Result<switchboard::HubHandle> {
    // The old listener may linger for a moment after shutdown.
    let mut last = None;
    for _ in 0..50 {
        match Hub::builder()
            .token(TOKEN)
            .listen(addr)
            .write_hint(false)
            .start()
            .await
        {
            Ok(h) => return Ok(h),
            Err(e) => last = Some(e),
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Err(last.expect("at least one attempt").into())
}

#[tokio::test]
async fn clients_resubscribe_and_rewatch_after_a_hub_restart() -> anyhow::Result<()> {
    let hub = hub_on("127.0.0.1:0").await?;
    let addr = hub.local_addr().to_string();
    let connect = |id: &'static str| {
        Client::builder(id)
            .addr(addr.clone())
            .token(TOKEN)
            .backoff(Duration::from_millis(10), Duration::from_millis(100))
            .connect()
    };
    let sub_client = connect("subscriber").await?;
    let server = connect("server").await?;
    let publisher = connect("publisher").await?;
    let mut sub = sub_client.subscribe("news.>").await?;
    let mut watch = sub_client.kv().watch("token").await?;
    let _serving = server
        .serve(|req| async move { Ok::<_, String>(req.payload().clone()) })
        .await?;

    // A request held by a handler that never answers fails with
    // Disconnected when the hub goes away.
    let slow = connect("slow").await?;
    let mut slow_requests = slow.requests().await?;
    let held = tokio::spawn(async move { slow_requests.next().await });
    let in_flight = {
        let publisher = publisher.clone();
        tokio::spawn(async move {
            publisher
                .request_with("slow", "", "wait", Duration::from_secs(30))
                .await
        })
    };
    let _held_request = within(held).await??;

    hub.shutdown().await;
    match within(in_flight).await?? {
        Err(ClientError::Disconnected) => {}
        other => panic!("expected Disconnected, got {other:?}"),
    }
    let mut state = sub_client.state();
    within(state.wait_for(|s| matches!(s, ConnectionState::Reconnecting { .. }))).await??;

    let _hub2 = hub_on(&addr).await?;
    for c in [&sub_client, &server, &publisher] {
        wait_generation(c, 2).await?;
    }
    publisher.publish("news.today", "after restart").await?;
    let m = within(sub.next()).await?.expect("delivery after restart");
    assert_eq!(&m.payload[..], b"after restart");

    publisher.kv().set("token", "fresh").await?;
    let ev = within(watch.next()).await?.expect("update after restart");
    assert_eq!(&ev.value[..], b"fresh");

    let reply = within(publisher.request("server", "ping")).await??;
    assert_eq!(&reply[..], b"ping");
    Ok(())
}

#[tokio::test]
async fn a_client_without_reconnect_closes_when_the_hub_stops() -> anyhow::Result<()> {
    let hub = hub_on("127.0.0.1:0").await?;
    let client = Client::builder("once")
        .addr(hub.local_addr().to_string())
        .token(TOKEN)
        .reconnect(false)
        .connect()
        .await?;
    hub.shutdown().await;
    let mut state = client.state();
    within(state.wait_for(|s| matches!(s, ConnectionState::Closed { .. }))).await??;
    assert!(client.publish("x", "y").await.is_err());
    Ok(())
}
