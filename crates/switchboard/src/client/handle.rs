//! The [`Client`] handle: its state, the streams it opens (subscriptions,
//! messages, requests, serving, key/value, presence) and its end (flush,
//! drain, close). The sending calls are in `sending.rs`; the builder, the
//! session links and the typed layer add theirs in `builder.rs`,
//! `session.rs` and `typed.rs`.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::FutureExt;
use switchboard_wire::{proto, Kind};
use tokio::sync::watch;
use tokio::time::Instant;

use super::events::Events;
use super::kv::Kv;
use super::presence::Presence;
use super::request::IncomingRequest;
use super::serve::{ServeHandle, ServeOptions};
use super::shared::{unexpected, Shared};
use super::streams::{Messages, Requests, SubscribeOptions, Subscription};
use super::types::{ClientInfo, CloseReport, ConnectionState, Headers, HubStatus};
use crate::ClientError;

/// What the clones of a [`Client`] share; dropping the last one closes the
/// client.
pub(crate) struct ClientInner {
    shared: Arc<Shared>,
}

impl Drop for ClientInner {
    fn drop(&mut self) {
        self.shared.close.send_replace(true);
    }
}

/// A connection to a hub under one client id.
///
/// Cheap to clone; every clone shares the connection. The connection closes
/// when [`close`](Client::close) is called or the last clone is dropped.
/// While connected, a background task reads from the hub and routes answers
/// to waiting calls and incoming messages to their streams; another writes
/// queued frames in batches. When the connection drops, the client
/// reconnects with backoff and jitter (the first attempt at once; the last
/// address first, then re-discovering the hub when found by service name).
///
/// With [reliable delivery](crate::ClientBuilder::reliable) (the default, when the
/// hub offers it) the client asks to resume its session: frames the hub did
/// not get are sent again, duplicates are dropped on both sides, and calls
/// in flight keep waiting for their answers, for up to
/// [`resume_wait`](crate::ClientBuilder::resume_wait). If the hub resumes the
/// session, subscriptions and watches simply continue
/// ([`ConnectionState::Connected`] with `resumed: true`). Otherwise, and
/// always without reliable delivery, calls in flight fail with
/// [`ClientError::Disconnected`] and the client restores its subscriptions,
/// watches and presence watch before reporting
/// [`ConnectionState::Connected`] again.
///
/// The client remembers the highest hub epoch it has seen and never uses a
/// hub of a lower one (an old primary that a standby replaced): such a hub
/// fails the attempt with [`ClientError::Fenced`] and the client looks
/// further.
///
/// # Delivery
///
/// A message the hub confirmed to its sender reaches this client's
/// stream, or the application is told: a numbered frame is acknowledged to
/// the hub only once the stream took it; a full stream pushes back
/// ([`Overflow::Block`], the default) or drops by the subscription's
/// announced policy ([`SubscribeOptions::overflow`],
/// [`ClientEvent::SlowConsumer`]); direct messages and requests are refused
/// to their senders ([`ClientError::NotListening`]) until
/// [`messages`](Client::messages) / [`requests`](Client::requests) /
/// [`serve`](Client::serve) is called. See [`Client::events`].
///
/// # Cancel safety
///
/// Every async method may be dropped at any await point (a `select!`
/// branch that loses, a timeout):
///
/// * registering calls — [`subscribe`](Client::subscribe) and its
///   variants, [`messages`](Client::messages),
///   [`requests`](Client::requests), [`serve`](Client::serve) and its
///   variants, [`service`](Client::service), [`presence`](Client::presence),
///   [`Kv::watch`] and [`Kv::watch_prefix`] — are undone, locally and at
///   the hub, when dropped before they return (a `messages`, `requests` or
///   `serve` call that replaced an earlier stream leaves that stream
///   ended);
/// * requests ([`request`](Client::request) and its variants) are cancelled
///   at the hub (a late reply is discarded);
/// * sending calls ([`send`](Client::send), [`publish`](Client::publish),
///   [`broadcast`](Client::broadcast), their variants, [`Kv::set`],
///   [`Kv::cas`], [`Kv::delete`]) leave nothing registered, but the message
///   or change may or may not have been sent (once queued, reliable
///   delivery delivers it);
/// * reads ([`Kv::get`], [`clients`](Client::clients),
///   [`status`](Client::status)), [`flush`](Client::flush) and
///   [`wait_connected`](Client::wait_connected) change nothing;
/// * every stream's `recv()` and `Stream::poll_next` take an item only when
///   they return it;
/// * [`close`](Client::close) closes anyway; [`drain`](Client::drain)
///   dropped part-way leaves the client draining but open;
///   [`ServeHandle::stop`] dropped part-way lets the handlers finish.
///
/// [`Overflow::Block`]: crate::Overflow::Block
/// [`ClientEvent::SlowConsumer`]: crate::ClientEvent::SlowConsumer
#[derive(Clone)]
pub struct Client {
    pub(super) inner: Arc<ClientInner>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("id", &self.id())
            .field("state", &*self.shared().state.borrow())
            .finish()
    }
}

