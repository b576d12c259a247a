//! Command-line interface.

mod bench;
mod check;
mod commands;
mod config;
mod demo;
mod demo_session;
mod dial;
mod federate;
mod global;
mod policy;
mod systemd;
mod tls_args;

use std::process::ExitCode;
use std::time::Duration;

use clap::{CommandFactory, Parser, Subcommand};
use switchboard::discovery::tls::TlsError;
use switchboard::ClientError;

use global::Global;

/// Exit codes, shown in `--help`.
const EXIT_CODES: &str = "\
Exit codes:
  0  success
  1  hub or key not found, or another failure
  2  usage error; an invalid policy file (policy check) or configuration
     file (config check, hub --config)
  3  timeout (no reply in time)
  4  no such client (the target id is not connected)
  5  authentication failure (wrong token or secret, an unverified hub, or a
     TLS certificate not trusted or refused)
  6  bench --strict: a message was dropped or not delivered
check exits 0 OK, 1 WARNING, 2 CRITICAL, 3 UNKNOWN instead.

Environment: SWITCHBOARD_ADDR (--addr), SWITCHBOARD_SERVICE (--service),
SWITCHBOARD_TOKEN (--token), SWITCHBOARD_LOG (--log-level),
SWITCHBOARD_LOG_FORMAT (--log-format); a flag overrides its variable.";

