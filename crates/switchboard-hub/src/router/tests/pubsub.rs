//! Publish/subscribe: wildcards and validation, queue groups, slow
//! subscribers and the hard queue limit.

use super::*;

#[test]
fn pubsub_wildcards_and_validation() {
    let mut sim = Sim::new();
    let p = sim.connect("pub");
    let s = sim.connect("sub");
    sim.subscribe(s, 1, "orders.*.created", "");
    sim.subscribe(s, 2, "orders.>", "");
    sim.subscribe(s, 3, "orders.eu.created", "");
    sim.send(p, Frame::publish("orders.eu.created", "1"));
    let mut got = deliveries(&sim.recv(s));
    got.sort();
    assert_eq!(got.iter().map(|d| d.0).collect::<Vec<_>>(), vec![1, 2, 3]);
    assert!(got.iter().all(|d| d.1 == "orders.eu.created" && d.2 == "1"));

    sim.send(p, Frame::publish("orders.us.shipped.late", "2"));
    assert_eq!(
        deliveries(&sim.recv(s))
            .iter()
            .map(|d| d.0)
            .collect::<Vec<_>>(),
        vec![2]
    );
    sim.send(p, Frame::publish("orders", "3"));
    assert!(
        sim.recv(s).is_empty(),
        "'>' needs at least one more segment"
    );

    // Deliver carries the publisher and reply-to.
    sim.send(
        p,
        proto::Publish {
            id: 4,
            topic: "orders.x.created".into(),
            reply_to: "inbox.pub".into(),
            payload: "4".into(),
            ..Default::default()
        },
    );
    assert_eq!(sim.recv_one(p), Frame::ok(4));
    for f in sim.recv(s) {
        match f.kind {
            Some(Kind::Deliver(d)) => {
                assert_eq!((d.from.as_str(), d.reply_to.as_str()), ("pub", "inbox.pub"));
            }
            other => panic!("{other:?}"),
        }
    }

    for bad in ["orders.>.x", "a..b", "or*ders", ""] {
        sim.send(
            s,
            proto::Subscribe {
                id: 50,
                sub_id: 50,
                pattern: bad.into(),
                queue_group: String::new(),
                ..Default::default()
            },
        );
        assert_eq!(
            code_of(&sim.recv_one(s)),
            Some((50, ErrorCode::InvalidArgument)),
            "{bad}"
        );
    }
    sim.send(
        p,
        proto::Publish {
            id: 51,
            topic: "orders.*".into(),
            ..Default::default()
        },
    );
    assert_eq!(
        code_of(&sim.recv_one(p)),
        Some((51, ErrorCode::InvalidArgument))
    );
    // Same sub id twice.
    sim.send(
        s,
        proto::Subscribe {
            id: 52,
            sub_id: 1,
            pattern: "x".into(),
            queue_group: String::new(),
            ..Default::default()
        },
    );
    assert_eq!(
        code_of(&sim.recv_one(s)),
        Some((52, ErrorCode::InvalidArgument))
    );

    sim.send(s, proto::Unsubscribe { id: 60, sub_id: 2 });
    assert_eq!(sim.recv_one(s), Frame::ok(60));
    sim.send(s, proto::Unsubscribe { id: 61, sub_id: 2 });
    assert_eq!(code_of(&sim.recv_one(s)), Some((61, ErrorCode::NotFound)));
    sim.send(p, Frame::publish("orders.us.shipped.late", "5"));
    assert!(sim.recv(s).is_empty());
    assert_eq!(sim.router.status(sim.now, 0).subscriptions, 2);
}

#[test]
fn queue_groups_share_round_robin() {
    let mut sim = Sim::new();
    let p = sim.connect("pub");
    let w: Vec<ConnId> = (0..3).map(|i| sim.connect(&format!("w{i}"))).collect();
    for (i, conn) in w.iter().enumerate() {
        sim.subscribe(*conn, i as u64 + 1, "jobs.>", "workers");
    }
    let plain = sim.connect("plain");
    sim.subscribe(plain, 9, "jobs.>", "");
    let other_group = sim.connect("other");
    sim.subscribe(other_group, 10, "jobs.>", "auditors");
    for i in 0..9 {
        sim.send(p, Frame::publish("jobs.run", format!("{i}")));
    }
    let counts: Vec<usize> = w.iter().map(|c| deliveries(&sim.recv(*c)).len()).collect();
    assert_eq!(counts, vec![3, 3, 3], "each message to exactly one member");
    assert_eq!(deliveries(&sim.recv(plain)).len(), 9);
    assert_eq!(
        deliveries(&sim.recv(other_group)).len(),
        9,
        "every group gets each message"
    );
    // A member leaves; the rest share.
    sim.router.handle(
        sim.now,
        Input::Disconnected {
            conn: w[0],
            notice: None,
            reason: "gone".into(),
        },
    );
    for i in 0..4 {
        sim.send(p, Frame::publish("jobs.run", format!("{i}")));
    }
    let counts: Vec<usize> = w[1..]
        .iter()
        .map(|c| deliveries(&sim.recv(*c)).len())
        .collect();
    assert_eq!(counts, vec![2, 2]);
}

