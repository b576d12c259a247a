//! `switchboard policy hash-token`, `policy check` and `hub --policy` as
//! processes: a principal's token gets its rights and no more.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_switchboard");
const WAIT: Duration = Duration::from_secs(15);

/// A private runtime directory; commands run with it and without a token
/// from the environment.
fn cmd(dir: &Path, args: &[&str]) -> Command {
    let mut c = Command::new(BIN);
    c.args(args)
        .env("SWITCHBOARD_RUNTIME_DIR", dir)
        .env_remove("SWITCHBOARD_TOKEN")
        .env_remove("SWITCHBOARD_LOG")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    c
}

fn run(dir: &Path, args: &[&str], input: &[u8]) -> Output {
    let mut child = cmd(dir, args).stdin(Stdio::piped()).spawn().expect("spawn");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(input)
        .expect("write");
    let start = Instant::now();
    while child.try_wait().expect("wait").is_none() {
        assert!(start.elapsed() < WAIT, "switchboard {args:?} did not exit");
        std::thread::sleep(Duration::from_millis(10));
    }
    child.wait_with_output().expect("output")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).trim_end().to_string()
}

fn private_dir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("temp dir");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o700)).unwrap();
    }
    dir
}

fn write_policy(dir: &Path, text: &str, mode: u32) -> PathBuf {
    let path = dir.join("policy.toml");
    std::fs::write(&path, text).unwrap();
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
    }
    #[cfg(not(unix))]
    let _ = mode;
    path
}

fn digest(dir: &Path, token: &str) -> String {
    let o = run(
        dir,
        &["policy", "hash-token"],
        format!("{token}\n").as_bytes(),
    );
    assert!(o.status.success(), "{}", text(&o.stderr));
    text(&o.stdout)
}

#[test]
fn hash_token_prints_the_digest_and_never_the_token() {
    let dir = private_dir();
    let from_stdin = digest(dir.path(), "test");
    assert_eq!(
        from_stdin,
        "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"
    );
    let o = run(dir.path(), &["policy", "hash-token", "test"], b"");
    assert_eq!(text(&o.stdout), from_stdin);
    assert!(o.stderr.is_empty(), "{}", text(&o.stderr));
    let o = run(dir.path(), &["policy", "hash-token"], b"\n");
    assert_eq!(o.status.code(), Some(1));
}

#[test]
fn check_prints_principals_or_exits_2_naming_the_line() {
    let dir = private_dir();
    let ok = write_policy(
        dir.path(),
        "[[principal]]\nname = \"app\"\nunix_uid = [4242]\nids = [\"app\"]\n",
        0o600,
    );
    let o = run(dir.path(), &["policy", "check", ok.to_str().unwrap()], b"");
    assert!(o.status.success(), "{}", text(&o.stderr));
    let out = text(&o.stdout);
    assert!(
        out.contains("owner:") && out.contains("app: uid 4242; ids app"),
        "{out}"
    );
    let bad = write_policy(
        dir.path(),
        "[[principal]]\nname = \"app\"\nuid = [1]\n",
        0o600,
    );
    let o = run(dir.path(), &["policy", "check", bad.to_str().unwrap()], b"");
    assert_eq!(o.status.code(), Some(2), "{}", text(&o.stderr));
    let err = text(&o.stderr);
    assert!(err.contains("line 3") && err.contains("`uid`"), "{err}");
}

#[cfg(unix)]
#[test]
fn a_hub_refuses_a_policy_others_may_change() {
    let dir = private_dir();
    let path = write_policy(dir.path(), "", 0o666);
    let o = run(
        dir.path(),
        &["hub", "--token", "t", "--policy", path.to_str().unwrap()],
        b"",
    );
    assert_eq!(o.status.code(), Some(1));
    let err = text(&o.stderr);
    assert!(
        err.contains("chmod 600") && err.contains("policy.toml"),
        "{err}"
    );
}

/// The hub process, killed when dropped.
struct Hub(Child);

impl Drop for Hub {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn a_hub_with_a_policy_gives_a_token_its_rights_only() {
    let dir = private_dir();
    let app = digest(dir.path(), "app-token");
    let path = write_policy(
        dir.path(),
        &format!(
            "[[principal]]\nname = \"app\"\ntoken_sha256 = [\"{app}\"]\nids = [\"cli-*\"]\nkv = {{ read = [\"app/\"], write = [\"app/\"] }}\n"
        ),
        0o600,
    );
    let mut child = cmd(
        dir.path(),
        &[
            "hub",
            "--json",
            "--service",
            "policy-cli",
            "--token",
            "hub-token",
        ],
    )
    .arg("--policy")
    .arg(&path)
    .stdin(Stdio::null())
    .spawn()
    .expect("spawn hub");
    let stdout = child.stdout.take().expect("stdout");
    let hub = Hub(child);
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let ready: serde_json::Value =
        serde_json::from_str(&rx.recv_timeout(WAIT).expect("ready line")).expect("JSON");
    let addr = ready["addr"].as_str().expect("addr").to_string();
    let client = |token: &str, args: &[&str]| {
        let mut all = vec!["--addr", &addr, "--token", token];
        all.extend_from_slice(args);
        run(dir.path(), &all, b"")
    };
    let o = client("app-token", &["kv", "set", "app/x", "1"]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    let o = client("app-token", &["kv", "set", "other", "1"]);
    assert!(!o.status.success());
    let err = text(&o.stderr);
    assert!(
        err.contains("principal 'app' may not write key 'other'"),
        "{err}"
    );
    // The hub's own token is the owner, with every right.
    let o = client("hub-token", &["kv", "set", "other", "1"]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    drop(hub);
}
