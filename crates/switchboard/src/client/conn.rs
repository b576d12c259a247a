//! A connection's life: the supervisor that reconnects with backoff, the
//! driver of one authenticated connection (keepalive, resume or restore,
//! and what is kept or failed when it ends), and the batching writer. The
//! connection is made in `connect.rs`; its frames are read and routed in
//! `reader.rs`.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use futures::FutureExt;
use rand::Rng;
use switchboard_wire::{proto, ErrorCode, Frame, FrameCodec, Kind, KEEPALIVE_MISSES};
use switchboard_wire::{FEATURE_LISTEN, FEATURE_RELIABLE, FEATURE_RESUMED};
use tokio::io::AsyncWriteExt;
use tokio::sync::mpsc;
use tokio_util::codec::Encoder;
use tracing::Instrument as _;

use super::connect::{connect_once, Connected, Endpoint};
use super::events::ClientEvent;
use super::presence;
use super::reader::{read_loop, End};
use super::registry::{ConnTx, Out};
use super::shared::{Shared, Target};
use super::streams::subscribe_frame;
use super::transport::Wr;
use super::types::ConnectionState;
use crate::ClientError;

/// Largest batch the writer collects before one write.
const WRITE_BATCH: usize = 256 * 1024;

/// Most queued frames the writer takes at once.
const RECV_BATCH: usize = 64;

/// Discovery deadline of the first reconnect attempts.
const EARLY_DISCOVERY: Duration = Duration::from_millis(250);

/// Attempts after the first (immediate) one that wait the minimum backoff
/// before the waits start doubling.
const FLAT_ATTEMPTS: u32 = 3;

/// Drives connections until the client is closed, reconnecting with
/// backoff after each loss.
pub(crate) async fn supervise(shared: Arc<Shared>, first: Connected) {
    let mut conn = first;
    let mut generation = 1u64;
    let mut close = shared.close.subscribe();
    loop {
        let last = conn.endpoint.clone();
        // Every line logged while this connection lives (its reader and
        // writer tasks included) carries the client id, the transport and
        // the connection counter.
        let span = tracing::info_span!(
            "client_conn",
            client_id = %shared.cfg.id,
            transport = transport_name(&shared, &conn.endpoint),
            conn = generation,
            hub = %conn.addr,
        );
        let end = drive(&shared, conn, generation).instrument(span).await;
        let reason = match end {
            End::Closed => {
                set_closed(&shared, "closed by the application");
                return;
            }
            End::TakenOver => {
                set_closed(&shared, "another connection took over the client id");
                return;
            }
            End::Lost { reason, .. } => reason,
        };
        shared.emit(ClientEvent::Disconnected {
            reason: reason.clone(),
        });
        tracing::debug!(client = %shared.cfg.id, %reason, "connection lost");
        if !shared.cfg.reconnect {
            set_closed(&shared, &format!("connection lost: {reason}"));
            return;
        }
        let mut attempt = 0u32;
        let mut last_error = String::new();
        conn = loop {
            attempt += 1;
            if shared
                .cfg
                .max_reconnect_attempts
                .is_some_and(|max| attempt > max)
            {
                set_closed(
                    &shared,
                    &format!(
                        "gave up reconnecting after {} attempts: {reason}{last_error}",
                        attempt - 1
                    ),
                );
                return;
            }
            shared.state.send_replace(ConnectionState::Reconnecting {
                attempt,
                reason: format!("{reason}{last_error}"),
            });
            let wait = backoff(&shared, attempt);
            if !wait.is_zero() {
                tokio::select! {
                    _ = tokio::time::sleep(wait) => {}
                    _ = close.wait_for(|c| *c) => {
                        set_closed(&shared, "closed by the application");
                        return;
                    }
                }
            }
            // Early attempts keep discovery short, so the last address is
            // tried again soon (a standby takes it over); later ones search
            // as long as a first connection does.
            let deadline = if attempt <= FLAT_ATTEMPTS + 1 {
                shared.cfg.connect_timeout.min(EARLY_DISCOVERY)
            } else {
                shared.cfg.connect_timeout
            };
            let attempt_fut = connect_once(&shared, Some(last.clone()), deadline);
            tokio::select! {
                r = attempt_fut => match r {
                    Ok(c) => break c,
                    Err(e) => {
                        tracing::debug!(client = %shared.cfg.id, error = %e, attempt, "reconnect failed");
                        if e.is_fenced() {
                            shared.emit(ClientEvent::Fenced { message: e.to_string() });
                        }
                        last_error = format!("; last attempt: {e}");
                    }
                },
                _ = close.wait_for(|c| *c) => {
                    set_closed(&shared, "closed by the application");
                    return;
                }
            }
        };
        generation += 1;
    }
}

