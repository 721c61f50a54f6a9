//! DeMo's compress + aggregate work per outer step for a 10.5M-parameter model, kernels
//! path against the tch-op reference (`meridian_optimizer::reference`), same inputs, same
//! run.
//!
//! Per step and tensor, one worker of four:
//! - kernels: `Compressor` (64×64 DCT, top-32 per tile, f32 values) compresses its δ,
//!   decodes the four members' payload bytes, `scatter_mean` over contributors, and one
//!   inverse DCT;
//! - reference: DCT by matrix products with the DCT-II basis, `abs().topk(32)` per tile,
//!   `gather`; then the four members' selections `scatter_add`ed into dense coefficients,
//!   divided by the counts, and the inverse DCT by matrix products.
//!
//! The `+feedback` variants add DeMo's error feedback (δ − IDCT(sent)) to both.
//!
//! Before the criterion runs, each path's phases are timed on their own (median of three)
//! and printed, so the report can say which phase dominates.
//!
//! LibTorch runs on one thread (the kernels are single-threaded) unless
//! `MERIDIAN_BENCH_TORCH_THREADS` says otherwise. The ratio of the median step times is
//! printed at the end.
// criterion_group! generates an undocumented `benches` function.
#![allow(missing_docs)]

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use meridian_benches::{criterion_config, gaussian};
use meridian_kernels::aggregate::{scatter_mean_with, Contribution, MeanOver, ScatterScratch};
use meridian_kernels::pipeline::{Compressed, Compressor, CompressorConfig};
use meridian_kernels::Sparse;
use meridian_optimizer::reference::{demo_aggregate_reference, demo_encode_reference, Tiling};
use tch::{Device, Kind, Tensor};

type BenchResult<T> = Result<T, Box<dyn std::error::Error>>;

const WORKERS: u64 = 4;
const CHUNK: i64 = 64;
const TOPK: i64 = 32;

/// A transformer-block-like model of 10,493,952 parameters, every dimension a multiple of
/// 64: attention projections, the MLP pair, norm gains and biases.
const SHAPES: &[&[usize]] = &[
    &[1024, 1024],
    &[1024, 1024],
    &[4096, 1024],
    &[1024, 4096],
    &[1024],
    &[1024],
    &[1024],
    &[1024],
    &[4096],
];

/// One tensor's inputs and both paths' state.
struct TensorCase {
    shape: Vec<usize>,
    /// Worker 0's momentum, the one compressed every step.
    own: Vec<f32>,
    own_tensor: Tensor,
    /// The other workers' payload bytes (kernels) and selections (reference).
    other_bytes: Vec<Vec<u8>>,
    other_ref: Vec<(Tensor, Tensor)>,
    comp: Compressor,
    tiling: Tiling,
}

fn cases() -> BenchResult<Vec<TensorCase>> {
    let mut cases = Vec::with_capacity(SHAPES.len());
    for (t, shape) in SHAPES.iter().enumerate() {
        let n: usize = shape.iter().product();
        let dims: Vec<i64> = shape.iter().map(|&d| d as i64).collect();
        let mut comp = Compressor::new(CompressorConfig::demo(), shape)?;
        let tiling = Tiling::new(&dims, CHUNK)?;
        let mut other_bytes = Vec::new();
        let mut other_ref = Vec::new();
        for w in 1..WORKERS {
            let x = gaussian(n, 1000 * t as u64 + w);
            other_bytes.push(comp.compress(&x)?.bytes);
            let xt = Tensor::from_slice(&x).reshape(dims.as_slice());
            other_ref.push(demo_encode_reference(&tiling, &xt, TOPK)?);
        }
        let own = gaussian(n, 1000 * t as u64);
        let own_tensor = Tensor::from_slice(&own).reshape(dims.as_slice());
        cases.push(TensorCase {
            shape: shape.to_vec(),
            own,
            own_tensor,
            other_bytes,
            other_ref,
            comp,
            tiling,
        });
    }
    Ok(cases)
}

/// The kernels path for one tensor; returns the aggregated update in `update`.
fn kernels_step(
    case: &mut TensorCase,
    feedback: bool,
    out: &mut Compressed,
    scratch: &mut ScatterScratch,
    update: &mut Vec<f32>,
    residual: &mut Vec<f32>,
) -> BenchResult<()> {
    case.comp.compress_into(&case.own, out)?;
    if feedback {
        residual.clear();
        residual.extend_from_slice(&case.own);
        case.comp.subtract_sent(residual, &out.sent)?;
    }
    let mut decoded: Vec<Sparse> = Vec::with_capacity(WORKERS as usize);
    decoded.push(case.comp.decode_sparse(&out.bytes)?);
    for b in &case.other_bytes {
        decoded.push(case.comp.decode_sparse(b)?);
    }
    let contribs: Vec<Contribution<'_>> =
        decoded.iter().zip(0..).map(|(s, w)| Contribution { worker: w, sparse: s }).collect();
    update.clear();
    update.resize(case.comp.len(), 0.0);
    case.comp.aggregate(scratch, &contribs, MeanOver::Contributors, update)?;
    Ok(())
}

