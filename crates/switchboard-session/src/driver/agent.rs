//! Tokio driver of the agent.

use std::collections::HashMap;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use futures::future::BoxFuture;
use futures::{FutureExt, SinkExt, StreamExt};
use switchboard_wire::{proto, Frame, Kind};
use tokio::sync::{broadcast, mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use super::{boxed, session_of, unknown_kind_reply, BoxError, FrameIo, SessionError, BATCH};
use crate::{fault, fault_code, Agent, AgentConfig, AgentEvent, Event, TaskId};

/// The application side of an agent: runs one pushed RPC.
///
/// Return `Ok(result)` or `Err(fault)` (the fault's `id` is filled in by the
/// engine). A handler that panics yields fault 8002; the queue continues.
/// Closures `Fn(String, Bytes) -> impl Future<Output = Result<Bytes, Fault>>`
/// are handlers; [`Methods`] routes by method name and answers unknown
/// methods with fault 8000.
pub trait RpcHandler: Send + Sync + 'static {
    /// Runs `method` with `payload`.
    fn call(
        &self,
        method: String,
        payload: Bytes,
    ) -> BoxFuture<'static, Result<Bytes, proto::Fault>>;
}

impl<F, Fut> RpcHandler for F
where
    F: Fn(String, Bytes) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<Bytes, proto::Fault>> + Send + 'static,
{
    fn call(
        &self,
        method: String,
        payload: Bytes,
    ) -> BoxFuture<'static, Result<Bytes, proto::Fault>> {
        self(method, payload).boxed()
    }
}

type MethodFn = Arc<dyn Fn(Bytes) -> BoxFuture<'static, Result<Bytes, proto::Fault>> + Send + Sync>;

/// An [`RpcHandler`] that routes by method name; unknown methods get fault
/// 8000 "method not supported".
#[derive(Clone, Default)]
pub struct Methods {
    map: HashMap<String, MethodFn>,
}

impl std::fmt::Debug for Methods {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_set().entries(self.map.keys()).finish()
    }
}

impl Methods {
    /// No methods yet.
    pub fn new() -> Methods {
        Methods::default()
    }

    /// Adds method `name`.
    pub fn add<F, Fut>(mut self, name: impl Into<String>, f: F) -> Methods
    where
        F: Fn(Bytes) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<Bytes, proto::Fault>> + Send + 'static,
    {
        self.map
            .insert(name.into(), Arc::new(move |p| f(p).boxed()));
        self
    }
}

impl RpcHandler for Methods {
    fn call(
        &self,
        method: String,
        payload: Bytes,
    ) -> BoxFuture<'static, Result<Bytes, proto::Fault>> {
        match self.map.get(&method) {
            Some(f) => f(payload),
            None => {
                let f = fault(
                    "",
                    fault_code::METHOD_NOT_SUPPORTED,
                    format!("method not supported: {method}"),
                );
                async move { Err(f) }.boxed()
            }
        }
    }
}

/// Settings of an agent driver.
#[derive(Clone, Debug)]
pub struct AgentOptions {
    /// The state machine's settings.
    pub config: AgentConfig,
    /// Over a hub: the manager's client id, put into every outgoing
    /// `Session.peer`; incoming session frames from other peers are ignored.
    /// `None` on a direct connection.
    pub peer: Option<String>,
    /// File that keeps persistent events across restarts (JSON, written
    /// atomically). `None`: no journal.
    pub journal: Option<PathBuf>,
    /// First wait before reconnecting after a failed connect (doubles up to
    /// [`AgentOptions::reconnect_max`]).
    pub reconnect_min: Duration,
    /// Longest wait between connect attempts.
    pub reconnect_max: Duration,
    /// Seed of the retry jitter; `None` draws one at start.
    pub seed: Option<u64>,
    /// Longest a handler may run (25 s, under the manager's default
    /// response timeout of 30 s); a handler still running then is abandoned
    /// and answered with fault 8002, and the queue continues.
    pub task_timeout: Duration,
    /// Report `"1 BOOT"` at start (true). The first session then opens as
    /// soon as the connection is up, which is also how a manager on a direct
    /// link learns which agent is on the other end.
    pub boot_event: bool,
}

