//! Reliable delivery: acknowledgements carried by frames or sent after
//! the delay or every `ACK_EVERY` frames; retransmit buffers trimmed.

use super::*;

#[test]
fn answers_carry_the_acknowledgement_and_no_separate_ack_goes_out() {
    let mut sim = Sim::new();
    let a = sim.connect_reliable("a");
    sim.send(
        a,
        Frame::from(proto::Publish {
            id: 7,
            topic: "t".into(),
            ..Default::default()
        })
        .with_seq(1),
    );
    let got = sim.recv(a);
    assert_eq!(got.len(), 1, "only the answer: {got:?}");
    assert_eq!(got[0].kind, Frame::ok(7).kind);
    assert_eq!(
        (got[0].seq, got[0].acked),
        (1, 1),
        "numbered, and acknowledges seq 1"
    );
    sim.advance(ACK_DELAY * 2);
    assert!(
        sim.recv(a).is_empty(),
        "the answer carried it: no Ack later either"
    );
}

#[test]
fn an_unanswered_frame_is_acknowledged_after_the_delay() {
    let mut sim = Sim::new();
    let a = sim.connect_reliable("a");
    let b = sim.connect_reliable("b");
    // A request to b, then b's reply: the reply gets no answer of its own.
    sim.send(a, Frame::request(5, "b", "q").with_seq(1));
    let to_b = sim.recv(b);
    assert_eq!(to_b.len(), 1, "{to_b:?}");
    assert_eq!(to_b[0].acked, 0, "b sent nothing yet");
    assert!(
        sim.recv(a).is_empty(),
        "the reply will carry a's acknowledgement"
    );
    sim.send(b, Frame::reply(5, "a", "r").with_seq(1));
    let to_a = sim.recv(a);
    assert_eq!(to_a.len(), 1, "{to_a:?}");
    assert_eq!(to_a[0].acked, 1, "the reply acknowledges a's request");
    assert!(sim.recv(b).is_empty(), "nothing for b yet");
    assert_eq!(
        sim.router.next_deadline(),
        Some(sim.now + ACK_DELAY),
        "b's Ack is scheduled"
    );
    sim.advance(ACK_DELAY / 2);
    assert!(sim.recv(b).is_empty());
    sim.advance(ACK_DELAY / 2);
    assert_eq!(acks(&sim.recv(b)), [1]);
    sim.advance(ACK_DELAY * 3);
    assert!(sim.recv(b).is_empty(), "one Ack only");
}

#[test]
fn a_frame_sent_before_the_delay_carries_the_owed_acknowledgement() {
    let mut sim = Sim::new();
    let a = sim.connect_reliable("a");
    let b = sim.connect_reliable("b");
    sim.send(a, Frame::request(5, "b", "q").with_seq(1));
    sim.recv(b);
    sim.send(b, Frame::reply(5, "a", "r").with_seq(1));
    sim.recv(a);
    // Before b's Ack is due, another request reaches b: it carries it.
    sim.send(a, Frame::request(6, "b", "q2").with_seq(2));
    let to_b = sim.recv(b);
    assert_eq!(to_b.len(), 1, "{to_b:?}");
    assert_eq!(to_b[0].acked, 1);
    sim.advance(ACK_DELAY * 2);
    assert!(acks(&sim.recv(b)).is_empty(), "already carried");
}

#[test]
fn a_long_unanswered_batch_is_acknowledged_at_once() {
    let mut sim = Sim::new();
    let a = sim.connect_reliable("a");
    let frames: Vec<Frame> = (1..=ACK_EVERY)
        .map(|seq| Frame::reply(seq, "nobody", "r").with_seq(seq))
        .collect();
    sim.router
        .handle(sim.now, Input::Frames { conn: a, frames });
    assert_eq!(acks(&sim.recv(a)), [ACK_EVERY]);
}

#[test]
fn acknowledgements_carried_by_client_frames_free_the_retransmit_buffer() {
    let mut sim = Sim::new();
    let a = sim.connect_reliable("a");
    let sub = proto::Subscribe {
        id: 9,
        sub_id: 1,
        pattern: "t".into(),
        queue_group: String::new(),
        ..Default::default()
    };
    sim.send(a, Frame::from(sub).with_seq(1));
    let ok = sim.recv_one(a);
    assert_eq!((ok.seq, ok.acked), (1, 1));
    let p = sim.connect("p");
    for _ in 0..3 {
        sim.send(p, Frame::publish("t", "x"));
    }
    let got = sim.recv(a);
    assert_eq!(got.iter().map(|f| f.seq).collect::<Vec<_>>(), [2, 3, 4]);
    assert!(
        got.iter().all(|f| f.acked == 1),
        "every frame carries it: {got:?}"
    );
    assert_eq!(sim.unacked_frames(), 4, "the Ok and three deliveries");
    // Any frame from a may carry the acknowledgement, numbered or not.
    let mut ping = Frame::from(proto::Ping { nonce: 1 });
    ping.acked = 3;
    sim.send(a, ping);
    assert_eq!(sim.unacked_frames(), 1);
    let mut publish = Frame::publish("other", "y").with_seq(2);
    publish.acked = 4;
    sim.send(a, publish);
    assert_eq!(sim.unacked_frames(), 0);
}

