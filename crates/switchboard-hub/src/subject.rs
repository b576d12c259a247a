//! Topics, subscription patterns and the subscription index.
//!
//! Topics are `.`-separated segments of non-empty UTF-8 without whitespace,
//! control characters, `*` or `>`. Patterns are topics whose segments may
//! also be `*` (exactly one segment) or, as the last segment only, `>` (one or
//! more remaining segments).
//!
//! The index is a trie over segments: matching a topic walks one path per
//! wildcard branch, so its cost grows with the topic's depth, not with the
//! number of subscriptions. Results are cached per topic until the next
//! subscription change, so a steady stream of publishes to the same topics
//! costs one hash lookup each; the cache is bounded in topics and in bytes
//! (`CACHE_MAX`, `CACHE_BYTES`) and cleared when full.

use std::sync::Arc;

use crate::ids::{ConnId, TextMap};
use crate::outbox::Outbox;

/// Why a topic or pattern was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SubjectError {
    /// The subject is empty.
    #[error("is empty")]
    Empty,
    /// The subject is longer than the configured limit.
    #[error("is longer than the limit")]
    TooLong,
    /// Two dots in a row, or a leading or trailing dot.
    #[error("has an empty segment")]
    EmptySegment,
    /// Whitespace or a control character.
    #[error("contains whitespace or a control character")]
    BadChar,
    /// A wildcard in a topic, or a wildcard mixed with other characters in a
    /// segment.
    #[error("uses '*' or '>' outside a whole pattern segment")]
    MisplacedWildcard,
    /// `>` before the last segment.
    #[error("uses '>' before the last segment")]
    GreaterNotLast,
}

fn check_common(subject: &str, max: usize) -> Result<(), SubjectError> {
    if subject.is_empty() {
        return Err(SubjectError::Empty);
    }
    if subject.len() > max {
        return Err(SubjectError::TooLong);
    }
    if subject.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(SubjectError::BadChar);
    }
    Ok(())
}

/// Checks a topic to publish to.
pub fn validate_topic(topic: &str, max: usize) -> Result<(), SubjectError> {
    check_common(topic, max)?;
    for seg in topic.split('.') {
        if seg.is_empty() {
            return Err(SubjectError::EmptySegment);
        }
        if seg.contains(['*', '>']) {
            return Err(SubjectError::MisplacedWildcard);
        }
    }
    Ok(())
}

/// Checks a subscription pattern.
pub fn validate_pattern(pattern: &str, max: usize) -> Result<(), SubjectError> {
    check_common(pattern, max)?;
    let mut segs = pattern.split('.').peekable();
    while let Some(seg) = segs.next() {
        if seg.is_empty() {
            return Err(SubjectError::EmptySegment);
        }
        match seg {
            "*" => {}
            ">" if segs.peek().is_some() => return Err(SubjectError::GreaterNotLast),
            ">" => {}
            _ if seg.contains(['*', '>']) => return Err(SubjectError::MisplacedWildcard),
            _ => {}
        }
    }
    Ok(())
}

/// Identifies a queue group inside the index.
pub(crate) type GroupId = u64;

/// One thing a pattern node delivers to.
#[derive(Debug, Clone)]
pub(crate) enum Target {
    /// A plain subscription.
    Sub {
        conn: ConnId,
        sub_id: u64,
        outbox: Arc<Outbox>,
    },
    /// A queue group: the router picks one member per message.
    Group(GroupId),
}

impl Target {
    fn is(&self, conn: ConnId, sub_id: u64) -> bool {
        matches!(self, Target::Sub { conn: c, sub_id: s, .. } if *c == conn && *s == sub_id)
    }
}

#[derive(Debug, Default)]
struct Node {
    children: TextMap<Box<str>, Node>,
    star: Option<Box<Node>>,
    /// Patterns ending exactly here.
    here: Vec<Target>,
    /// Patterns ending with `>` here (match one or more further segments).
    rest: Vec<Target>,
}

impl Node {
    fn is_empty(&self) -> bool {
        self.children.is_empty()
            && self.star.is_none()
            && self.here.is_empty()
            && self.rest.is_empty()
    }

    fn collect(&self, segs: &[&str], out: &mut Vec<Target>) {
        let Some((first, tail)) = segs.split_first() else {
            out.extend(self.here.iter().cloned());
            return;
        };
        out.extend(self.rest.iter().cloned());
        if let Some(child) = self.children.get(*first) {
            child.collect(tail, out);
        }
        if let Some(star) = &self.star {
            star.collect(tail, out);
        }
    }

    /// Removes the targets selected by `pred` at the end of `segs`; returns
    /// whether this node became empty.
    fn remove(&mut self, segs: &[&str], pred: &dyn Fn(&Target) -> bool) -> bool {
        match segs.split_first() {
            None => {}
            Some((&">", [])) => self.rest.retain(|t| !pred(t)),
            Some((&"*", tail)) => {
                if let Some(star) = &mut self.star {
                    if star.remove(tail, pred) {
                        self.star = None;
                    }
                }
            }
            Some((first, tail)) => {
                if let Some(child) = self.children.get_mut(*first) {
                    if child.remove(tail, pred) {
                        self.children.remove(*first);
                    }
                }
            }
        }
        if segs.is_empty() {
            self.here.retain(|t| !pred(t));
        }
        self.is_empty()
    }
}

