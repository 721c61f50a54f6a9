//! The outer-optimizer interface and what every algorithm shares.
//!
//! An [`OuterOptimizer`] wraps a worker's inner training loop. Per inner step the driver
//! (the in-process [`crate::harness`], or the network runtime) does:
//! 1. zero grads, forward + backward on the worker's batch;
//! 2. if [`OuterOptimizer::exchange_due`] at [`Phase::AfterBackward`]: exchange (below);
//! 3. if [`OuterOptimizer::runs_inner_optimizer`]: the inner optimizer step (AdamW);
//! 4. [`OuterOptimizer::after_inner_step`];
//! 5. if `exchange_due` at [`Phase::AfterInnerStep`]: exchange.
//!
//! An exchange is [`OuterOptimizer::prepare`] on every worker, delivery of the payloads,
//! and [`OuterOptimizer::apply`] on every worker with the committed set. `apply` takes the
//! payloads in any order and uses them in member-id order, so all replicas compute the
//! same bits. Within `apply`: [`admit`] (round, algorithm, duplicates), the algorithm's
//! decoder (shapes, encodings, indices, finiteness), then [`crate::robust::Robust::screen`]
//! (overflow bound, norm clipping or outlier rejection) and the aggregation.

pub mod ddp;
pub mod demo;
pub mod diloco;
pub mod sparseloco;
pub mod streaming;

mod on_device;

use std::collections::BTreeMap;
use std::path::Path;

use tch::{Device, Tensor};

use crate::algorithm::Algorithm;
use crate::error::{OptimizerError, Result};
use crate::params::ParamSet;
use crate::payload::Payload;
use crate::ring::DenseRing;

/// Where in an inner step an exchange happens.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Gradients are computed and the inner optimizer has not stepped (DDP, DeMo).
    AfterBackward,
    /// The inner optimizer has stepped (DiLoCo family).
    AfterInnerStep,
}

/// What [`OuterOptimizer::apply`] did with the payloads it was given.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ApplyReport {
    /// Members whose payloads were applied, ascending.
    pub applied: Vec<u32>,
    /// Members whose payloads were rejected, with the reason, ascending by member.
    pub rejected: Vec<(u32, String)>,
}

/// An outer algorithm driving one worker; see the module doc for the call order.
pub trait OuterOptimizer {
    /// Which algorithm this is (payloads carry it).
    fn algorithm(&self) -> Algorithm;

    /// Whether the wrapped inner optimizer steps after backward. DeMo's outer step
    /// replaces it.
    fn runs_inner_optimizer(&self) -> bool {
        true
    }

    /// Whether an exchange happens at `phase` of inner step `step` (counted from 0).
    fn exchange_due(&self, phase: Phase, step: u64) -> bool;

    /// This worker's payload for `round`.
    fn prepare(&mut self, params: &ParamSet, round: u64, worker: u32) -> Result<Payload>;

    /// Applies the committed members' payloads for `round`, in member-id order whatever
    /// the order given. Payloads that fail validation (another algorithm or round, a
    /// duplicate member, bad contents) are rejected and reported; the rest are combined as
    /// the algorithm's `aggregation` setting says ([`crate::robust`]: the mean, or a robust
    /// mode that may clip them or reject outliers, also reported) and applied.
    fn apply(&mut self, params: &ParamSet, round: u64, payloads: &[Payload])
        -> Result<ApplyReport>;

    /// How this algorithm's payloads add up in a ring all-reduce, or `None` when they do
    /// not (the sparse algorithms: top-k payloads are not dense sums; and any algorithm
    /// under a robust `aggregation`, which needs every member's update, not their sum), in
    /// which case runs must use relay or all-gather.
    fn ring(&self, _params: &ParamSet) -> Option<DenseRing> {
        None
    }

    /// Applies round `round` from a ring aggregate: the sum of the payloads of `members`
    /// (ascending), as [`DenseRing::join`] packed it. Every replica gets the same bytes and
    /// computes the same bits. An aggregate that does not decode is rejected for every
    /// member (the round then applies as if nobody delivered), the same on every replica.
    fn apply_aggregate(
        &mut self,
        _params: &ParamSet,
        _round: u64,
        _members: &[u32],
        _aggregate: &[u8],
    ) -> Result<ApplyReport> {
        Err(OptimizerError::Config(format!(
            "{} payloads cannot be summed by a ring; use the relay or all-gather topology",
            self.algorithm()
        )))
    }

