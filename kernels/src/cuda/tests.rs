//! Tests of the CUDA backend: the sources compile with NVRTC without warnings, the launch
//! constants match the sources, parity with the CPU backend on a device (skipped without
//! one), and `dct.cuh` run on the host giving the CPU DCT's bits.

use super::source::{compile, module_source, SOURCES};

const ARCHES: [&str; 2] = ["sm_80", "sm_90"];

/// Whether NVRTC can be loaded. Without it (a checkout whose venv is not installed) the
/// compile tests print why and pass, except in CI, where they must run.
fn nvrtc_present() -> bool {
    match super::loader::ensure_nvrtc() {
        Ok(_) => true,
        Err(e) if std::env::var_os("CI").is_none() => {
            println!("skipped: {e}");
            false
        }
        Err(e) => panic!("CI must compile the CUDA kernels: {e}"),
    }
}

#[test]
fn every_kernel_source_compiles_for_sm80_and_sm90_without_warnings() {
    if !nvrtc_present() {
        return;
    }
    // One thread per architecture: NVRTC compiles take most of this test's time.
    std::thread::scope(|scope| {
        for arch in ARCHES {
            scope.spawn(move || {
                for (name, src) in SOURCES {
                    let out =
                        compile(name, src, arch).unwrap_or_else(|e| panic!("{name} {arch}: {e}"));
                    assert!(
                        out.log.is_empty(),
                        "{name} for {arch}: NVRTC diagnostics:\n{}",
                        out.log
                    );
                    assert!(!out.image.is_empty(), "{name} for {arch}: empty image");
                }
                let out = compile("module", &module_source(), arch)
                    .unwrap_or_else(|e| panic!("module {arch}: {e}"));
                assert!(out.log.is_empty(), "module for {arch}: NVRTC diagnostics:\n{}", out.log);
            });
        }
    });
}

#[test]
fn a_compile_error_and_a_warning_are_both_caught() {
    if !nvrtc_present() {
        return;
    }
    // The compile test above relies on errors failing and warnings showing in the log.
    let err = compile("broken.cu", "extern \"C\" __global__ void k() { undeclared(); }", "sm_80");
    assert!(err.is_err());
    let warned =
        compile("warn.cu", "extern \"C\" __global__ void k(int* p) { int x; p[0] = x; }", "sm_80")
            .unwrap();
    assert!(!warned.log.is_empty(), "expected a warning for an uninitialised read");
}

/// The value of `#define name VALUE` in the CUDA sources.
fn cuda_define(name: &str) -> usize {
    let all = format!("{}\n{}", super::source::PRELUDE, module_source());
    let key = format!("#define {name} ");
    let line = all.lines().find_map(|l| l.strip_prefix(key.as_str()));
    line.and_then(|v| v.trim().parse().ok()).unwrap_or_else(|| panic!("no #define {name}"))
}

#[test]
fn the_launch_constants_match_the_cuda_sources() {
    // The block-wide scans keep one slot per warp (MERIDIAN_WARPS of them) and ballot with
    // a full mask, so every launch must have exactly MERIDIAN_THREADS threads, a whole
    // number of warps; the host runs use other block sizes and cannot see a mismatch.
    use super::backend::{MAX_TILE, THREADS};
    assert_eq!(THREADS as usize, cuda_define("MERIDIAN_THREADS"));
    assert_eq!(THREADS % 32, 0);
    assert_eq!(MAX_TILE, cuda_define("MERIDIAN_MAX_TILE"));
    assert_eq!(super::backend::MAX_LINE, cuda_define("MERIDIAN_MAX_LINE"));
}

