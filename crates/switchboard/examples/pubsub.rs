//! Topic publish/subscribe with wildcards and a queue group.
//!
//! Run: `cargo run -p switchboard --example pubsub`

use futures::StreamExt;
use switchboard::{Client, Hub};

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

    let audit = connect("audit").await?;
    let eu = connect("eu-desk").await?;
    let shop = connect("shop").await?;

    // One-to-many: both subscribers see orders they match.
    let mut all_orders = audit.subscribe("orders.>").await?;
    let mut eu_created = eu.subscribe("orders.eu.*").await?;
    shop.publish("orders.eu.created", "order 1").await?;
    shop.publish("orders.us.created", "order 2").await?;
    for _ in 0..2 {
        let m = all_orders.next().await.ok_or("subscription ended")?;
        println!(
            "audit   got {:<18} {}",
            m.topic,
            String::from_utf8_lossy(&m.payload)
        );
    }
    let m = eu_created.next().await.ok_or("subscription ended")?;
    println!(
        "eu-desk got {:<18} {}",
        m.topic,
        String::from_utf8_lossy(&m.payload)
    );

    // Queue group: each job goes to one worker of the group.
    let w1 = connect("worker-1").await?;
    let w2 = connect("worker-2").await?;
    let mut j1 = w1.subscribe_group("jobs.*", "workers").await?;
    let mut j2 = w2.subscribe_group("jobs.*", "workers").await?;
    for i in 0..6 {
        shop.publish(&format!("jobs.{i}"), "resize").await?;
    }
    let (mut n1, mut n2) = (0, 0);
    while n1 + n2 < 6 {
        tokio::select! {
            Some(_) = j1.next() => n1 += 1,
            Some(_) = j2.next() => n2 += 1,
        }
    }
    println!("6 jobs shared by the queue group: worker-1 {n1}, worker-2 {n2}");

    hub.shutdown().await;
    Ok(())
}
