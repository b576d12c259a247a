//! Loopback load test of the hub: pub/sub 1→1 and 1→10 with 64-byte
//! payloads (counted at the receivers), and sequential request/reply round
//! trips with p50/p99 latency.
//!
//! Run: `cargo bench -p switchboard-hub --bench load` (release mode). By
//! default the hub runs in a separate process (this binary re-executed), as
//! a real hub would; `--in-process` runs it on the bench's own runtime.
//! `--msgs N` sets the 1→1 message count (default 2,000,000; 1→10 uses a
//! tenth of it per subscriber).

use std::net::SocketAddr;
use std::process::Stdio;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use bytes::{Buf, Bytes, BytesMut};
use prost::Message;
use switchboard_discovery::{client_proof, nonce, BindOptions, PortChoice, Secret};
use switchboard_hub::{Hub, HubConfig};
use switchboard_wire::proto::{self, frame::Kind};
use switchboard_wire::{Frame, FrameCodec, PROTOCOL_VERSION};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;
use tokio::sync::Notify;
use tokio_util::codec::{Decoder, Encoder};

const TOKEN: &str = "bench";
const PAYLOAD: usize = 64;
/// A receiver that hears nothing for this long stops counting.
const IDLE: Duration = Duration::from_secs(2);
/// Messages a flow-controlled publisher may be ahead of its receivers.
const WINDOW: u64 = 16_384;

fn hub_config() -> HubConfig {
    let mut config = HubConfig::with_secret("bench", Secret::from_token(TOKEN));
    config.bind = BindOptions {
        ip: "127.0.0.1".parse().unwrap(),
        port: PortChoice::Os,
        ..BindOptions::default()
    };
    config.write_hint = false;
    config
}

/// Receivers' progress, for the flow-controlled runs.
#[derive(Default)]
struct Progress {
    /// Deliveries received plus drops reported, over all receivers.
    seen: AtomicU64,
    changed: Notify,
}

struct Conn {
    rd: OwnedReadHalf,
    wr: OwnedWriteHalf,
    buf: BytesMut,
    codec: FrameCodec,
    /// Deliveries the hub reported dropped (`Flow` notices).
    flow_dropped: u64,
}

impl Conn {
    async fn connect(addr: SocketAddr, id: &str) -> Result<Conn> {
        let stream = TcpStream::connect(addr).await?;
        stream.set_nodelay(true)?;
        let (rd, wr) = stream.into_split();
        let mut c = Conn {
            rd,
            wr,
            buf: BytesMut::with_capacity(256 * 1024),
            codec: FrameCodec::new(),
            flow_dropped: 0,
        };
        let secret = Secret::from_token(TOKEN);
        let client_nonce = nonce();
        c.send(proto::Hello {
            protocol_version: PROTOCOL_VERSION,
            client_id: id.into(),
            client_nonce: client_nonce.to_vec().into(),
            ..Default::default()
        })
        .await?;
        let Some(Kind::Challenge(ch)) = c.recv().await?.kind else {
            bail!("no challenge");
        };
        let proof = client_proof(&secret, &ch.hub_nonce, &client_nonce, id);
        c.send(proto::Auth {
            proof: proof.to_vec().into(),
        })
        .await?;
        let Some(Kind::Welcome(_)) = c.recv().await?.kind else {
            bail!("not welcomed");
        };
        Ok(c)
    }

    async fn send(&mut self, frame: impl Into<Frame>) -> Result<()> {
        let mut out = BytesMut::new();
        self.codec.encode(frame.into(), &mut out)?;
        self.wr.write_all(&out).await?;
        Ok(())
    }

    async fn recv(&mut self) -> Result<Frame> {
        loop {
            if let Some(f) = self.codec.decode(&mut self.buf)? {
                return Ok(f);
            }
            self.buf.reserve(64 * 1024);
            if self.rd.read_buf(&mut self.buf).await? == 0 {
                bail!("hub closed the connection");
            }
        }
    }

    async fn subscribe(&mut self, pattern: &str) -> Result<()> {
        self.send(proto::Subscribe {
            id: 1,
            sub_id: 1,
            pattern: pattern.into(),
            queue_group: String::new(),
            ..Default::default()
        })
        .await?;
        let f = self.recv().await?;
        if f != Frame::ok(1) {
            bail!("subscribe failed: {f:?}");
        }
        Ok(())
    }

