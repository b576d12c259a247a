//! The state every part of the client shares ([`Shared`]): the settings,
//! the registry of streams and waiting commands, the connection state and
//! the send path every call takes ([`Shared::command`], [`Shared::post`]).

use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use futures::future::BoxFuture;
use parking_lot::Mutex;
use switchboard_discovery::Secret;
use switchboard_wire::{proto, Frame, Kind};
use tokio::sync::futures::Notified;
use tokio::sync::{broadcast, oneshot, watch, Notify};
use tokio::time::Instant;

use super::events::{ClientEvent, EVENTS_CAPACITY};
use super::registry::{ConnTx, Out, Pending, Registry};
use super::reliable;
use super::request::Outlet;
use super::transport;
use super::types::ConnectionState;
use crate::ClientError;

/// Where a client finds its hub.
#[derive(Debug, Clone)]
pub(crate) enum Target {
    /// A service name, found by discovery.
    Service(String),
    /// A `host:port` address.
    Addr(String),
    /// A hub's Unix domain socket.
    Unix(std::path::PathBuf),
    /// Not a TCP address: an in-memory hub or a WebSocket endpoint.
    #[cfg_attr(not(any(feature = "hub", feature = "websocket")), allow(dead_code))]
    Dialer(transport::Dialer),
}

/// Settings of a [`Client`](crate::Client), collected by
/// [`ClientBuilder`](crate::ClientBuilder).
#[derive(Debug, Clone)]
pub(crate) struct Config {
    pub id: String,
    pub target: Target,
    pub secret: Option<Secret>,
    /// Owners of a hub's Unix socket trusted besides the client's own user
    /// and root.
    pub unix_owners: Vec<u32>,
    pub agent: String,
    pub request_timeout: Duration,
    pub connect_timeout: Duration,
    pub keepalive: Duration,
    pub reconnect: bool,
    pub backoff_min: Duration,
    pub backoff_max: Duration,
    pub max_reconnect_attempts: Option<u32>,
    pub stream_capacity: usize,
    pub send_queue: usize,
    pub reliable: bool,
    pub resume_wait: Duration,
    pub retain_frames: usize,
    pub retain_bytes: usize,
    /// TLS to the hub (built from [`TlsOptions`](crate::TlsOptions) when
    /// connecting).
    pub tls: Option<switchboard_discovery::tls::ClientTls>,
}

/// What a sending call waits for.
#[derive(Clone, Copy)]
enum Wait {
    Connection,
    Retention,
}

/// Whether a frame may be sequenced when the connection is reliable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Delivery {
    /// Sequenced and retransmitted when its kind is logged.
    Reliable,
    /// Sent with `seq = 0`, never retransmitted; fails at once while
    /// disconnected.
    AtMostOnce,
}

/// State shared by the client handles, its streams and its tasks.
pub(crate) struct Shared {
    pub cfg: Config,
    /// `None`: peer authentication over a Unix socket, no proof.
    pub secret: Option<Secret>,
    next_id: AtomicU64,
    pub state: watch::Sender<ConnectionState>,
    pub close: watch::Sender<bool>,
    pub reg: Mutex<Registry>,
    pub dropped: AtomicU64,
    /// Highest hub → client sequence number taken (the reader of the
    /// current connection updates it).
    pub in_last: AtomicU64,
    /// Highest hub epoch seen.
    pub max_epoch: AtomicU64,
    /// Woken when the connection changes, the resume window ends, the
    /// client closes or acknowledgements free retention space.
    pub wake: Notify,
    /// [`ClientEvent`]s for [`Client::events`](crate::Client::events):
    /// made by the first call (a channel holds [`EVENTS_CAPACITY`] slots,
    /// tens of KiB, which a client nobody watches should not pay for);
    /// until then an event has no reader and goes nowhere, as it would
    /// with a channel and no receiver.
    events: OnceLock<broadcast::Sender<ClientEvent>>,
    /// Held while a `Listen` is computed and queued, so they leave in the
    /// order of the changes they report.
    pub listen_lock: tokio::sync::Mutex<()>,
    /// Held while the presence watch is started or stopped at the hub, so
    /// a stop decided for the last watcher never overtakes the start of a
    /// new one.
    pub presence_lock: tokio::sync::Mutex<()>,
    /// The reader waits for room in a full stream (the hub is not silent,
    /// the application is slow).
    pub reader_blocked: std::sync::atomic::AtomicBool,
}