impl Client {
    /// The handle of a connected client's state.
    pub(crate) fn new(shared: Arc<Shared>) -> Client {
        Client {
            inner: Arc::new(ClientInner { shared }),
        }
    }

    pub(crate) fn shared(&self) -> &Arc<Shared> {
        &self.inner.shared
    }

    /// This client's id.
    pub fn id(&self) -> &str {
        &self.shared().cfg.id
    }

    /// The connection state, as a watch channel that changes on every
    /// transition.
    pub fn state(&self) -> watch::Receiver<ConnectionState> {
        self.shared().state.subscribe()
    }

    /// Address of the hub while connected.
    pub fn hub_addr(&self) -> Option<SocketAddr> {
        match &*self.shared().state.borrow() {
            ConnectionState::Connected { addr, .. } => Some(*addr),
            _ => None,
        }
    }

    /// Items lost so far, in all: dropped by subscriptions with a drop
    /// policy ([`Overflow::DropNewest`], [`Overflow::DropOldest`]), dropped
    /// by the hub because its queue for this client was full (its `Flow`
    /// notices), and messages that arrived for a stream the application had
    /// just dropped. Each is also announced on [`events`](Client::events).
    /// Always 0 while every stream blocks and the hub's queue has room.
    ///
    /// [`Overflow::DropNewest`]: crate::Overflow::DropNewest
    /// [`Overflow::DropOldest`]: crate::Overflow::DropOldest
    pub fn dropped(&self) -> u64 {
        self.shared().dropped.load(Ordering::Relaxed)
    }

    /// With reliable delivery: how many frames this client has sent that
    /// the hub has not acknowledged yet, and their encoded size in bytes
    /// (kept for sending again after a lost connection). Always `(0, 0)`
    /// on a connection without reliable delivery.
    pub fn unacknowledged(&self) -> (usize, usize) {
        let reg = self.shared().reg.lock();
        (reg.out.len(), reg.out.bytes())
    }

    /// Whether the current (or, while reconnecting, the last) connection
    /// uses reliable delivery: this client asked for it and the hub
    /// offered it.
    pub fn is_reliable(&self) -> bool {
        let reg = self.shared().reg.lock();
        match &reg.conn {
            Some(c) => c.reliable,
            None => reg.resumable,
        }
    }

    /// Subscribes to topics matching `pattern` (`.`-separated segments; `*`
    /// matches one segment, a final `>` one or more). Messages arrive on the
    /// returned stream; dropping it unsubscribes. The subscription is
    /// restored automatically after a reconnect.
    ///
    /// Cancel-safe: a call dropped before it returns leaves no subscription
    /// behind (locally or at the hub).
    pub async fn subscribe(&self, pattern: &str) -> Result<Subscription, ClientError> {
        self.subscribe_with(pattern, SubscribeOptions::default())
            .await
    }

    /// Subscribes as a member of queue group `group`: each message matching
    /// `pattern` goes to one member of the group only. Cancel-safe.
    pub async fn subscribe_group(
        &self,
        pattern: &str,
        group: &str,
    ) -> Result<Subscription, ClientError> {
        self.subscribe_with(pattern, SubscribeOptions::default().queue_group(group))
            .await
    }

