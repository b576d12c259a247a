//! Hot-standby figures: failover time from SIGKILL of the primary to the
//! first message delivered through the new primary (p50/p99 over many
//! kills), messages lost, and publishing throughput with a standby
//! attached as a ratio of throughput without one.
//!
//! ```sh
//! cargo build --release -p switchboard --bins -p switchboard-bench
//! target/release/switchboard-bench failover [KILLS] [MESSAGES]
//! ```
//!
//! The comparison run (`cargo xtask bench`) reports the failover times as
//! a switchboard-only row. Hubs run as separate `switchboard hub`
//! processes, in a private runtime directory, on loopback.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde_json::Value;
use switchboard::{Bytes, Client, ConnectionState, Subscription};

pub(crate) const TOKEN: &str = "failover-bench";
const WAIT: Duration = Duration::from_secs(30);

pub(crate) struct HubProc {
    child: Child,
    events: mpsc::Receiver<Value>,
}

impl HubProc {
    pub(crate) fn start(bin: &Path, dir: &Path, service: &str, standby: bool) -> Result<HubProc> {
        let mut cmd = Command::new(bin);
        cmd.args(["--json", "--service", service, "--token", TOKEN, "hub"]);
        if standby {
            cmd.arg("--standby");
        }
        let mut child = cmd
            .env("SWITCHBOARD_RUNTIME_DIR", dir)
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(match std::env::var("BENCH_HUB_LOG") {
                // Hub logs appended to this file, for looking into a run.
                Ok(path) => std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(path)
                    .map(Stdio::from)
                    .unwrap_or_else(|_| Stdio::null()),
                Err(_) => Stdio::null(),
            })
            .spawn()
            .with_context(|| format!("starting {}", bin.display()))?;
        let (tx, rx) = mpsc::channel();
        let stdout = child.stdout.take().context("stdout")?;
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Ok(v) = serde_json::from_str::<Value>(&line) {
                    if tx.send(v).is_err() {
                        break;
                    }
                }
            }
        });
        Ok(HubProc { child, events: rx })
    }

    /// The hub process's id.
    pub(crate) fn pid(&self) -> u32 {
        self.child.id()
    }

    pub(crate) fn event(&self, name: &str) -> Result<Value> {
        let deadline = Instant::now() + WAIT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let v = self
                .events
                .recv_timeout(left)
                .with_context(|| format!("no {name} event"))?;
            if v["event"] == name {
                return Ok(v);
            }
        }
    }

    fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for HubProc {
    fn drop(&mut self) {
        self.kill9();
    }
}

pub(crate) async fn client(id: &str, addr: SocketAddr, reliable: bool) -> Result<Client> {
    Ok(Client::builder(id)
        .addr(addr.to_string())
        .token(TOKEN)
        .reliable(reliable)
        .stream_capacity(1 << 20)
        .resume_wait(Duration::from_secs(20))
        .connect()
        .await?)
}

fn generation(c: &Client) -> u64 {
    match &*c.state().borrow() {
        ConnectionState::Connected { generation, .. } => *generation,
        _ => 0,
    }
}

/// The `p` quantile of `sorted` (nearest rank).
pub fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i]
}

/// What [`failovers`] measured.
pub struct Failovers {
    /// Failover times in ms, sorted.
    pub times: Vec<f64>,
    /// Confirmed messages that never arrived.
    pub lost: u64,
    /// Messages that arrived twice.
    pub duplicates: u64,
    /// Messages published with confirmation.
    pub sent: u64,
}

