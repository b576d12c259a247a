//! The pattern algebra and the compiled matchers against naive models,
//! over every pattern and subject of a tiny alphabet (bounded and
//! exhaustive: no randomness).

use crate::policy::pattern::{covers, glob_matches, intersects, GlobSet, SubjectSet};

/// The reference: `*` one segment, a final `>` one or more.
fn naive_matches(pattern: &str, topic: &str) -> bool {
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

/// Every sequence of 1..=`max` segments from `middle` (and `last` for the
/// final one), joined by dots.
fn all(middle: &[&str], last: &[&str], max: usize) -> Vec<String> {
    let mut out: Vec<Vec<&str>> = Vec::new();
    let mut prefixes: Vec<Vec<&str>> = vec![vec![]];
    for _ in 0..max {
        for p in &prefixes {
            for l in last {
                let mut v = p.clone();
                v.push(l);
                out.push(v);
            }
        }
        prefixes = prefixes
            .iter()
            .flat_map(|p| {
                middle.iter().map(move |m| {
                    let mut v = p.clone();
                    v.push(*m);
                    v
                })
            })
            .collect();
    }
    out.into_iter().map(|v| v.join(".")).collect()
}

fn patterns() -> Vec<String> {
    all(&["a", "b", "*"], &["a", "b", "*", ">"], 3)
}

/// Subjects over the patterns' literals and one other segment, one longer
/// than the longest pattern: enough to tell any two patterns apart.
fn subjects() -> Vec<String> {
    all(&["a", "b", "z"], &["a", "b", "z"], 4)
}

#[test]
fn covers_and_intersects_agree_with_enumeration() {
    let patterns = patterns();
    let subjects = subjects();
    assert_eq!(patterns.len(), 52);
    let matched: Vec<Vec<bool>> = patterns
        .iter()
        .map(|p| subjects.iter().map(|s| naive_matches(p, s)).collect())
        .collect();
    for (i, a) in patterns.iter().enumerate() {
        for (j, b) in patterns.iter().enumerate() {
            let model_covers = (0..subjects.len()).all(|k| !matched[j][k] || matched[i][k]);
            let model_meets = (0..subjects.len()).any(|k| matched[j][k] && matched[i][k]);
            assert_eq!(covers(a, b), model_covers, "covers({a:?}, {b:?})");
            assert_eq!(intersects(a, b), model_meets, "intersects({a:?}, {b:?})");
        }
    }
}

#[test]
fn a_subject_set_matches_like_any_of_its_patterns() {
    let patterns = patterns();
    let subjects = subjects();
    // Deterministic sets of 0 to 4 patterns (a small LCG picks them).
    let mut seed: u64 = 0x5eed;
    for _ in 0..400 {
        seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let n = (seed >> 60) as usize % 5;
        let chosen: Vec<&String> = (0..n)
            .map(|i| &patterns[((seed >> (8 * i)) as usize) % patterns.len()])
            .collect();
        let set = SubjectSet::new(&chosen);
        for s in &subjects {
            let model = chosen.iter().any(|p| naive_matches(p, s));
            assert_eq!(set.matches(s), model, "{chosen:?} against {s:?}");
            let model_cover = chosen.iter().any(|p| covers(p, s));
            assert_eq!(
                set.covering(s).is_some(),
                model_cover,
                "{chosen:?} covering {s:?}"
            );
        }
    }
}

/// The reference glob: `*` any run of characters.
fn naive_glob(g: &[u8], t: &[u8]) -> bool {
    match g.split_first() {
        None => t.is_empty(),
        Some((b'*', rest)) => (0..=t.len()).any(|i| naive_glob(rest, &t[i..])),
        Some((c, rest)) => t.first() == Some(c) && naive_glob(rest, &t[1..]),
    }
}

#[test]
fn globs_agree_with_a_recursive_model() {
    let globs = all(&["a", "b", "*"], &["a", "b", "*"], 4);
    let texts: Vec<String> = std::iter::once(String::new())
        .chain(all(&["a", "b"], &["a", "b"], 4))
        .map(|t| t.replace('.', ""))
        .collect();
    for g in &globs {
        let g = g.replace('.', "");
        let set = GlobSet::new([&g]);
        for t in &texts {
            let model = naive_glob(g.as_bytes(), t.as_bytes());
            assert_eq!(glob_matches(&g, t), model, "{g:?} against {t:?}");
            assert_eq!(set.matches(t), model, "set {g:?} against {t:?}");
        }
    }
}

#[test]
fn a_hundred_rules_compile_into_one_lookup() {
    // Literal rules go to the hash set, wildcard rules to the trie.
    let mut rules: Vec<String> = (0..90).map(|i| format!("svc{i}.events.created")).collect();
    rules.extend((0..10).map(|i| format!("team{i}.*.>")));
    let set = SubjectSet::new(&rules);
    assert!(set.matches("svc42.events.created"));
    assert!(set.matches("team3.x.y"));
    assert!(!set.matches("team3.x"));
    assert!(!set.matches("svc42.events"));
    assert_eq!(set.patterns().len(), 100);
}

#[test]
fn a_verdict_cache_answers_as_the_matcher_and_stays_bounded() {
    use crate::policy::pattern::{VerdictCache, VERDICT_CACHE};

    let allow = SubjectSet::new(["orders.*", "logs.>"]);
    let cache = VerdictCache::default();
    for topic in ["orders.eu", "orders.eu.x", "logs.a.b", "other", "orders.eu"] {
        let first = cache.verdict(topic, |t| allow.matches(t));
        // A second answer comes from memory and must be the same.
        let again = cache.verdict(topic, |_| !allow.matches(topic));
        assert_eq!(first, allow.matches(topic), "{topic}");
        assert_eq!(again, first, "{topic} remembered");
    }
    for i in 0..VERDICT_CACHE + 10 {
        cache.verdict(&format!("t.{i}"), |t| allow.matches(t));
    }
    assert!(cache.len() <= VERDICT_CACHE, "{} remembered", cache.len());
}
