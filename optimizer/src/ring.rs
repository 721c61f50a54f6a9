//! Summing dense payloads around a ring, in bytes: what a ring all-reduce needs from the
//! optimizer (the network layer moves the bytes and knows nothing of tensors).
//!
//! [`DenseRing::split`] flattens a dense payload (every tensor, canonical order) into one
//! vector and cuts it into equal ranges of elements, one *ring segment* each;
//! [`DenseRing::combine`] adds a received partial sum to this worker's segment at the same
//! range; [`DenseRing::join`] packs the finished segments into an *aggregate*, the sum over
//! the ring's members, which [`DenseRing::decode_aggregate`] turns back into per-tensor
//! sums. Every input may come from a peer and is checked: algorithm, round, range and
//! encoding must match this worker's own segment, values must be finite.
//!
//! Values travel in the payload's transport: f32 sums exactly in f32; bf16 and int8 (the
//! INTELLECT-1 way) are decoded, added in f32 and encoded again at every hop, so what is
//! sent stays 16 or 8 bits per value. Which member adds which segment when is fixed by the
//! ring order, and the finished bytes are copied to everyone, so every replica decodes the
//! same aggregate.
//!
//! # Byte layouts (little-endian)
//! ```text
//! ring segment: b"MRDS" | u8 algorithm | u64 round | u8 encoding (0 f32, 1 bf16, 3 int8)
//!               | u64 offset | u64 count | body (count values in the encoding)
//! aggregate:    b"MRDA" | u16 version (1) | u32 segments | per segment: u32 len, segment
//! ```

use meridian_kernels::quant::{quantize, Quantized};

use crate::algorithm::Algorithm;
use crate::error::{OptimizerError, Result};
use crate::outer::diloco::{int8_codebook, segment_values, Transport};
use crate::payload::{bf16_to_f32, f32_to_bf16, Payload};

const SEGMENT_MAGIC: &[u8; 4] = b"MRDS";
const AGGREGATE_MAGIC: &[u8; 4] = b"MRDA";
const AGGREGATE_VERSION: u16 = 1;
const SEGMENT_HEADER: usize = 4 + 1 + 8 + 1 + 8 + 8;

/// The ring reducer of one run: its algorithm, model shapes and transport.
#[derive(Debug, Clone, PartialEq)]
pub struct DenseRing {
    algorithm: Algorithm,
    shapes: Vec<Vec<usize>>,
    transport: Transport,
}

/// One ring segment, decoded.
#[derive(Debug, Clone, PartialEq)]
struct RingSegment {
    algorithm: Algorithm,
    round: u64,
    transport: Transport,
    offset: u64,
    values: Vec<f32>,
}

fn bad(reason: impl Into<String>) -> OptimizerError {
    OptimizerError::Config(format!("ring segment: {}", reason.into()))
}

fn transport_tag(t: Transport) -> u8 {
    match t {
        Transport::F32 => 0,
        Transport::Bf16 => 1,
        Transport::Int8 => 3,
    }
}

impl RingSegment {
    fn encode(&self) -> Result<Vec<u8>> {
        let mut out = Vec::with_capacity(SEGMENT_HEADER + 4 * self.values.len());
        out.extend_from_slice(SEGMENT_MAGIC);
        out.push(self.algorithm.tag());
        out.extend_from_slice(&self.round.to_le_bytes());
        out.push(transport_tag(self.transport));
        out.extend_from_slice(&self.offset.to_le_bytes());
        out.extend_from_slice(&(self.values.len() as u64).to_le_bytes());
        match self.transport {
            Transport::F32 => out.extend_from_slice(bytemuck::cast_slice(&self.values)),
            Transport::Bf16 => {
                for v in &self.values {
                    out.extend_from_slice(&f32_to_bf16(*v).to_le_bytes());
                }
            }
            Transport::Int8 if self.values.is_empty() => {}
            Transport::Int8 => quantize(&self.values, &int8_codebook())?.encode_into(&mut out),
        }
        Ok(out)
    }

