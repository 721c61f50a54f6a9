//! The chunked DCT's two paths side by side: for each shape, forward and inverse in
//! nanoseconds per element on the matrix path (dense products with the cached basis) and
//! on the fast path (the O(n log n) factorization the plan picks for power-of-two chunks),
//! plus the throughput of the finiteness check that both run first. Best of a few
//! repetitions after one warm-up; read the ratios, the absolute times move with the machine.
//!
//! `cargo run --release -p meridian-benches --bin dct_paths`. `DCT_BENCH_CHUNK` requests
//! another chunk than the default 64 (the chunk rule may then pick a divisor of it).

use std::error::Error;
use std::time::Instant;

use meridian_kernels::dct::{check_all_finite, DctPlan, DEFAULT_CHUNK};

/// Best nanoseconds per element of `reps` runs of `f` over `elems` elements, after one
/// warm-up run.
fn best_ns_per_elem(
    reps: usize,
    elems: usize,
    mut f: impl FnMut() -> Result<(), Box<dyn Error>>,
) -> Result<f64, Box<dyn Error>> {
    f()?;
    let mut best = f64::MAX;
    for _ in 0..reps {
        let t = Instant::now();
        f()?;
        best = best.min(t.elapsed().as_secs_f64());
    }
    Ok(best * 1e9 / elems as f64)
}

fn main() -> Result<(), Box<dyn Error>> {
    let chunk = match std::env::var("DCT_BENCH_CHUNK") {
        Ok(c) => c.parse().map_err(|e| format!("DCT_BENCH_CHUNK={c:?}: {e}"))?,
        Err(_) => DEFAULT_CHUNK,
    };
    let x: Vec<f32> = (0..1 << 18).map(|i| i as f32).collect();
    let t = best_ns_per_elem(20, x.len(), || Ok(check_all_finite("x", &x)?))?;
    println!("finiteness check, 1 MiB: {t:.3} ns/elem");
    let shapes: &[(&str, usize, usize)] = &[
        ("2-D 256x256 (in L2)", 256, 256),
        ("2-D 512x512 (in cache)", 512, 512),
        ("1-D 256K (in cache)", 1, 1 << 18),
        ("2-D 4096x4096", 4096, 4096),
        ("1-D 16M", 1, 1 << 24),
        ("2-D 4099x1000 (edge tiles)", 4099, 1000),
    ];
    for &(name, r, c) in shapes {
        let fast = DctPlan::new_2d(r, c, chunk)?;
        let matrix = fast.matrix_path_twin();
        let x: Vec<f32> = (0..fast.input_len())
            .map(|i| ((i * 2_654_435_761) % 1000) as f32 / 500.0 - 1.0)
            .collect();
        let mut y = vec![0.0f32; fast.coeff_len()];
        let mut z = vec![0.0f32; fast.input_len()];
        for (label, plan) in [("matrix", &matrix), ("fast", &fast)] {
            let n = plan.input_len();
            let fwd = best_ns_per_elem(5, n, || Ok(plan.forward(&x, &mut y)?))?;
            let inv = best_ns_per_elem(5, n, || Ok(plan.inverse(&y, &mut z)?))?;
            println!("{name:28} {label:6}: forward {fwd:6.3} ns/elem, inverse {inv:6.3} ns/elem");
        }
    }
    Ok(())
}
