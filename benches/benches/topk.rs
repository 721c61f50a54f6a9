//! Exact top-k by magnitude: per 4096-element chunk (k = 64 and 32) and global (1.56 %),
//! against memcpy.
// criterion_group! generates an undocumented `benches` function.
#![allow(missing_docs)]

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use meridian_benches::{bench_memcpy, criterion_config, gaussian, size_label, sizes};
use meridian_kernels::chunks::ChunkSpec;
use meridian_kernels::topk::{k_for_fraction, topk_global, topk_per_chunk};
use meridian_kernels::Sparse;
use std::hint::black_box;

fn topk(c: &mut Criterion) {
    for n in sizes() {
        let x = gaussian(n, 3);
        let mut group = c.benchmark_group("topk");
        group.throughput(Throughput::Elements(n as u64));
        bench_memcpy(&mut group, &x);
        let mut out = Sparse::default();
        for k in [64, 32] {
            let Ok(spec) = ChunkSpec::new(n, 4096, k) else { continue };
            group.bench_function(
                BenchmarkId::new(format!("per-chunk-4096-k{k}"), size_label(n)),
                |b| b.iter(|| topk_per_chunk(black_box(&x), &spec, &mut out)),
            );
        }
        if let Ok(k) = k_for_fraction(n, 64.0 / 4096.0) {
            group.bench_function(BenchmarkId::new("global-1.56%", size_label(n)), |b| {
                b.iter(|| topk_global(black_box(&x), k, &mut out))
            });
        }
        group.finish();
    }
}

criterion_group! { name = benches; config = criterion_config(); targets = topk }
criterion_main!(benches);