impl Shared {
    /// The state of a client about to connect with `cfg`, proving `secret`
    /// (none: peer authentication over a Unix socket).
    pub fn new(cfg: Config, secret: Option<Secret>) -> Arc<Shared> {
        let out = reliable::Outbound::new(cfg.retain_frames, cfg.retain_bytes);
        Arc::new(Shared {
            cfg,
            secret,
            next_id: AtomicU64::new(1),
            state: watch::channel(ConnectionState::Connecting).0,
            close: watch::channel(false).0,
            reg: Mutex::new(Registry {
                out,
                ..Registry::default()
            }),
            dropped: AtomicU64::new(0),
            in_last: AtomicU64::new(0),
            max_epoch: AtomicU64::new(0),
            wake: Notify::new(),
            events: OnceLock::new(),
            listen_lock: tokio::sync::Mutex::new(()),
            presence_lock: tokio::sync::Mutex::new(()),
            reader_blocked: std::sync::atomic::AtomicBool::new(false),
        })
    }

    /// A fresh correlation, subscription or watch id.
    pub fn next_id(&self) -> u64 {
        self.next_id.fetch_add(1, Ordering::Relaxed)
    }

    /// Why a call cannot go out now: the client closed, another
    /// connection took over its id, or it is not connected.
    pub fn down_error(&self) -> ClientError {
        if *self.close.borrow() {
            ClientError::Closed
        } else if let ConnectionState::Closed { reason } = &*self.state.borrow() {
            if reason.contains("took over") {
                ClientError::TakenOver(self.cfg.id.clone())
            } else {
                ClientError::Closed
            }
        } else {
            ClientError::Disconnected
        }
    }

    fn check_size(len: usize, conn: &ConnTx) -> Result<(), ClientError> {
        if len > conn.max_frame {
            return Err(ClientError::InvalidArgument(format!(
                "message of {len} bytes exceeds the hub's limit of {} bytes; send a smaller payload",
                conn.max_frame
            )));
        }
        Ok(())
    }

