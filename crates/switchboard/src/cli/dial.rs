//! Making the first connection of a command, with `--wait`.
//!
//! A hub can be briefly unreachable while it is still the one to use: a
//! primary killed with SIGKILL leaves its hint file behind, and its hot
//! standby binds the same port some tens of milliseconds later. A full
//! discovery in that gap scans every port (about a second) and finds
//! nothing. So a command first tries what it already knows — the `--addr`
//! address, or the addresses named by the service's hint files, which it
//! re-reads each round (a standby that had to bind another port writes a
//! new one) — with short pauses (25 ms, doubling to 250 ms) for up to
//! `--wait`, and only then falls back to a full discovery or gives up.
//!
//! Nothing is retried when there is nothing to wait for: no hint file and
//! no `--addr` (a full discovery runs once, as before), a hub that refused
//! the proof, or a hub that answered but could not prove it knows the
//! secret.

use std::net::SocketAddr;
use std::time::Duration;

use switchboard::discovery::{self, Hint, Secret};
use switchboard::{Client, ClientBuilder, ClientError};
use tokio::time::Instant;

/// First pause between two attempts.
const FIRST_PAUSE: Duration = Duration::from_millis(25);
/// Longest pause between two attempts.
const MAX_PAUSE: Duration = Duration::from_millis(250);
/// How long a hinted address may take to answer a probe.
const PROBE_TIMEOUT: Duration = Duration::from_millis(300);
/// Bounds of one connection attempt (handshake included): an attempt may
/// use what is left of the wait, at least the minimum and at most the
/// maximum.
const ATTEMPT_MIN: Duration = Duration::from_secs(1);
const ATTEMPT_MAX: Duration = Duration::from_secs(5);

