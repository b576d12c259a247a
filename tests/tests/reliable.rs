//! Reliable delivery and resume, from the client's side.
//!
//! Most tests talk to a scripted hub (`FakeHub`): a loopback listener that
//! does the real handshake (proofs from `switchboard::discovery`) and then
//! lets the test read every frame the client sends and send any frame
//! back, with whatever sequence numbers, features and epochs the test
//! needs. That pins the client's half of the wire contract exactly.

use std::collections::VecDeque;
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use switchboard::discovery::{self, Secret};
use switchboard::wire::{proto, Frame, FrameCodec, Kind, PROTOCOL_VERSION};
use switchboard::{Client, ClientError, ConnectionState};
use switchboard_tests::{within, Proxy, TOKEN};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpListener;
use tokio_util::codec::{FramedRead, FramedWrite};

/// A scripted hub on a loopback port.
struct FakeHub {
    listener: TcpListener,
    secret: Secret,
}

/// A connection whose `Hello` was read and answered with a `Challenge`.
struct Handshaking {
    reader: FramedRead<OwnedReadHalf, FrameCodec>,
    writer: FramedWrite<OwnedWriteHalf, FrameCodec>,
    hello: proto::Hello,
    identity: proto::HubIdentity,
}

/// An authenticated connection driven by the test.
struct FakeConn {
    reader: FramedRead<OwnedReadHalf, FrameCodec>,
    writer: FramedWrite<OwnedWriteHalf, FrameCodec>,
    hello: proto::Hello,
    /// Highest `Ack.up_to` the client sent on this connection.
    max_ack: u64,
    /// Highest `Frame.acked` the client's frames carried.
    max_carried: u64,
    /// Frames read while waiting for an ack, returned by `recv` first.
    backlog: VecDeque<Frame>,
}

impl FakeHub {
    async fn new() -> anyhow::Result<FakeHub> {
        Ok(FakeHub {
            listener: TcpListener::bind("127.0.0.1:0").await?,
            secret: Secret::from_token(TOKEN),
        })
    }

    fn addr(&self) -> String {
        self.listener.local_addr().expect("bound").to_string()
    }

    /// Accepts a connection, reads its `Hello` and answers a `Challenge`
    /// from a hub of `epoch`.
    async fn accept(&self, epoch: u64) -> anyhow::Result<Handshaking> {
        let (stream, _) = within(self.listener.accept()).await??;
        stream.set_nodelay(true)?;
        let (r, w) = stream.into_split();
        let mut reader = FramedRead::new(r, FrameCodec::new());
        let mut writer = FramedWrite::new(w, FrameCodec::new());
        let hello = match within(reader.next()).await? {
            Some(Ok(Frame {
                kind: Some(Kind::Hello(h)),
                ..
            })) => h,
            other => anyhow::bail!("expected a hello, got {other:?}"),
        };
        assert_eq!(hello.protocol_version, PROTOCOL_VERSION);
        let identity = proto::HubIdentity {
            service: "fake".into(),
            instance_id: format!("fake-{epoch}"),
            epoch,
            port: u32::from(self.listener.local_addr()?.port()),
            ..Default::default()
        };
        let hub_nonce = discovery::nonce();
        let proof = discovery::hub_proof(&self.secret, &hello.client_nonce, &hub_nonce, &identity);
        writer
            .send(Frame::from(proto::Challenge {
                identity: Some(identity.clone()),
                hub_nonce: hub_nonce.to_vec().into(),
                proof: proof.to_vec().into(),
            }))
            .await?;
        Ok(Handshaking {
            reader,
            writer,
            hello,
            identity,
        })
    }
}

impl Handshaking {
    /// Reads the client's `Auth` and welcomes it.
    async fn welcome(mut self, features: &[&str], last_received: u64) -> anyhow::Result<FakeConn> {
        match within(self.reader.next()).await? {
            Some(Ok(Frame {
                kind: Some(Kind::Auth(_)),
                ..
            })) => {}
            other => anyhow::bail!("expected auth, got {other:?}"),
        }
        self.writer
            .send(Frame::from(proto::Welcome {
                client_id: self.hello.client_id.clone(),
                features: features.iter().map(|f| f.to_string()).collect(),
                epoch: self.identity.epoch,
                last_received,
                max_frame: 16 * 1024 * 1024,
                keepalive_ms: 0,
                identity: Some(self.identity.clone()),
            }))
            .await?;
        Ok(FakeConn {
            reader: self.reader,
            writer: self.writer,
            hello: self.hello,
            max_ack: 0,
            max_carried: 0,
            backlog: VecDeque::new(),
        })
    }

    /// Expects the client to hang up without authenticating.
    async fn expect_refusal(mut self) -> anyhow::Result<()> {
        match within(self.reader.next()).await? {
            None | Some(Err(_)) => Ok(()),
            Some(Ok(f)) => anyhow::bail!("expected the client to hang up, got {}", f.kind_name()),
        }
    }
}

impl FakeConn {
    async fn send(&mut self, frame: Frame) -> anyhow::Result<()> {
        self.writer.send(frame).await?;
        Ok(())
    }

