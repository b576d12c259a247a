//! The hub's key/value store: versioned values with deletion markers.

use std::collections::{BTreeMap, VecDeque};

use bytes::Bytes;
use switchboard_wire::proto;

/// Why a key/value change was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum KvError {
    /// Compare-and-set failed; `current` is the key's version (0 if it never
    /// existed) and `found` whether it exists.
    VersionMismatch { current: u64, found: bool },
    /// The key does not exist.
    NotFound,
    /// The store holds its maximum number of live keys.
    TooManyKeys,
}

#[derive(Debug, Clone)]
struct Entry {
    value: Bytes,
    version: u64,
    deleted: bool,
}

/// What [`KvStore::apply`] did with a change made elsewhere.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Applied {
    /// Kept: the store holds the change.
    Kept,
    /// Ignored: the store holds the key at that version or a later one.
    Stale,
    /// Not kept: it would be a live key beyond the store's limit.
    Uncached,
}

/// A key's state as seen by a reader.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Current {
    pub value: Bytes,
    pub version: u64,
    pub found: bool,
}

/// Versioned key/value map. Every key's version grows by one per change and
/// never repeats: deleted keys keep a marker with their last version (up to
/// a bound; forgotten markers raise `floor`, which new keys start above).
#[derive(Debug, Default)]
pub(crate) struct KvStore {
    map: BTreeMap<String, Entry>,
    live: usize,
    tombstones: usize,
    /// Deletions in order, `(key, version)`; may hold stale entries for
    /// keys set again since.
    deletions: VecDeque<(String, u64)>,
    floor: u64,
}

impl KvStore {
    pub(crate) fn live_keys(&self) -> usize {
        self.live
    }

    pub(crate) fn tombstones(&self) -> usize {
        self.tombstones
    }

    pub(crate) fn get(&self, key: &str) -> Current {
        match self.map.get(key) {
            Some(e) if !e.deleted => Current {
                value: e.value.clone(),
                version: e.version,
                found: true,
            },
            Some(e) => Current {
                value: Bytes::new(),
                version: e.version,
                found: false,
            },
            None => Current {
                value: Bytes::new(),
                version: 0,
                found: false,
            },
        }
    }

    fn check(&self, key: &str, expect: Option<u64>) -> Result<(), KvError> {
        let Some(expect) = expect else {
            return Ok(());
        };
        let cur = self.get(key);
        let ok = match expect {
            0 => !cur.found,
            v => cur.found && cur.version == v,
        };
        if ok {
            Ok(())
        } else {
            Err(KvError::VersionMismatch {
                current: cur.version,
                found: cur.found,
            })
        }
    }

    /// Sets `key`; returns the new version.
    pub(crate) fn set(
        &mut self,
        key: &str,
        value: Bytes,
        expect: Option<u64>,
        max_keys: usize,
    ) -> Result<u64, KvError> {
        self.check(key, expect)?;
        match self.map.get_mut(key) {
            Some(e) => {
                if e.deleted {
                    if self.live >= max_keys {
                        return Err(KvError::TooManyKeys);
                    }
                    e.deleted = false;
                    self.live += 1;
                    self.tombstones -= 1;
                }
                e.version += 1;
                e.value = value;
                Ok(e.version)
            }
            None => {
                if self.live >= max_keys {
                    return Err(KvError::TooManyKeys);
                }
                let version = self.floor + 1;
                self.map.insert(
                    key.to_owned(),
                    Entry {
                        value,
                        version,
                        deleted: false,
                    },
                );
                self.live += 1;
                Ok(version)
            }
        }
    }

    /// Deletes `key`; returns the deletion's version.
    pub(crate) fn delete(
        &mut self,
        key: &str,
        expect: Option<u64>,
        max_tombstones: usize,
    ) -> Result<u64, KvError> {
        match self.map.get(key) {
            Some(e) if !e.deleted => {}
            _ => return Err(KvError::NotFound),
        }
        self.check(key, expect)?;
        let Some(e) = self.map.get_mut(key) else {
            return Err(KvError::NotFound);
        };
        e.version += 1;
        e.deleted = true;
        e.value = Bytes::new();
        let version = e.version;
        self.live -= 1;
        self.tombstones += 1;
        self.deletions.push_back((key.to_owned(), version));
        self.trim_tombstones(max_tombstones);
        Ok(version)
    }

