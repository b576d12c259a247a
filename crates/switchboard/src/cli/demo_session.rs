//! The demo's ordered session: a manager and an agent, both hub clients.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use switchboard::session::driver::{ManagerOptions, Methods};
use switchboard::session::AgentConfig;
use switchboard::{Bytes, Client};

pub async fn run(service: &str, token: &str, say: &impl Fn(String)) -> anyhow::Result<()> {
    let connect = |id: &'static str| {
        Client::builder(id)
            .service(service)
            .token(token)
            .agent("switchboard-demo")
            .connect()
    };
    let acs = connect("acs").await?;
    let cpe = connect("cpe-1").await?;
    let manager = acs.session_manager(ManagerOptions::default());

    // The agent runs each pushed RPC as a task, one at a time, in order.
    let ran = Arc::new(Mutex::new(Vec::<String>::new()));
    let log = ran.clone();
    let methods = Methods::new().add("SetParameterValues", move |p: Bytes| {
        let log = log.clone();
        async move {
            let text = String::from_utf8_lossy(&p).to_string();
            // A slower first task shows that later ones still wait their turn.
            if text.ends_with("=1") {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            log.lock()
                .map_err(|_| fault("log poisoned"))?
                .push(text.clone());
            Ok(Bytes::from(format!("applied {text}")))
        }
    });
    let agent = cpe.session_agent("acs", AgentConfig::new("cpe-1"), methods);
    say(
        "agent \"cpe-1\" keeps a connection to the hub; manager \"acs\" reaches it by id"
            .to_string(),
    );

    // Three RPCs pushed at once: they run one at a time, in push order.
    let mut pending = Vec::new();
    for i in 1..=3 {
        let rpc = manager
            .push(
                "cpe-1",
                "SetParameterValues",
                Bytes::from(format!("Device.Volume={i}")),
            )
            .await?;
        pending.push(rpc);
    }
    say("manager pushed 3 RPCs at once: Device.Volume=1, =2, =3".to_string());
    for rpc in pending {
        let result = tokio::time::timeout(Duration::from_secs(10), rpc).await??;
        say(format!(
            "rpc {} answered in order: {:?}",
            result.id,
            String::from_utf8_lossy(&result.payload)
        ));
    }
    let order = ran.lock().map(|v| v.clone()).unwrap_or_default();
    anyhow::ensure!(
        order == ["Device.Volume=1", "Device.Volume=2", "Device.Volume=3"],
        "tasks ran out of order: {order:?}"
    );
    say(format!(
        "the agent ran its tasks strictly in order: {}",
        order.join(", ")
    ));
    let _ = agent.shutdown().await;
    manager.shutdown().await;
    cpe.close().await;
    acs.close().await;
    Ok(())
}

fn fault(msg: &str) -> switchboard::wire::proto::Fault {
    switchboard::session::fault("", switchboard::session::fault_code::INTERNAL_ERROR, msg)
}
