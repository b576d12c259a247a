//! Small statistics helpers: percentiles of latency samples and the
//! median/min/max summary of repeated runs.

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Median, minimum and maximum of the per-run values of one figure.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq)]
pub struct Summary {
    /// Median of the runs (mean of the two middle values for an even count).
    pub median: f64,
    /// Smallest run value.
    pub min: f64,
    /// Largest run value.
    pub max: f64,
}

impl Summary {
    /// `median [min – max]` for the terminal, right-aligned, with the
    /// decimals small values need (CPU seconds per million are fractions
    /// of one: 0.28 and 0.25 must not both print as 0.3).
    pub fn shown(&self) -> String {
        let big = self.median.abs().max(self.max.abs());
        let p = if big < 10.0 {
            3
        } else if big < 100.0 {
            2
        } else {
            1
        };
        format!(
            "{:>12.p$} [{:.p$} – {:.p$}]",
            self.median, self.min, self.max
        )
    }

    /// Summarises `values`; `None` when there are none or any is not finite.
    pub fn of(values: &[f64]) -> Option<Summary> {
        if values.is_empty() || values.iter().any(|v| !v.is_finite()) {
            return None;
        }
        let mut sorted = values.to_vec();
        sorted.sort_by(f64::total_cmp);
        let n = sorted.len();
        let median = if n % 2 == 1 {
            sorted[n / 2]
        } else {
            (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0
        };
        Some(Summary {
            median,
            min: sorted[0],
            max: sorted[n - 1],
        })
    }
}

/// Latency percentile `q` (0.0..=1.0) of `samples` in microseconds, using
/// the nearest-rank method; `None` for no samples.
pub fn percentile_us(samples: &mut [Duration], q: f64) -> Option<f64> {
    if samples.is_empty() {
        return None;
    }
    samples.sort_unstable();
    let rank = (q.clamp(0.0, 1.0) * samples.len() as f64).ceil() as usize;
    let idx = rank.saturating_sub(1).min(samples.len() - 1);
    Some(samples[idx].as_secs_f64() * 1e6)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summary_of_odd_and_even_counts() {
        let s = Summary::of(&[3.0, 1.0, 2.0]).unwrap();
        assert_eq!((s.median, s.min, s.max), (2.0, 1.0, 3.0));
        let s = Summary::of(&[4.0, 1.0, 2.0, 3.0]).unwrap();
        assert_eq!((s.median, s.min, s.max), (2.5, 1.0, 4.0));
        assert_eq!(s.shown(), "       2.500 [1.000 – 4.000]");
        let big = Summary::of(&[1_500_000.0, 1_200_000.25]).unwrap();
        assert_eq!(big.shown(), "   1350000.1 [1200000.2 – 1500000.0]");
        assert!(Summary::of(&[]).is_none());
        assert!(Summary::of(&[1.0, f64::NAN]).is_none());
    }

    #[test]
    fn percentiles_use_nearest_rank() {
        let mut v: Vec<Duration> = (1..=1000).rev().map(Duration::from_micros).collect();
        let mut at = |q| percentile_us(&mut v, q).map(f64::round);
        assert_eq!(at(0.5), Some(500.0));
        assert_eq!(at(0.99), Some(990.0));
        assert_eq!(at(0.999), Some(999.0));
        assert_eq!(at(1.0), Some(1000.0));
        assert_eq!(percentile_us(&mut [], 0.5), None);
    }
}
