//! The primary's end of a standby link: a primary with a standby attached
//! that hears of a higher epoch (a client resuming with it) checks for a
//! newer primary and, finding none, goes on replicating; and a standby
//! that is quiet for long while it takes a snapshot in (its first, or a
//! fresh one after the change log overflowed) is kept; one that answers
//! heartbeats but never acknowledges a change is dropped; a real standby
//! sent fresh snapshots mid-stream holds every confirmed change.

mod common;

use std::time::{Duration, Instant};

use anyhow::Result;
use anyhow::{bail, Context};
use bytes::BytesMut;
use common::{config, start, TestClient, TOKEN, WAIT};
use switchboard_discovery::nonce;
use switchboard_hub::{Hub, HubHandle, StandbyHandle, StandbyState};
use switchboard_wire::proto::{self, frame::Kind};
use switchboard_wire::{put_frame, ErrorCode, Frame, PROTOCOL_VERSION};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_higher_epoch_seen_with_a_standby_attached_keeps_replication_on() -> Result<()> {
    let primary = start().await;
    let (standby, _) = following(&primary).await?;
    let mut writer = TestClient::connect(primary.local_addr(), "writer").await?;
    let set = |n: u64| proto::KvSet {
        id: n + 1,
        key: format!("k{n}"),
        value: n.to_string().into(),
        expect_version: None,
    };
    let first = set(0);
    writer.send(first).await?;
    writer.expect().await?;

    // A client that has seen epoch 99: refused as fenced, and the primary
    // looks for a newer primary (there is none).
    let mut old = TestClient::connect_raw(primary.local_addr()).await?;
    old.send(proto::Hello {
        protocol_version: PROTOCOL_VERSION,
        client_id: "from-the-future".into(),
        client_nonce: nonce().to_vec().into(),
        resume: Some(proto::Resume {
            epoch: 99,
            ..Default::default()
        }),
        ..Default::default()
    })
    .await?;
    match old.expect().await?.kind {
        Some(Kind::Error(e)) => assert_eq!(e.code, ErrorCode::Fenced as i32, "{}", e.message),
        other => panic!("expected a Fenced error, got {other:?}"),
    }

    // Changes go on for longer than the check takes (it gives up after
    // 500 ms), each acknowledged; the standby must hold every one.
    let writing = Instant::now();
    let mut n = 1;
    while writing.elapsed() < Duration::from_secs(3) {
        let frame = set(n);
        writer.send(frame).await?;
        match writer.expect().await?.kind {
            Some(Kind::KvValue(_)) | Some(Kind::Ok(_)) => {}
            other => panic!("set {n}: {other:?}"),
        }
        n += 1;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let keys = same_state(&primary, &standby).await?;
    assert_eq!(keys as u64, n, "every key set is there");
    Ok(())
}

#[tokio::test]
async fn a_standby_quiet_until_its_first_snapshot_is_restored_is_kept() -> Result<()> {
    let primary = start().await;
    // Connected first: with a standby attached, a client's handshake waits
    // for the standby's acknowledgement, which this one does not give.
    let mut writer = TestClient::connect(primary.local_addr(), "writer").await?;
    let (mut link, first) =
        TestClient::connect_standby(primary.local_addr(), TOKEN, "slow-standby").await?;
    let snapshot = opening_snapshot(&mut link, first).await?;
    restore_quietly(&mut link, &mut writer, snapshot.repl_seq).await
}

#[tokio::test]
async fn a_standby_quiet_while_it_restores_a_fresh_snapshot_is_kept() -> Result<()> {
    // A change log of 8 changes a turn: 20 key sets in one write
    // overflow it, and the standby gets a fresh snapshot.
    let mut config = config();
    config.limits.change_log_changes = 8;
    let primary = Hub::start(config).await?;
    let addr = primary.local_addr();
    let mut writer = TestClient::connect(addr, "writer").await?;

    let (mut link, opening) = restored_standby(addr, "restoring-standby").await?;

    writer.send_bytes(&key_sets("k", 1)).await?;
    // Alive (a heartbeat for each of the primary's) until the fresh
    // snapshot comes.
    let fresh = tokio::time::timeout(WAIT, async {
        loop {
            match link.expect().await?.kind {
                Some(Kind::Snapshot(s)) => return Ok(s),
                Some(Kind::Heartbeat(h)) => answer(&mut link, &h).await?,
                Some(Kind::Change(_)) => bail!("the sets' changes fit the log: no overflow"),
                _ => {}
            }
        }
    })
    .await??;
    assert!(fresh.repl_seq > opening.repl_seq);
    assert!(primary.status().counters["standby_resyncs"] >= 1);
    restore_quietly(&mut link, &mut writer, fresh.repl_seq).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_standby_sent_a_fresh_snapshot_mid_stream_holds_every_change() -> Result<()> {
    let mut config = config();
    config.limits.change_log_changes = 8;
    let primary = Hub::start(config).await?;
    let (standby, state) = following(&primary).await?;
    let mut writer = TestClient::connect(primary.local_addr(), "writer").await?;
    // Rounds of 20 sets in one write each overflow the log (a fresh
    // snapshot), with single sets between them (changes again).
    for round in 0..3u64 {
        writer
            .send_bytes(&key_sets(&format!("r{round}-k"), round * 100 + 1))
            .await?;
        for _ in 0..20 {
            match writer.expect().await?.kind {
                Some(Kind::KvValue(_)) | Some(Kind::Ok(_)) => {}
                other => bail!("set in round {round}: {other:?}"),
            }
        }
        writer
            .send(proto::KvSet {
                id: round * 100 + 50,
                key: format!("r{round}-single"),
                value: "v".into(),
                expect_version: None,
            })
            .await?;
        writer.expect().await?;
    }
    // Each round of 20 overflowed the log (at least once).
    assert!(primary.status().counters["standby_resyncs"] >= 3);
    // Every set was confirmed, so the standby holds it: its state becomes
    // the primary's (it acknowledges before it applies).
    assert_eq!(same_state(&primary, &standby).await?, 63);
    assert!(
        matches!(*state.borrow(), StandbyState::Following { .. }),
        "still following"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_standby_that_answers_heartbeats_but_never_acknowledges_is_dropped() -> Result<()> {
    // The allowance for a standby's acknowledgement is the handshake's
    // time: 1 s here.
    let mut config = config();
    config.handshake_timeout = Duration::from_secs(1);
    let primary = Hub::start(config).await?;
    let addr = primary.local_addr();
    let mut writer = TestClient::connect(addr, "writer").await?;
    let (mut link, _) = restored_standby(addr, "mute-standby").await?;
    // A confirmed change: held until the standby acknowledges it, which
    // this one never does, while it answers every heartbeat.
    let started = Instant::now();
    writer
        .send(proto::KvSet {
            id: 1,
            key: "k".into(),
            value: "v".into(),
            expect_version: None,
        })
        .await?;
    let dropped = tokio::time::timeout(WAIT, async {
        loop {
            match link.expect().await {
                Ok(Frame {
                    kind: Some(Kind::Heartbeat(h)),
                    ..
                }) => {
                    if answer(&mut link, &h).await.is_err() {
                        return;
                    }
                }
                Ok(_) => {}
                Err(_) => return,
            }
        }
    })
    .await;
    assert!(dropped.is_ok(), "the mute standby was kept for {WAIT:?}");
    // Dropped after the allowance, not before.
    assert!(started.elapsed() >= Duration::from_millis(900));
    // Without a standby the hub answers again: the held confirmation
    // goes out.
    let answer = tokio::time::timeout(WAIT, writer.expect()).await??;
    assert!(
        matches!(answer.kind, Some(Kind::Ok(_)) | Some(Kind::KvValue(_))),
        "{answer:?}"
    );
    Ok(())
}

/// A standby link named `name` to the primary at `addr` that took its
/// opening snapshot in and acknowledged it; the snapshot.
async fn restored_standby(
    addr: std::net::SocketAddr,
    name: &str,
) -> Result<(TestClient, proto::Snapshot)> {
    let (mut link, first) = TestClient::connect_standby(addr, TOKEN, name).await?;
    let opening = opening_snapshot(&mut link, first).await?;
    link.send(proto::ReplAck {
        repl_seq: opening.repl_seq,
    })
    .await?;
    Ok((link, opening))
}

/// The opening snapshot of a standby link, after the `ReplHello` (and any
/// heartbeat) before it; `first` is what `connect_standby` returned.
async fn opening_snapshot(link: &mut TestClient, first: Frame) -> Result<proto::Snapshot> {
    let mut next = first;
    loop {
        match next.kind {
            Some(Kind::Snapshot(s)) => return Ok(s),
            Some(Kind::ReplHello(_)) | Some(Kind::Heartbeat(_)) => {}
            other => bail!("expected the opening snapshot, got {other:?}"),
        }
        next = link.expect().await?;
    }
}

/// Answers the primary's heartbeat `h` as a live standby does (fails once
/// the primary dropped the link).
async fn answer(link: &mut TestClient, h: &proto::Heartbeat) -> Result<()> {
    link.send(proto::Heartbeat {
        epoch: h.epoch,
        role: proto::Role::Standby as i32,
        ..Default::default()
    })
    .await
}

/// Waits for the next change on the link, answering heartbeats and
/// acknowledging any further fresh snapshot (a burst that reached the
/// router in more than one turn).
async fn expect_change(link: &mut TestClient) -> Result<()> {
    tokio::time::timeout(WAIT, async {
        loop {
            match link.expect().await?.kind {
                Some(Kind::Change(_)) => return Ok(()),
                Some(Kind::Heartbeat(h)) => answer(link, &h).await?,
                Some(Kind::Snapshot(s)) => {
                    link.send(proto::ReplAck {
                        repl_seq: s.repl_seq,
                    })
                    .await?
                }
                other => bail!("expected a change, got {other:?}"),
            }
        }
    })
    .await?
}

/// Twenty `KvSet`s (keys `{prefix}0` to `{prefix}19`, ids from
/// `first_id`) in one buffer, to be sent in one write: one input of the
/// router.
fn key_sets(prefix: &str, first_id: u64) -> BytesMut {
    let mut sets = BytesMut::new();
    for n in 0..20u64 {
        let set = proto::KvSet {
            id: first_id + n,
            key: format!("{prefix}{n}"),
            value: "v".into(),
            expect_version: None,
        };
        put_frame(&Frame::from(set), &mut sets);
    }
    sets
}

/// A standby restoring a snapshot committed at `repl_seq`: silent for five
/// times what the heartbeat allows (4 x 50 ms), as one restoring a large
/// state is, then it acknowledges; it must still be attached (answering
/// the primary's heartbeats fails once the primary dropped the link): a
/// change of `writer`'s reaches it.
async fn restore_quietly(
    link: &mut TestClient,
    writer: &mut TestClient,
    repl_seq: u64,
) -> Result<()> {
    tokio::time::sleep(Duration::from_secs(1)).await;
    link.send(proto::ReplAck { repl_seq }).await?;
    writer
        .send(proto::KvSet {
            id: 100,
            key: "last".into(),
            value: "v".into(),
            expect_version: None,
        })
        .await?;
    expect_change(link).await
}

/// Waits until the standby holds the primary's key/value state at the
/// same `repl_seq` (it acknowledges before it applies); the number of
/// keys.
async fn same_state(primary: &HubHandle, standby: &StandbyHandle) -> Result<usize> {
    let deadline = Instant::now() + WAIT;
    loop {
        let p = primary.snapshot().await.context("primary snapshot")?;
        let s = standby.snapshot().await.context("standby snapshot")?;
        if p.kv == s.kv && p.repl_seq == s.repl_seq {
            return Ok(p.kv.len());
        }
        if Instant::now() >= deadline {
            bail!(
                "the standby's state differs: repl_seq {} vs {}, keys {} vs {}",
                p.repl_seq,
                s.repl_seq,
                p.kv.len(),
                s.kv.len()
            );
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A standby of `primary`, once it follows it; its state.
async fn following(
    primary: &HubHandle,
) -> Result<(StandbyHandle, tokio::sync::watch::Receiver<StandbyState>)> {
    let standby = Hub::standby(common::config(), Some(primary.local_addr())).await?;
    let mut state = standby.watch();
    tokio::time::timeout(
        WAIT,
        state.wait_for(|s| matches!(s, StandbyState::Following { .. })),
    )
    .await??;
    Ok((standby, state))
}
