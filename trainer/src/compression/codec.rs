//! Every compressor `meridian compress` can run, by name: the kernel pipelines the sparse
//! outer algorithms send (SparseLoCo, DeMo and its quantized variants) and DiLoCo's dense
//! transports (f32, bf16, INTELLECT-1 int8), each as one encode and decode of one tensor.
//!
//! The encoders and decoders are the ones training uses (`meridian_kernels::pipeline` and
//! `meridian_optimizer::outer::diloco`), so the bytes counted here are the bytes a worker
//! would put in its payload for that tensor, less the payload's per-tensor framing
//! (14 + 4·rank bytes, the same for every algorithm).

use std::time::Instant;

use anyhow::{bail, Result};
use meridian_kernels::pipeline::{Compressor, CompressorConfig};
use meridian_kernels::quant::QuantConfig;
use meridian_optimizer::outer::diloco::{
    dense_segment, quantized_segment, segment_values, Transport, INT8_MIN_ELEMENTS,
};
use meridian_optimizer::payload::Segment;

use crate::compression::values::ValueStats;

/// The kernel pipelines, in the order the demo runs them by default.
pub const PIPELINES: [&str; 5] =
    ["sparseloco", "sparseloco-equal-bins", "demo", "demo-2bit", "demo-sign"];

/// Every name [`Codec::parse`] accepts, pipelines first.
pub const ALL: [&str; 10] = [
    "sparseloco",
    "sparseloco-equal-bins",
    "demo",
    "demo-2bit",
    "demo-sign",
    "diloco-f32",
    "diloco-bf16",
    "diloco-int8",
    "streaming-int4",
    "streaming-fp4",
];

/// One way of sending a tensor.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Codec {
    /// A kernel pipeline: optional DCT, top-k, optional quantization, packed indices.
    Pipeline(CompressorConfig),
    /// DiLoCo's dense exchange of every value.
    Diloco(Transport),
    /// Every value quantized blockwise (Streaming DiLoCo's 4-bit exchange).
    Dense4(QuantConfig),
}

/// What one encode and decode of a tensor gave.
#[derive(Debug, Clone, PartialEq)]
pub struct RoundTrip {
    /// Exact length of the encoding.
    pub bytes: usize,
    /// Values the encoding carries (all of them for a dense transport).
    pub kept: usize,
    /// What a receiver reconstructs, row-major, as many values as the input.
    pub decoded: Vec<f32>,
    /// Wall time of the encoding alone.
    pub encode_seconds: f64,
    /// A pipeline's kept values: their error and its quantizer's level occupancy; `None`
    /// for a dense transport.
    pub values: Option<ValueStats>,
}

impl Codec {
    /// The codec called `name` (one of [`ALL`]).
    pub fn parse(name: &str) -> Result<Self> {
        Ok(match name {
            "sparseloco" => Self::Pipeline(CompressorConfig::sparseloco()),
            "sparseloco-equal-bins" => Self::Pipeline(CompressorConfig {
                values: Some(QuantConfig::sparseloco_2bit_equal_bins()),
                ..CompressorConfig::sparseloco()
            }),
            "demo" => Self::Pipeline(CompressorConfig::demo()),
            "demo-2bit" => Self::Pipeline(CompressorConfig::demo_2bit()),
            "demo-sign" => Self::Pipeline(CompressorConfig::demo_sign()),
            "diloco-f32" => Self::Diloco(Transport::F32),
            "diloco-bf16" => Self::Diloco(Transport::Bf16),
            "diloco-int8" => Self::Diloco(Transport::Int8),
            "streaming-int4" => Self::Dense4(QuantConfig::int4()),
            "streaming-fp4" => Self::Dense4(QuantConfig::fp4()),
            other => bail!("unknown algorithm {other:?}; choose from {}", ALL.join(", ")),
        })
    }

