//! Latency workloads: pub/sub one-way latency, and open-loop latency at
//! fixed offered loads for pub/sub 1→1 and request/reply.
//!
//! One clock: every timestamp is an `Instant` relative to one start taken
//! in this process, which runs both the publishers and the subscribers.
//! Pub/sub messages carry their (intended) send time in their first 8
//! payload bytes, as nanoseconds since that start.
//!
//! Open loop: messages (requests) are due on a fixed schedule, `i / rate`
//! seconds after the start, whether or not earlier ones have arrived; a
//! sender that falls behind sends everything due at once; latency is
//! measured from the **intended** send time, so a stall of the server (or
//! of the sender) shows in every message that should have gone out during
//! it (the correction for coordinated omission). The sender sleeps while
//! the next message is more than a millisecond away, and yields (busy
//! waits) otherwise, so the schedule is kept to a few microseconds.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Result};
use bytes::{BufMut, Bytes, BytesMut};
use indicatif::ProgressBar;

use crate::drivers::{Driver, ReqRep};
use crate::report::Figure;
use crate::stats::{percentile_us, Summary};
use crate::workload::{payload, Latencies, Limits, Throughput};
use crate::Sys;

/// A 64-byte payload stamped with `at` (nanoseconds since the start).
fn stamped(at: Duration) -> Bytes {
    stamped_batch(std::iter::once(at))
        .pop()
        .expect("one stamp makes one message")
}

/// Messages stamped with `ats`, each a 64-byte payload that starts with
/// its stamp, cut from one buffer: a burst of the open-loop sender is
/// ready after one allocation, so its first message does not wait for the
/// making of the rest.
fn stamped_batch(ats: impl Iterator<Item = Duration>) -> Vec<Bytes> {
    let tail = payload(56);
    let mut buf = BytesMut::with_capacity(ats.size_hint().0 * 64);
    for at in ats {
        buf.put_u64(at.as_nanos() as u64);
        buf.extend_from_slice(&tail);
    }
    let mut all = buf.freeze();
    (0..all.len() / 64).map(|_| all.split_to(64)).collect()
}

fn stamp_of(msg: &[u8]) -> Result<Duration> {
    let head: [u8; 8] = msg
        .get(..8)
        .and_then(|h| h.try_into().ok())
        .ok_or_else(|| anyhow!("message of {} bytes has no timestamp", msg.len()))?;
    Ok(Duration::from_nanos(u64::from_be_bytes(head)))
}

/// Pub/sub one-way latency, one message in flight: `count` messages from
/// one publisher to one subscriber, each timestamped in its payload.
pub async fn oneway<D: Driver>(d: &D, count: u64, tag: &str, limits: Limits) -> Result<Latencies> {
    let topic = format!("bench.lat.{tag}");
    let mut sub = d.subscribe(topic.clone(), count + 1).await?;
    let mut publisher = d.publisher().await?;
    let start = Instant::now();
    let deadline = start + limits.total;
    let mut samples = Vec::with_capacity(count as usize);
    // one warm-up message: connection set-up is not measured
    for i in 0..=count {
        if Instant::now() > deadline {
            bail!("one-way latency run exceeded its time limit");
        }
        D::publish_one(&mut publisher, &topic, stamped(start.elapsed())).await?;
        let msg = match tokio::time::timeout(limits.first, D::next(&mut sub)).await {
            Ok(Ok(Some(m))) => m,
            Ok(Ok(None)) => bail!("subscription ended"),
            Ok(Err(e)) => return Err(e),
            Err(_) => bail!("message {i} did not arrive within {:?}", limits.first),
        };
        let lat = start.elapsed().saturating_sub(stamp_of(&msg)?);
        if i > 0 {
            samples.push(lat);
        }
    }
    Ok(Latencies {
        throughput: Throughput {
            sent: count,
            expected: count,
            delivered: samples.len() as u64,
            secs: start.elapsed().as_secs_f64(),
            reported_drops: 0,
        },
        samples,
    })
}

/// [`oneway`] for any system with a pub/sub driver.
pub async fn oneway_any(sys: &Sys, count: u64, tag: &str, limits: Limits) -> Result<Latencies> {
    match sys {
        Sys::Switchboard(d) => oneway(d, count, tag, limits).await,
        Sys::Nats(d) => oneway(d, count, tag, limits).await,
        Sys::Mqtt(d) => oneway(d, count, tag, limits).await,
        Sys::Redis(d) => oneway(d, count, tag, limits).await,
        Sys::Relay(d) => oneway(d, count, tag, limits).await,
        Sys::Raw(_) => bail!("raw TCP has no pub/sub"),
    }
}

