//! Operating the hub: the configuration file (`hub --config`, `config
//! default|check`), systemd's notify protocol under a fake `NOTIFY_SOCKET`,
//! JSON logs with the connection's span, `SWITCHBOARD_*` variables,
//! completions and the man page, and binary payloads in `--json` output.
//! Each runs the real `switchboard` binary.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use base64::Engine as _;

const BIN: &str = env!("CARGO_BIN_EXE_switchboard");
const TOKEN: &str = "ops-test-token";
const WAIT: Duration = Duration::from_secs(15);

/// A private runtime directory; every command gets it and the token.
struct Env {
    dir: tempfile::TempDir,
}

impl Env {
    fn new() -> Env {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().expect("temp dir");
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o700))
            .expect("chmod 700");
        Env { dir }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new(BIN);
        c.args(args)
            .env("SWITCHBOARD_RUNTIME_DIR", self.path())
            .env("SWITCHBOARD_TOKEN", TOKEN)
            .env_remove("SWITCHBOARD_LOG")
            .env_remove("SWITCHBOARD_LOG_FORMAT")
            .env_remove("SWITCHBOARD_ADDR")
            .env_remove("SWITCHBOARD_SERVICE")
            .env_remove("NOTIFY_SOCKET")
            .env_remove("WATCHDOG_USEC")
            .env_remove("WATCHDOG_PID");
        c
    }

    fn run(&self, args: &[&str]) -> Output {
        self.run_stdin(self.cmd(args), b"")
    }

    fn run_stdin(&self, mut cmd: Command, input: &[u8]) -> Output {
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn switchboard");
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(input)
            .expect("write stdin");
        // Read while it runs (a man page fills a pipe), within the wait.
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let _ = tx.send(child.wait_with_output());
        });
        rx.recv_timeout(WAIT)
            .unwrap_or_else(|_| panic!("no exit within {WAIT:?}"))
            .expect("output")
    }

    fn write(&self, name: &str, text: &str) -> PathBuf {
        let path = self.path().join(name);
        std::fs::write(&path, text).expect("write file");
        path
    }
}

/// A running process, killed when dropped, its output lines on channels.
struct Proc {
    child: Child,
    stdout: mpsc::Receiver<String>,
    stderr: mpsc::Receiver<String>,
}

impl Proc {
    fn spawn(mut cmd: Command) -> Proc {
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn switchboard");
        let stdout = lines(child.stdout.take().expect("stdout"));
        let stderr = lines(child.stderr.take().expect("stderr"));
        Proc {
            child,
            stdout,
            stderr,
        }
    }

