//! The CUDA sources run on the host: every kernel compiled as C++ with one thread per block
//! and the blocks of a launch run one after another. That cannot show races or
//! synchronization bugs, but it checks every index, formula and byte layout of the kernels
//! against the CPU backend on any machine, GPU or not.

use super::backend::{IndexPlan, QuantPlan};
use super::compressor::{assemble, DeviceOutputs};
use super::source::{PRELUDE, SOURCES};
use super::test_support::{host_compiler, put_dct_plan, put_f32s, put_u32, random};
use crate::chunks::ChunkSpec;
use crate::pipeline::{Compressed, Compressor, CompressorConfig, Selection, Transform};
use crate::quant::{Bits, QuantConfig, Rounding, Scheme};

/// CUDA's built-ins for one thread per block on the host.
const SHIMS: &str = r#"
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <vector>
typedef uint8_t u8;
typedef uint32_t u32;
typedef unsigned long long u64;
#define __device__
#define __global__
#define __shared__ static
#define __forceinline__ inline
#define __noinline__
#define __restrict__
struct Dim3 { u32 x; };
#ifndef MERIDIAN_HOST_THREADS
// One thread per block: blocks run one after another.
#define MERIDIAN_HOST_THREADS 1
static Dim3 threadIdx = {0};
static inline void __syncthreads() {}
static inline u32 __ballot_sync(u32, bool p) { return p ? 1u : 0u; }
#else
// MERIDIAN_HOST_THREADS OS threads per block (a multiple of 32), with barriers for
// __syncthreads and for each warp's ballot; blocks still run one after another.
#include <barrier>
#include <thread>
static thread_local Dim3 threadIdx = {0};
static std::barrier<>* block_barrier;
static std::barrier<>* warp_barriers[32];
static bool ballot_slots[32][32];
static inline void __syncthreads() { block_barrier->arrive_and_wait(); }
static inline u32 __ballot_sync(u32, bool p) {
    const u32 w = threadIdx.x / 32, l = threadIdx.x % 32;
    ballot_slots[w][l] = p;
    warp_barriers[w]->arrive_and_wait();
    u32 r = 0;
    for (u32 i = 0; i < 32; ++i) { r |= (ballot_slots[w][i] ? 1u : 0u) << i; }
    warp_barriers[w]->arrive_and_wait();
    return r;
}
#endif
static Dim3 blockDim = {MERIDIAN_HOST_THREADS};
static Dim3 blockIdx = {0};
template <typename F> static void host_launch(u32 grid, F f) {
    for (blockIdx.x = 0; blockIdx.x < grid; ++blockIdx.x) {
#if MERIDIAN_HOST_THREADS == 1
        f();
#else
        std::barrier<> bar(MERIDIAN_HOST_THREADS);
        std::vector<std::barrier<>*> warps;
        for (u32 w = 0; w < MERIDIAN_HOST_THREADS / 32; ++w) { warps.push_back(new std::barrier<>(32)); warp_barriers[w] = warps.back(); }
        block_barrier = &bar;
        std::vector<std::thread> threads;
        for (u32 t = 0; t < MERIDIAN_HOST_THREADS; ++t) {
            threads.emplace_back([t, &f]() { threadIdx.x = t; f(); });
        }
        for (auto& t : threads) { t.join(); }
        for (auto* w : warps) { delete w; }
#endif
    }
}
// Launches over whole blocks, or over n elements (one thread each).
#define LAUNCH_BLOCKS(grid, ...) host_launch((grid), [&]() { __VA_ARGS__; })
#define LAUNCH_ELEMS(n, ...) host_launch(((n) + MERIDIAN_HOST_THREADS - 1) / MERIDIAN_HOST_THREADS, [&]() { __VA_ARGS__; })
static inline float __fadd_rn(float a, float b) { return a + b; }
static inline float __fsub_rn(float a, float b) { return a - b; }
static inline float __fmul_rn(float a, float b) { return a * b; }
static inline float __fdiv_rn(float a, float b) { return a / b; }
template <typename T> static inline T __ldg(const T* p) { return *p; }
template <typename T> static inline T min(T a, T b) { return b < a ? b : a; }
static inline u32 __popc(u32 v) { return (u32)__builtin_popcount(v); }
static inline u32 atomicAdd(u32* p, u32 v) { return __atomic_fetch_add(p, v, __ATOMIC_SEQ_CST); }
static inline u32 atomicOr(u32* p, u32 v) { return __atomic_fetch_or(p, v, __ATOMIC_SEQ_CST); }
static inline u32 atomicMin(u32* p, u32 v) {
    u32 o = __atomic_load_n(p, __ATOMIC_SEQ_CST);
    while (v < o && !__atomic_compare_exchange_n(p, &o, v, false, __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST)) {}
    return o;
}
static inline u32 atomicMax(u32* p, u32 v) {
    u32 o = __atomic_load_n(p, __ATOMIC_SEQ_CST);
    while (v > o && !__atomic_compare_exchange_n(p, &o, v, false, __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST)) {}
    return o;
}
static inline u32 __float_as_uint(float f) { u32 u; memcpy(&u, &f, 4); return u; }
static inline float __uint_as_float(u32 u) { float f; memcpy(&f, &u, 4); return f; }
"#;

