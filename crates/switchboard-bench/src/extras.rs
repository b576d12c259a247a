//! The switchboard-only rows of the comparison: discovery time,
//! session-engine RPCs/s, request/reply over WebSocket and over the HTTP
//! gateway, the Unix socket against TCP loopback (a ratio of the two, both
//! measured here), failover time, and what TLS costs (ratios to plaintext,
//! in `tls_rows`). No peer has these features, so the rows carry no ratios
//! to peers; they run against hub processes like the other rows.

use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, ensure, Context, Result};
use bytes::Bytes;
use indicatif::ProgressBar;
use switchboard::discovery::Secret;
use switchboard::session::driver::{ManagerOptions, Methods};
use switchboard::session::AgentConfig;

use crate::procs::{self, ProcGuard};
use crate::report::Figure;
use crate::stats::Summary;
use crate::{failover, gateways};

/// Service name of the hub the extra rows use (discovery looks for it).
const SERVICE: &str = "switchboard-bench-extras";

/// One extra workload.
pub struct Extra {
    /// Workload id (for `--workloads`).
    pub id: &'static str,
    title: String,
    metric: &'static str,
    lower_is_better: bool,
    /// Operations per run.
    count: usize,
}

/// The extra workloads, in report order.
pub fn extras(quick: bool) -> Vec<Extra> {
    let n = |quick_n: usize, full_n: usize| if quick { quick_n } else { full_n };
    vec![
        Extra {
            id: "sb-discovery",
            title: format!(
                "switchboard only: discovery of a running hub (hint, then a verified probe), {} lookups",
                n(5, 50)
            ),
            metric: "p50 µs",
            lower_is_better: true,
            count: n(5, 50),
        },
        Extra {
            id: "sb-session",
            title: format!(
                "switchboard only: session engine over the hub, manager → agent, 16 RPCs in flight, {} RPCs",
                n(500, 20_000)
            ),
            metric: "RPCs/s",
            lower_is_better: false,
            count: n(500, 20_000),
        },
        Extra {
            id: "sb-ws-reqrep",
            title: format!(
                "switchboard only: request/reply over WebSocket (both ends), 64 B, {} requests",
                n(200, 5_000)
            ),
            metric: "p50 µs",
            lower_is_better: true,
            count: n(200, 5_000),
        },
        Extra {
            id: "sb-http-reqrep",
            title: format!(
                "switchboard only: request/reply over the HTTP gateway (long-poll responder), 64 B, {} requests",
                n(200, 5_000)
            ),
            metric: "p50 µs",
            lower_is_better: true,
            count: n(200, 5_000),
        },
        Extra {
            id: "sb-unix-pubsub",
            title: format!(
                "switchboard only: unix socket vs tcp loopback, 1→1 pub/sub throughput, 64 B, {} messages each",
                n(2_000, 100_000)
            ),
            metric: "× (unix/tcp)",
            lower_is_better: false,
            count: n(2_000, 100_000),
        },
        Extra {
            id: "sb-unix-reqrep",
            title: format!(
                "switchboard only: unix socket vs tcp loopback, request/reply p50, 64 B, {} requests each",
                n(200, 5_000)
            ),
            metric: "× (tcp/unix p50)",
            lower_is_better: false,
            count: n(200, 5_000),
        },
        Extra {
            id: "sb-ws-pubsub",
            title: format!(
                "switchboard only: WebSocket ÷ TCP, 1→1 pub/sub throughput (the client over the gateway), 64 B, {} messages each",
                n(2_000, 100_000)
            ),
            metric: "× (ws/tcp)",
            lower_is_better: false,
            count: n(2_000, 100_000),
        },
        Extra {
            id: "sb-tls-pubsub",
            title: format!(
                "switchboard only: TLS ÷ plaintext, 1→1 pub/sub throughput, 1 KiB, {} messages (goal ≥ 0.75)",
                n(2_000, 100_000)
            ),
            metric: "ratio ×",
            lower_is_better: false,
            count: n(2_000, 100_000),
        },
        Extra {
            id: "sb-tls-reqrep",
            title: format!(
                "switchboard only: TLS ÷ plaintext, request/reply p50, 64 B, {} requests",
                n(200, 5_000)
            ),
            metric: "ratio ×",
            lower_is_better: true,
            count: n(200, 5_000),
        },
        Extra {
            id: "sb-policy-pubsub",
            title: format!(
                "switchboard only: a {}-rule permission policy ÷ none, 1→1 pub/sub throughput, 64 B, {} messages (goal ≥ 0.95)",
                crate::policy_rows::RULES,
                n(2_000, 100_000)
            ),
            metric: "ratio ×",
            lower_is_better: false,
            count: n(2_000, 100_000),
        },
        Extra {
            id: "sb-failover",
            title: format!(
                "switchboard only: failover, SIGKILL of the primary → first message through the standby, {} kills per run",
                n(2, 10)
            ),
            metric: "p50 ms",
            lower_is_better: true,
            count: n(2, 10),
        },
    ]
}

