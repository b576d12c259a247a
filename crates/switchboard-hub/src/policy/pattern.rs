//! The matchers a policy is compiled into: subject pattern sets (for
//! publish and subscribe rights), the pattern algebra that decides whether
//! a subscription is wider than allowed ([`covers`], [`intersects`]), and
//! globs over client ids and service names.
//!
//! Subject patterns follow the hub's rules ([`crate::subject`]): segments
//! separated by `.`, `*` matches exactly one segment, a final `>` one or
//! more. A topic is a pattern without wildcards.

use std::collections::{HashMap, HashSet};
use std::hash::BuildHasherDefault;

use crate::ids::IdHasher;

type FastMap<K, V> = HashMap<K, V, BuildHasherDefault<IdHasher>>;
type FastSet<K> = HashSet<K, BuildHasherDefault<IdHasher>>;

/// Whether pattern `wide` matches every subject pattern `narrow` matches
/// (both valid patterns; a topic is a pattern without wildcards).
pub fn covers(wide: &str, narrow: &str) -> bool {
    let mut w = wide.split('.');
    let mut n = narrow.split('.');
    loop {
        match (w.next(), n.next()) {
            // `>` takes one or more segments: `narrow` has one here, and
            // whatever follows it.
            (Some(">"), next) => return next.is_some(),
            // `narrow` goes on with anything (`>`) where `wide` does not.
            (_, Some(">")) => return false,
            (Some("*"), Some(_)) => {}
            (Some(a), Some(b)) if a == b => {}
            (None, None) => return true,
            // A literal against `*` or another literal, or one is longer.
            _ => return false,
        }
    }
}

