//! Idle connections: connect many clients that then do nothing, and read the
//! server's resident memory (`VmRSS` in `/proc/PID/status`) before and after.
//!
//! switchboard clients are full `switchboard::Client`s (handshake with proofs
//! both ways) in the 10,000-client row, and minimal sessions on raw sockets
//! in the 100,000-client row ([`Proto::SwitchboardRaw`]: the same `Hello`,
//! `Challenge`, `Auth`, `Welcome` handshake through the sans-I/O
//! `ClientHandshake`, then a `Ping` every 20 s; a full client costs the
//! harness tens of KiB, which 100,000 times is more than the hub). Peer
//! clients are minimal but complete sessions on raw sockets: NATS
//! `CONNECT`, `PING`/`PONG`, an MQTT 3.1.1 `CONNECT`/`CONNACK` (keep-alive off), a
//! redis `PING`; what is measured is the server's memory, not the client's.
//!
//! Beyond about 28,000 connections one (source, destination) address pair
//! runs out of ephemeral ports, so a run with `per_source` set binds its
//! clients to several loopback source addresses (127.0.0.2, 127.0.0.3, …;
//! every run takes fresh ones, so ports left in `TIME_WAIT` by an earlier
//! run never collide).

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use bytes::{Buf, BytesMut};
use futures::StreamExt;
use prost::Message as _;
use switchboard::discovery::handshake::{ClientHandshake, HandshakeParams, Step};
use switchboard::discovery::{nonce, Secret};
use switchboard::wire::proto;
use switchboard::wire::{put_frame, Frame, LENGTH_PREFIX_LEN};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpSocket, TcpStream};

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
    /// Minimal switchboard sessions on raw sockets, authenticated with
    /// this token.
    SwitchboardRaw(String),
    /// NATS text protocol.
    Nats,
    /// MQTT 3.1.1.
    Mqtt,
    /// RESP.
    Redis,
}

/// A connection kept open only to be measured.
pub(crate) type Held = Box<dyn std::any::Any + Send>;

/// The first source address (as an offset in 127.0.0.0/8) the next spread
/// run takes.
static NEXT_SOURCE: AtomicU32 = AtomicU32::new(2);

/// `count` loopback source addresses no earlier run used.
fn fresh_sources(count: usize) -> Vec<Ipv4Addr> {
    let first = NEXT_SOURCE.fetch_add(count as u32, Ordering::Relaxed);
    (0..count as u32)
        .map(|k| Ipv4Addr::from(u32::from(Ipv4Addr::new(127, 0, 0, 0)) + first + k))
        .collect()
}

/// A TCP connection to `addr`, from source address `src` when given.
async fn connect(addr: SocketAddr, src: Option<Ipv4Addr>) -> Result<TcpStream> {
    let Some(ip) = src else {
        return Ok(TcpStream::connect(addr).await?);
    };
    let s = TcpSocket::new_v4()?;
    s.bind(SocketAddr::from((ip, 0)))
        .with_context(|| format!("binding a client socket to {ip}"))?;
    Ok(s.connect(addr).await?)
}

/// Writes one frame.
async fn send_frame(s: &mut TcpStream, frame: &Frame) -> Result<()> {
    let mut out = BytesMut::new();
    put_frame(frame, &mut out);
    s.write_all(&out).await?;
    Ok(())
}

/// Reads one frame (at most 64 KiB).
async fn recv_frame(s: &mut TcpStream, buf: &mut BytesMut) -> Result<Frame> {
    loop {
        if buf.len() >= LENGTH_PREFIX_LEN {
            let len = u32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]) as usize;
            if len > 64 * 1024 {
                bail!("the hub sent a frame of {len} bytes in the handshake");
            }
            if buf.len() >= LENGTH_PREFIX_LEN + len {
                buf.advance(LENGTH_PREFIX_LEN);
                let body = buf.split_to(len);
                return Ok(Frame::decode(body.freeze())?);
            }
        }
        if s.read_buf(buf).await? == 0 {
            bail!("the hub closed the connection in the handshake");
        }
    }
}