    /// Takes a change made elsewhere (the shared store of a federation):
    /// `key` at `version`, set to `value` or deleted. [`Applied::Stale`]
    /// (nothing changed) when the store holds `key` at `version` or a
    /// later one; [`Applied::Uncached`] (nothing kept) when the change
    /// would make the store hold more than `max_keys` live keys — the
    /// store is then a cache bounded like a local one, whatever other
    /// hubs or writers put in the shared store.
    pub(crate) fn apply(
        &mut self,
        key: &str,
        value: Bytes,
        version: u64,
        deleted: bool,
        max_keys: usize,
        max_tombstones: usize,
    ) -> Applied {
        let was = match self.map.get(key) {
            Some(e) if e.version >= version => return Applied::Stale,
            Some(e) => Some(e.deleted),
            None => None,
        };
        if !deleted && was != Some(false) && self.live >= max_keys {
            return Applied::Uncached;
        }
        match (was, deleted) {
            (Some(false), true) => {
                self.live -= 1;
                self.tombstones += 1;
            }
            (Some(true), false) => {
                self.live += 1;
                self.tombstones -= 1;
            }
            (None, true) => self.tombstones += 1,
            (None, false) => self.live += 1,
            (Some(_), _) => {}
        }
        let value = if deleted { Bytes::new() } else { value };
        self.map.insert(
            key.to_owned(),
            Entry {
                value,
                version,
                deleted,
            },
        );
        if deleted {
            self.deletions.push_back((key.to_owned(), version));
            self.trim_tombstones(max_tombstones);
        }
        Applied::Kept
    }

    fn trim_tombstones(&mut self, max: usize) {
        while self.tombstones > max {
            let Some((key, version)) = self.deletions.pop_front() else {
                break;
            };
            if matches!(self.map.get(&key), Some(e) if e.deleted && e.version == version) {
                self.map.remove(&key);
                self.tombstones -= 1;
                self.floor = self.floor.max(version);
            }
        }
        // Stale entries (keys set again after deletion) are compacted away
        // so the log stays proportional to the live markers.
        if self.deletions.len() > 2 * max.max(16) {
            let map = &self.map;
            self.deletions
                .retain(|(k, v)| matches!(map.get(k), Some(e) if e.deleted && e.version == *v));
        }
    }