/// Runs the compress kernels as `CudaCompressor::enqueue` launches them.
const MAIN: &str = r#"
static FILE* in_f;
static u32 rd() { u32 v = 0; if (fread(&v, 4, 1, in_f) != 1) { v = 0; } return v; }
static float rdf() { float v = 0; if (fread(&v, 4, 1, in_f) != 1) { v = 0; } return v; }
template <typename T> static std::vector<T> rdv(size_t n) {
    std::vector<T> v(n + 1);
    if (n && fread(v.data(), sizeof(T), n, in_f) != n) { v.assign(n + 1, T()); }
    return v;
}
struct HostDim { std::vector<u32> gather; std::vector<float> tab; std::vector<float> c; DimDev d; };
static void rd_dim(HostDim& h) {
    const u32 n = rd(), fast = rd(), ng = rd(), nt = rd();
    h.gather = rdv<u32>(ng);
    h.tab = rdv<float>(nt);
    h.c = rdv<float>((size_t)n * n);
    h.d.gather = h.gather.data(); h.d.tab = h.tab.data(); h.d.c = h.c.data();
    h.d.n = n; h.d.fast = fast;
}
template <typename T> static void wr(FILE* f, const std::vector<T>& v, size_t n) {
    if (n) { fwrite(v.data(), sizeof(T), n, f); }
}
// Decoding: unpack_fixed on an index body, dequantize on packed codes.
static int run_decode(FILE* out) {
    const u32 nbytes = rd(), total_k = rd(), k = rd(), chunk_len = rd(), len = rd(), width = rd();
    std::vector<u8> body = rdv<u8>(nbytes);
    const u32 n = rd(), block = rd(), bits = rd(), scheme = rd(), npacked = rd(), nparams = rd();
    std::vector<u8> packed = rdv<u8>(npacked);
    std::vector<float> params = rdv<float>(nparams);
    fclose(in_f);
    std::vector<u32> idx(total_k + 1, 0xffffffffu);
    std::vector<float> deq(n + 1, NAN);
    u32 bad = 0xffffffffu;
    LAUNCH_ELEMS(total_k, unpack_fixed(body.data(), nbytes, total_k, k, chunk_len, len, width, idx.data(), &bad));
    LAUNCH_ELEMS(n, dequantize(packed.data(), params.data(), n, block, bits, scheme, deq.data()));
    fwrite(&bad, 4, 1, out);
    wr(out, idx, total_k);
    wr(out, deq, n);
    return 0;
}

