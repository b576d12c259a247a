//! The subject mapping: switchboard names (service, client ids, topic
//! segments) as NATS subject tokens and JetStream KV keys.
//!
//! NATS splits subjects at `.`, treats `*` and `>` as wildcards and
//! forbids whitespace; KV keys allow only `[-/_=.A-Za-z0-9]`. One escaping
//! serves both: the bytes `A-Z a-z 0-9 _ -` stay as they are, every other
//! byte of the UTF-8 text becomes `=` and two upper-case hex digits (so
//! `.` is `=2E`, `*` is `=2A`, `=` itself is `=3D`), and the empty text is
//! the token `=` alone. The result is never empty, holds no `.`, `*`, `>`
//! or whitespace, and decodes back to exactly the text it came from.

/// The escape byte.
const ESC: u8 = b'=';

fn plain(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_' || b == b'-'
}

/// `text` as one NATS subject token (and KV key): see the module docs.
pub fn escape(text: &str) -> String {
    if text.is_empty() {
        return "=".to_owned();
    }
    let mut out = String::with_capacity(text.len());
    for &b in text.as_bytes() {
        if plain(b) {
            out.push(char::from(b));
        } else {
            out.push(char::from(ESC));
            out.push_str(&format!("{b:02X}"));
        }
    }
    out
}

/// The text a token made by [`escape`] stands for; `None` when `token`
/// is not one [`escape`] makes (a malformed name from the NATS side).
pub fn unescape(token: &str) -> Option<String> {
    if token == "=" {
        return Some(String::new());
    }
    let bytes = token.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        if plain(b) {
            out.push(b);
            i += 1;
        } else if b == ESC && i + 2 < bytes.len() {
            let hex = token.get(i + 1..i + 3)?;
            if !hex
                .bytes()
                .all(|h| h.is_ascii_digit() || (b'A'..=b'F').contains(&h))
            {
                return None;
            }
            let v = u8::from_str_radix(hex, 16).ok()?;
            if plain(v) {
                // `escape` never escapes a plain byte: one text, one token.
                return None;
            }
            out.push(v);
            i += 3;
        } else {
            return None;
        }
    }
    if out.is_empty() {
        return None;
    }
    String::from_utf8(out).ok()
}

/// A switchboard topic (segments split at `.`) as a NATS subject suffix:
/// each segment escaped, joined with `.`. With `pattern`, a segment that
/// is exactly `*` or `>` stays a NATS wildcard (switchboard patterns use
/// the same two).
pub fn topic(topic: &str, pattern: bool) -> String {
    topic
        .split('.')
        .map(|seg| match seg {
            "*" | ">" if pattern => seg.to_owned(),
            _ => escape(seg),
        })
        .collect::<Vec<_>>()
        .join(".")
}

/// Whether switchboard pattern `pattern` (`*`: one segment, `>` at the
/// end: one or more) matches `topic`.
pub fn matches(pattern: &str, topic: &str) -> bool {
    let mut t = topic.split('.');
    for seg in pattern.split('.') {
        match (seg, t.next()) {
            (">", Some(_)) => return true,
            (_, None) => return false,
            ("*", Some(_)) => {}
            (p, Some(x)) if p == x => {}
            _ => return false,
        }
    }
    t.next().is_none()
}

/// The topic a subject suffix made by [`topic`] (without `pattern`)
/// stands for; `None` when a token is malformed.
pub fn untopic(subject: &str) -> Option<String> {
    subject
        .split('.')
        .map(unescape)
        .collect::<Option<Vec<_>>>()
        .map(|segs| segs.join("."))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn nats_safe(token: &str) -> bool {
        !token.is_empty() && token.bytes().all(|b| plain(b) || b == ESC)
    }

    #[test]
    fn patterns_match_as_the_hub_does() {
        assert!(matches("g.>", "g.work"));
        assert!(matches("g.>", "g.a.b"));
        assert!(!matches("g.>", "g"));
        assert!(matches("*.x", "t.x"));
        assert!(!matches("*.x", "t.x.y"));
        assert!(matches("t.x", "t.x"));
        assert!(!matches("t.x", "t.y"));
    }

    proptest! {
        #[test]
        fn escape_round_trips_and_is_one_safe_token(text in any::<String>()) {
            let token = escape(&text);
            prop_assert!(nats_safe(&token), "{token:?}");
            prop_assert_eq!(unescape(&token), Some(text));
        }

        #[test]
        fn special_characters_round_trip(text in "[.*> \t\r\n=~a-z]{0,12}") {
            let token = escape(&text);
            prop_assert!(nats_safe(&token));
            prop_assert_eq!(unescape(&token), Some(text));
        }

        #[test]
        fn distinct_texts_give_distinct_tokens(a in any::<String>(), b in any::<String>()) {
            prop_assume!(a != b);
            prop_assert_ne!(escape(&a), escape(&b));
        }

        #[test]
        fn topics_round_trip_segment_by_segment(segs in proptest::collection::vec(any::<String>(), 1..5)) {
            let text = segs.join(".");
            let subject = topic(&text, false);
            prop_assert_eq!(subject.split('.').count(), text.split('.').count());
            prop_assert!(subject.split('.').all(nats_safe));
            prop_assert_eq!(untopic(&subject), Some(text));
        }

        #[test]
        fn unescape_accepts_only_what_escape_makes(token in "[=A-Fa-z0-9.*> ]{0,10}") {
            if let Some(text) = unescape(&token) {
                prop_assert_eq!(escape(&text), token);
            }
        }
    }

    #[test]
    fn examples() {
        assert_eq!(escape("dev.1"), "dev=2E1");
        assert_eq!(escape("a b*>"), "a=20b=2A=3E");
        assert_eq!(escape(""), "=");
        assert_eq!(topic("sensors.*.temp", true), "sensors.*.temp");
        assert_eq!(topic("sensors.*.temp", false), "sensors.=2A.temp");
        assert_eq!(topic("a.>", true), "a.>");
        assert_eq!(unescape("=2e"), None);
        assert_eq!(unescape("=41"), None);
        assert_eq!(unescape("a.b"), None);
    }
}
