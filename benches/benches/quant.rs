//! Blockwise quantizers on `n` values (block 4096): 2-bit codebook, int8, int4, 1-bit sign;
//! quantize and dequantize, against memcpy.
// criterion_group! generates an undocumented `benches` function.
#![allow(missing_docs)]

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use meridian_benches::{bench_memcpy, criterion_config, gaussian, size_label, sizes};
use meridian_kernels::quant::{quantize_into, QuantConfig, Quantized};
use std::hint::black_box;

fn quant(c: &mut Criterion) {
    for n in sizes() {
        let x = gaussian(n, 4);
        let mut group = c.benchmark_group("quant");
        group.throughput(Throughput::Elements(n as u64));
        bench_memcpy(&mut group, &x);
        for (name, cfg) in [
            ("codebook-2bit", QuantConfig::sparseloco_2bit()),
            ("absmax-int8", QuantConfig::int8()),
            ("absmax-int4", QuantConfig::int4()),
            ("sign-1bit", QuantConfig::sign_1bit()),
        ] {
            let cfg = QuantConfig { block: 4096, ..cfg };
            let mut q = Quantized::default();
            group
                .bench_function(BenchmarkId::new(format!("{name}-quantize"), size_label(n)), |b| {
                    b.iter(|| quantize_into(black_box(&x), &cfg, &mut q))
                });
            let mut back = vec![0.0f32; n];
            if quantize_into(&x, &cfg, &mut q).is_ok() {
                group.bench_function(
                    BenchmarkId::new(format!("{name}-dequantize"), size_label(n)),
                    |b| b.iter(|| q.dequantize_into(black_box(&mut back))),
                );
            }
        }
        group.finish();
    }
}

criterion_group! { name = benches; config = criterion_config(); targets = quant }
criterion_main!(benches);
