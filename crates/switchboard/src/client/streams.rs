//! Incoming streams: subscriptions, messages, requests, presence.

use std::pin::Pin;
use std::sync::{Arc, Weak};
use std::task::{Context, Poll};

use bytes::Bytes;
use futures::{FutureExt, Stream};
use switchboard_wire::{proto, Frame, Kind};
use tokio::sync::{mpsc, Semaphore};

use super::types::{ClientInfo, Message, PresenceEvent};
use super::{unexpected, Shared, SubEntry};
use crate::ClientError;

/// Messages published to topics matching a pattern; a
/// [`Stream`] of [`Message`]. Dropping it unsubscribes.
pub struct Subscription {
    shared: Arc<Shared>,
    sub_id: u64,
    pattern: String,
    rx: mpsc::Receiver<Message>,
    active: bool,
}

impl std::fmt::Debug for Subscription {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Subscription")
            .field("sub_id", &self.sub_id)
            .field("pattern", &self.pattern)
            .finish()
    }
}

impl Subscription {
    pub(crate) async fn start(
        shared: Arc<Shared>,
        pattern: &str,
        group: &str,
    ) -> Result<Subscription, ClientError> {
        let sub_id = shared.next_id();
        let (tx, rx) = mpsc::channel(shared.cfg.stream_capacity);
        shared.reg.lock().subs.insert(
            sub_id,
            SubEntry {
                pattern: pattern.to_string(),
                group: group.to_string(),
                tx,
            },
        );
        let result = shared
            .command_ok(|id| {
                proto::Subscribe {
                    id,
                    sub_id,
                    pattern: pattern.to_string(),
                    queue_group: group.to_string(),
                    ..Default::default()
                }
                .into()
            })
            .await;
        if let Err(e) = result {
            shared.reg.lock().subs.remove(&sub_id);
            return Err(e);
        }
        Ok(Subscription {
            shared,
            sub_id,
            pattern: pattern.to_string(),
            rx,
            active: true,
        })
    }

    /// The pattern subscribed to.
    pub fn pattern(&self) -> &str {
        &self.pattern
    }

    /// Receives the next message; `None` once the client is closed.
    pub async fn recv(&mut self) -> Option<Message> {
        self.rx.recv().await
    }

    /// Unsubscribes and waits for the hub's confirmation.
    pub async fn unsubscribe(mut self) -> Result<(), ClientError> {
        self.active = false;
        self.shared.reg.lock().subs.remove(&self.sub_id);
        let sub_id = self.sub_id;
        self.shared
            .command_ok(|id| proto::Unsubscribe { id, sub_id }.into())
            .await
    }
}

impl Stream for Subscription {
    type Item = Message;
    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Message>> {
        self.rx.poll_recv(cx)
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        if self.active {
            let removed = self.shared.reg.lock().subs.remove(&self.sub_id).is_some();
            if removed {
                let id = self.shared.next_id();
                self.shared.post_now(
                    proto::Unsubscribe {
                        id,
                        sub_id: self.sub_id,
                    }
                    .into(),
                );
            }
        }
    }
}

/// Incoming direct and broadcast messages; a [`Stream`] of [`Message`].
#[derive(Debug)]
pub struct Messages {
    rx: mpsc::Receiver<Message>,
}

impl Messages {
    pub(crate) fn start(shared: &Shared) -> Messages {
        let (tx, rx) = mpsc::channel(shared.cfg.stream_capacity);
        shared.reg.lock().messages = Some(tx);
        Messages { rx }
    }

    /// Receives the next message; `None` once the stream was replaced or
    /// the client closed.
    pub async fn recv(&mut self) -> Option<Message> {
        self.rx.recv().await
    }
}

impl Stream for Messages {
    type Item = Message;
    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Message>> {
        self.rx.poll_recv(cx)
    }
}

/// A request from another client, to be answered with
/// [`reply`](IncomingRequest::reply) or
/// [`reply_error`](IncomingRequest::reply_error). Dropping it unanswered
/// sends an error reply, so the requester never waits in vain.
pub struct IncomingRequest {
    shared: Weak<Shared>,
    id: u64,
    from: String,
    method: String,
    payload: Bytes,
    timeout_ms: u32,
    armed: bool,
}

impl std::fmt::Debug for IncomingRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IncomingRequest")
            .field("id", &self.id)
            .field("from", &self.from)
            .field("method", &self.method)
            .field("payload_len", &self.payload.len())
            .finish()
    }
}

