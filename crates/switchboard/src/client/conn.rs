//! The connection: handshake, reader, batching writer, and the supervisor
//! that reconnects.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use bytestring::ByteString;
use futures::{FutureExt, StreamExt};
use rand::Rng;
use switchboard_discovery as discovery;
use switchboard_wire::{
    proto, Delivery, ErrorCode, Frame, FrameCodec, Incoming, IncomingCodec, Kind, PROTOCOL_VERSION,
};
use tokio::io::AsyncWriteExt;
use tokio::sync::mpsc;
use tokio_util::codec::{Encoder, FramedRead, FramedWrite};

use super::queue::{Pushed, Queue};
use super::reliable::{Inbound, FEATURE_RELIABLE, FEATURE_RESUMED};
use super::streams::IncomingRequest;
use super::transport::{self, Opened, Rd, Wr};
use super::types::{ConnectionState, Headers, KvEvent, Message, MessageKind, PresenceEvent};
use super::{ConnTx, Shared, SubSink, Target};
use crate::{ClientError, ClientEvent};
use switchboard_wire::{ACK_DELAY, FEATURE_LISTEN};

/// Largest frame accepted from a hub before it has proven itself.
const HANDSHAKE_MAX_FRAME: usize = 64 * 1024;

/// Most clients remembered for presence resync after a reconnect; beyond
/// it, joins still reach the streams but are not remembered.
const MAX_KNOWN_CLIENTS: usize = 100_000;

/// Largest batch the writer collects before one write.
const WRITE_BATCH: usize = 256 * 1024;

/// How soon the reader tries again to queue an acknowledgement that found
/// the send queue full.
const ACK_RETRY: Duration = Duration::from_millis(10);

/// Discovery deadline of the first reconnect attempts.
const EARLY_DISCOVERY: Duration = Duration::from_millis(250);

/// Attempts after the first (immediate) one that wait the minimum backoff
/// before the waits start doubling.
const FLAT_ATTEMPTS: u32 = 3;

/// An authenticated connection, not yet driven.
pub(crate) struct Connected {
    reader: FramedRead<Rd, FrameCodec>,
    writer: Wr,
    welcome: proto::Welcome,
    addr: SocketAddr,
    instance_id: String,
}

/// Why a driven connection ended.
enum End {
    /// The connection dropped; `shutting_down` when the hub said so in its
    /// goodbye.
    Lost {
        reason: String,
        shutting_down: bool,
    },
    TakenOver,
    Closed,
}

impl End {
    fn lost(reason: impl Into<String>) -> End {
        End::Lost {
            reason: reason.into(),
            shutting_down: false,
        }
    }
}

/// Makes one connection: to `preferred` first if given, else (or when it
/// fails) to the configured address or a discovered hub.
pub(crate) async fn connect_once(
    shared: &Shared,
    preferred: Option<SocketAddr>,
    discovery_deadline: Duration,
) -> Result<Connected, ClientError> {
    let cfg = &shared.cfg;
    if let Target::Dialer(dialer) = &cfg.target {
        let what = format!("{dialer:?}");
        return within_connect_timeout(shared, &what, async {
            handshake(shared, dialer.dial().await?).await
        })
        .await;
    }
    let mut last_err = None;
    if let Some(addr) = preferred {
        match connect_addr(shared, addr).await {
            Ok(c) => return Ok(c),
            Err(e) => last_err = Some(e),
        }
    }
    let candidates = match &cfg.target {
        Target::Addr(addr) => tokio::net::lookup_host(addr.as_str())
            .await
            .map_err(|source| ClientError::Connect {
                addr: addr.clone(),
                source,
            })?
            .collect::<Vec<_>>(),
        Target::Dialer(_) => Vec::new(),
        Target::Service(service) => {
            match discover_current(shared, service, discovery_deadline).await {
                Ok(found) => found,
                // Say why the known hub was refused rather than that no
                // other one answered.
                Err(e) => return Err(last_err.filter(|l| l.is_fenced()).unwrap_or(e)),
            }
        }
    };
    for addr in candidates {
        if Some(addr) == preferred {
            continue;
        }
        match connect_addr(shared, addr).await {
            Ok(c) => return Ok(c),
            // A hub that refused our proof will keep refusing it.
            Err(e @ ClientError::AuthFailed(_)) => return Err(e),
            Err(e) => last_err = Some(e),
        }
    }
    Err(last_err.unwrap_or_else(|| match &cfg.target {
        Target::Service(service) => ClientError::NotFound {
            service: service.clone(),
            detail: "discovery returned no address".to_string(),
        },
        Target::Addr(addr) => ClientError::Connect {
            addr: addr.clone(),
            source: std::io::Error::new(
                std::io::ErrorKind::NotFound,
                "address resolved to nothing",
            ),
        },
        Target::Dialer(d) => ClientError::Connect {
            addr: format!("{d:?}"),
            source: std::io::Error::other("no connection"),
        },
    }))
}

