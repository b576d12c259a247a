//! Presence: watch clients join and leave, and list who is connected.
//!
//! Run: `cargo run -p switchboard --example presence`

use futures::StreamExt;
use switchboard::{Client, Hub, PresenceEvent};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let hub = Hub::builder()
        .token("example")
        .listen("127.0.0.1:0")
        .write_hint(false)
        .start()
        .await?;
    let addr = hub.local_addr().to_string();
    let connect = |id: &'static str| {
        Client::builder(id)
            .addr(addr.clone())
            .token("example")
            .connect()
    };

    let monitor = connect("monitor").await?;
    let mut presence = monitor.presence().await?;
    let now: Vec<_> = presence
        .current()
        .iter()
        .map(|c| c.client_id.as_str())
        .collect();
    println!("connected at start: {now:?}");

    let a = connect("worker-a").await?;
    let b = connect("worker-b").await?;
    let ids: Vec<_> = monitor
        .clients()
        .await?
        .into_iter()
        .map(|c| c.client_id)
        .collect();
    println!("clients(): {ids:?}");
    a.close().await;
    b.close().await;

    for _ in 0..4 {
        match presence.next().await.ok_or("presence ended")? {
            PresenceEvent::Joined(c) => println!("joined: {} (agent {:?})", c.client_id, c.agent),
            PresenceEvent::Left { client, reason } => {
                println!("left:   {} ({reason})", client.client_id)
            }
            other => println!("other:  {other:?}"),
        }
    }
    hub.shutdown().await;
    Ok(())
}