    /// Subscribes with options: queue group, the stream's capacity and
    /// overflow policy, and a number of messages after which the
    /// subscription ends by itself. Cancel-safe.
    ///
    /// ```no_run
    /// # async fn run(client: switchboard::Client) -> Result<(), switchboard::ClientError> {
    /// use switchboard::{Overflow, SubscribeOptions};
    /// // A dashboard that only wants the latest readings.
    /// let mut readings = client
    ///     .subscribe_with(
    ///         "sensors.>",
    ///         SubscribeOptions::default().capacity(64).overflow(Overflow::DropOldest),
    ///     )
    ///     .await?;
    /// while let Some(msg) = readings.recv().await {
    ///     println!("{}: {} bytes ({} dropped so far)", msg.topic, msg.payload.len(), readings.dropped());
    /// }
    /// # Ok(()) }
    /// ```
    pub async fn subscribe_with(
        &self,
        pattern: &str,
        options: SubscribeOptions,
    ) -> Result<Subscription, ClientError> {
        Subscription::start(self.shared().clone(), pattern, options).await
    }

    /// Incoming direct and broadcast messages. Until this is called the hub
    /// refuses direct messages to this client with
    /// [`ClientError::NotListening`] (their senders learn it at once) and
    /// leaves it out of broadcasts; once it returns, every direct message
    /// confirmed to its sender reaches this stream. Calling it again
    /// replaces the earlier stream, which ends after what it already holds.
    /// Dropping the stream stops listening. Cancel-safe: dropped before it
    /// returns, it stops listening (a stream it replaced has ended
    /// already).
    pub async fn messages(&self) -> Result<Messages, ClientError> {
        Messages::start(self.shared().clone()).await
    }

    /// Incoming requests to this client's id, each answered with
    /// [`IncomingRequest::reply`]. Until this (or [`serve`](Self::serve))
    /// is called, requests to this client fail at once with
    /// [`ClientError::NotListening`]. Calling it again (or `serve`)
    /// replaces the earlier stream. While no stream exists, requests are
    /// refused. Cancel-safe.
    pub async fn requests(&self) -> Result<Requests, ClientError> {
        Requests::start(self.shared().clone()).await
    }

    /// Answers every incoming request with `handler`, each in its own task
    /// (at most 1,024 at once; see [`serve_with`](Self::serve_with)).
    /// `Ok(bytes)` becomes the reply; `Err(e)` an error reply carrying
    /// `e.to_string()`; a panicking handler an error reply too. Serving
    /// stops when the returned handle is dropped or
    /// [stopped](ServeHandle::stop). Cancel-safe.
    pub async fn serve<F, Fut, E>(&self, handler: F) -> Result<ServeHandle, ClientError>
    where
        F: Fn(IncomingRequest) -> Fut + Send + Sync + 'static,
        Fut: std::future::Future<Output = Result<Bytes, E>> + Send + 'static,
        E: std::fmt::Display + Send + 'static,
    {
        self.serve_with(ServeOptions::default(), handler).await
    }

    /// [`serve`](Self::serve) with options: how many requests run at once,
    /// and how long a handler may run before the requester gets an error
    /// reply (the handler is then dropped). Cancel-safe.
    pub async fn serve_with<F, Fut, E>(
        &self,
        options: ServeOptions,
        handler: F,
    ) -> Result<ServeHandle, ClientError>
    where
        F: Fn(IncomingRequest) -> Fut + Send + Sync + 'static,
        Fut: std::future::Future<Output = Result<Bytes, E>> + Send + 'static,
        E: std::fmt::Display + Send + 'static,
    {
        self.serve_with_headers(options, move |req| {
            handler(req).map(|r| r.map(|payload| (payload, Headers::new())))
        })
        .await
    }

    /// [`serve_with`](Self::serve_with) with reply headers: the handler's
    /// `Ok((payload, headers))` becomes the reply, carrying `headers` (as
    /// [`IncomingRequest::reply_with_headers`] would send them; headers the
    /// hub would refuse make it an error reply saying why). Cancel-safe.
    pub async fn serve_with_headers<F, Fut, E>(
        &self,
        options: ServeOptions,
        handler: F,
    ) -> Result<ServeHandle, ClientError>
    where
        F: Fn(IncomingRequest) -> Fut + Send + Sync + 'static,
        Fut: std::future::Future<Output = Result<(Bytes, Headers), E>> + Send + 'static,
        E: std::fmt::Display + Send + 'static,
    {
        let requests = self.requests().await?;
        Ok(ServeHandle::start(
            self.shared().clone(),
            requests,
            options,
            handler,
        ))
    }

