//! Durable, confirmed delivery: every publish is acknowledged by the server
//! only after the server holds it, with a bounded number in flight, and
//! every message must reach the subscriber (a lost message fails the row).
//!
//! - `switchboard confirmed`: `Client::publish` (waits for the hub's
//!   confirmation), reliable clients, [`WINDOW`] publishes in flight; a
//!   fresh `switchboard hub` process per run.
//! - `switchboard confirmed + standby`: the same with a `--standby` hub
//!   attached; the primary holds every outgoing frame, the confirmation
//!   included, until the standby holds the change that produced it.
//! - `nats JetStream (memory)` / `(file)`: a fresh `nats-server -js` per
//!   run, one stream on the subject (replicas 1), `jetstream::Context::publish`
//!   with at most [`WINDOW`] ack futures outstanding; counted by an ordered
//!   pull consumer on the stream (started before the first publish), and
//!   the stream must hold every message at the end.
//! - `mosquitto QoS 1`: rumqttc publishes at QoS 1 with an in-flight window
//!   of [`WINDOW`] (mosquitto runs with `persistence false`, so "holds" means
//!   memory); the subscriber subscribes at QoS 1.
//!
//! Rates are messages counted at the subscriber per second, from the first
//! publish to the last arrival.

use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, ensure, Context, Result};
use bytes::Bytes;
use futures::stream::FuturesUnordered;
use futures::StreamExt;
use indicatif::ProgressBar;

use crate::failover::{self, HubProc};
use crate::procs;
use crate::report::Figure;
use crate::stats::Summary;

/// The workload ids of the durable rows.
pub const IDS: [&str; 2] = ["durable-64", "durable-1k"];

/// Confirmations outstanding per publisher, the same for every system.
pub const WINDOW: usize = 64;

/// How long the subscriber may go without a new message before the run
/// counts the rest as lost.
const IDLE: Duration = Duration::from_secs(3);

/// The systems of the durable rows, in report order.
const SYSTEMS: [&str; 5] = [
    "switchboard confirmed",
    "switchboard confirmed + standby",
    "nats JetStream (memory)",
    "nats JetStream (file)",
    "mosquitto QoS 1",
];

/// Messages received by a subscriber and when the last one arrived.
#[derive(Default)]
pub struct Tally {
    count: AtomicU64,
    last_ns: AtomicU64,
}

impl Tally {
    /// Counts one arrival, `base` being the run's start.
    pub fn hit(&self, base: Instant) {
        self.last_ns
            .store(base.elapsed().as_nanos() as u64, Ordering::Relaxed);
        self.count.fetch_add(1, Ordering::Relaxed);
    }

    /// Messages counted so far.
    pub fn count(&self) -> u64 {
        self.count.load(Ordering::Relaxed)
    }

    /// Waits until `n` arrived or nothing new arrived for `idle`; returns
    /// the count and the seconds from the start to the last arrival.
    pub async fn finish(&self, n: u64, idle: Duration) -> (u64, f64) {
        let mut seen = self.count();
        let mut since = Instant::now();
        while seen < n && since.elapsed() < idle {
            tokio::time::sleep(Duration::from_millis(2)).await;
            let now = self.count();
            if now != seen {
                seen = now;
                since = Instant::now();
            }
        }
        (
            self.count(),
            self.last_ns.load(Ordering::Relaxed) as f64 / 1e9,
        )
    }
}

/// One measured run: messages delivered, the seconds they took, and the
/// server's CPU seconds per million delivered ([`crate::cpu::METRIC`]).
struct Run {
    delivered: u64,
    secs: f64,
    cpu: Option<f64>,
}

/// User + system CPU seconds the server processes `pids` used so far (a
/// primary and its standby count together).
fn cpu_of(pids: &[u32]) -> Option<f64> {
    pids.iter().map(|&p| crate::cpu::secs(p)).sum()
}

impl Run {
    fn rate(&self) -> f64 {
        if self.secs > 0.0 {
            self.delivered as f64 / self.secs
        } else {
            0.0
        }
    }
}