    /// One line saying what the codec sends, for report headers.
    pub fn describe(&self) -> String {
        match self {
            Self::Pipeline(config) => {
                let equal_bins = CompressorConfig {
                    values: Some(QuantConfig::sparseloco_2bit_equal_bins()),
                    ..CompressorConfig::sparseloco()
                };
                let what = if *config == CompressorConfig::sparseloco() {
                    "top 64 of every 4096 values, 2-bit values: sign + 2 Lloyd-Max magnitude \
                     levels per sign"
                } else if *config == equal_bins {
                    "top 64 of every 4096 values, 2-bit values: 4 equal bins over mean ± 3σ \
                     (the reference's grid)"
                } else if *config == CompressorConfig::demo() {
                    "64×64 DCT tiles, top 32 coefficients of each, f32 values"
                } else if *config == CompressorConfig::demo_2bit() {
                    "64×64 DCT tiles, top 32 coefficients of each, 2-bit sign + Lloyd-Max values"
                } else if *config == CompressorConfig::demo_sign() {
                    "64×64 DCT tiles, top 32 coefficients of each, 1-bit sign values"
                } else {
                    "kernel pipeline"
                };
                format!("{what}; sent includes the 10-byte header and the packed indices")
            }
            Self::Diloco(Transport::F32) => "every value as f32".to_owned(),
            Self::Diloco(Transport::Bf16) => "every value as bf16".to_owned(),
            Self::Diloco(Transport::Int8) => format!(
                "every value as an 8-bit code over ±3σ with a 1 KiB codebook per block; \
                 tensors under {INT8_MIN_ELEMENTS} elements go as f32"
            ),
            Self::Dense4(q) if *q == QuantConfig::fp4() => {
                "every value as FP4 (E2M1), one f32 scale per 128".to_owned()
            }
            Self::Dense4(_) => {
                "every value as a 4-bit absmax integer, one f32 scale per 128".to_owned()
            }
        }
    }

    /// Encodes `x` (row-major, of `shape`, finite) and decodes it again, as a sender and a
    /// receiver of that tensor would.
    pub fn round_trip(&self, shape: &[usize], x: &[f32]) -> Result<RoundTrip> {
        match self {
            Self::Pipeline(config) => {
                let mut c = Compressor::new(*config, shape)?;
                let t0 = Instant::now();
                let sent = c.compress(x)?;
                let encode_seconds = t0.elapsed().as_secs_f64();
                let decoded = c.decompress(&sent.bytes)?;
                let values = ValueStats::of_last_call(&c, &sent.sent.values);
                Ok(RoundTrip {
                    bytes: sent.bytes.len(),
                    kept: sent.sent.len(),
                    decoded,
                    encode_seconds,
                    values: Some(values),
                })
            }
            Self::Diloco(transport) => {
                dense_round_trip(x.len(), || Ok(dense_segment(0, shape, x, *transport)?))
            }
            Self::Dense4(q) => dense_round_trip(x.len(), || Ok(quantized_segment(0, shape, x, q)?)),
        }
    }
}

/// Times `encode` (every value of an `n`-value tensor as one segment) and decodes its
/// segment as a receiver would.
fn dense_round_trip(n: usize, encode: impl FnOnce() -> Result<Segment>) -> Result<RoundTrip> {
    let t0 = Instant::now();
    let segment = encode()?;
    let encode_seconds = t0.elapsed().as_secs_f64();
    let decoded = segment_values(&segment)?;
    Ok(RoundTrip { bytes: segment.body.len(), kept: n, decoded, encode_seconds, values: None })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_name_parses_and_round_trips() {
        let shape = [64usize, 96];
        let x: Vec<f32> = (0..64 * 96).map(|i| ((i * 37 % 101) as f32 - 50.0) * 1e-3).collect();
        for name in ALL {
            let rt = Codec::parse(name).unwrap().round_trip(&shape, &x).unwrap();
            assert_eq!(rt.decoded.len(), x.len(), "{name}");
            assert!(rt.bytes > 0 && rt.kept > 0, "{name}");
        }
        let f32 = Codec::parse("diloco-f32").unwrap().round_trip(&shape, &x).unwrap();
        assert_eq!(f32.decoded, x);
        assert_eq!(f32.bytes, x.len() * 4);
        assert!(Codec::parse("zstd").unwrap_err().to_string().contains("zstd"));
        // Both 4-bit formats send the same bytes; each reconstruction stays within its
        // grid's step of every value (int4: 2a/15 per block; fp4: a/6).
        let a = x.iter().fold(0f32, |m, v| m.max(v.abs()));
        let int4 = Codec::parse("streaming-int4").unwrap().round_trip(&shape, &x).unwrap();
        let fp4 = Codec::parse("streaming-fp4").unwrap().round_trip(&shape, &x).unwrap();
        assert_eq!(int4.bytes, fp4.bytes);
        for (rt, step) in [(&int4, 2.0 * a / 15.0), (&fp4, a / 6.0)] {
            assert!(x.iter().zip(&rt.decoded).all(|(u, v)| (u - v).abs() <= step * 1.001));
        }
    }
}
