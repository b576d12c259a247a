//! The Unix socket transport: the facade client over a hub's socket
//! (request/reply, pub/sub, resume after a lost connection), discovery
//! preferring the socket its hint names, the client's checks of a socket's
//! owner and directory, and peer credentials — a process of another uid
//! connecting without a secret, refused without a policy and admitted by
//! one (as root only; skipped with a notice otherwise).

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use switchboard::hub::router::admission::Admission;
use switchboard::hub::{HubConfig, Policy, UnixSocket};
use switchboard::{Client, ClientError, ClientEvent, HubHandle, Secret};

const BIN: &str = env!("CARGO_BIN_EXE_switchboard");
const TOKEN: &str = "unix-test-token";
const WAIT: Duration = Duration::from_secs(15);

/// A uid with no process and no account on the machine: the kernel runs a
/// process as any uid, no `/etc/passwd` entry is needed.
const OTHER_UID: u32 = 424_242;

async fn within<T>(f: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(WAIT, f).await.expect("in time")
}

fn chmod(path: &Path, mode: u32) {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

/// A hub proving [`TOKEN`], its socket at `socket` with `mode`, no hint,
/// and `admission` as its policy (none: single-user mode).
async fn hub_at(socket: &Path, mode: u32, admission: Option<Arc<dyn Admission>>) -> HubHandle {
    let mut config = HubConfig::with_secret("unix-test", Secret::from_token(TOKEN));
    config.write_hint = false;
    config.unix = UnixSocket {
        mode,
        ..UnixSocket::at(socket)
    };
    config.admission = admission;
    let hub = switchboard::hub::Hub::start(config).await.expect("hub");
    assert_eq!(hub.unix_path(), Some(socket));
    hub
}

fn transport_of(clients: &[switchboard::ClientInfo], id: &str) -> String {
    clients
        .iter()
        .find(|c| c.client_id == id)
        .map(|c| c.transport.clone())
        .unwrap_or_else(|| panic!("{id} is not listed"))
}

#[tokio::test]
async fn clients_talk_over_the_socket() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("hub.sock");
    let hub = hub_at(&socket, 0o600, None).await;
    assert_eq!(
        std::fs::metadata(&socket).unwrap().permissions().mode() & 0o777,
        0o600
    );
    let addr = format!("unix:{}", socket.display());
    let server = within(Client::builder("echo").addr(&addr).token(TOKEN).connect())
        .await
        .unwrap();
    let _serving = server
        .serve(|req| async move { Ok::<_, String>(req.payload().clone()) })
        .await
        .unwrap();
    let asker = within(
        Client::builder("asker")
            .unix(&socket)
            .token(TOKEN)
            .connect(),
    )
    .await
    .unwrap();
    let reply = within(asker.request("echo", "ping")).await.unwrap();
    assert_eq!(&reply[..], b"ping");
    let mut sub = server.subscribe("news.>").await.unwrap();
    within(asker.publish("news.today", "hello")).await.unwrap();
    let m = within(sub.next()).await.expect("a delivery");
    assert_eq!(&m.payload[..], b"hello");
    let clients = within(asker.clients()).await.unwrap();
    assert_eq!(transport_of(&clients, "echo"), "unix");
    assert_eq!(transport_of(&clients, "asker"), "unix");
    drop((server, asker));
    hub.shutdown().await;
    assert!(!socket.exists(), "the hub removes its socket on shutdown");
}

/// Forwards connections from `front` to the hub's socket; each forwarded
/// connection can be cut to make the client reconnect.
struct Relay {
    cut: tokio::sync::watch::Sender<u64>,
}

impl Relay {
    fn start(front: PathBuf, hub: PathBuf) -> Relay {
        let listener = tokio::net::UnixListener::bind(&front).unwrap();
        let (cut, cuts) = tokio::sync::watch::channel(0u64);
        tokio::spawn(async move {
            while let Ok((mut a, _)) = listener.accept().await {
                let Ok(mut b) = tokio::net::UnixStream::connect(&hub).await else {
                    continue;
                };
                let mut cuts = cuts.clone();
                cuts.mark_unchanged();
                tokio::spawn(async move {
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut a, &mut b) => {}
                        _ = cuts.changed() => {}
                    }
                });
            }
        });
        Relay { cut }
    }

    fn cut(&self) {
        self.cut.send_modify(|n| *n += 1);
    }
}

#[tokio::test]
async fn a_session_resumes_over_the_socket() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("hub.sock");
    let hub = hub_at(&socket, 0o600, None).await;
    let front = dir.path().join("front.sock");
    let relay = Relay::start(front.clone(), socket.clone());
    let publisher = within(Client::builder("pub").unix(&socket).token(TOKEN).connect())
        .await
        .unwrap();
    let subscriber = within(Client::builder("sub").unix(&front).token(TOKEN).connect())
        .await
        .unwrap();
    let mut events = subscriber.events();
    let mut sub = subscriber.subscribe("t").await.unwrap();
    within(publisher.publish("t", "1")).await.unwrap();
    assert_eq!(&within(sub.next()).await.unwrap().payload[..], b"1");
    relay.cut();
    // Published while the subscriber is away: delivered after the resume.
    within(publisher.publish("t", "2")).await.unwrap();
    let resumed = within(async {
        while let Some(e) = events.next().await {
            match e {
                ClientEvent::Resumed { .. } => return true,
                ClientEvent::StateLost { .. } => return false,
                _ => {}
            }
        }
        false
    })
    .await;
    assert!(resumed, "the session resumed");
    assert_eq!(&within(sub.next()).await.unwrap().payload[..], b"2");
    hub.shutdown().await;
}

