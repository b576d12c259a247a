//! The id directory: which hub holds which client id, cluster-wide, in a
//! JetStream KV bucket, and which hubs are live, from a heartbeat bucket.
//!
//! - Bucket `sb_<service>_ids`: key = the escaped client id
//!   ([`subject::escape`](crate::subject::escape)), value = [`Holder`]
//!   (JSON). A hub `create`s the key when a client joins (it fails when the
//!   key exists), deletes it (expecting the revision it wrote) when the
//!   client leaves.
//! - Bucket `sb_<service>_hubs`: key = the escaped hub name, value = the
//!   hub's epoch, put every third of the lease.
//! - Every hub watches both. A hub is live while it heard a heartbeat of
//!   it within the lease (time measured locally, from when the update
//!   arrived, so clocks need not agree; a hub seen at start gets one
//!   lease of grace). Each hub deletes the ids of hubs it finds dead
//!   (expecting their revision, so a fresh claim is never lost).
//! - [`Directory::claim`] answers on the router task from the watched
//!   copy: an id held by another live hub is refused with
//!   `ID_TAKEN_OVER`, the code a replaced local duplicate gets. Two hubs
//!   admitting the same id within one watch delay both admit it; the
//!   later `create` fails, is logged and counted (`races_lost`), the
//!   bucket names the first, and the loser closes its client with
//!   `Goodbye{ID_TAKEN_OVER}` (as if [`claim`](Directory::claim) had
//!   refused it).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_nats::jetstream::kv::{self, Operation, Store};
use async_nats::jetstream::stream;
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use switchboard_hub::port::PortSender;
use switchboard_hub::router::admission::Refusal;
use switchboard_wire::ErrorCode;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::subject::{escape, unescape};
use crate::throttle::Throttle;
use crate::{FederationError, FederationOptions, COMMAND_QUEUE};

mod ids;

/// The value of an id's entry: who holds it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Holder {
    /// The hub's name.
    pub hub: String,
    /// The hub's epoch when it registered the id.
    pub epoch: u64,
}

#[derive(Debug)]
enum Command {
    /// A local client joined: write its id.
    Join(String),
    /// An id of a local client was released by another hub while this
    /// hub was cut off: write it again. Losing it to another hub's entry
    /// is a take-back (counted in `taken_back`), not an admission race.
    Reclaim(String),
    /// A local client left: delete its id.
    Leave(String),
}

#[derive(Debug, Default)]
struct State {
    /// id → (holder, revision), from the watch and our own writes.
    ids: HashMap<String, (Holder, u64)>,
    /// hub → when its last heartbeat arrived.
    hubs: HashMap<String, Instant>,
    /// hub → the newest epoch seen for it (heartbeats and id entries).
    epochs: HashMap<String, u64>,
}

/// A client of another hub joined (id, `Some(hub)`) or left (`None`).
pub(crate) type PresenceChange = (String, Option<String>);

/// Counters of the directory.
#[derive(Debug, Default)]
pub struct DirectoryStats {
    /// Registrations whose `create` found the id held by another live
    /// hub (both admitted it at once); the local client was closed.
    pub races_lost: AtomicU64,
    /// Commands dropped because the queue towards NATS was full, and
    /// presence events of other hubs' clients dropped because the queue
    /// towards the router was full.
    pub dropped: AtomicU64,
    /// Ids of dead hubs this hub released.
    pub released_dead: AtomicU64,
    /// Entries on the buckets that could not be read (dropped).
    pub malformed: AtomicU64,
    /// Ids this hub wrote to the bucket.
    pub written: AtomicU64,
    /// Ids of this hub's clients another hub released (this hub was cut
    /// off longer than the lease) and this hub claimed again.
    pub reclaimed: AtomicU64,
    /// Local clients closed after a reconnection because another hub
    /// registered their id while this hub was cut off.
    pub taken_back: AtomicU64,
    /// Ids of this hub's name rewritten with this hub's epoch when a
    /// standby took over (see `FederationOptions::standby`).
    pub taken_over: AtomicU64,
    /// Watches of the buckets found silent while their bucket moved on,
    /// and reopened.
    pub watch_stalled: AtomicU64,
}

