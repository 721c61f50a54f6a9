//! Canonical scatter-mean of 8 workers' per-chunk top-k selections (64 of 4096 each) into a
//! dense buffer, against memcpy of that buffer.
// criterion_group! generates an undocumented `benches` function.
#![allow(missing_docs)]

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use meridian_benches::{bench_memcpy, criterion_config, gaussian, size_label, sizes};
use meridian_kernels::aggregate::{scatter_mean_with, Contribution, MeanOver, ScatterScratch};
use meridian_kernels::chunks::ChunkSpec;
use meridian_kernels::topk::topk_per_chunk;
use meridian_kernels::Sparse;
use std::hint::black_box;

const WORKERS: u32 = 8;

fn aggregate(c: &mut Criterion) {
    for n in sizes() {
        let mut group = c.benchmark_group("aggregate");
        group.throughput(Throughput::Elements(n as u64));
        bench_memcpy(&mut group, &gaussian(n, 6));
        let Ok(spec) = ChunkSpec::new(n, 4096, 64) else { continue };
        let selections: Vec<Sparse> = (0..WORKERS)
            .filter_map(|w| {
                let mut s = Sparse::default();
                topk_per_chunk(&gaussian(n, 100 + u64::from(w)), &spec, &mut s).ok().map(|()| s)
            })
            .collect();
        let contribs: Vec<Contribution<'_>> = selections
            .iter()
            .zip(0..)
            .map(|(s, w)| Contribution { worker: w, sparse: s })
            .collect();
        let mut scratch = ScatterScratch::default();
        let mut out = vec![0.0f32; n];
        group.bench_function(BenchmarkId::new("scatter-mean-8-workers", size_label(n)), |b| {
            b.iter(|| {
                scatter_mean_with(
                    &mut scratch,
                    black_box(&contribs),
                    MeanOver::Contributors,
                    &mut out,
                )
            })
        });
        group.finish();
    }
}

criterion_group! { name = benches; config = criterion_config(); targets = aggregate }
criterion_main!(benches);
