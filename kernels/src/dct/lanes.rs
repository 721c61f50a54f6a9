//! Four-line vector arithmetic for the fast path: `V` holds one value of four lines (one
//! per lane of a baseline SSE register) and `Cv` one complex value of four lines, with the
//! elementwise operations on them, the radix-4 butterfly, and the moves of lines and columns
//! into and out of vectors (with the 4 × 4 transpose). Kept in one file so that the
//! reproducibility rule of the module doc can be checked in one place: every operation is
//! elementwise across lanes, so a line's arithmetic never depends on which lines share its
//! vector, and the only intrinsics are shuffles that move data.

/// Lines the fast path transforms together, one per lane of a `[f32; LANES]` vector, which
/// LLVM maps onto one SSE register (the x86-64 baseline).
pub(super) const LANES: usize = 4;

// The 4 × 4 transposes between lines and vectors rely on it.
const _: () = assert!(LANES == 4);

/// One value of `LANES` lines.
pub(super) type V = [f32; LANES];

/// `LANES` lines of one complex value.
#[derive(Clone, Copy)]
pub(super) struct Cv {
    pub(super) re: V,
    pub(super) im: V,
}

/// `c` in every lane: tables hold their constants this way so that products read them as
/// vectors.
pub(super) fn splat(c: f64) -> V {
    [c as f32; LANES]
}

#[inline(always)]
pub(super) fn vload(s: &[f32], at: usize) -> V {
    let mut v = [0.0; LANES];
    v.copy_from_slice(&s[at..at + LANES]);
    v
}

#[inline(always)]
pub(super) fn vstore(s: &mut [f32], at: usize, v: V) {
    s[at..at + LANES].copy_from_slice(&v);
}

#[inline(always)]
pub(super) fn add(a: V, b: V) -> V {
    std::array::from_fn(|i| a[i] + b[i])
}

#[inline(always)]
pub(super) fn sub(a: V, b: V) -> V {
    std::array::from_fn(|i| a[i] - b[i])
}

#[inline(always)]
pub(super) fn mul(a: V, b: V) -> V {
    std::array::from_fn(|i| a[i] * b[i])
}

#[inline(always)]
pub(super) fn neg(a: V) -> V {
    std::array::from_fn(|i| -a[i])
}

/// `c0·a + c1·b`, in that order.
#[inline(always)]
pub(super) fn dot2(c0: V, a: V, c1: V, b: V) -> V {
    std::array::from_fn(|i| c0[i] * a[i] + c1[i] * b[i])
}

/// `c0·a − c1·b`, in that order.
#[inline(always)]
pub(super) fn cross2(c0: V, a: V, c1: V, b: V) -> V {
    std::array::from_fn(|i| c0[i] * a[i] - c1[i] * b[i])
}

#[inline(always)]
pub(super) fn cadd(a: Cv, b: Cv) -> Cv {
    Cv { re: add(a.re, b.re), im: add(a.im, b.im) }
}

#[inline(always)]
pub(super) fn csub(a: Cv, b: Cv) -> Cv {
    Cv { re: sub(a.re, b.re), im: sub(a.im, b.im) }
}

/// `w·x` for a constant `w = [re, im]`.
#[inline(always)]
pub(super) fn cmul(w: [V; 2], x: Cv) -> Cv {
    Cv { re: cross2(w[0], x.re, w[1], x.im), im: dot2(w[0], x.im, w[1], x.re) }
}

/// `conj(w)·x`, the transpose of [`cmul`].
#[inline(always)]
pub(super) fn cmul_conj(w: [V; 2], x: Cv) -> Cv {
    Cv { re: dot2(w[0], x.re, w[1], x.im), im: cross2(w[0], x.im, w[1], x.re) }
}

/// Complex value `p` of a work buffer: `work[2p]` real, `work[2p + 1]` imaginary part.
#[inline(always)]
pub(super) fn get(work: &[V], p: usize) -> Cv {
    Cv { re: work[2 * p], im: work[2 * p + 1] }
}

#[inline(always)]
pub(super) fn set(work: &mut [V], p: usize, z: Cv) {
    work[2 * p] = z.re;
    work[2 * p + 1] = z.im;
}

/// The two radix-2 stages of a radix-4 group after its twiddles: with `y = [x0, w²x1, w·x2,
/// w³x3]`, `a0 = y0 + y1`, `a1 = y0 − y1`, `p = y2 + y3`, `q = y2 − y3`, it returns
/// `[a0 + p, a1 − i·q, a0 − p, a1 + i·q]`.
#[inline(always)]
pub(super) fn radix4(y: [Cv; 4]) -> [Cv; 4] {
    let (a0, a1) = (cadd(y[0], y[1]), csub(y[0], y[1]));
    let (p, q) = (cadd(y[2], y[3]), csub(y[2], y[3]));
    [
        cadd(a0, p),
        Cv { re: add(a1.re, q.im), im: sub(a1.im, q.re) },
        csub(a0, p),
        Cv { re: sub(a1.re, q.im), im: add(a1.im, q.re) },
    ]
}

/// Transpose of [`radix4`].
#[inline(always)]
pub(super) fn radix4_transposed(z: [Cv; 4]) -> [Cv; 4] {
    let (a0, p) = (cadd(z[0], z[2]), csub(z[0], z[2]));
    let a1 = cadd(z[1], z[3]);
    // q = i·(z1 − z3)
    let d = csub(z[1], z[3]);
    let q = Cv { re: neg(d.im), im: d.re };
    [cadd(a0, a1), csub(a0, a1), cadd(p, q), csub(p, q)]
}

