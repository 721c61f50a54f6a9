//! The fast path: `FastDct`, the O(n log n) factorization of the orthonormal DCT-II for
//! power-of-two chunks (Makhoul's mapping onto a half-length complex FFT) with its exact
//! transpose as the inverse, and the drivers that run it over lines, columns and whole
//! tiles. It is separate from the matrix path because its tables, passes and drivers form
//! one algorithm of their own, written in the lane arithmetic of `lanes.rs`; the CUDA
//! kernels replay it with the tables that `fast_tables` flattens.

use super::lanes::{
    add, cadd, cmul, cmul_conj, columns_to_vectors, cross2, csub, dot2, get, lines_to_vectors, mul,
    neg, radix4, radix4_transposed, set, splat, sub, transpose4, vectors_to_columns,
    vectors_to_lines, vload, Cv, LANES, V,
};
use super::{cos_sin_pi, DimPlan, DEFAULT_CHUNK, MAX_CHUNK};

/// Smallest chunk the fast path takes. A length-two chunk has no FFT left to factor, so it
/// stays on the matrix path.
pub(super) const FAST_MIN_CHUNK: usize = 4;

/// The fast path's tables for lines of `n` points, flattened for the CUDA kernels (which
/// replay [`FastDct`]'s arithmetic with these exact values): the gather permutation, and
/// `[s0, mid.re, mid.im, tw4.., tw2.., last_tw.., pairs..]` with each `V` constant taken
/// from one lane (all lanes hold the same value). `None` when the CPU uses the dense path
/// for `n`.
#[cfg(feature = "cuda")]
pub(crate) fn fast_tables(n: usize) -> Option<(Vec<u32>, Vec<f32>)> {
    if !FastDct::supports(n) {
        return None;
    }
    let f = FastDct::new(n);
    let mut tab = vec![f.s0[0], f.mid[0][0], f.mid[1][0]];
    for t in &f.tw4 {
        for w in t {
            tab.extend([w[0][0], w[1][0]]);
        }
    }
    for w in f.tw2.iter().chain(&f.last_tw) {
        tab.extend([w[0][0], w[1][0]]);
    }
    for p in &f.pairs {
        tab.extend(p.iter().map(|v| v[0]));
    }
    let gather = f.gather.iter().map(|&g| g as u32).collect();
    Some((gather, tab))
}

/// `e^{−iπ·p/q}` as `[re, im]`, splatted.
fn twiddle(p: usize, q: usize) -> [V; 2] {
    let (c, s) = cos_sin_pi(p, q);
    [splat(c), splat(-s)]
}

/// Which way a fast transform runs: DCT-II (forward) or its transpose, DCT-III (inverse).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Direction {
    Forward,
    Inverse,
}

/// Reusable buffers of the fast path: three blocks of `n` vectors.
#[derive(Default)]
pub(super) struct Scratch {
    buf: Vec<V>,
}

impl Scratch {
    fn blocks(&mut self, n: usize) -> (&mut [V], &mut [V], &mut [V]) {
        if self.buf.len() < 3 * n {
            self.buf.resize(3 * n, [0.0; LANES]);
        }
        let (a, rest) = self.buf.split_at_mut(n);
        let (b, rest) = rest.split_at_mut(n);
        (a, b, &mut rest[..n])
    }
}

/// One pass of FFT butterflies between the first and the last (see [`FastDct`]).
#[derive(Clone, Copy)]
enum Stage {
    /// The radix-2 stages of half-spans `h` and `2h` at once, twiddles from
    /// [`FastDct::tw4`] at `offset`.
    Radix4 { h: usize, offset: usize },
    /// The radix-2 stage of half-span `h`, twiddles from [`FastDct::tw2`] at `offset`.
    Radix2 { h: usize, offset: usize },
}

/// The most middle passes any supported length needs (`n = 2^k`, `k ≤ 10`, has at most
/// `k − 4` of them).
const MAX_STAGES: usize = 8;

