//! Time to discover a hub by each path.
//!
//! Run: `cargo bench -p switchboard-discovery --bench discovery`
//! (optional argument: `hint`, `table` or `scan` to run one part).
//!
//! * hint: a hub with a hint file; hints only.
//! * table: a hub plus ~1,000 foreign listeners of the same user that
//!   never answer; hints disabled, scan disabled ("first" mode).
//! * scan: a full scan of 1025-65535 on 127.0.0.1 for a service no hub
//!   serves ("all" mode, so every port is tried); table and hints disabled;
//!   with the bind check (default), then connecting to every port.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use futures::{SinkExt, StreamExt};
use switchboard_discovery::{
    answer_probe, bind, discover, new_instance_id, proto, BindOptions, DiscoverError,
    DiscoverOptions, Hint, PortChoice, Secret, Via,
};
use switchboard_wire::{Frame, FrameCodec, Kind};
use tokio::net::TcpListener;
use tokio_util::codec::Framed;

const V4: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

fn main() -> Result<()> {
    let which = std::env::args()
        .skip(1)
        .find(|a| !a.starts_with('-'))
        .unwrap_or_default();
    raise_fd_limit();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        println!(
            "switchboard-discovery bench, {} cores",
            std::thread::available_parallelism().map_or(1, |n| n.get())
        );
        if which.is_empty() || which == "hint" {
            bench_hint().await?;
        }
        if which.is_empty() || which == "table" {
            bench_table().await?;
        }
        if which.is_empty() || which == "scan" {
            bench_scan().await?;
        }
        Ok(())
    })
}

fn raise_fd_limit() {
    #[cfg(unix)]
    {
        let mut lim = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: `lim` is a valid rlimit for getrlimit/setrlimit to use.
        unsafe {
            if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 && lim.rlim_cur < lim.rlim_max {
                lim.rlim_cur = lim.rlim_max.min(65536);
                libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
            }
        }
    }
}

/// User + system CPU time of the whole process.
fn cpu_time() -> Duration {
    #[cfg(unix)]
    {
        // SAFETY: `ru` is a valid, writable rusage.
        let ru = unsafe {
            let mut ru: libc::rusage = std::mem::zeroed();
            libc::getrusage(libc::RUSAGE_SELF, &mut ru);
            ru
        };
        let tv = |t: libc::timeval| {
            Duration::from_secs(t.tv_sec as u64) + Duration::from_micros(t.tv_usec as u64)
        };
        tv(ru.ru_utime) + tv(ru.ru_stime)
    }
    #[cfg(not(unix))]
    {
        Duration::ZERO
    }
}

struct Hub {
    addr: SocketAddr,
    identity: proto::HubIdentity,
}

async fn start_hub(service: &str, secret: &Secret) -> Result<Hub> {
    let l = bind(&BindOptions::default()).await?;
    let addr = l.local_addr()?;
    let identity = proto::HubIdentity {
        service: service.into(),
        instance_id: new_instance_id(),
        pid: std::process::id(),
        port: addr.port().into(),
        role: proto::Role::Primary as i32,
        ..Default::default()
    };
    let (id, sec) = (identity.clone(), secret.clone());
    tokio::spawn(async move {
        while let Ok((s, _)) = l.accept().await {
            let (id, sec) = (id.clone(), sec.clone());
            tokio::spawn(async move {
                let mut f = Framed::new(s, FrameCodec::with_max_frame(4096));
                if let Some(Ok(Frame {
                    kind: Some(Kind::Probe(p)),
                    ..
                })) = f.next().await
                {
                    if let Some(r) = answer_probe(&p, &id, &sec) {
                        let _ = f.send(Frame::from(r)).await;
                    }
                }
            });
        }
    });
    Ok(Hub { addr, identity })
}

fn report(name: &str, mut samples: Vec<Duration>, goal: Option<Duration>) {
    samples.sort();
    let pick = |q: f64| samples[((samples.len() - 1) as f64 * q).round() as usize];
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    println!(
        "{name:<34} n={:<4} min {:>8.3} ms  p50 {:>8.3} ms  p90 {:>8.3} ms  max {:>8.3} ms  {}",
        samples.len(),
        ms(samples[0]),
        ms(pick(0.5)),
        ms(pick(0.9)),
        ms(*samples.last().unwrap()),
        goal.map(|g| format!("(goal <= {} ms)", g.as_millis()))
            .unwrap_or_default()
    );
}

