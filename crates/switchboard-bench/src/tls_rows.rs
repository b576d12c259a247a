//! The TLS rows: what TLS costs, as a ratio of the same workload on a
//! TLS hub to a plaintext one, measured back to back in the same run:
//! 1→1 pub/sub throughput at 1 KiB (goal: TLS keeps ≥ 75 %), and
//! request/reply p50 latency. The TLS hub is a process started with a
//! certificate made for the run (rcgen; nothing is kept).

use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use bytes::Bytes;
use futures::StreamExt;
use switchboard::{Client, TlsOptions};

use crate::procs::{self, ProcGuard};

/// Payload of the pub/sub row.
const PUBSUB_PAYLOAD: usize = 1024;
/// Payload of the request/reply row.
const REQREP_PAYLOAD: usize = 64;

/// A TLS hub process and the CA that trusts it.
pub struct TlsHub {
    _guard: ProcGuard,
    addr: SocketAddr,
    ca_pem: String,
}

/// Starts a TLS hub with a fresh certificate for 127.0.0.1 (files in
/// `dir`).
pub fn start(bin: &Path, token: &str, dir: &Path) -> Result<TlsHub> {
    let ca_key = rcgen::KeyPair::generate()?;
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new())?;
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca = rcgen::CertifiedIssuer::self_signed(ca_params, ca_key)?;
    let key = rcgen::KeyPair::generate()?;
    let cert = rcgen::CertificateParams::new(vec!["127.0.0.1".to_owned()])?.signed_by(&key, &ca)?;
    std::fs::create_dir_all(dir)?;
    let (cert_file, key_file) = (dir.join("hub.pem"), dir.join("hub.key"));
    std::fs::write(&cert_file, cert.pem())?;
    std::fs::write(&key_file, key.serialize_pem())?;
    let mut cmd = Command::new(bin);
    cmd.args(["--service", "switchboard-bench-tls", "--json", "hub"])
        .args(["--listen", "127.0.0.1:0", "--tls-cert"])
        .arg(&cert_file)
        .arg("--tls-key")
        .arg(&key_file)
        .env("SWITCHBOARD_TOKEN", token);
    let (guard, rest) =
        procs::spawn_with_ready_line("switchboard hub (tls)", cmd, "{", Duration::from_secs(10))?;
    let ready: serde_json::Value =
        serde_json::from_str(&format!("{{{rest}")).context("the TLS hub's ready line")?;
    let addr = ready["addr"]
        .as_str()
        .context("no `addr` in the TLS hub's ready line")?
        .parse()?;
    Ok(TlsHub {
        _guard: guard,
        addr,
        ca_pem: ca.pem(),
    })
}

/// A connected client at `addr`, over TLS when `ca_pem` is given.
async fn client(id: &str, addr: SocketAddr, token: &str, ca_pem: Option<&str>) -> Result<Client> {
    let b = Client::builder(id).addr(addr.to_string()).token(token);
    let b = match ca_pem {
        Some(ca) => b.tls(TlsOptions::ca_pem(ca)),
        None => b,
    };
    Ok(b.connect().await?)
}

/// Messages/s of `n` 1 KiB publishes from one client to one subscriber.
async fn pubsub(addr: SocketAddr, token: &str, ca: Option<&str>, n: usize) -> Result<f64> {
    let sub = client("bench-tls-sub", addr, token, ca).await?;
    let publisher = client("bench-tls-pub", addr, token, ca).await?;
    let mut stream = sub.subscribe("bench.tls").await?;
    let payload = Bytes::from(vec![7u8; PUBSUB_PAYLOAD]);
    let start = Instant::now();
    let sending = {
        let publisher = publisher.clone();
        tokio::spawn(async move {
            for _ in 0..n {
                publisher.publish("bench.tls", payload.clone()).await?;
            }
            anyhow::Ok(())
        })
    };
    for _ in 0..n {
        let got = tokio::time::timeout(Duration::from_secs(30), stream.next()).await?;
        ensure!(got.is_some(), "the subscription ended early");
    }
    sending.await??;
    let rate = n as f64 / start.elapsed().as_secs_f64();
    publisher.close().await;
    sub.close().await;
    Ok(rate)
}

/// p50 µs of `n` sequential 64 B requests to an echoing responder.
async fn reqrep(addr: SocketAddr, token: &str, ca: Option<&str>, n: usize) -> Result<f64> {
    let echo = client("bench-tls-echo", addr, token, ca).await?;
    let _serving = echo
        .serve(|req| async move { Ok::<_, String>(Bytes::copy_from_slice(req.payload())) })
        .await?;
    let user = client("bench-tls-user", addr, token, ca).await?;
    let payload = Bytes::from(vec![7u8; REQREP_PAYLOAD]);
    let mut us = Vec::with_capacity(n);
    for _ in 0..n {
        let t = Instant::now();
        user.request("bench-tls-echo", payload.clone()).await?;
        us.push(t.elapsed().as_secs_f64() * 1e6);
    }
    us.sort_by(f64::total_cmp);
    user.close().await;
    echo.close().await;
    Ok(us[us.len() / 2])
}

/// TLS ÷ plaintext: pub/sub throughput (`pubsub` true) or request/reply
/// p50, and a note with both figures.
pub async fn ratio(
    tls: &TlsHub,
    plain: SocketAddr,
    token: &str,
    n: usize,
    pubsub_row: bool,
) -> Result<(f64, String)> {
    let (p, t, unit) = if pubsub_row {
        let p = pubsub(plain, token, None, n).await?;
        let t = pubsub(tls.addr, token, Some(&tls.ca_pem), n).await?;
        (p, t, "msgs/s")
    } else {
        let p = reqrep(plain, token, None, n).await?;
        let t = reqrep(tls.addr, token, Some(&tls.ca_pem), n).await?;
        (p, t, "p50 µs")
    };
    Ok((t / p, format!("TLS {t:.0} {unit}, plaintext {p:.0} {unit}")))
}
