//! Registers the remote seam's port: one virtual connection through which
//! the remote side (a federation of hubs) takes what the router hands it
//! and sends what other hubs answer (see [`crate::router::remote`]).

use tokio::sync::mpsc;

use crate::outbox::{Outbox, Taken};
use crate::router::remote::{PortSender, Remote, RemotePort, PORT_BUFFER, PORT_ID, PORT_TRANSPORT};
use crate::router::Input;
use crate::shared::Shared;
use crate::transport::{drain, Drain};

/// Registers the port with the router and hands it to `remote`.
pub(crate) async fn open(shared: &std::sync::Arc<Shared>, remote: &dyn Remote) {
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
    let (tx, rx) = mpsc::channel(PORT_BUFFER);
    let connect = Input::Connect {
        conn,
        info,
        outbox: outbox.clone(),
    };
    if shared.inbox.send(connect).await.is_err() {
        return;
    }
    let inbox = &shared.inbox;
    let batch = shared.limits.write_batch_bytes;
    let reader = outbox.clone();
    // The reader holds the inbox only while it drains: it stops when the
    // outbox closes at shutdown.
    let weak = inbox.downgrade();
    tokio::spawn(async move {
        let Some(inbox) = weak.upgrade() else { return };
        drain(&reader, batch, &inbox, &mut Forward(tx)).await;
    });
    remote.attach(RemotePort::new(PortSender::new(inbox, conn, outbox), rx));
}

/// Forwards the port's frames to the remote side's channel, waiting while
/// it is full (the port's outbox then fills: the router parks and fails
/// messages, never waits).
struct Forward(mpsc::Sender<switchboard_wire::Frame>);

impl Drain for Forward {
    async fn batch(&mut self, taken: &mut Taken) -> bool {
        for out in taken.frames.drain(..) {
            if self.0.send(out.into_frame()).await.is_err() {
                return false;
            }
        }
        true
    }
}
