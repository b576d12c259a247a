//! A run of publishes in one batch: deliveries are staged per client and
//! queued a run at a time (`Output::set_staging`). What a client sees must
//! not change: every frame, in the order pushed, queue limits as before.

use super::*;

impl Sim {
    /// Hands the router `frames` from `conn` as one batch, as a reader
    /// does with what one read brought.
    fn send_batch(&mut self, conn: ConnId, frames: Vec<Frame>) {
        self.router.handle(self.now, Input::Frames { conn, frames });
    }
}

fn numbered(i: u32) -> Frame {
    Frame::publish("t", i.to_be_bytes().to_vec())
}

/// The payloads of `frames` as numbers (a delivery's) or `None` (any
/// other frame), in order.
fn shape(frames: &[Frame]) -> Vec<Option<u32>> {
    frames
        .iter()
        .map(|f| match &f.kind {
            Some(Kind::Deliver(d)) => Some(u32::from_be_bytes(d.payload[..4].try_into().unwrap())),
            _ => None,
        })
        .collect()
}

#[test]
fn a_long_run_reaches_every_subscriber_whole_and_in_order() {
    let mut sim = Sim::new();
    let p = sim.connect("pub");
    let subs: Vec<ConnId> = (0..3).map(|i| sim.connect(&format!("s{i}"))).collect();
    for s in &subs {
        sim.subscribe(*s, 1, "t", "");
    }
    // Several stages' worth, so stages are queued part-way through.
    sim.send_batch(p, (0..500).map(numbered).collect());
    let all: Vec<Option<u32>> = (0..500).map(Some).collect();
    for s in &subs {
        assert_eq!(shape(&sim.recv(*s)), all);
    }
    assert!(sim.recv(p).is_empty());
}

#[test]
fn a_frame_of_another_kind_in_a_run_keeps_its_place() {
    let mut sim = Sim::new();
    let p = sim.connect("pub");
    let s = sim.connect("s");
    sim.subscribe(s, 1, "t", "");
    let mut batch: Vec<Frame> = (0..3).map(numbered).collect();
    batch.push(Frame::direct("s", "between"));
    batch.extend((3..6).map(numbered));
    sim.send_batch(p, batch);
    let got = sim.recv(s);
    assert_eq!(
        shape(&got),
        [Some(0), Some(1), Some(2), None, Some(3), Some(4), Some(5)]
    );
    assert!(matches!(&got[3].kind, Some(Kind::Direct(d)) if d.payload == "between"));
}

#[test]
fn a_publisher_subscribed_to_its_own_topic_sees_each_delivery_before_its_ok() {
    let mut sim = Sim::new();
    let p = sim.connect("pub");
    sim.subscribe(p, 1, "t", "");
    let batch = (1..=3u64)
        .map(|id| {
            frame(proto::Publish {
                id,
                topic: "t".into(),
                payload: (id as u32).to_be_bytes().to_vec().into(),
                ..Default::default()
            })
        })
        .collect();
    sim.send_batch(p, batch);
    let got = sim.recv(p);
    assert_eq!(
        shape(&got),
        [Some(1), None, Some(2), None, Some(3), None],
        "{got:?}"
    );
    for (i, id) in [(1, 1), (3, 2), (5, 3)] {
        assert_eq!(got[i], Frame::ok(id));
    }
}

#[test]
fn a_queue_group_counts_what_is_staged_for_a_member() {
    let limits = Limits {
        queue_frames: 4,
        ..Limits::default()
    };
    let mut sim = Sim::with(limits, None);
    let p = sim.connect("pub");
    let w: Vec<ConnId> = (0..3).map(|i| sim.connect(&format!("w{i}"))).collect();
    for (i, conn) in w.iter().enumerate() {
        sim.subscribe(*conn, i as u64 + 1, "t", "workers");
    }
    // w0 takes three, one at a time, and reads none of them: one place
    // left. The others read theirs.
    for i in 0..9 {
        sim.send(p, numbered(i));
        let _ = sim.recv(w[1]);
        let _ = sim.recv(w[2]);
    }
    // Nine in one batch fit exactly: one more for w0, four each for the
    // others, none dropped — as long as the pick sees the staged ones.
    sim.send_batch(p, (9..18).map(numbered).collect());
    let mut taken = Taken::default();
    let mut counts = Vec::new();
    let mut dropped = 0;
    for conn in &w {
        sim.outboxes[conn].take(usize::MAX, &mut taken);
        counts.push(taken.frames.len());
        dropped += taken.dropped;
        taken.frames.clear();
    }
    assert_eq!(dropped, 0);
    assert_eq!(counts, [4, 4, 4]);
}

#[test]
fn a_slow_subscriber_in_a_run_loses_only_its_oldest_deliveries() {
    let limits = Limits {
        queue_frames: 8,
        ..Limits::default()
    };
    let mut sim = Sim::with(limits, None);
    let p = sim.connect("pub");
    let slow = sim.connect("slow");
    sim.subscribe(slow, 1, "t", "");
    sim.send_batch(p, (0..100).map(numbered).collect());
    let mut taken = Taken::default();
    sim.outboxes[&slow].take(usize::MAX, &mut taken);
    assert_eq!(taken.dropped, 92);
    let kept: Vec<Frame> = taken.frames.drain(..).map(Out::into_frame).collect();
    assert_eq!(shape(&kept), (92..100).map(Some).collect::<Vec<_>>());
    assert_eq!(sim.router.status(sim.now, 0).dropped, 92);
}

#[test]
fn a_reliable_subscriber_in_a_run_is_numbered_in_order_and_told_of_drops() {
    let limits = Limits {
        queue_frames: 8,
        ..Limits::default()
    };
    let mut sim = Sim::with(limits, None);
    let p = sim.connect("pub");
    let r = reliable_subscriber_of_t(&mut sim);
    sim.send_batch(p, (0..20).map(numbered).collect());
    let mut taken = Taken::default();
    sim.outboxes[&r].take(usize::MAX, &mut taken);
    assert_eq!(taken.dropped, 12, "told of the drops");
    let got: Vec<Frame> = taken.frames.drain(..).map(Out::into_frame).collect();
    let seqs: Vec<u64> = got.iter().map(|f| f.seq).collect();
    // The subscription's Ok took seq 1; 20 deliveries numbered 2..=21, the
    // 12 oldest dropped from the queue.
    assert_eq!(seqs, (14..=21).collect::<Vec<_>>());
    assert_eq!(shape(&got), (12..20).map(Some).collect::<Vec<_>>());
}
