//! The hub's own integer ids: [`ConnId`], and hash maps keyed by such ids
//! (connection ids, group ids) with a cheap hasher: the keys are assigned
//! by the hub, not chosen by clients.

use std::collections::{HashMap, HashSet};
use std::hash::{BuildHasherDefault, Hasher};

/// Identifies one connection to the hub (assigned by the hub, never reused
/// while the hub runs).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConnId(pub u64);

impl std::fmt::Display for ConnId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "c{}", self.0)
    }
}

/// A cheap hasher for the router's integer keys (connection ids are
/// assigned by the hub, not chosen by clients).
#[derive(Default, Clone, Copy)]
pub(crate) struct IdHasher(u64);

impl Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.write_u64(u64::from(*b));
        }
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = (self.0.rotate_left(5) ^ n).wrapping_mul(0x51_7c_c1_b7_27_22_0a_95);
    }
    fn write_usize(&mut self, n: usize) {
        self.write_u64(n as u64);
    }
}

pub(crate) type IdMap<K, V> = HashMap<K, V, BuildHasherDefault<IdHasher>>;

/// A hash map keyed by text that clients choose (client ids, topics),
/// looked up for every message (a standby looks up two or three client
/// ids per confirmed publish). With foldhash (the default hasher of
/// hashbrown) instead of std's SipHash-1-3 a standby's client id lookup
/// took about half the instructions (docs/OPTIMISATION-LOG.md, "Hand-encoded
/// `Publish` and `Ok`, foldhash for client ids").
/// Clients choose these keys, so a fixed hash would let them
/// fill one bucket on purpose (HashDoS); every map gets its own random
/// seed, derived from a per-process random one, which an attacker cannot
/// compute collisions against without reading the process's state.
/// foldhash does not claim more than that (it is not a keyed PRF like
/// SipHash): registering ids needs admission, and every map is bounded by
/// the hub's limits.
pub(crate) type TextMap<K, V> = HashMap<K, V, foldhash::fast::RandomState>;
pub(crate) type IdSet<K> = HashSet<K, BuildHasherDefault<IdHasher>>;