impl IncomingRequest {
    pub(crate) fn new(shared: &Arc<Shared>, r: proto::Request) -> IncomingRequest {
        IncomingRequest {
            shared: Arc::downgrade(shared),
            id: r.id,
            from: r.from,
            method: r.method,
            payload: r.payload,
            timeout_ms: r.timeout_ms,
            armed: true,
        }
    }

    pub(crate) fn disarm(&mut self) {
        self.armed = false;
    }

    /// The requester's client id.
    pub fn from(&self) -> &str {
        &self.from
    }

    /// The method name the requester gave (may be empty).
    pub fn method(&self) -> &str {
        &self.method
    }

    /// The request's payload.
    pub fn payload(&self) -> &Bytes {
        &self.payload
    }

    /// How long the requester waits, in milliseconds (0: the hub default).
    pub fn timeout_ms(&self) -> u32 {
        self.timeout_ms
    }

    async fn answer(mut self, frame: Frame) -> Result<(), ClientError> {
        self.armed = false;
        let shared = self.shared.upgrade().ok_or(ClientError::Closed)?;
        shared.post(frame).await
    }

    /// Sends the reply.
    pub async fn reply(self, payload: impl Into<Bytes>) -> Result<(), ClientError> {
        let frame = Frame::reply(self.id, self.from.clone(), payload.into());
        self.answer(frame).await
    }

    /// Sends an error reply; the requester gets [`ClientError::Remote`]
    /// with `message`.
    pub async fn reply_error(self, message: impl std::fmt::Display) -> Result<(), ClientError> {
        let frame = super::conn::error_reply(self.id, self.from.clone(), message.to_string());
        self.answer(frame).await
    }
}

impl Drop for IncomingRequest {
    fn drop(&mut self) {
        if self.armed {
            if let Some(shared) = self.shared.upgrade() {
                shared.post_now(super::conn::error_reply(
                    self.id,
                    std::mem::take(&mut self.from),
                    "the request was dropped without a reply".to_string(),
                ));
            }
        }
    }
}

/// Incoming requests; a [`Stream`] of [`IncomingRequest`].
#[derive(Debug)]
pub struct Requests {
    rx: mpsc::Receiver<IncomingRequest>,
}

impl Requests {
    pub(crate) fn start(shared: &Shared) -> Requests {
        let (tx, rx) = mpsc::channel(shared.cfg.stream_capacity);
        shared.reg.lock().requests = Some(tx);
        Requests { rx }
    }

    /// Receives the next request; `None` once the stream was replaced or
    /// the client closed.
    pub async fn recv(&mut self) -> Option<IncomingRequest> {
        self.rx.recv().await
    }
}

impl Stream for Requests {
    type Item = IncomingRequest;
    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<IncomingRequest>> {
        self.rx.poll_recv(cx)
    }
}

/// Most requests a [`ServeHandle`] runs at once; further ones wait.
const SERVE_CONCURRENCY: usize = 1024;

/// A running request handler from [`Client::serve`](crate::Client::serve);
/// serving stops when it is dropped or [`stop`](ServeHandle::stop)ped.
#[must_use = "serving stops when the handle is dropped"]
#[derive(Debug)]
pub struct ServeHandle {
    task: tokio::task::JoinHandle<()>,
}

impl ServeHandle {
    pub(crate) fn start<F, Fut, E>(mut requests: Requests, handler: F) -> ServeHandle
    where
        F: Fn(IncomingRequest) -> Fut + Send + Sync + 'static,
        Fut: std::future::Future<Output = Result<Bytes, E>> + Send + 'static,
        E: std::fmt::Display + Send + 'static,
    {
        let handler = Arc::new(handler);
        let limit = Arc::new(Semaphore::new(SERVE_CONCURRENCY));
        let task = tokio::spawn(async move {
            while let Some(req) = requests.recv().await {
                let Ok(permit) = limit.clone().acquire_owned().await else {
                    return;
                };
                let handler = handler.clone();
                tokio::spawn(async move {
                    let _permit = permit;
                    let replier = Replier {
                        shared: req.shared.clone(),
                        id: req.id,
                        to: req.from.clone(),
                    };
                    let mut req = req;
                    req.armed = false;
                    let result = std::panic::AssertUnwindSafe(handler(req))
                        .catch_unwind()
                        .await;
                    let frame = match result {
                        Ok(Ok(payload)) => Frame::reply(replier.id, replier.to, payload),
                        Ok(Err(e)) => {
                            super::conn::error_reply(replier.id, replier.to, e.to_string())
                        }
                        Err(_) => super::conn::error_reply(
                            replier.id,
                            replier.to,
                            "the request handler panicked".to_string(),
                        ),
                    };
                    if let Some(shared) = replier.shared.upgrade() {
                        let _ = shared.post(frame).await;
                    }
                });
            }
        });
        ServeHandle { task }
    }