/// The `s.len() ≤ LANES` lanes from `s`, the rest zero.
#[inline(always)]
fn partial_load(s: &[f32]) -> V {
    let mut v = [0.0; LANES];
    v[..s.len()].copy_from_slice(s);
    v
}

/// `vals[p]` = lanes `0 .. count` (`count ≤ LANES`) of row `p` of `src` (row stride `lds`), the
/// other lanes zero.
pub(super) fn columns_to_vectors(src: &[f32], lds: usize, count: usize, vals: &mut [V]) {
    if count == LANES {
        for (p, v) in vals.iter_mut().enumerate() {
            *v = vload(src, p * lds);
        }
    } else {
        for (p, v) in vals.iter_mut().enumerate() {
            *v = partial_load(&src[p * lds..][..count]);
        }
    }
}

/// Inverse of [`columns_to_vectors`]: writes lanes `0 .. count` of every row of `dst`.
pub(super) fn vectors_to_columns(vals: &[V], dst: &mut [f32], ldd: usize, count: usize) {
    if count == LANES {
        for (k, &v) in vals.iter().enumerate() {
            vstore(dst, k * ldd, v);
        }
    } else {
        for (k, v) in vals.iter().enumerate() {
            dst[k * ldd..][..count].copy_from_slice(&v[..count]);
        }
    }
}

/// `vals[c]` = point `c` of lines `0 .. count` (`count ≤ LANES`) of `src` (line stride `lds`),
/// lanes of missing lines zero.
pub(super) fn lines_to_vectors(src: &[f32], lds: usize, count: usize, vals: &mut [V]) {
    let n = vals.len();
    if count == LANES {
        let rows: [&[f32]; LANES] = std::array::from_fn(|i| &src[i * lds..][..n]);
        for (c, out) in (0..n).step_by(LANES).zip(vals.chunks_exact_mut(LANES)) {
            let t = transpose4([
                vload(rows[0], c),
                vload(rows[1], c),
                vload(rows[2], c),
                vload(rows[3], c),
            ]);
            out.copy_from_slice(&t);
        }
    } else {
        for (c, v) in vals.iter_mut().enumerate() {
            *v = std::array::from_fn(|i| if i < count { src[i * lds + c] } else { 0.0 });
        }
    }
}

/// Inverse of [`lines_to_vectors`]: writes lines `0 .. count` of `dst` from `vals`.
pub(super) fn vectors_to_lines(vals: &[V], dst: &mut [f32], ldd: usize, count: usize) {
    let n = vals.len();
    if count == LANES {
        for (c, block) in (0..n).step_by(LANES).zip(vals.chunks_exact(LANES)) {
            let t = transpose4([block[0], block[1], block[2], block[3]]);
            for (i, t) in t.iter().enumerate() {
                vstore(dst, i * ldd + c, *t);
            }
        }
    } else {
        for (c, v) in vals.iter().enumerate() {
            for (i, &x) in v.iter().enumerate().take(count) {
                dst[i * ldd + c] = x;
            }
        }
    }
}

/// The transpose of a 4 × 4 block held as four rows, in SSE shuffles. LLVM does not find
/// them on its own and moves single floats instead; with the shuffles the 2-D transform
/// measured about 11 % faster and the 1-D one 17 to 45 %. Data movement only, so the
/// results are the same bits as with the portable version below.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
pub(super) fn transpose4(a: [V; 4]) -> [V; 4] {
    use std::arch::x86_64::{
        _mm_loadu_ps, _mm_movehl_ps, _mm_movelh_ps, _mm_storeu_ps, _mm_unpackhi_ps, _mm_unpacklo_ps,
    };
    let mut t = [[0.0f32; 4]; 4];
    // SAFETY: SSE is part of the x86-64 baseline, and every load and store touches exactly
    // the four floats of one `[f32; 4]` that it is given a pointer to.
    unsafe {
        let (r0, r1) = (_mm_loadu_ps(a[0].as_ptr()), _mm_loadu_ps(a[1].as_ptr()));
        let (r2, r3) = (_mm_loadu_ps(a[2].as_ptr()), _mm_loadu_ps(a[3].as_ptr()));
        let lo01 = _mm_unpacklo_ps(r0, r1); // a00 a10 a01 a11
        let lo23 = _mm_unpacklo_ps(r2, r3); // a20 a30 a21 a31
        let hi01 = _mm_unpackhi_ps(r0, r1); // a02 a12 a03 a13
        let hi23 = _mm_unpackhi_ps(r2, r3); // a22 a32 a23 a33
        _mm_storeu_ps(t[0].as_mut_ptr(), _mm_movelh_ps(lo01, lo23));
        _mm_storeu_ps(t[1].as_mut_ptr(), _mm_movehl_ps(lo23, lo01));
        _mm_storeu_ps(t[2].as_mut_ptr(), _mm_movelh_ps(hi01, hi23));
        _mm_storeu_ps(t[3].as_mut_ptr(), _mm_movehl_ps(hi23, hi01));
    }
    t
}

/// The transpose of a 4 × 4 block held as four rows.
#[cfg(not(target_arch = "x86_64"))]
#[inline(always)]
pub(super) fn transpose4(a: [V; 4]) -> [V; 4] {
    std::array::from_fn(|j| std::array::from_fn(|i| a[i][j]))
}
