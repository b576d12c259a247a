//! The router task's inbox: one bounded, ordered channel from every
//! connection (and the gateway, and the hub's handle) to the driver that
//! owns the [`Router`](crate::router::Router). It carries the router's
//! inputs and the questions the driver answers by asking the router.
//!
//! Beside it runs a short lane for reliable clients' acknowledgements
//! ([`Input::Acked`]), which the driver takes before the ordered channel:
//! an acknowledgement only frees a retransmit buffer, so it must not wait
//! behind up to [`router_inbox`](crate::Limits::router_inbox) batches of
//! other clients' publishes while the router keeps numbering deliveries
//! to the client that sent it (each counted against its
//! [`queue_hard_bytes`](crate::Limits::queue_hard_bytes) until
//! acknowledged).

use futures::future::{BoxFuture, Either};
use switchboard_wire::proto;
use tokio::sync::{mpsc, oneshot};

use crate::ids::ConnId;
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
/// commands); a full inbox makes senders wait. It holds the
/// acknowledgement lane's sender too.
#[derive(Debug, Clone)]
pub(crate) struct Inbox {
    commands: mpsc::Sender<Command>,
    acks: mpsc::Sender<Input>,
}

/// An [`Inbox`] that does not keep the router task running.
#[derive(Debug, Clone)]
pub(crate) struct WeakInbox {
    commands: mpsc::WeakSender<Command>,
    acks: mpsc::WeakSender<Input>,
}

/// The router task's end of its [`Inbox`]: the ordered channel and the
/// acknowledgement lane.
#[derive(Debug)]
pub(crate) struct InboxRx {
    commands: mpsc::Receiver<Command>,
    acks: mpsc::Receiver<Input>,
}

/// The router task is gone.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Closed;

/// What [`Inbox::send`] returns: done at once, or waiting for room (boxed).
pub(crate) type Sending<'a> =
    Either<std::future::Ready<Result<(), Closed>>, BoxFuture<'a, Result<(), Closed>>>;

impl Inbox {
    /// An inbox holding at most `capacity` commands (and as many
    /// acknowledgements in its lane), and its receiving end for the router
    /// task.
    pub(crate) fn channel(capacity: usize) -> (Inbox, InboxRx) {
        let (tx, rx) = mpsc::channel(capacity.max(1));
        let (ack_tx, ack_rx) = mpsc::channel(capacity.max(1));
        let inbox = Inbox {
            commands: tx,
            acks: ack_tx,
        };
        let rx = InboxRx {
            commands: rx,
            acks: ack_rx,
        };
        (inbox, rx)
    }

    /// Sends an input or a command, waiting while the inbox is full.
    ///
    /// The command is offered when the call is made, not when the future
    /// is first polled: only a full inbox makes the future wait, and then
    /// in an allocation of its own. Connection tasks hold this future in
    /// their state for their whole life, so it must not carry a slot the
    /// size of a command (three of them, awaited as an `async fn`).
    pub(crate) fn send(&self, command: impl Into<Command>) -> Sending<'_> {
        match self.commands.try_send(command.into()) {
            Ok(()) => Either::Left(std::future::ready(Ok(()))),
            Err(mpsc::error::TrySendError::Closed(_)) => {
                Either::Left(std::future::ready(Err(Closed)))
            }
            Err(mpsc::error::TrySendError::Full(command)) => Either::Right(Box::pin(async move {
                self.commands.send(command).await.map_err(|_| Closed)
            })),
        }
    }

    /// Sends an input or a command if the inbox has room now.
    pub(crate) fn try_send(&self, command: impl Into<Command>) -> Result<(), Closed> {
        self.commands.try_send(command.into()).map_err(|_| Closed)
    }

    /// Sends connection `conn`'s acknowledgement of everything up to
    /// `up_to` ([`Input::Acked`]) in the lane the router task takes first;
    /// when the lane is full it waits its turn in the ordered channel
    /// instead (so the lane's memory stays bounded).
    /// Like [`send`](Inbox::send), offered when called.
    pub(crate) fn send_ack(&self, conn: ConnId, up_to: u64) -> Sending<'_> {
        match self.acks.try_send(Input::Acked { conn, up_to }) {
            Ok(()) => Either::Left(std::future::ready(Ok(()))),
            Err(mpsc::error::TrySendError::Full(input)) => self.send(input),
            Err(mpsc::error::TrySendError::Closed(_)) => {
                Either::Left(std::future::ready(Err(Closed)))
            }
        }
    }

    /// A sender that does not keep the inbox open.
    pub(crate) fn downgrade(&self) -> WeakInbox {
        WeakInbox {
            commands: self.commands.downgrade(),
            acks: self.acks.downgrade(),
        }
    }
}

impl WeakInbox {
    /// The inbox, while the router task runs.
    pub(crate) fn upgrade(&self) -> Option<Inbox> {
        Some(Inbox {
            commands: self.commands.upgrade()?,
            acks: self.acks.upgrade()?,
        })
    }
}