/// Message hub and client for cooperating processes.
///
/// A hub binds a random free port; the other commands find it by service
/// name (or take --addr), prove the shared secret (the per-user secret file,
/// or --token / SWITCHBOARD_TOKEN), and act as a client.
#[derive(Debug, Parser)]
#[command(name = "switchboard", version, after_help = EXIT_CODES)]
pub struct Cli {
    #[command(flatten)]
    global: Global,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
#[allow(clippy::large_enum_variant)] // parsed once per process; boxing buys nothing
enum Command {
    /// Run a hub until SIGINT or SIGTERM; prints one ready line with its address.
    ///
    /// Under systemd (Type=notify) it tells the service manager when it is
    /// ready (READY=1), stopping (STOPPING=1) and alive (WATCHDOG=1 when
    /// WatchdogSec is set); see docs/OPERATIONS.md.
    Hub {
        /// Read settings from this configuration file (TOML; see `config
        /// default`); flags given here override it.
        #[arg(long, value_name = "FILE")]
        config: Option<std::path::PathBuf>,
        #[command(flatten)]
        policy: policy::PolicyArgs,
        /// Address to listen on, e.g. 127.0.0.1:0 (default: a random free
        /// loopback port).
        #[arg(long, value_name = "ADDR")]
        listen: Option<String>,
        /// Also serve HTTP clients (long poll), WebSocket clients at /v1/ws,
        /// /metrics and the dashboard on this address, e.g. 127.0.0.1:0.
        #[arg(long, value_name = "ADDR")]
        http: Option<String>,
        /// Worker threads of the hub's runtime (default: one per CPU the
        /// process may run on; see docs/OPERATIONS.md, "Worker threads").
        #[arg(long, value_name = "N", value_parser = clap::value_parser!(u16).range(1..=config::MAX_THREADS as i64))]
        threads: Option<u16>,
        /// Serve WebSocket clients (on the --http listener; without --http,
        /// on a free loopback port).
        #[arg(long)]
        ws: bool,
        /// Run as the hot standby of the service's primary: mirror it and
        /// take over its address when it dies (waits for a primary to
        /// appear). A hub that finds a newer primary of its service also
        /// turns itself into its standby.
        #[arg(long)]
        standby: bool,
        /// The primary's address (with --standby, or `standby = true` in
        /// the configuration file), instead of discovery.
        #[arg(long, value_name = "ADDR")]
        primary: Option<String>,
        /// Replication heartbeat interval, milliseconds (default 50).
        #[arg(long, value_name = "MS", value_parser = clap::value_parser!(u64).range(1..))]
        heartbeat_ms: Option<u64>,
        /// Missed heartbeats before the replication peer counts as dead
        /// (default 4).
        #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
        heartbeat_misses: Option<u32>,
        /// Listen on the Unix socket at this path (default: one in the
        /// per-user runtime directory). Local clients prefer it; over it a
        /// client needs no secret when its user is admitted.
        #[arg(long, value_name = "PATH", conflicts_with = "no_unix")]
        unix: Option<std::path::PathBuf>,
        /// Mode of the Unix socket file, octal (default 600). Other users
        /// need write permission (e.g. 666, with a policy that admits them)
        /// and a --unix path outside the private runtime directory.
        #[arg(long, value_name = "MODE", value_parser = parse_mode, conflicts_with = "no_unix")]
        unix_mode: Option<u32>,
        /// Do not listen on a Unix socket.
        #[arg(long)]
        no_unix: bool,
        #[command(flatten)]
        tls: tls_args::HubTlsArgs,
        #[command(flatten)]
        federate: federate::FederateArgs,
    },
    /// Work with hub configuration files (see `hub --config`).
    Config {
        #[command(subcommand)]
        command: config::ConfigCommand,
    },
    /// Print a shell completion script: `switchboard completions bash >
    /// /etc/bash_completion.d/switchboard`, or for zsh or fish.
    Completions {
        /// The shell.
        shell: clap_complete::Shell,
    },
    /// Print the manual page (roff): `switchboard man | man -l -`.
    Man,
    /// Print the bearer token of the HTTP gateway for this secret (or
    /// --token).
    Token,
    /// Work with permission policy files (see `hub --policy`).
    Policy {
        #[command(subcommand)]
        command: policy::PolicyCommand,
    },
    /// Find hubs of a service and print their addresses.
    Discover {
        /// Service name (default: --service).
        name: Option<String>,
        /// List every hub found, not just the first.
        #[arg(long)]
        all: bool,
    },
    /// Send a one-way message to a client.
    Send {
        /// Target client id.
        #[arg(long, value_name = "ID")]
        to: String,
        /// Payload, or - to read standard input.
        payload: String,
    },
    /// Send a request to a client and print its reply.
    Request {
        /// Target client id.
        #[arg(long, value_name = "ID")]
        to: String,
        /// Seconds to wait for the reply.
        #[arg(long, default_value_t = 30.0, value_name = "SECS")]
        timeout: f64,
        /// Payload, or - to read standard input.
        payload: String,
    },
    /// Answer requests sent to an id.
    Serve {
        /// Client id to serve as.
        #[arg(long, value_name = "ID")]
        id: String,
        /// Reply with the request's payload.
        #[arg(long, conflicts_with = "exec", required_unless_present = "exec")]
        echo: bool,
        /// Run this shell command per request: the payload on its standard
        /// input, its standard output as the reply (a non-zero exit is an
        /// error reply).
        #[arg(long, value_name = "CMD")]
        exec: Option<String>,
    },
    /// Print messages sent to an id (direct and broadcast).
    Listen {
        /// Client id to listen as.
        #[arg(long, value_name = "ID")]
        id: String,
        /// Exit after this many messages.
        #[arg(long, value_name = "N")]
        count: Option<u64>,
    },
    /// Publish a message to a topic.
    Pub {
        /// Topic, e.g. orders.eu.created.
        topic: String,
        /// Payload, or - to read standard input.
        payload: String,
    },
    /// Print messages published to topics matching a pattern.
    Sub {
        /// Pattern: `*` matches one segment, a final `>` the rest.
        pattern: String,
        /// Exit after this many messages.
        #[arg(long, value_name = "N")]
        count: Option<u64>,
        /// Join this queue group (each message goes to one member).
        #[arg(long, value_name = "GROUP")]
        group: Option<String>,
    },
    /// Read and change the shared key/value state.
    Kv {
        #[command(subcommand)]
        command: KvCommand,
    },
    /// List the connected clients.
    Clients,
    /// Print the hub's status and counters.
    Status,
    /// Check the hub's health for a monitoring system: reachable, proof
    /// verified, standby attached and its lag. Exits 0 OK, 1 WARNING,
    /// 2 CRITICAL, 3 UNKNOWN (Nagios plugin conventions), in every format.
    Check {
        #[command(flatten)]
        args: check::CheckArgs,
    },
    /// Start a hub and clients in this process and show every pattern.
    Demo,
    /// Measure pub/sub and request/reply through the client API.
    ///
    /// Runs on the hub given by --addr, or discovered for an explicit
    /// --service (both proving --token or the secret file, as every
    /// command); with neither, on a hub started in this process. Each
    /// pub/sub run reports messages published, delivered, dropped and
    /// missing.
    Bench {
        /// Messages to publish for pub/sub 1->1 (1->N publishes this / N).
        #[arg(long, default_value_t = 200_000)]
        messages: u64,
        /// Payload size in bytes.
        #[arg(long, default_value_t = 64)]
        size: usize,
        /// Subscribers for the fan-out run.
        #[arg(long, default_value_t = 10)]
        fanout: u64,
        /// Requests for the request/reply runs.
        #[arg(long, default_value_t = 20_000)]
        requests: u64,
        /// Requests in flight for the concurrent request/reply run.
        #[arg(long, default_value_t = 32)]
        concurrency: u64,
        /// Messages each subscriber's stream holds; when a subscriber falls
        /// this far behind, `--overflow` decides what happens.
        #[arg(long, default_value_t = bench::DEFAULT_CAPACITY, value_name = "N")]
        capacity: usize,
        /// What a subscriber's full stream does: `block` (push back on the
        /// connection, nothing dropped), `drop-newest` or `drop-oldest`
        /// (dropped messages counted).
        #[arg(long, default_value = "block", value_parser = ["block", "drop-newest", "drop-oldest"])]
        overflow: String,
        /// Microseconds each subscriber spends on a message (a slow
        /// consumer, to see the drop policy at work).
        #[arg(long, default_value_t = 0, value_name = "US")]
        consume_delay_us: u64,
        /// Exit with code 6 when any message was dropped or not delivered.
        #[arg(long)]
        strict: bool,
    },
}

#[derive(Debug, Subcommand)]
enum KvCommand {
    /// Print a key's value (exit 1 if missing).
    Get {
        /// Key.
        key: String,
    },
    /// Set a key; prints the new version.
    Set {
        /// Key.
        key: String,
        /// Value, or - to read standard input.
        value: String,
    },
    /// Delete a key.
    Del {
        /// Key.
        key: String,
    },
    /// Print a key's value and every change.
    Watch {
        /// Key.
        key: String,
        /// Exit after this many updates (the current value counts).
        #[arg(long, value_name = "N")]
        count: Option<u64>,
        /// Watch every key starting with KEY.
        #[arg(long)]
        prefix: bool,
    },
}

/// Exit code for an error.
pub fn exit_code(err: &anyhow::Error) -> u8 {
    for cause in err.chain() {
        if cause.downcast_ref::<bench::Incomplete>().is_some() {
            return 6;
        }
        if cause.downcast_ref::<policy::Invalid>().is_some()
            || cause.downcast_ref::<config::Invalid>().is_some()
        {
            return 2;
        }
        if let Some(e) = cause.downcast_ref::<ClientError>() {
            return match e {
                ClientError::Timeout(_) => 3,
                ClientError::NoSuchClient(_) => 4,
                ClientError::AuthFailed(_) | ClientError::HubUnverified { .. } => 5,
                // The hub's certificate is not trusted, or ours was refused.
                ClientError::Tls(t)
                    if !matches!(t, TlsError::Io { .. } | TlsError::NotTls { .. }) =>
                {
                    5
                }
                _ => 1,
            };
        }
    }
    1
}

pub fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            // clap's convention: 2 for a usage error, 0 for --help.
            let code = if e.use_stderr() { 2 } else { 0 };
            let _ = e.print();
            return ExitCode::from(code);
        }
    };
    // The hub's configuration file, read before logging starts: its [log]
    // table sets the level and format unless a flag or variable does.
    let file = match &cli.command {
        Command::Hub {
            config: Some(path), ..
        } => match config::FileConfig::load(path) {
            Ok(file) => Some(file),
            Err(e) => {
                eprintln!("switchboard: error: {}", explain(&e));
                return ExitCode::from(exit_code(&e));
            }
        },
        _ => None,
    };
    init_logging(&cli.global, file.as_ref().map(|f| &f.log));
    let mut runtime = tokio::runtime::Builder::new_multi_thread();
    if let Command::Hub { threads, .. } = &cli.command {
        let configured = match threads {
            Some(n) => usize::from(*n),
            None => file.as_ref().map_or(0, |f| f.hub.threads),
        };
        runtime.worker_threads(config::worker_threads(configured));
    }
    let runtime = match runtime.enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("switchboard: error: cannot start the runtime: {e}");
            return ExitCode::from(1);
        }
    };
    match runtime.block_on(run(cli, file)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // `check` printed its report; its state is the exit code.
            if let Some(outcome) = e.downcast_ref::<check::Outcome>() {
                return ExitCode::from(outcome.0.code());
            }
            let msg = explain(&e);
            eprintln!("switchboard: error: {msg}");
            ExitCode::from(exit_code(&e))
        }
    }
}