/// Kills the primary `kills` times while a publisher sends numbered
/// messages with confirmation; returns the failover times (ms) and the
/// numbers of messages lost and duplicated. `progress` is told after
/// each kill.
pub async fn failovers(
    bin: &Path,
    dir: &Path,
    kills: usize,
    progress: impl Fn(usize, f64),
) -> Result<Failovers> {
    let service = "bench-failover";
    let mut primary = HubProc::start(bin, dir, service, false)?;
    let addr: SocketAddr = primary.event("ready")?["addr"]
        .as_str()
        .context("addr")?
        .parse()?;
    let mut standby = HubProc::start(bin, dir, service, true)?;
    standby.event("standby")?;
    let publisher = client("bench-pub", addr, true).await?;
    let subscriber = client("bench-sub", addr, true).await?;
    let mut sub = subscriber.subscribe("bench.n").await?;
    let published = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let pubtask = {
        let (published, stop) = (published.clone(), stop.clone());
        tokio::spawn(async move {
            let mut i = 0u64;
            while !stop.load(Ordering::Relaxed) {
                publisher
                    .publish("bench.n", Bytes::copy_from_slice(&i.to_be_bytes()))
                    .await?;
                i += 1;
                published.store(i, Ordering::Relaxed);
                // About 2,000 messages a second: a steady stream.
                tokio::time::sleep(Duration::from_micros(500)).await;
            }
            anyhow::Ok(i)
        })
    };
    let mut next = 0u64;
    let (mut lost, mut dup) = (0u64, 0u64);
    let mut times = Vec::new();
    let mut check = |v: u64, next: &mut u64| {
        if v < *next {
            dup += 1;
        } else {
            lost += v - *next;
            *next = v + 1;
        }
    };
    for k in 0..kills {
        // Let traffic flow, then kill.
        let until = Instant::now() + Duration::from_millis(150);
        while Instant::now() < until {
            if let Ok(Some(m)) = tokio::time::timeout(Duration::from_millis(50), sub.recv()).await {
                check(u64::from_be_bytes(m.payload[..8].try_into()?), &mut next);
            }
        }
        let before = generation(&subscriber);
        let t0 = Instant::now();
        primary.kill9();
        // The first message that arrives over the subscriber's new
        // connection came through the new primary.
        let first = loop {
            let m = tokio::time::timeout(WAIT, sub.recv())
                .await
                .context("no message after the kill")?
                .context("subscription ended")?;
            let at = t0.elapsed();
            check(u64::from_be_bytes(m.payload[..8].try_into()?), &mut next);
            if generation(&subscriber) > before {
                break at;
            }
        };
        times.push(first.as_secs_f64() * 1e3);
        standby.event("ready")?;
        progress(k + 1, first.as_secs_f64() * 1e3);
        // The promoted standby is the primary; start a new standby.
        let next_standby = HubProc::start(bin, dir, service, true)?;
        next_standby.event("standby")?;
        primary = std::mem::replace(&mut standby, next_standby);
    }
    stop.store(true, Ordering::Relaxed);
    let sent = pubtask.await??;
    // Everything acknowledged arrives.
    while next < sent {
        let m = tokio::time::timeout(WAIT, sub.recv())
            .await
            .context("acknowledged messages missing at the end")?
            .context("subscription ended")?;
        check(u64::from_be_bytes(m.payload[..8].try_into()?), &mut next);
    }
    drop(primary);
    drop(standby);
    times.sort_by(f64::total_cmp);
    Ok(Failovers {
        times,
        lost,
        duplicates: dup,
        sent,
    })
}

/// A primary serving `service` and, with `standby`, a standby following
/// it (both stop when dropped); the primary's address.
fn start_hubs(
    bin: &Path,
    dir: &Path,
    service: &str,
    standby: bool,
) -> Result<(Vec<HubProc>, SocketAddr)> {
    let primary = HubProc::start(bin, dir, service, false)?;
    let addr: SocketAddr = primary.event("ready")?["addr"]
        .as_str()
        .context("addr")?
        .parse()?;
    let mut hubs = vec![primary];
    if standby {
        let s = HubProc::start(bin, dir, service, true)?;
        s.event("standby")?;
        hubs.push(s);
    }
    Ok((hubs, addr))
}

