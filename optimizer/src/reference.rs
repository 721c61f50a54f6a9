//! DeMo's compression step written with plain tch tensor ops, the way the published
//! reference (`demo.py`, Peng, Quesnelle, Kingma 2024) and Psyche compute it: the chunked
//! DCT as matrix products with an orthonormal DCT-II basis, `abs().topk(k)` per tile,
//! `gather` of the kept values, and `scatter` back plus the inverse DCT for error feedback.
//!
//! It exists to check the kernels path ([`meridian_kernels::pipeline::Compressor`]) against
//! an independent implementation, and as the baseline of the `outer_step` benchmark. It is
//! not used by the optimizers.
//!
//! # Layout
//!
//! A 2-D tensor `[r, c]` is cut into tiles of `cr × cc` with `cr`, `cc` the chunk of each
//! dimension; a 1-D tensor `[n]` is a `[1, n]` matrix (tile height 1); higher ranks are
//! `[shape[0], rest]`. Transform-domain results are `[tiles, cr·cc]`, tiles row-major over
//! the tile grid and coefficients row-major inside a tile: the same order as
//! [`meridian_kernels::dct`]'s coefficient layout, so tile `t`, entry `j` here is
//! coefficient `t·cr·cc + j` there.
//!
//! # Chunks
//!
//! Each dimension's chunk is the dimension itself when it is at most `chunk`, else `chunk`
//! when it divides the dimension. Other lengths are refused: there `demo.py` and the
//! kernels choose different chunks (largest divisor below vs. padding), and a reference that
//! silently picked one would compare nothing.

use tch::{Device, Kind, Tensor};

use crate::error::{OptimizerError, Result};

/// Orthonormal DCT-II basis of size `n` as an `n × n` f32 tensor: row `k` is basis vector
/// `k`, `C[k][i] = s_k·cos(π(2i + 1)k / 2n)`, `s_0 = √(1/n)`, `s_k = √(2/n)`. Computed in
/// f64 and rounded once.
pub fn dct_basis(n: i64) -> Tensor {
    let nf = n as f64;
    let mut c = Vec::with_capacity((n * n) as usize);
    for k in 0..n {
        let s = if k == 0 { (1.0 / nf).sqrt() } else { (2.0 / nf).sqrt() };
        for i in 0..n {
            let angle = std::f64::consts::PI * ((2 * i + 1) * k) as f64 / (2.0 * nf);
            c.push((s * angle.cos()) as f32);
        }
    }
    Tensor::from_slice(&c).reshape([n, n])
}

/// How a tensor is tiled, and the basis of each tile dimension.
#[derive(Debug)]
pub struct Tiling {
    shape: Vec<i64>,
    rows: i64,
    cols: i64,
    cr: i64,
    cc: i64,
    basis_r: Tensor,
    basis_c: Tensor,
}

fn chunk_for(len: i64, chunk: i64) -> Result<i64> {
    if len <= chunk {
        Ok(len)
    } else if len % chunk == 0 {
        Ok(chunk)
    } else {
        Err(OptimizerError::Config(format!(
            "reference DCT: dimension {len} is neither ≤ {chunk} nor a multiple of it"
        )))
    }
}

impl Tiling {
    /// The tiling of a tensor of `shape` with requested chunk `chunk` (see the module doc).
    pub fn new(shape: &[i64], chunk: i64) -> Result<Self> {
        if chunk < 1 || shape.iter().any(|&d| d < 1) {
            return Err(OptimizerError::Config(format!(
                "reference DCT: shape {shape:?} with chunk {chunk}"
            )));
        }
        let (rows, cols) = match shape {
            [] => (1, 1),
            [n] => (1, *n),
            [r, rest @ ..] => (*r, rest.iter().product()),
        };
        let (cr, cc) = (chunk_for(rows, chunk)?, chunk_for(cols, chunk)?);
        Ok(Self {
            shape: shape.to_vec(),
            rows,
            cols,
            cr,
            cc,
            basis_r: dct_basis(cr),
            basis_c: dct_basis(cc),
        })
    }

    /// Number of tiles.
    pub fn tiles(&self) -> i64 {
        (self.rows / self.cr) * (self.cols / self.cc)
    }

    /// Coefficients per tile.
    pub fn tile_len(&self) -> i64 {
        self.cr * self.cc
    }

