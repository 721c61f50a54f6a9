//! Exact top-k by magnitude, per chunk and over a whole buffer.
//!
//! Selection works on magnitude bits: for a finite `f32`, `x.to_bits() & 0x7fff_ffff` orders
//! exactly like `|x|` when compared as an integer (`-0.0` and `+0.0` both map to 0), and the
//! value is finite iff those bits are below `0x7f80_0000`.
//!
//! Every selection has the same shape: gather, in index order, the positions whose magnitude
//! is at least some floor that admits at least k of them; find the exact k-th largest
//! magnitude `t` among those few; emit every candidate above `t` plus the first few equal to
//! it. Because candidates are in index order, "the first few equal to `t`" is exactly the
//! tie rule (lower index wins), and the output comes out sorted with no final sort.
//!
//! The gathering pass is the only one that reads the whole input, so it is built to run at
//! close to memory speed: a 16-element block is compared against the floor into a bit mask
//! in a few vector instructions, and the (usually zero to two) set bits are appended without
//! data-dependent branches.
//!
//! The floor is where the two entry points differ:
//! - Per chunk, it is carried over from the previous chunk: the magnitude that admitted
//!   about 1.5k there. Neighbouring chunks of one tensor have similar statistics, so one pass
//!   over the chunk usually suffices; a chunk that yields fewer than k candidates (and the
//!   first chunk) takes its floor from a radix histogram of its own, which is always right.
//! - Globally, it is estimated from evenly spaced sample runs, aiming a little above k. If
//!   the estimate admits fewer than k, or far more than expected, or sampling does not apply
//!   (short inputs, large k, heavy ties), an exact radix select runs instead: one histogram
//!   pass per digit of the magnitude, then one pass to emit. Either way the work is O(n).
//!
//! Non-finite values need no pass of their own: their magnitude bits exceed every finite
//! floor, so they always become candidates (or land in the histogram's top buckets).

use std::cell::RefCell;

use crate::chunks::ChunkSpec;
use crate::error::{check_len, invalid, KernelError, Result};
use crate::sparse::Sparse;

const ABS_MASK: u32 = 0x7fff_ffff;
/// Smallest non-finite magnitude (infinity); NaNs lie above it.
const INF_BITS: u32 = 0x7f80_0000;
/// Radix digits of a magnitude, most significant first, as (shift, width). The first covers
/// the exponent plus three mantissa bits, so one bucket spans an eighth of an octave and
/// Gaussian-like data spreads over many buckets.
const DIGITS: [(u32, u32); 3] = [(20, 11), (10, 10), (0, 10)];
const TOP_SHIFT: u32 = DIGITS[0].0;
const TOP_BINS: usize = 1 << DIGITS[0].1;
/// First top-digit bucket that holds only non-finite magnitudes.
const NON_FINITE_BUCKET: usize = (INF_BITS >> TOP_SHIFT) as usize;
/// At or below this many candidates a direct selection beats another histogram pass.
const SMALL_SELECT: usize = 2048;
/// Elements per block of the candidate scan: one bit mask of 16 comparisons.
const SCAN_BLOCK: usize = 16;
/// How far ahead (in elements, here 8 KiB) the candidate scan prefetches: far enough to hide
/// memory latency across the selection work between chunks, near enough to stay in L1.
const PREFETCH_AHEAD: usize = 2048;
/// How many candidates the per-chunk floor aims to admit for a chunk keeping k: half again
/// as many plus a few, so that a neighbouring chunk with somewhat fewer large values (the
/// count fluctuates by about its square root) still yields k without falling back.
fn wanted(k: usize) -> usize {
    k + k / 2 + 8
}

/// Global selection estimates its floor from `SAMPLE_BLOCKS` evenly spaced runs of
/// `SAMPLE_BLOCK_LEN` elements (runs rather than single elements, to read whole cache lines),
/// on inputs of at least `SAMPLED_MIN_LEN`; shorter ones go straight to radix selection.
const SAMPLE_BLOCKS: usize = 64;
const SAMPLE_BLOCK_LEN: usize = 1024;
const SAMPLED_MIN_LEN: usize = 1 << 20;