#[test]
fn grids_beyond_the_device_limit_are_refused_before_launch() {
    use super::backend::{blocks, QuantPlan, MAX_GRID_X};
    assert_eq!(blocks(0).unwrap().grid_dim, (1, 1, 1));
    assert_eq!(blocks(MAX_GRID_X).unwrap().grid_dim.0 as usize, MAX_GRID_X);
    assert!(blocks(MAX_GRID_X + 1).is_err());
    // One CUDA block per quantization block: blocks of one value over 2^31 values would
    // need a grid the device refuses at launch.
    let one = QuantConfig { block: 1, ..QuantConfig::int8() };
    assert!(QuantPlan::new(&one, MAX_GRID_X).is_ok());
    assert!(QuantPlan::new(&one, MAX_GRID_X + 1).is_err());
    assert!(QuantPlan::new(&QuantConfig::int8(), MAX_GRID_X + 1).is_ok());
}

// ---------------------------------------------------------------------------------------
// Parity with the CPU backend. These need a CUDA device; without one each prints
// "skipped: no CUDA device" and returns.
// ---------------------------------------------------------------------------------------

use std::sync::Arc;

use super::test_support::{host_compiler, put_dct_plan, put_f32s, random};
use super::{CudaBackend, CudaCompressor, DctBases, DeviceBuffer};
use crate::aggregate::{scatter_mean, Contribution, MeanOver, ScatterScratch};
use crate::chunks::ChunkSpec;
use crate::dct::DctPlan;
use crate::pipeline::{Compressor, CompressorConfig, Selection};
use crate::quant::{quantize, Bits, QuantConfig, Rounding, Scheme};
use crate::sparse::Sparse;
use crate::{feedback, pack, topk, KernelError};

fn gpu() -> Option<Arc<CudaBackend>> {
    match super::device_count() {
        Err(_) => {
            println!("skipped: no CUDA device");
            None
        }
        Ok(_) => Some(CudaBackend::get(0).unwrap()),
    }
}

/// A fresh seed per run (printed, so a failure can be replayed).
fn fresh_seed(test: &str) -> u64 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(1, |d| d.as_nanos() as u64);
    println!("{test}: seed {nanos}");
    nanos
}

/// A device buffer of `n` floats, every bit set (NaN) so that unwritten elements show.
fn poisoned(b: &CudaBackend, n: usize) -> DeviceBuffer<f32> {
    b.upload(&vec![f32::from_bits(u32::MAX); n]).unwrap()
}

fn bits_eq(a: &[f32], b: &[f32]) -> bool {
    a.len() == b.len() && a.iter().zip(b).all(|(x, y)| x.to_bits() == y.to_bits())
}

#[test]
fn without_a_device_the_backend_is_an_error_not_a_panic() {
    // On a machine without a driver this is the fallback path; with one, asking for a
    // device that does not exist must still be an error.
    match super::device_count() {
        Err(e) => {
            assert!(matches!(e, KernelError::Device { .. }));
            assert!(matches!(CudaBackend::get(0), Err(KernelError::Device { .. })));
            assert!(!super::cuda_available());
        }
        Ok(n) => assert!(matches!(CudaBackend::get(n), Err(KernelError::Device { .. }))),
    }
}

const SIZES: [usize; 5] = [1, 100, 4096, 3 * 4096 + 100, 70_001];

#[test]
fn gpu_topk_matches_cpu_index_sets() {
    let Some(b) = gpu() else { return };
    let seed = fresh_seed("topk");
    for (s, &n) in SIZES.iter().enumerate() {
        for (chunk, k) in [(4096, 64), (1000, 17), (64, 64), (300, 1)] {
            let spec = ChunkSpec::new(n, chunk, k.min(chunk)).unwrap();
            let x = random(n, seed + s as u64);
            let dev = b.upload(&x).unwrap();
            let mut want = Sparse::default();
            topk::topk_per_chunk(&x, &spec, &mut want).unwrap();
            let mut got = Sparse { indices: vec![u32::MAX; 3], values: vec![f32::NAN; 3] };
            // SAFETY: `dev` holds `n` floats.
            unsafe { b.topk_per_chunk(dev.ptr(), &spec, &mut got) }.unwrap();
            assert_eq!(got.indices, want.indices, "n {n} chunk {chunk} k {k}");
            assert!(bits_eq(&got.values, &want.values), "n {n} chunk {chunk} k {k}");
        }
    }
    // A non-finite value is reported at its first position, as on the CPU.
    let mut x = random(9000, seed);
    x[5000] = f32::INFINITY;
    x[7000] = f32::NAN;
    let dev = b.upload(&x).unwrap();
    let spec = ChunkSpec::new(9000, 4096, 8).unwrap();
    // SAFETY: as above.
    let err = unsafe { b.topk_per_chunk(dev.ptr(), &spec, &mut Sparse::default()) }.unwrap_err();
    assert!(matches!(err, KernelError::NonFinite { index: 5000, .. }), "{err:?}");
}

