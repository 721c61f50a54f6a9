//! How long one worker's inner steps take against the stated step time: its region's
//! compute speed (a slower accelerator, a shared card) and a seeded jitter per step.
//!
//! A step of a worker in a region of speed `s` takes `base / s`, times `1 + j·u` where `j`
//! is the topology's `speed_jitter` and `u` a draw in [−1, 1] fixed by the run's seed, the
//! worker and the step: the same run replays the same step times.

use std::time::Duration;

use crate::rng::derive_seed;
use crate::topology::Topology;

/// One worker's step times.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Pace {
    /// Its steps take this many times the stated step time (1 / the region's speed).
    pub scale: f64,
    /// Each step strays by up to this fraction either way.
    pub jitter: f64,
    /// Fixes the draws.
    pub seed: u64,
}

impl Default for Pace {
    fn default() -> Self {
        Pace::EVEN
    }
}

impl Pace {
    /// Every step at the stated time.
    pub const EVEN: Pace = Pace { scale: 1.0, jitter: 0.0, seed: 0 };

    /// Worker `worker`'s pace in `region` of `topology`, in the run of `seed`.
    pub fn of(topology: &Topology, region: &str, seed: u64, worker: u64) -> Pace {
        Pace {
            scale: 1.0 / topology.speed_of(region, worker as usize),
            jitter: topology.speed_jitter(),
            seed: derive_seed(&[seed, 0x7061_6365, worker]),
        }
    }

    /// How long step `step` takes where the stated step time is `base`.
    pub fn step(&self, base: Duration, step: u64) -> Duration {
        if self.scale == 1.0 && self.jitter == 0.0 {
            return base;
        }
        let draw = derive_seed(&[self.seed, step]);
        // 53 random bits as a fraction in [0, 1), then mapped to [−1, 1).
        let u = (draw >> 11) as f64 / (1u64 << 53) as f64 * 2.0 - 1.0;
        base.mul_f64(self.scale * (1.0 + self.jitter * u))
    }
}

#[cfg(test)]
#[cfg_attr(test, allow(clippy::unwrap_used))]
mod tests {
    use super::*;

    #[test]
    fn a_slow_region_stretches_its_steps_and_jitter_stays_within_its_bound() {
        let mut t = Topology::preset("cross-continent").unwrap();
        let base = Duration::from_millis(1000);
        assert_eq!(Pace::of(&t, "us-east", 7, 0).step(base, 3), base);
        t.set_speed("ap-southeast", 0.5);
        let slow = Pace::of(&t, "ap-southeast", 7, 3);
        assert_eq!(slow.step(base, 0), Duration::from_secs(2));
        t.set_speed_jitter(0.1);
        let p = Pace::of(&t, "ap-southeast", 7, 3);
        let steps: Vec<Duration> = (0..1000).map(|s| p.step(base, s)).collect();
        assert!(steps.iter().all(|d| (1.8..=2.2).contains(&d.as_secs_f64())), "{steps:?}");
        // Seeded: the same worker and step give the same time; others differ.
        assert_eq!(steps, (0..1000).map(|s| p.step(base, s)).collect::<Vec<_>>());
        let other = Pace::of(&t, "ap-southeast", 7, 4);
        assert_ne!(steps[0], other.step(base, 0));
        let mean = steps.iter().map(Duration::as_secs_f64).sum::<f64>() / 1000.0;
        assert!((mean - 2.0).abs() < 0.02, "jitter centred on the region's time: {mean}");
    }
}