#[tokio::test]
async fn unsafe_sockets_are_refused_by_the_client() {
    let dir = tempfile::tempdir().unwrap();
    let open = dir.path().join("open");
    std::fs::create_dir(&open).unwrap();
    let socket = open.join("hub.sock");
    let hub = hub_at(&socket, 0o600, None).await;
    let connect = || {
        Client::builder("c")
            .unix(&socket)
            .token(TOKEN)
            .reconnect(false)
            .connect()
    };
    // A directory anyone may write, without the sticky bit.
    chmod(&open, 0o777);
    let err = within(connect()).await.unwrap_err();
    assert!(matches!(err, ClientError::UnsafeSocket { .. }), "{err}");
    assert!(err.to_string().contains("sticky"), "{err}");
    // With the sticky bit, others cannot replace our socket.
    chmod(&open, 0o1777);
    within(connect()).await.expect("a sticky directory is safe");
    chmod(&open, 0o700);
    if switchboard::discovery::current_uid() != 0 {
        eprintln!("skipping the wrong-owner case: it needs root to chown the socket");
        return;
    }
    std::os::unix::fs::chown(&socket, Some(OTHER_UID), None).unwrap();
    let err = within(connect()).await.unwrap_err();
    assert!(matches!(err, ClientError::UnsafeSocket { .. }), "{err}");
    assert!(err.to_string().contains(&OTHER_UID.to_string()), "{err}");
    // Unless that owner is trusted.
    let ok = Client::builder("c")
        .unix(&socket)
        .unix_owner(OTHER_UID)
        .token(TOKEN)
        .connect();
    within(ok).await.expect("a trusted owner");
    hub.shutdown().await;
}

/// Runs the CLI with a runtime directory of its own (`rt`), no token and
/// `args`, as `uid` when given.
fn cli(rt: &Path, uid: Option<u32>, args: &[&str]) -> Output {
    let mut cmd = Command::new(BIN);
    cmd.args(args)
        .env("SWITCHBOARD_RUNTIME_DIR", rt)
        .env_remove("SWITCHBOARD_TOKEN")
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null());
    if let Some(uid) = uid {
        use std::os::unix::process::CommandExt;
        cmd.uid(uid).gid(uid);
    }
    cmd.output().expect("run switchboard")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// A hub with its socket (mode 0666) in a fresh directory others may
/// search, with `policy`; a process of [`OTHER_UID`] without a secret asks
/// it for its client list. Returns that process's output.
async fn other_user_connects(policy: Option<Arc<dyn Admission>>) -> Output {
    let dir = tempfile::tempdir().unwrap();
    chmod(dir.path(), 0o755);
    let socket = dir.path().join("hub.sock");
    let hub = hub_at(&socket, 0o666, policy).await;
    // A runtime directory the other user cannot create: no secret file.
    let rt = dir.path().join("rt-of-nobody");
    let addr = format!("unix:{}", socket.display());
    let out = tokio::task::spawn_blocking(move || {
        cli(
            &rt,
            Some(OTHER_UID),
            &["--addr", &addr, "--wait", "0", "clients"],
        )
    })
    .await
    .unwrap();
    hub.shutdown().await;
    out
}

#[tokio::test]
async fn another_uid_needs_a_policy() {
    if switchboard::discovery::current_uid() != 0 {
        eprintln!("skipping: running a process as another uid needs root");
        return;
    }
    let out = other_user_connects(None).await;
    assert_eq!(out.status.code(), Some(5), "{}", text(&out.stderr));
    let err = text(&out.stderr);
    assert!(err.contains("without a proof"), "{err}");
    assert!(err.contains(&OTHER_UID.to_string()), "{err}");
    // A real policy naming the uid, with the right to list clients.
    let policy = format!(
        "[[principal]]\nname = \"other\"\nunix_uid = [{OTHER_UID}]\nids = [\"*\"]\nclients = true\n"
    );
    let policy = Policy::parse(&policy).expect("a valid policy");
    let out = other_user_connects(Some(Arc::new(policy))).await;
    assert!(out.status.success(), "{}", text(&out.stderr));
}