/// Where the hub is.
pub enum Target<'a> {
    /// `--addr`: this address and no other.
    Addr(&'a str),
    /// A service name: its hint files, then discovery.
    Service(&'a str),
}

/// Whether a failed connection attempt may succeed if tried again soon:
/// nothing listened, the peer closed or stalled, or discovery found
/// nothing. A refused proof, an unverified hub or a bad argument will not
/// change.
fn retryable(e: &ClientError) -> bool {
    matches!(
        e,
        ClientError::Connect { .. }
            | ClientError::Timeout(_)
            | ClientError::Protocol(_)
            | ClientError::Io(_)
            | ClientError::Wire(_)
            | ClientError::NotFound { .. }
            | ClientError::Disconnected
            | ClientError::Hub { .. }
            | ClientError::Tls(switchboard::discovery::tls::TlsError::Io { .. })
    )
}

fn millis(d: Duration) -> String {
    if d.as_millis() % 1000 == 0 {
        format!("{} s", d.as_secs())
    } else {
        format!("{} ms", d.as_millis())
    }
}

/// Pauses between attempts: 25 ms, doubling up to 250 ms, never past the
/// deadline.
struct Pacer {
    deadline: Instant,
    pause: Duration,
}

impl Pacer {
    fn new(wait: Duration) -> Pacer {
        Pacer {
            deadline: Instant::now() + wait,
            pause: FIRST_PAUSE,
        }
    }

    fn left(&self) -> Duration {
        self.deadline.saturating_duration_since(Instant::now())
    }

    /// Waits before the next attempt; false when the wait is over.
    async fn pause(&mut self) -> bool {
        let left = self.left();
        if left.is_zero() {
            return false;
        }
        tokio::time::sleep(self.pause.min(left)).await;
        self.pause = (self.pause * 2).min(MAX_PAUSE);
        true
    }

    /// Timeout of the next connection attempt.
    fn attempt_timeout(&self) -> Duration {
        self.left().clamp(ATTEMPT_MIN, ATTEMPT_MAX)
    }
}

/// Connects `builder` (id, secret and options set; no target) to the hub
/// of `target`, trying again for up to `wait` as the module docs say.
/// `secret` probes the hinted addresses of a service (unused for an
/// address).
pub async fn connect(
    builder: ClientBuilder,
    target: Target<'_>,
    secret: Option<&Secret>,
    wait: Duration,
) -> anyhow::Result<Client> {
    match (target, secret) {
        (Target::Addr(addr), _) => connect_addr(builder, addr, wait).await,
        (Target::Service(service), Some(secret)) => {
            connect_service(builder, service, secret, wait).await
        }
        (Target::Service(_), None) => {
            anyhow::bail!("finding a hub by service needs the secret; give --token or --addr")
        }
    }
}

async fn connect_addr(
    builder: ClientBuilder,
    addr: &str,
    wait: Duration,
) -> anyhow::Result<Client> {
    let mut pacer = Pacer::new(wait);
    let mut attempts = 0u32;
    loop {
        attempts += 1;
        let b = builder
            .clone()
            .addr(addr)
            .connect_timeout(pacer.attempt_timeout());
        let e = match b.connect().await {
            Ok(c) => return Ok(c),
            Err(e) => e,
        };
        if !retryable(&e) {
            return Err(e.into());
        }
        tracing::info!(%addr, error = %e, left_ms = pacer.left().as_millis() as u64,
                       "the hub is not answering; trying again");
        if !pacer.pause().await {
            if attempts == 1 {
                return Err(e.into());
            }
            return Err(anyhow::Error::new(e).context(format!(
                "no hub answered at {addr} within --wait {} ({attempts} attempts)",
                millis(wait)
            )));
        }
    }
}

/// The addresses named by the hint files of `service`, in the order read,
/// each once. Unreadable hints are skipped (discovery reports them).
fn hinted(service: &str) -> Vec<SocketAddr> {
    let Ok(dir) = discovery::runtime_dir() else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for hint in Hint::read_all(&dir, service).into_iter().flatten() {
        let addr = hint.connect_addr();
        if !out.contains(&addr) {
            out.push(addr);
        }
    }
    out
}

/// What probing the hinted addresses found.
enum Probed {
    /// A verified hub of the service answered.
    Live,
    /// Something answered as a hub but did not prove the secret: discovery
    /// reports it (exit code 5); waiting would not change it.
    Unverified,
    /// Nothing answered.
    Silent,
}

async fn probe_all(addrs: &[SocketAddr], service: &str, secret: &Secret) -> Probed {
    let mut unverified = false;
    for &addr in addrs {
        match discovery::probe(addr, service, secret, PROBE_TIMEOUT).await {
            Ok(_) => return Probed::Live,
            Err(e) if e.is_unverified() => unverified = true,
            Err(e) => tracing::debug!(%addr, error = %e, "hinted address did not answer"),
        }
    }
    if unverified {
        Probed::Unverified
    } else {
        Probed::Silent
    }
}

async fn connect_service(
    builder: ClientBuilder,
    service: &str,
    secret: &Secret,
    wait: Duration,
) -> anyhow::Result<Client> {
    let mut pacer = Pacer::new(wait);
    let mut first = true;
    let mut named: Vec<SocketAddr> = Vec::new();
    loop {
        let hints = hinted(service);
        if hints.is_empty() && first {
            // No hint: nothing suggests a hub is about to come back, so a
            // single full discovery decides.
            return Ok(builder
                .clone()
                .service(service)
                .connect_timeout(ATTEMPT_MAX)
                .connect()
                .await?);
        }
        if hints.is_empty() {
            // The hints went away: the hub shut down and removed its own.
            break;
        }
        first = false;
        for a in &hints {
            if !named.contains(a) {
                named.push(*a);
            }
        }
        match probe_all(&hints, service, secret).await {
            Probed::Live | Probed::Unverified => {
                let b = builder
                    .clone()
                    .service(service)
                    .connect_timeout(pacer.attempt_timeout());
                match b.connect().await {
                    Ok(c) => return Ok(c),
                    Err(e) if !retryable(&e) => return Err(e.into()),
                    Err(e) => tracing::debug!(%service, error = %e, "connecting failed"),
                }
            }
            Probed::Silent => {}
        }
        tracing::info!(%service, hinted = ?hints, left_ms = pacer.left().as_millis() as u64,
                       "no hub of the service is answering at its hinted addresses; trying again");
        if !pacer.pause().await {
            break;
        }
    }
    // Last resort: the hub may be where no hint says (another runtime
    // directory, a hub started without one).
    let result = builder
        .service(service)
        .connect_timeout(ATTEMPT_MAX)
        .connect()
        .await;
    match result {
        Ok(c) => Ok(c),
        Err(e) if !retryable(&e) => Err(e.into()),
        Err(e) => {
            let named: Vec<String> = named.iter().map(|a| a.to_string()).collect();
            let named = if named.is_empty() {
                String::new()
            } else {
                format!(" (its hint files named {})", named.join(", "))
            };
            Err(anyhow::Error::new(e).context(format!(
                "no hub of service {service:?} answered within --wait {}{named}",
                millis(wait)
            )))
        }
    }
}