    async fn read(&mut self) -> anyhow::Result<Frame> {
        loop {
            match within(self.reader.next()).await? {
                Some(Ok(f)) => {
                    assert!(f.acked >= self.max_carried, "carried acks never go back");
                    self.max_carried = f.acked;
                    match &f.kind {
                        Some(Kind::Ack(a)) => {
                            assert_eq!(f.seq, 0, "acks are not sequenced");
                            assert!(a.up_to >= self.max_ack, "acks never go back");
                            self.max_ack = a.up_to;
                            return Ok(f);
                        }
                        Some(Kind::Ping(_)) => continue,
                        _ => return Ok(f),
                    }
                }
                Some(Err(e)) => return Err(e.into()),
                None => anyhow::bail!("the client closed the connection"),
            }
        }
    }

    /// The next frame other than acks and pings.
    async fn recv(&mut self) -> anyhow::Result<Frame> {
        if let Some(f) = self.backlog.pop_front() {
            return Ok(f);
        }
        loop {
            let f = self.read().await?;
            if !matches!(f.kind, Some(Kind::Ack(_))) {
                return Ok(f);
            }
        }
    }

    /// Reads until the client has acknowledged `up_to` (by an `Ack` or a
    /// frame's `acked`).
    async fn wait_ack(&mut self, up_to: u64) -> anyhow::Result<()> {
        while self.max_ack.max(self.max_carried) < up_to {
            let f = self.read().await?;
            if !matches!(f.kind, Some(Kind::Ack(_))) {
                self.backlog.push_back(f);
            }
        }
        Ok(())
    }
}

fn builder(hub: &FakeHub, id: &str) -> switchboard::ClientBuilder {
    Client::builder(id)
        .addr(hub.addr())
        .token(TOKEN)
        .backoff(Duration::from_millis(10), Duration::from_millis(50))
}

/// Connects a client built by `b` to `hub`, welcomed with `features`.
async fn connect(
    hub: &FakeHub,
    b: switchboard::ClientBuilder,
    features: &[&str],
) -> anyhow::Result<(Client, FakeConn)> {
    let (client, conn) = tokio::join!(b.connect(), async {
        hub.accept(1).await?.welcome(features, 0).await
    });
    Ok((client?, conn?))
}

fn command_id(f: &Frame) -> u64 {
    match &f.kind {
        Some(Kind::Publish(m)) => m.id,
        Some(Kind::Request(m)) => m.id,
        Some(Kind::Subscribe(m)) => m.id,
        Some(Kind::KvGet(m)) => m.id,
        Some(Kind::KvSet(m)) => m.id,
        other => panic!("not a command: {other:?}"),
    }
}

fn publish_payload(f: &Frame) -> Vec<u8> {
    match &f.kind {
        Some(Kind::Publish(p)) => p.payload.to_vec(),
        _ => panic!("expected a publish, got {}", f.kind_name()),
    }
}

fn deliver(sub_id: u64, payload: &'static str) -> Frame {
    proto::Deliver {
        sub_id,
        topic: "news.x".into(),
        from: "someone".into(),
        payload: payload.into(),
        ..Default::default()
    }
    .into()
}

async fn wait_state(
    client: &Client,
    f: impl FnMut(&ConnectionState) -> bool,
) -> anyhow::Result<ConnectionState> {
    let mut state = client.state();
    let s = within(state.wait_for(f)).await??.clone();
    Ok(s)
}

#[tokio::test]
async fn frames_are_numbered_in_order_and_kept_until_acknowledged() -> anyhow::Result<()> {
    let hub = FakeHub::new().await?;
    let (client, mut conn) = connect(&hub, builder(&hub, "numbered"), &["reliable"]).await?;
    assert_eq!(conn.hello.features, ["reliable", "listen"]);
    assert!(
        conn.hello.resume.is_none(),
        "a first connection resumes nothing"
    );
    assert!(client.is_reliable());

    let c = client.clone();
    let publisher = tokio::spawn(async move {
        for i in 0..3u8 {
            c.publish("t", vec![i]).await?;
        }
        anyhow::Ok(())
    });
    for seq in 1..=3u64 {
        let f = conn.recv().await?;
        assert_eq!(f.seq, seq);
        assert_eq!(publish_payload(&f), [seq as u8 - 1]);
        conn.send(Frame::ok(command_id(&f)).with_seq(seq)).await?;
    }
    within(publisher).await???;
    assert_eq!(client.unacknowledged().0, 3, "kept until the hub acks");
    // The client acknowledges the hub's frames, cumulatively.
    conn.wait_ack(3).await?;

    // Fire-and-forget and reads are not sequenced.
    client.publish_nowait("t", "nowait").await?;
    assert_eq!(conn.recv().await?.seq, 0);
    let c = client.clone();
    let get = tokio::spawn(async move { c.kv().get("k").await });
    let f = conn.recv().await?;
    assert!(matches!(f.kind, Some(Kind::KvGet(_))));
    assert_eq!(f.seq, 0);

    // An ack releases what it covers; the answer that follows it is read
    // after it, so once `get` returns the ack was handled.
    conn.send(Frame::ack(2)).await?;
    conn.send(
        Frame::from(proto::KvValue {
            id: command_id(&f),
            key: "k".into(),
            found: false,
            ..Default::default()
        })
        .with_seq(4),
    )
    .await?;
    assert_eq!(within(get).await???, None);
    assert_eq!(client.unacknowledged().0, 1);
    conn.send(Frame::ack(3)).await?;
    let c = client.clone();
    let get = tokio::spawn(async move { c.kv().get("k").await });
    let f = conn.recv().await?;
    conn.send(
        Frame::from(proto::KvValue {
            id: command_id(&f),
            key: "k".into(),
            ..Default::default()
        })
        .with_seq(5),
    )
    .await?;
    within(get).await???;
    assert_eq!(client.unacknowledged(), (0, 0));
    conn.wait_ack(5).await?;
    Ok(())
}