// Aggregation: scatter_add per contribution in the order given, then mean_finish.
static int run_aggregate(FILE* out) {
    const u32 len = rd(), workers = rd(), count_mode = rd(), contribs = rd();
    std::vector<float> acc(len + 1, 0.0f);
    std::vector<u32> counts(len + 1, 0);
    for (u32 c = 0; c < contribs; ++c) {
        const u32 m = rd();
        std::vector<u32> idx = rdv<u32>(m);
        std::vector<float> val = rdv<float>(m);
        LAUNCH_ELEMS(m, scatter_add(idx.data(), val.data(), m, acc.data(), count_mode ? counts.data() : 0));
    }
    fclose(in_f);
    u32 bad = 0xffffffffu;
    LAUNCH_ELEMS(len, mean_finish(acc.data(), count_mode ? counts.data() : 0, workers, len, &bad));
    fwrite(&bad, 4, 1, out);
    wr(out, acc, len);
    return 0;
}

int main(int argc, char** argv) {
    if (argc != 4) { return 2; }
    in_f = fopen(argv[1], "rb");
    if (!in_f) { return 3; }
    if (argv[3][0] != 'c') {
        FILE* out = fopen(argv[2], "wb");
        if (!out) { return 4; }
        const int rc = argv[3][0] == 'd' ? run_decode(out) : run_aggregate(out);
        fclose(out);
        return rc;
    }
    const u32 dct = rd();
    TileGeometry g;
    g.rows = rd(); g.cols = rd(); g.rc = rd(); g.cc = rd(); g.tiles_per_row = rd(); g.line = rd();
    const u32 tiles = rd();
    HostDim r, c;
    if (dct) { rd_dim(r); rd_dim(c); }
    const u32 len = rd(), chunk_len = rd(), k = rd(), k_last = rd(), chunks = rd();
    const u32 fixed = rd(), width = rd(), nwords = rd(), total_k = rd();
    const u32 has_quant = rd(), qblock = rd(), bits = rd(), scheme = rd();
    const float clip = rdf();
    const u32 stochastic = rd(), seed_lo = rd(), seed_hi = rd(), nparams = rd(), npacked = rd();
    const u32 input_len = rd();
    std::vector<float> x = rdv<float>(input_len);
    fclose(in_f);
    const u64 seed = ((u64)seed_hi << 32) | seed_lo;
    std::vector<u32> words(nwords + 1, 0), idx(total_k + 1, 0xffffffffu);
    std::vector<float> val(total_k + 1, NAN), params(nparams + 1, NAN), deq(total_k + 1, NAN);
    std::vector<u8> codes(total_k + 1, 0xff), packed(npacked + 1, 0xff);
    u32 bad = 0xffffffffu;
    if (dct) {
        LAUNCH_BLOCKS(tiles, compress_dct(x.data(), g, r.d, c.d, k, fixed, width, idx.data(), val.data(), words.data(), &bad));
    } else {
        LAUNCH_BLOCKS(chunks, compress_chunks(x.data(), len, chunk_len, k, k_last, fixed, width, idx.data(), val.data(), words.data(), &bad));
    }
    if (has_quant && bad == 0xffffffffu) {
        const u32 nblocks = (total_k + qblock - 1) / qblock;
        LAUNCH_BLOCKS(nblocks, quantize_blocks(val.data(), total_k, qblock, bits, scheme, clip, stochastic, seed, params.data(), codes.data(), deq.data()));
        LAUNCH_ELEMS(npacked, pack_codes(codes.data(), total_k, bits, packed.data()));
    }
    FILE* out = fopen(argv[2], "wb");
    if (!out) { return 4; }
    fwrite(&bad, 4, 1, out);
    wr(out, words, nwords);
    wr(out, idx, total_k);
    wr(out, val, total_k);
    wr(out, params, nparams);
    wr(out, packed, npacked);
    wr(out, deq, total_k);
    fclose(out);
    return 0;
}
"#;

struct Harness {
    dir: std::path::PathBuf,
    exe: std::path::PathBuf,
}

