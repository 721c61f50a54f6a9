//! Index packing for a per-chunk top-k selection (64 of every 4096 → Rice-coded offsets) and a
//! global one (delta + bit-packing), encode and decode. Throughput counts the elements of
//! the dense tensor the indices address, so the figure compares with memcpy of that tensor.
// criterion_group! generates an undocumented `benches` function.
#![allow(missing_docs)]

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use meridian_benches::{bench_memcpy, criterion_config, gaussian, size_label, sizes};
use meridian_kernels::chunks::ChunkSpec;
use meridian_kernels::pack::{decode_chunked, decode_sorted, encode_chunked, encode_sorted};
use meridian_kernels::topk::{k_for_fraction, topk_global, topk_per_chunk};
use meridian_kernels::Sparse;
use std::hint::black_box;

fn pack(c: &mut Criterion) {
    for n in sizes() {
        let x = gaussian(n, 5);
        let mut group = c.benchmark_group("pack");
        group.throughput(Throughput::Elements(n as u64));
        bench_memcpy(&mut group, &x);
        let mut sel = Sparse::default();
        let mut buf = Vec::new();
        if let Ok(spec) = ChunkSpec::new(n, 4096, 64) {
            if topk_per_chunk(&x, &spec, &mut sel).is_ok() {
                group.bench_function(BenchmarkId::new("chunked-encode", size_label(n)), |b| {
                    b.iter(|| {
                        buf.clear();
                        encode_chunked(black_box(&sel.indices), &spec, &mut buf)
                    })
                });
                let _ = encode_chunked(&sel.indices, &spec, &mut buf);
                group.bench_function(BenchmarkId::new("chunked-decode", size_label(n)), |b| {
                    b.iter(|| decode_chunked(black_box(&buf), &spec))
                });
            }
        }
        if let Ok(k) = k_for_fraction(n, 64.0 / 4096.0) {
            if topk_global(&x, k, &mut sel).is_ok() {
                group.bench_function(BenchmarkId::new("sorted-encode", size_label(n)), |b| {
                    b.iter(|| {
                        buf.clear();
                        encode_sorted(black_box(&sel.indices), n, &mut buf)
                    })
                });
                buf.clear();
                let _ = encode_sorted(&sel.indices, n, &mut buf);
                group.bench_function(BenchmarkId::new("sorted-decode", size_label(n)), |b| {
                    b.iter(|| decode_sorted(black_box(&buf), n, k))
                });
            }
        }
        group.finish();
    }
}

criterion_group! { name = benches; config = criterion_config(); targets = pack }
criterion_main!(benches);
