//! The key/value room: the store and who watches which keys. It answers
//! `KvSet`, `KvGet`, `KvDelete`, `KvWatch` and `KvUnwatch`, and tells
//! watchers of every change in order.

use std::collections::HashMap;

use bytes::Bytes;
use switchboard_wire::{proto, ErrorCode, Frame};

use super::common::{err, shown};
use super::kvstore::{Applied, KvError, KvStore};
use super::output::Output;
use crate::ids::{ConnId, IdMap};
use crate::limits::Limits;
use crate::outbox::Out;

/// A client's watch: the key (or prefix) and whether it is a prefix.
type Watch = (String, bool);

/// The store and its watchers.
#[derive(Debug, Default)]
pub(super) struct Kv {
    store: KvStore,
    /// Watchers of one key: `(client, watch_id)`, in watch order.
    exact: HashMap<String, Vec<(ConnId, u64)>>,
    /// Watchers of a prefix, in watch order.
    prefix: Vec<(String, ConnId, u64)>,
    /// Each client's watches by watch id.
    watches: IdMap<ConnId, IdMap<u64, Watch>>,
}

impl Kv {
    /// The store.
    pub fn store(&self) -> &KvStore {
        &self.store
    }

    /// Replaces the store (a restored snapshot's).
    pub fn set_store(&mut self, store: KvStore) {
        self.store = store;
    }

    /// Watches held by all clients.
    pub fn watch_count(&self) -> usize {
        self.watches.values().map(IdMap::len).sum()
    }

    /// Client `conn`'s watches, by watch id (as a snapshot lists them).
    pub fn watches_of(&self, conn: ConnId) -> Vec<proto::KvWatch> {
        let mut watches: Vec<proto::KvWatch> = self
            .watches
            .get(&conn)
            .into_iter()
            .flatten()
            .map(|(watch_id, (key, prefix))| proto::KvWatch {
                id: 0,
                watch_id: *watch_id,
                key: key.clone(),
                prefix: *prefix,
            })
            .collect();
        watches.sort_by_key(|w| w.watch_id);
        watches
    }

    /// Forgets client `conn`'s watches (it left).
    pub fn forget(&mut self, conn: ConnId) {
        let Some(watches) = self.watches.remove(&conn) else {
            return;
        };
        for (watch_id, (key, prefix)) in &watches {
            self.remove_entry(conn, *watch_id, key, *prefix);
        }
    }

    /// Forgets every watch (shutdown); the store stays.
    pub fn clear_watches(&mut self) {
        self.exact.clear();
        self.prefix.clear();
        self.watches.clear();
    }

    /// `KvGet`: the value, its version, and whether it exists.
    pub fn get(&self, out: &mut Output, conn: ConnId, g: proto::KvGet) {
        let cur = self.store.get(&g.key);
        let value = proto::KvValue {
            id: g.id,
            key: g.key,
            value: cur.value,
            version: cur.version,
            found: cur.found,
        };
        out.send(conn, value.into());
    }

    /// `KvSet`: answered with the new version (not the value); watchers
    /// are told.
    pub fn set(&mut self, out: &mut Output, conn: ConnId, s: proto::KvSet, limits: &Limits) {
        if let Some(refusal) = self.refuse_set(&s, limits) {
            return out.send(conn, refusal);
        }
        match self.store.set(
            &s.key,
            s.value.clone(),
            s.expect_version,
            limits.kv_max_keys,
        ) {
            Ok(version) => {
                let by = out.id(conn).to_owned();
                let value = proto::KvValue {
                    id: s.id,
                    key: s.key.clone(),
                    value: Bytes::new(),
                    version,
                    found: true,
                };
                out.send(conn, value.into());
                self.changed(out, &s.key, s.value, version, false, &by);
            }
            Err(KvError::VersionMismatch { current, found }) => {
                let msg = version_mismatch(&s.key, s.expect_version.unwrap_or(0), current, found);
                out.send(conn, err(s.id, ErrorCode::VersionMismatch, msg));
            }
            Err(KvError::TooManyKeys) => {
                let msg = format!(
                    "the store holds {} keys, its limit; delete some first",
                    self.store.live_keys()
                );
                out.send(conn, err(s.id, ErrorCode::LimitExceeded, msg));
            }
            Err(KvError::NotFound) => {
                out.send(conn, err(s.id, ErrorCode::NotFound, "key does not exist"));
            }
        }
    }