/// Hubs of `service`, highest epoch first. When the first hub found has an
/// epoch below the highest seen (an old primary still running), looks for
/// all of them.
async fn discover_current(
    shared: &Shared,
    service: &str,
    timeout: Duration,
) -> Result<Vec<SocketAddr>, ClientError> {
    let seen = shared.max_epoch.load(Ordering::Relaxed);
    let mut found = crate::discover::find(service, &shared.secret, false, timeout).await?;
    if found.iter().all(|h| h.identity.epoch < seen) {
        if let Ok(all) = crate::discover::find(service, &shared.secret, true, timeout).await {
            found = all;
        }
    }
    found.sort_by_key(|h| std::cmp::Reverse(h.identity.epoch));
    Ok(found.into_iter().map(|h| h.addr).collect())
}

async fn within_connect_timeout(
    shared: &Shared,
    what: &str,
    connect: impl std::future::Future<Output = Result<Connected, ClientError>>,
) -> Result<Connected, ClientError> {
    let timeout = shared.cfg.connect_timeout;
    match tokio::time::timeout(timeout, connect).await {
        Ok(r) => r,
        Err(_) => Err(ClientError::Timeout(format!(
            "connecting to {what} took longer than {} ms",
            timeout.as_millis()
        ))),
    }
}

async fn connect_addr(shared: &Shared, addr: SocketAddr) -> Result<Connected, ClientError> {
    within_connect_timeout(shared, &addr.to_string(), async {
        handshake(shared, transport::tcp(addr).await?).await
    })
    .await
}

async fn handshake(shared: &Shared, (r, w, addr): Opened) -> Result<Connected, ClientError> {
    let codec = FrameCodec::new().max_inbound(HANDSHAKE_MAX_FRAME);
    let mut reader = FramedRead::with_capacity(r, codec.clone(), 64 * 1024);
    let mut writer = FramedWrite::new(w, codec);

    let client_nonce = discovery::nonce();
    let id = shared.cfg.id.clone();
    let seen = shared.max_epoch.load(Ordering::Relaxed);
    let (features, resume) = if shared.cfg.reliable {
        let resume = shared.reg.lock().resumable.then(|| proto::Resume {
            last_received: shared.in_last.load(Ordering::Relaxed),
            epoch: seen,
        });
        (
            vec![FEATURE_RELIABLE.to_string(), FEATURE_LISTEN.to_string()],
            resume,
        )
    } else {
        (vec![FEATURE_LISTEN.to_string()], None)
    };
    send(
        &mut writer,
        proto::Hello {
            protocol_version: PROTOCOL_VERSION,
            client_id: id.clone(),
            client_nonce: client_nonce.to_vec().into(),
            agent: shared.cfg.agent.clone(),
            features,
            resume,
            ..Default::default()
        }
        .into(),
    )
    .await?;

    let challenge = match recv(&mut reader, addr).await? {
        Kind::Challenge(c) => c,
        Kind::Error(e) => return Err(handshake_error(e)),
        other => return Err(bad_kind("challenge", other)),
    };
    let identity = challenge.identity.unwrap_or_default();
    if !discovery::verify_hub_proof(
        &shared.secret,
        &client_nonce,
        &challenge.hub_nonce,
        &identity,
        &challenge.proof,
    ) {
        return Err(ClientError::HubUnverified {
            addr: addr.to_string(),
        });
    }
    check_epoch(addr, identity.epoch, seen)?;
    let proof = discovery::client_proof(&shared.secret, &challenge.hub_nonce, &client_nonce, &id);
    send(
        &mut writer,
        proto::Auth {
            proof: proof.to_vec().into(),
        }
        .into(),
    )
    .await?;
    let welcome = match recv(&mut reader, addr).await? {
        Kind::Welcome(w) => w,
        Kind::Error(e) => return Err(handshake_error(e)),
        other => return Err(bad_kind("welcome", other)),
    };
    check_epoch(addr, welcome.epoch, seen)?;
    shared
        .max_epoch
        .fetch_max(identity.epoch.max(welcome.epoch), Ordering::Relaxed);
    let max_in = switchboard_wire::DEFAULT_MAX_FRAME;
    reader.decoder_mut().set_max_inbound(max_in);
    Ok(Connected {
        reader,
        writer: writer.into_inner(),
        welcome,
        addr,
        instance_id: identity.instance_id,
    })
}

