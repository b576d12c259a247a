//! An ordered TR-069-style session over the hub: a manager pushes RPCs at
//! any time to an agent that only has an outbound connection; the agent
//! runs them one at a time, in order, and answers each with its id.
//!
//! Run: `cargo run -p switchboard --example session`

use std::time::Duration;

use switchboard::session::driver::{ManagerOptions, Methods};
use switchboard::session::{fault, fault_code, AgentConfig};
use switchboard::{Bytes, Client, Hub};

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

    let acs = connect("acs").await?;
    let cpe = connect("cpe-7").await?;
    let manager = acs.session_manager(ManagerOptions::default());

    let methods = Methods::new()
        .add("GetParameterValues", |p: Bytes| async move {
            Ok(Bytes::from(format!("{}=42", String::from_utf8_lossy(&p))))
        })
        .add("Reboot", |_p: Bytes| async move {
            Err(fault("", fault_code::REQUEST_DENIED, "not now"))
        });
    let agent = cpe.session_agent("acs", AgentConfig::new("cpe-7"), methods);

    // Pushed back to back; the agent runs them in this order.
    let first = manager
        .push("cpe-7", "GetParameterValues", Bytes::from("Device.Uptime"))
        .await?;
    let second = manager.push("cpe-7", "Reboot", Bytes::new()).await?;
    let third = manager.push("cpe-7", "Unknown", Bytes::new()).await?;

    let r = tokio::time::timeout(Duration::from_secs(10), first).await??;
    println!("rpc {} ok: {}", r.id, String::from_utf8_lossy(&r.payload));
    for pending in [second, third] {
        match tokio::time::timeout(Duration::from_secs(10), pending).await? {
            Ok(r) => println!("rpc {} ok", r.id),
            Err(e) => println!("rpc failed as the agent said: {e}"),
        }
    }

    let _ = agent.shutdown().await;
    manager.shutdown().await;
    hub.shutdown().await;
    Ok(())
}
