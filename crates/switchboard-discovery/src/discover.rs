//! Finding the hubs of a service: hint files, then the listening table,
//! then a connect scan; every candidate verified by a probe.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::ops::RangeInclusive;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::stream::{FuturesUnordered, StreamExt};
use tokio::net::TcpStream;

use crate::probe::probe_connected;
use crate::scan::{self, ProbeJob};
use crate::table;
use crate::{
    runtime_dir, validate_service, DiscoveryError, FoundHub, Hint, ProbeError, Secret, SecretError,
    Via, DEFAULT_BIND_RANGE,
};

/// Default scan range: every non-privileged port.
pub const DEFAULT_SCAN_RANGE: RangeInclusive<u16> = 1025..=65535;
/// Default number of connects and probes in flight.
pub const DEFAULT_CONCURRENCY: usize = 512;
/// Default time one probe (connect and reply) may take.
pub const DEFAULT_PROBE_TIMEOUT: Duration = Duration::from_millis(300);
/// Default limit on a whole discovery.
pub const DEFAULT_DEADLINE: Duration = Duration::from_secs(5);

/// How [`discover`] searches.
#[derive(Debug, Clone)]
pub struct DiscoverOptions {
    /// Directories holding hint files. Empty: the runtime directory
    /// ([`runtime_dir`]).
    pub hint_dirs: Vec<PathBuf>,
    /// Addresses to look for hubs on (table and scan): `127.0.0.1` by
    /// default; `::1`, both, or another host's address (scan only) work too.
    pub ips: Vec<IpAddr>,
    /// Ports to scan.
    pub range: RangeInclusive<u16>,
    /// Connects and probes in flight at once.
    pub concurrency: usize,
    /// Time one probe may take, connect and reply included.
    pub probe_timeout: Duration,
    /// Time the whole discovery may take.
    pub deadline: Duration,
    /// Scan worker threads (Unix); 0 picks one per core, at most 4.
    pub scan_threads: usize,
    /// List every hub found (all paths run) instead of returning the first.
    pub all: bool,
    /// Try hint files.
    pub use_hints: bool,
    /// Try the operating system's table of listening sockets.
    pub use_table: bool,
    /// Try the connect scan.
    pub use_scan: bool,
    /// Before connecting to a loopback port (table and scan, Linux), test
    /// whether it can be bound: a port that binds has no listener, so no
    /// SYN is sent to it. Several times cheaper than a refused connect;
    /// `false` connects to every port. Turn it off if loopback ports are
    /// redirected by packet filter rules (DNAT or REDIRECT to a container,
    /// for example), since no local socket then holds the port.
    pub bind_check: bool,
    /// The secret that hubs must prove; `None` loads the per-user secret
    /// file (creating it if missing).
    pub secret: Option<Secret>,
}

impl Default for DiscoverOptions {
    fn default() -> Self {
        DiscoverOptions {
            hint_dirs: Vec::new(),
            ips: vec![IpAddr::V4(Ipv4Addr::LOCALHOST)],
            range: DEFAULT_SCAN_RANGE,
            concurrency: DEFAULT_CONCURRENCY,
            probe_timeout: DEFAULT_PROBE_TIMEOUT,
            deadline: DEFAULT_DEADLINE,
            scan_threads: 0,
            all: false,
            use_hints: true,
            use_table: true,
            use_scan: true,
            bind_check: true,
            secret: None,
        }
    }
}

impl DiscoverOptions {
    /// Looks on both `127.0.0.1` and `::1`.
    pub fn both_loopbacks(mut self) -> Self {
        self.ips = vec![
            IpAddr::V4(Ipv4Addr::LOCALHOST),
            IpAddr::V6(Ipv6Addr::LOCALHOST),
        ];
        self
    }
}

/// Why discovery failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DiscoverError {
    /// The service name is not valid.
    #[error(transparent)]
    InvalidService(DiscoveryError),
    /// The secret could not be loaded.
    #[error(transparent)]
    Secret(#[from] SecretError),
    /// No verified hub was found; the report says what was tried.
    #[error("no hub of service {service:?} found: {tried}")]
    NotFound {
        /// The service looked for.
        service: String,
        /// What was tried.
        tried: Tried,
    },
}

