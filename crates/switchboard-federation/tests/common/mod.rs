//! Test fixture: a 3-node nats-server cluster with JetStream on loopback
//! (free ports, a temporary store directory per node, ready on
//! `/healthz?js-enabled-only=true`, killed on drop) and switchboard hubs
//! each federated through a different node.

#![allow(dead_code)]

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use switchboard::federation::{Federation, FederationOptions};
use switchboard::hub::limits::Limits;
use switchboard::{Client, Hub, HubHandle};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Token of the test hubs.
pub const TOKEN: &str = "federation-test-token";

/// Upper bound for any single wait in a test.
pub const WAIT: Duration = Duration::from_secs(60);

/// The service the test hubs federate.
pub const SERVICE: &str = "fedtest";

/// `nats-server` on the PATH, or `None` after saying why the test is
/// skipped. With `CI` set a missing server fails the test instead.
pub fn nats_server() -> Option<PathBuf> {
    let found = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .chain([PathBuf::from("/usr/sbin"), PathBuf::from("/usr/bin")])
            .map(|dir| dir.join("nats-server"))
            .find(|p| p.is_file())
    });
    if found.is_none() {
        if std::env::var_os("CI").is_some() {
            panic!("nats-server is not installed, and CI is set: install it (apt-get install -y nats-server)");
        }
        eprintln!("SKIPPED: nats-server is not installed (apt-get install -y nats-server); the federation test did not run");
    }
    found
}

/// A free loopback port, never one handed out before in this process
/// (tests run in parallel: a port released by one could be handed to
/// another before the first's server binds it).
fn free_port() -> u16 {
    static GIVEN: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());
    loop {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free loopback port")
            .port();
        let mut given = GIVEN.lock().unwrap_or_else(|e| e.into_inner());
        if !given.contains(&port) {
            given.push(port);
            return port;
        }
    }
}

/// One nats-server of the cluster.
pub struct Node {
    /// Its client URL.
    pub url: String,
    /// Its monitoring port.
    pub http_port: u16,
    child: Option<Child>,
    config: PathBuf,
    bin: PathBuf,
}

impl Node {
    /// Kills the server with SIGKILL and waits for it.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Node {
    /// Starts the server again (killed before if running) with the same
    /// configuration, ports and store directory, and waits until it is
    /// ready.
    pub async fn restart(&mut self) -> anyhow::Result<()> {
        self.kill();
        self.child = Some(
            Command::new(&self.bin)
                .arg("-c")
                .arg(&self.config)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()?,
        );
        wait_ready(self.http_port).await
    }