impl DirectoryStats {
    /// Ids this hub wrote to the bucket.
    pub fn written(&self) -> u64 {
        self.written.load(Ordering::Relaxed)
    }
}

/// See the module docs.
#[derive(Debug)]
pub struct Directory {
    /// Clients of other hubs joining (`Some(hub)`) and leaving (`None`),
    /// from the id bucket's watch, for local presence.
    presence: mpsc::Sender<PresenceChange>,
    presence_rx: Mutex<Option<mpsc::Receiver<PresenceChange>>>,
    me: String,
    /// This hub's epoch; raised when a standby takes over.
    epoch: AtomicU64,
    /// Standing by: watching only (no heartbeat, no id writes, no reaping).
    standby: AtomicBool,
    /// A newer holder of this hub's name (a standby that took over) was
    /// seen: this hub no longer serves as that hub.
    fenced: AtomicBool,
    fence: tokio::sync::Notify,
    lease: Duration,
    started: Instant,
    state: Mutex<State>,
    /// The ids registered on this hub now (as the router reported them).
    local: Mutex<std::collections::HashSet<String>>,
    commands: mpsc::Sender<Command>,
    /// The hub's port, once it attached: to close a local client whose id
    /// another hub registered first.
    port: std::sync::OnceLock<PortSender>,
    /// Warnings about dropped id updates (rate-limited).
    full_log: Throttle,
    ids: Store,
    hubs: Store,
    /// The newest revision each bucket's watch handed on (see
    /// [`Directory::caught_up`]).
    seen_ids: tokio::sync::watch::Sender<u64>,
    seen_hubs: tokio::sync::watch::Sender<u64>,
    /// Told when this hub's heartbeat reaches the cluster again after
    /// failing: the hub may have been taken for dead meanwhile, so its
    /// ids are written again (the same path as a NATS reconnection).
    rejoined: mpsc::UnboundedSender<()>,
    stats: DirectoryStats,
}

impl Directory {
    /// Opens the buckets and starts the watches, the reaper and the
    /// command task (and a standby's heartbeat); they stop with `stop`. A
    /// primary's heartbeat starts with [`Directory::join`]. `rejoined` is
    /// told when the heartbeat reaches the cluster again after failing.
    pub(crate) async fn open(
        client: async_nats::Client,
        options: &FederationOptions,
        stop: CancellationToken,
        rejoined: mpsc::UnboundedSender<()>,
    ) -> Result<Arc<Directory>, FederationError> {
        let js = async_nats::jetstream::new(client.clone());
        let replicas = options
            .replicas
            .unwrap_or_else(|| client.server_info().connect_urls.len().clamp(1, 3));
        let service = escape(&options.service);
        let deadline = Instant::now() + options.connect_timeout;
        let ids = bucket(&js, format!("sb_{service}_ids"), replicas, deadline).await?;
        let hubs = bucket(&js, format!("sb_{service}_hubs"), replicas, deadline).await?;
        let (tx, rx) = mpsc::channel(COMMAND_QUEUE);
        let (presence, presence_rx) = mpsc::channel(COMMAND_QUEUE);
        let dir = Arc::new(Directory {
            presence,
            presence_rx: Mutex::new(Some(presence_rx)),
            me: options.hub_name.clone(),
            epoch: AtomicU64::new(options.epoch),
            standby: AtomicBool::new(options.standby),
            fenced: AtomicBool::new(false),
            fence: tokio::sync::Notify::new(),
            lease: options.lease,
            started: Instant::now(),
            state: Mutex::new(State::default()),
            local: Mutex::new(Default::default()),
            commands: tx,
            port: std::sync::OnceLock::new(),
            full_log: Throttle::new(),
            ids,
            hubs,
            seen_ids: tokio::sync::watch::Sender::new(0),
            seen_hubs: tokio::sync::watch::Sender::new(0),
            rejoined,
            stats: DirectoryStats::default(),
        });
        spawn(
            stop.clone(),
            dir.clone()
                .watch(dir.ids.clone(), "ids", Self::on_id, |d| &d.seen_ids),
        );
        spawn(
            stop.clone(),
            dir.clone()
                .watch(dir.hubs.clone(), "hubs", Self::on_hub, |d| &d.seen_hubs),
        );
        dir.caught_up(deadline).await?;
        // A standby's heartbeat waits for its takeover; a primary's starts
        // in `join`, once its subscriptions reached the cluster.
        if options.standby {
            spawn(stop.clone(), dir.clone().heartbeat());
        }
        spawn(stop.clone(), dir.clone().reaper());
        spawn(stop, dir.clone().commands(rx));
        Ok(dir)
    }