/// Whether some subject matches both patterns `a` and `b` (both valid).
pub fn intersects(a: &str, b: &str) -> bool {
    let mut a = a.split('.');
    let mut b = b.split('.');
    loop {
        match (a.next(), b.next()) {
            (Some(">"), other) | (other, Some(">")) => return other.is_some(),
            (Some("*"), Some(_)) | (Some(_), Some("*")) => {}
            (Some(x), Some(y)) if x == y => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

/// A node of the pattern trie.
#[derive(Debug, Default)]
struct Node {
    children: FastMap<Box<str>, Node>,
    star: Option<Box<Node>>,
    /// A pattern ends here.
    end: bool,
    /// A pattern ends with `>` here.
    rest: bool,
}

impl Node {
    /// Whether a pattern below this node matches the rest of a topic
    /// (`None`: the topic ended here).
    fn matches(&self, rest: Option<&str>) -> bool {
        let Some(rest) = rest else {
            return self.end;
        };
        if self.rest {
            return true;
        }
        let (seg, tail) = match rest.split_once('.') {
            Some((seg, tail)) => (seg, Some(tail)),
            None => (rest, None),
        };
        if let Some(child) = self.children.get(seg) {
            if child.matches(tail) {
                return true;
            }
        }
        self.star.as_ref().is_some_and(|s| s.matches(tail))
    }
}

/// A set of subject patterns compiled for matching topics: the patterns
/// without wildcards in a hash set (one lookup), the others in a trie over
/// segments, so a match costs about the topic's depth, not the number of
/// patterns. It also keeps the patterns themselves for [`covers`] and
/// [`intersects`].
#[derive(Debug, Default)]
pub struct SubjectSet {
    literals: FastSet<Box<str>>,
    wild: Node,
    has_wild: bool,
    patterns: Vec<String>,
}

impl SubjectSet {
    /// Compiles `patterns` (each a valid pattern; see
    /// [`validate_pattern`](crate::subject::validate_pattern)).
    pub fn new<S: AsRef<str>>(patterns: impl IntoIterator<Item = S>) -> SubjectSet {
        let mut set = SubjectSet::default();
        for p in patterns {
            set.insert(p.as_ref());
        }
        set
    }

    fn insert(&mut self, pattern: &str) {
        self.patterns.push(pattern.to_owned());
        if !pattern.split('.').any(|s| s == "*" || s == ">") {
            self.literals.insert(pattern.into());
            return;
        }
        self.has_wild = true;
        let mut node = &mut self.wild;
        let mut segs = pattern.split('.').peekable();
        while let Some(seg) = segs.next() {
            if seg == ">" && segs.peek().is_none() {
                node.rest = true;
                return;
            }
            node = if seg == "*" {
                node.star.get_or_insert_with(Default::default)
            } else {
                node.children.entry(seg.into()).or_default()
            };
        }
        node.end = true;
    }

    /// Whether the set holds no pattern.
    pub fn is_empty(&self) -> bool {
        self.patterns.is_empty()
    }

    /// The patterns, as given.
    pub fn patterns(&self) -> &[String] {
        &self.patterns
    }

    /// Whether some pattern of the set matches `topic`.
    pub fn matches(&self, topic: &str) -> bool {
        self.literals.contains(topic) || (self.has_wild && self.wild.matches(Some(topic)))
    }

    /// The first pattern of the set that covers every subject `pattern`
    /// matches ([`covers`]).
    pub fn covering(&self, pattern: &str) -> Option<&str> {
        if let Some(literal) = self.literals.get(pattern) {
            return Some(literal);
        }
        self.patterns
            .iter()
            .find(|p| covers(p, pattern))
            .map(String::as_str)
    }

    /// The first pattern of the set that matches some subject `pattern`
    /// matches ([`intersects`]).
    pub fn intersecting(&self, pattern: &str) -> Option<&str> {
        self.patterns
            .iter()
            .find(|p| intersects(p, pattern))
            .map(String::as_str)
    }
}

/// Most topics a [`VerdictCache`] remembers; it forgets them all when
/// full, so a client cycling through endless topics costs a match each
/// and bounded memory.
pub const VERDICT_CACHE: usize = 4096;

/// The verdicts of one right on the topics a principal used lately: a
/// publish on a topic seen before costs one hash lookup instead of a walk
/// of the rule set. Verdicts never change (a policy is fixed once built).
#[derive(Debug, Default)]
pub struct VerdictCache {
    seen: std::sync::Mutex<FastMap<Box<str>, bool>>,
}

impl VerdictCache {
    /// The verdict on `topic`: remembered, or `decide(topic)` (then
    /// remembered).
    pub fn verdict(&self, topic: &str, decide: impl FnOnce(&str) -> bool) -> bool {
        let mut seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(&v) = seen.get(topic) {
            return v;
        }
        let v = decide(topic);
        if seen.len() >= VERDICT_CACHE {
            seen.clear();
        }
        seen.insert(topic.into(), v);
        v
    }

    /// Topics remembered now.
    pub fn len(&self) -> usize {
        self.seen.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    /// Whether nothing is remembered.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// One piece of a compiled glob: `None` is `*`, any run of bytes (also
/// none); `Some(b)` the byte `b` itself.
pub type GlobToken = Option<u8>;

/// Compiles glob text: every `*` is a wildcard.
pub fn glob_tokens(glob: &str) -> Vec<GlobToken> {
    glob.bytes().map(|b| (b != b'*').then_some(b)).collect()
}

/// Whether glob `glob` matches `text`: `*` matches any run of characters
/// (also none); every other character itself.
pub fn glob_matches(glob: &str, text: &str) -> bool {
    tokens_match(&glob_tokens(glob), text)
}

/// Whether the compiled glob `glob` matches `text`.
pub fn tokens_match(glob: &[GlobToken], text: &str) -> bool {
    let t = text.as_bytes();
    let (mut gi, mut ti) = (0, 0);
    // Where the last `*` was, and how far into `text` it reaches.
    let mut star: Option<(usize, usize)> = None;
    while ti < t.len() {
        match glob.get(gi) {
            Some(None) => {
                star = Some((gi, ti));
                gi += 1;
            }
            Some(Some(b)) if *b == t[ti] => {
                gi += 1;
                ti += 1;
            }
            _ => {
                // Let the last `*` take one more byte and try again.
                let Some((sg, st)) = star else {
                    return false;
                };
                gi = sg + 1;
                ti = st + 1;
                star = Some((sg, st + 1));
            }
        }
    }
    glob[gi..].iter().all(Option::is_none)
}

/// A set of globs over names (client ids, service names): the globs
/// without `*` in a hash set, the others tried in turn.
#[derive(Debug, Default)]
pub struct GlobSet {
    literals: FastSet<Box<str>>,
    wild: Vec<Vec<GlobToken>>,
    all: Vec<String>,
}

impl GlobSet {
    /// Compiles `globs`.
    pub fn new<S: AsRef<str>>(globs: impl IntoIterator<Item = S>) -> GlobSet {
        let mut set = GlobSet::default();
        for g in globs {
            let g = g.as_ref();
            set.all.push(g.to_owned());
            if g.contains('*') {
                set.wild.push(glob_tokens(g));
            } else {
                set.literals.insert(g.into());
            }
        }
        set
    }

    /// Whether some glob matches `name`.
    pub fn matches(&self, name: &str) -> bool {
        self.literals.contains(name) || self.wild.iter().any(|g| tokens_match(g, name))
    }

    /// The globs, as given.
    pub fn globs(&self) -> &[String] {
        &self.all
    }
}
