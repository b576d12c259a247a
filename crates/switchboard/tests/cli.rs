//! The `switchboard` binary as separate processes: a real `switchboard hub`
//! and clients as processes, found through a private runtime directory and
//! a shared token.
//!
//! These tests live in the `switchboard` package (not in the workspace
//! `tests/` package) because Cargo gives the binary's path,
//! `CARGO_BIN_EXE_switchboard`, only to the integration tests of the package
//! that defines it.

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_switchboard");
const TOKEN: &str = "cli-test-token";
const WAIT: Duration = Duration::from_secs(15);

/// A child process killed when dropped, with its output lines on channels.
struct Proc {
    child: Child,
    stdout: mpsc::Receiver<String>,
    stderr: mpsc::Receiver<String>,
}

impl Proc {
    fn line(rx: &mpsc::Receiver<String>, what: &str) -> String {
        rx.recv_timeout(WAIT)
            .unwrap_or_else(|_| panic!("no {what} line within {WAIT:?}"))
    }
    fn stdout_line(&self) -> String {
        Self::line(&self.stdout, "stdout")
    }
    fn stderr_line(&self) -> String {
        Self::line(&self.stderr, "stderr")
    }
    fn terminate(mut self) -> std::process::ExitStatus {
        // SAFETY-free: `kill` the command, as a user would.
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        wait_timeout(&mut self.child)
    }
    fn wait(mut self) -> std::process::ExitStatus {
        wait_timeout(&mut self.child)
    }
    /// Sends `sig` (e.g. "-STOP") to the process; for `-STOP`, returns
    /// once every thread of it has stopped (`kill` returns before that:
    /// on a loaded machine a process was seen still working 4 ms later).
    fn signal(&self, sig: &str) {
        let pid = self.child.id().to_string();
        let status = Command::new("kill")
            .args([sig, &pid])
            .status()
            .expect("run kill");
        assert!(status.success(), "kill {sig} failed");
        if sig == "-STOP" {
            let deadline = Instant::now() + WAIT;
            while !all_threads_stopped(&pid) {
                assert!(Instant::now() < deadline, "process {pid} did not stop");
                std::thread::sleep(Duration::from_millis(5));
            }
        }
    }
    /// SIGKILL, and waits until the process is gone (its sockets closed).
    fn kill9(&mut self) {
        self.signal("-KILL");
        let _ = self.child.wait();
    }
    /// Reads stdout lines until one parses as JSON with `"event": name`.
    fn event(&self, name: &str) -> serde_json::Value {
        loop {
            let line = self.stdout_line();
            if let Ok(v) = serde_json::from_str::<serde_json::Value>(&line) {
                if v["event"] == name {
                    return v;
                }
            }
        }
    }
}

fn wait_timeout(child: &mut Child) -> std::process::ExitStatus {
    let deadline = Instant::now() + WAIT;
    loop {
        if let Some(status) = child.try_wait().expect("wait for the child") {
            return status;
        }
        assert!(
            Instant::now() < deadline,
            "process did not exit within {WAIT:?}"
        );
        std::thread::sleep(Duration::from_millis(10));
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

/// Private runtime directory and the environment every process gets.
struct Env {
    dir: tempfile::TempDir,
    /// Whether processes get `SWITCHBOARD_TOKEN` (else they use the
    /// per-user secret file in the runtime directory).
    token: bool,
    /// `SWITCHBOARD_SERVICE` for every process (else unset: the default
    /// service).
    service: Option<String>,
}

impl Env {
    fn new() -> Env {
        let dir = tempfile::tempdir().expect("temp dir");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o700))
                .expect("chmod 700");
        }
        Env {
            dir,
            token: true,
            service: None,
        }
    }

    /// An environment whose processes use a service of their own, so that
    /// a discovery scan cannot meet the hubs other tests run on loopback
    /// at the same time.
    fn with_own_service() -> Env {
        Env {
            service: Some(format!("cli-test-{}", std::process::id())),
            ..Env::new()
        }
    }

    /// An environment whose processes prove the secret file instead of a
    /// token.
    fn with_secret_file() -> Env {
        Env {
            token: false,
            ..Env::new()
        }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new(BIN);
        c.args(args)
            .env("SWITCHBOARD_RUNTIME_DIR", self.path())
            .env_remove("SWITCHBOARD_LOG")
            .env_remove("SWITCHBOARD_ADDR");
        match &self.service {
            Some(service) => c.env("SWITCHBOARD_SERVICE", service),
            None => c.env_remove("SWITCHBOARD_SERVICE"),
        };
        if self.token {
            c.env("SWITCHBOARD_TOKEN", TOKEN);
        } else {
            c.env_remove("SWITCHBOARD_TOKEN");
        }
        c
    }

    fn spawn(&self, args: &[&str]) -> Proc {
        Self::spawn_cmd(self.cmd(args))
    }

    fn spawn_cmd(mut cmd: Command) -> Proc {
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

    fn run(&self, args: &[&str]) -> Output {
        let mut child = self
            .cmd(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn switchboard");
        wait_timeout(&mut child);
        child.wait_with_output().expect("output")
    }

    fn run_stdin(&self, args: &[&str], input: &[u8]) -> Output {
        let mut child = self
            .cmd(args)
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
        wait_timeout(&mut child);
        child.wait_with_output().expect("output")
    }

    /// Starts `switchboard hub --json` and returns it with its address.
    fn hub(&self, service: &str) -> (Proc, String) {
        let hub = self.spawn(&["hub", "--json", "--service", service]);
        let ready: serde_json::Value =
            serde_json::from_str(&hub.stdout_line()).expect("a JSON ready line");
        assert_eq!(ready["service"], service);
        let addr = ready["addr"].as_str().expect("addr").to_string();
        (hub, addr)
    }
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).trim_end().to_string()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).trim_end().to_string()
}

