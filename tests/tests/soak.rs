//! A mixed soak run through the `Client` API against an in-process hub:
//! request/reply, confirmed direct messages, pub/sub fan-out, key/value
//! watches, sessions (a session manager pushing RPCs to two agents over
//! the hub), clients joining and leaving at random, and a subscriber that
//! never reads. Reliable flows are sequence-checked (zero loss, zero
//! duplicates; each agent runs its RPCs one at a time, in order, once); the process's resident memory is sampled once a second and
//! its open file descriptors are counted before and after.
//!
//! Duration: `SWITCHBOARD_SOAK_SECS` (default 10). Run the long version with
//! `SWITCHBOARD_SOAK_SECS=600 cargo test -p switchboard-tests --release
//! --test soak -- --nocapture`.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Result};
use bytes::Bytes;
use switchboard::session::driver::{ManagerOptions, Methods};
use switchboard::session::AgentConfig;
use switchboard::{Client, MessageKind};
use switchboard_tests::{client, hub, within};

/// Resident set size of this process, bytes (Linux; 0 elsewhere).
fn rss() -> u64 {
    std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|s| s.split_whitespace().nth(1)?.parse::<u64>().ok())
        .map_or(0, |pages| pages * 4096)
}

/// Open file descriptors of this process (Linux; 0 elsewhere).
fn fds() -> usize {
    std::fs::read_dir("/proc/self/fd").map_or(0, |d| d.count())
}

fn seq_payload(tag: u64, seq: u64) -> Bytes {
    let mut v = tag.to_be_bytes().to_vec();
    v.extend_from_slice(&seq.to_be_bytes());
    Bytes::from(v)
}

fn parse(payload: &[u8]) -> Result<(u64, u64)> {
    ensure!(payload.len() == 16, "payload of {} bytes", payload.len());
    Ok((
        u64::from_be_bytes(payload[..8].try_into()?),
        u64::from_be_bytes(payload[8..].try_into()?),
    ))
}

#[derive(Default)]
struct Counts {
    requests: AtomicU64,
    directs: AtomicU64,
    published: AtomicU64,
    delivered: AtomicU64,
    kv_sets: AtomicU64,
    kv_events: AtomicU64,
    joins: AtomicU64,
    session_rpcs: AtomicU64,
}