/// Magnitude bits: ordered like |v| for finite values, and at least `INF_BITS` otherwise.
#[inline(always)]
fn mag(v: f32) -> u32 {
    v.to_bits() & ABS_MASK
}

/// Reusable buffers for the selection kernels, so that repeated calls do not allocate.
///
/// The free functions [`topk_per_chunk`] and [`topk_global`] use one per thread; hold your
/// own and call the `_with` variants to control where the memory lives. The buffers keep
/// their largest size: about one chunk for per-chunk selection, and up to a few times k
/// entries of 8 bytes for global selection.
#[derive(Debug, Clone)]
pub struct TopkScratch {
    hist: Box<[u32; TOP_BINS]>,
    /// Positions (relative to the window) at or above the floor, increasing, with their
    /// values, kept so that emitting never revisits the input.
    cand: Candidates,
    /// Magnitudes being selected among, reordered and narrowed while selecting.
    mags: Vec<u32>,
}

/// Candidate positions and values. The buffers are kept longer than `len` because the scan
/// writes a block's first entries unconditionally (see [`append_mask`]); only the first
/// `len` entries are meaningful.
#[derive(Debug, Clone, Default)]
struct Candidates {
    index: Vec<u32>,
    value: Vec<f32>,
    len: usize,
}

impl Candidates {
    /// Grows the buffers so that one more block fits after `n` entries, unless `n` already
    /// exceeds `limit` (returns false). The buffers never grow past `limit` plus one block,
    /// so a scan that overshoots its cap lands here and stops.
    #[cold]
    fn make_room(&mut self, n: usize, limit: usize) -> bool {
        if n > limit {
            return false;
        }
        let len = (2 * self.index.len()).max(1024).max(n + SCAN_BLOCK).min(limit + SCAN_BLOCK);
        self.index.resize(len, 0);
        self.value.resize(len, 0.0);
        true
    }

    fn index(&self) -> &[u32] {
        &self.index[..self.len]
    }

    fn value(&self) -> &[f32] {
        &self.value[..self.len]
    }
}

impl Default for TopkScratch {
    fn default() -> Self {
        Self::new()
    }
}

impl TopkScratch {
    /// Empty scratch; buffers grow on first use and are kept afterwards.
    pub fn new() -> Self {
        Self { hist: Box::new([0; TOP_BINS]), cand: Candidates::default(), mags: Vec::new() }
    }
}

thread_local! {
    static SCRATCH: RefCell<TopkScratch> = RefCell::new(TopkScratch::new());
}

/// Runs `f` with this thread's scratch, or a fresh one if that is unavailable (thread
/// teardown), so the free functions never panic on account of the cache.
fn with_thread_scratch<R>(mut f: impl FnMut(&mut TopkScratch) -> R) -> R {
    SCRATCH
        .try_with(|cell| cell.try_borrow_mut().ok().map(|mut s| f(&mut s)))
        .ok()
        .flatten()
        .unwrap_or_else(|| f(&mut TopkScratch::new()))
}

/// k largest |x| in each chunk of `spec.chunk_len` (the last chunk keeps `spec.k_for(its len)`).
///
/// Output: `out` is cleared, then holds the selected GLOBAL positions (u32) strictly
/// increasing, and the original signed values. On equal magnitude the lower index wins
/// (`-0.0` and `+0.0` count as equal).
///
/// Errors: `x.len() != spec.len`, empty `x`, `x.len() ≥ 2^32`, a spec that
/// [`ChunkSpec::new`] would reject, or any NaN/infinity in `x` (reported at its first
/// position). On error `out` is left empty.
pub fn topk_per_chunk(x: &[f32], spec: &ChunkSpec, out: &mut Sparse) -> Result<()> {
    with_thread_scratch(|s| topk_per_chunk_with(s, x, spec, out))
}

