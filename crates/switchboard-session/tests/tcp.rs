//! The tokio drivers over real TCP on loopback.

use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use anyhow::{ensure, Context as _};
use bytes::Bytes;
use futures::{Sink, Stream};
use rand::Rng;
use switchboard_session::driver::{
    spawn_agent, spawn_manager, AgentOptions, LinkKind, ManagerHandle, ManagerOptions, Methods,
    SessionError,
};
use switchboard_session::{
    fault, AgentConfig, AgentEvent, Event, ManagerConfig, ManagerEvent, RetryPolicy,
};
use switchboard_wire::{proto, Frame, FrameCodec, Kind, WireError};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::codec::Framed;

type Tcp = Framed<TcpStream, FrameCodec>;

/// Records, per connection, the ids of the results the manager receives.
struct Tap {
    inner: Tcp,
    seen: Arc<Mutex<Vec<u64>>>,
}

impl Stream for Tap {
    type Item = Result<Frame, WireError>;
    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let r = Pin::new(&mut self.inner).poll_next(cx);
        if let Poll::Ready(Some(Ok(Frame {
            kind: Some(Kind::Session(s)),
            ..
        }))) = &r
        {
            if let Some(proto::session::Body::RpcResult(res)) = &s.body {
                if let Ok(id) = res.id.parse() {
                    self.seen.lock().unwrap().push(id);
                }
            }
        }
        r
    }
}

impl Sink<Frame> for Tap {
    type Error = WireError;
    fn poll_ready(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), WireError>> {
        Sink::<Frame>::poll_ready(Pin::new(&mut self.inner), cx)
    }
    fn start_send(mut self: Pin<&mut Self>, item: Frame) -> Result<(), WireError> {
        Pin::new(&mut self.inner).start_send(item)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), WireError>> {
        Sink::<Frame>::poll_flush(Pin::new(&mut self.inner), cx)
    }
    fn poll_close(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), WireError>> {
        Sink::<Frame>::poll_close(Pin::new(&mut self.inner), cx)
    }
}

async fn manager_on_loopback(
    config: ManagerConfig,
) -> anyhow::Result<(
    ManagerHandle,
    std::net::SocketAddr,
    Arc<Mutex<Vec<Arc<Mutex<Vec<u64>>>>>>,
)> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let manager = spawn_manager(ManagerOptions {
        config,
        ..ManagerOptions::default()
    });
    let taps = Arc::new(Mutex::new(Vec::new()));
    let (m, t) = (manager.clone(), taps.clone());
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let _ = stream.set_nodelay(true);
            let seen = Arc::new(Mutex::new(Vec::new()));
            t.lock().unwrap().push(seen.clone());
            let tap = Tap {
                inner: Framed::new(stream, FrameCodec::default()),
                seen,
            };
            if m.attach(tap, LinkKind::Direct).await.is_err() {
                return;
            }
        }
    });
    Ok((manager, addr, taps))
}

fn connector(
    addr: std::net::SocketAddr,
) -> impl FnMut() -> futures::future::BoxFuture<'static, std::io::Result<Tcp>> {
    move || {
        Box::pin(async move {
            let s = TcpStream::connect(addr).await?;
            s.set_nodelay(true)?;
            Ok(Framed::new(s, FrameCodec::default()))
        })
    }
}

