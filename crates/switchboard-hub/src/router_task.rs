//! The task that owns a primary's [`Router`], its driver: it feeds the
//! router the inputs the connections send (its [`Inbox`](crate::inbox::Inbox)), the time (as ticks
//! at the router's next deadline) and shutdown, and answers inspections
//! and snapshot requests by asking the router itself ([`Command`]); it
//! attaches a standby and ships the change log to it (holding every
//! outgoing frame at the [`Gate`] until the standby holds what produced
//! it), and runs the fencing check when the standby is lost. The router
//! itself sees none of this: no channel, no clock, no task.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use parking_lot::Mutex;
use switchboard_discovery::HintGuard;
use switchboard_wire::proto;
use switchboard_wire::put_frame;
use tokio::sync::{mpsc, oneshot, watch};
use tokio_util::sync::CancellationToken;

use crate::inbox::{Command, InboxRx};
use crate::outbox::Gate;
use crate::replication::fencing;
use crate::replication::link::{self, Link};
use crate::router::{Input, Router};
use crate::shared::{Attach, Shared};
use crate::stats::HubStats;

/// Most inputs the router task takes from its inbox per wake-up.
const ROUTER_BATCH: usize = 64;

/// The parts of [`Shared`] the router task uses.
pub(crate) struct TaskShared {
    pub shutdown: CancellationToken,
    pub stats: Arc<HubStats>,
    pub gate: Arc<Gate>,
    pub higher_epoch: Arc<tokio::sync::Notify>,
    pub secret: switchboard_discovery::Secret,
}

impl TaskShared {
    pub(crate) fn of(shared: &Shared) -> TaskShared {
        TaskShared {
            shutdown: shared.shutdown.clone(),
            stats: shared.stats.clone(),
            gate: shared.gate.clone(),
            higher_epoch: shared.higher_epoch.clone(),
            secret: shared.secret.clone(),
        }
    }
}

/// The task that owns a primary's router.
pub(crate) struct RouterTask {
    pub router: Router,
    pub inbox: InboxRx,
    pub standby: mpsc::Receiver<Attach>,
    /// What the router task needs of the hub's shared state (not the
    /// whole [`Shared`]: its inbox sender would keep the inbox open).
    pub shared: TaskShared,
    pub hint: Arc<Mutex<Option<HintGuard>>>,
    pub closed: watch::Sender<bool>,
    pub local_addr: SocketAddr,
    pub hint_dir: Option<PathBuf>,
    pub fenced: Arc<AtomicBool>,
}

