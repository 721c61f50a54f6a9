//! Feeds arbitrary bytes to the path a received payload takes before aggregation:
//! `Payload::decode` against a fixed model, then each segment's body decoder (dense values,
//! `Quantized::decode` and dequantization as DiLoCo reads them, the compressed pipeline's
//! `decode_sparse` and `sparse_to_dense` as DeMo and SparseLoCo read them).
//!
//! The first input byte steers: bits 0–2 pick the compressor configuration that compressed
//! segments are decoded with, bit 3 the mode, bits 4–5 the tensor (direct mode).
//! - payload (bit 3 clear): the rest is a payload as received.
//! - direct (bit 3 set): the rest is one segment body of the chosen tensor, handed to every
//!   body decoder; this reaches their checks without the fuzzer first building the framing.
//!
//! Checked beyond "no panic, no over-allocation": a payload that decodes re-encodes to the
//! same bytes; a quantized body that decodes re-encodes to the bytes it consumed; whatever
//! the decoders accept is finite, of the model's size, and (sparse) in range and ascending.
//!
//! With `MERIDIAN_FUZZ_WRITE_SEEDS=<dir>` in the environment the target writes valid inputs
//! into `<dir>` and exits instead (see `fuzz/seed-corpus.sh`).

#![no_main]

use libfuzzer_sys::fuzz_target;
use meridian_kernels::pipeline::{Compressor, CompressorConfig, Selection, Transform};
use meridian_kernels::quant::{quantize, Bits, QuantConfig, Quantized, Rounding, Scheme};
use meridian_optimizer::algorithm::Algorithm;
use meridian_optimizer::outer::diloco::segment_values;
use meridian_optimizer::payload::{Encoding, Payload, Segment};

const ENCODINGS: [Encoding; 4] =
    [Encoding::F32, Encoding::Bf16, Encoding::Compressed, Encoding::Quantized];

/// The model the payloads are decoded against: small, and of ranks 1 to 3.
fn shapes() -> Vec<Vec<usize>> {
    vec![vec![4, 6], vec![10], vec![2, 3, 4]]
}

/// Compressor configurations: the presets the algorithms use, and small ones whose chunks
/// and blocks split these small tensors into several pieces.
fn configs() -> [CompressorConfig; 8] {
    let small_quant =
        |bits, scheme| QuantConfig { bits, scheme, block: 8, rounding: Rounding::Nearest };
    [
        CompressorConfig::sparseloco(),
        CompressorConfig::demo(),
        CompressorConfig::demo_2bit(),
        CompressorConfig::demo_sign(),
        CompressorConfig {
            transform: Transform::None,
            chunk_len: 8,
            selection: Selection::PerChunk { k: 3 },
            values: Some(small_quant(Bits::B2, Scheme::Codebook { clip_sigmas: 3.0 })),
        },
        CompressorConfig {
            transform: Transform::Dct { chunk: 2 },
            chunk_len: 8,
            selection: Selection::PerChunk { k: 2 },
            values: Some(small_quant(Bits::B1, Scheme::Absmax)),
        },
        CompressorConfig {
            transform: Transform::None,
            chunk_len: 8,
            selection: Selection::Global { fraction: 0.3 },
            values: Some(small_quant(Bits::B8, Scheme::Absmax)),
        },
        CompressorConfig {
            transform: Transform::Dct { chunk: 3 },
            chunk_len: 8,
            selection: Selection::Global { fraction: 0.5 },
            values: None,
        },
    ]
}

fn compressor(config: CompressorConfig, shape: &[usize]) -> Compressor {
    Compressor::new(config, shape).expect("the target's configurations fit its model")
}

/// A compressed body, as DeMo and SparseLoCo decode it.
fn check_compressed(body: &[u8], config: CompressorConfig, shape: &[usize]) {
    let comp = compressor(config, shape);
    let Ok(sparse) = comp.decode_sparse(body) else { return };
    assert_eq!(sparse.indices.len(), comp.kept());
    assert_eq!(sparse.values.len(), sparse.indices.len());
    assert!(sparse.indices.windows(2).all(|w| w[0] < w[1]), "indices not ascending");
    assert!(sparse.indices.iter().all(|&i| (i as usize) < comp.transform_len()));
    assert!(sparse.values.iter().all(|v| v.is_finite()), "non-finite value decoded");
    let dense = comp.sparse_to_dense(&sparse).expect("a decoded selection maps back");
    assert_eq!(dense.len(), shape.iter().product::<usize>());
}

/// A quantized body on its own: what it consumed re-encodes identically, and dequantizes
/// to finite values.
fn check_quantized(body: &[u8], numel: usize) {
    let Ok((q, used)) = Quantized::decode(body, numel) else { return };
    assert!(used <= body.len());
    let mut again = Vec::new();
    q.encode_into(&mut again);
    assert_eq!(again, body[..used], "quantized re-encoding differs");
    let values = q.dequantize().expect("a decoded quantized body dequantizes");
    assert!(values.iter().all(|v| v.is_finite()), "non-finite dequantized value");
}

/// A dense or quantized segment, as DiLoCo (and DDP, Streaming) read it.
fn check_values(segment: &Segment) {
    if let Ok(values) = segment_values(segment) {
        assert_eq!(values.len(), segment.numel());
        assert!(values.iter().all(|v| v.is_finite()), "non-finite segment value");
    }
}

