//! Types shared by the agent and the manager: events, fault codes, the retry
//! table and session failure reasons.

use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use switchboard_wire::proto;

/// TR-069 style fault codes carried in [`proto::Fault::code`].
pub mod fault_code {
    /// The agent has no handler for the method.
    pub const METHOD_NOT_SUPPORTED: u32 = 8000;
    /// The request was refused (wrong moment in the session, policy).
    pub const REQUEST_DENIED: u32 = 8001;
    /// The handler failed unexpectedly (for example it panicked), or the
    /// session was aborted.
    pub const INTERNAL_ERROR: u32 = 8002;
    /// The request is malformed or its arguments are wrong.
    pub const INVALID_ARGUMENTS: u32 = 8003;
    /// A limit was hit (queue full, too many RPCs in one session).
    pub const RESOURCES_EXCEEDED: u32 = 8004;
    /// The request should be sent again later.
    pub const RETRY_REQUEST: u32 = 8005;
}

/// Builds a [`proto::Fault`].
pub fn fault(id: impl Into<String>, code: u32, message: impl Into<String>) -> proto::Fault {
    proto::Fault {
        id: id.into(),
        code,
        message: message.into(),
    }
}

/// An event the agent reports in an `Inform` (TR-069 EventStruct).
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Event {
    /// Event code, e.g. `"1 BOOT"`, `"7 TRANSFER COMPLETE"`, `"M Download"`.
    pub code: String,
    /// Command key that goes with the event (empty if none).
    #[serde(default)]
    pub command_key: String,
}

impl Event {
    /// `"0 BOOTSTRAP"`: first contact after a factory reset.
    pub const BOOTSTRAP: &'static str = "0 BOOTSTRAP";
    /// `"1 BOOT"`: the agent (re)started.
    pub const BOOT: &'static str = "1 BOOT";
    /// `"2 PERIODIC"`: periodic contact.
    pub const PERIODIC: &'static str = "2 PERIODIC";
    /// `"4 VALUE CHANGE"`: a watched value changed.
    pub const VALUE_CHANGE: &'static str = "4 VALUE CHANGE";
    /// `"6 CONNECTION REQUEST"`: the manager asked for a session.
    pub const CONNECTION_REQUEST: &'static str = "6 CONNECTION REQUEST";
    /// `"7 TRANSFER COMPLETE"`: a transfer finished.
    pub const TRANSFER_COMPLETE: &'static str = "7 TRANSFER COMPLETE";

    /// An event with `code` and no command key.
    pub fn new(code: impl Into<String>) -> Event {
        Event {
            code: code.into(),
            command_key: String::new(),
        }
    }

    /// An event with `code` and `command_key`.
    pub fn with_key(code: impl Into<String>, command_key: impl Into<String>) -> Event {
        Event {
            code: code.into(),
            command_key: command_key.into(),
        }
    }

    /// How the event survives failed sessions and restarts.
    pub fn class(&self) -> EventClass {
        EventClass::of(&self.code)
    }
}

impl From<Event> for proto::Event {
    fn from(e: Event) -> proto::Event {
        proto::Event {
            code: e.code,
            command_key: e.command_key,
        }
    }
}

impl From<proto::Event> for Event {
    fn from(e: proto::Event) -> Event {
        Event {
            code: e.code,
            command_key: e.command_key,
        }
    }
}

impl fmt::Display for Event {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.command_key.is_empty() {
            f.write_str(&self.code)
        } else {
            write!(f, "{} [{}]", self.code, self.command_key)
        }
    }
}

/// How an event survives a failed session and a restart of the agent.
///
/// Every event is cleared only when it has been delivered, that is when the
/// `InformResponse` of a session whose `Inform` carried it arrives.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventClass {
    /// Kept across failed sessions and, when a journal is configured, across
    /// restarts: `"0 BOOTSTRAP"`, `"7 TRANSFER COMPLETE"`,
    /// `"10 AUTONOMOUS TRANSFER COMPLETE"` and every `"M <method>"` event.
    Persistent,
    /// Kept across failed sessions until the agent restarts: `"1 BOOT"`,
    /// `"4 VALUE CHANGE"` and every other code.
    UntilRestart,
    /// Dropped when a session fails: `"6 CONNECTION REQUEST"` (the manager
    /// asks again if it still wants a session).
    DropOnFailure,
}

impl EventClass {
    /// The class of event `code`.
    pub fn of(code: &str) -> EventClass {
        match code {
            Event::CONNECTION_REQUEST => EventClass::DropOnFailure,
            Event::BOOTSTRAP | Event::TRANSFER_COMPLETE | "10 AUTONOMOUS TRANSFER COMPLETE" => {
                EventClass::Persistent
            }
            c if c.starts_with("M ") => EventClass::Persistent,
            _ => EventClass::UntilRestart,
        }
    }
}

/// TR-069 session retry parameters.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Minimum wait `m` (TR-069 default 5 s).
    pub min_wait: Duration,
    /// Interval multiplier `k`, in thousandths (TR-069 default 2000, i.e.
    /// doubling).
    pub multiplier: u32,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            min_wait: Duration::from_secs(5),
            multiplier: 2000,
        }
    }
}

impl RetryPolicy {
    /// Retries from this one on all use the same range.
    pub const CAP: u32 = 10;

    /// The range `[m·(k/1000)^(n−1), m·(k/1000)^n]` the wait before retry
    /// `n` (1-based) is drawn from; from retry 10 on the range of retry 10.
    /// Retry 0 (no failure yet) waits nothing.
    pub fn range(&self, retry: u32) -> (Duration, Duration) {
        if retry == 0 {
            return (Duration::ZERO, Duration::ZERO);
        }
        let n = retry.min(Self::CAP) as i32;
        let k = f64::from(self.multiplier) / 1000.0;
        let m = self.min_wait.as_secs_f64();
        let lo = m * k.powi(n - 1);
        let hi = m * k.powi(n);
        let (lo, hi) = if lo <= hi { (lo, hi) } else { (hi, lo) };
        (secs(lo), secs(hi))
    }

    /// Draws the wait before retry `retry` from [`RetryPolicy::range`];
    /// `unit` is a random value in `[0, 1)` supplied by the caller.
    pub fn wait(&self, retry: u32, unit: f64) -> Duration {
        let (lo, hi) = self.range(retry);
        let span = hi.saturating_sub(lo);
        lo + span.mul_f64(unit.clamp(0.0, 1.0))
    }
}

fn secs(s: f64) -> Duration {
    // Bounded so a huge multiplier cannot overflow `Duration`.
    Duration::from_secs_f64(s.clamp(0.0, 1.0e9))
}

/// Why a session failed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FailReason {
    /// The peer did not answer within the response timeout.
    ResponseTimeout,
    /// The connection was lost.
    Disconnected,
    /// The peer aborted the session with a session-level fault.
    Aborted {
        /// The fault's code.
        code: u32,
        /// The fault's message.
        message: String,
    },
    /// The agent opened a new session while the manager still had one open.
    Superseded,
}

impl fmt::Display for FailReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FailReason::ResponseTimeout => f.write_str("no answer within the response timeout"),
            FailReason::Disconnected => f.write_str("connection lost"),
            FailReason::Aborted { code, message } => {
                write!(f, "aborted by the peer with fault {code}: {message}")
            }
            FailReason::Superseded => f.write_str("the agent opened a new session"),
        }
    }
}

/// Error returned when a bounded queue is full.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("queue full ({limit} entries): wait for earlier work to finish, or raise the limit")]
pub struct QueueFull {
    /// The queue's limit.
    pub limit: usize,
}