async fn send(writer: &mut FramedWrite<Wr, FrameCodec>, frame: Frame) -> Result<(), ClientError> {
    futures::SinkExt::send(writer, frame).await?;
    Ok(())
}

async fn recv(
    reader: &mut FramedRead<Rd, FrameCodec>,
    addr: SocketAddr,
) -> Result<Kind, ClientError> {
    match reader.next().await {
        Some(Ok(Frame { kind: Some(kind), .. })) => Ok(kind),
        Some(Ok(_)) => Err(ClientError::Protocol(format!(
            "the hub at {addr} sent a frame of an unknown kind during the handshake"
        ))),
        Some(Err(e)) => Err(e.into()),
        None => Err(ClientError::Protocol(format!(
            "the peer at {addr} closed the connection during the handshake; is it a switchboard hub?"
        ))),
    }
}

/// Refuses a hub whose epoch is below one already seen: an old primary that
/// a standby has replaced.
fn check_epoch(addr: SocketAddr, epoch: u64, seen: u64) -> Result<(), ClientError> {
    if epoch < seen {
        return Err(ClientError::Fenced(format!(
            "the hub at {addr} has epoch {epoch}, below epoch {seen} already seen: \
             it is an old primary that was replaced; refusing it"
        )));
    }
    Ok(())
}

fn handshake_error(e: proto::Error) -> ClientError {
    ClientError::from_hub(e.code, e.message)
}

fn bad_kind(wanted: &str, got: Kind) -> ClientError {
    let f = Frame::from(got);
    ClientError::Protocol(format!(
        "expected {wanted} during the handshake, got {}",
        f.kind_name()
    ))
}