/// Publishing throughput (messages/s delivered) with and without a
/// standby: `reliable` publishes with confirmation in 64 lanes, else
/// fire-and-forget.
async fn throughput(
    bin: &Path,
    dir: &Path,
    standby: bool,
    reliable: bool,
    n: u64,
) -> Result<(f64, u64)> {
    let (_hubs, addr) = start_hubs(bin, dir, &format!("bench-tp-{standby}-{reliable}"), standby)?;
    let publisher = client("tp-pub", addr, reliable).await?;
    let subscriber = client("tp-sub", addr, reliable).await?;
    let sub = subscriber.subscribe("tp.n").await?;
    let payload = Bytes::from(vec![7u8; 64]);
    let start = Instant::now();
    let recv = tokio::spawn(count(sub, n, Duration::from_secs(2)));
    let lanes: u64 = std::env::var("BENCH_LANES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(64);
    if reliable {
        let per = n / lanes;
        let p = &publisher;
        futures::future::try_join_all((0..lanes).map(|_| {
            let payload = payload.clone();
            async move {
                for _ in 0..per {
                    p.publish("tp.n", payload.clone()).await?;
                }
                anyhow::Ok(())
            }
        }))
        .await?;
    } else {
        for i in 0..n {
            publisher.publish_nowait("tp.n", payload.clone()).await?;
            if i % 4096 == 0 {
                tokio::task::yield_now().await;
            }
        }
    }
    let (got, last) = recv.await?;
    let secs = last.duration_since(start).as_secs_f64();
    if got < n / lanes * lanes && reliable {
        bail!("only {got} of {n} delivered");
    }
    // Fire-and-forget: what the hub dropped for the slow subscriber is
    // reported, never hidden.
    Ok((got as f64 / secs, got))
}

/// Counts what `sub` receives, up to `n`, until nothing came for `idle`:
/// how many, and when the last arrived.
async fn count(mut sub: Subscription, n: u64, idle: Duration) -> (u64, Instant) {
    let mut got = 0u64;
    let mut last = Instant::now();
    while got < n {
        match tokio::time::timeout(idle, sub.recv()).await {
            Ok(Some(_)) => {
                got += 1;
                last = Instant::now();
            }
            _ => break,
        }
    }
    (got, last)
}

/// What a fire-and-forget burst fanned out to reliable subscribers did:
/// deliveries counted, seconds from the first publish to the last
/// delivery, and the primary's `standby_resyncs` counter afterwards (or
/// why the status could not be read).
struct Burst {
    delivered: u64,
    secs: f64,
    resyncs: Result<u64, String>,
}

/// `messages` fire-and-forget publishes to `subscribers` reliable
/// subscribers, with or without a standby: the burst a primary must
/// replicate without falling back to a fresh snapshot.
async fn burst(
    bin: &Path,
    dir: &Path,
    standby: bool,
    subscribers: usize,
    messages: u64,
) -> Result<Burst> {
    let (_hubs, addr) = start_hubs(bin, dir, &format!("bench-burst-{standby}"), standby)?;
    let mut readers = Vec::new();
    let mut clients = Vec::new();
    for n in 0..subscribers {
        let c = client(&format!("burst-sub-{n}"), addr, true).await?;
        let sub = c.subscribe("burst.n").await?;
        readers.push(tokio::spawn(count(sub, messages, Duration::from_secs(10))));
        clients.push(c);
    }
    let publisher = client("burst-pub", addr, true).await?;
    let payload = Bytes::from(vec![7u8; 64]);
    let start = Instant::now();
    for i in 0..messages {
        publisher.publish_nowait("burst.n", payload.clone()).await?;
        if i % 4096 == 0 {
            tokio::task::yield_now().await;
        }
    }
    let mut delivered = 0;
    let mut end = start;
    for r in readers {
        let (got, last) = r.await?;
        delivered += got;
        end = end.max(last);
    }
    let resyncs = match publisher.status().await {
        Ok(status) => status
            .counters
            .get("standby_resyncs")
            .copied()
            .ok_or_else(|| "not counted by this hub".to_string()),
        Err(e) => Err(format!("no status: {e}")),
    };
    Ok(Burst {
        delivered,
        secs: end.duration_since(start).as_secs_f64(),
        resyncs,
    })
}

/// The `failover` subcommand: failover times over `kills` kills, then
/// throughput with and without a standby over `messages` messages, then
/// a burst of `messages / 2` fanned out to 100 reliable subscribers.
pub async fn main(bin: &Path, kills: usize, messages: u64) -> Result<()> {
    let dir = tempfile::tempdir()?;
    let rt = dir.path().join("rt");
    println!(
        "switchboard hot standby, {} cores, hubs: {}",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        bin.display()
    );
    let f = failovers(bin, &rt, kills, |k, ms| {
        eprint!("\rkill {k}/{kills}: {ms:.1} ms   ")
    })
    .await?;
    eprintln!();
    let Failovers {
        times,
        lost,
        duplicates: dup,
        sent,
    } = f;
    println!(
        "failover (SIGKILL → first message through the new primary), {} kills: p50 {:.1} ms, p99 {:.1} ms, min {:.1} ms, max {:.1} ms; {sent} messages with confirmation: {lost} lost, {dup} duplicates",
        times.len(),
        percentile(&times, 0.5),
        percentile(&times, 0.99),
        times.first().copied().unwrap_or(f64::NAN),
        times.last().copied().unwrap_or(f64::NAN),
    );
    for reliable in [true, false] {
        let (without, got_without) = throughput(bin, &rt, false, reliable, messages).await?;
        let (with, got_with) = throughput(bin, &rt, true, reliable, messages).await?;
        println!(
            "pub/sub 1→1 64 B, {messages} msgs, {}: {:.0} msgs/s without a standby ({got_without} delivered), {:.0} with one ({got_with} delivered): {:.2}×",
            if reliable { "reliable, confirmed, BENCH_LANES (64) in flight" } else { "fire-and-forget" },
            without,
            with,
            with / without
        );
    }
    let (subscribers, n) = (100, messages / 2);
    let without = burst(bin, &rt, false, subscribers, n).await?;
    let with = burst(bin, &rt, true, subscribers, n).await?;
    println!(
        "fan-out 1→{subscribers} 64 B, {n} msgs fire-and-forget, reliable subscribers: {} of {} delivered in {:.1} s without a standby, {} in {:.1} s with one (fresh snapshots sent to the standby: {})",
        without.delivered,
        n * subscribers as u64,
        without.secs,
        with.delivered,
        with.secs,
        match &with.resyncs {
            Ok(n) => n.to_string(),
            Err(e) => e.clone(),
        }
    );
    Ok(())
}
