//! The whole compress pipeline per tensor, against memcpy of the same bytes.
//! SparseLoCo (no DCT: top-64 of 4096 → 2-bit values → Rice-coded indices) and the DCT path
//! (64×64 DCT → top-32 per tile → 2-bit → pack).
// criterion_group! generates an undocumented `benches` function.
#![allow(missing_docs)]

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use meridian_benches::{bench_memcpy, criterion_config, gaussian, size_label, sizes};
use meridian_kernels::pipeline::{Compressed, Compressor, CompressorConfig};
use std::hint::black_box;

/// A 2-D shape of `n` elements with 4096 columns, like a transformer weight matrix.
fn matrix_shape(n: usize) -> [usize; 2] {
    [n / 4096, 4096]
}

fn pipeline(c: &mut Criterion) {
    for n in sizes() {
        let x = gaussian(n, 1);
        let mut group = c.benchmark_group("pipeline");
        group.throughput(Throughput::Elements(n as u64));
        bench_memcpy(&mut group, &x);
        for (name, config) in [
            ("sparseloco", CompressorConfig::sparseloco()),
            ("dct-top32-2bit", CompressorConfig::demo_2bit()),
        ] {
            let Ok(mut comp) = Compressor::new(config, &matrix_shape(n)) else {
                eprintln!("skipping {name} at {n}: shape not supported");
                continue;
            };
            let mut out = Compressed::default();
            group
                .bench_function(BenchmarkId::new(format!("{name}-compress"), size_label(n)), |b| {
                    b.iter(|| comp.compress_into(black_box(&x), &mut out))
                });
            let sent = comp.compress(&x).ok();
            if let Some(sent) = sent {
                group.bench_function(
                    BenchmarkId::new(format!("{name}-decompress"), size_label(n)),
                    |b| b.iter(|| comp.decompress(black_box(&sent.bytes))),
                );
            }
        }
        group.finish();
    }
}

criterion_group! { name = benches; config = criterion_config(); targets = pipeline }
criterion_main!(benches);
