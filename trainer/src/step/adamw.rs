//! The inner optimizer: AdamW (Loshchilov & Hutter) with linear warmup, cosine decay and
//! global gradient-norm clipping; the `[inner]` table of a run's config.
//!
//! Written on tch tensor ops rather than LibTorch's C++ optimizer so that it drives any
//! parameter list (a VarStore's or a TorchScript module's) and its moments are plain
//! tensors a checkpoint can save and restore bit for bit.

use anyhow::{bail, Result};
use meridian_optimizer::divergence::show_number;
use serde::{Deserialize, Serialize};
use tch::Tensor;

/// Inner-optimizer settings.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct InnerConfig {
    /// Peak learning rate.
    pub lr: f64,
    /// Learning rate at the end of the cosine, as a fraction of `lr`.
    pub min_lr_ratio: f64,
    /// Linear warmup steps; by default 5% of the run's steps.
    pub warmup_steps: Option<u64>,
    /// Decoupled weight decay, applied to matrices and embeddings (not biases or norms).
    pub weight_decay: f64,
    /// First-moment decay.
    pub beta1: f64,
    /// Second-moment decay.
    pub beta2: f64,
    /// Denominator guard.
    pub eps: f64,
    /// Global gradient-norm clip; 0 turns clipping off.
    pub clip: f64,
    /// Align the schedule with the outer rounds: the warmup ends at the first round
    /// boundary at or after `warmup_steps`, and the cosine reaches its floor at the last
    /// whole round's boundary (a trailing partial round trains at the floor). Off by
    /// default; DDP (a round of one step) is unaffected either way.
    pub align_to_rounds: bool,
}

impl Default for InnerConfig {
    fn default() -> Self {
        // The DiLoCo paper's inner AdamW (β2 0.95, weight decay 0.1, clip 1.0) with a peak
        // rate suited to models of a few million parameters.
        Self {
            lr: 1e-3,
            min_lr_ratio: 0.1,
            warmup_steps: None,
            weight_decay: 0.1,
            beta1: 0.9,
            beta2: 0.95,
            eps: 1e-8,
            clip: 1.0,
            align_to_rounds: false,
        }
    }
}

impl InnerConfig {
    /// Checks every value is usable; an error names the first setting out of range as a
    /// user writes it (`inner.lr`), its range and its default.
    pub fn validate(&self) -> Result<()> {
        let d = Self::default();
        let positive = |v: f64| v.is_finite() && v > 0.0;
        let non_negative = |v: f64| v.is_finite() && v >= 0.0;
        let checks: [(&str, f64, bool, &str, f64); 7] = [
            ("lr", self.lr, positive(self.lr), "a finite number > 0", d.lr),
            (
                "min_lr_ratio",
                self.min_lr_ratio,
                (0.0..=1.0).contains(&self.min_lr_ratio),
                "between 0 and 1 (a fraction of inner.lr)",
                d.min_lr_ratio,
            ),
            (
                "weight_decay",
                self.weight_decay,
                non_negative(self.weight_decay),
                "a finite number ≥ 0",
                d.weight_decay,
            ),
            ("beta1", self.beta1, (0.0..1.0).contains(&self.beta1), "in [0, 1)", d.beta1),
            ("beta2", self.beta2, (0.0..1.0).contains(&self.beta2), "in [0, 1)", d.beta2),
            ("eps", self.eps, positive(self.eps), "a finite number > 0", d.eps),
            (
                "clip",
                self.clip,
                non_negative(self.clip),
                "a finite number ≥ 0 (0 turns clipping off)",
                d.clip,
            ),
        ];
        if let Some(&(name, value, _, range, default)) = checks.iter().find(|c| !c.2) {
            bail!(
                "inner.{name} = {} is out of range: the inner AdamW's {name} must be {range}; \
                 the default is {}",
                show_number(value),
                show_number(default)
            );
        }
        Ok(())
    }