    /// Live entries whose key starts with `prefix`, in key order.
    pub(crate) fn prefixed<'a>(
        &'a self,
        prefix: &'a str,
    ) -> impl Iterator<Item = (&'a str, &'a Bytes, u64)> + 'a {
        self.map
            .range::<str, _>((
                std::ops::Bound::Included(prefix),
                std::ops::Bound::Unbounded,
            ))
            .take_while(move |(k, _)| k.starts_with(prefix))
            .filter(|(_, e)| !e.deleted)
            .map(|(k, e)| (k.as_str(), &e.value, e.version))
    }

    /// Every entry, markers included, for a snapshot: live entries in key
    /// order, then the deletion markers in the order they were made (the
    /// order in which they are forgotten, so a restored store forgets the
    /// same ones).
    pub(crate) fn entries(&self) -> Vec<proto::KvEntry> {
        let mut out: Vec<proto::KvEntry> = self
            .map
            .iter()
            .filter(|(_, e)| !e.deleted)
            .map(|(k, e)| proto::KvEntry {
                key: k.clone(),
                value: e.value.clone(),
                version: e.version,
                deleted: false,
            })
            .collect();
        out.extend(
            self.deletions
                .iter()
                .filter(|(k, v)| matches!(self.map.get(k), Some(e) if e.deleted && e.version == *v))
                .map(|(k, v)| proto::KvEntry {
                    key: k.clone(),
                    value: Bytes::new(),
                    version: *v,
                    deleted: true,
                }),
        );
        out
    }

    /// The highest version of a forgotten deletion marker; new keys start
    /// above it.
    pub(crate) fn floor(&self) -> u64 {
        self.floor
    }

    /// Rebuilds a store from [`KvStore::entries`] and [`KvStore::floor`].
    pub(crate) fn restore(entries: &[proto::KvEntry], floor: u64) -> Result<KvStore, String> {
        let mut kv = KvStore {
            floor,
            ..KvStore::default()
        };
        for e in entries {
            if e.version == 0 {
                return Err(format!("key/value entry '{}' has version 0", e.key));
            }
            if e.deleted && !e.value.is_empty() {
                return Err(format!("deletion marker '{}' carries a value", e.key));
            }
            let entry = Entry {
                value: e.value.clone(),
                version: e.version,
                deleted: e.deleted,
            };
            if kv.map.insert(e.key.clone(), entry).is_some() {
                return Err(format!("key/value entry '{}' appears twice", e.key));
            }
            if e.deleted {
                kv.tombstones += 1;
                kv.deletions.push_back((e.key.clone(), e.version));
            } else {
                kv.live += 1;
            }
        }
        Ok(kv)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_cas_and_markers() {
        let mut kv = KvStore::default();
        assert_eq!(kv.set("a", "1".into(), None, 10), Ok(1));
        assert_eq!(kv.set("a", "2".into(), Some(1), 10), Ok(2));
        assert_eq!(
            kv.set("a", "x".into(), Some(1), 10),
            Err(KvError::VersionMismatch {
                current: 2,
                found: true
            })
        );
        assert_eq!(
            kv.set("a", "x".into(), Some(0), 10),
            Err(KvError::VersionMismatch {
                current: 2,
                found: true
            })
        );
        assert_eq!(kv.get("a").value, Bytes::from("2"));
        assert_eq!(
            kv.delete("a", Some(1), 10),
            Err(KvError::VersionMismatch {
                current: 2,
                found: true
            })
        );
        assert_eq!(kv.delete("a", None, 10), Ok(3));
        assert_eq!(kv.delete("a", None, 10), Err(KvError::NotFound));
        assert_eq!(
            kv.get("a"),
            Current {
                value: Bytes::new(),
                version: 3,
                found: false
            }
        );
        // Re-created after deletion: the version continues, never repeats.
        assert_eq!(kv.set("a", "3".into(), Some(0), 10), Ok(4));
        assert_eq!(kv.live_keys(), 1);
        assert_eq!(kv.tombstones(), 0);
        assert_eq!(kv.set("b", "1".into(), None, 1), Err(KvError::TooManyKeys));
    }

    #[test]
    fn forgotten_markers_raise_the_floor() {
        let mut kv = KvStore::default();
        let mut deleted_at = Vec::new();
        for i in 0..10 {
            let key = format!("k{i}");
            let v1 = kv.set(&key, "v".into(), None, 100).unwrap();
            assert_eq!(kv.set(&key, "v".into(), None, 100), Ok(v1 + 1));
            deleted_at.push(kv.delete(&key, None, 3).unwrap());
        }
        assert_eq!(kv.tombstones(), 3);
        assert_eq!(kv.get("k0").version, 0, "oldest marker forgotten");
        assert_eq!(kv.get("k9").version, deleted_at[9], "recent markers kept");
        // A key whose marker was forgotten restarts above every forgotten
        // version, so it never repeats one.
        let forgotten_max = deleted_at[..7].iter().copied().max().unwrap();
        assert_eq!(kv.set("k0", "v".into(), None, 100), Ok(forgotten_max + 1));
        // A marker still kept continues its key's versions.
        assert_eq!(kv.set("k9", "v".into(), None, 100), Ok(deleted_at[9] + 1));
        // Churn on one key keeps the deletion log bounded.
        for _ in 0..1000 {
            kv.set("churn", "v".into(), None, 100).unwrap();
            kv.delete("churn", None, 3).unwrap();
        }
        assert!(kv.deletions.len() <= 2 * 16 + 1);
    }

    #[test]
    fn changes_from_elsewhere_apply_in_version_order() {
        let mut kv = KvStore::default();
        let kept = Applied::Kept;
        assert_eq!(kv.apply("a", "1".into(), 5, false, 10, 10), kept);
        assert_eq!(
            kv.apply("a", "old".into(), 4, false, 10, 10),
            Applied::Stale,
            "older: ignored"
        );
        assert_eq!(
            kv.apply("a", "1".into(), 5, false, 10, 10),
            Applied::Stale,
            "repeated: ignored"
        );
        assert_eq!(kv.get("a").value, Bytes::from("1"));
        assert_eq!(kv.apply("a", Bytes::new(), 9, true, 10, 10), kept);
        assert_eq!((kv.live_keys(), kv.tombstones()), (0, 1));
        assert_eq!(kv.apply("a", "2".into(), 12, false, 10, 10), kept);
        assert_eq!(kv.get("a").version, 12);
        assert_eq!(kv.apply("b", Bytes::new(), 13, true, 10, 10), kept);
        assert_eq!((kv.live_keys(), kv.tombstones()), (1, 1));
    }

    #[test]
    fn changes_from_elsewhere_never_grow_past_the_key_limit() {
        let mut kv = KvStore::default();
        assert_eq!(kv.apply("a", "1".into(), 1, false, 2, 10), Applied::Kept);
        assert_eq!(kv.apply("b", "1".into(), 2, false, 2, 10), Applied::Kept);
        // A third live key is not kept; nor is a deleted key set again.
        assert_eq!(
            kv.apply("c", "1".into(), 3, false, 2, 10),
            Applied::Uncached
        );
        assert_eq!(kv.get("c").version, 0);
        // Live keys change as before; a delete frees room.
        assert_eq!(kv.apply("a", "2".into(), 4, false, 2, 10), Applied::Kept);
        assert_eq!(kv.apply("a", Bytes::new(), 5, true, 2, 10), Applied::Kept);
        assert_eq!(kv.apply("b", Bytes::new(), 6, true, 2, 10), Applied::Kept);
        assert_eq!(kv.apply("c", "1".into(), 7, false, 2, 10), Applied::Kept);
        assert_eq!(kv.apply("a", "3".into(), 8, false, 2, 10), Applied::Kept);
        assert_eq!(
            kv.apply("b", "3".into(), 9, false, 2, 10),
            Applied::Uncached
        );
        assert_eq!((kv.live_keys(), kv.tombstones()), (2, 1));
    }

    #[test]
    fn prefix_scan() {
        let mut kv = KvStore::default();
        for k in ["app.a", "app.b", "apq", "ap", "app.c"] {
            kv.set(k, k.as_bytes().to_vec().into(), None, 100).unwrap();
        }
        kv.delete("app.b", None, 100).unwrap();
        let keys: Vec<&str> = kv.prefixed("app.").map(|(k, _, _)| k).collect();
        assert_eq!(keys, vec!["app.a", "app.c"]);
        assert_eq!(kv.prefixed("").count(), 4);
        assert_eq!(kv.entries().len(), 5);
    }
}
