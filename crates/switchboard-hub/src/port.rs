//! Registers the remote seam's port: one virtual connection through which
//! the remote side (a federation of hubs) takes what the router hands it
//! and sends what other hubs answer (see [`crate::router::remote`]).

use std::collections::VecDeque;
use std::sync::Arc;

use switchboard_wire::{ErrorCode, Frame, LENGTH_PREFIX_LEN};

use crate::ids::ConnId;
use crate::inbox::{Inbox, WeakInbox};
use crate::metrics::Via;
use crate::outbox::{Outbox, Taken};
pub use crate::router::remote::RemotePort;
use crate::router::remote::{Remote, PORT_ID, PORT_TRANSPORT};
use crate::router::Input;
use crate::shared::Shared;
use crate::stats::HubStats;
use crate::transport::drain::{next_batch, Next};

/// What a [`RemotePort`] holds.
struct PortInner {
    sender: PortSender,
    /// The port's outbox, which the remote side drains in its own task
    /// (no task or channel between the router and the remote side).
    outbox: Arc<Outbox>,
    /// Bytes taken from the outbox at a time.
    batch_bytes: usize,
    taken: Taken,
    /// Taken and not yet handed out by [`RemotePort::recv`].
    ready: VecDeque<Frame>,
    /// The outbox closed or was killed: nothing more comes.
    done: bool,
}

impl RemotePort {
    fn new(sender: PortSender, outbox: Arc<Outbox>, batch_bytes: usize) -> RemotePort {
        RemotePort(Box::new(PortInner {
            sender,
            outbox,
            batch_bytes,
            taken: Taken::default(),
            ready: VecDeque::new(),
            done: false,
        }))
    }

    fn inner(&mut self) -> &mut PortInner {
        self.0
            .downcast_mut()
            .expect("a RemotePort is built by this module")
    }

    /// The next frame the router delivered to the port; `None` when the
    /// hub stopped.
    pub async fn recv(&mut self) -> Option<Frame> {
        let inner = self.inner();
        if inner.ready.is_empty() {
            let mut batch = Vec::new();
            if !inner.recv_many(&mut batch).await {
                return None;
            }
            inner.ready.extend(batch);
        }
        inner.ready.pop_front()
    }

    /// Waits for what the router delivered to the port and appends all of
    /// it that is there now (at least one frame, in order) to `frames`;
    /// `false` when the hub stopped. The caller's task takes the frames
    /// straight from the port's outbox: while it does not call, the
    /// outbox fills and the router parks and then fails messages
    /// (`QUEUE_FULL`), never waiting.
    pub async fn recv_many(&mut self, frames: &mut Vec<Frame>) -> bool {
        let inner = self.inner();
        if !inner.ready.is_empty() {
            frames.extend(inner.ready.drain(..));
            return true;
        }
        inner.recv_many(frames).await
    }

    /// Sends into the router as the port.
    pub fn sender(&mut self) -> PortSender {
        self.inner().sender.clone()
    }
}

impl PortInner {
    async fn recv_many(&mut self, frames: &mut Vec<Frame>) -> bool {
        let stats = self.sender.stats.clone();
        loop {
            if self.done {
                return false;
            }
            let Some(inbox) = self.sender.inbox.upgrade() else {
                return false;
            };
            match next_batch(&self.outbox, self.batch_bytes, &inbox, &mut self.taken).await {
                Next::Batch => {}
                Next::Closed | Next::Killed => {
                    self.done = true;
                    return false;
                }
            }
            drop(inbox);
            self.done = self.taken.close;
            let before = frames.len();
            for out in self.taken.frames.drain(..) {
                let len = LENGTH_PREFIX_LEN + out.encoded_len();
                let frame = out.into_frame();
                stats.metrics.frame_out(Via::Remote, frame.kind_name(), len);
                frames.push(frame);
            }
            if let Some(queued) = self.taken.stamped.take() {
                stats
                    .metrics
                    .observe_delivery_delay(Via::Remote, queued.elapsed());
            }
            if frames.len() > before {
                return true;
            }
        }
    }
}

/// Sends frames into the router as the port (see the module docs).
#[derive(Debug, Clone)]
pub struct PortSender {
    /// Weak: the port must not keep the router task running.
    inbox: WeakInbox,
    conn: ConnId,
    outbox: Arc<Outbox>,
    stats: Arc<HubStats>,
}

impl PortSender {
    fn new(inbox: &Inbox, conn: ConnId, outbox: Arc<Outbox>, stats: Arc<HubStats>) -> PortSender {
        PortSender {
            inbox: inbox.downgrade(),
            conn,
            outbox,
            stats,
        }
    }

    /// Hands `frames` to the router, in order, waiting while its inbox is
    /// full; `false` when the hub stopped.
    pub async fn send(&self, frames: Vec<Frame>) -> bool {
        let Some(inbox) = self.inbox.upgrade() else {
            return false;
        };
        for f in &frames {
            let len = LENGTH_PREFIX_LEN + prost::Message::encoded_len(f);
            self.stats.metrics.frame_in(Via::Remote, f, len);
        }
        inbox
            .send(Input::Frames {
                conn: self.conn,
                frames,
            })
            .await
            .is_ok()
    }

