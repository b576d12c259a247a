//! The policy's compiled matchers against naive models.
//!
//! Input: up to 8 subject patterns and then topics, separated by `0xFF`;
//! byte 0 says how many are patterns. Segments are cut down to a few
//! letters so patterns and topics meet. Checks: a `SubjectSet` matches a
//! topic exactly when some pattern does by the reference matcher;
//! `covers` and `intersects` on every pair of patterns agree with
//! enumerating every subject over the patterns' literals plus one other
//! segment, one segment longer than the longest pattern (which tells any
//! two patterns apart); globs agree with a recursive matcher.

#![no_main]

use libfuzzer_sys::fuzz_target;
use switchboard_hub::policy::pattern::{covers, glob_matches, intersects, GlobSet, SubjectSet};
use switchboard_hub::subject::{validate_pattern, validate_topic};

const MAX: usize = 64;
const MAX_DEPTH: usize = 3;

fn reference(pattern: &str, topic: &str) -> bool {
    let p: Vec<&str> = pattern.split('.').collect();
    let t: Vec<&str> = topic.split('.').collect();
    for (i, seg) in p.iter().enumerate() {
        if *seg == ">" {
            return t.len() > i;
        }
        match t.get(i) {
            Some(ts) if *seg == "*" || seg == ts => {}
            _ => return false,
        }
    }
    p.len() == t.len()
}

fn naive_glob(g: &[u8], t: &[u8]) -> bool {
    match g.split_first() {
        None => t.is_empty(),
        Some((b'*', rest)) => (0..=t.len()).any(|i| naive_glob(rest, &t[i..])),
        Some((c, rest)) => t.first() == Some(c) && naive_glob(rest, &t[1..]),
    }
}

/// Every subject of 1..=`depth` segments over `alphabet`.
fn subjects(alphabet: &[&str], depth: usize) -> Vec<String> {
    let mut out = Vec::new();
    let mut level: Vec<String> = alphabet.iter().map(|s| s.to_string()).collect();
    for _ in 0..depth {
        out.extend(level.iter().cloned());
        level = level
            .iter()
            .flat_map(|p| alphabet.iter().map(move |a| format!("{p}.{a}")))
            .collect();
    }
    out
}

fuzz_target!(|data: &[u8]| {
    let Some((&n, rest)) = data.split_first() else {
        return;
    };
    let parts: Vec<&str> = rest
        .split(|b| *b == 0xFF)
        .filter_map(|p| std::str::from_utf8(p).ok())
        .collect();
    let n = usize::from(n % 9).min(parts.len());
    let patterns: Vec<&str> = parts[..n]
        .iter()
        .copied()
        .filter(|p| validate_pattern(p, MAX).is_ok() && p.split('.').count() <= MAX_DEPTH)
        .collect();
    let topics: Vec<&str> = parts[n..]
        .iter()
        .copied()
        .filter(|t| validate_topic(t, MAX).is_ok())
        .collect();
    let set = SubjectSet::new(&patterns);
    for t in &topics {
        let model = patterns.iter().any(|p| reference(p, t));
        assert_eq!(set.matches(t), model, "{patterns:?} against {t:?}");
    }
    // The algebra, by enumeration over the literals plus one other segment.
    let mut alphabet: Vec<&str> = patterns
        .iter()
        .flat_map(|p| p.split('.'))
        .filter(|s| *s != "*" && *s != ">")
        .collect();
    alphabet.sort_unstable();
    alphabet.dedup();
    alphabet.truncate(4);
    let fresh = "\u{1F600}fresh";
    alphabet.push(fresh);
    let usable: Vec<&str> = patterns
        .iter()
        .copied()
        .filter(|p| p.split('.').all(|s| s == "*" || s == ">" || alphabet.contains(&s)))
        .collect();
    let all = subjects(&alphabet, MAX_DEPTH + 1);
    for a in &usable {
        for b in &usable {
            let model_covers = all.iter().all(|s| !reference(b, s) || reference(a, s));
            let model_meets = all.iter().any(|s| reference(a, s) && reference(b, s));
            assert_eq!(covers(a, b), model_covers, "covers({a:?}, {b:?})");
            assert_eq!(intersects(a, b), model_meets, "intersects({a:?}, {b:?})");
        }
    }
    // Globs: each pattern's text as a glob against each topic.
    for g in parts[..n].iter().take(4) {
        if g.len() > 16 {
            continue;
        }
        let globs = GlobSet::new([g]);
        for t in parts[n..].iter().take(4).filter(|t| t.len() <= 16) {
            let model = naive_glob(g.as_bytes(), t.as_bytes());
            assert_eq!(glob_matches(g, t), model, "{g:?} against {t:?}");
            assert_eq!(globs.matches(t), model, "set {g:?} against {t:?}");
        }
    }
});
