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

use anyhow::{bail, Result};

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
        let step = Duration::from_secs_f64(flops / rate);
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

/// A duration as people write it.
pub fn human(d: Duration) -> String {
    let s = d.as_secs_f64();
    if s >= 1.0 {
        format!("{s:.3} s")
    } else if s >= 1e-3 {
        format!("{:.3} ms", s * 1e3)
    } else {
        format!("{:.3} us", s * 1e6)
    }
}

/// Parses `250ms`, `1.5s`, `2m`, `90us` (a bare number is seconds).
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let t = text.trim();
    let split = t.find(|c: char| !(c.is_ascii_digit() || c == '.' || c == 'e' || c == '-'));
    let (number, unit) = match split {
        Some(i) => t.split_at(i),
        None => (t, "s"),
    };
    let value: f64 =
        number.parse().map_err(|_| format!("{text:?} is not a duration like 250ms or 1.5s"))?;
    let scale = match unit.trim() {
        "ns" => 1e-9,
        "us" | "µs" => 1e-6,
        "ms" => 1e-3,
        "s" | "" => 1.0,
        "m" | "min" => 60.0,
        "h" => 3600.0,
        other => {
            return Err(format!("unknown unit {other:?} in {text:?} (use ns, us, ms, s, m or h)"))
        }
    };
    let secs = value * scale;
    if !(secs.is_finite() && secs >= 0.0) || secs > 1e9 {
        return Err(format!("{text:?} is not a usable duration"));
    }
    Ok(Duration::from_secs_f64(secs))
}

#[cfg(test)]
#[cfg_attr(test, allow(clippy::unwrap_used))]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_with_units_and_refuse_nonsense() {
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
        assert_eq!(parse_duration("1.5s").unwrap(), Duration::from_millis(1500));
        assert_eq!(parse_duration("2m").unwrap(), Duration::from_secs(120));
        assert_eq!(parse_duration("3").unwrap(), Duration::from_secs(3));
        assert_eq!(parse_duration("90us").unwrap(), Duration::from_micros(90));
        for bad in ["", "fast", "-1s", "1 parsec", "nan", "1e300s"] {
            assert!(parse_duration(bad).is_err(), "{bad:?} should be refused");
        }
    }

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
    }
}