    /// `Y = C_r·X·C_cᵀ` per tile: `[tiles, tile_len]` coefficients of `x`.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let (tr, tc) = (self.rows / self.cr, self.cols / self.cc);
        if self.cr == 1 {
            // A row of chunks: one product with Cᵀ, as demo.py does for 1-D tensors.
            return Ok(x.f_reshape([tr * tc, self.cc])?.f_matmul(&self.basis_c.f_tr()?)?);
        }
        let tiles = x.f_reshape([tr, self.cr, tc, self.cc])?.f_permute([0, 2, 1, 3])?;
        let y = self.basis_r.f_matmul(&tiles)?.f_matmul(&self.basis_c.f_tr()?)?;
        Ok(y.f_reshape([tr * tc, self.cr * self.cc])?)
    }

    /// `X = C_rᵀ·Y·C_c` per tile: the tensor (in its original shape) whose coefficients
    /// are `y` (`[tiles, tile_len]`).
    pub fn inverse(&self, y: &Tensor) -> Result<Tensor> {
        let (tr, tc) = (self.rows / self.cr, self.cols / self.cc);
        if self.cr == 1 {
            return Ok(y.f_matmul(&self.basis_c)?.f_reshape(self.shape.as_slice())?);
        }
        let tiles = y.f_reshape([tr, tc, self.cr, self.cc])?;
        let x = self.basis_r.f_tr()?.f_matmul(&tiles)?.f_matmul(&self.basis_c)?;
        Ok(x.f_permute([0, 2, 1, 3])?.f_contiguous()?.f_reshape(self.shape.as_slice())?)
    }
}

/// DCT then the `k` largest magnitudes of every tile: `(indices, values)`, both
/// `[tiles, min(k, tile_len)]`, indices within the tile (i64), in no particular order.
pub fn demo_encode_reference(tiling: &Tiling, delta: &Tensor, k: i64) -> Result<(Tensor, Tensor)> {
    if k < 1 {
        return Err(OptimizerError::Config(format!("reference top-k: k = {k}")));
    }
    let y = tiling.forward(delta)?;
    let k = k.min(tiling.tile_len());
    let (_, idx) = y.f_abs()?.f_topk(k, -1, true, false)?;
    let val = y.f_gather(-1, &idx, false)?;
    Ok((idx, val))
}

/// DeMo's compress step on `delta` (f32, CPU): the kept `(indices, values)` per tile as
/// [`demo_encode_reference`] returns them, and the residual `delta − IDCT(sent)` that stays
/// in the momentum.
pub fn demo_compress_reference(
    delta: &Tensor,
    chunk: i64,
    k: i64,
) -> Result<(Tensor, Tensor, Tensor)> {
    let tiling = Tiling::new(&delta.size(), chunk)?;
    let (idx, val) = demo_encode_reference(&tiling, delta, k)?;
    let sent = Tensor::f_zeros([tiling.tiles(), tiling.tile_len()], (Kind::Float, Device::Cpu))?
        .f_scatter(-1, &idx, &val)?;
    let residual = delta.f_sub(&tiling.inverse(&sent)?)?;
    Ok((idx, val, residual))
}

/// DeMo's aggregation of every member's `(indices, values)` (in member order): per
/// coefficient the mean over the members that sent it (`scatter_add` of values and of
/// counts, then a division), and the inverse DCT of the result, in the tensor's shape.
pub fn demo_aggregate_reference(tiling: &Tiling, members: &[(Tensor, Tensor)]) -> Result<Tensor> {
    let opts = (Kind::Float, Device::Cpu);
    let dense = [tiling.tiles(), tiling.tile_len()];
    if members.is_empty() {
        return tiling.inverse(&Tensor::f_zeros(dense, opts)?);
    }
    let idx = Tensor::f_cat(&members.iter().map(|m| &m.0).collect::<Vec<_>>(), -1)?;
    let val = Tensor::f_cat(&members.iter().map(|m| &m.1).collect::<Vec<_>>(), -1)?;
    let sums = Tensor::f_zeros(dense, opts)?.f_scatter_add(-1, &idx, &val)?;
    let counts = Tensor::f_zeros(dense, opts)?.f_scatter_add(-1, &idx, &val.f_ones_like()?)?;
    let mean = sums.f_div(&counts.f_clamp_min(1.0)?)?;
    tiling.inverse(&mean)
}

#[cfg(test)]
mod tests {
    use super::*;
    use meridian_kernels::pipeline::{Compressor, CompressorConfig};
    use meridian_kernels::rng::SplitMix64;
    use std::collections::BTreeSet;

    fn random(shape: &[i64], seed: u64) -> Tensor {
        let mut rng = SplitMix64::new(seed);
        let n: i64 = shape.iter().product();
        let v: Vec<f32> = (0..n).map(|_| rng.next_unit_f32() * 2.0 - 1.0).collect();
        Tensor::from_slice(&v).reshape(shape)
    }

    fn to_vec(t: &Tensor) -> Vec<f32> {
        Vec::<f32>::try_from(t.flatten(0, -1)).unwrap()
    }

    fn rel_norm(got: &[f32], want: &[f32]) -> f64 {
        let d: f64 = got.iter().zip(want).map(|(a, b)| f64::from(a - b).powi(2)).sum();
        let n: f64 = want.iter().map(|b| f64::from(*b).powi(2)).sum();
        (d / n).sqrt()
    }

