//! Outer learning-rate schedules for the algorithms with an outer step (DiLoCo, SparseLoCo,
//! Streaming DiLoCo), counted in exchanges so that every replica computes the same rate
//! from the round number alone.
//!
//! The published runs keep the outer rate constant (DiLoCo 0.7, INTELLECT-1 0.7,
//! SparseLoCo 1.0, Templar's production 0.9; see papers/diloco.md): the inner schedule
//! already shrinks the pseudo-gradients as it decays. That is the default. A warmup and a
//! cosine decay are offered for short runs and for the frontier search, written as one
//! setting:
//!
//! ```toml
//! outer_lr_schedule = "constant"                      # the default
//! outer_lr_schedule = "warmup=3"                      # linear over the first 3 rounds
//! outer_lr_schedule = "cosine=20,min=0.1"             # to 10 % over 20 rounds, then flat
//! outer_lr_schedule = "warmup=2,cosine=18,min=0.25"
//! ```
//!
//! Round `r` (0-based) gets `outer_lr × w(r) × d(r)`: `w(r) = min(1, (r + 1)/warmup)`,
//! and, after the warmup, `d = min + (1 − min)·½(1 + cos(π·t))` with
//! `t = min(1, (r − warmup)/cosine)`.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A warmup and a cosine decay of the outer learning rate, in rounds (see the module doc).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct OuterLrSchedule {
    /// Rounds of linear warmup (0: none).
    pub warmup: u64,
    /// Rounds of cosine decay after the warmup (0: constant).
    pub cosine: u64,
    /// Where the decay ends, as a fraction of the outer rate.
    pub min: f64,
}

impl Default for OuterLrSchedule {
    fn default() -> Self {
        Self::CONSTANT
    }
}

impl OuterLrSchedule {
    /// The papers' schedule: the outer rate as set, every round.
    pub const CONSTANT: Self = Self { warmup: 0, cosine: 0, min: 1.0 };

    /// The multiplier of the outer rate at 0-based round `round`.
    pub fn factor(&self, round: u64) -> f64 {
        let warm = if round < self.warmup { (round + 1) as f64 / self.warmup as f64 } else { 1.0 };
        if self.cosine == 0 || round < self.warmup {
            return warm;
        }
        let t = ((round - self.warmup) as f64 / self.cosine as f64).min(1.0);
        self.min + (1.0 - self.min) * 0.5 * (1.0 + (std::f64::consts::PI * t).cos())
    }

    /// Checks the ending fraction; `what` names the setting in the message.
    pub fn validate(&self, what: &str) -> Result<(), String> {
        if !(self.min.is_finite() && (0.0..=1.0).contains(&self.min)) {
            return Err(format!(
                "{what}: min = {} is out of range: it must be in [0, 1] (a fraction of outer_lr)",
                self.min
            ));
        }
        Ok(())
    }
}

impl fmt::Display for OuterLrSchedule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut parts = Vec::new();
        if self.warmup > 0 {
            parts.push(format!("warmup={}", self.warmup));
        }
        if self.cosine > 0 {
            parts.push(format!("cosine={}", self.cosine));
            parts.push(format!("min={}", self.min));
        }
        if parts.is_empty() {
            f.write_str("constant")
        } else {
            f.write_str(&parts.join(","))
        }
    }
}

const FORM: &str =
    "\"constant\", or comma-separated warmup=ROUNDS, cosine=ROUNDS and min=FRACTION \
                    (e.g. \"warmup=2,cosine=18,min=0.1\")";