fn set_closed(shared: &Shared, reason: &str) {
    let mut reg = shared.reg.lock();
    reg.conn = None;
    reg.pending.clear();
    reg.lost_at_close = (reg.out.len(), reg.out.bytes());
    reg.out.clear();
    reg.holding = false;
    reg.resumable = false;
    // End every stream after what it holds: nothing will arrive any more.
    reg.end_streams();
    reg.sessions.clear();
    reg.session_any = None;
    let (lost, _) = reg.lost_at_close;
    drop(reg);
    if lost > 0 {
        tracing::debug!(client = %shared.cfg.id, frames = lost, "closed with frames the hub had not acknowledged");
    }
    shared.state.send_replace(ConnectionState::Closed {
        reason: reason.to_string(),
    });
    shared.emit(ClientEvent::Closed {
        reason: reason.to_string(),
    });
    shared.wake.notify_waiters();
}

/// Wait before reconnect attempt `attempt` (1 for the first after a loss):
/// none for the first, so a failover costs no backoff; the minimum for the
/// next [`FLAT_ATTEMPTS`]; then doubling up to the maximum. Each wait is
/// drawn from the upper quarter of its step, so clients spread out without
/// adding much delay.
fn backoff(shared: &Shared, attempt: u32) -> Duration {
    if attempt <= 1 {
        return Duration::ZERO;
    }
    let min = shared.cfg.backoff_min;
    let max = shared.cfg.backoff_max;
    let doublings = attempt.saturating_sub(FLAT_ATTEMPTS + 1).min(20);
    let step = min.saturating_mul(1u32 << doublings).min(max);
    let lo = step * 3 / 4;
    let jitter =
        rand::rng().random_range(0..=step.as_micros().saturating_sub(lo.as_micros()) as u64);
    lo + Duration::from_micros(jitter)
}

fn has_feature(welcome: &proto::Welcome, feature: &str) -> bool {
    welcome.features.iter().any(|f| f == feature)
}

/// The transport of a connection, for its span: `tcp`, `tls`, `unix`,
/// `websocket` or `memory`.
fn transport_name(shared: &Shared, endpoint: &Endpoint) -> &'static str {
    match (&shared.cfg.target, endpoint) {
        (Target::Dialer(d), _) => d.what(),
        (_, Endpoint::Unix(..)) => "unix",
        (_, Endpoint::Tcp(_)) if shared.cfg.tls.is_some() => "tls",
        (_, Endpoint::Tcp(_)) => "tcp",
    }
}

