//! An agent and a manager talking over loopback TCP.
//!
//! The manager listens on a free port; the agent connects, opens its first
//! session with a "1 BOOT" event, and runs whatever the manager pushes, one
//! RPC at a time, in order. The manager pushes a burst of RPCs without
//! waiting, an unknown method, and a failing one, prints the answers, then
//! both shut down.
//!
//! Run: `cargo run -p switchboard-session --example agent_manager`

use std::time::Duration;

use anyhow::Context as _;
use bytes::Bytes;
use switchboard_session::driver::{
    spawn_agent, spawn_manager, AgentOptions, LinkKind, ManagerOptions, Methods,
};
use switchboard_session::{fault, AgentConfig, ManagerConfig, ManagerEvent};
use switchboard_wire::FrameCodec;
use tokio::net::{TcpListener, TcpStream};
use tokio_util::codec::Framed;

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    // Manager (ACS-like): accepts agents on a free loopback port.
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let manager = spawn_manager(ManagerOptions {
        config: ManagerConfig {
            max_in_flight: 4, // pipelined; 1 is strict TR-069
            ..ManagerConfig::default()
        },
        ..ManagerOptions::default()
    });
    let m = manager.clone();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            if m.attach(Framed::new(stream, FrameCodec::default()), LinkKind::Direct)
                .await
                .is_err()
            {
                return;
            }
        }
    });
    let mut events = manager.subscribe();

    // Agent (CPE-like): keeps a connection to the manager and reconnects.
    let methods = Methods::new()
        .add("GetParameterValues", |names: Bytes| async move {
            let names = String::from_utf8_lossy(&names).into_owned();
            Ok(Bytes::from(format!("{names}=42")))
        })
        .add("Reboot", |_| async move {
            Err(fault("", 9001, "reboot refused: a transfer is running"))
        });
    let agent = spawn_agent(
        AgentOptions::new(AgentConfig::new("cpe-0001")),
        move || async move {
            Ok(Framed::new(
                TcpStream::connect(addr).await?,
                FrameCodec::default(),
            ))
        },
        methods,
    );

    // Push a burst without waiting; answers come back in order.
    let mut pending = Vec::new();
    for name in ["Device.Uptime", "Device.Temperature", "Device.Load"] {
        pending.push(
            manager
                .push("cpe-0001", "GetParameterValues", Bytes::from(name))
                .await?,
        );
    }
    pending.push(
        manager
            .push("cpe-0001", "FactoryReset", Bytes::new())
            .await?,
    );
    pending.push(manager.push("cpe-0001", "Reboot", Bytes::new()).await?);
    for p in pending {
        match tokio::time::timeout(Duration::from_secs(10), p)
            .await
            .context("no answer in time")?
        {
            Ok(r) => println!(
                "result  {:>2}  {}",
                r.id,
                String::from_utf8_lossy(&r.payload)
            ),
            Err(e) => println!("fault       {e}"),
        }
    }

    // What the manager saw of the sessions.
    while let Ok((agent_id, ev)) = events.try_recv() {
        match ev {
            ManagerEvent::SessionStarted { session_id, inform } => {
                let codes: Vec<_> = inform.events.iter().map(|e| e.code.as_str()).collect();
                println!("session {session_id} opened by {agent_id} with events {codes:?}");
            }
            ManagerEvent::SessionEnded { session_id } => println!("session {session_id} ended"),
            other => println!("event   {other:?}"),
        }
    }

    agent.shutdown().await?;
    manager.shutdown().await;
    Ok(())
}
