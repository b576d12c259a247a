//! The standby: finds the primary, opens the replication link, mirrors
//! the primary's state in a [`Replica`], and takes over (binding the
//! primary's port with a higher epoch) when the primary dies.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use futures::{FutureExt, StreamExt};
use parking_lot::Mutex;
use switchboard_discovery::handshake::{
    ClientHandshake, HandshakeError, HandshakeParams, Step, HANDSHAKE_MAX_FRAME,
};
use switchboard_discovery::{
    bind, discover, new_instance_id, nonce, now_ms, probe, runtime_dir, BindOptions,
    DiscoverOptions, PortChoice,
};
use switchboard_wire::proto::{self, frame::Kind};
use switchboard_wire::{decode_frame, put_frame, split_frame, Frame, FrameCodec, WireError};
use tokio::io::AsyncWriteExt;
use tokio::sync::{mpsc, oneshot, watch};
use tokio_util::codec::{Decoder, FramedRead};
use tokio_util::sync::CancellationToken;

use super::link::heartbeat;
use crate::config::{HubConfig, HubError};
use crate::handle::HubHandle;
use crate::router::changes::{is_change, Change, ChangeDecoder, LinkFrame};
use crate::router::replica::Replica;
use crate::router::RouterConfig;
use crate::stats::HubStats;

/// Largest frame a standby accepts from its (authenticated) primary: a
/// snapshot holds the whole state.
const LINK_MAX_FRAME: usize = 1 << 30;

/// Tells the primary the standby holds every change up to `seq`.
async fn ack(conn: &mut LinkConn, seq: u64) -> Result<(), String> {
    let mut out = BytesMut::new();
    put_frame(&Frame::from(proto::ReplAck { repl_seq: seq }), &mut out);
    conn.writer
        .write_all(&out)
        .await
        .map_err(|e| format!("write: {e}"))?;
    conn.writer.flush().await.map_err(|e| format!("write: {e}"))
}

/// Takes a whole commit group (its change frames as received, `commit`
/// its commit point): decodes each, checks that it follows on from
/// `committed` (one held already is skipped) and does not pass the commit
/// point, and appends it to `held`; `committed` becomes the last change
/// held. An error means the link is unusable (the standby starts again).
fn hold_group(
    decoder: &mut ChangeDecoder,
    pending: &mut Vec<Bytes>,
    commit: u64,
    committed: &mut u64,
    held: &mut Vec<Change>,
) -> Result<(), String> {
    for body in pending.drain(..) {
        let c = match decoder.decode(body) {
            Ok(LinkFrame::Change(c)) => c,
            Ok(LinkFrame::Other(_)) => return Err("a change frame without a change".into()),
            Err(e) => {
                return Err(format!(
                    "the primary sent a change that does not decode: {e}"
                ))
            }
        };
        if c.repl_seq > commit {
            return Err("a change beyond its commit point".into());
        }
        if c.repl_seq <= *committed {
            continue;
        }
        if c.repl_seq != *committed + 1 {
            return Err(format!(
                "a gap in the changes: expected {}, got {}",
                *committed + 1,
                c.repl_seq
            ));
        }
        *committed = c.repl_seq;
        held.push(c);
    }
    Ok(())
}

/// Applies the changes held, in order, into `replica` (an error stops the
/// replica: the standby starts again from a snapshot).
fn apply(replica: &mut Replica, held: &mut Vec<Change>) -> Result<(), String> {
    let now = Instant::now();
    for c in held.drain(..) {
        replica.apply_change(now, c).map_err(|e| e.to_string())?;
    }
    Ok(())
}

/// Changes a standby buffers (as the frames received) before their commit
/// point arrives.
const MAX_PENDING_CHANGES: usize = crate::limits::MAX_CHANGES_PER_COMMIT;

/// Most commit groups a standby holds before it acknowledges them, while
/// more of the primary's frames are already at hand (it acknowledges at
/// once whenever it would wait for the link).
const MAX_UNACKED_GROUPS: usize = 64;

/// Most decoded changes a standby holds, acknowledged or about to be,
/// before it applies them (it stops reading ahead at this count).
const MAX_HELD_CHANGES: usize = 8192;

/// How long a standby tries to bind the failed primary's port.
const BIND_RETRY: Duration = Duration::from_millis(250);