fn check_payload(bytes: &[u8], config: CompressorConfig) {
    let shapes = shapes();
    let Ok(payload) = Payload::decode(bytes, &shapes) else { return };
    assert_eq!(payload.encoded_len(), bytes.len());
    assert_eq!(payload.encode(), bytes, "payload re-encoding differs");
    let _ = payload.check_segments(None, &shapes, &ENCODINGS);
    for segment in &payload.segments {
        let shape = &shapes[segment.tensor as usize];
        assert!(segment.has_shape(shape));
        match segment.encoding {
            Encoding::Compressed => check_compressed(&segment.body, config, shape),
            Encoding::Quantized => {
                check_quantized(&segment.body, segment.numel());
                check_values(segment);
            }
            _ => check_values(segment),
        }
    }
}

fn check_direct(body: &[u8], config: CompressorConfig, tensor: usize) {
    let shapes = shapes();
    let shape = &shapes[tensor % shapes.len()];
    let numel = shape.iter().product();
    check_compressed(body, config, shape);
    check_quantized(body, numel);
    for encoding in [Encoding::F32, Encoding::Bf16, Encoding::Quantized] {
        check_values(&Segment::encoded(tensor as u32, shape, encoding, body.to_vec()));
    }
}

/// Deterministic values in (-1, 1) for seeds.
fn signal(n: usize, seed: u64) -> Vec<f32> {
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 40) as f32 / (1u64 << 23) as f32 - 1.0
        })
        .collect()
}

/// Valid inputs: a compressed payload per configuration, dense and quantized payloads, and
/// each compressed and quantized body in direct mode.
fn write_seeds(dir: &std::path::Path) {
    std::fs::create_dir_all(dir).expect("seed directory");
    let shapes = shapes();
    let write = |name: String, control: u8, bytes: &[u8]| {
        let mut input = vec![control];
        input.extend_from_slice(bytes);
        std::fs::write(dir.join(name), input).expect("writing a seed");
    };
    for (c, config) in configs().into_iter().enumerate() {
        let mut segments = Vec::new();
        for (t, shape) in shapes.iter().enumerate() {
            let values = signal(shape.iter().product(), (c * 10 + t) as u64);
            let body = compressor(config, shape).compress(&values).expect("compress").bytes;
            write(format!("direct-compressed-{c}-{t}"), 8 | c as u8 | (t as u8) << 4, &body);
            segments.push(Segment::encoded(t as u32, shape, Encoding::Compressed, body));
        }
        let p = Payload {
            algorithm: Algorithm::Sparseloco,
            round: c as u64,
            worker: 1,
            effort: Default::default(),
            segments,
        };
        write(format!("payload-compressed-{c}"), c as u8, &p.encode());
    }
    let quants = [QuantConfig::int8(), QuantConfig::sign_1bit(), QuantConfig::sparseloco_2bit()];
    for (k, mut qc) in quants.into_iter().enumerate() {
        qc.block = 5;
        let mut segments = Vec::new();
        for (t, shape) in shapes.iter().enumerate() {
            let values = signal(shape.iter().product(), 100 + (k * 10 + t) as u64);
            let mut body = Vec::new();
            quantize(&values, &qc).expect("quantize").encode_into(&mut body);
            write(format!("direct-quantized-{k}-{t}"), 8 | (t as u8) << 4, &body);
            segments.push(Segment::encoded(t as u32, shape, Encoding::Quantized, body));
        }
        let p = Payload {
            algorithm: Algorithm::Diloco,
            round: 3,
            worker: 0,
            effort: Default::default(),
            segments,
        };
        write(format!("payload-quantized-{k}"), 0, &p.encode());
    }
    for bf16 in [false, true] {
        let segments = shapes
            .iter()
            .enumerate()
            .map(|(t, shape)| {
                let values = signal(shape.iter().product(), 200 + t as u64);
                Segment::dense(t as u32, shape, &values, bf16)
            })
            .collect();
        let p = Payload {
            algorithm: Algorithm::Ddp,
            round: 0,
            worker: 2,
            effort: Default::default(),
            segments,
        };
        write(format!("payload-dense-bf16-{bf16}"), 0, &p.encode());
    }
    // A payload carrying only some tensors (Streaming DiLoCo sends fragments).
    let values = signal(10, 300);
    let p = Payload {
        algorithm: Algorithm::Streaming,
        round: 9,
        worker: 3,
        effort: Default::default(),
        segments: vec![Segment::dense(1, &shapes[1], &values, false)],
    };
    write("payload-fragment".into(), 0, &p.encode());
}

fuzz_target!(
    init: {
        if let Some(dir) = std::env::var_os("MERIDIAN_FUZZ_WRITE_SEEDS") {
            write_seeds(std::path::Path::new(&dir));
            std::process::exit(0);
        }
    },
    |data: &[u8]| {
        let Some((&control, rest)) = data.split_first() else { return };
        let config = configs()[usize::from(control & 7)];
        if control & 8 == 0 {
            check_payload(rest, config);
        } else {
            check_direct(rest, config, usize::from(control >> 4 & 3));
        }
    }
);