impl AgentOptions {
    /// Default options for `config`.
    pub fn new(config: AgentConfig) -> AgentOptions {
        AgentOptions {
            config,
            peer: None,
            journal: None,
            reconnect_min: Duration::from_millis(50),
            reconnect_max: Duration::from_secs(5),
            seed: None,
            task_timeout: Duration::from_secs(25),
            boot_event: true,
        }
    }
}

enum Cmd {
    Event(Event, oneshot::Sender<Result<(), SessionError>>),
    Request(
        String,
        Bytes,
        oneshot::Sender<Result<proto::RpcResult, SessionError>>,
    ),
    Shutdown,
}

/// Handle to a running agent driver.
#[derive(Debug)]
pub struct AgentHandle {
    tx: mpsc::Sender<Cmd>,
    events: broadcast::Sender<AgentEvent>,
    join: Option<JoinHandle<Result<(), SessionError>>>,
}

impl AgentHandle {
    /// Reports an event; a session starts at once (even during a retry wait).
    pub async fn add_event(&self, event: Event) -> Result<(), SessionError> {
        let (tx, rx) = oneshot::channel();
        self.tx
            .send(Cmd::Event(event, tx))
            .await
            .map_err(|_| SessionError::Closed)?;
        rx.await.map_err(|_| SessionError::Closed)?
    }

    /// Sends a request of the agent's own (e.g. `TransferComplete`) in the
    /// next session and waits for the manager's answer.
    pub async fn request(
        &self,
        method: impl Into<String>,
        payload: Bytes,
    ) -> Result<proto::RpcResult, SessionError> {
        let (tx, rx) = oneshot::channel();
        self.tx
            .send(Cmd::Request(method.into(), payload, tx))
            .await
            .map_err(|_| SessionError::Closed)?;
        rx.await.map_err(|_| SessionError::Closed)?
    }

    /// A stream of the agent's events (all but `RunTask`). Bounded: a
    /// receiver that falls more than 1024 events behind skips the oldest.
    pub fn subscribe(&self) -> broadcast::Receiver<AgentEvent> {
        self.events.subscribe()
    }

    /// Stops the driver and waits for it.
    pub async fn shutdown(mut self) -> Result<(), SessionError> {
        let _ = self.tx.send(Cmd::Shutdown).await;
        match self.join.take() {
            Some(j) => j.await.unwrap_or(Err(SessionError::Closed)),
            None => Ok(()),
        }
    }
}

impl Drop for AgentHandle {
    fn drop(&mut self) {
        if let Some(j) = &self.join {
            j.abort();
        }
    }
}

/// Starts an agent driver on the current tokio runtime.
///
/// `connect` is called for every (re)connection and returns a transport of
/// wire frames; `handler` runs the pushed RPCs one at a time.
pub fn spawn_agent<C, Fut, T, E, H>(opts: AgentOptions, connect: C, handler: H) -> AgentHandle
where
    C: FnMut() -> Fut + Send + 'static,
    Fut: Future<Output = std::io::Result<T>> + Send + 'static,
    T: futures::Stream<Item = Result<Frame, E>> + futures::Sink<Frame> + Send + Unpin + 'static,
    E: Into<BoxError>,
    <T as futures::Sink<Frame>>::Error: Into<BoxError>,
    H: RpcHandler,
{
    let (tx, rx) = mpsc::channel(64);
    let (events, _) = broadcast::channel(1024);
    let ev = events.clone();
    let connect = move_connect(connect);
    let join = tokio::spawn(run(opts, connect, Arc::new(handler), rx, ev));
    AgentHandle {
        tx,
        events,
        join: Some(join),
    }
}

type Connect = Box<dyn FnMut() -> BoxFuture<'static, std::io::Result<Box<dyn FrameIo>>> + Send>;

fn move_connect<C, Fut, T, E>(mut connect: C) -> Connect
where
    C: FnMut() -> Fut + Send + 'static,
    Fut: Future<Output = std::io::Result<T>> + Send + 'static,
    T: futures::Stream<Item = Result<Frame, E>> + futures::Sink<Frame> + Send + Unpin + 'static,
    E: Into<BoxError>,
    <T as futures::Sink<Frame>>::Error: Into<BoxError>,
{
    Box::new(move || connect().map(|r| r.map(boxed)).boxed())
}

fn now_std() -> std::time::Instant {
    Instant::now().into_std()
}

