//! Federated hubs on three hosts: each host is a network namespace made
//! here (`ip netns`) with its own loopback, joined to the others by a
//! bridge in a fourth namespace (the switch), each running its own
//! nats-server (a three-node JetStream cluster routed over the bridge);
//! hosts A and B also run `switchboard hub --federate`. Nothing a host
//! binds on its loopback is reachable from another, so only the
//! federation carries traffic between the hubs. Host A's link is then cut
//! and healed.
//!
//! Needs root and `ip` from iproute2 (`.ci/run` installs it); without
//! them, or where namespaces cannot be made, it says SKIPPED and passes.

use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use super::{federated_hub, nats_server, text, Env, Proc};

/// How long a fact may take to settle across the hosts: a three-node
/// JetStream cluster forming (or catching up after the link comes back)
/// over the bridge can take longer than one process's wait
/// (`super::WAIT`) on a loaded machine.
const SETTLE: Duration = Duration::from_secs(60);

/// The hosts' addresses on the bridge.
const ADDR: [&str; 3] = ["10.213.0.1", "10.213.0.2", "10.213.0.3"];

/// Three host namespaces, each linked by a veth pair to a bridge in a
/// switch namespace; all deleted on drop (which removes the links).
struct Hosts {
    /// The hosts' namespaces, then the switch's.
    ns: Vec<String>,
    /// Each host's end of its link.
    veth: Vec<String>,
}

impl Hosts {
    /// Makes the namespaces and links, or `None` where this machine
    /// cannot (not root, no `ip`, no namespaces or bridges).
    fn make() -> Option<Hosts> {
        let id = std::process::id();
        let mut hosts = Hosts {
            ns: Vec::new(),
            veth: Vec::new(),
        };
        let sw = format!("sbnsw{id}");
        let mut steps: Vec<Vec<String>> = vec![
            vec!["netns".into(), "add".into(), sw.clone()],
            ip(&["-n", &sw, "link", "add", "br0", "type", "bridge"]),
            ip(&["-n", &sw, "link", "set", "br0", "up"]),
        ];
        hosts.ns.push(sw.clone());
        for (i, addr) in ADDR.iter().enumerate() {
            let ns = format!("sbns{i}x{id}");
            let (near, far) = (format!("sbh{i}x{id}"), format!("sbs{i}x{id}"));
            let cidr = format!("{addr}/24");
            steps.extend([
                ip(&["netns", "add", &ns]),
                ip(&["link", "add", &near, "type", "veth", "peer", "name", &far]),
                ip(&["link", "set", &near, "netns", &ns]),
                ip(&["link", "set", &far, "netns", &sw]),
                ip(&["-n", &sw, "link", "set", &far, "master", "br0"]),
                ip(&["-n", &sw, "link", "set", &far, "up"]),
                ip(&["-n", &ns, "addr", "add", &cidr, "dev", &near]),
                ip(&["-n", &ns, "link", "set", "lo", "up"]),
                ip(&["-n", &ns, "link", "set", &near, "up"]),
            ]);
            hosts.ns.insert(i, ns);
            hosts.veth.push(near);
        }
        // Made step by step; the first failure gives up (the guard
        // deletes what was made).
        for step in steps {
            match Command::new("ip").args(&step).output() {
                Ok(o) if o.status.success() => {}
                Ok(o) => {
                    eprintln!(
                        "SKIPPED: `ip {}` failed: {}",
                        step.join(" "),
                        text(&o.stderr)
                    );
                    return None;
                }
                Err(e) => {
                    eprintln!("SKIPPED: no `ip` command ({e})");
                    return None;
                }
            }
        }
        Some(hosts)
    }

    /// `cmd` run on host `i`: `ip netns exec NS PROGRAM ARGS…`, with its
    /// environment.
    fn on(&self, i: usize, cmd: Command) -> Command {
        let mut wrapped = Command::new("ip");
        wrapped
            .args(["netns", "exec", &self.ns[i]])
            .arg(cmd.get_program())
            .args(cmd.get_args());
        for (k, v) in cmd.get_envs() {
            match v {
                Some(v) => wrapped.env(k, v),
                None => wrapped.env_remove(k),
            };
        }
        wrapped
    }