/// The reference path for one tensor; returns the aggregated update.
fn reference_step(case: &TensorCase, feedback: bool) -> BenchResult<Tensor> {
    let (idx, val) = demo_encode_reference(&case.tiling, &case.own_tensor, TOPK)?;
    if feedback {
        let dense = [case.tiling.tiles(), case.tiling.tile_len()];
        let sent = Tensor::f_zeros(dense, (Kind::Float, Device::Cpu))?.f_scatter(-1, &idx, &val)?;
        let _ = black_box(case.own_tensor.f_sub(&case.tiling.inverse(&sent)?)?);
    }
    let mut members = Vec::with_capacity(WORKERS as usize);
    members.push((idx, val));
    members.extend(case.other_ref.iter().map(|(i, v)| (i.shallow_clone(), v.shallow_clone())));
    Ok(demo_aggregate_reference(&case.tiling, &members)?)
}

/// Median over `REPEATS` runs of `f`, which does one phase for every tensor.
fn time_phase(mut f: impl FnMut() -> BenchResult<()>) -> BenchResult<Duration> {
    const REPEATS: usize = 3;
    let mut v = Vec::with_capacity(REPEATS);
    for _ in 0..REPEATS {
        let start = Instant::now();
        f()?;
        v.push(start.elapsed());
    }
    Ok(median(v))
}

/// Where each path spends its step, phase by phase, summed over the tensors: printed so
/// that the table in BENCHMARKS.md can say what dominates.
fn breakdown(cases: &mut [TensorCase]) -> BenchResult<()> {
    let mut outs: Vec<Compressed> = cases.iter().map(|_| Compressed::default()).collect();
    let mut decoded: Vec<Vec<Sparse>> = cases.iter().map(|_| Vec::new()).collect();
    let mut coeffs: Vec<Vec<f32>> =
        cases.iter().map(|c| vec![0.0; c.comp.transform_len()]).collect();
    let mut scratch = ScatterScratch::new();
    let mut phases: Vec<(&str, Duration)> = Vec::new();
    phases.push((
        "kernels  compress (DCT, top-k, pack)",
        time_phase(|| {
            for (case, out) in cases.iter_mut().zip(&mut outs) {
                case.comp.compress_into(&case.own, out)?;
            }
            Ok(())
        })?,
    ));
    phases.push((
        "kernels  decode 4 payloads",
        time_phase(|| {
            for ((case, out), d) in cases.iter().zip(&outs).zip(&mut decoded) {
                d.clear();
                d.push(case.comp.decode_sparse(&out.bytes)?);
                for b in &case.other_bytes {
                    d.push(case.comp.decode_sparse(b)?);
                }
            }
            Ok(())
        })?,
    ));
    phases.push((
        "kernels  scatter_mean",
        time_phase(|| {
            for (d, co) in decoded.iter().zip(&mut coeffs) {
                let contribs: Vec<Contribution<'_>> =
                    d.iter().zip(0..).map(|(s, w)| Contribution { worker: w, sparse: s }).collect();
                scatter_mean_with(&mut scratch, &contribs, MeanOver::Contributors, co)?;
            }
            Ok(())
        })?,
    ));
    phases.push((
        "kernels  inverse DCT",
        time_phase(|| {
            for (case, co) in cases.iter().zip(&coeffs) {
                let mut dense = vec![0.0; case.comp.len()];
                case.comp.inverse_transform(co, &mut dense)?;
                black_box(&dense);
            }
            Ok(())
        })?,
    ));
    phases.push((
        "kernels  aggregate (scatter_mean + inverse DCT, fused per tile)",
        time_phase(|| {
            for (case, d) in cases.iter().zip(&decoded) {
                let contribs: Vec<Contribution<'_>> =
                    d.iter().zip(0..).map(|(s, w)| Contribution { worker: w, sparse: s }).collect();
                let mut dense = vec![0.0; case.comp.len()];
                case.comp.aggregate(&mut scratch, &contribs, MeanOver::Contributors, &mut dense)?;
                black_box(&dense);
            }
            Ok(())
        })?,
    ));
    phases.push((
        "kernels  error feedback (subtract_sent)",
        time_phase(|| {
            for (case, out) in cases.iter().zip(&outs) {
                let mut residual = case.own.clone();
                case.comp.subtract_sent(&mut residual, &out.sent)?;
                black_box(&residual);
            }
            Ok(())
        })?,
    ));
    let mut ys: Vec<Tensor> = Vec::new();
    phases.push((
        "reference DCT (matmul)",
        time_phase(|| {
            ys.clear();
            for case in cases.iter() {
                ys.push(case.tiling.forward(&case.own_tensor)?);
            }
            Ok(())
        })?,
    ));
    let mut sel: Vec<(Tensor, Tensor)> = Vec::new();
    phases.push((
        "reference abs + topk + gather",
        time_phase(|| {
            sel.clear();
            for y in &ys {
                let (_, idx) = y.f_abs()?.f_topk(TOPK.min(y.size()[1]), -1, true, false)?;
                let val = y.f_gather(-1, &idx, false)?;
                sel.push((idx, val));
            }
            Ok(())
        })?,
    ));
    phases.push((
        "reference aggregate + inverse DCT",
        time_phase(|| {
            for (case, own) in cases.iter().zip(&sel) {
                let mut members = vec![(own.0.shallow_clone(), own.1.shallow_clone())];
                members.extend(
                    case.other_ref.iter().map(|(i, v)| (i.shallow_clone(), v.shallow_clone())),
                );
                let _ = black_box(demo_aggregate_reference(&case.tiling, &members)?);
            }
            Ok(())
        })?,
    ));
    for (name, t) in phases {
        eprintln!("outer_step: phase {name:<40} {:>8.1} ms", t.as_secs_f64() * 1e3);
    }
    Ok(())
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v.get(v.len() / 2).copied().unwrap_or_default()
}