    /// Requests sent to service `name` (or a service subject matching the
    /// pattern `name`, with `*` and `>`) by
    /// [`request_service`](Self::request_service): the hub spreads them
    /// round-robin over every client serving a matching service. Dropping
    /// the stream stops serving. Cancel-safe.
    pub async fn service(&self, name: &str) -> Result<Requests, ClientError> {
        Requests::start_service(self.shared().clone(), name).await
    }

    /// Answers requests to service `name` with `handler`, like
    /// [`serve_with`](Self::serve_with). Cancel-safe.
    pub async fn serve_service<F, Fut, E>(
        &self,
        name: &str,
        options: ServeOptions,
        handler: F,
    ) -> Result<ServeHandle, ClientError>
    where
        F: Fn(IncomingRequest) -> Fut + Send + Sync + 'static,
        Fut: std::future::Future<Output = Result<Bytes, E>> + Send + 'static,
        E: std::fmt::Display + Send + 'static,
    {
        self.serve_service_with_headers(name, options, move |req| {
            handler(req).map(|r| r.map(|payload| (payload, Headers::new())))
        })
        .await
    }

    /// [`serve_service`](Self::serve_service) with reply headers, as in
    /// [`serve_with_headers`](Self::serve_with_headers). Cancel-safe.
    pub async fn serve_service_with_headers<F, Fut, E>(
        &self,
        name: &str,
        options: ServeOptions,
        handler: F,
    ) -> Result<ServeHandle, ClientError>
    where
        F: Fn(IncomingRequest) -> Fut + Send + Sync + 'static,
        Fut: std::future::Future<Output = Result<(Bytes, Headers), E>> + Send + 'static,
        E: std::fmt::Display + Send + 'static,
    {
        let requests = self.service(name).await?;
        Ok(ServeHandle::start(
            self.shared().clone(),
            requests,
            options,
            handler,
        ))
    }

    /// The key/value store shared by all clients of the hub.
    pub fn kv(&self) -> Kv {
        Kv::new(self.shared().clone())
    }

    /// Watches clients joining and leaving. The stream's
    /// [`current`](Presence::current) holds the clients connected when the
    /// watch started; events follow. After a reconnect the differences are
    /// reported as events.
    pub async fn presence(&self) -> Result<Presence, ClientError> {
        Presence::start(self.shared().clone()).await
    }

    /// The clients connected to the hub, sorted by id.
    pub async fn clients(&self) -> Result<Vec<ClientInfo>, ClientError> {
        let shared = self.shared();
        let answer = shared
            .command(shared.cfg.request_timeout, |id| {
                proto::ListClients { id }.into()
            })
            .await?;
        match answer.kind {
            Some(Kind::ClientList(list)) => Ok(list.clients.into_iter().map(Into::into).collect()),
            other => Err(unexpected("client list", other)),
        }
    }

    /// The hub's status and counters.
    pub async fn status(&self) -> Result<HubStatus, ClientError> {
        let shared = self.shared();
        let answer = shared
            .command(shared.cfg.request_timeout, |id| {
                proto::StatusRequest { id }.into()
            })
            .await?;
        match answer.kind {
            Some(Kind::Status(s)) => Ok(s.into()),
            other => Err(unexpected("status", other)),
        }
    }

    /// Waits until the client is connected, up to `timeout`.
    pub async fn wait_connected(&self, timeout: Duration) -> Result<(), ClientError> {
        let mut state = self.state();
        let waited = tokio::time::timeout(
            timeout,
            state.wait_for(|s| {
                matches!(
                    s,
                    ConnectionState::Connected { .. } | ConnectionState::Closed { .. }
                )
            }),
        )
        .await;
        let connected = match waited {
            Ok(Ok(s)) => s.is_connected(),
            Ok(Err(_)) => false,
            Err(_) => {
                return Err(ClientError::Timeout(format!(
                    "not connected within {} ms",
                    timeout.as_millis()
                )))
            }
        };
        if connected {
            Ok(())
        } else {
            Err(self.shared().down_error())
        }
    }

