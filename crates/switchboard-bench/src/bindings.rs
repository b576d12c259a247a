//! The binding rows: 1→1 pub/sub throughput and request/reply latency
//! through the Python package (`crates/switchboard-py`) and through
//! libswitchboard (`crates/switchboard-c`), each next to the Rust client
//! doing the same workload on the same hub in the same run, and the Python
//! rows also next to nats-py on nats-server (same interpreter). The
//! Python and C sides are programs of their own
//! (`py/bench_client.py`, `c/bench_client.c`) that print one JSON line.
//!
//! Full mode builds what they need in release mode: `cargo build
//! --release -p switchboard-c`, a venv `target/bench-py-venv` with
//! maturin and nats-py from PyPI and `maturin develop --release`, and the
//! C program with `gcc -O2`. Quick mode builds nothing: it runs tiny
//! counts against the debug artifacts the CI's test steps already made
//! (`target/py-venv`, `target/debug/libswitchboard.so`) and skips, with a
//! message, whatever is missing. A row that cannot run is skipped with a
//! message, never an error of the harness.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use bytes::Bytes;
use indicatif::ProgressBar;

use crate::ratios::{pubsub, Via};
use crate::report::Figure;
use crate::stats::Summary;

/// Payload of every binding row.
const SIZE: usize = 64;
/// Publishes in flight (Python: gathered batches; C: publishing threads;
/// Rust: `ratios::WINDOW`, also 64).
const WINDOW: usize = 64;

/// The binding workloads' ids (for `--workloads`).
pub const IDS: [&str; 4] = [
    "bind-py-pubsub",
    "bind-py-reqrep",
    "bind-c-pubsub",
    "bind-c-reqrep",
];

/// System names of the binding rows.
const PY: &str = "Python binding";
const C: &str = "C binding";
const RUST: &str = "Rust client";
const NATS_PY: &str = "nats-py on nats-server";

/// Where the workspace lives and its target directory.
fn paths() -> (PathBuf, PathBuf) {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .ancestors()
        .nth(2)
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."));
    // target/<profile>/switchboard-bench
    let target = std::env::current_exe()
        .ok()
        .and_then(|e| e.parent()?.parent().map(Path::to_path_buf))
        .unwrap_or_else(|| root.join("target"));
    (root, target)
}

fn run_ok(what: &str, cmd: &mut Command) -> Result<String> {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("{what}: could not start"))?;
    if !out.status.success() {
        bail!(
            "{what} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
                .lines()
                .rev()
                .take(6)
                .collect::<Vec<_>>()
                .into_iter()
                .rev()
                .collect::<Vec<_>>()
                .join(" | ")
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The interpreter to run the Python rows with, and whether nats-py
/// imports in it.
fn prepare_python(quick: bool) -> Result<(PathBuf, bool)> {
    let (root, target) = paths();
    let venv = if quick {
        target.join("py-venv")
    } else {
        target.join("bench-py-venv")
    };
    let python = venv.join("bin/python");
    if !quick {
        if !python.is_file() {
            run_ok(
                "python3 -m venv",
                Command::new("python3").args(["-m", "venv"]).arg(&venv),
            )?;
        }
        run_ok(
            "pip install maturin nats-py",
            Command::new(venv.join("bin/pip")).args([
                "install",
                "-q",
                "--disable-pip-version-check",
                "maturin",
                "nats-py",
            ]),
        )?;
        run_ok(
            "maturin develop --release",
            Command::new(venv.join("bin/maturin"))
                .args(["develop", "--release", "--quiet", "-m"])
                .arg(root.join("crates/switchboard-py/Cargo.toml"))
                .env("VIRTUAL_ENV", &venv)
                .env("CARGO_TARGET_DIR", &target),
        )?;
    } else if !python.is_file() {
        bail!(
            "no {} (made by .ci/run's Python step); quick mode builds nothing",
            python.display()
        );
    }
    let check = run_ok(
        "bench_client.py check",
        Command::new(&python).arg(script()).arg("check"),
    )?;
    let v: serde_json::Value = serde_json::from_str(check.trim()).context("check output")?;
    ensure!(
        !v["switchboard"].is_null(),
        "the switchboard package does not import in {}: {}",
        python.display(),
        v["switchboard_error"]
    );
    Ok((python, !v["nats"].is_null()))
}

fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("py/bench_client.py")
}

/// The compiled C bench program (in `dir`), linked to libswitchboard.
fn prepare_c(quick: bool, dir: &Path) -> Result<PathBuf> {
    let (root, target) = paths();
    let profile = if quick { "debug" } else { "release" };
    if !quick {
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        run_ok(
            "cargo build --release -p switchboard-c",
            Command::new(cargo).current_dir(&root).args([
                "build",
                "--release",
                "-p",
                "switchboard-c",
            ]),
        )?;
    }
    let lib_dir = target.join(profile);
    ensure!(
        lib_dir.join("libswitchboard.so").is_file(),
        "no {}/libswitchboard.so (quick mode builds nothing)",
        lib_dir.display()
    );
    let exe = dir.join("bench_client_c");
    run_ok(
        "gcc -O2 bench_client.c",
        Command::new(std::env::var_os("CC").unwrap_or_else(|| "gcc".into()))
            .arg("-O2")
            .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("c/bench_client.c"))
            .arg("-I")
            .arg(root.join("crates/switchboard-c/include"))
            .arg("-L")
            .arg(&lib_dir)
            .arg(format!("-Wl,-rpath,{}", lib_dir.display()))
            .args(["-lswitchboard", "-lpthread", "-o"])
            .arg(&exe),
    )?;
    Ok(exe)
}