    /// The error answer to a `KvSet` whose key or value breaks the
    /// limits, if it does (checked before the store or the remote seam
    /// sees it).
    pub fn refuse_set(&self, s: &proto::KvSet, limits: &Limits) -> Option<Frame> {
        if let Err(e) = validate_client_key(&s.key, limits.kv_max_key, false) {
            return Some(err(s.id, ErrorCode::InvalidArgument, e));
        }
        if s.value.len() > limits.kv_max_value {
            let msg = format!(
                "value of {} bytes exceeds the limit of {} bytes; store something smaller",
                s.value.len(),
                limits.kv_max_value
            );
            return Some(err(s.id, ErrorCode::LimitExceeded, msg));
        }
        None
    }

    /// A change of the shared store the remote seam reports (see
    /// [`Remote::kv`](super::remote::Remote::kv)): kept in the local
    /// store (a cache) and told to the watchers, unless the cache holds
    /// that key at this version or a later one already. The cache holds
    /// at most `kv_max_keys` live keys: a change that would add one more
    /// is told to the watchers but not kept (a later watch's initial
    /// values lack it; reads go to the shared store).
    pub fn remote_change(&mut self, out: &mut Output, u: proto::KvUpdate, limits: &Limits) {
        let applied = self.store.apply(
            &u.key,
            u.value.clone(),
            u.version,
            u.deleted,
            limits.kv_max_keys,
            limits.kv_max_tombstones,
        );
        if applied != Applied::Stale {
            let value = if u.deleted { Bytes::new() } else { u.value };
            self.changed(out, &u.key, value, u.version, u.deleted, &u.by);
        }
    }

    /// `KvDelete`: answered with the deletion's version; watchers are
    /// told.
    pub fn delete(&mut self, out: &mut Output, conn: ConnId, d: proto::KvDelete, limits: &Limits) {
        match self
            .store
            .delete(&d.key, d.expect_version, limits.kv_max_tombstones)
        {
            Ok(version) => {
                let by = out.id(conn).to_owned();
                let value = proto::KvValue {
                    id: d.id,
                    key: d.key.clone(),
                    value: Bytes::new(),
                    version,
                    found: false,
                };
                out.send(conn, value.into());
                self.changed(out, &d.key, Bytes::new(), version, true, &by);
            }
            Err(KvError::NotFound) => {
                let msg = format!(
                    "key '{}' does not exist; nothing was deleted",
                    shown(&d.key)
                );
                out.send(conn, err(d.id, ErrorCode::NotFound, msg));
            }
            Err(KvError::VersionMismatch { current, found }) => {
                let msg = version_mismatch(&d.key, d.expect_version.unwrap_or(0), current, found);
                out.send(conn, err(d.id, ErrorCode::VersionMismatch, msg));
            }
            Err(KvError::TooManyKeys) => {}
        }
    }