impl InboxRx {
    /// Waits for commands and moves up to `limit` of them into `buf`:
    /// first the acknowledgements waiting in the lane (at most half of
    /// `limit`, so a flood of them never starves the rest), then what
    /// waits in the ordered channel. Returns how many were moved; 0 once
    /// every [`Inbox`] is gone.
    pub(crate) async fn recv_many(&mut self, buf: &mut Vec<Command>, limit: usize) -> usize {
        let limit = limit.max(1);
        let acks = (limit / 2).max(1);
        let mut n = self.take_acks(buf, acks);
        if n == 0 {
            tokio::select! {
                biased;
                Some(input) = self.acks.recv() => {
                    buf.push(Command::Input(input));
                    n = 1 + self.take_acks(buf, acks - 1);
                }
                got = self.commands.recv_many(buf, limit) => return got,
            }
        }
        // Whatever else is ready comes along, without waiting.
        while n < limit {
            match self.commands.try_recv() {
                Ok(command) => {
                    buf.push(command);
                    n += 1;
                }
                Err(_) => break,
            }
        }
        n
    }

    /// Moves up to `limit` waiting acknowledgements into `buf`.
    fn take_acks(&mut self, buf: &mut Vec<Command>, limit: usize) -> usize {
        let mut n = 0;
        while n < limit {
            match self.acks.try_recv() {
                Ok(input) => {
                    buf.push(Command::Input(input));
                    n += 1;
                }
                Err(_) => break,
            }
        }
        n
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    /// A batch of frames from connection `conn`, as a reader sends it.
    fn frames(conn: u64) -> Input {
        Input::Frames {
            conn: ConnId(conn),
            frames: vec![switchboard_wire::Frame::publish("t", "x")],
        }
    }

    /// What one `recv_many` of at most `limit` returned: `Some(up_to)` for
    /// an acknowledgement, `None` for anything else.
    async fn take(rx: &mut InboxRx, limit: usize) -> Vec<Option<u64>> {
        let mut buf = Vec::new();
        let n = tokio::time::timeout(Duration::from_secs(10), rx.recv_many(&mut buf, limit))
            .await
            .expect("something was waiting");
        assert_eq!(n, buf.len());
        buf.iter()
            .map(|c| match c {
                Command::Input(Input::Acked { up_to, .. }) => Some(*up_to),
                _ => None,
            })
            .collect()
    }

    #[tokio::test]
    async fn an_acknowledgement_overtakes_a_full_inbox_of_other_batches() {
        let (inbox, mut rx) = Inbox::channel(8);
        for _ in 0..8 {
            inbox.try_send(frames(1)).expect("room");
        }
        assert!(inbox.try_send(frames(1)).is_err(), "the inbox is full");
        // The subscriber's reader hands its acknowledgement over at once
        // (a send in the ordered channel would wait for eight batches).
        tokio::time::timeout(Duration::from_secs(10), inbox.send_ack(ConnId(2), 64))
            .await
            .expect("not waiting for room")
            .expect("open");
        // The router takes it first, then the batches in their order.
        assert_eq!(take(&mut rx, 4).await, [Some(64), None, None, None]);
        assert_eq!(take(&mut rx, 64).await, [None; 5]);
    }

    #[tokio::test]
    async fn acknowledgements_take_at_most_half_of_a_wake_up() {
        let (inbox, mut rx) = Inbox::channel(8);
        for up_to in 1..=6 {
            inbox.send_ack(ConnId(2), up_to).await.expect("open");
        }
        inbox.try_send(frames(1)).expect("room");
        assert_eq!(take(&mut rx, 4).await, [Some(1), Some(2), None]);
        assert_eq!(
            take(&mut rx, 64).await,
            [Some(3), Some(4), Some(5), Some(6)]
        );
        // Nothing waits in the lane: the ordered channel wakes the router.
        inbox.try_send(frames(1)).expect("room");
        assert_eq!(take(&mut rx, 64).await, [None]);
        // ... and so does the lane alone.
        inbox.send_ack(ConnId(2), 7).await.expect("open");
        assert_eq!(take(&mut rx, 64).await, [Some(7)]);
    }

    #[tokio::test]
    async fn a_full_lane_sends_in_the_ordered_channel_and_a_closed_inbox_ends() {
        let (inbox, mut rx) = Inbox::channel(2);
        inbox.send_ack(ConnId(2), 1).await.expect("open");
        inbox.send_ack(ConnId(2), 2).await.expect("open");
        inbox.try_send(frames(1)).expect("room");
        // The lane is full: this one takes its turn behind the batch.
        inbox.send_ack(ConnId(2), 3).await.expect("open");
        assert_eq!(take(&mut rx, 64).await, [Some(1), Some(2), None, Some(3)]);
        drop(inbox);
        let mut buf = Vec::new();
        assert_eq!(rx.recv_many(&mut buf, 8).await, 0, "every sender is gone");
    }
}