/// [`topk_per_chunk`] using caller-provided scratch buffers.
pub fn topk_per_chunk_with(
    scratch: &mut TopkScratch,
    x: &[f32],
    spec: &ChunkSpec,
    out: &mut Sparse,
) -> Result<()> {
    out.clear();
    check_len("x", spec.len, x.len())?;
    check_input(x)?;
    // The fields are public, so a spec may not have come through `ChunkSpec::new`.
    ChunkSpec::new(spec.len, spec.chunk_len, spec.k)?;
    out.indices.reserve(spec.total_k());
    out.values.reserve(spec.total_k());
    let mut floor = None;
    for c in 0..spec.num_chunks() {
        let range = spec.chunk_range(c);
        let k = spec.k_for(range.len());
        match select_chunk(
            scratch,
            &x[range.clone()],
            &x[(range.start + PREFETCH_AHEAD).min(x.len())..],
            range.start,
            k,
            floor,
            out,
        ) {
            Ok(next) => floor = Some(next),
            Err(e) => {
                out.clear();
                return Err(e);
            }
        }
    }
    Ok(())
}

/// k largest |x| over the whole buffer; same output convention as [`topk_per_chunk`].
///
/// Errors: empty `x`, `x.len() ≥ 2^32`, `k == 0` or `k > x.len()`, or any NaN/infinity in
/// `x`. On error `out` is left empty.
pub fn topk_global(x: &[f32], k: usize, out: &mut Sparse) -> Result<()> {
    with_thread_scratch(|s| topk_global_with(s, x, k, out))
}

/// [`topk_global`] using caller-provided scratch buffers.
pub fn topk_global_with(
    scratch: &mut TopkScratch,
    x: &[f32],
    k: usize,
    out: &mut Sparse,
) -> Result<()> {
    out.clear();
    check_input(x)?;
    if k == 0 || k > x.len() {
        return Err(invalid("k", format!("{k} is not in 1..={} (the buffer length)", x.len())));
    }
    out.indices.reserve(k);
    out.values.reserve(k);
    let result = select_global(scratch, x, k, out);
    if result.is_err() {
        out.clear();
    }
    result
}

/// ceil(len · fraction), at least 1 (and at most `len`).
///
/// Errors unless `0 < fraction ≤ 1` and finite, or if `len == 0` (no k would be valid).
/// A product within a few ulps of an integer counts as that integer, so that a fraction
/// like 0.07 — stored slightly above 7/100 — gives 7 of 100 rather than 8.
pub fn k_for_fraction(len: usize, fraction: f64) -> Result<usize> {
    if !(fraction.is_finite() && fraction > 0.0 && fraction <= 1.0) {
        return Err(invalid("fraction", format!("{fraction} is not in (0, 1]")));
    }
    if len == 0 {
        return Err(KernelError::Empty { what: "len" });
    }
    let product = len as f64 * fraction;
    let nearest = product.round();
    let k = if (product - nearest).abs() <= product * 4.0 * f64::EPSILON {
        nearest
    } else {
        product.ceil()
    };
    // The float-to-int cast saturates, and the clamp restores 1 ≤ k ≤ len.
    Ok((k as usize).clamp(1, len))
}

fn check_input(x: &[f32]) -> Result<()> {
    if x.is_empty() {
        return Err(KernelError::Empty { what: "x" });
    }
    check_index_range(x.len())
}

/// Positions are reported as `u32`.
fn check_index_range(len: usize) -> Result<()> {
    if u32::try_from(len).is_err() {
        return Err(invalid("x", format!("{len} elements exceed the u32 index range")));
    }
    Ok(())
}

/// The error for the first non-finite element of `window`, which starts at `base` in `x`.
/// Called only once a pass has seen a non-finite magnitude, so the search is off the hot path.
#[cold]
fn non_finite(window: &[f32], base: usize) -> KernelError {
    let index = window.iter().position(|v| !v.is_finite()).unwrap_or(0);
    KernelError::NonFinite { what: "x", index: base + index, value: window[index] }
}

