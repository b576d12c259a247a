//! Idle connections: connect many clients that then do nothing, and read the
//! server's resident memory (`VmRSS` in `/proc/PID/status`) before and after.
//!
//! switchboard clients are full `switchboard::Client`s (handshake with proofs
//! both ways). Peer clients are minimal but complete sessions on raw sockets:
//! NATS `CONNECT` + `PING`/`PONG`, an MQTT 3.1.1 `CONNECT`/`CONNACK`, a redis
//! `PING`; what is measured is the server's memory, not the client's.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use futures::StreamExt;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

use crate::drivers::Switchboard;
use crate::procs::rss_kib;

/// Connections opened at the same time while connecting.
const CONCURRENCY: usize = 32;

/// What the idle run measured.
#[derive(Debug, Clone, Copy)]
pub struct IdleResult {
    /// Clients that connected.
    pub connected: u64,
    /// Server RSS before, in KiB.
    pub before_kib: u64,
    /// Server RSS with all clients connected, in KiB.
    pub after_kib: u64,
}

impl IdleResult {
    /// Server memory growth per connected client, in KiB.
    pub fn kib_per_client(&self) -> f64 {
        if self.connected == 0 {
            return 0.0;
        }
        self.after_kib.saturating_sub(self.before_kib) as f64 / self.connected as f64
    }
}

/// Which protocol the idle clients speak.
#[derive(Clone)]
pub enum Proto {
    /// switchboard clients through the facade.
    Switchboard(Switchboard),
    /// NATS text protocol.
    Nats,
    /// MQTT 3.1.1.
    Mqtt,
    /// RESP.
    Redis,
}

/// A connection kept open only to be measured.
pub(crate) type Held = Box<dyn std::any::Any + Send>;

pub(crate) async fn open(proto: &Proto, addr: SocketAddr, i: usize) -> Result<Held> {
    Ok(match proto {
        Proto::Switchboard(d) => Box::new(d.connect_as(&d.fresh_id("idle"), 16).await?),
        Proto::Nats => {
            let mut s = BufReader::new(TcpStream::connect(addr).await?);
            let mut line = String::new();
            s.read_line(&mut line).await?;
            if !line.starts_with("INFO") {
                bail!("nats-server greeted with {line:?}");
            }
            s.get_mut()
                .write_all(b"CONNECT {\"verbose\":false,\"pedantic\":false}\r\nPING\r\n")
                .await?;
            line.clear();
            s.read_line(&mut line).await?;
            if !line.starts_with("PONG") {
                bail!("nats-server answered {line:?} to PING");
            }
            Box::new(s.into_inner())
        }
        Proto::Mqtt => {
            let mut s = TcpStream::connect(addr).await?;
            let id = format!("idle-{}-{i}", std::process::id());
            let mut body = vec![0, 4, b'M', b'Q', b'T', b'T', 4, 0x02, 0, 60];
            body.extend_from_slice(&(id.len() as u16).to_be_bytes());
            body.extend_from_slice(id.as_bytes());
            let mut packet = vec![0x10, body.len() as u8];
            packet.extend_from_slice(&body);
            s.write_all(&packet).await?;
            let mut ack = [0u8; 4];
            s.read_exact(&mut ack).await?;
            if ack[0] != 0x20 || ack[3] != 0 {
                bail!("mosquitto refused the connection: {ack:02x?}");
            }
            Box::new(s)
        }
        Proto::Redis => {
            let mut s = TcpStream::connect(addr).await?;
            s.write_all(b"PING\r\n").await?;
            let mut pong = [0u8; 7];
            s.read_exact(&mut pong).await?;
            if &pong != b"+PONG\r\n" {
                bail!("redis answered {:?}", String::from_utf8_lossy(&pong));
            }
            Box::new(s)
        }
    })
}

/// Connects `n` idle clients to the server `pid` listening on `addr` and
/// reports its memory growth; stops early at the first failure or after
/// `limit`.
pub async fn run(
    proto: Proto,
    addr: SocketAddr,
    pid: u32,
    n: usize,
    limit: Duration,
) -> Result<IdleResult> {
    tokio::time::sleep(Duration::from_millis(200)).await;
    let before_kib = rss_kib(pid).context("reading the server's VmRSS")?;
    let connect = futures::stream::iter(0..n)
        .map(|i| {
            let proto = proto.clone();
            async move {
                tokio::time::timeout(Duration::from_secs(10), open(&proto, addr, i))
                    .await
                    .unwrap_or_else(|_| Err(anyhow::anyhow!("connection {i} timed out")))
            }
        })
        .buffer_unordered(CONCURRENCY);
    let mut held = Vec::with_capacity(n);
    let mut first_error = None;
    let run = async {
        futures::pin_mut!(connect);
        while let Some(r) = connect.next().await {
            match r {
                Ok(h) => held.push(h),
                Err(e) => {
                    first_error = Some(e);
                    break;
                }
            }
        }
    };
    let in_time = tokio::time::timeout(limit, run).await.is_ok();
    // let the server settle (buffers, lazily allocated state)
    tokio::time::sleep(Duration::from_millis(500)).await;
    let after_kib = rss_kib(pid).context("reading the server's VmRSS")?;
    let connected = held.len() as u64;
    drop(held);
    if let Some(e) = first_error {
        bail!("{connected} of {n} idle clients connected, then: {e:#}");
    }
    if !in_time {
        bail!("only {connected} of {n} idle clients connected within {limit:?}");
    }
    Ok(IdleResult {
        connected,
        before_kib,
        after_kib,
    })
}
