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
        let line = self
            .stdout
            .recv_timeout(WAIT)
            .expect("a ready line within the wait");
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("{e}: {line}"))
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
fn default_config_round_trips_and_starts_a_hub_under_systemd() {
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

    let hub = Proc::spawn(env.cmd(&[
        "hub",
        "--json",
        "--config",
        config,
        "--service",
        "from-flag",
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

#[test]
fn socket_activation_serves_on_the_passed_listener() {
    use std::os::fd::AsRawFd;
    use std::os::unix::process::CommandExt;
    let env = Env::new();
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let want = listener.local_addr().expect("addr").to_string();
    let fd = listener.as_raw_fd();
    let notify = NotifySocket::bind(env.path());
    // LISTEN_PID must be the hub's pid: a shell sets it to its own and
    // execs the hub, which keeps that pid.
    let mut cmd = env.cmd(&[]);
    let mut sh = Command::new("sh");
    sh.arg("-c")
        .arg(r#"LISTEN_PID=$$ exec "$0" "$@""#)
        .arg(BIN)
        .args(["hub", "--json", "--no-unix"])
        .envs(cmd.get_envs().filter_map(|(k, v)| Some((k, v?))))
        .env_remove("SWITCHBOARD_LOG")
        .env_remove("WATCHDOG_USEC")
        .env("LISTEN_FDS", "1")
        .env("LISTEN_FDNAMES", "native")
        .env("NOTIFY_SOCKET", &notify.path);
    // SAFETY: between fork and exec only dup2/fcntl, which are
    // async-signal-safe; the descriptor stays open in the parent.
    unsafe {
        sh.pre_exec(move || {
            if fd == 3 {
                let flags = libc::fcntl(3, libc::F_GETFD);
                if flags < 0 || libc::fcntl(3, libc::F_SETFD, flags & !libc::FD_CLOEXEC) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
            } else if libc::dup2(fd, 3) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    cmd = sh;
    let hub = Proc::spawn(cmd);
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
