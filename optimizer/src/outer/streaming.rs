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
//! # One exchange of fragment p (launched after inner step s)
//! ```text
//! send   Δ_p = θ_global_p − θ_local_p            (4-bit absmax or 8-bit codebook values)
//! land   at step s + τ (at once if τ = 0), the same phase:
//!        Δ̄_p = mean over members in member-id order, f32 accumulation
//!        θ_global_p ← Nesterov SGD(θ_global_p, Δ̄_p; lr, μ)
//!        θ_local_p ← lerp(θ_global_p, θ_local_p, α) = θ_global_p + α·(θ_local_p − θ_global_p)
//! ```
//! τ is the algorithm's [`OuterOptimizer::overlap`]: the round is launched where the fragment
//! is due and lands τ inner steps later, so its exchange runs while those steps compute
//! (module [`super::overlap`]; the driver does the launching and landing). Between the launch
//! and the landing the local model keeps training on fragment p; the merge mixes those τ steps
//! of local progress with the new global value, as the paper's overlapped variant does. No
//! other round touches fragment p in between (τ < H/F), so the landing computes exactly the
//! θ_global_p the exchange would have computed at step s.
//!
//! Round `r` carries fragment `F − 1 − (r mod F)`: within each window of H steps the
//! fragment with the largest offset is due first. The fragment is a function of the round
//! number alone, so a landing, a replay or a restored state needs no record of the step.
//!
//! # What replicas agree on
//! θ_global and the outer momentum are bit-identical on every worker after every exchange:
//! each is updated from the same decoded payloads in the same order. The local parameters
//! are not: between syncs each worker trains on its own shard, and with α > 0 the merge keeps
//! part of that local state. [`Streaming::global`] exposes the agreed state for checks.

use meridian_kernels::quant::QuantConfig;
use tch::Tensor;

use super::diloco::{
    dense_segment, quantized_segment, segment_values, sgd_momentum_step, Transport, DENSE_ENCODINGS,
};
use super::overlap::check_overlap;
use super::schedule::OuterLrSchedule;
use super::{receive, tensor_on, ApplyReport, OptimizerState, OuterOptimizer, Phase};
use crate::algorithm::Algorithm;
use crate::config::{algo_config, AlgoSettings};
use crate::divergence::show_number;
use crate::error::{OptimizerError, Result};
use crate::params::{hash_tensors, ParamSet};
use crate::payload::{Payload, Segment};
use crate::rejection::Rejection;
use crate::robust::Robust;
use crate::view::with_host_f32;