/// One line of JSON from a bench program.
fn json_of(what: &str, cmd: &mut Command) -> Result<serde_json::Value> {
    let out = run_ok(what, cmd)?;
    let line = out.lines().last().unwrap_or_default();
    serde_json::from_str(line).with_context(|| format!("{what}: output `{line}`"))
}

/// A throughput or latency result of one run: values by metric, and
/// (sent, delivered).
struct Sample {
    values: Vec<f64>,
    sent: u64,
    delivered: u64,
}

fn from_json(v: &serde_json::Value, pubsub_row: bool) -> Result<Sample> {
    let num = |k: &str| v[k].as_f64().with_context(|| format!("no `{k}` in {v}"));
    let values = if pubsub_row {
        vec![num("rate")?]
    } else {
        vec![num("p50")?, num("p99")?]
    };
    Ok(Sample {
        values,
        sent: num("sent")? as u64,
        delivered: num("delivered")? as u64,
    })
}

/// The Rust client's request/reply p50 and p99 (µs) over `n` sequential
/// requests to an echoing client.
async fn rust_reqrep(addr: SocketAddr, token: &str, n: usize, tag: &str) -> Result<Sample> {
    let builder = |id: String| {
        switchboard::Client::builder(id)
            .addr(addr.to_string())
            .token(token)
    };
    let server_id = format!("bench-rs-echo-{tag}");
    let server = builder(server_id.clone()).connect().await?;
    let serving = server
        .serve(|req| async move { Ok::<_, String>(req.payload().clone()) })
        .await?;
    let asker = builder(format!("bench-rs-ask-{tag}")).connect().await?;
    let payload = Bytes::from(vec![7u8; SIZE]);
    let mut us = Vec::with_capacity(n);
    let mut ok = 0;
    for _ in 0..n {
        let t = Instant::now();
        let reply = asker.request(&server_id, payload.clone()).await?;
        us.push(t.elapsed().as_secs_f64() * 1e6);
        ok += u64::from(reply == payload);
    }
    us.sort_by(f64::total_cmp);
    drop(serving);
    asker.close().await;
    server.close().await;
    let p99 = us[((us.len() as f64 * 0.99) as usize).min(us.len() - 1)];
    Ok(Sample {
        values: vec![us[us.len() / 2], p99],
        sent: n as u64,
        delivered: ok,
    })
}

/// What one binding row needs to run.
pub struct Env<'a> {
    /// Quick mode: tiny counts, debug artifacts, nothing built.
    pub quick: bool,
    /// Runs per figure.
    pub runs: usize,
    /// The hub the rows use.
    pub hub: SocketAddr,
    /// A nats-server for nats-py, if one runs.
    pub nats: Option<SocketAddr>,
    /// The hub's token.
    pub token: &'a str,
    /// Scratch directory of this run.
    pub dir: &'a Path,
}

/// Accumulates one system's runs of one workload.
struct Acc {
    system: &'static str,
    values: Vec<Vec<f64>>,
    sent: u64,
    delivered: u64,
    error: Option<String>,
}

impl Acc {
    fn new(system: &'static str, metrics: usize) -> Acc {
        Acc {
            system,
            values: vec![Vec::new(); metrics],
            sent: 0,
            delivered: 0,
            error: None,
        }
    }

