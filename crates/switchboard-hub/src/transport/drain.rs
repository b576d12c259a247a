//! Taking frames from an [`Outbox`] until it closes: the loop every consumer
//! of an outbox runs (a connection's writer, an HTTP client's pump).

use std::future::Future;
use std::sync::Arc;
use std::time::Instant;

use crate::inbox::Inbox;
use crate::outbox::{Outbox, Taken, IDLE_KEEP_FRAMES};
use crate::router::Input;

/// What a consumer does with what it takes from an outbox.
pub(crate) trait Drain: Send {
    /// Handles one batch: `taken.dropped` pub/sub deliveries were dropped
    /// before `taken.frames` (either may be empty, not both). `false`
    /// stops the drain (the consumer failed).
    fn batch(&mut self, taken: &mut Taken) -> impl Future<Output = bool> + Send;

    /// The outbox was killed: the drain stops; `outbox` may hold last
    /// words ([`Outbox::take_last_words`]) worth one try.
    fn killed(&mut self, _outbox: &Outbox) {}

    /// A batch holding the outbox's stamped frame, queued at `queued`, was
    /// handled (written): the consumer records the delivery queue delay.
    fn sampled(&mut self, _queued: Instant) {}
}

/// Takes batches of about `batch_bytes` from `outbox` into `consumer`
/// until the outbox closes (after its last frames) or is killed, or the
/// consumer fails. Meanwhile tells the router when a take made room it
/// waits for (`Input::Drained`, through `inbox`), waits for the
/// standby to hold what the next frame depends on ([`Gate`]), and hands
/// the consumer the stamp of each batch that held the outbox's stamped
/// frame once the batch is handled ([`Drain::sampled`]).
///
/// [`Gate`]: crate::outbox::Gate
pub(crate) async fn drain(
    outbox: &Arc<Outbox>,
    batch_bytes: usize,
    inbox: &Inbox,
    consumer: &mut impl Drain,
) {
    let mut taken = Taken::default();
    loop {
        match next_batch(outbox, batch_bytes, inbox, &mut taken).await {
            Next::Killed => {
                consumer.killed(outbox);
                return;
            }
            Next::Closed => return,
            Next::Batch => {}
        }
        let stamped = taken.stamped;
        if !consumer.batch(&mut taken).await {
            return;
        }
        if let Some(queued) = stamped {
            consumer.sampled(queued);
        }
        if taken.close {
            return;
        }
    }
}

/// What [`next_batch`] found.
pub(crate) enum Next {
    /// `taken` holds frames or dropped deliveries (and `taken.close`
    /// says whether they are the outbox's last).
    Batch,
    /// The outbox closed and is empty.
    Closed,
    /// The outbox was killed.
    Killed,
}

/// Waits for the next batch of about `batch_bytes` from `outbox` into
/// `taken` (one step of [`drain`], for a consumer that pulls: it tells
/// the router of room made and waits for the [`Gate`] the same way).
///
/// [`Gate`]: crate::outbox::Gate
pub(crate) async fn next_batch(
    outbox: &Arc<Outbox>,
    batch_bytes: usize,
    inbox: &Inbox,
    taken: &mut Taken,
) -> Next {
    loop {
        outbox.take(batch_bytes, taken);
        if taken.killed {
            return Next::Killed;
        }
        if taken.want_drained {
            let _ = inbox.try_send(Input::Drained {
                conn: outbox.conn(),
            });
        }
        if !taken.frames.is_empty() || taken.dropped != 0 {
            return Next::Batch;
        }
        if taken.close {
            return Next::Closed;
        }
        if taken.held != 0 && !outbox.gate().wait(outbox, taken.held) {
            // Released meanwhile: take again.
            continue;
        }
        // Going idle: a light connection holds no queue memory while it
        // waits (a busy one keeps its capacity for the next burst).
        if taken.frames.capacity() <= IDLE_KEEP_FRAMES {
            taken.frames = Vec::new();
        }
        outbox.release_idle();
        tokio::select! {
            _ = outbox.notified() => {}
            _ = outbox.cancelled().cancelled() => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use switchboard_wire::{proto, Frame};

    use super::*;
    use crate::ConnId;

    /// Collects what it is given.
    #[derive(Default)]
    struct Collect {
        frames: Vec<Frame>,
        last_words: Option<Frame>,
        samples: Vec<Instant>,
    }

    impl Drain for Collect {
        async fn batch(&mut self, taken: &mut Taken) -> bool {
            self.frames
                .extend(taken.frames.drain(..).map(crate::Out::into_frame));
            true
        }

        fn killed(&mut self, outbox: &Outbox) {
            self.last_words = outbox.take_last_words();
        }

        fn sampled(&mut self, queued: Instant) {
            self.samples.push(queued);
        }
    }

    #[tokio::test]
    async fn a_closing_outbox_is_drained_to_its_end_and_a_killed_one_leaves_last_words() {
        let (inbox, _router) = Inbox::channel(1);
        let ping = Frame::from(proto::Ping { nonce: 7 });
        let outbox = Outbox::new(ConnId(1));
        outbox.close(Some(ping.clone()));
        let mut seen = Collect::default();
        drain(&outbox, 1024, &inbox, &mut seen).await;
        assert_eq!((seen.frames, seen.last_words), (vec![ping.clone()], None));

        let outbox = Outbox::new(ConnId(2));
        let mut seen = Collect::default();
        let waiting = drain(&outbox, 1024, &inbox, &mut seen);
        outbox.kill(Some(ping.clone()));
        waiting.await;
        assert_eq!((seen.frames, seen.last_words), (vec![], Some(ping)));
    }

    #[tokio::test]
    async fn a_written_batch_with_the_stamped_frame_is_sampled() {
        let (inbox, _router) = Inbox::channel(1);
        let limits = crate::outbox::QueueLimits {
            frames: 8,
            bytes: 1 << 20,
            hard_bytes: 1 << 21,
        };
        let queued = Instant::now();
        let outbox = Outbox::new(ConnId(3));
        let ping = crate::Out::from(Frame::from(proto::Ping { nonce: 1 }));
        outbox.push_control(ping.clone(), &limits, 0, Some(queued));
        outbox.push_control(ping, &limits, 0, Some(Instant::now()));
        // Last words are never stamped.
        outbox.close(Some(Frame::from(proto::Ping { nonce: 2 })));
        let mut seen = Collect::default();
        drain(&outbox, 1, &inbox, &mut seen).await;
        assert_eq!((seen.frames.len(), seen.samples), (3, vec![queued]));
    }
}
