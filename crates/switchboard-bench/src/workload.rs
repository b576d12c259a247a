//! The workloads, written once against [`Driver`] and [`ReqRep`].
//!
//! Throughput is counted at the receivers: delivered messages divided by the
//! time from the first arrival (at any receiver) to the last.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Result};
use bytes::Bytes;

use crate::drivers::{Driver, ReqRep};

/// Time limits that keep every workload bounded.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// How long a receiver waits for its first message.
    pub first: Duration,
    /// How long a receiver waits between two messages before it gives up.
    pub idle: Duration,
    /// Upper bound for a whole workload run.
    pub total: Duration,
}

/// Publishers, subscribers and counts of one pub/sub workload.
#[derive(Debug, Clone, Copy)]
pub struct PubSubSpec {
    /// Number of publishers; each publishes on its own topic.
    pub pubs: usize,
    /// Subscribers on each publisher's topic.
    pub subs_per_topic: usize,
    /// Payload size in bytes.
    pub payload: usize,
    /// Messages each publisher sends.
    pub per_pub: u64,
}

impl PubSubSpec {
    /// Messages sent by all publishers.
    pub fn sent(&self) -> u64 {
        self.per_pub * self.pubs as u64
    }

    /// Messages the subscribers should receive in total.
    pub fn expected(&self) -> u64 {
        self.sent() * self.subs_per_topic as u64
    }
}

/// Result of one throughput run.
#[derive(Debug, Clone, Copy, Default)]
pub struct Throughput {
    /// Messages (or requests) sent.
    pub sent: u64,
    /// Messages the receivers should have counted.
    pub expected: u64,
    /// Messages the receivers counted.
    pub delivered: u64,
    /// Seconds from the first to the last counted message.
    pub secs: f64,
    /// Messages the receivers' clients were told were dropped.
    pub reported_drops: u64,
}

impl Throughput {
    /// Delivered messages per second.
    pub fn rate(&self) -> f64 {
        if self.secs > 0.0 {
            self.delivered as f64 / self.secs
        } else {
            0.0
        }
    }
}

/// Latency samples of one run plus its throughput.
#[derive(Debug, Clone, Default)]
pub struct Latencies {
    /// One sample per answered request.
    pub samples: Vec<Duration>,
    /// Requests sent, answered and the elapsed time.
    pub throughput: Throughput,
}

/// Most messages a publisher may be ahead of the slowest subscriber of its
/// topic (flow control, the same for every system): an open-loop publisher
/// that outruns its subscribers only measures how much a server buffers or
/// drops. The hub's load bench uses the same window.
pub const WINDOW_MSGS: u64 = 16_384;

/// Most payload bytes a publisher may be ahead (bounds the window for large
/// payloads: 64 messages of 64 KiB).
pub const WINDOW_BYTES: u64 = 4 << 20;

/// Most messages published in one `publish_many` call between two window
/// checks (redis pipelines this many).
const CHUNK: u64 = 1000;

/// A publisher stops waiting for its window once its slowest subscriber
/// counted nothing new for this long (messages were lost: the run goes on
/// open loop and reports the losses).
const WINDOW_STALL: Duration = Duration::from_millis(500);

/// The window and chunk for `payload`-byte messages.
pub fn window(payload: usize) -> (u64, u64) {
    let window = (WINDOW_BYTES / payload.max(1) as u64).clamp(4, WINDOW_MSGS);
    (window, (window / 4).clamp(1, CHUNK))
}

