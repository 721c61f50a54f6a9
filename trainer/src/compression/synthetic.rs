//! `meridian compress --synthetic DIST`: one seeded 1024×1024 f32 tensor of a chosen
//! distribution, measured like a file's tensors. Top-k keeps a tensor's largest
//! magnitudes, so how its values' quantizer fares depends on the tail: `student-t`
//! (ν = 3) and `cauchy` are heavy-tailed, `laplace` mildly so, `normal` light, as
//! pseudo-gradients of AdamW runs tend to be.
//!
//! The values come from LibTorch's CPU generator seeded with `--seed`, so one seed gives
//! the same tensor on every run.

use anyhow::{bail, Result};
use clap::ValueEnum;
use meridian_optimizer::view::with_f32;
use safetensors::tensor::Dtype;
use tch::{Device, Kind, Tensor};

use crate::compression::tensor_file::{Content, Entry, TensorFile};

/// Side of the synthetic square tensor: 1M values, 256 chunks of 4096 for SparseLoCo.
pub const SIDE: i64 = 1024;

/// The distribution of a synthetic tensor's values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Distribution {
    /// Student's t with ν = 3: heavy tails (finite variance, infinite kurtosis).
    StudentT,
    /// Cauchy (Student's t with ν = 1): tails so heavy the variance is infinite.
    Cauchy,
    /// Laplace (two-sided exponential): tails heavier than normal, lighter than any t.
    Laplace,
    /// Standard normal.
    Normal,
}

impl Distribution {
    /// The name `--synthetic` takes.
    pub fn name(self) -> String {
        self.to_possible_value().map(|v| v.get_name().to_owned()).unwrap_or_default()
    }
}

/// A file of one `[SIDE, SIDE]` f32 tensor named `synthetic.<dist>`, drawn with `seed`.
pub fn tensor(dist: Distribution, seed: i64) -> Result<TensorFile> {
    tch::manual_seed(seed);
    let opts = (Kind::Float, Device::Cpu);
    let shape = [SIDE, SIDE];
    let values = match dist {
        Distribution::Normal => Tensor::f_randn(shape, opts)?,
        Distribution::StudentT => {
            // z / sqrt(χ²₃ / 3), the χ² as a sum of three squared normals.
            let z = Tensor::f_randn(shape, opts)?;
            let chi2 = Tensor::f_randn([3, SIDE, SIDE], opts)?.f_square()?.f_sum_dim_intlist(
                [0i64].as_slice(),
                false,
                Kind::Float,
            )?;
            z.f_div(&chi2.f_div_scalar(3.0)?.f_sqrt()?)?
        }
        Distribution::Cauchy => {
            Tensor::f_randn(shape, opts)?.f_div(&Tensor::f_randn(shape, opts)?)?
        }
        Distribution::Laplace => {
            // A random sign times an exponential −ln(1 − u), u ∈ [0, 1) so never ln 0.
            let u = Tensor::f_rand(shape, opts)?;
            let e = u.f_neg()?.f_add_scalar(1.0)?.f_log()?.f_neg()?;
            let sign = Tensor::f_rand(shape, opts)?.f_lt(0.5)?.f_to_kind(Kind::Float)?;
            e.f_mul(&sign.f_mul_scalar(2.0)?.f_sub_scalar(1.0)?)?
        }
    }
    .f_contiguous()?;
    let name = format!("synthetic.{}", dist.name());
    // A ratio of normals can divide by an exact zero: refuse rather than report on it.
    let bad = with_f32(&name, &values, |x| x.iter().filter(|v| !v.is_finite()).count())?;
    if bad > 0 {
        bail!("{name} drew {bad} non-finite value(s) with seed {seed}; try another --seed");
    }
    let entry = Entry {
        name,
        dtype: Dtype::F32,
        shape: vec![SIDE as usize, SIDE as usize],
        content: Content::Float(values),
    };
    Ok(TensorFile { entries: vec![entry], metadata: None })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Fourth standardized moment of the tensor's values.
    fn kurtosis(file: &TensorFile) -> f64 {
        let Content::Float(t) = &file.entries[0].content else { panic!("not float") };
        with_f32("t", t, |x| {
            let n = x.len() as f64;
            let mean = x.iter().map(|&v| f64::from(v)).sum::<f64>() / n;
            let m2 = x.iter().map(|&v| (f64::from(v) - mean).powi(2)).sum::<f64>() / n;
            let m4 = x.iter().map(|&v| (f64::from(v) - mean).powi(4)).sum::<f64>() / n;
            m4 / (m2 * m2)
        })
        .unwrap()
    }

    #[test]
    fn each_distribution_has_its_tail_and_a_seed_fixes_the_values() {
        let normal = kurtosis(&tensor(Distribution::Normal, 1).unwrap());
        let laplace = kurtosis(&tensor(Distribution::Laplace, 1).unwrap());
        let t3 = kurtosis(&tensor(Distribution::StudentT, 1).unwrap());
        // Population values 3, 6 and ∞; a million samples land near the first two.
        assert!((normal - 3.0).abs() < 0.1, "{normal}");
        assert!((laplace - 6.0).abs() < 0.5, "{laplace}");
        assert!(t3 > 10.0, "{t3}");
        let a = tensor(Distribution::Cauchy, 4).unwrap();
        let b = tensor(Distribution::Cauchy, 4).unwrap();
        let (Content::Float(a), Content::Float(b)) = (&a.entries[0].content, &b.entries[0].content)
        else {
            panic!("not float")
        };
        assert!(a.equal(b));
        assert_eq!(Distribution::StudentT.name(), "student-t");
    }
}