    /// Hook after every inner step (Streaming DiLoCo merges delayed fragments here).
    fn after_inner_step(&mut self, _params: &ParamSet, _step: u64) -> Result<()> {
        Ok(())
    }

    /// Hash of what every replica must agree on after an exchange. By default the
    /// parameters themselves; an algorithm that keeps part of them local between syncs
    /// (Streaming DiLoCo) hashes its global copy instead.
    fn consensus_hash(&self, params: &ParamSet) -> Result<u64> {
        params.hash()
    }

    /// The optimizer's state, to checkpoint.
    fn state(&self) -> Result<OptimizerState>;

    /// Restores state produced by [`OuterOptimizer::state`] of the same algorithm and model.
    fn load_state(&mut self, params: &ParamSet, state: &OptimizerState) -> Result<()>;
}

/// Named tensors plus the algorithm they belong to: everything an outer optimizer needs to
/// resume. Stored as safetensors; scalars are 0-d f64 tensors.
#[derive(Debug)]
pub struct OptimizerState {
    /// The algorithm that wrote it.
    pub algorithm: Algorithm,
    /// State tensors by name.
    pub tensors: BTreeMap<String, Tensor>,
}

const ALGORITHM_KEY: &str = "__algorithm";

impl OptimizerState {
    /// An empty state for `algorithm`.
    pub fn new(algorithm: Algorithm) -> Self {
        Self { algorithm, tensors: BTreeMap::new() }
    }

    /// Adds a detached copy of `t` under `name`, on `t`'s device (a GPU optimizer's state
    /// reaches the host only when it is written or sent: [`OptimizerState::to_bytes`]).
    pub fn put(&mut self, name: impl Into<String>, t: &Tensor) {
        self.tensors.insert(name.into(), t.detach().copy());
    }

    /// Adds `t` itself under `name`, not a copy: for state encoded at once, while nothing
    /// changes `t`.
    pub fn share(&mut self, name: impl Into<String>, t: &Tensor) {
        self.tensors.insert(name.into(), t.detach());
    }

    /// [`OptimizerState::share`] of one tensor per parameter, under the names
    /// [`OptimizerState::put_per_tensor`] uses.
    pub fn share_per_tensor(&mut self, key: &str, tensors: &[Tensor]) {
        for (i, t) in tensors.iter().enumerate() {
            self.share(format!("{key}.{i}"), t);
        }
    }

    /// Adds a scalar under `name`.
    pub fn put_scalar(&mut self, name: impl Into<String>, v: f64) {
        self.tensors.insert(name.into(), Tensor::from(v));
    }

    /// The tensor stored under `name`, or an error naming it.
    pub fn get(&self, name: &str) -> Result<&Tensor> {
        self.tensors.get(name).ok_or_else(|| OptimizerError::State(format!("missing {name}")))
    }

    /// The scalar stored under `name`.
    pub fn get_scalar(&self, name: &str) -> Result<f64> {
        Ok(self.get(name)?.f_double_value(&[])?)
    }

    /// Saves one tensor per parameter as `{key}.0` … `{key}.{n−1}` (read back with
    /// [`OptimizerState::per_tensor`]).
    pub fn put_per_tensor(&mut self, key: &str, tensors: &[Tensor]) {
        for (i, t) in tensors.iter().enumerate() {
            self.put(format!("{key}.{i}"), t);
        }
    }

    /// The per-tensor state saved as `{key}.0` … `{key}.{n−1}` for the model's `n`
    /// parameters: contiguous copies on the parameters' device, each checked for the
    /// parameter's shape and for finite values, so a corrupt checkpoint is refused before
    /// anything is replaced.
    pub fn per_tensor(&self, key: &str, params: &ParamSet) -> Result<Vec<Tensor>> {
        let tensors: Vec<Tensor> = (0..params.len())
            .map(|i| self.get(&format!("{key}.{i}")).map(|t| t.contiguous().copy()))
            .collect::<Result<_>>()?;
        params.check_matches(&tensors).map_err(|e| OptimizerError::State(format!("{key}: {e}")))?;
        for (i, t) in tensors.iter().enumerate() {
            crate::view::with_host_f32(&params.names()[i], t, |v| {
                meridian_kernels::error::check_finite("optimizer state", v)
            })?
            .map_err(|e| OptimizerError::State(format!("{key}.{i}: {e}")))?;
        }
        tensors.into_iter().map(|t| Ok(t.f_to_device(params.device())?)).collect()
    }

