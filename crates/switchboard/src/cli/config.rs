//! The hub's configuration file (`switchboard hub --config FILE`,
//! `switchboard config default|check`): every setting the hub has, in TOML.
//! Flags given on the command line override the file (see
//! [`HubFlags::apply`](super::HubFlags)); the reference is
//! `docs/OPERATIONS.md`.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use clap::Subcommand;
use serde::{Deserialize, Serialize};
use switchboard::hub::{ClientTls, HttpConfig, Limits, TlsServer, UnixSocket};
use switchboard::{HubBuilder, HubTls};

/// `switchboard config` subcommands.
#[derive(Debug, Subcommand)]
pub enum ConfigCommand {
    /// Print a complete configuration file with every setting at its
    /// default, each explained.
    Default,
    /// Check a configuration file (exit 2 if invalid): syntax, unknown
    /// keys, values, and that the policy, TLS and federation files it
    /// names load.
    Check {
        /// The configuration file.
        file: PathBuf,
    },
}

/// A configuration file was refused (exit code 2).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct Invalid(pub String);

/// The whole file.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FileConfig {
    /// `[hub]`: service, listener, policy, keepalive.
    pub hub: HubSection,
    /// `[unix]`: the Unix domain socket.
    pub unix: UnixSection,
    /// `[http]`: the HTTP/WebSocket gateway.
    pub http: HttpSection,
    /// `[tls]`: certificates.
    pub tls: TlsSection,
    /// `[limits]`: limits and queue sizes.
    pub limits: LimitsSection,
    /// `[replication]`: standby and heartbeat.
    pub replication: ReplicationSection,
    /// `[log]`: level and format.
    pub log: LogSection,
    /// `[federation]`: join a federation of hubs over NATS.
    pub federation: FederationSection,
}

/// `[federation]`: the `--federate*` flags.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FederationSection {
    /// NATS server URLs (`nats://HOST:PORT` or `tls://HOST:PORT`, with
    /// `USER:PASSWORD@` or `TOKEN@` before the host when the cluster wants
    /// them); empty: no federation.
    pub servers: Vec<String>,
    /// NATS credentials: a `.creds` file (JWT and nkey seed) or an nkey
    /// user seed file (`SU...`).
    pub creds: Option<PathBuf>,
    /// CA certificate (PEM) the NATS servers' certificates must chain to;
    /// with it the connection requires TLS.
    pub tls_ca: Option<PathBuf>,
    /// This hub's name in the federation (default: random). A primary
    /// and its hot standby (`--standby`) give the same name: the standby
    /// takes it over, with a higher epoch, when the primary fails.
    pub hub_name: Option<String>,
}

/// `[hub]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HubSection {
    /// Service name clients discover the hub by.
    pub service: String,
    /// TCP address to listen on (none: a random free loopback port).
    pub listen: Option<SocketAddr>,
    /// Permission policy file.
    pub policy: Option<PathBuf>,
    /// Write the rendezvous hint file for discovery.
    pub write_hint: bool,
    /// Keepalive asked of clients, milliseconds (0: off).
    pub keepalive_ms: u64,
    /// Time a connection has for the handshake, milliseconds.
    pub handshake_timeout_ms: u64,
    /// Worker threads of the hub process's runtime (0: automatic, see
    /// [`worker_threads`]).
    pub threads: usize,
}

impl Default for HubSection {
    fn default() -> Self {
        HubSection {
            service: switchboard::DEFAULT_SERVICE.to_string(),
            listen: None,
            policy: None,
            write_hint: true,
            keepalive_ms: millis(switchboard::hub::DEFAULT_KEEPALIVE),
            handshake_timeout_ms: millis(switchboard::hub::DEFAULT_HANDSHAKE_TIMEOUT),
            threads: 0,
        }
    }
}

/// Most worker threads `[hub] threads` and `--threads` accept.
pub const MAX_THREADS: usize = 1024;

