//! Hostile or broken input on the federation subjects: published by a raw
//! NATS client, it is dropped and counted, never reaches a client, and the
//! hubs go on routing.

mod common;

use std::sync::atomic::Ordering;
use std::time::Duration;

use common::{
    eventually, nats_server, wait_interest, wait_members, Cluster, FedHub, SERVICE, WAIT,
};
use prost::Message as _;
use switchboard::wire::proto;
use switchboard_federation::routing::{Envelope, H_ORIGIN};

/// `frame` in an envelope from `origin` (epoch 1), `to` named in it.
fn enveloped(origin: &str, to: &str, frame: &proto::Frame) -> Vec<u8> {
    Envelope {
        origin: origin.into(),
        epoch: 1,
        to: to.into(),
        ..Default::default()
    }
    .encode(frame)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_oversized_and_foreign_messages_are_dropped_and_counted() -> anyhow::Result<()> {
    let Some(bin) = nats_server() else {
        return Ok(());
    };
    let cluster = Cluster::start(&bin, 3).await?;
    let lease = Duration::from_secs(5);
    let a = FedHub::start("hub-a", &cluster.nodes[0].url, lease).await?;
    let b = FedHub::start_with("hub-b", &cluster.nodes[1].url, lease, |o| {
        o.max_message = 64 * 1024;
    })
    .await?;
    wait_members(&[&a, &b]).await;
    let target = b.client("target").await?;
    let mut inbox = target.messages().await?;
    let mut sub = target.subscribe("t.>").await?;
    eventually("hub-b subscribed to t.>", || {
        b.fed.routing_stats().patterns.load(Ordering::Relaxed) == 1
    })
    .await;
    // The raw client publishes through node 2 and hub-a through node 0:
    // both must know of hub-b's subscription first (core NATS drops a
    // publish nobody is known to want).
    for node in [&cluster.nodes[2], &cluster.nodes[0]] {
        wait_interest(node.http_port, &format!("sb.{SERVICE}.t.t.>")).await;
    }
    let sender = a.client("sender").await?;
    eventually("hub-a sees the target", || {
        a.fed.directory().holder("target").is_some()
    })
    .await;

    let raw = async_nats::connect(cluster.nodes[2].url.as_str()).await?;
    let hub_b = format!("sb.{SERVICE}.h.hub-b");
    let topic = format!("sb.{SERVICE}.t.t.x");
    let direct = |from: &str| {
        proto::Frame::from(proto::Direct {
            to: "target".into(),
            from: from.into(),
            payload: "forged".into(),
            ..Default::default()
        })
    };
    let error = proto::Frame::from(proto::Error {
        id: 5,
        code: 1,
        message: "x".into(),
    });
    let publish = proto::Frame::from(proto::Publish {
        topic: "t.x".into(),
        from: "forger".into(),
        payload: "forged".into(),
        ..Default::default()
    });
    // The publish in a well-formed envelope under `origin`.
    let envelope = |origin: &str| {
        Envelope {
            origin: origin.into(),
            epoch: 1,
            run: 7,
            seq: 1,
            ..Default::default()
        }
        .encode(&publish)
    };
    let well_formed = enveloped("hub-a", "", &direct("x"));
    // A garbage frame after a well-formed envelope.
    let mut garbage_frame = enveloped("hub-a", "", &proto::Frame::default());
    garbage_frame.extend_from_slice(&[0xff; 40]);
    let mut headed = async_nats::HeaderMap::new();
    headed.insert(H_ORIGIN, "hub-a");
    let none = async_nats::HeaderMap::new;
    let cases: Vec<(&str, String, async_nats::HeaderMap, Vec<u8>)> = vec![
        ("no envelope", hub_b.clone(), none(), b"junk".to_vec()),
        (
            "a bare frame, its origin in a header (the old layout)",
            hub_b.clone(),
            headed,
            direct("x").encode_to_vec(),
        ),
        (
            "envelope cut short",
            hub_b.clone(),
            none(),
            well_formed[..well_formed.len() - direct("x").encoded_len() - 3].to_vec(),
        ),
        ("garbage frame", hub_b.clone(), none(), garbage_frame),
        (
            "unknown origin",
            hub_b.clone(),
            none(),
            enveloped("hub-zz", "", &direct("x")),
        ),
        (
            "own origin",
            hub_b.clone(),
            none(),
            enveloped("hub-b", "", &direct("x")),
        ),
        (
            "bad escape",
            hub_b.clone(),
            none(),
            enveloped("hub=2", "", &direct("x")),
        ),
        (
            "kind not carried",
            hub_b.clone(),
            none(),
            enveloped("hub-a", "", &proto::Frame::from(proto::Ping { nonce: 1 })),
        ),
        (
            "no sender",
            hub_b.clone(),
            none(),
            enveloped("hub-a", "", &direct("")),
        ),
        (
            "error for nobody",
            hub_b.clone(),
            none(),
            enveloped("hub-a", "", &error),
        ),
        (
            "bad requester",
            hub_b.clone(),
            none(),
            enveloped("hub-a", "a b", &error),
        ),
        ("oversized", hub_b.clone(), none(), vec![0; 100 * 1024]),
        (
            "publish without envelope",
            topic.clone(),
            none(),
            publish.encode_to_vec(),
        ),
        (
            "publish, envelope cut short",
            topic.clone(),
            none(),
            envelope("hub-a")[..4].to_vec(),
        ),
        (
            "publish, unknown origin",
            topic.clone(),
            none(),
            envelope("nobody"),
        ),
    ];
    let n = cases.len() as u64;
    for (_, subject, h, body) in cases {
        raw.publish_with_headers(subject, h, body.into()).await?;
    }
    raw.flush().await?;
    let stats = b.fed.routing_stats();
    eventually("every bad message counted", || stats.rejected() == n).await;
    assert_eq!(stats.oversized.load(Ordering::Relaxed), 1);
    assert_eq!(stats.foreign.load(Ordering::Relaxed), 3);
    assert_eq!(stats.malformed.load(Ordering::Relaxed), n - 4);
    assert_eq!(stats.received.load(Ordering::Relaxed), 0);

    // Nothing reached the client; real traffic still flows.
    sender.send("target", "real").await?;
    let m = tokio::time::timeout(WAIT, inbox.recv())
        .await?
        .expect("a message");
    assert_eq!((&*m.from, &m.payload[..]), ("sender", &b"real"[..]));
    sender.publish("t.x", "real topic").await?;
    let m = tokio::time::timeout(WAIT, sub.recv())
        .await?
        .expect("a publish");
    assert_eq!((&*m.from, &m.payload[..]), ("sender", &b"real topic"[..]));
    Ok(())
}
