//! Shared inputs and references for Meridian's criterion benchmarks (`benches/benches/`).
//!
//! Every benchmark measures a reference in the same run (a plain memcpy of the same bytes)
//! so that results read as ratios, which survive a noisy machine better than raw times.
//! `scripts/bench-table.py` turns criterion's output into the tables in `BENCHMARKS.md`.

use meridian_kernels::rng::SplitMix64;

/// Element counts benchmarked by default: 1M, 16M and 64M f32.
pub const DEFAULT_SIZES: [usize; 3] = [1 << 20, 1 << 24, 1 << 26];

/// The sizes to benchmark: `MERIDIAN_BENCH_SIZES` (comma-separated element counts, `k`/`M`
/// suffixes allowed) or [`DEFAULT_SIZES`].
pub fn sizes() -> Vec<usize> {
    let Ok(spec) = std::env::var("MERIDIAN_BENCH_SIZES") else {
        return DEFAULT_SIZES.to_vec();
    };
    let parsed: Option<Vec<usize>> = spec
        .split(',')
        .map(|s| {
            let s = s.trim();
            let (digits, mult) = match s.chars().last() {
                Some('k' | 'K') => (&s[..s.len() - 1], 1 << 10),
                Some('M' | 'm') => (&s[..s.len() - 1], 1 << 20),
                _ => (s, 1),
            };
            digits.parse::<usize>().ok().map(|n| n * mult)
        })
        .collect();
    match parsed {
        Some(v) if !v.is_empty() && v.iter().all(|&n| n > 0) => v,
        _ => {
            eprintln!(
                "MERIDIAN_BENCH_SIZES={spec:?} is not a list of element counts; using the defaults"
            );
            DEFAULT_SIZES.to_vec()
        }
    }
}

/// `n` standard-normal f32 values, fixed by `seed` (Box–Muller on SplitMix64): the shape of
/// a pseudo-gradient, cheap to generate for 64M elements.
pub fn gaussian(n: usize, seed: u64) -> Vec<f32> {
    let mut rng = SplitMix64::new(seed);
    let mut out = Vec::with_capacity(n + 1);
    while out.len() < n {
        let u1 = (rng.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64);
        let u2 = (rng.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64);
        let r = (-2.0 * (u1.max(f64::MIN_POSITIVE)).ln()).sqrt();
        let theta = std::f64::consts::TAU * u2;
        out.push((r * theta.cos()) as f32);
        out.push((r * theta.sin()) as f32);
    }
    out.truncate(n);
    out
}

/// The reference every figure is compared against: copy `src` into `dst`.
pub fn memcpy_reference(src: &[f32], dst: &mut [f32]) {
    dst.copy_from_slice(src);
}

/// Criterion settings sized for 64M-element inputs on a 2-core machine: few samples, short
/// warm-up. Relative comparisons within a group are what the tables report.
pub fn criterion_config() -> criterion::Criterion {
    criterion::Criterion::default()
        .sample_size(10)
        .warm_up_time(std::time::Duration::from_millis(500))
        .measurement_time(std::time::Duration::from_secs(3))
        .without_plots()
}

/// Adds the memcpy reference for `x` to `group`, under the id `memcpy/<size>`.
pub fn bench_memcpy(
    group: &mut criterion::BenchmarkGroup<'_, criterion::measurement::WallTime>,
    x: &[f32],
) {
    let mut dst = vec![0.0f32; x.len()];
    group.bench_with_input(
        criterion::BenchmarkId::new("memcpy", size_label(x.len())),
        x,
        |b, x| b.iter(|| memcpy_reference(std::hint::black_box(x), &mut dst)),
    );
}

/// A label such as `16M` for an element count.
pub fn size_label(n: usize) -> String {
    if n >= 1 << 20 && n % (1 << 20) == 0 {
        format!("{}M", n >> 20)
    } else if n >= 1 << 10 && n % (1 << 10) == 0 {
        format!("{}k", n >> 10)
    } else {
        n.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gaussian_is_seeded_and_standard() {
        let a = gaussian(100_001, 3);
        assert_eq!(a.len(), 100_001);
        assert_eq!(a, gaussian(100_001, 3));
        assert_ne!(a, gaussian(100_001, 4));
        let mean = a.iter().map(|&x| f64::from(x)).sum::<f64>() / a.len() as f64;
        let var = a.iter().map(|&x| (f64::from(x) - mean).powi(2)).sum::<f64>() / a.len() as f64;
        assert!(mean.abs() < 0.02 && (var - 1.0).abs() < 0.02, "mean {mean} var {var}");
    }

    #[test]
    fn labels() {
        assert_eq!(size_label(1 << 26), "64M");
        assert_eq!(size_label(4096), "4k");
        assert_eq!(size_label(1000), "1000");
    }
}