    /// Fails request `id` of the local client `requester`, handed to the
    /// port earlier, with `code` and `message` (an answer of the other
    /// hub: `NO_SUCH_CLIENT`, `NOT_LISTENING`, `TARGET_GONE`...). Ignored
    /// when that request is no longer pending. With `id` 0: a session
    /// frame of the local client `requester` the remote side could not
    /// deliver; the client gets `Error{id: 0}` as for a session frame to
    /// a client that is not connected. `false` when the hub stopped.
    pub async fn fail(&self, requester: &str, id: u64, code: ErrorCode, message: String) -> bool {
        let Some(inbox) = self.inbox.upgrade() else {
            return false;
        };
        inbox
            .send(Input::RemoteFailed {
                conn: self.conn,
                requester: requester.to_owned(),
                id,
                code,
                message,
            })
            .await
            .is_ok()
    }

    /// Closes the local client `id` with a `Goodbye` of `code` and
    /// `message` (its id turned out to be held by another hub), like a
    /// takeover; ignored when no client `id` is registered. `false` when
    /// the hub stopped.
    pub async fn close_client(&self, id: &str, code: ErrorCode, message: String) -> bool {
        let Some(inbox) = self.inbox.upgrade() else {
            return false;
        };
        inbox
            .send(Input::RemoteClose {
                conn: self.conn,
                id: id.to_owned(),
                code,
                message,
            })
            .await
            .is_ok()
    }

    /// Hands `publish` (its `from` naming the sender) to one local member
    /// of queue group `group` on `pattern` (see
    /// [`Remote::carries_groups`]); `false` when the hub stopped.
    pub async fn publish_group(
        &self,
        pattern: &str,
        group: &str,
        publish: switchboard_wire::proto::Publish,
    ) -> bool {
        let Some(inbox) = self.inbox.upgrade() else {
            return false;
        };
        inbox
            .send(Input::RemoteGroup {
                conn: self.conn,
                pattern: pattern.to_owned(),
                group: group.to_owned(),
                publish,
            })
            .await
            .is_ok()
    }

    /// Hands session frame `session` (its `peer` naming the sender, a
    /// client of another hub) to the local client `to`, in order with
    /// the port's other inputs; `false` when the hub stopped.
    pub async fn session(&self, to: &str, session: switchboard_wire::proto::Session) -> bool {
        let Some(inbox) = self.inbox.upgrade() else {
            return false;
        };
        inbox
            .send(Input::RemoteSession {
                conn: self.conn,
                to: to.to_owned(),
                session,
            })
            .await
            .is_ok()
    }

    /// The client `id` of another hub (`hub`) joined (`Some`) or left
    /// (`None`) the federation: local presence watchers are told, and
    /// `ListClients` lists it meanwhile (transport [`PORT_TRANSPORT`],
    /// `addr` the hub's name). `false` when the hub stopped.
    pub async fn presence(&self, id: &str, hub: Option<&str>) -> bool {
        let Some(inbox) = self.inbox.upgrade() else {
            return false;
        };
        let info = switchboard_wire::proto::ClientInfo {
            client_id: id.to_owned(),
            transport: PORT_TRANSPORT.into(),
            addr: hub.unwrap_or_default().to_owned(),
            connected_at_ms: switchboard_discovery::now_ms(),
            ..Default::default()
        };
        inbox
            .send(Input::RemotePresence {
                conn: self.conn,
                info,
                joined: hub.is_some(),
            })
            .await
            .is_ok()
    }

    /// Answers command `id` of the local client `requester`, handed to
    /// the remote seam's [`Remote::kv`], with `frame` (a `KvValue`).
    /// Ignored when that command is no longer pending. `false` when the
    /// hub stopped.
    pub async fn answer(&self, requester: &str, id: u64, frame: Frame) -> bool {
        let Some(inbox) = self.inbox.upgrade() else {
            return false;
        };
        inbox
            .send(Input::RemoteAnswer {
                conn: self.conn,
                requester: requester.to_owned(),
                id,
                frame,
            })
            .await
            .is_ok()
    }

    /// Hands `direct` (from a client of another hub, its `from` naming
    /// it, id 0) to the router and waits until the router took it:
    /// `Some(true)` when the local target was there (the direct is queued
    /// for it, or waits for room as any direct), `Some(false)` when it
    /// was not (dropped and counted undeliverable); `None` when the hub
    /// stopped.
    pub async fn deliver_direct(&self, direct: switchboard_wire::proto::Direct) -> Option<bool> {
        let inbox = self.inbox.upgrade()?;
        let (taken, answer) = futures::channel::oneshot::channel();
        inbox
            .send(Input::RemoteDirect {
                conn: self.conn,
                direct,
                taken,
            })
            .await
            .ok()?;
        drop(inbox);
        answer.await.ok()
    }

    /// Whether the hub still runs the port.
    pub fn is_open(&self) -> bool {
        self.outbox.is_open()
    }
}

/// Registers the port with the router and hands it to `remote`.
pub(crate) async fn open(shared: &Arc<Shared>, remote: &dyn Remote) {
    let conn = shared.alloc_conn();
    let outbox = Outbox::gated(conn, shared.gate.clone());
    let info = switchboard_wire::proto::ClientInfo {
        client_id: PORT_ID.into(),
        transport: PORT_TRANSPORT.into(),
        addr: String::new(),
        connected_at_ms: switchboard_discovery::now_ms(),
        agent: "remote seam".into(),
        reliable: false,
        listen: false,
        principal: String::new(),
        uid: None,
    };
    let connect = Input::Connect {
        conn,
        info,
        outbox: outbox.clone(),
    };
    if shared.inbox.send(connect).await.is_err() {
        return;
    }
    let sender = PortSender::new(&shared.inbox, conn, outbox.clone(), shared.stats.clone());
    let batch = shared.limits.write_batch_bytes;
    remote.attach(RemotePort::new(sender, outbox, batch));
}