fn fast_retry(device: &str) -> AgentConfig {
    let mut c = AgentConfig::new(device);
    c.retry = RetryPolicy {
        min_wait: Duration::from_millis(20),
        multiplier: 2000,
    };
    c
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hundred_agents_thousand_rpcs_each_in_order() -> anyhow::Result<()> {
    const AGENTS: usize = 100;
    const RPCS: u64 = 1000;
    let config = ManagerConfig {
        max_in_flight: 16,
        ..ManagerConfig::default()
    };
    let (manager, addr, taps) = manager_on_loopback(config).await?;

    let mut logs = Vec::new();
    let mut agents = Vec::new();
    for i in 0..AGENTS {
        let log = Arc::new(Mutex::new(Vec::<u64>::with_capacity(RPCS as usize)));
        logs.push(log.clone());
        let handler = move |_method: String, payload: Bytes| {
            let log = log.clone();
            async move {
                let n = u64::from_be_bytes(payload[..8].try_into().expect("8 bytes"));
                log.lock().unwrap().push(n);
                Ok(payload)
            }
        };
        agents.push(spawn_agent(
            AgentOptions::new(fast_retry(&format!("agent-{i}"))),
            connector(addr),
            handler,
        ));
    }

    let started = std::time::Instant::now();
    let mut pushers = Vec::new();
    for i in 0..AGENTS {
        let m = manager.clone();
        pushers.push(tokio::spawn(async move {
            let name = format!("agent-{i}");
            let mut pending = Vec::with_capacity(RPCS as usize);
            for n in 0..RPCS {
                // Pushes at random moments: now and then a short pause.
                let pause = {
                    let mut rng = rand::rng();
                    (rng.random_range(0..100u32) == 0)
                        .then(|| Duration::from_micros(rng.random_range(0..2000)))
                };
                if let Some(pause) = pause {
                    tokio::time::sleep(pause).await;
                }
                pending.push(
                    m.push(
                        name.clone(),
                        "Echo",
                        Bytes::copy_from_slice(&n.to_be_bytes()),
                    )
                    .await?,
                );
            }
            for (n, p) in pending.into_iter().enumerate() {
                let r = p.await?;
                ensure!(
                    r.payload.as_ref() == (n as u64).to_be_bytes(),
                    "agent-{i}: result {n} carries another payload"
                );
            }
            Ok::<_, anyhow::Error>(())
        }));
    }
    for p in pushers {
        tokio::time::timeout(Duration::from_secs(60), p)
            .await
            .context("pushers did not finish in time")???;
    }
    let elapsed = started.elapsed();

    // Every agent ran its RPCs exactly once, in push order.
    for (i, log) in logs.iter().enumerate() {
        let log = log.lock().unwrap();
        ensure!(
            log.len() == RPCS as usize,
            "agent-{i} ran {} rpcs",
            log.len()
        );
        ensure!(
            log.iter().copied().eq(0..RPCS),
            "agent-{i} ran rpcs out of order"
        );
    }
    // Results arrived at the manager in order on every connection.
    let taps: Vec<_> = taps.lock().unwrap().clone();
    let mut total = 0;
    for seen in taps.iter() {
        let seen = seen.lock().unwrap();
        ensure!(
            seen.windows(2).all(|w| w[0] < w[1]),
            "results out of order on a connection"
        );
        total += seen.len();
    }
    ensure!(
        total == AGENTS * RPCS as usize,
        "{total} results seen on the wire"
    );
    eprintln!(
        "{} rpcs over {AGENTS} connections in {elapsed:?}",
        AGENTS as u64 * RPCS
    );
    for a in agents {
        a.shutdown().await?;
    }
    manager.shutdown().await;
    Ok(())
}

#[tokio::test]
async fn handler_faults_and_panics_keep_the_queue_going() -> anyhow::Result<()> {
    let (manager, addr, _taps) = manager_on_loopback(ManagerConfig {
        max_in_flight: 4,
        ..ManagerConfig::default()
    })
    .await?;
    let methods = Methods::new()
        .add("Echo", |p| async move { Ok(p) })
        .add("Fail", |_| async move {
            Err(fault("", 9003, "no space left: free some"))
        })
        .add("Panic", |_| async move {
            if true {
                panic!("handler bug");
            }
            Ok(Bytes::new())
        });
    let agent = spawn_agent(
        AgentOptions::new(fast_retry("cpe-faults")),
        connector(addr),
        methods,
    );
    let mut pending = Vec::new();
    for m in ["Echo", "Nope", "Fail", "Panic", "Echo"] {
        pending.push(
            manager
                .push("cpe-faults", m, Bytes::from_static(b"x"))
                .await?,
        );
    }
    let mut out = Vec::new();
    for p in pending {
        out.push(tokio::time::timeout(Duration::from_secs(10), p).await?);
    }
    assert_eq!(out[0].as_ref().unwrap().payload, Bytes::from_static(b"x"));
    assert!(
        matches!(&out[1], Err(SessionError::Fault { code: 8000, message }) if message.contains("Nope")),
        "{:?}",
        out[1]
    );
    assert!(
        matches!(&out[2], Err(SessionError::Fault { code: 9003, .. })),
        "{:?}",
        out[2]
    );
    assert!(
        matches!(&out[3], Err(SessionError::Fault { code: 8002, .. })),
        "{:?}",
        out[3]
    );
    assert_eq!(out[4].as_ref().unwrap().payload, Bytes::from_static(b"x"));
    agent.shutdown().await?;
    Ok(())
}

#[tokio::test]
async fn reconnect_after_lost_connection_loses_nothing() -> anyhow::Result<()> {
    // A manager whose first connection is cut in the middle of a session.
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let manager = spawn_manager(ManagerOptions {
        config: ManagerConfig {
            max_in_flight: 8,
            ..ManagerConfig::default()
        },
        ..ManagerOptions::default()
    });
    let m = manager.clone();
    tokio::spawn(async move {
        let mut first = true;
        while let Ok((stream, _)) = listener.accept().await {
            let framed = Framed::new(stream, FrameCodec::default());
            if first {
                first = false;
                // Serve it briefly, then drop it mid-session.
                let cut = CutAfter {
                    inner: framed,
                    left: 6,
                };
                if m.attach(cut, LinkKind::Direct).await.is_err() {
                    return;
                }
            } else if m.attach(framed, LinkKind::Direct).await.is_err() {
                return;
            }
        }
    });
    let ran = Arc::new(Mutex::new(Vec::new()));
    let r = ran.clone();
    let handler = move |_m: String, p: Bytes| {
        let r = r.clone();
        async move {
            tokio::time::sleep(Duration::from_millis(2)).await;
            r.lock().unwrap().push(p.clone());
            Ok(p)
        }
    };
    let agent = spawn_agent(
        AgentOptions::new(fast_retry("cpe-cut")),
        connector(addr),
        handler,
    );
    let mut events = agent.subscribe();
    let mut pending = Vec::new();
    for n in 0..20u8 {
        pending.push(
            manager
                .push("cpe-cut", "Echo", Bytes::from(vec![n]))
                .await?,
        );
    }
    for (n, p) in pending.into_iter().enumerate() {
        let r = tokio::time::timeout(Duration::from_secs(10), p).await??;
        assert_eq!(r.payload.as_ref(), [n as u8]);
    }
    let ran = ran.lock().unwrap().clone();
    assert_eq!(
        ran,
        (0..20u8).map(|n| Bytes::from(vec![n])).collect::<Vec<_>>(),
        "each rpc ran once, in order"
    );
    // The cut counted as a failed session, retried per the table.
    let mut failed = None;
    while let Ok(ev) = events.try_recv() {
        if let AgentEvent::SessionFailed { retry, wait, .. } = ev {
            failed = Some((retry, wait));
        }
    }
    let (retry, wait) = failed.expect("a failed session");
    assert_eq!(retry, 1);
    assert!(wait >= Duration::from_millis(20) && wait <= Duration::from_millis(40));
    agent.shutdown().await?;
    Ok(())
}

/// Passes `left` inbound frames, then reports the connection as ended.
struct CutAfter {
    inner: Tcp,
    left: usize,
}

impl Stream for CutAfter {
    type Item = Result<Frame, WireError>;
    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        if self.left == 0 {
            return Poll::Ready(None);
        }
        let r = Pin::new(&mut self.inner).poll_next(cx);
        if let Poll::Ready(Some(_)) = &r {
            self.left -= 1;
        }
        r
    }
}