    /// Counts deliveries until `expect` arrived or the stream is idle.
    /// With `light`, frames are recognised by their kind tag without being
    /// decoded (measures the hub rather than the receiver's decoding).
    async fn count_deliveries(
        mut self,
        expect: u64,
        light: bool,
        progress: Arc<Progress>,
    ) -> Result<(u64, Instant, u64)> {
        let mut got = 0u64;
        let mut reported = 0u64;
        let mut last = Instant::now();
        while got + self.flow_dropped < expect {
            // Decode every frame fully, as a client library would.
            while self.buf.len() >= 4 {
                let len = u32::from_be_bytes(self.buf[..4].try_into()?) as usize;
                if self.buf.len() < 4 + len {
                    break;
                }
                let body = &self.buf[4..4 + len];
                // `Frame.deliver` is field 47, length-delimited: key 0xFA 0x02.
                if light && body.starts_with(&[0xFA, 0x02]) {
                    got += 1;
                } else {
                    match Frame::decode(body)?.kind {
                        Some(Kind::Deliver(_)) => got += 1,
                        Some(Kind::Flow(f)) => self.flow_dropped += f.dropped,
                        other => bail!("unexpected frame {other:?}"),
                    }
                }
                self.buf.advance(4 + len);
            }
            let now_seen = got + self.flow_dropped;
            progress
                .seen
                .fetch_add(now_seen - reported, Ordering::Relaxed);
            reported = now_seen;
            progress.changed.notify_one();
            if got + self.flow_dropped >= expect {
                break;
            }
            self.buf.reserve(256 * 1024);
            match tokio::time::timeout(IDLE, self.rd.read_buf(&mut self.buf)).await {
                Ok(Ok(0)) | Err(_) => break,
                Ok(Ok(_)) => last = Instant::now(),
                Ok(Err(e)) => return Err(e.into()),
            }
        }
        Ok((got, last, self.flow_dropped))
    }
}

/// Publishes `n` pre-encoded 64-byte messages as fast as TCP takes them;
/// with a window, never more than `window` ahead of the receivers.
async fn publish(
    mut c: Conn,
    topic: String,
    n: u64,
    window: Option<(u64, u64, Arc<Progress>)>,
) -> Result<Conn> {
    let mut one = BytesMut::new();
    FrameCodec::new().encode(Frame::publish(topic, vec![0xab; PAYLOAD]), &mut one)?;
    let per_write = (64 * 1024 / one.len()).max(1) as u64;
    let mut chunk = BytesMut::with_capacity(one.len() * per_write as usize);
    for _ in 0..per_write {
        chunk.extend_from_slice(&one);
    }
    let mut sent = 0;
    while sent < n {
        if let Some((window, receivers, progress)) = &window {
            while sent * receivers > progress.seen.load(Ordering::Relaxed) + window * receivers {
                progress.changed.notified().await;
            }
        }
        let k = per_write.min(n - sent);
        c.wr.write_all(&chunk[..k as usize * one.len()]).await?;
        sent += k;
    }
    Ok(c)
}

async fn pubsub(
    addr: SocketAddr,
    subscribers: usize,
    n: u64,
    light: bool,
    window: Option<u64>,
) -> Result<()> {
    let tag = format!("{subscribers}-{light}-{}", window.unwrap_or(0));
    let topic = format!("bench.{tag}");
    let mut subs = Vec::new();
    for i in 0..subscribers {
        let mut s = Conn::connect(addr, &format!("sub{tag}-{i}")).await?;
        s.subscribe(&topic).await?;
        subs.push(s);
    }
    let p = Conn::connect(addr, &format!("pub{tag}")).await?;
    let progress = Arc::new(Progress::default());
    let counters: Vec<_> = subs
        .into_iter()
        .map(|s| tokio::spawn(s.count_deliveries(n, light, progress.clone())))
        .collect();
    let start = Instant::now();
    let publisher = tokio::spawn(publish(
        p,
        topic.clone(),
        n,
        window.map(|w| (w, subscribers as u64, progress.clone())),
    ));
    let mut delivered = 0;
    let mut reported = 0;
    let mut end = start;
    for c in counters {
        let (got, last, dropped) = c.await??;
        delivered += got;
        reported += dropped;
        end = end.max(last);
    }
    let sent_done = publisher.await??;
    drop(sent_done);
    let secs = end.duration_since(start).as_secs_f64();
    let sent = n * subscribers as u64;
    println!(
        "pub/sub 1->{subscribers} ({}, {}): {:>10.0} msgs/s delivered ({delivered}/{sent} delivered/sent, {:.1}%, {reported} reported dropped), {secs:.3} s",
        if light { "receivers check the kind tag" } else { "receivers decode" },
        match window {
            Some(w) => format!("publisher at most {w} ahead"),
            None => "open loop".to_owned(),
        },
        delivered as f64 / secs,
        100.0 * delivered as f64 / sent as f64
    );
    Ok(())
}

