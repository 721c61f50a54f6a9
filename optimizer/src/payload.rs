//! What one worker sends in one round: a versioned, self-describing message with one
//! segment per tensor, whose encoded length is exact and whose decoder validates it
//! against the model.
//!
//! # Byte layout (little-endian)
//! ```text
//! b"MRDP"             magic
//! u16  version        (2)
//! u8   algorithm tag  (see Algorithm::tag)
//! u64  round
//! u32  worker
//! u32  steps          (inner steps the sender trained for the round; see Effort)
//! u32  step_micros    (its mean inner-step time, µs; 0 = not measured)
//! u32  segment count
//! per segment, tensor indices strictly increasing:
//!   u32 tensor index  (position in the model's canonical parameter order)
//!   u8  encoding      (0 f32, 1 bf16, 2 compressed, 3 quantized)
//!   u8  rank, then u32 × rank dims (must equal the model's shape)
//!   u32 body length, then the body
//! ```
//! Dense bodies are raw little-endian values. A compressed body is a
//! `meridian_kernels::pipeline` encoding and a quantized body a `quant::Quantized`
//! encoding; both are validated in full by the algorithm that decodes them.

use crate::algorithm::Algorithm;
use crate::error::{OptimizerError, Result};
use crate::rejection::Rejection;

const MAGIC: &[u8; 4] = b"MRDP";
/// The payload format version this build reads and writes.
pub const VERSION: u16 = 2;

/// How a segment's body encodes its tensor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Encoding {
    /// Raw f32, one per element.
    F32,
    /// bfloat16 (round to nearest even), one per element.
    Bf16,
    /// A `meridian_kernels::pipeline::Compressor` encoding.
    Compressed,
    /// A `meridian_kernels::quant::Quantized` encoding of every element.
    Quantized,
}

impl Encoding {
    fn tag(self) -> u8 {
        match self {
            Encoding::F32 => 0,
            Encoding::Bf16 => 1,
            Encoding::Compressed => 2,
            Encoding::Quantized => 3,
        }
    }

    fn from_tag(t: u8) -> Option<Self> {
        [Encoding::F32, Encoding::Bf16, Encoding::Compressed, Encoding::Quantized]
            .into_iter()
            .find(|e| e.tag() == t)
    }
}

/// One tensor's share of a payload.
#[derive(Debug, Clone, PartialEq)]
pub struct Segment {
    /// Position of the tensor in the model's canonical parameter order.
    pub tensor: u32,
    /// How `body` encodes it.
    pub encoding: Encoding,
    /// The tensor's shape, checked against the model on decode.
    pub shape: Vec<u32>,
    /// The encoded values.
    pub body: Vec<u8>,
}

impl Segment {
    /// A dense segment holding `values` as f32 or bf16.
    pub fn dense(tensor: u32, shape: &[usize], values: &[f32], bf16: bool) -> Self {
        let mut body = Vec::with_capacity(values.len() * if bf16 { 2 } else { 4 });
        if bf16 {
            for v in values {
                body.extend_from_slice(&f32_to_bf16(*v).to_le_bytes());
            }
        } else {
            body.extend_from_slice(bytemuck::cast_slice(values));
        }
        Self {
            tensor,
            encoding: if bf16 { Encoding::Bf16 } else { Encoding::F32 },
            shape: shape.iter().map(|&d| d as u32).collect(),
            body,
        }
    }

    /// A segment carrying `body`, an encoding of tensor `tensor` of `shape`.
    pub fn encoded(tensor: u32, shape: &[usize], encoding: Encoding, body: Vec<u8>) -> Self {
        Self { tensor, encoding, shape: shape.iter().map(|&d| d as u32).collect(), body }
    }

    /// Whether the segment's shape is `shape`.
    pub fn has_shape(&self, shape: &[usize]) -> bool {
        self.shape.len() == shape.len()
            && self.shape.iter().zip(shape).all(|(&a, &b)| a as usize == b)
    }