/// Waits until the slowest counter in `received` is at most `window`
/// behind `sent`; `false` when it stalled (stop waiting from then on).
async fn wait_window(received: &[Arc<AtomicU64>], sent: u64, window: u64) -> bool {
    let mut last = None;
    let mut since = Instant::now();
    loop {
        let min = received
            .iter()
            .map(|c| c.load(Ordering::Relaxed))
            .min()
            .unwrap_or(u64::MAX);
        if sent <= min.saturating_add(window) {
            return true;
        }
        if last != Some(min) {
            last = Some(min);
            since = Instant::now();
        } else if since.elapsed() > WINDOW_STALL {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

/// A payload of `size` bytes (a repeating pattern, not all zeroes).
pub fn payload(size: usize) -> Bytes {
    Bytes::from((0..size).map(|i| (i % 251) as u8).collect::<Vec<u8>>())
}

struct Count {
    n: u64,
    first: Option<Instant>,
    last: Option<Instant>,
    error: Option<String>,
    dropped: u64,
}

async fn count_messages<D: Driver>(
    mut sub: D::Sub,
    expected: u64,
    limits: Limits,
    progress: Arc<AtomicU64>,
) -> Count {
    let mut c = Count {
        n: 0,
        first: None,
        last: None,
        error: None,
        dropped: 0,
    };
    let deadline = tokio::time::Instant::now() + limits.total;
    while c.n < expected {
        let wait = if c.n == 0 { limits.first } else { limits.idle };
        let until = (tokio::time::Instant::now() + wait).min(deadline);
        match tokio::time::timeout_at(until, D::next(&mut sub)).await {
            Ok(Ok(Some(_))) => {
                let now = Instant::now();
                c.first.get_or_insert(now);
                c.last = Some(now);
                c.n += 1;
                progress.store(c.n, Ordering::Relaxed);
            }
            Ok(Ok(None)) => {
                c.error = Some("subscription ended".into());
                break;
            }
            Ok(Err(e)) => {
                c.error = Some(e.to_string());
                break;
            }
            Err(_) => break,
        }
    }
    c.dropped = D::dropped(&sub);
    c
}

/// Runs one pub/sub workload: subscribes everything first, then starts all
/// publishers at once, then waits for the receivers. Each publisher stays
/// within [`window`] of the slowest subscriber of its topic.
pub async fn pubsub<D: Driver>(
    d: &D,
    spec: PubSubSpec,
    tag: &str,
    limits: Limits,
) -> Result<Throughput> {
    let body = payload(spec.payload);
    let mut counters = Vec::new();
    let mut progress: Vec<Vec<Arc<AtomicU64>>> = Vec::new();
    for p in 0..spec.pubs {
        let topic = format!("bench.{tag}.{p}");
        let mut mine = Vec::new();
        for _ in 0..spec.subs_per_topic {
            let sub = d.subscribe(topic.clone(), spec.per_pub).await?;
            let count = Arc::new(AtomicU64::new(0));
            mine.push(count.clone());
            counters.push(tokio::spawn(count_messages::<D>(
                sub,
                spec.per_pub,
                limits,
                count,
            )));
        }
        progress.push(mine);
    }
    let (window, chunk) = window(spec.payload);
    let mut publishers = Vec::new();
    for _ in 0..spec.pubs {
        publishers.push(d.publisher().await?);
    }
    let mut pub_tasks = Vec::new();
    for ((p, mut publisher), received) in publishers.into_iter().enumerate().zip(progress) {
        let topic = format!("bench.{tag}.{p}");
        let body = body.clone();
        pub_tasks.push(tokio::spawn(async move {
            let mut sent = 0;
            let mut gated = true;
            let mut r = Ok(());
            while sent < spec.per_pub && r.is_ok() {
                let n = chunk.min(spec.per_pub - sent);
                if gated {
                    gated = wait_window(&received, sent + n, window).await;
                }
                r = D::publish_many(&mut publisher, &topic, body.clone(), n).await;
                sent += n;
            }
            (publisher, r)
        }));
    }
    let mut keep = Vec::new();
    let mut pub_error = None;
    for t in pub_tasks {
        let (publisher, r) = t.await?;
        keep.push(publisher);
        if let Err(e) = r {
            pub_error.get_or_insert(e);
        }
    }
    let mut out = Throughput {
        sent: spec.sent(),
        expected: spec.expected(),
        ..Throughput::default()
    };
    let (mut first, mut last): (Option<Instant>, Option<Instant>) = (None, None);
    let mut sub_error = None;
    for c in counters {
        let c = c.await?;
        out.delivered += c.n;
        out.reported_drops += c.dropped;
        if let Some(f) = c.first {
            first = Some(first.map_or(f, |x| x.min(f)));
        }
        if let Some(l) = c.last {
            last = Some(last.map_or(l, |x| x.max(l)));
        }
        if let Some(e) = c.error {
            sub_error.get_or_insert(e);
        }
    }
    drop(keep);
    if let Some(e) = pub_error {
        bail!("publisher failed after {} delivered: {e}", out.delivered);
    }
    if out.delivered == 0 {
        bail!(
            "no message arrived{}",
            sub_error.map(|e| format!(" ({e})")).unwrap_or_default()
        );
    }
    if let (Some(f), Some(l)) = (first, last) {
        out.secs = (l - f).as_secs_f64();
    }
    Ok(out)
}

/// Native request/reply: `window` concurrent requesters share one
/// connection and together send `count` requests.
pub async fn reqrep_native<R: ReqRep>(
    r: &R,
    count: u64,
    window: usize,
    tag: &str,
    limits: Limits,
) -> Result<Latencies> {
    let service = format!("bench.svc.{tag}");
    let _responder = r.responder(service.clone()).await?;
    let requester = r.requester().await?;
    let body = payload(64);
    // one warm-up request so connection set-up is not measured
    R::request(&requester, &service, body.clone()).await?;
    let window = window.max(1);
    let started = Instant::now();
    let deadline = tokio::time::Instant::now() + limits.total;
    let mut tasks = Vec::new();
    for w in 0..window {
        let n = count / window as u64 + u64::from((w as u64) < count % window as u64);
        let requester = requester.clone();
        let service = service.clone();
        let body = body.clone();
        tasks.push(tokio::spawn(async move {
            let mut samples = Vec::with_capacity(n as usize);
            for _ in 0..n {
                let t = Instant::now();
                let reply = tokio::time::timeout_at(
                    deadline,
                    R::request(&requester, &service, body.clone()),
                )
                .await
                .map_err(|_| anyhow!("request/reply run exceeded its time limit"))??;
                if reply.len() != body.len() {
                    bail!(
                        "reply of {} bytes to a {}-byte request",
                        reply.len(),
                        body.len()
                    );
                }
                samples.push(t.elapsed());
            }
            Ok::<_, anyhow::Error>(samples)
        }));
    }
    let mut samples = Vec::with_capacity(count as usize);
    for t in tasks {
        samples.extend(t.await??);
    }
    let secs = started.elapsed().as_secs_f64();
    Ok(Latencies {
        throughput: Throughput {
            sent: count,
            expected: count,
            delivered: samples.len() as u64,
            secs,
            reported_drops: 0,
        },
        samples,
    })
}

async fn recv_one<D: Driver>(sub: &mut D::Sub, wait: Duration) -> Result<Bytes> {
    match tokio::time::timeout(wait, D::next(sub)).await {
        Ok(Ok(Some(b))) => Ok(b),
        Ok(Ok(None)) => Err(anyhow!("reply subscription ended")),
        Ok(Err(e)) => Err(e),
        Err(_) => Err(anyhow!("no reply within {wait:?}")),
    }
}

/// Request/reply emulated over pub/sub for systems without it: a responder
/// echoes `req` topic messages to a `rep` topic; the requester keeps
/// `window` requests outstanding (replies come back in order).
pub async fn reqrep_emulated<D: Driver>(
    d: &D,
    count: u64,
    window: usize,
    tag: &str,
    limits: Limits,
) -> Result<Latencies> {
    let req_topic = format!("bench.req.{tag}");
    let rep_topic = format!("bench.rep.{tag}");
    let mut responder_sub = d.subscribe(req_topic.clone(), count + 1).await?;
    let mut responder_pub = d.publisher().await?;
    let rt = rep_topic.clone();
    let responder = crate::drivers::AbortOnDrop(tokio::spawn(async move {
        while let Ok(Some(msg)) = D::next(&mut responder_sub).await {
            if D::publish_one(&mut responder_pub, &rt, msg).await.is_err() {
                return;
            }
        }
    }));
    let mut replies = d.subscribe(rep_topic, count + 1).await?;
    let mut requests = d.publisher().await?;
    let body = payload(64);
    // warm-up
    D::publish_one(&mut requests, &req_topic, body.clone()).await?;
    recv_one::<D>(&mut replies, limits.first).await?;
    let window = window.max(1) as u64;
    let started = Instant::now();
    let deadline = started + limits.total;
    let mut outstanding = VecDeque::new();
    let mut sent = 0u64;
    let mut samples = Vec::with_capacity(count as usize);
    while sent < count.min(window) {
        outstanding.push_back(Instant::now());
        D::publish_one(&mut requests, &req_topic, body.clone()).await?;
        sent += 1;
    }
    while let Some(t) = outstanding.pop_front() {
        if Instant::now() > deadline {
            bail!("request/reply run exceeded its time limit");
        }
        let reply = recv_one::<D>(&mut replies, limits.first).await?;
        if reply.len() != body.len() {
            bail!(
                "reply of {} bytes to a {}-byte request",
                reply.len(),
                body.len()
            );
        }
        samples.push(t.elapsed());
        if sent < count {
            outstanding.push_back(Instant::now());
            D::publish_one(&mut requests, &req_topic, body.clone()).await?;
            sent += 1;
        }
    }
    let secs = started.elapsed().as_secs_f64();
    drop(responder);
    Ok(Latencies {
        throughput: Throughput {
            sent,
            expected: count,
            delivered: samples.len() as u64,
            secs,
            reported_drops: 0,
        },
        samples,
    })
}