algo_config! {
    /// Streaming DiLoCo's settings.
    ///
    /// Sources of the defaults:
    /// - `inner_steps` H = 100: the synchronization period of the 1B bandwidth comparison in
    ///   the paper (data parallel vs DiLoCo H = 100 vs Streaming DiLoCo with overlap and FP4).
    /// - `mixing` α = 0.5: the paper's merge of the outer-optimized fragment with the local one.
    /// - `value_bits` = 4: the paper sends outer gradients in 4-bit floating point and
    ///   accumulates in f32. `value_format` picks the 4 bits: `int4` (the default: blockwise
    ///   absmax integers, `QuantConfig::int4`, blocks of 128) or `fp4` (the paper's E2M1
    ///   floating point with one scale per block of 128, `QuantConfig::fp4`); on the demo's
    ///   run they train to the same loss (BENCHMARKS.md, "Streaming DiLoCo: FP4 beside int4").
    /// - `outer_lr` 0.7 and Nesterov `momentum` 0.9: DiLoCo's outer optimizer, which Streaming
    ///   DiLoCo keeps.
    /// - `fragments` F = 4 and `overlap` τ = 5: this crate's choices, not numbers taken from
    ///   the paper. The paper builds each fragment from a few transformer blocks, so its F
    ///   follows the depth; 4 keeps every fragment non-empty on small models. The paper sweeps
    ///   τ; 5 hides an exchange behind five inner steps and stays well below H/F = 25.
    ///   (torchft's implementation calls τ `fragment_sync_delay` and α
    ///   `fragment_update_alpha`, defaulting both to 0.)
    /// - `aggregation`: the plain mean (the paper). Under a robust mode the norms judged are
    ///   those of the fragment exchanged in the round.
    pub struct StreamingConfig {
        /// Inner steps between two syncs of the same fragment (H).
        pub inner_steps: u64,
        /// Number of fragments (F), 1 ≤ F ≤ H and at most the number of tensors.
        pub fragments: u64,
        /// Inner steps between a fragment's launch and its landing (τ): the exchange runs
        /// while they compute. τ < H/F, so a round lands before the next one launches;
        /// left unset, 5 or the largest τ below H/F, whichever is smaller.
        pub overlap: u64,
        /// Sites of different speeds: a slow worker trains only a share of the inner steps,
        /// sized to its pace, so that rounds close together, and each member's update counts
        /// by the steps it trained (see `balance`). Off by default (every worker trains every
        /// step and the mean is plain); rules out the ring topology, whose sums carry no weights.
        pub balance: bool,
        /// Weight α of the local parameters in the merge, in [0, 1]: 0 adopts the global
        /// fragment as DiLoCo does, 1 ignores it.
        pub mixing: f64,
        /// Outer learning rate.
        pub outer_lr: f64,
        /// How the outer rate moves over the fragment exchanges: `constant` (the papers' and
        /// the default), or a warmup and cosine decay counted in exchanges (see
        /// `outer::schedule`).
        pub outer_lr_schedule: OuterLrSchedule,
        /// Outer Nesterov momentum.
        pub momentum: f64,
        /// Bits per value on the wire: 4 (`value_format`) or 8 (INTELLECT-1-style int8 codebook).
        pub value_bits: u32,
        /// What 4-bit values are: `int4` (blockwise absmax integers) or `fp4` (E2M1 floats, as
        /// the paper sends them).
        pub value_format: ValueFormat,
    }
}

/// The 4-bit value format of Streaming DiLoCo's exchange.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ValueFormat {
    /// Sixteen evenly spaced levels over each block's `±absmax` (`QuantConfig::int4`).
    #[default]
    Int4,
    /// E2M1 floating point scaled per block (`QuantConfig::fp4`), the paper's format.
    Fp4,
}

impl Default for StreamingConfig {
    fn default() -> Self {
        Self {
            inner_steps: 100,
            fragments: 4,
            overlap: 5,
            balance: false,
            mixing: 0.5,
            outer_lr: 0.7,
            outer_lr_schedule: OuterLrSchedule::CONSTANT,
            momentum: 0.9,
            value_bits: 4,
            value_format: ValueFormat::Int4,
            robust: Robust::default(),
        }
    }
}

impl AlgoSettings for StreamingConfig {
    fn algorithm(&self) -> Algorithm {
        Algorithm::Streaming
    }

