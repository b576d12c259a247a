//! The topic and subscription-pattern parsers, and the subscription index
//! behind them, against a reference matcher.
//!
//! Input layout: `pattern 0xFF topic` (both must be UTF-8; a missing 0xFF
//! uses the whole input as both). Checks: the validators never panic and
//! agree with each other (a valid topic is a valid pattern; a valid pattern
//! without wildcards is a valid topic; nothing longer than the limit is
//! valid); and when both are valid, a `Router` delivers a publish on the
//! topic to a subscription on the pattern exactly when the reference
//! matcher says it matches (`*` one segment, `>` as the last segment one or
//! more), and a request to the topic as a service to a service
//! subscription on the pattern likewise (else `NO_RESPONDERS`), while the
//! service subscription never gets the publish.

#![no_main]

mod common;

use std::sync::Arc;
use std::time::Instant;

use common::{connect, take};
use libfuzzer_sys::fuzz_target;
use switchboard_hub::router::{Input, Router, RouterConfig};
use switchboard_hub::stats::HubStats;
use switchboard_hub::subject::{validate_pattern, validate_topic};
use switchboard_hub::{ConnId, Limits};
use switchboard_wire::proto::{self, frame::Kind};
use switchboard_wire::{ErrorCode, Frame};

const MAX: usize = 64;

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

fuzz_target!(|data: &[u8]| {
    let (p, t) = match data.iter().position(|b| *b == 0xFF) {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => (data, data),
    };
    let (Ok(pattern), Ok(topic)) = (std::str::from_utf8(p), std::str::from_utf8(t)) else {
        return;
    };
    let pattern_ok = validate_pattern(pattern, MAX).is_ok();
    let topic_ok = validate_topic(topic, MAX).is_ok();
    if validate_topic(pattern, MAX).is_ok() {
        assert!(pattern_ok, "topic {pattern:?} is not a valid pattern");
    }
    let wild = pattern.split('.').any(|s| s == "*" || s == ">");
    if pattern_ok && !wild {
        assert!(validate_topic(pattern, MAX).is_ok(), "{pattern:?}");
    }
    if pattern_ok {
        assert!(!pattern.is_empty() && pattern.len() <= MAX);
    }
    if topic_ok {
        assert!(!topic.is_empty() && topic.len() <= MAX);
    }

    // Through the router: subscribe, publish, see what arrives.
    let mut router = Router::new(
        RouterConfig {
            identity: proto::HubIdentity::default(),
            limits: Limits {
                max_subject: MAX,
                ..Limits::default()
            },
            keepalive: None,
        },
        Arc::new(HubStats::default()),
    );
    let now = Instant::now();
    let sub = connect(&mut router, now, 1, "sub", "");
    let publisher = connect(&mut router, now, 2, "pub", "");
    take(&sub);
    take(&publisher);
    router.handle(
        now,
        Input::Frames {
            conn: ConnId(1),
            frames: [false, true]
                .map(|service| {
                    proto::Subscribe {
                        id: 1,
                        sub_id: 7 + u64::from(service),
                        pattern: pattern.into(),
                        queue_group: String::new(),
                        service,
                    }
                    .into()
                })
                .to_vec(),
        },
    );
    let answer = take(&sub);
    assert_eq!(answer.len(), 2);
    for a in &answer {
        match &a.kind {
            Some(Kind::Ok(_)) => assert!(pattern_ok, "pattern {pattern:?} accepted"),
            Some(Kind::Error(_)) => assert!(!pattern_ok, "pattern {pattern:?} refused"),
            other => panic!("{other:?}"),
        }
    }
    // A request to the topic as a service subject reaches the service
    // subscription exactly when the pattern matches.
    let request = proto::Request {
        id: 9,
        service: topic.into(),
        ..Default::default()
    };
    router.handle(
        now,
        Input::Frames {
            conn: ConnId(2),
            frames: vec![request.into()],
        },
    );
    let served = take(&sub);
    let refused = take(&publisher);
    if topic_ok && pattern_ok && reference(pattern, topic) {
        assert!(
            matches!(served.as_slice(), [Frame { kind: Some(Kind::Request(r)), .. }] if r.sub_id == 8),
            "service {topic:?} pattern {pattern:?}: {served:?}"
        );
        assert!(refused.is_empty(), "{refused:?}");
    } else {
        assert!(served.is_empty(), "{served:?}");
        let code = if topic_ok {
            ErrorCode::NoResponders
        } else if topic.is_empty() {
            // No service: a request to client id "".
            ErrorCode::NoSuchClient
        } else {
            ErrorCode::InvalidArgument
        };
        assert!(
            matches!(refused.as_slice(), [Frame { kind: Some(Kind::Error(e)), .. }] if e.id == 9 && e.code == code as i32),
            "service {topic:?} pattern {pattern:?}: {refused:?}"
        );
    }
    let mut publish = Frame::publish(topic, "x");
    if let Some(Kind::Publish(p)) = publish.kind.as_mut() {
        p.id = 5;
    }
    router.handle(
        now,
        Input::Frames {
            conn: ConnId(2),
            frames: vec![publish],
        },
    );
    let to_publisher = take(&publisher);
    let delivered = take(&sub);
    if !topic_ok {
        assert!(delivered.is_empty());
        assert!(
            matches!(to_publisher.as_slice(), [Frame { kind: Some(Kind::Error(e)), .. }] if e.id == 5),
            "topic {topic:?} refused with an error: {to_publisher:?}"
        );
        return;
    }
    let expect = pattern_ok && reference(pattern, topic);
    assert_eq!(
        delivered.len(),
        usize::from(expect),
        "pattern {pattern:?} topic {topic:?}: {delivered:?}"
    );
    if let Some(Frame {
        kind: Some(Kind::Deliver(d)),
        ..
    }) = delivered.first()
    {
        assert_eq!((d.sub_id, d.topic.as_str()), (7, topic));
    }
});
