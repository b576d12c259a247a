//! A thousand clients connected at once, each sending requests to another.

use std::time::Duration;

use switchboard::Client;
use switchboard_tests::{hub, TOKEN};

const CLIENTS: usize = 1000;
const ROUNDS: usize = 3;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thousand_concurrent_clients_exchange_requests() -> anyhow::Result<()> {
    let hub = hub().await?;
    let addr = hub.local_addr().to_string();
    let connects = (0..CLIENTS).map(|i| {
        let addr = addr.clone();
        async move {
            Client::builder(format!("c{i}"))
                .addr(addr)
                .token(TOKEN)
                .connect_timeout(Duration::from_secs(20))
                .connect()
                .await
        }
    });
    let clients: Vec<Client> = futures::future::try_join_all(connects).await?;
    let servers = futures::future::try_join_all(clients.iter().map(|c| {
        let me = c.id().to_string();
        c.serve(move |req| {
            let me = me.clone();
            async move {
                let mut out = me.into_bytes();
                out.push(b':');
                out.extend_from_slice(req.payload());
                Ok::<_, String>(out.into())
            }
        })
    }))
    .await?;
    assert_eq!(hub.status().clients, CLIENTS as u64);

    let work = clients.iter().enumerate().map(|(i, c)| async move {
        for round in 0..ROUNDS {
            let target = format!("c{}", (i + 1 + round) % CLIENTS);
            let payload = format!("{i}-{round}");
            let reply = c
                .request_with(&target, "", payload.clone(), Duration::from_secs(30))
                .await?;
            anyhow::ensure!(
                reply == format!("{target}:{payload}").as_bytes(),
                "wrong reply {reply:?} for {payload} from {target}"
            );
        }
        anyhow::Ok(())
    });
    tokio::time::timeout(Duration::from_secs(60), futures::future::try_join_all(work))
        .await
        .map_err(|_| anyhow::anyhow!("requests did not finish within 60 s"))??;
    drop(servers);
    Ok(())
}
