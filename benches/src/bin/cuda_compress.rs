//! The CUDA fused compress against (a) a tch-op reference doing the same job on the same GPU
//! (DCT by matrix products, `topk`, `gather`, as DeMo and Psyche compress) and (b) the
//! memory-bandwidth floor (reading the input once at the bandwidth a device-to-device copy
//! reaches), printing times and ratios. Needs a CUDA device; prints "skipped: no CUDA
//! device" and exits otherwise.
//!
//! `make bench-cuda`, or `cargo run --release -p meridian-benches --bin cuda_compress`.
//! `MERIDIAN_CUDA_BENCH_SIZES` (comma-separated element counts, default
//! `100000000,1000000000`) and `MERIDIAN_CUDA_BENCH_REPS` (default 10) override the sizes
//! and repetitions. Each time is the median of the repetitions after one warm-up, measured
//! with the device synchronized before and after.

use std::error::Error;
use std::time::Instant;

use meridian_kernels::cuda::{device_count, CudaBackend, CudaCompressor};
use meridian_kernels::pipeline::{CompressorConfig, Transform};
use tch::{Device, Kind, Tensor};

const COLS: usize = 4096;

fn env_list(name: &str, default: &str) -> Vec<usize> {
    std::env::var(name)
        .unwrap_or_else(|_| default.to_string())
        .split(',')
        .filter_map(|s| s.trim().replace('_', "").parse().ok())
        .collect()
}

/// Median seconds of `reps` runs of `f` (after one warm-up), the device synchronized
/// around each.
fn time(
    reps: usize,
    mut f: impl FnMut() -> Result<(), Box<dyn Error>>,
) -> Result<f64, Box<dyn Error>> {
    f()?;
    tch::Cuda::synchronize(0);
    let mut times = Vec::with_capacity(reps);
    for _ in 0..reps {
        tch::Cuda::synchronize(0);
        let t = Instant::now();
        f()?;
        tch::Cuda::synchronize(0);
        times.push(t.elapsed().as_secs_f64());
    }
    times.sort_by(f64::total_cmp);
    Ok(times[times.len() / 2])
}

/// The orthonormal DCT-II matrix of size 64 (reference only; f64 cos is fine here).
fn dct_matrix(device: Device) -> Tensor {
    let n = 64usize;
    let mut c = Vec::with_capacity(n * n);
    for k in 0..n {
        let s = if k == 0 { (1.0 / n as f64).sqrt() } else { (2.0 / n as f64).sqrt() };
        for i in 0..n {
            let a = std::f64::consts::PI * ((2 * i + 1) * k) as f64 / (2 * n) as f64;
            c.push((s * a.cos()) as f32);
        }
    }
    Tensor::from_slice(&c).reshape([64, 64]).to_device(device)
}

/// The tch-op pipeline: tiles → C·X·Cᵀ → |·| → topk per tile → gather (→ sign for the
/// 1-bit reference); without a transform, topk per 4096-chunk and gather.
fn reference(x: &Tensor, rows: i64, c: &Tensor, dct: bool, k: i64) -> Tensor {
    let chunks = if dct {
        let tiles = x.view([rows / 64, 64, COLS as i64 / 64, 64]).permute([0, 2, 1, 3]);
        c.matmul(&tiles).matmul(&c.tr()).reshape([-1, 4096])
    } else {
        x.view([-1, 4096])
    };
    let (_, idx) = chunks.abs().topk(k, -1, true, false);
    chunks.gather(-1, &idx, false).sign()
}

fn main() -> Result<(), Box<dyn Error>> {
    // LibTorch's CUDA library must be loaded before it sees a device (see the function).
    if device_count().is_err() || !meridian_optimizer::device::cuda_is_available() {
        println!("skipped: no CUDA device");
        return Ok(());
    }
    let backend = CudaBackend::get(0)?;
    let device = Device::Cuda(0);
    let reps = env_list("MERIDIAN_CUDA_BENCH_REPS", "10").first().copied().unwrap_or(10).max(1);
    let sizes = env_list("MERIDIAN_CUDA_BENCH_SIZES", "100000000,1000000000");
    println!("device: {} ({}), {reps} repetitions, median", backend.arch(), device_name());
    println!(
        "{:>12} {:<10} {:>10} {:>12} {:>11} {:>10} {:>9} {:>9}",
        "elements",
        "config",
        "fused ms",
        "+bytes ms",
        "tch-op ms",
        "floor ms",
        "tch/fused",
        "fused/floor"
    );
    let c = dct_matrix(device);
    for &n in &sizes {
        // [rows, 4096] with rows a multiple of 64, so the reference can view it as tiles.
        let rows = n.div_ceil(COLS).div_ceil(64) * 64;
        let len = rows * COLS;
        let x = Tensor::randn([rows as i64, COLS as i64], (Kind::Float, device));
        let mut copy = x.empty_like();
        let t_copy = time(reps, || Ok(copy.f_copy_(&x)?))?;
        // A copy reads and writes every byte; compressing must at least read them once.
        let floor = t_copy / 2.0;
        for (name, cfg) in [
            ("demo-2bit", CompressorConfig::demo_2bit()),
            ("sparseloco", CompressorConfig::sparseloco()),
        ] {
            let mut comp = CudaCompressor::new(backend.clone(), cfg, &[rows, COLS])?;
            let ptr = x.data_ptr() as u64;
            let fused = time(reps, || {
                // SAFETY: `x` is a contiguous f32 CUDA tensor of `len` elements, alive for the run.
                unsafe { comp.enqueue(ptr) }?;
                backend.synchronize()?;
                Ok(())
            })?;
            let full = time(reps, || {
                // SAFETY: as above.
                let out = unsafe { comp.compress(ptr) }?;
                std::hint::black_box(out);
                Ok(())
            })?;
            let dct = matches!(cfg.transform, Transform::Dct { .. });
            let k = if dct { 32 } else { 64 };
            let tch_ref = time(reps, || {
                let _ = std::hint::black_box(reference(&x, rows as i64, &c, dct, k));
                Ok(())
            })?;
            println!(
                "{len:>12} {name:<10} {:>10.3} {:>12.3} {:>11.3} {:>10.3} {:>8.1}x {:>8.2}x",
                fused * 1e3,
                full * 1e3,
                tch_ref * 1e3,
                floor * 1e3,
                tch_ref / fused,
                fused / floor
            );
        }
    }
    println!("targets: tch/fused >= 10x, fused/floor <= 3x");
    Ok(())
}

fn device_name() -> String {
    format!("{} CUDA device(s)", tch::Cuda::device_count())
}
