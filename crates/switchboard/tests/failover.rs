//! Hot standby with real processes: `switchboard hub` as the primary,
//! `switchboard hub --standby` as its standby, the primary killed with
//! SIGKILL while reliable clients (in this process) publish, watch,
//! request and run sessions through it.
//!
//! Each test has its own runtime directory (hints) and service name; the
//! clients reach the hub by address (the standby takes the primary's
//! port over), so no discovery runs between tests.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use futures::StreamExt;
use serde_json::Value;
use switchboard::{Bytes, Client};

const BIN: &str = env!("CARGO_BIN_EXE_switchboard");
const TOKEN: &str = "failover-test-token";
const WAIT: Duration = Duration::from_secs(30);

/// A hub process, killed when dropped, with its JSON events.
struct HubProc {
    child: Child,
    events: mpsc::Receiver<Value>,
}

impl HubProc {
    fn start(dir: &Path, service: &str, standby: bool) -> HubProc {
        let mut cmd = Command::new(BIN);
        cmd.args(["--json", "--service", service, "--token", TOKEN, "hub"]);
        if standby {
            cmd.arg("--standby");
        }
        let mut child = cmd
            .env("SWITCHBOARD_RUNTIME_DIR", dir.join("rt"))
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("start switchboard hub");
        let (tx, rx) = mpsc::channel();
        let stdout = child.stdout.take().expect("stdout");
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if let Ok(v) = serde_json::from_str::<Value>(&line) {
                    if tx.send(v).is_err() {
                        break;
                    }
                }
            }
        });
        HubProc { child, events: rx }
    }

    /// Waits for the next event named `name`.
    fn event(&self, name: &str) -> Value {
        let deadline = Instant::now() + WAIT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let v = self
                .events
                .recv_timeout(left)
                .unwrap_or_else(|_| panic!("no {name:?} event within {WAIT:?}"));
            if v["event"] == name {
                return v;
            }
        }
    }

    fn addr(v: &Value) -> SocketAddr {
        v["addr"]
            .as_str()
            .expect("addr")
            .parse()
            .expect("an address")
    }

    fn kill9(&mut self) {
        let _ = Command::new("kill")
            .args(["-KILL", &self.child.id().to_string()])
            .status();
        let _ = self.child.wait();
    }

    fn signal(&self, sig: &str) {
        let _ = Command::new("kill")
            .args([sig, &self.child.id().to_string()])
            .status();
    }
}

impl Drop for HubProc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A primary and an attached standby.
fn pair(dir: &Path, service: &str) -> (HubProc, HubProc, SocketAddr) {
    let primary = HubProc::start(dir, service, false);
    let addr = HubProc::addr(&primary.event("ready"));
    let standby = HubProc::start(dir, service, true);
    let ev = standby.event("standby");
    assert_eq!(ev["primary"], addr.to_string(), "follows the primary");
    (primary, standby, addr)
}

/// A reliable client. Its streams hold a whole test's messages: the
/// guarantee is about what the hub acknowledged, and a stream the test
/// reads slower than the hub delivers would drop (and count) the excess.
async fn client(id: &str, addr: SocketAddr) -> Client {
    Client::builder(id)
        .addr(addr.to_string())
        .token(TOKEN)
        .resume_wait(Duration::from_secs(20))
        .stream_capacity(1 << 20)
        .connect()
        .await
        .expect("connect")
}

fn count(n: u64) -> Bytes {
    Bytes::copy_from_slice(&n.to_be_bytes())
}

fn number(b: &[u8]) -> u64 {
    u64::from_be_bytes(b.try_into().expect("8 bytes"))
}

