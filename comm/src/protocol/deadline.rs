//! How long the coordinator keeps a round open.
//!
//! A round's duration is measured from its opening to its last delivery: it covers the
//! members' compute (inner steps) and the upload. The adaptive policy sets the next deadline
//! to `factor × median` of the last `window` durations, clamped to `[min, max]`, and uses
//! `initial` until it has seen `min_samples` rounds. The median ignores a few slow rounds;
//! the factor leaves headroom for normal jitter. Durations are whole milliseconds so the
//! statistics persist exactly.

use std::collections::VecDeque;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::ProtocolError;

/// The most durations the statistics keep (and the largest allowed `window`).
pub const MAX_WINDOW: usize = 64;

/// How the coordinator sets round deadlines.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum DeadlinePolicy {
    /// Every round gets the same deadline.
    Fixed(Duration),
    /// The deadline follows observed round durations.
    Adaptive(AdaptiveDeadline),
}

impl Default for DeadlinePolicy {
    /// By default, [`AdaptiveDeadline::default`].
    fn default() -> Self {
        DeadlinePolicy::Adaptive(AdaptiveDeadline::default())
    }
}

/// The adaptive policy: `clamp(factor × median(last window durations), min, max)`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AdaptiveDeadline {
    /// The deadline until `min_samples` rounds were observed. By default 10 minutes: a
    /// first outer round (hundreds of inner steps) must not be cut short.
    pub initial: Duration,
    /// The shortest deadline. By default 5 s.
    pub min: Duration,
    /// The longest deadline. By default 1 hour.
    pub max: Duration,
    /// Headroom over the median, at least 1. By default 1.5.
    pub factor: f64,
    /// How many recent durations the median looks at, 1..=64. By default 16.
    pub window: usize,
    /// Observed rounds needed before the median replaces `initial`. By default 3.
    pub min_samples: usize,
}

impl Default for AdaptiveDeadline {
    fn default() -> Self {
        AdaptiveDeadline {
            initial: Duration::from_secs(600),
            min: Duration::from_secs(5),
            max: Duration::from_secs(3600),
            factor: 1.5,
            window: 16,
            min_samples: 3,
        }
    }
}

impl DeadlinePolicy {
    /// Checks the values are usable.
    pub fn validate(&self) -> Result<(), ProtocolError> {
        let bad = |what: &str| Err(ProtocolError::Config(format!("deadline: {what}")));
        match self {
            DeadlinePolicy::Fixed(d) if d.is_zero() => bad("a fixed deadline must be positive"),
            DeadlinePolicy::Fixed(_) => Ok(()),
            DeadlinePolicy::Adaptive(a) => {
                if a.initial.is_zero() || a.min.is_zero() {
                    bad("initial and min must be positive")
                } else if a.min > a.max {
                    bad("min exceeds max")
                } else if !(a.factor.is_finite() && a.factor >= 1.0) {
                    bad("factor must be a finite number >= 1")
                } else if a.window == 0 || a.window > MAX_WINDOW {
                    bad("window must be in 1..=64")
                } else if a.min_samples == 0 || a.min_samples > a.window {
                    bad("min_samples must be in 1..=window")
                } else {
                    Ok(())
                }
            }
        }
    }

    /// The longest deadline this policy can produce.
    pub fn longest(&self) -> Duration {
        match self {
            DeadlinePolicy::Fixed(d) => *d,
            DeadlinePolicy::Adaptive(a) => a.initial.max(a.max),
        }
    }

    /// The deadline for the next round, given the statistics so far.
    pub fn next(&self, stats: &DeadlineStats) -> Duration {
        match self {
            DeadlinePolicy::Fixed(d) => *d,
            DeadlinePolicy::Adaptive(a) => {
                let recent: Vec<u64> =
                    stats.recent_ms.iter().rev().take(a.window).copied().collect();
                if recent.len() < a.min_samples {
                    return a.initial;
                }
                let scaled = median(recent) as f64 * a.factor;
                // `as` saturates for floats out of range; the clamp bounds it anyway.
                Duration::from_millis(scaled as u64).clamp(a.min, a.max)
            }
        }
    }
}