fn quant_configs(seed: u64) -> Vec<QuantConfig> {
    vec![
        QuantConfig::int8(),
        QuantConfig::int4(),
        QuantConfig::sparseloco_2bit(),
        QuantConfig::sparseloco_2bit_equal_bins(),
        QuantConfig::sign_1bit(),
        QuantConfig { block: 100, ..QuantConfig::sparseloco_2bit() },
        QuantConfig { bits: Bits::B1, block: 333, ..QuantConfig::sparseloco_2bit() },
        QuantConfig { bits: Bits::B8, block: 1000, ..QuantConfig::sparseloco_2bit() },
        QuantConfig {
            bits: Bits::B8,
            scheme: Scheme::Codebook { clip_sigmas: 2.0 },
            ..QuantConfig::int8()
        },
        QuantConfig { rounding: Rounding::Stochastic { seed }, ..QuantConfig::int4() },
        QuantConfig { rounding: Rounding::Stochastic { seed }, ..QuantConfig::sign_1bit() },
    ]
}

#[test]
fn gpu_quantization_gives_the_cpu_bytes() {
    let Some(b) = gpu() else { return };
    let seed = fresh_seed("quant");
    for &n in &SIZES {
        let mut x = random(n, seed ^ n as u64);
        if n > 200 {
            // An all-zero region, zeros of both signs: tied extremes keep the first's sign.
            x[..64]
                .iter_mut()
                .enumerate()
                .for_each(|(i, v)| *v = if i % 2 == 0 { -0.0 } else { 0.0 });
            x[150] *= 1000.0; // an outlier
        }
        let dev = b.upload(&x).unwrap();
        for cfg in quant_configs(seed) {
            let want = quantize(&x, &cfg).unwrap();
            let deq = poisoned(&b, n);
            // SAFETY: `dev` and `deq` hold `n` floats.
            let got = unsafe { b.quantize(dev.ptr(), n, &cfg, deq.ptr()) }.unwrap();
            assert_eq!(got, want, "n {n} {cfg:?}");
            let (mut gb, mut wb) = (Vec::new(), Vec::new());
            got.encode_into(&mut gb);
            want.encode_into(&mut wb);
            assert_eq!(gb, wb);
            assert!(
                bits_eq(&b.download(&deq).unwrap(), &want.dequantize().unwrap()),
                "n {n} {cfg:?}"
            );
        }
    }
}

#[test]
fn gpu_index_packing_gives_the_cpu_bytes() {
    let Some(b) = gpu() else { return };
    let seed = fresh_seed("pack");
    for &n in &SIZES {
        // 4096/64 takes the fixed form; 16/12 is dense enough for the bitmap.
        for (chunk, k) in [(4096, 64), (16, 12), (1000, 3)] {
            let spec = ChunkSpec::new(n, chunk, k.min(chunk)).unwrap();
            let mut sel = Sparse::default();
            topk::topk_per_chunk(&random(n, seed + n as u64), &spec, &mut sel).unwrap();
            let dev = b.upload(&sel.indices).unwrap();
            let (mut want, mut got) = (Vec::new(), Vec::new());
            pack::encode_chunked(&sel.indices, &spec, &mut want).unwrap();
            // SAFETY: `dev` holds `spec.total_k()` indices.
            unsafe { b.encode_chunked(dev.ptr(), &spec, &mut got) }.unwrap();
            assert_eq!(got, want, "n {n} chunk {chunk} k {k}");
            let (idx, used) = b.decode_chunked(&want, &spec).unwrap();
            assert_eq!((idx, used), (sel.indices.clone(), want.len()));
            // Corruptions the CPU rejects are rejected.
            if want[0] == pack::TAG_FIXED && want.len() > 3 {
                let mut bad = want.clone();
                bad[1] ^= 0xff;
                bad[2] ^= 0xff;
                assert_eq!(
                    b.decode_chunked(&bad, &spec).is_err(),
                    pack::decode_chunked(&bad, &spec).is_err(),
                    "n {n} chunk {chunk} k {k}"
                );
            }
        }
    }
}