/// The middle passes of a line of `n` points, in forward order, and their count. Pure
/// arithmetic on `n`, so that it folds away where `n` is a constant.
#[inline(always)]
fn stages(n: usize) -> ([Stage; MAX_STAGES], usize) {
    let h_last = n / 4;
    let mut out = [Stage::Radix2 { h: 0, offset: 0 }; MAX_STAGES];
    let mut count = 0;
    let (mut h, mut o4, mut o2) = (FastDct::first_span(n / 2), 0, 0);
    while h < h_last && count < MAX_STAGES {
        if 4 * h <= h_last {
            out[count] = Stage::Radix4 { h, offset: o4 };
            o4 += h;
            h *= 4;
        } else {
            out[count] = Stage::Radix2 { h, offset: o2 };
            o2 += h;
            h *= 2;
        }
        count += 1;
    }
    (out, count)
}

/// The orthonormal DCT-II of a power-of-two length `n = 2m` through a complex FFT of
/// length `m` (Makhoul's reordering), and its inverse as the exact transpose.
///
/// Forward, per line `x`:
/// 1. `v[j] = x[2j]`, `v[n−1−j] = x[2j+1]` (`j < m`), then `z[p] = v[2p] + i·v[2p+1]`, read
///    in bit-reversed order of `p`: one fixed permutation, [`FastDct::gather`].
/// 2. `Z = FFT_m(z)` by radix-2 decimation in time (natural order out). The first one or two
///    stages run while gathering, pairs of middle stages as radix-4 passes ([`Stage`]), and
///    the last stage together with step 3.
/// 3. The real FFT of `v` from `Z`, rotated and scaled into coefficients. For `k` in
///    `1..m/2` and `k' = m − k`, with `A = Z[k]`, `B = Z[k']`: `S = A + conj(B)`,
///    `D = A − conj(B)`, `T = e^{−2πik/n}·D/i`; then `P = S + T` is twice the real FFT at `k`
///    and `P' = conj(S − T)` twice that at `k'`, and `X[k] = Re(α_k·P)`,
///    `X[n−k] = −Im(α_k·P)` with `α_k = √(2/n)/2 · e^{−iπk/2n}` (likewise `k'`). `Z[0]` gives
///    `X[0]` and `X[m]`, and `Z[m/2]` gives `X[m/2]` and `X[n−m/2]`.
///
/// The whole forward map is the orthonormal `C`, so the inverse is its transpose, built pass
/// by pass in reverse: the transposed post-processing, the butterflies transposed
/// (`conj(w)` for `w`), and the permutation scattered back.
///
/// [`LANES`] lines run together, one per vector lane, and every operation is elementwise
/// across lanes, so a line's arithmetic does not depend on which lines share its vector.
#[derive(Debug, Clone)]
pub(super) struct FastDct {
    n: usize,
    /// FFT input value `r` (`2p` the real and `2p + 1` the imaginary part of position `p`)
    /// is point `gather[r]` of the line.
    gather: Vec<usize>,
    /// Radix-4 twiddles `[e^{−iπj/h}, e^{−iπj/2h}, e^{−3iπj/2h}]`, `j < h`, of every
    /// radix-4 pass in order.
    tw4: Vec<[[V; 2]; 3]>,
    /// Radix-2 twiddles `e^{−iπj/h}`, `j < h`, of every radix-2 middle pass in order.
    tw2: Vec<[V; 2]>,
    /// The last stage's twiddles `e^{−iπj/h}`, `h = m/2`, `j < h`.
    last_tw: Vec<[V; 2]>,
    /// For `k` in `1..m/2` at index `k − 1`: `[c_k, s_k, c_k', s_k', re w, im w]`, where
    /// `(c_k, s_k) = √(2/n)/2 · (cos, sin)(πk/2n)` and `w = e^{−2πik/n}`.
    pairs: Vec<[V; 6]>,
    /// `√(2/n) · (cos, sin)(π/8)`: the rotation of `Z[m/2]`, where `B = A`.
    mid: [V; 2],
    /// `√(1/n)`, the scale of `X[0]`, and of `X[m]`, which is `√(2/n)·cos(π/4)`.
    s0: V,
}

impl FastDct {
    pub(super) fn supports(n: usize) -> bool {
        n >= FAST_MIN_CHUNK && n.is_power_of_two() && n <= MAX_CHUNK
    }

