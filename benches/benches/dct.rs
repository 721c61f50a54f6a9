//! Chunked DCT-II forward and inverse (chunk 64), 1-D and 2-D, against memcpy.
//! Also prints the achieved GFLOP/s of the 2-D forward transform, from the plan's own
//! operation count, so it can be compared with the machine's peak.
// criterion_group! generates an undocumented `benches` function.
#![allow(missing_docs)]

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use meridian_benches::{bench_memcpy, criterion_config, gaussian, size_label, sizes};
use meridian_kernels::dct::DctPlan;
use std::hint::black_box;
use std::time::Instant;

fn dct(c: &mut Criterion) {
    for n in sizes() {
        let x = gaussian(n, 2);
        let mut group = c.benchmark_group("dct");
        group.throughput(Throughput::Elements(n as u64));
        bench_memcpy(&mut group, &x);
        let side = (n as f64).sqrt() as usize;
        let plans = [
            ("1d-forward", DctPlan::new_1d(n, 64)),
            ("2d-forward", DctPlan::new_2d(side, n / side, 64)),
        ];
        for (name, plan) in plans {
            let Ok(plan) = plan else { continue };
            let mut coeffs = vec![0.0f32; plan.coeff_len()];
            group.bench_function(BenchmarkId::new(name, size_label(n)), |b| {
                b.iter(|| plan.forward(black_box(&x), &mut coeffs))
            });
            if name == "2d-forward" {
                let mut back = vec![0.0f32; n];
                group.bench_function(BenchmarkId::new("2d-inverse", size_label(n)), |b| {
                    b.iter(|| plan.inverse(black_box(&coeffs), &mut back))
                });
                let t0 = Instant::now();
                let reps = 3;
                for _ in 0..reps {
                    let _ = plan.forward(&x, &mut coeffs);
                }
                let secs = t0.elapsed().as_secs_f64() / f64::from(reps);
                eprintln!(
                    "dct 2d-forward {}: {:.2} GFLOP/s ({} flops per call)",
                    size_label(n),
                    plan.flops_forward() as f64 / secs / 1e9,
                    plan.flops_forward()
                );
            }
        }
        group.finish();
    }
}

criterion_group! { name = benches; config = criterion_config(); targets = dct }
criterion_main!(benches);