/// Drives connections until the client is closed, reconnecting with
/// backoff after each loss.
pub(crate) async fn supervise(shared: Arc<Shared>, first: Connected) {
    let mut conn = first;
    let mut generation = 1u64;
    let mut close = shared.close.subscribe();
    loop {
        let last_addr = conn.addr;
        let end = drive(&shared, conn, generation).await;
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
            let attempt_fut = connect_once(&shared, Some(last_addr), deadline);
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
    }
    // What this connection's frames acknowledged so far (`Frame.acked`),
    // written by the writer, read by the reader to skip separate Acks.
    let carried =
        reliable.then(|| Arc::new(AtomicU64::new(shared.in_last.load(Ordering::Relaxed))));
    let mut writer = tokio::spawn(write_loop(
        replay,
        rx,
        conn.writer,
        max_frame,
        carried.clone().map(|c| (shared.clone(), c)),
    ));
    let base = tokio::time::Instant::now();
    let last_rx = Arc::new(AtomicU64::new(0));
    let mut reader = tokio::spawn(read_loop(
        shared.clone(),
        conn.reader.map_decoder(FrameCodec::incoming),
        tx.clone(),
        base,
        last_rx.clone(),
        carried.unwrap_or_default(),
    ));
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
                if Duration::from_millis(silent) > interval * 3 {
                    break End::lost(format!(
                        "the hub sent nothing for {} ms; assuming it is gone",
                        silent
                    ));
                }
                let _ = tx.try_send(proto::Ping { nonce: silent }.into());
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
        let _ = tx.try_send(Frame::goodbye(ErrorCode::Unspecified, "client closing"));
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
                .command_ok(|id| {
                    super::streams::subscribe_frame(id, sub_id, &pattern, &queue_group, service)
                })
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
            }) => super::streams::presence_resync(
                shared,
                list.clients.into_iter().map(Into::into).collect(),
            ),
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
    mut rx: mpsc::Receiver<Frame>,
    mut w: Wr,
    max_frame: usize,
    acks: Option<(Arc<Shared>, Arc<AtomicU64>)>,
) -> std::io::Result<()> {
    let mut codec = FrameCodec::with_max_frame(max_frame);
    let mut buf = BytesMut::with_capacity(16 * 1024);
    let stamp = |frame: &mut Frame| -> u64 {
        match &acks {
            Some((shared, _)) => {
                let up_to = shared.in_last.load(Ordering::Relaxed);
                frame.acked = up_to;
                up_to
            }
            None => 0,
        }
    };
    let carried = |up_to: u64| {
        if let Some((_, carried)) = &acks {
            carried.fetch_max(up_to, Ordering::Relaxed);
        }
    };
    for mut frame in replay {
        let up_to = stamp(&mut frame);
        encode(&mut codec, frame, &mut buf);
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
    while let Some(mut frame) = rx.recv().await {
        let mut up_to = stamp(&mut frame);
        encode(&mut codec, frame, &mut buf);
        while buf.len() < WRITE_BATCH {
            match rx.try_recv() {
                Ok(mut frame) => {
                    up_to = stamp(&mut frame);
                    encode(&mut codec, frame, &mut buf);
                }
                Err(_) => break,
            }
        }
        w.write_all(&buf).await?;
        buf.clear();
        // Published once written: a frame still in the buffer carries
        // nothing yet.
        carried(up_to);
    }
    let _ = w.shutdown().await;
    Ok(())
}

fn encode(codec: &mut FrameCodec, frame: Frame, buf: &mut BytesMut) {
    if let Err(e) = codec.encode(frame, buf) {
        // Sizes are checked before queueing; this is a last guard.
        tracing::warn!(error = %e, "dropping a frame that cannot be encoded");
    }
}

/// Queues the acknowledgement `inbound` owes, if any; it stays owed when
/// the send queue is full.
fn send_ack(inbound: &mut Inbound, tx: &mpsc::Sender<Frame>) {
    if let Some(up_to) = inbound.owed_ack() {
        if tx.try_send(Frame::ack(up_to)).is_ok() {
            inbound.acked(up_to);
        }
    }
}

/// Reads frames from the hub and routes them. Sequenced frames already
/// taken are dropped. What was taken is acknowledged by the next frames
/// this client sends (`Frame.acked`, see [`write_loop`]); a separate `Ack`
/// goes out every [`ACK_EVERY`] frames, or [`ACK_DELAY`] after a batch
/// when nothing sent meanwhile carried the acknowledgement.
///
/// [`ACK_EVERY`]: switchboard_wire::ACK_EVERY
/// [`ACK_DELAY`]: switchboard_wire::ACK_DELAY
async fn read_loop(
    shared: Arc<Shared>,
    mut reader: FramedRead<Rd, IncomingCodec>,
    tx: mpsc::Sender<Frame>,
    base: tokio::time::Instant,
    last_rx: Arc<AtomicU64>,
    carried: Arc<AtomicU64>,
) -> End {
    let mut goodbye: Option<proto::Goodbye> = None;
    let mut inbound = Inbound::starting_at(shared.in_last.load(Ordering::Relaxed));
    // Highest acknowledgement of ours the hub sent (its frames' `acked`).
    let mut peer_acked = 0u64;
    // Armed while an acknowledgement is owed and not carried.
    let ack_timer = tokio::time::sleep(ACK_DELAY);
    tokio::pin!(ack_timer);
    let mut armed = false;
    let mut slow = Slow::new();
    loop {
        let next = match reader.next().now_or_never() {
            Some(next) => next,
            None => {
                // Nothing more buffered: the batch is done.
                if !slow.is_empty() {
                    announce_drops(&shared, &mut slow);
                }
                inbound.acked(carried.load(Ordering::Relaxed));
                if inbound.ack_due() {
                    send_ack(&mut inbound, &tx);
                }
                if inbound.owed_ack().is_some() {
                    if !armed {
                        armed = true;
                        ack_timer
                            .as_mut()
                            .reset(tokio::time::Instant::now() + ACK_DELAY);
                    }
                    tokio::select! {
                        next = reader.next() => next,
                        _ = &mut ack_timer => {
                            armed = false;
                            inbound.acked(carried.load(Ordering::Relaxed));
                            send_ack(&mut inbound, &tx);
                            if inbound.owed_ack().is_some() {
                                // The send queue is full: try again soon.
                                armed = true;
                                ack_timer
                                    .as_mut()
                                    .reset(tokio::time::Instant::now() + ACK_RETRY);
                            }
                            continue;
                        }
                    }
                } else {
                    armed = false;
                    reader.next().await
                }
            }
        };
        let frame = match next {
            Some(Ok(f)) => {
                last_rx.store(base.elapsed().as_millis() as u64, Ordering::Relaxed);
                f
            }
            Some(Err(e)) => return End::lost(format!("bad frame from the hub: {e}")),
            None => {
                return match goodbye {
                    Some(g) if g.code == ErrorCode::IdTakenOver as i32 => End::TakenOver,
                    Some(g) => End::Lost {
                        reason: format!("hub said goodbye: {}", g.message),
                        shutting_down: g.code == ErrorCode::ShuttingDown as i32,
                    },
                    None => End::lost("the hub closed the connection"),
                }
            }
        };
        let (seq, acked) = match &frame {
            Incoming::Delivery(d) => (d.seq, d.acked),
            Incoming::Frame(f) => (f.seq, f.acked),
        };
        if acked > peer_acked {
            peer_acked = acked;
            shared.acknowledged(acked);
        }
        if inbound.is_duplicate(seq) {
            // Sent again after a resume; already handled.
            continue;
        }
        let route = match frame {
            Incoming::Delivery(d) => route_delivery(&shared, d),
            Incoming::Frame(f) => match f.kind {
                Some(Kind::Goodbye(g)) => {
                    if g.code == ErrorCode::IdTakenOver as i32 {
                        return End::TakenOver;
                    }
                    if g.code == ErrorCode::Fenced as i32 {
                        shared.emit(ClientEvent::Fenced {
                            message: g.message.clone(),
                        });
                    }
                    goodbye = Some(g);
                    Route::Nowhere
                }
                Some(Kind::Error(e)) if e.id == 0 => {
                    tracing::warn!(client = %shared.cfg.id, code = e.code, message = %e.message, "hub reported a connection error");
                    shared.emit(ClientEvent::HubError {
                        code: crate::ErrorCode::from_wire(e.code),
                        message: e.message,
                    });
                    Route::Nowhere
                }
                Some(Kind::Ack(a)) => {
                    shared.acknowledged(a.up_to);
                    Route::Nowhere
                }
                Some(kind) => dispatch(&shared, kind, &tx),
                None => {
                    tracing::debug!(client = %shared.cfg.id, "ignoring a frame of an unknown kind");
                    Route::Nowhere
                }
            },
        };
        // The application's stream takes it (waiting while the stream is
        // full) before the frame counts as received: only then may it be
        // acknowledged.
        route.deliver(&shared, &mut slow).await;
        inbound.accept(seq);
        if seq != 0 {
            shared
                .in_last
                .store(inbound.last_received(), Ordering::Relaxed);
            if inbound.ack_due() {
                send_ack(&mut inbound, &tx);
            }
        }
    }
}

/// Subscriptions whose drop policy dropped messages not yet announced.
type Slow = std::collections::HashMap<u64, (String, Arc<Queue<Message>>)>;

/// Announces the drops of `slow` subscriptions as events.
fn announce_drops(shared: &Shared, slow: &mut Slow) {
    for (sub_id, (pattern, queue)) in slow.drain() {
        let dropped = queue.take_unannounced();
        if dropped > 0 {
            shared.emit(ClientEvent::SlowConsumer {
                sub_id,
                pattern,
                dropped,
                total: queue.dropped(),
            });
        }
    }
}

/// Where one frame from the hub goes.
enum Route {
    /// Handled already (answers, acks, pings) or nowhere to go.
    Nowhere,
    /// A publish for subscription `sub_id`; `last` when it ends the
    /// subscription ([`Subscription::unsubscribe_after`]).
    ///
    /// [`Subscription::unsubscribe_after`]: crate::Subscription::unsubscribe_after
    Publish {
        queue: Arc<Queue<Message>>,
        msg: Message,
        sub_id: u64,
        counted: bool,
    },
    /// A direct or broadcast message, to the messages stream if any.
    Message(Option<Arc<Queue<Message>>>, Message),
    /// A request for a requests or service stream.
    Request(Arc<Queue<IncomingRequest>>, IncomingRequest),
    /// A key change for a watch.
    Kv(Arc<Queue<KvEvent>>, KvEvent),
    /// A presence event for every presence stream.
    Presence(Vec<Arc<Queue<PresenceEvent>>>, PresenceEvent),
}

/// Pushes into `queue`, marking the reader as blocked while it waits.
async fn push<T>(shared: &Shared, queue: &Queue<T>, item: T) -> Pushed {
    push_with(shared, queue, item, |_| {}).await
}

/// [`push`], calling `on_put` on the item when it is really queued. The
/// common case (room, or a drop policy) takes one lock and no wait.
async fn push_with<T>(shared: &Shared, queue: &Queue<T>, item: T, on_put: fn(&mut T)) -> Pushed {
    let item = match queue.offer_with(item, on_put) {
        Ok(pushed) => return pushed,
        Err(item) => item,
    };
    /// Clears the flag however the wait ends (the reader is aborted while
    /// it waits when the connection drops).
    struct Blocked<'a>(&'a std::sync::atomic::AtomicBool);
    impl Drop for Blocked<'_> {
        fn drop(&mut self) {
            self.0.store(false, Ordering::Relaxed);
        }
    }
    shared.reader_blocked.store(true, Ordering::Relaxed);
    let _blocked = Blocked(&shared.reader_blocked);
    queue.push_with(item, on_put).await
}

