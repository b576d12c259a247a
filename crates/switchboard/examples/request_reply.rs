//! Request/reply between two clients through an in-process hub.
//!
//! Run: `cargo run -p switchboard --example request_reply`

use std::time::Duration;

use switchboard::{Client, ClientError, Hub};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let hub = Hub::builder()
        .token("example")
        .listen("127.0.0.1:0")
        .write_hint(false)
        .start()
        .await?;
    let addr = hub.local_addr().to_string();
    println!("hub on {addr}");

    // A calculator that answers "a+b".
    let calc = Client::builder("calc")
        .addr(&addr)
        .token("example")
        .connect()
        .await?;
    let _serving = calc
        .serve(|req| async move {
            let text = String::from_utf8_lossy(req.payload()).to_string();
            let (a, b) = text.split_once('+').ok_or("expected a+b")?;
            let sum: i64 = a.trim().parse::<i64>().map_err(|e| e.to_string())?
                + b.trim().parse::<i64>().map_err(|e| e.to_string())?;
            Ok::<_, String>(sum.to_string().into())
        })
        .await?;

    let user = Client::builder("user")
        .addr(&addr)
        .token("example")
        .connect()
        .await?;
    let reply = user.request("calc", "2+40").await?;
    println!("2+40 = {}", String::from_utf8_lossy(&reply));

    match user.request("calc", "two+forty").await {
        Err(ClientError::Remote(msg)) => println!("bad input is an error reply: {msg}"),
        other => println!("unexpected: {other:?}"),
    }
    match user
        .request_with("nobody", "", "1+1", Duration::from_secs(1))
        .await
    {
        Err(e @ ClientError::NoSuchClient(_)) => println!("unknown target fails at once: {e}"),
        other => println!("unexpected: {other:?}"),
    }

    user.close().await;
    calc.close().await;
    hub.shutdown().await;
    Ok(())
}
