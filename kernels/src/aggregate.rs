//! Canonical aggregation: the mean of many workers' contributions, bit-identical on every
//! replica.
//!
//! Float addition is not associative, so a sum taken in arrival order differs from one
//! replica to the next. Here contributions are always applied in ascending worker id,
//! whatever order the caller's slice is in: each coordinate's `f32` sum starts at `+0.0`,
//! adds the contributors' values in that order, and is divided once at the end. Any
//! permutation of the input therefore yields the same bits, which is what lets every
//! worker apply the same update and stay in lockstep. Nothing runs in parallel and no
//! atomics are used, because either would make the order of additions vary.
//!
//! Inputs are validated before `out` is written, so on a validation error `out` is left
//! as it was. The one error detected afterwards is an `f32` overflow of the sum of finite
//! values, reported as [`KernelError::NonFinite`] with `out` already overwritten.

use crate::error::{check_finite, check_len, invalid, KernelError, Result};
use crate::sparse::Sparse;

/// What each coordinate's sum is divided by.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MeanOver {
    /// The number of contributors that sent that coordinate (DeMo, SparseLoCo): a value
    /// sent by one worker out of eight is kept as is, not shrunk eightfold.
    Contributors,
    /// A fixed worker count, the same for every coordinate; it must be at least the
    /// number of contributions (missing workers count as having sent zeros).
    AllWorkers(u32),
}

/// One worker's sparse contribution.
#[derive(Debug, Clone, Copy)]
pub struct Contribution<'a> {
    /// The worker's id; it fixes the contribution's place in the canonical order and must
    /// be unique among the contributions.
    pub worker: u32,
    /// The values this worker sent.
    pub sparse: &'a Sparse,
}

/// Reusable buffers for [`scatter_mean_with`], so a hot loop does not allocate.
#[derive(Debug, Clone, Default)]
pub struct ScatterScratch {
    /// Contributors per coordinate of the current block (used by [`MeanOver::Contributors`]).
    counts: Vec<u32>,
    /// Positions in the caller's slice, sorted by worker id.
    order: Vec<usize>,
    /// Per contribution (in canonical order), the next entry not yet added.
    cursors: Vec<usize>,
}

impl ScatterScratch {
    /// Empty scratch; it grows to the largest dense length and contributor count seen.
    pub fn new() -> Self {
        Self::default()
    }
}

/// Sorts `0..n` into `order` by worker id and rejects repeated ids (reporting the smallest,
/// so the error too does not depend on the input order).
fn canonical_order(order: &mut Vec<usize>, n: usize, id: impl Fn(usize) -> u32) -> Result<()> {
    order.clear();
    order.extend(0..n);
    order.sort_unstable_by_key(|&i| id(i));
    for pair in order.windows(2) {
        if id(pair[0]) == id(pair[1]) {
            return Err(KernelError::DuplicateContributor { id: id(pair[0]) });
        }
    }
    Ok(())
}

/// Overwrites `out` with the canonical mean of sparse contributions (see the module doc).
///
/// Coordinates nobody sent are `0.0`. With no contributions at all, `out` is all zeros.
/// Errors: a repeated worker id ([`KernelError::DuplicateContributor`]); a contribution
/// that fails [`Sparse::validate`] against `out.len()` (index out of range, indices not
/// strictly increasing, non-finite value, indices and values of different lengths);
/// `AllWorkers(0)`, or `AllWorkers(n)` with fewer workers than contributions; an `f32`
/// overflow of a sum.
pub fn scatter_mean(contribs: &[Contribution<'_>], mode: MeanOver, out: &mut [f32]) -> Result<()> {
    scatter_mean_with(&mut ScatterScratch::new(), contribs, mode, out)
}

/// [`scatter_mean`] with caller-owned scratch, for hot loops; the result does not depend
/// on what the scratch held before.
pub fn scatter_mean_with(
    scratch: &mut ScatterScratch,
    contribs: &[Contribution<'_>],
    mode: MeanOver,
    out: &mut [f32],
) -> Result<()> {
    // One pass over `out` in cache-sized blocks: memory sees `out` written once, and the
    // counts never leave the cache.
    let mut blocks = BlockMean::new(scratch, contribs, mode, out.len())?;
    for (b, block) in out.chunks_mut(SCATTER_BLOCK).enumerate() {
        blocks.next_block(b * SCATTER_BLOCK, block)?;
    }
    Ok(())
}

/// The canonical mean produced block by block, in increasing order of position, so a
/// caller can consume each block while it is in cache (the compress pipeline runs the
/// inverse DCT tile by tile on it). Each coordinate sums its contributions in ascending
/// worker id from `+0.0` and divides once: the same bits as [`scatter_mean`].
#[derive(Debug)]
pub struct BlockMean<'a> {
    scratch: &'a mut ScatterScratch,
    contribs: &'a [Contribution<'a>],
    mode: MeanOver,
    next: usize,
    len: usize,
}

