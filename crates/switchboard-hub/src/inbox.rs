//! The router task's inbox: one bounded, ordered channel from every
//! connection (and the gateway, and the hub's handle) to the driver that
//! owns the [`Router`](crate::router::Router). It carries the router's
//! inputs and the questions the driver answers by asking the router.

use switchboard_wire::proto;
use tokio::sync::{mpsc, oneshot};

use crate::router::{Input, Inspection};

/// What the router task is sent, in one ordered channel: inputs for the
/// router, and questions the task answers by asking the router (a dropped
/// receiver is ignored).
#[derive(Debug)]
// Inputs travel by value, as they did before questions shared their
// channel; boxing them would cost an allocation per batch of frames.
#[allow(clippy::large_enum_variant)]
pub(crate) enum Command {
    /// An input for the router.
    Input(Input),
    /// Send [`Router::inspect`] (for the status endpoints and the
    /// dashboard).
    Inspect(oneshot::Sender<Inspection>),
    /// Send [`Router::snapshot`] (for tests and operators comparing a
    /// primary with its standby).
    Snapshot(oneshot::Sender<proto::Snapshot>),
}

impl From<Input> for Command {
    fn from(input: Input) -> Command {
        Command::Input(input)
    }
}

/// The sending end of the router task's bounded inbox (`router_inbox`
/// commands); a full inbox makes senders wait.
#[derive(Debug, Clone)]
pub(crate) struct Inbox(mpsc::Sender<Command>);

/// An [`Inbox`] that does not keep the router task running.
#[derive(Debug, Clone)]
pub(crate) struct WeakInbox(mpsc::WeakSender<Command>);

/// The router task is gone.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Closed;

impl Inbox {
    /// An inbox holding at most `capacity` commands, and its receiving end
    /// for the router task.
    pub(crate) fn channel(capacity: usize) -> (Inbox, mpsc::Receiver<Command>) {
        let (tx, rx) = mpsc::channel(capacity.max(1));
        (Inbox(tx), rx)
    }

    /// Sends an input or a command, waiting while the inbox is full.
    pub(crate) async fn send(&self, command: impl Into<Command>) -> Result<(), Closed> {
        self.0.send(command.into()).await.map_err(|_| Closed)
    }

    /// Sends an input or a command if the inbox has room now.
    pub(crate) fn try_send(&self, command: impl Into<Command>) -> Result<(), Closed> {
        self.0.try_send(command.into()).map_err(|_| Closed)
    }

    /// A sender that does not keep the inbox open.
    pub(crate) fn downgrade(&self) -> WeakInbox {
        WeakInbox(self.0.downgrade())
    }
}

impl WeakInbox {
    /// The inbox, while the router task runs.
    pub(crate) fn upgrade(&self) -> Option<Inbox> {
        self.0.upgrade().map(Inbox)
    }
}
