//! `switchboard check`: a health check for monitoring systems. It connects
//! as a client (which verifies the hub's proof of the secret), asks for the
//! hub's status, and reports each check with a state and the Nagios exit
//! code of the worst (0 OK, 1 WARNING, 2 CRITICAL, 3 UNKNOWN), in every
//! output format. Reference: docs/OPERATIONS.md, "Health checks".

use std::fmt::Write as _;

use clap::{Args, ValueEnum};
use serde_json::json;
use switchboard::{ClientError, HubStatus};

use super::global::Global;

/// Options of `switchboard check`.
#[derive(Debug, Args)]
pub struct CheckArgs {
    /// Output: text (one line per check), json (one object), nagios (one
    /// plugin line with performance data) or prometheus (exposition text).
    /// The exit code is the same for each.
    #[arg(long, value_enum, value_name = "FORMAT")]
    pub format: Option<Format>,
    /// WARNING when the standby lags by more than this many changes.
    #[arg(long, value_name = "CHANGES")]
    pub warn_lag: Option<u64>,
    /// CRITICAL when the standby lags by more than this many changes.
    #[arg(long, value_name = "CHANGES")]
    pub crit_lag: Option<u64>,
    /// WARNING when no standby is attached to the primary (without it a
    /// hub without a standby is OK).
    #[arg(long)]
    pub require_standby: bool,
}

/// `check --format`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Format {
    /// One line per check.
    Text,
    /// One JSON object.
    Json,
    /// A Nagios plugin line: `SWITCHBOARD OK - ... | perfdata`.
    Nagios,
    /// Prometheus exposition text (for the node exporter's textfile
    /// collector).
    Prometheus,
}

/// The state of a check. The overall state is the worst of the checks',
/// CRITICAL before UNKNOWN before WARNING before OK.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// Fine.
    Ok,
    /// Needs attention.
    Warning,
    /// Broken.
    Critical,
    /// Could not be checked.
    Unknown,
}

impl State {
    /// The Nagios exit code.
    pub fn code(self) -> u8 {
        match self {
            State::Ok => 0,
            State::Warning => 1,
            State::Critical => 2,
            State::Unknown => 3,
        }
    }

    fn name(self) -> &'static str {
        match self {
            State::Ok => "OK",
            State::Warning => "WARNING",
            State::Critical => "CRITICAL",
            State::Unknown => "UNKNOWN",
        }
    }

    /// How bad: CRITICAL > UNKNOWN > WARNING > OK.
    fn rank(self) -> u8 {
        match self {
            State::Ok => 0,
            State::Warning => 1,
            State::Unknown => 2,
            State::Critical => 3,
        }
    }
}

/// The check's outcome, for the process's exit code (0 to 3).
#[derive(Debug, thiserror::Error)]
#[error("check: {}", .0.name())]
pub struct Outcome(pub State);

/// One check.
struct Item {
    name: &'static str,
    state: State,
    detail: String,
}

/// Runs the check, prints the report, and returns the overall state as an
/// [`Outcome`] error unless it is OK.
pub async fn run(g: &Global, args: CheckArgs) -> anyhow::Result<()> {
    if let (Some(w), Some(c)) = (args.warn_lag, args.crit_lag) {
        if w > c {
            eprintln!("switchboard: error: --warn-lag {w} is above --crit-lag {c}");
            return Err(Outcome(State::Unknown).into());
        }
    }
    let format = args
        .format
        .unwrap_or(if g.json { Format::Json } else { Format::Text });
    let (items, status) = gather(g, &args).await;
    let overall = items
        .iter()
        .map(|i| i.state)
        .max_by_key(|s| s.rank())
        .unwrap_or(State::Unknown);
    let report = render(format, overall, &items, status.as_ref(), &args);
    super::write_stdout(report.as_bytes())?;
    match overall {
        State::Ok => Ok(()),
        s => Err(Outcome(s).into()),
    }
}

