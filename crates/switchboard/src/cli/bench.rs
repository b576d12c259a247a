//! `switchboard bench`: throughput and latency through the client API.

use std::time::{Duration, Instant};

use futures::StreamExt;
use serde_json::json;
use switchboard::{Bytes, Client, Hub};

use super::Global;

/// What to measure.
pub struct BenchArgs {
    pub messages: u64,
    pub size: usize,
    pub fanout: u64,
    pub requests: u64,
    pub concurrency: u64,
}

const TOKEN: &str = "switchboard-bench";

async fn client(addr: &str, token: &str, id: String) -> anyhow::Result<Client> {
    Ok(Client::builder(id)
        .addr(addr)
        .token(token)
        .stream_capacity(1 << 20)
        .reconnect(false)
        .connect()
        .await?)
}

fn report(g: &Global, name: &str, text: String, v: serde_json::Value) {
    if g.json {
        let mut v = v;
        v["bench"] = json!(name);
        println!("{v}");
    } else {
        println!("{name:<28} {text}");
    }
}

pub async fn run(g: &Global, a: BenchArgs) -> anyhow::Result<()> {
    anyhow::ensure!(
        a.messages > 0 && a.requests > 0 && a.fanout > 0 && a.concurrency > 0,
        "counts must be positive"
    );
    anyhow::ensure!(a.size <= 1 << 20, "--size must be at most 1 MiB");
    // Use the hub given by --addr, or run one in this process.
    let (hub, addr, token) = match &g.addr {
        Some(addr) => (None, addr.clone(), g.token.clone().unwrap_or_default()),
        None => {
            let hub = Hub::builder()
                .token(TOKEN)
                .listen("127.0.0.1:0")
                .write_hint(false)
                .start()
                .await?;
            let addr = hub.local_addr().to_string();
            (Some(hub), addr, TOKEN.to_string())
        }
    };
    if !g.json {
        println!(
            "hub {addr} ({}), payload {} bytes",
            if hub.is_some() {
                "in this process"
            } else {
                "external"
            },
            a.size
        );
    }
    let payload = Bytes::from(vec![b'x'; a.size]);
    let pid = std::process::id();

    // Pub/sub 1 -> n.
    for subs in [1, a.fanout] {
        let count = if subs == 1 {
            a.messages
        } else {
            (a.messages / subs).max(1)
        };
        let publisher = client(&addr, &token, format!("bench-pub-{pid}")).await?;
        let mut tasks = Vec::new();
        let topic = format!("bench.{pid}.{subs}");
        for i in 0..subs {
            let c = client(&addr, &token, format!("bench-sub-{pid}-{i}")).await?;
            let mut sub = c.subscribe(&topic).await?;
            tasks.push(tokio::spawn(async move {
                let mut got = 0u64;
                let mut last = Instant::now();
                while got < count {
                    match tokio::time::timeout(Duration::from_secs(2), sub.next()).await {
                        Ok(Some(_)) => {
                            got += 1;
                            last = Instant::now();
                        }
                        _ => break,
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
        let secs = end.duration_since(start).as_secs_f64().max(1e-9);
        let rate = delivered as f64 / secs;
        report(
            g,
            &format!("pub/sub 1->{subs}"),
            format!(
                "{:>10.0} msgs/s delivered ({delivered}/{} delivered, {dropped} dropped, {:.3} s)",
                rate,
                count * subs,
                secs
            ),
            json!({"subscribers": subs, "sent": count, "delivered": delivered, "dropped": dropped,
                   "seconds": secs, "msgs_per_s": rate}),
        );
    }

    // Request/reply, sequential and concurrent.
    let server = client(&addr, &token, format!("bench-server-{pid}")).await?;
    let _serving = server
        .serve(|req| async move { Ok::<_, String>(req.payload().clone()) })
        .await?;
    let requester = client(&addr, &token, format!("bench-req-{pid}")).await?;
    let target = server.id().to_string();
    let mut lat = Vec::with_capacity(a.requests as usize);
    let start = Instant::now();
    for _ in 0..a.requests {
        let t = Instant::now();
        requester.request(&target, payload.clone()).await?;
        lat.push(t.elapsed());
    }
    let secs = start.elapsed().as_secs_f64();
    lat.sort();
    let pct = |p: f64| lat[((lat.len() as f64 - 1.0) * p).round() as usize].as_secs_f64() * 1e6;
    report(
        g,
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
        let target = target.clone();
        let payload = payload.clone();
        tasks.push(tokio::spawn(async move {
            for _ in 0..per {
                requester.request(&target, payload.clone()).await?;
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
    Ok(())
}