    pub(super) fn new(n: usize) -> Self {
        let m = n / 2;
        let h_last = m / 2;
        let bits = m.trailing_zeros();
        let gather = (0..n)
            .map(|r| {
                let p = (r / 2).reverse_bits() >> (usize::BITS - bits);
                let j = 2 * p + r % 2;
                if j < m {
                    2 * j
                } else {
                    2 * (n - 1 - j) + 1
                }
            })
            .collect();
        let (mut tw4, mut tw2) = (Vec::new(), Vec::new());
        let (list, count) = stages(n);
        for stage in &list[..count] {
            match *stage {
                Stage::Radix4 { h, .. } => tw4.extend(
                    (0..h).map(|j| [twiddle(j, h), twiddle(j, 2 * h), twiddle(3 * j, 2 * h)]),
                ),
                Stage::Radix2 { h, .. } => tw2.extend((0..h).map(|j| twiddle(j, h))),
            }
        }
        let last_tw = (0..h_last).map(|j| twiddle(j, h_last)).collect();
        let s = (2.0 / n as f64).sqrt();
        let rot = |k: usize| {
            let (c, sn) = cos_sin_pi(k, 2 * n);
            (splat(s / 2.0 * c), splat(s / 2.0 * sn))
        };
        let pairs = (1..h_last)
            .map(|k| {
                let ((ck, sk), (ck2, sk2), [wr, wi]) = (rot(k), rot(m - k), twiddle(k, m));
                [ck, sk, ck2, sk2, wr, wi]
            })
            .collect();
        let (c8, s8) = cos_sin_pi(1, 8);
        Self {
            n,
            gather,
            tw4,
            tw2,
            last_tw,
            pairs,
            mid: [splat(s * c8), splat(s * s8)],
            s0: splat((1.0 / n as f64).sqrt()),
        }
    }

    /// Half-span of the first stage left after the gathering pass, which runs the radix-2
    /// stages below it: two when there are at least three stages, one when there are two,
    /// none when the only stage is the last.
    fn first_span(m: usize) -> usize {
        match m {
            0..=2 => 1,
            4 => 2,
            _ => 4,
        }
    }

    /// Flops per line, the same in both directions (each pass's transpose performs exactly
    /// the multiplies and adds of the pass): butterflies without their trivial twiddles,
    /// then the post-processing.
    pub(super) fn flops_per_line(&self) -> u64 {
        let m = (self.n / 2) as u64;
        let h_last = m / 2;
        let mut flops = match m {
            2 => 0,
            4 => 4 * 2,
            _ => 16 * (m / 4),
        };
        let (list, count) = stages(self.n);
        for stage in &list[..count] {
            flops += match *stage {
                Stage::Radix4 { h, .. } => (m / (4 * h as u64)) * (16 + 34 * (h as u64 - 1)),
                Stage::Radix2 { h, .. } => (m / (2 * h as u64)) * (4 + 10 * (h as u64 - 1)),
            };
        }
        // The last stage: j = 0 and j = h/2 (twiddle −i) cost four adds, the others ten.
        flops += if h_last >= 2 { 8 + 10 * (h_last - 2) } else { 4 };
        // Post-processing: four flops for X[0], X[m]; six for Z[m/2]; 26 per pair.
        flops + 10 + 26 * (h_last - 1)
    }

    /// 1-D forward over whole chunks, the padded last chunk through a zero-filled copy.
    pub(super) fn line_forward(&self, dim: DimPlan, input: &[f32], out: &mut [f32]) {
        let n = self.n;
        let full = dim.len / n;
        let (head_in, tail_in) = input.split_at(full * n);
        let (head_out, tail_out) = out.split_at_mut(full * n);
        let mut scratch = Scratch::default();
        self.rows(Direction::Forward, head_in, n, full, head_out, n, &mut scratch);
        if !tail_in.is_empty() {
            let mut padded = vec![0.0f32; n];
            padded[..tail_in.len()].copy_from_slice(tail_in);
            self.rows(Direction::Forward, &padded, n, 1, tail_out, n, &mut scratch);
        }
    }

