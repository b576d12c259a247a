//! Tests of the outbound queue: limits, drops, gating, closing, waking.

use bytes::Bytes;
use switchboard_wire::deliver::DeliverHead;
use switchboard_wire::{proto, Frame};

use super::*;

const LIMITS: QueueLimits = QueueLimits {
    frames: 4,
    bytes: 1 << 20,
    hard_bytes: 1 << 21,
};

fn deliver(sub_id: u64, payload: &'static [u8]) -> Out {
    Out::Deliver {
        seq: 0,
        acked: 0,
        sub_id,
        shared: crate::outbox::Shared::new(
            DeliverHead::new("a.b", "pub", "inbox.1", &[]),
            Bytes::from_static(payload),
        ),
    }
}

#[test]
#[cfg(target_pointer_width = "64")]
fn queued_entries_stay_small() {
    assert!(
        std::mem::size_of::<Out>() <= 40,
        "{}",
        std::mem::size_of::<Out>()
    );
}

#[tokio::test]
async fn gate_holds_frames_until_released() {
    let gate = Gate::open();
    gate.close_at(10);
    let outbox = Outbox::gated(ConnId(1), gate.clone());
    outbox.push_control(Out::from(Frame::ok(1)), &LIMITS, 10, Some(Instant::now()));
    outbox.push_control(Out::from(Frame::ok(2)), &LIMITS, 12, Some(Instant::now()));
    outbox.push_control(Out::from(Frame::ok(3)), &LIMITS, 11, Some(Instant::now()));
    // The first push left a wake-up.
    outbox.notified().await;
    let mut taken = Taken::default();
    outbox.take(usize::MAX, &mut taken);
    assert_eq!(taken.frames.len(), 1);
    assert_eq!(taken.held, 12);
    assert!(gate.wait(&outbox, taken.held));
    gate.release(11);
    // Not yet: the writer waits for 12.
    assert!(
        tokio::time::timeout(std::time::Duration::from_millis(20), outbox.notified())
            .await
            .is_err()
    );
    gate.release(12);
    tokio::time::timeout(std::time::Duration::from_secs(5), outbox.notified())
        .await
        .expect("woken on release");
    outbox.take(usize::MAX, &mut taken);
    // Frames leave in queue order, the one tagged 11 after the one tagged 12.
    assert_eq!(taken.frames.len(), 2);
    assert_eq!(taken.held, 0);
    assert!(!gate.wait(&outbox, 12));
}

#[test]
fn a_held_frame_wakes_the_writer_once_released_not_when_queued() {
    use futures::FutureExt;
    let gate = Gate::open();
    gate.close_at(10);
    let outbox = Outbox::gated(ConnId(1), gate.clone());
    outbox.push_control(Out::from(Frame::ok(1)), &LIMITS, 11, None);
    // Nothing to take yet: no wake-up, the outbox waits in the gate.
    assert!(outbox.notified().now_or_never().is_none());
    let mut taken = Taken::default();
    outbox.take(usize::MAX, &mut taken);
    assert!(taken.frames.is_empty());
    assert_eq!(taken.held, 11);
    gate.release(11);
    assert!(outbox.notified().now_or_never().is_some());
    outbox.take(usize::MAX, &mut taken);
    assert_eq!(taken.frames.len(), 1);
    // A frame the gate lets through wakes the writer at once.
    outbox.push_control(Out::from(Frame::ok(2)), &LIMITS, 11, None);
    assert!(outbox.notified().now_or_never().is_some());
}

#[test]
fn outboxes_wait_in_the_gate_again_after_each_release() {
    use futures::FutureExt;
    let gate = Gate::open();
    gate.close_at(0);
    let outboxes: Vec<_> = (0..3)
        .map(|i| Outbox::gated(ConnId(i), gate.clone()))
        .collect();
    let mut taken = Taken::default();
    for round in 1..=3u64 {
        for o in &outboxes {
            o.push_control(Out::from(Frame::ok(round)), &LIMITS, round, None);
            assert!(o.notified().now_or_never().is_none(), "round {round}");
        }
        gate.release(round);
        for o in &outboxes {
            assert!(o.notified().now_or_never().is_some(), "round {round}");
            o.take(usize::MAX, &mut taken);
            assert_eq!((taken.frames.len(), taken.held), (1, 0), "round {round}");
        }
    }
    assert!(gate.waiting.lock().is_empty());
}

