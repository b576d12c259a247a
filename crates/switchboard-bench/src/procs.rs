//! Starting and stopping the peer servers: free loopback ports, readiness
//! checks, versions, and a guard that stops each process by its PID.

use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

/// The Debian packages that provide the peers.
pub const INSTALL_COMMAND: &str =
    "apt-get update && apt-get install -y nats-server mosquitto redis-server";

/// A child process that is stopped (SIGTERM, then SIGKILL) when dropped.
pub struct ProcGuard {
    name: String,
    child: Child,
    addr: SocketAddr,
}

impl ProcGuard {
    /// The loopback address the process listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for ProcGuard {
    fn drop(&mut self) {
        if let Ok(Some(_)) = self.child.try_wait() {
            return;
        }
        let pid = self.child.id() as libc::pid_t;
        // SAFETY: kill(2) with a pid this guard spawned and has not reaped yet.
        unsafe {
            libc::kill(pid, libc::SIGTERM);
        }
        let deadline = Instant::now() + Duration::from_secs(3);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        eprintln!("{} (pid {pid}) ignored SIGTERM; killing it", self.name);
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Resident set size of `pid` in KiB.
pub fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

/// A loopback port that was free a moment ago.
pub fn free_port() -> Result<u16> {
    let l = TcpListener::bind("127.0.0.1:0").context("binding a probe socket on 127.0.0.1")?;
    Ok(l.local_addr()?.port())
}

/// Finds `name` on `PATH` or in the sbin directories Debian installs into.
pub fn find_binary(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/usr/bin", "/sbin", "/usr/local/bin"].map(PathBuf::from))
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

/// Runs the install command (as root) and reports whether it succeeded.
pub fn install_peers() -> Result<()> {
    eprintln!("installing peers: {INSTALL_COMMAND}");
    let status = Command::new("sh")
        .arg("-c")
        .arg(INSTALL_COMMAND)
        .env("DEBIAN_FRONTEND", "noninteractive")
        .stdin(Stdio::null())
        .status()
        .context("running apt-get")?;
    if !status.success() {
        bail!("`{INSTALL_COMMAND}` failed ({status}); run it yourself as root");
    }
    Ok(())
}

/// First line of the combined output of `cmd args`.
pub fn version_line(bin: &Path, args: &[&str]) -> String {
    match Command::new(bin).args(args).stdin(Stdio::null()).output() {
        Ok(out) => {
            let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
            text.push_str(&String::from_utf8_lossy(&out.stderr));
            text.lines()
                .find(|l| !l.trim().is_empty())
                .unwrap_or("unknown")
                .trim()
                .to_string()
        }
        Err(e) => format!("unknown ({e})"),
    }
}

/// Spawns `cmd` (stdout and stderr to `log`), then waits until `addr`
/// accepts TCP connections, for at most `timeout`.
pub fn spawn_and_wait(
    name: &str,
    mut cmd: Command,
    addr: SocketAddr,
    log: &Path,
    timeout: Duration,
) -> Result<ProcGuard> {
    let out = std::fs::File::create(log).with_context(|| format!("creating {}", log.display()))?;
    let err = out.try_clone()?;
    let child = cmd
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .spawn()
        .with_context(|| format!("starting {name}"))?;
    let mut guard = ProcGuard {
        name: name.to_string(),
        child,
        addr,
    };
    let deadline = Instant::now() + timeout;
    loop {
        if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
            return Ok(guard);
        }
        if let Ok(Some(status)) = guard.child.try_wait() {
            let tail = std::fs::read_to_string(log).unwrap_or_default();
            bail!("{name} exited at start-up ({status}); its output:\n{tail}");
        }
        if Instant::now() > deadline {
            bail!(
                "{name} did not accept connections on {addr} within {timeout:?}; see {}",
                log.display()
            );
        }
        std::thread::sleep(Duration::from_millis(25));
    }
}

/// Spawns `cmd` and reads its stdout until a line starting with `prefix`
/// appears (within `timeout`); returns the guard and the rest of that line.
pub fn spawn_with_ready_line(
    name: &str,
    mut cmd: Command,
    prefix: &str,
    timeout: Duration,
) -> Result<(ProcGuard, String)> {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .with_context(|| format!("starting {name}"))?;
    let stdout = child.stdout.take().context("child stdout")?;
    let (tx, rx) = std::sync::mpsc::channel();
    let prefix_owned = prefix.to_string();
    std::thread::spawn(move || {
        let mut reader = BufReader::new(stdout);
        let mut line = String::new();
        loop {
            line.clear();
            match reader.read_line(&mut line) {
                Ok(0) | Err(_) => {
                    let _ = tx.send(None);
                    return;
                }
                Ok(_) => {
                    if let Some(rest) = line.trim().strip_prefix(&prefix_owned) {
                        let _ = tx.send(Some(rest.trim().to_string()));
                        // keep draining so the child never blocks on a full pipe
                        let mut sink = String::new();
                        while matches!(reader.read_line(&mut sink), Ok(n) if n > 0) {
                            sink.clear();
                        }
                        return;
                    }
                }
            }
        }
    });
    let placeholder: SocketAddr = ([127, 0, 0, 1], 0).into();
    let mut guard = ProcGuard {
        name: name.to_string(),
        child,
        addr: placeholder,
    };
    match rx.recv_timeout(timeout) {
        Ok(Some(rest)) => {
            let addr = parse_addr(&rest).with_context(|| {
                format!("{name} printed a ready line without an address: {rest}")
            })?;
            guard.addr = addr;
            Ok((guard, rest))
        }
        Ok(None) => bail!("{name} exited before it was ready"),
        Err(_) => bail!("{name} printed no ready line within {timeout:?}"),
    }
}

/// Takes the first `IP:PORT` token (plain or inside JSON `"addr":"..."`).
fn parse_addr(text: &str) -> Option<SocketAddr> {
    text.split(|c: char| c.is_whitespace() || c == '"' || c == ',' || c == '{' || c == '}')
        .find_map(|t| t.parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_plain_and_json_ready_lines() {
        assert_eq!(
            parse_addr("127.0.0.1:4222"),
            Some("127.0.0.1:4222".parse().unwrap())
        );
        assert_eq!(
            parse_addr(r#"{"event":"ready","addr":"127.0.0.1:5000","pid":3}"#),
            Some("127.0.0.1:5000".parse().unwrap())
        );
        assert_eq!(parse_addr("no address here"), None);
    }

    #[test]
    fn rss_of_self_is_positive() {
        assert!(rss_kib(std::process::id()).unwrap() > 0);
    }

    #[test]
    fn readiness_times_out_for_a_process_that_never_listens() {
        let port = free_port().unwrap();
        let addr: SocketAddr = ([127, 0, 0, 1], port).into();
        let dir = tempfile::tempdir().unwrap();
        let mut cmd = Command::new("sleep");
        cmd.arg("30");
        let log = dir.path().join("log");
        let err = spawn_and_wait("sleep", cmd, addr, &log, Duration::from_millis(300))
            .err()
            .expect("sleep never listens, so readiness must time out");
        assert!(
            err.to_string().contains("did not accept connections"),
            "{err}"
        );
    }

    #[test]
    fn guard_stops_the_process_by_pid() {
        let child = Command::new("sleep").arg("30").spawn().unwrap();
        let pid = child.id();
        let guard = ProcGuard {
            name: "sleep".into(),
            child,
            addr: ([127, 0, 0, 1], 0).into(),
        };
        assert!(Path::new(&format!("/proc/{pid}")).exists());
        let started = Instant::now();
        drop(guard);
        assert!(started.elapsed() < Duration::from_secs(3));
        assert!(!Path::new(&format!("/proc/{pid}")).exists());
    }
}
