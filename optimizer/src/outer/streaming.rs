//! Streaming DiLoCo (Douillard et al. 2025, "Streaming DiLoCo with overlapping
//! communication"): DiLoCo whose parameters are split into F fragments, each synced every H
//! inner steps on a staggered schedule, so one exchange carries about 1/F of the model and
//! the peak bandwidth drops by F. Values travel in 4 bits (or 8), the mean is accumulated in
//! f32, and the merge into the local model can be delayed by τ inner steps to overlap the
//! exchange with training.
//!
//! # Fragments
//! Tensor `i` of the canonical (name-sorted) order belongs to fragment `i % F`. The paper
//! groups transformer blocks strided across depth (block `b` in fragment `b % F`), which
//! trained slightly better than contiguous groups; striding over tensors is the same idea at
//! the granularity this crate sees, needs no knowledge of the architecture, and every replica
//! computes it from the shared canonical order. Every fragment must be non-empty, so F is at
//! most the number of tensors.
//!
//! # Schedule
//! Fragment `p` has offset `o_p = ⌊p·H/F⌋` and is exchanged after inner step `s` when
//! `(s + 1 + o_p) mod H = 0`. Offsets are distinct (F ≤ H), so an exchange carries exactly one
//! fragment, exchanges are ⌊H/F⌋ or ⌈H/F⌉ steps apart, and each fragment is exchanged once in
//! every window of H steps. The schedule is a pure function of the step, so every replica
//! syncs fragments in the same order (a mismatch would deadlock a collective).
//!
//! # One exchange of fragment p (after inner step s)
//! ```text
//! send   Δ_p = θ_global_p − θ_local_p            (4-bit absmax or 8-bit codebook values)
//! apply  Δ̄_p = mean over members in member-id order, f32 accumulation
//!        θ_global_p ← Nesterov SGD(θ_global_p, Δ̄_p; lr, μ)
//! merge  at step s + τ (immediately if τ = 0):
//!        θ_local_p ← lerp(θ_global_p, θ_local_p, α) = θ_global_p + α·(θ_local_p − θ_global_p)
//! ```
//! Between the exchange and the merge the local model keeps training on fragment p; the merge
//! mixes those τ steps of local progress with the new global value.
//!
//! # What replicas agree on
//! θ_global and the outer momentum are bit-identical on every worker after every exchange:
//! each is updated from the same decoded payloads in the same order. The local parameters
//! are not: between syncs each worker trains on its own shard, and with α > 0 the merge keeps
//! part of that local state. [`Streaming::global`] exposes the agreed state for checks.

use meridian_kernels::quant::QuantConfig;
use serde::{Deserialize, Serialize};
use tch::Tensor;

use super::diloco::{
    dense_segment, quantized_segment, segment_values, sgd_momentum_step, Transport, DENSE_ENCODINGS,
};
use super::{
    admit, decode_admitted, tensor_on, ApplyReport, OptimizerState, OuterOptimizer, Phase,
};
use crate::algorithm::Algorithm;
use crate::error::{OptimizerError, Result};
use crate::params::{hash_tensors, ParamSet};
use crate::payload::{Payload, Segment};
use crate::robust::{
    Aggregation, Robust, DEFAULT_MIN_COSINE, DEFAULT_OUTLIER_FACTOR, DEFAULT_TRIM,
};
use crate::view::with_host_f32;

/// Streaming DiLoCo's settings.
///
/// Sources of the defaults:
/// - `inner_steps` H = 100: the synchronization period of the 1B bandwidth comparison in
///   the paper (data parallel vs DiLoCo H = 100 vs Streaming DiLoCo with overlap and FP4).
/// - `mixing` α = 0.5: the paper's merge of the outer-optimized fragment with the local one.
/// - `value_bits` = 4: the paper sends outer gradients in 4-bit floating point and
///   accumulates in f32; here the 4 bits are blockwise absmax integers
///   (`QuantConfig::int4`, blocks of 128), the 4-bit format the kernels provide.
/// - `outer_lr` 0.7 and Nesterov `momentum` 0.9: DiLoCo's outer optimizer, which Streaming
///   DiLoCo keeps.
/// - `fragments` F = 4 and `overlap` τ = 5: this crate's choices, not numbers taken from
///   the paper. The paper builds each fragment from a few transformer blocks, so its F
///   follows the depth; 4 keeps every fragment non-empty on small models. The paper sweeps
///   τ; 5 hides an exchange behind five inner steps and stays well below H/F = 25.
///   (torchft's implementation calls τ `fragment_sync_delay` and α
///   `fragment_update_alpha`, defaulting both to 0.)
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StreamingConfig {
    /// Inner steps between two syncs of the same fragment (H).
    pub inner_steps: u64,
    /// Number of fragments (F), 1 ≤ F ≤ H and at most the number of tensors.
    pub fragments: u64,
    /// Inner steps between a fragment's exchange and its merge into the local model (τ),
    /// τ < H/F so the merge lands before the next exchange.
    pub overlap: u64,
    /// Weight α of the local parameters in the merge, in [0, 1]: 0 adopts the global
    /// fragment as DiLoCo does, 1 ignores it.
    pub mixing: f64,
    /// Outer learning rate.
    pub outer_lr: f64,
    /// Outer Nesterov momentum.
    pub momentum: f64,
    /// Bits per value on the wire: 4 (absmax int4) or 8 (INTELLECT-1-style int8 codebook).
    pub value_bits: u32,
    /// How members' fragment updates are combined: `mean` (default, the paper),
    /// `clip_median`, `trimmed_mean` or `reject_outliers` (see [`crate::robust`]). Norms
    /// are those of the fragment exchanged in the round.
    pub aggregation: Aggregation,
    /// Under `trimmed_mean`, the fraction of members dropped at each end of every
    /// coordinate (default 0.125).
    pub trim: f64,
    /// Under `reject_outliers`, how many times the round's median norm a member's fragment
    /// update may reach (default 3).
    pub outlier_factor: f64,
    /// Under `reject_outliers`, the lowest cosine similarity a member's update may have
    /// with the sum of the others' (default 0: a sign flip is rejected; −1 turns it off).
    pub min_cosine: f64,
}