    fn add(&mut self, r: Result<Sample>, what: &str, pb: &ProgressBar) {
        match r {
            Ok(s) => {
                for (m, v) in s.values.into_iter().enumerate() {
                    self.values[m].push(v);
                }
                self.sent += s.sent;
                self.delivered += s.delivered;
            }
            Err(e) => {
                let msg = format!("{e:#}");
                pb.suspend(|| eprintln!("{what} · {}: {msg}", self.system));
                self.error.get_or_insert(msg);
            }
        }
    }
}

/// Runs the chosen binding rows (`chosen` holds ids of [`IDS`]) and
/// appends their figures; what cannot run is skipped with a message.
pub async fn rows(env: &Env<'_>, chosen: &[&str], pb: &ProgressBar, figures: &mut Vec<Figure>) {
    let want = |id: &str| chosen.contains(&id);
    let py_wanted = want(IDS[0]) || want(IDS[1]);
    let c_wanted = want(IDS[2]) || want(IDS[3]);
    let python = if py_wanted {
        pb.set_message("bindings · preparing the Python package");
        match tokio::task::block_in_place(|| prepare_python(env.quick)) {
            Ok(p) => Some(p),
            Err(e) => {
                pb.suspend(|| eprintln!("binding rows: Python rows skipped: {e:#}"));
                None
            }
        }
    } else {
        None
    };
    let c_exe = if c_wanted {
        pb.set_message("bindings · building libswitchboard and the C program");
        match tokio::task::block_in_place(|| prepare_c(env.quick, env.dir)) {
            Ok(p) => Some(p),
            Err(e) => {
                pb.suspend(|| eprintln!("binding rows: C rows skipped: {e:#}"));
                None
            }
        }
    } else {
        None
    };
    let q = |quick: usize, full: usize| if env.quick { quick } else { full };
    let (n_pub, n_req) = (q(2_000, 100_000), q(200, 5_000));
    for id in IDS.iter().copied().filter(|id| want(id)) {
        let py_row = id.starts_with("bind-py");
        let pubsub_row = id.ends_with("pubsub");
        let (lang, ours) = if py_row { ("Python", PY) } else { ("C", C) };
        if (py_row && python.is_none()) || (!py_row && c_exe.is_none()) {
            continue;
        }
        let nats_ok = py_row && python.as_ref().is_some_and(|p| p.1) && env.nats.is_some();
        if py_row && !nats_ok {
            pb.suspend(|| {
                eprintln!("{id}: nats-py row skipped (nats-py does not import or no nats-server)")
            });
        }
        let n = if pubsub_row { n_pub } else { n_req };
        let metrics: &[(&str, bool)] = if pubsub_row {
            &[("msgs/s", false)]
        } else {
            &[("p50 µs", true), ("p99 µs", true)]
        };
        let title = if pubsub_row {
            format!("{lang} binding: pub/sub 1→1, {SIZE} B, {n} msgs — counted at the receiver")
        } else {
            format!("{lang} binding: request/reply sequential, {SIZE} B, {n} requests")
        };
        let mut accs = vec![Acc::new(ours, metrics.len()), Acc::new(RUST, metrics.len())];
        if nats_ok {
            accs.push(Acc::new(NATS_PY, metrics.len()));
        }
        pb.inc_length((accs.len() * env.runs) as u64);
        for r in 0..env.runs {
            let tag = format!("{id}-{r}");
            // Alternate who goes first, so a burst of load on the shared
            // machine does not land on one side only.
            let mut order: Vec<usize> = (0..accs.len()).collect();
            if r % 2 == 1 {
                order.reverse();
            }
            for i in order {
                let system = accs[i].system;
                pb.set_message(format!("{id} · {system} · run {}/{}", r + 1, env.runs));
                let limit = Duration::from_secs(if env.quick { 60 } else { 300 });
                let work = async {
                    match system {
                        RUST if pubsub_row => {
                            pubsub(Via::Tcp(env.hub), env.token, n, SIZE, tag.clone())
                                .await
                                .map(|rate| Sample {
                                    values: vec![rate],
                                    sent: n as u64,
                                    delivered: n as u64,
                                })
                        }
                        RUST => rust_reqrep(env.hub, env.token, n, &tag).await,
                        C => {
                            let exe = c_exe.as_ref().expect("checked above");
                            let mut cmd = Command::new(exe);
                            cmd.arg(if pubsub_row { "pubsub" } else { "reqrep" })
                                .arg(env.hub.to_string())
                                .arg(env.token)
                                .arg(n.to_string())
                                .arg(SIZE.to_string())
                                .arg(WINDOW.to_string());
                            tokio::task::block_in_place(|| json_of("C bench program", &mut cmd))
                                .and_then(|v| from_json(&v, pubsub_row))
                        }
                        _ => {
                            let (python, _) = python.as_ref().expect("checked above");
                            let sb = system == PY;
                            let mode = match (sb, pubsub_row) {
                                (true, true) => "sb-pubsub",
                                (true, false) => "sb-reqrep",
                                (false, true) => "nats-pubsub",
                                (false, false) => "nats-reqrep",
                            };
                            let addr = if sb { Some(env.hub) } else { env.nats };
                            let mut cmd = Command::new(python);
                            cmd.arg(script())
                                .arg(mode)
                                .arg("--addr")
                                .arg(addr.map(|a| a.to_string()).unwrap_or_default())
                                .arg("--token")
                                .arg(env.token)
                                .arg("--n")
                                .arg(n.to_string())
                                .arg("--size")
                                .arg(SIZE.to_string())
                                .arg("--tag")
                                .arg(&tag);
                            tokio::task::block_in_place(|| json_of("bench_client.py", &mut cmd))
                                .and_then(|v| from_json(&v, pubsub_row))
                        }
                    }
                };
                let out = tokio::time::timeout(limit, work)
                    .await
                    .unwrap_or_else(|_| Err(anyhow::anyhow!("timed out after {limit:?}")));
                accs[i].add(out, id, pb);
                pb.inc(1);
            }
        }
        let mut lines = String::new();
        for (m, (metric, lower)) in metrics.iter().enumerate() {
            let summary = |a: &Acc| Summary::of(&a.values[m]);
            let median = |a: &Acc| summary(a).map(|s| s.median);
            let ratio = |a: &Acc, b: &Acc| match (median(a), median(b)) {
                (Some(x), Some(y)) if x > 0.0 && y > 0.0 => {
                    Some(if *lower { y / x } else { x / y })
                }
                _ => None,
            };
            let mut note_parts = Vec::new();
            if let Some(rr) = ratio(&accs[0], &accs[1]) {
                note_parts.push(format!("{rr:.2}× the Rust client"));
            }
            if let Some(rn) = accs.get(2).and_then(|n| ratio(&accs[0], n)) {
                note_parts.push(format!("{rn:.2}× nats-py"));
            }
            // The goals name throughput and p50, not p99.
            let goal = match (py_row, pubsub_row, m) {
                (_, _, 1..) => "",
                (true, true, _) => "; goal ≥ 1.5× nats-py",
                (true, false, _) => "; goal: p50 ≤ nats-py's (≥ 1.00×)",
                (false, _, _) => "; goal: within 10 % of the Rust client (≥ 0.90×)",
            };
            for (k, a) in accs.iter().enumerate() {
                let note = if k == 0 && !note_parts.is_empty() {
                    // Which publish each side uses (the Rust client's is
                    // confirmed, nats-py's is not).
                    let kind = if py_row && pubsub_row && m == 0 {
                        "; publish_nowait: queued, not confirmed, like nats-py's"
                    } else {
                        ""
                    };
                    Some(format!(
                        "{} (above 1× is better{goal}){kind}",
                        note_parts.join(", ")
                    ))
                } else if a.system == NATS_PY && pubsub_row {
                    Some("same interpreter; publishes buffered, not confirmed".to_string())
                } else if a.system == NATS_PY {
                    Some("same interpreter".to_string())
                } else if a.system == RUST && pubsub_row {
                    Some(format!(
                        "same workload and hub, {WINDOW} confirmed publishes in flight"
                    ))
                } else if a.system == RUST {
                    Some("same workload and hub".to_string())
                } else {
                    None
                };
                let f = Figure {
                    workload: id.to_string(),
                    title: title.clone(),
                    metric: metric.to_string(),
                    lower_is_better: *lower,
                    system: a.system.to_string(),
                    summary: summary(a),
                    runs: a.values[m].clone(),
                    sent: a.sent,
                    expected: a.sent,
                    delivered: a.delivered,
                    error: a.error.clone(),
                    note,
                };
                let med = f
                    .summary
                    .map_or_else(|| "failed".to_string(), |s| s.shown());
                lines.push_str(&format!(
                    "  {:<24} {:<8} {med}  delivered {}/{}{}\n",
                    f.system,
                    f.metric,
                    f.delivered,
                    f.expected,
                    f.note
                        .as_ref()
                        .map(|n| format!("  ({n})"))
                        .unwrap_or_default()
                ));
                figures.push(f);
            }
        }
        pb.suspend(|| println!("{title}\n{lines}"));
    }
}
