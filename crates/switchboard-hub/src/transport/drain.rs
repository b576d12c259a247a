//! Taking frames from an [`Outbox`] until it closes: the loop every consumer
//! of an outbox runs (a connection's writer, an HTTP client's pump).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::time::Sleep;

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

/// How long a consumer that may stop while its outbox is idle keeps
/// waiting: it stops once a whole `period` passed without a batch, so
/// after between one and two periods of idleness. One timer, armed once
/// and re-armed once a period while batches flow (a batch only marks the
/// linger busy), so the hot path reads no clock for it.
pub(crate) struct Linger {
    period: Duration,
    /// Armed the first time the consumer waits.
    sleep: Option<Pin<Box<Sleep>>>,
    /// A batch was taken since the timer was last armed.
    busy: bool,
}

impl Linger {
    /// A linger of `period`.
    pub(crate) fn new(period: Duration) -> Linger {
        Linger {
            period,
            sleep: None,
            busy: false,
        }
    }

    /// Resolves once a whole period passed without a batch. Cancel-safe.
    async fn idle(&mut self) {
        let Linger {
            period,
            sleep,
            busy,
        } = self;
        let sleep = sleep.get_or_insert_with(|| {
            *busy = false;
            Box::pin(tokio::time::sleep(*period))
        });
        loop {
            sleep.as_mut().await;
            if !std::mem::take(busy) {
                return;
            }
            let next = tokio::time::Instant::now() + *period;
            sleep.as_mut().reset(next);
        }
    }
}