#[tokio::test]
async fn the_hubs_own_user_needs_no_secret() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("hub.sock");
    let hub = hub_at(&socket, 0o600, None).await;
    let server = within(Client::builder("echo").unix(&socket).token(TOKEN).connect())
        .await
        .unwrap();
    let _serving = server
        .serve(|req| async move { Ok::<_, String>(req.payload().clone()) })
        .await
        .unwrap();
    // An empty runtime directory: no secret file, and none is created.
    let rt = dir.path().join("rt");
    let addr = format!("unix:{}", socket.display());
    let out = tokio::task::spawn_blocking({
        let rt = rt.clone();
        move || {
            cli(
                &rt,
                None,
                &[
                    "--addr", &addr, "--wait", "0", "request", "--to", "echo", "hi",
                ],
            )
        }
    })
    .await
    .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout).trim_end(), "hi");
    assert!(!rt.join("secret").exists());
    hub.shutdown().await;
}

/// Starts `switchboard hub` (with `extra` arguments) for `service` in the
/// runtime directory `rt`; returns it and a reader of its JSON events.
fn hub_process(
    rt: &Path,
    service: &str,
    extra: &[&str],
) -> (
    std::process::Child,
    std::io::Lines<std::io::BufReader<std::process::ChildStdout>>,
) {
    use std::io::BufRead;
    let mut hub = Command::new(BIN)
        .args(["--json", "--service", service, "--token", TOKEN, "hub"])
        .args(extra)
        .env("SWITCHBOARD_RUNTIME_DIR", rt)
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("start the hub");
    let lines = std::io::BufReader::new(hub.stdout.take().expect("stdout")).lines();
    (hub, lines)
}

/// The next JSON event named `name`.
fn event(
    lines: &mut std::io::Lines<std::io::BufReader<std::process::ChildStdout>>,
    name: &str,
) -> serde_json::Value {
    for line in lines.by_ref() {
        let v: serde_json::Value = serde_json::from_str(&line.unwrap()).expect("JSON");
        if v["event"] == name {
            return v;
        }
    }
    panic!("no {name} event");
}

#[tokio::test]
async fn a_standby_that_takes_over_opens_its_own_socket() {
    let dir = tempfile::tempdir().unwrap();
    let rt = dir.path().join("rt");
    let (mut primary, mut p_events) = hub_process(&rt, "unix-fo", &[]);
    let first = event(&mut p_events, "ready");
    let first = PathBuf::from(first["unix"].as_str().expect("a socket"));
    let (mut standby, mut s_events) = hub_process(&rt, "unix-fo", &["--standby"]);
    let out = tokio::task::spawn_blocking(move || {
        event(&mut s_events, "standby");
        primary.kill().unwrap();
        primary.wait().unwrap();
        (event(&mut s_events, "ready"), s_events)
    });
    let (ready, _events) = within(out).await.unwrap();
    assert_eq!(ready["took_over"], true);
    let second = PathBuf::from(ready["unix"].as_str().expect("a socket"));
    assert_ne!(first, second);
    assert!(!first.exists(), "the failed primary's socket is removed");
    let client = Client::builder("after")
        .unix(&second)
        .token(TOKEN)
        .connect();
    let client = within(client).await.expect("connect to the new primary");
    let clients = within(client.clients()).await.unwrap();
    assert_eq!(transport_of(&clients, "after"), "unix");
    let _ = standby.kill();
    let _ = standby.wait();
}

#[tokio::test]
async fn discovery_prefers_the_socket_of_the_hint() {
    let dir = tempfile::tempdir().unwrap();
    let rt = dir.path().join("rt");
    let (mut hub, mut events) = hub_process(&rt, "unix-disc", &[]);
    let ready = event(&mut events, "ready");
    let path = ready["unix"]
        .as_str()
        .expect("the ready line names the socket");
    assert!(Path::new(path).starts_with(&rt), "{path}");
    let hint = switchboard::discovery::Hint::read_all(&rt, "unix-disc");
    assert_eq!(hint.len(), 1);
    assert_eq!(
        hint[0].as_ref().unwrap().unix.as_deref(),
        Some(Path::new(path))
    );
    let args = ["--service", "unix-disc", "--token", TOKEN, "--json"];
    let rt2 = rt.clone();
    let mut serve = Command::new(BIN)
        .args(args)
        .args(["serve", "--id", "echo", "--echo"])
        .env("SWITCHBOARD_RUNTIME_DIR", &rt2)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start a server");
    {
        use std::io::BufRead;
        let mut line = String::new();
        let stderr = serve.stderr.as_mut().expect("stderr");
        std::io::BufReader::new(stderr)
            .read_line(&mut line)
            .unwrap();
    }
    let out = tokio::task::spawn_blocking(move || {
        let mut cmd = Command::new(BIN);
        cmd.args(args)
            .arg("clients")
            .env("SWITCHBOARD_RUNTIME_DIR", &rt2);
        cmd.output().expect("clients")
    })
    .await
    .unwrap();
    let _ = serve.kill();
    let _ = hub.kill();
    let _ = (serve.wait(), hub.wait());
    assert!(out.status.success(), "{}", text(&out.stderr));
    let listed: serde_json::Value =
        serde_json::from_str(text(&out.stdout).lines().next().expect("a client")).unwrap();
    assert_eq!(listed["id"], "echo");
    assert_eq!(listed["transport"], "unix");
}
