//! Incoming streams: subscriptions, messages, requests, serving,
//! presence. Each stream's handle is made before its registration is
//! confirmed, so a call dropped part-way undoes it through the handle's
//! `Drop`.

use std::pin::Pin;
use std::sync::{Arc, Weak};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use futures::{FutureExt, Stream};
use switchboard_wire::{proto, Frame, Kind};
use tokio::sync::Semaphore;

use super::queue::{Overflow, Pushed, Queue};
use super::types::{ClientInfo, Headers, Message, PresenceEvent};
use super::{unexpected, Shared, SubEntry, SubSink};
use crate::ClientError;

/// Options of [`Client::subscribe_with`](crate::Client::subscribe_with).
#[derive(Debug, Clone, Default)]
#[non_exhaustive]
pub struct SubscribeOptions {
    /// Queue group (empty: none): each message goes to one member.
    pub queue_group: String,
    /// The stream's capacity in messages (`None`: the client's
    /// [`stream_capacity`](crate::ClientBuilder::stream_capacity)).
    pub capacity: Option<usize>,
    /// What to do when the stream is full (default
    /// [`Overflow::Block`]).
    pub overflow: Overflow,
    /// End the subscription by itself after this many messages.
    pub max_messages: Option<u64>,
}

impl SubscribeOptions {
    /// Joins queue group `group`.
    pub fn queue_group(mut self, group: impl Into<String>) -> Self {
        self.queue_group = group.into();
        self
    }

    /// Sets the stream's capacity.
    pub fn capacity(mut self, capacity: usize) -> Self {
        self.capacity = Some(capacity.max(1));
        self
    }

    /// Sets the overflow policy.
    pub fn overflow(mut self, overflow: Overflow) -> Self {
        self.overflow = overflow;
        self
    }

    /// Ends the subscription after `n` messages (see
    /// [`Subscription::unsubscribe_after`]).
    pub fn max_messages(mut self, n: u64) -> Self {
        self.max_messages = Some(n);
        self
    }
}

/// Messages published to topics matching a pattern; a
/// [`Stream`] of [`Message`]. Dropping it unsubscribes.
///
/// [`recv`](Subscription::recv) and the `Stream` are cancel-safe: a
/// message is taken only when it is returned.
pub struct Subscription {
    shared: Arc<Shared>,
    sub_id: u64,
    pattern: String,
    queue: Arc<Queue<Message>>,
    /// Registered (locally, and at the hub unless it refused): dropping
    /// unsubscribes.
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

/// Asks the hub for subscription `sub_id`, already registered locally; on
/// the hub's refusal forgets it locally too (the hub holds nothing to
/// undo). On any other error the outcome is unknown and the caller's
/// handle undoes it when dropped.
async fn confirm_sub(
    shared: &Arc<Shared>,
    sub_id: u64,
    pattern: &str,
    group: &str,
    service: bool,
) -> Result<(), ClientError> {
    let result = shared
        .command_ok(|id| subscribe_frame(id, sub_id, pattern, group, service))
        .await;
    if let Err(e) = &result {
        if e.is_refusal() {
            shared.reg.lock().subs.remove(&sub_id);
        }
    }
    result
}

/// The `Subscribe` frame of a subscription.
pub(crate) fn subscribe_frame(
    id: u64,
    sub_id: u64,
    pattern: &str,
    group: &str,
    service: bool,
) -> Frame {
    proto::Subscribe {
        id,
        sub_id,
        pattern: pattern.to_string(),
        queue_group: group.to_string(),
        service,
    }
    .into()
}

impl Subscription {
    pub(crate) async fn start(
        shared: Arc<Shared>,
        pattern: &str,
        options: SubscribeOptions,
    ) -> Result<Subscription, ClientError> {
        let sub_id = shared.next_id();
        let capacity = options.capacity.unwrap_or(shared.cfg.stream_capacity);
        let queue = Arc::new(Queue::new(capacity, options.overflow));
        shared.reg.lock().subs.insert(
            sub_id,
            SubEntry {
                pattern: pattern.to_string(),
                group: options.queue_group.clone(),
                service: false,
                sink: SubSink::Messages(queue.clone()),
                remaining: options.max_messages,
            },
        );
        // From here a dropped call unsubscribes (the handle's `Drop`).
        let mut sub = Subscription {
            shared,
            sub_id,
            pattern: pattern.to_string(),
            queue,
            active: true,
        };
        let shared = sub.shared.clone();
        if let Err(e) = confirm_sub(&shared, sub_id, pattern, &options.queue_group, false).await {
            sub.active = !e.is_refusal();
            return Err(e);
        }
        Ok(sub)
    }