impl FromStr for OuterLrSchedule {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let s = s.trim();
        if s == "constant" {
            return Ok(Self::CONSTANT);
        }
        let mut out = Self { warmup: 0, cosine: 0, min: 0.1 };
        let mut seen = Vec::new();
        for part in s.split(',').map(str::trim) {
            let Some((key, value)) = part.split_once('=') else {
                return Err(format!(
                    "outer_lr_schedule {s:?}: {part:?} is not KEY=VALUE; write {FORM}"
                ));
            };
            let key = key.trim();
            if seen.contains(&key) {
                return Err(format!("outer_lr_schedule {s:?}: {key} is given twice"));
            }
            seen.push(key);
            let rounds = || {
                value.trim().parse::<u64>().map_err(|_| {
                    format!("outer_lr_schedule {s:?}: {key} = {value:?} is not a whole number of rounds")
                })
            };
            match key {
                "warmup" => out.warmup = rounds()?,
                "cosine" => out.cosine = rounds()?,
                "min" => {
                    out.min = value.trim().parse::<f64>().map_err(|_| {
                        format!("outer_lr_schedule {s:?}: min = {value:?} is not a number")
                    })?
                }
                _ => {
                    return Err(format!(
                        "outer_lr_schedule {s:?}: unknown key {key:?}; write {FORM}"
                    ))
                }
            }
        }
        if seen.contains(&"min") && out.cosine == 0 {
            return Err(format!("outer_lr_schedule {s:?}: min needs cosine=ROUNDS to decay over"));
        }
        if out.cosine == 0 {
            out.min = 1.0;
        }
        out.validate("outer_lr_schedule")?;
        Ok(out)
    }
}

impl Serialize for OuterLrSchedule {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_string())
    }
}

impl<'de> Deserialize<'de> for OuterLrSchedule {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d)?.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> OuterLrSchedule {
        s.parse().unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    #[test]
    fn constant_is_one_every_round() {
        let c = OuterLrSchedule::default();
        assert!((0..1000).all(|r| c.factor(r) == 1.0));
        assert_eq!(c.to_string(), "constant");
        assert_eq!(parse("constant"), c);
    }

    #[test]
    fn warmup_rises_linearly_then_holds() {
        let w = parse("warmup=4");
        let f: Vec<f64> = (0..6).map(|r| w.factor(r)).collect();
        assert_eq!(f, vec![0.25, 0.5, 0.75, 1.0, 1.0, 1.0]);
    }

    #[test]
    fn cosine_decays_from_one_to_min_and_stays() {
        let c = parse("warmup=2,cosine=10,min=0.2");
        assert_eq!(c.factor(1), 1.0, "the warmup's last round is at full rate");
        assert_eq!(c.factor(2), 1.0, "the decay starts at full rate");
        assert!((c.factor(7) - 0.6).abs() < 1e-12, "half way: the mean of 1 and min");
        assert!((c.factor(12) - 0.2).abs() < 1e-12);
        assert!((c.factor(500) - 0.2).abs() < 1e-12, "flat after the decay");
        let f: Vec<f64> = (2..=12).map(|r| c.factor(r)).collect();
        assert!(f.windows(2).all(|p| p[1] < p[0]), "strictly decreasing: {f:?}");
    }

    #[test]
    fn the_text_form_round_trips() {
        for s in ["constant", "warmup=3", "cosine=20,min=0.1", "warmup=2,cosine=18,min=0.25"] {
            assert_eq!(parse(s).to_string(), s);
        }
        assert_eq!(parse(" cosine = 5 ").min, 0.1, "min defaults to 10 %");
    }

    #[test]
    fn bad_forms_are_refused_with_what_is_wrong() {
        for (s, says) in [
            ("linear", "not KEY=VALUE"),
            ("warmup=-1", "whole number of rounds"),
            ("cosine=5,min=1.5", "must be in [0, 1]"),
            ("cosine=5,min=NaN", "must be in [0, 1]"),
            ("min=0.1", "needs cosine"),
            ("warmup=1,warmup=2", "given twice"),
            ("decay=3", "unknown key"),
        ] {
            let e = s.parse::<OuterLrSchedule>().unwrap_err();
            assert!(e.contains(says), "{s}: {e}");
        }
    }
}