    /// Checks the state was written by `algorithm`.
    pub fn expect_algorithm(&self, algorithm: Algorithm) -> Result<()> {
        if self.algorithm == algorithm {
            Ok(())
        } else {
            Err(OptimizerError::State(format!(
                "written by {}, cannot resume {algorithm}",
                self.algorithm
            )))
        }
    }

    /// The state as safetensors bytes (what a worker sends a peer that is catching up).
    /// Tensors must be f32 or f64, on any device (each is copied to the host once).
    pub fn to_bytes(&self) -> Result<Vec<u8>> {
        let mut owned: Vec<(String, safetensors::Dtype, Vec<usize>, Vec<u8>)> = Vec::new();
        let tag = Tensor::from(f64::from(self.algorithm.tag()));
        for (name, t) in
            self.tensors.iter().chain(std::iter::once((&ALGORITHM_KEY.to_string(), &tag)))
        {
            let t = t.contiguous();
            let shape: Vec<usize> = t.size().iter().map(|&d| d as usize).collect();
            let (dtype, bytes) = match t.kind() {
                tch::Kind::Float => {
                    let v = Vec::<f32>::try_from(t.flatten(0, -1))?;
                    (safetensors::Dtype::F32, bytemuck::cast_slice(&v).to_vec())
                }
                tch::Kind::Double => {
                    let v = Vec::<f64>::try_from(t.flatten(0, -1))?;
                    (safetensors::Dtype::F64, bytemuck::cast_slice(&v).to_vec())
                }
                other => {
                    return Err(OptimizerError::State(format!(
                        "{name}: {other:?} is not f32 or f64"
                    )))
                }
            };
            owned.push((name.clone(), dtype, shape, bytes));
        }
        let views = owned
            .iter()
            .map(|(name, dtype, shape, bytes)| {
                safetensors::tensor::TensorView::new(*dtype, shape.clone(), bytes)
                    .map(|v| (name.clone(), v))
                    .map_err(|e| OptimizerError::State(format!("{name}: {e:?}")))
            })
            .collect::<Result<Vec<_>>>()?;
        safetensors::tensor::serialize(views, &None)
            .map_err(|e| OptimizerError::State(format!("serializing: {e:?}")))
    }

    /// Reads bytes written by [`OptimizerState::to_bytes`]; anything else is an error.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self> {
        let st = safetensors::SafeTensors::deserialize(bytes)
            .map_err(|e| OptimizerError::State(format!("not a state: {e:?}")))?;
        let mut tensors = BTreeMap::new();
        for (name, view) in st.tensors() {
            let dims: Vec<i64> = view.shape().iter().map(|&d| d as i64).collect();
            let data = view.data();
            let t = match view.dtype() {
                // Copy out through `from_le_bytes`: the bytes need not be aligned.
                safetensors::Dtype::F32 => Tensor::from_slice(
                    &data
                        .chunks_exact(4)
                        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                        .collect::<Vec<_>>(),
                ),
                safetensors::Dtype::F64 => Tensor::from_slice(
                    &data
                        .chunks_exact(8)
                        .map(|c| {
                            f64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]])
                        })
                        .collect::<Vec<_>>(),
                ),
                other => {
                    return Err(OptimizerError::State(format!(
                        "{name}: unsupported dtype {other:?}"
                    )))
                }
            };
            tensors.insert(name, t.f_reshape(dims.as_slice())?);
        }
        let tag = tensors
            .remove(ALGORITHM_KEY)
            .ok_or_else(|| OptimizerError::State("state has no algorithm tag".into()))?
            .f_double_value(&[])?;
        let algorithm = u8::try_from(tag as i64)
            .ok()
            .and_then(Algorithm::from_tag)
            .ok_or_else(|| OptimizerError::State(format!("unknown algorithm tag {tag}")))?;
        Ok(Self { algorithm, tensors })
    }

    /// Writes the state as a safetensors file.
    pub fn save(&self, path: &Path) -> Result<()> {
        let mut named: Vec<(String, Tensor)> =
            self.tensors.iter().map(|(k, v)| (k.clone(), v.shallow_clone())).collect();
        named.push((ALGORITHM_KEY.into(), Tensor::from(f64::from(self.algorithm.tag()))));
        Tensor::write_safetensors(&named, path)?;
        Ok(())
    }

    /// Reads a state written by [`OptimizerState::save`].
    pub fn load(path: &Path) -> Result<Self> {
        let mut tensors: BTreeMap<String, Tensor> =
            Tensor::read_safetensors(path)?.into_iter().collect();
        let tag = tensors
            .remove(ALGORITHM_KEY)
            .ok_or_else(|| {
                OptimizerError::State(format!("{} has no algorithm tag", path.display()))
            })?
            .f_double_value(&[])?;
        let algorithm = u8::try_from(tag as i64)
            .ok()
            .and_then(Algorithm::from_tag)
            .ok_or_else(|| OptimizerError::State(format!("unknown algorithm tag {tag}")))?;
        Ok(Self { algorithm, tensors })
    }
}