/// The run, when nothing was lost; `cpu0` is [`cpu_of`] the server
/// processes `pids` when the publishing began.
fn check(n: u64, delivered: u64, secs: f64, pids: &[u32], cpu0: Option<f64>) -> Result<Run> {
    ensure!(
        delivered == n,
        "{} of {n} confirmed messages lost",
        n.saturating_sub(delivered)
    );
    let cpu = crate::cpu::per_million(cpu0, cpu_of(pids), delivered);
    Ok(Run {
        delivered,
        secs,
        cpu,
    })
}

async fn switchboard_run(
    bin: &Path,
    dir: &Path,
    standby: bool,
    payload: Bytes,
    n: u64,
    run: usize,
) -> Result<Run> {
    // The hub makes its runtime directory itself (private, mode 700).
    let parent = dir.join(format!("durable-{standby}-{}-{run}", payload.len()));
    std::fs::create_dir_all(&parent)?;
    let rt = parent.join("rt");
    let service = format!("bench-durable-{standby}-{run}");
    let primary = tokio::task::block_in_place(|| HubProc::start(bin, &rt, &service, false))?;
    let addr: SocketAddr = tokio::task::block_in_place(|| primary.event("ready"))?["addr"]
        .as_str()
        .context("no addr in the hub's ready event")?
        .parse()?;
    let mut pids = vec![primary.pid()];
    let _standby = if standby {
        let s = tokio::task::block_in_place(|| HubProc::start(bin, &rt, &service, true))?;
        tokio::task::block_in_place(|| s.event("standby"))?;
        pids.push(s.pid());
        Some(s)
    } else {
        None
    };
    let publisher = failover::client("durable-pub", addr, true).await?;
    let subscriber = failover::client("durable-sub", addr, true).await?;
    let mut sub = subscriber.subscribe("durable.n").await?;
    let tally = Arc::new(Tally::default());
    let base = Instant::now();
    let counter = {
        let tally = tally.clone();
        crate::drivers::AbortOnDrop(tokio::spawn(async move {
            while sub.recv().await.is_some() {
                tally.hit(base);
            }
        }))
    };
    let p = &publisher;
    let cpu0 = cpu_of(&pids);
    futures::future::try_join_all((0..WINDOW as u64).map(|lane| {
        let payload = payload.clone();
        async move {
            let mut i = lane;
            while i < n {
                p.publish("durable.n", payload.clone()).await?;
                i += WINDOW as u64;
            }
            anyhow::Ok(())
        }
    }))
    .await?;
    let (delivered, secs) = tally.finish(n, IDLE).await;
    drop(counter);
    check(n, delivered, secs, &pids, cpu0)
}

/// Starts `nats-server -js` with its store in `dir`.
fn start_jetstream(exe: &Path, dir: &Path) -> Result<procs::ProcGuard> {
    let port = procs::free_port()?;
    let addr: SocketAddr = ([127, 0, 0, 1], port).into();
    let store = dir.join(format!("js-{port}"));
    std::fs::create_dir_all(&store)?;
    let mut c = Command::new(exe);
    c.args(["-a", "127.0.0.1", "-p", &port.to_string(), "-js", "-sd"])
        .arg(&store);
    procs::spawn_and_wait(
        "nats-server -js",
        c,
        addr,
        &dir.join(format!("js-{port}.log")),
        Duration::from_secs(10),
    )
}