impl<'a> BlockMean<'a> {
    /// Validates the contributions against a dense buffer of `len` elements (the errors of
    /// [`scatter_mean`]) and puts them in canonical order.
    pub fn new(
        scratch: &'a mut ScatterScratch,
        contribs: &'a [Contribution<'a>],
        mode: MeanOver,
        len: usize,
    ) -> Result<Self> {
        // Per-coordinate counts are u32.
        if u32::try_from(contribs.len()).is_err() {
            return Err(invalid(
                "contribs",
                format!("{} contributions exceed u32", contribs.len()),
            ));
        }
        if let MeanOver::AllWorkers(n) = mode {
            if n == 0 {
                return Err(invalid("mode", "AllWorkers(0): the worker count must be positive"));
            }
            if (n as usize) < contribs.len() {
                return Err(invalid(
                    "mode",
                    format!("AllWorkers({n}) is fewer than the {} contributions", contribs.len()),
                ));
            }
        }
        canonical_order(&mut scratch.order, contribs.len(), |i| contribs[i].worker)?;
        for c in contribs {
            c.sparse.validate(len)?;
        }
        scratch.cursors.clear();
        scratch.cursors.resize(scratch.order.len(), 0);
        Ok(Self { scratch, contribs, mode, next: 0, len })
    }

    /// Overwrites `block` with the mean of positions `start..start + block.len()`. Blocks
    /// must come in order: `start` is where the previous block ended (0 at first).
    pub fn next_block(&mut self, start: usize, block: &mut [f32]) -> Result<()> {
        let end = start + block.len();
        if start != self.next || end > self.len {
            return Err(invalid(
                "block",
                format!("{start}..{end} does not continue at {} within {}", self.next, self.len),
            ));
        }
        self.next = end;
        let count_contributors = matches!(self.mode, MeanOver::Contributors);
        let counts = &mut self.scratch.counts;
        counts.clear();
        counts.resize(if count_contributors { block.len() } else { 0 }, 0);
        block.fill(0.0);
        for (&ci, cursor) in self.scratch.order.iter().zip(self.scratch.cursors.iter_mut()) {
            let s = self.contribs[ci].sparse;
            let mut c = *cursor;
            while let Some(&i) = s.indices.get(c) {
                let i = i as usize;
                if i >= end {
                    break;
                }
                block[i - start] += s.values[c];
                if count_contributors {
                    counts[i - start] += 1;
                }
                c += 1;
            }
            *cursor = c;
        }
        match self.mode {
            MeanOver::Contributors => {
                for (o, &n) in block.iter_mut().zip(counts.iter()) {
                    // x / 1 is x, and unsent coordinates are already +0.0.
                    if n > 1 {
                        *o /= n as f32;
                    }
                }
            }
            MeanOver::AllWorkers(n) => {
                if n > 1 {
                    let d = n as f32;
                    for o in block.iter_mut() {
                        *o /= d;
                    }
                }
            }
        }
        match block.iter().position(|v| !v.is_finite()) {
            None => Ok(()),
            Some(j) => Err(KernelError::NonFinite {
                what: "aggregated mean",
                index: start + j,
                value: block[j],
            }),
        }
    }
}

/// Coordinates per block of [`scatter_mean_with`]: the block of `out` and its counts
/// (128 KiB each) stay in L2 while every contribution adds to them.
const SCATTER_BLOCK: usize = 1 << 15;

