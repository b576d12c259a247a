//! The cost of a cross-hub hop (issue 19, "Figures"): `fed-reqrep`,
//! `fed-pubsub` and `fed-kv`.
//!
//! One setup serves all three rows of a run: a 3-node nats-server cluster
//! with JetStream on loopback (free client, cluster and monitoring ports,
//! a store directory per node, ready when `/healthz?js-enabled-only=true`
//! answers 200) and two `switchboard hub --federate` processes of one
//! service, hub A federated through node 1 and hub B through node 2 (each
//! in its own runtime directory). Three systems per row:
//!
//! - `switchboard local`: both clients on hub A;
//! - `switchboard cross-hub`: the requester (publisher, kv writer) on hub
//!   A, the responder (subscriber, watcher) on hub B;
//! - `nats-server` (routed): async-nats, the requester (publisher) on node
//!   1, the responder (subscriber) on node 2, so every message crosses the
//!   cluster route once each way, as a cross-hub message does.
//!
//! The workloads are the comparison's own ([`workload::reqrep_native`],
//! [`workload::pubsub`]) run through [`Split`], a driver whose receiving
//! side sits behind another server than its sending side. Before a
//! measurement starts, [`Split`] waits until the path is live (the remote
//! interest or the responder's id has reached the sending side), so
//! propagation delays are not counted as latency or loss.

use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Result};
use bytes::Bytes;
use indicatif::ProgressBar;

use crate::drivers::{Driver, Nats, ReqRep, Switchboard};
use crate::procs::{self, ProcGuard};
use crate::report::{Figure, NATS};
use crate::stats::{percentile_us, Summary};
use crate::workload::{self, Latencies, Limits, PubSubSpec};

/// The workload ids of the federation rows.
pub const IDS: [&str; 3] = ["fed-reqrep", "fed-pubsub", "fed-kv"];

/// Both clients on hub A.
const LOCAL: &str = "switchboard local";
/// Sender on hub A, receiver on hub B.
const CROSS: &str = "switchboard cross-hub";

/// The service both hubs federate.
const SERVICE: &str = "switchboard-bench-fed";

/// The goal: a cross-hub request/reply p50 at most this many times
/// nats-server's routed one.
pub const GOAL: f64 = 1.5;

/// How long a path may take to become live before a run fails.
const WARMUP: Duration = Duration::from_secs(30);

/// A driver whose senders (publishers, requesters) use `front` and whose
/// receivers (subscribers, responders) use `back`.
#[derive(Clone)]
pub struct Split<D> {
    front: D,
    back: D,
}

impl<D> Split<D> {
    /// Senders on `front`, receivers on `back`.
    pub fn new(front: D, back: D) -> Split<D> {
        Split { front, back }
    }
}

impl<D: Driver> Driver for Split<D> {
    type Sub = D::Sub;
    type Pub = D::Pub;

    /// Subscribes on the back, then publishes empty probes from the front
    /// until one arrives: from then on the subscription's interest has
    /// reached the front. Probes still in flight are skipped by
    /// [`Split::next`] (the workloads never send empty payloads).
    async fn subscribe(&self, topic: String, expected: u64) -> Result<Self::Sub> {
        let mut sub = self.back.subscribe(topic.clone(), expected).await?;
        let mut probe = self.front.publisher().await?;
        let deadline = Instant::now() + WARMUP;
        loop {
            D::publish_one(&mut probe, &topic, Bytes::new()).await?;
            match tokio::time::timeout(Duration::from_millis(100), D::next(&mut sub)).await {
                Ok(Ok(Some(_))) => return Ok(sub),
                Ok(Ok(None)) => bail!("the subscription ended while waiting for the path"),
                Ok(Err(e)) => return Err(e.context("waiting for the subscription's path")),
                Err(_) if Instant::now() < deadline => {}
                Err(_) => bail!("no probe reached the subscriber within {WARMUP:?}"),
            }
        }
    }

    async fn next(sub: &mut Self::Sub) -> Result<Option<Bytes>> {
        loop {
            match D::next(sub).await? {
                Some(b) if b.is_empty() => continue,
                other => return Ok(other),
            }
        }
    }

