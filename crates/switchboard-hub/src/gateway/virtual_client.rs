//! HTTP clients as virtual connections: registered with the router like a
//! TCP connection (own [`Outbox`], transport `"http"`), with a pump task
//! that hands the router's answers to waiting calls and everything else to
//! a bounded mailbox that long polls drain.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::http::{header, HeaderMap, StatusCode};
use parking_lot::Mutex;
use serde_json::Value;
use switchboard_wire::proto::{self, frame::Kind};
use switchboard_wire::{ErrorCode, Frame, FrameExt};
use tokio::sync::{oneshot, Notify, OnceCell};
use tokio_util::sync::CancellationToken;

use super::api::ApiError;
use super::mailbox::Mailbox;
use super::{Gateway, HttpConfig, ANSWER_TIMEOUT};
use crate::metrics::Via;
use crate::outbox::{Outbox, Taken};
use crate::router::admission::Identity;
use crate::router::Input;
use crate::transport::{drain, Drain};
use crate::ConnId;
use switchboard_wire::validate_client_id;

/// Requests received by one HTTP client whose sender is remembered for a
/// reply without `to`.
const MAX_REMEMBERED_REQUESTS: usize = 10_000;

/// How often idle HTTP clients are looked for.
const REAP_EVERY: Duration = Duration::from_millis(500);

/// One HTTP client: a virtual connection.
pub(super) struct HttpClient {
    /// Its client id.
    pub(super) id: String,
    /// Who registered it (the bearer token's identity); only the same
    /// principal may act as it.
    identity: Identity,
    conn: ConnId,
    outbox: Arc<Outbox>,
    registered: OnceCell<Result<(), ApiError>>,
    welcome: Mutex<Option<oneshot::Sender<Result<(), ApiError>>>>,
    state: Mutex<ClientState>,
    notify: Notify,
    gone: CancellationToken,
    polls: AtomicUsize,
    next_id: AtomicU64,
    last_active: Mutex<Instant>,
}

#[derive(Default)]
struct ClientState {
    mailbox: Mailbox,
    waiters: HashMap<u64, oneshot::Sender<Frame>>,
    /// Request id → requester, for replies that do not name `to`; `None`
    /// when requests from more than one requester carry the id (ids are
    /// per connection), so such a reply must name `to`.
    requests: HashMap<u64, Option<String>>,
}

impl Gateway {
    /// The registered HTTP client `id`, registering it first if needed.
    pub(super) async fn client(
        self: &Arc<Self>,
        id: &str,
        peer: SocketAddr,
        headers: &HeaderMap,
        identity: Identity,
    ) -> Result<Arc<HttpClient>, ApiError> {
        validate_client_id(id).map_err(ApiError::bad)?;
        let client = {
            let mut map = self.clients.lock();
            match map.get(id) {
                Some(c) if !c.gone.is_cancelled() => {
                    check_holder(c, &identity)?;
                    c.clone()
                }
                _ => {
                    let conn = self.shared.alloc_conn();
                    let c = Arc::new(HttpClient {
                        id: id.to_owned(),
                        identity,
                        conn,
                        outbox: Outbox::gated(conn, self.shared.gate.clone()),
                        registered: OnceCell::new(),
                        welcome: Mutex::new(None),
                        state: Mutex::new(ClientState::default()),
                        notify: Notify::new(),
                        gone: CancellationToken::new(),
                        polls: AtomicUsize::new(0),
                        next_id: AtomicU64::new(1),
                        last_active: Mutex::new(Instant::now()),
                    });
                    map.insert(id.to_owned(), c.clone());
                    c
                }
            }
        };
        let registered = client
            .registered
            .get_or_init(|| {
                let agent: String = headers
                    .get(header::USER_AGENT)
                    .and_then(|h| h.to_str().ok())
                    .unwrap_or("http")
                    .chars()
                    .take(256)
                    .collect();
                self.register(client.clone(), peer, agent)
            })
            .await
            .clone();
        registered?;
        client.touch();
        Ok(client)
    }