    /// Stops serving; requests arriving afterwards get an error reply.
    pub fn stop(self) {}
}

impl Drop for ServeHandle {
    fn drop(&mut self) {
        self.task.abort();
    }
}

struct Replier {
    shared: Weak<Shared>,
    id: u64,
    to: String,
}

/// Clients joining and leaving; a [`Stream`] of [`PresenceEvent`].
pub struct Presence {
    shared: Arc<Shared>,
    key: u64,
    current: Vec<ClientInfo>,
    rx: mpsc::Receiver<PresenceEvent>,
}

impl std::fmt::Debug for Presence {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Presence")
            .field("current", &self.current.len())
            .finish()
    }
}

impl Presence {
    pub(crate) async fn start(shared: Arc<Shared>) -> Result<Presence, ClientError> {
        let key = shared.next_id();
        let (tx, rx) = mpsc::channel(shared.cfg.stream_capacity);
        let first = {
            let mut reg = shared.reg.lock();
            let first = reg.presence.is_empty();
            reg.presence.insert(key, tx);
            first
        };
        let answer = if first {
            shared
                .command(shared.cfg.request_timeout, |id| {
                    proto::PresenceWatch { id, stop: false }.into()
                })
                .await
        } else {
            shared
                .command(shared.cfg.request_timeout, |id| {
                    proto::ListClients { id }.into()
                })
                .await
        };
        let current = match answer {
            Ok(Frame {
                kind: Some(Kind::ClientList(list)),
                ..
            }) => list.clients,
            Ok(other) => {
                shared.reg.lock().presence.remove(&key);
                return Err(unexpected("client list", other.kind));
            }
            Err(e) => {
                shared.reg.lock().presence.remove(&key);
                return Err(e);
            }
        };
        if first {
            let mut reg = shared.reg.lock();
            reg.known_clients = current
                .iter()
                .map(|c| (c.client_id.clone(), c.clone()))
                .collect();
        }
        Ok(Presence {
            shared,
            key,
            current,
            rx,
        })
    }

    /// The clients connected when the watch started, sorted by id.
    pub fn current(&self) -> &[ClientInfo] {
        &self.current
    }

    /// Receives the next event; `None` once the client is closed.
    pub async fn recv(&mut self) -> Option<PresenceEvent> {
        self.rx.recv().await
    }
}

impl Stream for Presence {
    type Item = PresenceEvent;
    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<PresenceEvent>> {
        self.rx.poll_recv(cx)
    }
}

impl Drop for Presence {
    fn drop(&mut self) {
        let last = {
            let mut reg = self.shared.reg.lock();
            reg.presence.remove(&self.key).is_some() && reg.presence.is_empty()
        };
        if last {
            let id = self.shared.next_id();
            self.shared
                .post_now(proto::PresenceWatch { id, stop: true }.into());
        }
    }
}

/// After a reconnect: reports the difference between the clients known
/// before and the hub's current list as presence events.
pub(crate) fn presence_resync(shared: &Shared, clients: Vec<ClientInfo>) {
    let mut reg = shared.reg.lock();
    let now: std::collections::BTreeMap<String, ClientInfo> = clients
        .into_iter()
        .map(|c| (c.client_id.clone(), c))
        .collect();
    let mut events = Vec::new();
    for (id, c) in &reg.known_clients {
        if !now.contains_key(id) {
            events.push(PresenceEvent::Left {
                client: c.clone(),
                reason: "left while this client was disconnected".to_string(),
            });
        }
    }
    for (id, c) in &now {
        if !reg.known_clients.contains_key(id) {
            events.push(PresenceEvent::Joined(c.clone()));
        }
    }
    reg.known_clients = now;
    for event in events {
        for tx in reg.presence.values() {
            let _ = tx.try_send(event.clone());
        }
    }
}