async fn bench_hint() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let secret = Secret::random();
    let hub = start_hub("bench-hint", &secret).await?;
    let _g = Hint::new("bench-hint", hub.addr, &hub.identity.instance_id).write_in(dir.path())?;
    let o = DiscoverOptions {
        hint_dirs: vec![dir.path().to_owned()],
        secret: Some(secret),
        use_table: false,
        use_scan: false,
        ..Default::default()
    };
    let mut samples = Vec::new();
    for i in 0..520 {
        let t = Instant::now();
        let found = discover("bench-hint", &o).await?;
        let took = t.elapsed();
        if found[0].addr != hub.addr || found[0].via != Via::Hint {
            bail!("wrong hub found: {found:?}");
        }
        if i >= 20 {
            samples.push(took);
        }
    }
    report("hint", samples, Some(Duration::from_millis(2)));
    Ok(())
}

async fn bench_table() -> Result<()> {
    let secret = Secret::random();
    // Foreign listeners of this user that accept nothing and never answer.
    let mut foreign: Vec<TcpListener> = Vec::new();
    for _ in 0..1000 {
        foreign.push(
            bind(&BindOptions {
                ip: V4,
                port: PortChoice::Os,
                ..Default::default()
            })
            .await
            .context("binding foreign listeners")?,
        );
    }
    let hub = start_hub("bench-table", &secret).await?;
    let o = DiscoverOptions {
        secret: Some(secret),
        use_hints: false,
        use_scan: false,
        ..Default::default()
    };
    let listeners = switchboard_discovery::table::listening()
        .map(|t| {
            t.listeners
                .iter()
                .filter(|l| l.uid == switchboard_discovery::current_uid())
                .count()
        })
        .unwrap_or(0);
    println!("table: {listeners} listening sockets of this user (1000 foreign + hub + others on the machine)");
    let mut samples = Vec::new();
    for i in 0..42 {
        let t = Instant::now();
        let found = discover("bench-table", &o).await?;
        let took = t.elapsed();
        if found[0].addr != hub.addr || found[0].via != Via::Table {
            bail!("wrong hub found: {found:?}");
        }
        if i >= 2 {
            samples.push(took);
        }
    }
    report(
        "table (1000 foreign listeners)",
        samples,
        Some(Duration::from_millis(20)),
    );
    drop(foreign);
    Ok(())
}

async fn bench_scan() -> Result<()> {
    // With the bind check (the default), then connecting to every port.
    for (label, bind_check) in [
        ("full scan 1025-65535", true),
        ("full scan, connect to every port", false),
    ] {
        let o = DiscoverOptions {
            secret: Some(Secret::random()),
            use_hints: false,
            use_table: false,
            all: true,
            bind_check,
            ..Default::default()
        };
        let mut samples = Vec::new();
        let mut cpu = Vec::new();
        for i in 0..7 {
            let c = cpu_time();
            let t = Instant::now();
            let r = discover("bench-nothing-here", &o).await;
            let took = t.elapsed();
            let used = cpu_time().saturating_sub(c);
            match r {
                Err(DiscoverError::NotFound { tried, .. }) => {
                    if i == 0 {
                        println!("scan: {tried}");
                    }
                    let (_, n) = tried.scanned.context("scan did not run")?;
                    if n != 64511 {
                        bail!("only {n} of 64511 ports scanned");
                    }
                }
                other => bail!("unexpected result: {other:?}"),
            }
            if i >= 1 {
                samples.push(took);
                cpu.push(used);
            }
        }
        report(label, samples, Some(Duration::from_millis(1000)));
        report("  cpu time of that scan", cpu, None);
        println!(
            "load average: {}",
            std::fs::read_to_string("/proc/loadavg")
                .unwrap_or_default()
                .trim()
        );
    }
    Ok(())
}