    /// Brings host `i`'s link down (`up` false) or up.
    fn link(&self, i: usize, up: bool) {
        let state = if up { "up" } else { "down" };
        let o = Command::new("ip")
            .args(["-n", &self.ns[i], "link", "set", &self.veth[i], state])
            .output()
            .expect("run ip");
        assert!(o.status.success(), "link {state}: {}", text(&o.stderr));
    }

    /// An HTTP GET to `addr:port` from inside host `i` (bash's /dev/tcp:
    /// nothing else is needed on the host); the whole answer.
    fn get(&self, i: usize, port: u16, path: &str) -> String {
        let script = format!(
            "exec 3<>/dev/tcp/{}/{port} && printf 'GET {path} HTTP/1.0\\r\\n\\r\\n' >&3 && timeout 2 cat <&3",
            ADDR[i]
        );
        let mut sh = Command::new("bash");
        sh.args(["-c", &script]);
        let o = self
            .on(i, sh)
            .stderr(Stdio::null())
            .output()
            .expect("run bash");
        text(&o.stdout)
    }
}

/// An `ip` command line.
fn ip(args: &[&str]) -> Vec<String> {
    args.iter().map(|a| a.to_string()).collect()
}

impl Drop for Hosts {
    fn drop(&mut self) {
        for ns in &self.ns {
            let _ = Command::new("ip").args(["netns", "del", ns]).output();
        }
    }
}

/// nats-server on host `i`: clients, monitoring and cluster on the
/// host's address, routes to the others, JetStream.
fn nats_on(hosts: &Hosts, i: usize, bin: &Path, env: &Env) -> Proc {
    let store = env.path().join(format!("js{i}"));
    let routes: Vec<String> = ADDR
        .iter()
        .map(|a| format!("\"nats-route://{a}:6222\""))
        .collect();
    let conf = env.write(
        &format!("nats{i}.conf"),
        &format!(
            "server_name: host{i}\nlisten: \"{me}:4222\"\nhttp: \"{me}:8222\"\n\
             jetstream {{ store_dir: {store:?} }}\n\
             cluster {{ name: sbhosts, listen: \"{me}:6222\", routes: [{routes}] }}\n",
            me = ADDR[i],
            routes = routes.join(", "),
            store = store.to_str().expect("utf-8 path"),
        ),
    );
    let mut cmd = Command::new(bin);
    cmd.arg("-c").arg(conf);
    Proc::spawn(hosts.on(i, cmd))
}

/// The CLI run on host `i`; its output.
fn cli(hosts: &Hosts, env: &Env, i: usize, args: &[&str]) -> Output {
    env.run_stdin(hosts.on(i, env.cmd(args)), b"")
}

/// A request from host `i` through the hub at `hub` to `to`, answered
/// within 3 s or failed.
fn request(hosts: &Hosts, env: &Env, i: usize, hub: &str, to: &str, payload: &str) -> Output {
    cli(
        hosts,
        env,
        i,
        &[
            "--addr",
            hub,
            "request",
            "--timeout",
            "3",
            "--to",
            to,
            payload,
        ],
    )
}

/// Runs `args` with the CLI on host `i` until it succeeds, within
/// `within`; its standard output.
fn until_ok(hosts: &Hosts, env: &Env, i: usize, args: &[&str], within: Duration) -> String {
    let what = format!("`{}` on host {i}", args.join(" "));
    super::until_ok(&what, within, || cli(hosts, env, i, args))
}