/// The hub process the extra rows (but failover) talk to.
struct ExtraHub {
    _guard: ProcGuard,
    addr: SocketAddr,
    http: SocketAddr,
    /// The hub's Unix socket, from its ready line.
    unix: Option<std::path::PathBuf>,
}

fn start_hub(bin: &Path, token: &str) -> Result<ExtraHub> {
    let mut cmd = Command::new(bin);
    cmd.args([
        "--service",
        SERVICE,
        "--json",
        "hub",
        "--listen",
        "127.0.0.1:0",
        "--http",
        "127.0.0.1:0",
    ])
    .env("SWITCHBOARD_TOKEN", token);
    let (guard, rest) =
        procs::spawn_with_ready_line("switchboard hub", cmd, "{", Duration::from_secs(10))?;
    let ready: serde_json::Value =
        serde_json::from_str(&format!("{{{rest}")).context("the hub's ready line")?;
    let field = |name: &str| -> Result<SocketAddr> {
        ready[name]
            .as_str()
            .with_context(|| format!("no `{name}` in the hub's ready line"))?
            .parse()
            .with_context(|| format!("`{name}` in the hub's ready line"))
    };
    Ok(ExtraHub {
        addr: field("addr")?,
        http: field("http")?,
        unix: ready["unix"].as_str().map(std::path::PathBuf::from),
        _guard: guard,
    })
}

/// One run of `extra`: its value, and (sent, expected, delivered).
async fn run_once(
    extra: &Extra,
    hub: &ExtraHub,
    bin: &Path,
    token: &str,
    dir: &Path,
    run: usize,
) -> Result<(f64, [u64; 3], Option<String>)> {
    let n = extra.count;
    let all = [n as u64; 3];
    match extra.id {
        "sb-discovery" => {
            let secret = Secret::from_token(token);
            let mut us = Vec::with_capacity(n);
            for _ in 0..n {
                let t = Instant::now();
                let found =
                    switchboard::discover(SERVICE, &secret, false, Duration::from_secs(5)).await?;
                us.push(t.elapsed().as_secs_f64() * 1e6);
                ensure!(
                    found.iter().any(|h| h.addr == hub.addr),
                    "discovery found {} hub(s), not the one started at {}",
                    found.len(),
                    hub.addr
                );
            }
            us.sort_by(f64::total_cmp);
            Ok((failover::percentile(&us, 0.5), all, None))
        }
        "sb-session" => session(hub.addr, token, n, run)
            .await
            .map(|r| (r, all, None)),
        "sb-ws-reqrep" => {
            let a = gateways::ws(hub.http, "a", token).await?;
            let b = gateways::ws(hub.http, "b", token).await?;
            let lat = gateways::native(a, b, n).await?;
            Ok((median_us(lat), all, None))
        }
        "sb-http-reqrep" => {
            let http_token = switchboard::hub::http_token(&Secret::from_token(token));
            let lat = gateways::http(hub.http, &http_token, n).await?;
            Ok((median_us(lat), all, None))
        }
        "sb-unix-pubsub" => {
            let (ratio, note) =
                crate::unix::pubsub_ratio(hub.addr, hub.unix.as_deref(), token, n, run).await?;
            Ok((ratio, all, Some(note)))
        }
        "sb-unix-reqrep" => {
            let (ratio, note) =
                crate::unix::reqrep_ratio(hub.addr, hub.unix.as_deref(), token, n, run).await?;
            Ok((ratio, all, Some(note)))
        }
        "sb-ws-pubsub" => {
            use crate::ratios::{paired, pubsub, Via};
            let (t, w) = paired(
                |r| {
                    pubsub(
                        Via::Tcp(hub.addr),
                        token,
                        n,
                        64,
                        format!("tcp-ws-{run}-{r}"),
                    )
                },
                |r| pubsub(Via::Ws(hub.http), token, n, 64, format!("ws-{run}-{r}")),
                true,
            )
            .await?;
            Ok((
                w / t,
                all,
                Some(format!("ws {w:.0} msgs/s, tcp {t:.0} msgs/s")),
            ))
        }
        "sb-tls-pubsub" | "sb-tls-reqrep" => {
            let rt = dir.join(format!("tls-{run}"));
            let tls = tokio::task::block_in_place(|| crate::tls_rows::start(bin, token, &rt))?;
            let pubsub = extra.id == "sb-tls-pubsub";
            let (ratio, note) =
                crate::tls_rows::ratio(&tls, hub.addr, token, n, run, pubsub).await?;
            Ok((ratio, all, Some(note)))
        }
        "sb-policy-pubsub" => {
            let rt = dir.join(format!("policy-{run}"));
            let policy =
                tokio::task::block_in_place(|| crate::policy_rows::start(bin, token, &rt))?;
            let (ratio, note) = crate::policy_rows::ratio(&policy, hub.addr, token, n, run).await?;
            Ok((ratio, all, Some(note)))
        }
        "sb-failover" => {
            let rt = dir.join(format!("failover-{run}"));
            std::fs::create_dir_all(&rt)?;
            let f = failover::failovers(bin, &rt.join("rt"), n, |_, _| {}).await?;
            let p99 = failover::percentile(&f.times, 0.99);
            let note = format!(
                "p99 {p99:.1} ms of {} kills; {} messages published with confirmation across the kills: {} lost, {} duplicated",
                f.times.len(),
                f.sent,
                f.lost,
                f.duplicates
            );
            Ok((
                failover::percentile(&f.times, 0.5),
                [f.sent, f.sent, f.sent - f.lost.min(f.sent)],
                Some(note),
            ))
        }
        other => Err(anyhow!("unknown extra workload {other}")),
    }
}