impl Harness {
    fn build(threads: u32) -> Option<Self> {
        let Some(cxx) = host_compiler() else {
            println!("skipped: no C++ compiler");
            return None;
        };
        // One folder per harness: tests build theirs concurrently.
        static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let id = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir =
            std::env::temp_dir().join(format!("meridian-cuda-host-{}-{id}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let sources: Vec<&str> = SOURCES.iter().map(|(_, s)| *s).collect();
        let src = dir.join("kernels_host.cpp");
        std::fs::write(&src, format!("{SHIMS}\n{PRELUDE}\n{}\n{MAIN}", sources.join("\n")))
            .unwrap();
        let exe = dir.join("kernels_host");
        let status = std::process::Command::new(cxx)
            .args(["-std=c++20", "-O1", "-ffp-contract=off", "-fno-fast-math", "-w", "-pthread"])
            .args((threads > 1).then(|| format!("-DMERIDIAN_HOST_THREADS={threads}")))
            .arg(&src)
            .arg("-o")
            .arg(&exe)
            .status()
            .unwrap();
        assert!(status.success(), "{cxx} failed on the CUDA sources");
        Some(Self { dir, exe })
    }

    fn compress(&self, cfg: CompressorConfig, shape: &[usize], x: &[f32]) -> (u32, Compressed) {
        let cpu = Compressor::new(cfg, shape).unwrap();
        let spec: ChunkSpec = *cpu.chunk_spec().unwrap();
        let index = IndexPlan::new(&spec).unwrap();
        let quant = cfg.values.as_ref().map(|q| QuantPlan::new(q, spec.total_k()).unwrap());
        let mut b = Vec::new();
        match cpu.dct_plan() {
            Some(plan) => {
                put_u32(&mut b, 1);
                put_dct_plan(&mut b, plan);
            }
            None => (0..8).for_each(|_| put_u32(&mut b, 0)),
        }
        let last = spec.chunk_range(spec.num_chunks() - 1).len();
        for v in [spec.len, spec.chunk_len, spec.k, spec.k_for(last), spec.num_chunks()] {
            put_u32(&mut b, v);
        }
        for v in [usize::from(index.fixed), index.width as usize, index.words(), spec.total_k()] {
            put_u32(&mut b, v);
        }
        let (block, bits, scheme, clip, stochastic, seed, nparams, npacked) = match &quant {
            Some(q) => (
                q.block,
                q.bits.count() as usize,
                q.scheme as usize,
                q.clip,
                q.stochastic as usize,
                q.seed,
                q.params,
                q.packed,
            ),
            None => (1, 8, 0, 0.0f32, 0, 0u64, 0, 0),
        };
        for v in [usize::from(quant.is_some()), block, bits, scheme] {
            put_u32(&mut b, v);
        }
        b.extend_from_slice(&clip.to_le_bytes());
        for v in [
            stochastic,
            (seed & 0xffff_ffff) as usize,
            (seed >> 32) as usize,
            nparams,
            npacked,
            x.len(),
        ] {
            put_u32(&mut b, v);
        }
        for f in x {
            b.extend_from_slice(&f.to_le_bytes());
        }
        let out = self.run("compress", &b);
        let mut at = 0;
        let mut take = |n: usize| {
            let s = out[at..at + n].to_vec();
            at += n;
            s
        };
        let words4 = |v: Vec<u8>| -> Vec<u32> {
            v.chunks_exact(4).map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect()
        };
        let floats = |v: Vec<u8>| -> Vec<f32> {
            v.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect()
        };
        let bad = words4(take(4))[0];
        let total = spec.total_k();
        let outputs = DeviceOutputs {
            words: words4(take(4 * index.words())),
            idx: words4(take(4 * total)),
            val: floats(take(4 * total)),
            params: floats(take(4 * nparams)),
            packed: take(npacked),
            deq: floats(take(4 * if quant.is_some() { total } else { 0 })),
        };
        let mut result = Compressed::default();
        if bad == u32::MAX {
            assemble(&cpu, &index, quant.as_ref(), outputs, &mut result)
                .unwrap_or_else(|e| panic!("{shape:?} {cfg:?}: {e}"));
        }
        (bad, result)
    }
}

impl Harness {
    /// Runs the harness in `mode` on `input`, returning what it wrote.
    fn run(&self, mode: &str, input: &[u8]) -> Vec<u8> {
        let (inp, outp) = (self.dir.join("in.bin"), self.dir.join("out.bin"));
        std::fs::write(&inp, input).unwrap();
        let status =
            std::process::Command::new(&self.exe).arg(&inp).arg(&outp).arg(mode).status().unwrap();
        assert!(status.success(), "harness {mode}");
        std::fs::read(&outp).unwrap()
    }
}

/// `w` bits at bit `at` of an LSB-first stream.
fn get_bits(b: &[u8], at: usize, w: usize) -> u32 {
    (0..w).fold(0, |v, j| v | (u32::from(b[(at + j) / 8] >> ((at + j) % 8) & 1) << j))
}

fn set_bits(b: &mut [u8], at: usize, w: usize, v: u32) {
    for j in 0..w {
        let (byte, bit) = ((at + j) / 8, (at + j) % 8);
        if (v >> j) & 1 == 1 {
            b[byte] |= 1 << bit;
        } else {
            b[byte] &= !(1 << bit);
        }
    }
}

fn u32s(b: &[u8]) -> Vec<u32> {
    b.chunks_exact(4).map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect()
}

fn f32s(b: &[u8]) -> Vec<f32> {
    b.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect()
}

impl Drop for Harness {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[test]
fn the_cuda_compress_kernels_give_the_cpu_bytes_when_run_on_the_host() {
    let Some(h) = Harness::build(1) else { return };
    compress_matches_cpu(&h, usize::MAX);
}

#[test]
fn the_cuda_compress_kernels_give_the_cpu_bytes_with_64_threads_per_block_on_the_host() {
    // Real threads, barriers and warp ballots: the cross-warp scans and the strided loops
    // run as on the device (blocks still one after another).
    let Some(h) = Harness::build(64) else { return };
    // Threads are slow to start on the host: the first shapes and configurations only.
    compress_matches_cpu(&h, 3);
}

/// Compresses every shape with every configuration (the first `limit` of each) on the
/// host and compares with the CPU pipeline.
fn compress_matches_cpu(h: &Harness, limit: usize) {
    let configs = [
        CompressorConfig::sparseloco(),
        CompressorConfig { values: Some(QuantConfig::int8()), ..CompressorConfig::sparseloco() },
        CompressorConfig {
            values: Some(QuantConfig::int4()),
            chunk_len: 1000,
            selection: Selection::PerChunk { k: 9 },
            ..CompressorConfig::sparseloco()
        },
        CompressorConfig {
            values: None,
            chunk_len: 16,
            selection: Selection::PerChunk { k: 12 },
            ..CompressorConfig::sparseloco()
        },
        CompressorConfig::demo(),
        CompressorConfig::demo_2bit(),
        CompressorConfig::demo_sign(),
        CompressorConfig {
            values: Some(QuantConfig {
                rounding: Rounding::Stochastic { seed: 0x1234_5678_9abc },
                ..QuantConfig::int4()
            }),
            ..CompressorConfig::demo()
        },
        CompressorConfig {
            values: Some(QuantConfig {
                rounding: Rounding::Stochastic { seed: 99 },
                block: 50,
                ..QuantConfig::sign_1bit()
            }),
            ..CompressorConfig::sparseloco()
        },
        CompressorConfig {
            values: Some(QuantConfig {
                bits: Bits::B8,
                scheme: Scheme::Codebook { clip_sigmas: 2.0 },
                block: 300,
                rounding: Rounding::Nearest,
            }),
            ..CompressorConfig::demo()
        },
        CompressorConfig {
            values: Some(QuantConfig::sparseloco_2bit_equal_bins()),
            ..CompressorConfig::sparseloco()
        },
        CompressorConfig {
            values: Some(QuantConfig {
                bits: Bits::B8,
                block: 300,
                ..QuantConfig::sparseloco_2bit()
            }),
            ..CompressorConfig::demo()
        },
        CompressorConfig {
            values: Some(QuantConfig {
                bits: Bits::B1,
                block: 70,
                ..QuantConfig::sparseloco_2bit()
            }),
            chunk_len: 1000,
            selection: Selection::PerChunk { k: 40 },
            ..CompressorConfig::sparseloco()
        },
    ];
    let shapes: [&[usize]; 7] =
        [&[3 * 4096 + 100], &[128, 192], &[70, 130], &[7], &[100, 1], &[16, 8], &[200, 33]];
    for (s, shape) in shapes.iter().enumerate().take(limit) {
        let n: usize = shape.iter().product();
        let mut x = random(n, 11 + s as u64);
        if n > 300 {
            x[..40].iter_mut().for_each(|v| *v = 0.0);
        }
        if n > 2 * 4096 {
            // A whole chunk of zeros of both signs: its kept values form quantization blocks
            // whose extremes tie, so the sign of zero each backend keeps shows in the bytes.
            let zeros = x[4096..2 * 4096].iter_mut().enumerate();
            zeros.for_each(|(i, v)| *v = if i % 3 == 1 { -0.0 } else { 0.0 });
        }
        for cfg in configs.into_iter().step_by(if limit < configs.len() { 4 } else { 1 }) {
            let mut cpu = Compressor::new(cfg, shape).unwrap();
            let want = cpu.compress(&x).unwrap();
            let (bad, got) = h.compress(cfg, shape, &x);
            assert_eq!(bad, u32::MAX, "{shape:?} {cfg:?}");
            assert_eq!(got.sent.indices, want.sent.indices, "{shape:?} {cfg:?}");
            assert!(
                got.sent
                    .values
                    .iter()
                    .zip(&want.sent.values)
                    .all(|(a, b)| a.to_bits() == b.to_bits()),
                "{shape:?} {cfg:?}"
            );
            assert_eq!(got.bytes, want.bytes, "{shape:?} {cfg:?}");
        }
    }
    // A non-finite input is reported at its first position, without a transform, and
    // refused with the DCT.
    let mut x = random(3 * 4096 + 100, 3);
    x[9000] = f32::INFINITY;
    x[10_000] = f32::NAN;
    let (bad, _) = h.compress(CompressorConfig::sparseloco(), &[x.len()], &x);
    assert_eq!(bad, 9000);
    let (bad, _) = h.compress(CompressorConfig::demo(), &[x.len()], &x);
    assert_ne!(bad, u32::MAX);
    let _ = Transform::None;
}

#[test]
fn the_cuda_decode_and_aggregate_kernels_match_the_cpu_when_run_on_the_host() {
    use crate::aggregate::{scatter_mean, Contribution, MeanOver};
    use crate::pack;
    use crate::sparse::Sparse;
    let Some(h) = Harness::build(1) else { return };
    // Index unpacking and dequantization of what the CPU encodes.
    // Specs whose indices travel in the fixed form (top-k of at most 3 per chunk; denser
    // selections travel Rice-coded, which the CPU decodes), the form these kernels unpack.
    for (n, chunk, k) in [(3 * 4096 + 100, 4096, 3), (70_001, 1000, 2), (5, 4096, 64)] {
        let spec = ChunkSpec::new(n, chunk, k.min(chunk)).unwrap();
        let mut sel = Sparse::default();
        crate::topk::topk_per_chunk(&random(n, n as u64), &spec, &mut sel).unwrap();
        let mut enc = Vec::new();
        pack::encode_chunked(&sel.indices, &spec, &mut enc).unwrap();
        assert_eq!(enc[0], pack::TAG_FIXED);
        let plan = IndexPlan::new(&spec).unwrap();
        for q in [
            QuantConfig::sparseloco_2bit(),
            QuantConfig::sparseloco_2bit_equal_bins(),
            QuantConfig { bits: Bits::B4, block: 700, ..QuantConfig::sparseloco_2bit() },
            QuantConfig::int8(),
            QuantConfig::int4(),
            QuantConfig::sign_1bit(),
        ] {
            let quantized = crate::quant::quantize(&sel.values, &q).unwrap();
            let w = plan.width as usize;
            let last_len = spec.chunk_range(spec.num_chunks() - 1).len();
            for corrupt in 0..4 {
                let mut body = enc[1..].to_vec();
                match corrupt {
                    // Large offsets, out of order.
                    1 => body.iter_mut().take(2).for_each(|b| *b = 0xff),
                    // A repeated offset in the first chunk.
                    2 if spec.k_for(spec.chunk_range(0).len()) >= 2 => {
                        let first = get_bits(&body, 0, w);
                        set_bits(&mut body, w, w, first);
                    }
                    // The last entry exactly at its (short) chunk's length.
                    3 => set_bits(&mut body, (plan.total_k - 1) * w, w, last_len as u32),
                    _ => {}
                }
                let mut b = Vec::new();
                for v in [
                    body.len(),
                    plan.total_k,
                    spec.k,
                    spec.chunk_len,
                    spec.len,
                    plan.width as usize,
                ] {
                    put_u32(&mut b, v);
                }
                b.extend_from_slice(&body);
                let scheme = match q.scheme {
                    Scheme::Absmax => 0,
                    Scheme::Codebook { .. } => 1,
                    Scheme::SignLloyd => 2,
                    Scheme::Fp4 => unreachable!("no fp4 config above"),
                };
                for v in [
                    quantized.len,
                    quantized.block,
                    q.bits.count() as usize,
                    scheme,
                    quantized.codes.len(),
                    quantized.params.len(),
                ] {
                    put_u32(&mut b, v);
                }
                b.extend_from_slice(&quantized.codes);
                put_f32s(&mut b, &quantized.params);
                let out = h.run("decode", &b);
                let bad = u32s(&out[..4])[0];
                let idx = u32s(&out[4..4 + 4 * plan.total_k]);
                let deq = f32s(&out[4 + 4 * plan.total_k..]);
                let mut tagged = vec![pack::TAG_FIXED];
                tagged.extend_from_slice(&body);
                match pack::decode_chunked(&tagged, &spec) {
                    Ok((want, _)) => {
                        assert_eq!(bad, u32::MAX, "n {n}");
                        assert_eq!(idx, want, "n {n}");
                    }
                    Err(_) => assert_ne!(bad, u32::MAX, "n {n}: the CPU rejects these bytes"),
                }
                let want = quantized.dequantize().unwrap();
                assert!(
                    deq.iter().zip(&want).all(|(a, b)| a.to_bits() == b.to_bits()),
                    "n {n} {q:?}"
                );
                assert_eq!(deq.len(), want.len());
            }
        }
    }
    // Aggregation: one launch per contribution in ascending worker id gives scatter_mean's bits.
    let n = 3 * 4096 + 100;
    let spec = ChunkSpec::new(n, 4096, 64).unwrap();
    // Workers see similar data, so most coordinates have several contributors and every
    // divisor from 1 to 5 occurs.
    let base = random(n, 40);
    let sent: Vec<Sparse> = (0..5)
        .map(|w| {
            let noise = random(n, 50 + w);
            let x: Vec<f32> = base.iter().zip(&noise).map(|(b, e)| b + 0.3 * e).collect();
            let mut s = Sparse::default();
            crate::topk::topk_per_chunk(&x, &spec, &mut s).unwrap();
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
        let mut order: Vec<&Contribution<'_>> = contribs.iter().collect();
        order.sort_by_key(|c| c.worker);
        let (workers, count_mode) = match mode {
            MeanOver::Contributors => (0, 1),
            MeanOver::AllWorkers(w) => (w as usize, 0),
        };
        let mut b = Vec::new();
        for v in [n, workers, count_mode, order.len()] {
            put_u32(&mut b, v);
        }
        for c in order {
            put_u32(&mut b, c.sparse.len());
            for &i in &c.sparse.indices {
                put_u32(&mut b, i as usize);
            }
            put_f32s(&mut b, &c.sparse.values);
        }
        let out = h.run("aggregate", &b);
        assert_eq!(u32s(&out[..4])[0], u32::MAX);
        let got = f32s(&out[4..]);
        assert!(got.iter().zip(&want).all(|(a, b)| a.to_bits() == b.to_bits()), "{mode:?}");
    }
}