impl Route {
    async fn deliver(self, shared: &Arc<Shared>, slow: &mut Slow) {
        match self {
            Route::Nowhere => {}
            Route::Publish {
                queue,
                msg,
                sub_id,
                counted,
            } => {
                let pushed = push(shared, &queue, msg).await;
                if counted {
                    count_down(shared, sub_id, &queue);
                }
                if pushed == Pushed::Dropped {
                    shared.dropped.fetch_add(1, Ordering::Relaxed);
                    slow.entry(sub_id).or_insert_with(|| {
                        let pattern = shared
                            .reg
                            .lock()
                            .subs
                            .get(&sub_id)
                            .map(|s| s.pattern.clone())
                            .unwrap_or_default();
                        (pattern, queue.clone())
                    });
                }
            }
            Route::Message(Some(queue), msg) => {
                if push(shared, &queue, msg).await == Pushed::Closed {
                    undelivered(shared, "messages");
                }
            }
            Route::Message(None, _) => undelivered(shared, "messages"),
            Route::Request(queue, req) => {
                // Armed (an unanswered drop replies with an error) only
                // once the stream took it: a reader aborted while it waits
                // drops it silently, and the hub sends it again on resume.
                let (id, from) = (req.id(), req.from().to_string());
                if push_with(shared, &queue, req, IncomingRequest::arm).await == Pushed::Closed {
                    shared.post_detached(error_reply(
                        id,
                        from,
                        format!("client {:?} does not serve these requests", shared.cfg.id),
                    ));
                }
            }
            Route::Kv(queue, event) => {
                push(shared, &queue, event).await;
            }
            Route::Presence(queues, event) => {
                for queue in queues {
                    push(shared, &queue, event.clone()).await;
                }
            }
        }
    }
}