    /// The subscription's id (as in [`ClientEvent::SlowConsumer`](crate::ClientEvent::SlowConsumer)).
    pub fn id(&self) -> u64 {
        self.sub_id
    }

    /// The pattern subscribed to.
    pub fn pattern(&self) -> &str {
        &self.pattern
    }

    /// Receives the next message; `None` once the subscription ended (the
    /// client closed, [`unsubscribe_after`](Self::unsubscribe_after) was
    /// reached, or the client is draining). Cancel-safe.
    pub async fn recv(&mut self) -> Option<Message> {
        futures::future::poll_fn(|cx| self.queue.poll_recv(cx)).await
    }

    /// Messages this subscription dropped because of its overflow policy
    /// (always 0 with [`Overflow::Block`]).
    pub fn dropped(&self) -> u64 {
        self.queue.dropped()
    }

    /// Ends the subscription by itself once `n` more messages were taken
    /// into the stream (the stream then ends after them); messages the hub
    /// sent beyond those before it processed the unsubscription are
    /// discarded. `0` unsubscribes now.
    pub fn unsubscribe_after(&mut self, n: u64) {
        let mut reg = self.shared.reg.lock();
        if n == 0 {
            if reg.subs.remove(&self.sub_id).is_some() {
                drop(reg);
                self.queue.close_tx();
                let id = self.shared.next_id();
                self.shared.post_detached(
                    proto::Unsubscribe {
                        id,
                        sub_id: self.sub_id,
                    }
                    .into(),
                );
            }
            return;
        }
        if let Some(sub) = reg.subs.get_mut(&self.sub_id) {
            sub.remaining = Some(n);
        }
    }

    /// Unsubscribes and waits for the hub's confirmation. Messages already
    /// in the stream are discarded. Cancel-safe: a dropped call still
    /// unsubscribes.
    pub async fn unsubscribe(mut self) -> Result<(), ClientError> {
        let registered = self.shared.reg.lock().subs.remove(&self.sub_id).is_some();
        if !registered {
            self.active = false;
            return Ok(());
        }
        let sub_id = self.sub_id;
        let shared = self.shared.clone();
        // Dropped before the hub confirmed: `Drop` sends it again (the hub
        // ignores an unknown subscription).
        let result = shared
            .command_ok(|id| proto::Unsubscribe { id, sub_id }.into())
            .await;
        self.active = false;
        result
    }
}

impl Stream for Subscription {
    type Item = Message;
    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Message>> {
        self.queue.poll_recv(cx)
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        self.queue.close_rx();
        if self.active {
            self.shared.reg.lock().subs.remove(&self.sub_id);
            let id = self.shared.next_id();
            self.shared.post_detached(
                proto::Unsubscribe {
                    id,
                    sub_id: self.sub_id,
                }
                .into(),
            );
        }
    }
}

/// Incoming direct and broadcast messages; a [`Stream`] of [`Message`]
/// from [`Client::messages`](crate::Client::messages). Dropping it stops
/// listening. [`recv`](Messages::recv) is cancel-safe.
pub struct Messages {
    shared: Arc<Shared>,
    queue: Arc<Queue<Message>>,
}

impl std::fmt::Debug for Messages {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Messages").finish_non_exhaustive()
    }
}

/// The registry's slot of a listening stream (messages or requests).
type Slot<T> = fn(&mut super::Registry) -> &mut Option<Arc<Queue<T>>>;

fn messages_slot(reg: &mut super::Registry) -> &mut Option<Arc<Queue<Message>>> {
    &mut reg.messages
}

fn requests_slot(reg: &mut super::Registry) -> &mut Option<Arc<Queue<IncomingRequest>>> {
    &mut reg.requests
}

/// A new queue in `slot`; the queue it replaces ends after what it holds.
fn listen_on<T>(shared: &Shared, slot: Slot<T>) -> Arc<Queue<T>> {
    let queue = Arc::new(Queue::new(shared.cfg.stream_capacity, Overflow::Block));
    if let Some(old) = slot(&mut shared.reg.lock()).replace(queue.clone()) {
        old.close_tx();
    }
    queue
}

/// A listening stream's handle is gone: its items are dropped, and if it
/// was still the current one the hub is told this client stops listening.
fn stop_listening<T>(shared: &Arc<Shared>, queue: &Arc<Queue<T>>, slot: Slot<T>) {
    queue.close_rx();
    let current = {
        let mut reg = shared.reg.lock();
        let slot = slot(&mut reg);
        let current = slot.as_ref().is_some_and(|q| Arc::ptr_eq(q, queue));
        if current {
            *slot = None;
        }
        current
    };
    if current {
        shared.sync_listen_detached();
    }
}