/// The hub process's worker threads: `configured`, or with 0 one per CPU
/// the process may run on.
///
/// Fewer can be faster: on a 2-core machine shared with its clients, one
/// worker carried confirmed publishes (64 in flight) 1.9 times as fast as
/// two, while fan-out to 10 subscribers lost 13–17 %, a single request
/// took twice as long and 5,000 low-rate connections saw two to seven
/// times the p99 (docs/OPTIMISATION-LOG.md, "Worker threads" and "Stop 37").
pub fn worker_threads(configured: usize) -> usize {
    match configured {
        0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
        n => n,
    }
}

/// `[unix]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct UnixSection {
    /// Listen on a Unix socket at all.
    pub enabled: bool,
    /// The socket's path (none: one in the per-user runtime directory).
    pub path: Option<PathBuf>,
    /// Mode of the socket file (write it in octal: `0o600`).
    #[serde(deserialize_with = "de_mode")]
    pub mode: u32,
}

impl Default for UnixSection {
    fn default() -> Self {
        let d = UnixSocket::default();
        UnixSection {
            enabled: true,
            path: d.path,
            mode: d.mode,
        }
    }
}

/// `[http]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HttpSection {
    /// Address of the HTTP/WebSocket listener (none: no gateway).
    pub listen: Option<SocketAddr>,
    /// How long a listen request is held, milliseconds.
    pub poll_timeout_ms: u64,
    /// Longest hold a listen request may ask for, milliseconds.
    pub max_poll_timeout_ms: u64,
    /// An HTTP client idle this long is deregistered, milliseconds.
    pub idle_timeout_ms: u64,
    /// Largest request body, bytes.
    pub max_body: usize,
    /// Polls held at once for one client id.
    pub max_polls_per_client: usize,
    /// Polls held at once in total.
    pub max_polls: usize,
    /// Messages waiting in one HTTP client's mailbox.
    pub mailbox_messages: usize,
    /// Bytes waiting in one HTTP client's mailbox.
    pub mailbox_bytes: usize,
    /// Longest wait of a request made over HTTP, milliseconds.
    pub max_request_timeout_ms: u64,
}

impl Default for HttpSection {
    fn default() -> Self {
        let d = HttpConfig::new(SocketAddr::from(([127, 0, 0, 1], 0)));
        HttpSection {
            listen: None,
            poll_timeout_ms: millis(d.poll_timeout),
            max_poll_timeout_ms: millis(d.max_poll_timeout),
            idle_timeout_ms: millis(d.idle_timeout),
            max_body: d.max_body,
            max_polls_per_client: d.max_polls_per_client,
            max_polls: d.max_polls,
            mailbox_messages: d.mailbox_messages,
            mailbox_bytes: d.mailbox_bytes,
            max_request_timeout_ms: millis(d.max_request_timeout),
        }
    }
}

/// `[tls]`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TlsSection {
    /// The hub's certificate chain (PEM); with `key`, TLS on every listener.
    pub cert: Option<PathBuf>,
    /// The private key (PEM) of `cert`.
    pub key: Option<PathBuf>,
    /// Require client certificates signed by this CA (mutual TLS).
    pub client_ca: Option<PathBuf>,
    /// The CA a standby trusts for its primary's certificate.
    pub ca: Option<PathBuf>,
    /// Allow a non-loopback listener without TLS.
    pub insecure_plaintext: bool,
}

/// `[limits]`: [`Limits`], durations in milliseconds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
#[allow(missing_docs)] // each field is the `Limits` field of the same name
pub struct LimitsSection {
    pub max_frame: usize,
    pub pre_auth_max_frame: usize,
    pub queue_frames: usize,
    pub queue_bytes: usize,
    pub queue_hard_bytes: usize,
    pub max_parked_frames: usize,
    pub max_parked_bytes: usize,
    pub write_batch_bytes: usize,
    pub max_subscriptions: usize,
    pub max_watches: usize,
    pub max_pending_requests: usize,
    pub max_clients: usize,
    pub max_handshakes: usize,
    pub kv_max_value: usize,
    pub kv_max_key: usize,
    pub kv_max_keys: usize,
    pub kv_max_tombstones: usize,
    pub max_subject: usize,
    pub default_request_timeout_ms: u64,
    pub router_inbox: usize,
    pub resume_window_ms: u64,
    pub change_log_changes: usize,
    pub change_log_bytes: usize,
}

