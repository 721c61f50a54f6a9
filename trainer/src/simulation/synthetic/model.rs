//! The tensors of a synthetic model of N parameters: what its payloads are made of.
//!
//! A payload has one segment per tensor, and the encoders work per tensor (SparseLoCo's
//! chunks of 4096, DeMo's 64 × 64 DCT tiles, int8's blocks of 2^20), so the split decides
//! the payload's exact size. The split here is the one a large transformer's weight
//! matrices give: 2-D tensors 1024 wide of at most 2^24 elements (a 4096 × 4096 projection
//! holds 2^24), at least [`MIN_TENSORS`] of them (so every Streaming DiLoCo fragment has
//! some), in near-equal row counts; the N mod 1024 elements left over form one 1-D tensor,
//! as a model's biases and norm gains do.

use anyhow::{bail, Result};

/// Columns of every 2-D tensor.
pub const WIDTH: usize = 1024;

/// The most elements one tensor holds (one 4096 × 4096 matrix).
pub const MAX_TENSOR: usize = 1 << 24;

/// The fewest 2-D tensors the model is split into.
pub const MIN_TENSORS: usize = 16;

/// The smallest `--params`: one row of [`WIDTH`] for each of [`MIN_TENSORS`] tensors.
pub const MIN_PARAMS: u64 = (WIDTH * MIN_TENSORS) as u64;

/// The largest `--params`: 10^12 (a model beyond it is beyond any single machine's
/// simulation, and its counts stay far from every integer limit).
pub const MAX_PARAMS: u64 = 1_000_000_000_000;

/// A synthetic model: its size and tensor shapes, in canonical order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SyntheticModel {
    /// Parameters, exactly `--params`.
    pub parameters: u64,
    /// Tensor shapes in canonical order.
    pub shapes: Vec<Vec<usize>>,
}

impl SyntheticModel {
    /// The split of `parameters` described in the module doc; errors name `--params` and
    /// its limits.
    pub fn new(parameters: u64) -> Result<Self> {
        if parameters < MIN_PARAMS {
            bail!(
                "--params {parameters}: a synthetic model has at least {MIN_PARAMS} parameters \
                 ({MIN_TENSORS} tensors of one {WIDTH}-wide row)"
            );
        }
        if parameters > MAX_PARAMS {
            bail!(
                "--params {parameters:.3e}: at most {MAX_PARAMS:.0e}",
                parameters = parameters as f64
            );
        }
        let n = usize::try_from(parameters).map_err(|_| {
            anyhow::anyhow!("--params {parameters}: beyond this machine's address space")
        })?;
        let rows = n / WIDTH;
        let rest = n % WIDTH;
        let max_rows = MAX_TENSOR / WIDTH;
        let tensors = rows.div_ceil(max_rows).max(MIN_TENSORS);
        let mut shapes = Vec::with_capacity(tensors + 1);
        for t in 0..tensors {
            // The first `rows % tensors` tensors take one row more.
            let r = rows / tensors + usize::from(t < rows % tensors);
            shapes.push(vec![r, WIDTH]);
        }
        if rest > 0 {
            shapes.push(vec![rest]);
        }
        Ok(Self { parameters, shapes })
    }

    /// Elements of the largest tensor.
    pub fn largest_tensor(&self) -> usize {
        self.shapes.iter().map(|s| s.iter().product::<usize>()).max().unwrap_or(0)
    }

    /// One line for the console and the summary.
    pub fn describe(&self) -> String {
        let matrices = self.shapes.iter().filter(|s| s.len() == 2).count();
        let rows: Vec<usize> = self.shapes.iter().filter(|s| s.len() == 2).map(|s| s[0]).collect();
        let (lo, hi) = (rows.iter().min().unwrap_or(&0), rows.iter().max().unwrap_or(&0));
        let rows = if lo == hi { format!("{lo}") } else { format!("{lo}-{hi}") };
        let vector = match self.shapes.iter().find(|s| s.len() == 1) {
            Some(v) => format!(" + [{}]", v[0]),
            None => String::new(),
        };
        format!("synthetic {matrices} x [{rows}, {WIDTH}]{vector}")
    }
}

#[cfg(test)]
#[cfg_attr(test, allow(clippy::unwrap_used))]
mod tests {
    use super::*;

    #[test]
    fn the_split_holds_exactly_the_parameters_in_bounded_tensors() {
        for n in [MIN_PARAMS, 1_000_000, 123_456_789, 1_000_000_000] {
            let m = SyntheticModel::new(n).unwrap();
            let total: usize = m.shapes.iter().map(|s| s.iter().product::<usize>()).sum();
            assert_eq!(total as u64, n);
            assert!(m.largest_tensor() <= MAX_TENSOR, "{n}");
            assert!(m.shapes.len() >= MIN_TENSORS, "{n}");
        }
        // 1e9: 60 matrices of about 16.7M elements and a 512-element vector.
        let m = SyntheticModel::new(1_000_000_000).unwrap();
        assert_eq!(m.shapes.len(), 61);
        assert_eq!(m.shapes[60], vec![512]);
        let e = SyntheticModel::new(1000).unwrap_err().to_string();
        assert!(e.contains("--params 1000") && e.contains("16384"), "{e}");
        assert!(SyntheticModel::new(MAX_PARAMS + 1).unwrap_err().to_string().contains("--params"));
    }
}