impl Messages {
    pub(crate) async fn start(shared: Arc<Shared>) -> Result<Messages, ClientError> {
        let queue = listen_on(&shared, messages_slot);
        let messages = Messages { shared, queue };
        messages.shared.sync_listen().await?;
        Ok(messages)
    }

    /// Receives the next message; `None` once the stream was replaced, the
    /// client is draining, or it closed. Cancel-safe.
    pub async fn recv(&mut self) -> Option<Message> {
        futures::future::poll_fn(|cx| self.queue.poll_recv(cx)).await
    }
}

impl Stream for Messages {
    type Item = Message;
    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Message>> {
        self.queue.poll_recv(cx)
    }
}

impl Drop for Messages {
    fn drop(&mut self) {
        stop_listening(&self.shared, &self.queue, messages_slot);
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
    headers: Headers,
    service: Option<String>,
    timeout_ms: u32,
    armed: bool,
}

impl std::fmt::Debug for IncomingRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IncomingRequest")
            .field("id", &self.id)
            .field("from", &self.from)
            .field("method", &self.method)
            .field("service", &self.service)
            .field("payload_len", &self.payload.len())
            .finish()
    }
}

impl IncomingRequest {
    /// A request received; `armed`: dropping it unanswered sends an error
    /// reply (set once the application's stream holds it).
    pub(crate) fn new(shared: &Arc<Shared>, r: proto::Request, armed: bool) -> IncomingRequest {
        IncomingRequest {
            shared: Arc::downgrade(shared),
            id: r.id,
            from: r.from,
            method: r.method,
            payload: r.payload,
            headers: Headers::from_wire(r.headers),
            service: (!r.service.is_empty()).then_some(r.service),
            timeout_ms: r.timeout_ms,
            armed,
        }
    }

    /// From now on, dropping it unanswered sends an error reply.
    pub(crate) fn arm(&mut self) {
        self.armed = true;
    }

    /// The request's correlation id.
    pub(crate) fn id(&self) -> u64 {
        self.id
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

    /// The requester's headers.
    pub fn headers(&self) -> &Headers {
        &self.headers
    }

    /// For a request to a service: the service subject the requester used.
    pub fn service(&self) -> Option<&str> {
        self.service.as_deref()
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

    /// Sends the reply with headers.
    pub async fn reply_with_headers(
        self,
        payload: impl Into<Bytes>,
        headers: Headers,
    ) -> Result<(), ClientError> {
        let headers = headers.to_wire();
        Headers::check(&headers)?;
        let frame = Frame::from(proto::Reply {
            id: self.id,
            to: self.from.clone(),
            payload: payload.into(),
            headers,
            ..Default::default()
        });
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
                shared.post_detached(super::conn::error_reply(
                    self.id,
                    std::mem::take(&mut self.from),
                    "the request was dropped without a reply".to_string(),
                ));
            }
        }
    }
}

/// What a [`Requests`] stream receives.
#[derive(Debug, Clone, Copy)]
enum Source {
    /// Requests to this client's id.
    Direct,
    /// Requests to a service, through this subscription.
    Service(u64),
}

/// Incoming requests; a [`Stream`] of [`IncomingRequest`], from
/// [`Client::requests`](crate::Client::requests) or
/// [`Client::service`](crate::Client::service). Dropping it stops taking
/// requests. [`recv`](Requests::recv) is cancel-safe.
pub struct Requests {
    shared: Arc<Shared>,
    queue: Arc<Queue<IncomingRequest>>,
    source: Source,
    /// Registered at the hub (services): dropping unsubscribes.
    active: bool,
}

impl std::fmt::Debug for Requests {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Requests")
            .field("source", &self.source)
            .finish_non_exhaustive()
    }
}

impl Requests {
    pub(crate) async fn start(shared: Arc<Shared>) -> Result<Requests, ClientError> {
        let queue = listen_on(&shared, requests_slot);
        let requests = Requests {
            shared,
            queue,
            source: Source::Direct,
            active: true,
        };
        requests.shared.sync_listen().await?;
        Ok(requests)
    }

    pub(crate) async fn start_service(
        shared: Arc<Shared>,
        name: &str,
    ) -> Result<Requests, ClientError> {
        let sub_id = shared.next_id();
        let queue = Arc::new(Queue::new(shared.cfg.stream_capacity, Overflow::Block));
        shared.reg.lock().subs.insert(
            sub_id,
            SubEntry {
                pattern: name.to_string(),
                group: String::new(),
                service: true,
                sink: SubSink::Requests(queue.clone()),
                remaining: None,
            },
        );
        let mut requests = Requests {
            shared,
            queue,
            source: Source::Service(sub_id),
            active: true,
        };
        let shared = requests.shared.clone();
        if let Err(e) = confirm_sub(&shared, sub_id, name, "", true).await {
            requests.active = !e.is_refusal();
            return Err(e);
        }
        Ok(requests)
    }

