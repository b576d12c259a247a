//! Messages lost by a slow subscriber: one subscriber whose application
//! reads one message every `--read-delay-us` while `--lanes` publisher
//! tasks publish `--messages` confirmed (`Client::publish`) messages in
//! order, then at full speed once they are done. Every delivery is checked
//! per lane; the run counts what arrived, what was lost (confirmed but
//! never delivered), duplicates, messages out of order, and the drops the
//! subscriber and the hub reported.
//!
//! ```text
//! cargo run --release -p switchboard-bench -- slow-subscriber \
//!     [--messages N] [--lanes L] [--capacity C] \
//!     [--overflow block|drop-newest|drop-oldest] [--read-delay-us US] \
//!     [--hub-default-limits] [--json]
//! ```
//!
//! The hub runs in this process on loopback. By default its per-client
//! queue limits hold the whole run, so the hub's own slow-consumer policy
//! (drop the oldest deliveries of a client whose queue is full, and say
//! so) is out of the picture and only the client's handling of a full
//! stream is measured; `--hub-default-limits` runs with the hub's default
//! limits instead and reports what the hub dropped.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use serde_json::json;
use switchboard::hub::Limits;
use switchboard::{Client, Hub, Overflow, SubscribeOptions, Subscription};

use crate::report::Machine;

const TOKEN: &str = "slow-subscriber-bench";
const TOPIC: &str = "bench.slow";
/// Bytes per message: lane and number (big-endian `u32`s), zero-padded.
const PAYLOAD: usize = 64;

/// What the subscription does when its stream is full.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Policy {
    /// Push back (`Overflow::Block`, the client's default).
    Block,
    /// Drop the message that does not fit, and count it.
    DropNewest,
    /// Drop the oldest message in the stream, and count it.
    DropOldest,
}

impl Policy {
    fn name(self) -> &'static str {
        match self {
            Policy::Block => "block",
            Policy::DropNewest => "drop-newest",
            Policy::DropOldest => "drop-oldest",
        }
    }
}

/// Options of the `slow-subscriber` subcommand.
#[derive(clap::Args, Debug, Clone)]
pub struct Args {
    /// Confirmed publishes in all, split over the lanes.
    #[arg(long, default_value_t = 200_000)]
    pub messages: u64,
    /// Publisher tasks (one client), each publishing its share in order.
    #[arg(long, default_value_t = 8)]
    pub lanes: u32,
    /// The subscriber's stream capacity (`ClientBuilder::stream_capacity`
    /// and the subscription's capacity), in messages.
    #[arg(long, default_value_t = 64)]
    pub capacity: usize,
    /// The subscription's overflow policy.
    #[arg(long, value_enum, default_value_t = Policy::Block)]
    pub overflow: Policy,
    /// The subscriber's pause after each message while the publishers run,
    /// in µs (0: none); it reads at full speed after.
    #[arg(long, default_value_t = 1000)]
    pub read_delay_us: u64,
    /// Run the hub with its default limits (its slow-consumer policy may
    /// then drop deliveries) instead of limits that hold the whole run.
    #[arg(long)]
    pub hub_default_limits: bool,
    /// Once the publishers are done, end the run after this many seconds
    /// without a message (the rest counts as lost).
    #[arg(long, default_value_t = 5)]
    pub idle_s: u64,
    /// End the run after this many seconds in all.
    #[arg(long, default_value_t = 900)]
    pub deadline_s: u64,
    /// Print one JSON object instead of one line.
    #[arg(long)]
    pub json: bool,
}

