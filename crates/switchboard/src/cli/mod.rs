//! Command-line interface.

mod bench;
mod commands;
mod demo;
mod demo_session;
mod dial;
mod federate;
mod global;
mod policy;
mod tls_args;

use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use switchboard::discovery::tls::TlsError;
use switchboard::ClientError;

use global::Global;

/// Exit codes, shown in `--help`.
const EXIT_CODES: &str = "\
Exit codes:
  0  success
  1  usage error, hub or key not found, or another failure
  3  timeout (no reply in time)
  4  no such client (the target id is not connected)
  5  authentication failure (wrong token or secret, an unverified hub, or a
     TLS certificate not trusted or refused)
  6  bench --strict: a message was dropped or not delivered
  2  policy check: the policy file is invalid";

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
enum Command {
    /// Run a hub until SIGINT or SIGTERM; prints one ready line with its address.
    Hub {
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
        /// The primary's address (with --standby), instead of discovery.
        #[arg(long, value_name = "ADDR", requires = "standby")]
        primary: Option<String>,
        /// Replication heartbeat interval, milliseconds (default 50).
        #[arg(long, value_name = "MS", default_value_t = 50)]
        heartbeat_ms: u64,
        /// Missed heartbeats before the replication peer counts as dead
        /// (default 4).
        #[arg(long, value_name = "N", default_value_t = 4)]
        heartbeat_misses: u32,
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
        if cause.downcast_ref::<policy::Invalid>().is_some() {
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
            let code = if e.use_stderr() { 1 } else { 0 };
            let _ = e.print();
            return ExitCode::from(code);
        }
    };
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("SWITCHBOARD_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .try_init();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("switchboard: error: cannot start the runtime: {e}");
            return ExitCode::from(1);
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            let msg = explain(&e);
            eprintln!("switchboard: error: {msg}");
            ExitCode::from(exit_code(&e))
        }
    }
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

async fn run(cli: Cli) -> anyhow::Result<()> {
    let g = cli.global;
    match cli.command {
        Command::Hub {
            policy,
            listen,
            http,
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
            let http = http.or_else(|| ws.then(|| "127.0.0.1:0".to_owned()));
            let opts = commands::HubOpts {
                unix: commands::unix_socket(unix, unix_mode, no_unix),
                policy: policy.policy,
                listen,
                http,
                standby,
                primary,
                heartbeat: (
                    std::time::Duration::from_millis(heartbeat_ms),
                    heartbeat_misses,
                ),
                tls: tls.settings(&g.tls)?,
                federate,
            };
            commands::hub(&g, opts).await
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

/// `--unix-mode`: an octal permission mode such as 600 or 0666.
fn parse_mode(s: &str) -> Result<u32, String> {
    match u32::from_str_radix(s.trim_start_matches("0o"), 8) {
        Ok(m) if m <= 0o777 => Ok(m),
        _ => Err(format!("{s:?} is not an octal mode such as 600 or 666")),
    }
}