    /// `KvWatch`: `Ok`, then the current value(s) as updates, then every
    /// change.
    pub fn watch(&mut self, out: &mut Output, conn: ConnId, w: proto::KvWatch, limits: &Limits) {
        if let Err(e) = validate_client_key(&w.key, limits.kv_max_key, w.prefix) {
            return out.send(conn, err(w.id, ErrorCode::InvalidArgument, e));
        }
        let watches = self.watches.entry(conn).or_default();
        if watches.contains_key(&w.watch_id) {
            let msg = format!(
                "watch id {} is already in use on this connection; pick another id or unwatch first",
                w.watch_id
            );
            return out.send(conn, err(w.id, ErrorCode::InvalidArgument, msg));
        }
        if watches.len() >= limits.max_watches {
            let msg = format!(
                "this connection already has {} watches, the limit; unwatch some first",
                watches.len()
            );
            return out.send(conn, err(w.id, ErrorCode::LimitExceeded, msg));
        }
        watches.insert(w.watch_id, (w.key.clone(), w.prefix));
        let Some(outbox) = out.outbox(conn).cloned() else {
            return;
        };
        out.push(conn, &outbox, Out::from(Frame::ok(w.id)));
        let initial: Vec<proto::KvUpdate> = if w.prefix {
            self.store
                .prefixed(&w.key)
                .map(|(k, v, version)| proto::KvUpdate {
                    watch_id: w.watch_id,
                    key: k.to_owned(),
                    value: v.clone(),
                    version,
                    deleted: false,
                    by: String::new(),
                })
                .collect()
        } else {
            let cur = self.store.get(&w.key);
            if cur.found {
                vec![proto::KvUpdate {
                    watch_id: w.watch_id,
                    key: w.key.clone(),
                    value: cur.value,
                    version: cur.version,
                    deleted: false,
                    by: String::new(),
                }]
            } else {
                Vec::new()
            }
        };
        for update in initial {
            out.push(conn, &outbox, Out::from(Frame::from(update)));
        }
        if w.prefix {
            self.prefix.push((w.key, conn, w.watch_id));
        } else {
            self.exact
                .entry(w.key)
                .or_default()
                .push((conn, w.watch_id));
        }
    }

    /// `KvUnwatch`: `Ok`, or `NOT_FOUND` for an unknown watch id.
    pub fn unwatch(&mut self, out: &mut Output, conn: ConnId, u: proto::KvUnwatch) {
        let found = self
            .watches
            .get_mut(&conn)
            .and_then(|w| w.remove(&u.watch_id));
        match found {
            Some((key, prefix)) => {
                self.remove_entry(conn, u.watch_id, &key, prefix);
                out.send(conn, Frame::ok(u.id));
            }
            None => {
                let msg = format!("no watch with id {} on this connection", u.watch_id);
                out.send(conn, err(u.id, ErrorCode::NotFound, msg));
            }
        }
    }

    /// Tells the watchers of `key` about a change, exact watchers first.
    fn changed(
        &self,
        out: &mut Output,
        key: &str,
        value: Bytes,
        version: u64,
        deleted: bool,
        by: &str,
    ) {
        let exact = self.exact.get(key).into_iter().flatten().copied();
        let prefix = self
            .prefix
            .iter()
            .filter(|(p, _, _)| key.starts_with(p.as_str()))
            .map(|(_, c, w)| (*c, *w));
        for (conn, watch_id) in exact.chain(prefix) {
            let update = proto::KvUpdate {
                watch_id,
                key: key.to_owned(),
                value: value.clone(),
                version,
                deleted,
                by: by.to_owned(),
            };
            out.send(conn, update.into());
        }
    }

    fn remove_entry(&mut self, conn: ConnId, watch_id: u64, key: &str, prefix: bool) {
        if prefix {
            self.prefix
                .retain(|(k, c, w)| !(*c == conn && *w == watch_id && k == key));
        } else if let Some(list) = self.exact.get_mut(key) {
            list.retain(|(c, w)| !(*c == conn && *w == watch_id));
            if list.is_empty() {
                self.exact.remove(key);
            }
        }
    }
}

/// Why a compare-and-set failed, and what to do.
fn version_mismatch(key: &str, expect: u64, current: u64, found: bool) -> String {
    let key = shown(key);
    match (found, expect) {
        (true, 0) => {
            format!("key '{key}' already exists at version {current}; read it and retry")
        }
        (true, _) => {
            format!("key '{key}' is at version {current}, not {expect}; read it and retry")
        }
        (false, _) => {
            format!("key '{key}' does not exist (expected version {expect}); read it and retry")
        }
    }
}

/// Checks a key/value key chosen by a client; the error says what to mend.
fn validate_client_key(key: &str, max: usize, allow_empty: bool) -> Result<(), String> {
    if key.is_empty() && !allow_empty {
        return Err("key is empty; use a non-empty key".into());
    }
    if key.len() > max {
        return Err(format!(
            "key is {} bytes, more than the limit of {max}; use a shorter key",
            key.len()
        ));
    }
    if key.chars().any(char::is_control) {
        return Err("key contains a control character; use printable text".into());
    }
    Ok(())
}