/// How long a standby waits for a verified answer from a primary whose
/// link broke before it takes over.
const PEER_PROBE_TIMEOUT: Duration = Duration::from_millis(100);

/// What a standby is doing.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum StandbyState {
    /// Looking for the primary.
    Searching,
    /// Mirroring the primary at `primary` (epoch `epoch`), holding every
    /// change up to `repl_seq`.
    Following {
        /// The primary's listening address.
        primary: SocketAddr,
        /// The primary's epoch.
        epoch: u64,
        /// Last change held.
        repl_seq: u64,
    },
    /// Took over: serving as the primary on `addr` with `epoch`.
    Primary {
        /// Listening address.
        addr: SocketAddr,
        /// The new epoch.
        epoch: u64,
    },
    /// Stopped (shut down, or the takeover failed: the reason).
    Stopped(String),
}

/// A running standby (see [`Hub::standby`](crate::Hub::standby)).
#[derive(Debug)]
pub struct StandbyHandle {
    state: watch::Receiver<StandbyState>,
    snapshots: mpsc::Sender<oneshot::Sender<proto::Snapshot>>,
    promoted: Mutex<Option<oneshot::Receiver<Result<HubHandle, HubError>>>>,
    shutdown: CancellationToken,
    stats: Arc<HubStats>,
    instance_id: String,
}

impl StandbyHandle {
    /// What the standby is doing now.
    pub fn state(&self) -> StandbyState {
        self.state.borrow().clone()
    }

    /// Watches the standby's state. Watchers are woken when the state
    /// changes kind, primary or epoch; while following, the `repl_seq` it
    /// shows advances without waking them (once per group of changes would
    /// cost the standby a wake-up each): read it with [`state`](Self::state)
    /// or a `borrow`.
    pub fn watch(&self) -> watch::Receiver<StandbyState> {
        self.state.clone()
    }

    /// The standby's instance id (it keeps it when it takes over).
    pub fn instance_id(&self) -> &str {
        &self.instance_id
    }

    /// Replication counters: the primary followed, the last change held.
    pub fn status(&self) -> proto::Status {
        let mut status = proto::Status {
            standby_addr: self.stats.repl.peer.lock().clone(),
            ..Default::default()
        };
        status.counters.insert(
            "repl_seq".into(),
            self.stats.repl.seq.load(Ordering::Relaxed),
        );
        status.identity = Some(proto::HubIdentity {
            instance_id: self.instance_id.clone(),
            role: proto::Role::Standby as i32,
            pid: std::process::id(),
            ..Default::default()
        });
        status
    }

    /// The replicated state the standby holds (as of its last commit
    /// point), to compare with the primary's
    /// [`HubHandle::snapshot`]; `None` while it follows no primary.
    pub async fn snapshot(&self) -> Option<proto::Snapshot> {
        let (tx, rx) = oneshot::channel();
        self.snapshots.send(tx).await.ok()?;
        rx.await.ok()
    }

    /// Waits until the standby has taken over and returns the serving
    /// hub; `None` if already taken, or if the standby stopped first.
    pub async fn promoted(&self) -> Option<Result<HubHandle, HubError>> {
        let rx = self.promoted.lock().take()?;
        rx.await.ok()
    }

    /// Stops the standby (before a takeover; a promoted hub is stopped
    /// through its [`HubHandle`]).
    pub fn shutdown(&self) {
        self.shutdown.cancel();
    }
}