async fn gather(g: &Global, args: &CheckArgs) -> (Vec<Item>, Option<HubStatus>) {
    let mut items = Vec::new();
    // Without a secret (a unix: address and no token) the client relies on
    // the socket's owner instead of the hub's proof.
    let unix_peer = g.addr.as_deref().is_some_and(|a| a.starts_with("unix:")) && g.token.is_none();
    let id = format!("check-{}-{:08x}", std::process::id(), rand::random::<u32>());
    let client = match g.connect(&id, false).await {
        Ok(c) => c,
        Err(e) => {
            let client_error = e.chain().find_map(|c| c.downcast_ref::<ClientError>());
            let (reach, proof) = match client_error {
                Some(ClientError::HubUnverified { .. }) => (
                    (State::Ok, "answered".to_string()),
                    (
                        State::Critical,
                        format!("not verified: {}", super::explain(&e)),
                    ),
                ),
                Some(ClientError::AuthFailed(_)) => (
                    (State::Ok, "answered".to_string()),
                    (
                        State::Critical,
                        format!("our proof was refused: {}", super::explain(&e)),
                    ),
                ),
                Some(ClientError::Secret(_)) | None => (
                    (
                        State::Unknown,
                        format!("cannot try: {}", super::explain(&e)),
                    ),
                    (State::Unknown, "not checked".to_string()),
                ),
                Some(_) => (
                    (State::Critical, super::explain(&e)),
                    (State::Unknown, "not checked".to_string()),
                ),
            };
            items.push(item("reachable", reach.0, reach.1));
            items.push(item("proof", proof.0, proof.1));
            return (items, None);
        }
    };
    let addr = client
        .hub_addr()
        .map(|a| a.to_string())
        .or_else(|| g.addr.clone())
        .unwrap_or_else(|| "the hub".into());
    items.push(item("reachable", State::Ok, format!("connected to {addr}")));
    items.push(if unix_peer {
        item(
            "proof",
            State::Ok,
            "not asked over the Unix socket (its owner was checked instead)".into(),
        )
    } else {
        item("proof", State::Ok, "the hub proved the secret".into())
    });
    let status = g.read(&client, || client.status()).await;
    client.close().await;
    let s = match status {
        Ok(s) => s,
        Err(e) => {
            items.push(item("status", State::Critical, format!("no status: {e}")));
            return (items, None);
        }
    };
    items.push(standby_item(&s, args));
    items.extend(federation_item(&s));
    (items, Some(s))
}

fn item(name: &'static str, state: State, detail: String) -> Item {
    Item {
        name,
        state,
        detail,
    }
}

fn standby_item(s: &HubStatus, args: &CheckArgs) -> Item {
    if s.hub.role != "primary" {
        return item(
            "standby",
            State::Ok,
            format!("this hub is a {}", s.hub.role),
        );
    }
    if s.standby_addr.is_empty() {
        let state = if args.require_standby {
            State::Warning
        } else {
            State::Ok
        };
        return item("standby", state, "none attached".into());
    }
    let lag = s.repl_lag_changes;
    let state = match (args.warn_lag, args.crit_lag) {
        (_, Some(c)) if lag > c => State::Critical,
        (Some(w), _) if lag > w => State::Warning,
        _ => State::Ok,
    };
    item(
        "standby",
        state,
        format!(
            "{} attached, lag {lag} changes ({} bytes)",
            s.standby_addr, s.repl_lag_bytes
        ),
    )
}

/// `federation`: OK while the hub is connected to a NATS server of its
/// federation, CRITICAL while not or once fenced; absent when the hub is not federated
/// (its status has no `federation_connected` counter).
fn federation_item(s: &HubStatus) -> Option<Item> {
    let c = &s.counters;
    let connected = *c.get("federation_connected")?;
    let named = |prefix: &str| c.keys().find_map(|k| k.strip_prefix(prefix));
    let members = c.get("federation_members").copied().unwrap_or(0);
    if c.get("federation_fenced").is_some_and(|f| *f == 1) {
        return Some(item(
            "federation",
            State::Critical,
            "fenced: a standby took this hub's name over (a higher epoch); it no longer serves in the federation".to_owned(),
        ));
    }
    if connected == 0 {
        return Some(item(
            "federation",
            State::Critical,
            format!(
                "not connected to the NATS cluster (was {}); traffic to other hubs fails",
                named("federation_server:").unwrap_or("no server")
            ),
        ));
    }
    let rtt = c.get("federation_rtt_us").copied().unwrap_or(0) as f64 / 1e3;
    Some(item(
        "federation",
        State::Ok,
        format!(
            "connected to {}{}, {members} other hub(s), rtt {rtt:.1} ms",
            named("federation_server:").unwrap_or("?"),
            named("federation_cluster:")
                .map(|n| format!(" (cluster {n})"))
                .unwrap_or_default(),
        ),
    ))
}