/// What a discovery tried, for the "not found" message.
#[derive(Debug, Clone)]
pub struct Tried {
    /// Hint directories read, or `None` if hints were disabled.
    pub hint_dirs: Option<Vec<PathBuf>>,
    /// Hints found.
    pub hints: usize,
    /// Hints whose address did not answer as a verified hub.
    pub stale_hints: usize,
    /// Hint files that could not be read or parsed.
    pub bad_hints: usize,
    /// Listeners of the current user probed from the table, or why the
    /// table was not used.
    pub table: Result<usize, String>,
    /// Ports scanned (`None`: the scan did not run).
    pub scanned: Option<(RangeInclusive<u16>, usize)>,
    /// Addresses that answered as hubs but whose proof did not verify.
    pub unverified: Vec<SocketAddr>,
    /// Whether the overall deadline cut the search short.
    pub deadline_hit: bool,
    /// Time spent.
    pub elapsed: Duration,
}

impl fmt::Display for Tried {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.hint_dirs {
            None => f.write_str("hints disabled")?,
            Some(dirs) if dirs.is_empty() => {
                f.write_str("no hint read (the runtime directory is unusable)")?
            }
            Some(dirs) => {
                let dirs: Vec<String> = dirs.iter().map(|d| d.display().to_string()).collect();
                if self.hints == 0 {
                    write!(f, "no hint in {}", dirs.join(", "))?;
                } else {
                    write!(
                        f,
                        "{} hint(s) in {}, {} stale",
                        self.hints,
                        dirs.join(", "),
                        self.stale_hints
                    )?;
                }
                if self.bad_hints > 0 {
                    write!(f, ", {} unreadable", self.bad_hints)?;
                }
            }
        }
        match &self.table {
            Ok(n) => write!(f, "; {n} listener(s) from the listening table probed")?,
            Err(why) => write!(f, "; listening table not used ({why})")?,
        }
        match &self.scanned {
            Some((range, n)) => write!(
                f,
                "; scanned {n} of ports {}-{}",
                range.start(),
                range.end()
            )?,
            None => f.write_str("; no scan")?,
        }
        write!(f, "; took {} ms", self.elapsed.as_millis())?;
        if self.deadline_hit {
            f.write_str(" (deadline reached; raise it to search longer)")?;
        }
        if let Some(first) = self.unverified.first() {
            write!(
                f,
                "; a hub answered at {first}{} but could not be verified (wrong secret? check the token or the secret file)",
                if self.unverified.len() > 1 {
                    format!(" and {} other address(es)", self.unverified.len() - 1)
                } else {
                    String::new()
                }
            )?;
        } else {
            f.write_str("; start the hub or check the service name")?;
        }
        Ok(())
    }
}

struct Search<'a> {
    service: &'a str,
    secret: Secret,
    opts: &'a DiscoverOptions,
    start: Instant,
    deadline: Instant,
    probed: HashSet<SocketAddr>,
    found: Vec<FoundHub>,
    instances: HashSet<String>,
    tried: Tried,
    /// The listening table, read once when a scan result needs checking.
    table: Option<Result<table::Table, ()>>,
    /// Unix sockets named by hints: hinted address → (instance, path).
    sockets: HashMap<SocketAddr, (String, PathBuf)>,
}