#[tokio::test]
async fn a_kill_wakes_every_task_waiting_on_the_outbox() {
    let outbox = Outbox::new(ConnId(1));
    let waiters: Vec<_> = (0..3)
        .map(|_| {
            let outbox = outbox.clone();
            tokio::spawn(async move { outbox.cancelled().cancelled().await })
        })
        .collect();
    let cancel = outbox.cancelled();
    // A waiter dropped before the kill leaves nothing behind.
    assert!(
        tokio::time::timeout(std::time::Duration::from_millis(5), cancel.cancelled())
            .await
            .is_err()
    );
    tokio::task::yield_now().await;
    assert!(!cancel.is_cancelled());
    outbox.kill(None);
    for waiter in waiters {
        tokio::time::timeout(std::time::Duration::from_secs(5), waiter)
            .await
            .expect("woken by the kill")
            .expect("no panic");
    }
    assert!(cancel.is_cancelled());
    cancel.cancelled().await;
    // The writer was woken too.
    outbox.notified().await;
}

#[test]
fn dropped_numbered_deliveries_are_reported_by_seq() {
    let limits = QueueLimits {
        frames: 2,
        bytes: usize::MAX,
        hard_bytes: usize::MAX,
    };
    let outbox = Outbox::new(ConnId(1));
    let numbered = |seq: u64| {
        let mut out = deliver(1, b"x");
        out.set_seq(seq);
        out
    };
    let mut seqs = Vec::new();
    for seq in 1..=2 {
        outbox.push_measured(numbered(seq), &limits, 0, None, &mut seqs);
    }
    assert!(seqs.is_empty());
    assert_eq!(
        outbox.push_measured(numbered(3), &limits, 0, None, &mut seqs),
        1
    );
    assert_eq!(seqs, [1], "the oldest delivery went");
    // Unnumbered deliveries (a client without reliable delivery) report
    // no seq.
    assert_eq!(
        outbox.push_measured(deliver(1, b"x"), &limits, 0, None, &mut seqs),
        1
    );
    assert_eq!(seqs, [1, 2]);
    // Nothing droppable queued: the new delivery itself goes.
    let control = Outbox::new(ConnId(2));
    for _ in 0..2 {
        control.push_control(Out::from(Frame::ok(1)), &limits, 0, None);
    }
    assert_eq!(
        control.push_measured(numbered(9), &limits, 0, None, &mut seqs),
        1
    );
    assert_eq!(seqs, [1, 2, 9]);
}

#[test]
fn drops_oldest_deliveries_only() {
    let outbox = Outbox::new(ConnId(1));
    assert_eq!(
        outbox.push_control(Out::from(Frame::ok(1)), &LIMITS, 0, Some(Instant::now())),
        Pushed::Queued
    );
    for i in 1..=3 {
        assert_eq!(
            outbox.push_measured(
                deliver(i, b"x"),
                &LIMITS,
                0,
                Some(Instant::now()),
                &mut Vec::new()
            ),
            0
        );
    }
    // Full (4 frames): the oldest delivery (sub 1) goes, the Ok stays.
    assert_eq!(
        outbox.push_measured(
            deliver(4, b"x"),
            &LIMITS,
            0,
            Some(Instant::now()),
            &mut Vec::new()
        ),
        1
    );
    assert!(outbox.is_full(&LIMITS));
    outbox.request_drained();
    let mut taken = Taken::default();
    outbox.take(usize::MAX, &mut taken);
    let ids: Vec<u64> = taken
        .frames
        .drain(..)
        .map(|o| match o.into_frame().kind {
            Some(proto::frame::Kind::Deliver(d)) => d.sub_id,
            Some(proto::frame::Kind::Ok(o)) => 100 + o.id,
            other => panic!("unexpected {other:?}"),
        })
        .collect();
    assert_eq!(ids, vec![101, 2, 3, 4]);
    assert_eq!(taken.dropped, 1);
    assert!(taken.want_drained);
    assert_eq!(outbox.dropped_total(), 1);
}