/// What one run counted.
#[derive(Debug, Default)]
pub struct Outcome {
    /// Publishes the hub confirmed.
    pub sent: u64,
    /// Publishes that failed (their lane stopped).
    pub publish_errors: u64,
    /// The first publish error, if any.
    pub first_error: Option<String>,
    /// Distinct messages delivered to the application.
    pub delivered: u64,
    /// Messages delivered more than once (extra copies).
    pub duplicates: u64,
    /// Messages delivered after a higher number of their lane.
    pub out_of_order: u64,
    /// Messages the application took while the publishers ran.
    pub read_while_publishing: u64,
    /// `Client::dropped` of the subscriber (its streams' drops plus the
    /// drops the hub reported to it).
    pub client_dropped: u64,
    /// `Subscription::dropped` (drops by the subscription's policy).
    pub subscription_dropped: u64,
    /// The hub's `status().dropped` (its slow-consumer policy).
    pub hub_dropped: u64,
    /// Seconds from the first publish until every lane was confirmed.
    pub publish_s: f64,
    /// Seconds from the first publish until the last message arrived.
    pub last_message_s: f64,
    /// Why reading stopped: `all` (every confirmed message arrived),
    /// `idle`, `deadline` or `stream ended`.
    pub ended: &'static str,
}

impl Outcome {
    /// Confirmed publishes that never reached the application.
    pub fn lost(&self) -> u64 {
        self.sent.saturating_sub(self.delivered)
    }
}

fn payload(lane: u32, n: u32) -> Vec<u8> {
    let mut p = Vec::with_capacity(PAYLOAD);
    p.extend_from_slice(&lane.to_be_bytes());
    p.extend_from_slice(&n.to_be_bytes());
    p.resize(PAYLOAD, 0);
    p
}

fn parse(p: &[u8]) -> Option<(u32, u32)> {
    let lane = u32::from_be_bytes(p.get(..4)?.try_into().ok()?);
    let n = u32::from_be_bytes(p.get(4..8)?.try_into().ok()?);
    Some((lane, n))
}

/// Messages of lane `lane` when `total` are split over `lanes`.
fn share(total: u64, lanes: u32, lane: u32) -> u32 {
    let (per, rest) = (total / u64::from(lanes), total % u64::from(lanes));
    u32::try_from(per + u64::from(u64::from(lane) < rest)).unwrap_or(u32::MAX)
}

/// Per-lane bookkeeping of what arrived.
struct Lanes {
    seen: Vec<Vec<u64>>,
    highest: Vec<Option<u32>>,
    delivered: u64,
    duplicates: u64,
    out_of_order: u64,
    foreign: u64,
}

impl Lanes {
    fn new(total: u64, lanes: u32) -> Lanes {
        Lanes {
            seen: (0..lanes)
                .map(|l| vec![0u64; (share(total, lanes, l) as usize).div_ceil(64)])
                .collect(),
            highest: vec![None; lanes as usize],
            delivered: 0,
            duplicates: 0,
            out_of_order: 0,
            foreign: 0,
        }
    }

    fn record(&mut self, p: &[u8]) {
        let Some((lane, n)) = parse(p) else {
            self.foreign += 1;
            return;
        };
        let Some(bits) = self.seen.get_mut(lane as usize) else {
            self.foreign += 1;
            return;
        };
        let (word, bit) = (n as usize / 64, 1u64 << (n % 64));
        let Some(w) = bits.get_mut(word) else {
            self.foreign += 1;
            return;
        };
        if *w & bit != 0 {
            self.duplicates += 1;
            return;
        }
        *w |= bit;
        self.delivered += 1;
        let high = &mut self.highest[lane as usize];
        match *high {
            Some(h) if n < h => self.out_of_order += 1,
            _ => *high = Some(n),
        }
    }
}

/// The subscription under test (the part that differs between client
/// versions).
async fn subscribe(client: &Client, args: &Args) -> Result<Subscription> {
    let overflow = match args.overflow {
        Policy::Block => Overflow::Block,
        Policy::DropNewest => Overflow::DropNewest,
        Policy::DropOldest => Overflow::DropOldest,
    };
    Ok(client
        .subscribe_with(
            TOPIC,
            SubscribeOptions::default()
                .capacity(args.capacity)
                .overflow(overflow),
        )
        .await?)
}