/// Logs to standard error at `--log-level` (or `SWITCHBOARD_LOG`, or the
/// configuration file's level) in `--log-format`.
fn init_logging(g: &Global, file: Option<&config::LogSection>) {
    let level = g
        .log_level
        .clone()
        .or_else(|| file.map(|f| f.level.clone()))
        .unwrap_or_else(|| config::DEFAULT_LOG_LEVEL.to_string());
    let format = g
        .log_format
        .or_else(|| file.map(|f| f.format))
        .unwrap_or(config::LogFormat::Text);
    let filter = tracing_subscriber::EnvFilter::builder()
        .parse(&level)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(config::DEFAULT_LOG_LEVEL));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = match format {
        config::LogFormat::Text => builder.try_init(),
        config::LogFormat::Json => builder
            .json()
            .with_current_span(true)
            .with_span_list(true)
            .try_init(),
    };
}

/// The one-line message for an error.
fn explain(e: &anyhow::Error) -> String {
    let disconnected = e.chain().any(|c| {
        matches!(
            c.downcast_ref::<ClientError>(),
            Some(ClientError::Disconnected)
        )
    });
    if disconnected {
        // The client's own message speaks to programs using the API.
        return "the connection to the hub was lost and not resumed within --wait; \
                the command's outcome is unknown: check, then run it again"
            .to_string();
    }
    // A configuration file's error shows the line it is about, with a
    // caret under the key: keep its lines.
    if let Some(invalid) = e.chain().find_map(|c| c.downcast_ref::<config::Invalid>()) {
        return invalid.to_string();
    }
    // Each cause once: an error whose message already quotes its source
    // (the operating system's words, say) is not followed by it again.
    let mut msg = String::new();
    for cause in e.chain() {
        let part = cause.to_string();
        if msg.contains(&part) {
            continue;
        }
        if !msg.is_empty() {
            msg.push_str(": ");
        }
        msg.push_str(&part);
    }
    msg.replace('\n', " ")
}