impl Search<'_> {
    fn done(&self) -> bool {
        (!self.opts.all && !self.found.is_empty()) || Instant::now() >= self.deadline
    }

    fn probe_timeout(&self) -> Duration {
        self.opts
            .probe_timeout
            .min(self.deadline.saturating_duration_since(Instant::now()))
    }

    /// For a hub found by the scan on a loopback address (Linux): the
    /// owner of the listener serving `addr` when the listening table shows
    /// only listeners of other users there. A hub of this user's secret is
    /// this user's; another user's listener that answers with a valid
    /// proof is relaying to the real hub (from the other loopback family
    /// on the same port number, for example). `None` when it is fine or
    /// cannot be told.
    fn foreign_owner(&mut self, addr: SocketAddr) -> Option<u32> {
        if !cfg!(target_os = "linux") || !addr.ip().is_loopback() {
            return None;
        }
        let table = self
            .table
            .get_or_insert_with(|| table::listening().map_err(|_| ()))
            .as_ref()
            .ok()?;
        let uid = crate::current_uid();
        let mut others = None;
        for l in &table.listeners {
            if l.addr.port() == addr.port() && table::reachable(l.addr.ip(), addr.ip()) {
                if l.uid == uid {
                    return None;
                }
                others = Some(l.uid);
            }
        }
        others
    }

    fn record(
        &mut self,
        via: Via,
        addr: SocketAddr,
        r: Result<crate::proto::HubIdentity, ProbeError>,
    ) -> bool {
        let r = match r {
            Ok(_) if via == Via::Scan => match self.foreign_owner(addr) {
                Some(owner) => Err(ProbeError::Mismatch {
                    addr,
                    reason: format!(
                        "a listener of another user (uid {owner}), which relays to a hub"
                    ),
                }),
                None => r,
            },
            r => r,
        };
        match r {
            Ok(identity) => {
                if self.instances.insert(identity.instance_id.clone()) {
                    // A hint's socket belongs to the hub that answered on
                    // the hinted address only if it is the same instance.
                    let unix = match self.sockets.get(&addr) {
                        Some((instance, path))
                            if via == Via::Hint && *instance == identity.instance_id =>
                        {
                            Some(path.clone())
                        }
                        _ => None,
                    };
                    self.found.push(FoundHub {
                        addr,
                        identity,
                        via,
                        unix,
                    });
                }
                true
            }
            Err(e) => {
                tracing::debug!(%addr, error = %e, "candidate rejected");
                if e.is_unverified() {
                    self.tried.unverified.push(addr);
                }
                false
            }
        }
    }

    /// Probes `addrs` with bounded concurrency; returns how many were
    /// accepted. Stops early in "first" mode.
    async fn probe_all(&mut self, via: Via, addrs: Vec<SocketAddr>) -> usize {
        let probe_timeout = self.opts.probe_timeout;
        let deadline = self.deadline;
        let limit = self.opts.concurrency.max(1);
        let service = self.service.to_owned();
        let secret = self.secret.clone();
        let mut queue = addrs
            .into_iter()
            .filter(|a| self.probed.insert(*a))
            .collect::<Vec<_>>()
            .into_iter();
        let mut inflight = FuturesUnordered::new();
        let mut accepted = 0;
        loop {
            while inflight.len() < limit && Instant::now() < deadline {
                let Some(addr) = queue.next() else { break };
                let (service, secret) = (service.clone(), secret.clone());
                // Each probe ends at its own timeout or at the overall
                // deadline, whichever comes first.
                let timeout = probe_timeout.min(deadline.saturating_duration_since(Instant::now()));
                inflight.push(async move {
                    let r = tokio::time::timeout(timeout, async {
                        let s = TcpStream::connect(addr)
                            .await
                            .map_err(|source| ProbeError::Connect { addr, source })?;
                        probe_connected(s, addr, &service, &secret).await
                    })
                    .await
                    .unwrap_or(Err(ProbeError::Timeout {
                        addr,
                        after: timeout,
                    }));
                    (addr, r)
                });
            }
            let Some((addr, r)) = inflight.next().await else {
                break;
            };
            if self.record(via, addr, r) {
                accepted += 1;
            }
            if self.done() {
                break;
            }
        }
        accepted
    }

    async fn hints(&mut self) {
        let dirs = if self.opts.hint_dirs.is_empty() {
            match runtime_dir() {
                Ok(d) => vec![d],
                Err(e) => {
                    tracing::debug!(error = %e, "no runtime directory for hints");
                    self.tried.hint_dirs = Some(Vec::new());
                    return;
                }
            }
        } else {
            self.opts.hint_dirs.clone()
        };
        let mut addrs = Vec::new();
        for dir in &dirs {
            for h in Hint::read_all(dir, self.service) {
                let target = h.map_err(|e| e.to_string()).and_then(|h| {
                    let target = hint_target(&h, &self.opts.ips);
                    if let (Ok(a), Some(path)) = (&target, &h.unix) {
                        self.sockets
                            .insert(*a, (h.instance_id.clone(), path.clone()));
                    }
                    target.map_err(|why| format!("hint for {}: {why}", h.addr))
                });
                match target {
                    Ok(a) if addrs.len() < MAX_HINTS => addrs.push(a),
                    Ok(_) => self.tried.bad_hints += 1,
                    Err(e) => {
                        tracing::debug!(error = %e, "unusable hint");
                        self.tried.bad_hints += 1;
                    }
                }
            }
        }
        self.tried.hint_dirs = Some(dirs);
        self.tried.hints = addrs.len();
        let accepted = self.probe_all(Via::Hint, addrs).await;
        self.tried.stale_hints = self.tried.hints.saturating_sub(accepted);
    }

    async fn table(&mut self) -> bool {
        let table = match table::listening() {
            Ok(t) => t,
            Err(e) => {
                self.tried.table = Err(e.to_string());
                return false;
            }
        };
        let uid = crate::current_uid();
        let mut addrs = Vec::new();
        let mut seen = HashSet::new();
        for ip in &self.opts.ips {
            for l in &table.listeners {
                if l.uid == uid && table::reachable(l.addr.ip(), *ip) {
                    let a = SocketAddr::new(*ip, l.addr.port());
                    if seen.insert(a) && !self.probed.contains(&a) {
                        addrs.push(a);
                    }
                }
            }
        }
        // Ports in the hubs' default random range first.
        addrs.sort_by_key(|a| !DEFAULT_BIND_RANGE.contains(&a.port()));
        let n = addrs.len();
        // The table is short and finite: probe it all at once when the
        // limit on open files allows, so silent listeners cannot hold up
        // the real hub for a probe timeout.
        let room = scan::fd_limit().map_or(self.opts.concurrency, |l| l / 2);
        let limit = self.opts.concurrency.max(n.min(room));
        self.run_job(Via::Table, addrs, limit).await;
        self.tried.table = Ok(n);
        true
    }

    fn threads(&self) -> usize {
        if self.opts.scan_threads == 0 {
            std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1)
                .min(4)
        } else {
            self.opts.scan_threads
        }
    }

    /// Probes `targets` on the worker threads; returns how many addresses
    /// were tried.
    async fn run_job(&mut self, via: Via, targets: Vec<SocketAddr>, max_inflight: usize) -> usize {
        for a in &targets {
            self.probed.insert(*a);
        }
        let total = targets.len();
        if total == 0 {
            return 0;
        }
        let mut handle = scan::start(ProbeJob {
            targets: Arc::new(targets),
            threads: self.threads(),
            max_inflight: max_inflight.max(1),
            timeout: self.probe_timeout(),
            deadline: self.deadline,
            service: self.service.to_owned(),
            secret: self.secret.clone(),
            prefilter: self.opts.bind_check,
        });
        let deadline = tokio::time::Instant::from_std(self.deadline);
        loop {
            tokio::select! {
                got = handle.rx.recv() => match got {
                    Some((addr, r)) => {
                        self.record(via, addr, r);
                        if self.done() {
                            break;
                        }
                    }
                    None => break,
                },
                _ = tokio::time::sleep_until(deadline) => break,
            }
        }
        handle.stop();
        // Workers add their counts when they finish; one still running was
        // cut short by the deadline or an early result.
        handle
            .tried
            .load(std::sync::atomic::Ordering::Relaxed)
            .min(total)
    }

    async fn scan(&mut self) {
        let range = self.opts.range.clone();
        // The hubs' default random range first, so "first" mode ends early.
        let (hot, cold): (Vec<u16>, Vec<u16>) =
            range.clone().partition(|p| DEFAULT_BIND_RANGE.contains(p));
        // Each address once, even if the caller listed an ip twice.
        let mut ips: Vec<IpAddr> = Vec::new();
        for ip in &self.opts.ips {
            if !ips.contains(ip) {
                ips.push(*ip);
            }
        }
        let mut targets = Vec::with_capacity((hot.len() + cold.len()) * ips.len());
        for port in hot.into_iter().chain(cold) {
            for ip in &ips {
                let a = SocketAddr::new(*ip, port);
                if !self.probed.contains(&a) {
                    targets.push(a);
                }
            }
        }
        let limit = self.opts.concurrency;
        let n = self.run_job(Via::Scan, targets, limit).await;
        self.tried.scanned = Some((range, n));
    }
}