    fn decode(bytes: &[u8]) -> Result<Self> {
        let header = bytes.get(..SEGMENT_HEADER).ok_or_else(|| bad("truncated header"))?;
        if &header[..4] != SEGMENT_MAGIC {
            return Err(bad("bad magic"));
        }
        let algorithm = Algorithm::from_tag(header[4])
            .ok_or_else(|| bad(format!("unknown algorithm tag {}", header[4])))?;
        let u64_at = |at: usize| {
            let mut b = [0u8; 8];
            b.copy_from_slice(&header[at..at + 8]);
            u64::from_le_bytes(b)
        };
        let round = u64_at(5);
        let transport = match header[13] {
            0 => Transport::F32,
            1 => Transport::Bf16,
            3 => Transport::Int8,
            other => return Err(bad(format!("unknown encoding {other}"))),
        };
        let offset = u64_at(14);
        let count = u64_at(22);
        let body = &bytes[SEGMENT_HEADER..];
        let count = usize::try_from(count).map_err(|_| bad("count out of range"))?;
        let values: Vec<f32> = match transport {
            Transport::F32 => {
                if Some(body.len()) != count.checked_mul(4) {
                    return Err(bad(format!("{} body bytes for {count} f32", body.len())));
                }
                body.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect()
            }
            Transport::Bf16 => {
                if Some(body.len()) != count.checked_mul(2) {
                    return Err(bad(format!("{} body bytes for {count} bf16", body.len())));
                }
                body.chunks_exact(2)
                    .map(|b| bf16_to_f32(u16::from_le_bytes([b[0], b[1]])))
                    .collect()
            }
            Transport::Int8 if count == 0 && body.is_empty() => Vec::new(),
            Transport::Int8 => {
                let (q, used) = Quantized::decode(body, count)?;
                if used != body.len() || q.len != count {
                    return Err(bad(format!(
                        "int8 body holds {} values in {used} of {} bytes, expected {count}",
                        q.len,
                        body.len()
                    )));
                }
                q.dequantize()?
            }
        };
        meridian_kernels::error::check_finite("ring segment", &values)?;
        Ok(Self { algorithm, round, transport, offset, values })
    }
}

impl DenseRing {
    /// A reducer for `algorithm`'s dense payloads of a model with `shapes` (canonical
    /// order), sending values as `transport`.
    pub fn new(algorithm: Algorithm, shapes: Vec<Vec<usize>>, transport: Transport) -> Self {
        Self { algorithm, shapes, transport }
    }

    /// The ring of a dense algorithm whose members' updates combine by `robust`: only the
    /// plain mean, since a ring hands every replica the sum and robust modes need each
    /// member's update.
    pub fn for_mean(
        algorithm: Algorithm,
        robust: &crate::robust::Robust,
        params: &crate::params::ParamSet,
        transport: Transport,
    ) -> Option<Self> {
        robust.is_mean().then(|| Self::new(algorithm, params.shapes().to_vec(), transport))
    }

    /// The same ring for a model of `shapes` instead: a ring an optimizer built over a
    /// stand-in model, applied to the real one's shapes (the synthetic simulation).
    pub fn with_shapes(self, shapes: Vec<Vec<usize>>) -> Self {
        Self { shapes, ..self }
    }

    fn numel(&self) -> usize {
        self.shapes.iter().map(|s| s.iter().product::<usize>()).sum()
    }

    /// Cuts this worker's encoded `payload` into `parts` ring segments of (nearly) equal
    /// element counts.
    pub fn split(&self, payload: &[u8], parts: usize) -> Result<Vec<Vec<u8>>> {
        if parts == 0 {
            return Err(bad("a ring of no members"));
        }
        let p = Payload::decode(payload, &self.shapes)?;
        if p.algorithm != self.algorithm {
            return Err(bad(format!("{} payload for a {} ring", p.algorithm, self.algorithm)));
        }
        if p.segments.len() != self.shapes.len() {
            return Err(bad("a ring payload must carry every tensor"));
        }
        let mut flat = Vec::with_capacity(self.numel());
        for s in &p.segments {
            flat.extend(segment_values(s)?);
        }
        let n = flat.len();
        (0..parts)
            .map(|k| {
                let (start, end) = (k * n / parts, (k + 1) * n / parts);
                RingSegment {
                    algorithm: self.algorithm,
                    round: p.round,
                    transport: self.transport,
                    offset: start as u64,
                    values: flat[start..end].to_vec(),
                }
                .encode()
            })
            .collect()
    }

    /// Decodes `received` and checks it matches `own` (algorithm, round, range, encoding).
    fn matching(&self, received: &[u8], own: &[u8]) -> Result<(RingSegment, RingSegment)> {
        let (r, o) = (RingSegment::decode(received)?, RingSegment::decode(own)?);
        if r.algorithm != o.algorithm || r.round != o.round || r.transport != o.transport {
            return Err(bad(format!(
                "{} round {} {:?}, expected {} round {} {:?}",
                r.algorithm, r.round, r.transport, o.algorithm, o.round, o.transport
            )));
        }
        if r.offset != o.offset || r.values.len() != o.values.len() {
            return Err(bad(format!(
                "elements {}+{}, expected {}+{}",
                r.offset,
                r.values.len(),
                o.offset,
                o.values.len()
            )));
        }
        Ok((r, o))
    }