async fn jetstream_run(exe: &Path, dir: &Path, file: bool, payload: Bytes, n: u64) -> Result<Run> {
    use async_nats::jetstream::{self, stream};
    let server = tokio::task::block_in_place(|| start_jetstream(exe, dir))?;
    let url = format!("nats://{}", server.addr());
    let opts = || {
        async_nats::ConnectOptions::new()
            .subscription_capacity((n as usize + 1024).min(1 << 22))
            .client_capacity(65_536)
    };
    let pub_client = opts().connect(&url).await?;
    let sub_client = opts().connect(&url).await?;
    let js = jetstream::new(pub_client.clone());
    let mut stream = js
        .get_or_create_stream(stream::Config {
            name: "DURABLE".into(),
            subjects: vec!["durable.n".into()],
            storage: if file {
                stream::StorageType::File
            } else {
                stream::StorageType::Memory
            },
            num_replicas: 1,
            ..Default::default()
        })
        .await
        .map_err(|e| anyhow!("creating the stream: {e}"))?;
    // Counted by an ordered pull consumer on the stream (the JetStream way
    // to read every stored message; a core subscriber may miss some under
    // load, which is core NATS's at-most-once).
    let consumer = jetstream::new(sub_client.clone())
        .get_stream("DURABLE")
        .await
        .map_err(|e| anyhow!("opening the stream: {e}"))?
        .create_consumer(jetstream::consumer::pull::OrderedConfig {
            filter_subject: "durable.n".into(),
            ..Default::default()
        })
        .await
        .map_err(|e| anyhow!("creating the ordered consumer: {e}"))?;
    let mut messages = consumer
        .messages()
        .await
        .map_err(|e| anyhow!("consuming the stream: {e}"))?;
    let tally = Arc::new(Tally::default());
    let base = Instant::now();
    let counter = {
        let tally = tally.clone();
        crate::drivers::AbortOnDrop(tokio::spawn(async move {
            while let Some(Ok(_)) = messages.next().await {
                tally.hit(base);
            }
        }))
    };
    let mut acks = FuturesUnordered::new();
    let pids = [server.pid()];
    let cpu0 = cpu_of(&pids);
    for _ in 0..n {
        if acks.len() >= WINDOW {
            if let Some(r) = acks.next().await {
                let r: Result<jetstream::publish::PublishAck, _> = r;
                r.map_err(|e| anyhow!("JetStream publish ack: {e}"))?;
            }
        }
        let ack = js
            .publish("durable.n", payload.clone())
            .await
            .map_err(|e| anyhow!("JetStream publish: {e}"))?;
        acks.push(std::future::IntoFuture::into_future(ack));
    }
    while let Some(r) = acks.next().await {
        r.map_err(|e| anyhow!("JetStream publish ack: {e}"))?;
    }
    let (delivered, secs) = tally.finish(n, IDLE).await;
    drop(counter);
    let run = check(n, delivered, secs, &pids, cpu0);
    let stored = stream
        .info()
        .await
        .map_err(|e| anyhow!("stream info: {e}"))?
        .state
        .messages;
    ensure!(stored == n, "the stream holds {stored} of {n} messages");
    drop(server);
    run
}