    /// Inverse of [`FastDct::line_forward`]; the padded last chunk is reconstructed into
    /// scratch and truncated.
    pub(super) fn line_inverse(&self, dim: DimPlan, coeffs: &[f32], out: &mut [f32]) {
        let n = self.n;
        let full = dim.len / n;
        let (head_in, tail_in) = coeffs.split_at(full * n);
        let (head_out, tail_out) = out.split_at_mut(full * n);
        let mut scratch = Scratch::default();
        self.rows(Direction::Inverse, head_in, n, full, head_out, n, &mut scratch);
        if !tail_out.is_empty() {
            let mut padded = vec![0.0f32; n];
            self.rows(Direction::Inverse, tail_in, n, 1, &mut padded, n, &mut scratch);
            tail_out.copy_from_slice(&padded[..tail_out.len()]);
        }
    }

    /// Transforms `lines` contiguous lines, line `i` at `src[i·lds ..][.. n]`, into
    /// `dst[i·ldd ..][.. n]`, [`LANES`] lines at a time transposed into vectors and back.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn rows(
        &self,
        dir: Direction,
        src: &[f32],
        lds: usize,
        lines: usize,
        dst: &mut [f32],
        ldd: usize,
        scratch: &mut Scratch,
    ) {
        let block = |n: usize, scratch: &mut Scratch| {
            let (vals, work, out) = scratch.blocks(n);
            for i0 in (0..lines).step_by(LANES) {
                let count = LANES.min(lines - i0);
                lines_to_vectors(&src[i0 * lds..], lds, count, vals);
                self.block(dir, n, vals, work, out);
                vectors_to_lines(out, &mut dst[i0 * ldd..], ldd, count);
            }
        };
        with_n(self.n, scratch, block);
    }

    /// Transforms the `width` columns of an `n`-row block, column `j` at `src[p·lds + j]`,
    /// into `dst[k·ldd + j]`: [`LANES`] adjacent columns already form a vector.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn cols(
        &self,
        dir: Direction,
        src: &[f32],
        lds: usize,
        width: usize,
        dst: &mut [f32],
        ldd: usize,
        scratch: &mut Scratch,
    ) {
        let block = |n: usize, scratch: &mut Scratch| {
            let (vals, work, out) = scratch.blocks(n);
            for l in (0..width).step_by(LANES) {
                let count = LANES.min(width - l);
                columns_to_vectors(&src[l..], lds, count, vals);
                self.block(dir, n, vals, work, out);
                vectors_to_columns(out, &mut dst[l..], ldd, count);
            }
        };
        with_n(self.n, scratch, block);
    }

    /// One [`LANES`]-line block in direction `dir`.
    #[inline(always)]
    fn block(&self, dir: Direction, n: usize, src: &[V], work: &mut [V], out: &mut [V]) {
        match dir {
            Direction::Forward => self.forward_block(n, src, work, out),
            Direction::Inverse => self.inverse_block(n, src, work, out),
        }
    }

    /// The forward transform of [`LANES`] lines: points `vals` to coefficients `out`, all of
    /// length `n`.
    #[inline(always)]
    fn forward_block(&self, n: usize, vals: &[V], work: &mut [V], out: &mut [V]) {
        let (vals, work, out) = (&vals[..n], &mut work[..n], &mut out[..n]);
        self.first_pass(n, |point| vals[point], work);
        self.middle_passes(n, work);
        self.last_pass(n, work, out);
    }

    /// The inverse transform of [`LANES`] lines: coefficients `coeffs` to points `out`.
    #[inline(always)]
    fn inverse_block(&self, n: usize, coeffs: &[V], work: &mut [V], out: &mut [V]) {
        let (coeffs, work, out) = (&coeffs[..n], &mut work[..n], &mut out[..n]);
        self.last_pass_transposed(n, |k| coeffs[k], work);
        self.middle_passes_transposed(n, work);
        self.first_pass_transposed(n, work, |point, v| out[point] = v);
    }

    /// Gathers the FFT input from the line's points into `work` and runs the stages below
    /// [`FastDct::first_span`], whose twiddles are all one (or `−i`, a swap).
    #[inline(always)]
    fn first_pass(&self, n: usize, vals: impl Fn(usize) -> V, work: &mut [V]) {
        let m = n / 2;
        let g = &self.gather[..n];
        let at = |p: usize| Cv { re: vals(g[2 * p]), im: vals(g[2 * p + 1]) };
        match m {
            2 => {
                set(work, 0, at(0));
                set(work, 1, at(1));
            }
            4 => {
                for p in (0..m).step_by(2) {
                    let (a, b) = (at(p), at(p + 1));
                    set(work, p, cadd(a, b));
                    set(work, p + 1, csub(a, b));
                }
            }
            _ => {
                for p in (0..m).step_by(4) {
                    let z = radix4([at(p), at(p + 1), at(p + 2), at(p + 3)]);
                    for (i, z) in z.into_iter().enumerate() {
                        set(work, p + i, z);
                    }
                }
            }
        }
    }

    /// Transpose of [`FastDct::first_pass`]: butterflies transposed, then scattered to the
    /// line's points.
    #[inline(always)]
    fn first_pass_transposed(&self, n: usize, work: &[V], mut out: impl FnMut(usize, V)) {
        let m = n / 2;
        let g = &self.gather[..n];
        let mut put = |p: usize, z: Cv| {
            out(g[2 * p], z.re);
            out(g[2 * p + 1], z.im);
        };
        match m {
            2 => {
                put(0, get(work, 0));
                put(1, get(work, 1));
            }
            4 => {
                for p in (0..m).step_by(2) {
                    let (a, b) = (get(work, p), get(work, p + 1));
                    put(p, cadd(a, b));
                    put(p + 1, csub(a, b));
                }
            }
            _ => {
                for p in (0..m).step_by(4) {
                    let z = [get(work, p), get(work, p + 1), get(work, p + 2), get(work, p + 3)];
                    for (i, x) in radix4_transposed(z).into_iter().enumerate() {
                        put(p + i, x);
                    }
                }
            }
        }
    }

    /// The middle stages, in place.
    #[inline(always)]
    fn middle_passes(&self, n: usize, work: &mut [V]) {
        let (list, count) = stages(n);
        for stage in &list[..count] {
            match *stage {
                Stage::Radix4 { h, offset } => self.radix4_pass(n, h, offset, work),
                Stage::Radix2 { h, offset } => self.radix2_pass(n, h, offset, work),
            }
        }
    }

    /// Transpose of [`FastDct::middle_passes`].
    #[inline(always)]
    fn middle_passes_transposed(&self, n: usize, work: &mut [V]) {
        let (list, count) = stages(n);
        for stage in list[..count].iter().rev() {
            match *stage {
                Stage::Radix4 { h, offset } => self.radix4_pass_transposed(n, h, offset, work),
                Stage::Radix2 { h, offset } => self.radix2_pass_transposed(n, h, offset, work),
            }
        }
    }

    #[inline(always)]
    fn radix4_pass(&self, n: usize, h: usize, offset: usize, work: &mut [V]) {
        let tw = &self.tw4[offset..offset + h];
        for g0 in (0..n / 2).step_by(4 * h) {
            for (j, tw) in tw.iter().enumerate() {
                let p = [g0 + j, g0 + j + h, g0 + j + 2 * h, g0 + j + 3 * h];
                let x = [get(work, p[0]), get(work, p[1]), get(work, p[2]), get(work, p[3])];
                let y = if j == 0 {
                    x
                } else {
                    [x[0], cmul(tw[0], x[1]), cmul(tw[1], x[2]), cmul(tw[2], x[3])]
                };
                for (&p, z) in p.iter().zip(radix4(y)) {
                    set(work, p, z);
                }
            }
        }
    }

    #[inline(always)]
    fn radix4_pass_transposed(&self, n: usize, h: usize, offset: usize, work: &mut [V]) {
        let tw = &self.tw4[offset..offset + h];
        for g0 in (0..n / 2).step_by(4 * h) {
            for (j, tw) in tw.iter().enumerate() {
                let p = [g0 + j, g0 + j + h, g0 + j + 2 * h, g0 + j + 3 * h];
                let z = [get(work, p[0]), get(work, p[1]), get(work, p[2]), get(work, p[3])];
                let y = radix4_transposed(z);
                let x = if j == 0 {
                    y
                } else {
                    [y[0], cmul_conj(tw[0], y[1]), cmul_conj(tw[1], y[2]), cmul_conj(tw[2], y[3])]
                };
                for (&p, x) in p.iter().zip(x) {
                    set(work, p, x);
                }
            }
        }
    }

    #[inline(always)]
    fn radix2_pass(&self, n: usize, h: usize, offset: usize, work: &mut [V]) {
        let tw = &self.tw2[offset..offset + h];
        for g0 in (0..n / 2).step_by(2 * h) {
            for (j, &w) in tw.iter().enumerate() {
                let (pa, pb) = (g0 + j, g0 + j + h);
                let a = get(work, pa);
                let b = if j == 0 { get(work, pb) } else { cmul(w, get(work, pb)) };
                set(work, pa, cadd(a, b));
                set(work, pb, csub(a, b));
            }
        }
    }

    #[inline(always)]
    fn radix2_pass_transposed(&self, n: usize, h: usize, offset: usize, work: &mut [V]) {
        let tw = &self.tw2[offset..offset + h];
        for g0 in (0..n / 2).step_by(2 * h) {
            for (j, &w) in tw.iter().enumerate() {
                let (pa, pb) = (g0 + j, g0 + j + h);
                let (a, b) = (get(work, pa), get(work, pb));
                let d = csub(a, b);
                set(work, pa, cadd(a, b));
                set(work, pb, if j == 0 { d } else { cmul_conj(w, d) });
            }
        }
    }

    /// The last FFT stage and the post-processing, `work` to coefficients `out`.
    /// Butterflies `j` and `h − j` of the last stage produce exactly the `Z` of the pairs
    /// `(j, m − j)` and `(h − j, h + j)`, so each group goes from registers to coefficients.
    #[inline(always)]
    fn last_pass(&self, n: usize, work: &[V], out: &mut [V]) {
        let m = n / 2;
        let h = m / 2;
        let [mc, ms] = self.mid;
        let (a, b) = (get(work, 0), get(work, h));
        let (z0, zh) = (cadd(a, b), csub(a, b));
        out[0] = mul(self.s0, add(z0.re, z0.im));
        out[m] = mul(self.s0, sub(z0.re, z0.im));
        out[h] = cross2(mc, zh.re, ms, zh.im);
        out[n - h] = dot2(ms, zh.re, mc, zh.im);
        if h < 2 {
            return;
        }
        let (tw, pairs) = (&self.last_tw[..h], &self.pairs[..h - 1]);
        // j = h/2: the twiddle is −i, and (−i)·b = (b.im, −b.re).
        let j = h / 2;
        let (a, b) = (get(work, j), get(work, j + h));
        let zj = Cv { re: add(a.re, b.im), im: sub(a.im, b.re) };
        let zjh = Cv { re: sub(a.re, b.im), im: add(a.im, b.re) };
        post_pair(n, j, pairs[j - 1], zj, zjh, out);
        for j in 1..h / 2 {
            let jj = h - j;
            let (a, b) = (get(work, j), cmul(tw[j], get(work, j + h)));
            let (c, d) = (get(work, jj), cmul(tw[jj], get(work, jj + h)));
            let (zj, zjh, zjj, zjjh) = (cadd(a, b), csub(a, b), cadd(c, d), csub(c, d));
            post_pair(n, j, pairs[j - 1], zj, zjjh, out);
            post_pair(n, jj, pairs[jj - 1], zjj, zjh, out);
        }
    }

    /// Transpose of [`FastDct::last_pass`]: coefficients `src` to `work`.
    #[inline(always)]
    fn last_pass_transposed(&self, n: usize, src: impl Fn(usize) -> V, work: &mut [V]) {
        let m = n / 2;
        let h = m / 2;
        let [mc, ms] = self.mid;
        let (x0, xm, xh, xnh) = (src(0), src(m), src(h), src(n - h));
        let z0 = Cv { re: mul(self.s0, add(x0, xm)), im: mul(self.s0, sub(x0, xm)) };
        let zh = Cv { re: dot2(mc, xh, ms, xnh), im: cross2(mc, xnh, ms, xh) };
        set(work, 0, cadd(z0, zh));
        set(work, h, csub(z0, zh));
        if h < 2 {
            return;
        }
        let (tw, pairs) = (&self.last_tw[..h], &self.pairs[..h - 1]);
        let j = h / 2;
        let (zj, zjh) = post_pair_transposed(n, j, pairs[j - 1], &src);
        let d = csub(zj, zjh);
        set(work, j, cadd(zj, zjh));
        // The transpose of multiplying by −i is multiplying by i: i·d = (−d.im, d.re).
        set(work, j + h, Cv { re: neg(d.im), im: d.re });
        for j in 1..h / 2 {
            let jj = h - j;
            let (zj, zjjh) = post_pair_transposed(n, j, pairs[j - 1], &src);
            let (zjj, zjh) = post_pair_transposed(n, jj, pairs[jj - 1], &src);
            set(work, j, cadd(zj, zjh));
            set(work, j + h, cmul_conj(tw[j], csub(zj, zjh)));
            set(work, jj, cadd(zjj, zjjh));
            set(work, jj + h, cmul_conj(tw[jj], csub(zjj, zjjh)));
        }
    }
}

