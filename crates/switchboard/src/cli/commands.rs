//! The subcommands that act as a client (and `hub`).

use std::io::{Read, Write};
use std::time::Duration;

use anyhow::Context;
use futures::StreamExt;
use serde_json::json;
use switchboard::{Bytes, Client, ClientError, IncomingRequest, Message, MessageKind};

use super::global::Global;

/// The payload argument, or standard input for `-`.
fn payload(arg: &str) -> anyhow::Result<Bytes> {
    if arg == "-" {
        let mut buf = Vec::new();
        std::io::stdin()
            .read_to_end(&mut buf)
            .context("cannot read the payload from standard input")?;
        Ok(buf.into())
    } else {
        Ok(Bytes::copy_from_slice(arg.as_bytes()))
    }
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// Puts bytes into a `--json` object unmangled: as the string field `key`
/// when they are UTF-8, else as `<key>_base64` (standard alphabet, padded)
/// and no `key`.
fn put_bytes(v: &mut serde_json::Value, key: &str, b: &[u8]) {
    use base64::Engine as _;
    match std::str::from_utf8(b) {
        Ok(s) => v[key] = json!(s),
        Err(_) => {
            v[format!("{key}_base64")] = json!(base64::engine::general_purpose::STANDARD.encode(b))
        }
    }
}

/// `v` with the bytes `b` put in as [`put_bytes`] does.
fn with_bytes(mut v: serde_json::Value, key: &str, b: &[u8]) -> serde_json::Value {
    put_bytes(&mut v, key, b);
    v
}

/// Prints a line to standard output and flushes it, so readers of a pipe
/// see it at once.
fn out(line: impl std::fmt::Display) -> anyhow::Result<()> {
    let mut stdout = std::io::stdout().lock();
    writeln!(stdout, "{line}")?;
    stdout.flush()?;
    Ok(())
}

/// Prints bytes as they are (a reply or value need not be text) and a
/// newline.
fn out_bytes(b: &[u8]) -> anyhow::Result<()> {
    let mut stdout = std::io::stdout().lock();
    stdout.write_all(b)?;
    stdout.write_all(b"\n")?;
    stdout.flush()?;
    Ok(())
}

/// Tells the user on standard error that a long-running command is ready.
fn ready(g: &Global, what: &str, client: &Client) -> anyhow::Result<()> {
    if g.json {
        eprintln!(
            "{}",
            json!({"event": "ready", "what": what, "id": client.id(),
                   "hub": client.hub_addr().map(|a| a.to_string())})
        );
    } else {
        eprintln!("{what} as {} (ctrl-c to stop)", client.id());
    }
    Ok(())
}

fn cli_id() -> String {
    format!("cli-{}-{:08x}", std::process::id(), rand::random::<u32>())
}

/// Options of `switchboard hub`: the configuration (file and flags) and
/// the address flags, which override it.
pub struct HubOpts {
    pub config: super::config::FileConfig,
    pub listen: Option<String>,
    pub http: Option<String>,
}

pub async fn hub(g: &Global, opts: HubOpts) -> anyhow::Result<()> {
    let mut b = opts.config.builder()?;
    if let Some(path) = &opts.config.hub.policy {
        b = b.admission(super::policy::load(path)?);
    }
    if let Some(listen) = &opts.listen {
        b = b.listen(listen);
    }
    if let Some(http) = &opts.http {
        b = b.http(http);
    }
    if let Some(token) = &g.token {
        b = b.token(token);
    }
    // Socket activation: listeners systemd passed replace the addresses.
    let activated = super::systemd::activated()?;
    if let Some(native) = activated.native {
        b = b.listener(native);
    }
    if let Some(http) = activated.http {
        b = b.http_listener(http);
    }
    let (built, federation) = super::federate::join(
        &opts.config.federation,
        g.service(),
        opts.config.replication.standby,
        opts.config.limits.kv_max_keys,
        opts.config.limits.queue_bytes,
        b,
    )
    .await?;
    b = built;
    let fenced_in_federation = async {
        match &federation {
            Some(f) => f.wait().await,
            None => std::future::pending().await,
        }
    };
    tokio::pin!(fenced_in_federation);
    let primary = opts.config.replication.primary;
    let notify = super::systemd::Notifier::from_env();
    let signal = shutdown_signal();
    tokio::pin!(signal);
    let mut standby = opts.config.replication.standby;
    loop {
        let hub = if standby {
            let handle = b.clone().start_standby(primary).await?;
            let mut state = handle.watch();
            let mut announced = false;
            let promoted = handle.promoted();
            tokio::pin!(promoted);
            let hub = loop {
                tokio::select! {
                    r = &mut promoted => match r {
                        Some(r) => break r?,
                        None => anyhow::bail!("the standby stopped: {:?}", handle.state()),
                    },
                    _ = state.changed() => {
                        let s = state.borrow_and_update().clone();
                        if let switchboard::hub::StandbyState::Following { primary, epoch, .. } = s {
                            if !announced {
                                announced = true;
                                notify.ready(&format!("standby of {} following {primary}", g.service()));
                                if g.json {
                                    out(json!({"event": "standby", "service": g.service(),
                                               "primary": primary.to_string(), "epoch": epoch,
                                               "pid": std::process::id()}))?;
                                } else {
                                    out(format!(
                                        "switchboard standby ready: service {} following {primary} (epoch {epoch}, pid {})",
                                        g.service(),
                                        std::process::id()
                                    ))?;
                                }
                            }
                        }
                    }
                    _ = &mut signal => {
                        notify.stopping();
                        handle.shutdown();
                        if !g.json {
                            eprintln!("standby stopped");
                        }
                        return Ok(());
                    }
                }
            };
            hub
        } else {
            b.clone().start().await?
        };
        let addr = hub.local_addr().to_string();
        let http = hub.http_addr().map(|a| a.to_string());
        let unix = hub.unix_path().map(|p| p.display().to_string());
        let epoch = hub.identity().epoch;
        notify.ready(&format!(
            "serving {} on {addr}{}",
            g.service(),
            http.as_deref()
                .map(|h| format!(", http on {h}"))
                .unwrap_or_default()
        ));
        if g.json {
            out(
                json!({"event": "ready", "service": g.service(), "addr": addr,
                       "http": http, "unix": unix, "pid": std::process::id(), "epoch": epoch,
                       "took_over": standby}),
            )?;
        } else {
            let gateway = http
                .map(|h| format!(", http and ws on {h} (dashboard http://{h}/)"))
                .unwrap_or_default();
            let gateway = match unix {
                Some(path) => format!("{gateway}, unix:{path}"),
                None => gateway,
            };
            let how = if standby { ", took over" } else { "" };
            out(format!(
                "switchboard hub ready: service {} on {addr}{gateway} (pid {}, epoch {epoch}{how})",
                g.service(),
                std::process::id()
            ))?;
        }
        tokio::select! {
            _ = &mut signal => {
                notify.stopping();
                hub.shutdown().await;
                if !g.json {
                    eprintln!("hub stopped");
                }
                return Ok(());
            }
            _ = hub.closed() => {}
            _ = &mut fenced_in_federation => {
                // A standby took this hub's federation name over: its
                // clients were closed with FENCED; stop serving.
                if g.json {
                    out(json!({"event": "fenced", "service": g.service(), "federation": true, "pid": std::process::id()}))?;
                } else {
                    eprintln!("fenced: a standby took this hub's name over in the federation; stopping");
                }
                hub.shutdown().await;
                anyhow::bail!("fenced by a newer primary of this hub in the federation");
            }
        }
        if !hub.fenced() {
            return Ok(());
        }
        // An old primary: a newer one serves the service; follow it.
        if g.json {
            out(json!({"event": "fenced", "service": g.service(), "pid": std::process::id()}))?;
        } else {
            eprintln!(
                "a newer primary serves {}; becoming its standby",
                g.service()
            );
        }
        standby = true;
    }
}

/// Prints the HTTP gateway's bearer token for the configured secret.
pub fn token(g: &Global) -> anyhow::Result<()> {
    let token = switchboard_hub::http_token(&g.secret()?);
    if g.json {
        out(json!({ "token": token }))
    } else {
        out(token)
    }
}

/// Resolves on SIGTERM or SIGINT. The handlers are installed when this is
/// called, not when the future is first polled: a hub that said it is
/// ready (to systemd or on its ready line) must not die of a SIGTERM that
/// arrives before it waits for one.
fn shutdown_signal() -> impl std::future::Future<Output = ()> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let term = signal(SignalKind::terminate());
        let int = signal(SignalKind::interrupt());
        async move {
            match (term, int) {
                (Ok(mut term), Ok(mut int)) => {
                    tokio::select! {
                        _ = term.recv() => {}
                        _ = int.recv() => {}
                    }
                }
                _ => {
                    let _ = tokio::signal::ctrl_c().await;
                }
            }
        }
    }
    #[cfg(not(unix))]
    {
        async {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

pub async fn discover(g: &Global, name: Option<String>, all: bool) -> anyhow::Result<()> {
    let service = name.unwrap_or_else(|| g.service().to_string());
    let hubs = switchboard::discover(&service, &g.secret()?, all, Duration::from_secs(2)).await?;
    for hub in hubs {
        if g.json {
            out(
                json!({"service": hub.hub.service, "addr": hub.addr.to_string(),
                       "instance_id": hub.hub.instance_id, "pid": hub.hub.pid,
                       "via": hub.via}),
            )?;
        } else {
            out(hub.addr)?;
        }
    }
    Ok(())
}

pub async fn send(g: &Global, to: &str, arg: &str) -> anyhow::Result<()> {
    let payload = payload(arg)?;
    let client = g.connect(&cli_id(), false).await?;
    let result = client.send(to, payload).await;
    client.close().await;
    result?;
    if g.json {
        out(json!({"sent": true, "to": to}))?;
    }
    Ok(())
}

pub async fn request(g: &Global, to: &str, timeout: f64, arg: &str) -> anyhow::Result<()> {
    if !(timeout.is_finite() && timeout > 0.0 && timeout <= 86_400.0) {
        anyhow::bail!("--timeout must be between 0 and 86400 seconds, got {timeout}");
    }
    let payload = payload(arg)?;
    let client = g.connect(&cli_id(), false).await?;
    let result = client
        .request_with(to, "", payload, Duration::from_secs_f64(timeout))
        .await;
    client.close().await;
    let reply = result?;
    if g.json {
        out(with_bytes(json!({"from": to}), "reply", &reply))?;
    } else {
        out_bytes(&reply)?;
    }
    Ok(())
}

pub async fn serve(g: &Global, id: &str, echo: bool, exec: Option<String>) -> anyhow::Result<()> {
    let client = g.connect(id, true).await?;
    let mut requests = client.requests().await?;
    // Handlers first: a SIGTERM right after the ready line stops cleanly.
    let stop = shutdown_signal();
    tokio::pin!(stop);
    ready(g, "serving", &client)?;
    let json_out = g.json;
    loop {
        tokio::select! {
            req = requests.next() => {
                let Some(req) = req else { break };
                let exec = exec.clone();
                tokio::spawn(async move {
                    if let Err(e) = answer(req, echo, exec, json_out).await {
                        eprintln!("switchboard: error: cannot reply: {e}");
                    }
                });
            }
            _ = &mut stop => break,
        }
    }
    client.close().await;
    Ok(())
}

async fn answer(
    req: IncomingRequest,
    echo: bool,
    exec: Option<String>,
    json_out: bool,
) -> Result<(), ClientError> {
    let payload = req.payload().clone();
    if json_out {
        let _ = out(with_bytes(
            json!({"event": "request", "from": req.from()}),
            "payload",
            &payload,
        ));
    }
    if echo {
        return req.reply(payload).await;
    }
    let Some(cmd) = exec else {
        return req.reply_error("no handler configured").await;
    };
    match run_exec(&cmd, &payload).await {
        Ok(out) => req.reply(out).await,
        Err(e) => req.reply_error(e).await,
    }
}

async fn run_exec(cmd: &str, input: &[u8]) -> Result<Vec<u8>, String> {
    use tokio::io::AsyncWriteExt;
    let mut child = tokio::process::Command::new("sh")
        .arg("-c")
        .arg(cmd)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| format!("cannot run {cmd:?}: {e}"))?;
    if let Some(mut stdin) = child.stdin.take() {
        let input = input.to_vec();
        tokio::spawn(async move {
            let _ = stdin.write_all(&input).await;
        });
    }
    let output = child
        .wait_with_output()
        .await
        .map_err(|e| format!("command {cmd:?} failed: {e}"))?;
    if output.status.success() {
        Ok(output.stdout)
    } else {
        let err = text(&output.stderr);
        Err(format!(
            "command exited with {}: {}",
            output.status,
            err.trim()
        ))
    }
}

fn print_message(json_out: bool, m: &Message) -> anyhow::Result<()> {
    let kind = m.kind.as_str();
    if json_out {
        let mut v = with_bytes(json!({"kind": kind, "from": m.from}), "payload", &m.payload);
        if m.kind == MessageKind::Publish {
            v["topic"] = json!(m.topic);
        }
        out(v)
    } else if m.kind == MessageKind::Publish {
        out(format!("{} {}", m.topic, text(&m.payload)))
    } else {
        out(format!("{} {}", m.from, text(&m.payload)))
    }
}

pub async fn listen(g: &Global, id: &str, count: Option<u64>) -> anyhow::Result<()> {
    let client = g.connect(id, true).await?;
    let mut messages = client.messages().await?;
    // Handlers first: a SIGTERM right after the ready line stops cleanly.
    let stop = shutdown_signal();
    tokio::pin!(stop);
    ready(g, "listening", &client)?;
    let mut seen = 0u64;
    while count.is_none_or(|c| seen < c) {
        tokio::select! {
            m = messages.next() => {
                let Some(m) = m else { break };
                print_message(g.json, &m)?;
                seen += 1;
            }
            _ = &mut stop => break,
        }
    }
    client.close().await;
    Ok(())
}

pub async fn publish(g: &Global, topic: &str, arg: &str) -> anyhow::Result<()> {
    let payload = payload(arg)?;
    let client = g.connect(&cli_id(), false).await?;
    let result = client.publish(topic, payload).await;
    client.close().await;
    result?;
    if g.json {
        out(json!({"published": true, "topic": topic}))?;
    }
    Ok(())
}

pub async fn sub(
    g: &Global,
    pattern: &str,
    count: Option<u64>,
    group: Option<String>,
) -> anyhow::Result<()> {
    let client = g.connect(&cli_id(), true).await?;
    let mut sub = client
        .subscribe_group(pattern, group.as_deref().unwrap_or(""))
        .await?;
    // Handlers first: a SIGTERM right after the ready line stops cleanly.
    let stop = shutdown_signal();
    tokio::pin!(stop);
    ready(g, "subscribed", &client)?;
    let mut seen = 0u64;
    while count.is_none_or(|c| seen < c) {
        tokio::select! {
            m = sub.next() => {
                let Some(m) = m else { break };
                print_message(g.json, &m)?;
                seen += 1;
            }
            _ = &mut stop => break,
        }
    }
    drop(sub);
    client.close().await;
    Ok(())
}

pub async fn kv_get(g: &Global, key: &str) -> anyhow::Result<()> {
    let client = g.connect(&cli_id(), false).await?;
    let kv = client.kv();
    let result = g.read(&client, || kv.get(key)).await;
    client.close().await;
    match result? {
        Some(e) => {
            if g.json {
                out(with_bytes(
                    json!({"key": e.key, "version": e.version, "found": true}),
                    "value",
                    &e.value,
                ))?;
            } else {
                out_bytes(&e.value)?;
            }
            Ok(())
        }
        None => {
            if g.json {
                out(json!({"key": key, "found": false}))?;
            }
            anyhow::bail!("key {key:?} not found; set it with `switchboard kv set {key} VALUE`")
        }
    }
}

pub async fn kv_set(g: &Global, key: &str, arg: &str) -> anyhow::Result<()> {
    let value = payload(arg)?;
    let client = g.connect(&cli_id(), false).await?;
    let result = client.kv().set(key, value).await;
    client.close().await;
    let version = result?;
    if g.json {
        out(json!({"key": key, "version": version}))?;
    } else {
        out(format!("version {version}"))?;
    }
    Ok(())
}

pub async fn kv_del(g: &Global, key: &str) -> anyhow::Result<()> {
    let client = g.connect(&cli_id(), false).await?;
    let result = client.kv().delete(key).await;
    client.close().await;
    let existed = result?;
    if g.json {
        out(json!({"key": key, "deleted": existed}))?;
    } else if existed {
        out("deleted")?;
    } else {
        out("not found")?;
    }
    Ok(())
}

pub async fn kv_watch(
    g: &Global,
    key: &str,
    count: Option<u64>,
    prefix: bool,
) -> anyhow::Result<()> {
    let client = g.connect(&cli_id(), true).await?;
    let kv = client.kv();
    let mut watch = if prefix {
        kv.watch_prefix(key).await?
    } else {
        kv.watch(key).await?
    };
    // Handlers first: a SIGTERM right after the ready line stops cleanly.
    let stop = shutdown_signal();
    tokio::pin!(stop);
    ready(g, "watching", &client)?;
    let mut seen = 0u64;
    while count.is_none_or(|c| seen < c) {
        tokio::select! {
            ev = watch.next() => {
                let Some(ev) = ev else { break };
                if g.json {
                    out(with_bytes(
                        json!({"key": ev.key, "version": ev.version,
                               "deleted": ev.deleted, "by": ev.by}),
                        "value",
                        &ev.value,
                    ))?;
                } else if ev.deleted {
                    out(format!("{} deleted (version {})", ev.key, ev.version))?;
                } else {
                    out(format!("{} = {} (version {})", ev.key, text(&ev.value), ev.version))?;
                }
                seen += 1;
            }
            _ = &mut stop => break,
        }
    }
    drop(watch);
    client.close().await;
    Ok(())
}

pub async fn clients(g: &Global) -> anyhow::Result<()> {
    let client = g.connect(&cli_id(), false).await?;
    let me = client.id().to_string();
    let result = g.read(&client, || client.clients()).await;
    client.close().await;
    for c in result?.into_iter().filter(|c| c.client_id != me) {
        if g.json {
            out(
                json!({"id": c.client_id, "transport": c.transport, "addr": c.addr,
                       "agent": c.agent, "connected_at_ms": c.connected_at_ms}),
            )?;
        } else {
            out(format!(
                "{}\t{}\t{}\t{}",
                c.client_id, c.transport, c.addr, c.agent
            ))?;
        }
    }
    Ok(())
}

/// The federation's state from the status counters `federation_*`
/// (`RemoteStatus::counters` in the hub): `null` when the hub is not
/// federated.
fn federation_json(c: &std::collections::BTreeMap<String, u64>) -> serde_json::Value {
    let Some(connected) = c.get("federation_connected") else {
        return serde_json::Value::Null;
    };
    let named = |prefix: &str| c.keys().find_map(|k| k.strip_prefix(prefix));
    let mut figures = serde_json::Map::new();
    for (k, v) in c {
        if let Some(name) = k.strip_prefix("federation_") {
            if !name.contains(':') && name != "connected" && name != "members" {
                figures.insert(name.to_owned(), json!(v));
            }
        }
    }
    let mut v = json!({
        "connected": *connected == 1,
        "server": named("federation_server:"),
        "cluster": named("federation_cluster:"),
        "members": c.keys().filter_map(|k| k.strip_prefix("federation_member:")).collect::<Vec<_>>(),
    });
    if let Some(obj) = v.as_object_mut() {
        obj.extend(figures);
    }
    v
}

pub async fn status(g: &Global) -> anyhow::Result<()> {
    let client = g.connect(&cli_id(), false).await?;
    let result = g.read(&client, || client.status()).await;
    client.close().await;
    let s = result?;
    let id = s.hub.clone();
    if g.json {
        out(json!({
            "service": id.service, "instance_id": id.instance_id, "pid": id.pid,
            "port": id.port, "epoch": id.epoch, "uptime_s": s.uptime_s,
            "clients": s.clients, "subscriptions": s.subscriptions,
            "msgs_in": s.msgs_in, "msgs_out": s.msgs_out,
            "bytes_in": s.bytes_in, "bytes_out": s.bytes_out,
            "dropped": s.dropped, "queue_depth": s.queue_depth,
            "pending_requests": s.pending_requests, "kv_keys": s.kv_keys,
            "role": id.role, "standby_addr": s.standby_addr,
            "repl_lag_changes": s.repl_lag_changes, "repl_lag_bytes": s.repl_lag_bytes,
            "federation": federation_json(&s.counters),
            "counters": s.counters,
        }))?;
    } else {
        out(format!("service:          {}", id.service))?;
        out(format!(
            "instance:         {} (pid {}, port {})",
            id.instance_id, id.pid, id.port
        ))?;
        out(format!(
            "role:             {} (epoch {})",
            id.role, id.epoch
        ))?;
        if s.standby_addr.is_empty() {
            out("standby:          none".to_string())?;
        } else {
            out(format!(
                "standby:          {} (lag {} changes, {} bytes)",
                s.standby_addr, s.repl_lag_changes, s.repl_lag_bytes
            ))?;
        }
        out(format!("uptime:           {} s", s.uptime_s))?;
        out(format!("clients:          {}", s.clients))?;
        out(format!("subscriptions:    {}", s.subscriptions))?;
        out(format!("messages in/out:  {} / {}", s.msgs_in, s.msgs_out))?;
        out(format!(
            "bytes in/out:     {} / {}",
            s.bytes_in, s.bytes_out
        ))?;
        out(format!("dropped:          {}", s.dropped))?;
        out(format!("queue depth:      {}", s.queue_depth))?;
        out(format!("pending requests: {}", s.pending_requests))?;
        out(format!("kv keys:          {}", s.kv_keys))?;
        let f = federation_json(&s.counters);
        if !f.is_null() {
            out(format!(
                "federation:       {} to {}{}, other hubs: [{}], rtt {:.1} ms, lease age {} ms",
                if f["fenced"] == 1 {
                    "FENCED (a standby took this hub's name over; it no longer serves in the federation), was connected"
                } else if f["connected"] == true {
                    "connected"
                } else {
                    "NOT connected"
                },
                f["server"].as_str().unwrap_or("?"),
                f["cluster"]
                    .as_str()
                    .map(|c| format!(" (cluster {c})"))
                    .unwrap_or_default(),
                f["members"]
                    .as_array()
                    .map(|m| m
                        .iter()
                        .filter_map(|v| v.as_str())
                        .collect::<Vec<_>>()
                        .join(", "))
                    .unwrap_or_default(),
                f["rtt_us"].as_u64().unwrap_or(0) as f64 / 1e3,
                f["lease_age_ms"]
                    .as_u64()
                    .map_or("-".to_string(), |a| a.to_string()),
            ))?;
        }
        for (name, value) in &s.counters {
            out(format!("{name}: {value}"))?;
        }
    }
    Ok(())
}