#[test]
fn gpu_scatter_mean_is_bit_identical_to_cpu_and_across_runs_and_orders() {
    let Some(b) = gpu() else { return };
    let seed = fresh_seed("aggregate");
    for &n in &[100usize, 3 * 4096 + 100] {
        let spec = ChunkSpec::new(n, 4096, 64.min(n)).unwrap();
        let sent: Vec<Sparse> = (0..5)
            .map(|w| {
                let mut s = Sparse::default();
                topk::topk_per_chunk(&random(n, seed + w), &spec, &mut s).unwrap();
                s
            })
            .collect();
        let ids = [4u32, 0, 9, 2, 7];
        for mode in [MeanOver::Contributors, MeanOver::AllWorkers(8)] {
            let contribs: Vec<Contribution<'_>> = ids
                .iter()
                .zip(&sent)
                .map(|(&worker, sparse)| Contribution { worker, sparse })
                .collect();
            let mut want = vec![0.0f32; n];
            scatter_mean(&contribs, mode, &mut want).unwrap();
            let mut reversed = contribs.clone();
            reversed.reverse();
            for order in [&contribs, &reversed, &contribs] {
                let out = poisoned(&b, n);
                // SAFETY: `out` holds `n` floats.
                unsafe { b.scatter_mean(order, mode, out.ptr(), n) }.unwrap();
                assert!(bits_eq(&b.download(&out).unwrap(), &want), "n {n} {mode:?}");
            }
        }
        let dup = [
            Contribution { worker: 1, sparse: &sent[0] },
            Contribution { worker: 1, sparse: &sent[1] },
        ];
        let out = poisoned(&b, n);
        // SAFETY: as above.
        let err = unsafe { b.scatter_mean(&dup, MeanOver::Contributors, out.ptr(), n) };
        assert!(matches!(err, Err(KernelError::DuplicateContributor { id: 1 })));
    }
}

#[test]
fn gpu_error_feedback_matches_cpu_bits() {
    let Some(b) = gpu() else { return };
    let seed = fresh_seed("feedback");
    let n = 3 * 4096 + 100;
    let x = random(n, seed);
    let u = random(n, seed + 1);
    let spec = ChunkSpec::new(n, 4096, 64).unwrap();
    let mut sel = Sparse::default();
    topk::topk_per_chunk(&u, &spec, &mut sel).unwrap();

    let mut want = x.clone();
    feedback::subtract_sent(&mut want, &sel).unwrap();
    let dev = b.upload(&x).unwrap();
    // SAFETY: `dev` holds `n` floats.
    unsafe { b.subtract_sent(dev.ptr(), n, &sel) }.unwrap();
    assert!(bits_eq(&b.download(&dev).unwrap(), &want));

    let mut want = x.clone();
    feedback::subtract_dense(&mut want, &u).unwrap();
    let dev = b.upload(&x).unwrap();
    let ud = b.upload(&u).unwrap();
    // SAFETY: both hold `n` floats.
    unsafe { b.subtract_dense(dev.ptr(), ud.ptr(), n) }.unwrap();
    assert!(bits_eq(&b.download(&dev).unwrap(), &want));

    let mut want = x.clone();
    feedback::accumulate(&mut want, 0.9, &u).unwrap();
    let dev = b.upload(&x).unwrap();
    // SAFETY: as above.
    unsafe { b.accumulate(dev.ptr(), 0.9, ud.ptr(), n) }.unwrap();
    assert!(bits_eq(&b.download(&dev).unwrap(), &want));

    // A non-finite update changes nothing.
    let mut bad = u.clone();
    bad[10] = f32::NAN;
    let bd = b.upload(&bad).unwrap();
    let before = b.download(&dev).unwrap();
    // SAFETY: as above.
    assert!(unsafe { b.accumulate(dev.ptr(), 0.9, bd.ptr(), n) }.is_err());
    assert!(bits_eq(&b.download(&dev).unwrap(), &before));
}

