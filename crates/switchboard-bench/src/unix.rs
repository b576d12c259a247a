//! The Unix socket against TCP loopback, on one hub: 1→1 pub/sub
//! throughput and request/reply p50, each measured over both transports in
//! the same run (TCP first) and reported as a ratio, above 1 when the
//! socket is faster. The two workloads (`pubsub`, `reqrep`) are also what
//! the policy rows measure, over TCP to a hub with and without a policy.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Instant;

use anyhow::{ensure, Context, Result};
use bytes::Bytes;
use futures::StreamExt;
use switchboard::{Client, ClientBuilder};

/// Publishes in flight at once (each waits until the hub routed it).
const WINDOW: usize = 64;

/// Where the clients of one measurement connect.
#[derive(Clone, Copy)]
pub(crate) enum Via<'a> {
    Tcp(SocketAddr),
    Unix(&'a Path),
}

impl Via<'_> {
    fn builder(self, id: String, token: &str) -> ClientBuilder {
        let b = Client::builder(id).token(token);
        match self {
            Via::Tcp(addr) => b.addr(addr.to_string()),
            Via::Unix(path) => b.unix(path),
        }
    }
}

/// Messages/s of `n` 64-byte publishes from one client to one subscriber,
/// [`WINDOW`] in flight.
pub(crate) async fn pubsub(via: Via<'_>, token: &str, n: usize, tag: &str) -> Result<f64> {
    let publisher = via
        .builder(format!("unix-bench-pub-{tag}"), token)
        .connect()
        .await?;
    let subscriber = via
        .builder(format!("unix-bench-sub-{tag}"), token)
        .connect()
        .await?;
    let topic = format!("bench.unix.{tag}");
    let mut sub = subscriber.subscribe(&topic).await?;
    let payload = Bytes::from(vec![7u8; 64]);
    let start = Instant::now();
    let received = tokio::spawn(async move {
        let mut got = 0;
        while got < n {
            if sub.next().await.is_none() {
                break;
            }
            got += 1;
        }
        got
    });
    let mut sends = futures::stream::iter(0..n)
        .map(|_| publisher.publish(&topic, payload.clone()))
        .buffer_unordered(WINDOW);
    while let Some(r) = sends.next().await {
        r?;
    }
    let got = received.await?;
    ensure!(got == n, "the subscriber got {got} of {n} messages");
    Ok(n as f64 / start.elapsed().as_secs_f64())
}

/// Median µs of `n` sequential 64-byte requests to an echoing client.
pub(crate) async fn reqrep(via: Via<'_>, token: &str, n: usize, tag: &str) -> Result<f64> {
    let server_id = format!("unix-bench-echo-{tag}");
    let server = via.builder(server_id.clone(), token).connect().await?;
    let _serving = server
        .serve(|req| async move { Ok::<_, String>(req.payload().clone()) })
        .await?;
    let asker = via
        .builder(format!("unix-bench-ask-{tag}"), token)
        .connect()
        .await?;
    let payload = Bytes::from(vec![7u8; 64]);
    let mut us = Vec::with_capacity(n);
    for _ in 0..n {
        let t = Instant::now();
        let reply = asker.request(&server_id, payload.clone()).await?;
        us.push(t.elapsed().as_secs_f64() * 1e6);
        ensure!(reply == payload, "a reply differs from its request");
    }
    us.sort_by(f64::total_cmp);
    Ok(us[us.len() / 2])
}

/// The socket's pub/sub throughput over TCP's, and a note with both.
pub async fn pubsub_ratio(
    tcp: SocketAddr,
    unix: Option<&Path>,
    token: &str,
    n: usize,
    run: usize,
) -> Result<(f64, String)> {
    let unix = unix.context("the hub has no unix socket")?;
    let t = pubsub(Via::Tcp(tcp), token, n, &format!("tcp-{run}")).await?;
    let u = pubsub(Via::Unix(unix), token, n, &format!("unix-{run}")).await?;
    Ok((u / t, format!("unix {u:.0} msgs/s, tcp {t:.0} msgs/s")))
}

/// TCP's request/reply p50 over the socket's, and a note with both.
pub async fn reqrep_ratio(
    tcp: SocketAddr,
    unix: Option<&Path>,
    token: &str,
    n: usize,
    run: usize,
) -> Result<(f64, String)> {
    let unix = unix.context("the hub has no unix socket")?;
    let t = reqrep(Via::Tcp(tcp), token, n, &format!("tcp-{run}")).await?;
    let u = reqrep(Via::Unix(unix), token, n, &format!("unix-{run}")).await?;
    Ok((t / u, format!("p50 unix {u:.1} µs, tcp {t:.1} µs")))
}