async fn run(cli: Cli, file: Option<config::FileConfig>) -> anyhow::Result<()> {
    let mut g = cli.global;
    match cli.command {
        Command::Hub {
            config: _,
            policy,
            listen,
            http,
            threads: _,
            ws,
            standby,
            primary,
            heartbeat_ms,
            heartbeat_misses,
            unix,
            unix_mode,
            no_unix,
            tls,
            federate,
        } => {
            // The file, then the flags over it.
            let mut file = file.unwrap_or_default();
            match g.service_given() {
                true => file.hub.service = g.service().to_string(),
                false => g.default_service(&file.hub.service),
            }
            if policy.policy.is_some() {
                file.hub.policy = policy.policy;
            }
            let r = &mut file.replication;
            r.standby |= standby;
            r.primary =
                match primary {
                    Some(p) => Some(p.parse().map_err(|e| {
                        anyhow::anyhow!("invalid --primary {p:?}: {e}; use IP:PORT")
                    })?),
                    None => r.primary,
                };
            r.heartbeat_ms = heartbeat_ms.unwrap_or(r.heartbeat_ms);
            r.heartbeat_misses = heartbeat_misses.unwrap_or(r.heartbeat_misses);
            if no_unix {
                file.unix.enabled = false;
            }
            if unix.is_some() {
                file.unix.enabled = true;
                file.unix.path = unix;
            }
            file.unix.mode = unix_mode.unwrap_or(file.unix.mode);
            tls.apply(&g.tls, &mut file.tls);
            federate.apply_to(&mut file.federation)?;
            file.check_combinations().map_err(config::Invalid)?;
            // --ws without an HTTP listener: one on a free loopback port.
            let http = http
                .or_else(|| (ws && file.http.listen.is_none()).then(|| "127.0.0.1:0".to_owned()));
            let opts = commands::HubOpts {
                config: file,
                listen,
                http,
            };
            commands::hub(&g, opts).await
        }
        Command::Config { command } => config::run(command),
        Command::Completions { shell } => {
            let mut script = Vec::new();
            clap_complete::generate(shell, &mut Cli::command(), "switchboard", &mut script);
            write_stdout(&script)
        }
        Command::Man => {
            let mut page = Vec::new();
            clap_mangen::Man::new(Cli::command()).render(&mut page)?;
            write_stdout(&page)
        }
        Command::Token => commands::token(&g),
        Command::Policy { command } => policy::run(command),
        Command::Discover { name, all } => commands::discover(&g, name, all).await,
        Command::Send { to, payload } => commands::send(&g, &to, &payload).await,
        Command::Request {
            to,
            timeout,
            payload,
        } => commands::request(&g, &to, timeout, &payload).await,
        Command::Serve { id, echo, exec } => commands::serve(&g, &id, echo, exec).await,
        Command::Listen { id, count } => commands::listen(&g, &id, count).await,
        Command::Pub { topic, payload } => commands::publish(&g, &topic, &payload).await,
        Command::Sub {
            pattern,
            count,
            group,
        } => commands::sub(&g, &pattern, count, group).await,
        Command::Kv { command } => match command {
            KvCommand::Get { key } => commands::kv_get(&g, &key).await,
            KvCommand::Set { key, value } => commands::kv_set(&g, &key, &value).await,
            KvCommand::Del { key } => commands::kv_del(&g, &key).await,
            KvCommand::Watch { key, count, prefix } => {
                commands::kv_watch(&g, &key, count, prefix).await
            }
        },
        Command::Clients => commands::clients(&g).await,
        Command::Status => commands::status(&g).await,
        Command::Check { args } => check::run(&g, args).await,
        Command::Demo => demo::run(g.json).await,
        Command::Bench {
            messages,
            size,
            fanout,
            requests,
            concurrency,
            capacity,
            overflow,
            consume_delay_us,
            strict,
        } => {
            bench::run(
                &g,
                bench::BenchArgs {
                    messages,
                    size,
                    fanout,
                    requests,
                    concurrency,
                    capacity,
                    overflow: match overflow.as_str() {
                        "drop-newest" => switchboard::Overflow::DropNewest,
                        "drop-oldest" => switchboard::Overflow::DropOldest,
                        _ => switchboard::Overflow::Block,
                    },
                    consume_delay: Duration::from_micros(consume_delay_us),
                    strict,
                },
            )
            .await
        }
    }
}

/// Writes `bytes` to standard output; a closed pipe (`| head`) is not an
/// error.
fn write_stdout(bytes: &[u8]) -> anyhow::Result<()> {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    match out.write_all(bytes).and_then(|()| out.flush()) {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        r => Ok(r?),
    }
}

/// `--unix-mode`: an octal permission mode such as 600 or 0666.
fn parse_mode(s: &str) -> Result<u32, String> {
    match u32::from_str_radix(s.trim_start_matches("0o"), 8) {
        Ok(m) if m <= 0o777 => Ok(m),
        _ => Err(format!("{s:?} is not an octal mode such as 600 or 666")),
    }
}