impl Default for StreamingConfig {
    fn default() -> Self {
        Self {
            inner_steps: 100,
            fragments: 4,
            overlap: 5,
            mixing: 0.5,
            outer_lr: 0.7,
            momentum: 0.9,
            value_bits: 4,
            aggregation: Aggregation::Mean,
            trim: DEFAULT_TRIM,
            outlier_factor: DEFAULT_OUTLIER_FACTOR,
            min_cosine: DEFAULT_MIN_COSINE,
        }
    }
}

impl StreamingConfig {
    /// Checks every value is in range: H ≥ 1, 1 ≤ F ≤ H, τ < H/F, α ∈ [0, 1], outer lr > 0,
    /// momentum ∈ [0, 1), bits ∈ {4, 8}.
    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(OptimizerError::Config(format!("streaming: {m}")));
        if self.inner_steps == 0 {
            return bad("inner_steps (H) must be at least 1".into());
        }
        if self.fragments == 0 || self.fragments > self.inner_steps {
            return bad(format!(
                "fragments (F) {} must be in 1..={} (H): one fragment per exchange",
                self.fragments, self.inner_steps
            ));
        }
        // τ < H/F without rounding: τ·F < H.
        if u128::from(self.overlap) * u128::from(self.fragments) >= u128::from(self.inner_steps) {
            return bad(format!(
                "overlap (τ) {} must be below H/F = {}/{}",
                self.overlap, self.inner_steps, self.fragments
            ));
        }
        if !(0.0..=1.0).contains(&self.mixing) {
            return bad(format!("mixing (α) {} must be in [0, 1]", self.mixing));
        }
        if !(self.outer_lr.is_finite() && self.outer_lr > 0.0) {
            return bad(format!("outer_lr {} must be > 0", self.outer_lr));
        }
        if !(0.0..1.0).contains(&self.momentum) {
            return bad(format!("momentum {} must be in [0, 1)", self.momentum));
        }
        if !matches!(self.value_bits, 4 | 8) {
            return bad(format!("value_bits {} must be 4 or 8", self.value_bits));
        }
        self.robust().validate("streaming", true)
    }

    /// The robust-aggregation settings.
    pub fn robust(&self) -> Robust {
        Robust {
            aggregation: self.aggregation,
            trim: self.trim,
            outlier_factor: self.outlier_factor,
            min_cosine: self.min_cosine,
        }
    }

    /// The fragment tensor `tensor` (canonical index) belongs to: `tensor % F`.
    pub fn fragment_of(&self, tensor: usize) -> usize {
        // max(1): an unvalidated F = 0 gives fragment 0 instead of a division by zero.
        tensor % self.fragments.max(1) as usize
    }

    /// Fragment `p`'s offset in the H-step cycle: ⌊p·H/F⌋.
    pub fn offset(&self, fragment: usize) -> u64 {
        let o = u128::from(fragment as u64) * u128::from(self.inner_steps)
            / u128::from(self.fragments.max(1));
        o as u64
    }

    /// The fragment exchanged after inner step `step`, if any: the `p` with
    /// `(step + 1 + ⌊p·H/F⌋) mod H = 0`. At most one exists because offsets are distinct.
    pub fn fragment_due(&self, step: u64) -> Option<usize> {
        let h = self.inner_steps;
        if h == 0 {
            return None;
        }
        let pos = (step % h + 1) % h;
        let want = (h - pos) % h;
        (0..self.fragments as usize).find(|&p| self.offset(p) == want)
    }
}