impl Drop for StandbyHandle {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

pub(crate) fn start(config: HubConfig, primary: Option<SocketAddr>) -> StandbyHandle {
    let (state_tx, state_rx) = watch::channel(StandbyState::Searching);
    let (promoted_tx, promoted_rx) = oneshot::channel();
    let shutdown = CancellationToken::new();
    let stats = Arc::new(HubStats::default());
    let instance_id = new_instance_id();
    let (snap_tx, snap_rx) = mpsc::channel(4);
    let s = Standby {
        snapshots: tokio::sync::Mutex::new(snap_rx),
        config,
        primary,
        instance_id: instance_id.clone(),
        stats: stats.clone(),
        state: state_tx,
        shutdown: shutdown.clone(),
    };
    let span = tracing::info_span!("standby", service = %s.config.service, instance = %instance_id);
    tokio::spawn(tracing::Instrument::instrument(
        async move {
            let outcome = s.run().await;
            if let Some(r) = outcome {
                let _ = promoted_tx.send(r);
            }
        },
        span,
    ));
    StandbyHandle {
        state: state_rx,
        snapshots: snap_tx,
        promoted: Mutex::new(Some(promoted_rx)),
        shutdown,
        stats,
        instance_id,
    }
}

struct Standby {
    snapshots: tokio::sync::Mutex<mpsc::Receiver<oneshot::Sender<proto::Snapshot>>>,
    config: HubConfig,
    primary: Option<SocketAddr>,
    instance_id: String,
    stats: Arc<HubStats>,
    state: watch::Sender<StandbyState>,
    shutdown: CancellationToken,
}

/// How following a primary ended.
enum Followed {
    Shutdown,
    /// Try again (the reason is logged).
    Retry(String),
    /// The link broke: the primary may be dead.
    Lost {
        replica: Box<Replica>,
        primary: SocketAddr,
        instance_id: String,
    },
}

struct LinkConn {
    reader: FramedRead<crate::tls::LinkRd, LinkCodec>,
    writer: crate::tls::LinkWr,
}

/// Splits the link's byte stream into frame bodies (up to
/// [`LINK_MAX_FRAME`]); the standby decodes them with
/// [`decode_link_frame`], changes by hand.
struct LinkCodec;

impl Decoder for LinkCodec {
    type Item = Bytes;
    type Error = WireError;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Bytes>, WireError> {
        split_frame(src, LINK_MAX_FRAME)
    }
}

/// The next frame of the link's opening (decoded by prost), `None` when
/// the link closed.
async fn next_frame(
    reader: &mut FramedRead<crate::tls::LinkRd, LinkCodec>,
) -> Option<Result<Frame, String>> {
    Some(match reader.next().await? {
        Ok(body) => decode_frame(body, LINK_MAX_FRAME).map_err(|e| e.to_string()),
        Err(e) => Err(e.to_string()),
    })
}

impl Standby {
    async fn run(self) -> Option<Result<HubHandle, HubError>> {
        let mut last: Option<(Replica, SocketAddr, String)> = None;
        loop {
            if self.shutdown.is_cancelled() {
                self.state
                    .send_replace(StandbyState::Stopped("shut down".into()));
                return None;
            }
            if let Some((replica, addr, instance)) = last.take() {
                // Is the primary really gone, or did only the link break?
                let alive = probe(
                    addr,
                    &self.config.service,
                    &self.config.secret,
                    PEER_PROBE_TIMEOUT,
                )
                .await
                .is_ok_and(|h| h.identity.instance_id == instance);
                if !alive {
                    return Some(self.take_over(replica, addr, &instance).await);
                }
                tracing::info!(%addr, "the primary still answers; reconnecting to it");
            }
            self.state.send_replace(StandbyState::Searching);
            let Some(target) = self.find_primary().await else {
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_millis(200)) => {}
                    _ = self.shutdown.cancelled() => {}
                }
                continue;
            };
            let conn = match self.connect(target).await {
                Ok(c) => c,
                Err(e) => {
                    tracing::warn!(addr = %target, error = %e, "cannot open the replication link");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    continue;
                }
            };
            match self.follow(conn, target).await {
                Followed::Shutdown => {
                    self.state
                        .send_replace(StandbyState::Stopped("shut down".into()));
                    return None;
                }
                Followed::Retry(why) => {
                    tracing::warn!(reason = %why, "replication stopped; starting again");
                    tokio::select! {
                        _ = tokio::time::sleep(Duration::from_millis(500)) => {}
                        _ = self.shutdown.cancelled() => {}
                    }
                }
                Followed::Lost {
                    replica,
                    primary,
                    instance_id,
                } => {
                    tracing::warn!(%primary, "replication link to the primary lost");
                    last = Some((*replica, primary, instance_id));
                }
            }
        }
    }

    async fn find_primary(&self) -> Option<SocketAddr> {
        if let Some(addr) = self.primary {
            return Some(addr);
        }
        let opts = DiscoverOptions {
            hint_dirs: self.config.hint_dir.clone().into_iter().collect(),
            all: true,
            use_scan: false,
            deadline: Duration::from_secs(1),
            secret: Some(self.config.secret.clone()),
            ..DiscoverOptions::default()
        };
        let found = discover(&self.config.service, &opts).await.ok()?;
        found
            .into_iter()
            .filter(|h| {
                h.identity.role == proto::Role::Primary as i32
                    && h.identity.instance_id != self.instance_id
            })
            .max_by_key(|h| h.identity.epoch)
            .map(|h| h.addr)
    }

    /// Connects and authenticates as a standby: the client handshake
    /// without a `Welcome` (the replication link follows the `Auth`).
    async fn connect(&self, addr: SocketAddr) -> Result<LinkConn, String> {
        let timeout = self.config.handshake_timeout;
        let work = async {
            let (rd, mut wr) = crate::tls::dial_link(addr, self.config.tls_client.as_ref()).await?;
            // The primary's frames are bounded as any hub's until it proved
            // itself; a snapshot may be large.
            let codec = FrameCodec::new().max_inbound(HANDSHAKE_MAX_FRAME);
            let mut reader = FramedRead::new(rd, codec);
            let params = HandshakeParams {
                client_id: self.instance_id.clone(),
                agent: format!("switchboard-hub {} standby", env!("CARGO_PKG_VERSION")),
                standby: true,
                service: Some(self.config.service.clone()),
                ..HandshakeParams::default()
            };
            let (mut handshake, hello) = ClientHandshake::new(params, &self.config.secret, nonce());
            write_frame(&mut wr, &hello).await?;
            loop {
                let frame = match reader.next().await {
                    Some(Ok(frame)) => frame,
                    other => return Err(format!("unexpected answer to Hello: {other:?}")),
                };
                match handshake.on_frame(frame).map_err(refusal)? {
                    Step::Send(frame) => write_frame(&mut wr, &frame).await?,
                    Step::SendLast(auth, _) => {
                        write_frame(&mut wr, &auth).await?;
                        break;
                    }
                    Step::Done(_) => break,
                }
            }
            Ok(LinkConn {
                reader: reader.map_decoder(|_| LinkCodec),
                writer: wr,
            })
        };
        tokio::time::timeout(timeout, work)
            .await
            .map_err(|_| format!("no handshake within {} ms", timeout.as_millis()))?
    }

    fn router_config(&self, epoch: u64) -> RouterConfig {
        RouterConfig {
            identity: proto::HubIdentity {
                service: self.config.service.clone(),
                instance_id: self.instance_id.clone(),
                pid: std::process::id(),
                port: 0,
                epoch,
                started_at_ms: now_ms(),
                role: proto::Role::Standby as i32,
            },
            limits: self.config.limits.clone(),
            keepalive: self.config.keepalive,
        }
    }

    async fn follow(&self, mut conn: LinkConn, target: SocketAddr) -> Followed {
        let silence = self.config.heartbeat_interval * self.config.heartbeat_misses;
        // The opening: ReplHello, then a snapshot.
        let first = tokio::time::timeout(self.config.handshake_timeout, async {
            let mut next = next_frame(&mut conn.reader).await;
            // Liveness heartbeats may come first.
            while let Some(Ok(Frame {
                kind: Some(Kind::Heartbeat(_)),
                ..
            })) = &next
            {
                next = next_frame(&mut conn.reader).await;
            }
            let hello = match next {
                Some(Ok(Frame {
                    kind: Some(Kind::ReplHello(h)),
                    ..
                })) => h,
                Some(Ok(Frame {
                    kind: Some(Kind::Error(e)),
                    ..
                })) => return Err(format!("the primary refused: {}", e.message)),
                other => return Err(format!("expected ReplHello, got {other:?}")),
            };
            match next_frame(&mut conn.reader).await {
                Some(Ok(Frame {
                    kind: Some(Kind::Snapshot(s)),
                    ..
                })) => Ok((hello, s)),
                other => Err(format!(
                    "expected a snapshot, got {:?}",
                    other.map(|r| r.map(|f| f.kind_name()))
                )),
            }
        })
        .await;
        let (hello, snapshot) = match first {
            Ok(Ok(v)) => v,
            Ok(Err(e)) => return Followed::Retry(e),
            Err(_) => return Followed::Retry("no snapshot in time".into()),
        };
        let primary: SocketAddr = snapshot.addr.parse().unwrap_or(target);
        let mut replica = match self.restore(&snapshot) {
            Ok(r) => r,
            Err(e) => return Followed::Retry(e),
        };
        tracing::info!(%primary, epoch = snapshot.epoch, repl_seq = snapshot.repl_seq, clients = snapshot.clients.len(), "following the primary");
        *self.stats.repl.peer.lock() = primary.to_string();
        if let Err(e) = self.held(&mut conn, &replica, primary).await {
            return Followed::Retry(e);
        }
        let lost = |replica: Replica| Followed::Lost {
            replica: Box::new(replica),
            primary,
            instance_id: hello.instance_id.clone(),
        };
        let mut pending: Vec<Bytes> = Vec::new();
        // Whole groups decoded, in order, not yet applied; `committed` is
        // the last change held (decoded or applied).
        let mut held: Vec<Change> = Vec::new();
        let mut committed = replica.repl_seq();
        let mut decoder = ChangeDecoder::default();
        let mut ticker = tokio::time::interval(self.config.heartbeat_interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut out = BytesMut::new();
        let mut snapshots = self.snapshots.lock().await;
        // Silence is counted in ticks: a tick with nothing heard since the
        // one before is a miss (no clock read or timer per wait).
        let mut heard = true;
        let mut missed = 0u32;
        // One waiter on the shutdown token for the whole link, not one per
        // wait.
        let shutdown = self.shutdown.cancelled();
        tokio::pin!(shutdown);
        // Commit groups held but not yet acknowledged: one `ReplAck`
        // covers every group that arrived together. A group is
        // acknowledged once it is whole and decoded, before it is applied
        // (the primary's clients wait for the acknowledgement, not for the
        // replica's routing); it is applied before the link is read again,
        // so a takeover never starts with an acknowledged change left out.
        let mut unacked = 0usize;
        loop {
            let ready =
                if unacked > 0 && unacked < MAX_UNACKED_GROUPS && held.len() < MAX_HELD_CHANGES {
                    conn.reader.next().now_or_never()
                } else {
                    None
                };
            let next = if let Some(r) = ready {
                heard = true;
                r
            } else {
                if unacked > 0 {
                    unacked = 0;
                    let acked = ack(&mut conn, committed).await;
                    if let Err(e) = apply(&mut replica, &mut held) {
                        return Followed::Retry(e);
                    }
                    self.report(&replica, primary);
                    if acked.is_err() {
                        return lost(replica);
                    }
                }
                tokio::select! {
                Some(reply) = snapshots.recv() => {
                    let _ = reply.send(replica.snapshot());
                    continue;
                }
                r = conn.reader.next() => {
                    heard = true;
                    r
                }
                _ = ticker.tick() => {
                    missed = if std::mem::take(&mut heard) { 0 } else { missed + 1 };
                    if missed >= self.config.heartbeat_misses {
                        tracing::warn!(ms = silence.as_millis() as u64, "primary silent");
                        return lost(replica);
                    }
                    out.clear();
                    put_frame(&heartbeat(replica.epoch(), 0, proto::Role::Standby), &mut out);
                    if conn.writer.write_all(&out).await.is_err() || conn.writer.flush().await.is_err() {
                        return lost(replica);
                    }
                    continue;
                }
                _ = &mut shutdown => return Followed::Shutdown,
                }
            };
            let frame = match next {
                // (What is held was sent by the primary as committed: applied.)
                None => {
                    return match apply(&mut replica, &mut held) {
                        Ok(()) => lost(replica),
                        Err(e) => Followed::Retry(e),
                    }
                }
                Some(Err(e)) => {
                    tracing::warn!(error = %e, "replication link broke");
                    return match apply(&mut replica, &mut held) {
                        Ok(()) => lost(replica),
                        Err(e) => Followed::Retry(e),
                    };
                }
                Some(Ok(body)) => body,
            };
            if is_change(&frame) {
                // Decoded when its group is whole.
                if pending.len() >= MAX_PENDING_CHANGES {
                    return Followed::Retry("too many changes without a commit point".into());
                }
                pending.push(frame);
                continue;
            }
            let frame = match decode_frame(frame, LINK_MAX_FRAME) {
                Ok(f) => f,
                Err(e) => {
                    return Followed::Retry(format!(
                        "the primary sent a frame that does not decode: {e}"
                    ))
                }
            };
            match frame.kind {
                Some(Kind::Heartbeat(h)) if h.repl_seq > 0 => {
                    if let Err(e) = hold_group(
                        &mut decoder,
                        &mut pending,
                        h.repl_seq,
                        &mut committed,
                        &mut held,
                    ) {
                        return Followed::Retry(e);
                    }
                    // Acknowledged (then applied) before the next wait for
                    // the link.
                    unacked += 1;
                }
                Some(Kind::Heartbeat(h)) if h.epoch > replica.epoch() => {
                    return Followed::Retry("the primary's epoch changed".into());
                }
                Some(Kind::Snapshot(s)) => {
                    // Taken after every change sent before it.
                    pending.clear();
                    held.clear();
                    replica = match self.restore(&s) {
                        Ok(r) => r,
                        Err(e) => return Followed::Retry(e),
                    };
                    committed = replica.repl_seq();
                    tracing::info!(
                        repl_seq = s.repl_seq,
                        "resynchronised from a fresh snapshot"
                    );
                }
                Some(Kind::Error(e)) => return Followed::Retry(e.message),
                _ => {}
            }
        }
    }

    /// Acknowledges everything the replica holds and says so.
    async fn held(
        &self,
        conn: &mut LinkConn,
        replica: &Replica,
        primary: SocketAddr,
    ) -> Result<(), String> {
        self.report(replica, primary);
        ack(conn, replica.repl_seq()).await
    }

    /// Says how far the replica got (stats and [`StandbyState`]).
    fn report(&self, replica: &Replica, primary: SocketAddr) {
        let seq = replica.repl_seq();
        self.stats.repl.seq.store(seq, Ordering::Relaxed);
        let now = StandbyState::Following {
            primary,
            epoch: replica.epoch(),
            repl_seq: seq,
        };
        // Only a new primary or epoch (or the first report) wakes watchers.
        self.state.send_if_modified(|state| {
            let wake = !matches!(state, StandbyState::Following { primary: p, epoch: e, .. }
                if *p == primary && *e == replica.epoch());
            *state = now;
            wake
        });
    }

    fn restore(&self, snapshot: &proto::Snapshot) -> Result<Replica, String> {
        let config = self.router_config(snapshot.epoch);
        Replica::new(Instant::now(), snapshot, config, self.stats.clone())
            .map_err(|e| e.to_string())
    }

    async fn take_over(
        &self,
        replica: Replica,
        primary: SocketAddr,
        old_instance: &str,
    ) -> Result<HubHandle, HubError> {
        let started = Instant::now();
        let epoch = replica.epoch() + 1;
        let listener = bind_taken_port(primary, &self.config.bind).await?;
        let local_addr = listener.local_addr().map_err(|source| HubError::Bind {
            addr: primary.to_string(),
            source,
        })?;
        // The failed primary's hint names its instance; ours replaces it.
        let dir = self.config.hint_dir.clone().or_else(|| runtime_dir().ok());
        if let Some(dir) = dir {
            let name =
                switchboard_discovery::Hint::new(&self.config.service, primary, old_instance)
                    .file_name();
            let _ = std::fs::remove_file(dir.join(name));
            crate::listen_unix::remove_stale_default(&dir, &self.config.service, old_instance);
        }
        let identity = proto::HubIdentity {
            service: self.config.service.clone(),
            instance_id: self.instance_id.clone(),
            pid: std::process::id(),
            port: u32::from(local_addr.port()),
            epoch,
            started_at_ms: now_ms(),
            role: proto::Role::Primary as i32,
        };
        let clients = replica.router().client_count();
        let router = replica.into_router(Instant::now(), identity.clone(), self.config.keepalive);
        let mut config = self.config.clone();
        config.epoch = epoch;
        *self.stats.repl.peer.lock() = String::new();
        let handle =
            crate::primary::serve(config, Some(listener), identity, router, self.stats.clone())
                .await?;
        tracing::warn!(addr = %local_addr, epoch, clients, ms = started.elapsed().as_millis() as u64, "took over from the failed primary");
        self.state.send_replace(StandbyState::Primary {
            addr: local_addr,
            epoch,
        });
        Ok(handle)
    }
}