/// A message with no stream to take it (the application dropped its
/// stream while the hub still sent to it): counted and announced.
fn undelivered(shared: &Shared, stream: &'static str) {
    shared.dropped.fetch_add(1, Ordering::Relaxed);
    shared.emit(ClientEvent::Undelivered { stream, dropped: 1 });
}

/// Finds the subscription of a delivery.
fn route_publish(shared: &Arc<Shared>, sub_id: u64, msg: Message) -> Route {
    let reg = shared.reg.lock();
    let Some(sub) = reg.subs.get(&sub_id) else {
        // Unsubscribed meanwhile.
        return Route::Nowhere;
    };
    let SubSink::Messages(queue) = &sub.sink else {
        return Route::Nowhere;
    };
    Route::Publish {
        queue: queue.clone(),
        msg,
        sub_id,
        counted: sub.remaining.is_some(),
    }
}

/// After a delivery reached its stream: counts down
/// [`unsubscribe_after`](crate::Subscription::unsubscribe_after), and at
/// zero ends the subscription (the stream ends after what it holds). Done
/// only once the push finished, so a delivery sent again after a lost
/// connection is counted once.
fn count_down(shared: &Arc<Shared>, sub_id: u64, queue: &Queue<Message>) {
    let mut reg = shared.reg.lock();
    let Some(left) = reg.subs.get_mut(&sub_id).and_then(|s| s.remaining.as_mut()) else {
        return;
    };
    *left = left.saturating_sub(1);
    if *left > 0 {
        return;
    }
    reg.subs.remove(&sub_id);
    drop(reg);
    queue.close_tx();
    let id = shared.next_id();
    shared.post_detached(proto::Unsubscribe { id, sub_id }.into());
}