/// A merge scheduled by an exchange: fragment `fragment` is mixed into the local model in
/// [`OuterOptimizer::after_inner_step`] of step `due`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PendingMerge {
    /// The fragment to merge.
    pub fragment: usize,
    /// The inner step after which it is merged (exchange step + τ).
    pub due: u64,
}

/// One worker's Streaming DiLoCo state.
#[derive(Debug)]
pub struct Streaming {
    config: StreamingConfig,
    /// Canonical tensor indices of each fragment, ascending.
    fragments: Vec<Vec<usize>>,
    global: Vec<Tensor>,
    momentum: Vec<Tensor>,
    pending: Vec<PendingMerge>,
    /// The last inner step seen by `after_inner_step`: exchanges happen after it, so this is
    /// the step whose scheduled fragment `prepare` and `apply` work on.
    step: Option<u64>,
}

impl Streaming {
    /// Starts from the worker's current parameters as θ_global. Errors if the configuration
    /// is out of range or the model has fewer tensors than fragments.
    pub fn new(config: StreamingConfig, params: &ParamSet) -> Result<Self> {
        config.validate()?;
        if config.fragments > params.len() as u64 {
            return Err(OptimizerError::Config(format!(
                "streaming: {} fragments for a model of {} tensors would leave one empty",
                config.fragments,
                params.len()
            )));
        }
        let mut fragments = vec![Vec::new(); config.fragments as usize];
        for i in 0..params.len() {
            fragments[config.fragment_of(i)].push(i);
        }
        let global = params.snapshot();
        let momentum = global.iter().map(Tensor::zeros_like).collect();
        Ok(Self { config, fragments, global, momentum, pending: Vec::new(), step: None })
    }

    /// The configuration.
    pub fn config(&self) -> &StreamingConfig {
        &self.config
    }

    /// θ_global, the state every replica agrees on bit for bit.
    pub fn global(&self) -> &[Tensor] {
        &self.global
    }

    /// Canonical tensor indices of fragment `p`.
    pub fn fragment(&self, p: usize) -> &[usize] {
        self.fragments.get(p).map_or(&[], Vec::as_slice)
    }

    /// Merges not yet performed.
    pub fn pending(&self) -> &[PendingMerge] {
        &self.pending
    }

    /// The fragment scheduled at the current step, or an error if the driver calls an
    /// exchange when none is due.
    fn due_fragment(&self) -> Result<(u64, usize)> {
        let step = self.step.ok_or_else(|| {
            OptimizerError::Config("streaming: exchange before the first inner step".into())
        })?;
        let p = self.config.fragment_due(step).ok_or_else(|| {
            OptimizerError::Config(format!("streaming: no fragment is due after step {step}"))
        })?;
        Ok((step, p))
    }

    /// θ_local_p ← θ_global_p + α·(θ_local_p − θ_global_p), tensor by tensor.
    fn merge(&self, params: &ParamSet, fragment: usize) -> Result<()> {
        for &i in self.fragment(fragment) {
            let g = &self.global[i];
            let local = &params.tensors()[i];
            let merged = tch::no_grad(|| -> Result<Tensor> {
                Ok(g.f_add(&local.f_sub(g)?.f_mul_scalar(self.config.mixing)?)?)
            })?;
            params.assign_one(i, &merged)?;
        }
        Ok(())
    }

    fn encode(&self, tensor: usize, shape: &[usize], values: &[f32]) -> Result<Segment> {
        if self.config.value_bits == 8 {
            return dense_segment(tensor as u32, shape, values, Transport::Int8);
        }
        quantized_segment(tensor as u32, shape, values, &QuantConfig::int4())
    }

    /// Decodes a payload that must carry exactly fragment `p`'s tensors, in order, with the
    /// model's shapes. `Err` holds the rejection reason.
    fn fragment_values(
        &self,
        payload: &Payload,
        params: &ParamSet,
        p: usize,
    ) -> std::result::Result<Vec<Vec<f32>>, String> {
        let expected = self.fragment(p);
        payload
            .check_segments(Some(expected), params.shapes(), &DENSE_ENCODINGS)
            .map_err(|e| format!("fragment {p} due now: {e}"))?;
        let mut out = Vec::with_capacity(expected.len());
        for (s, &i) in payload.segments.iter().zip(expected) {
            out.push(segment_values(s).map_err(|e| format!("tensor {i}: {e}"))?);
        }
        Ok(out)
    }
}

impl OuterOptimizer for Streaming {
    fn algorithm(&self) -> Algorithm {
        Algorithm::Streaming
    }

    fn exchange_due(&self, phase: Phase, step: u64) -> bool {
        phase == Phase::AfterInnerStep && self.config.fragment_due(step).is_some()
    }

