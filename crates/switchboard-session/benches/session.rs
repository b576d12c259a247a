//! Session engine figures (a bounded bench binary, not criterion):
//!
//! 1. tasks per second through the agent state machine in-process;
//! 2. RPCs per second over one loopback TCP connection, the manager pushing
//!    without waiting (pipelined), results checked in order;
//! 3. push-to-result latency (p50/p99) of one RPC at a time, strict TR-069.
//!
//! Run: `cargo bench -p switchboard-session --bench session`
//! (`SESSION_BENCH_RPCS` sets the count of figure 2, default 400 000;
//! `SESSION_BENCH_ONLY=core|pipelined|latency` runs one figure;
//! `SESSION_BENCH_THREADS=1` runs both sides on one current-thread runtime,
//! `SESSION_BENCH_THREADS=split` the agent on a thread of its own).

use std::time::{Duration, Instant};

use anyhow::{ensure, Context as _};
use bytes::Bytes;
use switchboard_session::driver::{
    spawn_agent, spawn_manager, AgentOptions, LinkKind, ManagerOptions,
};
use switchboard_session::{Agent, AgentConfig, AgentEvent, Event, ManagerConfig};
use switchboard_wire::proto::{self, session::Body};
use switchboard_wire::FrameCodec;
use tokio::net::{TcpListener, TcpStream};
use tokio_util::codec::Framed;

fn agent_core(tasks: u64) -> (f64, f64) {
    let mut cfg = AgentConfig::new("bench");
    cfg.max_rpcs_per_session = u32::MAX;
    cfg.max_queue = 4096;
    let t0 = Instant::now();
    let mut agent = Agent::new(cfg, 1);
    agent.connected(t0);
    agent
        .add_event(t0, Event::new(Event::BOOT))
        .expect("room for an event");
    while agent.poll_transmit().is_some() {}
    let sid = agent.session_id();
    agent.handle_message(
        t0,
        proto::Session {
            peer: String::new(),
            session_id: sid,
            body: Some(Body::InformResponse(proto::InformResponse {
                max_envelopes: 1,
            })),
        },
    );
    while agent.poll_transmit().is_some() {}
    while agent.poll_event().is_some() {}
    let payload = Bytes::from_static(&[0u8; 64]);
    let mut answered = 0u64;
    let start = Instant::now();
    let cpu0 = cpu_time();
    let mut n = 0u64;
    while n < tasks {
        // A burst of pushes, then run them: the queue + single worker.
        for _ in 0..256 {
            n += 1;
            agent.handle_message(
                start,
                proto::Session {
                    peer: String::new(),
                    session_id: sid,
                    body: Some(Body::Rpc(proto::Rpc {
                        id: n.to_string(),
                        method: "Get".to_owned(),
                        payload: payload.clone(),
                        hold_requests: false,
                    })),
                },
            );
        }
        loop {
            let mut moved = false;
            while let Some(ev) = agent.poll_event() {
                if let AgentEvent::RunTask { task, payload, .. } = ev {
                    agent.task_done(start, task, Ok(payload));
                    moved = true;
                }
            }
            while let Some(m) = agent.poll_transmit() {
                if matches!(m.body, Some(Body::RpcResult(_))) {
                    answered += 1;
                }
                moved = true;
            }
            if !moved {
                break;
            }
        }
    }
    let secs = start.elapsed().as_secs_f64();
    let cpu = (cpu_time() - cpu0).as_secs_f64();
    assert_eq!(answered, n, "every task answered");
    (n as f64 / secs, n as f64 / cpu)
}

/// The agent driver: on the bench's runtime, or alone on its own thread
/// with a current-thread runtime (as if in another process).
enum AgentSide {
    Shared(switchboard_session::driver::AgentHandle),
    Thread(
        tokio::sync::oneshot::Sender<()>,
        std::thread::JoinHandle<()>,
    ),
}