    /// Number of elements of the tensor.
    pub fn numel(&self) -> usize {
        self.shape.iter().map(|&d| d as usize).product()
    }

    /// The values of a dense (f32 or bf16) segment, checked finite.
    pub fn dense_values(&self) -> Result<Vec<f32>> {
        let values: Vec<f32> = match self.encoding {
            Encoding::F32 => self
                .body
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect(),
            Encoding::Bf16 => self
                .body
                .chunks_exact(2)
                .map(|b| bf16_to_f32(u16::from_le_bytes([b[0], b[1]])))
                .collect(),
            other => {
                return Err(OptimizerError::Config(format!(
                    "segment for tensor {} is {other:?}, not dense",
                    self.tensor
                )))
            }
        };
        if values.len() != self.numel() {
            return Err(OptimizerError::Config(format!(
                "segment for tensor {} holds {} values for {} elements",
                self.tensor,
                values.len(),
                self.numel()
            )));
        }
        meridian_kernels::error::check_finite("dense segment", &values)?;
        Ok(values)
    }
}

/// One worker's message for one round.
#[derive(Debug, Clone, PartialEq)]
pub struct Payload {
    /// The algorithm that produced it; receivers reject another algorithm's payload.
    pub algorithm: Algorithm,
    /// The round it belongs to.
    pub round: u64,
    /// The sender's member id.
    pub worker: u32,
    /// What the sender trained for this round, and how fast.
    pub effort: Effort,
    /// One segment per tensor sent, tensor indices strictly increasing.
    pub segments: Vec<Segment>,
}

/// What a sender trained for the round its payload belongs to: its weight in a balanced
/// mean, and the pace the balancing of the next rounds is sized by (see `crate::balance`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Effort {
    /// Inner steps it trained since its previous round launched. Every worker of a run
    /// steps the same batch, so this counts its tokens in units of one step's.
    pub steps: u32,
    /// Its mean compute time per trained inner step over those steps, in microseconds;
    /// 0 when it did not measure one.
    pub step_micros: u32,
}

/// Round-to-nearest-even conversion to bfloat16 (inputs are finite), saturating: a finite
/// value within half a bf16 step of `f32::MAX` would round up to infinity, which no
/// receiver accepts, so it travels as the largest finite bf16 (0.4 % below it) instead.
/// Every other value converts exactly as plain round-to-nearest-even does.
pub fn f32_to_bf16(v: f32) -> u16 {
    let bits = v.to_bits();
    let rounding = 0x7FFF + ((bits >> 16) & 1);
    let b = (bits.wrapping_add(rounding) >> 16) as u16;
    if b & 0x7FFF == 0x7F80 && v.is_finite() {
        b - 1
    } else {
        b
    }
}

/// Exact widening of bfloat16 to f32.
pub fn bf16_to_f32(v: u16) -> f32 {
    f32::from_bits(u32::from(v) << 16)
}

const HEADER_LEN: usize = 4 + 2 + 1 + 8 + 4 + 4 + 4 + 4;

impl Payload {
    /// Checks that the payload carries exactly the tensors `expected` (every tensor of the
    /// model when `None`), in that order, each with the model's shape from `shapes` and an
    /// encoding in `allowed`. Returns the rejection reason otherwise.
    pub fn check_segments(
        &self,
        expected: Option<&[usize]>,
        shapes: &[Vec<usize>],
        allowed: &[Encoding],
    ) -> std::result::Result<(), Rejection> {
        let want = expected.map_or(shapes.len(), <[usize]>::len);
        if self.segments.len() != want {
            return Err(Rejection::SegmentCount { got: self.segments.len(), expected: want });
        }
        for (k, s) in self.segments.iter().enumerate() {
            let i = expected.map_or(k, |e| e[k]);
            if s.tensor as usize != i {
                return Err(Rejection::SegmentTensor { segment: k, tensor: s.tensor, expected: i });
            }
            if !allowed.contains(&s.encoding) {
                return Err(Rejection::SegmentEncoding {
                    tensor: i,
                    encoding: s.encoding,
                    allowed: allowed.to_vec(),
                });
            }
            let shape = shapes.get(i).ok_or(Rejection::NotInModel { tensor: i })?;
            if !s.has_shape(shape) {
                return Err(Rejection::SegmentShape {
                    tensor: i,
                    shape: s.shape.clone(),
                    model: shape.clone(),
                });
            }
        }
        Ok(())
    }
}

