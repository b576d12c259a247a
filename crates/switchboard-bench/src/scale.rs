//! Workloads at scale (issue 20, harness item 4), switchboard against
//! nats-server (and mosquitto/redis where the existing drivers fit):
//!
//! - `scale-fanout-1000`: one publisher, 1,000 subscribers on its topic
//!   (the ordinary pub/sub workload, every system).
//! - `scale-topics-10k`: 10,000 topics with one subscription each, spread
//!   over 100 subscriber connections; one publisher round-robins the topics.
//! - `scale-wildcard-100k`: 100,000 wildcard subscriptions that do not
//!   match (`w.N.*` and `w.*.N.>`, on 20 idle connections) on a fresh
//!   server; a publisher on `hot.t` with one subscriber on `hot.*`. The
//!   row gives its rate (and, in the note, the ratio to the same run with
//!   100 subscriptions: the routing cost per publish) and a second figure,
//!   the server's RSS growth per subscription.
//! - `scale-queue-10`: a queue group of 10 workers; every message must reach
//!   exactly one of them (a duplicate or a loss fails the row); the note
//!   gives the spread (fewest–most per worker).
//! - `scale-conns-5000`: 5,000 connections each publishing 10 msgs/s (a
//!   timestamp in the payload) to one wildcard subscriber, on a fresh
//!   server: p99 delivery latency and the server's CPU (user + system,
//!   [`crate::cpu::secs`]) as % of one core.
//! - `scale-churn`: connect + full handshake + disconnect, 16 at a time,
//!   on a fresh server: connections per second (every system; peers with
//!   the minimal protocol sessions of `idle.rs`).
//!
//! `--quick` divides every count by about 100.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, ensure, Context, Result};
use bytes::Bytes;
use futures::StreamExt;
use indicatif::ProgressBar;

use crate::drivers::{AbortOnDrop, Nats, Switchboard};
use crate::procs::{self, ProcGuard};
use crate::report::Figure;
use crate::stats::Summary;
use crate::workload::{Limits, PubSubSpec};
use crate::{Cli, Kind, Setup, Sys};

/// The workload ids of the scale rows.
pub const IDS: [&str; 6] = [
    "scale-fanout-1000",
    "scale-topics-10k",
    "scale-wildcard-100k",
    "scale-queue-10",
    "scale-conns-5000",
    "scale-churn",
];

/// Most messages a publisher may be ahead of what its receivers counted.
const WINDOW: u64 = 16_384;

/// A system these rows drive with their own code.
#[derive(Clone)]
enum Target {
    Sb(Switchboard),
    Nats(Nats),
}

/// One connection of a [`Target`].
enum Conn {
    Sb(switchboard::Client),
    Nats(async_nats::Client),
}

impl Target {
    fn name(&self) -> &'static str {
        match self {
            Target::Sb(_) => "switchboard",
            Target::Nats(_) => crate::report::NATS,
        }
    }

    /// A connection whose subscriptions buffer `cap` messages.
    async fn connect(&self, cap: usize) -> Result<Conn> {
        Ok(match self {
            Target::Sb(d) => Conn::Sb(d.connect_as(&d.fresh_id("scale"), cap).await?),
            Target::Nats(d) => Conn::Nats(d.connect(cap).await?),
        })
    }
}

impl Conn {
    /// Subscribes `pattern` (in queue group `group`) and calls `on` with
    /// each payload; returns once the server has the subscription.
    async fn sub(
        &self,
        pattern: &str,
        group: Option<&str>,
        on: impl Fn(Bytes) + Send + 'static,
    ) -> Result<AbortOnDrop> {
        Ok(match self {
            Conn::Sb(c) => {
                let mut s = match group {
                    Some(g) => c.subscribe_group(pattern, g).await?,
                    None => c.subscribe(pattern).await?,
                };
                AbortOnDrop(tokio::spawn(async move {
                    while let Some(m) = s.recv().await {
                        on(m.payload);
                    }
                }))
            }
            Conn::Nats(c) => {
                let mut s = match group {
                    Some(g) => {
                        c.queue_subscribe(pattern.to_string(), g.to_string())
                            .await?
                    }
                    None => c.subscribe(pattern.to_string()).await?,
                };
                c.flush().await?;
                AbortOnDrop(tokio::spawn(async move {
                    while let Some(m) = s.next().await {
                        on(m.payload);
                    }
                }))
            }
        })
    }

