//! `switchboard-bench`: switchboard side by side with nats-server, mosquitto,
//! redis pub/sub and a raw TCP baseline, in one run on one machine.
//!
//! Run it with `cargo xtask bench` (full: median of 5 runs, writes
//! `docs/BENCHMARKS.md`, `docs/bench.json` and `docs/bench.svg`) or
//! `cargo xtask bench --quick` (seconds, small counts, one run, writes
//! nothing unless `--write`). Every server is started on a free loopback
//! port and stopped by PID at the end, also on error and on Ctrl-C.

mod bindings;
mod chart;
mod cpu;
mod drivers;
mod durable;
mod extras;
mod failover;
mod federation;
mod gateways;
mod idle;
mod latency;
mod policy_rows;
mod procs;
mod ratios;
mod raw;
mod relay;
mod report;
mod scale;
mod slow;
mod stats;
mod tls_rows;
mod unix;
mod workload;

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use anyhow::{anyhow, Context, Result};
use clap::{Parser, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};

use drivers::{Mqtt, Nats, Redis, Switchboard};
use procs::ProcGuard;
use report::{Figure, Machine, Report, NATS, RAW, RELAY};
use stats::{percentile_us, Summary};
use workload::{Latencies, Limits, PubSubSpec, Throughput};

/// Command-line options.
#[derive(Parser, Debug)]
#[command(
    name = "switchboard-bench",
    about = "Benchmark switchboard side by side with nats-server, mosquitto, redis and raw TCP"
)]
struct Cli {
    /// Seconds instead of minutes: small counts, one run, peers skipped when
    /// not installed, no files written unless --write.
    #[arg(long)]
    quick: bool,
    /// Runs per figure (the median is reported); default 5, or 1 with --quick.
    #[arg(long)]
    runs: Option<usize>,
    /// Install missing peers with apt-get (needs root).
    #[arg(long)]
    install: bool,
    /// Write docs/BENCHMARKS.md, docs/bench.json and docs/bench.svg (the
    /// default for full runs).
    #[arg(long)]
    write: bool,
    /// Do not write the docs files in a full run.
    #[arg(long, conflicts_with = "write")]
    no_write: bool,
    /// Directory of the docs files.
    #[arg(long)]
    docs: Option<PathBuf>,
    /// Comma-separated systems to run:
    /// switchboard,switchboard-amo,nats,mosquitto,redis,relay,raw
    /// (`switchboard` clients use reliable delivery, the client's default;
    /// `switchboard-amo` clients turn it off).
    #[arg(long, value_delimiter = ',')]
    only: Vec<String>,
    /// The `switchboard` CLI binary that runs the hub (default: next to this
    /// binary; without one the hub runs in a child process of this binary).
    #[arg(long)]
    hub_bin: Option<PathBuf>,
    /// Comma-separated workload ids to run (default: all; the binding rows
    /// are bind-py-pubsub, bind-py-reqrep, bind-c-pubsub, bind-c-reqrep;
    /// the federation rows fed-reqrep, fed-pubsub, fed-kv;
    /// the open-loop rows ol-pubsub-1x1 and ol-reqrep need pubsub-1x1-64
    /// and reqrep-16 for their peaks).
    #[arg(long, value_delimiter = ',')]
    workloads: Vec<String>,
    #[command(subcommand)]
    cmd: Option<Cmd>,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Rewrites the docs files from a `bench.json` of an earlier run.
    Render {
        /// The JSON file (default: docs/bench.json).
        json: Option<PathBuf>,
    },
    /// Hot-standby figures on their own: failover times over KILLS kills of
    /// the primary, then publishing throughput with and without a standby.
    Failover {
        /// Kills of the primary.
        #[arg(default_value_t = 20)]
        kills: usize,
        /// Messages per throughput run.
        #[arg(default_value_t = 200_000)]
        messages: u64,
    },
    /// Request/reply round trips over native TCP, WebSocket and the HTTP
    /// gateway of one in-process hub, as a markdown table.
    Gateways {
        /// Round trips per transport.
        #[arg(default_value_t = 5000)]
        rounds: usize,
    },
    /// Messages lost by a slow subscriber: confirmed publishes from
    /// several lanes to one subscriber that reads slowly, checked per lane,
    /// against an in-process hub; one line (or one JSON object).
    SlowSubscriber(slow::Args),
    /// The raw TCP baseline server (started by the benchmark itself).
    #[command(hide = true)]
    RawServer,
    /// The zero-logic relay (started by the benchmark itself).
    #[command(hide = true)]
    RelayServer,
    /// A switchboard hub through the library (used when the `switchboard`
    /// binary is not built).
    #[command(hide = true)]
    SbHub {
        /// Shared token.
        #[arg(long)]
        token: String,
        /// The hub's client limit (default: the hub's own).
        #[arg(long)]
        max_clients: Option<usize>,
    },
}

/// A system under test with its client driver.
#[derive(Clone)]
enum Sys {
    Switchboard(Switchboard),
    Nats(Nats),
    Mqtt(Mqtt),
    Redis(Redis),
    Raw(std::net::SocketAddr),
    Relay(relay::Relay),
}

impl Sys {
    fn name(&self) -> &'static str {
        match self {
            Sys::Switchboard(d) if d.is_reliable() => "switchboard",
            Sys::Switchboard(_) => SB_AMO,
            Sys::Nats(_) => NATS,
            Sys::Mqtt(_) => "mosquitto",
            Sys::Redis(_) => "redis",
            Sys::Raw(_) => RAW,
            Sys::Relay(_) => RELAY,
        }
    }

    fn key(&self) -> &'static str {
        match self {
            Sys::Switchboard(d) if d.is_reliable() => "switchboard",
            Sys::Switchboard(_) => "switchboard-amo",
            Sys::Nats(_) => "nats",
            Sys::Mqtt(_) => "mosquitto",
            Sys::Redis(_) => "redis",
            Sys::Raw(_) => "raw",
            Sys::Relay(_) => "relay",
        }
    }
}

/// The workloads, in report order.
#[derive(Clone, Copy, Debug)]
enum Kind {
    PubSub(PubSubSpec),
    ReqSeq {
        count: u64,
    },
    ReqWindow {
        count: u64,
        window: usize,
    },
    /// Pub/sub one-way latency, one message in flight (`latency.rs`).
    OneWay {
        count: u64,
    },
}