#[test]
fn an_acknowledgement_taken_ahead_frees_the_retransmit_buffer_of_its_connection_only() {
    let limits = Limits {
        queue_hard_bytes: 64 * 1024,
        ..Limits::default()
    };
    let mut sim = Sim::with(limits, None);
    let a = reliable_subscriber_of_t(&mut sim);
    let p = sim.connect("p");
    // A subscriber that reads everything and says so ahead of the other
    // batches is never over the limit, however far the publisher is
    // ahead: 100 batches of 64 deliveries, 500 KiB or more in all.
    let payload = Bytes::from(vec![7u8; 64]);
    let mut last = 1;
    for _ in 0..100 {
        let frames = (0..64)
            .map(|_| Frame::publish("t", payload.clone()))
            .collect();
        sim.router
            .handle(sim.now, Input::Frames { conn: p, frames });
        let got = sim.recv(a);
        assert_eq!(got.len(), 64, "nothing dropped or closed");
        last = got.last().map_or(0, |f| f.seq);
        sim.router.handle(
            sim.now,
            Input::Acked {
                conn: a,
                up_to: last,
            },
        );
        assert_eq!(sim.unacked_frames(), 0);
    }
    assert_eq!(last, 1 + 100 * 64);
    // Another connection's acknowledgement (an older connection of a, or
    // none at all) frees nothing.
    sim.send(p, Frame::publish("t", payload.clone()));
    sim.router.handle(
        sim.now,
        Input::Acked {
            conn: p,
            up_to: u64::MAX,
        },
    );
    sim.router.handle(
        sim.now,
        Input::Acked {
            conn: ConnId(99),
            up_to: u64::MAX,
        },
    );
    assert_eq!(sim.unacked_frames(), 1);
    assert_eq!(sim.recv(a).len(), 1, "a stays connected");
}

// ---- headers ----

#[test]
fn deliveries_dropped_for_a_stalled_reliable_subscriber_are_forgotten_not_resent() {
    // The soft limit holds 4 frames; the hard limit about 20 deliveries'
    // worth. A reliable subscriber that reads nothing keeps only what is
    // queued: the dropped deliveries leave its retransmit buffer, so 200
    // publishes never make it a slow consumer.
    let limits = Limits {
        queue_frames: 4,
        queue_hard_bytes: 2 * 1024,
        ..Limits::default()
    };
    let mut sim = Sim::with(limits, None);
    let a = reliable_subscriber_of_t(&mut sim);
    sim.router
        .handle(sim.now, Input::Acked { conn: a, up_to: 1 });
    let p = sim.connect("p");
    let payload = Bytes::from(vec![7u8; 64]);
    for _ in 0..200 {
        sim.send(p, Frame::publish("t", payload.clone()));
    }
    let outbox = sim.outboxes[&a].clone();
    assert!(outbox.is_open(), "not disconnected as a slow consumer");
    assert_eq!(outbox.dropped_total(), 196, "every drop is counted");
    assert_eq!(sim.unacked_frames(), 4, "only what is still queued");
    let snapshot = sim.router.snapshot();
    let kept: Vec<u64> = snapshot.clients[0].unacked.iter().map(|f| f.seq).collect();
    assert_eq!(kept, [198, 199, 200, 201]);

    // A resume sends again only what was not dropped.
    sim.router.handle(
        sim.now,
        Input::Disconnected {
            conn: a,
            notice: None,
            reason: "cut".into(),
        },
    );
    let a2 = ConnId(50);
    let outbox = Outbox::new(a2);
    sim.outboxes.insert(a2, outbox.clone());
    sim.router.handle(
        sim.now,
        Input::Resume {
            conn: a2,
            info: proto::ClientInfo {
                client_id: "a".into(),
                reliable: true,
                ..Default::default()
            },
            outbox,
            resume: proto::Resume {
                last_received: 1,
                epoch: 1,
            },
        },
    );
    let got = sim.recv(a2);
    assert!(matches!(got[0].kind, Some(Kind::Welcome(_))), "{got:?}");
    let resent: Vec<u64> = got[1..].iter().map(|f| f.seq).collect();
    assert_eq!(resent, [198, 199, 200, 201]);
}
