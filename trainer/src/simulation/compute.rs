//! How long an inner step takes in simulated time.
//!
//! A simulated run charges compute to the virtual clock explicitly (a paused clock does not
//! move while the CPU trains). By default that charge is a fixed, stated step time, so the
//! run is deterministic and its seconds mean "on the accelerator you said": either given
//! directly, or modelled from the model's FLOPs (6 × parameters × tokens per step, the
//! usual forward-plus-backward estimate of Kaplan et al., 2020) and an accelerator's
//! sustained rate. Optionally each step is charged its measured duration on this machine,
//! which makes the run non-deterministic.

use std::time::Duration;

use crate::units::human;

use anyhow::{bail, Result};

/// The longest modelled step, in seconds: the largest `--step-time` accepts.
pub const MAX_STEP_SECONDS: f64 = 1e9;

/// The charge for one inner step.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum ComputeModel {
    /// Every step takes this long.
    Fixed(Duration),
    /// 6 × parameters × tokens per step at this sustained rate (FLOP/s).
    Flops {
        /// Sustained FLOP/s of the modelled accelerator.
        rate: f64,
        /// The step time it gives.
        step: Duration,
    },
    /// Each step is charged what it took on this machine.
    Measured,
}

impl ComputeModel {
    /// The model from the command line: `measured`, else `tflops` (sustained TFLOP/s) for
    /// a model of `parameters` training `tokens_per_step`, else `step_time`.
    pub fn from_args(
        step_time: Duration,
        tflops: Option<f64>,
        measured: bool,
        parameters: i64,
        tokens_per_step: u64,
    ) -> Result<Self> {
        if measured {
            return Ok(ComputeModel::Measured);
        }
        let Some(tflops) = tflops else {
            if step_time.is_zero() {
                bail!("--step-time must be positive");
            }
            return Ok(ComputeModel::Fixed(step_time));
        };
        if !(tflops.is_finite() && tflops > 0.0) {
            bail!("--tflops must be a positive number, got {tflops}");
        }
        let rate = tflops * 1e12;
        let flops = 6.0 * parameters as f64 * tokens_per_step as f64;
        let seconds = flops / rate;
        // The same bound as --step-time's: past it, no simulation could finish.
        if !seconds.is_finite() || seconds > MAX_STEP_SECONDS {
            let t = meridian_optimizer::divergence::show_number(tflops);
            bail!(
                "--tflops {t} makes a step take {seconds:.3e} s (6 x {parameters} parameters x \
                 {tokens_per_step} tokens at {t} TFLOP/s); a step may take at most \
                 {MAX_STEP_SECONDS:.0e} s: give the accelerator's sustained rate in TFLOP/s"
            );
        }
        let step = Duration::from_secs_f64(seconds);
        if step.is_zero() {
            bail!("--tflops {tflops} makes a step take no time at all");
        }
        Ok(ComputeModel::Flops { rate, step })
    }

    /// The fixed charge per step; `None` when steps are measured.
    pub fn step_time(&self) -> Option<Duration> {
        match self {
            ComputeModel::Fixed(d) | ComputeModel::Flops { step: d, .. } => Some(*d),
            ComputeModel::Measured => None,
        }
    }

    /// Whether the same seed gives the same run.
    pub fn deterministic(&self) -> bool {
        !matches!(self, ComputeModel::Measured)
    }

    /// One line for the summary and the console.
    pub fn describe(&self) -> String {
        match self {
            ComputeModel::Fixed(d) => format!("{} per inner step (given)", human(*d)),
            ComputeModel::Flops { rate, step } => format!(
                "{} per inner step (6 x parameters x tokens at {:.3} TFLOP/s)",
                human(*step),
                rate / 1e12
            ),
            ComputeModel::Measured => "each step's measured time on this machine".into(),
        }
    }
}

#[cfg(test)]
#[cfg_attr(test, allow(clippy::unwrap_used))]
mod tests {
    use super::*;

    #[test]
    fn the_flops_model_is_six_times_parameters_times_tokens_over_the_rate() {
        let m = ComputeModel::from_args(Duration::from_secs(1), Some(1.0), false, 1_000_000, 4096)
            .unwrap();
        // 6 × 1e6 × 4096 / 1e12 = 24.576 ms.
        assert_eq!(m.step_time().unwrap(), Duration::from_secs_f64(0.024576));
        assert!(m.deterministic());
        let fixed = ComputeModel::from_args(Duration::from_millis(250), None, false, 1, 1).unwrap();
        assert_eq!(fixed.step_time(), Some(Duration::from_millis(250)));
        let measured = ComputeModel::from_args(Duration::from_millis(250), Some(1.0), true, 1, 1);
        assert!(!measured.unwrap().deterministic());
        assert!(ComputeModel::from_args(Duration::ZERO, None, false, 1, 1).is_err());
        assert!(ComputeModel::from_args(Duration::from_secs(1), Some(-3.0), false, 1, 1).is_err());
        // A rate so low a step would outlast any clock is an error naming the flag.
        let err = ComputeModel::from_args(Duration::from_secs(1), Some(1e-30), false, 140_000, 512)
            .unwrap_err()
            .to_string();
        assert!(err.contains("--tflops") && err.contains("at most"), "{err}");
    }
}