/// Gathers the positions in `window` whose magnitude is at least `floor`, in increasing
/// order, with their values. Gives up (returning false) once more than `cap` are found.
/// Requires `floor ≤ INF_BITS`, so that comparing as `i32` is exact (magnitudes are < 2^31)
/// and every non-finite value is admitted.
///
/// `ahead` is the input from [`PREFETCH_AHEAD`] elements past the start of `window`; block b
/// prefetches its element b · SCAN_BLOCK. Between chunks the selection work leaves the
/// memory system idle and the hardware prefetcher does not look far enough ahead to cover
/// it; requesting the lines early roughly halved the per-chunk time.
fn collect_candidates(
    window: &[f32],
    ahead: &[f32],
    floor: u32,
    cand: &mut Candidates,
    cap: usize,
) -> bool {
    let limit = cap.min(window.len());
    let floor = floor as i32;
    let mut n = 0;
    let blocks = window.chunks_exact(SCAN_BLOCK);
    let tail = blocks.remainder();
    for (b, block) in blocks.enumerate() {
        // Always Ok: `chunks_exact` yields exactly SCAN_BLOCK elements.
        let Ok(block) = <&[f32; SCAN_BLOCK]>::try_from(block) else {
            continue;
        };
        if n + SCAN_BLOCK > cand.index.len() && !cand.make_room(n, limit) {
            cand.len = 0;
            return false;
        }
        if let Some(a) = ahead.get(b * SCAN_BLOCK) {
            prefetch(a);
        }
        // Positions fit in u32: the window is part of an input checked to be that short.
        let start = (b * SCAN_BLOCK) as u32;
        n = append_mask(
            block_mask(block, floor),
            start,
            block,
            &mut cand.index,
            &mut cand.value,
            n,
        );
    }
    if !tail.is_empty() {
        if n + SCAN_BLOCK > cand.index.len() && !cand.make_room(n, limit) {
            cand.len = 0;
            return false;
        }
        let start = (window.len() - tail.len()) as u32;
        // Padding is masked off, so its value does not matter.
        let mut padded = [0.0; SCAN_BLOCK];
        padded[..tail.len()].copy_from_slice(tail);
        let mask = block_mask(&padded, floor) & ((1 << tail.len()) - 1);
        n = append_mask(mask, start, &padded, &mut cand.index, &mut cand.value, n);
    }
    cand.len = n;
    n <= limit
}

/// Asks for the cache line holding `v` (a hint; nothing on other targets).
#[inline(always)]
fn prefetch(v: &f32) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: a prefetch is only a hint; it cannot fault, and `v` is a valid reference anyway.
    unsafe {
        std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(
            (v as *const f32).cast::<i8>(),
        );
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = v;
}

/// Bit j is set iff the magnitude bits of `block[j]` are at least `floor` (as `i32`).
#[inline(always)]
fn block_mask(block: &[f32; SCAN_BLOCK], floor: i32) -> u32 {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::x86_64::{
            __m128i, _mm_and_si128, _mm_cmpgt_epi32, _mm_loadu_si128, _mm_movemask_epi8,
            _mm_packs_epi16, _mm_packs_epi32, _mm_set1_epi32,
        };
        // Compare, narrow the four 32-bit lane masks to bytes, and take their sign bits: the
        // one-instruction mask that scalar code cannot express, and which keeps the scan free
        // of data-dependent branches (mispredicts, not loads, dominated the portable version).
        // SAFETY: SSE2 is part of the x86_64 baseline, and the four unaligned 16-byte loads
        // read exactly the 64 bytes of `block`.
        unsafe {
            let p = block.as_ptr().cast::<__m128i>();
            let abs = _mm_set1_epi32(ABS_MASK as i32);
            // floor ≥ 0, so this cannot wrap.
            let below = _mm_set1_epi32(floor - 1);
            let lanes =
                |i: usize| _mm_cmpgt_epi32(_mm_and_si128(_mm_loadu_si128(p.add(i)), abs), below);
            let low = _mm_packs_epi32(lanes(0), lanes(1));
            let high = _mm_packs_epi32(lanes(2), lanes(3));
            _mm_movemask_epi8(_mm_packs_epi16(low, high)) as u32
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        block_mask_portable(block, floor)
    }
}