#[test]
fn without_a_frame_count_the_byte_limit_counts_each_entry() {
    let cost = LENGTH_PREFIX_LEN + deliver(1, b"x").encoded_len() + ENTRY_COST;
    let limits = QueueLimits::of(&crate::Limits {
        queue_bytes: 10 * cost,
        ..crate::Limits::default()
    });
    assert_eq!(limits.frames, usize::MAX, "no count limit by default");
    let outbox = Outbox::new(ConnId(1));
    for i in 0..10 {
        assert_eq!(outbox.room(&limits), (usize::MAX - i, (10 - i) * cost));
        assert_eq!(
            outbox.push_measured(deliver(1, b"x"), &limits, 0, None, &mut Vec::new()),
            0
        );
    }
    // Ten of them fill it: the eleventh makes room by dropping the oldest.
    assert!(outbox.is_full(&limits));
    assert_eq!(
        outbox.push_measured(deliver(1, b"x"), &limits, 0, None, &mut Vec::new()),
        1
    );
    assert_eq!(outbox.depth(), 10);
}

#[test]
fn control_frames_never_dropped_and_hard_limit_reported() {
    let limits = QueueLimits {
        frames: 1,
        bytes: 10,
        hard_bytes: 100,
    };
    let outbox = Outbox::new(ConnId(1));
    let mut over = false;
    for i in 0..20 {
        if outbox.push_control(
            Out::from(Frame::ok(i + 1)),
            &limits,
            0,
            Some(Instant::now()),
        ) == Pushed::OverHardLimit
        {
            over = true;
            break;
        }
    }
    assert!(over);
    // With no delivery to drop, the new delivery is the one dropped.
    assert_eq!(
        outbox.push_measured(
            deliver(1, b"x"),
            &limits,
            0,
            Some(Instant::now()),
            &mut Vec::new()
        ),
        1
    );
    outbox.kill(Some(Frame::ok(0)));
    assert_eq!(outbox.depth(), 0);
    assert!(outbox.cancelled().is_cancelled());
    assert_eq!(
        outbox.push_control(Out::from(Frame::ok(5)), &limits, 0, Some(Instant::now())),
        Pushed::Closed
    );
}

#[test]
fn take_respects_batch_bytes_and_close() {
    let outbox = Outbox::new(ConnId(1));
    for i in 0..3 {
        outbox.push_control(
            Out::from(Frame::ok(i + 1)),
            &LIMITS,
            0,
            Some(Instant::now()),
        );
    }
    outbox.close(Some(Frame::ok(99)));
    let mut taken = Taken::default();
    outbox.take(1, &mut taken);
    assert_eq!(taken.frames.len(), 1);
    assert_eq!(taken.remaining, 3);
    assert!(!taken.close);
    outbox.take(usize::MAX, &mut taken);
    assert_eq!(taken.frames.len(), 3);
    assert!(taken.close);
}

#[test]
#[cfg(target_pointer_width = "64")]
fn the_stamp_costs_no_room_in_an_entry() {
    // `stamped` fits in the padding after `droppable`.
    assert_eq!(
        std::mem::size_of::<Entry>(),
        std::mem::size_of::<Out>() + 3 * 8
    );
}

#[test]
fn one_frame_at_a_time_is_stamped_and_a_dropped_stamp_is_replaced() {
    let limits = QueueLimits {
        frames: 2,
        ..LIMITS
    };
    let outbox = Outbox::new(ConnId(1));
    let before = Instant::now();
    outbox.push_control(Out::from(Frame::ok(1)), &limits, 0, Some(Instant::now()));
    outbox.push_control(Out::from(Frame::ok(2)), &limits, 0, Some(Instant::now()));
    let mut taken = Taken::default();
    // A take of one frame holds the stamped first one.
    outbox.take(1, &mut taken);
    let stamped = taken.stamped.expect("the first frame is stamped");
    assert!(stamped >= before && stamped <= Instant::now());
    // The second was queued while the first was stamped: not stamped.
    outbox.take(1, &mut taken);
    assert_eq!((taken.frames.len(), taken.stamped), (1, None));
    // Queued after the stamp left: stamped again.
    outbox.push_measured(
        deliver(1, b"x"),
        &limits,
        0,
        Some(Instant::now()),
        &mut Vec::new(),
    );
    outbox.push_measured(
        deliver(1, b"y"),
        &limits,
        0,
        Some(Instant::now()),
        &mut Vec::new(),
    );
    // Full: drops the stamped oldest delivery, and the frame queued in
    // its place is stamped instead.
    let dropped_at = Instant::now();
    assert_eq!(
        outbox.push_measured(
            deliver(1, b"z"),
            &limits,
            0,
            Some(Instant::now()),
            &mut Vec::new()
        ),
        1
    );
    outbox.take(usize::MAX, &mut taken);
    assert_eq!(taken.frames.len(), 2);
    assert!(taken.stamped.is_some_and(|t| t >= dropped_at));
    // A killed outbox forgets its stamp.
    outbox.push_control(Out::from(Frame::ok(3)), &limits, 0, Some(Instant::now()));
    outbox.kill(None);
    outbox.take(usize::MAX, &mut taken);
    assert_eq!(taken.stamped, None);
}