    fn prepare(&mut self, params: &ParamSet, round: u64, worker: u32) -> Result<Payload> {
        let (_, p) = self.due_fragment()?;
        let mut segments = Vec::with_capacity(self.fragment(p).len());
        for &i in self.fragment(p) {
            // Δ = θ_global − θ_local, DiLoCo's sign.
            let delta = self.global[i].f_sub(&params.tensors()[i])?.contiguous();
            let seg = with_host_f32(&params.names()[i], &delta, |d| {
                self.encode(i, &params.shapes()[i], d)
            })??;
            segments.push(seg);
        }
        Ok(Payload { algorithm: Algorithm::Streaming, round, worker, segments })
    }

    fn apply(
        &mut self,
        params: &ParamSet,
        round: u64,
        payloads: &[Payload],
    ) -> Result<ApplyReport> {
        let (step, p) = self.due_fragment()?;
        let (ok, rejected) = admit(Algorithm::Streaming, round, payloads);
        let (members, mut rejected) =
            decode_admitted(ok, rejected, |payload| self.fragment_values(payload, params, p));
        let robust = self.config.robust();
        let members = robust.screen(members, &mut rejected);
        if !members.is_empty() {
            let (lr, mu) = (self.config.outer_lr, self.config.momentum);
            for (k, &i) in self.fragments[p].iter().enumerate() {
                let shape = &params.shapes()[i];
                let contribs: Vec<(u32, &[f32])> =
                    members.iter().map(|(w, v)| (*w, v[k].as_slice())).collect();
                let mut mean = vec![0.0f32; shape.iter().product()];
                robust.combine_dense(&contribs, &mut mean)?;
                let g = tensor_on(&mean, shape, params.device())?;
                sgd_momentum_step(&mut self.global[i], &mut self.momentum[i], &g, lr, mu, true)?;
            }
        }
        // The merge happens also when nobody delivered, so every replica follows the same
        // schedule whatever the round's outcome.
        if self.config.overlap == 0 {
            self.merge(params, p)?;
        } else {
            self.pending.push(PendingMerge { fragment: p, due: step + self.config.overlap });
        }
        Ok(ApplyReport { applied: members.iter().map(|m| m.0).collect(), rejected })
    }

    /// θ_global's hash: the local parameters legitimately differ between replicas.
    fn consensus_hash(&self, params: &ParamSet) -> Result<u64> {
        hash_tensors(params.names(), &self.global)
    }

    fn after_inner_step(&mut self, params: &ParamSet, step: u64) -> Result<()> {
        self.step = Some(step);
        let (due, later): (Vec<PendingMerge>, Vec<PendingMerge>) =
            self.pending.iter().partition(|m| m.due <= step);
        for m in &due {
            self.merge(params, m.fragment)?;
        }
        self.pending = later;
        Ok(())
    }

    fn state(&self) -> Result<OptimizerState> {
        let mut s = OptimizerState::new(Algorithm::Streaming);
        s.put_per_tensor("global", &self.global);
        s.put_per_tensor("momentum", &self.momentum);
        s.put_scalar("fragments", self.config.fragments as f64);
        s.put_scalar("inner_steps", self.config.inner_steps as f64);
        s.put_scalar("step", self.step.map_or(-1.0, |v| v as f64));
        s.put_scalar("pending.count", self.pending.len() as f64);
        for (k, m) in self.pending.iter().enumerate() {
            s.put_scalar(format!("pending.{k}.fragment"), m.fragment as f64);
            s.put_scalar(format!("pending.{k}.due"), m.due as f64);
        }
        Ok(s)
    }