#[tokio::test]
async fn concurrent_senders_get_consecutive_numbers_in_wire_order() -> anyhow::Result<()> {
    let hub = FakeHub::new().await?;
    let (client, mut conn) = connect(&hub, builder(&hub, "concurrent"), &["reliable"]).await?;
    let tasks: Vec<_> = (0..16)
        .map(|t| {
            let c = client.clone();
            tokio::spawn(async move {
                for i in 0..20 {
                    c.publish(&format!("t.{t}"), format!("{i}")).await?;
                }
                anyhow::Ok(())
            })
        })
        .collect();
    for seq in 1..=320u64 {
        let f = conn.recv().await?;
        assert_eq!(f.seq, seq, "numbers follow the order on the wire");
        conn.send(Frame::ok(command_id(&f)).with_seq(seq)).await?;
        if seq % 50 == 0 {
            conn.send(Frame::ack(seq)).await?;
        }
    }
    for t in tasks {
        within(t).await???;
    }
    conn.wait_ack(320).await?;
    Ok(())
}

#[tokio::test]
async fn duplicate_frames_from_the_hub_are_dropped() -> anyhow::Result<()> {
    let hub = FakeHub::new().await?;
    let (client, mut conn) = connect(&hub, builder(&hub, "dedupe"), &["reliable"]).await?;
    let c = client.clone();
    let sub = tokio::spawn(async move { c.subscribe("news.>").await });
    let f = conn.recv().await?;
    let Some(Kind::Subscribe(s)) = &f.kind else {
        panic!("expected subscribe, got {}", f.kind_name())
    };
    let sub_id = s.sub_id;
    conn.send(Frame::ok(s.id).with_seq(1)).await?;
    let mut sub = within(sub).await???;
    for (seq, payload) in [(2, "a"), (3, "b"), (2, "a"), (3, "b"), (1, "x"), (4, "c")] {
        conn.send(deliver(sub_id, payload).with_seq(seq)).await?;
    }
    // Unsequenced frames are never taken as duplicates.
    conn.send(deliver(sub_id, "d")).await?;
    conn.send(deliver(sub_id, "e")).await?;
    let mut got = Vec::new();
    for _ in 0..5 {
        let m = within(sub.next()).await?.expect("a delivery");
        got.push(String::from_utf8(m.payload.to_vec())?);
    }
    assert_eq!(got, ["a", "b", "c", "d", "e"]);
    conn.wait_ack(4).await?;
    // The last frame handled was "e": nothing else is pending in the stream.
    let c = client.clone();
    let get = tokio::spawn(async move { c.kv().get("k").await });
    let f = conn.recv().await?;
    conn.send(
        Frame::from(proto::KvValue {
            id: command_id(&f),
            ..Default::default()
        })
        .with_seq(5),
    )
    .await?;
    within(get).await???;
    assert!(futures::FutureExt::now_or_never(sub.next()).is_none());
    Ok(())
}