    fn dropped(sub: &Self::Sub) -> u64 {
        D::dropped(sub)
    }

    async fn publisher(&self) -> Result<Self::Pub> {
        self.front.publisher().await
    }

    async fn publish_many(
        p: &mut Self::Pub,
        topic: &str,
        payload: Bytes,
        count: u64,
    ) -> Result<()> {
        D::publish_many(p, topic, payload, count).await
    }

    async fn publish_one(p: &mut Self::Pub, topic: &str, payload: Bytes) -> Result<()> {
        D::publish_one(p, topic, payload).await
    }

    async fn publish_batch(p: &mut Self::Pub, topic: &str, batch: Vec<Bytes>) -> Result<()> {
        D::publish_batch(p, topic, batch).await
    }
}

impl<D: ReqRep> ReqRep for Split<D> {
    type Responder = D::Responder;
    type Requester = D::Requester;

    /// Starts the responder on the back, then sends requests from the
    /// front until one is answered (the responder's id or interest has
    /// reached the front).
    async fn responder(&self, service: String) -> Result<Self::Responder> {
        let responder = self.back.responder(service.clone()).await?;
        let requester = self.front.requester().await?;
        let deadline = Instant::now() + WARMUP;
        loop {
            let r = tokio::time::timeout(
                Duration::from_secs(1),
                D::request(&requester, &service, workload::payload(64)),
            )
            .await;
            match r {
                Ok(Ok(_)) => return Ok(responder),
                _ if Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(20)).await
                }
                Ok(Err(e)) => return Err(e.context("no reply across the path")),
                Err(_) => bail!("no reply across the path within {WARMUP:?}"),
            }
        }
    }

    async fn requester(&self) -> Result<Self::Requester> {
        self.front.requester().await
    }

    async fn request(r: &Self::Requester, service: &str, payload: Bytes) -> Result<Bytes> {
        D::request(r, service, payload).await
    }
}

/// Waits at most `limit` for an event of `watch` carrying `value`;
/// `Err(Elapsed)` when none came in time.
async fn wait(
    watch: &mut switchboard::KvWatch,
    value: Bytes,
    limit: Duration,
) -> Result<Result<()>, tokio::time::error::Elapsed> {
    tokio::time::timeout(limit, async {
        while let Some(ev) = watch.recv().await {
            if ev.value == value {
                return Ok(());
            }
        }
        Err(anyhow!("the watch ended"))
    })
    .await
}

/// `kv().set` on `writer`'s hub → the event at a watcher on `watcher`'s
/// hub, `count` times one after the other: each sample runs from the
/// start of the `set` to the watcher's event carrying the new value.
pub async fn kv_latency(
    writer: &Switchboard,
    watcher: &Switchboard,
    count: u64,
    tag: &str,
) -> Result<Latencies> {
    let w = writer.connect_as(&writer.fresh_id("kvw"), 1024).await?;
    let r = watcher.connect_as(&watcher.fresh_id("kvr"), 65_536).await?;
    let key = format!("bench.kv.{tag}");
    let mut watch = r.kv().watch(&key).await?;
    let kv = w.kv();
    // warm-up: until a change made on the writer's hub reaches the watcher
    let deadline = Instant::now() + WARMUP;
    for i in 0.. {
        let value = Bytes::from(format!("warm-{i}"));
        kv.set(&key, value.clone()).await?;
        match wait(&mut watch, value, Duration::from_millis(500)).await {
            Ok(r) => {
                r?;
                break;
            }
            Err(_) if Instant::now() < deadline => {}
            Err(_) => bail!("no change reached the watcher within {WARMUP:?}"),
        }
    }
    let started = Instant::now();
    let mut samples = Vec::with_capacity(count as usize);
    for i in 0..count {
        let value = Bytes::from(format!("v-{i}"));
        let t = Instant::now();
        kv.set(&key, value.clone()).await?;
        wait(&mut watch, value, Duration::from_secs(10))
            .await
            .map_err(|_| anyhow!("change {i} did not reach the watcher within 10 s"))??;
        samples.push(t.elapsed());
    }
    Ok(Latencies {
        throughput: workload::Throughput {
            sent: count,
            expected: count,
            delivered: samples.len() as u64,
            secs: started.elapsed().as_secs_f64(),
            reported_drops: 0,
        },
        samples,
    })
}