impl RouterTask {
    pub(crate) async fn run(mut self) {
        let mut batch = Vec::with_capacity(ROUTER_BATCH);
        let mut shutting_down = false;
        let far = || tokio::time::Instant::now() + Duration::from_secs(3600);
        let sleep = tokio::time::sleep_until(far());
        tokio::pin!(sleep);
        let mut armed: Option<Instant> = None;
        let mut link: Option<Link> = None;
        let mut check: Option<oneshot::Receiver<bool>> = None;
        // Outputs are held while a check after a lost standby runs.
        let mut holding = false;
        let shutdown = self.shared.shutdown.clone();
        loop {
            let deadline = self.router.next_deadline();
            if deadline != armed {
                armed = deadline;
                sleep
                    .as_mut()
                    .reset(deadline.map_or_else(far, tokio::time::Instant::from_std));
            }
            let lost = async {
                match &link {
                    Some(l) => l.alive().cancelled().await,
                    None => std::future::pending().await,
                }
            };
            let checking = check.is_some();
            let checked = async {
                match check.as_mut() {
                    Some(rx) => rx.await.unwrap_or(false),
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                biased;
                _ = shutdown.cancelled(), if !shutting_down => {
                    shutting_down = true;
                    tracing::info!("hub shutting down");
                    self.router.set_handover(link.is_some());
                    self.router.handle(Instant::now(), Input::Shutdown);
                    if let Some(guard) = self.hint.lock().take() {
                        if let Err(e) = guard.remove() {
                            tracing::warn!(error = %e, "could not remove the hint");
                        }
                    }
                }
                n = self.inbox.recv_many(&mut batch, ROUTER_BATCH) => {
                    if n == 0 {
                        break;
                    }
                    let now = Instant::now();
                    for command in batch.drain(..) {
                        match command {
                            Command::Input(input) => {
                                self.router.handle(now, input);
                                // A burst (publishes fanned out to many
                                // reliable subscribers) goes to the
                                // standby before the log overflows.
                                if let Some(l) = &link {
                                    if self.router.change_log_wants_sending()
                                        && !l.alive().is_cancelled()
                                    {
                                        self.ship_changes(l).await;
                                        // The link's task, woken on this
                                        // worker, writes it now rather
                                        // than after the whole batch.
                                        tokio::task::yield_now().await;
                                    }
                                }
                            }
                            Command::Inspect(reply) => {
                                let _ = reply.send(self.router.inspect(now));
                            }
                            Command::Snapshot(reply) => {
                                let _ = reply.send(self.router.snapshot());
                            }
                        }
                    }
                    if self.router.next_deadline().is_some_and(|d| d <= now) {
                        self.router.handle(now, Input::Tick);
                    }
                }
                _ = &mut sleep, if armed.is_some() => {
                    armed = None;
                    self.router.handle(Instant::now(), Input::Tick);
                }
                Some(attach) = self.standby.recv() => {
                    if link.is_some() || holding || shutting_down {
                        link::refuse(attach);
                    } else {
                        link = self.attach(attach).await;
                    }
                }
                _ = lost => {
                    link = None;
                    *self.shared.stats.repl.peer.lock() = String::new();
                    tracing::warn!("standby lost; checking for a newer primary before going on alone");
                    holding = true;
                    check = Some(self.start_fence_check());
                }
                fenced = checked => {
                    check = None;
                    if fenced {
                        self.step_down();
                    } else if link.is_none() {
                        if holding {
                            tracing::info!("no newer primary; serving without a standby");
                        }
                        holding = false;
                        self.router.disable_change_log();
                        self.router.set_gating(false);
                        self.shared.gate.open_all();
                    } else {
                        // A check a client's higher epoch started while a
                        // standby is attached (it may have attached during
                        // the check): replication and the gate stay as
                        // they are.
                        tracing::info!("no newer primary; the standby stays attached");
                    }
                }
                _ = self.shared.higher_epoch.notified(), if !checking && !shutting_down => {
                    tracing::warn!("a client has seen a higher epoch; checking for a newer primary");
                    check = Some(self.start_fence_check());
                }
            }
            match &link {
                Some(l) if !l.alive().is_cancelled() => self.ship_changes(l).await,
                _ if holding => {
                    // No standby to take them: keep the log short.
                    self.router.discard_changes();
                }
                _ => {}
            }
            self.router.publish_stats();
        }
        if let Some(guard) = self.hint.lock().take() {
            let _ = guard.remove();
        }
        tracing::info!("hub stopped");
        let _ = self.closed.send(true);
    }

    /// Sends the standby the changes logged since the last call, with
    /// their commit point; a fresh snapshot instead when the log
    /// overflowed.
    async fn ship_changes(&mut self, l: &Link) {
        let mut buf = BytesMut::new();
        let repl = &self.shared.stats.repl;
        let repl_seq = self.router.repl_seq();
        match self.router.take_encoded(&mut buf) {
            Err(_) => {
                tracing::warn!("change log overflowed; sending the standby a fresh snapshot");
                let bytes = link::snapshot_bytes(&self.router, self.local_addr, false);
                l.resync(repl, repl_seq, bytes).await;
            }
            Ok(0) => {}
            Ok(_) => {
                put_frame(
                    &link::heartbeat(self.epoch(), repl_seq, proto::Role::Primary),
                    &mut buf,
                );
                l.ship(repl, repl_seq, buf.freeze()).await;
            }
        }
    }

    fn epoch(&self) -> u64 {
        self.router.identity().epoch
    }

    async fn attach(&mut self, attach: Attach) -> Option<Link> {
        tracing::info!(standby = %attach.addr, "standby attached; sending a snapshot");
        self.router
            .enable_change_log(self.router.change_log_limits());
        // Changes before the snapshot are in it.
        self.router.discard_changes();
        let bytes = link::snapshot_bytes(&self.router, self.local_addr, true);
        let repl = &self.shared.stats.repl;
        repl.acked.store(0, Ordering::Relaxed);
        repl.bytes_acked
            .store(repl.bytes_sent.load(Ordering::Relaxed), Ordering::Relaxed);
        *repl.peer.lock() = attach.addr.clone();
        let link = Link::new(attach);
        self.shared.gate.close_at(self.router.repl_seq());
        self.router.set_gating(true);
        link.ship(&self.shared.stats.repl, self.router.repl_seq(), bytes)
            .await;
        Some(link)
    }

    fn start_fence_check(&self) -> oneshot::Receiver<bool> {
        fencing::start_check(
            self.router.identity().clone(),
            self.shared.secret.clone(),
            self.hint_dir.clone(),
        )
    }

    /// An old primary: stop serving for good (outputs stay held, so
    /// nothing more is acknowledged); the owner may restart it as a
    /// standby.
    fn step_down(&mut self) {
        tracing::error!("fenced: a newer primary serves this service; this hub stops serving");
        self.fenced.store(true, Ordering::Release);
        self.shared.shutdown.cancel();
    }
}