    /// Registers a new HTTP client with the router, like a TCP connection
    /// that finished its handshake.
    async fn register(
        self: &Arc<Self>,
        client: Arc<HttpClient>,
        peer: SocketAddr,
        agent: String,
    ) -> Result<(), ApiError> {
        let (tx, rx) = oneshot::channel();
        *client.welcome.lock() = Some(tx);
        self.shared.stats.track(&client.outbox);
        let info = proto::ClientInfo {
            client_id: client.id.clone(),
            transport: "http".into(),
            addr: peer.to_string(),
            connected_at_ms: switchboard_discovery::now_ms(),
            agent,
            // HTTP clients take every kind of message, always.
            reliable: false,
            listen: false,
            principal: client.identity.principal.clone(),
            uid: client.identity.uid,
        };
        let connect = Input::Connect {
            conn: client.conn,
            info,
            outbox: client.outbox.clone(),
        };
        tokio::spawn(pump(self.clone(), client.clone()));
        if self.shared.inbox.send(connect).await.is_err() {
            client.outbox.kill(None);
            return Err(ApiError::shutting_down());
        }
        match tokio::time::timeout(ANSWER_TIMEOUT, rx).await {
            Ok(Ok(r)) => r,
            _ => Err(ApiError::shutting_down()),
        }
    }

    /// Deregisters HTTP client `id` (presence reason `left`); false when no
    /// such client is registered.
    pub(super) async fn leave(&self, id: &str, identity: &Identity) -> Result<bool, ApiError> {
        let found = self.clients.lock().get(id).cloned();
        match found {
            Some(c) => {
                check_holder(&c, identity)?;
                deregister(self, &c, "left").await;
                Ok(true)
            }
            None => Ok(false),
        }
    }

    /// Whether `identity` may see the client list, the status, the
    /// metrics and the live feed: what a `ListClients` needs.
    pub(super) fn may_list(&self, identity: &Identity) -> Result<(), ApiError> {
        let Some(admission) = &self.shared.admission else {
            return Ok(());
        };
        let caller = proto::ClientInfo {
            transport: "http".into(),
            principal: identity.principal.clone(),
            uid: identity.uid,
            ..Default::default()
        };
        admission
            .admit((&caller).into(), &Frame::from(proto::ListClients { id: 0 }))
            .map_err(|r| ApiError::new(StatusCode::FORBIDDEN, "forbidden", r.message))
    }
}

/// `403` unless `identity` is the principal that registered `client`: an
/// HTTP client id is not taken over across principals.
fn check_holder(client: &HttpClient, identity: &Identity) -> Result<(), ApiError> {
    if client.identity.principal == identity.principal {
        return Ok(());
    }
    Err(ApiError::new(
        StatusCode::FORBIDDEN,
        "forbidden",
        format!(
            "client id '{}' is held by another principal; choose another id",
            client.id
        ),
    ))
}

impl HttpClient {
    fn touch(&self) {
        *self.last_active.lock() = Instant::now();
    }

    /// A fresh correlation id for a frame this client sends.
    pub(super) fn next_id(&self) -> u64 {
        self.next_id.fetch_add(1, Ordering::Relaxed)
    }

