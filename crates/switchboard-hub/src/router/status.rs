//! What the router shows: the gauges it publishes into the hub's shared
//! [`HubStats`](crate::stats::HubStats), the `Status` frame, and the operators' [`Inspection`].

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use switchboard_wire::proto;

use super::api::Inspection;
use super::Router;

impl Router {
    /// Copies the router's gauges into the shared
    /// [`HubStats`](crate::stats::HubStats).
    pub fn publish_stats(&self) {
        let s = &self.stats;
        s.repl
            .seq
            .store(self.output.journal.repl_seq(), Ordering::Relaxed);
        s.msgs_in.store(self.counters.msgs_in, Ordering::Relaxed);
        s.clients
            .store(self.registry.len() as u64, Ordering::Relaxed);
        s.subscriptions
            .store(self.pubsub.count(), Ordering::Relaxed);
        s.pending
            .store(self.requests.pending_len() as u64, Ordering::Relaxed);
        s.kv_keys
            .store(self.kv.store().live_keys() as u64, Ordering::Relaxed);
        s.dropped.store(self.output.dropped(), Ordering::Relaxed);
    }

    /// The hub's status and counters at `now`.
    pub fn status(&self, now: Instant, id: u64) -> proto::Status {
        let uptime = self.started.map_or(Duration::ZERO, |s| now - s);
        let c = &self.counters;
        let r = self.requests.counters();
        let remote_dropped = self.remote.as_ref().map_or(0, |r| r.dropped());
        let mut counters: std::collections::BTreeMap<String, u64> = [
            ("undeliverable", r.undeliverable),
            ("replies_dropped", r.replies_dropped),
            ("requests_timed_out", r.timeouts),
            ("queue_full", r.queue_full),
            ("slow_consumer_disconnects", c.slow_consumers),
            ("takeovers", c.takeovers),
            ("unsupported_frames", c.unsupported),
            ("parked_total", r.parked_total),
            ("duplicates_dropped", c.duplicates),
            ("resumes", c.resumes),
            ("resume_expired", c.resume_expired),
            ("not_listening", r.not_listening),
            ("no_responders", self.pubsub.no_responders()),
            ("requests_cancelled", r.cancels),
            (
                "unacked_frames",
                self.output
                    .links()
                    .map(|(_, l)| l.reliable.unacked_len() as u64)
                    .sum(),
            ),
            ("parked_now", self.requests.parked_now() as u64),
            ("kv_tombstones", self.kv.store().tombstones() as u64),
            ("kv_watches", self.kv.watch_count() as u64),
            ("presence_watchers", self.presence.watchers() as u64),
            ("queue_groups", self.pubsub.groups() as u64),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .chain(self.drops_by_client())
        .chain(
            self.remote
                .as_ref()
                .and_then(|r| r.status())
                .map(|s| s.counters())
                .unwrap_or_default(),
        )
        .collect();
        if remote_dropped > 0 {
            let key = format!("dropped:{}", super::remote::PORT_ID);
            *counters.entry(key).or_insert(0) += remote_dropped;
        }
        let mut status = proto::Status {
            id,
            identity: Some(self.identity.clone()),
            uptime_s: uptime.as_secs(),
            clients: self.registry.len() as u64,
            subscriptions: self.pubsub.count(),
            msgs_in: c.msgs_in,
            msgs_out: self.stats.msgs_out.load(Ordering::Relaxed),
            bytes_in: self.stats.bytes_in.load(Ordering::Relaxed),
            bytes_out: self.stats.bytes_out.load(Ordering::Relaxed),
            dropped: self.output.dropped() + remote_dropped,
            queue_depth: self
                .output
                .links()
                .map(|(_, l)| l.outbox.depth() as u64)
                .sum(),
            pending_requests: self.requests.pending_len() as u64,
            kv_keys: self.kv.store().live_keys() as u64,
            counters,
            ..Default::default()
        };
        self.stats.repl.fill(&mut status);
        status
    }

    /// `dropped:CLIENT_ID` for each connected client the hub has dropped
    /// pub/sub deliveries for (slow consumers), with the count since its
    /// connection.
    fn drops_by_client(&self) -> impl Iterator<Item = (String, u64)> + '_ {
        self.output.links().filter_map(|(conn, link)| {
            let dropped = link.outbox.dropped_total();
            let client = self.registry.get(*conn)?;
            (dropped > 0).then(|| (format!("dropped:{}", client.id()), dropped))
        })
    }

    /// The operators' view at `now`.
    pub fn inspect(&self, now: Instant) -> Inspection {
        Inspection {
            status: self.status(now, 0),
            clients: self.registry.infos(),
            topics: self.pubsub.topics(),
            presence: self.presence.recent().cloned().collect(),
        }
    }
}