impl AgentSide {
    async fn shutdown(self) -> anyhow::Result<()> {
        match self {
            AgentSide::Shared(a) => a.shutdown().await?,
            AgentSide::Thread(stop, join) => {
                let _ = stop.send(());
                tokio::task::spawn_blocking(move || join.join())
                    .await?
                    .map_err(|_| anyhow::anyhow!("agent thread panicked"))?;
            }
        }
        Ok(())
    }
}

fn spawn_bench_agent(
    addr: std::net::SocketAddr,
    max_in_flight: usize,
) -> switchboard_session::driver::AgentHandle {
    let mut cfg = AgentConfig::new("bench-agent");
    cfg.max_rpcs_per_session = u32::MAX;
    cfg.max_queue = max_in_flight.max(16) * 2;
    spawn_agent(
        AgentOptions::new(cfg),
        move || async move {
            let s = TcpStream::connect(addr).await?;
            s.set_nodelay(true)?;
            Ok(Framed::new(s, FrameCodec::default()))
        },
        |_m: String, p: Bytes| async move { Ok(p) },
    )
}

async fn loopback_pair(
    max_in_flight: usize,
    split: bool,
) -> anyhow::Result<(switchboard_session::driver::ManagerHandle, AgentSide)> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let manager = spawn_manager(ManagerOptions {
        config: ManagerConfig {
            max_in_flight,
            max_rpcs_per_session: u32::MAX,
            max_queue: 1_000_000,
            ..ManagerConfig::default()
        },
        link_queue: 1 << 16,
        ..ManagerOptions::default()
    });
    let m = manager.clone();
    tokio::spawn(async move {
        while let Ok((s, _)) = listener.accept().await {
            let _ = s.set_nodelay(true);
            if m.attach(Framed::new(s, FrameCodec::default()), LinkKind::Direct)
                .await
                .is_err()
            {
                return;
            }
        }
    });
    let agent = if split {
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let join = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("agent runtime");
            rt.block_on(async move {
                let agent = spawn_bench_agent(addr, max_in_flight);
                let _ = stopped.await;
                let _ = agent.shutdown().await;
            });
            AGENT_THREAD_CPU_US.store(
                thread_cpu_time().as_micros() as u64,
                std::sync::atomic::Ordering::SeqCst,
            );
        });
        AgentSide::Thread(stop, join)
    } else {
        AgentSide::Shared(spawn_bench_agent(addr, max_in_flight))
    };
    // Warm up: the first session opens with the boot event.
    manager.rpc("bench-agent", "Echo", Bytes::new()).await?;
    Ok((manager, agent))
}

/// CPU time of the agent's own thread in split mode, set when it stops.
static AGENT_THREAD_CPU_US: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// CPU time (user + system) of the calling thread.
fn thread_cpu_time() -> Duration {
    // SAFETY: getrusage only writes the struct it is given.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: a valid pointer to a rusage struct.
    if unsafe { libc::getrusage(libc::RUSAGE_THREAD, &mut ru) } != 0 {
        return Duration::ZERO;
    }
    let tv = |t: libc::timeval| {
        Duration::from_secs(t.tv_sec as u64) + Duration::from_micros(t.tv_usec as u64)
    };
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

/// CPU time (user + system) this process has used so far.
fn cpu_time() -> Duration {
    // SAFETY: getrusage only writes the struct it is given.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: a valid pointer to a rusage struct.
    if unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) } != 0 {
        return Duration::ZERO;
    }
    let tv = |t: libc::timeval| {
        Duration::from_secs(t.tv_sec as u64) + Duration::from_micros(t.tv_usec as u64)
    };
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