/// Runs one authenticated connection until it ends.
async fn drive(shared: &Arc<Shared>, conn: Connected, generation: u64) -> End {
    let (tx, rx) = mpsc::channel(shared.cfg.send_queue);
    let max_frame = if conn.welcome.max_frame == 0 {
        switchboard_wire::DEFAULT_MAX_FRAME
    } else {
        conn.welcome.max_frame as usize
    };
    let max_frame = match &shared.cfg.target {
        Target::Dialer(d) => d.max_frame().map_or(max_frame, |m| m.min(max_frame)),
        _ => max_frame,
    };
    let reliable = shared.cfg.reliable && has_feature(&conn.welcome, FEATURE_RELIABLE);
    let (replay, resumed) = {
        let mut reg = shared.reg.lock();
        let resumed = reliable && reg.resumable && has_feature(&conn.welcome, FEATURE_RESUMED);
        let replay = if resumed {
            // The hub holds everything up to its `last_received`; the rest
            // goes out again, in order, before any new frame.
            reg.out.replay_after(conn.welcome.last_received)
        } else {
            // A fresh session: the outcome of whatever was kept or waited
            // for across the gap is unknown.
            reg.pending.clear();
            reg.out.clear();
            shared.in_last.store(0, Ordering::Relaxed);
            Vec::new()
        };
        reg.resumable = reliable;
        reg.holding = false;
        reg.conn = Some(ConnTx {
            tx: tx.clone(),
            max_frame,
            generation,
            reliable,
            listen: has_feature(&conn.welcome, FEATURE_LISTEN),
        });
        (replay, resumed)
    };
    shared.wake.notify_waiters();
    if resumed {
        tracing::debug!(client = %shared.cfg.id, resent = replay.len(), "session resumed");
    } else {
        tracing::debug!("connected");
    }
    // What this connection's frames acknowledged so far (`Frame.acked`),
    // written by the writer, read by the reader to skip separate Acks.
    let carried =
        reliable.then(|| Arc::new(AtomicU64::new(shared.in_last.load(Ordering::Relaxed))));
    let mut writer = tokio::spawn(
        write_loop(
            replay,
            rx,
            conn.writer,
            max_frame,
            carried.clone().map(|c| (shared.clone(), c)),
        )
        .in_current_span(),
    );
    let base = tokio::time::Instant::now();
    let last_rx = Arc::new(AtomicU64::new(0));
    let mut reader = tokio::spawn(
        read_loop(
            shared.clone(),
            conn.reader.map_decoder(FrameCodec::incoming),
            tx.clone(),
            base,
            last_rx.clone(),
            carried.unwrap_or_default(),
        )
        .in_current_span(),
    );
    // Ping at least this often: half the hub's keepalive, or the client's.
    let mut interval = shared.cfg.keepalive;
    if conn.welcome.keepalive_ms > 0 {
        interval = interval.min(Duration::from_millis(
            u64::from(conn.welcome.keepalive_ms) / 2,
        ));
    }
    let interval = interval.max(Duration::from_millis(10));
    let mut ticker = tokio::time::interval_at(base + interval, interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut close = shared.close.subscribe();
    let resync = resync(shared, generation > 1 && !resumed);
    tokio::pin!(resync);
    let mut synced = false;
    let end = loop {
        tokio::select! {
            _ = &mut resync, if !synced => {
                synced = true;
                shared.state.send_replace(ConnectionState::Connected {
                    addr: conn.addr,
                    instance_id: conn.instance_id.clone(),
                    generation,
                    resumed,
                });
                shared.emit(match (generation, resumed) {
                    (1, _) => ClientEvent::Connected { addr: conn.addr },
                    (_, true) => ClientEvent::Resumed { addr: conn.addr, generation },
                    (_, false) => ClientEvent::StateLost { addr: conn.addr, generation },
                });
            }
            r = &mut reader => break r.unwrap_or_else(|e| End::lost(format!("reader failed: {e}"))),
            w = &mut writer => break End::lost(match w {
                Ok(Ok(())) => "writer stopped".to_string(),
                Ok(Err(e)) => format!("write failed: {e}"),
                Err(e) => format!("writer failed: {e}"),
            }),
            _ = close.wait_for(|c| *c) => break End::Closed,
            now = ticker.tick() => {
                let now_ms = now.duration_since(base).as_millis() as u64;
                if shared.reader_blocked.load(Ordering::Relaxed) {
                    // The reader waits for the application, not the hub:
                    // the hub is not silent, we are not listening.
                    last_rx.store(now_ms, Ordering::Relaxed);
                }
                let silent = now_ms.saturating_sub(last_rx.load(Ordering::Relaxed));
                if Duration::from_millis(silent) > interval * KEEPALIVE_MISSES {
                    break End::lost(format!(
                        "the hub sent nothing for {} ms; assuming it is gone",
                        silent
                    ));
                }
                let _ = tx.try_send(Frame::from(proto::Ping { nonce: silent }).into());
            }
        }
    };
    reader.abort();
    {
        let mut reg = shared.reg.lock();
        reg.conn = None;
        reg.losses += 1;
        // Session links end with their connection (the session engine
        // retries on a new one).
        reg.sessions.clear();
        reg.session_any = None;
        match &end {
            End::Lost { shutting_down, .. } if reliable && shared.cfg.reconnect => {
                if *shutting_down {
                    // The hub said it is going away: nothing to wait for
                    // (kept frames are still resent if a standby resumes
                    // the session).
                    reg.pending.clear();
                } else {
                    // Only sequenced commands can be answered through a
                    // resumed session; the others fail now.
                    reg.pending.retain(|_, p| p.sequenced);
                    reg.holding = true;
                    spawn_resume_timer(shared, reg.losses);
                }
            }
            // Dropping the senders fails every command in flight.
            _ => reg.pending.clear(),
        }
    }
    shared.wake.notify_waiters();
    if matches!(end, End::Closed) {
        let _ = tx.try_send(Frame::goodbye(ErrorCode::Unspecified, "client closing").into());
        drop(tx);
        let _ = tokio::time::timeout(Duration::from_secs(1), &mut writer).await;
    }
    writer.abort();
    end
}

/// Ends the resume window of loss number `loss` after `resume_wait`:
/// commands still waiting fail, new calls fail at once.
fn spawn_resume_timer(shared: &Arc<Shared>, loss: u64) {
    let weak = Arc::downgrade(shared);
    let wait = shared.cfg.resume_wait;
    tokio::spawn(async move {
        tokio::time::sleep(wait).await;
        let Some(shared) = weak.upgrade() else { return };
        let expired = {
            let mut reg = shared.reg.lock();
            if reg.holding && reg.losses == loss {
                reg.holding = false;
                reg.pending.clear();
                true
            } else {
                false
            }
        };
        if expired {
            shared.wake.notify_waiters();
        }
    });
}

/// Restores subscriptions, watches and the presence watch on a new
/// connection.
async fn resync(shared: &Arc<Shared>, again: bool) {
    if !again {
        return;
    }
    let (subs, watches, presence, listen) = {
        let reg = shared.reg.lock();
        let subs: Vec<(u64, String, String, bool)> = reg
            .subs
            .iter()
            .map(|(id, s)| (*id, s.pattern.clone(), s.group.clone(), s.service))
            .collect();
        let watches: Vec<(u64, String, bool)> = reg
            .watches
            .iter()
            .map(|(id, w)| (*id, w.key.clone(), w.prefix))
            .collect();
        let listen = reg.messages.is_some() || reg.requests.is_some();
        (subs, watches, !reg.presence.is_empty(), listen)
    };
    if listen {
        if let Err(e) = shared.sync_listen().await {
            tracing::warn!(client = %shared.cfg.id, error = %e, "could not restore listening");
        }
    }
    // A stream the application drops while its registration is being
    // restored sent its undo before the restore: the restore is undone
    // again once confirmed, so the hub keeps nothing the client dropped.
    let mut jobs = Vec::new();
    for (sub_id, pattern, queue_group, service) in subs {
        jobs.push(futures::future::Either::Left(async move {
            shared
                .command_ok(|id| subscribe_frame(id, sub_id, &pattern, &queue_group, service))
                .await?;
            if !shared.reg.lock().subs.contains_key(&sub_id) {
                let id = shared.next_id();
                shared.post_detached(proto::Unsubscribe { id, sub_id }.into());
            }
            Ok::<(), ClientError>(())
        }));
    }
    for (watch_id, key, prefix) in watches {
        jobs.push(futures::future::Either::Right(async move {
            shared
                .command_ok(move |id| {
                    proto::KvWatch {
                        id,
                        watch_id,
                        key,
                        prefix,
                    }
                    .into()
                })
                .await?;
            if !shared.reg.lock().watches.contains_key(&watch_id) {
                let id = shared.next_id();
                shared.post_detached(proto::KvUnwatch { id, watch_id }.into());
            }
            Ok::<(), ClientError>(())
        }));
    }
    for r in futures::future::join_all(jobs).await {
        if let Err(e) = r {
            tracing::warn!(client = %shared.cfg.id, error = %e, "could not restore a subscription or watch");
        }
    }
    if presence {
        match shared
            .command(shared.cfg.request_timeout, |id| {
                proto::PresenceWatch { id, stop: false }.into()
            })
            .await
        {
            Ok(Frame {
                kind: Some(Kind::ClientList(list)),
                ..
            }) => presence::resync(shared, list.clients.into_iter().map(Into::into).collect()),
            Ok(_) => {}
            Err(e) => {
                tracing::warn!(client = %shared.cfg.id, error = %e, "could not restore the presence watch")
            }
        }
    }
}

/// Writes `replay` (frames of a resumed session the hub has not received),
/// then queued frames, draining everything queued into one write. On a
/// reliable connection (`acks`) every frame carries the acknowledgement of
/// what the reader took (`Frame.acked`), and the highest one written is
/// published for the reader.
async fn write_loop(
    replay: Vec<Frame>,
    mut rx: mpsc::Receiver<Out>,
    mut w: Wr,
    max_frame: usize,
    acks: Option<(Arc<Shared>, Arc<AtomicU64>)>,
) -> std::io::Result<()> {
    let mut codec = FrameCodec::with_max_frame(max_frame);
    let mut buf = BytesMut::with_capacity(16 * 1024);
    // The acknowledgement a frame written now carries.
    let acked = || match &acks {
        Some((shared, _)) => shared.in_last.load(Ordering::Relaxed),
        None => 0,
    };
    let stamp = |frame: &mut Frame| -> u64 {
        let up_to = acked();
        frame.acked = up_to;
        up_to
    };
    let carried = |up_to: u64| {
        if let Some((_, carried)) = &acks {
            carried.fetch_max(up_to, Ordering::Relaxed);
        }
    };
    for mut frame in replay {
        let up_to = stamp(&mut frame);
        encode(&mut codec, &frame, &mut buf);
        carried(up_to);
        if buf.len() >= WRITE_BATCH {
            w.write_all(&buf).await?;
            buf.clear();
        }
    }
    if !buf.is_empty() {
        w.write_all(&buf).await?;
        buf.clear();
    }
    // A TLS stream may hold records back until flushed (free over TCP).
    w.flush().await?;
    // Frames are taken a slice at a time and encoded where they lie (a
    // `Frame` is large: each move of one is a copy).
    let mut frames: Vec<Out> = Vec::with_capacity(RECV_BATCH);
    let mut up_to = 0;
    while rx.recv_many(&mut frames, RECV_BATCH).await > 0 {
        loop {
            for out in &mut frames {
                match out {
                    Out::Frame(frame) => {
                        up_to = stamp(frame);
                        encode(&mut codec, frame, &mut buf);
                    }
                    Out::Publish { .. } => {
                        up_to = acked();
                        if let Some(hand) = out.hand(up_to) {
                            if let Err(e) = codec.encode_hand(&hand, &mut buf) {
                                // Sizes are checked before queueing; this
                                // is a last guard.
                                tracing::warn!(error = %e, "dropping a publish that cannot be encoded");
                            }
                        }
                    }
                }
                if buf.len() >= WRITE_BATCH {
                    write_out(&mut w, &mut buf).await?;
                    carried(up_to);
                }
            }
            frames.clear();
            // Whatever else is queued goes into the same write (`Some(0)`:
            // closed, and the outer call says so next).
            match rx.recv_many(&mut frames, RECV_BATCH).now_or_never() {
                Some(n) if n > 0 => {}
                _ => break,
            }
        }
        if !buf.is_empty() {
            write_out(&mut w, &mut buf).await?;
            // Published once written: a frame still in the buffer carries
            // nothing yet.
            carried(up_to);
        }
    }
    let _ = w.shutdown().await;
    Ok(())
}

/// Writes and flushes `buf`, leaving it empty (its capacity kept).
async fn write_out(w: &mut Wr, buf: &mut BytesMut) -> std::io::Result<()> {
    w.write_all(buf).await?;
    w.flush().await?;
    buf.clear();
    Ok(())
}

fn encode(codec: &mut FrameCodec, frame: &Frame, buf: &mut BytesMut) {
    if let Err(e) = codec.encode(frame, buf) {
        // Sizes are checked before queueing; this is a last guard.
        tracing::warn!(error = %e, "dropping a frame that cannot be encoded");
    }
}