    /// The learning rate at inner step `step` (from 0) of a `total`-step run whose outer
    /// rounds are `round_steps` inner steps long.
    pub fn lr_at(&self, step: u64, total: u64, round_steps: u64) -> f64 {
        let (warmup, end) = self.schedule_points(total, round_steps);
        if step < warmup {
            return self.lr * (step + 1) as f64 / warmup as f64;
        }
        let span = end.saturating_sub(warmup).max(1);
        let progress = ((step - warmup) as f64 / span as f64).min(1.0);
        let floor = self.lr * self.min_lr_ratio;
        floor + (self.lr - floor) * 0.5 * (1.0 + (std::f64::consts::PI * progress).cos())
    }

    /// The step the warmup ends at and the step the cosine reaches its floor at.
    fn schedule_points(&self, total: u64, round_steps: u64) -> (u64, u64) {
        let warmup = self.warmup_steps.unwrap_or(total / 20);
        if !self.align_to_rounds || round_steps <= 1 || total < round_steps {
            return (warmup, total);
        }
        let end = total / round_steps * round_steps;
        (warmup.div_ceil(round_steps).saturating_mul(round_steps).min(end), end)
    }
}

/// AdamW state over one parameter list.
#[derive(Debug)]
pub struct AdamW {
    config: InnerConfig,
    m: Vec<Tensor>,
    v: Vec<Tensor>,
    decay: Vec<bool>,
    steps: u64,
}

impl AdamW {
    /// Zeroed moments for `params`.
    pub fn new(config: InnerConfig, params: &[Tensor]) -> Result<Self> {
        config.validate()?;
        Ok(Self {
            config,
            m: params.iter().map(Tensor::zeros_like).collect(),
            v: params.iter().map(Tensor::zeros_like).collect(),
            decay: params.iter().map(|p| p.dim() >= 2).collect(),
            steps: 0,
        })
    }

    /// Scales the gradients so their global L2 norm is at most `clip`; returns the norm
    /// before clipping (0 when no gradient is defined).
    pub fn clip_gradients(&self, params: &[Tensor]) -> f64 {
        let grads: Vec<Tensor> = params.iter().map(Tensor::grad).filter(Tensor::defined).collect();
        if grads.is_empty() {
            return 0.0;
        }
        let norm = tch::no_grad(|| {
            let sq: Vec<Tensor> = grads.iter().map(|g| g.square().sum(tch::Kind::Double)).collect();
            Tensor::stack(&sq, 0).sum(tch::Kind::Double).sqrt().double_value(&[])
        });
        if self.config.clip > 0.0 && norm > self.config.clip {
            let scale = self.config.clip / (norm + 1e-6);
            tch::no_grad(|| {
                for g in &grads {
                    let _ = g.shallow_clone().g_mul_scalar_(scale);
                }
            });
        }
        norm
    }

    /// One AdamW step at learning rate `lr` on the parameters' current gradients
    /// (parameters without a gradient are left alone).
    pub fn step(&mut self, params: &[Tensor], lr: f64) {
        let c = self.config;
        self.steps += 1;
        let t = self.steps as i32;
        let (bc1, bc2) = (1.0 - c.beta1.powi(t), 1.0 - c.beta2.powi(t));
        tch::no_grad(|| {
            for (i, p) in params.iter().enumerate() {
                let g = p.grad();
                if !g.defined() {
                    continue;
                }
                let mut p = p.shallow_clone();
                if self.decay[i] && c.weight_decay > 0.0 {
                    let _ = p.g_mul_scalar_(1.0 - lr * c.weight_decay);
                }
                let _ = self.m[i].g_mul_scalar_(c.beta1).g_add_(&(&g * (1.0 - c.beta1)));
                let _ = self.v[i].g_mul_scalar_(c.beta2).g_add_(&(g.square() * (1.0 - c.beta2)));
                let denom = (&self.v[i] / bc2).sqrt() + c.eps;
                let _ = p.g_sub_(&((&self.m[i] / &denom) * (lr / bc1)));
            }
        });
    }

    /// Steps taken (the bias correction's t).
    pub fn steps(&self) -> u64 {
        self.steps
    }

