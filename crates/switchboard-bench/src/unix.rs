//! The Unix socket against TCP loopback, on one hub: 1→1 pub/sub
//! throughput and request/reply p50 over both transports, measured
//! alternately in the same run ([`paired`]) and reported as a ratio, above
//! 1 when the socket is faster.

use std::net::SocketAddr;
use std::path::Path;

use anyhow::{Context, Result};

use crate::ratios::{paired, pubsub, reqrep, Via};

/// Payload of both rows, bytes.
const PAYLOAD: usize = 64;

/// The socket's pub/sub throughput over TCP's, and a note with both.
pub async fn pubsub_ratio(
    tcp: SocketAddr,
    unix: Option<&Path>,
    token: &str,
    n: usize,
    run: usize,
) -> Result<(f64, String)> {
    let unix = unix.context("the hub has no unix socket")?;
    let (t, u) = paired(
        |r| pubsub(Via::Tcp(tcp), token, n, PAYLOAD, format!("tcp-{run}-{r}")),
        |r| {
            pubsub(
                Via::Unix(unix),
                token,
                n,
                PAYLOAD,
                format!("unix-{run}-{r}"),
            )
        },
        true,
    )
    .await?;
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
    let (t, u) = paired(
        |r| reqrep(Via::Tcp(tcp), token, n, format!("tcp-{run}-{r}")),
        |r| reqrep(Via::Unix(unix), token, n, format!("unix-{run}-{r}")),
        false,
    )
    .await?;
    Ok((t / u, format!("p50 unix {u:.1} µs, tcp {t:.1} µs")))
}
