//! Writing this hub's ids into the id bucket: registering a client's id
//! (and losing a race for it), writing every local id again after an
//! outage, releasing an id, and a standby's takeover of its primary's
//! ids with a raised epoch. The watch side (what the bucket says) is in
//! the parent module.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::kv::{self, Operation};
use futures::StreamExt;
use switchboard_hub::port::PortSender;
use switchboard_wire::ErrorCode;
use tokio::sync::mpsc;

use super::{Command, Directory, Holder};
use crate::subject::{escape, unescape};

/// First pause before an id write is tried again.
const RETRY_MIN: Duration = Duration::from_millis(100);
/// Longest pause between tries.
const RETRY_MAX: Duration = Duration::from_secs(2);
/// Tries of one release (then the lease releases it).
const RELEASE_TRIES: usize = 20;

/// What one attempt to write an id found.
#[derive(Debug)]
enum Registered {
    /// Written at this revision.
    Written(u64),
    /// Another live hub holds it (this entry, at this revision).
    Lost(Holder, u64),
    /// The entry names this hub with a higher epoch: fenced.
    Fenced,
}

/// The pauses between tries of one id write: from `RETRY_MIN`,
/// doubling up to `RETRY_MAX`.
struct Backoff(Duration);

impl Backoff {
    fn new() -> Backoff {
        Backoff(RETRY_MIN)
    }

    /// Sleeps the pause, and doubles the next one.
    async fn wait(&mut self) {
        tokio::time::sleep(self.0).await;
        self.0 = (self.0 * 2).min(RETRY_MAX);
    }
}

impl Directory {
    /// The ids the copy of the bucket shows held by this hub.
    fn held_here(&self) -> Vec<String> {
        let st = self.state.lock();
        st.ids
            .iter()
            .filter(|(_, (h, _))| h.hub == self.me)
            .map(|(id, _)| id.clone())
            .collect()
    }

    /// The value of an id's entry held by this hub at `epoch`.
    fn holder_value(&self, epoch: u64) -> bytes::Bytes {
        serde_json::to_vec(&Holder {
            hub: self.me.clone(),
            epoch,
        })
        .expect("a holder serializes")
        .into()
    }