struct Workload {
    id: &'static str,
    title: String,
    kind: Kind,
}

fn workloads(quick: bool) -> Vec<Workload> {
    let q = |full: u64, small: u64| if quick { small } else { full };
    let ps = |pubs, subs, payload, per_pub| {
        Kind::PubSub(PubSubSpec {
            pubs,
            subs_per_topic: subs,
            payload,
            per_pub,
        })
    };
    vec![
        Workload {
            id: "pubsub-1x1-64",
            title: format!("pub/sub 1→1, 64 B, {} msgs", q(1_000_000, 20_000)),
            kind: ps(1, 1, 64, q(1_000_000, 20_000)),
        },
        Workload {
            id: "pubsub-1x1-1k",
            title: format!("pub/sub 1→1, 1 KiB, {} msgs", q(200_000, 5_000)),
            kind: ps(1, 1, 1024, q(200_000, 5_000)),
        },
        Workload {
            id: "pubsub-1x1-64k",
            title: format!("pub/sub 1→1, 64 KiB, {} msgs", q(5_000, 200)),
            kind: ps(1, 1, 64 << 10, q(5_000, 200)),
        },
        Workload {
            id: "fanout-1x10",
            title: format!("fan-out 1→10, 64 B, {} msgs published", q(100_000, 2_000)),
            kind: ps(1, 10, 64, q(100_000, 2_000)),
        },
        Workload {
            id: "fanout-1x100",
            title: format!("fan-out 1→100, 64 B, {} msgs published", q(10_000, 200)),
            kind: ps(1, 100, 64, q(10_000, 200)),
        },
        Workload {
            id: "pubsub-10x10",
            title: format!(
                "10 publishers → 10 subscribers, distinct topics, 64 B, {} msgs each",
                q(100_000, 2_000)
            ),
            kind: ps(10, 1, 64, q(100_000, 2_000)),
        },
        Workload {
            id: "reqrep-seq",
            title: format!(
                "request/reply sequential, 64 B, {} requests",
                q(100_000, 500)
            ),
            kind: Kind::ReqSeq {
                count: q(100_000, 500),
            },
        },
        Workload {
            id: "pubsub-lat",
            title: format!(
                "pub/sub one-way latency 1→1, one in flight, 64 B, {} msgs",
                q(100_000, 500)
            ),
            kind: Kind::OneWay {
                count: q(100_000, 500),
            },
        },
        Workload {
            id: "reqrep-16",
            title: format!(
                "request/reply, 16 in flight, 64 B, {} requests",
                q(100_000, 2_000)
            ),
            kind: Kind::ReqWindow {
                count: q(100_000, 2_000),
                window: 16,
            },
        },
    ]
}

fn supports(sys: &Sys, kind: &Kind) -> bool {
    match (sys, kind) {
        (Sys::Raw(_), Kind::PubSub(s)) => s.pubs == 1 && s.subs_per_topic == 1,
        (Sys::Raw(_), Kind::OneWay { .. }) => false,
        _ => true,
    }
}

fn note(sys: &Sys, kind: &Kind) -> Option<String> {
    let req = matches!(kind, Kind::ReqSeq { .. } | Kind::ReqWindow { .. });
    match sys {
        Sys::Mqtt(_) if req => Some("emulated: echo over two QoS 0 topics".into()),
        Sys::Redis(_) if req => Some("emulated: PUBLISH/SUBSCRIBE on two channels".into()),
        Sys::Mqtt(_) => Some("rumqttc: one syscall per message; mosquitto single-threaded".into()),
        Sys::Redis(_) => Some("PUBLISH pipelined ×≤1000".into()),
        Sys::Nats(_) if !req => Some("subscription capacity raised".into()),
        Sys::Raw(_) if req => Some("length-prefixed echo, separate process".into()),
        Sys::Raw(_) => Some("length-prefixed stream, separate process".into()),
        Sys::Relay(_) => Some("zero-logic relay, separate process".into()),
        _ => None,
    }
}

enum Outcome {
    Rate(Throughput),
    Lat(Latencies),
    /// A throughput row whose per-request latencies are kept too.
    RateLat(Latencies),
}

async fn exec(sys: &Sys, kind: Kind, tag: &str, limits: Limits) -> Result<Outcome> {
    use workload::{pubsub, reqrep_emulated, reqrep_native};
    let ow = |count| latency::oneway_any(sys, count, tag, limits);
    Ok(match (sys, kind) {
        (_, Kind::OneWay { count }) => Outcome::Lat(ow(count).await?),
        (Sys::Relay(d), Kind::PubSub(s)) => Outcome::Rate(pubsub(d, s, tag, limits).await?),
        (Sys::Relay(d), Kind::ReqSeq { count }) => {
            Outcome::Lat(reqrep_native(d, count, 1, tag, limits).await?)
        }
        (Sys::Relay(d), Kind::ReqWindow { count, window }) => {
            Outcome::RateLat(reqrep_native(d, count, window, tag, limits).await?)
        }
        (Sys::Raw(addr), Kind::PubSub(s)) => {
            Outcome::Rate(raw::stream(*addr, s.payload, s.per_pub, limits.total).await?)
        }
        (Sys::Raw(addr), Kind::ReqSeq { count }) => {
            Outcome::Lat(raw::echo(*addr, count, 1, limits.total).await?)
        }
        (Sys::Raw(addr), Kind::ReqWindow { count, window }) => {
            Outcome::RateLat(raw::echo(*addr, count, window, limits.total).await?)
        }
        (Sys::Switchboard(d), Kind::PubSub(s)) => Outcome::Rate(pubsub(d, s, tag, limits).await?),
        (Sys::Switchboard(d), Kind::ReqSeq { count }) => {
            Outcome::Lat(reqrep_native(d, count, 1, tag, limits).await?)
        }
        (Sys::Switchboard(d), Kind::ReqWindow { count, window }) => {
            Outcome::RateLat(reqrep_native(d, count, window, tag, limits).await?)
        }
        (Sys::Nats(d), Kind::PubSub(s)) => Outcome::Rate(pubsub(d, s, tag, limits).await?),
        (Sys::Mqtt(d), Kind::PubSub(s)) => Outcome::Rate(pubsub(d, s, tag, limits).await?),
        (Sys::Redis(d), Kind::PubSub(s)) => Outcome::Rate(pubsub(d, s, tag, limits).await?),
        (Sys::Nats(d), Kind::ReqSeq { count }) => {
            Outcome::Lat(reqrep_native(d, count, 1, tag, limits).await?)
        }
        (Sys::Nats(d), Kind::ReqWindow { count, window }) => {
            Outcome::RateLat(reqrep_native(d, count, window, tag, limits).await?)
        }
        (Sys::Mqtt(d), Kind::ReqSeq { count }) => {
            Outcome::Lat(reqrep_emulated(d, count, 1, tag, limits).await?)
        }
        (Sys::Mqtt(d), Kind::ReqWindow { count, window }) => {
            Outcome::RateLat(reqrep_emulated(d, count, window, tag, limits).await?)
        }
        (Sys::Redis(d), Kind::ReqSeq { count }) => {
            Outcome::Lat(reqrep_emulated(d, count, 1, tag, limits).await?)
        }
        (Sys::Redis(d), Kind::ReqWindow { count, window }) => {
            Outcome::RateLat(reqrep_emulated(d, count, window, tag, limits).await?)
        }
    })
}

