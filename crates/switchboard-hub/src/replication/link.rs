//! The primary's end of a replication link: the connection task that
//! carries the router task's encoded changes to the standby and its
//! acknowledgements back (releasing the [`Gate`](crate::outbox::Gate)),
//! and the router task's handle on it ([`Link`]): snapshot and change
//! shipping. The protocol is in `docs/PROTOCOL.md`; the design in the
//! project's `ARCHITECTURE.md`, "Hot standby".

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use parking_lot::Mutex;
use switchboard_discovery::now_ms;
use switchboard_wire::proto::{self, frame::Kind};
use switchboard_wire::{decode_frame, put_frame, ErrorCode, Frame};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::router::Router;
use crate::shared::{Attach, Shared};
use crate::stats::ReplStats;
use crate::transport::{Body, FrameRx, FrameTx};

/// Largest frame a primary accepts from its standby (acks, heartbeats).
const STANDBY_MAX_FRAME: usize = 64 * 1024;

/// Encoded batches queued for the link's writer.
const LINK_QUEUE: usize = 256;

/// Most bytes the link's writer gathers from queued batches into one
/// write.
const LINK_WRITE_BYTES: usize = 256 * 1024;

/// The router task's end of an attached standby link.
pub(crate) struct Link {
    out: mpsc::Sender<Bytes>,
    alive: CancellationToken,
    commits: Arc<Mutex<VecDeque<(u64, u64)>>>,
    restoring: Arc<AtomicU64>,
}

impl Link {
    /// Takes over the link a connection handed to the router task.
    pub(crate) fn new(attach: Attach) -> Link {
        Link {
            out: attach.out,
            alive: attach.alive,
            commits: attach.commits,
            restoring: attach.restoring,
        }
    }

    /// Ships a fresh snapshot (`bytes`, committed at `repl_seq`) in the
    /// middle of the link: the standby may be quiet until it acknowledges
    /// `repl_seq`, for as long as the opening snapshot may take.
    pub(crate) async fn resync(&self, repl: &ReplStats, repl_seq: u64, bytes: Bytes) {
        repl.resyncs.fetch_add(1, Ordering::Relaxed);
        self.restoring.store(repl_seq + 1, Ordering::Relaxed);
        self.ship(repl, repl_seq, bytes).await;
    }

    /// Cancelled when the link is lost.
    pub(crate) fn alive(&self) -> &CancellationToken {
        &self.alive
    }

    /// Queues `bytes` (changes up to `repl_seq`, or a snapshot) for the
    /// standby, remembering where the commit point `repl_seq` ends so its
    /// acknowledgement can be counted in bytes.
    pub(crate) async fn ship(&self, repl: &ReplStats, repl_seq: u64, bytes: Bytes) {
        let total = repl
            .bytes_sent
            .fetch_add(bytes.len() as u64, Ordering::Relaxed)
            + bytes.len() as u64;
        self.commits.lock().push_back((repl_seq, total));
        // Queued at once unless the writer is behind (no waiters built).
        let bytes = match self.out.try_send(bytes) {
            Err(mpsc::error::TrySendError::Full(bytes)) => bytes,
            Ok(()) | Err(mpsc::error::TrySendError::Closed(_)) => return,
        };
        tokio::select! {
            _ = self.out.send(bytes) => {}
            _ = self.alive.cancelled() => {}
        }
    }
}

/// Refuses a second standby (or one arriving while the primary checks
/// its epoch): the link gets an error and closes.
pub(crate) fn refuse(attach: Attach) {
    let mut buf = BytesMut::new();
    put_frame(
        &Frame::error(
            0,
            ErrorCode::Unsupported,
            "this hub already has a standby (or is checking its epoch); one standby per primary",
        ),
        &mut buf,
    );
    let _ = attach.out.try_send(buf.freeze());
}

/// The opening of a link (`ReplHello` when `hello`), a snapshot of
/// `router`'s state and its commit point, encoded.
pub(crate) fn snapshot_bytes(router: &Router, local_addr: SocketAddr, hello: bool) -> Bytes {
    let epoch = router.identity().epoch;
    let mut buf = BytesMut::new();
    if hello {
        put_frame(
            &Frame::from(proto::ReplHello {
                instance_id: router.identity().instance_id.clone(),
                epoch,
                addr: local_addr.to_string(),
            }),
            &mut buf,
        );
    }
    let mut snap = router.snapshot();
    snap.addr = local_addr.to_string();
    put_frame(&Frame::from(snap), &mut buf);
    put_frame(
        &heartbeat(epoch, router.repl_seq(), proto::Role::Primary),
        &mut buf,
    );
    buf.freeze()
}

/// A replication heartbeat: liveness, and with `repl_seq` above 0 a
/// commit point.
pub(crate) fn heartbeat(epoch: u64, repl_seq: u64, role: proto::Role) -> Frame {
    Frame::from(proto::Heartbeat {
        epoch,
        repl_seq,
        time_ms: now_ms(),
        role: role as i32,
    })
}

