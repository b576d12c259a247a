//! The TLS rows: what TLS costs, as a ratio of the same workload on a
//! TLS hub to a plaintext one, measured back to back in the same run:
//! 1→1 pub/sub throughput at 1 KiB (goal: TLS keeps ≥ 75 %), and
//! request/reply p50 latency, the two sides measured alternately
//! ([`paired`]). The TLS hub is a process started with a
//! certificate made for the run (rcgen; nothing is kept).

use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result};

use crate::procs::{self, ProcGuard};
use crate::ratios::{paired, pubsub, reqrep, Via};

/// Payload of the pub/sub row.
const PUBSUB_PAYLOAD: usize = 1024;

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

/// TLS ÷ plaintext: pub/sub throughput (`pubsub` true) or request/reply
/// p50, and a note with both figures.
pub async fn ratio(
    tls: &TlsHub,
    plain: SocketAddr,
    token: &str,
    n: usize,
    run: usize,
    pubsub_row: bool,
) -> Result<(f64, String)> {
    let secure = Via::Tls(tls.addr, &tls.ca_pem);
    let (p, t, unit) = if pubsub_row {
        let (p, t) = paired(
            |r| {
                pubsub(
                    Via::Tcp(plain),
                    token,
                    n,
                    PUBSUB_PAYLOAD,
                    format!("plain-{run}-{r}"),
                )
            },
            |r| pubsub(secure, token, n, PUBSUB_PAYLOAD, format!("tls-{run}-{r}")),
            true,
        )
        .await?;
        (p, t, "msgs/s")
    } else {
        let (p, t) = paired(
            |r| reqrep(Via::Tcp(plain), token, n, format!("plain-{run}-{r}")),
            |r| reqrep(secure, token, n, format!("tls-{run}-{r}")),
            false,
        )
        .await?;
        (p, t, "p50 µs")
    };
    Ok((t / p, format!("TLS {t:.0} {unit}, plaintext {p:.0} {unit}")))
}