    /// One nats-server with JetStream on loopback, with `extra` added to
    /// its configuration (e.g. an `authorization` or `tls` block); `url`
    /// uses `scheme` (`nats` or `tls`). Ready when it returns.
    pub async fn single(bin: &Path, dir: &Path, scheme: &str, extra: &str) -> anyhow::Result<Node> {
        let (client, http) = (free_port(), free_port());
        let store = dir.join("store");
        std::fs::create_dir_all(&store)?;
        let config = dir.join("nats.conf");
        std::fs::write(
            &config,
            format!(
                "listen: \"127.0.0.1:{client}\"\nhttp: \"127.0.0.1:{http}\"\n\
                 jetstream {{ store_dir: \"{}\" }}\n{extra}\n",
                store.display()
            ),
        )?;
        let mut node = Node {
            url: format!("{scheme}://127.0.0.1:{client}"),
            http_port: http,
            child: None,
            config,
            bin: bin.to_owned(),
        };
        node.restart().await?;
        Ok(node)
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A nats-server cluster on loopback, killed on drop.
pub struct Cluster {
    /// The nodes.
    pub nodes: Vec<Node>,
    _dir: tempfile::TempDir,
}

impl Cluster {
    /// Starts `n` nodes with JetStream and waits until each is ready.
    pub async fn start(bin: &Path, n: usize) -> anyhow::Result<Cluster> {
        Cluster::start_with(bin, n, "").await
    }

    /// Like [`Cluster::start`], with `cluster_extra` added to each node's
    /// `cluster` block (e.g. `no_advertise: true`: clients then learn no
    /// other node and stay cut off while theirs is down).
    pub async fn start_with(bin: &Path, n: usize, cluster_extra: &str) -> anyhow::Result<Cluster> {
        let dir = tempfile::tempdir()?;
        let ports: Vec<(u16, u16, u16)> = (0..n)
            .map(|_| (free_port(), free_port(), free_port()))
            .collect();
        let routes: Vec<String> = ports
            .iter()
            .map(|(_, c, _)| format!("\"nats-route://127.0.0.1:{c}\""))
            .collect();
        let mut nodes = Vec::new();
        for (i, (client, cluster, http)) in ports.iter().enumerate() {
            let store = dir.path().join(format!("n{i}"));
            std::fs::create_dir_all(&store)?;
            let config = dir.path().join(format!("n{i}.conf"));
            std::fs::write(
                &config,
                format!(
                    "server_name: n{i}\nlisten: \"127.0.0.1:{client}\"\nhttp: \"127.0.0.1:{http}\"\n\
                     jetstream {{ store_dir: \"{}\" }}\n\
                     cluster {{ name: sbfed, listen: \"127.0.0.1:{cluster}\", routes: [{}]\n{cluster_extra}\n}}\n",
                    store.display(),
                    routes.join(", ")
                ),
            )?;
            let child = Command::new(bin)
                .arg("-c")
                .arg(&config)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()?;
            nodes.push(Node {
                url: format!("nats://127.0.0.1:{client}"),
                http_port: *http,
                child: Some(child),
                config,
                bin: bin.to_owned(),
            });
        }
        let cluster = Cluster { nodes, _dir: dir };
        for node in &cluster.nodes {
            wait_ready(node.http_port).await?;
        }
        Ok(cluster)
    }
}

async fn healthz(port: u16) -> std::io::Result<String> {
    monitor(port, "/healthz?js-enabled-only=true").await
}

/// Waits until the node whose monitoring port is `http_port` knows of a
/// subscription to exactly `subject` held on another node of the cluster
/// (its routes carry it). A subscription reaches the other nodes a
/// moment after its own node has it, and core NATS drops what is
/// published meanwhile: a test that publishes through another node than
/// the subscriber's waits for this first.
pub async fn wait_interest(http_port: u16, subject: &str) {
    let deadline = Instant::now() + WAIT;
    loop {
        if let Ok(body) = monitor(http_port, "/routez?subs=1").await {
            let routes = body
                .split_once("\r\n\r\n")
                .and_then(|(_, json)| serde_json::from_str::<serde_json::Value>(json).ok());
            let known = routes
                .as_ref()
                .and_then(|r| r["routes"].as_array())
                .is_some_and(|routes| {
                    routes.iter().any(|route| {
                        route["subscriptions_list"]
                            .as_array()
                            .is_some_and(|subs| subs.iter().any(|s| s.as_str() == Some(subject)))
                    })
                });
            if known {
                return;
            }
        }
        assert!(
            Instant::now() < deadline,
            "the node on monitoring port {http_port} never learnt of a subscription to {subject} within {WAIT:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn monitor(port: u16, path: &str) -> std::io::Result<String> {
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
    s.write_all(format!("GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").as_bytes())
        .await?;
    let mut body = String::new();
    s.read_to_string(&mut body).await?;
    Ok(body)
}

async fn wait_ready(port: u16) -> anyhow::Result<()> {
    let deadline = Instant::now() + WAIT;
    loop {
        if let Ok(body) = healthz(port).await {
            if body.starts_with("HTTP/1.1 200") || body.starts_with("HTTP/1.0 200") {
                return Ok(());
            }
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "nats-server on monitoring port {port} not ready within {WAIT:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A hub federated through one node.
pub struct FedHub {
    /// The hub.
    pub hub: HubHandle,
    /// Its federation.
    pub fed: Federation,
}

impl FedHub {
    /// Starts a hub named `name` federated through `url`.
    pub async fn start(name: &str, url: &str, lease: Duration) -> anyhow::Result<FedHub> {
        FedHub::start_with(name, url, lease, |_| {}).await
    }

    /// Like [`FedHub::start`], with the options changed by `tune`.
    pub async fn start_with(
        name: &str,
        url: &str,
        lease: Duration,
        tune: impl FnOnce(&mut FederationOptions),
    ) -> anyhow::Result<FedHub> {
        FedHub::start_limited(name, url, lease, Limits::default(), tune).await
    }

    /// Like [`FedHub::start_with`], the hub with `limits`.
    pub async fn start_limited(
        name: &str,
        url: &str,
        lease: Duration,
        limits: Limits,
        tune: impl FnOnce(&mut FederationOptions),
    ) -> anyhow::Result<FedHub> {
        let mut opts = FederationOptions::new(SERVICE, vec![url.to_owned()]);
        opts.hub_name = name.to_owned();
        opts.replicas = Some(3);
        opts.lease = lease;
        opts.kv_max_keys = limits.kv_max_keys;
        opts.queue_bytes = limits.queue_bytes;
        tune(&mut opts);
        let fed = Federation::connect(opts).await?;
        let hub = Hub::builder()
            .service(SERVICE)
            .token(TOKEN)
            .limits(limits)
            .listen("127.0.0.1:0")
            .write_hint(false)
            .unix(switchboard::hub::UnixSocket::disabled())
            .remote(fed.remote())
            .start()
            .await?;
        Ok(FedHub { hub, fed })
    }

    /// A client of this hub named `id`, without reconnection.
    pub async fn client(&self, id: &str) -> Result<Client, switchboard::ClientError> {
        Client::builder(id)
            .addr(self.hub.local_addr().to_string())
            .token(TOKEN)
            .reconnect(false)
            .connect_timeout(Duration::from_secs(5))
            .connect()
            .await
    }
}

/// The lease of the hubs [`two_hubs`] starts.
pub const LEASE: Duration = Duration::from_secs(5);

/// The usual start of a test: a 3-node cluster, `hub-a` federated through
/// node 0 and `hub-b` through node 1 (leases of [`LEASE`]), each seeing the
/// other as a member. `None` when nats-server is not installed (the test
/// then passes without running, as every test here does).
pub async fn two_hubs() -> anyhow::Result<Option<(Cluster, FedHub, FedHub)>> {
    let Some(bin) = nats_server() else {
        return Ok(None);
    };
    let cluster = Cluster::start(&bin, 3).await?;
    let a = FedHub::start("hub-a", &cluster.nodes[0].url, LEASE).await?;
    let b = FedHub::start("hub-b", &cluster.nodes[1].url, LEASE).await?;
    wait_members(&[&a, &b]).await;
    Ok(Some((cluster, a, b)))
}

/// Waits until every hub of `hubs` heard the others' heartbeats (before
/// that, messages from them are dropped as from no member).
pub async fn wait_members(hubs: &[&FedHub]) {
    eventually("the hubs see each other as members", || {
        hubs.iter().all(|h| {
            hubs.iter().all(|o| {
                o.fed.hub_name() == h.fed.hub_name()
                    || h.fed.directory().is_member(o.fed.hub_name())
            })
        })
    })
    .await;
}

/// Waits until `check` holds, polling, at most [`WAIT`].
pub async fn eventually(what: &str, check: impl FnMut() -> bool) {
    eventually_explained(what, check, String::new).await;
}

/// [`eventually`], whose failure also says what `explain` sees then.
pub async fn eventually_explained(
    what: &str,
    mut check: impl FnMut() -> bool,
    explain: impl Fn() -> String,
) {
    let deadline = Instant::now() + WAIT;
    while !check() {
        assert!(
            Instant::now() < deadline,
            "timed out waiting until {what} {}",
            explain()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