/// What one session agent ran, checked as it runs (a log of every task
/// would grow the memory the soak measures): how many tasks, how many did
/// not carry the next sequence number, how often a task started while
/// another was running.
#[derive(Default)]
struct AgentLog {
    next: Mutex<u64>,
    ran: AtomicU64,
    out_of_order: AtomicU64,
    running: AtomicUsize,
    overlaps: AtomicUsize,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mixed_soak_loses_nothing_and_leaks_nothing() -> Result<()> {
    let secs: u64 = std::env::var("SWITCHBOARD_SOAK_SECS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10);
    let run = Duration::from_secs(secs);
    let fds_before = fds();
    let hub = hub().await?;
    let stop = Arc::new(AtomicBool::new(false));
    let counts = Arc::new(Counts::default());
    let mut tasks: Vec<tokio::task::JoinHandle<Result<()>>> = Vec::new();

    // Request/reply: an echo server and four sequential requesters.
    let echo = client(&hub, "echo").await?;
    let _serving = echo
        .serve(|req| async move { Ok::<_, String>(req.payload().clone()) })
        .await?;
    for tag in 0..4u64 {
        let c = client(&hub, &format!("asker-{tag}")).await?;
        let (stop, counts) = (stop.clone(), counts.clone());
        tasks.push(tokio::spawn(async move {
            let mut seq = 0;
            while !stop.load(Ordering::Relaxed) {
                seq += 1;
                let want = seq_payload(tag, seq);
                let got = within(c.request("echo", want.clone())).await??;
                ensure!(got == want, "asker {tag}: reply {seq} differs");
                counts.requests.fetch_add(1, Ordering::Relaxed);
            }
            c.close().await;
            Ok(())
        }));
    }

    // Confirmed direct messages from two senders to one sink, in order.
    let sink = client(&hub, "sink").await?;
    let mut sink_messages = sink.messages().await?;
    let sink_done = Arc::new(AtomicU64::new(0));
    let mut senders = Vec::new();
    for tag in 0..2u64 {
        let c = client(&hub, &format!("sender-{tag}")).await?;
        let (stop, counts) = (stop.clone(), counts.clone());
        senders.push(tokio::spawn(async move {
            let mut seq = 0;
            while !stop.load(Ordering::Relaxed) {
                seq += 1;
                within(c.send("sink", seq_payload(tag, seq))).await??;
                counts.directs.fetch_add(1, Ordering::Relaxed);
            }
            // The last message tells the sink how many there were.
            within(c.send("sink", seq_payload(tag + 100, seq))).await??;
            anyhow::Ok(c)
        }));
    }
    let sink_check = {
        let sink_done = sink_done.clone();
        tokio::spawn(async move {
            let mut next = [1u64; 2];
            let mut finished = 0;
            while finished < 2 {
                let m = within(sink_messages.recv()).await?;
                let Some(m) = m else {
                    bail!("sink stream ended")
                };
                ensure!(m.kind == MessageKind::Direct, "{:?}", m.kind);
                let (tag, seq) = parse(&m.payload)?;
                if tag >= 100 {
                    ensure!(
                        next[(tag - 100) as usize] == seq + 1,
                        "sender {} lost messages",
                        tag - 100
                    );
                    finished += 1;
                    continue;
                }
                let want = next[tag as usize];
                ensure!(seq == want, "sender {tag}: got {seq}, expected {want}");
                next[tag as usize] += 1;
                sink_done.fetch_add(1, Ordering::Relaxed);
            }
            Ok(())
        })
    };

    // Pub/sub fan-out to three readers (checked for order and duplicates)
    // and one subscriber that never reads.
    let publisher = client(&hub, "publisher").await?;
    let mut readers = Vec::new();
    for i in 0..3 {
        let c = client(&hub, &format!("reader-{i}")).await?;
        let mut sub = c.subscribe("fan.>").await?;
        let counts = counts.clone();
        readers.push(tokio::spawn(async move {
            let mut last = 0u64;
            let mut got = 0u64;
            loop {
                let Some(m) = within(sub.recv()).await? else {
                    break;
                };
                let (_, seq) = parse(&m.payload)?;
                if seq == u64::MAX {
                    break;
                }
                ensure!(
                    seq > last,
                    "reader {i}: {seq} after {last} (duplicate or reordered)"
                );
                last = seq;
                got += 1;
                counts.delivered.fetch_add(1, Ordering::Relaxed);
            }
            anyhow::Ok((c, got, last))
        }));
    }
    // A small stream that drops by choice: the lazy client's backlog
    // overflows and is dropped, counted (a blocking one would only hold its
    // own connection back).
    let lazy = Client::builder("lazy")
        .addr(hub.local_addr().to_string())
        .token(switchboard_tests::TOKEN)
        .connect()
        .await?;
    let _lazy_sub = lazy
        .subscribe_with(
            "fan.>",
            switchboard::SubscribeOptions::default()
                .capacity(16)
                .overflow(switchboard::Overflow::DropNewest),
        )
        .await?;
    {
        let (stop, counts, publisher) = (stop.clone(), counts.clone(), publisher.clone());
        tasks.push(tokio::spawn(async move {
            let mut seq = 0;
            while !stop.load(Ordering::Relaxed) {
                seq += 1;
                publisher
                    .publish(&format!("fan.{}", seq % 7), seq_payload(0, seq))
                    .await?;
                counts.published.fetch_add(1, Ordering::Relaxed);
                if seq % 64 == 0 {
                    tokio::task::yield_now().await;
                }
            }
            Ok(())
        }));
    }

    // Key/value: one writer, one watcher checking versions.
    let writer = client(&hub, "kv-writer").await?;
    let watcher = client(&hub, "kv-watcher").await?;
    let mut watch = watcher.kv().watch("soak/k").await?;
    {
        let (stop, counts) = (stop.clone(), counts.clone());
        let kv = writer.kv();
        tasks.push(tokio::spawn(async move {
            let mut last = 0;
            while !stop.load(Ordering::Relaxed) {
                let v = within(kv.set("soak/k", seq_payload(1, last + 1))).await??;
                ensure!(v > last, "version {v} after {last}");
                last = v;
                counts.kv_sets.fetch_add(1, Ordering::Relaxed);
            }
            Ok(())
        }));
    }
    let watch_check = {
        let counts = counts.clone();
        let stop = stop.clone();
        tokio::spawn(async move {
            let mut last = 0u64;
            loop {
                let ev = tokio::time::timeout(Duration::from_secs(1), watch.recv()).await;
                match ev {
                    Ok(Some(ev)) => {
                        ensure!(
                            ev.version > last,
                            "watch: version {} after {last}",
                            ev.version
                        );
                        let (_, seq) = parse(&ev.value)?;
                        ensure!(
                            seq == ev.version,
                            "watch: value {seq} at version {}",
                            ev.version
                        );
                        last = ev.version;
                        counts.kv_events.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok(None) => bail!("watch ended"),
                    Err(_) if stop.load(Ordering::Relaxed) => return anyhow::Ok(last),
                    Err(_) => {}
                }
            }
        })
    };

    // Sessions: a manager pushes batches of 4 RPCs to each of two agents
    // and checks every result; the agents log what they ran.
    let acs = client(&hub, "acs").await?;
    let mut opts = ManagerOptions::default();
    opts.config.max_in_flight = 8;
    let manager = acs.session_manager(opts);
    let mut agents = Vec::new();
    let mut logs = Vec::new();
    for a in 0..2u64 {
        let id = format!("cpe-{a}");
        let cpe = client(&hub, &id).await?;
        let log = Arc::new(AgentLog::default());
        let l = log.clone();
        let methods = Methods::new().add("Step", move |p: Bytes| {
            let l = l.clone();
            async move {
                if l.running.fetch_add(1, Ordering::SeqCst) > 0 {
                    l.overlaps.fetch_add(1, Ordering::SeqCst);
                }
                let seq = parse(&p).map_or(0, |(_, seq)| seq);
                {
                    let mut next = l.next.lock().expect("log lock");
                    if seq != *next + 1 {
                        l.out_of_order.fetch_add(1, Ordering::SeqCst);
                    }
                    *next = seq;
                }
                l.ran.fetch_add(1, Ordering::SeqCst);
                tokio::task::yield_now().await;
                l.running.fetch_sub(1, Ordering::SeqCst);
                Ok(p)
            }
        });
        let agent = cpe.session_agent("acs", AgentConfig::new(id), methods);
        agents.push((cpe, agent));
        logs.push(log);
    }
    let pushed = {
        let (stop, counts, manager) = (stop.clone(), counts.clone(), manager.clone());
        tokio::spawn(async move {
            let mut seqs = [0u64; 2];
            while !stop.load(Ordering::Relaxed) {
                for (a, seq) in seqs.iter_mut().enumerate() {
                    let mut pending = Vec::new();
                    for _ in 0..4 {
                        *seq += 1;
                        let payload = seq_payload(a as u64, *seq);
                        let p = manager
                            .push(format!("cpe-{a}"), "Step", payload.clone())
                            .await?;
                        pending.push((payload, p));
                    }
                    for (payload, p) in pending {
                        let r = within(p).await??;
                        ensure!(r.payload == payload, "agent {a}: a result differs");
                        counts.session_rpcs.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
            anyhow::Ok(seqs)
        })
    };

    // Churn: clients join, ask once, leave.
    {
        let (stop, counts) = (stop.clone(), counts.clone());
        let addr = hub.local_addr().to_string();
        tasks.push(tokio::spawn(async move {
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                n += 1;
                let c = within(
                    Client::builder(format!("churn-{}", n % 13))
                        .addr(addr.clone())
                        .token(switchboard_tests::TOKEN)
                        .reconnect(false)
                        .connect(),
                )
                .await??;
                let want = seq_payload(9, n);
                ensure!(within(c.request("echo", want.clone())).await?? == want);
                if n % 2 == 0 {
                    c.close().await;
                }
                drop(c);
                counts.joins.fetch_add(1, Ordering::Relaxed);
            }
            Ok(())
        }));
    }

    // Sample memory once a second.
    let started = Instant::now();
    let mut curve = vec![(0u64, rss())];
    while started.elapsed() < run {
        tokio::time::sleep(Duration::from_secs(1)).await;
        curve.push((started.elapsed().as_secs(), rss()));
        for t in &tasks {
            ensure!(
                !t.is_finished() || stop.load(Ordering::Relaxed),
                "a soak task stopped early"
            );
        }
    }
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        within(t).await???;
    }
    let mut kept = Vec::new();
    for s in senders {
        kept.push(within(s).await???);
    }
    within(sink_check).await???;
    let seqs = within(pushed).await???;
    for (a, log) in logs.iter().enumerate() {
        let ran = log.ran.load(Ordering::SeqCst);
        let out_of_order = log.out_of_order.load(Ordering::SeqCst);
        ensure!(
            ran == seqs[a] && out_of_order == 0,
            "agent {a} ran {ran} tasks for {} RPCs, {out_of_order} out of order",
            seqs[a]
        );
        ensure!(
            log.overlaps.load(Ordering::SeqCst) == 0,
            "agent {a}: tasks overlapped"
        );
    }
    let last_version = within(watch_check).await???;
    publisher
        .publish("fan.end", seq_payload(0, u64::MAX))
        .await?;
    let published = counts.published.load(Ordering::Relaxed);
    let mut reader_clients = Vec::new();
    for r in readers {
        let (c, got, last) = within(r).await???;
        // Fast readers of an in-process hub lose nothing either.
        ensure!(last == published, "reader saw up to {last} of {published}");
        ensure!(got == published, "reader got {got} of {published}");
        reader_clients.push(c);
    }
    let final_value = writer.kv().get("soak/k").await?.expect("key exists");
    ensure!(
        final_value.version == last_version,
        "watch missed the last change"
    );
    let status = hub.status();

    let c = &counts;
    println!(
        "soak {secs} s: {} requests, {} confirmed directs ({} checked), {} published x3 readers ({} delivered), \
         {} kv sets ({} watch events), {} session RPCs ({} and {} run by the agents, in order), \
         {} clients joined and left, lazy subscriber dropped {} (hub dropped {})",
        c.requests.load(Ordering::Relaxed),
        c.directs.load(Ordering::Relaxed),
        sink_done.load(Ordering::Relaxed),
        published,
        c.delivered.load(Ordering::Relaxed),
        c.kv_sets.load(Ordering::Relaxed),
        c.kv_events.load(Ordering::Relaxed),
        c.session_rpcs.load(Ordering::Relaxed),
        seqs[0],
        seqs[1],
        c.joins.load(Ordering::Relaxed),
        lazy.dropped(),
        status.dropped,
    );
    let mb = |b: u64| b as f64 / (1024.0 * 1024.0);
    let curve_text: Vec<String> = curve
        .iter()
        .map(|(t, b)| format!("{t}s:{:.1}", mb(*b)))
        .collect();
    println!("rss MiB: {}", curve_text.join(" "));
    ensure!(c.requests.load(Ordering::Relaxed) > 0 && c.joins.load(Ordering::Relaxed) > 0);
    ensure!(
        c.session_rpcs.load(Ordering::Relaxed) > 0,
        "no session RPCs ran"
    );
    ensure!(
        published <= 16 || lazy.dropped() > 0,
        "the lazy subscriber never overflowed"
    );

    // Memory after warm-up (a fifth of the run) stays within a bound.
    let warm = curve[(curve.len() / 5).max(1).min(curve.len() - 1)].1;
    let peak_after = curve
        .iter()
        .skip(curve.len() / 5)
        .map(|(_, b)| *b)
        .max()
        .unwrap_or(0);
    ensure!(
        peak_after <= warm * 2 + 64 * 1024 * 1024,
        "rss grew from {:.1} MiB to {:.1} MiB after warm-up",
        mb(warm),
        mb(peak_after)
    );

    // Everything closes; the descriptors come back.
    for (cpe, agent) in agents {
        let _ = agent.shutdown().await;
        cpe.close().await;
    }
    manager.shutdown().await;
    acs.close().await;
    for c in kept.into_iter().chain(reader_clients) {
        c.close().await;
    }
    for c in [&echo, &sink, &publisher, &lazy, &writer, &watcher] {
        c.close().await;
    }
    hub.shutdown().await;
    let mut fds_after = fds();
    for _ in 0..100 {
        if fds_after <= fds_before + 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
        fds_after = fds();
    }
    println!("fds before {fds_before}, after {fds_after}");
    ensure!(
        fds_after <= fds_before + 2,
        "descriptors leaked: {fds_before} -> {fds_after}"
    );
    Ok(())
}