impl Sink<Frame> for CutAfter {
    type Error = WireError;
    fn poll_ready(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), WireError>> {
        Sink::<Frame>::poll_ready(Pin::new(&mut self.inner), cx)
    }
    fn start_send(mut self: Pin<&mut Self>, item: Frame) -> Result<(), WireError> {
        Pin::new(&mut self.inner).start_send(item)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), WireError>> {
        Sink::<Frame>::poll_flush(Pin::new(&mut self.inner), cx)
    }
    fn poll_close(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), WireError>> {
        Sink::<Frame>::poll_close(Pin::new(&mut self.inner), cx)
    }
}

#[tokio::test]
async fn journal_keeps_persistent_events_across_restart() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("events.json");
    // No manager listening: sessions fail, events stay.
    let dead = TcpListener::bind("127.0.0.1:0").await?;
    let addr = dead.local_addr()?;
    drop(dead);
    let mut opts = AgentOptions::new(fast_retry("cpe-journal"));
    opts.journal = Some(path.clone());
    opts.boot_event = false;
    let agent = spawn_agent(opts.clone(), connector(addr), Methods::new());
    agent
        .add_event(Event::with_key("M Download", "dl-1"))
        .await?;
    agent.add_event(Event::new(Event::BOOT)).await?;
    agent.shutdown().await?;
    let saved: Vec<Event> = serde_json::from_slice(&std::fs::read(&path)?)?;
    assert_eq!(saved, vec![Event::with_key("M Download", "dl-1")]);

    // Restart against a live manager: the journalled event is delivered and
    // the journal emptied; "1 BOOT" did not survive the restart.
    let (manager, addr, _taps) = manager_on_loopback(ManagerConfig::default()).await?;
    let mut mevents = manager.subscribe();
    let agent = spawn_agent(opts, connector(addr), Methods::new());
    agent.add_event(Event::new(Event::VALUE_CHANGE)).await?;
    let mut delivered: Vec<Event> = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !delivered.iter().any(|e| e.code == "M Download") {
        let (_, ev) = tokio::time::timeout_at(deadline, mevents.recv()).await??;
        if let ManagerEvent::SessionStarted { inform, .. } = ev {
            delivered.extend(inform.events.into_iter().map(Event::from));
        }
    }
    assert!(!delivered.iter().any(|e| e.code == Event::BOOT));
    // Wait for the journal to be rewritten after the InformResponse.
    for _ in 0..200 {
        let saved: Vec<Event> = serde_json::from_slice(&std::fs::read(&path)?)?;
        if saved.is_empty() {
            agent.shutdown().await?;
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    anyhow::bail!("journal not emptied after delivery")
}

#[tokio::test]
async fn manager_rejects_non_inform_first_on_a_direct_link() -> anyhow::Result<()> {
    use futures::{SinkExt, StreamExt};
    let (_manager, addr, _taps) = manager_on_loopback(ManagerConfig::default()).await?;
    let mut conn = Framed::new(TcpStream::connect(addr).await?, FrameCodec::default());
    conn.send(Frame::from(proto::Session {
        peer: String::new(),
        session_id: 1,
        body: Some(proto::session::Body::Rpc(proto::Rpc {
            id: "r1".into(),
            method: "TransferComplete".into(),
            ..Default::default()
        })),
    }))
    .await?;
    let reply = tokio::time::timeout(Duration::from_secs(5), conn.next())
        .await?
        .context("connection closed")??;
    let Some(Kind::Session(s)) = reply.kind else {
        anyhow::bail!("not a session frame")
    };
    let Some(proto::session::Body::Fault(f)) = s.body else {
        anyhow::bail!("not a fault")
    };
    assert_eq!(f.id, "r1");
    assert_eq!(f.code, 8001);
    assert!(f.message.contains("inform"));
    Ok(())
}

/// A stream half and a sink half joined into one transport.
struct Duplex<S, K> {
    stream: S,
    sink: K,
}

impl<S: Stream + Unpin, K: Unpin> Stream for Duplex<S, K> {
    type Item = S::Item;
    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<S::Item>> {
        Pin::new(&mut self.stream).poll_next(cx)
    }
}

impl<S: Unpin, K: Sink<Frame> + Unpin> Sink<Frame> for Duplex<S, K> {
    type Error = K::Error;
    fn poll_ready(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), K::Error>> {
        Pin::new(&mut self.sink).poll_ready(cx)
    }
    fn start_send(mut self: Pin<&mut Self>, item: Frame) -> Result<(), K::Error> {
        Pin::new(&mut self.sink).start_send(item)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), K::Error>> {
        Pin::new(&mut self.sink).poll_flush(cx)
    }
    fn poll_close(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), K::Error>> {
        Pin::new(&mut self.sink).poll_close(cx)
    }
}

type ChanStream = futures::stream::Map<
    futures::channel::mpsc::Receiver<Frame>,
    fn(Frame) -> Result<Frame, std::io::Error>,
>;
type Chan = Duplex<ChanStream, futures::channel::mpsc::Sender<Frame>>;

fn chan_pair() -> (Chan, Chan) {
    use futures::StreamExt;
    let (atx, arx) = futures::channel::mpsc::channel(256);
    let (btx, brx) = futures::channel::mpsc::channel(256);
    let ok: fn(Frame) -> Result<Frame, std::io::Error> = Ok;
    (
        Duplex {
            stream: arx.map(ok),
            sink: btx,
        },
        Duplex {
            stream: brx.map(ok),
            sink: atx,
        },
    )
}

/// One manager serving two agents over a single hub-like link, told apart
/// by `Session.peer` (a tiny router stands in for the hub: it stamps the
/// sender's name on the way in and routes by `peer` on the way out).
#[tokio::test]
async fn hub_link_demultiplexes_agents_by_peer() -> anyhow::Result<()> {
    use futures::{SinkExt, StreamExt};
    let manager = spawn_manager(ManagerOptions::default());
    let (mgr_side, mut hub_to_mgr) = chan_pair();
    manager.attach(mgr_side, LinkKind::Hub).await?;

    let mut agent_links = Vec::new();
    let mut agents = Vec::new();
    for name in ["cpe-a", "cpe-b"] {
        let (agent_side, hub_side) = chan_pair();
        let slot = Arc::new(Mutex::new(Some(agent_side)));
        let mut opts = AgentOptions::new(fast_retry(name));
        opts.peer = Some("acs".into());
        let tag = name.as_bytes().to_vec();
        agents.push(spawn_agent(
            opts,
            move || {
                let t = slot.lock().unwrap().take();
                async move { t.ok_or_else(|| std::io::Error::other("used")) }
            },
            move |_m: String, p: Bytes| {
                let tag = tag.clone();
                async move { Ok(Bytes::from([&tag[..], b":", &p[..]].concat())) }
            },
        ));
        agent_links.push((name.to_string(), hub_side));
    }
    // The router.
    let (a_name, mut a_link) = agent_links.remove(0);
    let (b_name, mut b_link) = agent_links.remove(0);
    tokio::spawn(async move {
        loop {
            tokio::select! {
                Some(Ok(mut f)) = a_link.next() => {
                    if let Some(Kind::Session(s)) = f.kind.as_mut() { assert_eq!(s.peer, "acs"); s.peer = a_name.clone(); }
                    if hub_to_mgr.send(f).await.is_err() { return; }
                }
                Some(Ok(mut f)) = b_link.next() => {
                    if let Some(Kind::Session(s)) = f.kind.as_mut() { assert_eq!(s.peer, "acs"); s.peer = b_name.clone(); }
                    if hub_to_mgr.send(f).await.is_err() { return; }
                }
                Some(Ok(mut f)) = hub_to_mgr.next() => {
                    let Some(Kind::Session(s)) = f.kind.as_mut() else { continue };
                    let to = std::mem::replace(&mut s.peer, "acs".into());
                    let link = if to == a_name { &mut a_link } else { &mut b_link };
                    if link.send(f).await.is_err() { return; }
                }
                else => return,
            }
        }
    });
    let mut pending = Vec::new();
    for i in 0..10u8 {
        let agent = if i % 2 == 0 { "cpe-a" } else { "cpe-b" };
        pending.push((
            agent,
            i,
            manager
                .push(agent, "Tag", Bytes::from(vec![b'0' + i]))
                .await?,
        ));
    }
    for (agent, i, p) in pending {
        let r = tokio::time::timeout(Duration::from_secs(10), p).await??;
        assert_eq!(
            r.payload,
            Bytes::from(format!("{agent}:{}", (b'0' + i) as char))
        );
    }
    for a in agents {
        a.shutdown().await?;
    }
    Ok(())
}

/// A peer that accepts and hangs up at once must not make the agent spin.
#[tokio::test]
async fn reconnects_back_off_when_the_peer_hangs_up() -> anyhow::Result<()> {
    use std::sync::atomic::{AtomicUsize, Ordering};
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        while let Ok((s, _)) = listener.accept().await {
            drop(s);
        }
    });
    let connects = Arc::new(AtomicUsize::new(0));
    let c = connects.clone();
    let agent = spawn_agent(
        AgentOptions::new(fast_retry("cpe-spin")),
        move || {
            c.fetch_add(1, Ordering::SeqCst);
            connector(addr)()
        },
        Methods::new(),
    );
    // The window measured; on a slow machine the second attempt may come
    // after it (then waited for, bounded).
    tokio::time::sleep(Duration::from_millis(800)).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while connects.load(Ordering::SeqCst) < 2 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let n = connects.load(Ordering::SeqCst);
    // 50 ms doubling: about 5 attempts in 800 ms; a spinning agent makes thousands.
    assert!((2..=12).contains(&n), "{n} connection attempts in 800 ms");
    agent.shutdown().await?;
    Ok(())
}