impl Default for LimitsSection {
    fn default() -> Self {
        let l = Limits::default();
        LimitsSection {
            max_frame: l.max_frame,
            pre_auth_max_frame: l.pre_auth_max_frame,
            queue_frames: l.queue_frames,
            queue_bytes: l.queue_bytes,
            queue_hard_bytes: l.queue_hard_bytes,
            max_parked_frames: l.max_parked_frames,
            max_parked_bytes: l.max_parked_bytes,
            write_batch_bytes: l.write_batch_bytes,
            max_subscriptions: l.max_subscriptions,
            max_watches: l.max_watches,
            max_pending_requests: l.max_pending_requests,
            max_clients: l.max_clients,
            max_handshakes: l.max_handshakes,
            kv_max_value: l.kv_max_value,
            kv_max_key: l.kv_max_key,
            kv_max_keys: l.kv_max_keys,
            kv_max_tombstones: l.kv_max_tombstones,
            max_subject: l.max_subject,
            default_request_timeout_ms: millis(l.default_request_timeout),
            router_inbox: l.router_inbox,
            resume_window_ms: millis(l.resume_window),
            change_log_changes: l.change_log_changes,
            change_log_bytes: l.change_log_bytes,
        }
    }
}

impl LimitsSection {
    /// The hub's limits.
    pub fn limits(&self) -> Limits {
        Limits {
            max_frame: self.max_frame,
            pre_auth_max_frame: self.pre_auth_max_frame,
            queue_frames: self.queue_frames,
            queue_bytes: self.queue_bytes,
            queue_hard_bytes: self.queue_hard_bytes,
            max_parked_frames: self.max_parked_frames,
            max_parked_bytes: self.max_parked_bytes,
            write_batch_bytes: self.write_batch_bytes,
            max_subscriptions: self.max_subscriptions,
            max_watches: self.max_watches,
            max_pending_requests: self.max_pending_requests,
            max_clients: self.max_clients,
            max_handshakes: self.max_handshakes,
            kv_max_value: self.kv_max_value,
            kv_max_key: self.kv_max_key,
            kv_max_keys: self.kv_max_keys,
            kv_max_tombstones: self.kv_max_tombstones,
            max_subject: self.max_subject,
            default_request_timeout: Duration::from_millis(self.default_request_timeout_ms),
            router_inbox: self.router_inbox,
            resume_window: Duration::from_millis(self.resume_window_ms),
            change_log_changes: self.change_log_changes,
            change_log_bytes: self.change_log_bytes,
        }
    }
}

/// `[replication]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ReplicationSection {
    /// Run as the hot standby of the service's primary.
    pub standby: bool,
    /// The primary's address (with `standby`), instead of discovery.
    pub primary: Option<SocketAddr>,
    /// Heartbeat interval, milliseconds.
    pub heartbeat_ms: u64,
    /// Missed heartbeats before the peer counts as dead.
    pub heartbeat_misses: u32,
}

impl Default for ReplicationSection {
    fn default() -> Self {
        ReplicationSection {
            standby: false,
            primary: None,
            heartbeat_ms: millis(switchboard::hub::DEFAULT_HEARTBEAT_INTERVAL),
            heartbeat_misses: switchboard::hub::DEFAULT_HEARTBEAT_MISSES,
        }
    }
}

/// `[log]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogSection {
    /// A level (`error` … `trace`) or `tracing` filter directives.
    #[serde(deserialize_with = "de_filter")]
    pub level: String,
    /// `text` or `json` (one object per line).
    pub format: LogFormat,
}