async fn mqtt_run(exe: &Path, dir: &Path, payload: Bytes, n: u64) -> Result<Run> {
    use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
    let server = tokio::task::block_in_place(|| {
        crate::spawn_peer("mosquitto", exe, dir, Duration::from_secs(10))
    })?;
    let addr = server.addr();
    let options = |id: &str| {
        let mut o = MqttOptions::new(id, addr.ip().to_string(), addr.port());
        o.set_keep_alive(Duration::from_secs(60));
        o.set_clean_session(true);
        o.set_inflight(WINDOW as u16);
        o.set_max_packet_size(2 << 20, 2 << 20);
        o
    };
    let (sub_client, mut sub_el) = AsyncClient::new(options("durable-sub"), 4096);
    sub_el.network_options.set_tcp_nodelay(true);
    sub_client.subscribe("durable/n", QoS::AtLeastOnce).await?;
    tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            if let Event::Incoming(Packet::SubAck(_)) = sub_el.poll().await? {
                return anyhow::Ok(());
            }
        }
    })
    .await
    .map_err(|_| anyhow!("no SUBACK from mosquitto"))??;
    let tally = Arc::new(Tally::default());
    let base = Instant::now();
    let counter = {
        let tally = tally.clone();
        crate::drivers::AbortOnDrop(tokio::spawn(async move {
            while let Ok(ev) = sub_el.poll().await {
                if let Event::Incoming(Packet::Publish(_)) = ev {
                    tally.hit(base);
                }
            }
        }))
    };
    let (pub_client, mut pub_el) = AsyncClient::new(options("durable-pub"), 4096);
    pub_el.network_options.set_tcp_nodelay(true);
    let acked = Arc::new(AtomicU64::new(0));
    let acker = {
        let acked = acked.clone();
        crate::drivers::AbortOnDrop(tokio::spawn(async move {
            while let Ok(ev) = pub_el.poll().await {
                if let Event::Incoming(Packet::PubAck(_)) = ev {
                    acked.fetch_add(1, Ordering::Relaxed);
                }
            }
        }))
    };
    let pids = [server.pid()];
    let cpu0 = cpu_of(&pids);
    for _ in 0..n {
        pub_client
            .publish_bytes("durable/n", QoS::AtLeastOnce, false, payload.clone())
            .await?;
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    while acked.load(Ordering::Relaxed) < n {
        if Instant::now() > deadline {
            bail!("{} of {n} PUBACKs", acked.load(Ordering::Relaxed));
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let (delivered, secs) = tally.finish(n, IDLE).await;
    drop((counter, acker));
    check(n, delivered, secs, &pids, cpu0)
}

/// Runs the chosen durable rows (`chosen` ⊆ [`IDS`]) `runs` times per
/// system and appends their figures.
pub async fn rows(
    cli: &crate::Cli,
    setup: &crate::Setup,
    runs: usize,
    pb: &ProgressBar,
    figures: &mut Vec<Figure>,
) {
    let chosen = crate::chosen(cli, &IDS);
    let bin = crate::hub_bin(cli);
    let exe = |key: &str| {
        setup
            .bins
            .iter()
            .find(|(k, _)| *k == key)
            .map(|(_, p)| p.clone())
    };
    let wants = |sys: &str| {
        if sys.starts_with("switchboard") {
            crate::wanted(cli, "switchboard")
        } else if sys.starts_with("nats") {
            crate::wanted(cli, "nats") && exe("nats").is_some()
        } else {
            crate::wanted(cli, "mosquitto") && exe("mosquitto").is_some()
        }
    };
    for id in chosen {
        let (size, n) = match id {
            "durable-64" => (64, if cli.quick { 2_000 } else { 200_000 }),
            _ => (1024, if cli.quick { 1_000 } else { 100_000 }),
        };
        let title = format!(
            "durable, confirmed publishes ({WINDOW} in flight), 1→1, {} B, {n} msgs; no loss allowed",
            size
        );
        let payload = crate::workload::payload(size);
        let systems: Vec<&str> = SYSTEMS.iter().copied().filter(|s| wants(s)).collect();
        pb.inc_length((systems.len() * runs) as u64);
        let mut group = Vec::new();
        let mut cpu_group = Vec::new();
        for sys in systems {
            let mut values = Vec::new();
            let mut cpu = Vec::new();
            let mut delivered = 0;
            let mut error = None;
            for r in 0..runs {
                pb.set_message(format!("{id} · {sys} · run {}/{runs}", r + 1));
                let fut = async {
                    match sys {
                        "switchboard confirmed" | "switchboard confirmed + standby" => {
                            let bin = bin.as_deref().context(
                                "the `switchboard` binary is not built (these rows need hub processes)",
                            )?;
                            switchboard_run(
                                bin,
                                &setup.dir,
                                sys.ends_with("standby"),
                                payload.clone(),
                                n,
                                r,
                            )
                            .await
                        }
                        "mosquitto QoS 1" => {
                            mqtt_run(
                                &exe("mosquitto").context("no mosquitto")?,
                                &setup.dir,
                                payload.clone(),
                                n,
                            )
                            .await
                        }
                        _ => {
                            jetstream_run(
                                &exe("nats").context("no nats-server")?,
                                &setup.dir,
                                sys.contains("file"),
                                payload.clone(),
                                n,
                            )
                            .await
                        }
                    }
                };
                match tokio::time::timeout(Duration::from_secs(300), fut)
                    .await
                    .unwrap_or_else(|_| Err(anyhow!("timed out after 300 s")))
                {
                    Ok(run) => {
                        values.push(run.rate());
                        cpu.extend(run.cpu);
                        delivered += run.delivered;
                    }
                    Err(e) => {
                        let msg = format!("{e:#}");
                        pb.suspend(|| eprintln!("{id} · {sys}: run {} failed: {msg}", r + 1));
                        error.get_or_insert(msg);
                    }
                }
                pb.inc(1);
            }
            let figure = |metric: &str, lower_is_better, values: Vec<f64>, error, note| Figure {
                workload: id.to_string(),
                title: title.clone(),
                metric: metric.into(),
                lower_is_better,
                system: sys.to_string(),
                summary: Summary::of(&values),
                runs: values,
                sent: n * runs as u64,
                expected: n * runs as u64,
                delivered,
                error,
                note,
            };
            group.push(figure("msgs/s", false, values, error.clone(), None));
            let both = sys.ends_with("standby");
            cpu_group.push(figure(
                crate::cpu::METRIC,
                true,
                cpu,
                error,
                both.then(|| "the primary's and the standby's CPU together".to_string()),
            ));
        }
        annotate(&mut group);
        group.extend(cpu_group);
        print_group(pb, &title, &group);
        figures.extend(group);
    }
}

/// Notes of the durable rows: what each system's confirmation means, and
/// the ratios the goals name.
fn annotate(group: &mut [Figure]) {
    let median = |name: &str| {
        group
            .iter()
            .find(|f| f.system == name)
            .and_then(|f| f.summary)
            .map(|s| s.median)
    };
    let js_mem = median("nats JetStream (memory)");
    let mqtt = median("mosquitto QoS 1");
    let plain = median("switchboard confirmed");
    for f in group.iter_mut() {
        let mine = f.summary.map(|s| s.median);
        let ratio = |other: Option<f64>, what: &str| match (mine, other) {
            (Some(a), Some(b)) if b > 0.0 => format!("; {:.2}× {what}", a / b),
            _ => String::new(),
        };
        let text = match f.system.as_str() {
            "switchboard confirmed" => format!(
                "`publish` waits for the hub's confirmation; reliable subscriber{}{}",
                ratio(js_mem, "JetStream memory"),
                ratio(mqtt, "mosquitto QoS 1")
            ),
            "switchboard confirmed + standby" => format!(
                "confirmed after the standby holds the change{}{}",
                ratio(plain, "without a standby"),
                ratio(js_mem, "JetStream memory")
            ),
            "mosquitto QoS 1" => {
                "PUBACK per message (persistence off: held in memory); rumqttc, one syscall per message"
                    .to_string()
            }
            _ => "PubAck per message, replicas 1; counted by an ordered pull consumer on the stream; the stream holds every message".to_string(),
        };
        f.note = Some(text);
    }
}

/// Prints one group of figures to the console, one line per system.
pub fn print_group(pb: &ProgressBar, title: &str, group: &[Figure]) {
    let mut lines = String::new();
    for f in group {
        let med = f
            .summary
            .map_or_else(|| "failed".to_string(), |s| s.shown());
        lines.push_str(&format!(
            "  {:<32} {:<14} {med}  delivered {}/{}{}{}\n",
            f.system,
            f.metric,
            f.delivered,
            f.expected,
            if f.lost() { " LOST" } else { "" },
            f.note
                .as_ref()
                .map(|n| format!("  ({n})"))
                .unwrap_or_default()
        ));
    }
    pb.suspend(|| println!("{title}\n{lines}"));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn tally_reports_what_arrived() {
        let t = Tally::default();
        let base = Instant::now();
        for _ in 0..5 {
            t.hit(base);
        }
        let (n, secs) = t.finish(5, Duration::from_millis(50)).await;
        assert_eq!(n, 5);
        assert!(secs >= 0.0);
        let (n, _) = t.finish(9, Duration::from_millis(50)).await;
        assert_eq!(n, 5);
    }

    #[test]
    fn a_lost_message_fails_the_run() {
        assert!(check(10, 9, 1.0, &[], Some(0.0)).is_err());
        let r = check(10, 10, 2.0, &[], Some(0.0)).expect("all delivered");
        assert_eq!(r.rate(), 5.0);
        // No server process: no CPU seconds used, none per message.
        assert_eq!(r.cpu, Some(0.0));
        let me = [std::process::id()];
        let r = check(10, 10, 2.0, &me, None).expect("all delivered");
        assert_eq!(r.cpu, None, "no CPU figure without a start");
        let r = check(10, 10, 2.0, &me, cpu_of(&me)).expect("all delivered");
        assert!(r.cpu.is_some_and(|c| c >= 0.0));
    }
}