    /// A subscription kept only to be routed around (its messages unread).
    async fn hold(&self, pattern: String) -> Result<Box<dyn std::any::Any + Send>> {
        Ok(match self {
            Conn::Sb(c) => Box::new(c.subscribe(&pattern).await?),
            Conn::Nats(c) => Box::new(c.subscribe(pattern).await?),
        })
    }

    async fn publish(&self, topic: &str, payload: Bytes) -> Result<()> {
        match self {
            Conn::Sb(c) => c.publish_nowait(topic, payload).await?,
            Conn::Nats(c) => c.publish(topic.to_string(), payload).await?,
        }
        Ok(())
    }

    async fn flush(&self) -> Result<()> {
        if let Conn::Nats(c) = self {
            c.flush().await?;
        }
        Ok(())
    }
}

/// A fresh server of `key` (switchboard or nats) and its target.
fn fresh(cli: &Cli, setup: &Setup, key: &str) -> Result<(ProcGuard, Target)> {
    let ready = Duration::from_secs(10);
    if key == "switchboard" {
        let (g, _) = crate::start_hub(cli, &setup.token, ready)?;
        let t = Target::Sb(Switchboard::new(g.addr(), &setup.token));
        Ok((g, t))
    } else {
        let exe = peer_exe(setup, key).context("nats-server not found")?;
        let g = crate::spawn_peer(key, &exe, &setup.dir, ready)?;
        let t = Target::Nats(Nats::new(g.addr()));
        Ok((g, t))
    }
}

fn peer_exe(setup: &Setup, key: &str) -> Option<std::path::PathBuf> {
    setup
        .bins
        .iter()
        .find(|(k, _)| *k == key)
        .map(|(_, p)| p.clone())
}