impl Default for LogSection {
    fn default() -> Self {
        LogSection {
            level: DEFAULT_LOG_LEVEL.to_string(),
            format: LogFormat::Text,
        }
    }
}

/// The log level when neither `--log-level`, `SWITCHBOARD_LOG` nor the
/// configuration file sets one.
pub const DEFAULT_LOG_LEVEL: &str = "warn";

/// How log lines are written (to standard error).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line, with the fields of the enclosing spans.
    Json,
}

fn millis(d: Duration) -> u64 {
    d.as_millis() as u64
}

fn de_mode<'de, D: serde::Deserializer<'de>>(d: D) -> Result<u32, D::Error> {
    let mode = u32::deserialize(d)?;
    if mode > 0o777 {
        return Err(serde::de::Error::custom(format!(
            "mode {mode:#o} is not a permission mode; write one in octal such as 0o600"
        )));
    }
    Ok(mode)
}

fn de_filter<'de, D: serde::Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    let level = String::deserialize(d)?;
    check_filter(&level).map_err(serde::de::Error::custom)?;
    Ok(level)
}

/// Checks a log level or filter (`warn`, `switchboard_hub=debug,info`).
pub fn check_filter(level: &str) -> Result<(), String> {
    tracing_subscriber::EnvFilter::builder()
        .parse(level)
        .map(|_| ())
        .map_err(|e| {
            format!("invalid log level {level:?} ({e}); use error, warn, info, debug or trace")
        })
}

impl FileConfig {
    /// Parses a file's text; errors name the key and the line.
    pub fn parse(text: &str) -> Result<FileConfig, Invalid> {
        toml::from_str(text).map_err(|e| Invalid(e.to_string().trim_end().to_string()))
    }