    /// Hands a frame from the router to a waiting call or to the mailbox;
    /// says why when the client must go as a slow consumer.
    fn dispatch(&self, frame: Frame, cfg: &HttpConfig) -> Option<&'static str> {
        match &frame.kind {
            Some(Kind::Welcome(_)) => {
                if let Some(tx) = self.welcome.lock().take() {
                    let _ = tx.send(Ok(()));
                }
                return None;
            }
            Some(Kind::Goodbye(_)) | Some(Kind::Pong(_)) => return None,
            Some(Kind::Flow(f)) => {
                self.state.lock().mailbox.count_dropped(f.dropped);
                self.notify.notify_waiters();
                return None;
            }
            Some(Kind::Error(e)) if e.id == 0 => {
                if let Some(tx) = self.welcome.lock().take() {
                    let _ = tx.send(Err(ApiError::from_frame(e)));
                    return None;
                }
            }
            Some(
                Kind::Ok(_)
                | Kind::Error(_)
                | Kind::Reply(_)
                | Kind::KvValue(_)
                | Kind::ClientList(_)
                | Kind::Status(_),
            ) => {
                let id = frame.correlation_id();
                let waiter = self.state.lock().waiters.remove(&id);
                match waiter {
                    Some(tx) => {
                        let _ = tx.send(frame);
                        return None;
                    }
                    // A late answer to an abandoned call; an error still
                    // interests the client (e.g. QUEUE_FULL for a message).
                    None if matches!(frame.kind, Some(Kind::Error(_))) => {}
                    None => return None,
                }
            }
            _ => {}
        }
        let mut st = self.state.lock();
        if let Some(Kind::Request(r)) = &frame.kind {
            let room = st.requests.len() < MAX_REMEMBERED_REQUESTS;
            match st.requests.entry(r.id) {
                std::collections::hash_map::Entry::Occupied(mut e) => {
                    if e.get().as_deref() != Some(r.from.as_str()) {
                        e.insert(None);
                    }
                }
                std::collections::hash_map::Entry::Vacant(e) => {
                    if room {
                        e.insert(Some(r.from.clone()));
                    }
                }
            }
        }
        if let Err(why) = st.mailbox.push(frame, cfg) {
            return Some(why);
        }
        drop(st);
        self.notify.notify_waiters();
        None
    }

    /// The requester a reply to request `id` goes to, for a reply naming
    /// `to` or not: nothing remembered, the requester, or `None` when
    /// several requesters used the id. An answered request is forgotten.
    pub(super) fn answering(&self, id: u64, to: Option<&str>) -> Option<Option<String>> {
        let mut st = self.state.lock();
        match (to, st.requests.get(&id)) {
            // Answered: forget it. An ambiguous id stays so until the
            // remembered set is dropped with the client.
            (None, Some(Some(_))) => st.requests.remove(&id),
            (Some(to), Some(Some(known))) if to == known => st.requests.remove(&id),
            (_, known) => known.cloned(),
        }
    }

    /// Sends `frame` (correlation id `id`) to the router and waits up to
    /// `wait` for its answer; an `Error` answer becomes an [`ApiError`].
    pub(super) async fn ask(
        &self,
        gw: &Gateway,
        id: u64,
        frame: Frame,
        wait: Duration,
    ) -> Result<Frame, ApiError> {
        let (tx, rx) = oneshot::channel();
        self.state.lock().waiters.insert(id, tx);
        let len = {
            use prost::Message;
            frame.encoded_len()
        };
        gw.shared.stats.metrics.frame_in(Via::Http, &frame, len);
        gw.shared
            .stats
            .bytes_in
            .fetch_add(len as u64, Ordering::Relaxed);
        let input = Input::Frames {
            conn: self.conn,
            frames: vec![frame],
        };
        if gw.shared.inbox.send(input).await.is_err() {
            return Err(ApiError::shutting_down());
        }
        let answer = tokio::select! {
            r = tokio::time::timeout(wait, rx) => r,
            _ = self.gone.cancelled() => return Err(ApiError::gone()),
        };
        match answer {
            Ok(Ok(frame)) => match frame.kind {
                Some(Kind::Error(e)) => Err(ApiError::from_frame(&e)),
                _ => Ok(frame),
            },
            Ok(Err(_)) => Err(ApiError::gone()),
            Err(_) => {
                self.state.lock().waiters.remove(&id);
                Err(ApiError::new(
                    StatusCode::GATEWAY_TIMEOUT,
                    "timeout",
                    "the hub did not answer in time; retry",
                ))
            }
        }
    }

    /// Hands `frames` to the router without waiting for an answer.
    pub(super) async fn post(&self, gw: &Gateway, frames: Vec<Frame>) -> Result<(), ApiError> {
        for f in &frames {
            use prost::Message;
            gw.shared
                .stats
                .metrics
                .frame_in(Via::Http, f, f.encoded_len());
        }
        let input = Input::Frames {
            conn: self.conn,
            frames,
        };
        if gw.shared.inbox.send(input).await.is_err() {
            return Err(ApiError::shutting_down());
        }
        Ok(())
    }

    /// A long poll: holds a poll slot and returns waiting messages (see
    /// [`Mailbox::take`]) as soon as there are any, or an empty answer after
    /// `wait`.
    pub(super) async fn listen(
        self: &Arc<Self>,
        gw: &Arc<Gateway>,
        ack: Option<u64>,
        wait: Duration,
        max: usize,
    ) -> Result<Value, ApiError> {
        let _slot = PollSlot::take(gw, self)?;
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let notified = self.notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let delay = &gw.shared.stats.metrics.http_mailbox_delay;
            if let Some(v) = self.state.lock().mailbox.take(ack, max, false, delay) {
                return Ok(v);
            }
            tokio::select! {
                _ = notified => {}
                _ = tokio::time::sleep_until(deadline) => break,
                _ = self.gone.cancelled() => return Err(ApiError::gone()),
                _ = gw.shared.shutdown.cancelled() => break,
            }
        }
        self.touch();
        // Checked once more under the same lock that fixes `ack`, so a
        // message arriving at the timeout is returned, never acknowledged
        // unseen.
        let delay = &gw.shared.stats.metrics.http_mailbox_delay;
        let v = self.state.lock().mailbox.take(ack, max, true, delay);
        Ok(v.unwrap_or(Value::Null))
    }
}

