//! The HTTP gateway's request bodies: arbitrary bytes as the JSON body of
//! every POST route, through the parsing and checks the handlers use
//! (`switchboard_hub::gateway::check_body`), then the frames they make
//! through a `Router`, as the gateway hands them over.
//!
//! Input layout: byte 0 picks the route (`ROUTES[byte % 11]`), the rest is
//! the body.
//!
//! Checks: never panics; a refusal is a 4xx with a known error code and a
//! bounded message (it may quote the body, but only a clipped part); an
//! accepted body names a valid client id (except `leave`, which only looks
//! one up), gives frames no larger than the body, of client kinds only
//! (they would pass the TCP transport's `check_client_frame` screen, which
//! the gateway does not run), with clamped poll and request timeouts; and
//! the router answers every call the handler waits for exactly once (else
//! the HTTP call would hang until its own timeout), and the ping behind a
//! reply exactly once.

#![no_main]

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{connect, take};
use libfuzzer_sys::fuzz_target;
use prost::Message;
use switchboard_hub::gateway::check_body;
use switchboard_hub::router::{Input, Router, RouterConfig};
use switchboard_hub::stats::HubStats;
use switchboard_hub::{ConnId, HttpConfig, Limits};
use switchboard_wire::proto::{self, frame::Kind};
use switchboard_wire::{check_client_frame, check_headers, Frame, FrameExt};

const ROUTES: &[&str] = &[
    "/v1/listen",
    "/v1/send",
    "/v1/request",
    "/v1/reply",
    "/v1/broadcast",
    "/v1/publish",
    "/v1/subscribe",
    "/v1/unsubscribe",
    "/v1/kv/get",
    "/v1/kv/set",
    "/v1/leave",
];

const CODES: &[&str] = &["invalid_argument", "limit_exceeded", "not_found"];

/// Longest error message, in characters: the longest fixed text plus a
/// 256-byte client id or a clipped quote of the body.
const MAX_MESSAGE_CHARS: usize = 512;

/// A frame made from a body carries at most this much more than the body
/// (ids, lengths, tags).
const FRAME_OVERHEAD: usize = 64;

fn headers_of(f: &Frame) -> &[proto::Header] {
    match &f.kind {
        Some(Kind::Direct(d)) => &d.headers,
        Some(Kind::Request(r)) => &r.headers,
        Some(Kind::Reply(r)) => &r.headers,
        Some(Kind::Broadcast(b)) => &b.headers,
        Some(Kind::Publish(p)) => &p.headers,
        _ => &[],
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&sel, body)) = data.split_first() else {
        return;
    };
    let route = ROUTES[usize::from(sel) % ROUTES.len()];
    let cfg = HttpConfig::new("127.0.0.1:0".parse().unwrap());
    let checked = match check_body(route, body, &cfg) {
        Ok(c) => c,
        Err((status, code, message)) => {
            assert!((400..500).contains(&status), "{route}: status {status}");
            assert!(CODES.contains(&code), "{route}: code {code}");
            assert!(!message.is_empty(), "{route}: empty message");
            assert!(
                message.chars().count() <= MAX_MESSAGE_CHARS,
                "{route}: message of {} chars: {message:?}",
                message.chars().count()
            );
            return;
        }
    };

    if route != "/v1/leave" {
        let id = &checked.client;
        assert!(!id.is_empty() && id.len() <= 256, "{route}: client {id:?}");
        assert!(!id.chars().any(char::is_control), "{route}: client {id:?}");
    }
    if let Some((wait, max)) = checked.poll {
        assert!(wait <= cfg.max_poll_timeout, "poll held {wait:?}");
        assert!((1..=10_000).contains(&max), "poll max {max}");
    }
    for f in &checked.frames {
        let encoded = f.encode_to_vec();
        // A key given once with an array of values becomes one header per
        // value, so headers may outgrow their JSON; they stay within the
        // protocol's bounds.
        let headers = headers_of(f);
        check_headers(headers).unwrap_or_else(|e| panic!("{route}: {e}"));
        let headers_len: usize = headers
            .iter()
            .map(|h| prost::encoding::message::encoded_len(1, h))
            .sum();
        assert!(
            encoded.len() <= body.len() + FRAME_OVERHEAD + headers_len,
            "{route}: a {}-byte frame from a {}-byte body",
            encoded.len(),
            body.len()
        );
        check_client_frame(&encoded).unwrap_or_else(|e| panic!("{route}: {e}: {f:?}"));
        if let Some(Kind::Request(r)) = &f.kind {
            assert!(
                u128::from(r.timeout_ms) <= cfg.max_request_timeout.as_millis(),
                "request timeout {}",
                r.timeout_ms
            );
            assert!(r.timeout_ms >= 1);
        }
    }
    if checked.frames.is_empty() {
        return;
    }

    // Through the router as the gateway hands them over: a registered
    // client (and a peer it may address), no transport screen.
    let mut router = Router::new(
        RouterConfig {
            identity: proto::HubIdentity::default(),
            limits: Limits::default(),
            keepalive: None,
        },
        Arc::new(HubStats::default()),
    );
    let now = Instant::now();
    let peer_id = if checked.client == "peer" { "other" } else { "peer" };
    let peer = connect(&mut router, now, 2, peer_id, "http");
    let me = connect(&mut router, now, 1, &checked.client, "http");
    let mut to_me = take(&me);
    assert!(
        matches!(to_me.first(), Some(Frame { kind: Some(Kind::Welcome(_)), .. })),
        "{:?} not welcomed: {to_me:?}",
        checked.client
    );
    to_me.clear();
    router.handle(
        now,
        Input::Frames {
            conn: ConnId(1),
            frames: checked.frames.clone(),
        },
    );
    to_me.extend(take(&me));
    // Past every deadline (requests wait at most `max_request_timeout`).
    let later = now + cfg.max_request_timeout + Duration::from_secs(1);
    router.handle(later, Input::Tick);
    to_me.extend(take(&me));
    let _ = take(&peer);

    let answers = to_me
        .iter()
        .filter(|f| {
            matches!(
                f.kind,
                Some(Kind::Ok(_) | Kind::Error(_) | Kind::Reply(_) | Kind::KvValue(_))
            ) && f.correlation_id() == 1
        })
        .count();
    let pongs = to_me
        .iter()
        .filter(|f| matches!(&f.kind, Some(Kind::Pong(p)) if p.nonce == 1))
        .count();
    if checked.awaits_answer {
        // A request to itself also delivers the request (id 1) to itself;
        // the answer is the TIMEOUT error.
        assert_eq!(answers, 1, "{route}: answers {to_me:?}");
    } else if route == "/v1/reply" {
        assert_eq!(pongs, 1, "{route}: pongs {to_me:?}");
    }
});