fn median_us(mut lat: Vec<u64>) -> f64 {
    lat.sort_unstable();
    lat.get(lat.len() / 2).copied().unwrap_or(0) as f64
}

/// RPCs/s from a session manager to an echoing agent, 16 in flight.
async fn session(addr: SocketAddr, token: &str, n: usize, run: usize) -> Result<f64> {
    let connect = |id: String| {
        switchboard::Client::builder(id)
            .addr(addr.to_string())
            .token(token)
            .connect()
    };
    let agent_id = format!("bench-cpe-{run}");
    let acs = connect(format!("bench-acs-{run}")).await?;
    let cpe = connect(agent_id.clone()).await?;
    let mut opts = ManagerOptions::default();
    opts.config.max_in_flight = 16;
    let manager = acs.session_manager(opts);
    let methods = Methods::new().add("Echo", |p: Bytes| async move { Ok(p) });
    let _agent = cpe.session_agent(acs.id(), AgentConfig::new(agent_id.clone()), methods);
    let payload = Bytes::from(vec![7u8; 64]);
    // Warm up: the first RPC opens the session.
    manager
        .rpc(agent_id.clone(), "Echo", payload.clone())
        .await
        .map_err(|e| anyhow!("first session RPC: {e}"))?;
    let window = Arc::new(tokio::sync::Semaphore::new(16));
    let start = Instant::now();
    let mut pending = Vec::with_capacity(n);
    for _ in 0..n {
        let permit = window.clone().acquire_owned().await?;
        let rpc = manager
            .push(agent_id.clone(), "Echo", payload.clone())
            .await
            .map_err(|e| anyhow!("queueing a session RPC: {e}"))?;
        pending.push(tokio::spawn(async move {
            let r = rpc.await;
            drop(permit);
            r
        }));
    }
    for p in pending {
        let r = p.await?.map_err(|e| anyhow!("session RPC: {e}"))?;
        ensure!(
            r.payload == payload,
            "an RPC result differs from its payload"
        );
    }
    Ok(n as f64 / start.elapsed().as_secs_f64())
}

/// Runs the chosen extra rows `runs` times each and appends their figures.
pub async fn rows(
    chosen: &[Extra],
    runs: usize,
    bin: Option<&Path>,
    token: &str,
    dir: &Path,
    pb: &ProgressBar,
    figures: &mut Vec<Figure>,
) {
    if chosen.is_empty() {
        return;
    }
    let hub = bin
        .context("the `switchboard` binary is not built (these rows need hub processes)")
        .and_then(|bin| Ok((tokio::task::block_in_place(|| start_hub(bin, token))?, bin)));
    for extra in chosen {
        let mut values = Vec::new();
        let mut counts = [0u64; 3];
        let mut error = None;
        let mut note = None;
        for r in 0..runs {
            pb.set_message(format!("{} · run {}/{runs}", extra.id, r + 1));
            let outcome = match &hub {
                Ok((hub, bin)) => tokio::time::timeout(
                    Duration::from_secs(300),
                    run_once(extra, hub, bin, token, dir, r),
                )
                .await
                .unwrap_or_else(|_| Err(anyhow!("timed out after 300 s"))),
                Err(e) => Err(anyhow!("{e:#}")),
            };
            match outcome {
                Ok((v, [s, e, d], n)) => {
                    values.push(v);
                    counts[0] += s;
                    counts[1] += e;
                    counts[2] += d;
                    if n.is_some() {
                        note = n;
                    }
                }
                Err(e) => {
                    let msg = format!("{e:#}");
                    pb.suspend(|| eprintln!("{} · run {} failed: {msg}", extra.id, r + 1));
                    error.get_or_insert(msg);
                }
            }
            pb.inc(1);
        }
        let f = Figure {
            workload: extra.id.to_string(),
            title: extra.title.clone(),
            metric: extra.metric.to_string(),
            lower_is_better: extra.lower_is_better,
            system: "switchboard".to_string(),
            summary: Summary::of(&values),
            runs: values,
            sent: counts[0],
            expected: counts[1],
            delivered: counts[2],
            error,
            note,
        };
        let med = f
            .summary
            .map_or_else(|| "failed".to_string(), |s| s.shown());
        pb.suspend(|| {
            println!(
                "{}\n  switchboard  {:<11} {med}{}\n",
                f.title,
                f.metric,
                f.note
                    .as_ref()
                    .map(|n| format!("  ({n})"))
                    .unwrap_or_default()
            )
        });
        figures.push(f);
    }
}