/// The agent's own request (e.g. TransferComplete) goes out before its
/// Empty; the manager driver acknowledges it and reports it.
#[tokio::test]
async fn agent_request_is_answered_and_reported() -> anyhow::Result<()> {
    let (manager, addr, _taps) = manager_on_loopback(ManagerConfig::default()).await?;
    let mut events = manager.subscribe();
    let agent = spawn_agent(
        AgentOptions::new(fast_retry("cpe-tc")),
        connector(addr),
        Methods::new(),
    );
    let answer = tokio::time::timeout(
        Duration::from_secs(10),
        agent.request("TransferComplete", Bytes::from_static(b"dl-1")),
    )
    .await??;
    assert!(answer.payload.is_empty());
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let (who, ev) = tokio::time::timeout_at(deadline, events.recv()).await??;
        if let ManagerEvent::AgentRequest {
            method, payload, ..
        } = ev
        {
            assert_eq!(who, "cpe-tc");
            assert_eq!(method, "TransferComplete");
            assert_eq!(payload, Bytes::from_static(b"dl-1"));
            break;
        }
    }
    agent.shutdown().await?;
    Ok(())
}

/// A handler that never finishes is abandoned after the task timeout with
/// fault 8002; the queue continues.
#[tokio::test]
async fn hung_handler_times_out_and_the_queue_continues() -> anyhow::Result<()> {
    let (manager, addr, _taps) = manager_on_loopback(ManagerConfig {
        max_in_flight: 2,
        ..ManagerConfig::default()
    })
    .await?;
    let methods = Methods::new()
        .add("Hang", |_| {
            futures::future::pending::<Result<Bytes, proto::Fault>>()
        })
        .add("Echo", |p| async move { Ok(p) });
    let mut opts = AgentOptions::new(fast_retry("cpe-hang"));
    opts.task_timeout = Duration::from_millis(100);
    let agent = spawn_agent(opts, connector(addr), methods);
    let hang = manager.push("cpe-hang", "Hang", Bytes::new()).await?;
    let echo = manager
        .push("cpe-hang", "Echo", Bytes::from_static(b"after"))
        .await?;
    match tokio::time::timeout(Duration::from_secs(10), hang).await? {
        Err(SessionError::Fault {
            code: 8002,
            message,
        }) => assert!(message.contains("did not finish"), "{message}"),
        other => panic!("expected fault 8002, got {other:?}"),
    }
    let r = tokio::time::timeout(Duration::from_secs(10), echo).await??;
    assert_eq!(r.payload, Bytes::from_static(b"after"));
    agent.shutdown().await?;
    Ok(())
}