/// Fast and dense dimensions, lines, padding: every path of the DCT.
const DCT_SHAPES: [&[usize]; 9] = [
    &[128, 192],
    &[70, 130],
    &[4096 + 100],
    &[64, 64, 3],
    &[7],
    &[200, 33],
    &[100, 1],
    &[16, 8],
    &[4, 32],
];

#[test]
fn gpu_dct_gives_the_cpu_bits_forward_and_inverse() {
    let Some(b) = gpu() else { return };
    let seed = fresh_seed("dct");
    for shape in DCT_SHAPES {
        let plan = DctPlan::for_shape(shape, 64).unwrap();
        let n = plan.input_len();
        let x = random(n, seed + n as u64);
        let mut want = vec![0.0f32; plan.coeff_len()];
        plan.forward(&x, &mut want).unwrap();
        let bases = DctBases::new(&b, &plan).unwrap();
        let dev = b.upload(&x).unwrap();
        let coeffs = poisoned(&b, plan.coeff_len());
        // SAFETY: sizes from the plan.
        unsafe { b.dct_forward(&bases, dev.ptr(), coeffs.ptr()) }.unwrap();
        assert!(bits_eq(&b.download(&coeffs).unwrap(), &want), "{shape:?} forward");
        let back = poisoned(&b, n);
        // SAFETY: as above.
        unsafe { b.dct_inverse(&bases, coeffs.ptr(), back.ptr()) }.unwrap();
        let mut cpu_back = vec![0.0f32; n];
        plan.inverse(&want, &mut cpu_back).unwrap();
        assert!(bits_eq(&b.download(&back).unwrap(), &cpu_back), "{shape:?} inverse");
    }
}

fn configs() -> Vec<CompressorConfig> {
    vec![
        CompressorConfig::sparseloco(),
        CompressorConfig { values: Some(QuantConfig::int8()), ..CompressorConfig::sparseloco() },
        CompressorConfig { values: None, chunk_len: 1000, ..CompressorConfig::sparseloco() },
        CompressorConfig::demo(),
        CompressorConfig::demo_2bit(),
        CompressorConfig::demo_sign(),
    ]
}

#[test]
fn gpu_fused_compress_matches_the_cpu_pipeline() {
    let Some(b) = gpu() else { return };
    let seed = fresh_seed("compress");
    for shape in DCT_SHAPES {
        let n: usize = shape.iter().product();
        let x = random(n, seed + n as u64);
        let dev = b.upload(&x).unwrap();
        for cfg in configs() {
            let mut cpu = Compressor::new(cfg, shape).unwrap();
            let mut gpu = CudaCompressor::new(b.clone(), cfg, shape).unwrap();
            gpu.poison().unwrap();
            // SAFETY: `dev` holds the tensor.
            let got = unsafe { gpu.compress(dev.ptr()) }.unwrap();
            // Whatever the path, a receiver decodes exactly what the GPU says it sent.
            assert_eq!(cpu.decode_sparse(&got.bytes).unwrap(), got.sent, "{shape:?} {cfg:?}");
            // The same bytes as the CPU pipeline, with or without the DCT.
            let want = cpu.compress(&x).unwrap();
            assert_eq!(got.bytes, want.bytes, "{shape:?} {cfg:?}");
            assert!(bits_eq(&got.sent.values, &want.sent.values), "{shape:?} {cfg:?}");
            // Repeated runs give the same bytes.
            gpu.poison().unwrap();
            // SAFETY: as above.
            let again = unsafe { gpu.compress(dev.ptr()) }.unwrap();
            assert_eq!(again, got, "{shape:?} {cfg:?}: not deterministic");
        }
    }
}