#[test]
fn hubs_on_separate_hosts_meet_only_through_the_federation() {
    let Some(bin) = nats_server() else {
        return;
    };
    let Some(hosts) = Hosts::make() else {
        return;
    };
    let env = Env::new();
    let _nats: Vec<Proc> = (0..ADDR.len())
        .map(|i| nats_on(&hosts, i, &bin, &env))
        .collect();
    for i in 0..ADDR.len() {
        let deadline = Instant::now() + SETTLE;
        while !hosts
            .get(i, 8222, "/healthz?js-enabled-only=true")
            .starts_with("HTTP/1.0 200")
        {
            assert!(
                Instant::now() < deadline,
                "nats-server on host {i} not ready"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    // A hub on hosts A and B, each on its host's loopback.
    let hubs: Vec<(Proc, String)> = (0..2)
        .map(|i| {
            let url = format!("nats://{}:4222", ADDR[i]);
            federated_hub(&env, &url, &format!("host{i}"), |cmd| hosts.on(i, cmd))
        })
        .collect();
    let (a, b) = (hubs[0].1.as_str(), hubs[1].1.as_str());

    // Hub A's loopback is not host B's: B cannot reach A's hub directly.
    let direct = cli(&hosts, &env, 1, &["--addr", a, "--wait", "0", "status"]);
    assert!(!direct.status.success(), "host B reached host A's loopback");

    // A service on host A answers a requester on host B.
    let _dev = Proc::spawn(hosts.on(0, env.cmd(&["--addr", a, "serve", "--id", "dev", "--echo"])));
    let across = super::until_ok("a request from B to dev", SETTLE, || {
        request(&hosts, &env, 1, b, "dev", "across")
    });
    assert_eq!(across.trim_end(), "across");

    // The id is unique across hosts.
    let twin = cli(
        &hosts,
        &env,
        1,
        &["--addr", b, "--wait", "0", "serve", "--id", "dev", "--echo"],
    );
    assert!(
        !twin.status.success(),
        "a second dev on host B was admitted"
    );

    // Shared state: set on B, read on A.
    until_ok(
        &hosts,
        &env,
        1,
        &["--addr", b, "kv", "set", "hosts.k", "v1"],
        SETTLE,
    );
    let got = until_ok(
        &hosts,
        &env,
        0,
        &["--addr", a, "kv", "get", "hosts.k"],
        SETTLE,
    );
    assert!(got.contains("v1"), "{got}");

    // Cut host A off. B and C keep the cluster's majority: once host A's
    // lease has run out unseen there (10 s), B's requests to dev fail at
    // once (dev is held by no live hub), not at their timeout.
    hosts.link(0, false);
    let cut = Instant::now();
    loop {
        let asked = Instant::now();
        let o = request(&hosts, &env, 1, b, "dev", "cut");
        assert!(!o.status.success(), "a request crossed a cut link");
        let err = text(&o.stderr);
        if !err.contains("timed out") {
            assert!(asked.elapsed() < Duration::from_secs(2), "{err}");
            assert!(err.contains("no client named 'dev'"), "{err}");
            eprintln!("{:?} after the cut: {}", cut.elapsed(), err.trim_end());
            break;
        }
        assert!(
            cut.elapsed() < Duration::from_secs(60),
            "host A's ids were never released on host B: {err}"
        );
    }
    // Local traffic on B and the shared state keep working.
    let _near = Proc::spawn(hosts.on(
        1,
        env.cmd(&["--addr", b, "serve", "--id", "near", "--echo"]),
    ));
    let args = [
        "--addr",
        b,
        "request",
        "--timeout",
        "3",
        "--to",
        "near",
        "local",
    ];
    assert_eq!(until_ok(&hosts, &env, 1, &args, SETTLE).trim_end(), "local");
    until_ok(
        &hosts,
        &env,
        1,
        &["--addr", b, "kv", "set", "hosts.k", "v2"],
        SETTLE,
    );

    // Healed: hub A takes its ids back and dev answers B again; A sees
    // what B wrote meanwhile.
    hosts.link(0, true);
    let healed = Instant::now();
    let answer = super::until_ok_or(
        "a request to dev once healed",
        Duration::from_secs(90),
        || request(&hosts, &env, 1, b, "dev", "healed"),
        || {
            // Which hub lost track: its federation counters and log.
            let mut seen = String::new();
            for (i, (hub, addr)) in hubs.iter().enumerate() {
                let status = cli(&hosts, &env, i, &["--addr", addr, "status"]);
                seen += &format!(
                    "hub on host {i}: status {}\n{}\nits log:\n{}\n",
                    text(&status.stdout),
                    text(&status.stderr),
                    hub.said(80)
                );
            }
            seen
        },
    );
    assert_eq!(answer.trim_end(), "healed");
    eprintln!(
        "dev answered host B again {:?} after the link came back",
        healed.elapsed()
    );
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let got = until_ok(
            &hosts,
            &env,
            0,
            &["--addr", a, "kv", "get", "hosts.k"],
            SETTLE,
        );
        if got.contains("v2") {
            break;
        }
        assert!(Instant::now() < deadline, "host A kept {got}");
        std::thread::sleep(Duration::from_millis(200));
    }
    drop(hubs);
}
