//! `switchboard bench`: throughput and latency through the client API.

use std::time::{Duration, Instant};

use futures::StreamExt;
use serde_json::json;
use switchboard::{Bytes, Client, Hub, HubHandle, Secret};

use super::global::Global;

/// What to measure.
pub struct BenchArgs {
    /// Messages published in the 1->1 run (the fan-out run publishes this
    /// divided by the subscribers).
    pub messages: u64,
    /// Payload bytes.
    pub size: usize,
    /// Subscribers of the fan-out run.
    pub fanout: u64,
    /// Requests of each request/reply run.
    pub requests: u64,
    /// Requests in flight in the concurrent run.
    pub concurrency: u64,
    /// Items each subscriber's stream holds.
    pub capacity: usize,
    /// What a subscriber's full stream does.
    pub overflow: switchboard::Overflow,
    /// Time each subscriber spends on a message.
    pub consume_delay: Duration,
    /// Fail (exit code 6) when a message was dropped or not delivered.
    pub strict: bool,
}

/// Default of `--capacity`: large enough that a subscriber keeping up
/// drops nothing at the default message counts.
pub const DEFAULT_CAPACITY: usize = 1 << 20;

/// `--strict` found messages dropped or not delivered (exit code 6).
#[derive(Debug, thiserror::Error)]
#[error("bench --strict: {0}")]
pub struct Incomplete(String);

const TOKEN: &str = "switchboard-bench";

/// How long a subscriber waits for the next message before it counts the
/// rest as not delivered.
const IDLE: Duration = Duration::from_secs(2);

/// How often a waiting subscriber looks whether the messages it still
/// waits for were dropped.
const RECHECK: Duration = Duration::from_millis(20);

/// The hub the runs use and how its clients prove the secret.
struct Target {
    addr: String,
    secret: Secret,
    /// "in this process", "given by --addr", "discovered for service S".
    how: String,
    in_process: bool,
}

impl Target {
    async fn client(&self, id: String, capacity: usize) -> anyhow::Result<Client> {
        Ok(Client::builder(id)
            .addr(&self.addr)
            .secret(self.secret.clone())
            .stream_capacity(capacity)
            .reconnect(false)
            .connect()
            .await?)
    }
}

fn report(g: &Global, target: &Target, name: &str, text: String, v: serde_json::Value) {
    if g.json {
        let mut v = v;
        v["bench"] = json!(name);
        v["hub"] = json!(target.addr);
        v["in_process"] = json!(target.in_process);
        println!("{v}");
    } else {
        println!("{name:<28} {text}");
    }
}

/// The hub to measure: the one given by `--addr`, the one discovered for
/// an explicit `--service` (both with the token or the secret file, as
/// every command), else a hub started in this process with a private
/// token and no hint file.
async fn target(g: &Global) -> anyhow::Result<(Target, Option<HubHandle>)> {
    if g.addr.is_none() && !g.service_given() {
        // A service name of its own: discovery of "switchboard" elsewhere on
        // the machine never finds this hub.
        let hub = Hub::builder()
            .service(format!("switchboard-bench-{}", std::process::id()))
            .token(TOKEN)
            .listen("127.0.0.1:0")
            .write_hint(false)
            .start()
            .await?;
        let target = Target {
            addr: hub.local_addr().to_string(),
            secret: Secret::from_token(TOKEN),
            how: "in this process".to_string(),
            in_process: true,
        };
        return Ok((target, Some(hub)));
    }
    // Found once, with --wait, like any command; every client of the runs
    // then connects to that address.
    let pid = std::process::id();
    let first = g
        .connect_with(g.builder(&format!("bench-{pid}"), false)?.reconnect(false))
        .await?;
    let addr = first.hub_addr();
    first.close().await;
    let addr = addr.map(|a| a.to_string()).ok_or_else(|| {
        anyhow::anyhow!("lost the hub right after connecting; run the bench again")
    })?;
    let how = match &g.addr {
        Some(_) => "given by --addr".to_string(),
        None => format!("discovered for service {}", g.service()),
    };
    let target = Target {
        addr,
        secret: g.secret()?,
        how,
        in_process: false,
    };
    Ok((target, None))
}