fn load_journal(path: &PathBuf) -> Result<Vec<Event>, SessionError> {
    let err = |source| SessionError::Journal {
        path: path.display().to_string(),
        source,
    };
    match std::fs::read(path) {
        Ok(bytes) => serde_json::from_slice(&bytes)
            .map_err(|e| err(std::io::Error::new(std::io::ErrorKind::InvalidData, e))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(e) => Err(err(e)),
    }
}

fn store_journal(path: &PathBuf, events: &[Event]) -> Result<(), SessionError> {
    let err = |source| SessionError::Journal {
        path: path.display().to_string(),
        source,
    };
    let json = serde_json::to_vec(events).map_err(|e| err(std::io::Error::other(e)))?;
    let mut tmp = path.clone().into_os_string();
    tmp.push(".tmp");
    std::fs::write(&tmp, json).map_err(err)?;
    std::fs::rename(&tmp, path).map_err(err)
}

async fn run(
    opts: AgentOptions,
    mut connect: Connect,
    handler: Arc<dyn RpcHandler>,
    mut rx: mpsc::Receiver<Cmd>,
    events: broadcast::Sender<AgentEvent>,
) -> Result<(), SessionError> {
    let seed = opts.seed.unwrap_or_else(rand::random);
    let mut agent = Agent::new(opts.config.clone(), seed);
    if let Some(path) = &opts.journal {
        agent.restore(load_journal(path)?);
    }
    let wall_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(0));
    agent.set_wall_clock(now_std(), wall_ms);
    if opts.boot_event {
        let _ = agent.add_event(now_std(), Event::new(Event::BOOT));
    }

    let mut io: Option<Box<dyn FrameIo>> = None;
    let mut connecting: Option<BoxFuture<'static, std::io::Result<Box<dyn FrameIo>>>> =
        Some(connect());
    let mut reconnect_at: Option<Instant> = None;
    let mut backoff = opts.reconnect_min;
    let mut task: Option<(TaskId, BoxFuture<'static, Result<Bytes, proto::Fault>>)> = None;
    let mut requests: HashMap<String, oneshot::Sender<Result<proto::RpcResult, SessionError>>> =
        HashMap::new();
    let peer = opts.peer.clone();
    let mut replies: Vec<Frame> = Vec::new();

    loop {
        let timer = agent.poll_timeout().map(Instant::from_std);
        tokio::select! {
            cmd = rx.recv() => match cmd {
                None | Some(Cmd::Shutdown) => return Ok(()),
                Some(Cmd::Event(e, reply)) => {
                    let r = agent.add_event(now_std(), e).map_err(|q| SessionError::QueueFull { limit: q.limit });
                    let _ = reply.send(r);
                }
                Some(Cmd::Request(method, payload, reply)) => {
                    match agent.queue_request(now_std(), method, payload) {
                        Ok(id) => { requests.insert(id, reply); }
                        Err(q) => { let _ = reply.send(Err(SessionError::QueueFull { limit: q.limit })); }
                    }
                }
            },
            res = async { connecting.as_mut().expect("guarded").await }, if connecting.is_some() => {
                connecting = None;
                match res {
                    Ok(t) => {
                        // The back-off resets only once a session gets
                        // through, so a peer that accepts and hangs up at
                        // once cannot make the agent spin.
                        io = Some(t);
                        agent.connected(now_std());
                    }
                    Err(e) => {
                        tracing::debug!(error = %e, "session agent: connect failed");
                        reconnect_at = Some(Instant::now() + backoff);
                        backoff = (backoff * 2).min(opts.reconnect_max);
                    }
                }
            },
            _ = async { tokio::time::sleep_until(reconnect_at.expect("guarded")).await }, if reconnect_at.is_some() => {
                reconnect_at = None;
                connecting = Some(connect());
            },
            frame = async { io.as_mut().expect("guarded").next().await }, if io.is_some() => {
                let mut next = Some(frame);
                let mut n = 0;
                let now = now_std();
                while let Some(f) = next.take() {
                    match f {
                        Some(Ok(frame)) => {
                            if let Some(reply) = unknown_kind_reply(&frame) {
                                replies.push(reply);
                            }
                            if let Some(s) = session_of(frame) {
                                if peer.as_deref().is_none_or(|p| p == s.peer) {
                                    agent.handle_message(now, s);
                                }
                            }
                        }
                        Some(Err(e)) => {
                            tracing::debug!(error = %e, "session agent: connection failed");
                            lost(&mut io, &mut agent, &mut reconnect_at, &mut backoff, opts.reconnect_max);
                            break;
                        }
                        None => {
                            lost(&mut io, &mut agent, &mut reconnect_at, &mut backoff, opts.reconnect_max);
                            break;
                        }
                    }
                    n += 1;
                    if n < BATCH {
                        next = io.as_mut().and_then(|t| t.next().now_or_never());
                    }
                }
            },
            out = async { task.as_mut().expect("guarded").1.as_mut().await }, if task.is_some() => {
                let (id, _) = task.take().expect("guarded");
                agent.task_done(now_std(), id, out);
            },
            _ = async { tokio::time::sleep_until(timer.expect("guarded")).await }, if timer.is_some() => {
                agent.handle_timeout(now_std());
            },
        }

        // Events: start tasks, answer request waiters, journal, publish.
        // A task that finishes on its first poll is reported at once, so a
        // burst of quick tasks costs one pass and one flush.
        let mut inline = 0;
        let now = now_std();
        while let Some(ev) = agent.poll_event() {
            match ev {
                AgentEvent::RunTask {
                    task: id,
                    method,
                    payload,
                    ..
                } => {
                    let h = handler.clone();
                    let limit = opts.task_timeout;
                    let fut = async move {
                        let called =
                            std::panic::catch_unwind(AssertUnwindSafe(|| h.call(method, payload)));
                        let out = match called {
                            Ok(fut) => {
                                match tokio::time::timeout(limit, AssertUnwindSafe(fut).catch_unwind()).await {
                                    Ok(out) => out,
                                    Err(_) => {
                                        return Err(fault(
                                            "",
                                            fault_code::INTERNAL_ERROR,
                                            format!(
                                                "internal error: the rpc handler did not finish within {limit:?}"
                                            ),
                                        ))
                                    }
                                }
                            }
                            Err(p) => Err(p),
                        };
                        out.unwrap_or_else(|_| {
                            Err(fault(
                                "",
                                fault_code::INTERNAL_ERROR,
                                "internal error: the rpc handler panicked",
                            ))
                        })
                    };
                    let mut fut = fut.boxed();
                    inline += 1;
                    match if inline <= BATCH {
                        (&mut fut).now_or_never()
                    } else {
                        None
                    } {
                        Some(out) => agent.task_done(now, id, out),
                        None => task = Some((id, fut)),
                    }
                }
                AgentEvent::RequestCompleted { id, result } => {
                    if let Some(w) = requests.remove(&id) {
                        let _ = w.send(result.map_err(|f| SessionError::Fault {
                            code: f.code,
                            message: f.message,
                        }));
                    }
                }
                AgentEvent::JournalChanged => {
                    if let Some(path) = &opts.journal {
                        if let Err(e) = store_journal(path, &agent.journal()) {
                            tracing::warn!(error = %e, "session agent: journal not written");
                        }
                    }
                    let _ = events.send(AgentEvent::JournalChanged);
                }
                other => {
                    if matches!(other, AgentEvent::InformAccepted { .. }) {
                        backoff = opts.reconnect_min;
                    }
                    let _ = events.send(other);
                }
            }
        }

        // Transmit.
        let mut wrote = false;
        let mut failed = false;
        if let Some(t) = io.as_mut() {
            for r in replies.drain(..) {
                if t.feed(r).await.is_err() {
                    failed = true;
                    break;
                }
                wrote = true;
            }
            while let Some(mut m) = agent.poll_transmit() {
                if let Some(p) = &peer {
                    m.peer.clone_from(p);
                }
                if t.feed(Frame::from(Kind::Session(m))).await.is_err() {
                    failed = true;
                    break;
                }
                wrote = true;
            }
            if wrote && !failed && t.flush().await.is_err() {
                failed = true;
            }
        } else {
            // Messages produced while disconnected cannot be delivered.
            replies.clear();
            while agent.poll_transmit().is_some() {}
        }
        if failed {
            lost(
                &mut io,
                &mut agent,
                &mut reconnect_at,
                &mut backoff,
                opts.reconnect_max,
            );
        }
    }
}

fn lost(
    io: &mut Option<Box<dyn FrameIo>>,
    agent: &mut Agent,
    reconnect_at: &mut Option<Instant>,
    backoff: &mut Duration,
    max: Duration,
) {
    *io = None;
    agent.disconnected(now_std());
    *reconnect_at = Some(Instant::now() + *backoff);
    *backoff = (*backoff * 2).min(max);
}