#[tokio::test]
async fn a_resumed_session_resends_what_the_hub_lacks_and_keeps_commands_waiting(
) -> anyhow::Result<()> {
    let hub = FakeHub::new().await?;
    let (client, mut conn) = connect(&hub, builder(&hub, "resumer"), &["reliable"]).await?;

    // seq 1: subscribe (answered with hub seq 1, acknowledged).
    let c = client.clone();
    let sub = tokio::spawn(async move { c.subscribe("news.>").await });
    let f = conn.recv().await?;
    let Some(Kind::Subscribe(s)) = &f.kind else {
        panic!("expected subscribe")
    };
    let (sub_id, sub_cmd) = (s.sub_id, s.id);
    conn.send(Frame::ok(sub_cmd).with_seq(1)).await?;
    conn.send(Frame::ack(1)).await?;
    let mut sub = within(sub).await???;
    conn.wait_ack(1).await?;

    // seq 2: a request the hub received; seq 3: a publish it will lose.
    let c = client.clone();
    let request = tokio::spawn(async move {
        c.request_with("server", "", "question", Duration::from_secs(20))
            .await
    });
    let f = conn.recv().await?;
    assert_eq!(f.seq, 2);
    let request_id = command_id(&f);
    let c = client.clone();
    let lost = tokio::spawn(async move { c.publish("news.b", "lost").await });
    let f = conn.recv().await?;
    assert_eq!((f.seq, publish_payload(&f)), (3, b"lost".to_vec()));
    let lost_id = command_id(&f);

    // The connection breaks; a publish made meanwhile waits.
    drop(conn);
    wait_state(&client, |s| !s.is_connected()).await?;
    let c = client.clone();
    let during = tokio::spawn(async move { c.publish("news.c", "during").await });

    let h = hub.accept(1).await?;
    assert_eq!(h.hello.features, ["reliable", "listen"]);
    let resume = h.hello.resume.expect("the client asks to resume");
    assert_eq!(resume.last_received, 1);
    assert_eq!(resume.epoch, 1);
    let mut conn = h.welcome(&["reliable", "resumed"], 2).await?;

    // The hub holds seq 2; the client resends seq 3 first, then the new one,
    // and does not subscribe again.
    let f = conn.recv().await?;
    assert_eq!((f.seq, publish_payload(&f)), (3, b"lost".to_vec()));
    assert_eq!(command_id(&f), lost_id, "the same frame, sent again");
    let f = conn.recv().await?;
    assert_eq!((f.seq, publish_payload(&f)), (4, b"during".to_vec()));
    let during_id = command_id(&f);

    // The hub resends from the client's last_received (a duplicate of seq 1
    // first, as a hub may), then answers through the resumed stream.
    conn.send(Frame::ok(sub_cmd).with_seq(1)).await?;
    conn.send(Frame::reply(request_id, "server", "answer").with_seq(2))
        .await?;
    conn.send(Frame::ok(lost_id).with_seq(3)).await?;
    conn.send(Frame::ok(during_id).with_seq(4)).await?;
    conn.send(deliver(sub_id, "kept").with_seq(5)).await?;

    assert_eq!(&within(request).await???[..], b"answer");
    within(lost).await???;
    within(during).await???;
    let m = within(sub.next())
        .await?
        .expect("the subscription survived");
    assert_eq!(&m.payload[..], b"kept");
    let state = wait_state(&client, |s| s.is_connected()).await?;
    assert!(
        matches!(
            state,
            ConnectionState::Connected {
                generation: 2,
                resumed: true,
                ..
            }
        ),
        "{state:?}"
    );
    conn.wait_ack(5).await?;
    conn.send(Frame::ack(4)).await?;
    // Once the next answer arrives, the ack before it was handled.
    let c = client.clone();
    let get = tokio::spawn(async move { c.kv().get("k").await });
    let f = conn.recv().await?;
    assert!(
        matches!(f.kind, Some(Kind::KvGet(_))),
        "no subscribe was sent again, got {}",
        f.kind_name()
    );
    conn.send(
        Frame::from(proto::KvValue {
            id: command_id(&f),
            ..Default::default()
        })
        .with_seq(6),
    )
    .await?;
    within(get).await???;
    assert_eq!(client.unacknowledged(), (0, 0));
    Ok(())
}

#[tokio::test]
async fn a_fresh_session_fails_waiting_commands_and_restores_subscriptions() -> anyhow::Result<()> {
    let hub = FakeHub::new().await?;
    let (client, mut conn) = connect(&hub, builder(&hub, "fresh"), &["reliable"]).await?;
    let c = client.clone();
    let sub = tokio::spawn(async move { c.subscribe("news.>").await });
    let f = conn.recv().await?;
    let Some(Kind::Subscribe(s)) = &f.kind else {
        panic!("expected subscribe")
    };
    let sub_id = s.sub_id;
    conn.send(Frame::ok(s.id).with_seq(1)).await?;
    let mut sub = within(sub).await???;
    conn.wait_ack(1).await?;
    let c = client.clone();
    let request = tokio::spawn(async move {
        c.request_with("server", "", "q", Duration::from_secs(20))
            .await
    });
    assert_eq!(conn.recv().await?.seq, 2);
    drop(conn);

    let h = hub.accept(1).await?;
    assert_eq!(h.hello.resume.as_ref().map(|r| r.last_received), Some(1));
    // This hub holds nothing for the client: a fresh session.
    let mut conn = h.welcome(&["reliable"], 0).await?;
    match within(request).await?? {
        Err(ClientError::Disconnected) => {}
        other => panic!("expected Disconnected (outcome unknown), got {other:?}"),
    }
    // Subscriptions are restored; the client's counter goes on.
    let f = conn.recv().await?;
    let Some(Kind::Subscribe(s)) = &f.kind else {
        panic!("expected the subscription again, got {}", f.kind_name())
    };
    assert_eq!(s.sub_id, sub_id);
    assert_eq!(f.seq, 3);
    // The hub's numbering starts again at 1, and the client takes it.
    conn.send(Frame::ok(s.id).with_seq(1)).await?;
    let state = wait_state(&client, |s| s.is_connected()).await?;
    assert!(
        matches!(
            state,
            ConnectionState::Connected {
                generation: 2,
                resumed: false,
                ..
            }
        ),
        "{state:?}"
    );
    conn.send(deliver(sub_id, "after").with_seq(2)).await?;
    let m = within(sub.next()).await?.expect("a delivery");
    assert_eq!(&m.payload[..], b"after");
    conn.wait_ack(2).await?;
    // The kept frames of the old session were dropped.
    conn.send(Frame::ack(3)).await?;
    let c = client.clone();
    let get = tokio::spawn(async move { c.kv().get("k").await });
    let f = conn.recv().await?;
    conn.send(
        Frame::from(proto::KvValue {
            id: command_id(&f),
            ..Default::default()
        })
        .with_seq(3),
    )
    .await?;
    within(get).await???;
    assert_eq!(client.unacknowledged(), (0, 0));
    Ok(())
}