    /// Reads and parses `path`.
    pub fn load(path: &Path) -> anyhow::Result<FileConfig> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read the configuration file {}", path.display()))?;
        let config = FileConfig::parse(&text)
            .map_err(|e| Invalid(format!("{}: {}", path.display(), e.0)))?;
        config
            .check_combinations()
            .map_err(|e| Invalid(format!("{}: {e}", path.display())))?;
        Ok(config)
    }

    /// Settings that are each valid but do not go together (checked again
    /// once the flags are applied).
    pub fn check_combinations(&self) -> Result<(), String> {
        if self.tls.cert.is_some() != self.tls.key.is_some() {
            return Err("[tls] cert and key go together: set both or neither".into());
        }
        if self.tls.client_ca.is_some() && self.tls.cert.is_none() {
            return Err("[tls] client_ca needs cert and key (the hub's own certificate)".into());
        }
        if self.replication.primary.is_some() && !self.replication.standby {
            return Err(
                "[replication] primary (--primary) needs standby = true (--standby)".into(),
            );
        }
        if self.replication.heartbeat_ms == 0 || self.replication.heartbeat_misses == 0 {
            return Err("[replication] heartbeat_ms and heartbeat_misses must be above 0".into());
        }
        let f = &self.federation;
        if f.servers.is_empty() && (f.creds.is_some() || f.tls_ca.is_some() || f.hub_name.is_some())
        {
            return Err(
                "[federation] creds, tls_ca and hub_name (--federate-creds, --federate-tls-ca, --federate-name) need servers (--federate)"
                    .into(),
            );
        }
        if f.hub_name.as_deref() == Some("") {
            return Err("[federation] hub_name (--federate-name) must not be empty".into());
        }
        for server in &f.servers {
            if !(server.starts_with("nats://") || server.starts_with("tls://"))
                || server.contains(',')
            {
                // Shown without the credentials it may carry.
                let shown = match server.split_once("://") {
                    Some((scheme, rest)) => match rest.rsplit_once('@') {
                        Some((_, host)) => format!("{scheme}://{host}"),
                        None => server.clone(),
                    },
                    None => server.clone(),
                };
                return Err(format!(
                    "[federation] servers: {shown:?} is not a NATS URL; use nats://HOST:PORT or tls://HOST:PORT"
                ));
            }
        }
        if self.hub.handshake_timeout_ms == 0 {
            return Err("[hub] handshake_timeout_ms must be above 0".into());
        }
        if self.hub.threads > MAX_THREADS {
            return Err(format!(
                "[hub] threads must be at most {MAX_THREADS} (0: automatic)"
            ));
        }
        Ok(())
    }

    /// The hub's TLS settings: loads the certificate files.
    pub fn hub_tls(&self) -> anyhow::Result<HubTls> {
        let server = match (&self.tls.cert, &self.tls.key) {
            (Some(cert), Some(key)) => Some(TlsServer::from_pem_files(
                cert,
                key,
                self.tls.client_ca.as_deref(),
            )?),
            _ if self.tls.client_ca.is_some() => anyhow::bail!(
                "--tls-client-ca needs --tls-cert and --tls-key (the hub's own certificate)"
            ),
            _ => None,
        };
        let client = self
            .tls
            .ca
            .as_deref()
            .map(ClientTls::from_ca_file)
            .transpose()?;
        Ok(HubTls {
            server,
            client,
            insecure_plaintext: self.tls.insecure_plaintext,
        })
    }

    /// The Unix socket settings.
    pub fn unix_socket(&self) -> UnixSocket {
        if !self.unix.enabled {
            return UnixSocket::disabled();
        }
        UnixSocket {
            path: self.unix.path.clone(),
            mode: self.unix.mode,
            ..UnixSocket::default()
        }
    }

    /// A hub builder with every setting of the file but the secret and the
    /// policy (loaded by the caller).
    pub fn builder(&self) -> anyhow::Result<HubBuilder> {
        let mut b = switchboard::Hub::builder()
            .service(&self.hub.service)
            .write_hint(self.hub.write_hint)
            .handshake_timeout(Duration::from_millis(self.hub.handshake_timeout_ms))
            .limits(self.limits.limits())
            .heartbeat(
                Duration::from_millis(self.replication.heartbeat_ms),
                self.replication.heartbeat_misses,
            )
            .unix(self.unix_socket())
            .tls(self.hub_tls()?);
        b = match self.hub.keepalive_ms {
            0 => b.no_keepalive(),
            ms => b.keepalive(Duration::from_millis(ms)),
        };
        if let Some(listen) = self.hub.listen {
            b = b.listen(listen.to_string());
        }
        if let Some(addr) = self.http.listen {
            let h = &self.http;
            let mut http = HttpConfig::new(addr);
            http.poll_timeout = Duration::from_millis(h.poll_timeout_ms);
            http.max_poll_timeout = Duration::from_millis(h.max_poll_timeout_ms);
            http.idle_timeout = Duration::from_millis(h.idle_timeout_ms);
            http.max_body = h.max_body;
            http.max_polls_per_client = h.max_polls_per_client;
            http.max_polls = h.max_polls;
            http.mailbox_messages = h.mailbox_messages;
            http.mailbox_bytes = h.mailbox_bytes;
            http.max_request_timeout = Duration::from_millis(h.max_request_timeout_ms);
            b = b.http_config(http);
        }
        Ok(b)
    }
}

/// Runs a `switchboard config` subcommand.
pub fn run(command: ConfigCommand) -> anyhow::Result<()> {
    use std::io::Write;
    match command {
        ConfigCommand::Default => {
            let mut out = std::io::stdout().lock();
            out.write_all(DEFAULT_FILE.as_bytes())?;
            out.flush()?;
            Ok(())
        }
        ConfigCommand::Check { file } => {
            let config = FileConfig::load(&file)?;
            // The files it names must load as the hub would load them.
            if let Some(policy) = &config.hub.policy {
                super::policy::load(policy)
                    .map_err(|e| Invalid(format!("{}: [hub] policy: {e:#}", file.display())))?;
            }
            config
                .hub_tls()
                .map_err(|e| Invalid(format!("{}: [tls]: {e:#}", file.display())))?;
            let f = &config.federation;
            for (key, path) in [("creds", &f.creds), ("tls_ca", &f.tls_ca)] {
                if let Some(path) = path {
                    std::fs::File::open(path).map_err(|e| {
                        Invalid(format!(
                            "{}: [federation] {key}: cannot read {}: {e}",
                            file.display(),
                            path.display()
                        ))
                    })?;
                }
            }
            let mut out = std::io::stdout().lock();
            writeln!(out, "{}: ok", file.display())?;
            out.flush()?;
            Ok(())
        }
    }
}

