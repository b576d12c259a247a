//! The mailbox of one HTTP client: what the router sent it that no call
//! waits for, bounded, in order, until long polls take it; and each
//! message's JSON.

use std::collections::VecDeque;
use std::time::Instant;

use base64::Engine as _;
use serde_json::{json, Value};
use switchboard_wire::proto::{self, frame::Kind};
use switchboard_wire::{ErrorCode, Frame};

use super::api::{code_name, put_bytes, put_headers};
use super::views::client_json;
use crate::config::HttpConfig;
use crate::metrics::Histogram;

/// Messages waiting for a poll, numbered from 1 (`seq`).
#[derive(Default)]
pub(super) struct Mailbox {
    mail: VecDeque<Mail>,
    /// Encoded size of the waiting messages.
    bytes: usize,
    /// Last `seq` given out.
    next_seq: u64,
    /// Messages dropped since the last poll that reported drops.
    dropped: u64,
}

/// A message waiting in the mailbox.
struct Mail {
    seq: u64,
    /// When the message entered the mailbox.
    queued_at: Instant,
    /// Whether a poll has returned it (an acknowledged-mode poll may
    /// return it again).
    handed_out: bool,
    bytes: usize,
    droppable: bool,
    frame: Frame,
}

impl Mailbox {
    /// Counts `n` messages dropped on the way (reported on the next poll).
    pub(super) fn count_dropped(&mut self, n: u64) {
        self.dropped += n;
    }

    /// Queues `frame`. When the mailbox is full (`mailbox_messages` or
    /// `mailbox_bytes` of `cfg`), the oldest delivery, broadcast, presence
    /// event or key update makes room; when none is there, says why the
    /// client must go as a slow consumer.
    pub(super) fn push(&mut self, frame: Frame, cfg: &HttpConfig) -> Result<(), &'static str> {
        let droppable = matches!(
            frame.kind,
            Some(Kind::Deliver(_) | Kind::Broadcast(_) | Kind::Presence(_) | Kind::KvUpdate(_))
        );
        let bytes = {
            use prost::Message;
            frame.encoded_len()
        };
        while self.mail.len() >= cfg.mailbox_messages.max(1)
            || self.bytes + bytes > cfg.mailbox_bytes
        {
            let Some(pos) = self.mail.iter().position(|m| m.droppable) else {
                return Err("its mailbox is full of messages nobody polled");
            };
            if let Some(m) = self.mail.remove(pos) {
                self.bytes -= m.bytes;
                self.dropped += 1;
            }
            if self.mail.is_empty() {
                break;
            }
        }
        self.next_seq += 1;
        self.bytes += bytes;
        self.mail.push_back(Mail {
            seq: self.next_seq,
            queued_at: Instant::now(),
            handed_out: false,
            bytes,
            droppable,
            frame,
        });
        Ok(())
    }

    /// Takes (or, in acknowledged mode, shows) waiting messages: with
    /// `ack`, removes those up to seq `ack` and shows the rest without
    /// removing them; without, removes what it returns. `None` when there
    /// is nothing to report, unless `always` (then an empty answer whose
    /// `ack` covers every message delivered so far).
    pub(super) fn take(
        &mut self,
        ack: Option<u64>,
        max: usize,
        always: bool,
        delay: &Histogram,
    ) -> Option<Value> {
        if let Some(ack) = ack {
            while self.mail.front().is_some_and(|m| m.seq <= ack) {
                if let Some(m) = self.mail.pop_front() {
                    self.bytes -= m.bytes;
                }
            }
        }
        if self.mail.is_empty() && self.dropped == 0 {
            // Everything up to `next_seq` has left the mailbox.
            return always.then(|| json!({ "messages": [], "dropped": 0, "ack": self.next_seq }));
        }
        let n = self.mail.len().min(max);
        let mut messages = Vec::with_capacity(n);
        let mut last = 0;
        // Each message's wait, once: from the mailbox to its first poll.
        let now = Instant::now();
        let first_time = |m: &mut Mail| {
            if !m.handed_out {
                m.handed_out = true;
                delay.observe(now.saturating_duration_since(m.queued_at));
            }
        };
        if ack.is_some() {
            for m in self.mail.iter_mut().take(n) {
                first_time(m);
                messages.push(mail_json(m.seq, &m.frame));
                last = m.seq;
            }
        } else {
            for _ in 0..n {
                if let Some(mut m) = self.mail.pop_front() {
                    self.bytes -= m.bytes;
                    first_time(&mut m);
                    messages.push(mail_json(m.seq, &m.frame));
                    last = m.seq;
                }
            }
        }
        let dropped = std::mem::take(&mut self.dropped);
        if last == 0 {
            last = ack
                .unwrap_or(0)
                .max(self.next_seq.min(ack.unwrap_or(self.next_seq)));
        }
        Some(json!({ "messages": messages, "dropped": dropped, "ack": last }))
    }
}