/// The cluster and the two hubs; dropping it stops the hubs, then the
/// nodes, by PID.
struct Fed {
    hubs: Vec<ProcGuard>,
    nodes: Vec<ProcGuard>,
    /// Hub A (through node 1) and hub B (through node 2).
    a: Switchboard,
    b: Switchboard,
    /// Node 1 and node 2.
    n1: Nats,
    n2: Nats,
    _dir: tempfile::TempDir,
}

/// A monitoring endpoint answers `/healthz?js-enabled-only=true` with 200.
async fn healthy(port: u16) -> bool {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let Ok(mut s) = tokio::net::TcpStream::connect(("127.0.0.1", port)).await else {
        return false;
    };
    let req = b"GET /healthz?js-enabled-only=true HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n";
    if s.write_all(req).await.is_err() {
        return false;
    }
    let mut body = String::new();
    let _ = s.read_to_string(&mut body).await;
    body.starts_with("HTTP/1.1 200") || body.starts_with("HTTP/1.0 200")
}

/// Starts `n` nats-server nodes with JetStream in one cluster and waits
/// until each is ready.
async fn start_cluster(exe: &Path, dir: &Path, n: usize) -> Result<Vec<ProcGuard>> {
    let mut ports = Vec::new();
    for _ in 0..n {
        ports.push((
            procs::free_port()?,
            procs::free_port()?,
            procs::free_port()?,
        ));
    }
    let routes: Vec<String> = ports
        .iter()
        .map(|(_, c, _)| format!("\"nats-route://127.0.0.1:{c}\""))
        .collect();
    let mut nodes = Vec::new();
    for (i, (client, cluster, http)) in ports.iter().enumerate() {
        let store = dir.join(format!("n{i}"));
        std::fs::create_dir_all(&store)?;
        let config = dir.join(format!("n{i}.conf"));
        std::fs::write(
            &config,
            format!(
                "server_name: n{i}\nlisten: \"127.0.0.1:{client}\"\nhttp: \"127.0.0.1:{http}\"\n\
                 jetstream {{ store_dir: \"{}\" }}\n\
                 cluster {{ name: sbbench, listen: \"127.0.0.1:{cluster}\", routes: [{}] }}\n",
                store.display(),
                routes.join(", ")
            ),
        )?;
        let mut c = Command::new(exe);
        c.arg("-c").arg(&config);
        let addr: SocketAddr = ([127, 0, 0, 1], *client).into();
        let log = dir.join(format!("n{i}.log"));
        nodes.push(tokio::task::block_in_place(|| {
            procs::spawn_and_wait(
                &format!("nats-server n{i}"),
                c,
                addr,
                &log,
                Duration::from_secs(10),
            )
        })?);
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    for (_, _, http) in &ports {
        while !healthy(*http).await {
            if Instant::now() > deadline {
                bail!("the nats-server cluster was not ready (JetStream) within 30 s");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    Ok(nodes)
}

/// Starts `switchboard hub --federate URL` in its own runtime directory.
fn start_hub(bin: &Path, dir: &Path, name: &str, url: &str, token: &str) -> Result<ProcGuard> {
    // The hub makes its runtime directory itself (private).
    let parent = dir.join(format!("hub-{name}"));
    std::fs::create_dir_all(&parent)?;
    let mut cmd = Command::new(bin);
    cmd.args([
        "--service",
        SERVICE,
        "--json",
        "hub",
        "--listen",
        "127.0.0.1:0",
        "--federate",
        url,
    ])
    .env("SWITCHBOARD_TOKEN", token)
    .env("SWITCHBOARD_RUNTIME_DIR", parent.join("rt"))
    .env("RUST_LOG", "warn");
    let (guard, _) = procs::spawn_with_ready_line(
        &format!("switchboard hub {name} (federated)"),
        cmd,
        "{",
        Duration::from_secs(30),
    )?;
    Ok(guard)
}

async fn start(bin: &Path, nats: &Path, token: &str) -> Result<Fed> {
    let dir = tempfile::Builder::new()
        .prefix("switchboard-bench-fed")
        .tempdir()?;
    let nodes = start_cluster(nats, dir.path(), 3).await?;
    let url = |i: usize| format!("nats://{}", nodes[i].addr());
    let hubs = tokio::task::block_in_place(|| -> Result<Vec<ProcGuard>> {
        Ok(vec![
            start_hub(bin, dir.path(), "a", &url(0), token)?,
            start_hub(bin, dir.path(), "b", &url(1), token)?,
        ])
    })?;
    let a = Switchboard::new(hubs[0].addr(), token);
    // one id counter for both hubs: ids are unique cluster-wide
    let b = a.at(hubs[1].addr());
    Ok(Fed {
        a,
        b,
        n1: Nats::new(nodes[0].addr()),
        n2: Nats::new(nodes[1].addr()),
        hubs,
        nodes,
        _dir: dir,
    })
}

impl Drop for Fed {
    fn drop(&mut self) {
        // hubs first: they leave the cluster while it is still there
        tokio::task::block_in_place(|| {
            self.hubs.clear();
            self.nodes.clear();
        });
    }
}

/// The systems of row `id`, in report order.
fn systems(id: &str, nats: bool) -> Vec<&'static str> {
    let mut s = vec![LOCAL, CROSS];
    if nats && id != "fed-kv" {
        s.push(NATS);
    }
    s
}

/// Title, metrics (name, lower is better) and count of row `id`.
fn shape(id: &str, quick: bool) -> (String, Vec<(&'static str, bool)>, u64) {
    let q = |full: u64, small: u64| if quick { small } else { full };
    let pct = vec![("p50 µs", true), ("p99 µs", true)];
    match id {
        "fed-reqrep" => {
            let n = q(20_000, 500);
            (
                format!("federation: request/reply sequential across two hubs, 64 B, {n} requests"),
                pct,
                n,
            )
        }
        "fed-pubsub" => {
            let n = q(200_000, 5_000);
            (
                format!("federation: pub/sub 1→1 across two hubs, 64 B, {n} msgs"),
                vec![("msgs/s", false)],
                n,
            )
        }
        _ => {
            let n = q(2_000, 100);
            (
                format!(
                    "federation: kv set → watcher event across two hubs, one at a time, {n} sets"
                ),
                pct,
                n,
            )
        }
    }
}

/// One run of row `id` on system `sys`: the value of each metric, and
/// (sent, expected, delivered).
async fn run_once(
    fed: &Fed,
    id: &str,
    sys: &str,
    n: u64,
    tag: &str,
    limits: Limits,
) -> Result<(Vec<Option<f64>>, [u64; 3])> {
    let (a, b) = (fed.a.clone(), fed.b.clone());
    let sb = |cross: bool| Split::new(a.clone(), if cross { b.clone() } else { a.clone() });
    let nats = Split::new(fed.n1.clone(), fed.n2.clone());
    let lat = |mut l: Latencies| {
        let t = l.throughput;
        (
            vec![
                percentile_us(&mut l.samples, 0.5),
                percentile_us(&mut l.samples, 0.99),
            ],
            [t.sent, t.expected, t.delivered],
        )
    };
    Ok(match id {
        "fed-reqrep" => lat(if sys == NATS {
            workload::reqrep_native(&nats, n, 1, tag, limits).await?
        } else {
            workload::reqrep_native(&sb(sys == CROSS), n, 1, tag, limits).await?
        }),
        "fed-pubsub" => {
            let spec = PubSubSpec {
                pubs: 1,
                subs_per_topic: 1,
                payload: 64,
                per_pub: n,
            };
            let t = if sys == NATS {
                workload::pubsub(&nats, spec, tag, limits).await?
            } else {
                workload::pubsub(&sb(sys == CROSS), spec, tag, limits).await?
            };
            (vec![Some(t.rate())], [t.sent, t.expected, t.delivered])
        }
        _ => lat(kv_latency(&a, if sys == CROSS { &b } else { &a }, n, tag).await?),
    })
}

/// The notes of one row's figures: what each system is, and the
/// cross-hub row's ratios to nats-server's routed figure and to local.
fn annotate(group: &mut [Figure]) {
    let median = |sys: &str| {
        group
            .iter()
            .find(|f| f.system == sys)
            .and_then(|f| f.summary)
            .map(|s| s.median)
    };
    let (local, nats, cross) = (median(LOCAL), median(NATS), median(CROSS));
    let metric = group.first().map(|f| f.metric.clone()).unwrap_or_default();
    let req = group.first().is_some_and(|f| f.workload == "fed-reqrep");
    for f in group.iter_mut() {
        let what = match (f.system.as_str(), f.workload.as_str()) {
            (LOCAL, _) => "both clients on hub A".to_string(),
            (CROSS, "fed-kv") => "writer on hub A, watcher on hub B".to_string(),
            (CROSS, "fed-pubsub") => "publisher on hub A, subscriber on hub B".to_string(),
            (CROSS, _) => "requester on hub A, responder on hub B".to_string(),
            (_, "fed-pubsub") => {
                "routed: async-nats publisher on node 1, subscriber on node 2".to_string()
            }
            _ => "routed: async-nats requester on node 1, responder on node 2".to_string(),
        };
        let mut note = what;
        if f.system == CROSS {
            if let (Some(c), Some(n)) = (cross, nats) {
                if n > 0.0 {
                    let r = c / n;
                    note.push_str(&format!("; {metric} {r:.2}× nats-server routed"));
                    if req && metric == "p50 µs" {
                        let met = if r <= GOAL { "met" } else { "missed" };
                        note.push_str(&format!(" (goal ≤ {GOAL}×: **{met}**)"));
                    }
                }
            }
            if let (Some(c), Some(l)) = (cross, local) {
                if l > 0.0 {
                    note.push_str(&format!("; {:.2}× local", c / l));
                }
            }
        }
        f.note = Some(note);
    }
}

/// Runs the chosen federation rows `runs` times per system and appends
/// their figures; skipped with a note when nats-server or the
/// `switchboard` binary is missing.
pub async fn rows(
    cli: &crate::Cli,
    setup: &crate::Setup,
    runs: usize,
    pb: &ProgressBar,
    figures: &mut Vec<Figure>,
) {
    let chosen = crate::chosen(cli, &IDS);
    if chosen.is_empty() || !crate::wanted(cli, "switchboard") {
        return;
    }
    let Some(nats_exe) = procs::find_binary("nats-server") else {
        pb.suspend(|| {
            eprintln!(
                "federation rows ({}) skipped: nats-server is not installed; install with `{}` or pass --install",
                chosen.join(", "),
                procs::INSTALL_COMMAND
            )
        });
        return;
    };
    let Some(bin) = crate::hub_bin(cli) else {
        pb.suspend(|| {
            eprintln!("federation rows skipped: the `switchboard` binary is not built (they need hub processes with --federate)")
        });
        return;
    };
    let with_nats = crate::wanted(cli, "nats");
    let limits = if cli.quick {
        Limits {
            first: Duration::from_secs(3),
            idle: Duration::from_secs(1),
            total: Duration::from_secs(30),
        }
    } else {
        Limits {
            first: Duration::from_secs(10),
            idle: Duration::from_secs(3),
            total: Duration::from_secs(120),
        }
    };
    pb.set_message("federation · starting a 3-node nats-server cluster and two hubs");
    let fed = match start(&bin, &nats_exe, &setup.token).await {
        Ok(f) => f,
        Err(e) => {
            pb.suspend(|| eprintln!("federation rows skipped: set-up failed: {e:#}"));
            return;
        }
    };
    for id in chosen {
        let (title, metrics, n) = shape(id, cli.quick);
        let systems = systems(id, with_nats);
        pb.inc_length((systems.len() * runs) as u64);
        let mut values = vec![vec![Vec::<f64>::new(); metrics.len()]; systems.len()];
        let mut counts = vec![[0u64; 3]; systems.len()];
        let mut errors: Vec<Option<String>> = vec![None; systems.len()];
        for r in 0..runs {
            // alternate the order so no system always runs first
            let order: Vec<usize> = if r % 2 == 0 {
                (0..systems.len()).collect()
            } else {
                (0..systems.len()).rev().collect()
            };
            for i in order {
                let sys = systems[i];
                pb.set_message(format!("{id} · {sys} · run {}/{runs}", r + 1));
                let tag = format!("{id}.{}.{r}", sys.replace(' ', "-"));
                let outcome = tokio::time::timeout(
                    Duration::from_secs(300),
                    run_once(&fed, id, sys, n, &tag, limits),
                )
                .await
                .unwrap_or_else(|_| Err(anyhow!("timed out after 300 s")));
                match outcome {
                    Ok((vals, c)) => {
                        for (m, v) in vals.into_iter().enumerate() {
                            if let Some(v) = v {
                                values[i][m].push(v);
                            }
                        }
                        for k in 0..3 {
                            counts[i][k] += c[k];
                        }
                    }
                    Err(e) => {
                        let msg = format!("{e:#}");
                        pb.suspend(|| eprintln!("{id} · {sys}: run {} failed: {msg}", r + 1));
                        errors[i].get_or_insert(msg);
                    }
                }
                pb.inc(1);
            }
        }
        for (m, (metric, lower)) in metrics.iter().enumerate() {
            let mut group: Vec<Figure> = systems
                .iter()
                .enumerate()
                .map(|(i, sys)| Figure {
                    workload: id.to_string(),
                    title: title.clone(),
                    metric: metric.to_string(),
                    lower_is_better: *lower,
                    system: sys.to_string(),
                    summary: Summary::of(&values[i][m]),
                    runs: values[i][m].clone(),
                    sent: counts[i][0],
                    expected: counts[i][1],
                    delivered: counts[i][2],
                    error: errors[i].clone(),
                    note: None,
                })
                .collect();
            annotate(&mut group);
            crate::durable::print_group(pb, &format!("{title} — {metric}"), &group);
            figures.extend(group);
        }
    }
    drop(fed);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fig(system: &str, metric: &str, median: f64) -> Figure {
        Figure {
            workload: "fed-reqrep".into(),
            title: "t".into(),
            metric: metric.into(),
            lower_is_better: true,
            system: system.into(),
            runs: vec![median],
            summary: Summary::of(&[median]),
            sent: 1,
            expected: 1,
            delivered: 1,
            error: None,
            note: None,
        }
    }

    #[test]
    fn cross_hub_note_gives_both_ratios_and_the_goal() {
        let mut g = vec![
            fig(LOCAL, "p50 µs", 20.0),
            fig(CROSS, "p50 µs", 150.0),
            fig(NATS, "p50 µs", 120.0),
        ];
        annotate(&mut g);
        let note = g[1].note.as_deref().unwrap();
        assert!(note.contains("1.25× nats-server routed"), "{note}");
        assert!(note.contains("**met**"), "{note}");
        assert!(note.contains("7.50× local"), "{note}");
        g[1] = fig(CROSS, "p50 µs", 200.0);
        annotate(&mut g);
        assert!(g[1].note.as_deref().unwrap().contains("**missed**"));
        // p99 carries the ratios but no goal
        let mut g = vec![fig(CROSS, "p99 µs", 300.0), fig(NATS, "p99 µs", 150.0)];
        annotate(&mut g);
        let note = g[0].note.as_deref().unwrap();
        assert!(note.contains("2.00× nats-server routed") && !note.contains("goal"));
    }

    #[test]
    fn kv_row_has_no_nats_system() {
        assert_eq!(systems("fed-kv", true), vec![LOCAL, CROSS]);
        assert_eq!(systems("fed-reqrep", true), vec![LOCAL, CROSS, NATS]);
        assert_eq!(systems("fed-pubsub", false), vec![LOCAL, CROSS]);
    }

    #[test]
    fn quick_counts_are_small() {
        for id in IDS {
            let (_, _, full) = shape(id, false);
            let (_, _, quick) = shape(id, true);
            assert!(quick * 10 <= full, "{id}");
        }
    }
}