/// Splits `payloads` into those fit to apply, sorted by member id, and rejections: another
/// algorithm, another round, or a member id that appears more than once (all copies are
/// rejected, so the outcome does not depend on arrival order).
pub fn admit(
    algorithm: Algorithm,
    round: u64,
    payloads: &[Payload],
) -> (Vec<&Payload>, Vec<(u32, String)>) {
    let mut counts: BTreeMap<u32, usize> = BTreeMap::new();
    for p in payloads {
        *counts.entry(p.worker).or_default() += 1;
    }
    let mut ok = Vec::new();
    let mut rejected = Vec::new();
    for p in payloads {
        if counts[&p.worker] > 1 {
            rejected.push((p.worker, "more than one payload from this member".to_string()));
        } else if p.algorithm != algorithm {
            rejected.push((p.worker, format!("{} payload offered to {algorithm}", p.algorithm)));
        } else if p.round != round {
            rejected
                .push((p.worker, format!("payload for round {}, applying round {round}", p.round)));
        } else {
            ok.push(p);
        }
    }
    ok.sort_by_key(|p| p.worker);
    rejected.sort_by(|a, b| a.0.cmp(&b.0).then_with(|| a.1.cmp(&b.1)));
    rejected.dedup();
    (ok, rejected)
}

/// The error for a ring aggregate offered to an algorithm whose robust aggregation needs
/// every member's own update.
pub fn ring_refused(algo: &str, robust: &crate::robust::Robust) -> OptimizerError {
    OptimizerError::Config(format!(
        "{algo}: aggregation = \"{}\" needs every member's update, which a ring all-reduce does \
         not deliver; use the relay or all-gather topology, or aggregation = \"mean\"",
        robust.aggregation
    ))
}

/// Rejected payloads: the member and why.
pub type Rejections = Vec<(u32, String)>;

/// Decodes each admitted payload with `decode`; a payload it refuses joins `rejected` with
/// the reason. Returns the decoded members in member-id order and every rejection sorted
/// by member, so the outcome is the same on every replica.
pub fn decode_admitted<T>(
    admitted: Vec<&Payload>,
    mut rejected: Rejections,
    mut decode: impl FnMut(&Payload) -> std::result::Result<T, String>,
) -> (Vec<(u32, T)>, Rejections) {
    let mut members = Vec::with_capacity(admitted.len());
    for p in admitted {
        match decode(p) {
            Ok(v) => members.push((p.worker, v)),
            Err(reason) => rejected.push((p.worker, reason)),
        }
    }
    rejected.sort_by(|a, b| a.0.cmp(&b.0).then_with(|| a.1.cmp(&b.1)));
    (members, rejected)
}

/// The per-tensor means of a ring aggregate for `members`, or every member rejected with
/// the reason the aggregate does not decode.
pub fn aggregate_means(
    ring: &DenseRing,
    round: u64,
    members: &[u32],
    aggregate: &[u8],
) -> std::result::Result<Vec<Vec<f32>>, Rejections> {
    if members.is_empty() {
        return Err(Vec::new());
    }
    let count = members.len() as f32;
    match ring.decode_aggregate(aggregate, round) {
        Ok(mut sums) => {
            for v in sums.iter_mut().flatten() {
                *v /= count;
            }
            Ok(sums)
        }
        Err(e) => Err(members.iter().map(|&m| (m, e.to_string())).collect()),
    }
}