fn median(mut values: Vec<u64>) -> u64 {
    values.sort_unstable();
    let n = values.len();
    match n {
        0 => 0,
        _ if n % 2 == 1 => values[n / 2],
        // The mean of the middle two, computed wide so it cannot overflow.
        _ => ((u128::from(values[n / 2 - 1]) + u128::from(values[n / 2])) / 2) as u64,
    }
}

/// Observed round durations (opening → last delivery), newest last; persisted with the
/// coordinator so a restart keeps its deadline.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeadlineStats {
    /// Up to 64 durations in milliseconds, oldest first.
    pub recent_ms: VecDeque<u64>,
}

impl DeadlineStats {
    /// Records a round that saw at least one delivery.
    pub fn observe(&mut self, duration: Duration) {
        let ms = u64::try_from(duration.as_millis()).unwrap_or(u64::MAX);
        self.recent_ms.push_back(ms);
        while self.recent_ms.len() > MAX_WINDOW {
            self.recent_ms.pop_front();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn adaptive() -> AdaptiveDeadline {
        AdaptiveDeadline {
            initial: Duration::from_secs(100),
            min: Duration::from_secs(2),
            max: Duration::from_secs(50),
            factor: 2.0,
            window: 4,
            min_samples: 3,
        }
    }

    #[test]
    fn adaptive_uses_initial_until_min_samples() {
        let policy = DeadlinePolicy::Adaptive(adaptive());
        let mut stats = DeadlineStats::default();
        assert_eq!(policy.next(&stats), Duration::from_secs(100));
        stats.observe(Duration::from_secs(3));
        stats.observe(Duration::from_secs(3));
        assert_eq!(policy.next(&stats), Duration::from_secs(100));
        stats.observe(Duration::from_secs(5));
        assert_eq!(policy.next(&stats), Duration::from_secs(6), "2 × median(3, 3, 5)");
    }

    #[test]
    fn adaptive_median_ignores_an_outlier_and_old_rounds() {
        let policy = DeadlinePolicy::Adaptive(adaptive());
        let mut stats = DeadlineStats::default();
        // Old slow rounds fall out of the window of 4.
        for s in [40, 40, 40, 4, 4, 4, 30] {
            stats.observe(Duration::from_secs(s));
        }
        assert_eq!(policy.next(&stats), Duration::from_secs(8), "2 × median(4, 4, 4, 30)");
    }

    #[test]
    fn adaptive_is_clamped() {
        let policy = DeadlinePolicy::Adaptive(adaptive());
        let mut stats = DeadlineStats::default();
        for _ in 0..4 {
            stats.observe(Duration::from_millis(10));
        }
        assert_eq!(policy.next(&stats), Duration::from_secs(2));
        for _ in 0..4 {
            stats.observe(Duration::from_secs(1000));
        }
        assert_eq!(policy.next(&stats), Duration::from_secs(50));
    }

    #[test]
    fn stats_keep_at_most_the_max_window() {
        let mut stats = DeadlineStats::default();
        for i in 0..100 {
            stats.observe(Duration::from_millis(i));
        }
        assert_eq!(stats.recent_ms.len(), MAX_WINDOW);
        assert_eq!(stats.recent_ms.front(), Some(&36));
    }

    #[test]
    fn invalid_policies_are_refused() {
        assert!(DeadlinePolicy::Fixed(Duration::ZERO).validate().is_err());
        assert!(DeadlinePolicy::default().validate().is_ok());
        for broken in [
            AdaptiveDeadline { factor: 0.5, ..adaptive() },
            AdaptiveDeadline { factor: f64::NAN, ..adaptive() },
            AdaptiveDeadline { window: 0, ..adaptive() },
            AdaptiveDeadline { min_samples: 5, ..adaptive() },
            AdaptiveDeadline { min: Duration::from_secs(60), ..adaptive() },
        ] {
            assert!(DeadlinePolicy::Adaptive(broken).validate().is_err());
        }
    }
}