/// Most hint files probed per discovery; more are counted as unreadable.
const MAX_HINTS: usize = 256;

/// Where to probe for a hint, or why not. Only a loopback address (an
/// unspecified one counts as loopback), an address of this machine, or
/// one of the asked addresses is ever dialled, so a planted hint cannot
/// send probes to another host.
fn hint_target(h: &Hint, ips: &[IpAddr]) -> Result<SocketAddr, String> {
    let listen: SocketAddr = h
        .addr
        .parse()
        .map_err(|_| "not an ip:port address".to_string())?;
    let a = h.connect_addr();
    if a.ip().is_loopback() || ips.contains(&listen.ip()) || is_local_address(a.ip()) {
        Ok(a)
    } else {
        Err(format!(
            "{} is not an address of this machine; add it to the addresses to search",
            listen.ip()
        ))
    }
}

/// True if `ip` belongs to this machine: a UDP socket can be bound to it
/// (nothing is sent).
fn is_local_address(ip: IpAddr) -> bool {
    std::net::UdpSocket::bind(SocketAddr::new(ip, 0)).is_ok()
}

/// Finds the verified hubs of `service`, fastest path first: hint files,
/// then the listening table, then the connect scan.
///
/// Each candidate address receives exactly one probe; only hubs whose
/// proof verifies with the secret are returned. In "first" mode (the
/// default) discovery returns as soon as one hub is verified; with
/// [`DiscoverOptions::all`] every enabled path runs and every instance is
/// listed (once, by instance id) in the order found.
pub async fn discover(
    service: &str,
    opts: &DiscoverOptions,
) -> Result<Vec<FoundHub>, DiscoverError> {
    validate_service(service).map_err(DiscoverError::InvalidService)?;
    let secret = match &opts.secret {
        Some(s) => s.clone(),
        None => tokio::task::spawn_blocking(Secret::load_default)
            .await
            .unwrap_or_else(|e| {
                Err(SecretError::Io {
                    path: PathBuf::from("<runtime dir>/secret"),
                    source: std::io::Error::other(e.to_string()),
                })
            })?,
    };
    let start = Instant::now();
    let mut s = Search {
        service,
        secret,
        opts,
        start,
        deadline: start + opts.deadline,
        probed: HashSet::new(),
        found: Vec::new(),
        instances: HashSet::new(),
        tried: Tried {
            hint_dirs: None,
            hints: 0,
            stale_hints: 0,
            bad_hints: 0,
            table: Err("disabled".into()),
            scanned: None,
            unverified: Vec::new(),
            deadline_hit: false,
            elapsed: Duration::ZERO,
        },
        table: None,
        sockets: HashMap::new(),
    };
    if opts.use_hints {
        s.hints().await;
    }
    if opts.use_table && !s.done() {
        s.table().await;
    } else if opts.use_table {
        s.tried.table = Err("not needed".into());
    }
    if opts.use_scan && !s.done() {
        s.scan().await;
    }
    s.tried.elapsed = s.start.elapsed();
    s.tried.deadline_hit = Instant::now() >= s.deadline;
    if s.found.is_empty() {
        return Err(DiscoverError::NotFound {
            service: service.to_owned(),
            tried: s.tried,
        });
    }
    Ok(s.found)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tried() -> Tried {
        Tried {
            hint_dirs: Some(vec![PathBuf::from("/run/user/1000/switchboard")]),
            hints: 2,
            stale_hints: 2,
            bad_hints: 1,
            table: Ok(17),
            scanned: Some((1025..=65535, 64511)),
            unverified: Vec::new(),
            deadline_hit: false,
            elapsed: Duration::from_millis(812),
        }
    }

    #[test]
    fn hints_to_other_hosts_are_not_dialled() {
        let v4 = vec![IpAddr::V4(Ipv4Addr::LOCALHOST)];
        let hint = |addr: &str| Hint {
            service: "svc".into(),
            addr: addr.into(),
            port: 5000,
            pid: 1,
            instance_id: "0123456789abcdef".into(),
            started_at_ms: 0,
            unix: None,
        };
        let ok = |addr: &str, ips: &[IpAddr]| hint_target(&hint(addr), ips).unwrap();
        assert_eq!(ok("127.0.0.1:5000", &v4), "127.0.0.1:5000".parse().unwrap());
        assert_eq!(ok("[::1]:5000", &v4), "[::1]:5000".parse().unwrap());
        assert_eq!(ok("0.0.0.0:5000", &v4), "127.0.0.1:5000".parse().unwrap());
        assert_eq!(ok("[::]:5000", &v4), "[::1]:5000".parse().unwrap());
        for far in [
            "198.51.100.7:5000",
            "[2001:db8::1]:5000",
            "[::ffff:198.51.100.7]:5000",
        ] {
            let err = hint_target(&hint(far), &v4).unwrap_err();
            assert!(err.contains("not an address of this machine"), "{err}");
        }
        // An address the caller asked for is fine.
        let asked = vec!["198.51.100.7".parse().unwrap()];
        assert_eq!(
            ok("198.51.100.7:5000", &asked),
            "198.51.100.7:5000".parse().unwrap()
        );
        assert!(hint_target(&hint("garbage"), &v4).is_err());
        // An address of one of this machine's interfaces stays on it.
        if let Some(own) = own_non_loopback_address() {
            let addr = SocketAddr::new(own, 5000);
            assert_eq!(ok(&addr.to_string(), &v4), addr);
        }
    }

    /// A non-loopback address of this machine, if it has one: the local
    /// end of a UDP socket "connected" towards a documentation address
    /// (connecting a UDP socket sends nothing; it only picks a route).
    fn own_non_loopback_address() -> Option<IpAddr> {
        let s = std::net::UdpSocket::bind("0.0.0.0:0").ok()?;
        s.connect("198.51.100.1:9").ok()?;
        let ip = s.local_addr().ok()?.ip();
        (!ip.is_loopback() && !ip.is_unspecified()).then_some(ip)
    }

    #[test]
    fn not_found_says_what_was_tried() {
        let msg = tried().to_string();
        for part in [
            "2 hint(s) in /run/user/1000/switchboard, 2 stale",
            "1 unreadable",
            "17 listener(s) from the listening table probed",
            "scanned 64511 of ports 1025-65535",
            "took 812 ms",
            "start the hub",
        ] {
            assert!(msg.contains(part), "{part:?} missing from {msg:?}");
        }
        assert!(!msg.contains("verified"));
    }

    #[test]
    fn not_found_names_unverified_hubs_and_the_deadline() {
        let mut t = tried();
        t.hint_dirs = None;
        t.table = Err("disabled".into());
        t.scanned = None;
        t.deadline_hit = true;
        t.unverified = vec![
            "127.0.0.1:5000".parse().unwrap(),
            "[::1]:5000".parse().unwrap(),
        ];
        let msg = t.to_string();
        for part in [
            "hints disabled",
            "listening table not used (disabled)",
            "no scan",
            "deadline reached",
            "a hub answered at 127.0.0.1:5000 and 1 other address(es) but could not be verified (wrong secret?",
        ] {
            assert!(msg.contains(part), "{part:?} missing from {msg:?}");
        }
    }
}