#[tokio::test]
async fn waiting_commands_fail_after_the_resume_wait() -> anyhow::Result<()> {
    let hub = FakeHub::new().await?;
    let wait = Duration::from_millis(300);
    let b = builder(&hub, "impatient").resume_wait(wait);
    let (client, mut conn) = connect(&hub, b, &["reliable"]).await?;
    let c = client.clone();
    let request = tokio::spawn(async move {
        c.request_with("server", "", "q", Duration::from_secs(30))
            .await
    });
    assert_eq!(conn.recv().await?.seq, 1);
    let c = client.clone();
    let get = tokio::spawn(async move { c.kv().get("k").await });
    assert!(matches!(conn.recv().await?.kind, Some(Kind::KvGet(_))));
    // The hub goes silent: reconnects reach the listener but get no answer.
    let lost = tokio::time::Instant::now();
    drop(conn);
    // A read is not sent again, so it fails at once.
    match within(get).await?? {
        Err(ClientError::Disconnected) => {}
        other => panic!("expected Disconnected, got {other:?}"),
    }
    match within(request).await?? {
        Err(ClientError::Disconnected) => {}
        other => panic!("expected Disconnected, got {other:?}"),
    }
    let waited = lost.elapsed();
    assert!(
        waited >= wait,
        "failed after {waited:?}, before the resume wait"
    );
    // Past the window, calls fail at once instead of waiting.
    let start = tokio::time::Instant::now();
    match client.publish("t", "x").await {
        Err(ClientError::Disconnected) => {}
        other => panic!("expected Disconnected, got {other:?}"),
    }
    assert!(start.elapsed() < Duration::from_secs(1));
    // The kept request is still sent again if the session resumes.
    let mut conn = hub
        .accept(1)
        .await?
        .welcome(&["reliable", "resumed"], 0)
        .await?;
    let f = conn.recv().await?;
    assert!(matches!(f.kind, Some(Kind::Request(_))));
    assert_eq!(f.seq, 1);
    Ok(())
}

#[tokio::test]
async fn a_hub_of_a_lower_epoch_is_refused() -> anyhow::Result<()> {
    let hub = FakeHub::new().await?;
    let (client, conn) = tokio::join!(builder(&hub, "fenced").connect(), async {
        hub.accept(5).await?.welcome(&["reliable"], 0).await
    });
    let (client, conn) = (client?, conn?);
    drop(conn);

    // An old primary (epoch 3) answers next: the client hangs up before
    // authenticating and keeps looking.
    let h = hub.accept(3).await?;
    assert_eq!(h.hello.resume.as_ref().map(|r| r.epoch), Some(5));
    h.expect_refusal().await?;
    let state = wait_state(
        &client,
        |s| matches!(s, ConnectionState::Reconnecting { reason, .. } if reason.contains("epoch 3")),
    )
    .await?;
    let ConnectionState::Reconnecting { reason, .. } = state else {
        unreachable!()
    };
    assert!(reason.contains("fenced"), "{reason}");

    // The current primary (epoch 6) is accepted, and from then on epoch 5
    // is refused too.
    let conn = hub
        .accept(6)
        .await?
        .welcome(&["reliable", "resumed"], 0)
        .await?;
    let state = wait_state(&client, |s| s.is_connected()).await?;
    assert!(
        matches!(&state, ConnectionState::Connected { instance_id, .. } if instance_id == "fake-6"),
        "{state:?}"
    );
    drop(conn);
    let h = hub.accept(5).await?;
    assert_eq!(h.hello.resume.as_ref().map(|r| r.epoch), Some(6));
    h.expect_refusal().await?;
    Ok(())
}

#[tokio::test]
async fn a_client_that_gives_up_says_it_found_only_an_old_primary() -> anyhow::Result<()> {
    // Without reconnecting, a fenced hub ends the client with a clear reason.
    let hub = FakeHub::new().await?;
    let b = builder(&hub, "one-shot").max_reconnect_attempts(1);
    let (client, conn) = tokio::join!(b.connect(), async {
        hub.accept(4).await?.welcome(&["reliable"], 0).await
    });
    let (client, conn) = (client?, conn?);
    drop(conn);
    hub.accept(2).await?.expect_refusal().await?;
    let state = wait_state(&client, |s| matches!(s, ConnectionState::Closed { .. })).await?;
    let ConnectionState::Closed { reason } = state else {
        unreachable!()
    };
    assert!(
        reason.contains("epoch 2") && reason.contains("epoch 4"),
        "{reason}"
    );
    Ok(())
}

#[tokio::test]
async fn without_the_hubs_consent_nothing_is_sequenced() -> anyhow::Result<()> {
    let hub = FakeHub::new().await?;
    let (client, mut conn) = connect(&hub, builder(&hub, "plain"), &[]).await?;
    assert_eq!(conn.hello.features, ["reliable", "listen"]);
    assert!(!client.is_reliable());
    let c = client.clone();
    let publish = tokio::spawn(async move { c.publish("t", "x").await });
    let f = conn.recv().await?;
    assert_eq!(f.seq, 0);
    conn.send(Frame::ok(command_id(&f))).await?;
    within(publish).await???;
    assert_eq!(client.unacknowledged(), (0, 0));

    // A client that does not ask for it does not get it either.
    let (client, conn) = connect(&hub, builder(&hub, "off").reliable(false), &["reliable"]).await?;
    assert_eq!(conn.hello.features, ["listen"]);
    assert!(!client.is_reliable());
    Ok(())
}