#[test]
fn gpu_aggregate_gives_the_cpu_bits_in_any_member_order() {
    let Some(b) = gpu() else { return };
    let seed = fresh_seed("pipeline-aggregate");
    for shape in DCT_SHAPES {
        let n: usize = shape.iter().product();
        for cfg in configs() {
            let mut cpu = Compressor::new(cfg, shape).unwrap();
            let gpu = CudaCompressor::new(b.clone(), cfg, shape).unwrap();
            // What three members sent, decoded as a receiver does.
            let sent: Vec<Sparse> = (0..3)
                .map(|w| {
                    let bytes = cpu.compress(&random(n, seed + w + n as u64)).unwrap().bytes;
                    cpu.decode_sparse(&bytes).unwrap()
                })
                .collect();
            let contribs: Vec<Contribution<'_>> = [5u32, 1, 3]
                .iter()
                .zip(&sent)
                .map(|(&worker, sparse)| Contribution { worker, sparse })
                .collect();
            let mut want = vec![0.0f32; n];
            cpu.aggregate(&mut ScatterScratch::new(), &contribs, MeanOver::Contributors, &mut want)
                .unwrap();
            let mut reversed = contribs.clone();
            reversed.reverse();
            for order in [&contribs, &reversed] {
                let out = poisoned(&b, n);
                // SAFETY: `out` holds the tensor's `n` floats.
                unsafe { gpu.aggregate(order, MeanOver::Contributors, out.ptr()) }.unwrap();
                assert!(bits_eq(&b.download(&out).unwrap(), &want), "{shape:?} {cfg:?}");
            }
        }
    }
}

#[test]
fn gpu_fused_compress_refuses_non_finite_input_and_unsupported_configs() {
    let Some(b) = gpu() else { return };
    let mut x = random(3 * 4096 + 100, 5);
    x[9000] = f32::NEG_INFINITY;
    let dev = b.upload(&x).unwrap();
    let mut gpu =
        CudaCompressor::new(b.clone(), CompressorConfig::sparseloco(), &[x.len()]).unwrap();
    // SAFETY: `dev` holds the tensor.
    let err = unsafe { gpu.compress(dev.ptr()) }.unwrap_err();
    assert!(matches!(err, KernelError::NonFinite { index: 9000, .. }), "{err:?}");
    let global = CompressorConfig {
        selection: Selection::Global { fraction: 0.01 },
        ..CompressorConfig::sparseloco()
    };
    assert!(matches!(
        CudaCompressor::new(b.clone(), global, &[x.len()]),
        Err(KernelError::Device { .. })
    ));
}

#[test]
fn gpu_fused_compress_reports_dct_overflow_and_bad_input_as_the_cpu_does() {
    let Some(b) = gpu() else { return };
    for shape in [&[4096][..], &[128, 192][..]] {
        let n: usize = shape.iter().product();
        let mut cpu = Compressor::new(CompressorConfig::demo(), shape).unwrap();
        let mut gpu = CudaCompressor::new(b.clone(), CompressorConfig::demo(), shape).unwrap();
        // Finite, but too large for the DCT in f32; then a NaN in the input.
        let mut big = random(n, 7);
        big[0] = 3e38;
        big[1] = -3e38;
        let mut nan = random(n, 8);
        nan[n - 3] = f32::NAN;
        for x in [big, nan] {
            let want = cpu.compress(&x).unwrap_err();
            let dev = b.upload(&x).unwrap();
            // SAFETY: `dev` holds the tensor.
            let got = unsafe { gpu.compress(dev.ptr()) }.unwrap_err();
            assert_eq!(got.to_string(), want.to_string(), "{shape:?}");
        }
    }
}