    /// Queues `frame` on the current connection, numbering and keeping it
    /// when the connection is reliable, its kind is logged and `delivery`
    /// allows it; registers `waiter` for its answer in the same step.
    ///
    /// Waits (until `deadline`; `None`: the request timeout from the
    /// first wait, so the common path reads no clock) for room in the
    /// send queue, for room in the
    /// retention buffer, and, within the resume window of a lost reliable
    /// connection, for the next connection.
    async fn enqueue(
        &self,
        mut frame: Frame,
        mut waiter: Option<(u64, oneshot::Sender<Frame>)>,
        delivery: Delivery,
        deadline: Option<Instant>,
    ) -> Result<(), ClientError> {
        let len = switchboard_wire::frame_len(&frame);
        let logged = delivery == Delivery::Reliable
            && frame.kind.as_ref().is_some_and(reliable::logged_kind);
        // Armed (registered with `wake`) before the conditions are checked
        // again, so no wake-up between check and wait is lost; only made
        // when a wait is needed, so the common path costs no registration.
        let mut woken: Option<Pin<Box<Notified<'_>>>> = None;
        // The common case: connected with room in the send queue. One lock,
        // no timer and no clone of the connection's sender.
        {
            let mut reg = self.reg.lock();
            if let Some(conn) = &reg.conn {
                Self::check_size(len, conn)?;
                if let Some(sequenced) = reg.queue_now(&mut frame, len, logged) {
                    // Under the same lock: the reader cannot see the answer
                    // before the waiter is registered.
                    if let Some((id, tx)) = waiter.take() {
                        reg.pending.insert(id, Pending { tx, sequenced });
                    }
                    return Ok(());
                }
            }
        }
        let deadline = deadline.unwrap_or_else(|| Instant::now() + self.cfg.request_timeout);
        loop {
            let found = {
                let reg = self.reg.lock();
                match &reg.conn {
                    Some(c) => Ok(c.clone()),
                    None if reg.holding
                        && delivery == Delivery::Reliable
                        && !*self.close.borrow() =>
                    {
                        Err(None)
                    }
                    None => Err(Some(self.down_error())),
                }
            };
            let why = match found {
                Ok(conn) => {
                    Self::check_size(len, &conn)?;
                    let reserved = tokio::time::timeout_at(deadline, conn.tx.reserve()).await;
                    match reserved {
                        Ok(Ok(permit)) => {
                            let mut reg = self.reg.lock();
                            if reg.conn.as_ref().map(|c| c.generation) != Some(conn.generation) {
                                // Reconnected meanwhile: start over on the
                                // new connection.
                                continue;
                            }
                            let sequenced = logged && conn.reliable;
                            if !sequenced || reg.out.has_room(len) {
                                if sequenced {
                                    reg.out.push(&mut frame, len);
                                }
                                if let Some((id, tx)) = waiter.take() {
                                    reg.pending.insert(id, Pending { tx, sequenced });
                                }
                                permit.send(Out::Frame(frame));
                                return Ok(());
                            }
                            Wait::Retention
                        }
                        // The connection's writer is gone; wait until the
                        // supervisor has noticed.
                        Ok(Err(_)) => Wait::Connection,
                        Err(_) => {
                            return Err(ClientError::Timeout(
                                "the send queue stayed full; the hub is not reading".to_string(),
                            ))
                        }
                    }
                }
                Err(Some(e)) => return Err(e),
                // Within the resume window: wait for the next connection.
                Err(None) => Wait::Connection,
            };
            match woken.take() {
                None => {
                    let mut armed = Box::pin(self.wake.notified());
                    armed.as_mut().enable();
                    woken = Some(armed);
                }
                Some(armed) => {
                    if tokio::time::timeout_at(deadline, armed).await.is_err() {
                        return Err(match why {
                            Wait::Connection => ClientError::Disconnected,
                            Wait::Retention => ClientError::Timeout(format!(
                                "the retention buffer stayed full ({} frames or {} bytes \
                                 not acknowledged by the hub)",
                                self.cfg.retain_frames, self.cfg.retain_bytes
                            )),
                        });
                    }
                }
            }
        }
    }

    /// Queues a frame that expects no answer, sequenced when reliable
    /// (waits as [`enqueue`](Self::enqueue), up to the request timeout).
    pub async fn post(&self, frame: Frame) -> Result<(), ClientError> {
        self.enqueue(frame, None, Delivery::Reliable, None).await
    }

    /// Queues a frame at most once: never sequenced, fails at once while
    /// disconnected.
    pub async fn post_at_most_once(&self, frame: Frame) -> Result<(), ClientError> {
        self.enqueue(frame, None, Delivery::AtMostOnce, None).await
    }

    /// [`post_at_most_once`](Self::post_at_most_once) of the frame `make`
    /// builds. In the common case (connected, room in the send queue) the
    /// frame is built under the lock, straight into the queue: nothing is
    /// moved through this call's future, and no clock is read.
    pub async fn post_at_most_once_with(
        &self,
        make: impl FnOnce() -> Frame,
    ) -> Result<(), ClientError> {
        {
            let reg = self.reg.lock();
            if let Some(conn) = &reg.conn {
                if let Ok(permit) = conn.tx.try_reserve() {
                    let frame = make();
                    Self::check_size(switchboard_wire::frame_len(&frame), conn)?;
                    permit.send(Out::Frame(frame));
                    return Ok(());
                }
            }
        }
        self.post_at_most_once(make()).await
    }