    #[test]
    fn basis_is_orthonormal() {
        for n in [1, 4, 64] {
            let c = dct_basis(n);
            let eye = Tensor::eye(n, (Kind::Float, Device::Cpu));
            let err = f64::try_from((c.matmul(&c.tr()) - eye).abs().max()).unwrap();
            assert!(err < 1e-6, "n = {n}: {err}");
        }
    }

    #[test]
    fn kernels_compressor_agrees_with_the_reference() {
        for (shape, seed) in [(vec![128i64, 192], 1u64), (vec![64, 64], 2), (vec![4, 64], 3)] {
            let x = random(&shape, seed);
            let (idx, val, residual) = demo_compress_reference(&x, 64, 32).unwrap();
            let ushape: Vec<usize> = shape.iter().map(|&d| d as usize).collect();
            let mut comp = Compressor::new(CompressorConfig::demo(), &ushape).unwrap();
            let xs = to_vec(&x);
            let out = comp.compress(&xs).unwrap();
            let tiling = Tiling::new(&shape, 64).unwrap();
            let (tiles, tile_len) = (tiling.tiles() as usize, tiling.tile_len() as usize);
            let k = idx.size()[1] as usize;
            assert_eq!(out.sent.len(), tiles * k, "{shape:?}");

            // Same index set per tile, and each kept value equal to the reference's.
            let ref_idx = Vec::<i64>::try_from(idx.flatten(0, -1)).unwrap();
            let ref_val = to_vec(&val);
            let scale = ref_val.iter().fold(0.0f32, |m, v| m.max(v.abs()));
            for t in 0..tiles {
                let want: BTreeSet<usize> =
                    ref_idx[t * k..(t + 1) * k].iter().map(|&i| i as usize).collect();
                let got: BTreeSet<usize> = out
                    .sent
                    .indices
                    .iter()
                    .map(|&i| i as usize)
                    .filter(|i| i / tile_len == t)
                    .map(|i| i % tile_len)
                    .collect();
                assert_eq!(got, want, "{shape:?} tile {t}");
                for j in 0..k {
                    let global = (t * tile_len + ref_idx[t * k + j] as usize) as u32;
                    let at = out.sent.indices.binary_search(&global).unwrap();
                    let (a, b) = (out.sent.values[at], ref_val[t * k + j]);
                    assert!(
                        (a - b).abs() <= 1e-5 * b.abs().max(1e-3 * scale),
                        "{shape:?} tile {t}: {a} vs {b}"
                    );
                }
            }

            let mut kernel_residual = xs.clone();
            comp.subtract_sent(&mut kernel_residual, &out.sent).unwrap();
            let err = rel_norm(&kernel_residual, &to_vec(&residual));
            assert!(err < 1e-5, "{shape:?}: residual relative error {err}");
            // Not vacuous: something was removed.
            assert!(rel_norm(&kernel_residual, &xs) > 1e-3);
        }
    }

    #[test]
    fn aggregation_matches_the_kernels_scatter_mean() {
        use meridian_kernels::aggregate::{scatter_mean, Contribution, MeanOver};
        let shape = [128i64, 64];
        let tiling = Tiling::new(&shape, 64).unwrap();
        let mut comp = Compressor::new(CompressorConfig::demo(), &[128, 64]).unwrap();
        let mut members = Vec::new();
        let mut sent = Vec::new();
        for w in 0..3u64 {
            let x = random(&shape, 10 + w);
            members.push(demo_encode_reference(&tiling, &x, 32).unwrap());
            sent.push(comp.compress(&to_vec(&x)).unwrap().sent);
        }
        let want = to_vec(&demo_aggregate_reference(&tiling, &members).unwrap());
        let contribs: Vec<Contribution<'_>> = sent
            .iter()
            .enumerate()
            .map(|(w, s)| Contribution { worker: w as u32, sparse: s })
            .collect();
        let mut coeffs = vec![0.0; comp.transform_len()];
        scatter_mean(&contribs, MeanOver::Contributors, &mut coeffs).unwrap();
        let mut got = vec![0.0; comp.len()];
        comp.inverse_transform(&coeffs, &mut got).unwrap();
        let err = rel_norm(&got, &want);
        assert!(err < 1e-5, "relative error {err}");
    }

    #[test]
    fn unsupported_shapes_are_errors() {
        assert!(Tiling::new(&[100, 64], 64).is_err());
        assert!(Tiling::new(&[0], 64).is_err());
        assert!(Tiling::new(&[64], 0).is_err());
        assert!(demo_compress_reference(&random(&[64], 1), 64, 0).is_err());
        assert_eq!(Tiling::new(&[4, 128], 64).unwrap().tiles(), 2);
    }
}