/// The primary's end of a replication link, after the standby
/// authenticated with `Hello{role: STANDBY}`.
pub(crate) async fn serve_link<R: FrameRx, W: FrameTx>(
    mut rd: R,
    mut wr: W,
    peer: String,
    hello: proto::Hello,
    shared: Arc<Shared>,
) {
    let (tx, mut rx) = mpsc::channel::<Bytes>(LINK_QUEUE);
    let alive = CancellationToken::new();
    let commits = Arc::new(Mutex::new(VecDeque::new()));
    // The opening snapshot: any acknowledgement ends its restore.
    let restoring = Arc::new(AtomicU64::new(1));
    let attach = Attach {
        addr: peer.clone(),
        out: tx,
        alive: alive.clone(),
        commits: commits.clone(),
        restoring: restoring.clone(),
    };
    tracing::info!(standby = %hello.client_id, %peer, "standby connected");
    if shared.standby.send(attach).await.is_err() {
        return;
    }
    let (interval, misses) = shared.heartbeat;
    let epoch = shared.identity.epoch;
    // Silence is counted in ticks of its own (a writer blocked on a full
    // socket does not stop them): a tick with nothing read from the
    // standby since the one before is a miss (no timer per read).
    // While it takes a snapshot in (the opening one, or a fresh one after
    // the change log overflowed), until it acknowledges the snapshot's
    // commit point, the standby is quiet for as long as the snapshot takes
    // to encode, send and restore: it gets the handshake's time for that,
    // not the heartbeat's.
    //
    // Heard is not enough: a standby that answers heartbeats but never
    // acknowledges what it was sent would hold every client's outgoing
    // frames (the gate waits for its acknowledgement) for as long as it
    // stays connected. While changes wait for their acknowledgement, the
    // acknowledged point must move within the same allowance as a
    // restore's (the handshake's time), or the standby is dropped.
    let repl = &shared.stats.repl;
    let heard = std::sync::atomic::AtomicBool::new(true);
    let restore_misses = misses.max(
        (shared.handshake_timeout.as_millis() / interval.as_millis().max(1))
            .try_into()
            .unwrap_or(u32::MAX),
    );
    let silent = async {
        let mut ticker = tokio::time::interval_at(tokio::time::Instant::now() + interval, interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut missed = 0u32;
        let (mut last_acked, mut stalled) = (repl.acked.load(Ordering::Relaxed), 0u32);
        loop {
            ticker.tick().await;
            let acked = repl.acked.load(Ordering::Relaxed);
            stalled = if acked == last_acked && !commits.lock().is_empty() {
                stalled + 1
            } else {
                0
            };
            last_acked = acked;
            if stalled >= restore_misses {
                tracing::warn!(
                    ms = (interval * stalled).as_millis() as u64,
                    "standby acknowledged nothing while changes waited; dropping it"
                );
                return;
            }
            missed = if heard.swap(false, Ordering::Relaxed) {
                0
            } else {
                missed + 1
            };
            let limit = match restoring.load(Ordering::Relaxed) {
                0 => misses,
                _ => restore_misses,
            };
            if missed >= limit {
                tracing::warn!(
                    ms = (interval * limit).as_millis() as u64,
                    "standby silent; dropping it"
                );
                return;
            }
        }
    };
    let writer = async {
        // The first frames are the router's ReplHello and snapshot.
        let mut ticker = tokio::time::interval_at(tokio::time::Instant::now() + interval, interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut wrote = false;
        loop {
            tokio::select! {
                m = rx.recv() => {
                    let Some(bytes) = m else { break };
                    // Batches queued meanwhile go in the same write.
                    let mut batch = BytesMut::from(bytes);
                    while batch.len() < LINK_WRITE_BYTES {
                        match rx.try_recv() {
                            Ok(more) => batch.extend_from_slice(&more),
                            Err(_) => break,
                        }
                    }
                    if wr.send(&mut batch).await.is_err() {
                        break;
                    }
                    wrote = true;
                }
                _ = ticker.tick() => {
                    if !std::mem::take(&mut wrote) {
                        // Liveness only: repl_seq 0 is no commit point.
                        let mut b = BytesMut::new();
                        put_frame(&heartbeat(epoch, 0, proto::Role::Primary), &mut b);
                        if wr.send(&mut b).await.is_err() {
                            break;
                        }
                    }
                }
            }
        }
    };
    let gate = &shared.gate;
    let reader = async {
        let decode = |body: Body<'_>| decode_frame(body.into_bytes(), STANDBY_MAX_FRAME);
        loop {
            let frame = loop {
                match rd.next_frame(STANDBY_MAX_FRAME, decode) {
                    Ok(Some(Ok(f))) => break Some(f),
                    Ok(None) => {}
                    Ok(Some(Err(e))) | Err(e) => {
                        tracing::warn!(error = %e, "bad frame from the standby");
                        break None;
                    }
                }
                match rd.receive().await {
                    Ok(n) if n > 0 => heard.store(true, Ordering::Relaxed),
                    _ => break None,
                }
            };
            let Some(frame) = frame else { break };
            match frame.kind {
                Some(Kind::ReplAck(a)) => {
                    let until = restoring.load(Ordering::Relaxed);
                    if until != 0 && a.repl_seq.saturating_add(1) >= until {
                        // (A resync shipped meanwhile set a later point.)
                        let _ = restoring.compare_exchange(
                            until,
                            0,
                            Ordering::Relaxed,
                            Ordering::Relaxed,
                        );
                    }
                    repl.acked.fetch_max(a.repl_seq, Ordering::Relaxed);
                    let mut c = commits.lock();
                    while c.front().is_some_and(|(seq, _)| *seq <= a.repl_seq) {
                        if let Some((_, bytes)) = c.pop_front() {
                            repl.bytes_acked.store(bytes, Ordering::Relaxed);
                        }
                    }
                    drop(c);
                    gate.release(a.repl_seq);
                }
                Some(Kind::Heartbeat(_)) => {}
                Some(Kind::Error(e)) => {
                    tracing::warn!(message = %e.message, "the standby reported an error");
                    break;
                }
                _ => {}
            }
        }
    };
    tokio::select! {
        _ = writer => {}
        _ = reader => {}
        _ = silent => {}
        _ = alive.cancelled() => {}
        _ = shared.shutdown.cancelled() => {}
    }
    alive.cancel();
    tracing::info!(%peer, "standby link closed");
}