/// Builds a tensor of `shape` from `values` (f32, CPU).
pub fn tensor_from(values: &[f32], shape: &[usize]) -> Tensor {
    let dims: Vec<i64> = shape.iter().map(|&d| d as i64).collect();
    Tensor::from_slice(values).reshape(dims.as_slice())
}

/// Builds a tensor of `shape` from host `values` on `device` (one upload when that is a
/// GPU): how a decoded aggregate reaches the parameters it updates.
pub fn tensor_on(values: &[f32], shape: &[usize], device: Device) -> Result<Tensor> {
    let t = tensor_from(values, shape);
    if device == Device::Cpu {
        return Ok(t);
    }
    Ok(t.f_to_device(device)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::payload::Segment;

    fn p(worker: u32, round: u64, algorithm: Algorithm) -> Payload {
        Payload { algorithm, round, worker, segments: vec![Segment::dense(0, &[1], &[1.0], false)] }
    }

    #[test]
    fn admit_sorts_and_rejects_deterministically() {
        let given = vec![
            p(3, 5, Algorithm::Diloco),
            p(1, 5, Algorithm::Diloco),
            p(2, 4, Algorithm::Diloco),
            p(4, 5, Algorithm::Demo),
            p(7, 5, Algorithm::Diloco),
            p(7, 5, Algorithm::Diloco),
        ];
        let (ok, rejected) = admit(Algorithm::Diloco, 5, &given);
        assert_eq!(ok.iter().map(|p| p.worker).collect::<Vec<_>>(), vec![1, 3]);
        assert_eq!(rejected.iter().map(|r| r.0).collect::<Vec<_>>(), vec![2, 4, 7]);
        let mut reversed = given.clone();
        reversed.reverse();
        let (ok2, rejected2) = admit(Algorithm::Diloco, 5, &reversed);
        assert_eq!(ok, ok2);
        assert_eq!(rejected, rejected2);
    }

    #[test]
    fn state_round_trips_through_a_file() {
        let dir = std::env::temp_dir().join(format!("meridian-state-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("s.safetensors");
        let mut s = OptimizerState::new(Algorithm::Sparseloco);
        s.put("m.0", &Tensor::from_slice(&[1.0f32, -2.0]));
        s.put_scalar("round", 12.0);
        s.save(&path).unwrap();
        let back = OptimizerState::load(&path).unwrap();
        assert_eq!(back.algorithm, Algorithm::Sparseloco);
        assert_eq!(back.get_scalar("round").unwrap(), 12.0);
        assert_eq!(Vec::<f32>::try_from(back.get("m.0").unwrap()).unwrap(), vec![1.0, -2.0]);
        assert!(back.expect_algorithm(Algorithm::Diloco).is_err());
        assert!(back.get("missing").is_err());
        let bytes = s.to_bytes().unwrap();
        let again = OptimizerState::from_bytes(&bytes).unwrap();
        assert_eq!(again.algorithm, Algorithm::Sparseloco);
        assert_eq!(again.get_scalar("round").unwrap(), 12.0);
        assert!(again.get("m.0").unwrap().equal(s.get("m.0").unwrap()));
        assert!(OptimizerState::from_bytes(&bytes[..bytes.len() - 1]).is_err());
        assert!(OptimizerState::from_bytes(b"garbage").is_err());
        std::fs::write(&path, b"not safetensors").unwrap();
        assert!(OptimizerState::load(&path).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    proptest::proptest! {
        #[test]
        fn state_bytes_never_panic_on_corruption(flips in proptest::collection::vec((0usize..4096, 0u8..8), 1..8), cut in 0usize..4096) {
            let mut s = OptimizerState::new(Algorithm::Diloco);
            s.put("m.0", &Tensor::from_slice(&[1.0f32, -2.0, 3.0]));
            s.put_scalar("round", 3.0);
            let mut bytes = s.to_bytes().unwrap();
            let n = bytes.len();
            for (at, bit) in flips {
                bytes[at % n] ^= 1 << bit;
            }
            let _ = OptimizerState::from_bytes(&bytes);
            let _ = OptimizerState::from_bytes(&bytes[..cut.min(n)]);
        }
    }
}