#[test]
fn an_idle_outbox_holds_no_queue_memory_and_a_busy_one_keeps_it() {
    let limits = QueueLimits {
        frames: 1024,
        bytes: 1 << 20,
        hard_bytes: 1 << 21,
    };
    let outbox = Outbox::new(ConnId(1));
    let mut taken = Taken::default();
    outbox.push_control(Out::from(Frame::ok(1)), &limits, 0, None);
    // Not empty yet: nothing is given back.
    outbox.release_idle();
    assert!(outbox.queue_capacity() > 0);
    outbox.take(usize::MAX, &mut taken);
    outbox.release_idle();
    assert_eq!(outbox.queue_capacity(), 0);
    // The first push after makes room for a batch at once.
    outbox.push_control(Out::from(Frame::ok(2)), &limits, 0, None);
    assert_eq!(outbox.queue_capacity(), QUEUE_START_FRAMES);
    outbox.take(usize::MAX, &mut taken);
    outbox.release_idle();

    for n in 0..=IDLE_KEEP_FRAMES as u64 {
        outbox.push_measured(deliver(n, b"x"), &limits, 0, None, &mut Vec::new());
    }
    outbox.take(usize::MAX, &mut taken);
    assert_eq!(taken.frames.len(), IDLE_KEEP_FRAMES + 1);
    outbox.release_idle();
    assert!(outbox.queue_capacity() > IDLE_KEEP_FRAMES);

    // A long burst: emptied, the queue keeps one block, not its peak.
    let block = switchboard_wire::blocks::BLOCK;
    let limits = QueueLimits {
        frames: usize::MAX,
        ..limits
    };
    for n in 0..(4 * block) as u64 {
        outbox.push_measured(deliver(n, b"x"), &limits, 0, None, &mut Vec::new());
    }
    assert!(outbox.queue_capacity() >= 4 * block);
    let mut got = 0;
    while outbox.depth() > 0 {
        outbox.take(usize::MAX, &mut taken);
        got += taken.frames.len();
    }
    assert_eq!(got, 4 * block);
    outbox.release_idle();
    assert!((1..=block).contains(&outbox.queue_capacity()));
}

impl Outbox {
    /// [`Outbox::push_droppable`] measuring `out` itself.
    fn push_measured(
        self: &Arc<Self>,
        out: Out,
        limits: &QueueLimits,
        tag: u64,
        now: Option<Instant>,
        dropped_seqs: &mut Vec<u64>,
    ) -> u64 {
        let len = out.encoded_len();
        self.push_droppable(out, len, limits, tag, now, dropped_seqs)
    }
}