/// Takes batches of about `batch_bytes` from `outbox` into `consumer`
/// until the outbox closes (after its last frames) or is killed, or the
/// consumer fails; with a `linger`, also once the outbox was idle that
/// long (`true`: the consumer may be started again, by whoever waits on
/// [`Outbox::notified`] meanwhile; a frame queued after the last take
/// leaves that wake-up set, or for a frame the gate holds back its
/// release does, so none is stranded). Meanwhile tells the router when a take made room it
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
    mut linger: Option<&mut Linger>,
) -> bool {
    let mut taken = Taken::default();
    loop {
        match wait_batch(
            outbox,
            batch_bytes,
            inbox,
            &mut taken,
            linger.as_deref_mut(),
        )
        .await
        {
            None => return true,
            Some(Next::Killed) => {
                consumer.killed(outbox);
                return false;
            }
            Some(Next::Closed) => return false,
            Some(Next::Batch) => {}
        }
        let stamped = taken.stamped;
        if !consumer.batch(&mut taken).await {
            return false;
        }
        if let Some(queued) = stamped {
            consumer.sampled(queued);
        }
        if taken.close {
            return false;
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
        if let Some(next) = wait_batch(outbox, batch_bytes, inbox, taken, None).await {
            return next;
        }
    }
}

/// [`next_batch`], or `None` once the outbox was idle for `linger`
/// (never without one). Frames this writer saw held back by the gate do
/// not count as idle; frames queued already held never woke it (the gate
/// wakes the outbox on their release), so it may linger out meanwhile.
async fn wait_batch(
    outbox: &Arc<Outbox>,
    batch_bytes: usize,
    inbox: &Inbox,
    taken: &mut Taken,
    mut linger: Option<&mut Linger>,
) -> Option<Next> {
    loop {
        outbox.take(batch_bytes, taken);
        if taken.killed {
            return Some(Next::Killed);
        }
        if taken.want_drained {
            let _ = inbox.try_send(Input::Drained {
                conn: outbox.conn(),
            });
        }
        if !taken.frames.is_empty() || taken.dropped != 0 {
            if let Some(linger) = linger.as_deref_mut() {
                linger.busy = true;
            }
            return Some(Next::Batch);
        }
        if taken.close {
            return Some(Next::Closed);
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
        let idle = async {
            match linger.as_deref_mut() {
                Some(linger) if taken.held == 0 => linger.idle().await,
                _ => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = outbox.notified() => {}
            _ = outbox.cancelled().cancelled() => {}
            _ = idle => {
                // The writer leaves: its wait on the `Cancel` is gone now
                // (`select!` dropped it), which may have emptied the list
                // of further waiters that the release above found in use.
                outbox.release_idle();
                return None;
            }
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
        /// Queued into the outbox while the first batch is handled.
        then_queue: Option<(Arc<Outbox>, crate::Out)>,
    }

    const LIMITS: crate::outbox::QueueLimits = crate::outbox::QueueLimits {
        frames: 8,
        bytes: 1 << 20,
        hard_bytes: 1 << 21,
    };

    impl Drain for Collect {
        async fn batch(&mut self, taken: &mut Taken) -> bool {
            self.frames
                .extend(taken.frames.drain(..).map(crate::Out::into_frame));
            if let Some((outbox, out)) = self.then_queue.take() {
                outbox.push_control(out, &LIMITS, 0, None);
            }
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
        drain(&outbox, 1024, &inbox, &mut seen, None).await;
        assert_eq!((seen.frames, seen.last_words), (vec![ping.clone()], None));

        let outbox = Outbox::new(ConnId(2));
        let mut seen = Collect::default();
        let waiting = drain(&outbox, 1024, &inbox, &mut seen, None);
        outbox.kill(Some(ping.clone()));
        waiting.await;
        assert_eq!((seen.frames, seen.last_words), (vec![], Some(ping)));
    }

    /// A lingering drain takes what is queued while it runs, stops once
    /// the outbox was idle for its period (not before), and a frame queued
    /// after it stopped leaves the outbox's wake-up set for whoever starts
    /// the next drain: nothing is stranded. Nor does it leave the list of
    /// further waiters on the kill allocated when the connection's reader
    /// waited there first (every idle connection kept one).
    #[tokio::test]
    async fn a_lingering_drain_stops_when_idle_and_strands_nothing() {
        use std::future::Future;
        use std::task::{Context, Waker};
        use std::time::Duration;

        use futures::FutureExt;

        let (inbox, _router) = Inbox::channel(1);
        let ping = |nonce| crate::Out::from(Frame::from(proto::Ping { nonce }));
        let period = Duration::from_millis(20);
        let outbox = Outbox::new(ConnId(4));
        outbox.push_control(ping(1), &LIMITS, 0, None);
        let mut seen = Collect {
            then_queue: Some((outbox.clone(), ping(2))),
            ..Collect::default()
        };
        let cancel = outbox.cancelled();
        let mut reader = Box::pin(cancel.cancelled());
        let mut cx = Context::from_waker(Waker::noop());
        assert!(reader.as_mut().poll(&mut cx).is_pending());
        let started = Instant::now();
        let mut linger = Linger::new(period);
        assert!(drain(&outbox, 1024, &inbox, &mut seen, Some(&mut linger)).await);
        assert_eq!(cancel.spilled_capacity(), 0);
        drop(reader);
        assert!(started.elapsed() >= period, "{:?}", started.elapsed());
        assert_eq!(
            seen.frames,
            vec![ping(1).into_frame(), ping(2).into_frame()]
        );

        // Stopped and idle: a frame queued now wakes the next drain.
        assert!(outbox.notified().now_or_never().is_none());
        outbox.push_control(ping(3), &LIMITS, 0, None);
        assert!(outbox.notified().now_or_never().is_some());
        outbox.close(None);
        let mut next = Collect::default();
        let mut linger = Linger::new(period);
        assert!(!drain(&outbox, 1024, &inbox, &mut next, Some(&mut linger)).await);
        assert_eq!(next.frames, vec![ping(3).into_frame()]);
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
        drain(&outbox, 1, &inbox, &mut seen, None).await;
        assert_eq!((seen.frames.len(), seen.samples), (3, vec![queued]));
    }
}