/// One message of a poll's answer.
fn mail_json(seq: u64, frame: &Frame) -> Value {
    let mut o = serde_json::Map::new();
    o.insert("seq".into(), json!(seq));
    o.insert("kind".into(), json!(frame.kind_name()));
    match &frame.kind {
        Some(Kind::Direct(d)) => {
            o.insert("from".into(), json!(d.from));
            put_bytes(&mut o, "payload", &d.payload);
            put_headers(&mut o, &d.headers);
        }
        Some(Kind::Request(r)) => {
            o.insert("id".into(), json!(r.id));
            o.insert("from".into(), json!(r.from));
            o.insert("method".into(), json!(r.method));
            o.insert("timeout_ms".into(), json!(r.timeout_ms));
            if !r.service.is_empty() {
                o.insert("service".into(), json!(r.service));
                o.insert("sub_id".into(), json!(r.sub_id));
            }
            put_bytes(&mut o, "payload", &r.payload);
            put_headers(&mut o, &r.headers);
        }
        Some(Kind::Broadcast(b)) => {
            o.insert("from".into(), json!(b.from));
            put_bytes(&mut o, "payload", &b.payload);
            put_headers(&mut o, &b.headers);
        }
        Some(Kind::Deliver(d)) => {
            o.insert("sub_id".into(), json!(d.sub_id));
            o.insert("topic".into(), json!(d.topic));
            o.insert("from".into(), json!(d.from));
            if !d.reply_to.is_empty() {
                o.insert("reply_to".into(), json!(d.reply_to));
            }
            put_bytes(&mut o, "payload", &d.payload);
            put_headers(&mut o, &d.headers);
        }
        Some(Kind::Presence(p)) => {
            let kind = if p.kind == proto::PresenceKind::Joined as i32 {
                "joined"
            } else {
                "left"
            };
            o.insert("event".into(), json!(kind));
            if let Some(c) = &p.client {
                o.insert("client".into(), client_json(c));
            }
            o.insert("reason".into(), json!(p.reason));
        }
        Some(Kind::KvUpdate(u)) => {
            o.insert("watch_id".into(), json!(u.watch_id));
            o.insert("key".into(), json!(u.key));
            o.insert("version".into(), json!(u.version));
            o.insert("deleted".into(), json!(u.deleted));
            o.insert("by".into(), json!(u.by));
            put_bytes(&mut o, "value", &u.value);
        }
        Some(Kind::Error(e)) => {
            o.insert("id".into(), json!(e.id));
            let code = ErrorCode::try_from(e.code).unwrap_or(ErrorCode::Internal);
            o.insert("code".into(), json!(code_name(code)));
            o.insert("message".into(), json!(e.message));
        }
        Some(Kind::Session(s)) => {
            use prost::Message;
            o.insert("peer".into(), json!(s.peer));
            o.insert(
                "frame_b64".into(),
                json!(base64::engine::general_purpose::STANDARD.encode(frame.encode_to_vec())),
            );
        }
        _ => {}
    }
    Value::Object(o)
}