    /// [`post_at_most_once`](Self::post_at_most_once) of a publish of
    /// `payload` to `topic` without headers. In the common case (connected,
    /// room in the send queue, a topic of at most [`INLINE_TOPIC`] bytes)
    /// it is queued as its parts ([`Out::Publish`]): no `proto::Publish`
    /// is built, nothing is allocated, and the writer encodes it by hand.
    ///
    /// [`INLINE_TOPIC`]: super::registry::INLINE_TOPIC
    pub async fn publish_at_most_once(
        &self,
        topic: &str,
        payload: bytes::Bytes,
    ) -> Result<(), ClientError> {
        let payload_len = payload.len();
        let payload = match Out::publish(topic, payload) {
            Ok(out) => {
                {
                    let reg = self.reg.lock();
                    if let Some(conn) = &reg.conn {
                        if let Ok(permit) = conn.tx.try_reserve() {
                            // The keys and lengths of a publish without id,
                            // numbering or reply-to take under 32 bytes:
                            // only one near the limit is measured.
                            if topic.len() + payload_len + 32 > conn.max_frame {
                                let len = out.hand(0).map_or(0, |h| h.encoded_len());
                                Self::check_size(len, conn)?;
                            }
                            permit.send(out);
                            return Ok(());
                        }
                    }
                }
                match out {
                    Out::Publish { payload, .. } => payload,
                    Out::Frame(frame) => return self.post_at_most_once(frame).await,
                }
            }
            Err(payload) => payload,
        };
        self.post_at_most_once(Frame::publish(topic, payload)).await
    }

    /// Queues a frame that must not be lost for want of room (unregistering
    /// a dropped stream): at once when possible, else from a task that
    /// waits as [`post`](Self::post) does. Needs a tokio runtime for the
    /// second case; without one the frame is dropped (the client is being
    /// torn down).
    pub fn post_detached(self: &Arc<Self>, frame: Frame) {
        if let Some(frame) = self.try_post(frame) {
            if let Ok(rt) = tokio::runtime::Handle::try_current() {
                let shared = self.clone();
                rt.spawn(async move {
                    let _ = shared.post(frame).await;
                });
            }
        }
    }

    /// [`post_now`](Self::post_now), giving the frame back when the send
    /// queue or the retention buffer has no room.
    fn try_post(&self, mut frame: Frame) -> Option<Frame> {
        let len = switchboard_wire::frame_len(&frame);
        let logged = frame.kind.as_ref().is_some_and(reliable::logged_kind);
        let mut reg = self.reg.lock();
        match &reg.conn {
            Some(conn) if len > conn.max_frame => None,
            Some(_) => reg
                .queue_now(&mut frame, len, logged)
                .is_none()
                .then_some(frame),
            None if logged && reg.resumable && reg.out.has_room(len) => {
                reg.out.push(&mut frame, len);
                None
            }
            // A fresh session restores state from the registry instead.
            None => (logged && reg.resumable).then_some(frame),
        }
    }

    /// Reports `event` to every [`Events`](crate::Events) stream.
    pub fn emit(&self, event: ClientEvent) {
        if let Some(events) = self.events.get() {
            let _ = events.send(event);
        }
    }

    /// A new receiver of every event from now on.
    pub fn subscribe_events(&self) -> broadcast::Receiver<ClientEvent> {
        self.events
            .get_or_init(|| broadcast::channel(EVENTS_CAPACITY).0)
            .subscribe()
    }

    /// Tells the hub what this client takes now (`Listen`), if the hub
    /// supports it, and waits for its `Ok`. Concurrent calls are queued in
    /// the order of the changes they report.
    pub async fn sync_listen(self: &Arc<Self>) -> Result<(), ClientError> {
        let _order = self.listen_lock.lock().await;
        let (messages, requests, supported) = {
            let reg = self.reg.lock();
            (
                reg.messages.is_some(),
                reg.requests.is_some(),
                reg.conn.as_ref().is_none_or(|c| c.listen),
            )
        };
        if !supported {
            return Ok(());
        }
        self.command_ok(|id| {
            proto::Listen {
                id,
                messages,
                requests,
            }
            .into()
        })
        .await
    }

