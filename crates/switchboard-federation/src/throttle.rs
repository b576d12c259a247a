//! Warnings about drops, rate-limited by time: at most one line per
//! [`LOG_INTERVAL`] for each cause, carrying how many were dropped since
//! the cause's previous line (the counters keep the totals).

use std::time::{Duration, Instant};

use parking_lot::Mutex;

/// The shortest time between two lines about one cause of drops.
pub const LOG_INTERVAL: Duration = Duration::from_secs(1);

/// One cause of drops: counts them and says when a line is due.
#[derive(Debug, Default)]
pub struct Throttle {
    /// When the last line was due, and the drops counted since.
    state: Mutex<(Option<Instant>, u64)>,
}

impl Throttle {
    /// A cause with no drops yet.
    pub fn new() -> Throttle {
        Throttle::default()
    }

    /// Counts one drop; `Some(n)` when a line is due (the first drop, or
    /// the first one [`LOG_INTERVAL`] after the previous line): `n` drops
    /// since the previous line, this one included.
    pub fn hit(&self) -> Option<u64> {
        self.hit_at(Instant::now())
    }

    fn hit_at(&self, now: Instant) -> Option<u64> {
        let mut st = self.state.lock();
        st.1 += 1;
        let due =
            st.0.is_none_or(|last| now.saturating_duration_since(last) >= LOG_INTERVAL);
        if !due {
            return None;
        }
        let n = st.1;
        *st = (Some(now), 0);
        Some(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_line_per_interval_with_the_count_since_the_last() {
        let t = Throttle::new();
        let start = Instant::now();
        assert_eq!(t.hit_at(start), Some(1), "the first drop is told at once");
        for i in 0..10_000u64 {
            let at = start + LOG_INTERVAL * (i as u32) / 20_000;
            assert_eq!(t.hit_at(at), None, "within the interval: silent");
        }
        // The first drop after the interval carries all of them.
        assert_eq!(t.hit_at(start + LOG_INTERVAL), Some(10_001));
        assert_eq!(t.hit_at(start + LOG_INTERVAL), None);
        assert_eq!(t.hit_at(start + LOG_INTERVAL * 5), Some(2));
    }
}