impl Payload {
    /// Exact length of [`Payload::encode`]'s output: the bytes this payload puts on the wire.
    pub fn encoded_len(&self) -> usize {
        HEADER_LEN
            + self
                .segments
                .iter()
                .map(|s| 4 + 1 + 1 + 4 * s.shape.len() + 4 + s.body.len())
                .sum::<usize>()
    }

    /// Encodes the payload.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.encoded_len());
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&VERSION.to_le_bytes());
        out.push(self.algorithm.tag());
        out.extend_from_slice(&self.round.to_le_bytes());
        out.extend_from_slice(&self.worker.to_le_bytes());
        out.extend_from_slice(&self.effort.steps.to_le_bytes());
        out.extend_from_slice(&self.effort.step_micros.to_le_bytes());
        out.extend_from_slice(&(self.segments.len() as u32).to_le_bytes());
        for s in &self.segments {
            out.extend_from_slice(&s.tensor.to_le_bytes());
            out.push(s.encoding.tag());
            out.push(s.shape.len() as u8);
            for d in &s.shape {
                out.extend_from_slice(&d.to_le_bytes());
            }
            out.extend_from_slice(&(s.body.len() as u32).to_le_bytes());
            out.extend_from_slice(&s.body);
        }
        out
    }

    /// The effort a payload's header states, read from its first bytes alone (its first
    /// 27), when it is `worker`'s payload for `round`; `None` when they are not a header
    /// this build writes, or another round's or author's. Nothing else is checked: what
    /// balancing reads before the payload commits.
    pub fn peek_effort(head: &[u8], round: u64, worker: u32) -> Option<Effort> {
        let mut r = Reader { bytes: head, at: 0 };
        if r.take(4).ok()? != MAGIC || r.u16().ok()? != VERSION {
            return None;
        }
        r.u8().ok()?;
        if (r.u64().ok()?, r.u32().ok()?) != (round, worker) {
            return None;
        }
        Some(Effort { steps: r.u32().ok()?, step_micros: r.u32().ok()? })
    }

    /// Decodes and validates a payload against the model's parameter `shapes` (canonical
    /// order): magic, version, algorithm, segment order, shapes, dense body lengths and
    /// finiteness, truncation and trailing bytes. Never panics.
    pub fn decode(bytes: &[u8], shapes: &[Vec<usize>]) -> Result<Self> {
        let mut r = Reader { bytes, at: 0 };
        let bad = |reason: String| OptimizerError::InvalidPayload { worker: u32::MAX, reason };
        let cut = |e: Truncated| bad(e.to_string());
        if r.take(4).map_err(cut)? != MAGIC {
            return Err(bad("not a Meridian payload (bad magic)".into()));
        }
        let version = r.u16().map_err(cut)?;
        if version != VERSION {
            return Err(bad(format!("payload version {version}, this build reads {VERSION}")));
        }
        let tag = r.u8().map_err(cut)?;
        let algorithm =
            Algorithm::from_tag(tag).ok_or_else(|| bad(format!("unknown algorithm tag {tag}")))?;
        let round = r.u64().map_err(cut)?;
        let worker = r.u32().map_err(cut)?;
        let bad = |reason: String| OptimizerError::InvalidPayload { worker, reason };
        let cut = |e: Truncated| bad(e.to_string());
        let effort = Effort { steps: r.u32().map_err(cut)?, step_micros: r.u32().map_err(cut)? };
        let count = r.u32().map_err(cut)? as usize;
        if count > shapes.len() {
            return Err(bad(format!("{count} segments for a model of {} tensors", shapes.len())));
        }
        let mut segments = Vec::with_capacity(count);
        let mut prev: Option<u32> = None;
        for _ in 0..count {
            let tensor = r.u32().map_err(cut)?;
            if prev.is_some_and(|p| p >= tensor) {
                return Err(bad(format!("segment tensor indices not increasing at {tensor}")));
            }
            prev = Some(tensor);
            let model_shape = shapes.get(tensor as usize).ok_or_else(|| {
                bad(format!("tensor index {tensor} out of range ({} tensors)", shapes.len()))
            })?;
            let etag = r.u8().map_err(cut)?;
            let encoding =
                Encoding::from_tag(etag).ok_or_else(|| bad(format!("unknown encoding {etag}")))?;
            let rank = r.u8().map_err(cut)? as usize;
            let mut shape = Vec::with_capacity(rank);
            for _ in 0..rank {
                shape.push(r.u32().map_err(cut)?);
            }
            let len = r.u32().map_err(cut)? as usize;
            let body = r.take(len).map_err(cut)?.to_vec();
            let segment = Segment { tensor, encoding, shape, body };
            if !segment.has_shape(model_shape) {
                return Err(bad(format!(
                    "tensor {tensor} has shape {:?}, the model's is {model_shape:?}",
                    segment.shape
                )));
            }
            if matches!(encoding, Encoding::F32 | Encoding::Bf16) {
                segment.dense_values().map_err(|e| bad(e.to_string()))?;
            }
            segments.push(segment);
        }
        if r.at != bytes.len() {
            return Err(bad(format!("{} trailing bytes", bytes.len() - r.at)));
        }
        Ok(Self { algorithm, round, worker, effort, segments })
    }
}

struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

/// The input ended before a field it declares: the one way reading a field can fail.
#[derive(Debug, thiserror::Error)]
#[error("truncated: needed {needed} bytes at offset {at}, have {have}")]
struct Truncated {
    needed: usize,
    at: usize,
    have: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> std::result::Result<&'a [u8], Truncated> {
        let end = self.at.checked_add(n).filter(|&e| e <= self.bytes.len()).ok_or(Truncated {
            needed: n,
            at: self.at,
            have: self.bytes.len(),
        })?;
        let s = &self.bytes[self.at..end];
        self.at = end;
        Ok(s)
    }
    fn u8(&mut self) -> std::result::Result<u8, Truncated> {
        Ok(self.take(1)?[0])
    }
    fn u16(&mut self) -> std::result::Result<u16, Truncated> {
        let b = self.take(2)?;
        Ok(u16::from_le_bytes([b[0], b[1]]))
    }
    fn u32(&mut self) -> std::result::Result<u32, Truncated> {
        let b = self.take(4)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }
    fn u64(&mut self) -> std::result::Result<u64, Truncated> {
        let b = self.take(8)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Ok(u64::from_le_bytes(a))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn shapes() -> Vec<Vec<usize>> {
        vec![vec![2, 3], vec![4]]
    }

    fn sample() -> Payload {
        Payload {
            algorithm: Algorithm::Diloco,
            round: 7,
            worker: 3,
            effort: Effort { steps: 30, step_micros: 250_000 },
            segments: vec![
                Segment::dense(0, &[2, 3], &[1.0, -2.0, 3.5, 0.0, 1e-3, 7.0], false),
                Segment::dense(1, &[4], &[1.0, 2.0, 3.0, 4.0], true),
            ],
        }
    }

    #[test]
    fn round_trips_with_exact_length() {
        let p = sample();
        let bytes = p.encode();
        assert_eq!(bytes.len(), p.encoded_len());
        assert_eq!(Payload::decode(&bytes, &shapes()).unwrap(), p);
        assert_eq!(p.segments[1].dense_values().unwrap(), vec![1.0, 2.0, 3.0, 4.0]);
    }

    #[test]
    fn the_header_alone_states_round_author_and_effort() {
        let bytes = sample().encode();
        let effort = Effort { steps: 30, step_micros: 250_000 };
        assert_eq!(Payload::peek_effort(&bytes[..27], 7, 3), Some(effort));
        assert_eq!(Payload::peek_effort(&bytes[..26], 7, 3), None, "cut short");
        assert_eq!(Payload::peek_effort(&bytes, 8, 3), None, "another round");
        assert_eq!(Payload::peek_effort(&bytes, 7, 2), None, "another author");
        let mut old = bytes.clone();
        old[4] = 1;
        assert_eq!(Payload::peek_effort(&old, 7, 3), None, "another version");
    }

    #[test]
    fn bf16_rounds_to_nearest_even() {
        assert_eq!(bf16_to_f32(f32_to_bf16(1.0)), 1.0);
        // 1 + 2^-8 lies halfway between two bf16 values: ties go to the even one (1.0).
        assert_eq!(bf16_to_f32(f32_to_bf16(1.0 + 1.0 / 256.0)), 1.0);
        assert_eq!(bf16_to_f32(f32_to_bf16(1.0 + 3.0 / 256.0)), 1.0 + 4.0 / 256.0);
    }

    #[test]
    fn bf16_saturates_finite_values_that_would_round_to_infinity() {
        // The largest finite bf16, 0x7F7F.
        let max = bf16_to_f32(0x7F7F);
        for (v, want) in [(f32::MAX, max), (-f32::MAX, -max), (3.3961e38, max), (max, max)] {
            let got = bf16_to_f32(f32_to_bf16(v));
            assert_eq!(got, want, "{v:e}");
        }
        // Just below the midpoint it already rounded down; infinities stay infinite.
        assert_eq!(bf16_to_f32(f32_to_bf16(3.39e38)), max);
        assert_eq!(bf16_to_f32(f32_to_bf16(f32::INFINITY)), f32::INFINITY);
        // A dense bf16 segment of the largest f32 values decodes, finite.
        let s = Segment::dense(0, &[2], &[f32::MAX, -f32::MAX], true);
        assert_eq!(s.dense_values().unwrap(), vec![max, -max]);
    }

    #[test]
    fn every_malformed_payload_is_rejected() {
        let good = sample().encode();
        for cut in 0..good.len() {
            assert!(Payload::decode(&good[..cut], &shapes()).is_err(), "truncated at {cut}");
        }
        let reject = |f: &dyn Fn(&mut Vec<u8>), what: &str| {
            let mut b = good.clone();
            f(&mut b);
            let e = Payload::decode(&b, &shapes()).unwrap_err().to_string();
            assert!(e.contains(what), "{what}: got {e}");
        };
        reject(&|b| b[0] = b'X', "magic");
        reject(&|b| b[4] = 1, "version");
        reject(&|b| b[6] = 99, "algorithm");
        reject(&|b| b.push(0), "trailing");
        // First segment's shape: dims start after index (4), encoding (1), rank (1).
        reject(&|b| b[HEADER_LEN + 6] = 5, "shape");
        reject(&|b| b[HEADER_LEN + 4] = 9, "encoding");
        reject(&|b| b[HEADER_LEN] = 9, "out of range");
        // A NaN in the first dense value.
        let body = HEADER_LEN + 4 + 1 + 1 + 8 + 4;
        reject(&|b| b[body..body + 4].copy_from_slice(&f32::NAN.to_le_bytes()), "non-finite");
        let mut wrong_model = shapes();
        wrong_model[1] = vec![5];
        assert!(Payload::decode(&good, &wrong_model).is_err());
    }

    #[test]
    fn duplicate_or_unordered_segments_are_rejected() {
        let mut p = sample();
        p.segments.swap(0, 1);
        assert!(Payload::decode(&p.encode(), &shapes())
            .unwrap_err()
            .to_string()
            .contains("increasing"));
    }

    proptest! {
        #[test]
        fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
            let _ = Payload::decode(&bytes, &shapes());
            let mut with_magic = b"MRDP\x02\x00".to_vec();
            with_magic.extend_from_slice(&bytes);
            let _ = Payload::decode(&with_magic, &shapes());
        }
    }
}