    /// Checks every value is in range: H ≥ 1, 1 ≤ F ≤ H, τ < H/F, α ∈ [0, 1], outer lr > 0,
    /// momentum ∈ [0, 1), bits ∈ {4, 8}.
    fn validate(&self) -> Result<()> {
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
        // τ < H/F without rounding (τ·F < H): the largest τ is ⌊(H − 1)/F⌋.
        check_overlap(
            "streaming",
            self.overlap,
            self.max_overlap(),
            &format!(
                "below H/F = {}/{}, so each fragment's round lands before the next one launches",
                self.inner_steps, self.fragments
            ),
        )?;
        if !(0.0..=1.0).contains(&self.mixing) {
            return bad(format!("mixing (α) {} must be in [0, 1]", self.mixing));
        }
        self.outer_lr_schedule
            .validate("streaming.outer_lr_schedule")
            .map_err(OptimizerError::Config)?;
        if !(self.outer_lr.is_finite() && self.outer_lr > 0.0) {
            return Err(OptimizerError::Config(format!(
                "streaming.outer_lr = {} is out of range: it must be a finite number > 0 (the \
                 published value is {})",
                show_number(self.outer_lr),
                show_number(Self::default().outer_lr)
            )));
        }
        if !(0.0..1.0).contains(&self.momentum) {
            return Err(OptimizerError::Config(format!(
                "streaming.momentum = {} is out of range: it must be in [0, 1) (the published value \
                 is {})",
                show_number(self.momentum),
                show_number(Self::default().momentum)
            )));
        }
        if !matches!(self.value_bits, 4 | 8) {
            return bad(format!("value_bits {} must be 4 or 8", self.value_bits));
        }
        if self.value_bits == 8 && self.value_format != ValueFormat::Int4 {
            return bad(
                "value_format = \"fp4\" needs value_bits = 4 (8-bit values are int8)".into()
            );
        }
        self.robust.validate("streaming", true)
    }

    fn build(&self, params: &ParamSet) -> Result<Box<dyn OuterOptimizer>> {
        Ok(Box::new(Streaming::new(*self, params)?))
    }
}

impl StreamingConfig {
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

    /// The largest τ the schedule allows: below H/F without rounding (τ·F < H), so each
    /// fragment's round lands before the next one launches.
    pub fn max_overlap(&self) -> u64 {
        self.inner_steps.saturating_sub(1) / self.fragments.max(1)
    }

    /// The fragment round `round` carries: `F − 1 − (round mod F)`, the order in which
    /// [`StreamingConfig::fragment_due`] walks through each window of H steps (offsets
    /// grow with the fragment, so the largest is due first).
    pub fn fragment_of_round(&self, round: u64) -> usize {
        let f = self.fragments.max(1);
        (f - 1 - round % f) as usize
    }
}

/// One worker's Streaming DiLoCo state.
#[derive(Debug)]
pub struct Streaming {
    config: StreamingConfig,
    /// Canonical tensor indices of each fragment, ascending.
    fragments: Vec<Vec<usize>>,
    global: Vec<Tensor>,
    momentum: Vec<Tensor>,
}

impl Streaming {
    /// Starts from the worker's current parameters as θ_global. Errors if the configuration
    /// is out of range or the model has fewer tensors than fragments.
    pub fn new(config: StreamingConfig, params: &ParamSet) -> Result<Self> {
        if config.fragments > params.len() as u64 {
            return Err(OptimizerError::Config(format!(
                "streaming: {} fragments for a model of {} tensors would leave one empty",
                config.fragments,
                params.len()
            )));
        }
        Self::new_part(config, params, 0)
    }

    /// [`Streaming::new`] for a run of a model's tensors starting at canonical index
    /// `first` (a rank of a site holding part of the model): each tensor keeps the
    /// fragment it has in the whole model, so a fragment may be empty here.
    pub fn new_part(config: StreamingConfig, params: &ParamSet, first: usize) -> Result<Self> {
        config.validate()?;
        let mut fragments = vec![Vec::new(); config.fragments as usize];
        for i in 0..params.len() {
            fragments[config.fragment_of(first + i)].push(i);
        }
        let global = params.snapshot();
        let momentum = global.iter().map(Tensor::zeros_like).collect();
        Ok(Self { config, fragments, global, momentum })
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
        let format = match self.config.value_format {
            ValueFormat::Int4 => QuantConfig::int4(),
            ValueFormat::Fp4 => QuantConfig::fp4(),
        };
        quantized_segment(tensor as u32, shape, values, &format)
    }