/// The servers this run started; dropping it stops them all by PID.
#[derive(Default)]
struct Servers {
    guards: Vec<ProcGuard>,
    _dir: Option<tempfile::TempDir>,
}

struct Setup {
    /// Directory for server logs and config files.
    dir: PathBuf,
    /// Token of the switchboard hubs this run starts.
    token: String,
    /// Peer server binaries found, by key.
    bins: Vec<(&'static str, PathBuf)>,
    hub_mode: String,
    systems: Vec<Sys>,
    /// Server process ids by system key (CPU per message, `cpu.rs`).
    pids: Vec<(&'static str, u32)>,
    versions: Vec<(String, String)>,
    notes: Vec<String>,
}

impl Setup {
    /// The server process of `sys`.
    fn pid(&self, sys: &Sys) -> Option<u32> {
        let key = match sys.key() {
            "switchboard-amo" => "switchboard",
            k => k,
        };
        self.pids.iter().find(|(k, _)| *k == key).map(|(_, p)| *p)
    }
}

/// The workloads of `ids` that `--workloads` selects (all of them when it
/// names none).
fn chosen(cli: &Cli, ids: &[&'static str]) -> Vec<&'static str> {
    ids.iter()
        .copied()
        .filter(|id| cli.workloads.is_empty() || cli.workloads.iter().any(|w| w == id))
        .collect()
}

fn wanted(cli: &Cli, key: &str) -> bool {
    cli.only.is_empty() || cli.only.iter().any(|o| o.eq_ignore_ascii_case(key))
}

fn start_servers(cli: &Cli, servers: &mut Servers) -> Result<Setup> {
    let dir = tempfile::Builder::new()
        .prefix("switchboard-bench")
        .tempdir()?;
    let path = dir.path().to_path_buf();
    servers._dir = Some(dir);
    let token = format!(
        "bench-{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos())
    );
    let mut setup = Setup {
        dir: path.clone(),
        token: token.clone(),
        bins: Vec::new(),
        hub_mode: "not run".into(),
        systems: Vec::new(),
        pids: Vec::new(),
        versions: Vec::new(),
        notes: Vec::new(),
    };
    let ready = Duration::from_secs(10);
    let (sb, sb_amo) = (wanted(cli, "switchboard"), wanted(cli, "switchboard-amo"));
    if sb || sb_amo {
        match start_hub(cli, &token, ready) {
            Ok((guard, mode)) => {
                let d = Switchboard::new(guard.addr(), &token);
                if sb {
                    setup.systems.push(Sys::Switchboard(d.clone()));
                }
                if sb_amo {
                    setup.systems.push(Sys::Switchboard(d.at_most_once()));
                }
                setup.versions.push((
                    "switchboard".into(),
                    format!("{} (this workspace)", env!("CARGO_PKG_VERSION")),
                ));
                setup.hub_mode = mode;
                setup.pids.push(("switchboard", guard.pid()));
                servers.guards.push(guard);
            }
            Err(e) => {
                eprintln!("switchboard hub: {e:#}; rows skipped");
                setup
                    .versions
                    .push(("switchboard".into(), format!("hub failed to start: {e}")));
            }
        }
    }
    let peers = [
        ("nats", "nats-server"),
        ("mosquitto", "mosquitto"),
        ("redis", "redis-server"),
    ];
    let missing: Vec<_> = peers
        .iter()
        .filter(|(k, bin)| wanted(cli, k) && procs::find_binary(bin).is_none())
        .collect();
    if !missing.is_empty() && cli.install {
        if let Err(e) = procs::install_peers() {
            eprintln!("{e:#}");
        }
    }
    for (key, bin) in peers {
        if !wanted(cli, key) {
            continue;
        }
        let Some(exe) = procs::find_binary(bin) else {
            let msg = format!(
                "not installed, rows skipped; install with `{}` or pass --install",
                procs::INSTALL_COMMAND
            );
            eprintln!("{bin}: {msg}");
            setup.versions.push((bin.to_string(), msg));
            continue;
        };
        let version = procs::version_line(
            &exe,
            if key == "mosquitto" {
                &["-h"]
            } else {
                &["--version"]
            },
        );
        match spawn_peer(key, &exe, &path, ready) {
            Ok(guard) => {
                let addr = guard.addr();
                setup.versions.push((bin.to_string(), version));
                setup.bins.push((key, exe));
                let sys = match key {
                    "nats" => Sys::Nats(Nats::new(addr)),
                    "mosquitto" => Sys::Mqtt(Mqtt::new(addr)),
                    _ => Sys::Redis(Redis::new(addr)?),
                };
                setup.pids.push((key, guard.pid()));
                servers.guards.push(guard);
                setup.systems.push(sys);
            }
            Err(e) => {
                eprintln!("{bin}: {e:#}; rows skipped");
                setup
                    .versions
                    .push((bin.to_string(), format!("failed to start: {e}")));
            }
        }
    }
    if wanted(cli, "raw") {
        let exe = std::env::current_exe()?;
        let mut cmd = Command::new(exe);
        cmd.arg("raw-server");
        let (guard, _) = procs::spawn_with_ready_line("raw-server", cmd, "READY", ready)?;
        setup.systems.push(Sys::Raw(guard.addr()));
        setup.pids.push(("raw", guard.pid()));
        servers.guards.push(guard);
    }
    if wanted(cli, "relay") {
        let mut cmd = Command::new(std::env::current_exe()?);
        cmd.arg("relay-server");
        let (guard, _) = procs::spawn_with_ready_line("relay-server", cmd, "READY", ready)?;
        setup
            .systems
            .push(Sys::Relay(relay::Relay::new(guard.addr())));
        setup.pids.push(("relay", guard.pid()));
        servers.guards.push(guard);
    }
    setup.notes = static_notes();
    Ok(setup)
}

/// Name of the switchboard rows whose clients do not ask for reliable
/// delivery.
const SB_AMO: &str = "switchboard at-most-once";

/// The notes printed under the tables.
fn static_notes() -> Vec<String> {
    [
        "pub/sub publishers are flow-controlled, the same way for every system: a publisher publishes in chunks of at most 1000 messages and waits (1 ms sleeps) while it would be more than 16,384 messages or 4 MiB of payload ahead of the slowest subscriber of its topic, as counted by the benchmark's receivers. An open-loop publisher only measures how much a server buffers before it drops or disconnects. A publisher whose slowest subscriber counts nothing for 500 ms stops waiting, and the losses are reported. The raw TCP stream is not windowed (it cannot lose anything).",
        "`switchboard` rows use the client's default, reliable delivery (the hub numbers every delivery and keeps it until the subscriber acknowledges it, at least every 64 deliveries or 10 ms after the last; publishers use `publish_nowait`, which is never numbered); `switchboard at-most-once` rows connect the same clients with `reliable(false)`, the peers' guarantee (QoS 0, core NATS, redis pub/sub).",
        "switchboard subscribers' client streams hold more than the message count, so a **lost** switchboard row is the hub's documented slow-consumer policy: once a subscriber's hub queue holds 32 MiB (each frame counted with its encoded size plus a fixed per-entry cost), its oldest deliveries are dropped and the client is told with `Flow` (a reliable client's dropped deliveries also leave its retransmit buffer); at 64 MiB it is disconnected as a slow consumer; nats-server buffers up to 64 MiB per client, redis runs here without a pub/sub buffer limit. A rate with losses counts only what arrived.",
        "mosquitto is driven by rumqttc at QoS 0: rumqttc writes one system call per message and mosquitto is single-threaded, so the MQTT figures are bounded by both.",
        "async-nats subscribers buffer 64Ki messages by default and drop the excess silently; the benchmark raises the subscription capacity to the expected count.",
        "redis runs with persistence off (`--save '' --appendonly no`) and no pub/sub output-buffer limit, so slow subscribers are not disconnected; publishers pipeline up to 1000 PUBLISH commands (one flow-control chunk; 16 for 64 KiB payloads).",
        "mosquitto and redis have no request/reply; their rows echo over two topics (one request in flight, or 16 pipelined), which costs the same hops as a native request.",
        "raw TCP is the physical limit of this machine: a length-prefixed stream and an echo, with the server in a separate process (`switchboard-bench raw-server`). The chart leaves it out of the throughput panel (it is 10–90× off the scale); the tables give its ratios.",
        "the zero-logic relay (`switchboard-bench relay-server`, a separate process) is the floor for a hub: it forwards each readable burst of length-prefixed frames from a publisher to every subscriber of the connection's one channel in one write per subscriber, with no routing, headers, acknowledgements or per-message state; request/reply goes requester → relay → responder → relay → requester. `vs relay` is each row's ratio to it; raw TCP stays as the wire's limit.",
        "`CPU s per M msgs`: CPU seconds of the server process (its CPU-time clock, `clock_getcpuclockid`: user + system, all threads, in nanoseconds) from right before to right after each throughput run, per million messages delivered; both switchboard rows use the one hub process. The durable and scale rows count it over their publishing phase (setup excluded), a primary and its standby together. Open-loop rows (`ol-*`) offer 10%, 50% and 90% of each system's peak from this run on a fixed schedule and measure latency from the intended send time (coordinated omission corrected).",
        "idle clients: one run per system on a fresh server; the figure is the server's RSS growth divided by the clients connected. Peer clients are minimal protocol sessions on raw sockets, switchboard clients are full `switchboard::Client`s.",
        "switchboard-only rows (`sb-*`) measure features the peers do not have, against their own hub process (with the HTTP gateway on): discovery through `switchboard::discover`, session-engine RPCs through `Client::session_manager`/`session_agent`, WebSocket and HTTP round trips with protocol-level clients, and failover with a primary and a `--standby` hub killed with SIGKILL (a new standby after each kill).",
        "federation rows (`fed-*`, issue 19) run against their own 3-node nats-server cluster (JetStream on) and two `switchboard hub --federate` processes, hub A on node 1 and hub B on node 2: `switchboard local` has both clients on hub A, `switchboard cross-hub` the sender on hub A and the receiver on hub B, and `nats-server` is nats-server's own routed hop (async-nats, sender on node 1, receiver on node 2). Measurement starts once a probe has crossed the path (interest and ids propagated). The cross-hub row's note gives its ratios to the routed hop and to local (raw quotients: above 1× is slower for latencies); the issue's goal is a cross-hub request/reply p50 ≤ 1.5× the routed one.",
        "binding rows (`bind-*`) run through the Python package and libswitchboard against their own hub process (and nats-server for nats-py): the Python and C sides are programs of their own (`crates/switchboard-bench/py/bench_client.py`, `c/bench_client.c`, built in release: `maturin develop --release`, `gcc -O2`), the Rust client runs the same workload on the same hub, alternately first and last; the binding's note gives its ratios (above 1× is better). 64 switchboard publishes are in flight (Python: gathered batches; C: 64 publishing threads, as `sb_publish` blocks); nats-py publishes are buffered and flushed, not confirmed.",
    ]
    .map(String::from)
    .to_vec()
}

/// Starts a peer server (`key`: nats, mosquitto or redis) on a free
/// loopback port, with its files in `dir`.
fn spawn_peer(
    key: &str,
    exe: &std::path::Path,
    dir: &std::path::Path,
    ready: Duration,
) -> Result<ProcGuard> {
    spawn_peer_with(key, exe, dir, ready, None)
}

/// [`spawn_peer`], with nats-server's connection limit (65,536 by default)
/// raised to `max_conns` when given; mosquitto has none by default.
fn spawn_peer_with(
    key: &str,
    exe: &std::path::Path,
    dir: &std::path::Path,
    ready: Duration,
    max_conns: Option<usize>,
) -> Result<ProcGuard> {
    let port = procs::free_port()?;
    let addr: std::net::SocketAddr = ([127, 0, 0, 1], port).into();
    let log = dir.join(format!("{key}-{port}.log"));
    let mut c = Command::new(exe);
    match key {
        "nats" => {
            if let Some(n) = max_conns {
                let conf = dir.join(format!("nats-{port}.conf"));
                std::fs::write(&conf, format!("max_connections: {n}\n"))?;
                c.arg("-c").arg(conf);
            }
            c.args(["-a", "127.0.0.1", "-p", &port.to_string()]);
        }
        "mosquitto" => {
            let conf = dir.join(format!("mosquitto-{port}.conf"));
            std::fs::write(
                &conf,
                format!("listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n"),
            )?;
            c.arg("-c").arg(&conf);
        }
        _ => {
            c.args([
                "--port",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--client-output-buffer-limit",
                "pubsub 0 0 0",
                "--maxclients",
                "20000",
            ]);
            c.current_dir(dir);
        }
    }
    procs::spawn_and_wait(key, c, addr, &log, ready)
}

/// The `switchboard` CLI binary: `--hub-bin`, else the one next to this
/// binary, if built.
fn hub_bin(cli: &Cli) -> Option<PathBuf> {
    let sibling = std::env::current_exe().ok()?.with_file_name("switchboard");
    cli.hub_bin
        .clone()
        .or_else(|| sibling.is_file().then_some(sibling))
}

/// Starts the hub as its own process: the `switchboard` CLI when it is
/// built, else this binary's hidden `sb-hub` subcommand.
fn start_hub(cli: &Cli, token: &str, ready: Duration) -> Result<(ProcGuard, String)> {
    start_hub_with(cli, token, ready, None)
}

/// [`start_hub`], with the hub's client limit raised to `max_clients`
/// when given (a configuration file in `dir`).
fn start_hub_with(
    cli: &Cli,
    token: &str,
    ready: Duration,
    max_clients: Option<(usize, &std::path::Path)>,
) -> Result<(ProcGuard, String)> {
    let exe = std::env::current_exe()?;
    if let Some(bin) = hub_bin(cli) {
        let mut cmd = Command::new(&bin);
        cmd.args(["--service", "switchboard-bench", "--json", "hub"]);
        if let Some((n, dir)) = max_clients {
            let conf = dir.join(format!("hub-max-clients-{n}.toml"));
            std::fs::write(&conf, format!("[limits]\nmax_clients = {n}\n"))?;
            cmd.arg("--config").arg(conf);
        }
        cmd.args(["--listen", "127.0.0.1:0"])
            .env("SWITCHBOARD_TOKEN", token);
        let (guard, _) = procs::spawn_with_ready_line("switchboard hub", cmd, "{", ready)?;
        let mode = format!(
            "separate process: `switchboard --service switchboard-bench --json hub --listen 127.0.0.1:0` with a token ({}), pid {}",
            bin.display(),
            guard.pid()
        );
        Ok((guard, mode))
    } else {
        let mut cmd = Command::new(&exe);
        cmd.args(["sb-hub", "--token", token]);
        if let Some((n, _)) = max_clients {
            cmd.args(["--max-clients", &n.to_string()]);
        }
        let (guard, _) = procs::spawn_with_ready_line("switchboard hub", cmd, "READY", ready)?;
        let mode = format!(
            "separate process: `switchboard-bench sb-hub` (the `switchboard::Hub` builder; the `switchboard` binary was not built), pid {}",
            guard.pid()
        );
        Ok((guard, mode))
    }
}

fn command_line() -> String {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if std::env::var_os("SWITCHBOARD_BENCH_VIA_XTASK").is_some() {
        format!("cargo xtask bench {}", args.join(" "))
            .trim_end()
            .to_string()
    } else {
        format!("switchboard-bench {}", args.join(" "))
            .trim_end()
            .to_string()
    }
}

fn utc_now() -> String {
    Command::new("date")
        .args(["-u", "+%Y-%m-%d %H:%M UTC"])
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "unknown date".into())
}

async fn run(cli: &Cli, setup: &Setup) -> Result<Report> {
    let runs = cli.runs.unwrap_or(if cli.quick { 1 } else { 5 }).max(1);
    let limits = if cli.quick {
        Limits {
            first: Duration::from_secs(3),
            idle: Duration::from_secs(1),
            total: Duration::from_secs(10),
        }
    } else {
        Limits {
            first: Duration::from_secs(10),
            idle: Duration::from_secs(3),
            total: Duration::from_secs(120),
        }
    };
    let all = workloads(cli.quick);
    let chosen: Vec<&Workload> = all
        .iter()
        .filter(|w| cli.workloads.is_empty() || cli.workloads.iter().any(|id| id == w.id))
        .collect();
    let idle_steps: u64 = idle_specs(cli.quick)
        .iter()
        .filter(|spec| cli.workloads.is_empty() || cli.workloads.iter().any(|id| id == spec.id))
        .map(|spec| setup.systems.iter().filter(|s| spec.runs_on(s)).count() as u64)
        .sum();
    let extra_rows: Vec<extras::Extra> = if setup.systems.iter().any(|s| s.key() == "switchboard") {
        extras::extras(cli.quick)
            .into_iter()
            .filter(|e| cli.workloads.is_empty() || cli.workloads.iter().any(|id| id == e.id))
            .collect()
    } else {
        Vec::new()
    };
    let steps: u64 = idle_steps
        + (extra_rows.len() * runs) as u64
        + chosen
            .iter()
            .map(|w| {
                setup
                    .systems
                    .iter()
                    .filter(|s| supports(s, &w.kind))
                    .count() as u64
                    * runs as u64
            })
            .sum::<u64>();
    let pb = ProgressBar::new(steps);
    pb.set_style(
        ProgressStyle::with_template("{bar:30.cyan/blue} {pos}/{len} [{elapsed_precise}] {msg}")
            .map_err(|e| anyhow!("progress bar template: {e}"))?,
    );
    let mut figures: Vec<Figure> = Vec::new();
    for w in &chosen {
        let systems: Vec<&Sys> = setup
            .systems
            .iter()
            .filter(|s| supports(s, &w.kind))
            .collect();
        let pct = [("p50 µs", true), ("p99 µs", true), ("p999 µs", true)];
        let metrics: Vec<(&str, bool)> = match w.kind {
            Kind::ReqSeq { .. } | Kind::OneWay { .. } => pct.to_vec(),
            Kind::PubSub(_) => vec![("msgs/s", false), (cpu::METRIC, true)],
            Kind::ReqWindow { .. } => [("requests/s", false), (cpu::METRIC, true)]
                .into_iter()
                .chain(pct)
                .collect(),
        };
        // per system, per metric: values of each run
        let mut values = vec![vec![Vec::<f64>::new(); metrics.len()]; systems.len()];
        let mut counts = vec![(0u64, 0u64, 0u64); systems.len()];
        let mut drops = vec![0u64; systems.len()];
        let mut errors: Vec<Option<String>> = vec![None; systems.len()];
        for r in 0..runs {
            for (i, sys) in systems.iter().enumerate() {
                pb.set_message(format!("{} · {} · run {}/{runs}", w.id, sys.name(), r + 1));
                let tag = format!("{}.{}.{r}", w.id, sys.key());
                let pid = setup.pid(sys);
                let cpu_before = pid.and_then(cpu::secs);
                let outcome = exec(sys, w.kind, &tag, limits).await;
                let cpu_after = pid.and_then(cpu::secs);
                match outcome {
                    Ok(Outcome::Rate(t)) => {
                        values[i][0].push(t.rate());
                        if let Some(c) = cpu::per_million(cpu_before, cpu_after, t.delivered) {
                            values[i][1].push(c);
                        }
                        counts[i].0 += t.sent;
                        counts[i].1 += t.expected;
                        counts[i].2 += t.delivered;
                        drops[i] += t.reported_drops;
                    }
                    Ok(Outcome::Lat(mut l) | Outcome::RateLat(mut l)) => {
                        let t = l.throughput;
                        for (m, (metric, _)) in metrics.iter().enumerate() {
                            let v = match *metric {
                                "p50 µs" => percentile_us(&mut l.samples, 0.5),
                                "p99 µs" => percentile_us(&mut l.samples, 0.99),
                                "p999 µs" => percentile_us(&mut l.samples, 0.999),
                                cpu::METRIC => cpu::per_million(cpu_before, cpu_after, t.delivered),
                                _ => Some(t.rate()),
                            };
                            if let Some(v) = v {
                                values[i][m].push(v);
                            }
                        }
                        counts[i].0 += l.throughput.sent;
                        counts[i].1 += l.throughput.expected;
                        counts[i].2 += l.throughput.delivered;
                    }
                    Err(e) => {
                        let msg = format!("{e:#}");
                        pb.suspend(|| {
                            eprintln!("{} · {}: run {} failed: {msg}", w.id, sys.name(), r + 1)
                        });
                        errors[i].get_or_insert(msg);
                    }
                }
                pb.inc(1);
            }
        }
        for (i, sys) in systems.iter().enumerate() {
            for (m, (metric, lower)) in metrics.iter().enumerate() {
                figures.push(Figure {
                    workload: w.id.to_string(),
                    title: w.title.clone(),
                    metric: metric.to_string(),
                    lower_is_better: *lower,
                    system: sys.name().to_string(),
                    summary: Summary::of(&values[i][m]),
                    runs: values[i][m].clone(),
                    sent: counts[i].0,
                    expected: counts[i].1,
                    delivered: counts[i].2,
                    error: errors[i].clone(),
                    note: match (note(sys, &w.kind), drops[i]) {
                        (n, 0) => n,
                        (n, d) => Some(format!(
                            "{}{d} reported dropped by the server's slow-consumer policy",
                            n.map(|n| n + "; ").unwrap_or_default()
                        )),
                    },
                });
            }
        }
        let mut report_so_far = String::new();
        for f in figures.iter().filter(|f| f.workload == w.id) {
            let nats = figures
                .iter()
                .find(|g| g.workload == f.workload && g.metric == f.metric && g.system == NATS);
            let raw = figures
                .iter()
                .find(|g| g.workload == f.workload && g.metric == f.metric && g.system == RAW);
            let relay = figures
                .iter()
                .find(|g| g.workload == f.workload && g.metric == f.metric && g.system == RELAY);
            let med = f
                .summary
                .map_or_else(|| "failed".to_string(), |s| s.shown());
            report_so_far.push_str(&format!(
                "  {:<12} {:<11} {med}  delivered {}/{}{}  vs nats {}  vs relay {}  vs raw {}\n",
                f.system,
                f.metric,
                f.delivered,
                f.expected,
                if f.lost() { " LOST" } else { "" },
                nats.and_then(|n| f.ratio_to(n))
                    .map_or("–".into(), |r| format!("{r:.2}×")),
                relay
                    .and_then(|n| f.ratio_to(n))
                    .map_or("–".into(), |r| format!("{r:.2}×")),
                raw.and_then(|n| f.ratio_to(n))
                    .map_or("–".into(), |r| format!("{r:.2}×")),
            ));
        }
        pb.suspend(|| println!("{}\n{report_so_far}", w.title));
    }
    open_loop(cli, setup, runs, limits, &pb, &mut figures).await;
    for spec in idle_specs(cli.quick) {
        if cli.workloads.is_empty() || cli.workloads.iter().any(|id| id == spec.id) {
            idle_rows(cli, setup, &pb, &mut figures, &spec).await;
        }
    }
    extras::rows(
        &extra_rows,
        runs,
        hub_bin(cli).as_deref(),
        &setup.token,
        &setup.dir,
        &pb,
        &mut figures,
    )
    .await;
    binding_rows(cli, setup, runs, &pb, &mut figures).await;
    durable::rows(cli, setup, runs, &pb, &mut figures).await;
    scale::rows(cli, setup, runs, &pb, &mut figures).await;
    federation::rows(cli, setup, runs, &pb, &mut figures).await;
    pb.finish_and_clear();
    Ok(Report {
        command: command_line(),
        date: utc_now(),
        quick: cli.quick,
        runs,
        machine: Machine::detect(),
        versions: setup.versions.clone(),
        hub_mode: setup.hub_mode.clone(),
        figures,
        notes: setup.notes.clone(),
    })
}

/// The open-loop rows (`latency.rs`), after the throughput rows that give
/// each system's peak.
async fn open_loop(
    cli: &Cli,
    setup: &Setup,
    runs: usize,
    limits: Limits,
    pb: &ProgressBar,
    figures: &mut Vec<Figure>,
) {
    let secs = if cli.quick { 0.2 } else { 3.0 };
    let systems = latency::open_loop_systems(&setup.systems);
    let names: Vec<&'static str> = systems.iter().map(|s| s.name()).collect();
    for w in latency::open_loops(secs) {
        if !cli.workloads.is_empty() && !cli.workloads.iter().any(|id| id == w.id) {
            continue;
        }
        pb.inc_length((systems.len() * latency::LOADS.len() * runs) as u64);
        let w = &w;
        latency::open_loop_rows(w, &names, runs, pb, figures, |i, rate, tag| {
            latency::open_any(w, systems[i], rate, secs, tag, limits)
        })
        .await;
    }
}

/// The binding rows (`bindings.rs`): their own hub and nats-server
/// processes, so the other rows' servers carry nothing of theirs.
async fn binding_rows(
    cli: &Cli,
    setup: &Setup,
    runs: usize,
    pb: &ProgressBar,
    figures: &mut Vec<Figure>,
) {
    let chosen = chosen(cli, &bindings::IDS);
    if chosen.is_empty() || !wanted(cli, "switchboard") {
        return;
    }
    let ready = Duration::from_secs(10);
    let hub = match tokio::task::block_in_place(|| start_hub(cli, &setup.token, ready)) {
        Ok((guard, _)) => guard,
        Err(e) => {
            pb.suspend(|| eprintln!("binding rows skipped: the hub did not start: {e:#}"));
            return;
        }
    };
    let nats = setup
        .bins
        .iter()
        .find(|(k, _)| *k == "nats")
        .and_then(|(_, exe)| {
            tokio::task::block_in_place(|| spawn_peer("nats", exe, &setup.dir, ready))
                .map_err(|e| pb.suspend(|| eprintln!("binding rows: nats-server: {e:#}")))
                .ok()
        });
    let env = bindings::Env {
        quick: cli.quick,
        runs,
        hub: hub.addr(),
        nats: nats.as_ref().map(|g| g.addr()),
        token: &setup.token,
        dir: &setup.dir,
    };
    bindings::rows(&env, &chosen, pb, figures).await;
}

/// One idle-connection workload.
struct IdleSpec {
    /// Workload id (`--workloads`).
    id: &'static str,
    /// Clients connected.
    n: usize,
    /// Spread the clients over loopback source addresses, at most this
    /// many on each (`None`: all from 127.0.0.1).
    per_source: Option<usize>,
    /// Time allowed for connecting them all.
    limit: Duration,
    /// Minimal raw-socket switchboard sessions instead of full clients.
    raw_switchboard: bool,
    /// Raise the servers' own connection limits to this.
    max_conns: Option<usize>,
}

impl IdleSpec {
    /// Whether system `sys` gets this row (one switchboard row: an idle
    /// client costs the hub the same with or without reliable delivery;
    /// redis only in the 10,000-client row).
    fn runs_on(&self, sys: &Sys) -> bool {
        !matches!(sys, Sys::Raw(_) | Sys::Relay(_))
            && sys.key() != "switchboard-amo"
            && (self.max_conns.is_none() || sys.key() != "redis")
    }
}

/// The idle rows: 10,000 full clients, and 100,000 raw sessions spread
/// over five source addresses (`--quick`: 200 and 400 over two).
fn idle_specs(quick: bool) -> Vec<IdleSpec> {
    vec![
        IdleSpec {
            id: "idle",
            n: if quick { 200 } else { 10_000 },
            per_source: None,
            limit: Duration::from_secs(if quick { 20 } else { 180 }),
            raw_switchboard: false,
            max_conns: None,
        },
        IdleSpec {
            id: "idle-100k",
            n: if quick { 400 } else { 100_000 },
            per_source: Some(if quick { 200 } else { 20_000 }),
            limit: Duration::from_secs(if quick { 30 } else { 900 }),
            raw_switchboard: true,
            max_conns: Some(if quick { 1_000 } else { 110_000 }),
        },
    ]
}

/// The idle-connection rows: each system gets a fresh server, `n` idle
/// clients, and its RSS growth per client (one run).
async fn idle_rows(
    cli: &Cli,
    setup: &Setup,
    pb: &ProgressBar,
    figures: &mut Vec<Figure>,
    spec: &IdleSpec,
) {
    // Each end of every connection is an open file in its process (the
    // servers inherit this process's limit). Where the hard limit cannot
    // be raised (no CAP_SYS_RESOURCE), the large row runs with as many
    // clients as fit, and says so.
    let files = fd_limit();
    let fits = (files.saturating_sub(2_000) / 1_000 * 1_000) as usize;
    let capped = (spec.max_conns.is_some() && fits < spec.n).then_some(fits);
    let n = capped.unwrap_or(spec.n);
    let limit = spec.limit;
    let ready = Duration::from_secs(10);
    let title = if let Some(fits) = capped {
        format!(
            "{fits} idle connected clients (raw sessions, several source addresses; capped from {} by RLIMIT_NOFILE {files}), fresh server, 1 run",
            spec.n
        )
    } else if spec.raw_switchboard {
        format!("{n} idle connected clients (raw sessions, several source addresses), fresh server, 1 run")
    } else {
        format!("{n} idle connected clients, fresh server, 1 run")
    };
    let mut lines = String::new();
    for sys in &setup.systems {
        let key = sys.key();
        if !spec.runs_on(sys) {
            continue;
        }
        pb.set_message(format!("{} · {} · {n} clients", spec.id, sys.name()));
        let started = if files < n as u64 + 1_000 {
            Err(anyhow!(
                "RLIMIT_NOFILE is {files}, the row needs more than {n} open files (run as root, or raise the hard limit)"
            ))
        } else {
            tokio::task::block_in_place(|| match sys {
                Sys::Switchboard(_) => {
                    let max = spec.max_conns.map(|m| (m, setup.dir.as_path()));
                    start_hub_with(cli, &setup.token, ready, max).map(|(g, _)| g)
                }
                _ => match setup.bins.iter().find(|(k, _)| *k == key) {
                    Some((_, exe)) => spawn_peer_with(key, exe, &setup.dir, ready, spec.max_conns),
                    None => Err(anyhow!("no {key} binary")),
                },
            })
        };
        let result = match started {
            Ok(guard) => {
                let proto = match sys {
                    Sys::Switchboard(_) if spec.raw_switchboard => {
                        idle::Proto::SwitchboardRaw(setup.token.clone())
                    }
                    Sys::Switchboard(_) => {
                        idle::Proto::Switchboard(Switchboard::new(guard.addr(), &setup.token))
                    }
                    Sys::Nats(_) => idle::Proto::Nats,
                    Sys::Mqtt(_) => idle::Proto::Mqtt,
                    _ => idle::Proto::Redis,
                };
                let r =
                    idle::run(proto, guard.addr(), guard.pid(), n, spec.per_source, limit).await;
                tokio::task::block_in_place(|| drop(guard));
                r
            }
            Err(e) => Err(e),
        };
        pb.inc(1);
        let mut fig = Figure {
            workload: spec.id.into(),
            title: title.clone(),
            metric: "KiB per client".into(),
            lower_is_better: true,
            system: sys.name().to_string(),
            runs: Vec::new(),
            summary: None,
            sent: n as u64,
            expected: n as u64,
            delivered: 0,
            error: None,
            note: None,
        };
        match result {
            Ok(r) => {
                fig.runs = vec![r.kib_per_client()];
                fig.summary = Summary::of(&fig.runs);
                fig.delivered = r.connected;
                fig.note = Some(format!("server RSS {} → {} KiB", r.before_kib, r.after_kib));
                lines.push_str(&format!(
                    "  {:<12} {:>8.1} KiB per client (RSS {} → {} KiB, {} clients)\n",
                    sys.name(),
                    r.kib_per_client(),
                    r.before_kib,
                    r.after_kib,
                    r.connected
                ));
            }
            Err(e) => {
                let msg = format!("{e:#}");
                lines.push_str(&format!("  {:<12} failed: {msg}\n", sys.name()));
                fig.error = Some(msg);
            }
        }
        figures.push(fig);
    }
    pb.suspend(|| println!("{title}\n{lines}"));
}

fn docs_dir(cli: &Cli) -> PathBuf {
    cli.docs
        .clone()
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../docs"))
}

/// Open files this process (and the servers it starts, which inherit the
/// limit) may want: the 100,000-connection row holds 100,000 sockets on
/// each side.
const WANTED_FILES: u64 = 1 << 20;

/// Raises `RLIMIT_NOFILE` to [`WANTED_FILES`] (within `fs.nr_open`) where
/// the process may raise its hard limit (root), else the soft limit to the
/// hard one.
fn raise_fd_limit() {
    let nr_open = std::fs::read_to_string("/proc/sys/fs/nr_open")
        .ok()
        .and_then(|s| s.trim().parse::<u64>().ok())
        .unwrap_or(WANTED_FILES);
    let want = WANTED_FILES.min(nr_open);
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit with a valid pointer to a local struct.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
            return;
        }
        if lim.rlim_max < want {
            let raised = libc::rlimit {
                rlim_cur: want,
                rlim_max: want,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
                return;
            }
        }
        if lim.rlim_cur < lim.rlim_max {
            lim.rlim_cur = lim.rlim_max.min(want.max(lim.rlim_cur));
            libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
        }
    }
}

/// This process's soft `RLIMIT_NOFILE`.
fn fd_limit() -> u64 {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit with a valid pointer to a local struct.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return 0;
    }
    lim.rlim_cur
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    raise_fd_limit();
    if let Some(Cmd::RawServer | Cmd::RelayServer) = cli.cmd {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()?;
        return rt.block_on(async {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
            println!("READY {}", listener.local_addr()?);
            match cli.cmd {
                Some(Cmd::RelayServer) => relay::serve(listener).await,
                _ => raw::serve(listener).await,
            }
        });
    }
    if let Some(Cmd::Failover { kills, messages }) = &cli.cmd {
        let bin = hub_bin(&cli).context(
            "the `switchboard` binary is not built: `cargo build --release -p switchboard --bins`",
        )?;
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()?;
        return rt.block_on(failover::main(&bin, *kills, *messages));
    }
    if let Some(Cmd::Gateways { rounds }) = &cli.cmd {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()?;
        return rt.block_on(gateways::main(*rounds));
    }
    if let Some(Cmd::SlowSubscriber(args)) = &cli.cmd {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()?;
        return rt.block_on(slow::main(args.clone()));
    }
    if let Some(Cmd::Render { json }) = &cli.cmd {
        let docs = docs_dir(&cli);
        let path = json.clone().unwrap_or_else(|| docs.join("bench.json"));
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("reading {}", path.display()))?;
        let mut report: Report =
            serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))?;
        report.notes = static_notes();
        report::write_docs(&docs, &report, &chart::svg(&report))?;
        println!(
            "rewrote the docs in {} from {}",
            docs.display(),
            path.display()
        );
        return Ok(());
    }
    if let Some(Cmd::SbHub { token, max_clients }) = &cli.cmd {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()?;
        return rt.block_on(async {
            let mut b = switchboard::Hub::builder()
                .service("switchboard-bench")
                .token(token)
                .listen("127.0.0.1:0")
                .write_hint(false);
            if let Some(n) = max_clients {
                b = b.limits(switchboard::hub::Limits {
                    max_clients: *n,
                    ..Default::default()
                });
            }
            let hub = b.start().await?;
            println!("READY {}", hub.local_addr());
            let mut term =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
            hub.shutdown().await;
            Ok(())
        });
    }
    let machine = Machine::detect();
    println!(
        "switchboard-bench: {} cores, {}; {}",
        machine.cores,
        machine.cpu,
        if cli.quick { "quick mode" } else { "full mode" }
    );
    let mut servers = Servers::default();
    let setup = start_servers(&cli, &mut servers)?;
    for (name, v) in &setup.versions {
        println!("  {name}: {v}");
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let result = rt.block_on(async {
        tokio::select! {
            r = run(&cli, &setup) => r,
            _ = tokio::signal::ctrl_c() => Err(anyhow!("interrupted; stopping the servers")),
        }
    });
    // stop client connections before the servers
    rt.shutdown_timeout(Duration::from_secs(2));
    drop(servers);
    let report = result?;
    let write = cli.write || (!cli.quick && !cli.no_write);
    if write {
        let docs = docs_dir(&cli);
        report::write_docs(&docs, &report, &chart::svg(&report))
            .with_context(|| format!("writing into {}", docs.display()))?;
        println!(
            "wrote {0}/BENCHMARKS.md, {0}/bench.json, {0}/bench.svg",
            docs.display()
        );
    }
    println!("command: {}", report.command);
    Ok(())
}
