//! The session engine over a hub: a client as a transport of `Session`
//! frames, and agent / manager drivers on top of it.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use futures::{Sink, Stream};
use switchboard_session::driver::{
    spawn_agent, spawn_manager, AgentHandle, AgentOptions, LinkKind, ManagerHandle, ManagerOptions,
    RpcHandler,
};
use switchboard_session::AgentConfig;
use switchboard_wire::{Frame, Kind};
use tokio::sync::mpsc;
use tokio_util::sync::PollSender;

use super::handle::Client;
use super::shared::Shared;
use super::types::ConnectionState;
use crate::ClientError;

/// The client's current connection as a duplex of `Session` frames, for
/// the session engine's drivers: a `Stream` of the session frames other
/// clients send to this one (all peers, or one), and a `Sink` of session
/// frames to send (each addressed by its `Session.peer`).
///
/// A link belongs to one connection: it ends when that connection drops.
/// Make a new one after the client has reconnected (the drivers started by
/// [`Client::session_agent`] and [`Client::session_manager`] do this).
pub struct SessionLink {
    shared: Arc<Shared>,
    peer: Option<String>,
    link_id: u64,
    rx: mpsc::Receiver<switchboard_wire::proto::Session>,
    tx: PollSender<super::registry::Out>,
}

impl std::fmt::Debug for SessionLink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SessionLink")
            .field("peer", &self.peer)
            .finish_non_exhaustive()
    }
}

impl SessionLink {
    pub(crate) fn open(
        shared: Arc<Shared>,
        peer: Option<&str>,
    ) -> Result<SessionLink, ClientError> {
        let (tx, rx) = mpsc::channel(shared.cfg.stream_capacity);
        let link_id = shared.next_id();
        let conn = {
            let mut reg = shared.reg.lock();
            let Some(conn) = reg.conn.clone() else {
                drop(reg);
                return Err(shared.down_error());
            };
            match peer {
                Some(p) => {
                    reg.sessions.insert(p.to_string(), (link_id, tx));
                }
                None => reg.session_any = Some((link_id, tx)),
            }
            conn
        };
        Ok(SessionLink {
            shared,
            peer: peer.map(str::to_string),
            link_id,
            rx,
            tx: PollSender::new(conn.tx),
        })
    }
}

impl Stream for SessionLink {
    type Item = Result<Frame, ClientError>;
    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.rx.poll_recv(cx).map(|o| o.map(|s| Ok(Frame::from(s))))
    }
}

impl Sink<Frame> for SessionLink {
    type Error = ClientError;
    fn poll_ready(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), ClientError>> {
        self.tx
            .poll_reserve(cx)
            .map_err(|_| ClientError::Disconnected)
    }
    fn start_send(mut self: Pin<&mut Self>, frame: Frame) -> Result<(), ClientError> {
        if !matches!(frame.kind, Some(Kind::Session(_))) {
            return Err(ClientError::InvalidArgument(format!(
                "a session link carries session frames only, not {}",
                frame.kind_name()
            )));
        }
        self.tx
            .send_item(frame.into())
            .map_err(|_| ClientError::Disconnected)
    }
    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<Result<(), ClientError>> {
        // Frames are written by the connection's writer as soon as queued.
        Poll::Ready(Ok(()))
    }
    fn poll_close(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Result<(), ClientError>> {
        self.tx.close();
        Poll::Ready(Ok(()))
    }
}

impl Drop for SessionLink {
    fn drop(&mut self) {
        let mut reg = self.shared.reg.lock();
        match &self.peer {
            Some(p) => {
                if reg
                    .sessions
                    .get(p)
                    .is_some_and(|(id, _)| *id == self.link_id)
                {
                    reg.sessions.remove(p);
                }
            }
            None => {
                if reg
                    .session_any
                    .as_ref()
                    .is_some_and(|(id, _)| *id == self.link_id)
                {
                    reg.session_any = None;
                }
            }
        }
    }
}

impl Client {
    /// The current connection as a [`SessionLink`] carrying session frames
    /// from `peer` (or from every peer when `None`).
    pub fn session_link(&self, peer: Option<&str>) -> Result<SessionLink, ClientError> {
        SessionLink::open(self.shared().clone(), peer)
    }

    /// Runs the session engine's agent (CPE-like side) over the hub,
    /// reporting to the manager registered as `manager_id`. `handler` runs
    /// the manager's RPCs one at a time, in order. The agent survives
    /// reconnects: a session cut by a lost connection is retried.
    pub fn session_agent<H: RpcHandler>(
        &self,
        manager_id: &str,
        config: AgentConfig,
        handler: H,
    ) -> AgentHandle {
        self.session_agent_with(manager_id, AgentOptions::new(config), handler)
    }

    /// [`session_agent`](Self::session_agent) with the driver's settings
    /// too (`task_timeout`, the reconnect back-off, a journal, the boot
    /// event, the jitter seed); `opts.peer` is set to `manager_id`.
    pub fn session_agent_with<H: RpcHandler>(
        &self,
        manager_id: &str,
        mut opts: AgentOptions,
        handler: H,
    ) -> AgentHandle {
        opts.peer = Some(manager_id.to_string());
        let client = self.clone();
        let manager = manager_id.to_string();
        spawn_agent(
            opts,
            move || {
                let client = client.clone();
                let manager = manager.clone();
                async move {
                    client
                        .wait_connected(Duration::from_secs(30))
                        .await
                        .map_err(std::io::Error::other)?;
                    client
                        .session_link(Some(&manager))
                        .map_err(std::io::Error::other)
                }
            },
            handler,
        )
    }

    /// Runs the session engine's manager (ACS-like side) over the hub: every
    /// client that runs an agent for this client's id is an agent, named by
    /// its client id in [`ManagerHandle::rpc`]. The manager re-attaches
    /// after each reconnect.
    pub fn session_manager(&self, opts: ManagerOptions) -> ManagerHandle {
        let handle = spawn_manager(opts);
        let client = self.clone();
        let h = handle.clone();
        let weak = Arc::downgrade(&client.inner);
        drop(client);
        let mut state = self.state();
        // Registered now, not in the task: session frames that arrive
        // before the task runs (an agent's first Inform) wait in the link
        // instead of finding no link and being dropped.
        let first = match &*state.borrow() {
            ConnectionState::Connected { generation, .. } => {
                self.session_link(None).ok().map(|l| (*generation, l))
            }
            _ => None,
        };
        tokio::spawn(async move {
            let mut attached = 0u64;
            if let Some((generation, link)) = first {
                if h.attach(link, LinkKind::Hub).await.is_err() {
                    return;
                }
                attached = generation;
            }
            loop {
                let generation = {
                    let s = state
                        .wait_for(|s| match s {
                            ConnectionState::Connected { generation, .. } => *generation > attached,
                            ConnectionState::Closed { .. } => true,
                            _ => false,
                        })
                        .await;
                    match s.as_deref() {
                        Ok(ConnectionState::Connected { generation, .. }) => *generation,
                        _ => return,
                    }
                };
                let Some(inner) = weak.upgrade() else { return };
                let client = Client { inner };
                let link = client.session_link(None);
                drop(client);
                if let Ok(link) = link {
                    if h.attach(link, LinkKind::Hub).await.is_err() {
                        return;
                    }
                }
                attached = generation;
            }
        });
        handle
    }
}