    /// The sum of a received partial sum and this worker's segment at the same range.
    pub fn combine(&self, received: &[u8], own: &[u8]) -> Result<Vec<u8>> {
        let (r, mut o) = self.matching(received, own)?;
        for (x, y) in o.values.iter_mut().zip(&r.values) {
            *x += *y;
        }
        meridian_kernels::error::check_finite("ring partial sum", &o.values)?;
        o.encode()
    }

    /// Checks a finished segment received in the all-gather phase.
    pub fn check(&self, received: &[u8], own: &[u8]) -> Result<()> {
        self.matching(received, own).map(|_| ())
    }

    /// Packs the finished segments, in order, into the aggregate.
    pub fn join(&self, segments: &[&[u8]]) -> Result<Vec<u8>> {
        let mut out = Vec::with_capacity(10 + segments.iter().map(|s| 4 + s.len()).sum::<usize>());
        out.extend_from_slice(AGGREGATE_MAGIC);
        out.extend_from_slice(&AGGREGATE_VERSION.to_le_bytes());
        let count = u32::try_from(segments.len()).map_err(|_| bad("too many segments"))?;
        out.extend_from_slice(&count.to_le_bytes());
        for s in segments {
            let len = u32::try_from(s.len()).map_err(|_| bad("segment over 4 GiB"))?;
            out.extend_from_slice(&len.to_le_bytes());
            out.extend_from_slice(s);
        }
        Ok(out)
    }

    /// The per-tensor sums an aggregate of `round` holds: its segments must cover every
    /// element of the model exactly once, in order.
    pub fn decode_aggregate(&self, bytes: &[u8], round: u64) -> Result<Vec<Vec<f32>>> {
        let bad = |reason: String| OptimizerError::InvalidPayload { worker: u32::MAX, reason };
        let take = |at: &mut usize, n: usize| -> Result<&[u8]> {
            let end = at.checked_add(n).filter(|&e| e <= bytes.len());
            let end = end.ok_or_else(|| bad("truncated ring aggregate".into()))?;
            let slice = &bytes[*at..end];
            *at = end;
            Ok(slice)
        };
        let mut at = 0;
        if take(&mut at, 4)? != AGGREGATE_MAGIC {
            return Err(bad("not a ring aggregate (bad magic)".into()));
        }
        let version = take(&mut at, 2)?;
        let version = u16::from_le_bytes([version[0], version[1]]);
        if version != AGGREGATE_VERSION {
            return Err(bad(format!("ring aggregate version {version}")));
        }
        let c = take(&mut at, 4)?;
        let count = u32::from_le_bytes([c[0], c[1], c[2], c[3]]);
        let mut flat = Vec::with_capacity(self.numel());
        for _ in 0..count {
            let l = take(&mut at, 4)?;
            let len = u32::from_le_bytes([l[0], l[1], l[2], l[3]]) as usize;
            let s = RingSegment::decode(take(&mut at, len)?).map_err(|e| bad(e.to_string()))?;
            if s.algorithm != self.algorithm || s.round != round || s.transport != self.transport {
                return Err(bad(format!(
                    "ring aggregate of {} round {} {:?}, expected {} round {round} {:?}",
                    s.algorithm, s.round, s.transport, self.algorithm, self.transport
                )));
            }
            if s.offset != flat.len() as u64 {
                return Err(bad(format!("segment at {} after {} elements", s.offset, flat.len())));
            }
            flat.extend(s.values);
        }
        if at != bytes.len() {
            return Err(bad(format!("{} trailing bytes", bytes.len() - at)));
        }
        if flat.len() != self.numel() {
            return Err(bad(format!("{} elements for a model of {}", flat.len(), self.numel())));
        }
        let mut rest = flat.as_slice();
        let mut out = Vec::with_capacity(self.shapes.len());
        for shape in &self.shapes {
            let (head, tail) = rest.split_at(shape.iter().product());
            out.push(head.to_vec());
            rest = tail;
        }
        Ok(out)
    }
}