async fn request_reply(addr: SocketAddr, iterations: usize) -> Result<()> {
    let mut server = Conn::connect(addr, "replier").await?;
    let mut client = Conn::connect(addr, "requester").await?;
    let serve = tokio::spawn(async move {
        loop {
            let f = server.recv().await?;
            if let Some(Kind::Request(r)) = f.kind {
                server.send(Frame::reply(r.id, r.from, r.payload)).await?;
            }
        }
        #[allow(unreachable_code)]
        anyhow::Ok(())
    });
    let payload = Bytes::from(vec![0xcd; PAYLOAD]);
    let mut lat = Vec::with_capacity(iterations);
    let warmup = iterations / 10;
    let start_all = Instant::now();
    let mut measured_start = start_all;
    for i in 0..(warmup + iterations) {
        if i == warmup {
            measured_start = Instant::now();
        }
        let t = Instant::now();
        client
            .send(Frame::request(i as u64 + 1, "replier", payload.clone()))
            .await?;
        match client.recv().await?.kind {
            Some(Kind::Reply(r)) if r.id == i as u64 + 1 => {}
            other => bail!("unexpected {other:?}"),
        }
        if i >= warmup {
            lat.push(t.elapsed());
        }
    }
    let total = measured_start.elapsed();
    serve.abort();
    lat.sort();
    let pct = |p: f64| lat[((lat.len() as f64 * p) as usize).min(lat.len() - 1)];
    println!(
        "request/reply sequential: {:>8.0} round trips/s, p50 {:?}, p99 {:?} ({iterations} round trips)",
        iterations as f64 / total.as_secs_f64(),
        pct(0.50),
        pct(0.99),
    );
    Ok(())
}

async fn run_child_hub() -> Result<()> {
    let hub = Hub::start(hub_config()).await?;
    println!("{}", hub.local_addr());
    // Runs until the parent kills it or closes stdin.
    let _ = tokio::task::spawn_blocking(|| {
        let mut line = String::new();
        std::io::stdin().read_line(&mut line)
    })
    .await;
    hub.shutdown().await;
    Ok(())
}

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    if args.iter().any(|a| a == "--hub-child") {
        return rt.block_on(run_child_hub());
    }
    let n: u64 = args
        .iter()
        .position(|a| a == "--msgs")
        .and_then(|i| args.get(i + 1))
        .map(|v| v.parse())
        .transpose()?
        .unwrap_or(2_000_000);
    let in_process = args.iter().any(|a| a == "--in-process");
    rt.block_on(async move {
        let (addr, child, handle) = if in_process {
            let hub = Hub::start(hub_config()).await?;
            (hub.local_addr(), None, Some(hub))
        } else {
            let mut child = tokio::process::Command::new(std::env::current_exe()?)
                .arg("--hub-child")
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .kill_on_drop(true)
                .spawn()?;
            let stdout = child.stdout.take().context("child stdout")?;
            let mut line = String::new();
            tokio::io::BufReader::new(stdout)
                .read_line(&mut line)
                .await?;
            (line.trim().parse()?, Some(child), None)
        };
        println!(
            "hub {} on {addr}; {PAYLOAD}-byte payloads",
            if in_process {
                "in process"
            } else {
                "in a separate process"
            }
        );
        for (light, window) in [(false, None), (false, Some(WINDOW)), (true, Some(WINDOW))] {
            pubsub(addr, 1, n, light, window).await?;
            pubsub(addr, 10, n / 10, light, window).await?;
        }
        request_reply(addr, 20_000).await?;
        if let Some(hub) = handle {
            hub.shutdown().await;
        }
        if let Some(mut child) = child {
            drop(child.stdin.take());
            let _ = tokio::time::timeout(Duration::from_secs(5), child.wait()).await;
        }
        anyhow::Ok(())
    })
}
