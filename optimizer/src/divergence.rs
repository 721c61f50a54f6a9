//! Divergence: a training loss, a gradient or the parameters turning NaN or infinite.
//!
//! A diverged run is a failure, not a result: nothing it would go on to compute means
//! anything, so the drivers ([`crate::harness::Harness`] and [`crate::solo::SoloWorker`])
//! stop at the first sign of it with an [`OptimizerError::Diverged`] that says which
//! algorithm, which round and inner step, what went non-finite, and which setting most
//! likely caused it. They look at two places:
//! - the loss of every inner step (a [`crate::train_step::TrainStep`] may refuse a
//!   non-finite loss itself, with more detail; the drivers check anyway);
//! - the parameters right after every outer step they apply.
//!
//! Both checks only read: a valid run computes the same bits with or without them. The
//! parameters after an outer step are the same on every replica, so every replica stops
//! at the same round.
//!
//! The likely cause comes from [`Suspect`]s: the learning rates of the outer optimizer
//! ([`crate::outer::OuterOptimizer::divergence_suspects`]) and of the wrapped training
//! ([`crate::train_step::TrainStep::divergence_suspects`]), each with the value it was
//! set to and the published or default value it departs from.

use std::fmt;

use tch::Tensor;

use crate::algorithm::Algorithm;
use crate::error::{OptimizerError, Result};
use crate::params::ParamSet;

/// A setting that can make training diverge, with its value and the value it is known to
/// work at.
#[derive(Debug, Clone, PartialEq)]
pub struct Suspect {
    /// The setting as a user writes it: `diloco.outer_lr`, `inner.lr`.
    pub setting: String,
    /// The value the run uses.
    pub value: f64,
    /// The value the algorithm's paper or the trainer's default uses.
    pub reference: f64,
    /// What `reference` is: `"published"` (a paper's value) or `"default"`.
    pub reference_is: &'static str,
}

impl Suspect {
    /// `setting` at `value`, against a published (paper) `reference`.
    pub fn published(setting: impl Into<String>, value: f64, reference: f64) -> Self {
        Self { setting: setting.into(), value, reference, reference_is: "published" }
    }

    /// `setting` at `value`, against the trainer's default `reference`.
    pub fn default_value(setting: impl Into<String>, value: f64, reference: f64) -> Self {
        Self { setting: setting.into(), value, reference, reference_is: "default" }
    }

    /// Whether the value is above the reference (so lowering it is the advice).
    fn above(&self) -> bool {
        self.value > self.reference
    }
}

/// Above this multiple of its reference a setting is "far above" it.
const FAR_ABOVE: f64 = 10.0;

/// A number as a user would type it: plain between 0.001 and 10000, in exponent form
/// outside (`0.7`, `0.001`, `1e6`, `1e30`, `1e-8`).
pub fn show_number(v: f64) -> String {
    if v == 0.0 || !v.is_finite() || (1e-3..1e4).contains(&v.abs()) {
        format!("{v}")
    } else {
        format!("{v:e}")
    }
}

/// What diverged, where, and what to change.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Divergence {
    /// The outer algorithm, once known.
    pub algorithm: Option<Algorithm>,
    /// The outer round in progress (counted from 0), once known.
    pub round: Option<u64>,
    /// The inner step (counted from 1), once known.
    pub step: Option<u64>,
    /// What became non-finite, in words: `the training loss is inf`.
    pub what: String,
    /// The settings that may be to blame.
    pub suspects: Vec<Suspect>,
}

impl Divergence {
    /// A divergence described by `what`, not yet placed in a run.
    pub fn new(what: impl Into<String>) -> Self {
        Self { what: what.into(), ..Self::default() }
    }

    /// Adds `suspects`, skipping settings already named.
    pub fn suspect(mut self, suspects: impl IntoIterator<Item = Suspect>) -> Self {
        for s in suspects {
            if !self.suspects.iter().any(|o| o.setting == s.setting) {
                self.suspects.push(s);
            }
        }
        self
    }

    /// The error for it.
    pub fn into_error(self) -> OptimizerError {
        OptimizerError::Diverged(Box::new(self))
    }

    /// What to change, in words.
    fn advice(&self) -> String {
        let high: Vec<&Suspect> = self.suspects.iter().filter(|s| s.above()).collect();
        if !high.is_empty() {
            let each: Vec<String> = high
                .iter()
                .map(|s| {
                    let how =
                        if s.value >= FAR_ABOVE * s.reference { "far above" } else { "above" };
                    format!(
                        "{}={} is {how} the {} {}",
                        s.setting,
                        show_number(s.value),
                        s.reference_is,
                        show_number(s.reference)
                    )
                })
                .collect();
            let it = if high.len() == 1 { "lower it" } else { "lower them" };
            return format!("{}; {it}", each.join(", and "));
        }
        if self.suspects.is_empty() {
            return "lower the learning rates".into();
        }
        let each: Vec<String> = self
            .suspects
            .iter()
            .map(|s| format!("{} (now {})", s.setting, show_number(s.value)))
            .collect();
        format!(
            "no learning rate is above its published or default value, but lowering one \
             usually helps: {}",
            each.join(", ")
        )
    }
}

impl fmt::Display for Divergence {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.algorithm {
            Some(a) => write!(f, "{a} diverged")?,
            None => f.write_str("training diverged")?,
        }
        match (self.round, self.step) {
            (Some(r), Some(s)) => write!(f, " in round {r} (inner step {s})")?,
            (Some(r), None) => write!(f, " in round {r}")?,
            (None, Some(s)) => write!(f, " at inner step {s}")?,
            (None, None) => {}
        }
        write!(f, ": {}; {}", self.what, self.advice())
    }
}