#[test]
fn gpu_error_feedback_after_compress_matches_cpu() {
    let Some(b) = gpu() else { return };
    let seed = fresh_seed("compress-feedback");
    for (cfg, shape) in [
        (CompressorConfig::sparseloco(), &[3 * 4096 + 100][..]),
        (CompressorConfig::demo(), &[128, 192][..]),
    ] {
        let n: usize = shape.iter().product();
        let x = random(n, seed);
        let dev = b.upload(&x).unwrap();
        let mut gpu = CudaCompressor::new(b.clone(), cfg, shape).unwrap();
        // SAFETY: `dev` holds the tensor.
        let sent = unsafe { gpu.compress(dev.ptr()) }.unwrap().sent;
        let mut want = x.clone();
        gpu.cpu().subtract_sent(&mut want, &sent).unwrap();
        // SAFETY: as above.
        unsafe { gpu.subtract_last_sent(dev.ptr()) }.unwrap();
        assert!(bits_eq(&b.download(&dev).unwrap(), &want), "{cfg:?}");
    }
}

// ---------------------------------------------------------------------------------------
// The DCT port, checked on the CPU: dct.cuh compiled as host C++ (one "thread" per block,
// so every tile loop runs sequentially) must give the CPU DCT's bits exactly.
// ---------------------------------------------------------------------------------------

const HOST_SHIMS: &str = r#"
#include <cstdint>
#include <cstdio>
#include <vector>
typedef uint8_t u8;
typedef uint32_t u32;
typedef unsigned long long u64;
#define __device__
#define __forceinline__ inline
#define __noinline__
#define __restrict__
struct Dim3 { u32 x; };
static Dim3 threadIdx = {0};
static Dim3 blockDim = {1};
static inline void __syncthreads() {}
static inline float __fadd_rn(float a, float b) { return a + b; }
static inline float __fsub_rn(float a, float b) { return a - b; }
static inline float __fmul_rn(float a, float b) { return a * b; }
template <typename T> static inline T __ldg(const T* p) { return *p; }
"#;

const HOST_MAIN: &str = r#"
static u32 rd_u32(FILE* f) { u32 v = 0; if (fread(&v, 4, 1, f) != 1) { v = 0; } return v; }
template <typename T> static std::vector<T> rd_vec(FILE* f, size_t n) {
    std::vector<T> v(n + 1);
    if (n && fread(v.data(), sizeof(T), n, f) != n) { v.assign(n + 1, T()); }
    return v;
}
struct HostDim { std::vector<u32> gather; std::vector<float> tab; std::vector<float> c; DimDev d; };
static void rd_dim(FILE* f, HostDim& h) {
    const u32 n = rd_u32(f), fast = rd_u32(f), ng = rd_u32(f), nt = rd_u32(f);
    h.gather = rd_vec<u32>(f, ng);
    h.tab = rd_vec<float>(f, nt);
    h.c = rd_vec<float>(f, (size_t)n * n);
    h.d.gather = h.gather.data(); h.d.tab = h.tab.data(); h.d.c = h.c.data();
    h.d.n = n; h.d.fast = fast;
}
int main(int argc, char** argv) {
    if (argc != 3) { return 2; }
    FILE* in = fopen(argv[1], "rb");
    if (!in) { return 3; }
    TileGeometry g;
    g.rows = rd_u32(in); g.cols = rd_u32(in); g.rc = rd_u32(in); g.cc = rd_u32(in);
    g.tiles_per_row = rd_u32(in); g.line = rd_u32(in);
    const u32 tiles = rd_u32(in);
    HostDim r, c;
    rd_dim(in, r);
    rd_dim(in, c);
    std::vector<float> x = rd_vec<float>(in, (size_t)g.rows * g.cols);
    fclose(in);
    const u32 ld = tile_ld(g), n = g.rc * g.cc;
    std::vector<float> tile(64 * 65), coeffs((size_t)tiles * n), back((size_t)g.rows * g.cols);
    for (u32 t = 0; t < tiles; ++t) {
        load_tile(x.data(), g, t, tile.data(), ld);
        tile_transform(tile.data(), ld, g, r.d, c.d, false);
        for (u32 o = 0; o < n; ++o) { coeffs[(size_t)t * n + o] = tile[(o / g.cc) * ld + o % g.cc]; }
    }
    for (u32 t = 0; t < tiles; ++t) {
        for (u32 o = 0; o < n; ++o) { tile[(o / g.cc) * ld + o % g.cc] = coeffs[(size_t)t * n + o]; }
        tile_transform(tile.data(), ld, g, r.d, c.d, true);
        store_tile(back.data(), g, t, tile.data(), ld);
    }
    FILE* out = fopen(argv[2], "wb");
    if (!out) { return 4; }
    fwrite(coeffs.data(), 4, coeffs.size(), out);
    fwrite(back.data(), 4, back.size(), out);
    fclose(out);
    return 0;
}
"#;