    /// Events of this client's connection and streams (connected,
    /// disconnected, resumed, state lost, slow consumer, hub drops, hub
    /// errors, fenced, closed), from now on; see [`ClientEvent`](crate::ClientEvent).
    pub fn events(&self) -> Events {
        Events::new(self.shared().subscribe_events())
    }

    /// Waits until everything this client sent so far is taken over by the
    /// hub: with reliable delivery, until the hub acknowledged every
    /// numbered frame (across a resume, too); then one round trip, so
    /// unnumbered frames queued before the call (the `*_nowait` calls) were
    /// read by the hub as well. Fails with [`ClientError::Timeout`] after
    /// the request timeout. Cancel-safe.
    pub async fn flush(&self) -> Result<(), ClientError> {
        let shared = self.shared();
        let deadline = Instant::now() + shared.cfg.request_timeout;
        loop {
            let notified = shared.wake.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let kept = shared.reg.lock().out.len();
            if kept == 0 {
                break;
            }
            if *shared.close.borrow() {
                return Err(ClientError::Closed);
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return Err(ClientError::Timeout(format!(
                    "{kept} frames still not acknowledged by the hub"
                )));
            }
        }
        let left = deadline.saturating_duration_since(Instant::now());
        shared
            .command(left, |id| proto::StatusRequest { id }.into())
            .await
            .map(|_| ())
    }

    /// Ends the client gracefully within `timeout`: stops new deliveries
    /// (unsubscribes, ends watches and the presence watch, stops taking
    /// direct messages and requests), lets the application take what its
    /// streams already hold (each stream ends after its last item), waits
    /// until everything sent is acknowledged ([`flush`](Self::flush)), then
    /// closes. The report says what was left when the time ran out.
    /// Dropping the call part-way leaves the client draining but open.
    pub async fn drain(&self, timeout: Duration) -> CloseReport {
        let shared = self.shared();
        let deadline = Instant::now() + timeout;
        let (subs, watches, presence, queues) = {
            let mut reg = shared.reg.lock();
            let subs: Vec<u64> = reg.subs.keys().copied().collect();
            let watches: Vec<u64> = reg.watches.keys().copied().collect();
            let presence = !reg.presence.is_empty();
            (subs, watches, presence, reg.end_streams())
        };
        let unsubscribes = subs
            .into_iter()
            .map(|sub_id| shared.command_ok(move |id| proto::Unsubscribe { id, sub_id }.into()));
        let unwatches = watches
            .into_iter()
            .map(|watch_id| shared.command_ok(move |id| proto::KvUnwatch { id, watch_id }.into()));
        let stopping = async {
            futures::future::join(
                futures::future::join_all(unsubscribes),
                futures::future::join_all(unwatches),
            )
            .await;
            if presence {
                let _ = shared
                    .command_ok(|id| proto::PresenceWatch { id, stop: true }.into())
                    .await;
            }
            let _ = shared.sync_listen().await;
        };
        let _ = tokio::time::timeout_at(deadline, stopping).await;
        // Let the application take what its streams hold.
        while queues.iter().any(|len| len() > 0) && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let undelivered = queues.iter().map(|len| len()).sum();
        let left = deadline.saturating_duration_since(Instant::now());
        let _ = tokio::time::timeout(left, self.flush()).await;
        let mut report = self.close().await;
        report.undelivered = undelivered;
        report
    }

    /// Closes the connection (telling the hub goodbye after the frames
    /// already queued) and stops reconnecting. Calls in flight fail with
    /// [`ClientError::Closed`]. The report says how many frames the hub had
    /// not acknowledged when the connection ended (their fate is unknown);
    /// call [`flush`](Self::flush) or [`drain`](Self::drain) first to wait
    /// for them.
    pub async fn close(&self) -> CloseReport {
        self.shared().close.send_replace(true);
        let mut state = self.state();
        let _ = tokio::time::timeout(
            Duration::from_secs(2),
            state.wait_for(|s| matches!(s, ConnectionState::Closed { .. })),
        )
        .await;
        let (frames, bytes) = self.shared().reg.lock().lost_at_close;
        CloseReport {
            unacknowledged: frames,
            unacknowledged_bytes: bytes,
            undelivered: 0,
        }
    }
}