/// What `switchboard config default` prints: every setting at its default.
/// A test checks that it names every key and parses to the defaults.
pub const DEFAULT_FILE: &str = r#"# switchboard hub configuration (TOML).
#
# Start a hub with it:   switchboard hub --config FILE
# Check it:              switchboard config check FILE
# Command-line flags (and SWITCHBOARD_* environment variables) override the
# values here. Every setting below is at its default; a key left out keeps
# its default. Unknown keys are errors. Durations are in milliseconds, sizes
# in bytes. The secret is not configured here: the hub uses the per-user
# secret file, or SWITCHBOARD_TOKEN / --token. Reference: docs/OPERATIONS.md.

[hub]
# Service name clients discover the hub by.
service = "switchboard"
# TCP address for clients and discovery probes, IP:PORT (port 0: any free
# port). Left out: a random free loopback port.
# listen = "127.0.0.1:4222"
# Permission policy file (docs/POLICY.md). Left out: single-user mode,
# whoever proves the secret may do everything.
# policy = "/etc/switchboard/policy.toml"
# Write the rendezvous hint file clients discover the hub by.
write_hint = true
# Clients are asked to send traffic or a ping this often; a client silent
# for three intervals is disconnected. 0 turns it off.
keepalive_ms = 30000
# Time a new connection has to complete the handshake.
handshake_timeout_ms = 5000
# Worker threads of the hub's runtime. 0: one per CPU the process may run
# on. Fewer leave CPUs to the clients and save cross-thread wake-ups
# (request/reply, confirmed publishes); more help fan-out and many
# connections.
threads = 0

[unix]
# Listen on a Unix domain socket (local clients prefer it).
enabled = true
# Its path. Left out: <runtime dir>/<service>.<instance>.sock.
# path = "/run/switchboard/hub.sock"
# Mode of the socket file, octal. Other users need write permission (e.g.
# 0o666, with a policy that admits them) and a path outside the private
# runtime directory.
mode = 0o600

[http]
# HTTP long-poll clients, WebSocket clients at /v1/ws, /metrics and the
# dashboard on this address. Left out: no HTTP listener.
# listen = "127.0.0.1:8222"
# How long a listen request is held when nothing arrives.
poll_timeout_ms = 25000
# Longest hold a listen request may ask for.
max_poll_timeout_ms = 120000
# An HTTP client with no poll held and no call for this long is
# deregistered.
idle_timeout_ms = 60000
# Largest request body (larger: 413).
max_body = 2097152
# Polls held at once for one client id (more: 429).
max_polls_per_client = 4
# Polls held at once in total (more: 429).
max_polls = 1024
# Messages waiting in one HTTP client's mailbox between polls.
mailbox_messages = 10000
# The same bound in bytes.
mailbox_bytes = 16777216
# Longest a request made over HTTP may wait for its answer.
max_request_timeout_ms = 300000

[tls]
# The hub's certificate chain and private key (PEM): TLS on every listener.
# cert = "/etc/switchboard/hub.crt"
# key = "/etc/switchboard/hub.key"
# Require client certificates signed by this CA (mutual TLS).
# client_ca = "/etc/switchboard/clients-ca.crt"
# The CA a standby trusts for its primary's certificate.
# ca = "/etc/switchboard/ca.crt"
# Allow a non-loopback listener without TLS (insecure; warns at start).
insecure_plaintext = false