/// The systems the open-loop rows run: switchboard (reliable), nats-server
/// and the relay.
pub fn open_loop_systems(systems: &[Sys]) -> Vec<&Sys> {
    systems
        .iter()
        .filter(|s| matches!(s.key(), "switchboard" | "nats" | "relay"))
        .collect()
}

/// One open-loop run of `w` against `sys` at `rate`.
pub async fn open_any(
    w: &OpenLoop,
    sys: &Sys,
    rate: f64,
    secs: f64,
    tag: String,
    limits: Limits,
) -> Result<Latencies> {
    let tag = &tag;
    match (sys, w.reqrep) {
        (Sys::Switchboard(d), false) => open_pubsub(d, rate, secs, tag, limits).await,
        (Sys::Nats(d), false) => open_pubsub(d, rate, secs, tag, limits).await,
        (Sys::Relay(d), false) => open_pubsub(d, rate, secs, tag, limits).await,
        (Sys::Switchboard(d), true) => open_reqrep(d, rate, secs, tag, limits).await,
        (Sys::Nats(d), true) => open_reqrep(d, rate, secs, tag, limits).await,
        (Sys::Relay(d), true) => open_reqrep(d, rate, secs, tag, limits).await,
        _ => bail!("{} has no open-loop driver", sys.name()),
    }
}

/// Keeps an open-loop schedule on a thread of its own. Message `i` is due
/// at [`due_at`]: its nominal time `i / rate` rounded up to the next
/// multiple of [`PACE_STEP`]. `send(from, to)` sends messages `from..to`
/// (everything due, at most [`MAX_BURST`] at once); then the thread
/// **sleeps** until the next message is due (timer slack lowered to 1 µs,
/// so a sleep ends within a few microseconds of its time). At rates above
/// one message per step the offered load is thus a burst every step, and
/// every message of a burst is stamped with the burst's due time: the
/// measured latency starts when the schedule sends the message. A sender
/// that falls behind still stamps the due time, so the delay counts
/// against every message that should have gone out meanwhile
/// (coordinated omission stays corrected). Nothing spins: the sender
/// takes CPU only to send, the same for every system, and the rest of
/// both cores is left to the server and the receiver. Stops after `total`
/// messages or at `give_up`; returns how many were sent, the seconds it
/// took, and `send` back.
///
/// (Until stop 37 each message was stamped with its nominal time while
/// the bursts still went out once a step. A message then waited up to a
/// step in the sender before it was sent, and how long depended on the
/// system: a `send` that blocks (a flush) kept the sender busy and its
/// bursts small, one that returns at once left it asleep for the whole
/// step. That wait was charged to the system.)
fn paced<F>(
    start: Instant,
    rate: f64,
    total: u64,
    give_up: Duration,
    mut send: F,
) -> Result<(u64, f64, F)>
where
    F: FnMut(u64, u64) -> Result<()>,
{
    // SAFETY: PR_SET_TIMERSLACK takes an integer argument and changes
    // only this thread's timer slack.
    unsafe {
        libc::prctl(libc::PR_SET_TIMERSLACK, 1 as libc::c_ulong);
    }
    let interval = 1.0 / rate;
    let mut sent = 0u64;
    while sent < total && start.elapsed() < give_up {
        let due_now = due_by(start.elapsed(), interval)
            .min(total)
            .min(sent + MAX_BURST);
        if due_now > sent {
            send(sent, due_now)?;
            sent = due_now;
        } else {
            let due = due_at(sent, interval);
            std::thread::sleep(due.saturating_sub(start.elapsed()));
        }
    }
    Ok((sent, start.elapsed().as_secs_f64(), send))
}

/// When message `i` of a schedule of one message every `interval`
/// seconds is due, and the time it is stamped with: its nominal time
/// `i × interval` (to the nanosecond) rounded up to a multiple of
/// [`PACE_STEP`]: never before the nominal time, less than a step after
/// it.
fn due_at(i: u64, interval: f64) -> Duration {
    let step = PACE_STEP.as_nanos() as u64;
    let nominal = (i as f64 * interval * 1e9).round() as u64;
    Duration::from_nanos(nominal.div_ceil(step) * step)
}