    /// The moments and step count, for a checkpoint: (m, v, steps).
    pub fn state(&self) -> (&[Tensor], &[Tensor], u64) {
        (&self.m, &self.v, self.steps)
    }

    /// Restores moments and step count saved by [`AdamW::state`]; shapes must match.
    pub fn restore(&mut self, m: Vec<Tensor>, v: Vec<Tensor>, steps: u64) -> Result<()> {
        for (what, new) in [("m", &m), ("v", &v)] {
            if new.len() != self.m.len() {
                bail!("inner optimizer {what}: {} tensors, expected {}", new.len(), self.m.len());
            }
            for (i, (a, b)) in new.iter().zip(&self.m).enumerate() {
                if a.size() != b.size() || a.kind() != b.kind() {
                    bail!(
                        "inner optimizer {what}.{i}: {:?} {:?}, expected {:?} {:?}",
                        a.size(),
                        a.kind(),
                        b.size(),
                        b.kind()
                    );
                }
            }
        }
        // Moments read from a checkpoint or a peer arrive on the host; they live beside the
        // parameters.
        let beside = |new: Vec<Tensor>, old: &[Tensor]| -> Result<Vec<Tensor>> {
            new.into_iter().zip(old).map(|(n, o)| Ok(n.f_to_device(o.device())?)).collect()
        };
        self.m = beside(m, &self.m)?;
        self.v = beside(v, &self.v)?;
        self.steps = steps;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::{Device, Kind};

    #[test]
    fn schedule_warms_up_then_decays_to_the_floor() {
        let c = InnerConfig {
            lr: 1.0,
            min_lr_ratio: 0.1,
            warmup_steps: Some(10),
            ..Default::default()
        };
        assert!((c.lr_at(0, 110, 1) - 0.1).abs() < 1e-12);
        assert!((c.lr_at(9, 110, 1) - 1.0).abs() < 1e-12);
        assert!((c.lr_at(10, 110, 1) - 1.0).abs() < 1e-12);
        assert!((c.lr_at(60, 110, 1) - 0.55).abs() < 1e-12);
        assert!((c.lr_at(110, 110, 1) - 0.1).abs() < 1e-12);
        assert!((c.lr_at(500, 110, 1) - 0.1).abs() < 1e-12);
        let auto = InnerConfig::default();
        assert!(auto.lr_at(0, 200, 1) < auto.lr_at(9, 200, 1), "5% warmup by default");
    }

    #[test]
    fn an_aligned_schedule_turns_at_round_boundaries() {
        let c = InnerConfig {
            lr: 1.0,
            min_lr_ratio: 0.1,
            warmup_steps: Some(15),
            align_to_rounds: true,
            ..Default::default()
        };
        // Rounds of 10 steps in a 305-step run: the warmup runs to step 20 (not 15) and the
        // cosine ends at step 300, the last whole round's boundary.
        assert!((c.lr_at(14, 305, 10) - 15.0 / 20.0).abs() < 1e-12);
        assert!((c.lr_at(19, 305, 10) - 1.0).abs() < 1e-12);
        assert!((c.lr_at(160, 305, 10) - 0.55).abs() < 1e-12);
        assert!((c.lr_at(300, 305, 10) - 0.1).abs() < 1e-12);
        assert!((c.lr_at(304, 305, 10) - 0.1).abs() < 1e-12);
        // Unaligned, the same settings turn at 15 and end at 305.
        let free = InnerConfig { align_to_rounds: false, ..c };
        assert!((free.lr_at(14, 305, 10) - 1.0).abs() < 1e-12);
        assert!(free.lr_at(300, 305, 10) > 0.1);
        // DDP's one-step rounds, and a run shorter than a round, are left as they are.
        for (total, round) in [(305, 1), (5, 10)] {
            for step in [0, 3, 4, 14, 100] {
                assert_eq!(c.lr_at(step, total, round), free.lr_at(step, total, round));
            }
        }
    }

    #[test]
    fn matches_the_adamw_formula_and_libtorch() {
        let c = InnerConfig { lr: 0.1, weight_decay: 0.01, clip: 0.0, ..Default::default() };
        let init = [0.5f32, -1.0, 2.0, 0.25];
        let ours = Tensor::from_slice(&init).view([2, 2]).set_requires_grad(true);
        let vs = tch::nn::VarStore::new(Device::Cpu);
        let mut theirs = vs.root().var_copy("w", &Tensor::from_slice(&init).view([2, 2]));
        let mut opt = tch::nn::OptimizerConfig::build(
            tch::nn::AdamW {
                beta1: c.beta1,
                beta2: c.beta2,
                wd: c.weight_decay,
                eps: c.eps,
                amsgrad: false,
            },
            &vs,
            c.lr,
        )
        .unwrap();
        let mut adam = AdamW::new(c, &[ours.shallow_clone()]).unwrap();
        for _ in 0..5 {
            for p in [&ours, &theirs] {
                let mut p = p.shallow_clone();
                p.zero_grad();
                (p.square() * &p).sum(Kind::Float).backward();
            }
            adam.step(&[ours.shallow_clone()], c.lr);
            opt.step();
        }
        let diff = (&ours - &theirs).abs().max().double_value(&[]);
        assert!(diff < 1e-6, "{diff}");
        theirs.zero_grad();
    }

    #[test]
    fn clipping_bounds_the_global_norm_and_state_restores() {
        let c = InnerConfig { clip: 1.0, ..Default::default() };
        let a = Tensor::ones([3], (Kind::Float, Device::Cpu)).set_requires_grad(true);
        let b = Tensor::ones([2, 2], (Kind::Float, Device::Cpu)).set_requires_grad(true);
        ((&a * 3.0).sum(Kind::Float) + (&b * 4.0).sum(Kind::Float)).backward();
        let mut adam = AdamW::new(c, &[a.shallow_clone(), b.shallow_clone()]).unwrap();
        let norm = adam.clip_gradients(&[a.shallow_clone(), b.shallow_clone()]);
        assert!((norm - (27.0f64 + 64.0).sqrt()).abs() < 1e-5);
        let after = (a.grad().square().sum(Kind::Double) + b.grad().square().sum(Kind::Double))
            .sqrt()
            .double_value(&[]);
        assert!((after - 1.0).abs() < 1e-4, "{after}");
        adam.step(&[a.shallow_clone(), b.shallow_clone()], 0.1);
        let (m, v, steps) = adam.state();
        let (m, v): (Vec<Tensor>, Vec<Tensor>) =
            (m.iter().map(Tensor::copy).collect(), v.iter().map(Tensor::copy).collect());
        let mut other = AdamW::new(c, &[a.shallow_clone(), b.shallow_clone()]).unwrap();
        assert!(other
            .restore(
                v.iter().rev().map(Tensor::copy).collect(),
                v.iter().map(Tensor::copy).collect(),
                1
            )
            .is_err());
        other.restore(m, v, steps).unwrap();
        assert_eq!(other.steps(), 1);
        assert!(other.state().0[1].equal(&adam.state().0[1]));
        assert!(InnerConfig { lr: -1.0, ..c }.validate().is_err());
        assert!(InnerConfig { beta2: 1.0, ..c }.validate().is_err());
    }

    #[test]
    fn a_setting_out_of_range_is_named_in_words() {
        let e = InnerConfig { lr: -1.0, ..Default::default() }.validate().unwrap_err();
        assert_eq!(
            e.to_string(),
            "inner.lr = -1 is out of range: the inner AdamW's lr must be a finite number > 0; \
             the default is 0.001"
        );
        let e = InnerConfig { eps: 0.0, ..Default::default() }.validate().unwrap_err();
        assert!(e.to_string().contains("inner.eps = 0 ") && e.to_string().contains("1e-8"), "{e}");
        let e = InnerConfig { beta2: f64::NAN, ..Default::default() }.validate().unwrap_err();
        assert!(e.to_string().starts_with("inner.beta2 = NaN"), "{e}");
        // No Rust struct dump.
        assert!(!e.to_string().contains("InnerConfig"), "{e}");
    }
}