/// A frame of an unknown kind gets Error{UNSUPPORTED}; the link carries on.
#[tokio::test]
async fn unknown_frame_kind_is_answered_and_the_link_carries_on() -> anyhow::Result<()> {
    use futures::{SinkExt, StreamExt};
    let (_manager, addr, _taps) = manager_on_loopback(ManagerConfig::default()).await?;
    let mut conn = Framed::new(TcpStream::connect(addr).await?, FrameCodec::default());
    conn.send(Frame {
        seq: 0,
        acked: 0,
        kind: None,
    })
    .await?;
    let reply = tokio::time::timeout(Duration::from_secs(5), conn.next())
        .await?
        .context("closed")??;
    let Some(Kind::Error(e)) = reply.kind else {
        anyhow::bail!("expected an error frame, got {reply:?}")
    };
    assert_eq!(e.code, switchboard_wire::ErrorCode::Unsupported as i32);
    conn.send(Frame::from(proto::Session {
        peer: String::new(),
        session_id: 1,
        body: Some(proto::session::Body::Inform(proto::Inform {
            device_id: "cpe-raw".into(),
            ..Default::default()
        })),
    }))
    .await?;
    let reply = tokio::time::timeout(Duration::from_secs(5), conn.next())
        .await?
        .context("closed")??;
    let Some(Kind::Session(s)) = reply.kind else {
        anyhow::bail!("expected a session frame")
    };
    assert!(
        matches!(s.body, Some(proto::session::Body::InformResponse(_))),
        "{s:?}"
    );
    Ok(())
}