    /// Becomes a live member: the first heartbeat now (its error
    /// returned), then one every third of the lease until `stop`. Called
    /// by `Federation::connect` once this hub's subject is subscribed and
    /// flushed to its server, so that other hubs learn this hub is live
    /// only after the cluster was told of its interest (see
    /// ARCHITECTURE.md, "joining").
    pub(crate) async fn join(
        self: &Arc<Self>,
        stop: CancellationToken,
    ) -> Result<(), FederationError> {
        self.beat().await?;
        spawn(stop, self.clone().heartbeat());
        Ok(())
    }

    /// The presence events of clients of other hubs (id, and the holder
    /// hub when it joined), once: the routing task hands them to the
    /// router. Beyond [`COMMAND_QUEUE`] waiting, events are dropped and
    /// counted.
    pub(crate) fn take_presence(&self) -> Option<mpsc::Receiver<PresenceChange>> {
        self.presence_rx.lock().take()
    }

    /// The hub attached its port: from now on a local client whose id
    /// another hub registered at the same time is closed through it.
    pub(crate) fn set_port(&self, port: PortSender) {
        let _ = self.port.set(port);
    }

    fn tell(&self, id: &str, hub: Option<&str>) {
        if self
            .presence
            .try_send((id.to_owned(), hub.map(str::to_owned)))
            .is_err()
        {
            self.stats.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// This hub's name.
    pub fn hub_name(&self) -> &str {
        &self.me
    }

    /// The hub holding `id`, as this hub last saw it.
    pub fn holder(&self, id: &str) -> Option<String> {
        self.state.lock().ids.get(id).map(|(h, _)| h.hub.clone())
    }

    /// The entry of `id` as this hub last saw it: its holder (hub and
    /// epoch) and revision (0: written here, not yet confirmed).
    pub fn holding(&self, id: &str) -> Option<(Holder, u64)> {
        self.state.lock().ids.get(id).cloned()
    }

    /// Whether `hub` is live (this hub always is).
    pub fn is_live(&self, hub: &str) -> bool {
        hub == self.me || live(&self.state.lock(), &self.me, hub, self.lease, self.started)
    }

    /// Whether `hub` is a live member heard from: its heartbeat arrived
    /// (unlike [`is_live`](Self::is_live), a hub never heard of is not
    /// given the start-up grace). Messages from other origins are dropped.
    pub fn is_member(&self, hub: &str) -> bool {
        let st = self.state.lock();
        st.hubs.contains_key(hub) && live(&st, &self.me, hub, self.lease, self.started)
    }

    /// The other hubs heard from within their lease, sorted.
    pub fn members(&self) -> Vec<String> {
        let st = self.state.lock();
        let mut m: Vec<String> = st
            .hubs
            .keys()
            .filter(|h| **h != self.me && live(&st, &self.me, h, self.lease, self.started))
            .cloned()
            .collect();
        m.sort();
        m
    }

    /// How long ago this hub's own last heartbeat came back from the
    /// cluster (`None`: none came back yet). Beyond the lease, the other
    /// hubs take this hub for dead.
    pub fn lease_age(&self) -> Option<Duration> {
        self.state.lock().hubs.get(&self.me).map(Instant::elapsed)
    }

    /// The counters.
    pub fn stats(&self) -> &DirectoryStats {
        &self.stats
    }

    /// This hub's epoch now (written with every id it holds and in its
    /// heartbeat; raised when a standby takes over).
    pub fn epoch(&self) -> u64 {
        self.epoch.load(Ordering::Acquire)
    }

    /// Whether this directory stands by (a hot standby's, before it took
    /// over): it watches, but neither heartbeats nor writes ids.
    pub fn is_standby(&self) -> bool {
        self.standby.load(Ordering::Acquire)
    }

    /// Whether a newer holder of this hub's name (a standby that took
    /// over, with a higher epoch) was seen: this hub is an old primary
    /// and no longer serves as that hub cluster-wide.
    pub fn is_fenced(&self) -> bool {
        self.fenced.load(Ordering::Acquire)
    }

    /// Waits until this hub is fenced (see [`is_fenced`](Self::is_fenced)).
    pub async fn fenced(&self) {
        loop {
            let notified = self.fence.notified();
            if self.is_fenced() {
                return;
            }
            notified.await;
        }
    }

    /// The newest epoch seen for `hub` (its heartbeats and id entries;
    /// this hub's own epoch for itself), 0 if none.
    pub fn newest_epoch(&self, hub: &str) -> u64 {
        let seen = self.state.lock().epochs.get(hub).copied().unwrap_or(0);
        if hub == self.me {
            seen.max(self.epoch())
        } else {
            seen
        }
    }

    /// Records `epoch` for `hub`; a higher one than this hub's own for
    /// its own name fences this hub (unless it stands by). Lock held.
    fn saw_epoch(&self, st: &mut State, hub: &str, epoch: u64) {
        let e = st.epochs.entry(hub.to_owned()).or_insert(0);
        *e = (*e).max(epoch);
        if hub == self.me && epoch > self.epoch() && !self.is_standby() {
            self.fence_now(epoch);
        }
    }

    fn fence_now(&self, epoch: u64) {
        if !self.fenced.swap(true, Ordering::AcqRel) {
            tracing::error!(hub = %self.me, epoch = self.epoch(), newer = epoch, "federation: fenced: a standby took over this hub's name with a higher epoch; this hub stops serving as that hub");
            self.fence.notify_waiters();
        }
    }

    /// Whether `id` may register on this hub: refused when another live
    /// hub holds it. Quick; called on the router task.
    pub fn claim(&self, id: &str) -> Result<(), Refusal> {
        if self.is_fenced() {
            return Err(Refusal {
                code: ErrorCode::Fenced,
                message: format!(
                    "hub '{}' was taken over by its standby (a higher epoch); connect to the new primary",
                    self.me
                ),
            });
        }
        let st = self.state.lock();
        match st.ids.get(id) {
            Some((h, _)) if h.hub != self.me && live(&st, &self.me, &h.hub, self.lease, self.started) => {
                Err(Refusal {
                    code: ErrorCode::IdTakenOver,
                    message: format!(
                        "client id '{id}' is registered on hub '{}' of this federation; give each process its own id",
                        h.hub
                    ),
                })
            }
            _ => Ok(()),
        }
    }

    /// `id` registered here: recorded at once, written to the bucket by the
    /// command task.
    pub fn joined(&self, id: &str) {
        self.local.lock().insert(id.to_owned());
        self.state.lock().ids.insert(
            id.to_owned(),
            (
                Holder {
                    hub: self.me.clone(),
                    epoch: self.epoch(),
                },
                0,
            ),
        );
        self.command(Command::Join(id.to_owned()));
    }

    /// `id` left this hub.
    pub fn left(&self, id: &str) {
        self.local.lock().remove(id);
        {
            let mut st = self.state.lock();
            if st.ids.get(id).is_some_and(|(h, _)| h.hub == self.me) {
                st.ids.remove(id);
            }
        }
        self.command(Command::Leave(id.to_owned()));
    }

    /// Whether `id` is registered on this hub now.
    pub(crate) fn is_local(&self, id: &str) -> bool {
        self.local.lock().contains(id)
    }

    /// The ids registered on this hub now.
    pub(crate) fn local_ids(&self) -> Vec<String> {
        self.local.lock().iter().cloned().collect()
    }

    fn command(&self, c: Command) {
        if self.commands.try_send(c).is_err() {
            self.stats.dropped.fetch_add(1, Ordering::Relaxed);
            if let Some(n) = self.full_log.hit() {
                tracing::warn!(dropped = n, "federation: command queue towards NATS full; id updates dropped (count since the last such line)");
            }
        }
    }

    async fn beat(&self) -> Result<(), FederationError> {
        self.hubs
            .put(escape(&self.me), self.epoch().to_string().into())
            .await
            .map(|_| ())
            .map_err(|e| FederationError::JetStream(e.to_string()))
    }

    /// Beats every third of the lease. A beat that fails means the
    /// cluster may not hear this hub (its node cut off from the others
    /// while the NATS connection stays up): the other hubs release its
    /// ids once the lease runs out, and only the id watch would tell it.
    /// So the first beat that succeeds again tells `rejoined`, and the
    /// ids are written again whatever the watch shows.
    async fn heartbeat(self: Arc<Self>) {
        let mut every = tokio::time::interval(self.lease / 3);
        let mut failed = false;
        loop {
            every.tick().await;
            if self.is_standby() || self.is_fenced() {
                continue;
            }
            match self.beat().await {
                Ok(()) => {
                    if std::mem::take(&mut failed) {
                        tracing::info!("federation: the cluster takes this hub's heartbeat again; writing its ids again");
                        let _ = self.rejoined.send(());
                    }
                }
                Err(e) => {
                    failed = true;
                    tracing::warn!(error = %e, "federation: heartbeat failed");
                }
            }
        }
    }

    async fn reaper(self: Arc<Self>) {
        let mut every = tokio::time::interval(self.lease / 3);
        loop {
            every.tick().await;
            if self.is_standby() || self.is_fenced() {
                continue;
            }
            let dead: Vec<(String, u64)> = {
                let st = self.state.lock();
                st.ids
                    .iter()
                    .filter(|(_, (h, _))| {
                        h.hub != self.me && !live(&st, &self.me, &h.hub, self.lease, self.started)
                    })
                    .map(|(id, (_, rev))| (id.clone(), *rev))
                    .collect()
            };
            for (id, rev) in dead {
                if self
                    .ids
                    .delete_expect_revision(escape(&id), Some(rev))
                    .await
                    .is_ok()
                {
                    self.stats.released_dead.fetch_add(1, Ordering::Relaxed);
                    tracing::info!(client = %id, "federation: released the id of a dead hub");
                }
            }
        }
    }

    /// Follows one of the directory's buckets, `store` named `bucket` in
    /// logs, handing each entry to `on` (`Self::on_id` or `Self::on_hub`).
    async fn watch(
        self: Arc<Self>,
        store: Store,
        bucket: &'static str,
        on: fn(&Self, kv::Entry),
        seen: fn(&Self) -> &tokio::sync::watch::Sender<u64>,
    ) {
        crate::watch::follow(
            &store,
            bucket,
            self.lease / 3,
            &self.stats.watch_stalled,
            || true,
            |entry| {
                let revision = entry.revision;
                on(&self, entry);
                seen(&self).send_replace(revision);
                std::future::ready(true)
            },
        )
        .await;
    }

    /// Waits (until `deadline`) for both watches to hand on what their
    /// bucket held when this hub opened it: the live hubs and where every
    /// id is. Before that, a message from a live hub would be dropped as
    /// coming from no member, and a request for a client of another hub
    /// refused as for no client at all.
    async fn caught_up(&self, deadline: Instant) -> Result<(), FederationError> {
        for (store, seen, name) in [
            (&self.hubs, &self.seen_hubs, "hubs"),
            (&self.ids, &self.seen_ids, "ids"),
        ] {
            let late = || {
                FederationError::JetStream(format!(
                    "the watch of the {name} bucket did not catch up with it within the connect timeout"
                ))
            };
            let deadline = tokio::time::Instant::from_std(deadline);
            let info = loop {
                match tokio::time::timeout_at(deadline, store.stream.get_info()).await {
                    Ok(Ok(info)) => break info,
                    Ok(Err(e)) if tokio::time::Instant::now() < deadline => {
                        tracing::debug!(bucket = name, error = %e, "federation: cannot read the bucket's state yet; retrying");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                    _ => return Err(late()),
                }
            };
            // The newest message exists unless the bucket is empty (a
            // bucket's messages leave oldest first).
            if info.state.messages == 0 {
                continue;
            }
            let newest = info.state.last_sequence;
            tokio::time::timeout_at(deadline, seen.subscribe().wait_for(|r| *r >= newest))
                .await
                .map_err(|_| late())?
                .map_err(|_| late())?;
        }
        Ok(())
    }

    fn on_id(&self, entry: kv::Entry) {
        {
            let Some(id) = unescape(&entry.key) else {
                self.stats.malformed.fetch_add(1, Ordering::Relaxed);
                return;
            };
            // (Read before the state's lock: never both held.)
            let here = self.local.lock().contains(&id);
            let mut st = self.state.lock();
            match entry.operation {
                Operation::Put => match serde_json::from_slice::<Holder>(&entry.value) {
                    Ok(h) => {
                        self.saw_epoch(&mut st, &h.hub, h.epoch);
                        // Another live hub wrote the id after this hub's
                        // own written entry, while its client is still
                        // here: this hub was taken for dead (cut off
                        // longer than the lease) and the id registered
                        // there. The hub that kept the cluster wins: the
                        // local client is closed now, one watch delay
                        // after the change reached this hub, rather than
                        // when `reregister` comes to it.
                        let taken = here
                            && h.hub != self.me
                            && st.ids.get(&id).is_some_and(|(cur, rev)| {
                                cur.hub == self.me && *rev != 0 && *rev < entry.revision
                            })
                            && live(&st, &self.me, &h.hub, self.lease, self.started);
                        if taken {
                            let hub = h.hub.clone();
                            st.ids.insert(id.clone(), (h, entry.revision));
                            drop(st);
                            self.tell(&id, Some(&hub));
                            self.taken_back(&id, &hub);
                            return;
                        }
                        // Our own fresher record (joined, not yet written)
                        // wins over an older revision of someone else's.
                        let ours_pending = st.ids.get(&id).is_some_and(|(cur, rev)| {
                            cur.hub == self.me && *rev == 0 && h.hub != self.me
                        });
                        if !ours_pending {
                            let before = st.ids.get(&id).map(|(cur, _)| cur.hub.clone());
                            if before.as_deref() != Some(h.hub.as_str()) {
                                if h.hub != self.me {
                                    self.tell(&id, Some(&h.hub));
                                } else if before.is_some() {
                                    self.tell(&id, None);
                                }
                            }
                            st.ids.insert(id, (h, entry.revision));
                        }
                    }
                    Err(_) => {
                        self.stats.malformed.fetch_add(1, Ordering::Relaxed);
                    }
                },
                Operation::Delete | Operation::Purge => {
                    let ours_pending = st
                        .ids
                        .get(&id)
                        .is_some_and(|(cur, rev)| cur.hub == self.me && *rev == 0);
                    let older = st
                        .ids
                        .get(&id)
                        .is_some_and(|(_, rev)| *rev <= entry.revision);
                    let ours = st.ids.get(&id).is_some_and(|(cur, _)| cur.hub == self.me);
                    if !ours_pending && older && ours && !self.is_standby() {
                        // Released by another hub (this one was cut off
                        // longer than the lease), yet its client is still
                        // here: claim the id again. (A client that left is
                        // no longer in `ids`.)
                        if let Some((_, rev)) = st.ids.get_mut(&id) {
                            *rev = 0;
                        }
                        drop(st);
                        self.stats.reclaimed.fetch_add(1, Ordering::Relaxed);
                        tracing::info!(client = %id, "federation: an id of this hub was released by another; claiming it again");
                        self.command(Command::Reclaim(id));
                        return;
                    }
                    if !ours_pending && older {
                        if let Some((gone, _)) = st.ids.remove(&id) {
                            if gone.hub != self.me {
                                self.tell(&id, None);
                            }
                        }
                    }
                }
            }
        }
    }

    fn on_hub(&self, entry: kv::Entry) {
        {
            let Some(hub) = unescape(&entry.key) else {
                self.stats.malformed.fetch_add(1, Ordering::Relaxed);
                return;
            };
            let mut st = self.state.lock();
            match entry.operation {
                Operation::Put => {
                    // The value is the hub's epoch (unreadable: 0).
                    let epoch = std::str::from_utf8(&entry.value)
                        .ok()
                        .and_then(|v| v.trim().parse::<u64>().ok())
                        .unwrap_or(0);
                    self.saw_epoch(&mut st, &hub, epoch);
                    st.hubs.insert(hub, Instant::now());
                }
                Operation::Delete | Operation::Purge => {
                    st.hubs.remove(&hub);
                }
            }
        }
    }
}

/// Whether `hub` is live as `st` saw it, `me` being this hub: its last
/// heartbeat arrived less than `lease` before this hub's own last one (a
/// hub never heard of: less than `lease` after this hub started). Judged
/// against this hub's own heartbeat, not the clock, so a hub cut off from
/// the cluster (its watch silent) declares nobody dead.
fn live(st: &State, me: &str, hub: &str, lease: Duration, started: Instant) -> bool {
    let own = st.hubs.get(me).copied().unwrap_or(started).max(started);
    let last = st.hubs.get(hub).copied().unwrap_or(started);
    own.saturating_duration_since(last) < lease
}

fn spawn(stop: CancellationToken, task: impl std::future::Future<Output = ()> + Send + 'static) {
    tokio::spawn(async move {
        tokio::select! {
            () = stop.cancelled() => {}
            () = task => {}
        }
    });
}

/// Opens the KV bucket `name`, creating its stream with `replicas` and a
/// history of `history` values per key when it does not exist, trying
/// until `deadline`.
pub(crate) async fn bucket_with_history(
    js: &async_nats::jetstream::Context,
    name: String,
    replicas: usize,
    history: i64,
    deadline: Instant,
) -> Result<Store, FederationError> {
    loop {
        // The stream a KV bucket is, made here rather than with
        // `create_key_value`: that one first reads the account info, whose
        // shape on nats-server 2.9 async-nats no longer parses.
        let err = match js.get_key_value(&name).await {
            Ok(store) => return Ok(store),
            Err(_) => match js
                .get_or_create_stream(stream::Config {
                    name: format!("KV_{name}"),
                    subjects: vec![format!("$KV.{name}.>")],
                    max_messages_per_subject: history,
                    storage: stream::StorageType::File,
                    allow_rollup: true,
                    deny_delete: true,
                    allow_direct: true,
                    num_replicas: replicas,
                    discard: stream::DiscardPolicy::New,
                    ..Default::default()
                })
                .await
            {
                Ok(_) => match js.get_key_value(&name).await {
                    Ok(store) => return Ok(store),
                    Err(e) => e.to_string(),
                },
                Err(e) => e.to_string(),
            },
        };
        if Instant::now() >= deadline {
            return Err(FederationError::JetStream(format!(
                "cannot open or create the KV bucket {name} with {replicas} replica(s): {err}"
            )));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn bucket(
    js: &async_nats::jetstream::Context,
    name: String,
    replicas: usize,
    deadline: Instant,
) -> Result<Store, FederationError> {
    bucket_with_history(js, name, replicas, 1, deadline).await
}
