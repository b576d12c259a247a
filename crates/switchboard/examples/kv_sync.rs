//! Shared key/value state: one process sets a login token, the others see
//! it at once (and every later change, in order).
//!
//! Run: `cargo run -p switchboard --example kv_sync`

use futures::StreamExt;
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
    let connect = |id: &'static str| {
        Client::builder(id)
            .addr(addr.clone())
            .token("example")
            .connect()
    };

    let login = connect("login").await?;
    let mail = connect("mail").await?;
    let calendar = connect("calendar").await?;

    let mut mail_watch = mail.kv().watch("auth.token").await?;
    let mut cal_watch = calendar.kv().watch("auth.token").await?;

    let v1 = login.kv().set("auth.token", "tok-1").await?;
    for (name, w) in [("mail", &mut mail_watch), ("calendar", &mut cal_watch)] {
        let ev = w.next().await.ok_or("watch ended")?;
        println!(
            "{name:<8} sees auth.token = {} (version {}, by {})",
            String::from_utf8_lossy(&ev.value),
            ev.version,
            ev.by
        );
    }

    // Compare-and-set: refresh the token only if nobody else did.
    let v2 = login.kv().cas("auth.token", v1, "tok-2").await?;
    println!("refreshed to version {v2}");
    match mail.kv().cas("auth.token", v1, "tok-from-mail").await {
        Err(ClientError::VersionMismatch(msg)) => println!("a stale refresh is refused: {msg}"),
        other => println!("unexpected: {other:?}"),
    }
    let ev = mail_watch.next().await.ok_or("watch ended")?;
    println!(
        "mail     sees auth.token = {} (version {})",
        String::from_utf8_lossy(&ev.value),
        ev.version
    );

    login.kv().delete("auth.token").await?;
    let ev = cal_watch.next().await.ok_or("watch ended")?; // tok-2
    let ev2 = cal_watch.next().await.ok_or("watch ended")?; // deletion
    println!(
        "calendar saw version {} then deleted={} (version {})",
        ev.version, ev2.deleted, ev2.version
    );

    hub.shutdown().await;
    Ok(())
}
