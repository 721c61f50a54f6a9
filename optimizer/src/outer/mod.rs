//! The outer-optimizer interface and what every algorithm shares.
//!
//! An [`OuterOptimizer`] wraps a worker's inner training loop. Per inner step the driver
//! (the in-process [`crate::harness`], or the network runtime) does:
//! 1. zero grads, forward + backward on the worker's batch;
//! 2. if [`OuterOptimizer::exchange_due`] at [`Phase::AfterBackward`]: exchange (below);
//! 3. if [`OuterOptimizer::runs_inner_optimizer`]: the inner optimizer step (AdamW);
//! 4. if `exchange_due` at [`Phase::AfterInnerStep`]: exchange.
//!
//! An exchange is [`OuterOptimizer::prepare`] on every worker, delivery of the payloads,
//! and [`OuterOptimizer::apply`] on every worker with the committed set. `apply` takes the
//! payloads in any order and uses them in member-id order, so all replicas compute the
//! same bits. Within `apply`, every algorithm takes its payloads through the one receive
//! path, [`receive`]: [`admit`] (round, algorithm, duplicates), the algorithm's decoder
//! (shapes, encodings, indices, finiteness), then [`crate::robust::Robust::screen`]
//! (overflow bound, norm clipping or outlier rejection); then it aggregates what is left.
//! Rejected members are reported with a typed [`Rejection`].
//!
//! With [`OuterOptimizer::overlap`] τ > 0 an exchange is split: the payload is prepared and
//! published where the exchange is due (the round *launches*), and the committed set is
//! applied τ inner steps later, at the same phase (it *lands*), while training goes on in
//! between (module `overlap`).
//!
//! Also here: [`OptimizerState`], what an optimizer checkpoints (module `state`).

pub mod ddp;
pub mod demo;
pub mod diloco;
pub mod sparseloco;
pub mod streaming;

pub mod overlap;
pub mod schedule;

mod on_device;
mod receive;
mod state;

use tch::{Device, Tensor};

use crate::algorithm::Algorithm;
use crate::divergence::Suspect;
use crate::error::{OptimizerError, Result};
use crate::params::ParamSet;
use crate::payload::Payload;
use crate::ring::DenseRing;

pub use crate::rejection::{Rejection, Rejections};
pub use receive::{admit, receive, receive_aggregate, Received};
pub use state::OptimizerState;

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
    pub rejected: Rejections,
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

    /// Inner steps between a round's launch (its payload prepared and published) and its
    /// landing (the committed payloads applied, at the same phase of that later step):
    /// the algorithm's `overlap` setting. 0, the default, applies a round where it is
    /// prepared. At most one round is in flight: a round due at the step it would land
    /// launches after it lands.
    fn overlap(&self) -> u64 {
        0
    }

    /// Whether the algorithm's `balance` setting is on: a worker trains a share of the
    /// inner steps sized to its pace, and members' updates count by the steps they trained
    /// ([`crate::balance`]). Off by default, and for the algorithms that exchange every step.
    fn balance(&self) -> bool {
        false
    }

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

    /// Hash of what every replica must agree on after an exchange. By default the
    /// parameters themselves; an algorithm that keeps part of them local between syncs
    /// (Streaming DiLoCo) hashes its global copy instead.
    fn consensus_hash(&self, params: &ParamSet) -> Result<u64> {
        params.hash()
    }

    /// The model every replica agrees on, when it is not the worker's own parameters:
    /// Streaming DiLoCo's global copy (its local fragments differ between syncs). `None`
    /// (the default) means the parameters themselves, which every replica holds bit for
    /// bit right after an exchange. What a report evaluates as "the synchronized model".
    fn consensus_params(&self) -> Option<&[Tensor]> {
        None
    }

    /// The settings of this algorithm that can make training diverge (its learning rate),
    /// with their published values, for the error that stops a diverged run
    /// ([`crate::divergence`]). None by default.
    fn divergence_suspects(&self) -> Vec<Suspect> {
        Vec::new()
    }

    /// The optimizer's state, to checkpoint.
    fn state(&self) -> Result<OptimizerState>;

    /// Restores state produced by [`OuterOptimizer::state`] of the same algorithm and model.
    fn load_state(&mut self, params: &ParamSet, state: &OptimizerState) -> Result<()>;
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