    /// [`sync_listen`](Self::sync_listen) from a task (for `Drop`).
    pub fn sync_listen_detached(self: &Arc<Self>) {
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            let shared = self.clone();
            rt.spawn(async move {
                let _ = shared.sync_listen().await;
            });
        }
    }

    /// The hub acknowledged every sequenced frame up to `up_to`.
    pub fn acknowledged(&self, up_to: u64) {
        let freed = self.reg.lock().out.ack(up_to);
        if freed > 0 {
            self.wake.notify_waiters();
        }
    }

    /// Sends the command built by `make` with a fresh correlation id and
    /// waits for its answer, turning `Error` answers into typed errors.
    pub async fn command(
        self: &Arc<Self>,
        timeout: Duration,
        make: impl FnOnce(u64) -> Frame,
    ) -> Result<Frame, ClientError> {
        let deadline = Instant::now() + timeout;
        let id = self.next_id();
        let frame = make(id);
        let cancel = matches!(frame.kind, Some(Kind::Request(_)));
        let (tx, rx) = oneshot::channel();
        self.enqueue(frame, Some((id, tx)), Delivery::Reliable, Some(deadline))
            .await?;
        // From here the command is on its way: a caller that stops waiting
        // (a dropped future) forgets it, and a request is cancelled at the
        // hub so it leaves nothing behind there.
        let guard = Waiting {
            shared: self,
            id,
            cancel,
        };
        let answer = tokio::time::timeout_at(deadline, rx).await;
        std::mem::forget(guard);
        let answer = match answer {
            Ok(Ok(frame)) => frame,
            Ok(Err(_)) => return Err(self.down_error()),
            Err(_) => {
                self.reg.lock().pending.remove(&id);
                return Err(ClientError::Timeout(format!(
                    "no answer from the hub within {} ms",
                    timeout.as_millis()
                )));
            }
        };
        match answer.kind {
            Some(Kind::Error(e)) => Err(ClientError::from_hub(e.code, e.message)),
            kind => Ok(Frame {
                seq: 0,
                acked: 0,
                kind,
            }),
        }
    }

    /// [`command`](Self::command) expecting a plain `Ok`.
    pub async fn command_ok(
        self: &Arc<Self>,
        make: impl FnOnce(u64) -> Frame,
    ) -> Result<(), ClientError> {
        match self.command(self.cfg.request_timeout, make).await?.kind {
            Some(Kind::Ok(_)) => Ok(()),
            other => Err(unexpected("ok", other)),
        }
    }
}

/// A command's answer being waited for; dropped early (the caller's future
/// was dropped), it forgets the command and cancels a request at the hub.
struct Waiting<'a> {
    shared: &'a Arc<Shared>,
    id: u64,
    cancel: bool,
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        let waiting = self.shared.reg.lock().pending.remove(&self.id).is_some();
        if waiting && self.cancel {
            self.shared
                .post_detached(proto::Cancel { id: self.id }.into());
        }
    }
}

/// The error for an answer of another kind than `wanted`.
pub(crate) fn unexpected(wanted: &str, got: Option<Kind>) -> ClientError {
    let got = Frame {
        seq: 0,
        acked: 0,
        kind: got,
    };
    ClientError::Protocol(format!(
        "expected {wanted} but the hub answered {}",
        got.kind_name()
    ))
}

/// Requests are answered through the client's send path.
impl Outlet for Shared {
    fn answer(&self, frame: Frame) -> BoxFuture<'_, Result<(), ClientError>> {
        Box::pin(self.post(frame))
    }

    fn answer_detached(self: Arc<Self>, frame: Frame) {
        self.post_detached(frame);
    }
}