/// Moves what the router queues for an HTTP client to its waiting calls
/// and its mailbox, until the router closes the outbox; then ends the
/// client's calls and polls and forgets it.
async fn pump(gw: Arc<Gateway>, client: Arc<HttpClient>) {
    let batch_bytes = gw.shared.limits.write_batch_bytes;
    let mut pump = Pump {
        gw: &gw,
        client: &client,
    };
    drain(
        &client.outbox,
        batch_bytes,
        &gw.shared.inbox,
        &mut pump,
        None,
    )
    .await;
    client.gone.cancel();
    if let Some(tx) = client.welcome.lock().take() {
        let _ = tx.send(Err(ApiError::shutting_down()));
    }
    // Calls still waiting get `gone` when their senders drop here.
    client.state.lock().waiters.clear();
    client.notify.notify_waiters();
    gw.shared.stats.untrack(client.conn);
    let mut map = gw.clients.lock();
    if map.get(&client.id).is_some_and(|c| c.conn == client.conn) {
        map.remove(&client.id);
    }
}

/// An HTTP client's consumer of its outbox.
struct Pump<'a> {
    gw: &'a Gateway,
    client: &'a HttpClient,
}

impl Drain for Pump<'_> {
    async fn batch(&mut self, taken: &mut Taken) -> bool {
        let (gw, client) = (self.gw, self.client);
        if taken.dropped > 0 {
            client.state.lock().mailbox.count_dropped(taken.dropped);
            client.notify.notify_waiters();
        }
        let mut slow = None;
        for out in taken.frames.drain(..) {
            let len = out.encoded_len();
            let frame = out.into_frame();
            gw.shared
                .stats
                .metrics
                .frame_out(Via::Http, frame.kind_name(), len);
            gw.shared.stats.msgs_out.fetch_add(1, Ordering::Relaxed);
            gw.shared
                .stats
                .bytes_out
                .fetch_add(len as u64, Ordering::Relaxed);
            if slow.is_none() {
                slow = client.dispatch(frame, &gw.cfg);
            }
        }
        if let Some(why) = slow {
            tracing::info!(client = %client.id, "http client disconnected: {why}");
            let notice = Frame::goodbye(ErrorCode::SlowConsumer, why);
            let _ = gw
                .shared
                .inbox
                .send(Input::Disconnected {
                    conn: client.conn,
                    notice: Some(notice),
                    reason: format!("slow consumer: {why}"),
                })
                .await;
        }
        true
    }

    fn sampled(&mut self, queued: std::time::Instant) {
        self.gw
            .shared
            .stats
            .metrics
            .observe_delivery_delay(Via::Http, queued.elapsed());
    }
}