/// One run as `args` says.
pub async fn run(args: &Args) -> Result<Outcome> {
    anyhow::ensure!(args.lanes > 0, "--lanes must be at least 1");
    anyhow::ensure!(
        args.messages / u64::from(args.lanes) < u64::from(u32::MAX),
        "--messages too large"
    );
    let mut builder = Hub::builder()
        .service("switchboard-bench-slow")
        .listen("127.0.0.1:0")
        .write_hint(false)
        .token(TOKEN);
    if !args.hub_default_limits {
        builder = builder.limits(Limits {
            queue_frames: 1 << 20,
            queue_bytes: 256 << 20,
            queue_hard_bytes: 512 << 20,
            ..Limits::default()
        });
    }
    let hub = builder.start().await.context("starting the hub")?;
    let addr = hub.local_addr().to_string();
    let subscriber = Client::builder("slow-subscriber")
        .addr(addr.clone())
        .token(TOKEN)
        .stream_capacity(args.capacity)
        .connect()
        .await
        .context("connecting the subscriber")?;
    let mut sub = subscribe(&subscriber, args).await?;
    let publisher = Client::builder("fast-publisher")
        .addr(addr)
        .token(TOKEN)
        .connect()
        .await
        .context("connecting the publisher")?;

    let sent = Arc::new(AtomicU64::new(0));
    let done = Arc::new(AtomicBool::new(false));
    let start = Instant::now();
    let deadline = start + Duration::from_secs(args.deadline_s);
    let lanes: Vec<_> = (0..args.lanes)
        .map(|lane| {
            let (publisher, sent) = (publisher.clone(), sent.clone());
            let count = share(args.messages, args.lanes, lane);
            tokio::spawn(async move {
                for n in 0..count {
                    publisher.publish(TOPIC, payload(lane, n)).await?;
                    sent.fetch_add(1, Ordering::Relaxed);
                }
                anyhow::Ok(())
            })
        })
        .collect();
    let publishing = {
        let done = done.clone();
        tokio::spawn(async move {
            let mut errors = Vec::new();
            for lane in lanes {
                match lane.await {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => errors.push(format!("{e:#}")),
                    Err(e) => errors.push(e.to_string()),
                }
            }
            let took = start.elapsed();
            done.store(true, Ordering::Release);
            (errors, took)
        })
    };

    let mut seen = Lanes::new(args.messages, args.lanes);
    let mut read_while_publishing = 0u64;
    let mut last = start;
    let idle = Duration::from_secs(args.idle_s);
    let delay = Duration::from_micros(args.read_delay_us);
    let mut done_at: Option<Instant> = None;
    let ended = loop {
        let now = Instant::now();
        if now >= deadline {
            break "deadline";
        }
        let finished = done.load(Ordering::Acquire);
        if finished {
            let since = *done_at.get_or_insert(now);
            if seen.delivered >= sent.load(Ordering::Relaxed) {
                break "all";
            }
            if now.duration_since(last.max(since)) >= idle {
                break "idle";
            }
        }
        let wait = (deadline - now).min(Duration::from_millis(100));
        match tokio::time::timeout(wait, sub.recv()).await {
            Ok(Some(m)) => {
                seen.record(&m.payload);
                last = Instant::now();
                if !finished {
                    read_while_publishing += 1;
                    if !delay.is_zero() {
                        tokio::time::sleep(delay).await;
                    }
                }
            }
            Ok(None) => break "stream ended",
            Err(_) => {}
        }
    };
    // Whatever still arrives shortly after is a duplicate or a late
    // message; count it too.
    if ended == "all" {
        while let Ok(Some(m)) = tokio::time::timeout(Duration::from_millis(200), sub.recv()).await {
            seen.record(&m.payload);
        }
    }
    if ended == "deadline" {
        publishing.abort();
    }
    let (errors, publish_took) = match publishing.await {
        Ok(r) => r,
        Err(_) => (vec!["stopped at the deadline".to_string()], start.elapsed()),
    };
    let outcome = Outcome {
        sent: sent.load(Ordering::Relaxed),
        publish_errors: errors.len() as u64,
        first_error: errors.first().cloned(),
        delivered: seen.delivered,
        duplicates: seen.duplicates,
        out_of_order: seen.out_of_order,
        read_while_publishing,
        client_dropped: subscriber.dropped(),
        subscription_dropped: sub.dropped(),
        hub_dropped: hub.status().dropped,
        publish_s: publish_took.as_secs_f64(),
        last_message_s: last.duration_since(start).as_secs_f64(),
        ended,
    };
    if seen.foreign > 0 {
        eprintln!("slow-subscriber: {} messages not of this run", seen.foreign);
    }
    drop(sub);
    let _ = publisher.close().await;
    let _ = subscriber.close().await;
    hub.shutdown().await;
    Ok(outcome)
}