/// Forward transform of one tile whose two dimensions are both fast: `src` (row stride
/// `lds`, `rows.n × cols.n`) to the dense coefficient tile `out`.
///
/// First the columns, [`LANES`] at a time: adjacent columns of a row already form a vector,
/// so the first pass loads straight from `src`. Each result block is transposed into
/// `rows_v`, which holds every group of [`LANES`] rows as one vector per column, exactly the
/// input of the row transform, whose results are transposed into the row-major output. So
/// besides the two transforms the data only moves through two 4 × 4 transposes.
pub(super) fn fast_tile_forward(
    rows: &FastDct,
    cols: &FastDct,
    src: &[f32],
    lds: usize,
    out: &mut [f32],
    scratch: &mut Vec<V>,
) {
    let mut run = |nr: usize, nc: usize, scratch: &mut Vec<V>| {
        let (rows_v, work, res) = tile_blocks(scratch, nr, nc);
        for l in (0..nc).step_by(LANES) {
            let (work, res) = (&mut work[..nr], &mut res[..nr]);
            rows.first_pass(nr, |point| vload(src, point * lds + l), work);
            rows.middle_passes(nr, work);
            rows.last_pass(nr, work, res);
            for (g, block) in res[..nr].chunks_exact(LANES).enumerate() {
                let t = transpose4([block[0], block[1], block[2], block[3]]);
                rows_v[g * nc + l..][..LANES].copy_from_slice(&t);
            }
        }
        for (g, line_v) in rows_v.chunks_exact(nc).enumerate() {
            cols.forward_block(nc, line_v, work, res);
            vectors_to_lines(&res[..nc], &mut out[g * LANES * nc..], nc, LANES);
        }
    };
    if rows.n == DEFAULT_CHUNK && cols.n == DEFAULT_CHUNK {
        run(DEFAULT_CHUNK, DEFAULT_CHUNK, scratch);
    } else {
        run(rows.n, cols.n, scratch);
    }
}