    /// A standby takes over: leaves standby mode with the epoch one above
    /// the newest seen for this hub's name (at least the configured one),
    /// heartbeats at once, and rewrites each id the bucket shows under
    /// this hub's name with the new epoch, each an `update` at the
    /// revision read (the fencing token: a write of the old primary in
    /// between makes it fail, and it is read and tried again). Returns
    /// the new epoch.
    pub(crate) async fn activate(&self) -> u64 {
        // Read from the buckets, not only from the watches (they may not
        // have caught up yet when the standby takes over at once).
        let mut ours: std::collections::BTreeSet<String> = self.held_here().into_iter().collect();
        let mut held = 0;
        let mut backoff = Backoff::new();
        loop {
            match self.listed_ids().await {
                Ok(listed) => {
                    for (id, h) in listed {
                        if h.hub == self.me {
                            held = held.max(h.epoch);
                            ours.insert(id);
                        }
                    }
                    break;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "federation: cannot list the ids to take over yet; trying again");
                    backoff.wait().await;
                }
            }
        }
        let beat = match self.hubs.entry(escape(&self.me)).await {
            Ok(Some(e)) => std::str::from_utf8(&e.value)
                .ok()
                .and_then(|v| v.trim().parse::<u64>().ok())
                .unwrap_or(0),
            _ => 0,
        };
        let epoch = (self.newest_epoch(&self.me).max(held).max(beat) + 1).max(self.epoch());
        {
            let mut st = self.state.lock();
            let e = st.epochs.entry(self.me.clone()).or_insert(0);
            *e = (*e).max(epoch);
        }
        self.epoch.store(epoch, Ordering::Release);
        self.standby.store(false, Ordering::Release);
        tracing::warn!(hub = %self.me, epoch, "federation: taking over this hub's name in the cluster");
        let mut backoff = Backoff::new();
        while let Err(e) = self.beat().await {
            tracing::warn!(error = %e, "federation: first heartbeat after the takeover failed; trying again");
            backoff.wait().await;
        }
        let value = self.holder_value(epoch);
        for id in ours {
            self.local.lock().insert(id.clone());
            let key = escape(&id);
            let mut backoff = Backoff::new();
            for _ in 0..RELEASE_TRIES {
                let entry = match self.ids.entry(&key).await {
                    Ok(Some(entry)) if entry.operation == Operation::Put => entry,
                    Ok(_) => break,
                    Err(e) => {
                        tracing::debug!(client = %id, error = %e, "federation: cannot read an id to take over yet");
                        backoff.wait().await;
                        continue;
                    }
                };
                match serde_json::from_slice::<Holder>(&entry.value) {
                    Ok(h) if h.hub == self.me && h.epoch < epoch => {}
                    _ => break,
                }
                match self.ids.update(&key, value.clone(), entry.revision).await {
                    Ok(rev) => {
                        self.stats.taken_over.fetch_add(1, Ordering::Relaxed);
                        self.stats.written.fetch_add(1, Ordering::Relaxed);
                        let mut st = self.state.lock();
                        let newer = st.ids.get(&id).is_some_and(|(_, r)| *r > rev);
                        if !newer {
                            st.ids.insert(
                                id.clone(),
                                (
                                    Holder {
                                        hub: self.me.clone(),
                                        epoch,
                                    },
                                    rev,
                                ),
                            );
                        }
                        break;
                    }
                    Err(e) => {
                        // The revision moved (the old primary wrote) or
                        // the cluster did not answer: read again.
                        tracing::debug!(client = %id, error = %e, "federation: id not taken over yet; trying again");
                        backoff.wait().await;
                    }
                }
            }
        }
        epoch
    }

    /// Every id in the bucket with its holder, read from the bucket.
    async fn listed_ids(&self) -> Result<Vec<(String, Holder)>, String> {
        let mut keys = self.ids.keys().await.map_err(|e| e.to_string())?;
        let mut out = Vec::new();
        while let Some(key) = keys.next().await {
            let key = key.map_err(|e| e.to_string())?;
            let Some(id) = unescape(&key) else { continue };
            if let Ok(Some(entry)) = self.ids.entry(&key).await {
                if let Ok(h) = serde_json::from_slice::<Holder>(&entry.value) {
                    out.push((id, h));
                }
            }
        }
        Ok(out)
    }

    /// Deletes every entry this hub holds, and its heartbeat.
    pub(crate) async fn release_all(&self) {
        let mine = self.held_here();
        for id in mine {
            self.release(&id).await;
        }
        let _ = self.hubs.delete(escape(&self.me)).await;
    }

    pub(super) async fn commands(self: Arc<Self>, mut rx: mpsc::Receiver<Command>) {
        while let Some(c) = rx.recv().await {
            if self.is_fenced() {
                continue;
            }
            match c {
                Command::Join(id) => self.register(&id, false).await,
                Command::Reclaim(id) => self.register(&id, true).await,
                Command::Leave(id) => self.release(&id).await,
            }
        }
    }

    /// Writes `id` as held here, trying again (backing off up to 2 s)
    /// while the cluster does not answer (a node lost, a leader being
    /// elected), until written, lost to another hub, or left here.
    /// `reclaim`: the id was written here before and released by another
    /// hub while this one was cut off; losing it then is a take-back.
    async fn register(&self, id: &str, reclaim: bool) {
        let key = escape(id);
        let value = self.holder_value(self.epoch());
        let mut backoff = Backoff::new();
        while self.holder(id).as_deref() == Some(self.me.as_str()) {
            match self.try_register(id, &key, &value).await {
                Ok(Registered::Written(rev)) => {
                    self.stats.written.fetch_add(1, Ordering::Relaxed);
                    let mut st = self.state.lock();
                    if let Some((h, r)) = st.ids.get_mut(id) {
                        if h.hub == self.me {
                            *r = (*r).max(rev);
                        }
                    }
                    return;
                }
                Ok(Registered::Lost(winner, rev)) => {
                    self.lost_race(id, winner, rev, reclaim).await;
                    return;
                }
                Ok(Registered::Fenced) => return,
                Err(e) => {
                    tracing::warn!(client = %id, error = %e, "federation: could not register an id yet; trying again");
                    backoff.wait().await;
                }
            }
        }
    }

    /// After a reconnection to the cluster: writes each id registered on
    /// this hub again (after the lease the other hubs released them), and
    /// closes through `port` with `ID_TAKEN_OVER` each local client whose
    /// id another live hub holds now. Tries each id again, backing off,
    /// while the cluster does not answer and the client is still here.
    pub(crate) async fn reregister(&self, port: &PortSender) {
        let mine: Vec<String> = self.local.lock().iter().cloned().collect();
        for id in mine {
            let key = escape(&id);
            let value = self.holder_value(self.epoch());
            let mut backoff = Backoff::new();
            while self.local.lock().contains(&id) {
                match self.try_register(&id, &key, &value).await {
                    Ok(Registered::Written(rev)) => {
                        self.stats.written.fetch_add(1, Ordering::Relaxed);
                        let mut st = self.state.lock();
                        let newer = st
                            .ids
                            .get(&id)
                            .is_some_and(|(h, r)| h.hub != self.me && *r > rev);
                        if !newer {
                            st.ids.insert(
                                id.clone(),
                                (
                                    Holder {
                                        hub: self.me.clone(),
                                        epoch: self.epoch(),
                                    },
                                    rev,
                                ),
                            );
                        }
                        break;
                    }
                    Ok(Registered::Fenced) => break,
                    Ok(Registered::Lost(..)) => {
                        let hub = self.holder(&id).unwrap_or_default();
                        if let Some(close) = self.take_back(&id, &hub) {
                            port.close_client(&id, ErrorCode::IdTakenOver, close).await;
                        }
                        break;
                    }
                    Err(e) => {
                        tracing::debug!(client = %id, error = %e, "federation: could not register an id again yet; trying again");
                        backoff.wait().await;
                    }
                }
            }
        }
    }

    /// Another live hub (`hub`) registered `id`, which a local client
    /// holds, while this hub was cut off: the local client is to be
    /// closed with `ID_TAKEN_OVER`. Counted once per client: `None` when
    /// the id is no longer local here (closed already by the other path,
    /// or left); else the message to close it with.
    fn take_back(&self, id: &str, hub: &str) -> Option<String> {
        if !self.local.lock().remove(id) {
            return None;
        }
        self.stats.taken_back.fetch_add(1, Ordering::Relaxed);
        tracing::warn!(client = %id, hub = %hub, "federation: while this hub was cut off from the cluster, another hub registered one of its client ids; closing the local client");
        Some(format!(
            "client id '{id}' was registered on hub '{hub}' of this federation while this hub was cut off from the cluster; give each process its own id"
        ))
    }

    /// [`take_back`](Self::take_back) from the id watch (not async): the
    /// close is sent on a task of its own.
    pub(super) fn taken_back(&self, id: &str, hub: &str) {
        let Some(message) = self.take_back(id, hub) else {
            return;
        };
        let Some(port) = self.port.get().cloned() else {
            return;
        };
        let id = id.to_owned();
        tokio::spawn(async move {
            port.close_client(&id, ErrorCode::IdTakenOver, message)
                .await;
        });
    }

    /// Another live hub registered `id` before this hub's write reached
    /// the bucket (both admitted it within one watch delay): the bucket's
    /// entry (`winner` at `rev`) stands, as [`claim`](Self::claim) would
    /// have refused the local client had it known; that client is closed
    /// with `ID_TAKEN_OVER`, the code a refused duplicate gets. After a
    /// `reclaim` this is the take-back of [`reregister`](Self::reregister)
    /// reached first by the watch: counted and closed once, as there.
    async fn lost_race(&self, id: &str, winner: Holder, rev: u64, reclaim: bool) {
        let hub = winner.hub.clone();
        {
            // The watch skipped the winner's entry while ours was
            // pending: take it now (and tell presence of the join).
            let mut st = self.state.lock();
            let pending_ours = st
                .ids
                .get(id)
                .is_none_or(|(h, r)| h.hub == self.me || *r < rev);
            if pending_ours {
                st.ids.insert(id.to_owned(), (winner, rev));
                drop(st);
                self.tell(id, Some(&hub));
            }
        }
        if reclaim {
            let message = self.take_back(id, &hub);
            if let (Some(message), Some(port)) = (message, self.port.get()) {
                port.close_client(id, ErrorCode::IdTakenOver, message).await;
            }
            return;
        }
        let Some(port) = self.port.get() else {
            return;
        };
        tracing::warn!(client = %id, hub = %hub, "federation: id admitted here and on another hub at once; the other registered it first; closing the local client");
        let message = format!(
            "client id '{id}' is registered on hub '{hub}' of this federation; give each process its own id"
        );
        port.close_client(id, ErrorCode::IdTakenOver, message).await;
    }

    /// One attempt: the revision written, the entry of another live hub
    /// that holds the id (a race lost), fenced, or what failed.
    async fn try_register(
        &self,
        id: &str,
        key: &str,
        value: &bytes::Bytes,
    ) -> Result<Registered, String> {
        match self.ids.create(key, value.clone()).await {
            Ok(rev) => Ok(Registered::Written(rev)),
            Err(e) if e.kind() == kv::CreateErrorKind::AlreadyExists => {
                // Held: by us (an earlier registration), by a dead hub, or
                // by a live one that won a race.
                match self.ids.entry(key).await.map_err(|e| e.to_string())? {
                    Some(entry) => {
                        let holder: Option<Holder> = serde_json::from_slice(&entry.value).ok();
                        match holder {
                            Some(h) if h.hub == self.me && h.epoch > self.epoch() => {
                                // A standby took this hub's name over.
                                self.fence_now(h.epoch);
                                Ok(Registered::Fenced)
                            }
                            Some(h) if h.hub != self.me && self.is_live(&h.hub) => {
                                self.stats.races_lost.fetch_add(1, Ordering::Relaxed);
                                tracing::debug!(client = %id, hub = %h.hub, "federation: id registered here and on another hub at once; the bucket names the other");
                                Ok(Registered::Lost(h, entry.revision))
                            }
                            _ => self
                                .ids
                                .update(key, value.clone(), entry.revision)
                                .await
                                .map(Registered::Written)
                                .map_err(|e| e.to_string()),
                        }
                    }
                    None => self
                        .ids
                        .put(key, value.clone())
                        .await
                        .map(Registered::Written)
                        .map_err(|e| e.to_string()),
                }
            }
            Err(e) => Err(e.to_string()),
        }
    }

    /// Deletes `id` when this hub holds it in the bucket and no newer
    /// connection registered it here; tries again like [`register`](Self::register).
    async fn release(&self, id: &str) {
        let key = escape(id);
        let mut backoff = Backoff::new();
        for _ in 0..RELEASE_TRIES {
            // Registered here again (a new connection of the same id)?
            // Then keep it.
            if self.holder(id).as_deref() == Some(self.me.as_str()) {
                return;
            }
            let entry = match self.ids.entry(&key).await {
                Ok(Some(entry)) => entry,
                Ok(None) => return,
                Err(e) => {
                    tracing::debug!(client = %id, error = %e, "federation: cannot read an id to release; trying again");
                    backoff.wait().await;
                    continue;
                }
            };
            let holder: Option<Holder> = serde_json::from_slice(&entry.value).ok();
            if holder.is_none_or(|h| h.hub != self.me || h.epoch > self.epoch()) {
                return;
            }
            match self
                .ids
                .delete_expect_revision(&key, Some(entry.revision))
                .await
            {
                Ok(()) => return,
                Err(e) => {
                    tracing::debug!(client = %id, error = %e, "federation: id not released yet; trying again");
                    backoff.wait().await;
                }
            }
        }
    }
}