/// How many messages of the schedule ([`due_at`]) are due at `now`.
fn due_by(now: Duration, interval: f64) -> u64 {
    let step = PACE_STEP.as_nanos() as u64;
    // the last step boundary reached; messages whose nominal time is not
    // past it are due
    let reached = now.as_nanos() as u64 / step * step;
    let mut n = (reached as f64 / (interval * 1e9)) as u64 + 1;
    // float rounding: agree with `due_at` exactly
    while due_at(n, interval) <= now {
        n += 1;
    }
    while n > 0 && due_at(n - 1, interval) > now {
        n -= 1;
    }
    n
}

/// Runs [`paced`] on a new thread and waits for it without blocking the
/// runtime.
async fn paced_thread<F>(
    start: Instant,
    rate: f64,
    total: u64,
    give_up: Duration,
    send: F,
) -> Result<(u64, f64, F)>
where
    F: FnMut(u64, u64) -> Result<()> + Send + 'static,
{
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name("open-loop-sender".into())
        .spawn(move || {
            let _ = tx.send(paced(start, rate, total, give_up, send));
        })?;
    rx.await
        .map_err(|_| anyhow!("the open-loop sender thread failed"))?
}

/// Open-loop pub/sub 1→1 at `rate` messages/s for `secs`; latency from
/// each message's intended send time to its arrival.
pub async fn open_pubsub<D: Driver>(
    d: &D,
    rate: f64,
    secs: f64,
    tag: &str,
    limits: Limits,
) -> Result<Latencies> {
    let total = ((rate * secs) as u64).max(1);
    let topic = format!("bench.ol.{tag}");
    let mut sub = d.subscribe(topic.clone(), total + 1).await?;
    let mut publisher = d.publisher().await?;
    // warm-up
    D::publish_one(&mut publisher, &topic, stamped(Duration::ZERO)).await?;
    match tokio::time::timeout(limits.first, D::next(&mut sub)).await {
        Ok(Ok(Some(_))) => {}
        _ => bail!("the warm-up message did not arrive"),
    }
    let start = Instant::now();
    // what the receiver waits for: lowered when the sender gives up
    let target = Arc::new(AtomicU64::new(total));
    let want = target.clone();
    let receiver = tokio::spawn(async move {
        let mut samples = Vec::with_capacity(total as usize);
        let mut quiet = Duration::ZERO;
        let slice = Duration::from_millis(50);
        while (samples.len() as u64) < want.load(Ordering::Relaxed) && quiet < limits.idle {
            match tokio::time::timeout(slice, D::next(&mut sub)).await {
                Ok(Ok(Some(m))) => {
                    let now = start.elapsed();
                    samples.push(now.saturating_sub(stamp_of(&m)?));
                    quiet = Duration::ZERO;
                }
                Ok(_) => break,
                Err(_) => quiet += slice,
            }
        }
        Ok::<_, anyhow::Error>(samples)
    });
    let interval = 1.0 / rate;
    let rt = tokio::runtime::Handle::current();
    let send = move |from: u64, to: u64| {
        let batch = stamped_batch((from..to).map(|i| due_at(i, interval)));
        rt.block_on(D::publish_batch(&mut publisher, &topic, batch))
    };
    let sending = paced_thread(start, rate, total, send_deadline(secs), send).await;
    let (sent, send_secs, send) = match sending {
        Ok(done) => done,
        Err(e) => {
            receiver.abort();
            return Err(e);
        }
    };
    target.store(sent, Ordering::Relaxed);
    let samples = receiver.await??;
    drop(send);
    Ok(Latencies {
        throughput: Throughput {
            sent,
            expected: sent,
            delivered: samples.len() as u64,
            secs: send_secs,
            reported_drops: 0,
        },
        samples,
    })
}