/// Inverse of [`fast_tile_forward`]: the dense coefficient tile `coeffs` to `dst` (row
/// stride `ldd`). The transforms commute, so this one also starts with the columns, read in
/// place, and ends with the rows, whose points are transposed into the output rows: the
/// stores are then whole runs of a row rather than one vector per row.
pub(super) fn fast_tile_inverse(
    rows: &FastDct,
    cols: &FastDct,
    coeffs: &[f32],
    dst: &mut [f32],
    ldd: usize,
    scratch: &mut Vec<V>,
) {
    let mut run = |nr: usize, nc: usize, scratch: &mut Vec<V>| {
        let (rows_v, work, res) = tile_blocks(scratch, nr, nc);
        for l in (0..nc).step_by(LANES) {
            let (work, res) = (&mut work[..nr], &mut res[..nr]);
            rows.last_pass_transposed(nr, |k| vload(coeffs, k * nc + l), work);
            rows.middle_passes_transposed(nr, work);
            rows.first_pass_transposed(nr, work, |point, v| res[point] = v);
            for (g, block) in res.chunks_exact(LANES).enumerate() {
                let t = transpose4([block[0], block[1], block[2], block[3]]);
                rows_v[g * nc + l..][..LANES].copy_from_slice(&t);
            }
        }
        for (g, line_v) in rows_v.chunks_exact(nc).enumerate() {
            cols.inverse_block(nc, line_v, work, res);
            vectors_to_lines(&res[..nc], &mut dst[g * LANES * ldd..], ldd, LANES);
        }
    };
    if rows.n == DEFAULT_CHUNK && cols.n == DEFAULT_CHUNK {
        run(DEFAULT_CHUNK, DEFAULT_CHUNK, scratch);
    } else {
        run(rows.n, cols.n, scratch);
    }
}