#[tokio::test]
async fn acknowledgements_ride_on_frames_both_ways() -> anyhow::Result<()> {
    let hub = FakeHub::new().await?;
    let (client, mut conn) = connect(&hub, builder(&hub, "rider"), &["reliable"]).await?;
    // The hub's answer carries the acknowledgement of the publish: the
    // client forgets its copy without an `Ack` frame.
    let c = client.clone();
    let p = tokio::spawn(async move { c.publish("t", "x").await });
    let f = conn.recv().await?;
    assert_eq!((f.seq, f.acked), (1, 0), "nothing taken from the hub yet");
    let mut ok = Frame::ok(command_id(&f)).with_seq(1);
    ok.acked = 1;
    conn.send(ok).await?;
    within(p).await???;
    assert_eq!(
        client.unacknowledged().0,
        0,
        "the answer's `acked` freed the copy"
    );
    // The client's next frame acknowledges the hub's seq 1.
    let c = client.clone();
    let p = tokio::spawn(async move { c.publish("t", "y").await });
    let f = conn.recv().await?;
    assert_eq!((f.seq, f.acked), (2, 1));
    let ok = Frame::ok(command_id(&f)).with_seq(2);
    conn.send(ok).await?;
    within(p).await???;
    assert_eq!(
        client.unacknowledged().0,
        1,
        "no acknowledgement came for seq 2"
    );
    // The client sends nothing more: a separate Ack for seq 2 follows
    // after the acknowledgement delay.
    let f = conn.read().await?;
    match f.kind {
        Some(Kind::Ack(a)) => assert_eq!(a.up_to, 2),
        other => panic!("expected an Ack, got {other:?}"),
    }
    // An unsequenced frame from the hub may carry an acknowledgement too.
    let mut pong = Frame::from(proto::Pong { nonce: 0 });
    pong.acked = 2;
    conn.send(pong).await?;
    within(async {
        while client.unacknowledged().0 != 0 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await?;
    Ok(())
}

#[tokio::test]
async fn a_full_retention_buffer_holds_senders_back() -> anyhow::Result<()> {
    let hub = FakeHub::new().await?;
    let b = builder(&hub, "full")
        .retention(3, 1 << 20)
        .request_timeout(Duration::from_secs(1));
    let (client, mut conn) = connect(&hub, b, &["reliable"]).await?;
    for seq in 1..=3u64 {
        let c = client.clone();
        let p = tokio::spawn(async move { c.publish("t", vec![seq as u8]).await });
        let f = conn.recv().await?;
        assert_eq!(f.seq, seq);
        conn.send(Frame::ok(command_id(&f)).with_seq(seq)).await?;
        within(p).await???;
    }
    assert_eq!(client.unacknowledged().0, 3);
    // Nothing acknowledged: the fourth waits for room, then times out
    // without having been sent.
    match within(client.publish("t", vec![4])).await? {
        Err(ClientError::Timeout(m)) => assert!(m.contains("retention"), "{m}"),
        other => panic!("expected a timeout, got {other:?}"),
    }
    // An ack makes room; the next frame is number 4 (nothing was numbered
    // for the one that timed out).
    conn.send(Frame::ack(1)).await?;
    let c = client.clone();
    let p = tokio::spawn(async move { c.publish("t", vec![5]).await });
    let f = conn.recv().await?;
    assert_eq!((f.seq, publish_payload(&f)), (4, vec![5]));
    conn.send(Frame::ok(command_id(&f)).with_seq(4)).await?;
    within(p).await???;
    Ok(())
}

#[tokio::test]
async fn a_subscription_dropped_while_reconnecting_is_ended_on_the_resumed_session(
) -> anyhow::Result<()> {
    let hub = FakeHub::new().await?;
    let (client, mut conn) = connect(&hub, builder(&hub, "dropper"), &["reliable"]).await?;
    let c = client.clone();
    let sub = tokio::spawn(async move { c.subscribe("news.>").await });
    let f = conn.recv().await?;
    let Some(Kind::Subscribe(s)) = &f.kind else {
        panic!("expected subscribe")
    };
    let sub_id = s.sub_id;
    conn.send(Frame::ok(s.id).with_seq(1)).await?;
    conn.send(Frame::ack(1)).await?;
    let sub = within(sub).await???;
    conn.wait_ack(1).await?;
    drop(conn);
    wait_state(&client, |s| !s.is_connected()).await?;
    // Dropped while disconnected: its unsubscribe waits for the session.
    drop(sub);
    assert_eq!(client.unacknowledged().0, 1);
    let mut conn = hub
        .accept(1)
        .await?
        .welcome(&["reliable", "resumed"], 1)
        .await?;
    let f = conn.recv().await?;
    match &f.kind {
        Some(Kind::Unsubscribe(u)) => assert_eq!(u.sub_id, sub_id),
        _ => panic!("expected unsubscribe, got {}", f.kind_name()),
    }
    assert_eq!(f.seq, 2);
    Ok(())
}

// ---- against real hubs, through a relay the test can cut ----

async fn hub_with_epoch(epoch: u64) -> anyhow::Result<switchboard::HubHandle> {
    let mut config =
        switchboard::hub::HubConfig::with_secret("reliable-e2e", Secret::from_token(TOKEN));
    config.write_hint = false;
    config.bind.port = switchboard::discovery::PortChoice::Os;
    config.epoch = epoch;
    Ok(switchboard::hub::Hub::start(config).await?)
}

fn via(proxy: &Proxy, id: &str) -> switchboard::ClientBuilder {
    Client::builder(id)
        .addr(proxy.addr().to_string())
        .token(TOKEN)
        .backoff(Duration::from_millis(10), Duration::from_millis(50))
}

#[tokio::test]
async fn real_hubs_of_a_lower_epoch_are_refused() -> anyhow::Result<()> {
    let hub5 = hub_with_epoch(5).await?;
    let hub3 = hub_with_epoch(3).await?;
    let hub7 = hub_with_epoch(7).await?;
    let proxy = Proxy::start(hub5.local_addr()).await?;
    let client = via(&proxy, "epochs").connect().await?;
    assert_eq!(hub5.status().clients, 1);

    proxy.set_target(hub3.local_addr());
    proxy.cut();
    wait_state(
        &client,
        |s| matches!(s, ConnectionState::Reconnecting { reason, .. } if reason.contains("epoch 3")),
    )
    .await?;
    assert_eq!(
        hub3.status().clients,
        0,
        "never registered with the old primary"
    );

    proxy.set_target(hub7.local_addr());
    let state = wait_state(&client, |s| s.is_connected()).await?;
    let ConnectionState::Connected { instance_id, .. } = state else {
        unreachable!()
    };
    assert_eq!(instance_id, hub7.identity().instance_id);
    client.publish("t", "x").await?;
    assert_eq!(hub3.status().clients, 0);
    Ok(())
}

/// Receives `n` messages and returns their payloads as numbers.
async fn take(sub: &mut switchboard::Subscription, n: usize) -> anyhow::Result<Vec<u32>> {
    let mut got = Vec::with_capacity(n);
    for _ in 0..n {
        let m = within(sub.next()).await?.expect("a delivery");
        got.push(std::str::from_utf8(&m.payload)?.parse()?);
    }
    Ok(got)
}

#[tokio::test]
async fn a_session_cut_on_the_network_resumes_on_the_same_hub() -> anyhow::Result<()> {
    let hub = hub_with_epoch(1).await?;
    let proxy = Proxy::start(hub.local_addr()).await?;
    let subscriber = via(&proxy, "far-subscriber").connect().await?;
    let publisher = Client::builder("near-publisher")
        .addr(hub.local_addr().to_string())
        .token(TOKEN)
        .connect()
        .await?;
    assert!(subscriber.is_reliable(), "the hub offers reliable delivery");
    let mut sub = subscriber.subscribe("n.>").await?;
    for i in 0..50u32 {
        publisher.publish("n.x", i.to_string()).await?;
    }
    assert_eq!(take(&mut sub, 50).await?, (0..50).collect::<Vec<_>>());

    // The subscriber's side breaks; the hub does not notice, goes on
    // sending into the dead relay, and those frames are lost on the way.
    proxy.cut_client_side();
    for i in 50..100u32 {
        publisher.publish("n.x", i.to_string()).await?;
    }
    let state = wait_state(&subscriber, |s| {
        matches!(s, ConnectionState::Connected { generation: 2, .. })
    })
    .await?;
    assert!(
        matches!(state, ConnectionState::Connected { resumed: true, .. }),
        "{state:?}"
    );
    for i in 100..150u32 {
        publisher.publish("n.x", i.to_string()).await?;
    }
    // Everything after the cut arrives once, in order: what was lost is
    // sent again, what had arrived is not delivered twice.
    assert_eq!(take(&mut sub, 100).await?, (50..150).collect::<Vec<_>>());
    assert_eq!(hub.status().subscriptions, 1, "no second subscription");
    let none = tokio::time::timeout(Duration::from_millis(100), sub.next()).await;
    assert!(none.is_err(), "no duplicate after the last message");
    proxy.release_hub_sides();
    Ok(())
}

#[tokio::test]
async fn a_request_in_flight_across_a_cut_is_served_once_and_answered() -> anyhow::Result<()> {
    let hub = hub_with_epoch(1).await?;
    let proxy = Proxy::start(hub.local_addr()).await?;
    let server = via(&proxy, "far-server").connect().await?;
    let requester = Client::builder("near-requester")
        .addr(hub.local_addr().to_string())
        .token(TOKEN)
        .connect()
        .await?;
    let mut requests = server.requests().await?;
    let asked = {
        let requester = requester.clone();
        tokio::spawn(async move {
            requester
                .request_with("far-server", "", "question", Duration::from_secs(8))
                .await
        })
    };
    let req = within(requests.next()).await?.expect("the request");
    // Cut before answering: the reply is sent during the gap and goes out
    // on the resumed connection.
    proxy.cut_client_side();
    wait_state(&server, |s| !s.is_connected()).await?;
    let replied = tokio::spawn(req.reply("answer"));
    assert_eq!(&within(asked).await???[..], b"answer");
    within(replied).await???;
    // The hub may resend the request after the resume; it is not served
    // twice.
    let again = tokio::time::timeout(Duration::from_millis(200), requests.next()).await;
    assert!(again.is_err(), "the request was delivered twice");
    proxy.release_hub_sides();
    Ok(())
}

#[tokio::test]
async fn the_first_reconnect_attempt_is_made_at_once() -> anyhow::Result<()> {
    let hub = hub_with_epoch(1).await?;
    let proxy = Proxy::start(hub.local_addr()).await?;
    // A long minimum backoff: only an immediate first attempt reconnects
    // well within it.
    let client = via(&proxy, "quick")
        .backoff(Duration::from_secs(3), Duration::from_secs(6))
        .connect()
        .await?;
    let cut = tokio::time::Instant::now();
    proxy.cut();
    wait_state(&client, |s| {
        matches!(s, ConnectionState::Connected { generation: 2, .. })
    })
    .await?;
    let took = cut.elapsed();
    assert!(
        took < Duration::from_millis(1500),
        "reconnected after {took:?}"
    );
    client.publish("t", "x").await?;
    Ok(())
}

#[tokio::test]
async fn a_standby_takes_over_and_the_session_resumes_on_it() -> anyhow::Result<()> {
    let primary = hub_with_epoch(1).await?;
    let mut config =
        switchboard::hub::HubConfig::with_secret("reliable-e2e", Secret::from_token(TOKEN));
    config.write_hint = false;
    config.bind.port = switchboard::discovery::PortChoice::Os;
    let standby = switchboard::hub::Hub::standby(config, Some(primary.local_addr())).await?;
    let mut watch = standby.watch();
    within(watch.wait_for(|s| matches!(s, switchboard::hub::StandbyState::Following { .. })))
        .await??;
    let addr = primary.local_addr().to_string();
    let connect = |id: &'static str| {
        Client::builder(id)
            .addr(addr.clone())
            .token(TOKEN)
            .backoff(Duration::from_millis(10), Duration::from_millis(50))
            .connect()
    };
    let subscriber = connect("sub-failover").await?;
    let publisher = connect("pub-failover").await?;
    let mut sub = subscriber.subscribe("f.>").await?;
    for i in 0..20u32 {
        publisher.publish("f.x", i.to_string()).await?;
    }
    assert_eq!(take(&mut sub, 20).await?, (0..20).collect::<Vec<_>>());

    let killed = tokio::time::Instant::now();
    primary.shutdown().await;
    let promoted = within(standby.promoted()).await?.expect("promoted")?;
    for c in [&subscriber, &publisher] {
        let state = wait_state(c, |s| {
            matches!(s, ConnectionState::Connected { generation: 2, .. })
        })
        .await?;
        assert!(
            matches!(state, ConnectionState::Connected { resumed: true, .. }),
            "{state:?}"
        );
    }
    publisher.publish("f.x", "20").await?;
    assert_eq!(take(&mut sub, 1).await?, [20]);
    eprintln!(
        "first message through the new primary {:?} after the old one stopped",
        killed.elapsed()
    );
    assert_eq!(promoted.status().subscriptions, 1);
    Ok(())
}

#[tokio::test]
async fn a_real_hub_acknowledges_through_answers_and_after_the_delay() -> anyhow::Result<()> {
    let hub = hub_with_epoch(1).await?;
    let connect = |id: &'static str| {
        Client::builder(id)
            .addr(hub.local_addr().to_string())
            .token(TOKEN)
            .connect()
    };
    let server = connect("acked-server").await?;
    let requester = connect("acked-requester").await?;
    let mut requests = server.requests().await?;
    for round in 0..20u32 {
        let r = requester.clone();
        let asked = tokio::spawn(async move {
            r.request("acked-server", round.to_be_bytes().to_vec())
                .await
        });
        let req = within(requests.next()).await?.expect("a request");
        let payload = req.payload().clone();
        within(req.reply(payload)).await??;
        assert_eq!(&within(asked).await???[..], round.to_be_bytes());
        // The reply acknowledged the request: nothing of the requester's
        // waits for an acknowledgement.
        assert_eq!(requester.unacknowledged().0, 0, "round {round}");
    }
    // The server's replies get no answer; the hub acknowledges them by
    // the next request it delivers, and the last one after its delay.
    within(async {
        while server.unacknowledged().0 != 0 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await?;
    Ok(())
}

/// A connection cut while the reader waits on a full stream: the frame it
/// held is sent again on resume and taken once; `unsubscribe_after` counts
/// it once and still ends the stream.
#[tokio::test]
async fn a_cut_while_the_reader_waits_on_a_full_stream_loses_and_doubles_nothing(
) -> anyhow::Result<()> {
    let hub = hub_with_epoch(1).await?;
    let proxy = Proxy::start(hub.local_addr()).await?;
    // While its reader waits on the application, a client notices a dead
    // connection by its pings failing: ping often.
    let subscriber = via(&proxy, "blocked")
        .stream_capacity(1)
        .keepalive(Duration::from_millis(50))
        .connect()
        .await?;
    let publisher = Client::builder("pub")
        .addr(hub.local_addr().to_string())
        .token(TOKEN)
        .connect()
        .await?;
    let mut sub = subscriber
        .subscribe_with(
            "b.>",
            switchboard::SubscribeOptions::default().max_messages(4),
        )
        .await?;
    for i in 0..6u32 {
        publisher.publish("b.x", i.to_string()).await?;
    }
    // The stream holds one; the reader waits with the second.
    within(async {
        while subscriber.unacknowledged().0 > 0 {
            tokio::task::yield_now().await;
        }
    })
    .await?;
    proxy.cut();
    wait_state(&subscriber, |s| {
        matches!(s, ConnectionState::Connected { generation: 2, .. })
    })
    .await?;
    // Four, once each and in order, then the end.
    assert_eq!(take(&mut sub, 4).await?, vec![0, 1, 2, 3]);
    assert!(within(sub.next()).await?.is_none(), "the stream ended");
    within(async {
        while hub.status().subscriptions != 0 {
            tokio::task::yield_now().await;
        }
    })
    .await?;
    Ok(())
}