/// Why the primary was not followed, from a failed handshake.
fn refusal(e: HandshakeError) -> String {
    match e {
        HandshakeError::Refused(e) => format!("refused: {}", e.message),
        HandshakeError::Unverified | HandshakeError::WrongService { .. } => {
            "the hub could not prove it holds the secret of this service".into()
        }
        other => format!("unexpected answer to Hello: {other}"),
    }
}

async fn write_frame(wr: &mut crate::tls::LinkWr, frame: &Frame) -> Result<(), String> {
    let mut buf = BytesMut::new();
    put_frame(frame, &mut buf);
    wr.write_all(&buf)
        .await
        .map_err(|e| format!("write: {e}"))?;
    wr.flush().await.map_err(|e| format!("write: {e}"))
}

/// Binds the failed primary's address, retrying briefly while its socket
/// lingers; else a port as `fallback` says.
async fn bind_taken_port(
    primary: SocketAddr,
    fallback: &BindOptions,
) -> Result<tokio::net::TcpListener, HubError> {
    let opts = BindOptions {
        ip: primary.ip(),
        port: PortChoice::Fixed(primary.port()),
        attempts: 1,
    };
    let until = Instant::now() + BIND_RETRY;
    loop {
        match bind(&opts).await {
            Ok(l) => return Ok(l),
            Err(e) if Instant::now() < until => {
                tracing::debug!(error = %e, "the primary's port is still taken; retrying");
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            Err(e) => {
                tracing::warn!(error = %e, addr = %primary, "cannot bind the primary's port (is the old primary alive?); binding another");
                return bind(fallback).await.map_err(|source| HubError::Bind {
                    addr: format!("{}", fallback.ip),
                    source,
                });
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The body of a link frame carrying a `client_left` change numbered `seq`.
    fn left(seq: u64) -> Bytes {
        let frame = Frame {
            kind: Some(Kind::Change(Box::new(proto::Change {
                repl_seq: seq,
                op: Some(proto::change::Op::ClientLeft(format!("c{seq}"))),
            }))),
            ..Default::default()
        };
        Bytes::from(prost::Message::encode_to_vec(&frame))
    }

    fn hold(seqs: &[u64], commit: u64, committed: &mut u64) -> Result<Vec<u64>, String> {
        let mut pending: Vec<Bytes> = seqs.iter().map(|s| left(*s)).collect();
        let mut held = Vec::new();
        hold_group(
            &mut ChangeDecoder::default(),
            &mut pending,
            commit,
            committed,
            &mut held,
        )?;
        assert!(pending.is_empty(), "the group is taken whole");
        Ok(held.iter().map(|c| c.repl_seq).collect())
    }

    #[test]
    fn a_group_that_follows_on_is_held_in_order() {
        let mut committed = 4;
        assert_eq!(hold(&[5, 6, 7], 7, &mut committed), Ok(vec![5, 6, 7]));
        assert_eq!(committed, 7);
    }

    #[test]
    fn changes_held_already_are_skipped() {
        let mut committed = 6;
        assert_eq!(hold(&[5, 6, 7], 7, &mut committed), Ok(vec![7]));
        assert_eq!(committed, 7);
    }

    #[test]
    fn a_gap_or_a_change_past_the_commit_point_is_refused_before_it_is_acknowledged() {
        let mut committed = 4;
        let gap = hold(&[5, 7], 7, &mut committed).unwrap_err();
        assert!(gap.contains("expected 6, got 7"), "{gap}");
        let mut committed = 4;
        let past = hold(&[5, 6], 5, &mut committed).unwrap_err();
        assert!(past.contains("beyond its commit point"), "{past}");
    }

    #[test]
    fn a_change_that_does_not_decode_is_refused() {
        // Field 92 (`change`), length 127, and nothing after it.
        let mut pending = vec![Bytes::from_static(&[0xe2, 0x05, 0x7f])];
        let err = hold_group(
            &mut ChangeDecoder::default(),
            &mut pending,
            9,
            &mut 0,
            &mut Vec::new(),
        )
        .unwrap_err();
        assert!(err.contains("does not decode"), "{err}");
    }
}