/// The ring schedule over in-memory members, for tests: segment k is summed from member k
/// on, in ring order, as the network's ring does it.
#[cfg(test)]
pub(crate) fn ring_sum(ring: &DenseRing, payloads: &[Vec<u8>]) -> Result<Vec<u8>> {
    let n = payloads.len();
    let parts = payloads.iter().map(|p| ring.split(p, n)).collect::<Result<Vec<_>>>()?;
    let finished = (0..n)
        .map(|k| {
            let mut acc = parts[k][k].clone();
            for step in 1..n {
                acc = ring.combine(&acc, &parts[(k + step) % n][k])?;
            }
            Ok(acc)
        })
        .collect::<Result<Vec<_>>>()?;
    let refs: Vec<&[u8]> = finished.iter().map(Vec::as_slice).collect();
    ring.join(&refs)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::outer::diloco::dense_segment;

    fn shapes() -> Vec<Vec<usize>> {
        vec![vec![3, 5], vec![7], vec![64, 80]]
    }

    fn payload(worker: u32, transport: Transport) -> (Vec<u8>, Vec<Vec<f32>>) {
        let mut values = Vec::new();
        let mut segments = Vec::new();
        for (i, shape) in shapes().iter().enumerate() {
            let n: usize = shape.iter().product();
            let v: Vec<f32> = (0..n)
                .map(|j| ((j * 31 + i * 7 + worker as usize * 13) % 97) as f32 / 17.0 - 2.5)
                .collect();
            segments.push(dense_segment(i as u32, shape, &v, transport).unwrap());
            values.push(v);
        }
        let p = Payload {
            algorithm: Algorithm::Diloco,
            round: 3,
            worker,
            effort: Default::default(),
            segments,
        };
        (p.encode(), values)
    }

    #[test]
    fn the_aggregate_is_the_sum_in_every_transport() {
        for (transport, tolerance) in
            [(Transport::F32, 1e-5), (Transport::Bf16, 0.05), (Transport::Int8, 0.15)]
        {
            let ring = DenseRing::new(Algorithm::Diloco, shapes(), transport);
            let (payloads, values): (Vec<_>, Vec<_>) =
                (0..4).map(|w| payload(w, transport)).unzip();
            let sums = ring.decode_aggregate(&ring_sum(&ring, &payloads).unwrap(), 3).unwrap();
            for (t, sum) in sums.iter().enumerate() {
                for (j, got) in sum.iter().enumerate() {
                    let expected: f32 = values.iter().map(|v| v[t][j]).sum();
                    assert!(
                        (got - expected).abs() <= tolerance * (1.0 + expected.abs()),
                        "{transport:?} tensor {t} value {j}: {got} vs {expected}"
                    );
                }
            }
        }
    }

    #[test]
    fn int8_segments_travel_as_eight_bit_codes() {
        let ring = DenseRing::new(Algorithm::Diloco, shapes(), Transport::Int8);
        let (p, _) = payload(0, Transport::Int8);
        let parts = ring.split(&p, 2).unwrap();
        let elements = 15 + 7 + 64 * 80;
        let bytes: usize = parts.iter().map(Vec::len).sum();
        // One byte per value plus two codebooks and headers: far below f32's four.
        assert!(bytes < elements + 2 * 1100 + 2 * SEGMENT_HEADER, "{bytes}");
    }

    #[test]
    fn mismatched_or_damaged_segments_are_errors() {
        let ring = DenseRing::new(Algorithm::Diloco, shapes(), Transport::F32);
        let (p, _) = payload(0, Transport::F32);
        let parts = ring.split(&p, 3).unwrap();
        assert!(ring.combine(&parts[0], &parts[1]).is_err(), "another range");
        assert!(ring.combine(&parts[0][..parts[0].len() - 4], &parts[0]).is_err(), "short");
        let mut nan = parts[0].clone();
        let at = nan.len() - 4;
        nan[at..].copy_from_slice(&f32::NAN.to_le_bytes());
        assert!(ring.combine(&nan, &parts[0]).is_err(), "non-finite");
        let other = DenseRing::new(Algorithm::Diloco, shapes(), Transport::Bf16);
        let (pb, _) = payload(0, Transport::Bf16);
        assert!(ring.combine(&other.split(&pb, 3).unwrap()[0], &parts[0]).is_err(), "encoding");
        let mut huge = RingSegment::decode(&parts[0]).unwrap();
        huge.values.fill(f32::MAX);
        let huge = huge.encode().unwrap();
        assert!(ring.combine(&huge, &huge).is_err(), "overflow to infinity");
        let refs: Vec<&[u8]> = parts.iter().map(Vec::as_slice).collect();
        let aggregate = ring.join(&refs).unwrap();
        assert!(ring.decode_aggregate(&aggregate, 3).is_ok());
        assert!(ring.decode_aggregate(&aggregate, 4).is_err(), "another round");
        assert!(ring.decode_aggregate(&ring.join(&refs[..2]).unwrap(), 3).is_err(), "missing");
        let swapped = [refs[1], refs[0], refs[2]];
        assert!(ring.decode_aggregate(&ring.join(&swapped).unwrap(), 3).is_err(), "order");
    }
}