/// [`block_mask`] in plain Rust, for other targets (and to check the x86_64 version against).
#[cfg_attr(target_arch = "x86_64", allow(dead_code))]
#[inline(always)]
fn block_mask_portable(block: &[f32; SCAN_BLOCK], floor: i32) -> u32 {
    block.iter().enumerate().fold(0u32, |m, (j, &v)| m | (u32::from(mag(v) as i32 >= floor) << j))
}

/// Writes the entries selected by `mask` (positions `start + j`, values `block[j]`) to
/// `index`/`value` from position `n`, and returns the new count.
///
/// The first two are written unconditionally, advancing `n` only for real ones: with k a few
/// percent of the input most blocks hold zero to two candidates, and a branch on that count
/// would mispredict on nearly every candidate. Hence the buffers' slack beyond the count.
#[inline(always)]
fn append_mask(
    mut mask: u32,
    start: u32,
    block: &[f32; SCAN_BLOCK],
    index: &mut [u32],
    value: &mut [f32],
    mut n: usize,
) -> usize {
    for _ in 0..2 {
        let j = mask.trailing_zeros() as usize & (SCAN_BLOCK - 1);
        if let (Some(i), Some(v)) = (index.get_mut(n), value.get_mut(n)) {
            *i = start + j as u32;
            *v = block[j];
        }
        n += usize::from(mask != 0);
        mask &= mask.wrapping_sub(1);
    }
    while mask != 0 {
        let j = mask.trailing_zeros() as usize & (SCAN_BLOCK - 1);
        if let (Some(i), Some(v)) = (index.get_mut(n), value.get_mut(n)) {
            *i = start + j as u32;
            *v = block[j];
        }
        n += 1;
        mask &= mask - 1;
    }
    n
}

/// Fills `mags` with the candidates' magnitudes, or reports the first non-finite element of
/// `window` (which starts at `base` in `x`) if a candidate is one.
fn gather_mags(window: &[f32], base: usize, cand: &Candidates, mags: &mut Vec<u32>) -> Result<()> {
    mags.clear();
    mags.extend(cand.value().iter().map(|&v| mag(v)));
    if mags.iter().fold(0, |a, &m| a.max(m)) >= INF_BITS {
        return Err(non_finite(window, base));
    }
    Ok(())
}

/// The r-th largest of `mags` (`1 ≤ r ≤ mags.len()`), returned as `(t, eq)` where `eq` is how
/// many entries equal to `t` belong to the top r. Reorders and shrinks `mags`.
fn kth_largest(mags: &mut Vec<u32>, mut r: usize, hist: &mut [u32; TOP_BINS]) -> (u32, usize) {
    // Radix narrowing keeps large inputs O(n); after each digit only the bucket holding the
    // r-th largest remains.
    for &(shift, width) in &DIGITS {
        if mags.len() <= SMALL_SELECT {
            break;
        }
        let bins = 1usize << width;
        let digit = |m: u32| ((m >> shift) as usize) & (bins - 1);
        let h = &mut hist[..bins];
        h.fill(0);
        for &m in mags.iter() {
            h[digit(m)] += 1;
        }
        let (b, above) = find_bucket(h, r);
        r -= above;
        mags.retain(|&m| digit(m) == b);
    }
    let (_, &mut t, _) = mags.select_nth_unstable_by(r - 1, |a, b| b.cmp(a));
    // After the partition everything before position r-1 is ≥ t and everything after is ≤ t.
    let greater = mags[..r - 1].iter().filter(|&&m| m > t).count();
    (t, r - greater)
}

/// Scans `hist` from the top for the bucket holding the r-th largest entry. Returns that
/// bucket and how many entries lie in buckets above it. Requires `1 ≤ r ≤ sum(hist)`.
fn find_bucket(hist: &[u32], r: usize) -> (usize, usize) {
    let mut above = 0usize;
    for (b, &here) in hist.iter().enumerate().rev() {
        let here = here as usize;
        if above + here >= r {
            return (b, above);
        }
        above += here;
    }
    (0, above)
}

