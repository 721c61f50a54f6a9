//! What a synthetic worker does with a committed round's payloads: everything a real
//! worker does before it touches its model. Each payload is decoded against the model's
//! shapes (header, segment order, shapes, lengths, trailing bytes), admitted (algorithm,
//! round, one per member), checked to carry exactly the tensors due (every tensor, or
//! Streaming DiLoCo's fragment) in the encodings the algorithm takes, and every segment is
//! decoded in full by the algorithm's decoder (top-k indices in range, quantized codes
//! and scales, finiteness), one segment at a time, its values dropped at once. What it
//! skips is what needs the dense model: the mean, the outer step, the parameters.

use std::collections::BTreeMap;

use anyhow::Result;
use bytes::Bytes;
use meridian_kernels::pipeline::Compressor;
use meridian_optimizer::config::AlgoConfig;
use meridian_optimizer::outer::admit;
use meridian_optimizer::outer::diloco::{segment_values, DENSE_ENCODINGS};
use meridian_optimizer::payload::{Effort, Encoding, Payload};

/// One algorithm's receive checks for a synthetic model.
pub struct Receiver {
    algo: AlgoConfig,
    shapes: Vec<Vec<usize>>,
    /// Per tensor, the decoder of a compressed segment (the sparse algorithms).
    compressors: Option<Vec<Compressor>>,
}

/// One committed round as a worker checked it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checked {
    /// Members whose payloads passed every check, ascending.
    pub accepted: Vec<u32>,
    /// Members whose payloads failed one, ascending.
    pub rejected: Vec<u32>,
    /// A hash of the committed bytes in member order: every replica must see the same.
    pub hash: u64,
    /// What the accepted members stated they trained (balancing sizes shares by it).
    pub efforts: Vec<Effort>,
}

impl Receiver {
    /// The checks of `algo`'s payloads for a model of `shapes`.
    pub fn new(algo: &AlgoConfig, shapes: &[Vec<usize>]) -> Result<Self> {
        let compressors = match algo.settings().payload_compressor()? {
            Some(config) => Some(
                shapes
                    .iter()
                    .map(|shape| Compressor::new(config, shape))
                    .collect::<std::result::Result<Vec<_>, _>>()?,
            ),
            None => None,
        };
        Ok(Self { algo: algo.clone(), shapes: shapes.to_vec(), compressors })
    }

    /// Checks round `round`'s committed `payloads` (member, bytes); `tensors` are the
    /// tensors its payloads must carry (`None`: every one).
    pub fn check(
        &self,
        round: u64,
        tensors: Option<&[usize]>,
        payloads: &[(u32, Bytes)],
    ) -> Checked {
        let mut hasher = xxhash_rust::xxh3::Xxh3::new();
        hasher.update(&round.to_le_bytes());
        let mut verdicts = BTreeMap::new();
        let mut efforts = BTreeMap::new();
        for (member, bytes) in payloads {
            hasher.update(&member.to_le_bytes());
            hasher.update(&(bytes.len() as u64).to_le_bytes());
            hasher.update(bytes);
            // One payload decoded at a time: its copy is dropped before the next.
            let ok = match Payload::decode(bytes, &self.shapes) {
                Ok(p) if p.worker == *member => {
                    efforts.insert(*member, p.effort);
                    self.admissible(round, tensors, &p)
                }
                Ok(_) | Err(_) => false,
            };
            verdicts.insert(*member, ok);
        }
        let (accepted, rejected) = verdicts.iter().partition::<Vec<_>, _>(|(_, &ok)| ok);
        let accepted: Vec<u32> = accepted.into_iter().map(|(m, _)| *m).collect();
        Checked {
            efforts: accepted.iter().filter_map(|m| efforts.get(m).copied()).collect(),
            accepted,
            rejected: rejected.into_iter().map(|(m, _)| *m).collect(),
            hash: hasher.digest(),
        }
    }

    /// Whether a decoded payload passes admission, the segment checks and its decoder.
    fn admissible(&self, round: u64, tensors: Option<&[usize]>, p: &Payload) -> bool {
        let (ok, _) = admit(self.algo.algorithm(), round, std::slice::from_ref(p));
        if ok.is_empty() {
            return false;
        }
        let allowed: &[Encoding] = match self.compressors {
            Some(_) => &[Encoding::Compressed],
            None => &DENSE_ENCODINGS,
        };
        if p.check_segments(tensors, &self.shapes, allowed).is_err() {
            return false;
        }
        p.segments.iter().all(|s| match &self.compressors {
            Some(c) => c.get(s.tensor as usize).is_some_and(|c| c.decode_sparse(&s.body).is_ok()),
            None => segment_values(s).is_ok(),
        })
    }
}

#[cfg(test)]
#[cfg_attr(test, allow(clippy::unwrap_used))]
mod tests {
    use super::super::model::{SyntheticModel, MIN_PARAMS};
    use super::super::payload::encode;
    use super::*;
    use meridian_optimizer::Algorithm;

    #[test]
    fn valid_payloads_pass_and_damaged_ones_are_rejected() {
        let model = SyntheticModel::new(MIN_PARAMS).unwrap();
        for a in [Algorithm::Sparseloco, Algorithm::Diloco] {
            let algo = AlgoConfig::default_for(a);
            let payloads = encode(&algo, &model, 3, 1).unwrap();
            let receiver = Receiver::new(&algo, &model.shapes).unwrap();
            let make = |worker: u32, round: u64| {
                let p = Payload { worker, round, ..payloads.encodings[0][0].clone() };
                Bytes::from(p.encode())
            };
            let good = vec![(0, make(0, 5)), (1, make(1, 5))];
            let checked = receiver.check(5, None, &good);
            assert_eq!((checked.accepted, checked.rejected), (vec![0, 1], vec![]), "{a}");
            // Another round's payload, and one whose last body byte was cut off.
            let mut cut = make(1, 5).to_vec();
            cut.pop();
            let bad = vec![(0, make(0, 4)), (1, Bytes::from(cut))];
            assert_eq!(receiver.check(5, None, &bad).rejected, vec![0, 1], "{a}");
            // Every replica hashes the same commit the same, and another commit otherwise.
            assert_eq!(receiver.check(5, None, &good).hash, checked.hash);
            assert_ne!(receiver.check(5, None, &bad).hash, checked.hash);
        }
    }
}