/// A switchboard session kept alive by its own task: a `Ping` every 20 s
/// (the hub drops clients silent for three keep-alive intervals, 90 s by
/// default), what the hub sends read and dropped. Ends when dropped.
struct RawSession(tokio::task::JoinHandle<()>);

impl Drop for RawSession {
    fn drop(&mut self) {
        self.0.abort();
    }
}

async fn raw_switchboard(mut s: TcpStream, token: &str, id: String) -> Result<RawSession> {
    let params = HandshakeParams {
        client_id: id,
        agent: "switchboard-bench idle".into(),
        ..HandshakeParams::default()
    };
    let (mut handshake, hello) = ClientHandshake::new(params, &Secret::from_token(token), nonce());
    send_frame(&mut s, &hello).await?;
    let mut buf = BytesMut::with_capacity(1024);
    while let Step::Send(frame) | Step::SendLast(frame, _) =
        handshake.on_frame(recv_frame(&mut s, &mut buf).await?)?
    {
        send_frame(&mut s, &frame).await?;
    }
    drop(buf);
    let task = tokio::spawn(async move {
        let mut sink = [0u8; 64];
        let mut tick = tokio::time::interval(Duration::from_secs(20));
        tick.tick().await;
        let mut n = 0u64;
        loop {
            tokio::select! {
                _ = tick.tick() => {
                    n += 1;
                    let ping = Frame::from(proto::Ping { nonce: n });
                    if send_frame(&mut s, &ping).await.is_err() {
                        return;
                    }
                }
                r = s.read(&mut sink) => {
                    if !matches!(r, Ok(k) if k > 0) {
                        return;
                    }
                }
            }
        }
    });
    Ok(RawSession(task))
}

pub(crate) async fn open(proto: &Proto, addr: SocketAddr, i: usize) -> Result<Held> {
    open_from(proto, addr, None, i).await
}

async fn open_from(
    proto: &Proto,
    addr: SocketAddr,
    src: Option<Ipv4Addr>,
    i: usize,
) -> Result<Held> {
    Ok(match proto {
        Proto::Switchboard(d) => Box::new(d.connect_as(&d.fresh_id("idle"), 16).await?),
        Proto::SwitchboardRaw(token) => {
            let s = connect(addr, src).await?;
            let id = format!("idle-{}-{i}", std::process::id());
            Box::new(raw_switchboard(s, token, id).await?)
        }
        Proto::Nats => {
            let mut s = BufReader::new(connect(addr, src).await?);
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
            let mut s = connect(addr, src).await?;
            let id = format!("idle-{}-{i}", std::process::id());
            // Keep-alive 0: mosquitto would drop a client silent for 1.5
            // keep-alive intervals, and a large run takes longer than that.
            let mut body = vec![0, 4, b'M', b'Q', b'T', b'T', 4, 0x02, 0, 0];
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
            let mut s = connect(addr, src).await?;
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
/// `limit`. With `per_source`, clients are spread over fresh loopback
/// source addresses, at most that many on each.
pub async fn run(
    proto: Proto,
    addr: SocketAddr,
    pid: u32,
    n: usize,
    per_source: Option<usize>,
    limit: Duration,
) -> Result<IdleResult> {
    let sources = match per_source {
        Some(per) => fresh_sources(n.div_ceil(per.max(1)).max(1)),
        None => Vec::new(),
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    let before_kib = rss_kib(pid).context("reading the server's VmRSS")?;
    let connect = futures::stream::iter(0..n)
        .map(|i| {
            let proto = proto.clone();
            let src = (!sources.is_empty()).then(|| sources[i % sources.len()]);
            async move {
                tokio::time::timeout(Duration::from_secs(10), open_from(&proto, addr, src, i))
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