#[test]
fn slow_subscriber_loses_only_its_own_oldest_deliveries() {
    let limits = Limits {
        queue_frames: 8,
        ..Limits::default()
    };
    let mut sim = Sim::with(limits, None);
    let p = sim.connect("pub");
    let slow = sim.connect("slow");
    let fast = sim.connect("fast");
    sim.subscribe(slow, 1, "t", "");
    sim.subscribe(fast, 1, "t", "");
    let mut fast_got = Vec::new();
    for i in 0..100u32 {
        sim.send(p, Frame::publish("t", i.to_be_bytes().to_vec()));
        fast_got.extend(deliveries(&sim.recv(fast)));
    }
    assert_eq!(fast_got.len(), 100, "the fast subscriber gets everything");
    let mut taken = Taken::default();
    sim.outboxes[&slow].take(usize::MAX, &mut taken);
    assert_eq!(taken.frames.len(), 8, "bounded");
    assert_eq!(taken.dropped, 92);
    let kept: Vec<u32> = taken
        .frames
        .drain(..)
        .map(|o| match o.into_frame().kind {
            Some(Kind::Deliver(d)) => u32::from_be_bytes(d.payload[..].try_into().unwrap()),
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(kept, (92..100).collect::<Vec<_>>(), "the newest are kept");
    let status = sim.router.status(sim.now, 0);
    assert_eq!(status.dropped, 92);
    // Per client: only the slow one has a `dropped:` counter.
    let by_client: Vec<_> = status
        .counters
        .iter()
        .filter(|(k, _)| k.starts_with("dropped:"))
        .collect();
    assert_eq!(by_client, [(&"dropped:slow".to_owned(), &92)]);
}

/// Publishes `n` messages of `size` bytes to `topic`, each numbered in its
/// first four bytes, and returns what the subscriber `sub`'s queue holds:
/// the numbers kept, the deliveries dropped, and what one delivery counts
/// against the queue's byte limit.
fn fill(
    sim: &mut Sim,
    p: ConnId,
    sub: ConnId,
    topic: &str,
    size: usize,
    n: u32,
) -> (Vec<u32>, u64, usize) {
    for i in 0..n {
        let mut body = i.to_be_bytes().to_vec();
        body.resize(size, 0);
        sim.send(p, Frame::publish(topic, body));
    }
    let mut taken = Taken::default();
    sim.outboxes[&sub].take(usize::MAX, &mut taken);
    let cost = taken
        .frames
        .first()
        .map(|o| switchboard_wire::LENGTH_PREFIX_LEN + o.encoded_len() + crate::outbox::ENTRY_COST)
        .unwrap_or_default();
    let kept = taken
        .frames
        .drain(..)
        .map(|o| match o.into_frame().kind {
            Some(Kind::Deliver(d)) => u32::from_be_bytes(d.payload[..4].try_into().unwrap()),
            other => panic!("{other:?}"),
        })
        .collect();
    (kept, taken.dropped, cost)
}

#[test]
fn a_slow_subscriber_queue_is_bounded_in_bytes_whatever_the_frame_size() {
    // The default: no frame count, bytes alone.
    let limits = Limits {
        queue_bytes: 64 * 1024,
        ..Limits::default()
    };
    assert_eq!(limits.queue_frames, 0);
    let mut sim = Sim::with(limits, None);
    let p = sim.connect("pub");
    let small = sim.connect("small");
    let large = sim.connect("large");
    sim.subscribe(small, 1, "s", "");
    sim.subscribe(large, 1, "l", "");
    // 2,000 deliveries of 16 B to one, of 1 KiB to the other.
    let (kept_small, dropped_small, cost_small) = fill(&mut sim, p, small, "s", 16, 2_000);
    let (kept_large, dropped_large, cost_large) = fill(&mut sim, p, large, "l", 1024, 2_000);
    for (kept, dropped, cost) in [
        (&kept_small, dropped_small, cost_small),
        (&kept_large, dropped_large, cost_large),
    ] {
        // Full once its frames reach the limit: one more frame than fits
        // under it, the rest dropped (oldest first) and announced.
        assert_eq!(kept.len(), (64 * 1024usize).div_ceil(cost), "cost {cost}");
        assert_eq!(dropped, 2_000 - kept.len() as u64);
        let newest: Vec<u32> = (2_000 - kept.len() as u32..2_000).collect();
        assert_eq!(kept, &newest, "the newest are kept");
    }
    // Small frames get room by their size, not a frame count sized for
    // large ones; their queue entries count, so memory stays bounded.
    assert!(kept_small.len() > 2 * kept_large.len());
    assert!(kept_small.len() < 64 * 1024 / crate::outbox::ENTRY_COST);
    assert_eq!(
        sim.router.status(sim.now, 0).dropped,
        dropped_small + dropped_large
    );
}

#[test]
fn hard_limit_disconnects_slow_consumer() {
    let limits = Limits {
        queue_hard_bytes: 2_000,
        ..Limits::default()
    };
    let mut sim = Sim::with(limits, None);
    let watcher = sim.connect("watcher");
    let other = sim.connect("other");
    let setter = sim.connect("setter");
    for (conn, id) in [(watcher, 1), (other, 2)] {
        sim.send(
            conn,
            proto::KvWatch {
                id,
                watch_id: 1,
                key: "k".into(),
                prefix: false,
            },
        );
    }
    sim.recv(watcher);
    for i in 0..40u64 {
        sim.send(
            setter,
            proto::KvSet {
                id: i + 1,
                key: "k".into(),
                value: vec![b'v'; 100].into(),
                expect_version: None,
            },
        );
        sim.recv(other);
        sim.recv(setter);
    }
    assert!(sim.outboxes[&watcher].cancelled().is_cancelled(), "killed");
    match sim.outboxes[&watcher].take_last_words().map(|f| f.kind) {
        Some(Some(Kind::Goodbye(g))) => assert_eq!(g.code, ErrorCode::SlowConsumer as i32),
        other => panic!("{other:?}"),
    }
    assert_eq!(sim.router.client_count(), 2);
    assert_eq!(
        sim.router.status(sim.now, 0).counters["slow_consumer_disconnects"],
        1
    );
}