/// Open-loop request/reply at `rate` requests/s for `secs`: each request
/// is sent when due, however many are outstanding; latency from its
/// intended send time to its reply.
pub async fn open_reqrep<R: ReqRep>(
    r: &R,
    rate: f64,
    secs: f64,
    tag: &str,
    limits: Limits,
) -> Result<Latencies> {
    let total = ((rate * secs) as u64).max(1);
    let service = Arc::new(format!("bench.olsvc.{tag}"));
    let _responder = r.responder(service.to_string()).await?;
    let requester = r.requester().await?;
    let body = payload(64);
    R::request(&requester, &service, body.clone()).await?;
    let start = Instant::now();
    let interval = 1.0 / rate;
    let rt = tokio::runtime::Handle::current();
    let (done_tx, mut done) = tokio::sync::mpsc::unbounded_channel();
    // aborted at the end: requests still unanswered then are lost
    let tasks = Arc::new(std::sync::Mutex::new(Vec::with_capacity(total as usize)));
    let spawned = tasks.clone();
    let send = move |from: u64, to: u64| {
        let mut spawned = spawned.lock().map_err(|_| anyhow!("poisoned"))?;
        for i in from..to {
            let intended = due_at(i, interval);
            let (req, svc, body) = (requester.clone(), service.clone(), body.clone());
            let done = done_tx.clone();
            let task = rt.spawn(async move {
                let r = R::request(&req, &svc, body).await;
                let _ = done.send(r.map(|_| start.elapsed().saturating_sub(intended)));
            });
            spawned.push(task.abort_handle());
        }
        Ok(())
    };
    // `send` holds the requester: kept until the replies are in
    let (sent, send_secs, send) =
        paced_thread(start, rate, total, send_deadline(secs), send).await?;
    let mut samples = Vec::with_capacity(total as usize);
    let (mut error, mut failed) = (None, 0u64);
    let deadline = tokio::time::Instant::now() + limits.first;
    while samples.len() as u64 + failed < sent {
        match tokio::time::timeout_at(deadline, done.recv()).await {
            Ok(Some(Ok(lat))) => samples.push(lat),
            Ok(Some(Err(e))) => {
                failed += 1;
                error.get_or_insert(e);
            }
            Ok(None) | Err(_) => break,
        }
    }
    if let Ok(tasks) = tasks.lock() {
        tasks.iter().for_each(tokio::task::AbortHandle::abort);
    }
    drop(send);
    if samples.is_empty() {
        bail!(
            "no reply arrived{}",
            error.map(|e| format!(" ({e:#})")).unwrap_or_default()
        );
    }
    Ok(Latencies {
        throughput: Throughput {
            sent,
            expected: sent,
            delivered: samples.len() as u64,
            secs: send_secs,
            reported_drops: 0,
        },
        samples,
    })
}

/// Most messages (requests) sent in one catch-up burst.
const MAX_BURST: u64 = 1000;

/// The open-loop schedule's step (see [`paced`]): messages fall due only
/// on its multiples, so the sender wakes at most 5,000 times a second
/// whatever the rate, where sleeping until each message's nominal time
/// woke it every few microseconds and made it the busiest thread of the
/// harness.
const PACE_STEP: Duration = Duration::from_micros(200);

/// When an open-loop sender that cannot keep its schedule stops: half the
/// run's length late (plus half a second). Its figures then measure the
/// sender as much as the server; the row's note gives the rate it reached.
fn send_deadline(secs: f64) -> Duration {
    Duration::from_secs_f64(secs * 1.5 + 0.5)
}

/// Offered loads of the open-loop rows, as fractions of the system's peak.
pub const LOADS: [f64; 3] = [0.1, 0.5, 0.9];

/// An open-loop workload: its id, title, and the throughput row (and
/// metric) in the same run that gives each system's peak.
pub struct OpenLoop {
    /// Workload id.
    pub id: &'static str,
    /// Human title.
    pub title: String,
    /// Request/reply (else pub/sub 1→1).
    pub reqrep: bool,
    /// The throughput workload whose median is the peak.
    pub peak_of: (&'static str, &'static str),
}

/// The open-loop workloads; `secs` per offered load.
pub fn open_loops(secs: f64) -> Vec<OpenLoop> {
    vec![
        OpenLoop {
            id: "ol-pubsub-1x1",
            title: format!(
                "open loop: pub/sub 1→1, 64 B, {secs} s per offered load (% of the system's pubsub-1x1-64 peak), latency from the intended send time"
            ),
            reqrep: false,
            peak_of: ("pubsub-1x1-64", "msgs/s"),
        },
        OpenLoop {
            id: "ol-reqrep",
            title: format!(
                "open loop: request/reply, 64 B, {secs} s per offered load (% of the system's reqrep-16 peak), latency from the intended send time"
            ),
            reqrep: true,
            peak_of: ("reqrep-16", "requests/s"),
        },
    ]
}