fn route_delivery(shared: &Arc<Shared>, d: Delivery) -> Route {
    let msg = Message {
        kind: MessageKind::Publish,
        from: d.from,
        topic: d.topic,
        reply_to: d.reply_to,
        payload: d.payload,
        headers: Headers::default(),
    };
    route_publish(shared, d.sub_id, msg)
}

fn dispatch(shared: &Arc<Shared>, kind: Kind, tx: &mpsc::Sender<Frame>) -> Route {
    let mut reg = shared.reg.lock();
    match kind {
        Kind::Ok(m) => answer(&mut reg, m.id, Kind::Ok(m)),
        Kind::Error(m) => answer(&mut reg, m.id, Kind::Error(m)),
        Kind::Reply(m) => answer(&mut reg, m.id, Kind::Reply(m)),
        Kind::KvValue(m) => answer(&mut reg, m.id, Kind::KvValue(m)),
        Kind::ClientList(m) => answer(&mut reg, m.id, Kind::ClientList(m)),
        Kind::Status(m) => answer(&mut reg, m.id, Kind::Status(m)),
        Kind::Deliver(d) => {
            drop(reg);
            let msg = Message {
                kind: MessageKind::Publish,
                from: d.from.into(),
                topic: d.topic.into(),
                reply_to: d.reply_to.into(),
                payload: d.payload,
                headers: Headers::from_wire(d.headers),
            };
            return route_publish(shared, d.sub_id, msg);
        }
        Kind::Direct(d) => {
            let msg = Message {
                kind: MessageKind::Direct,
                from: d.from.into(),
                topic: ByteString::new(),
                reply_to: ByteString::new(),
                payload: d.payload,
                headers: Headers::from_wire(d.headers),
            };
            return Route::Message(reg.messages.clone(), msg);
        }
        Kind::Broadcast(b) => {
            let msg = Message {
                kind: MessageKind::Broadcast,
                from: b.from.into(),
                topic: ByteString::new(),
                reply_to: ByteString::new(),
                payload: b.payload,
                headers: Headers::from_wire(b.headers),
            };
            return Route::Message(reg.messages.clone(), msg);
        }
        Kind::Request(r) => {
            let target = if r.sub_id != 0 {
                match reg.subs.get(&r.sub_id).map(|s| &s.sink) {
                    Some(SubSink::Requests(q)) => Some(q.clone()),
                    _ => None,
                }
            } else {
                reg.requests.clone()
            };
            drop(reg);
            let Some(queue) = target else {
                let (id, from) = (r.id, r.from);
                shared.post_detached(error_reply(
                    id,
                    from,
                    format!("client {:?} does not serve these requests", shared.cfg.id),
                ));
                return Route::Nowhere;
            };
            return Route::Request(queue, IncomingRequest::new(shared, r, false));
        }
        Kind::KvUpdate(u) => {
            if let Some(w) = reg.watches.get(&u.watch_id) {
                return Route::Kv(w.queue.clone(), u.into());
            }
        }
        Kind::Presence(p) => {
            let client: super::types::ClientInfo = p.client.unwrap_or_default().into();
            let event = if p.kind == proto::PresenceKind::Left as i32 {
                reg.known_clients.remove(&client.client_id);
                PresenceEvent::Left {
                    client,
                    reason: p.reason,
                }
            } else {
                if reg.known_clients.len() < MAX_KNOWN_CLIENTS {
                    reg.known_clients
                        .insert(client.client_id.clone(), client.clone());
                }
                PresenceEvent::Joined(client)
            };
            return Route::Presence(reg.presence.values().cloned().collect(), event);
        }
        Kind::Flow(f) => {
            drop(reg);
            shared.dropped.fetch_add(f.dropped, Ordering::Relaxed);
            if f.dropped > 0 {
                shared.emit(ClientEvent::HubDropped {
                    dropped: f.dropped,
                    queue_depth: f.queue_depth,
                });
            }
        }
        Kind::Session(s) => {
            let target = reg
                .sessions
                .get(&s.peer)
                .or(reg.session_any.as_ref())
                .map(|(_, tx)| tx.clone());
            drop(reg);
            if let Some(target) = target {
                // Session links are at-most-once (the session engine
                // retries); a full link drops and is counted.
                if target.try_send(s).is_err() {
                    shared.dropped.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
        Kind::Ping(p) => {
            drop(reg);
            let _ = tx.try_send(proto::Pong { nonce: p.nonce }.into());
        }
        Kind::Pong(_) => {}
        other => {
            drop(reg);
            let f = Frame::from(other);
            tracing::debug!(client = %shared.cfg.id, kind = f.kind_name(), "ignoring an unexpected frame");
        }
    }
    Route::Nowhere
}

fn answer(reg: &mut super::Registry, id: u64, kind: Kind) {
    if let Some(waiter) = reg.pending.remove(&id) {
        let _ = waiter.tx.send(Frame::from(kind));
    }
}

pub(crate) fn error_reply(id: u64, to: String, message: String) -> Frame {
    proto::Reply {
        id,
        to,
        payload: message.into_bytes().into(),
        is_error: true,
        ..Default::default()
    }
    .into()
}