/// Where a driver stands, to place a divergence in the run.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Place {
    /// The round in progress.
    pub round: u64,
    /// The inner step, counted from 0.
    pub step: u64,
}

/// `e` placed at `place` in a run of `algorithm`, with `suspects` added (the outer
/// optimizer's and the training's), when it is a divergence; any other error unchanged.
pub(crate) fn place(
    e: OptimizerError,
    algorithm: Algorithm,
    place: Place,
    suspects: impl FnOnce() -> Vec<Suspect>,
) -> OptimizerError {
    match e {
        OptimizerError::Diverged(d) => {
            let mut d = *d;
            d.algorithm.get_or_insert(algorithm);
            d.round.get_or_insert(place.round);
            d.step.get_or_insert(place.step + 1);
            d.suspect(suspects()).into_error()
        }
        other => other,
    }
}

/// Fails with a divergence when `loss` is not finite.
pub(crate) fn check_loss(loss: f64) -> Result<()> {
    if loss.is_finite() {
        Ok(())
    } else {
        Err(Divergence::new(format!("the training loss is {loss}")).into_error())
    }
}

/// Fails with a divergence naming the first parameter that holds a NaN or an infinity
/// after the outer step. Reads only.
pub(crate) fn check_params(params: &ParamSet) -> Result<()> {
    for (name, t) in params.names().iter().zip(params.tensors()) {
        if let Err(e) = check_tensor(name, t) {
            return Err(match e {
                OptimizerError::Kernel(meridian_kernels::KernelError::NonFinite {
                    index,
                    value,
                    ..
                }) => Divergence::new(format!(
                    "after the outer step, parameter {name} holds {value} (element {index})"
                ))
                .into_error(),
                other => other,
            });
        }
    }
    Ok(())
}

fn check_tensor(name: &str, t: &Tensor) -> Result<()> {
    crate::device::check_finite(name, "parameter", &t.detach())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn advice_blames_what_is_above_its_reference() {
        let d = Divergence::new("the training loss is inf").suspect([
            Suspect::published("diloco.outer_lr", 1e30, 0.7),
            Suspect::default_value("inner.lr", 1e-3, 1e-3),
        ]);
        let e = place(d.into_error(), Algorithm::Diloco, Place { round: 1, step: 10 }, Vec::new)
            .to_string();
        assert_eq!(
            e,
            "diloco diverged in round 1 (inner step 11): the training loss is inf; \
             diloco.outer_lr=1e30 is far above the published 0.7; lower it"
        );
        let d = Divergence::new("x").suspect([
            Suspect::published("demo.lr", 1e-3, 1e-3),
            Suspect::default_value("inner.lr", 2e-3, 1e-3),
        ]);
        assert!(d.to_string().contains("inner.lr=0.002 is above the default 0.001; lower it"));
        let d = Divergence::new("x").suspect([Suspect::published("diloco.outer_lr", 0.7, 0.7)]);
        assert!(d.to_string().contains("diloco.outer_lr (now 0.7)"), "{d}");
        // A suspect is named once, whoever adds it again.
        let d = d.suspect([Suspect::published("diloco.outer_lr", 0.7, 0.7)]);
        assert_eq!(d.suspects.len(), 1);
    }

    #[test]
    fn numbers_read_as_typed() {
        assert_eq!(show_number(0.7), "0.7");
        assert_eq!(show_number(1e-3), "0.001");
        assert_eq!(show_number(1e6), "1e6");
        assert_eq!(show_number(1e30), "1e30");
        assert_eq!(show_number(3.0), "3");
        assert_eq!(show_number(-1.0), "-1");
        assert_eq!(show_number(1e-8), "1e-8");
        assert_eq!(show_number(f64::NAN), "NaN");
    }

    #[test]
    fn parameters_are_checked_without_being_changed() {
        let params = ParamSet::new(vec![
            ("a".into(), Tensor::from_slice(&[1.0f32, 2.0])),
            ("b".into(), Tensor::from_slice(&[3.0f32, f32::INFINITY])),
        ])
        .unwrap();
        let e = check_params(&params).unwrap_err().to_string();
        assert!(e.contains("parameter b holds inf (element 1)"), "{e}");
        params
            .assign(&[Tensor::from_slice(&[1.0f32, 2.0]), Tensor::from_slice(&[3.0f32, 4.0])])
            .unwrap();
        let before = params.hash().unwrap();
        check_params(&params).unwrap();
        assert_eq!(params.hash().unwrap(), before);
        assert!(check_loss(f64::NAN).unwrap_err().to_string().contains("training loss is NaN"));
        check_loss(2.5).unwrap();
    }

    #[test]
    fn the_harness_stops_a_diverging_run_and_leaves_a_valid_one_alone() {
        use crate::outer::diloco::{Diloco, DilocoConfig};
        let run = |outer_lr: f64| {
            let cfg = DilocoConfig { inner_steps: 2, outer_lr, ..Default::default() };
            let mut h = crate::testing::toy_harness(2, crate::toy::ToyConfig::default(), |_, p| {
                Ok(Box::new(Diloco::new(cfg, p)?))
            });
            let r = h.run(20);
            (r, h)
        };
        let (r, _) = run(1e30);
        let e = r.expect_err("the run must stop").to_string();
        assert!(e.starts_with("diloco diverged in round "), "{e}");
        assert!(e.contains("diloco.outer_lr=1e30 is far above the published 0.7"), "{e}");
        let (r, h) = run(0.7);
        let steps = r.unwrap();
        assert_eq!(steps.iter().map(|s| s.exchanges.len()).sum::<usize>(), 10);
        assert!(steps.iter().flat_map(|s| &s.exchanges).all(|x| x.replicas_identical()));
        assert_eq!(h.rounds_done(), 10);
    }
}