#[test]
fn the_cuda_dct_source_gives_the_cpu_dct_bits_when_run_on_the_host() {
    let Some(cxx) = host_compiler() else {
        println!("skipped: no C++ compiler");
        return;
    };
    let dir = std::env::temp_dir().join(format!("meridian-dct-host-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let src = dir.join("dct_host.cpp");
    let exe = dir.join("dct_host");
    std::fs::write(&src, format!("{HOST_SHIMS}\n{}\n{HOST_MAIN}", super::source::DCT_HEADER))
        .unwrap();
    // No contraction and strict IEEE single precision, as the device code is compiled.
    let status = std::process::Command::new(cxx)
        .args(["-std=c++17", "-O1", "-ffp-contract=off", "-fno-fast-math", "-Wall", "-Werror"])
        .arg(&src)
        .arg("-o")
        .arg(&exe)
        .status()
        .unwrap();
    assert!(status.success(), "{cxx} failed on dct.cuh");
    // Every branch of the port: fast × fast at 64 and at the small lengths (4, 8, 16, 32),
    // fast × dense, dense × dense, lines along either dimension, padding everywhere.
    let shapes: [&[usize]; 13] = [
        &[128, 192],
        &[70, 130],
        &[4096 + 100],
        &[7],
        &[64, 64, 3],
        &[200, 33],
        &[100, 1],
        &[1, 100],
        &[3, 5],
        &[16, 8],
        &[4, 32],
        &[130, 70],
        &[1, 1],
    ];
    for (s, shape) in shapes.iter().enumerate() {
        let plan = DctPlan::for_shape(shape, 64).unwrap();
        let x = random(plan.input_len(), 77 + s as u64);
        let mut input = Vec::new();
        put_dct_plan(&mut input, &plan);
        put_f32s(&mut input, &x);
        let (inp, outp) = (dir.join("in.bin"), dir.join("out.bin"));
        std::fs::write(&inp, &input).unwrap();
        let status = std::process::Command::new(&exe).arg(&inp).arg(&outp).status().unwrap();
        assert!(status.success(), "{shape:?}: harness failed");
        let out: Vec<f32> = std::fs::read(&outp)
            .unwrap()
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect();
        let (got_coeffs, got_back) = out.split_at(plan.coeff_len());
        let mut want = vec![0.0f32; plan.coeff_len()];
        plan.forward(&x, &mut want).unwrap();
        let first_diff = got_coeffs.iter().zip(&want).position(|(a, b)| a.to_bits() != b.to_bits());
        assert_eq!(
            first_diff,
            None,
            "{shape:?} forward: {:?}",
            first_diff.map(|i| (got_coeffs[i], want[i]))
        );
        let mut back = vec![0.0f32; plan.input_len()];
        plan.inverse(&want, &mut back).unwrap();
        let first_diff = got_back.iter().zip(&back).position(|(a, b)| a.to_bits() != b.to_bits());
        assert_eq!(
            first_diff,
            None,
            "{shape:?} inverse: {:?}",
            first_diff.map(|i| (got_back[i], back[i]))
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}