    fn load_state(&mut self, params: &ParamSet, state: &OptimizerState) -> Result<()> {
        state.expect_algorithm(Algorithm::Streaming)?;
        let bad = |m: String| OptimizerError::State(format!("streaming: {m}"));
        for (key, want) in
            [("fragments", self.config.fragments), ("inner_steps", self.config.inner_steps)]
        {
            let got = state.get_scalar(key)?;
            if got != want as f64 {
                return Err(bad(format!("saved with {key} = {got}, configured {want}")));
            }
        }
        let global = state.per_tensor("global", params)?;
        let momentum = state.per_tensor("momentum", params)?;
        let whole = |v: f64, what: &str| -> Result<u64> {
            if v.is_finite() && v >= 0.0 && v.fract() == 0.0 && v < 2f64.powi(53) {
                Ok(v as u64)
            } else {
                Err(bad(format!("{what} {v} is not a step count")))
            }
        };
        let saved_step = state.get_scalar("step")?;
        let step = if saved_step == -1.0 { None } else { Some(whole(saved_step, "step")?) };
        let count = whole(state.get_scalar("pending.count")?, "pending.count")?;
        if count > self.config.fragments {
            return Err(bad(format!(
                "{count} pending merges for {} fragments",
                self.config.fragments
            )));
        }
        let mut pending = Vec::with_capacity(count as usize);
        for k in 0..count {
            let fragment = whole(state.get_scalar(&format!("pending.{k}.fragment"))?, "fragment")?;
            if fragment >= self.config.fragments {
                return Err(bad(format!("pending fragment {fragment} out of range")));
            }
            let due = whole(state.get_scalar(&format!("pending.{k}.due"))?, "due step")?;
            pending.push(PendingMerge { fragment: fragment as usize, due });
        }
        self.global = global;
        self.momentum = momentum;
        self.pending = pending;
        self.step = step;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::harness::Harness;
    use crate::payload::Encoding;
    use crate::testing::{run_checked, toy_harness};
    use crate::toy::{ToyConfig, ToyMlp};

    fn harness(config: StreamingConfig, toy: ToyConfig) -> Harness<ToyMlp> {
        toy_harness(4, toy, |_, p| Ok(Box::new(Streaming::new(config, p)?)))
    }

    /// Hash of a worker's θ_global, read through the trait's checkpoint state so that it
    /// does not depend on `consensus_hash` being right.
    fn global_hash(outer: &dyn OuterOptimizer, params: &ParamSet) -> u64 {
        let state = outer.state().unwrap();
        let global: Vec<Tensor> =
            (0..params.len()).map(|i| state.get(&format!("global.{i}")).unwrap().copy()).collect();
        hash_tensors(params.names(), &global).unwrap()
    }

    /// A model of `n` equal tensors named so that canonical order is index order.
    fn equal_params(n: usize, numel: usize) -> ParamSet {
        ParamSet::new(
            (0..n)
                .map(|i| {
                    let v: Vec<f32> =
                        (0..numel).map(|j| ((i * numel + j) as f32 * 0.37).sin()).collect();
                    (format!("t{i:02}"), Tensor::from_slice(&v))
                })
                .collect(),
        )
        .unwrap()
    }

    /// One simulated inner step on a bare `ParamSet`: every value moves by `by`.
    fn fake_inner_step(params: &ParamSet, by: f64) {
        let moved: Vec<Tensor> = params.tensors().iter().map(|t| t + by).collect();
        params.assign(&moved).unwrap();
    }

    fn values(t: &Tensor) -> Vec<f32> {
        Vec::<f32>::try_from(t.flatten(0, -1)).unwrap()
    }

    #[test]
    fn trains_the_toy_task_with_identical_global_state() {
        let config = StreamingConfig { inner_steps: 20, overlap: 2, ..Default::default() };
        let toy = ToyConfig { hidden: 128, ..ToyConfig::default() };
        let mut h = harness(config, toy);
        // run_checked asserts after every exchange that the consensus hashes (θ_global)
        // agree and that nothing was rejected.
        let (exchanges, before, after) = run_checked(&mut h, 200);
        assert_eq!(exchanges.len(), 200 / 20 * 4, "F exchanges per H steps");
        assert!(after < 0.25 * before, "loss {before} -> {after}");
        let ws = h.workers();
        for w in ws {
            // The consensus hash is θ_global's, as read independently from the state.
            assert_eq!(
                w.outer.consensus_hash(&w.params).unwrap(),
                global_hash(w.outer.as_ref(), &w.params)
            );
        }
        // With α > 0 local models keep their own progress: the parameters differ.
        let local: Vec<u64> = ws.iter().map(|w| w.params.hash().unwrap()).collect();
        assert!(local.windows(2).any(|p| p[0] != p[1]), "{local:?}");
    }

    #[test]
    fn schedule_staggers_fragments_evenly() {
        for (h, f) in [(12u64, 4u64), (10, 3), (5, 5), (7, 1), (100, 4)] {
            let c =
                StreamingConfig { inner_steps: h, fragments: f, overlap: 0, ..Default::default() };
            c.validate().unwrap();
            let due: Vec<(u64, usize)> =
                (0..3 * h).filter_map(|s| c.fragment_due(s).map(|p| (s, p))).collect();
            // Every fragment exactly once in each window of H steps, exactly H apart.
            for window in 0..3 {
                let mut seen: Vec<usize> =
                    due.iter().filter(|(s, _)| s / h == window).map(|&(_, p)| p).collect();
                seen.sort_unstable();
                assert_eq!(seen, (0..f as usize).collect::<Vec<_>>(), "H={h} F={f}");
            }
            for p in 0..f as usize {
                let steps: Vec<u64> = due.iter().filter(|d| d.1 == p).map(|d| d.0).collect();
                assert!(steps.windows(2).all(|w| w[1] - w[0] == h), "H={h} F={f} p={p}");
                assert_eq!((steps[0] + 1 + c.offset(p)) % h, 0);
            }
            // Spread evenly: consecutive exchanges ⌊H/F⌋ or ⌈H/F⌉ apart.
            for w in due.windows(2) {
                let gap = w[1].0 - w[0].0;
                assert!(gap == h / f || gap == h.div_ceil(f), "H={h} F={f}: gap {gap}");
            }
        }
        let c = StreamingConfig { inner_steps: 8, fragments: 4, overlap: 1, ..Default::default() };
        assert_eq!((0..8).map(|i| c.fragment_of(i)).collect::<Vec<_>>(), [0, 1, 2, 3, 0, 1, 2, 3]);
        // Fragment 0 closes the cycle; the others come earlier, highest first.
        let order: Vec<Option<usize>> = (0..8).map(|s| c.fragment_due(s)).collect();
        assert_eq!(order, [None, Some(3), None, Some(2), None, Some(1), None, Some(0)]);
        let params = equal_params(8, 4);
        let s = Streaming::new(c, &params).unwrap();
        assert!(s.exchange_due(Phase::AfterInnerStep, 1));
        assert!(!s.exchange_due(Phase::AfterBackward, 1));
        assert!(!s.exchange_due(Phase::AfterInnerStep, 2));
        assert_eq!(s.fragment(1), [1, 5]);
    }

    #[test]
    fn each_exchange_carries_one_fragment_in_four_bits() {
        use super::super::diloco::{Diloco, DilocoConfig};
        let (n, numel, f) = (8, 1024, 4u64);
        let params = equal_params(n, numel);
        let config =
            StreamingConfig { inner_steps: 8, fragments: f, overlap: 1, ..Default::default() };
        let mut s = Streaming::new(config, &params).unwrap();
        let full_f32 = Diloco::new(DilocoConfig::default(), &params)
            .unwrap()
            .prepare(&params, 0, 0)
            .unwrap()
            .encoded_len();
        let mut seen = Vec::new();
        for step in 0..8 {
            fake_inner_step(&params, 0.01 * (step + 1) as f64);
            s.after_inner_step(&params, step).unwrap();
            if !s.exchange_due(Phase::AfterInnerStep, step) {
                continue;
            }
            let payload = s.prepare(&params, step, 0).unwrap();
            let tensors: Vec<usize> = payload.segments.iter().map(|x| x.tensor as usize).collect();
            let p = config.fragment_due(step).unwrap();
            assert_eq!(tensors, s.fragment(p), "step {step}");
            assert!(payload.segments.iter().all(|x| x.encoding == Encoding::Quantized));
            // 1/F of the model at ~4.25 bits per value: far below DiLoCo's f32 payload.
            let bytes = payload.encoded_len();
            let quarter_4bit = (n * numel) / f as usize / 2;
            assert!(bytes > quarter_4bit && bytes < quarter_4bit * 5 / 4, "{bytes}");
            assert!(bytes * (f as usize) * 6 < full_f32, "{bytes} vs DiLoCo {full_f32}");
            seen.extend(tensors);
            s.apply(&params, step, &[payload]).unwrap();
        }
        seen.sort_unstable();
        assert_eq!(seen, (0..n).collect::<Vec<_>>(), "every tensor once per H steps");
        // 8-bit values (the int8 codebook, for tensors of at least 4096 values): one byte
        // per value plus a 1 KiB codebook.
        let big = equal_params(2, 8192);
        let c8 =
            StreamingConfig { value_bits: 8, inner_steps: 2, fragments: 2, overlap: 0, ..config };
        let mut s8 = Streaming::new(c8, &big).unwrap();
        s8.after_inner_step(&big, 0).unwrap();
        let p8 = s8.prepare(&big, 0, 0).unwrap();
        assert_eq!(p8.segments.len(), 1);
        assert_eq!(p8.segments[0].encoding, Encoding::Quantized);
        assert!(p8.encoded_len() > 8192 && p8.encoded_len() < 8192 + 1100, "{}", p8.encoded_len());
    }

    #[test]
    fn overlap_delays_the_merge_by_tau_steps() {
        // H = 4, F = 2: fragment 1 (tensor 1) after step 1, fragment 0 (tensor 0) after step 3.
        for tau in [0u64, 1] {
            let params = equal_params(2, 16);
            let config = StreamingConfig {
                inner_steps: 4,
                fragments: 2,
                overlap: tau,
                // Not 0.5, where lerp is symmetric: this pins which side α weighs.
                mixing: 0.25,
                ..Default::default()
            };
            let mut s = Streaming::new(config, &params).unwrap();
            let g0 = values(&s.global()[1]);
            for step in 0..2 {
                fake_inner_step(&params, 0.25);
                s.after_inner_step(&params, step).unwrap();
            }
            assert!(s.exchange_due(Phase::AfterInnerStep, 1));
            let other_before = values(&params.tensors()[0]);
            let local_before = values(&params.tensors()[1]);
            let payload = s.prepare(&params, 0, 0).unwrap();
            let report = s.apply(&params, 0, &[payload]).unwrap();
            assert_eq!(report.applied, vec![0]);
            // The outer step moved θ_global toward the local model.
            let g1 = values(&s.global()[1]);
            assert!(g1.iter().zip(&g0).all(|(a, b)| a > b), "{g1:?} vs {g0:?}");
            assert_eq!(values(&params.tensors()[0]), other_before, "other fragment untouched");
            let lerp = |g: &[f32], l: &[f32]| -> Vec<f32> {
                g.iter().zip(l).map(|(g, l)| g + 0.25 * (l - g)).collect()
            };
            let close = |a: &[f32], b: &[f32]| a.iter().zip(b).all(|(x, y)| (x - y).abs() < 1e-6);
            if tau == 0 {
                assert!(s.pending().is_empty());
                assert!(close(&values(&params.tensors()[1]), &lerp(&g1, &local_before)));
                continue;
            }
            // τ = 1: apply leaves the local model alone and schedules the merge.
            assert_eq!(values(&params.tensors()[1]), local_before, "merged too early");
            assert_eq!(s.pending(), [PendingMerge { fragment: 1, due: 2 }]);
            // Training continues on the fragment for τ steps, then the merge mixes it in.
            fake_inner_step(&params, 0.25);
            let trained = values(&params.tensors()[1]);
            s.after_inner_step(&params, 2).unwrap();
            assert!(s.pending().is_empty());
            assert!(close(&values(&params.tensors()[1]), &lerp(&g1, &trained)));
            assert_eq!(values(&s.global()[1]), g1, "the merge leaves θ_global alone");
        }
    }

    #[test]
    fn payloads_for_the_wrong_fragment_are_rejected() {
        let params = equal_params(4, 8);
        let config =
            StreamingConfig { inner_steps: 4, fragments: 2, overlap: 0, ..Default::default() };
        let mut s = Streaming::new(config, &params).unwrap();
        assert!(s.prepare(&params, 0, 0).is_err(), "no step seen yet");
        fake_inner_step(&params, 0.1);
        s.after_inner_step(&params, 0).unwrap();
        assert!(s.prepare(&params, 0, 0).is_err(), "nothing due after step 0");
        s.after_inner_step(&params, 1).unwrap(); // fragment 1 = tensors 1, 3
        let good = s.prepare(&params, 0, 1).unwrap();
        let mut wrong = good.clone();
        wrong.worker = 2;
        wrong.segments = vec![
            Segment::dense(0, &[8], &[0.0; 8], false),
            Segment::dense(2, &[8], &[0.0; 8], false),
        ];
        let mut missing = good.clone();
        missing.worker = 3;
        missing.segments.pop();
        let mut bad_shape = good.clone();
        bad_shape.worker = 4;
        bad_shape.segments[0].shape = vec![2, 4];
        let mut garbage = good.clone();
        garbage.worker = 5;
        garbage.segments[1].body.truncate(7);
        let mut nan = good.clone();
        nan.worker = 6;
        nan.segments[0] = Segment::dense(1, &[8], &[f32::NAN; 8], false);
        let mut dense = good.clone();
        dense.worker = 7;
        dense.segments[0] = Segment::dense(1, &[8], &[0.5; 8], false);
        let report =
            s.apply(&params, 0, &[nan, garbage, wrong, dense, missing, good, bad_shape]).unwrap();
        assert_eq!(report.applied, vec![1, 7]);
        assert_eq!(report.rejected.iter().map(|r| r.0).collect::<Vec<_>>(), vec![2, 3, 4, 5, 6]);
        let reason = &report.rejected[0].1;
        assert!(reason.contains("fragment 1"), "{reason}");
    }

    #[test]
    fn reject_outliers_judges_the_fragment_exchanged() {
        let params = equal_params(4, 8);
        let config = StreamingConfig {
            inner_steps: 4,
            fragments: 2,
            overlap: 0,
            aggregation: Aggregation::RejectOutliers,
            ..Default::default()
        };
        let mut s = Streaming::new(config, &params).unwrap();
        fake_inner_step(&params, 0.1);
        s.after_inner_step(&params, 0).unwrap();
        s.after_inner_step(&params, 1).unwrap(); // fragment 1 = tensors 1, 3
        let good = s.prepare(&params, 0, 0).unwrap();
        let mut payloads: Vec<Payload> =
            (0..4).map(|w| Payload { worker: w, ..good.clone() }).collect();
        payloads[2].segments[1] = Segment::dense(3, &[8], &[-100.0; 8], false);
        let report = s.apply(&params, 0, &payloads).unwrap();
        assert_eq!(report.applied, vec![0, 1, 3]);
        assert_eq!(report.rejected.iter().map(|r| r.0).collect::<Vec<_>>(), vec![2]);
        let trimmed = StreamingConfig { aggregation: Aggregation::TrimmedMean, ..config };
        assert!(trimmed.validate().is_ok(), "streaming exchanges are dense");
    }

    #[test]
    fn state_survives_save_and_load_with_a_pending_merge() {
        let config =
            StreamingConfig { inner_steps: 8, fragments: 4, overlap: 1, ..Default::default() };
        let mut h = harness(config, ToyConfig::default());
        // Step 7 exchanges fragment 0; its merge is due after step 8.
        h.run(8).unwrap();
        let dir = std::env::temp_dir().join(format!("meridian-streaming-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("outer.safetensors");
        let w = &mut h.workers_mut()[0];
        let saved = w.outer.state().unwrap();
        assert_eq!(saved.get_scalar("pending.count").unwrap(), 1.0);
        assert_eq!(saved.get_scalar("pending.0.due").unwrap(), 8.0);
        saved.save(&path).unwrap();
        let loaded = OptimizerState::load(&path).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
        let mut fresh = Streaming::new(config, &w.params).unwrap();
        fresh.load_state(&w.params, &loaded).unwrap();
        assert_eq!(fresh.pending(), [PendingMerge { fragment: 0, due: 8 }]);
        assert_eq!(global_hash(&fresh, &w.params), global_hash(w.outer.as_ref(), &w.params));
        let back = fresh.state().unwrap();
        assert_eq!(back.tensors.len(), saved.tensors.len());
        for (k, v) in &saved.tensors {
            assert!(back.get(k).unwrap().equal(v), "{k} differs after the round trip");
        }
        // Momentum is non-zero after four exchanges, so the comparison is not vacuous.
        assert!(
            saved.get("momentum.0").unwrap().abs().sum(tch::Kind::Float).double_value(&[]) > 0.0
        );
        // Both perform the same merge on identical copies of the local model.
        let copy = |p: &ParamSet| {
            ParamSet::new(p.names().iter().cloned().zip(p.snapshot()).collect()).unwrap()
        };
        let (a, b) = (copy(&w.params), copy(&w.params));
        let before = a.hash().unwrap();
        w.outer.after_inner_step(&a, 8).unwrap();
        fresh.after_inner_step(&b, 8).unwrap();
        assert_ne!(a.hash().unwrap(), before, "the restored merge did nothing");
        assert_eq!(a.hash().unwrap(), b.hash().unwrap());
        // Another algorithm's state, or another fragment count, is refused.
        assert!(fresh.load_state(&w.params, &OptimizerState::new(Algorithm::Diloco)).is_err());
        let other = StreamingConfig { fragments: 2, ..config };
        let mut two = Streaming::new(other, &w.params).unwrap();
        assert!(two.load_state(&w.params, &loaded).is_err());
    }

    #[test]
    fn config_is_validated() {
        let ok = StreamingConfig::default();
        ok.validate().unwrap();
        assert_eq!(ok.offset(1), 25);
        for bad in [
            StreamingConfig { inner_steps: 0, ..ok },
            StreamingConfig { fragments: 0, ..ok },
            StreamingConfig { inner_steps: 3, fragments: 4, overlap: 0, ..ok },
            StreamingConfig { overlap: 25, ..ok },
            StreamingConfig { mixing: 1.5, ..ok },
            StreamingConfig { mixing: f64::NAN, ..ok },
            StreamingConfig { outer_lr: 0.0, ..ok },
            StreamingConfig { momentum: 1.0, ..ok },
            StreamingConfig { value_bits: 2, ..ok },
        ] {
            assert!(bad.validate().is_err(), "{bad:?}");
        }
        StreamingConfig { overlap: 24, ..ok }.validate().unwrap();
        // The schedule helpers do not panic on an unvalidated configuration.
        let zero = StreamingConfig { inner_steps: 0, fragments: 0, ..ok };
        assert_eq!((zero.fragment_due(3), zero.fragment_of(3), zero.offset(1)), (None, 0, 0));
        // More fragments than tensors would leave one empty.
        let params = equal_params(3, 4);
        let c = StreamingConfig { inner_steps: 8, fragments: 4, overlap: 0, ..ok };
        assert!(Streaming::new(c, &params).is_err());
        let parsed: StreamingConfig = toml::from_str("fragments = 2\nvalue_bits = 8").unwrap();
        assert_eq!((parsed.fragments, parsed.value_bits, parsed.inner_steps), (2, 8, 100));
        assert!(toml::from_str::<StreamingConfig>("fragment = 2").is_err());
    }
}