async fn pipelined(rpcs: u64, split: bool) -> anyhow::Result<(f64, f64)> {
    let (manager, agent) = loopback_pair(1024, split).await?;
    let start = Instant::now();
    let cpu0 = cpu_time();
    let m = manager.clone();
    let pusher = tokio::spawn(async move {
        let mut pending = std::collections::VecDeque::with_capacity(rpcs as usize);
        for n in 0..rpcs {
            pending.push_back((
                n,
                m.push(
                    "bench-agent",
                    "Echo",
                    Bytes::copy_from_slice(&n.to_be_bytes()),
                )
                .await?,
            ));
        }
        Ok::<_, anyhow::Error>(pending)
    });
    let pending = pusher.await??;
    for (n, p) in pending {
        let r = p.await?;
        ensure!(
            r.payload.as_ref() == n.to_be_bytes(),
            "result {n} out of order"
        );
    }
    let secs = start.elapsed().as_secs_f64();
    let cpu = (cpu_time() - cpu0).as_secs_f64();
    agent.shutdown().await?;
    manager.shutdown().await;
    Ok((rpcs as f64 / secs, rpcs as f64 / cpu))
}

async fn latency(rounds: usize, split: bool) -> anyhow::Result<(Duration, Duration)> {
    let (manager, agent) = loopback_pair(1, split).await?;
    let mut samples = Vec::with_capacity(rounds);
    for n in 0..rounds {
        let t = Instant::now();
        let r = manager
            .rpc(
                "bench-agent",
                "Echo",
                Bytes::copy_from_slice(&(n as u64).to_be_bytes()),
            )
            .await?;
        samples.push(t.elapsed());
        ensure!(r.payload.len() == 8);
    }
    samples.sort();
    agent.shutdown().await?;
    manager.shutdown().await;
    Ok((samples[rounds / 2], samples[rounds * 99 / 100]))
}

fn main() -> anyhow::Result<()> {
    // `cargo bench` passes `--bench`; nothing else is parsed.
    let rpcs: u64 = std::env::var("SESSION_BENCH_RPCS")
        .ok()
        .map(|v| v.parse())
        .transpose()
        .context("SESSION_BENCH_RPCS must be a number")?
        .unwrap_or(400_000);
    let only = std::env::var("SESSION_BENCH_ONLY").unwrap_or_default();
    for run in 1..=2 {
        if !only.is_empty() && only != "core" {
            break;
        }
        let (rate, per_cpu) = agent_core(2_000_000);
        println!("agent core, in-process (run {run}): {rate:.0} tasks/s wall, {per_cpu:.0} tasks per cpu-second");
    }
    // SESSION_BENCH_THREADS=1: one current-thread runtime for both sides (no
    // cross-thread wake-ups); =split: the manager on one current-thread
    // runtime, the agent on another thread (like two processes); default:
    // 2 worker threads shared by both sides.
    let mode = std::env::var("SESSION_BENCH_THREADS").unwrap_or_default();
    let split = mode == "split";
    let threads: usize = if split { 1 } else { mode.parse().unwrap_or(2) };
    let rt = if threads <= 1 {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(threads)
            .enable_all()
            .build()?
    };
    if split {
        println!("tokio runtimes: manager and agent on one thread each");
    } else {
        println!("tokio runtime: {threads} thread(s) shared by both sides");
    }
    for run in 1..=2 {
        if !only.is_empty() && only != "pipelined" {
            break;
        }
        let (rate, per_cpu) = rt.block_on(pipelined(rpcs, split))?;
        if split {
            let agent_us = AGENT_THREAD_CPU_US.load(std::sync::atomic::Ordering::SeqCst) as f64;
            println!(
                "  agent thread: {:.2} us of cpu per rpc (whole life of the thread, warm-up included)",
                agent_us / rpcs as f64
            );
        }
        println!(
            "one loopback connection, pipelined (run {run}, {rpcs} rpcs, in order): {rate:.0} rpcs/s wall, \
             {per_cpu:.0} rpcs per cpu-second (both sides in this process)"
        );
    }
    if !only.is_empty() && only != "latency" {
        return Ok(());
    }
    let (p50, p99) = rt.block_on(latency(20_000, split))?;
    println!("push-to-result latency, one at a time: p50 {p50:?}, p99 {p99:?}");
    Ok(())
}