/// Counts of the top radix digit of each magnitude in `window`, or the first non-finite
/// value (those fill the top buckets, so the histogram doubles as the finiteness check).
fn top_histogram(window: &[f32], base: usize, hist: &mut [u32; TOP_BINS]) -> Result<()> {
    hist.fill(0);
    for &v in window {
        hist[(mag(v) >> TOP_SHIFT) as usize] += 1;
    }
    if hist[NON_FINITE_BUCKET..].iter().any(|&c| c > 0) {
        return Err(non_finite(window, base));
    }
    Ok(())
}

/// Appends, in index order, every candidate above `t` and the first `eq` equal to it.
#[inline(always)]
fn emit(cand: &Candidates, base: usize, t: u32, mut eq: usize, out: &mut Sparse) {
    // Moved out for the same reason as in `collect_candidates`.
    let mut indices = std::mem::take(&mut out.indices);
    let mut values = std::mem::take(&mut out.values);
    for (&i, &v) in cand.index().iter().zip(cand.value()) {
        let m = mag(v);
        if m > t || (m == t && eq > 0) {
            eq -= usize::from(m == t);
            // base + i < x.len() ≤ u32::MAX, checked on entry.
            indices.push((base + i as usize) as u32);
            values.push(v);
        }
    }
    out.indices = indices;
    out.values = values;
}

/// Appends the top `k` of one chunk (which starts at `base` in `x`) to `out`. `floor` is a
/// guess of a magnitude that admits at least k candidates (none for the first chunk).
/// Returns the guess for the next chunk. `ahead` is as for [`collect_candidates`].
fn select_chunk(
    scratch: &mut TopkScratch,
    window: &[f32],
    ahead: &[f32],
    base: usize,
    k: usize,
    floor: Option<u32>,
    out: &mut Sparse,
) -> Result<u32> {
    let wanted = wanted(k).min(window.len());
    let mut enough = false;
    if let Some(floor) = floor {
        collect_candidates(window, ahead, floor, &mut scratch.cand, usize::MAX);
        enough = scratch.cand.len >= k;
    }
    let mut floor = floor.unwrap_or(0);
    if !enough {
        // No guess yet, or this chunk holds fewer large values than the last: take the floor
        // from its own histogram, at the bucket of the `wanted`-th largest so that the
        // candidates also inform the next guess.
        top_histogram(window, base, &mut scratch.hist)?;
        floor = (find_bucket(&scratch.hist[..], wanted).0 as u32) << TOP_SHIFT;
        collect_candidates(window, ahead, floor, &mut scratch.cand, usize::MAX);
    }
    gather_mags(window, base, &scratch.cand, &mut scratch.mags)?;

    let mags = &mut scratch.mags;
    let found = mags.len();
    let next_floor = if found > 2 * wanted || !enough {
        // Far more than needed, or a floor from the coarse histogram: move it to the
        // `wanted`-th largest. The partition puts the `wanted` largest first, and the top k
        // are among them.
        let (_, &mut w, _) = mags.select_nth_unstable_by(wanted - 1, |a, b| b.cmp(a));
        mags.truncate(wanted);
        w
    } else if found * 4 < wanted * 3 {
        // Close to falling short: admit a little more (one top-digit bucket, about 9% in
        // magnitude) next time.
        floor.saturating_sub(1 << TOP_SHIFT)
    } else {
        // Within the band: keep the floor and skip the extra partition.
        floor
    };
    let (t, eq) = kth_largest(mags, k, &mut scratch.hist);
    emit(&scratch.cand, base, t, eq, out);
    Ok(next_floor)
}

/// Appends the top `k` of `x` to `out`.
fn select_global(scratch: &mut TopkScratch, x: &[f32], k: usize, out: &mut Sparse) -> Result<()> {
    if let Some((floor, cap)) = sampled_floor(scratch, x, k)? {
        if collect_candidates(x, &x[PREFETCH_AHEAD.min(x.len())..], floor, &mut scratch.cand, cap)
            && scratch.cand.len >= k
        {
            gather_mags(x, 0, &scratch.cand, &mut scratch.mags)?;
            let (t, eq) = kth_largest(&mut scratch.mags, k, &mut scratch.hist);
            emit(&scratch.cand, 0, t, eq, out);
            return Ok(());
        }
    }
    let (t, eq) = radix_threshold(x, k, &mut scratch.hist)?;
    emit_scan(x, t, eq, out);
    Ok(())
}