/// Publishes `n` messages round-robin over `topics`, at most [`WINDOW`]
/// ahead of `counted()`.
async fn pump(
    conn: &Conn,
    topics: &[String],
    payload: Bytes,
    n: u64,
    counted: impl Fn() -> u64,
) -> Result<()> {
    let mut stalled_since: Option<(u64, Instant)> = None;
    let mut gated = true;
    for i in 0..n {
        if gated && i % 256 == 0 {
            loop {
                let c = counted();
                if i <= c + WINDOW {
                    break;
                }
                match stalled_since {
                    Some((at, since)) if at == c => {
                        if since.elapsed() > Duration::from_secs(2) {
                            gated = false;
                            break;
                        }
                    }
                    _ => stalled_since = Some((c, Instant::now())),
                }
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        }
        conn.publish(&topics[(i % topics.len() as u64) as usize], payload.clone())
            .await?;
    }
    conn.flush().await
}

/// Waits until `counted()` reaches `n` or stays put for `idle`.
async fn settle(n: u64, idle: Duration, counted: impl Fn() -> u64) -> u64 {
    let mut seen = counted();
    let mut since = Instant::now();
    while seen < n && since.elapsed() < idle {
        tokio::time::sleep(Duration::from_millis(2)).await;
        let now = counted();
        if now != seen {
            seen = now;
            since = Instant::now();
        }
    }
    counted()
}

/// Counter with the time of its last hit.
#[derive(Default)]
struct Count {
    n: AtomicU64,
    last_ns: AtomicU64,
}

impl Count {
    fn hit(&self, base: Instant) {
        self.last_ns
            .store(base.elapsed().as_nanos() as u64, Ordering::Relaxed);
        self.n.fetch_add(1, Ordering::Relaxed);
    }
    fn get(&self) -> u64 {
        self.n.load(Ordering::Relaxed)
    }
    /// Messages per second from `start` (time since the same base as
    /// [`hit`](Self::hit)) to the last arrival.
    fn rate_since(&self, start: Duration) -> f64 {
        let last = Duration::from_nanos(self.last_ns.load(Ordering::Relaxed));
        let secs = last.saturating_sub(start).as_secs_f64();
        if secs > 0.0 {
            self.get() as f64 / secs
        } else {
            0.0
        }
    }
}

/// What one run of a row gives: figures (metric → value), counts and a note.
struct Out {
    values: Vec<(&'static str, bool, f64)>,
    sent: u64,
    expected: u64,
    delivered: u64,
    note: Option<String>,
}

/// The server's CPU figure of a throughput row: seconds `pid` used since
/// `before` (its [`crate::cpu::secs`] when the publishing began) per
/// million messages delivered; none when `/proc` cannot tell.
fn cpu_figure(pid: u32, before: Option<f64>, delivered: u64) -> Option<(&'static str, bool, f64)> {
    crate::cpu::per_million(before, crate::cpu::secs(pid), delivered)
        .map(|c| (crate::cpu::METRIC, true, c))
}

/// 10,000 topics, one subscription each over `conns` connections.
async fn topics(t: &Target, pid: u32, n_topics: usize, conns: usize, msgs: u64) -> Result<Out> {
    let count = Arc::new(Count::default());
    let base = Instant::now();
    let per_conn = n_topics.div_ceil(conns);
    let mut held = Vec::new();
    let mut subs = Vec::new();
    let topics: Vec<String> = (0..n_topics).map(|i| format!("tp.{i}")).collect();
    for chunk in topics.chunks(per_conn) {
        let c = t.connect(msgs as usize + 1024).await?;
        let made = futures::stream::iter(chunk.iter().map(|topic| {
            let count = count.clone();
            let c = &c;
            async move { c.sub(topic, None, move |_| count.hit(base)).await }
        }))
        .buffer_unordered(64)
        .collect::<Vec<_>>()
        .await;
        for m in made {
            subs.push(m?);
        }
        held.push(c);
    }
    let publisher = t.connect(1024).await?;
    let payload = crate::workload::payload(64);
    let start = base.elapsed();
    let cpu0 = crate::cpu::secs(pid);
    let c2 = count.clone();
    pump(&publisher, &topics, payload, msgs, move || c2.get()).await?;
    let c3 = count.clone();
    let got = settle(msgs, Duration::from_secs(3), move || c3.get()).await;
    let cpu = cpu_figure(pid, cpu0, got);
    drop(subs);
    Ok(Out {
        values: [("msgs/s", false, count.rate_since(start))]
            .into_iter()
            .chain(cpu)
            .collect(),
        sent: msgs,
        expected: msgs,
        delivered: got,
        note: Some(format!(
            "{n_topics} subscriptions on {} connections, publisher round-robins the topics",
            held.len()
        )),
    })
}

/// Rate of a publisher on `hot.t` whose one subscriber listens on `hot.*`,
/// the messages delivered, and the server's (`pid`) CPU figure.
async fn hot_rate(
    t: &Target,
    pid: u32,
    msgs: u64,
) -> Result<(f64, u64, Option<(&'static str, bool, f64)>)> {
    let count = Arc::new(Count::default());
    let base = Instant::now();
    let sub_conn = t.connect(msgs as usize + 1024).await?;
    let c = count.clone();
    let _sub = sub_conn.sub("hot.*", None, move |_| c.hit(base)).await?;
    let publisher = t.connect(1024).await?;
    let start = base.elapsed();
    let cpu0 = crate::cpu::secs(pid);
    let c2 = count.clone();
    pump(
        &publisher,
        &["hot.t".to_string()],
        crate::workload::payload(64),
        msgs,
        move || c2.get(),
    )
    .await?;
    let c3 = count.clone();
    let got = settle(msgs, Duration::from_secs(3), move || c3.get()).await;
    Ok((count.rate_since(start), got, cpu_figure(pid, cpu0, got)))
}

/// Adds subscriptions `from..to` (wildcards that never match `hot.t`),
/// `per_conn` per connection.
async fn add_wildcards(
    t: &Target,
    from: usize,
    to: usize,
    per_conn: usize,
    held: &mut Vec<(Conn, Vec<Box<dyn std::any::Any + Send>>)>,
) -> Result<()> {
    let mut i = from;
    while i < to {
        let end = (i + per_conn).min(to);
        let c = t.connect(16).await?;
        let subs = futures::stream::iter((i..end).map(|k| {
            let c = &c;
            async move {
                c.hold(if k % 2 == 0 {
                    format!("w.{k}.*")
                } else {
                    format!("w.*.{k}.>")
                })
                .await
            }
        }))
        .buffer_unordered(64)
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .collect::<Result<Vec<_>>>()?;
        c.flush().await?;
        held.push((c, subs));
        i = end;
    }
    Ok(())
}

async fn wildcard(t: &Target, pid: u32, total: usize, msgs: u64) -> Result<Out> {
    let mut held = Vec::new();
    add_wildcards(t, 0, 100, 100, &mut held).await?;
    let (few, got_few, _) = hot_rate(t, pid, msgs).await?;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let before = procs::rss_kib(pid).context("server RSS")?;
    add_wildcards(t, 100, total, 5_000, &mut held).await?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let after = procs::rss_kib(pid).context("server RSS")?;
    let (many, got_many, cpu) = hot_rate(t, pid, msgs).await?;
    let per_sub = after.saturating_sub(before) as f64 * 1024.0 / (total - 100) as f64;
    Ok(Out {
        values: [("msgs/s", false, many), ("bytes per subscription", true, per_sub)]
            .into_iter()
            .chain(cpu)
            .collect(),
        sent: 2 * msgs,
        expected: 2 * msgs,
        delivered: got_few + got_many,
        note: Some(format!(
            "{total} subscriptions: {:.2}× the rate with 100 ({:.0} msgs/s); server RSS {before} → {after} KiB over {} connections",
            many / few.max(1.0),
            few,
            held.len()
        )),
    })
}

async fn queue(t: &Target, pid: u32, workers: usize, msgs: u64) -> Result<Out> {
    let base = Instant::now();
    let total = Arc::new(Count::default());
    let mut per: Vec<Arc<AtomicU64>> = Vec::new();
    let mut keep = Vec::new();
    for _ in 0..workers {
        let c = t.connect(msgs as usize + 1024).await?;
        let mine = Arc::new(AtomicU64::new(0));
        per.push(mine.clone());
        let total = total.clone();
        let s = c
            .sub("qg.work", Some("workers"), move |_| {
                mine.fetch_add(1, Ordering::Relaxed);
                total.hit(base);
            })
            .await?;
        keep.push((c, s));
    }
    let publisher = t.connect(1024).await?;
    let start = base.elapsed();
    let cpu0 = crate::cpu::secs(pid);
    let t2 = total.clone();
    pump(
        &publisher,
        &["qg.work".to_string()],
        crate::workload::payload(64),
        msgs,
        move || t2.get(),
    )
    .await?;
    let t3 = total.clone();
    let got = settle(msgs, Duration::from_secs(3), move || t3.get()).await;
    let cpu = cpu_figure(pid, cpu0, got);
    // Duplicates would arrive after the last original.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let got = got.max(total.get());
    ensure!(got <= msgs, "{} duplicates in the queue group", got - msgs);
    let counts: Vec<u64> = per.iter().map(|c| c.load(Ordering::Relaxed)).collect();
    let (lo, hi) = (
        counts.iter().min().copied().unwrap_or(0),
        counts.iter().max().copied().unwrap_or(0),
    );
    Ok(Out {
        values: [("msgs/s", false, total.rate_since(start))]
            .into_iter()
            .chain(cpu)
            .collect(),
        sent: msgs,
        expected: msgs,
        delivered: got,
        note: Some(format!(
            "each message to exactly one of {workers} workers; per worker {lo}–{hi} (even share {})",
            msgs / workers as u64
        )),
    })
}

async fn conns(t: &Target, pid: u32, n: usize, secs: u64) -> Result<Out> {
    let lat = Arc::new(Mutex::new(Vec::<u64>::new()));
    let base = Instant::now();
    let per = secs * 10;
    let expected = n as u64 * per;
    let sub_conn = t.connect(expected as usize + 1024).await?;
    let count = Arc::new(Count::default());
    let (l2, c2) = (lat.clone(), count.clone());
    let _sub = sub_conn
        .sub("load.*", None, move |p| {
            if p.len() >= 8 {
                let sent = u64::from_be_bytes(p[..8].try_into().unwrap_or_default());
                let now = base.elapsed().as_nanos() as u64;
                if let Ok(mut l) = l2.lock() {
                    l.push(now.saturating_sub(sent));
                }
            }
            c2.hit(base);
        })
        .await?;
    let publishers: Vec<Conn> = futures::stream::iter(0..n)
        .map(|_| t.connect(16))
        .buffer_unordered(32)
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .collect::<Result<_>>()?;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let me = std::process::id();
    let cpu0 = crate::cpu::secs(pid).context("server CPU")?;
    let own0 = crate::cpu::secs(me).context("own CPU")?;
    let t0 = Instant::now();
    let publishers = Arc::new(publishers);
    let tasks: Vec<_> = (0..n)
        .map(|i| {
            let publishers = publishers.clone();
            tokio::spawn(async move {
                let offset = Duration::from_micros((i as u64 * 100_000) / n as u64);
                tokio::time::sleep(offset).await;
                let mut tick = tokio::time::interval(Duration::from_millis(100));
                let topic = format!("load.{}", i % 100);
                let mut body = vec![0u8; 64];
                for _ in 0..per {
                    tick.tick().await;
                    body[..8].copy_from_slice(&(base.elapsed().as_nanos() as u64).to_be_bytes());
                    publishers[i]
                        .publish(&topic, Bytes::copy_from_slice(&body))
                        .await?;
                }
                publishers[i].flush().await
            })
        })
        .collect();
    for task in tasks {
        task.await??;
    }
    let c3 = count.clone();
    let got = settle(expected, Duration::from_secs(3), move || c3.get()).await;
    let elapsed = t0.elapsed().as_secs_f64();
    let cpu = (crate::cpu::secs(pid).context("server CPU")? - cpu0) / elapsed * 100.0;
    let own = (crate::cpu::secs(me).context("own CPU")? - own0) / elapsed * 100.0;
    let mut l = lat.lock().map_err(|_| anyhow!("latency lock"))?.clone();
    l.sort_unstable();
    let p = |q: f64| {
        l.get(((l.len() as f64 - 1.0) * q).round() as usize)
            .copied()
            .unwrap_or(0) as f64
            / 1e6
    };
    if l.is_empty() {
        bail!("no message arrived");
    }
    Ok(Out {
        values: vec![("p99 ms", true, p(0.99)), ("server CPU %", true, cpu)],
        sent: expected,
        expected,
        delivered: got,
        note: Some(format!(
            "{n} connections × 10 msgs/s for {secs} s to one `load.*` subscriber; p50 {:.2} ms, p99 {:.2} ms; server CPU {cpu:.0}% of one core, the benchmark's clients {own:.0}% (when that nears all cores, the clients bound the latency, not the server)",
            p(0.5),
            p(0.99)
        )),
    })
}

async fn churn(proto: crate::idle::Proto, addr: std::net::SocketAddr, secs: f64) -> Result<Out> {
    let done = Arc::new(AtomicU64::new(0));
    let stop = Instant::now() + Duration::from_secs_f64(secs);
    let start = Instant::now();
    let workers: Vec<_> = (0..16)
        .map(|w| {
            let (proto, done) = (proto.clone(), done.clone());
            tokio::spawn(async move {
                let mut i = w * 1_000_000;
                while Instant::now() < stop {
                    let held = tokio::time::timeout(
                        Duration::from_secs(10),
                        crate::idle::open(&proto, addr, i),
                    )
                    .await
                    .map_err(|_| anyhow!("a connection timed out"))??;
                    drop(held);
                    done.fetch_add(1, Ordering::Relaxed);
                    i += 1;
                }
                anyhow::Ok(())
            })
        })
        .collect();
    for w in workers {
        w.await??;
    }
    let n = done.load(Ordering::Relaxed);
    Ok(Out {
        values: vec![(
            "connections/s",
            false,
            n as f64 / start.elapsed().as_secs_f64(),
        )],
        sent: n,
        expected: n,
        delivered: n,
        note: Some("connect + handshake + disconnect, 16 at a time".into()),
    })
}

/// Runs the chosen scale rows and appends their figures.
pub async fn rows(
    cli: &Cli,
    setup: &Setup,
    runs: usize,
    pb: &ProgressBar,
    figures: &mut Vec<Figure>,
) {
    let q = |full: u64, quick: u64| if cli.quick { quick } else { full };
    let chosen = crate::chosen(cli, &IDS);
    let limits = if cli.quick {
        Limits {
            first: Duration::from_secs(3),
            idle: Duration::from_secs(1),
            total: Duration::from_secs(20),
        }
    } else {
        Limits {
            first: Duration::from_secs(10),
            idle: Duration::from_secs(3),
            total: Duration::from_secs(180),
        }
    };
    for id in chosen {
        let title = match id {
            "scale-fanout-1000" => format!("fan-out 1→{}, 64 B, {} msgs published", q(1000, 20), q(2_000, 100)),
            "scale-topics-10k" => format!("{} topics, one subscription each, publisher round-robins them, 64 B, {} msgs", q(10_000, 100), q(200_000, 2_000)),
            "scale-wildcard-100k" => format!("{} wildcard subscriptions that do not match, publisher on a topic with one subscriber, 64 B, {} msgs", q(100_000, 1_000), q(200_000, 2_000)),
            "scale-queue-10" => format!("queue group of 10 workers, 64 B, {} msgs", q(100_000, 2_000)),
            "scale-conns-5000" => format!("{} connections each publishing 10 msgs/s for {} s, one subscriber", q(5_000, 50), q(10, 2)),
            _ => format!("connection churn: connect + handshake + disconnect for {} s", q(5, 1)),
        };
        // (system, per-metric values over runs, counts, error, note)
        let mut group: Vec<Figure> = Vec::new();
        let systems: Vec<Sys> = if id == "scale-fanout-1000" || id == "scale-churn" {
            setup
                .systems
                .iter()
                // The relay forwards frames; it has no handshake to churn.
                .filter(|s| !matches!(s, Sys::Raw(_)) && s.key() != "switchboard-amo")
                .filter(|s| id != "scale-churn" || !matches!(s, Sys::Relay(_)))
                .cloned()
                .collect()
        } else {
            setup
                .systems
                .iter()
                .filter(|s| s.key() == "switchboard" || s.key() == "nats")
                .cloned()
                .collect()
        };
        pb.inc_length((systems.len() * runs) as u64);
        for sys in &systems {
            let mut values: Vec<(&'static str, bool, Vec<f64>)> = Vec::new();
            let (mut sent, mut expected, mut delivered) = (0, 0, 0);
            let mut error = None;
            let mut note = None;
            for r in 0..runs {
                pb.set_message(format!("{id} · {} · run {}/{runs}", sys.name(), r + 1));
                let fut = one(cli, setup, id, sys, r, limits);
                match tokio::time::timeout(Duration::from_secs(600), fut)
                    .await
                    .unwrap_or_else(|_| Err(anyhow!("timed out after 600 s")))
                {
                    Ok(o) => {
                        for (m, lower, v) in o.values {
                            match values.iter_mut().find(|x| x.0 == m) {
                                Some(x) => x.2.push(v),
                                None => values.push((m, lower, vec![v])),
                            }
                        }
                        sent += o.sent;
                        expected += o.expected;
                        delivered += o.delivered;
                        if o.note.is_some() {
                            note = o.note;
                        }
                    }
                    Err(e) => {
                        let msg = format!("{e:#}");
                        pb.suspend(|| {
                            eprintln!("{id} · {}: run {} failed: {msg}", sys.name(), r + 1)
                        });
                        error.get_or_insert(msg);
                    }
                }
                pb.inc(1);
            }
            if values.is_empty() {
                values.push(("msgs/s", false, Vec::new()));
            }
            for (m, lower, v) in values {
                group.push(Figure {
                    workload: id.to_string(),
                    title: title.clone(),
                    metric: m.to_string(),
                    lower_is_better: lower,
                    system: sys.name().to_string(),
                    summary: Summary::of(&v),
                    runs: v,
                    sent,
                    expected,
                    delivered,
                    error: error.clone(),
                    note: note.clone(),
                });
            }
        }
        crate::durable::print_group(pb, &title, &group);
        figures.extend(group);
    }
}

/// One run of row `id` against `sys`.
async fn one(
    cli: &Cli,
    setup: &Setup,
    id: &str,
    sys: &Sys,
    run: usize,
    limits: Limits,
) -> Result<Out> {
    let q = |full: u64, quick: u64| if cli.quick { quick } else { full };
    if id == "scale-fanout-1000" {
        let spec = PubSubSpec {
            pubs: 1,
            subs_per_topic: q(1000, 20) as usize,
            payload: 64,
            per_pub: q(2_000, 100),
        };
        let tag = format!("{id}.{}.{run}", sys.key());
        let pid = setup.pid(sys);
        let cpu0 = pid.and_then(crate::cpu::secs);
        let outcome = crate::exec(sys, Kind::PubSub(spec), &tag, limits).await?;
        let cpu1 = pid.and_then(crate::cpu::secs);
        return match outcome {
            crate::Outcome::Rate(t) => Ok(Out {
                values: [("msgs/s", false, t.rate())]
                    .into_iter()
                    .chain(
                        crate::cpu::per_million(cpu0, cpu1, t.delivered)
                            .map(|c| (crate::cpu::METRIC, true, c)),
                    )
                    .collect(),
                sent: t.sent,
                expected: t.expected,
                delivered: t.delivered,
                note: Some("counted at all subscribers".into()),
            }),
            crate::Outcome::Lat(_) | crate::Outcome::RateLat(_) => {
                bail!("unexpected latency outcome")
            }
        };
    }
    let key = sys.key();
    if id == "scale-churn" {
        let ready = Duration::from_secs(10);
        let guard = tokio::task::block_in_place(|| match sys {
            Sys::Switchboard(_) => crate::start_hub(cli, &setup.token, ready).map(|(g, _)| g),
            _ => match peer_exe(setup, key) {
                Some(exe) => crate::spawn_peer(key, &exe, &setup.dir, ready),
                None => Err(anyhow!("no {key} binary")),
            },
        })?;
        let proto = match sys {
            Sys::Switchboard(_) => {
                crate::idle::Proto::Switchboard(Switchboard::new(guard.addr(), &setup.token))
            }
            Sys::Nats(_) => crate::idle::Proto::Nats,
            Sys::Mqtt(_) => crate::idle::Proto::Mqtt,
            _ => crate::idle::Proto::Redis,
        };
        let out = churn(proto, guard.addr(), q(5, 1) as f64).await;
        tokio::task::block_in_place(|| drop(guard));
        return out;
    }
    let (guard, t) = tokio::task::block_in_place(|| fresh(cli, setup, key))?;
    let out = match id {
        "scale-topics-10k" => {
            topics(
                &t,
                guard.pid(),
                q(10_000, 100) as usize,
                q(100, 10) as usize,
                q(200_000, 2_000),
            )
            .await
        }
        "scale-wildcard-100k" => {
            wildcard(
                &t,
                guard.pid(),
                q(100_000, 1_000) as usize,
                q(200_000, 2_000),
            )
            .await
        }
        "scale-queue-10" => queue(&t, guard.pid(), 10, q(100_000, 2_000)).await,
        "scale-conns-5000" => conns(&t, guard.pid(), q(5_000, 50) as usize, q(10, 2)).await,
        other => Err(anyhow!("unknown scale workload {other} ({})", t.name())),
    };
    tokio::task::block_in_place(|| drop(guard));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rate_counts_from_the_start_given() {
        let c = Count::default();
        c.n.store(1000, Ordering::Relaxed);
        c.last_ns.store(3_000_000_000, Ordering::Relaxed);
        assert_eq!(c.rate_since(Duration::from_secs(1)), 500.0);
        assert_eq!(c.rate_since(Duration::from_secs(5)), 0.0);
    }

    #[tokio::test]
    async fn settle_stops_when_nothing_moves() {
        let t = Instant::now();
        assert_eq!(settle(10, Duration::from_millis(50), || 3).await, 3);
        assert!(t.elapsed() < Duration::from_secs(2));
        assert_eq!(settle(10, Duration::from_secs(5), || 10).await, 10);
    }
}