    /// Decodes a payload that must carry exactly fragment `p`'s tensors, in order, with the
    /// model's shapes. `Err` holds the rejection reason.
    fn fragment_values(
        &self,
        payload: &Payload,
        params: &ParamSet,
        p: usize,
    ) -> std::result::Result<Vec<Vec<f32>>, Rejection> {
        let expected = self.fragment(p);
        payload
            .check_segments(Some(expected), params.shapes(), &DENSE_ENCODINGS)
            .map_err(|e| Rejection::Fragment { fragment: p, reason: Box::new(e) })?;
        let mut out = Vec::with_capacity(expected.len());
        for (s, &i) in payload.segments.iter().zip(expected) {
            out.push(segment_values(s).map_err(|e| Rejection::tensor(i, e))?);
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

    fn overlap(&self) -> u64 {
        self.config.overlap
    }

    fn balance(&self) -> bool {
        self.config.balance
    }

    fn prepare(&mut self, params: &ParamSet, round: u64, worker: u32) -> Result<Payload> {
        let p = self.config.fragment_of_round(round);
        let mut segments = Vec::with_capacity(self.fragment(p).len());
        for &i in self.fragment(p) {
            // Δ = θ_global − θ_local, DiLoCo's sign.
            let delta = self.global[i].f_sub(&params.tensors()[i])?.contiguous();
            let seg = with_host_f32(&params.names()[i], &delta, |d| {
                self.encode(i, &params.shapes()[i], d)
            })??;
            segments.push(seg);
        }
        Ok(Payload {
            algorithm: Algorithm::Streaming,
            round,
            worker,
            effort: Default::default(),
            segments,
        })
    }

    fn apply(
        &mut self,
        params: &ParamSet,
        round: u64,
        payloads: &[Payload],
    ) -> Result<ApplyReport> {
        let p = self.config.fragment_of_round(round);
        let robust = &self.config.robust;
        // A fragment's round launches every H/F steps: the most steps a payload can count.
        let span = self.config.inner_steps.div_ceil(self.config.fragments.max(1));
        let balance = self.config.balance.then_some(span);
        let received =
            receive(Algorithm::Streaming, round, payloads, robust, balance, |payload, _| {
                self.fragment_values(payload, params, p)
            });
        let members = &received.members;
        if !members.is_empty() {
            let lr = self.config.outer_lr * self.config.outer_lr_schedule.factor(round);
            let mu = self.config.momentum;
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
        // schedule whatever the round's outcome. This is the landing: with τ > 0 the local
        // fragment has trained τ steps since its payload was prepared.
        self.merge(params, p)?;
        Ok(received.report())
    }

    /// θ_global's hash: the local parameters legitimately differ between replicas.
    fn consensus_hash(&self, params: &ParamSet) -> Result<u64> {
        hash_tensors(params.names(), &self.global)
    }

    /// θ_global: the local parameters keep unsynced fragments.
    fn consensus_params(&self) -> Option<&[Tensor]> {
        Some(&self.global)
    }

    fn divergence_suspects(&self) -> Vec<crate::divergence::Suspect> {
        let published = StreamingConfig::default().outer_lr;
        vec![crate::divergence::Suspect::published(
            "streaming.outer_lr",
            self.config.outer_lr,
            published,
        )]
    }

    fn state(&self) -> Result<OptimizerState> {
        let mut s = OptimizerState::new(Algorithm::Streaming);
        s.put_per_tensor("global", &self.global);
        s.put_per_tensor("momentum", &self.momentum);
        s.put_scalar("fragments", self.config.fragments as f64);
        s.put_scalar("inner_steps", self.config.inner_steps as f64);
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
        // Earlier versions merged a fragment some steps after its round applied and saved
        // the merges still to come; the landing now merges at once, and such a state has no
        // place to put them.
        if state.get_scalar("pending.count").is_ok_and(|n| n != 0.0) {
            return Err(bad(
                "saved with a fragment merge pending, by a version that merged after the round \
                 applied; resume from a state saved by this version"
                    .into(),
            ));
        }
        self.global = global;
        self.momentum = momentum;
        Ok(())
    }
}

#[cfg(test)]
#[path = "streaming_tests.rs"]
mod tests;
