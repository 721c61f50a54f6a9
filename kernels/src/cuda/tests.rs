use super::source::{compile, module_source, SOURCES};

const ARCHES: [&str; 2] = ["sm_80", "sm_90"];

#[test]
fn every_kernel_source_compiles_for_sm80_and_sm90_without_warnings() {
    for arch in ARCHES {
        for (name, src) in SOURCES {
            let out = compile(name, src, arch).unwrap_or_else(|e| panic!("{name} {arch}: {e}"));
            assert!(out.log.is_empty(), "{name} for {arch}: NVRTC diagnostics:\n{}", out.log);
            assert!(!out.image.is_empty(), "{name} for {arch}: empty image");
        }
        let out = compile("module", &module_source(), arch)
            .unwrap_or_else(|e| panic!("module {arch}: {e}"));
        assert!(out.log.is_empty(), "module for {arch}: NVRTC diagnostics:\n{}", out.log);
    }
}

#[test]
fn a_compile_error_and_a_warning_are_both_caught() {
    // The compile test above relies on errors failing and warnings showing in the log.
    let err = compile("broken.cu", "extern \"C\" __global__ void k() { undeclared(); }", "sm_80");
    assert!(err.is_err());
    let warned =
        compile("warn.cu", "extern \"C\" __global__ void k(int* p) { int x; p[0] = x; }", "sm_80")
            .unwrap();
    assert!(!warned.log.is_empty(), "expected a warning for an uninitialised read");
}

// ---------------------------------------------------------------------------------------
// Parity with the CPU backend. These need a CUDA device; without one each prints
// "skipped: no CUDA device" and returns.
// ---------------------------------------------------------------------------------------

use std::sync::Arc;

use super::{CudaBackend, CudaCompressor, DctBases, DeviceBuffer};
use crate::aggregate::{scatter_mean, Contribution, MeanOver};
use crate::chunks::ChunkSpec;
use crate::dct::DctPlan;
use crate::pipeline::{Compressor, CompressorConfig, Selection, Transform};
use crate::quant::{quantize, Bits, QuantConfig, Rounding, Scheme};
use crate::rng::SplitMix64;
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

/// Gaussian-ish values with a share of exact ties (values on a coarse grid).
fn random(n: usize, seed: u64) -> Vec<f32> {
    let mut r = SplitMix64::new(seed);
    (0..n)
        .map(|i| {
            let u = r.next_unit_f32() + r.next_unit_f32() + r.next_unit_f32() - 1.5;
            if i % 7 == 0 {
                (u * 8.0).round() / 8.0
            } else {
                u
            }
        })
        .collect()
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
        QuantConfig::sign_1bit(),
        QuantConfig { block: 100, ..QuantConfig::sparseloco_2bit() },
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
            x[..64].iter_mut().for_each(|v| *v = 0.0); // an all-zero region
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

/// Largest |gpu − cpu| relative to the largest |cpu|.
fn rel_diff(gpu: &[f32], cpu: &[f32]) -> f32 {
    let scale = cpu.iter().fold(0.0f32, |m, v| m.max(v.abs())).max(f32::MIN_POSITIVE);
    gpu.iter().zip(cpu).fold(0.0f32, |m, (a, b)| m.max((a - b).abs())) / scale
}

const DCT_SHAPES: [&[usize]; 6] =
    [&[128, 192], &[70, 130], &[4096 + 100], &[64, 64, 3], &[7], &[200, 33]];

#[test]
fn gpu_dct_agrees_with_cpu_to_rounding_and_is_deterministic() {
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
        let mut first: Option<Vec<f32>> = None;
        for _ in 0..2 {
            let coeffs = poisoned(&b, plan.coeff_len());
            // SAFETY: sizes from the plan.
            unsafe { b.dct_forward(&bases, dev.ptr(), coeffs.ptr()) }.unwrap();
            let got = b.download(&coeffs).unwrap();
            assert!(rel_diff(&got, &want) < 2e-6, "{shape:?}: {}", rel_diff(&got, &want));
            if let Some(f) = &first {
                assert!(bits_eq(f, &got), "{shape:?}: not deterministic");
            }
            first = Some(got);
        }
        let back = poisoned(&b, n);
        // SAFETY: as above.
        unsafe { b.dct_inverse(&bases, dev.ptr(), back.ptr()) }.unwrap();
        let mut cpu_back = vec![0.0f32; n];
        let mut padded = x.clone();
        padded.resize(plan.coeff_len(), 0.0);
        plan.inverse(&padded, &mut cpu_back).unwrap();
        let got = b.download(&back).unwrap();
        assert!(rel_diff(&got, &cpu_back) < 2e-6, "{shape:?} inverse");
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
            match cfg.transform {
                Transform::None => {
                    let want = cpu.compress(&x).unwrap();
                    assert_eq!(got.bytes, want.bytes, "{shape:?} {cfg:?}");
                    assert!(bits_eq(&got.sent.values, &want.sent.values));
                }
                Transform::Dct { .. } => {
                    // The selection is exactly the CPU top-k of the GPU's coefficients.
                    let plan = cpu.dct_plan().unwrap();
                    let bases = DctBases::new(&b, plan).unwrap();
                    let coeffs = poisoned(&b, plan.coeff_len());
                    // SAFETY: sizes from the plan.
                    unsafe { b.dct_forward(&bases, dev.ptr(), coeffs.ptr()) }.unwrap();
                    let coeffs = b.download(&coeffs).unwrap();
                    let mut want = Sparse::default();
                    topk::topk_per_chunk(&coeffs, cpu.chunk_spec().unwrap(), &mut want).unwrap();
                    assert_eq!(got.sent.indices, want.indices, "{shape:?} {cfg:?}");
                }
            }
            // Repeated runs give the same bytes.
            gpu.poison().unwrap();
            // SAFETY: as above.
            let again = unsafe { gpu.compress(dev.ptr()) }.unwrap();
            assert_eq!(again, got, "{shape:?} {cfg:?}: not deterministic");
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
        let got = b.download(&dev).unwrap();
        match cfg.transform {
            Transform::None => assert!(bits_eq(&got, &want)),
            Transform::Dct { .. } => assert!(rel_diff(&got, &want) < 2e-6),
        }
    }
}