    /// Receives the next request; `None` once the stream was replaced,
    /// the client is draining, or it closed. Cancel-safe.
    pub async fn recv(&mut self) -> Option<IncomingRequest> {
        futures::future::poll_fn(|cx| self.queue.poll_recv(cx)).await
    }
}

impl Stream for Requests {
    type Item = IncomingRequest;
    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<IncomingRequest>> {
        self.queue.poll_recv(cx)
    }
}

impl Drop for Requests {
    fn drop(&mut self) {
        // Requests still queued are answered with an error reply as they
        // are dropped.
        match self.source {
            Source::Direct => stop_listening(&self.shared, &self.queue, requests_slot),
            Source::Service(sub_id) => {
                self.queue.close_rx();
                if self.active {
                    self.shared.reg.lock().subs.remove(&sub_id);
                    let id = self.shared.next_id();
                    self.shared
                        .post_detached(proto::Unsubscribe { id, sub_id }.into());
                }
            }
        }
    }
}

/// Options of [`Client::serve_with`](crate::Client::serve_with).
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct ServeOptions {
    /// Most requests handled at once (default 1,024); further ones wait in
    /// the stream, then push back on the connection.
    pub concurrency: usize,
    /// Longest a handler may run (default: none). Past it the handler is
    /// dropped and the requester gets an error reply.
    pub timeout: Option<Duration>,
}

impl Default for ServeOptions {
    fn default() -> Self {
        ServeOptions {
            concurrency: 1024,
            timeout: None,
        }
    }
}

impl ServeOptions {
    /// Sets the concurrency (at least 1).
    pub fn concurrency(mut self, n: usize) -> Self {
        self.concurrency = n.max(1);
        self
    }

    /// Sets the handler timeout.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }
}

/// A running request handler from [`Client::serve`](crate::Client::serve);
/// serving stops when it is dropped or [`stop`](ServeHandle::stop)ped.
#[must_use = "serving stops when the handle is dropped"]
#[derive(Debug)]
pub struct ServeHandle {
    task: Option<tokio::task::JoinHandle<()>>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
}

impl ServeHandle {
    pub(crate) fn start<F, Fut, E>(
        shared: Arc<Shared>,
        mut requests: Requests,
        options: ServeOptions,
        handler: F,
    ) -> ServeHandle
    where
        F: Fn(IncomingRequest) -> Fut + Send + Sync + 'static,
        Fut: std::future::Future<Output = Result<Bytes, E>> + Send + 'static,
        E: std::fmt::Display + Send + 'static,
    {
        let handler = Arc::new(handler);
        let limit = Arc::new(Semaphore::new(options.concurrency.max(1)));
        let timeout = options.timeout;
        let (stop_tx, mut stop_rx) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            let mut running = tokio::task::JoinSet::new();
            loop {
                let req = tokio::select! {
                    req = requests.recv() => match req {
                        Some(req) => req,
                        None => break,
                    },
                    _ = &mut stop_rx => break,
                    Some(_) = running.join_next(), if !running.is_empty() => continue,
                };
                let permit = tokio::select! {
                    permit = limit.clone().acquire_owned() => match permit {
                        Ok(p) => p,
                        Err(_) => break,
                    },
                    _ = &mut stop_rx => {
                        drop(req);
                        break;
                    }
                };
                let handler = handler.clone();
                running.spawn(async move {
                    let _permit = permit;
                    let replier = Replier {
                        shared: req.shared.clone(),
                        id: req.id,
                        to: req.from.clone(),
                    };
                    let mut req = req;
                    req.armed = false;
                    let run = std::panic::AssertUnwindSafe(handler(req)).catch_unwind();
                    let result = match timeout {
                        Some(t) => tokio::time::timeout(t, run).await.ok(),
                        None => Some(run.await),
                    };
                    let frame = match result {
                        Some(Ok(Ok(payload))) => Frame::reply(replier.id, replier.to, payload),
                        Some(Ok(Err(e))) => {
                            super::conn::error_reply(replier.id, replier.to, e.to_string())
                        }
                        Some(Err(_)) => super::conn::error_reply(
                            replier.id,
                            replier.to,
                            "the request handler panicked".to_string(),
                        ),
                        None => super::conn::error_reply(
                            replier.id,
                            replier.to,
                            format!(
                                "the request handler did not finish within {} ms",
                                timeout.unwrap_or_default().as_millis()
                            ),
                        ),
                    };
                    if let Some(shared) = replier.shared.upgrade() {
                        let _ = shared.post(frame).await;
                    }
                });
            }
            // Stop taking requests and wait (boundedly) until the hub
            // knows, so requests after `stop` are refused by the hub; then
            // let the running handlers finish and reply.
            let direct = matches!(requests.source, Source::Direct);
            drop(requests);
            if direct {
                let _ = tokio::time::timeout(Duration::from_secs(5), shared.sync_listen()).await;
            }
            while running.join_next().await.is_some() {}
        });
        ServeHandle {
            task: Some(task),
            stop: Some(stop_tx),
        }
    }

    /// Stops serving: requests arriving afterwards are refused
    /// ([`ClientError::NotListening`] for their senders), requests queued
    /// but not started get an error reply, and the call returns once every
    /// running handler has finished and its reply is queued. Dropping the
    /// call part-way leaves the handlers running to completion.
    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

