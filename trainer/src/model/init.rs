//! Seeded parameter initialisation that does not touch LibTorch's global generator.
//!
//! Values come from the kernels' SplitMix64, shaped into a normal by the Irwin–Hall sum
//! of twelve uniforms (mean 0, variance 1, tails cut at ±6σ): only additions, so no libm
//! call is involved and the same seed gives the same bits on every machine, in every
//! thread and with every LibTorch version, and models built concurrently cannot disturb
//! each other.

use meridian_kernels::rng::SplitMix64;
use tch::Tensor;

/// Draws standard normals in a fixed order.
#[derive(Debug)]
pub struct NormalInit {
    rng: SplitMix64,
}

impl NormalInit {
    /// A stream fixed by `seed`.
    pub fn new(seed: u64) -> Self {
        Self { rng: SplitMix64::new(seed) }
    }

    fn standard(&mut self) -> f64 {
        // Twelve 32-bit uniforms summed as integers: exact, so no rounding order to fix.
        let sum: u64 = (0..12).map(|_| self.rng.next_u64() >> 32).sum();
        sum as f64 * (1.0 / (1u64 << 32) as f64) - 6.0
    }

    /// Overwrites `t` (a float parameter) with normals of standard deviation `std`.
    pub fn normal(&mut self, t: &Tensor, std: f64) {
        let n = t.numel();
        let values: Vec<f32> = (0..n).map(|_| (std * self.standard()) as f32).collect();
        let src = Tensor::from_slice(&values).reshape(t.size());
        tch::no_grad(|| {
            let mut t = t.shallow_clone();
            t.copy_(&src);
        });
    }

    /// Overwrites `t` with a constant.
    pub fn constant(t: &Tensor, value: f64) {
        tch::no_grad(|| {
            let _ = t.shallow_clone().fill_(value);
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normals_have_the_asked_spread_and_repeat_with_the_seed() {
        let a = Tensor::zeros([1001], (tch::Kind::Float, tch::Device::Cpu));
        let b = Tensor::zeros([1001], (tch::Kind::Float, tch::Device::Cpu));
        NormalInit::new(3).normal(&a, 0.02);
        NormalInit::new(3).normal(&b, 0.02);
        assert!(a.equal(&b));
        let std = a.std(true).double_value(&[]);
        assert!((std - 0.02).abs() < 0.002, "std {std}");
        assert!(a.mean(tch::Kind::Float).double_value(&[]).abs() < 0.003);
        NormalInit::new(4).normal(&b, 0.02);
        assert!(!a.equal(&b));
    }
}