fn messages() -> u64 {
    std::env::var("SWITCHBOARD_FAILOVER_MESSAGES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100_000)
}

/// Publishing lanes: lane `l` publishes the numbers `i` with
/// `i % LANES == l`, one at a time, each awaiting its acknowledgement, so
/// each lane has a defined order while `LANES` publishes are in flight.
const LANES: u64 = 8;

/// Publishes `range` on `topic` with confirmation in [`LANES`] lanes;
/// counts the acknowledged ones in `acked`. Lane 0 also sets `key` to
/// every multiple of 1,000 it publishes.
async fn publish_range(
    c: &Client,
    topic: &str,
    key: &str,
    range: std::ops::Range<u64>,
    acked: &AtomicU64,
) {
    let kv = c.kv();
    let lanes = (0..LANES).map(|lane| {
        let range = range.clone();
        let kv = kv.clone();
        async move {
            let first = range.start + (lane + LANES - range.start % LANES) % LANES;
            for i in (first..range.end).step_by(LANES as usize) {
                c.publish(topic, count(i))
                    .await
                    .unwrap_or_else(|e| panic!("publish {i} not acknowledged: {e}"));
                acked.fetch_add(1, Ordering::Relaxed);
                if i % 1000 == 0 {
                    kv.set(key, count(i)).await.expect("set acknowledged");
                }
            }
        }
    });
    futures::future::join_all(lanes).await;
}

/// The value lane 0 set last when `0..n` was published.
fn last_set(n: u64) -> u64 {
    ((n - 1) / 1000) * 1000
}

/// Receives the numbers `0..n` and checks each lane's arrive once, in
/// order, none missing.
async fn receive_in_order(sub: &mut switchboard::Subscription, n: u64) {
    let mut next: Vec<u64> = (0..LANES).collect();
    let mut got_all = 0;
    while got_all < n {
        let m = tokio::time::timeout(WAIT, sub.recv())
            .await
            .unwrap_or_else(|_| {
                panic!(
                    "{got_all} of {n} received; the rest not within {WAIT:?} (lanes at {next:?})"
                )
            })
            .expect("subscription open");
        let got = number(&m.payload);
        let lane = (got % LANES) as usize;
        assert_eq!(
            got, next[lane],
            "lane {lane}: {got} arrived where {} was due (a loss, a duplicate or a reordering)",
            next[lane]
        );
        next[lane] += LANES;
        got_all += 1;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_mid_stream_loses_nothing_acknowledged() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (mut primary, standby, addr) = pair(dir.path(), "fo-stream");
    let n = messages();
    let publisher = client("publisher", addr).await;
    let subscriber = client("subscriber", addr).await;
    let watcher = client("watcher", addr).await;
    let mut sub = subscriber.subscribe("fo.numbers").await.expect("subscribe");
    let mut watch = watcher.kv().watch("fo.count").await.expect("watch");
    let acked = Arc::new(AtomicU64::new(0));
    let recv = tokio::spawn(async move {
        receive_in_order(&mut sub, n).await;
        sub
    });
    // A third before the kill, the rest after.
    publish_range(&publisher, "fo.numbers", "fo.count", 0..n / 3, &acked).await;
    primary.kill9();
    let killed = Instant::now();
    publish_range(&publisher, "fo.numbers", "fo.count", n / 3..n, &acked).await;
    let took = standby.event("ready");
    assert_eq!(HubProc::addr(&took), addr, "the standby took the port over");
    assert_eq!(took["epoch"], 2);
    assert_eq!(acked.load(Ordering::Relaxed), n);
    let _sub = recv.await.expect("every message once, in order");
    assert_eq!(subscriber.dropped(), 0, "nothing dropped for a slow reader");
    // Key/value state: the last value set, seen by the watcher too.
    let last = last_set(n);
    let entry = publisher
        .kv()
        .get("fo.count")
        .await
        .expect("get")
        .expect("set");
    assert_eq!(number(&entry.value), last);
    let mut seen = 0;
    while seen < last {
        let ev = tokio::time::timeout(WAIT, watch.next())
            .await
            .expect("the watcher hears the last value")
            .expect("watch open");
        seen = number(&ev.value);
    }
    assert_eq!(seen, last);
    eprintln!(
        "{n} messages, primary killed after {}, all delivered once in order {:?} after the kill",
        n / 3,
        killed.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_outstanding_at_the_kill_get_an_answer_or_a_clear_error() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (mut primary, _standby, addr) = pair(dir.path(), "fo-requests");
    let server = client("doubler", addr).await;
    let _serving = server
        .serve(|req| async move {
            tokio::time::sleep(Duration::from_millis(2)).await;
            Ok::<_, String>(count(number(req.payload()) * 2))
        })
        .await
        .expect("serve");
    let requester = client("asker", addr).await;
    let total = 400u64;
    let answered = Arc::new(AtomicU64::new(0));
    let outcomes = futures::stream::iter(0..total)
        .map(|i| {
            let requester = &requester;
            let answered = answered.clone();
            async move {
                let r = tokio::time::timeout(
                    WAIT * 2,
                    requester.request_with("doubler", "", count(i), Duration::from_secs(10)),
                )
                .await
                .unwrap_or_else(|_| panic!("request {i} got neither an answer nor an error"));
                answered.fetch_add(1, Ordering::Relaxed);
                (i, r)
            }
        })
        .buffer_unordered(32);
    tokio::pin!(outcomes);
    let mut ok = 0;
    let mut errors = BTreeMap::new();
    let mut killed = false;
    while let Some((i, r)) = outcomes.next().await {
        if !killed && answered.load(Ordering::Relaxed) >= total / 3 {
            primary.kill9();
            killed = true;
        }
        match r {
            Ok(v) => {
                assert_eq!(number(&v), i * 2, "the answer to request {i}");
                ok += 1;
            }
            Err(e) => *errors.entry(e.to_string()).or_insert(0) += 1,
        }
    }
    assert!(killed);
    eprintln!("{ok} answered, errors: {errors:?}");
    assert_eq!(ok + errors.values().sum::<u64>(), total);
    assert!(
        ok >= total * 9 / 10,
        "most requests are answered: {ok}, {errors:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_failovers_in_a_row_lose_nothing_and_repeat_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (primary, standby, addr) = pair(dir.path(), "fo-five");
    let publisher = client("pub5", addr).await;
    let subscriber = client("sub5", addr).await;
    let mut sub = subscriber.subscribe("five.n").await.expect("subscribe");
    let per_round = (messages() / 20).max(500) / LANES * LANES;
    let rounds = 5;
    let total = per_round * (rounds + 1);
    let recv = tokio::spawn(async move { receive_in_order(&mut sub, total).await });
    let acked = AtomicU64::new(0);
    let mut primary = primary;
    let mut standby = standby;
    let mut epoch = 1;
    for round in 0..rounds {
        let from = round * per_round;
        publish_range(
            &publisher,
            "five.n",
            "five.k",
            from..from + per_round,
            &acked,
        )
        .await;
        primary.kill9();
        let took = standby.event("ready");
        epoch += 1;
        assert_eq!(took["epoch"], epoch, "round {round}");
        assert_eq!(HubProc::addr(&took), addr);
        // A new standby for the next round; the promoted one is primary.
        let next = HubProc::start(dir.path(), "fo-five", true);
        let ev = next.event("standby");
        assert_eq!(ev["epoch"], epoch);
        primary = standby;
        standby = next;
    }
    let from = rounds * per_round;
    publish_range(&publisher, "five.n", "five.k", from..total, &acked).await;
    assert_eq!(acked.load(Ordering::Relaxed), total);
    recv.await
        .expect("every message once, in order, across five failovers");
    drop(primary);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_old_primary_restarted_becomes_a_standby_and_never_serves() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (mut primary, standby, addr) = pair(dir.path(), "fo-old");
    let c = client("old-check", addr).await;
    c.kv().set("k", "v1").await.expect("set");
    primary.kill9();
    let took = standby.event("ready");
    assert_eq!(took["epoch"], 2);
    // The old primary comes back in standby mode: it follows the new one.
    let back = HubProc::start(dir.path(), "fo-old", true);
    let ev = back.event("standby");
    assert_eq!(ev["primary"], addr.to_string());
    assert_eq!(ev["epoch"], 2);
    c.kv()
        .set("k", "v2")
        .await
        .expect("set through the new primary");
    let status = c.status().await.expect("status");
    let id = status.hub;
    assert_eq!(id.epoch, 2);
    assert!(
        !status.standby_addr.is_empty(),
        "the old primary is its standby"
    );
    // And it takes over in turn, with everything.
    drop(standby);
    let took = back.event("ready");
    assert_eq!(took["epoch"], 3);
    let v = c.kv().get("k").await.expect("get").expect("kept");
    assert_eq!(v.value, Bytes::from_static(b"v2"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_primary_that_comes_back_is_fenced() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (primary, standby, addr) = pair(dir.path(), "fo-fence");
    // Frozen, not dead: its port stays taken, so the standby takes over
    // on another port and announces itself in its hint.
    primary.signal("-STOP");
    let took = standby.event("ready");
    assert_eq!(took["epoch"], 2);
    let new_addr = HubProc::addr(&took);
    assert_ne!(new_addr, addr, "the frozen primary still holds its port");
    primary.signal("-CONT");
    // It finds the newer primary, steps down and follows it.
    primary.event("fenced");
    let ev = primary.event("standby");
    assert_eq!(ev["primary"], new_addr.to_string());
    assert_eq!(ev["epoch"], 2);
    // Clients are served by the new primary, at the new epoch.
    let c = client("fenced-check", new_addr).await;
    let status = c.status().await.expect("status");
    assert_eq!(status.hub.epoch, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_in_progress_at_the_kill_continues_and_loses_nothing() {
    use std::sync::Mutex;
    use switchboard::session::driver::{ManagerOptions, Methods};
    use switchboard::session::{AgentConfig, RetryPolicy};

    let dir = tempfile::tempdir().expect("tempdir");
    let (mut primary, standby, addr) = pair(dir.path(), "fo-session");
    let acs = client("acs", addr).await;
    let cpe = client("cpe-1", addr).await;
    let mut opts = ManagerOptions::default();
    opts.config.max_in_flight = 8;
    let manager = acs.session_manager(opts);
    let ran = Arc::new(Mutex::new(Vec::new()));
    let r = ran.clone();
    let methods = Methods::new().add("Step", move |p: Bytes| {
        let r = r.clone();
        async move {
            tokio::time::sleep(Duration::from_millis(1)).await;
            r.lock().expect("lock").push(number(&p));
            Ok(p)
        }
    });
    let mut config = AgentConfig::new("cpe-1");
    // The TR-069 wait table with a short minimum, so the retry after the
    // failed session comes within the test's patience.
    config.retry = RetryPolicy {
        min_wait: Duration::from_millis(100),
        multiplier: 2000,
    };
    let agent = cpe.session_agent("acs", config, methods);
    let total = 300u64;
    let mut results = Vec::new();
    for i in 0..total {
        results.push(
            manager
                .push("cpe-1", "Step", count(i))
                .await
                .expect("queued"),
        );
    }
    // Kill while the queue runs.
    let deadline = Instant::now() + WAIT;
    while ran.lock().expect("lock").len() < (total / 3) as usize {
        assert!(Instant::now() < deadline, "the agent did not start");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    primary.kill9();
    standby.event("ready");
    for (i, r) in results.into_iter().enumerate() {
        let r = tokio::time::timeout(WAIT * 2, r)
            .await
            .unwrap_or_else(|_| panic!("RPC {i} neither completed nor failed"))
            .unwrap_or_else(|e| panic!("RPC {i} failed: {e}"));
        assert_eq!(number(&r.payload), i as u64, "RPC {i}'s own result");
    }
    let ran = ran.lock().expect("lock").clone();
    assert_eq!(
        ran,
        (0..total).collect::<Vec<_>>(),
        "each RPC ran once, in order"
    );
    let _ = agent.shutdown().await;
    manager.shutdown().await;
}

/// The client's delivery contract across a failover: a subscriber whose
/// stream holds 64 messages and whose application reads slowly gets every
/// confirmed publish once, in order, although the primary is killed with
/// SIGKILL while it is far behind.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_subscriber_loses_nothing_across_a_kill() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (mut primary, _standby, addr) = pair(dir.path(), "fo-slow");
    let subscriber = Client::builder("slow")
        .addr(addr.to_string())
        .token(TOKEN)
        .resume_wait(Duration::from_secs(20))
        .stream_capacity(64)
        .connect()
        .await
        .expect("connect");
    let mut sub = subscriber.subscribe("slow.>").await.expect("subscribe");
    let publisher = client("fast", addr).await;
    const LANES: u64 = 4;
    let per_lane = (messages() / 10).clamp(1_000, 10_000);
    let total = LANES * per_lane;
    let sent = Arc::new(AtomicU64::new(0));
    let publishing = {
        let (publisher, sent) = (publisher.clone(), sent.clone());
        tokio::spawn(async move {
            let lanes = (0..LANES).map(|lane| {
                let (publisher, sent) = (publisher.clone(), sent.clone());
                async move {
                    for n in 0..per_lane {
                        let topic = format!("slow.{lane}");
                        publisher
                            .publish(&topic, count(n))
                            .await
                            .expect("a confirmed publish");
                        sent.fetch_add(1, Ordering::Relaxed);
                    }
                }
            });
            futures::future::join_all(lanes).await;
        })
    };
    let mut next = [0u64; LANES as usize];
    let mut got = 0u64;
    let mut killed = false;
    let deadline = Instant::now() + Duration::from_secs(300);
    while got < total {
        assert!(Instant::now() < deadline, "{got} of {total} in time");
        if !killed && sent.load(Ordering::Relaxed) >= total / 3 {
            primary.kill9();
            killed = true;
        }
        let m = tokio::time::timeout(WAIT, sub.next())
            .await
            .expect("a message in time")
            .expect("the subscription goes on");
        let lane: usize = m.topic[5..].parse().expect("lane");
        assert_eq!(number(&m.payload), next[lane], "lane {lane} in order, once");
        next[lane] += 1;
        got += 1;
        // Far slower than the publishers until they are done.
        if !publishing.is_finished() && got % 8 == 0 {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }
    assert!(killed, "the primary was killed during the run");
    publishing.await.expect("publishers");
    assert_eq!(subscriber.dropped(), 0);
    assert!(
        tokio::time::timeout(Duration::from_millis(300), sub.next())
            .await
            .is_err(),
        "nothing more, nothing twice"
    );
}