    /// The hub's JSON ready line.
    fn ready(&self) -> serde_json::Value {
        let line = self.first_line();
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("{e}: {line}"))
    }

    /// The first line on standard output, within the wait; a failure
    /// shows what the process said on standard error.
    fn first_line(&self) -> String {
        self.stdout.recv_timeout(WAIT).unwrap_or_else(|e| {
            let said: Vec<String> =
                std::iter::from_fn(|| self.stderr.recv_timeout(Duration::from_secs(1)).ok())
                    .take(200)
                    .collect();
            panic!(
                "no ready line within the wait ({e}); stderr:\n{}",
                said.join("\n")
            )
        })
    }

    /// What the process wrote on standard error so far, its last `max`
    /// lines (for a failure's message).
    fn said(&self, max: usize) -> String {
        let all: Vec<String> = self.stderr.try_iter().collect();
        all[all.len().saturating_sub(max)..].join("\n")
    }

    /// SIGTERM, then the exit status.
    fn terminate(mut self) -> std::process::ExitStatus {
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .expect("run kill");
        assert!(status.success());
        wait_timeout(&mut self.child)
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn lines(r: impl std::io::Read + Send + 'static) -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(r).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

/// A federated hub as `wrap` runs it (`std::convert::identity` here,
/// in a network namespace in `netns`): `switchboard hub --federate URL
/// --federate-name NAME` on a free loopback port; once ready, with its
/// address.
fn federated_hub(
    env: &Env,
    url: &str,
    name: &str,
    wrap: impl FnOnce(Command) -> Command,
) -> (Proc, String) {
    let hub = Proc::spawn(wrap(env.cmd(&[
        "hub",
        "--json",
        "--no-unix",
        "--listen",
        "127.0.0.1:0",
        "--federate",
        url,
        "--federate-name",
        name,
    ])));
    let addr = hub.ready()["addr"].as_str().expect("addr").to_string();
    (hub, addr)
}

/// Runs `run` until its command succeeds (a federation fact spreads over
/// the cluster in a moment), pausing 200 ms between tries, within
/// `within`; the standard output. `what` names it in the failure.
fn until_ok(what: &str, within: Duration, run: impl FnMut() -> Output) -> String {
    until_ok_or(what, within, run, String::new)
}

/// [`until_ok`], with `context` (what the hubs saw) in the failure.
fn until_ok_or(
    what: &str,
    within: Duration,
    mut run: impl FnMut() -> Output,
    context: impl FnOnce() -> String,
) -> String {
    let deadline = Instant::now() + within;
    loop {
        let o = run();
        if o.status.success() {
            return text(&o.stdout);
        }
        if Instant::now() >= deadline {
            panic!("{what} kept failing: {}\n{}", text(&o.stderr), context());
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn wait_timeout(child: &mut Child) -> std::process::ExitStatus {
    let deadline = Instant::now() + WAIT;
    loop {
        if let Some(status) = child.try_wait().expect("wait for the child") {
            return status;
        }
        assert!(Instant::now() < deadline, "no exit within {WAIT:?}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).trim_end().to_string()
}

/// A fake service manager: the datagram socket `NOTIFY_SOCKET` names.
struct NotifySocket {
    sock: UnixDatagram,
    path: PathBuf,
}

impl NotifySocket {
    fn bind(dir: &Path) -> NotifySocket {
        let path = dir.join("notify.sock");
        let sock = UnixDatagram::bind(&path).expect("bind the notify socket");
        sock.set_read_timeout(Some(Duration::from_millis(200)))
            .expect("timeout");
        NotifySocket { sock, path }
    }

    /// Messages until one contains `want`, within the wait.
    fn until(&self, want: &str) -> String {
        let deadline = Instant::now() + WAIT;
        let mut seen = Vec::new();
        while Instant::now() < deadline {
            let mut buf = [0u8; 4096];
            if let Ok(n) = self.sock.recv(&mut buf) {
                let msg = String::from_utf8_lossy(&buf[..n]).into_owned();
                if msg.lines().any(|l| l == want) {
                    return msg;
                }
                seen.push(msg);
            }
        }
        panic!("no {want} within {WAIT:?}; got {seen:?}");
    }
}

#[test]
fn operator_end_to_end_config_systemd_metrics_check_sigterm() {
    let env = Env::new();
    // The default file is accepted as it is, and starts a hub unchanged.
    let o = env.run(&["config", "default"]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    let default = String::from_utf8(o.stdout).expect("utf-8");
    let path = env.write("default.toml", &default);
    let o = env.run(&["config", "check", path.to_str().unwrap()]);
    assert!(o.status.success(), "{}", text(&o.stderr));

    // Three settings changed: the service, an HTTP listener and a limit.
    let changed = default
        .replace("service = \"switchboard\"", "service = \"ops-file\"")
        .replace("# listen = \"127.0.0.1:8222\"", "listen = \"127.0.0.1:0\"")
        .replace("kv_max_value = 1048576", "kv_max_value = 4");
    assert_ne!(changed, default);
    let path = env.write("hub.toml", &changed);
    let o = env.run(&["config", "check", path.to_str().unwrap()]);
    assert!(o.status.success(), "{}", text(&o.stderr));

    let notify = NotifySocket::bind(env.path());
    let mut cmd = env.cmd(&["hub", "--json", "--config", path.to_str().unwrap()]);
    cmd.env("NOTIFY_SOCKET", &notify.path)
        .env("WATCHDOG_USEC", "200000");
    let hub = Proc::spawn(cmd);
    let ready = hub.ready();
    assert_eq!(ready["service"], "ops-file", "{ready}");
    assert!(ready["http"].is_string(), "[http] listen applies: {ready}");
    let msg = notify.until("READY=1");
    assert!(
        msg.contains("STATUS=serving ops-file on "),
        "a status line: {msg}"
    );
    // WatchdogSec: pings every half WATCHDOG_USEC.
    notify.until("WATCHDOG=1");
    notify.until("WATCHDOG=1");

    // The limit from the file is in force.
    let addr = ready["addr"].as_str().unwrap();
    let o = env.run(&["--addr", addr, "kv", "set", "small", "1234"]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    let o = env.run(&["--addr", addr, "kv", "set", "big", "12345"]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o.stderr));

    // The operator scrapes /metrics (Prometheus text) ...
    let http = ready["http"].as_str().unwrap();
    let (code, body) = http_get(http, "/metrics", Some(&token(&env)));
    assert_eq!(code, 200, "{body}");
    let families = prometheus_families(&body);
    assert!(
        families.iter().any(|f| f.starts_with("switchboard_")),
        "{families:?}"
    );
    // ... and runs the health check.
    let o = env.run(&["--addr", addr, "check", "--format", "json"]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o.stderr));
    let check: serde_json::Value = serde_json::from_slice(&o.stdout).expect("json");
    assert_eq!(check["state"], "OK", "{check}");
    assert_eq!(check["checks"]["reachable"]["state"], "OK", "{check}");
    assert_eq!(check["checks"]["proof"]["state"], "OK", "{check}");

    // SIGTERM: STOPPING=1 and a clean exit.
    let status = hub.terminate();
    notify.until("STOPPING=1");
    assert!(status.success(), "{status:?}");
}

#[test]
fn flags_and_variables_override_the_file() {
    let env = Env::new();
    let path = env.write(
        "hub.toml",
        "[hub]\nservice = \"from-file\"\n\n[replication]\nheartbeat_ms = 70\n",
    );
    let config = path.to_str().unwrap();

    // Combinations are checked once the flags are applied.
    let o = env.run(&["hub", "--config", config, "--primary", "127.0.0.1:1"]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o.stderr));
    assert!(
        text(&o.stderr).contains("needs standby"),
        "{}",
        text(&o.stderr)
    );

    let o = env.run(&["hub", "--config", config, "--threads", "0"]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o.stderr));
    let hub = Proc::spawn(env.cmd(&[
        "hub",
        "--json",
        "--config",
        config,
        "--service",
        "from-flag",
        "--threads",
        "1",
    ]));
    assert_eq!(hub.ready()["service"], "from-flag");
    drop(hub);

    let mut cmd = env.cmd(&["hub", "--json", "--config", config]);
    cmd.env("SWITCHBOARD_SERVICE", "from-env");
    let hub = Proc::spawn(cmd);
    let ready = hub.ready();
    assert_eq!(ready["service"], "from-env");

    // SWITCHBOARD_ADDR and SWITCHBOARD_SERVICE in a client command.
    let mut cmd = env.cmd(&["status", "--json"]);
    cmd.env("SWITCHBOARD_ADDR", ready["addr"].as_str().unwrap());
    let o = env.run_stdin(cmd, b"");
    assert!(o.status.success(), "{}", text(&o.stderr));
    let status: serde_json::Value = serde_json::from_slice(&o.stdout).expect("json");
    assert_eq!(status["service"], "from-env");
    let mut cmd = env.cmd(&["status", "--json"]);
    cmd.env("SWITCHBOARD_SERVICE", "from-env");
    let o = env.run_stdin(cmd, b"");
    assert!(o.status.success(), "{}", text(&o.stderr));
    assert!(hub.terminate().success());
}

#[test]
fn config_check_names_the_key_and_the_line() {
    let env = Env::new();
    for (file, words) in [
        (
            "[hub]\nservice = \"a\"\nlisten_on = \"127.0.0.1:0\"\n",
            &["line 3", "listen_on"][..],
        ),
        (
            "[limits]\nmax_clients = \"many\"\n",
            &["line 2", "expected"],
        ),
        ("[http]\nlisten = \"localhost\"\n", &["line 2", "listen"]),
        ("[unix]\nmode = 0o7777\n", &["line 2", "octal"]),
        ("[log]\nformat = \"xml\"\n", &["line 2", "json"]),
        ("[logs]\nlevel = \"info\"\n", &["line 1", "logs"]),
        ("[tls]\ncert = \"x.pem\"\n", &["[tls] cert and key"]),
        ("[hub]\npolicy = \"missing.toml\"\n", &["[hub] policy"]),
        ("[hub]\nthreads = 5000\n", &["threads must be at most 1024"]),
    ] {
        let path = env.write("bad.toml", file);
        let o = env.run(&["config", "check", path.to_str().unwrap()]);
        assert_eq!(o.status.code(), Some(2), "{file}: {}", text(&o.stderr));
        let err = text(&o.stderr);
        for w in words {
            assert!(err.contains(w), "{file}: {w:?} not in {err}");
        }
        // The hub refuses the same file (a policy file that does not load
        // exits 1, as with --policy).
        let o = env.run(&["hub", "--config", path.to_str().unwrap()]);
        assert!(
            matches!(o.status.code(), Some(1 | 2)),
            "{file}: {}",
            text(&o.stderr)
        );
    }
}

#[test]
fn json_logs_carry_the_connection_span() {
    let env = Env::new();
    // The level from the file, the format from the flag.
    let config = env.write("hub.toml", "[log]\nlevel = \"info\"\nformat = \"text\"\n");
    let hub = Proc::spawn(env.cmd(&[
        "hub",
        "--json",
        "--config",
        config.to_str().unwrap(),
        "--log-format",
        "json",
        "--no-unix",
    ]));
    let addr = hub.ready()["addr"].as_str().unwrap().to_string();
    let o = env.run(&["--addr", &addr, "kv", "set", "k", "v"]);
    assert!(o.status.success(), "{}", text(&o.stderr));

    let deadline = Instant::now() + WAIT;
    let mut seen = Vec::new();
    let client = loop {
        assert!(Instant::now() < deadline, "no client span in {seen:#?}");
        let Ok(line) = hub.stderr.recv_timeout(Duration::from_millis(200)) else {
            continue;
        };
        let v: serde_json::Value =
            serde_json::from_str(&line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
        assert!(v["level"].is_string() && v["timestamp"].is_string(), "{v}");
        let span = v["spans"]
            .as_array()
            .and_then(|s| s.iter().find(|s| s["name"] == "client").cloned());
        match span {
            Some(span) if span["client_id"].is_string() => break span,
            _ => seen.push(v),
        }
    };
    assert_eq!(client["transport"], "tcp", "{client}");
    assert!(client["conn"].as_u64().is_some(), "{client}");
    assert!(
        client["client_id"].as_str().unwrap().starts_with("cli-"),
        "{client}"
    );
    assert!(hub.terminate().success());
}

#[test]
fn client_json_logs_carry_the_client_connection_span() {
    let env = Env::new();
    let hub = Proc::spawn(env.cmd(&["hub", "--json", "--no-unix"]));
    let addr = hub.ready()["addr"].as_str().unwrap().to_string();
    let o = env.run(&[
        "--addr",
        &addr,
        "--log-format",
        "json",
        "--log-level",
        "switchboard=debug",
        "kv",
        "set",
        "k",
        "v",
    ]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    let stderr = text(&o.stderr);
    let span = stderr
        .lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l)
                .unwrap_or_else(|e| panic!("not JSON ({e}): {l}"))
        })
        .find_map(|v| {
            v["spans"]
                .as_array()
                .and_then(|s| s.iter().find(|s| s["name"] == "client_conn").cloned())
        })
        .unwrap_or_else(|| panic!("no client_conn span in {stderr}"));
    assert_eq!(span["transport"], "tcp", "{span}");
    assert_eq!(span["conn"], 1, "{span}");
    assert_eq!(span["hub"], addr.as_str(), "{span}");
    assert!(
        span["client_id"].as_str().unwrap().starts_with("cli-"),
        "{span}"
    );
    assert!(hub.terminate().success());
}

#[test]
fn binary_payloads_are_base64_in_json() {
    let env = Env::new();
    let hub = Proc::spawn(env.cmd(&["hub", "--json"]));
    let addr = hub.ready()["addr"].as_str().unwrap().to_string();
    let bytes = [0xffu8, 0x00, 0x80, b'a'];
    let b64 = base64::engine::general_purpose::STANDARD.encode(bytes);

    let o = env.run_stdin(env.cmd(&["--addr", &addr, "kv", "set", "bin", "-"]), &bytes);
    assert!(o.status.success(), "{}", text(&o.stderr));
    let o = env.run(&["--addr", &addr, "--json", "kv", "get", "bin"]);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).expect("json");
    assert_eq!(v["value_base64"], b64.as_str(), "{v}");
    assert!(v.get("value").is_none(), "{v}");
    // Without --json the bytes come out as they are.
    let o = env.run(&["--addr", &addr, "kv", "get", "bin"]);
    assert_eq!(o.stdout, [&bytes[..], b"\n"].concat());
    // Text stays text.
    env.run(&["--addr", &addr, "kv", "set", "txt", "héllo"]);
    let o = env.run(&["--addr", &addr, "--json", "kv", "get", "txt"]);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).expect("json");
    assert_eq!(v["value"], "héllo", "{v}");

    // A subscriber's --json output.
    let sub = Proc::spawn(env.cmd(&["--addr", &addr, "--json", "sub", "bin.>", "--count", "1"]));
    let ready = sub.stderr.recv_timeout(WAIT).expect("sub ready");
    assert!(ready.contains("ready"), "{ready}");
    let o = env.run_stdin(env.cmd(&["--addr", &addr, "pub", "bin.x", "-"]), &bytes);
    assert!(o.status.success(), "{}", text(&o.stderr));
    let line = sub.stdout.recv_timeout(WAIT).expect("a message line");
    let v: serde_json::Value = serde_json::from_str(&line).expect("json");
    assert_eq!(v["payload_base64"], b64.as_str(), "{v}");
    assert_eq!(v["topic"], "bin.x", "{v}");
    assert!(hub.terminate().success());
}

#[test]
fn completions_and_man_page() {
    let env = Env::new();
    for (shell, mark) in [
        ("bash", "complete -F"),
        ("zsh", "#compdef switchboard"),
        ("fish", "complete -c switchboard"),
    ] {
        let o = env.run(&["completions", shell]);
        assert!(o.status.success(), "{}", text(&o.stderr));
        let script = text(&o.stdout);
        assert!(script.contains(mark), "{shell}: {mark:?} missing");
        assert!(script.contains("kv"), "{shell}: subcommands missing");
    }
    let o = env.run(&["completions", "tcsh"]);
    assert_eq!(o.status.code(), Some(2));
    let o = env.run(&["man"]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    let page = text(&o.stdout);
    assert!(page.contains(".TH switchboard 1"), "{page}");
    assert!(
        page.contains("SUBCOMMANDS") || page.contains("switchboard\\-hub"),
        "{page}"
    );
}

/// Runs `hub ARGS` as systemd would with socket activation: `fds` at 3,
/// 4, ... with `LISTEN_FDS`, `LISTEN_FDNAMES` and `LISTEN_PID` (a shell
/// sets it to its own pid and execs the hub, which keeps that pid).
fn spawn_activated(env: &Env, args: &[&str], fds: &[i32], names: &str, notify: &Path) -> Proc {
    use std::os::unix::process::CommandExt;
    let cmd = env.cmd(&[]);
    let mut sh = Command::new("sh");
    sh.arg("-c")
        .arg(r#"LISTEN_PID=$$ exec "$0" "$@""#)
        .arg(BIN)
        .args(args)
        .envs(cmd.get_envs().filter_map(|(k, v)| Some((k, v?))))
        .env_remove("SWITCHBOARD_LOG")
        .env_remove("WATCHDOG_USEC")
        .env("LISTEN_FDS", fds.len().to_string())
        .env("LISTEN_FDNAMES", names)
        .env("NOTIFY_SOCKET", notify);
    let fds = fds.to_vec();
    // SAFETY: between fork and exec only fcntl and dup2, which are
    // async-signal-safe; the descriptors stay open in the parent.
    unsafe {
        sh.pre_exec(move || {
            // First out of the way (above 100), then onto 3, 4, ...; dup2
            // clears close-on-exec on the copy.
            let mut high = Vec::with_capacity(fds.len());
            for &fd in &fds {
                let h = libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, 100);
                if h < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                high.push(h);
            }
            for (i, &h) in high.iter().enumerate() {
                if libc::dup2(h, 3 + i as i32) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            Ok(())
        });
    }
    Proc::spawn(sh)
}

#[test]
fn socket_activation_serves_on_the_passed_listener() {
    use std::os::fd::AsRawFd;
    let env = Env::new();
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let want = listener.local_addr().expect("addr").to_string();
    let notify = NotifySocket::bind(env.path());
    let hub = spawn_activated(
        &env,
        &["hub", "--json", "--no-unix"],
        &[listener.as_raw_fd()],
        "native",
        &notify.path,
    );
    let ready = hub.ready();
    assert_eq!(ready["addr"], want.as_str(), "{ready}");
    notify.until("READY=1");
    drop(listener);
    // Clients reach it on the passed socket.
    let o = env.run(&["--addr", &want, "status", "--json"]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    let status = hub.terminate();
    notify.until("STOPPING=1");
    assert!(status.success(), "{status:?}");
}

#[test]
fn socket_activation_of_the_native_and_http_listeners() {
    use std::os::fd::AsRawFd;
    let env = Env::new();
    let native = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let http = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let native_addr = native.local_addr().expect("addr").to_string();
    let http_addr = http.local_addr().expect("addr").to_string();
    let notify = NotifySocket::bind(env.path());
    // Named in the other order than passed: the names decide.
    let hub = spawn_activated(
        &env,
        &["hub", "--json", "--no-unix"],
        &[http.as_raw_fd(), native.as_raw_fd()],
        "http:native",
        &notify.path,
    );
    let ready = hub.ready();
    assert_eq!(ready["addr"], native_addr.as_str(), "{ready}");
    assert_eq!(ready["http"], http_addr.as_str(), "{ready}");
    notify.until("READY=1");
    drop(native);
    drop(http);
    // Both serve: a native client, and the gateway's /metrics.
    let o = env.run(&["--addr", &native_addr, "status", "--json"]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    let (code, body) = http_get(&http_addr, "/metrics", Some(&token(&env)));
    assert_eq!(code, 200, "{body}");
    assert!(body.contains("switchboard_"), "{body}");
    let status = hub.terminate();
    notify.until("STOPPING=1");
    assert!(status.success(), "{status:?}");
}

/// The gateway's bearer token for the test's secret.
fn token(env: &Env) -> String {
    let o = env.run(&["token"]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    text(&o.stdout)
}

/// A plain HTTP/1.0 GET: the status code and the body.
fn http_get(addr: &str, path: &str, bearer: Option<&str>) -> (u16, String) {
    use std::io::Read;
    let mut s = std::net::TcpStream::connect(addr).expect("connect to the gateway");
    s.set_read_timeout(Some(WAIT)).expect("timeout");
    let auth = bearer
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    write!(
        s,
        "GET {path} HTTP/1.0\r\nHost: {addr}\r\n{auth}Connection: close\r\n\r\n"
    )
    .expect("send the request");
    let mut response = String::new();
    s.read_to_string(&mut response).expect("read the response");
    let code = response
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("no status line: {response}"));
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (code, body)
}

#[test]
fn listen_fds_for_another_process_are_ignored() {
    let env = Env::new();
    let mut cmd = env.cmd(&["hub", "--json", "--no-unix"]);
    // Another pid: not for this hub, which binds its own port.
    cmd.env("LISTEN_PID", "1").env("LISTEN_FDS", "1");
    let hub = Proc::spawn(cmd);
    let ready = hub.ready();
    assert!(ready["addr"].is_string(), "{ready}");
    assert!(hub.terminate().success());
}

#[test]
fn tls_from_the_config_file() {
    use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
    let env = Env::new();
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap();
    let params = CertificateParams::new(vec!["localhost".into(), "127.0.0.1".into()]).unwrap();
    let key = KeyPair::generate().unwrap();
    let cert = params.signed_by(&key, &ca).unwrap();
    let ca_path = env.write("ca.pem", &ca.pem());
    let cert_path = env.write("hub.pem", &cert.pem());
    let key_path = env.write("hub.key", &key.serialize_pem());
    let config = env.write(
        "hub.toml",
        &format!(
            "[tls]\ncert = {:?}\nkey = {:?}\n",
            cert_path.to_str().unwrap(),
            key_path.to_str().unwrap()
        ),
    );
    let o = env.run(&["config", "check", config.to_str().unwrap()]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    // A key file that is not a key: `config check` loads it and says so.
    let bad = env.write(
        "bad.toml",
        &format!(
            "[tls]\ncert = {:?}\nkey = {:?}\n",
            cert_path.to_str().unwrap(),
            ca_path.to_str().unwrap()
        ),
    );
    let o = env.run(&["config", "check", bad.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o.stderr));
    assert!(text(&o.stderr).contains("[tls]"), "{}", text(&o.stderr));

    let hub = Proc::spawn(env.cmd(&[
        "hub",
        "--json",
        "--no-unix",
        "--config",
        config.to_str().unwrap(),
    ]));
    let addr = hub.ready()["addr"].as_str().unwrap().to_string();
    let o = env.run(&[
        "--addr",
        &addr,
        "--tls-ca",
        ca_path.to_str().unwrap(),
        "status",
        "--json",
    ]);
    assert!(
        o.status.success(),
        "TLS with the file's certificate: {}",
        text(&o.stderr)
    );
    let o = env.run(&["--addr", &addr, "--wait", "0", "status"]);
    assert!(!o.status.success(), "plaintext is refused");
    assert!(hub.terminate().success());
}

/// Parses Prometheus text exposition strictly enough to catch a broken
/// one: every line a `# HELP`/`# TYPE` comment or `name{labels} value`;
/// returns the names of the families sampled.
fn prometheus_families(body: &str) -> Vec<String> {
    let valid_name = |n: &str| {
        !n.is_empty()
            && n.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
            && !n.starts_with(|c: char| c.is_ascii_digit())
    };
    let mut names = Vec::new();
    for line in body.lines().filter(|l| !l.trim().is_empty()) {
        if let Some(comment) = line.strip_prefix("# ") {
            let mut parts = comment.splitn(3, ' ');
            let kind = parts.next().unwrap_or_default();
            if kind == "HELP" || kind == "TYPE" {
                let name = parts.next().unwrap_or_default();
                assert!(valid_name(name), "bad metric name in {line:?}");
            }
            continue;
        }
        let (series, rest) = match line.find('{') {
            Some(i) => {
                let close = line
                    .rfind('}')
                    .unwrap_or_else(|| panic!("unclosed labels: {line:?}"));
                (&line[..i], line[close + 1..].trim())
            }
            None => line
                .split_once(' ')
                .unwrap_or_else(|| panic!("no value: {line:?}")),
        };
        assert!(valid_name(series), "bad metric name in {line:?}");
        let value = rest.split_whitespace().next().unwrap_or_default();
        assert!(
            value.parse::<f64>().is_ok() || ["+Inf", "-Inf", "NaN"].contains(&value),
            "bad value in {line:?}"
        );
        names.push(series.to_string());
    }
    names
}

#[test]
fn check_reports_in_every_format_with_nagios_exit_codes() {
    let env = Env::new();
    let hub = Proc::spawn(env.cmd(&["hub", "--json", "--no-unix"]));
    let ready = hub.ready();
    let addr = ready["addr"].as_str().unwrap().to_string();

    let o = env.run(&["--addr", &addr, "check"]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o.stderr));
    let out = text(&o.stdout);
    assert!(out.starts_with("OK\n"), "{out}");
    assert!(out.contains("proof       OK"), "{out}");
    // Not federated: no federation check at all.
    assert!(!out.contains("federation"), "{out}");

    let o = env.run(&["--addr", &addr, "check", "--format", "nagios"]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o.stderr));
    assert!(
        text(&o.stdout).starts_with("SWITCHBOARD OK - "),
        "{}",
        text(&o.stdout)
    );

    let o = env.run(&["--addr", &addr, "check", "--format", "prometheus"]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o.stderr));
    let body = text(&o.stdout);
    let families = prometheus_families(&body);
    assert!(
        families.contains(&"switchboard_check_up".to_string()),
        "{body}"
    );
    assert!(
        body.contains("switchboard_check_state{check=\"proof\"} 0"),
        "{body}"
    );

    // --json picks the JSON format.
    let o = env.run(&["--addr", &addr, "--json", "check"]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o.stderr));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).expect("json");
    assert_eq!(v["role"], "primary", "{v}");
    assert_eq!(v["federation"], serde_json::Value::Null, "{v}");
    assert!(v["checks"].get("federation").is_none(), "{v}");
    assert_eq!(v["checks"]["standby"]["detail"], "none attached", "{v}");

    // WARNING: a standby is required and none is attached.
    let o = env.run(&[
        "--addr",
        &addr,
        "check",
        "--require-standby",
        "--format",
        "nagios",
    ]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o.stdout));
    assert!(
        text(&o.stdout).starts_with("SWITCHBOARD WARNING - standby: none attached"),
        "{}",
        text(&o.stdout)
    );

    // A standby attached with no lag passes the thresholds, with its lag
    // as performance data.
    let standby = Proc::spawn(env.cmd(&[
        "hub",
        "--json",
        "--no-unix",
        "--standby",
        "--primary",
        &addr,
    ]));
    let deadline = Instant::now() + WAIT;
    let v = loop {
        let o = env.run(&[
            "--addr",
            &addr,
            "check",
            "--format",
            "json",
            "--require-standby",
            "--warn-lag",
            "1000",
            "--crit-lag",
            "100000",
        ]);
        let v: serde_json::Value = serde_json::from_slice(&o.stdout).expect("json");
        if o.status.code() == Some(0) {
            break v;
        }
        assert!(Instant::now() < deadline, "the standby never attached: {v}");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(v["standby"].is_string(), "{v}");
    assert_eq!(v["lag_changes"], 0, "{v}");
    let o = env.run(&[
        "--addr",
        &addr,
        "check",
        "--format",
        "nagios",
        "--warn-lag",
        "5",
        "--crit-lag",
        "10",
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o.stdout));
    assert!(
        text(&o.stdout).contains("| lag_changes=0;5;10;0;"),
        "{}",
        text(&o.stdout)
    );
    // Thresholds the wrong way round: UNKNOWN.
    let o = env.run(&[
        "--addr",
        &addr,
        "check",
        "--warn-lag",
        "10",
        "--crit-lag",
        "5",
    ]);
    assert_eq!(o.status.code(), Some(3), "{}", text(&o.stderr));
    drop(standby);

    // CRITICAL: a hub that proves another secret (ours is refused), and
    // no hub at all, in every format.
    let o = env.run_stdin(
        {
            let mut c = env.cmd(&[
                "--addr", &addr, "--wait", "0", "check", "--format", "nagios",
            ]);
            c.env("SWITCHBOARD_TOKEN", "another-token");
            c
        },
        b"",
    );
    assert_eq!(o.status.code(), Some(2), "{}", text(&o.stdout));
    assert!(
        text(&o.stdout).starts_with("SWITCHBOARD CRITICAL - proof: "),
        "{}",
        text(&o.stdout)
    );
    drop(hub);
    for format in ["text", "json", "nagios", "prometheus"] {
        let o = env.run(&["--addr", &addr, "--wait", "0", "check", "--format", format]);
        assert_eq!(o.status.code(), Some(2), "{format}: {}", text(&o.stdout));
    }
    let o = env.run(&[
        "--addr",
        &addr,
        "--wait",
        "0",
        "check",
        "--format",
        "prometheus",
    ]);
    assert!(
        text(&o.stdout).contains("switchboard_check_up 0"),
        "{}",
        text(&o.stdout)
    );
}

#[test]
fn federation_table_maps_to_the_federate_flags() {
    let env = Env::new();
    // A NATS port nothing listens on.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = closed.local_addr().expect("addr").port();
    drop(closed);
    let path = env.write(
        "fed.toml",
        &format!("[federation]\nservers = [\"nats://127.0.0.1:{port}\"]\n"),
    );
    let config = path.to_str().unwrap();
    let o = env.run(&["config", "check", config]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    // The hub tries the file's server ...
    let o = env.run(&["hub", "--no-unix", "--config", config]);
    assert!(!o.status.success());
    assert!(
        text(&o.stderr).contains(&port.to_string()),
        "{}",
        text(&o.stderr)
    );
    // ... unless a flag says otherwise.
    let o = env.run(&[
        "hub",
        "--no-unix",
        "--config",
        config,
        "--federate",
        "http://x:1",
    ]);
    assert!(
        text(&o.stderr).contains("\"http://x:1\" is not a NATS URL"),
        "{}",
        text(&o.stderr)
    );

    // config check: bad URLs, files that do not exist, creds without servers.
    let bad = env.write("bad.toml", "[federation]\nservers = [\"x:4222\"]\n");
    let o = env.run(&["config", "check", bad.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(2));
    assert!(
        text(&o.stderr).contains("[federation] servers"),
        "{}",
        text(&o.stderr)
    );
    let bad = env.write(
        "bad2.toml",
        &format!("[federation]\nservers = [\"nats://127.0.0.1:{port}\"]\ncreds = \"/nonexistent.creds\"\n"),
    );
    let o = env.run(&["config", "check", bad.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(2));
    assert!(
        text(&o.stderr).contains("[federation] creds: cannot read /nonexistent.creds"),
        "{}",
        text(&o.stderr)
    );
    let bad = env.write("bad3.toml", "[federation]\ntls_ca = \"ca.pem\"\n");
    let o = env.run(&["config", "check", bad.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(2));
    assert!(
        text(&o.stderr).contains("need servers"),
        "{}",
        text(&o.stderr)
    );
    let o = env.run(&["config", "default"]);
    assert!(
        text(&o.stdout).contains("[federation]\n"),
        "{}",
        text(&o.stdout)
    );
}

/// `nats-server` on the PATH (or in /usr/sbin), or `None` after saying
/// why the test is skipped; with `CI` set a missing server fails.
fn nats_server() -> Option<PathBuf> {
    let found = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .chain([PathBuf::from("/usr/sbin"), PathBuf::from("/usr/bin")])
            .map(|dir| dir.join("nats-server"))
            .find(|p| p.is_file())
    });
    if found.is_none() {
        assert!(
            std::env::var_os("CI").is_none(),
            "nats-server is not installed, and CI is set"
        );
        eprintln!("SKIPPED: nats-server is not installed; the federated status test did not run");
    }
    found
}

/// A single nats-server with JetStream, its store in `env`, `extra`
/// appended to its configuration; returns once JetStream is ready (its
/// monitoring port's `/healthz?js-enabled-only=true` answers 200: a
/// server that merely listens may still refuse a hub's buckets), with
/// its client port.
fn solo_nats(bin: &std::path::Path, env: &Env, extra: &str) -> (std::process::Child, u16) {
    let free = || {
        std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port()
    };
    let (port, http) = (free(), free());
    let store = env.path().join("js");
    let conf = env.write(
        "nats.conf",
        &format!(
            "server_name: solo\nlisten: \"127.0.0.1:{port}\"\nhttp: \"127.0.0.1:{http}\"\n\
             jetstream {{ store_dir: {:?} }}\n{extra}",
            store.to_str().unwrap()
        ),
    );
    let nats = Command::new(bin)
        .arg("-c")
        .arg(&conf)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start nats-server");
    let healthy = || -> std::io::Result<bool> {
        use std::io::Read;
        let mut s = std::net::TcpStream::connect(("127.0.0.1", http))?;
        s.set_read_timeout(Some(WAIT))?;
        s.write_all(b"GET /healthz?js-enabled-only=true HTTP/1.0\r\n\r\n")?;
        let mut answer = String::new();
        s.read_to_string(&mut answer)?;
        Ok(answer.starts_with("HTTP/1.1 200") || answer.starts_with("HTTP/1.0 200"))
    };
    let deadline = Instant::now() + WAIT;
    while !healthy().unwrap_or(false) {
        assert!(
            Instant::now() < deadline,
            "nats-server's JetStream not ready"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    (nats, port)
}

#[test]
fn federation_state_in_status_metrics_and_check() {
    let Some(bin) = nats_server() else {
        return;
    };
    let env = Env::new();
    let (mut nats, port) = solo_nats(
        &bin,
        &env,
        "authorization { user: hub, password: pw-s3cret }\n",
    );
    // The password never shows in status, check or metrics.
    let url = format!("nats://hub:pw-s3cret@127.0.0.1:{port}");
    let hub = Proc::spawn(env.cmd(&[
        "hub",
        "--json",
        "--no-unix",
        "--http",
        "127.0.0.1:0",
        "--federate",
        &url,
    ]));
    let ready = hub.ready();
    let addr = ready["addr"].as_str().unwrap().to_string();
    let http = ready["http"].as_str().unwrap().to_string();

    // status --json: a federation object.
    let o = env.run(&["--addr", &addr, "--json", "status"]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).expect("json");
    let f = &v["federation"];
    assert_eq!(f["connected"], true, "{v}");
    assert!(
        f["server"].as_str().unwrap().contains(&port.to_string()),
        "{v}"
    );
    assert_eq!(f["members"], serde_json::json!([]), "{v}");
    assert!(!v.to_string().contains("s3cret"), "{v}");
    assert!(f["sent"].is_u64() && f["foreign"].is_u64(), "{v}");
    // The text form has a federation line.
    let o = env.run(&["--addr", &addr, "status"]);
    assert!(
        text(&o.stdout).contains("federation:       connected to solo"),
        "{}",
        text(&o.stdout)
    );

    // check: the federation check is OK.
    let o = env.run(&["--addr", &addr, "check", "--format", "json"]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o.stdout));
    let check: serde_json::Value = serde_json::from_slice(&o.stdout).expect("json");
    assert_eq!(check["federation"], "OK", "{check}");
    assert_eq!(check["checks"]["federation"]["state"], "OK", "{check}");

    // /metrics: the federation families, parsed.
    let bearer = token(&env);
    let (code, body) = http_get(&http, "/metrics", Some(&bearer));
    assert_eq!(code, 200, "{body}");
    let families = prometheus_families(&body);
    for name in [
        "switchboard_federation_info",
        "switchboard_federation_connected",
        "switchboard_federation_members",
        "switchboard_federation_fenced",
        "switchboard_federation_rtt_seconds",
        "switchboard_federation_sent_total",
        "switchboard_federation_dropped_total",
        "switchboard_federation_malformed_total",
        "switchboard_federation_oversized_total",
        "switchboard_federation_foreign_total",
        "switchboard_federation_lossless_failed_total",
        "switchboard_federation_lossless_queue_full_total",
        "switchboard_federation_kv_uncached_total",
    ] {
        assert!(families.iter().any(|f| f == name), "{name} in {body}");
    }
    assert!(
        body.contains("switchboard_federation_connected 1\n"),
        "{body}"
    );
    assert!(body.contains("switchboard_federation_fenced 0\n"), "{body}");
    assert!(!body.contains("s3cret"), "{body}");
    // The heartbeat comes back within a third of the lease.
    let deadline = Instant::now() + WAIT;
    loop {
        let (_, body) = http_get(&http, "/metrics", Some(&bearer));
        if prometheus_families(&body)
            .iter()
            .any(|f| f == "switchboard_federation_lease_age_seconds")
        {
            break;
        }
        assert!(Instant::now() < deadline, "no lease age: {body}");
        std::thread::sleep(Duration::from_millis(200));
    }

    // The NATS server gone: CRITICAL (exit 2), and the gauge says 0.
    let _ = nats.kill();
    let _ = nats.wait();
    let deadline = Instant::now() + WAIT;
    let check = loop {
        let o = env.run(&["--addr", &addr, "check", "--format", "json"]);
        if o.status.code() == Some(2) {
            break serde_json::from_slice::<serde_json::Value>(&o.stdout).expect("json");
        }
        assert!(Instant::now() < deadline, "{}", text(&o.stdout));
        std::thread::sleep(Duration::from_millis(200));
    };
    assert_eq!(
        check["checks"]["federation"]["state"], "CRITICAL",
        "{check}"
    );
    assert_eq!(check["checks"]["reachable"]["state"], "OK", "{check}");
    let (_, body) = http_get(&http, "/metrics", Some(&bearer));
    assert!(
        body.contains("switchboard_federation_connected 0\n"),
        "{body}"
    );
    let logged: Vec<String> = hub.stderr.try_iter().collect();
    assert!(!logged.concat().contains("s3cret"), "{logged:?}");
    drop(hub);
}

/// `switchboard hub --federate … --federate-name p` is fenced when a
/// standby takes its name over in the federation (started here in this
/// process with a standby's federation, which takes over as soon as its
/// hub serves): the process says so and exits non-zero.
#[test]
fn a_fenced_federated_hub_exits_non_zero() {
    use switchboard::federation::{Federation, FederationOptions};

    let Some(bin) = nats_server() else {
        return;
    };
    let env = Env::new();
    let (mut nats, port) = solo_nats(&bin, &env, "");
    let url = format!("nats://127.0.0.1:{port}");
    let mut hub = Proc::spawn(env.cmd(&[
        "hub",
        "--no-unix",
        "--listen",
        "127.0.0.1:0",
        "--http",
        "127.0.0.1:0",
        "--federate",
        &url,
        "--federate-name",
        "p",
    ]));
    // The human ready line: the hub joined (heartbeat written).
    let line = hub.first_line();
    assert!(line.contains("switchboard hub ready"), "{line}");

    let rt = tokio::runtime::Runtime::new().expect("a runtime");
    let (fed, standby) = rt.block_on(async {
        let mut opts = FederationOptions::new(switchboard::DEFAULT_SERVICE, vec![url.clone()]);
        opts.hub_name = "p".into();
        opts.standby = true;
        let fed = Federation::connect(opts).await.expect("the standby joins");
        let hub = switchboard::Hub::builder()
            .token(TOKEN)
            .listen("127.0.0.1:0")
            .write_hint(false)
            .unix(switchboard::hub::UnixSocket::disabled())
            .remote(fed.remote())
            .start()
            .await
            .expect("the standby's hub serves");
        (fed, hub)
    });
    // It takes over once its hub serves (its port attached).
    let deadline = Instant::now() + WAIT;
    while fed.directory().is_standby() {
        assert!(Instant::now() < deadline, "the standby did not take over");
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(fed.epoch(), 2, "one above the fenced hub's");

    // The old primary learns it from the cluster and stops, non-zero.
    let status = wait_timeout(&mut hub.child);
    assert!(!status.success(), "{status:?}");
    let mut stderr = String::new();
    while let Ok(line) = hub.stderr.recv_timeout(Duration::from_secs(1)) {
        stderr.push_str(&line);
        stderr.push('\n');
    }
    assert!(
        stderr.contains("fenced: a standby took this hub's name over in the federation"),
        "{stderr}"
    );
    rt.block_on(fed.shutdown());
    drop(standby);
    let _ = nats.kill();
    let _ = nats.wait();
}

mod killed;
mod netns;