/// Most topics remembered by the match cache; it is cleared when full.
/// Enough for a fleet of devices publishing on a topic each (10,000
/// topics used to miss every time at 4,096).
const CACHE_MAX: usize = 16_384;

/// Most bytes the match cache may hold, as [`cache_cost`] counts them; it
/// is cleared when full. Bounds what publishing many distinct topics can
/// make the hub hold, whatever their length and however many targets a
/// wildcard gives each.
const CACHE_BYTES: usize = 8 << 20;

/// What caching `targets` for `topic` costs: the topic, the targets and
/// the entry's own overhead (its map slot and two allocation headers).
fn cache_cost(topic: &str, targets: &[Target]) -> usize {
    topic.len() + std::mem::size_of_val(targets) + 64
}

/// The subscription index: a trie over pattern segments plus a per-topic
/// result cache.
#[derive(Debug, Default)]
pub(crate) struct SubIndex {
    root: Node,
    cache: TextMap<Box<str>, Arc<[Target]>>,
    /// What the cache holds, as [`cache_cost`] counts it.
    cache_bytes: usize,
}

impl SubIndex {
    /// Adds `target` under a pattern already validated.
    pub(crate) fn insert(&mut self, pattern: &str, target: Target) {
        let mut node = &mut self.root;
        let mut segs = pattern.split('.').peekable();
        while let Some(seg) = segs.next() {
            if seg == ">" && segs.peek().is_none() {
                node.rest.push(target);
                self.forget();
                return;
            }
            node = if seg == "*" {
                node.star.get_or_insert_with(Default::default)
            } else {
                node.children.entry(seg.into()).or_default()
            };
        }
        node.here.push(target);
        self.forget();
    }

    /// Empties the match cache (the index changed, or the cache is full).
    fn forget(&mut self) {
        self.cache.clear();
        self.cache_bytes = 0;
    }

    /// Removes subscription `sub_id` of `conn` under `pattern`.
    pub(crate) fn remove_sub(&mut self, pattern: &str, conn: ConnId, sub_id: u64) {
        let segs: Vec<&str> = pattern.split('.').collect();
        self.root.remove(&segs, &|t| t.is(conn, sub_id));
        self.forget();
    }

    /// Removes queue group `group` under `pattern`.
    pub(crate) fn remove_group(&mut self, pattern: &str, group: GroupId) {
        let segs: Vec<&str> = pattern.split('.').collect();
        self.root
            .remove(&segs, &|t| matches!(t, Target::Group(g) if *g == group));
        self.forget();
    }

    /// Everything a valid topic is delivered to. The result is shared until
    /// the next change of the index.
    pub(crate) fn matches(&mut self, topic: &str) -> Arc<[Target]> {
        if let Some(hit) = self.cache.get(topic) {
            return hit.clone();
        }
        let segs: Vec<&str> = topic.split('.').collect();
        let mut out = Vec::new();
        self.root.collect(&segs, &mut out);
        let out: Arc<[Target]> = out.into();
        let cost = cache_cost(topic, &out);
        if cost > CACHE_BYTES {
            // Larger than the whole cache: not kept.
            return out;
        }
        if self.cache.len() >= CACHE_MAX || self.cache_bytes + cost > CACHE_BYTES {
            self.forget();
        }
        self.cache_bytes += cost;
        self.cache.insert(topic.into(), out.clone());
        out
    }

    /// The cached result for `topic`, if any (only valid topics are
    /// cached).
    pub(crate) fn cached_matches(&self, topic: &str) -> Option<Arc<[Target]>> {
        self.cache.get(topic).cloned()
    }

    /// Topics the cache holds, and its bytes (for tests).
    #[cfg(test)]
    pub(crate) fn cache_size(&self) -> (usize, usize) {
        (self.cache.len(), self.cache_bytes)
    }