pub async fn run(g: &Global, a: BenchArgs) -> anyhow::Result<()> {
    anyhow::ensure!(
        a.messages > 0 && a.requests > 0 && a.fanout > 0 && a.concurrency > 0 && a.capacity > 0,
        "counts must be positive"
    );
    anyhow::ensure!(a.size <= 1 << 20, "--size must be at most 1 MiB");
    let (target, hub) = target(g).await?;
    if !g.json {
        println!(
            "hub {} ({}), payload {} bytes",
            target.addr, target.how, a.size
        );
    }
    let payload = Bytes::from(vec![b'x'; a.size]);
    let pid = std::process::id();
    let mut incomplete = Vec::new();

    // Pub/sub 1 -> n.
    for subs in [1, a.fanout] {
        let count = if subs == 1 {
            a.messages
        } else {
            (a.messages / subs).max(1)
        };
        let publisher = target
            .client(format!("bench-pub-{pid}"), a.capacity)
            .await?;
        let mut tasks = Vec::new();
        let topic = format!("bench.{pid}.{subs}");
        for i in 0..subs {
            let c = target
                .client(format!("bench-sub-{pid}-{i}"), a.capacity)
                .await?;
            let options = switchboard::SubscribeOptions::default()
                .capacity(a.capacity)
                .overflow(a.overflow);
            let mut sub = c.subscribe_with(&topic, options).await?;
            let delay = a.consume_delay;
            tasks.push(tokio::spawn(async move {
                let mut got = 0u64;
                let mut last = Instant::now();
                // Dropped messages (by this client for a full stream, or
                // by the hub for a full queue) will not come.
                // Checked again every few milliseconds: the last messages
                // may be the dropped ones.
                while got + c.dropped() < count {
                    match tokio::time::timeout(RECHECK, sub.next()).await {
                        Ok(Some(_)) => {
                            got += 1;
                            last = Instant::now();
                            if !delay.is_zero() {
                                tokio::time::sleep(delay).await;
                            }
                        }
                        Ok(None) => break,
                        Err(_) if last.elapsed() >= IDLE => break,
                        Err(_) => {}
                    }
                }
                let dropped = c.dropped();
                (got, last, dropped, c)
            }));
        }
        let start = Instant::now();
        for _ in 0..count {
            publisher.publish_nowait(&topic, payload.clone()).await?;
        }
        let mut delivered = 0;
        let mut end = start;
        let mut dropped = 0;
        for t in tasks {
            let (got, last, d, c) = t.await?;
            delivered += got;
            end = end.max(last);
            dropped += d;
            c.close().await;
        }
        publisher.close().await;
        let expected = count * subs;
        let missing = expected.saturating_sub(delivered + dropped);
        let secs = end.duration_since(start).as_secs_f64().max(1e-9);
        let rate = delivered as f64 / secs;
        let name = format!("pub/sub 1->{subs}");
        report(
            g,
            &target,
            &name,
            format!(
                "{rate:>10.0} msgs/s delivered ({count} published x {subs} subscribers: \
                 {delivered}/{expected} delivered, {dropped} dropped, {missing} missing; {secs:.3} s)"
            ),
            json!({"subscribers": subs, "published": count, "expected": expected,
                   "delivered": delivered, "dropped": dropped, "missing": missing,
                   "seconds": secs, "msgs_per_s": rate}),
        );
        if delivered < expected {
            incomplete.push(format!(
                "{name}: {delivered} of {expected} delivered ({dropped} dropped, {missing} missing)"
            ));
        }
    }

    // Request/reply, sequential and concurrent.
    let server = target
        .client(format!("bench-server-{pid}"), a.capacity)
        .await?;
    let _serving = server
        .serve(|req| async move { Ok::<_, String>(req.payload().clone()) })
        .await?;
    let requester = target
        .client(format!("bench-req-{pid}"), a.capacity)
        .await?;
    let server_id = server.id().to_string();
    let mut lat = Vec::with_capacity(a.requests as usize);
    let start = Instant::now();
    for _ in 0..a.requests {
        let t = Instant::now();
        requester.request(&server_id, payload.clone()).await?;
        lat.push(t.elapsed());
    }
    let secs = start.elapsed().as_secs_f64();
    lat.sort();
    let pct = |p: f64| lat[((lat.len() as f64 - 1.0) * p).round() as usize].as_secs_f64() * 1e6;
    report(
        g,
        &target,
        "request/reply sequential",
        format!(
            "{:>10.0} round trips/s, p50 {:.0} us, p99 {:.0} us ({} requests)",
            a.requests as f64 / secs,
            pct(0.5),
            pct(0.99),
            a.requests
        ),
        json!({"requests": a.requests, "per_s": a.requests as f64 / secs,
               "p50_us": pct(0.5), "p99_us": pct(0.99)}),
    );

    let start = Instant::now();
    let per = (a.requests / a.concurrency).max(1);
    let mut tasks = Vec::new();
    for _ in 0..a.concurrency {
        let requester = requester.clone();
        let server_id = server_id.clone();
        let payload = payload.clone();
        tasks.push(tokio::spawn(async move {
            for _ in 0..per {
                requester.request(&server_id, payload.clone()).await?;
            }
            anyhow::Ok(())
        }));
    }
    for t in tasks {
        t.await??;
    }
    let total = per * a.concurrency;
    let secs = start.elapsed().as_secs_f64();
    report(
        g,
        &target,
        &format!("request/reply {} in flight", a.concurrency),
        format!(
            "{:>10.0} round trips/s ({total} requests)",
            total as f64 / secs
        ),
        json!({"requests": total, "in_flight": a.concurrency, "per_s": total as f64 / secs}),
    );
    requester.close().await;
    server.close().await;
    if let Some(hub) = hub {
        hub.shutdown().await;
    }
    if a.strict && !incomplete.is_empty() {
        return Err(Incomplete(incomplete.join("; ")).into());
    }
    Ok(())
}