[limits]
# Largest frame from an authenticated client.
max_frame = 16777216
# Largest frame before authentication.
pre_auth_max_frame = 4096
# One client's outbound queue: bytes before it counts as full (pub/sub
# deliveries then drop that client's oldest); a frame counts its encoded
# size plus the queue's entry for it. queue_frames also caps it in frames
# (0: no count limit). A federated hub bounds its queue of publishes
# towards the NATS cluster by queue_bytes too.
queue_frames = 0
queue_bytes = 33554432
# Outbound queue bytes (counted the same way) above which the client is
# disconnected (SLOW_CONSUMER).
queue_hard_bytes = 67108864
# Direct messages and requests waiting for room in one full queue: frames,
# bytes (beyond: QUEUE_FULL for the sender).
max_parked_frames = 4096
max_parked_bytes = 16777216
# Most bytes a connection's writer takes from its queue for one write.
write_batch_bytes = 262144
# Per client: subscriptions, key/value watches, outstanding requests.
max_subscriptions = 10000
max_watches = 1000
max_pending_requests = 10000
# Registered clients, and connections still in the handshake.
max_clients = 10000
max_handshakes = 1024
# Key/value store: largest value, largest key, live keys, deletion markers.
kv_max_value = 1048576
kv_max_key = 1024
kv_max_keys = 100000
kv_max_tombstones = 100000
# Longest topic or subscription pattern.
max_subject = 1024
# Timeout of a request that names none.
default_request_timeout_ms = 30000
# Capacity of the router's inbox, in batches of frames.
router_inbox = 1024
# How long a client that lost its connection keeps its session.
resume_window_ms = 30000
# With a standby attached: changes (and their bytes) logged before they
# are sent (at most 1048576); one input logging more makes the standby
# get a fresh snapshot instead.
change_log_changes = 1048576
change_log_bytes = 67108864

[replication]
# Run as the hot standby of the service's primary.
standby = false
# The primary's address (with standby = true). Left out: discovery.
# primary = "127.0.0.1:4222"
# Heartbeat interval between primary and standby, and missed heartbeats
# before the peer counts as dead.
heartbeat_ms = 50
heartbeat_misses = 4

[log]
# error, warn, info, debug or trace, or filter directives such as
# "switchboard_hub=debug,warn". SWITCHBOARD_LOG and --log-level override it.
level = "warn"
# text, or json: one object per line with the fields of the enclosing spans
# (hub, conn: connection id, transport, client id). --log-format overrides it.
format = "text"