/// Deregisters HTTP clients with no poll held and no call for the idle
/// timeout; for clients that hold a poll, sends the router a `Ping` every
/// half keepalive interval, so a client that only waits (and sends no
/// frame) is not taken for a vanished one.
pub(super) async fn reap_idle(gw: Arc<Gateway>) {
    let ping_every = gw.shared.keepalive.map(|k| k / 2);
    let every = REAP_EVERY
        .min(gw.cfg.idle_timeout)
        .min(ping_every.unwrap_or(REAP_EVERY))
        .max(Duration::from_millis(1));
    let mut tick = tokio::time::interval(every);
    let mut pinged = Instant::now();
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = gw.shared.shutdown.cancelled() => return,
        }
        if ping_every.is_some_and(|every| pinged.elapsed() >= every) {
            pinged = Instant::now();
            let waiting: Vec<ConnId> = gw
                .clients
                .lock()
                .values()
                .filter(|c| c.polls.load(Ordering::Relaxed) > 0 && !c.gone.is_cancelled())
                .map(|c| c.conn)
                .collect();
            for conn in waiting {
                let ping = Frame::from(proto::Ping { nonce: 0 });
                let input = Input::Frames {
                    conn,
                    frames: vec![ping],
                };
                if gw.shared.inbox.send(input).await.is_err() {
                    return;
                }
            }
        }
        let idle: Vec<Arc<HttpClient>> = gw
            .clients
            .lock()
            .values()
            .filter(|c| {
                c.polls.load(Ordering::Relaxed) == 0
                    && c.last_active.lock().elapsed() > gw.cfg.idle_timeout
                    && !c.gone.is_cancelled()
            })
            .cloned()
            .collect();
        for c in idle {
            tracing::debug!(client = %c.id, "http client idle; deregistering");
            deregister(&gw, &c, "idle").await;
        }
    }
}

async fn deregister(gw: &Gateway, c: &HttpClient, reason: &str) {
    let sent = gw
        .shared
        .inbox
        .send(Input::Disconnected {
            conn: c.conn,
            notice: None,
            reason: reason.to_owned(),
        })
        .await;
    if sent.is_err() {
        c.outbox.kill(None);
    }
    c.gone.cancel();
}

/// A held poll; released when the poll ends or is abandoned.
struct PollSlot {
    gw: Arc<Gateway>,
    client: Arc<HttpClient>,
}

impl PollSlot {
    fn take(gw: &Arc<Gateway>, client: &Arc<HttpClient>) -> Result<PollSlot, ApiError> {
        let mine = client.polls.fetch_add(1, Ordering::AcqRel) + 1;
        let all = gw.polls.fetch_add(1, Ordering::AcqRel) + 1;
        let slot = PollSlot {
            gw: gw.clone(),
            client: client.clone(),
        };
        gw.shared
            .stats
            .metrics
            .http_polls_held
            .fetch_add(1, Ordering::Relaxed);
        if mine > gw.cfg.max_polls_per_client {
            return Err(ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "too_many_polls",
                format!(
                    "client '{}' already holds {} polls; wait for one to return",
                    client.id, gw.cfg.max_polls_per_client
                ),
            ));
        }
        if all > gw.cfg.max_polls {
            return Err(ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "too_many_polls",
                "the gateway holds as many polls as it allows; retry shortly",
            ));
        }
        Ok(slot)
    }
}

impl Drop for PollSlot {
    fn drop(&mut self) {
        self.client.polls.fetch_sub(1, Ordering::AcqRel);
        self.gw.polls.fetch_sub(1, Ordering::AcqRel);
        self.gw
            .shared
            .stats
            .metrics
            .http_polls_held
            .fetch_sub(1, Ordering::Relaxed);
        self.client.touch();
    }
}
