//! Clients joining and leaving ([`Presence`]): one watch at the hub for
//! every stream the application holds, and the catch-up after a
//! reconnect that lost the hub's state ([`resync`]).

use std::collections::BTreeMap;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::task::{Context, Poll};

use futures::Stream;
use switchboard_wire::{proto, Frame, Kind};

use super::events::ClientEvent;
use super::queue::{Overflow, Pushed, Queue};
use super::shared::{unexpected, Shared};
use super::types::{ClientInfo, PresenceEvent};
use crate::ClientError;

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
pub(crate) fn resync(shared: &Shared, clients: Vec<ClientInfo>) {
    let mut reg = shared.reg.lock();
    let now: BTreeMap<String, ClientInfo> = clients
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
        shared.dropped.fetch_add(lost, Ordering::Relaxed);
        shared.emit(ClientEvent::Undelivered {
            stream: "presence",
            dropped: lost,
        });
    }
}