/// The `slow-subscriber` subcommand: one run, printed as one line or one
/// JSON object.
pub async fn main(args: Args) -> Result<()> {
    let o = run(&args).await?;
    let machine = Machine::detect();
    let hub_limits = if args.hub_default_limits {
        "hub default limits (its slow-consumer policy may drop)"
    } else {
        "hub queue limits hold the whole run (its slow-consumer policy is out of the picture)"
    };
    if args.json {
        let v = json!({
            "bench": "slow-subscriber",
            "client": env!("CARGO_PKG_VERSION"),
            "overflow": args.overflow.name(),
            "messages": args.messages,
            "lanes": args.lanes,
            "capacity": args.capacity,
            "read_delay_us": args.read_delay_us,
            "hub_default_limits": args.hub_default_limits,
            "hub_limits": hub_limits,
            "sent": o.sent,
            "delivered": o.delivered,
            "lost": o.lost(),
            "duplicates": o.duplicates,
            "out_of_order": o.out_of_order,
            "read_while_publishing": o.read_while_publishing,
            "client_dropped": o.client_dropped,
            "subscription_dropped": o.subscription_dropped,
            "hub_dropped": o.hub_dropped,
            "publish_errors": o.publish_errors,
            "first_error": o.first_error,
            "publish_s": o.publish_s,
            "last_message_s": o.last_message_s,
            "ended": o.ended,
            "cores": machine.cores,
            "cpu": machine.cpu,
        });
        println!("{v}");
    } else {
        println!(
            "slow-subscriber overflow={} messages={} lanes={} capacity={} read-delay={}µs; {hub_limits}: sent {} delivered {} lost {} duplicates {} out-of-order {} (read while publishing {}); dropped: client {} subscription {} hub {}; publish errors {}{}; published in {:.2} s, last message at {:.2} s, ended: {}",
            args.overflow.name(),
            args.messages,
            args.lanes,
            args.capacity,
            args.read_delay_us,
            o.sent,
            o.delivered,
            o.lost(),
            o.duplicates,
            o.out_of_order,
            o.read_while_publishing,
            o.client_dropped,
            o.subscription_dropped,
            o.hub_dropped,
            o.publish_errors,
            o.first_error.as_deref().map(|e| format!(" ({e})")).unwrap_or_default(),
            o.publish_s,
            o.last_message_s,
            o.ended,
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shares_add_up() {
        let total: u64 = (0..8).map(|l| u64::from(share(200_003, 8, l))).sum();
        assert_eq!(total, 200_003);
    }

    #[test]
    fn counts_duplicates_and_order() {
        let mut l = Lanes::new(10, 2);
        for (lane, n) in [(0, 0), (0, 2), (0, 1), (0, 2), (1, 4)] {
            l.record(&payload(lane, n));
        }
        l.record(&payload(5, 0));
        assert_eq!(
            (l.delivered, l.duplicates, l.out_of_order, l.foreign),
            (4, 1, 1, 1)
        );
    }
}