/// Splits `scratch` into the row-group vectors of an `nr × nc` tile and two blocks for one
/// line transform.
fn tile_blocks(scratch: &mut Vec<V>, nr: usize, nc: usize) -> (&mut [V], &mut [V], &mut [V]) {
    let (tile, line) = (nr * nc / LANES, nr.max(nc));
    if scratch.len() < tile + 2 * line {
        scratch.resize(tile + 2 * line, [0.0; LANES]);
    }
    let (rows_v, rest) = scratch.split_at_mut(tile);
    let (a, rest) = rest.split_at_mut(line);
    (rows_v, a, &mut rest[..line])
}

/// Runs `f` with the chunk length: the one that matters ([`DEFAULT_CHUNK`]) as a constant,
/// so that its loops unroll and its indices need no checks, any other as a variable.
#[inline(always)]
fn with_n(n: usize, scratch: &mut Scratch, mut f: impl FnMut(usize, &mut Scratch)) {
    if n == DEFAULT_CHUNK {
        f(DEFAULT_CHUNK, scratch);
    } else {
        f(n, scratch);
    }
}

/// Coefficients `X[k], X[n−k], X[m−k], X[m+k]` from `A = Z[k]`, `B = Z[m−k]`, with the
/// pair's constants `c` (see [`FastDct::pairs`]).
#[inline(always)]
fn post_pair(n: usize, k: usize, c: [V; 6], a: Cv, b: Cv, out: &mut [V]) {
    let m = n / 2;
    let [ck, sk, ck2, sk2, wr, wi] = c;
    let s = Cv { re: add(a.re, b.re), im: sub(a.im, b.im) };
    let d = Cv { re: sub(a.re, b.re), im: add(a.im, b.im) };
    let t = Cv { re: dot2(wr, d.im, wi, d.re), im: cross2(wi, d.im, wr, d.re) };
    let p = cadd(s, t);
    let p2 = Cv { re: sub(s.re, t.re), im: sub(t.im, s.im) };
    out[k] = dot2(ck, p.re, sk, p.im);
    out[n - k] = cross2(sk, p.re, ck, p.im);
    out[m - k] = dot2(ck2, p2.re, sk2, p2.im);
    out[m + k] = cross2(sk2, p2.re, ck2, p2.im);
}

/// Transpose of [`post_pair`]: `(A, B)` from the four coefficients of pair `k`.
#[inline(always)]
fn post_pair_transposed(n: usize, k: usize, c: [V; 6], src: &impl Fn(usize) -> V) -> (Cv, Cv) {
    let m = n / 2;
    let [ck, sk, ck2, sk2, wr, wi] = c;
    let (xk, xnk, xk2, xnk2) = (src(k), src(n - k), src(m - k), src(m + k));
    let p = Cv { re: dot2(ck, xk, sk, xnk), im: cross2(sk, xk, ck, xnk) };
    let p2 = Cv { re: dot2(ck2, xk2, sk2, xnk2), im: cross2(sk2, xk2, ck2, xnk2) };
    let s = Cv { re: add(p.re, p2.re), im: sub(p.im, p2.im) };
    let t = Cv { re: sub(p.re, p2.re), im: add(p.im, p2.im) };
    let d = Cv { re: cross2(wi, t.re, wr, t.im), im: dot2(wr, t.re, wi, t.im) };
    let a = Cv { re: add(s.re, d.re), im: add(s.im, d.im) };
    let b = Cv { re: sub(s.re, d.re), im: sub(d.im, s.im) };
    (a, b)
}
