//! Incoming streams: subscriptions, messages and requests. Each stream's
//! handle is made before its registration is confirmed, so a call dropped
//! part-way undoes it through the handle's `Drop`.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use futures::Stream;
use switchboard_wire::{proto, Frame};

use super::queue::{Overflow, Queue};
use super::registry::{Registry, SubEntry, SubSink};
use super::request::IncomingRequest;
use super::shared::Shared;
use super::types::Message;
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

    /// The subscription's id (as in [`ClientEvent::SlowConsumer`]).
    ///
    /// [`ClientEvent::SlowConsumer`]: crate::ClientEvent::SlowConsumer
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
type Slot<T> = fn(&mut Registry) -> &mut Option<Arc<Queue<T>>>;

fn messages_slot(reg: &mut Registry) -> &mut Option<Arc<Queue<Message>>> {
    &mut reg.messages
}

fn requests_slot(reg: &mut Registry) -> &mut Option<Arc<Queue<IncomingRequest>>> {
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

    /// Whether it takes the requests to this client's id (not a
    /// service's).
    pub(crate) fn is_direct(&self) -> bool {
        matches!(self.source, Source::Direct)
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