[federation]
# Federate with the hubs of this service on a NATS cluster with JetStream
# (client ids become unique cluster-wide). Left out: no federation.
# --federate overrides it. A user and password or a token go before the host
# (nats://USER:PASSWORD@HOST:PORT, nats://TOKEN@HOST:PORT, percent-encoded);
# here they stay out of the process list.
# servers = ["nats://10.0.0.1:4222", "nats://10.0.0.2:4222"]
# NATS credentials: a .creds file (JWT and nkey seed) or an nkey user seed
# file (SU...), told apart by the content. --federate-creds overrides it.
# creds = "/etc/switchboard/nats.creds"
# CA certificate (PEM) the NATS servers' certificates must chain to; with it
# the connection requires TLS. --federate-tls-ca overrides it.
# tls_ca = "/etc/switchboard/nats-ca.crt"
# This hub's name in the federation (default: random). A primary and its hot
# standby give the same name; the standby takes it over when the primary
# fails. --federate-name overrides it.
# hub_name = "hub-1"
"#;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_file_parses_to_the_defaults() {
        let parsed = FileConfig::parse(DEFAULT_FILE).unwrap();
        assert_eq!(parsed, FileConfig::default());
        assert_eq!(parsed.limits.limits(), Limits::default());
    }

    #[test]
    fn the_default_file_names_every_key() {
        // Every key of the configuration, optional ones included, appears in
        // the default file, set or commented out.
        let mut all = FileConfig::default();
        all.hub.listen = Some(SocketAddr::from(([127, 0, 0, 1], 1)));
        all.hub.policy = Some("p".into());
        all.unix.path = Some("u".into());
        all.http.listen = Some(SocketAddr::from(([127, 0, 0, 1], 1)));
        all.tls.cert = Some("c".into());
        all.tls.key = Some("k".into());
        all.tls.client_ca = Some("c".into());
        all.tls.ca = Some("c".into());
        all.replication.primary = Some(SocketAddr::from(([127, 0, 0, 1], 1)));
        all.federation.servers = vec!["nats://h:4222".into()];
        all.federation.creds = Some("c".into());
        all.federation.tls_ca = Some("c".into());
        all.federation.hub_name = Some("h".into());
        let value = toml::Value::try_from(&all).unwrap();
        let tables = value.as_table().unwrap();
        for (table, keys) in tables {
            let header = format!("[{table}]");
            let start = DEFAULT_FILE
                .find(&header)
                .unwrap_or_else(|| panic!("{header}"));
            let section = &DEFAULT_FILE[start + header.len()..];
            let section = &section[..section.find("\n[").unwrap_or(section.len())];
            for key in keys.as_table().unwrap().keys() {
                let set = format!("\n{key} = ");
                let commented = format!("\n# {key} = ");
                assert!(
                    section.contains(&set) || section.contains(&commented),
                    "[{table}] {key} is missing from the default file"
                );
            }
        }
    }

    #[test]
    fn errors_name_the_key_and_the_line() {
        let e = FileConfig::parse("[hub]\nservice = \"a\"\nlisten_on = \"x\"\n").unwrap_err();
        assert!(e.0.contains("line 3"), "{}", e.0);
        assert!(e.0.contains("listen_on"), "{}", e.0);
        let e = FileConfig::parse("[limits]\n\nqueue_frames = -1\n").unwrap_err();
        assert!(e.0.contains("line 3"), "{}", e.0);
        let e = FileConfig::parse("[unix]\nmode = 0o1777\n").unwrap_err();
        assert!(e.0.contains("line 2") && e.0.contains("octal"), "{}", e.0);
        let e = FileConfig::parse("[log]\nformat = \"xml\"\n").unwrap_err();
        assert!(e.0.contains("line 2") && e.0.contains("json"), "{}", e.0);
        let e = FileConfig::parse("[hub]\nlisten = \"localhost\"\n").unwrap_err();
        assert!(e.0.contains("line 2"), "{}", e.0);
        let e = FileConfig::parse("[federation]\nservers = \"nats://h:1\"\n").unwrap_err();
        assert!(e.0.contains("line 2") && e.0.contains("servers"), "{}", e.0);
    }

    #[test]
    fn worker_threads_are_bounded_and_automatic_at_zero() {
        let c = FileConfig::parse("[hub]\nthreads = 3\n").unwrap();
        assert_eq!(c.hub.threads, 3);
        assert!(c.check_combinations().is_ok());
        assert_eq!(worker_threads(c.hub.threads), 3);
        let c = FileConfig::parse(&format!("[hub]\nthreads = {}\n", MAX_THREADS + 1)).unwrap();
        let e = c.check_combinations().unwrap_err();
        assert!(e.contains("threads must be at most"), "{e}");
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
        assert_eq!(worker_threads(0), cpus);
    }

    #[test]
    fn federation_settings_are_checked_together() {
        let c = FileConfig::parse("[federation]\ncreds = \"x.creds\"\n").unwrap();
        let e = c.check_combinations().unwrap_err();
        assert!(e.contains("need servers"), "{e}");
        let c = FileConfig::parse("[federation]\nservers = [\"h:4222\"]\n").unwrap();
        let e = c.check_combinations().unwrap_err();
        assert!(e.contains("\"h:4222\" is not a NATS URL"), "{e}");
        let c = FileConfig::parse(
            "[federation]\nservers = [\"nats://a:4222\", \"tls://b:4222\"]\ntls_ca = \"ca.pem\"\n",
        )
        .unwrap();
        c.check_combinations().unwrap();
    }
}