    /// Whether the cache already knows `topic` (for tests).
    #[cfg(test)]
    pub(crate) fn cached(&self, topic: &str) -> bool {
        self.cache.contains_key(topic)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topics() {
        for ok in ["a", "a.b", "orders.eu.created", "ü.x", "a-b_c:1"] {
            assert_eq!(validate_topic(ok, 100), Ok(()), "{ok}");
        }
        assert_eq!(validate_topic("", 100), Err(SubjectError::Empty));
        assert_eq!(validate_topic("a..b", 100), Err(SubjectError::EmptySegment));
        assert_eq!(validate_topic(".a", 100), Err(SubjectError::EmptySegment));
        assert_eq!(validate_topic("a.", 100), Err(SubjectError::EmptySegment));
        assert_eq!(validate_topic("a b", 100), Err(SubjectError::BadChar));
        assert_eq!(validate_topic("a\u{1}", 100), Err(SubjectError::BadChar));
        assert_eq!(
            validate_topic("a.*", 100),
            Err(SubjectError::MisplacedWildcard)
        );
        assert_eq!(
            validate_topic("a.>", 100),
            Err(SubjectError::MisplacedWildcard)
        );
        assert_eq!(validate_topic("abcdef", 5), Err(SubjectError::TooLong));
    }

    #[test]
    fn patterns() {
        for ok in ["a", "*", ">", "a.*.c", "a.>", "*.*.>"] {
            assert_eq!(validate_pattern(ok, 100), Ok(()), "{ok}");
        }
        assert_eq!(
            validate_pattern("a.>.b", 100),
            Err(SubjectError::GreaterNotLast)
        );
        assert_eq!(
            validate_pattern("a*", 100),
            Err(SubjectError::MisplacedWildcard)
        );
        assert_eq!(
            validate_pattern("a.b>", 100),
            Err(SubjectError::MisplacedWildcard)
        );
        assert_eq!(
            validate_pattern("a..b", 100),
            Err(SubjectError::EmptySegment)
        );
        assert_eq!(validate_pattern("", 100), Err(SubjectError::Empty));
    }

    fn subs_of(targets: &[Target]) -> Vec<u64> {
        let mut v: Vec<u64> = targets
            .iter()
            .map(|t| match t {
                Target::Sub { sub_id, .. } => *sub_id,
                Target::Group(g) => 1000 + g,
            })
            .collect();
        v.sort_unstable();
        v
    }

    #[test]
    fn trie_matching_and_removal() {
        let outbox = Outbox::new(ConnId(1));
        let mut idx = SubIndex::default();
        let pats = [
            (1, "a.b.c"),
            (2, "a.*.c"),
            (3, "a.>"),
            (4, ">"),
            (5, "*.b"),
            (6, "a.b.c.>"),
            (7, "*"),
        ];
        for (id, p) in pats {
            idx.insert(
                p,
                Target::Sub {
                    conn: ConnId(1),
                    sub_id: id,
                    outbox: outbox.clone(),
                },
            );
        }
        idx.insert("a.b", Target::Group(9));
        assert_eq!(subs_of(&idx.matches("a.b.c")), vec![1, 2, 3, 4]);
        assert!(idx.cached("a.b.c"));
        assert_eq!(subs_of(&idx.matches("a.b")), vec![3, 4, 5, 1009]);
        assert_eq!(subs_of(&idx.matches("a")), vec![4, 7]);
        assert_eq!(subs_of(&idx.matches("a.b.c.d.e")), vec![3, 4, 6]);
        assert_eq!(subs_of(&idx.matches("x.y.z")), vec![4]);
        idx.remove_sub("a.*.c", ConnId(1), 2);
        assert!(!idx.cached("a.b.c"));
        assert_eq!(subs_of(&idx.matches("a.b.c")), vec![1, 3, 4]);
        idx.remove_sub(">", ConnId(1), 4);
        idx.remove_group("a.b", 9);
        assert_eq!(subs_of(&idx.matches("a.b")), vec![3, 5]);
        for (id, p) in pats {
            idx.remove_sub(p, ConnId(1), id);
        }
        assert!(idx.root.is_empty(), "removal prunes every node");
    }

    #[test]
    fn ten_thousand_topics_stay_cached() {
        let outbox = Outbox::new(ConnId(1));
        let mut idx = SubIndex::default();
        for i in 0..10_000u64 {
            idx.insert(
                &format!("dev.{i}"),
                Target::Sub {
                    conn: ConnId(1),
                    sub_id: i,
                    outbox: outbox.clone(),
                },
            );
        }
        for i in 0..10_000 {
            assert_eq!(idx.matches(&format!("dev.{i}")).len(), 1);
        }
        // All of them, still: the next round is all hits.
        assert_eq!(idx.cache_size().0, 10_000);
        assert!((0..10_000).all(|i| idx.cached(&format!("dev.{i}"))));
    }

    #[test]
    fn the_cache_is_bounded_in_bytes_when_a_wildcard_has_many_targets() {
        let outbox = Outbox::new(ConnId(1));
        let mut idx = SubIndex::default();
        for i in 0..1_000 {
            idx.insert(
                ">",
                Target::Sub {
                    conn: ConnId(1),
                    sub_id: i,
                    outbox: outbox.clone(),
                },
            );
        }
        // Each topic caches 1,000 targets: the byte bound clears the
        // cache long before the count bound would.
        let mut most = 0;
        for i in 0..2_000 {
            assert_eq!(idx.matches(&format!("t.{i}")).len(), 1_000);
            let (topics, bytes) = idx.cache_size();
            assert!(bytes <= CACHE_BYTES, "{bytes} bytes");
            most = most.max(topics);
        }
        assert!(most < 2_000 && most > 100, "{most} topics at most");
    }
}