#[test]
fn hub_and_clients_as_processes() {
    // The last step scans loopback for hubs of the service: its own.
    let env = Env::with_own_service();
    let service = env.service.clone().expect("a service");
    let (hub, addr) = env.hub(&service);

    // Discovery through the hint in the private runtime directory.
    let o = env.run(&["discover"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(stdout(&o), addr);

    // Request/reply through a serving process.
    let echo = env.spawn(&["serve", "--id", "echo", "--echo"]);
    assert!(echo.stderr_line().contains("serving as echo"));
    let o = env.run(&["request", "--to", "echo", "hello"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(stdout(&o), "hello");

    // --exec, payload from stdin, global options after the subcommand.
    let upper = env.spawn(&["serve", "--id", "upper", "--exec", "tr a-z A-Z"]);
    assert!(upper.stderr_line().contains("serving as upper"));
    let o = env.run_stdin(
        &["request", "--to", "upper", "-", "--json", "--addr", &addr],
        b"quiet",
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_str(&stdout(&o)).expect("json");
    assert_eq!(v["reply"], "QUIET");

    // Exit codes: no such client 4, timeout 3, authentication 5.
    let o = env.run(&["request", "--to", "nobody", "x"]);
    assert_eq!(o.status.code(), Some(4), "{}", stderr(&o));
    assert_eq!(
        stderr(&o).lines().count(),
        1,
        "one error line: {}",
        stderr(&o)
    );
    let sleepy = env.spawn(&["serve", "--id", "sleepy", "--exec", "sleep 5"]);
    assert!(sleepy.stderr_line().contains("serving as sleepy"));
    let o = env.run(&["request", "--to", "sleepy", "--timeout", "0.3", "x"]);
    assert_eq!(o.status.code(), Some(3), "{}", stderr(&o));
    let o = env.run(&[
        "--token", "wrong", "--addr", &addr, "request", "--to", "echo", "x",
    ]);
    assert_eq!(o.status.code(), Some(5), "{}", stderr(&o));
    let o = env.run(&["--token", "wrong", "request", "--to", "echo", "x"]);
    assert_eq!(o.status.code(), Some(5), "{}", stderr(&o));

    // Direct messages to a listening process.
    let listener = env.spawn(&["listen", "--id", "inbox", "--count", "1"]);
    assert!(listener.stderr_line().contains("listening as inbox"));
    let o = env.run(&["send", "--to", "inbox", "ping"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let line = listener.stdout_line();
    assert!(line.ends_with(" ping"), "{line}");
    assert!(listener.wait().success());

    // Pub/sub fan-out to two subscriber processes.
    let s1 = env.spawn(&["sub", "orders.>", "--count", "1"]);
    let s2 = env.spawn(&["sub", "orders.*.created", "--count", "1", "--json"]);
    assert!(s1.stderr_line().contains("subscribed"));
    assert!(s2.stderr_line().contains("ready"));
    let o = env.run(&["pub", "orders.eu.created", "o-1"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(s1.stdout_line(), "orders.eu.created o-1");
    let v: serde_json::Value = serde_json::from_str(&s2.stdout_line()).expect("json");
    assert_eq!(
        (v["topic"].as_str(), v["payload"].as_str()),
        (Some("orders.eu.created"), Some("o-1"))
    );
    assert!(s1.wait().success());
    assert!(s2.wait().success());
    let o = env.run(&["sub", "bad..pattern"]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));

    // Key/value: set, get, watch (current value first, then the change).
    let o = env.run(&["kv", "set", "login.token", "t-1"]);
    assert_eq!(stdout(&o), "version 1", "{}", stderr(&o));
    let watcher = env.spawn(&["kv", "watch", "login.token", "--count", "2"]);
    assert_eq!(watcher.stdout_line(), "login.token = t-1 (version 1)");
    let o = env.run(&["kv", "set", "login.token", "t-2"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(watcher.stdout_line(), "login.token = t-2 (version 2)");
    assert!(watcher.wait().success());
    let o = env.run(&["kv", "get", "login.token"]);
    assert_eq!(stdout(&o), "t-2");
    let o = env.run(&["kv", "del", "login.token"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let o = env.run(&["kv", "get", "login.token"]);
    assert_eq!(o.status.code(), Some(1));

    // Clients and status.
    let o = env.run(&["clients", "--json"]);
    let ids: Vec<String> = stdout(&o)
        .lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).expect("json")["id"]
                .as_str()
                .unwrap_or_default()
                .to_string()
        })
        .collect();
    assert!(
        ids.contains(&"echo".to_string()) && ids.contains(&"upper".to_string()),
        "{ids:?}"
    );
    let o = env.run(&["status", "--json"]);
    let v: serde_json::Value = serde_json::from_str(&stdout(&o)).expect("json");
    assert!(v["clients"].as_u64().unwrap_or(0) >= 3, "{v}");

    // SIGTERM stops the hub cleanly and removes its hint.
    drop((echo, upper, sleepy));
    assert!(hub.terminate().success());
    let hints = std::fs::read_dir(env.path())
        .expect("runtime dir")
        .filter_map(Result::ok)
        .filter(|e| e.file_name().to_string_lossy().ends_with(".hint"))
        .count();
    assert_eq!(hints, 0);
    let o = env.run(&["discover"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("no hub"), "{}", stderr(&o));
}

#[test]
fn usage_errors_exit_2_and_help_lists_exit_codes() {
    let env = Env::new();
    let o = env.run(&["bogus"]);
    assert_eq!(o.status.code(), Some(2));
    let o = env.run(&["request", "x"]);
    assert_eq!(o.status.code(), Some(2));
    let o = env.run(&["serve", "--id", "x"]);
    assert_eq!(o.status.code(), Some(2), "serve needs --echo or --exec");
    let o = env.run(&["--token", "", "clients"]);
    assert_eq!(o.status.code(), Some(1), "an empty token is refused");
    assert!(stderr(&o).contains("token is empty"), "{}", stderr(&o));
    let o = env.run(&["--help"]);
    assert!(o.status.success());
    let help = stdout(&o);
    assert!(
        help.contains("Exit codes") && help.contains("no such client"),
        "{help}"
    );
}

#[test]
fn demo_runs_and_exits_0() {
    let env = Env::new();
    let o = env.run(&["demo"]);
    assert!(o.status.success(), "{}\n{}", stdout(&o), stderr(&o));
    let out = stdout(&o);
    for part in [
        "discover",
        "request/reply",
        "pub/sub",
        "key/value",
        "session",
        "in order",
    ] {
        assert!(
            out.to_lowercase().contains(part),
            "demo output lacks {part}: {out}"
        );
    }
}

#[test]
fn bench_reports_every_run() {
    let env = Env::new();
    let o = env.run(&[
        "bench",
        "--json",
        "--strict",
        "--messages",
        "2000",
        "--fanout",
        "2",
        "--requests",
        "200",
        "--concurrency",
        "4",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let runs = bench_runs(&o);
    assert_eq!(runs.len(), 4, "{runs:?}");
    for run in &runs[..2] {
        let expected = run["published"].as_u64().expect("published")
            * run["subscribers"].as_u64().expect("subs");
        assert_eq!(run["expected"].as_u64(), Some(expected), "{run}");
        assert_eq!(
            run["delivered"].as_u64(),
            Some(expected),
            "--strict passed: {run}"
        );
        assert_eq!(
            (run["dropped"].as_u64(), run["missing"].as_u64()),
            (Some(0), Some(0)),
            "{run}"
        );
        assert_eq!(run["in_process"], true, "{run}");
    }
    assert_eq!(runs[2]["requests"], 200);
}

/// Sends one HTTP/1.1 request over a plain socket and returns the status
/// code and body.
fn http(addr: &str, method: &str, path: &str, token: &str) -> (u16, String) {
    use std::io::Read;
    let mut s = std::net::TcpStream::connect(addr).expect("connect to the gateway");
    s.set_read_timeout(Some(WAIT)).expect("timeout");
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {token}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    )
    .expect("write request");
    let mut resp = String::new();
    s.read_to_string(&mut resp).expect("read response");
    let status = resp
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("no status line in {resp:?}"));
    let body = resp.split("\r\n\r\n").nth(1).unwrap_or("").to_string();
    (status, body)
}

#[test]
fn hub_with_http_gateway_and_token_command() {
    let env = Env::new();
    let hub = env.spawn(&["hub", "--json", "--service", "gw", "--http", "127.0.0.1:0"]);
    let ready: serde_json::Value =
        serde_json::from_str(&hub.stdout_line()).expect("a JSON ready line");
    let http_addr = ready["http"]
        .as_str()
        .expect("http address in the ready line");

    let o = env.run(&["token", "--json"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_str(&stdout(&o)).expect("json");
    let token = v["token"].as_str().expect("token").to_string();
    assert!(!token.is_empty());
    // The derivation of docs/PROTOCOL.md ("Test vector").
    let o = env.run(&["token", "--token", "correct horse battery staple"]);
    assert_eq!(
        stdout(&o),
        "437894acdad47f933550af34abdc0bb0fc89331f44d712e5739048477098422d"
    );

    let (code, _) = http(http_addr, "GET", "/v1/status", "wrong");
    assert_eq!(code, 401, "a wrong bearer token is refused");
    let (code, body) = http(http_addr, "GET", "/v1/status", &token);
    assert_eq!(code, 200, "{body}");
    assert!(body.contains("gw"), "status names the service: {body}");
    let (code, _) = http(http_addr, "GET", "/healthz", "");
    assert_eq!(code, 200);
}

/// Starts `switchboard hub --standby` of `service` and waits until it
/// follows the primary at `addr` (its "standby" event).
fn standby(env: &Env, service: &str, addr: &str) -> Proc {
    let p = env.spawn(&["hub", "--json", "--service", service, "--standby"]);
    let ev = p.event("standby");
    assert_eq!(ev["primary"], addr, "the standby follows the primary");
    p
}

/// A one-shot command run while a standby takes over from a primary killed
/// with SIGKILL succeeds against the standby: it keeps trying the hinted
/// address (or `--addr`) instead of giving up after a full discovery.
#[test]
fn one_shot_commands_ride_a_standby_takeover() {
    let env = Env::new();
    let service = "takeover";
    let (mut primary, addr) = env.hub(service);
    let mut first = standby(&env, service, &addr);
    let o = env.run(&["--service", service, "kv", "set", "k", "v1"]);
    assert_eq!(stdout(&o), "version 1", "{}", stderr(&o));

    // 1. The command right after the kill (the standby needs some
    //    milliseconds to notice and bind the port).
    primary.kill9();
    let o = env.run(&["--service", service, "kv", "set", "k", "v2"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(stdout(&o), "version 2");
    let ready = first.event("ready");
    assert_eq!(
        (ready["addr"].as_str(), ready["took_over"].as_bool()),
        (Some(addr.as_str()), Some(true))
    );
    assert_eq!(ready["epoch"], 2);

    // 2. A gap that surely holds the command: the next standby is frozen
    //    (SIGSTOP) while the primary dies, and thawed only once the
    //    command said it is trying again. Found through the hint file.
    let second = standby(&env, service, &addr);
    second.signal("-STOP");
    first.kill9();
    let mut cmd = env.cmd(&["--service", service, "kv", "get", "k"]);
    cmd.env("SWITCHBOARD_LOG", "info");
    let getter = Env::spawn_cmd(cmd);
    while !getter.stderr_line().contains("trying again") {}
    second.signal("-CONT");
    let got = getter.stdout_line();
    assert!(getter.wait().success());
    assert_eq!(got, "v2", "the standby holds what the primary acknowledged");

    // 3. The same with --addr.
    let third = standby(&env, service, &addr);
    third.signal("-STOP");
    let mut second = second;
    second.kill9();
    let mut cmd = env.cmd(&["--addr", &addr, "kv", "set", "k", "v3"]);
    cmd.env("SWITCHBOARD_LOG", "info");
    let setter = Env::spawn_cmd(cmd);
    while !setter.stderr_line().contains("trying again") {}
    third.signal("-CONT");
    let got = setter.stdout_line();
    assert!(setter.wait().success());
    assert_eq!(got, "version 3");
    let ready = third.event("ready");
    assert_eq!(ready["epoch"], 4);
}

/// `--wait 0` against a dead address fails at once; a short `--wait`
/// fails after that wait with a message that says so; a stale hint (a hub
/// killed without a standby) is waited for, then reported.
#[test]
fn wait_bounds_the_retries_and_zero_fails_fast() {
    let env = Env::new();
    let dead = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        l.local_addr().expect("addr").to_string()
    };
    let t = std::time::Instant::now();
    let o = env.run(&["--wait", "0", "--addr", &dead, "status"]);
    let took = t.elapsed();
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert!(stderr(&o).contains("cannot connect"), "{}", stderr(&o));
    assert!(took < Duration::from_secs(2), "--wait 0 took {took:?}");
    assert_eq!(stderr(&o).lines().count(), 1, "{}", stderr(&o));

    let t = std::time::Instant::now();
    let o = env.run(&["--wait", "0.5", "--addr", &dead, "pub", "t", "x"]);
    let took = t.elapsed();
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("within --wait 500 ms"),
        "{}",
        stderr(&o)
    );
    assert!(took >= Duration::from_millis(500), "gave up after {took:?}");

    let (mut hub, addr) = env.hub("stale");
    hub.child.kill().expect("kill the hub");
    let _ = hub.child.wait();
    let t = std::time::Instant::now();
    let o = env.run(&["--wait", "0.4", "--service", "stale", "status"]);
    let took = t.elapsed();
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    let err = stderr(&o);
    assert!(
        err.contains("no hub of service \"stale\" answered within --wait 400 ms")
            && err.contains(&addr),
        "{err}"
    );
    assert!(took >= Duration::from_millis(400), "gave up after {took:?}");

    let o = env.run(&["--wait=-1", "status"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("--wait must be"), "{}", stderr(&o));
}

fn bench_runs(o: &Output) -> Vec<serde_json::Value> {
    stdout(o)
        .lines()
        .map(|l| serde_json::from_str(l).expect("json line"))
        .collect()
}

const SMALL_BENCH: [&str; 9] = [
    "--json",
    "--messages",
    "1000",
    "--fanout",
    "2",
    "--requests",
    "50",
    "--concurrency",
    "2",
];

/// `bench --addr` without `--token` proves the secret file like every
/// command; `--service` measures the discovered hub; neither runs a hub in
/// the process.
#[test]
fn bench_uses_the_given_or_discovered_hub() {
    let env = Env::with_secret_file();
    let (_hub, addr) = env.hub("benched");
    let with = |extra: &[&str]| {
        let mut args = vec!["bench"];
        args.extend_from_slice(&SMALL_BENCH);
        args.extend_from_slice(extra);
        let o = env.run(&args);
        assert!(o.status.success(), "{}", stderr(&o));
        bench_runs(&o)
    };
    for runs in [with(&["--addr", &addr]), with(&["--service", "benched"])] {
        assert_eq!(runs.len(), 4, "{runs:?}");
        for run in &runs {
            assert_eq!(run["hub"], addr.as_str(), "{run}");
            assert_eq!(run["in_process"], false, "{run}");
        }
    }
    let runs = with(&[]);
    assert!(
        runs.iter()
            .all(|r| r["in_process"] == true && r["hub"] != addr.as_str()),
        "{runs:?}"
    );
    let o = env.run(&["status", "--service", "benched", "--json"]);
    let v: serde_json::Value = serde_json::from_str(&stdout(&o)).expect("json");
    assert!(
        v["msgs_in"].as_u64().unwrap_or(0) > 2 * 1000,
        "the hub carried both benches: {v}"
    );
}

/// `bench --strict` exits 6 when subscribers drop messages (a slow
/// consumer with a small stream), and the runs say how many.
#[test]
fn bench_strict_fails_on_drops() {
    let env = Env::new();
    let mut args = vec![
        "bench",
        "--strict",
        "--capacity",
        "4",
        "--overflow",
        "drop-newest",
        "--consume-delay-us",
        "1000",
    ];
    args.extend_from_slice(&SMALL_BENCH);
    let o = env.run(&args);
    assert_eq!(o.status.code(), Some(6), "{}", stderr(&o));
    assert!(stderr(&o).contains("bench --strict"), "{}", stderr(&o));
    let runs = bench_runs(&o);
    assert_eq!(runs.len(), 4, "{runs:?}");
    for run in &runs[..2] {
        let dropped = run["dropped"].as_u64().expect("dropped");
        let delivered = run["delivered"].as_u64().expect("delivered");
        assert!(dropped > 0, "{run}");
        assert_eq!(
            delivered + dropped + run["missing"].as_u64().expect("missing"),
            run["expected"].as_u64().expect("expected"),
            "{run}"
        );
    }
}

/// A one-shot command whose hub is killed while it waits for its answer
/// resumes its session on the standby and gets the answer: the request is
/// held by the replier until the standby has taken over.
#[test]
fn a_request_in_flight_survives_a_takeover() {
    let env = Env::new();
    let service = "inflight";
    let (mut primary, addr) = env.hub(service);
    let standby = standby(&env, service, &addr);
    let started = env.path().join("started");
    let go = env.path().join("go");
    let script = format!(
        "touch '{}'; while [ ! -e '{}' ]; do sleep 0.01; done; tr a-z A-Z",
        started.display(),
        go.display()
    );
    let server = env.spawn(&[
        "--service",
        service,
        "serve",
        "--id",
        "held",
        "--exec",
        &script,
    ]);
    assert!(server.stderr_line().contains("serving as held"));
    let requester = env.spawn(&["--service", service, "request", "--to", "held", "hello"]);
    let deadline = std::time::Instant::now() + WAIT;
    while !started.exists() {
        assert!(
            std::time::Instant::now() < deadline,
            "the request never reached the server"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    primary.kill9();
    let ready = standby.event("ready");
    assert_eq!(ready["addr"], addr.as_str());
    std::fs::write(&go, b"").expect("let the server answer");
    let reply = requester.stdout_line();
    assert!(requester.wait().success());
    assert_eq!(reply, "HELLO");
}

#[test]
fn hub_federate_options_are_checked_before_anything_starts() {
    let env = Env::new();
    let o = env.run(&["hub", "--federate", "http://127.0.0.1:4222"]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("is not a NATS URL"), "{}", stderr(&o));
    let o = env.run(&["hub", "--federate", " , "]);
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains("no NATS server given"),
        "{}",
        stderr(&o)
    );
    // --federate-creds means nothing without servers (--federate or the
    // file's [federation]): a usage error.
    let o = env.run(&["hub", "--federate-creds", "/nonexistent"]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    // A federated standby must be told the primary's name in the
    // federation (it takes that name over); refused before connecting.
    let o = env.run(&["hub", "--standby", "--federate", "nats://127.0.0.1:1"]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("--federate-name"), "{}", stderr(&o));
    let o = env.run(&["hub", "--federate-name", "h1"]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
}

/// Whether every thread of process `pid` is stopped (state `T` in
/// `/proc/PID/task/*/stat`, after the command name in parentheses).
fn all_threads_stopped(pid: &str) -> bool {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return false;
    };
    tasks.into_iter().all(|task| {
        task.ok()
            .and_then(|t| std::fs::read_to_string(t.path().join("stat")).ok())
            .and_then(|stat| {
                stat.rsplit_once(") ")
                    .and_then(|(_, rest)| rest.chars().next())
            })
            == Some('T')
    })
}