/// Runs `w` for every system in `systems` (name, runner) at each of
/// [`LOADS`] of its peak from `figures`; appends p50/p99/p999 figures per load.
pub async fn open_loop_rows<F, Fut>(
    w: &OpenLoop,
    systems: &[&'static str],
    runs: usize,
    pb: &ProgressBar,
    figures: &mut Vec<Figure>,
    mut run_one: F,
) where
    F: FnMut(usize, f64, String) -> Fut,
    Fut: std::future::Future<Output = Result<Latencies>>,
{
    let mut lines = String::new();
    for (i, name) in systems.iter().enumerate() {
        let peak = figures
            .iter()
            .find(|f| f.workload == w.peak_of.0 && f.metric == w.peak_of.1 && f.system == *name)
            .and_then(|f| f.summary)
            .map(|s| s.median);
        for load in LOADS {
            let pct = (load * 100.0).round();
            let mut values = vec![Vec::new(); 3];
            let (mut sent, mut expected, mut delivered) = (0, 0, 0);
            let mut achieved: Vec<f64> = Vec::new();
            let mut error = None;
            for r in 0..runs {
                pb.set_message(format!("{} · {name} · {pct}% · run {}/{runs}", w.id, r + 1));
                let result = match peak {
                    Some(p) if p > 0.0 => {
                        run_one(i, p * load, format!("{}.{i}.{pct}.{r}", w.id)).await
                    }
                    _ => Err(anyhow!(
                        "no peak: run `{}` in the same invocation",
                        w.peak_of.0
                    )),
                };
                pb.inc(1);
                match result {
                    Ok(mut l) => {
                        for (m, q) in [0.5, 0.99, 0.999].into_iter().enumerate() {
                            if let Some(v) = percentile_us(&mut l.samples, q) {
                                values[m].push(v);
                            }
                        }
                        if l.throughput.secs > 0.0 {
                            achieved.push(l.throughput.sent as f64 / l.throughput.secs);
                        }
                        sent += l.throughput.sent;
                        expected += l.throughput.expected;
                        delivered += l.throughput.delivered;
                    }
                    Err(e) => {
                        error.get_or_insert(format!("{e:#}"));
                    }
                }
            }
            for (m, q) in ["p50", "p99", "p999"].into_iter().enumerate() {
                let summary = Summary::of(&values[m]);
                if let Some(s) = summary {
                    lines.push_str(&format!(
                        "  {name:<12} {pct:>3}% of {:>10.0}/s (sent at {:>10.0}/s)  {q:<5} {:>10.1} µs [{:.1} – {:.1}]  delivered {delivered}/{expected}\n",
                        peak.unwrap_or(0.0),
                        Summary::of(&achieved).map_or(0.0, |a| a.median),
                        s.median,
                        s.min,
                        s.max
                    ));
                }
                figures.push(Figure {
                    workload: w.id.to_string(),
                    title: w.title.clone(),
                    metric: format!("{q} µs at {pct}%"),
                    lower_is_better: true,
                    system: name.to_string(),
                    runs: values[m].clone(),
                    summary,
                    sent,
                    expected,
                    delivered,
                    error: error.clone(),
                    note: peak.map(|p| {
                        let reached = Summary::of(&achieved)
                            .map(|a| format!(", sent at {:.0}/s", a.median))
                            .unwrap_or_default();
                        format!("offered {:.0}/s ({pct}% of {p:.0}/s){reached}", p * load)
                    }),
                });
            }
            if let Some(e) = &error {
                lines.push_str(&format!("  {name:<12} {pct:>3}% failed: {e}\n"));
            }
        }
    }
    pb.suspend(|| println!("{}\n{lines}", w.title));
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::relay::Relay;

    async fn relay() -> Relay {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        tokio::spawn(crate::relay::serve(l));
        Relay::new(addr)
    }

    fn limits() -> Limits {
        Limits {
            first: Duration::from_secs(5),
            idle: Duration::from_secs(2),
            total: Duration::from_secs(20),
        }
    }

    #[test]
    fn stamps_round_trip() {
        let d = Duration::from_nanos(123_456_789);
        let b = stamped(d);
        assert_eq!(b.len(), 64);
        assert_eq!(stamp_of(&b).unwrap(), d);
        assert!(stamp_of(b"short").is_err());
        let ats = [d, Duration::ZERO, Duration::from_micros(200)];
        let batch = stamped_batch(ats.iter().copied());
        assert_eq!(batch.len(), 3);
        for (b, at) in batch.iter().zip(ats) {
            assert_eq!(b.len(), 64);
            assert_eq!(stamp_of(b).unwrap(), at);
            assert_eq!(b[8..], payload(56)[..], "the payload after the stamp");
        }
        assert!(stamped_batch(std::iter::empty()).is_empty());
    }

    /// CPU time of the calling thread.
    fn thread_cpu() -> Duration {
        let mut ts = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: a valid clock id and a valid pointer to a timespec.
        let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
        assert_eq!(rc, 0);
        Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
    }

    /// Runs [`paced`] at `rate` for `total` messages with a sender that
    /// only checks the schedule; returns the number of `send` calls and
    /// the wall time. Asserts that nothing went out early and that the
    /// thread slept most of the time.
    fn pace(rate: f64, total: u64) -> (u64, Duration) {
        let start = Instant::now();
        let cpu = thread_cpu();
        let mut early = 0;
        let mut calls = 0;
        let (sent, secs, _) = paced(start, rate, total, Duration::from_secs(20), |from, to| {
            calls += 1;
            // message `to - 1` is due at (to - 1) / rate
            if start.elapsed() < Duration::from_secs_f64((to - 1) as f64 / rate) {
                early += 1;
            }
            assert!(from < to && to - from <= MAX_BURST);
            Ok(())
        })
        .unwrap();
        let (cpu, wall) = (thread_cpu() - cpu, start.elapsed());
        assert_eq!(sent, total);
        assert_eq!(early, 0, "messages went out before they were due");
        assert!(calls > 1, "everything went out at once");
        assert!(secs >= (total - 1) as f64 / rate);
        // a sender that spins until each message is due burns the whole
        // wall time on its core; one that sleeps, a small share of it
        assert!(
            cpu < wall / 2,
            "the sender used {cpu:?} of CPU in {wall:?}: it spins"
        );
        (calls, wall)
    }

    #[test]
    fn messages_fall_due_on_the_step_after_their_nominal_time() {
        let step = PACE_STEP;
        for rate in [1_000.0, 2_000.0, 7_277.0, 100_000.0, 1_429_167.0] {
            let interval = 1.0 / rate;
            let mut last = Duration::ZERO;
            for i in 0..20_000u64 {
                let due = due_at(i, interval);
                let nominal = Duration::from_secs_f64(i as f64 * interval);
                assert_eq!(due.as_nanos() % step.as_nanos(), 0, "{i} at {rate}/s");
                assert!(due + Duration::from_nanos(1) >= nominal, "{i} early");
                assert!(due < nominal + step, "{i} at {rate}/s: {due:?} {nominal:?}");
                assert!(due >= last, "the schedule goes back");
                last = due;
            }
            // `due_by` counts exactly the messages `due_at` says are due
            for t in (0..5_000u64).map(|k| Duration::from_micros(k * 37)) {
                let n = due_by(t, interval);
                assert!(due_at(n, interval) > t, "{n} due at {t:?}, not counted");
                assert!(
                    n == 0 || due_at(n - 1, interval) <= t,
                    "{n} counted at {t:?}"
                );
            }
        }
    }

    #[test]
    fn the_pacer_sleeps_between_messages_and_never_sends_early() {
        // 2,000 messages/s: one due every 500 µs (more than a step), 600
        // in 0.3 s, each sent on its own
        let (calls, _) = pace(2_000.0, 600);
        assert!(calls > 300, "{calls} sends for 600 messages a step apart");
    }

    #[test]
    fn at_high_rates_the_pacer_wakes_once_a_step_and_sends_what_is_due() {
        // 100,000 messages/s: 20 fall due in each 200 µs step, 30,000 in
        // 0.3 s. The thread wakes at most once a step; a wake-up sends at
        // most MAX_BURST, so a late one may take a few calls to catch up.
        let total = 30_000;
        let (calls, wall) = pace(100_000.0, total);
        let wakes = (wall.as_secs_f64() / PACE_STEP.as_secs_f64()) as u64 + 1;
        assert!(
            calls <= wakes + 1 + total / MAX_BURST,
            "{calls} sends in {wall:?}: more than one a step"
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn oneway_latency_counts_every_message() {
        let d = relay().await;
        let l = oneway(&d, 300, "ow", limits()).await.unwrap();
        assert_eq!(l.samples.len(), 300);
        assert!(l.samples.iter().all(|s| *s < Duration::from_secs(5)));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn open_loop_keeps_the_schedule_and_measures_from_intended_times() {
        let d = relay().await;
        let started = Instant::now();
        let l = open_pubsub(&d, 20_000.0, 0.25, "olp", limits())
            .await
            .unwrap();
        assert_eq!(l.samples.len(), 5_000);
        // the schedule, not the server, sets the pace
        assert!(started.elapsed() >= Duration::from_millis(240));
        let r = open_reqrep(&d, 5_000.0, 0.2, "olr", limits())
            .await
            .unwrap();
        assert_eq!(r.samples.len(), 1_000);
    }
}