fn render(
    format: Format,
    overall: State,
    items: &[Item],
    status: Option<&HubStatus>,
    args: &CheckArgs,
) -> String {
    let lag = status.filter(|s| !s.standby_addr.is_empty());
    let mut out = String::new();
    match format {
        Format::Text => {
            let _ = writeln!(out, "{}", overall.name());
            for i in items {
                let _ = writeln!(out, "{:<11} {:<8} {}", i.name, i.state.name(), i.detail);
            }
        }
        Format::Json => {
            let checks: serde_json::Map<String, serde_json::Value> = items
                .iter()
                .map(|i| {
                    (
                        i.name.to_string(),
                        json!({"state": i.state.name(), "detail": i.detail}),
                    )
                })
                .collect();
            let v = json!({
                "state": overall.name(),
                "code": overall.code(),
                "checks": checks,
                "role": status.map(|s| s.hub.role),
                "standby": lag.map(|s| s.standby_addr.clone()),
                "lag_changes": lag.map(|s| s.repl_lag_changes),
                "lag_bytes": lag.map(|s| s.repl_lag_bytes),
                "federation": items
                    .iter()
                    .find(|i| i.name == "federation")
                    .map(|i| i.state.name()),
            });
            let _ = writeln!(out, "{v}");
        }
        Format::Nagios => {
            let bad: Vec<String> = items
                .iter()
                .filter(|i| i.state != State::Ok)
                .map(|i| format!("{}: {}", i.name, i.detail))
                .collect();
            let summary = if bad.is_empty() {
                items
                    .iter()
                    .map(|i| format!("{}: {}", i.name, i.detail))
                    .collect::<Vec<_>>()
                    .join(", ")
            } else {
                bad.join(", ")
            };
            let _ = write!(
                out,
                "SWITCHBOARD {} - {}",
                overall.name(),
                summary.replace('|', "/")
            );
            if let Some(s) = lag {
                let t = |v: Option<u64>| v.map(|v| v.to_string()).unwrap_or_default();
                let _ = write!(
                    out,
                    " | lag_changes={};{};{};0; lag_bytes={}B;;;0;",
                    s.repl_lag_changes,
                    t(args.warn_lag),
                    t(args.crit_lag),
                    s.repl_lag_bytes
                );
            }
            out.push('\n');
        }
        Format::Prometheus => {
            out.push_str(
                "# HELP switchboard_check_state State of each check: 0 OK, 1 WARNING, 2 CRITICAL, 3 UNKNOWN.\n\
                 # TYPE switchboard_check_state gauge\n",
            );
            for i in items {
                let _ = writeln!(
                    out,
                    "switchboard_check_state{{check=\"{}\"}} {}",
                    i.name,
                    i.state.code()
                );
            }
            out.push_str(
                "# HELP switchboard_check_up Whether the hub answered with its status.\n\
                 # TYPE switchboard_check_up gauge\n",
            );
            let _ = writeln!(out, "switchboard_check_up {}", u8::from(status.is_some()));
            if let Some(s) = lag {
                out.push_str(
                    "# HELP switchboard_check_standby_lag_changes Changes the standby has not acknowledged.\n\
                     # TYPE switchboard_check_standby_lag_changes gauge\n",
                );
                let _ = writeln!(
                    out,
                    "switchboard_check_standby_lag_changes {}",
                    s.repl_lag_changes
                );
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(warn: Option<u64>, crit: Option<u64>, require: bool) -> CheckArgs {
        CheckArgs {
            format: None,
            warn_lag: warn,
            crit_lag: crit,
            require_standby: require,
        }
    }

    fn primary(standby: &str, lag: u64) -> HubStatus {
        let mut s = HubStatus::default();
        s.hub.role = "primary";
        s.standby_addr = standby.into();
        s.repl_lag_changes = lag;
        s
    }

    #[test]
    fn lag_thresholds() {
        let s = primary("127.0.0.1:2", 50);
        assert_eq!(standby_item(&s, &args(None, None, false)).state, State::Ok);
        assert_eq!(
            standby_item(&s, &args(Some(50), Some(100), false)).state,
            State::Ok
        );
        assert_eq!(
            standby_item(&s, &args(Some(49), Some(100), false)).state,
            State::Warning
        );
        assert_eq!(
            standby_item(&s, &args(Some(10), Some(49), false)).state,
            State::Critical
        );
        assert_eq!(
            standby_item(&s, &args(None, Some(49), false)).state,
            State::Critical
        );
    }

    #[test]
    fn no_standby_and_standby_role() {
        let s = primary("", 0);
        assert_eq!(
            standby_item(&s, &args(Some(1), None, false)).state,
            State::Ok
        );
        assert_eq!(
            standby_item(&s, &args(None, None, true)).state,
            State::Warning
        );
        let mut s = primary("", 0);
        s.hub.role = "standby";
        assert_eq!(standby_item(&s, &args(None, None, true)).state, State::Ok);
    }

    #[test]
    fn nagios_line_names_what_is_wrong_with_performance_data() {
        let s = primary("127.0.0.1:2", 7);
        let a = args(Some(5), Some(10), false);
        let items = vec![
            item("reachable", State::Ok, "connected".into()),
            standby_item(&s, &a),
        ];
        let line = render(Format::Nagios, State::Warning, &items, Some(&s), &a);
        assert_eq!(
            line,
            "SWITCHBOARD WARNING - standby: 127.0.0.1:2 attached, lag 7 changes (0 bytes) \
             | lag_changes=7;5;10;0; lag_bytes=0B;;;0;\n"
        );
    }
}
