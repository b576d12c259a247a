//! The workloads of the switchboard-only ratio rows (the Unix socket
//! against TCP, TLS against plaintext, a policy against none): one
//! 1→1 pub/sub throughput and one request/reply latency, run through any
//! way of reaching a hub, and a pairing that measures the two sides of a
//! ratio alternately (A, B, A, B) and keeps each side's better run, so a
//! burst of load on the machine does not land on one side only.

use std::future::Future;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Instant;

use anyhow::{ensure, Result};
use bytes::Bytes;
use futures::StreamExt;
use switchboard::{Client, ClientBuilder, TlsOptions};

/// Publishes in flight at once (each waits until the hub routed it).
const WINDOW: usize = 64;

/// Where the clients of one measurement connect.
#[derive(Clone, Copy)]
pub enum Via<'a> {
    /// Plain TCP.
    Tcp(SocketAddr),
    /// The hub's Unix socket.
    Unix(&'a Path),
    /// TLS, trusting the CA in this PEM.
    Tls(SocketAddr, &'a str),
    /// The WebSocket gateway of the hub's HTTP listener at this address.
    Ws(SocketAddr),
}

impl Via<'_> {
    fn builder(self, id: String, token: &str) -> ClientBuilder {
        let b = Client::builder(id).token(token);
        match self {
            Via::Tcp(addr) => b.addr(addr.to_string()),
            Via::Unix(path) => b.unix(path),
            Via::Tls(addr, ca) => b.addr(addr.to_string()).tls(TlsOptions::ca_pem(ca)),
            Via::Ws(http) => b.websocket(format!("ws://{http}/v1/ws")),
        }
    }
}

/// Messages/s of `n` publishes of `size` bytes from one client to one
/// subscriber, [`WINDOW`] in flight; `tag` keeps ids and topics apart.
pub async fn pubsub(via: Via<'_>, token: &str, n: usize, size: usize, tag: String) -> Result<f64> {
    let publisher = via
        .builder(format!("bench-pub-{tag}"), token)
        .connect()
        .await?;
    let subscriber = via
        .builder(format!("bench-sub-{tag}"), token)
        .connect()
        .await?;
    let topic = format!("bench.unix.{tag}");
    let mut sub = subscriber.subscribe(&topic).await?;
    let payload = Bytes::from(vec![7u8; size]);
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
    let rate = n as f64 / start.elapsed().as_secs_f64();
    publisher.close().await;
    subscriber.close().await;
    Ok(rate)
}

/// Median µs of `n` sequential 64-byte requests to an echoing client.
pub async fn reqrep(via: Via<'_>, token: &str, n: usize, tag: String) -> Result<f64> {
    let server_id = format!("bench-echo-{tag}");
    let server = via.builder(server_id.clone(), token).connect().await?;
    let serving = server
        .serve(|req| async move { Ok::<_, String>(req.payload().clone()) })
        .await?;
    let asker = via
        .builder(format!("bench-ask-{tag}"), token)
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
    drop(serving);
    asker.close().await;
    server.close().await;
    Ok(us[us.len() / 2])
}

/// Runs `a` and `b` alternately, twice each (A, B, A, B; `round` is 0 or
/// 1), and returns each side's best: the higher when `higher_is_better`,
/// else the lower.
pub async fn paired<FA, FB, A, B>(mut a: A, mut b: B, higher_is_better: bool) -> Result<(f64, f64)>
where
    A: FnMut(usize) -> FA,
    B: FnMut(usize) -> FB,
    FA: Future<Output = Result<f64>>,
    FB: Future<Output = Result<f64>>,
{
    let better = |x: f64, y: f64| if higher_is_better { x.max(y) } else { x.min(y) };
    let a0 = a(0).await?;
    let b0 = b(0).await?;
    let a1 = a(1).await?;
    let b1 = b(1).await?;
    Ok((better(a0, a1), better(b0, b1)))
}