impl Drop for ServeHandle {
    fn drop(&mut self) {
        // Stops taking requests; running handlers finish in the background.
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

struct Replier {
    shared: Weak<Shared>,
    id: u64,
    to: String,
}

/// Clients joining and leaving; a [`Stream`] of [`PresenceEvent`].
/// [`recv`](Presence::recv) is cancel-safe.
pub struct Presence {
    shared: Arc<Shared>,
    key: u64,
    current: Vec<ClientInfo>,
    queue: Arc<Queue<PresenceEvent>>,
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
        let queue = Arc::new(Queue::new(shared.cfg.stream_capacity, Overflow::Block));
        let order = shared.clone();
        let _order = order.presence_lock.lock().await;
        let first = {
            let mut reg = shared.reg.lock();
            let first = reg.presence.is_empty();
            reg.presence.insert(key, queue.clone());
            first
        };
        // From here a dropped call ends the watch (the handle's `Drop`).
        let mut presence = Presence {
            shared,
            key,
            current: Vec::new(),
            queue,
        };
        let shared = presence.shared.clone();
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
            }) => list
                .clients
                .into_iter()
                .map(ClientInfo::from)
                .collect::<Vec<_>>(),
            Ok(other) => return Err(unexpected("client list", other.kind)),
            Err(e) => return Err(e),
        };
        if first {
            let mut reg = shared.reg.lock();
            reg.known_clients = current
                .iter()
                .map(|c| (c.client_id.clone(), c.clone()))
                .collect();
        }
        presence.current = current;
        Ok(presence)
    }

    /// The clients connected when the watch started, sorted by id.
    pub fn current(&self) -> &[ClientInfo] {
        &self.current
    }

    /// Receives the next event; `None` once the client is closed.
    /// Cancel-safe.
    pub async fn recv(&mut self) -> Option<PresenceEvent> {
        futures::future::poll_fn(|cx| self.queue.poll_recv(cx)).await
    }
}

impl Stream for Presence {
    type Item = PresenceEvent;
    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<PresenceEvent>> {
        self.queue.poll_recv(cx)
    }
}

impl Drop for Presence {
    fn drop(&mut self) {
        self.queue.close_rx();
        let last = {
            let mut reg = self.shared.reg.lock();
            reg.presence.remove(&self.key).is_some() && reg.presence.is_empty()
        };
        if !last {
            return;
        }
        // Stopped by a task that takes the presence lock and looks again:
        // a watch started meanwhile keeps the hub's watch on.
        match tokio::runtime::Handle::try_current() {
            Ok(rt) => {
                let shared = self.shared.clone();
                rt.spawn(async move {
                    let _order = shared.presence_lock.lock().await;
                    if shared.reg.lock().presence.is_empty() {
                        let _ = shared
                            .command_ok(|id| proto::PresenceWatch { id, stop: true }.into())
                            .await;
                    }
                });
            }
            Err(_) => {
                let id = self.shared.next_id();
                self.shared
                    .post_detached(proto::PresenceWatch { id, stop: true }.into());
            }
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
    let mut lost = 0;
    for event in events {
        for queue in reg.presence.values() {
            if queue.try_push(event.clone()) == Pushed::Dropped {
                lost += 1;
            }
        }
    }
    drop(reg);
    if lost > 0 {
        shared
            .dropped
            .fetch_add(lost, std::sync::atomic::Ordering::Relaxed);
        shared.emit(crate::ClientEvent::Undelivered {
            stream: "presence",
            dropped: lost,
        });
    }
}