fn outer_step(c: &mut Criterion) {
    if let Err(e) = run(c) {
        eprintln!("outer_step: {e}");
    }
}

fn run(c: &mut Criterion) -> BenchResult<()> {
    let threads = std::env::var("MERIDIAN_BENCH_TORCH_THREADS")
        .ok()
        .and_then(|s| s.parse::<i32>().ok())
        .unwrap_or(1);
    tch::set_num_threads(threads);
    let mut cases = cases()?;
    let params: usize = cases.iter().map(|c| c.shape.iter().product::<usize>()).sum();
    eprintln!(
        "outer_step: {params} parameters in {} tensors, {WORKERS} workers, LibTorch threads {threads}",
        cases.len()
    );

    let mut out = Compressed::default();
    let mut scratch = ScatterScratch::new();
    let (mut update, mut residual) = (Vec::new(), Vec::new());

    // Both paths must do the same job: compare their aggregated updates once. This also
    // runs every fallible step on these inputs, so the timed loops below cannot fail.
    let mut worst = 0.0f64;
    for case in &mut cases {
        for feedback in [false, true] {
            kernels_step(case, feedback, &mut out, &mut scratch, &mut update, &mut residual)?;
        }
        let _ = reference_step(case, true)?;
        let want = Vec::<f32>::try_from(reference_step(case, false)?.f_flatten(0, -1)?)?;
        let diff: f64 =
            update.iter().zip(&want).map(|(a, b)| f64::from(a - b).powi(2)).sum::<f64>().sqrt();
        let norm: f64 = want.iter().map(|b| f64::from(*b).powi(2)).sum::<f64>().sqrt();
        worst = worst.max(diff / norm);
    }
    eprintln!("outer_step: kernels vs reference update, worst relative error {worst:.2e}");

    breakdown(&mut cases)?;

    let mut group = c.benchmark_group("outer_step");
    group.throughput(Throughput::Elements(params as u64));
    let mut times: Vec<(String, Vec<Duration>)> = Vec::new();
    for feedback in [false, true] {
        let suffix = if feedback { "+feedback" } else { "" };
        for kernels in [true, false] {
            let name = format!("{}{suffix}", if kernels { "kernels" } else { "reference" });
            let mut samples = Vec::new();
            group.bench_function(name.as_str(), |b| {
                b.iter_custom(|iters| {
                    let start = Instant::now();
                    for _ in 0..iters {
                        for case in cases.iter_mut() {
                            if kernels {
                                let r = kernels_step(
                                    case,
                                    feedback,
                                    &mut out,
                                    &mut scratch,
                                    &mut update,
                                    &mut residual,
                                );
                                black_box((r.is_ok(), &update));
                            } else {
                                black_box(reference_step(case, feedback).is_ok());
                            }
                        }
                    }
                    let elapsed = start.elapsed();
                    samples.push(elapsed / iters.max(1) as u32);
                    elapsed
                })
            });
            times.push((name, samples));
        }
    }
    group.finish();

    let medians: Vec<(String, Duration)> =
        times.into_iter().map(|(name, s)| (name, median(s))).collect();
    for (name, t) in &medians {
        eprintln!("outer_step: {name:<20} median {:>9.1} ms per step", t.as_secs_f64() * 1e3);
    }
    for pair in medians.chunks(2) {
        if let [(kn, kt), (rn, rt)] = pair {
            eprintln!(
                "outer_step: {rn} / {kn} = {:.2}× (above 1: the kernels path is faster)",
                rt.as_secs_f64() / kt.as_secs_f64()
            );
        }
    }
    Ok(())
}

criterion_group! { name = benches; config = criterion_config(); targets = outer_step }
criterion_main!(benches);