/// A floor for the global candidate scan, estimated from evenly spaced runs of `x` so that
/// one pass over `x` almost always admits at least k, together with the most candidates worth
/// gathering before the exact radix select is the better deal. None where sampling does not
/// pay: short inputs, k a large share of `x`, or heavy ties at the estimate.
fn sampled_floor(scratch: &mut TopkScratch, x: &[f32], k: usize) -> Result<Option<(u32, usize)>> {
    let n = x.len();
    if n < SAMPLED_MIN_LEN {
        return Ok(None);
    }
    let stride = n / SAMPLE_BLOCKS;
    let mags = &mut scratch.mags;
    mags.clear();
    for b in 0..SAMPLE_BLOCKS {
        let start = b * stride;
        mags.extend(x[start..start + SAMPLE_BLOCK_LEN].iter().map(|&v| mag(v)));
    }
    if mags.iter().fold(0, |a, &m| a.max(m)) >= INF_BITS {
        return Err(non_finite(x, 0));
    }
    let scale = n as f64 / mags.len() as f64;
    let expected = k as f64 / scale;
    // Margin of four standard deviations of the sample count, plus 10% for inputs whose
    // statistics vary along the buffer.
    let rank = (expected * 1.1 + 4.0 * expected.sqrt() + 16.0).ceil() as usize;
    if rank > mags.len() / 2 {
        return Ok(None);
    }
    let (_, &mut floor, _) = mags.select_nth_unstable_by(rank - 1, |a, b| b.cmp(a));
    let admitted = mags.iter().filter(|&&m| m >= floor).count();
    if admitted > 4 * rank {
        return Ok(None);
    }
    let cap = (2.0 * admitted as f64 * scale) as usize;
    Ok(Some((floor, cap.max(2 * k))))
}

/// Exact `(t, eq)` for the top k of `x` — the k-th largest magnitude and how many entries
/// equal to it are taken — by radix selection with one pass over `x` per digit and no buffer
/// that grows with `x`. Also the finiteness check for this path.
fn radix_threshold(x: &[f32], k: usize, hist: &mut [u32; TOP_BINS]) -> Result<(u32, usize)> {
    top_histogram(x, 0, hist)?;
    let (b, above) = find_bucket(&hist[..], k);
    let mut r = k - above;
    let mut prefix = (b as u32) << TOP_SHIFT;
    let mut prefix_mask = ABS_MASK & !((1 << TOP_SHIFT) - 1);
    for &(shift, width) in &DIGITS[1..] {
        let bins = 1usize << width;
        let h = &mut hist[..bins];
        h.fill(0);
        for &v in x {
            let m = mag(v);
            if m & prefix_mask == prefix {
                h[((m >> shift) as usize) & (bins - 1)] += 1;
            }
        }
        let (b, above) = find_bucket(h, r);
        r -= above;
        prefix |= (b as u32) << shift;
        prefix_mask |= ((bins - 1) as u32) << shift;
    }
    // Every digit is now fixed: `prefix` is the threshold itself, `r` how many equal to it.
    Ok((prefix, r))
}

/// Appends, in index order, every element of `x` above `t` and the first `eq` equal to it.
fn emit_scan(x: &[f32], t: u32, mut eq: usize, out: &mut Sparse) {
    let at_least = |v: f32| mag(v) as i32 >= t as i32;
    for (b, block) in x.chunks(SCAN_BLOCK).enumerate() {
        if !block.iter().fold(false, |a, &v| a | at_least(v)) {
            continue;
        }
        for (j, &v) in block.iter().enumerate() {
            let m = mag(v);
            if m > t || (m == t && eq > 0) {
                eq -= usize::from(m == t);
                // The position is below x.len() ≤ u32::MAX, checked on entry.
                out.indices.push((b * SCAN_BLOCK + j) as u32);
                out.values.push(v);
            }
        }
    }
}

#[cfg(test)]
mod tests;