/// Every connection holds its outbox for its life: the outbox, its
/// `Cancel` and the `Cancel`'s first waiter are one allocation (an idle
/// connection's reader is that waiter); further waiters' list is given
/// back when the writer goes idle.
#[test]
fn an_idle_outbox_is_one_allocation() {
    use std::future::Future;
    use std::task::{Context, Waker};
    // The `Arc`'s two counts and the outbox: one 256-byte block.
    let size = 2 * std::mem::size_of::<usize>() + std::mem::size_of::<Outbox>();
    assert!(size <= 256, "outbox {size} bytes");
    let outbox = Outbox::new(ConnId(1));
    let cancel = outbox.cancelled();
    let mut cx = Context::from_waker(Waker::noop());
    let mut reader = Box::pin(cancel.cancelled());
    assert!(reader.as_mut().poll(&mut cx).is_pending());
    // One waiter: nothing allocated for it.
    assert_eq!(cancel.spilled_capacity(), 0);
    let mut writer = Box::pin(cancel.cancelled());
    assert!(writer.as_mut().poll(&mut cx).is_pending());
    assert!(cancel.spilled_capacity() > 0);
    // Re-polled, a waiter keeps its place.
    assert!(writer.as_mut().poll(&mut cx).is_pending());
    assert!(reader.as_mut().poll(&mut cx).is_pending());
    drop(writer);
    outbox.release_idle();
    assert_eq!(cancel.spilled_capacity(), 0);
    // The first slot is free again once its waiter is gone, and the
    // kill still wakes whoever waits.
    drop(reader);
    let mut again = Box::pin(cancel.cancelled());
    assert!(again.as_mut().poll(&mut cx).is_pending());
    assert_eq!(cancel.spilled_capacity(), 0);
    // The reader may register while the writer holds the inline slot:
    // once the writer is gone, the reader moves inline and the list is
    // given back (else every idle connection kept a list for its one
    // waiter).
    let mut writer = Box::pin(cancel.cancelled());
    drop(again);
    assert!(writer.as_mut().poll(&mut cx).is_pending());
    let mut reader = Box::pin(cancel.cancelled());
    assert!(reader.as_mut().poll(&mut cx).is_pending());
    assert_eq!(cancel.spilled_capacity(), 1);
    drop(writer);
    outbox.release_idle();
    assert_eq!(cancel.spilled_capacity(), 0);
    assert!(reader.as_mut().poll(&mut cx).is_pending());
    outbox.kill(None);
    assert!(reader.as_mut().poll(&mut cx).is_ready());
}

#[test]
fn a_staged_run_queues_as_the_same_pushes_one_at_a_time_would() {
    // Into an empty queue, a queue with room, and a full one, with
    // numbered deliveries and a control frame that may not be dropped.
    for queued in [0, 2, 4] {
        let one = Outbox::new(ConnId(1));
        let many = Outbox::new(ConnId(2));
        for outbox in [&one, &many] {
            for i in 0..queued {
                let mut out = deliver(i, b"old");
                out.set_seq(i + 1);
                outbox.push_droppable(out, 10, &LIMITS, 0, None, &mut Vec::new());
            }
            outbox.push_control(Out::from(Frame::ok(7)), &LIMITS, 0, None);
        }
        let run = |n: u64| -> Vec<Out> {
            (0..n)
                .map(|i| {
                    let mut out = deliver(100 + i, b"new");
                    out.set_seq(100 + i);
                    out
                })
                .collect()
        };
        let (mut seqs_one, mut seqs_many) = (Vec::new(), Vec::new());
        let mut dropped_one = 0;
        for out in run(6) {
            let len = out.encoded_len();
            dropped_one += one.push_droppable(out, len, &LIMITS, 0, None, &mut seqs_one);
        }
        let mut staged: Vec<Staged> = run(6)
            .into_iter()
            .map(|out| Staged {
                len: out.encoded_len(),
                out,
                tag: 0,
            })
            .collect();
        let dropped_many = many.push_droppable_many(&mut staged, &LIMITS, None, &mut seqs_many);
        assert!(staged.is_empty());
        assert_eq!(dropped_many, dropped_one, "queued {queued}");
        assert_eq!(seqs_many, seqs_one, "queued {queued}");
        let (mut a, mut b) = (Taken::default(), Taken::default());
        one.take(usize::MAX, &mut a);
        many.take(usize::MAX, &mut b);
        assert_eq!(b.frames, a.frames, "queued {queued}");
        assert_eq!((b.dropped, b.bytes), (a.dropped, a.bytes));
    }
}

#[test]
fn a_queue_is_full_counting_what_is_staged_for_it() {
    let outbox = Outbox::new(ConnId(1));
    assert!(!outbox.is_full_with(0, 0, &LIMITS));
    assert!(!outbox.is_full_with(3, 300, &LIMITS));
    assert!(outbox.is_full_with(4, 400, &LIMITS));
    outbox.push_droppable(deliver(1, b"x"), 10, &LIMITS, 0, None, &mut Vec::new());
    assert!(outbox.is_full_with(3, 300, &LIMITS));
    let bytes = QueueLimits {
        frames: usize::MAX,
        bytes: 1000,
        hard_bytes: 1 << 21,
    };
    assert!(!outbox.is_full_with(1, 10, &bytes));
    assert!(outbox.is_full_with(1, 1000, &bytes));
}