/// Coordinates per block of [`dense_mean`]: the block of `out` stays in L1 while every
/// contribution is added to it, so `out` is written to memory once instead of once per
/// contribution.
const DENSE_BLOCK: usize = 4096;

/// Overwrites `out` with the elementwise mean of dense contributions `(worker id, values)`
/// (DiLoCo pseudo-gradients), summed in ascending worker id from `+0.0` and divided once by
/// the number of contributions; bit-identical to [`scatter_mean`] over contributions that
/// list every coordinate.
///
/// With no contributions, `out` is all zeros. Errors: a repeated worker id, a contribution
/// whose length differs from `out.len()`, a non-finite value, an `f32` overflow of a sum.
pub fn dense_mean(contribs: &[(u32, &[f32])], out: &mut [f32]) -> Result<()> {
    let mut order = Vec::with_capacity(contribs.len());
    canonical_order(&mut order, contribs.len(), |i| contribs[i].0)?;
    for &(_, x) in contribs {
        check_len("dense contribution", out.len(), x.len())?;
        check_finite("dense contribution", x)?;
    }
    let d = contribs.len() as f32;
    for (b, block) in out.chunks_mut(DENSE_BLOCK).enumerate() {
        let start = b * DENSE_BLOCK;
        let end = start + block.len();
        block.fill(0.0);
        for &ci in &order {
            for (o, &v) in block.iter_mut().zip(&contribs[ci].1[start..end]) {
                *o += v;
            }
        }
        if contribs.len() > 1 {
            for o in block.iter_mut() {
                *o /= d;
            }
        }
    }
    check_finite("dense mean", out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::SplitMix64;
    use proptest::prelude::*;

    fn sparse(pairs: &[(u32, f32)]) -> Sparse {
        Sparse {
            indices: pairs.iter().map(|p| p.0).collect(),
            values: pairs.iter().map(|p| p.1).collect(),
        }
    }

    /// The definition, one whole-buffer pass per contribution in worker order: what the
    /// blocked implementation must equal bit for bit.
    fn scatter_mean_plain(ws: &[(u32, Sparse)], mode: MeanOver, len: usize) -> Vec<f32> {
        let mut sorted: Vec<&(u32, Sparse)> = ws.iter().collect();
        sorted.sort_by_key(|w| w.0);
        let mut out = vec![0.0f32; len];
        let mut counts = vec![0u32; len];
        for (_, s) in sorted {
            for (&i, &v) in s.indices.iter().zip(&s.values) {
                out[i as usize] += v;
                counts[i as usize] += 1;
            }
        }
        for (o, &n) in out.iter_mut().zip(&counts) {
            let d = match mode {
                MeanOver::Contributors => n,
                MeanOver::AllWorkers(w) => w,
            };
            if d > 1 {
                *o /= d as f32;
            }
        }
        out
    }

    #[test]
    fn blocks_equal_the_plain_definition_across_block_edges() {
        let len = 3 * SCATTER_BLOCK + 17;
        let mut rng = SplitMix64::new(42);
        let ws: Vec<(u32, Sparse)> = [7u32, 2, 11, 5, 3]
            .iter()
            .map(|&w| {
                // Dense near the block edges, sparse elsewhere.
                let mut s = Sparse::default();
                for i in 0..len {
                    let near_edge =
                        (i % SCATTER_BLOCK) < 3 || (i % SCATTER_BLOCK) > SCATTER_BLOCK - 3;
                    if near_edge || rng.next_u64() % 50 == 0 {
                        s.indices.push(i as u32);
                        s.values.push(rng.next_unit_f32() * 8.0 - 4.0);
                    }
                }
                (w, s)
            })
            .collect();
        for mode in [MeanOver::Contributors, MeanOver::AllWorkers(9)] {
            let mut out = vec![f32::NAN; len];
            scatter_mean(&contribs(&ws), mode, &mut out).unwrap();
            let want = scatter_mean_plain(&ws, mode, len);
            assert!(out.iter().zip(&want).all(|(a, b)| a.to_bits() == b.to_bits()), "{mode:?}");
        }
    }

    fn contribs<'a>(ws: &'a [(u32, Sparse)]) -> Vec<Contribution<'a>> {
        ws.iter().map(|(w, s)| Contribution { worker: *w, sparse: s }).collect()
    }

    fn bits(v: &[f32]) -> Vec<u32> {
        v.iter().map(|x| x.to_bits()).collect()
    }

    /// Values spread over many binades and both signs, so that summation order shows in
    /// the low bits.
    fn wild_value(rng: &mut SplitMix64) -> f32 {
        let m = rng.next_unit_f32() + 0.5;
        let e = (rng.next_u64() % 40) as i32 - 20;
        let s = if rng.next_u64() & 1 == 0 { 1.0 } else { -1.0 };
        s * m * 2f32.powi(e)
    }

    /// Up to `max_workers` contributions with distinct random ids over `len` coordinates,
    /// each keeping every coordinate with its own probability, so index sets overlap.
    fn random_contribs(len: usize, max_workers: usize, seed: u64) -> Vec<(u32, Sparse)> {
        let mut rng = SplitMix64::new(seed);
        let n = (rng.next_u64() % (max_workers as u64 + 1)) as usize;
        let mut ids: Vec<u32> = Vec::new();
        while ids.len() < n {
            let id = (rng.next_u64() % 64) as u32;
            if !ids.contains(&id) {
                ids.push(id);
            }
        }
        ids.into_iter()
            .map(|id| {
                let p = rng.next_unit_f32();
                let mut s = Sparse::default();
                for i in 0..len as u32 {
                    if rng.next_unit_f32() < p {
                        s.indices.push(i);
                        s.values.push(wild_value(&mut rng));
                    }
                }
                (id, s)
            })
            .collect()
    }

    fn shuffled<T: Clone>(v: &[T], seed: u64) -> Vec<T> {
        let mut rng = SplitMix64::new(seed);
        let mut v = v.to_vec();
        for i in (1..v.len()).rev() {
            v.swap(i, (rng.next_u64() % (i as u64 + 1)) as usize);
        }
        v
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        #[test]
        fn any_permutation_gives_identical_bits(
            len in 1usize..200,
            seed in any::<u64>(),
            perm_seeds in prop::collection::vec(any::<u64>(), 1..4),
            extra in 0u32..3,
        ) {
            let ws = random_contribs(len, 8, seed);
            let cs = contribs(&ws);
            let all = MeanOver::AllWorkers((cs.len() as u32 + extra).max(1));
            let mut scratch = ScatterScratch::new();
            for mode in [MeanOver::Contributors, all] {
                let mut base = vec![f32::NAN; len];
                scatter_mean(&cs, mode, &mut base).unwrap();
                for &ps in &perm_seeds {
                    let p = shuffled(&cs, ps);
                    // Stale scratch and garbage in `out` must not leak into the result.
                    let mut got = vec![7.5f32; len];
                    scatter_mean_with(&mut scratch, &p, mode, &mut got).unwrap();
                    prop_assert_eq!(bits(&got), bits(&base));
                }
            }
        }

        #[test]
        fn matches_f64_reference(len in 1usize..200, seed in any::<u64>(), extra in 0u32..3) {
            let ws = random_contribs(len, 8, seed);
            let cs = contribs(&ws);
            let n_all = cs.len() as u32 + extra;
            for mode in [MeanOver::Contributors, MeanOver::AllWorkers(n_all.max(1))] {
                let mut got = vec![0f32; len];
                scatter_mean(&cs, mode, &mut got).unwrap();
                let mut sum = vec![0f64; len];
                let mut abs = vec![0f64; len];
                let mut cnt = vec![0u32; len];
                for (_, s) in &ws {
                    for (&i, &v) in s.indices.iter().zip(&s.values) {
                        sum[i as usize] += f64::from(v);
                        abs[i as usize] += f64::from(v).abs();
                        cnt[i as usize] += 1;
                    }
                }
                for i in 0..len {
                    let d = match mode {
                        MeanOver::Contributors => f64::from(cnt[i].max(1)),
                        MeanOver::AllWorkers(n) => f64::from(n),
                    };
                    let want = sum[i] / d;
                    // Sequential f32 summation of m terms errs by at most (m−1)·ε·Σ|v|,
                    // and the division adds one more rounding.
                    let tol = (f64::from(cnt[i]) + 1.0) * f64::from(f32::EPSILON) * abs[i] / d;
                    prop_assert!(
                        (f64::from(got[i]) - want).abs() <= tol,
                        "coord {}: got {}, want {}, tol {}", i, got[i], want, tol
                    );
                    if cnt[i] == 0 {
                        prop_assert_eq!(got[i].to_bits(), 0);
                    }
                }
            }
        }

        #[test]
        fn dense_is_permutation_invariant_and_matches_full_scatter(
            len in 0usize..9000,
            n in 0usize..6,
            seed in any::<u64>(),
            perm_seed in any::<u64>(),
        ) {
            let mut rng = SplitMix64::new(seed);
            let data: Vec<(u32, Vec<f32>)> = (0..n)
                .map(|w| (w as u32 * 3 + 1, (0..len).map(|_| wild_value(&mut rng)).collect()))
                .collect();
            let dense: Vec<(u32, &[f32])> = data.iter().map(|(w, v)| (*w, &v[..])).collect();
            let mut base = vec![f32::NAN; len];
            dense_mean(&dense, &mut base).unwrap();
            let mut got = vec![1.0; len];
            dense_mean(&shuffled(&dense, perm_seed), &mut got).unwrap();
            prop_assert_eq!(bits(&got), bits(&base));

            let ws: Vec<(u32, Sparse)> = data
                .iter()
                .map(|(w, v)| (*w, Sparse { indices: (0..len as u32).collect(), values: v.clone() }))
                .collect();
            let cs = contribs(&ws);
            for mode in [MeanOver::Contributors, MeanOver::AllWorkers(n.max(1) as u32)] {
                let mut sc = vec![0.0; len];
                scatter_mean(&cs, mode, &mut sc).unwrap();
                prop_assert_eq!(bits(&sc), bits(&base));
            }
        }
    }

    #[test]
    fn divisors_on_a_hand_worked_example() {
        let ws = [(5, sparse(&[(1, 4.0), (2, 6.0)])), (0, sparse(&[(0, 1.0), (1, 2.0)]))];
        let cs = contribs(&ws);
        let mut out = [9.0f32; 4];
        scatter_mean(&cs, MeanOver::Contributors, &mut out).unwrap();
        assert_eq!(out, [1.0, 3.0, 6.0, 0.0]);
        scatter_mean(&cs, MeanOver::AllWorkers(4), &mut out).unwrap();
        assert_eq!(out, [0.25, 1.5, 1.5, 0.0]);
        scatter_mean(&cs, MeanOver::AllWorkers(2), &mut out).unwrap();
        assert_eq!(out, [0.5, 3.0, 3.0, 0.0]);
    }

    #[test]
    fn sum_runs_in_ascending_worker_order() {
        // In id order: (1e8 + 1) rounds to 1e8, then − 1e8 → 0. Arrival order (id 3 first)
        // would give (−1e8 + 1e8) + 1 = 1.
        let ws = [(3, sparse(&[(0, -1e8)])), (1, sparse(&[(0, 1e8)])), (2, sparse(&[(0, 1.0)]))];
        for perm in [[0, 1, 2], [2, 1, 0], [1, 0, 2], [0, 2, 1]] {
            let cs: Vec<Contribution<'_>> =
                perm.iter().map(|&i| Contribution { worker: ws[i].0, sparse: &ws[i].1 }).collect();
            let mut out = [f32::NAN; 1];
            scatter_mean(&cs, MeanOver::Contributors, &mut out).unwrap();
            assert_eq!(out[0].to_bits(), 0.0f32.to_bits());
            let dense: Vec<(u32, &[f32])> =
                cs.iter().map(|c| (c.worker, &c.sparse.values[..])).collect();
            dense_mean(&dense, &mut out).unwrap();
            assert_eq!(out[0].to_bits(), 0.0f32.to_bits());
        }
    }

    #[test]
    fn empty_input_gives_zeros() {
        let mut out = [3.0f32; 5];
        scatter_mean(&[], MeanOver::Contributors, &mut out).unwrap();
        assert_eq!(bits(&out), [0; 5]);
        let mut out = [3.0f32; 5];
        scatter_mean(&[], MeanOver::AllWorkers(3), &mut out).unwrap();
        assert_eq!(bits(&out), [0; 5]);
        let mut out = [3.0f32; 5];
        dense_mean(&[], &mut out).unwrap();
        assert_eq!(bits(&out), [0; 5]);
        scatter_mean(&[], MeanOver::Contributors, &mut []).unwrap();
    }

    #[test]
    fn errors_leave_out_untouched() {
        let ok = sparse(&[(0, 1.0), (2, 2.0)]);
        let cases: Vec<(Vec<(u32, Sparse)>, MeanOver)> = vec![
            (vec![(4, ok.clone()), (4, ok.clone())], MeanOver::Contributors),
            (vec![(1, ok.clone()), (2, sparse(&[(0, 1.0), (4, 1.0)]))], MeanOver::Contributors),
            (vec![(1, sparse(&[(2, 1.0), (1, 1.0)]))], MeanOver::Contributors),
            (vec![(1, sparse(&[(2, 1.0), (2, 1.0)]))], MeanOver::Contributors),
            (vec![(1, sparse(&[(0, f32::NAN)]))], MeanOver::Contributors),
            (vec![(1, sparse(&[(0, f32::INFINITY)]))], MeanOver::AllWorkers(1)),
            (vec![(1, Sparse { indices: vec![0, 1], values: vec![1.0] })], MeanOver::Contributors),
            (vec![(1, ok.clone())], MeanOver::AllWorkers(0)),
            (vec![], MeanOver::AllWorkers(0)),
            (vec![(1, ok.clone()), (2, ok.clone())], MeanOver::AllWorkers(1)),
        ];
        for (ws, mode) in &cases {
            let cs = contribs(ws);
            let mut out = [5.0f32; 4];
            assert!(scatter_mean(&cs, *mode, &mut out).is_err(), "{ws:?} {mode:?}");
            assert_eq!(out, [5.0; 4]);
        }
        let dup = [(7, ok.clone()), (3, ok.clone()), (7, ok.clone()), (3, ok.clone())];
        assert_eq!(
            scatter_mean(&contribs(&dup), MeanOver::Contributors, &mut [0.0; 4]),
            Err(KernelError::DuplicateContributor { id: 3 })
        );
        let oob = [(1, sparse(&[(4, 1.0)]))];
        assert!(matches!(
            scatter_mean(&contribs(&oob), MeanOver::Contributors, &mut [0.0; 4]),
            Err(KernelError::IndexOutOfRange { index: 4, len: 4, .. })
        ));

        let a = [1.0f32, 2.0, 3.0];
        let short = [1.0f32, 2.0];
        let nan = [1.0f32, f32::NAN, 3.0];
        let dense_cases: [&[(u32, &[f32])]; 3] =
            [&[(0, &a), (1, &short)], &[(2, &a), (2, &a)], &[(0, &a), (1, &nan)]];
        for c in dense_cases {
            let mut out = [5.0f32; 3];
            assert!(dense_mean(c, &mut out).is_err());
            assert_eq!(out, [5.0; 3]);
        }
        assert!(matches!(
            dense_mean(&[(0, &a), (1, &short)], &mut [0.0; 3]),
            Err(KernelError::LengthMismatch { expected: 3, actual: 2, .. })
        ));
    }

    #[test]
    fn overflowing_sum_is_an_error() {
        let big = sparse(&[(0, f32::MAX)]);
        let ws = [(0, big.clone()), (1, big)];
        let r = scatter_mean(&contribs(&ws), MeanOver::Contributors, &mut [0.0; 2]);
        assert!(matches!(r, Err(KernelError::NonFinite { index: 0, .. })), "{r:?}");
        let m = [f32::MAX];
        assert!(dense_mean(&[(0, &m), (1, &m)], &mut [0.0]).is_err());
    }
}
