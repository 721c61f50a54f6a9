//! SparseLoCo (Sarfi, Thérien, Lidin, Belilovsky 2025, "Communication Efficient LLM
//! Pre-training with SparseLoCo", arXiv 2508.15706; run in production by Templar): H inner
//! steps, then every worker folds its pseudo-gradient Δ = θ_global − θ_local into a decayed
//! error-feedback buffer `e ← β·e + Δ`, sends the top-k of every chunk of `e` with 2-bit
//! values, and keeps in `e` whatever the receivers will not see, quantization error
//! included. Receivers average each coordinate over the members that sent it and take a
//! plain SGD step (no outer momentum: the error buffer plays that role).
//!
//! The mean is a canonical-order scatter-mean (`meridian_kernels::aggregate`) of every
//! admitted member's decoded values, so all replicas compute the same bits whatever order
//! the payloads arrived in; on a GPU the CUDA kernels form it with the same bits.
//!
//! The 2-bit values are a sign and one of two magnitude levels per sign, fitted per block
//! of 4096 kept values by Lloyd–Max ([`ValueLevels::SignLloyd`]): top-k keeps values by
//! magnitude, so they are bimodal, and the reference's four equal bins over `μ ± 3σ`
//! ([`ValueLevels::EqualBins`], still selectable) leave its outer two nearly empty there.

use meridian_kernels::aggregate::{Contribution, MeanOver, ScatterScratch};
use meridian_kernels::pipeline::{CompressorConfig, Selection, Transform};
use meridian_kernels::quant::{Bits, QuantConfig, Rounding, Scheme};
use meridian_kernels::sparse::Sparse;
use serde::{Deserialize, Serialize};
use tch::Tensor;

use super::overlap::{agreed_hash, check_overlap, Drift};
use super::schedule::OuterLrSchedule;
use super::{receive, ApplyReport, OptimizerState, OuterOptimizer, Phase};
use crate::algorithm::Algorithm;
use crate::config::{algo_config, AlgoSettings};
use crate::device::{self, TensorCompressor};
use crate::divergence::show_number;
use crate::error::{OptimizerError, Result};
use crate::params::ParamSet;
use crate::payload::{Encoding, Payload, Segment};
use crate::rejection::Rejection;
use crate::robust::Robust;

/// The `value_bits` setting that means "send the kept values as raw f32".
pub const F32_VALUE_BITS: u32 = 32;

algo_config! {
    /// SparseLoCo's settings. Defaults are the published ones: chunks of 4096 with k = 64
    /// (1.56 % density), 2-bit values, error decay β = 0.95 and outer SGD with
    /// learning rate 1.0 and no momentum (Sarfi et al. 2025); H = 30 is
    /// the interval Templar runs in production (the paper sweeps H ∈ {15, 30, 50, 100}).
    /// Members' updates are combined with the plain mean (the published algorithm) unless
    /// `aggregation` picks `clip_median` or `reject_outliers`, which judge the sent values'
    /// norms; `trimmed_mean` needs dense payloads and is refused, and `trim` is unused here
    /// (accepted so that one settings file or `--set trim=…` fits every algorithm).
    pub struct SparselocoConfig {
        /// Inner steps per outer round (H).
        pub inner_steps: u64,
        /// Decay β of the error-feedback buffer: `e ← β·e + Δ`.
        pub error_decay: f64,
        /// Outer SGD learning rate.
        pub outer_lr: f64,
        /// How the outer rate moves over the rounds: `constant` (the papers' and the
        /// default), or a warmup and cosine decay in rounds, e.g. `warmup=2,cosine=18,min=0.1`
        /// (see `outer::schedule`).
        pub outer_lr_schedule: OuterLrSchedule,
        /// Consecutive elements per top-k chunk.
        pub chunk: usize,
        /// Entries kept per chunk.
        pub topk: usize,
        /// Bits per kept value (1, 2, 4 or 8), or `None` for raw f32. In config files f32
        /// is written as `value_bits = 32`, since TOML has no null.
        #[serde(with = "value_bits_serde")]
        pub value_bits: Option<u32>,
        /// Where the `2^value_bits` levels of each block of 4096 kept values go:
        /// `sign_lloyd` (default), or `equal_bins` as the reference describes.
        pub value_levels: ValueLevels,
        /// Keep the unsent remainder for the next round (the algorithm). `false` is the
        /// ablation: `e ← Δ` every round and what was not sent is dropped.
        pub error_feedback: bool,
        /// Inner steps a round's exchange may run behind the training (0 to H; 0 blocks
        /// at every exchange): the round lands this many steps after its launch, keeping
        /// the local progress made meanwhile (see `outer::overlap`).
        pub overlap: u64,
        /// Sites of different speeds: a slow worker trains only a share of the inner steps,
        /// sized to its pace, so that rounds close together, and each member's update counts
        /// by the steps it trained (see `balance`). Off by default (every worker trains every
        /// step and the mean is plain); rules out the ring topology, whose sums carry no weights.
        pub balance: bool,
    }
}

impl Default for SparselocoConfig {
    fn default() -> Self {
        Self {
            inner_steps: 30,
            error_decay: 0.95,
            outer_lr: 1.0,
            outer_lr_schedule: OuterLrSchedule::CONSTANT,
            chunk: 4096,
            topk: 64,
            value_bits: Some(2),
            value_levels: ValueLevels::SignLloyd,
            error_feedback: true,
            overlap: 0,
            balance: false,
            robust: Robust::default(),
        }
    }
}

/// How SparseLoCo places the levels of its quantized values, per block of 4096 kept values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ValueLevels {
    /// A sign bit plus `2^(b−1)` magnitude levels per sign fitted by Lloyd–Max
    /// ([`Scheme::SignLloyd`]): every level sits where the kept values are.
    #[default]
    SignLloyd,
    /// `2^b` equal bins over the block's `μ ± 3σ`, each decoded to its values' mean
    /// ([`Scheme::Codebook`]): the reference's grid, made symmetric.
    EqualBins,
}

impl ValueLevels {
    fn scheme(self) -> Scheme {
        match self {
            ValueLevels::SignLloyd => Scheme::SignLloyd,
            ValueLevels::EqualBins => Scheme::Codebook { clip_sigmas: 3.0 },
        }
    }
}

/// `value_bits` as a plain integer on disk: `None` ⇔ [`F32_VALUE_BITS`].
mod value_bits_serde {
    use super::F32_VALUE_BITS;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &Option<u32>, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u32(v.unwrap_or(F32_VALUE_BITS))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u32>, D::Error> {
        let bits = u32::deserialize(d)?;
        Ok((bits != F32_VALUE_BITS).then_some(bits))
    }
}

impl AlgoSettings for SparselocoConfig {
    fn algorithm(&self) -> Algorithm {
        Algorithm::Sparseloco
    }

    fn validate(&self) -> Result<()> {
        let bad = |msg: String| Err(OptimizerError::Config(format!("sparseloco: {msg}")));
        if self.inner_steps == 0 {
            return bad("inner_steps (H) must be at least 1".into());
        }
        if !(0.0..=1.0).contains(&self.error_decay) {
            return bad(format!("error_decay {} must be in [0, 1]", self.error_decay));
        }
        if !(self.outer_lr.is_finite() && self.outer_lr > 0.0) {
            return Err(OptimizerError::Config(format!(
                "sparseloco.outer_lr = {} is out of range: it must be a finite number > 0 (the \
                 published value is {})",
                show_number(self.outer_lr),
                show_number(Self::default().outer_lr)
            )));
        }
        self.outer_lr_schedule
            .validate("sparseloco.outer_lr_schedule")
            .map_err(OptimizerError::Config)?;
        if self.chunk == 0 || u32::try_from(self.chunk).is_err() {
            return bad(format!("chunk {} must be in 1..=u32::MAX", self.chunk));
        }
        if !(1..=self.chunk).contains(&self.topk) {
            return bad(format!("topk {} must be in 1..={} (the chunk)", self.topk, self.chunk));
        }
        if let Some(b) = self.value_bits {
            if ![1, 2, 4, 8].contains(&b) {
                return bad(format!("value_bits {b} must be 1, 2, 4, 8 or {F32_VALUE_BITS} (f32)"));
            }
        }
        check_overlap(
            "sparseloco",
            self.overlap,
            self.inner_steps,
            &format!("inner_steps = {}: one round in flight at a time", self.inner_steps),
        )?;
        self.robust.validate("sparseloco", false)
    }

    fn build(&self, params: &ParamSet) -> Result<Box<dyn OuterOptimizer>> {
        Ok(Box::new(Sparseloco::new(*self, params)?))
    }

    fn payload_compressor(&self) -> Result<Option<CompressorConfig>> {
        Ok(Some(self.compressor_config()?))
    }
}

impl SparselocoConfig {
    /// The kernels pipeline this configuration stands for: no transform, per-chunk top-k,
    /// values in blocks of 4096 with the configured levels and width (the default is
    /// [`QuantConfig::sparseloco_2bit`]) or raw f32.
    pub fn compressor_config(&self) -> Result<CompressorConfig> {
        let values = match self.value_bits {
            None => None,
            Some(b) => Some(QuantConfig {
                bits: Bits::from_count(b)?,
                scheme: self.value_levels.scheme(),
                rounding: Rounding::Nearest,
                ..QuantConfig::sparseloco_2bit()
            }),
        };
        Ok(CompressorConfig {
            transform: Transform::None,
            chunk_len: self.chunk,
            selection: Selection::PerChunk { k: self.topk },
            values,
        })
    }
}

/// One worker's SparseLoCo state.
#[derive(Debug)]
pub struct Sparseloco {
    config: SparselocoConfig,
    global: Vec<Tensor>,
    /// Error-feedback buffer per tensor, flat, in canonical order.
    error: Vec<Tensor>,
    /// One compressor per tensor (its scratch is reused every round).
    compressors: Vec<TensorCompressor>,
    scratch: ScatterScratch,
    drift: Drift,
}

impl Sparseloco {
    /// Starts from the worker's current parameters as the global snapshot, with empty error
    /// buffers.
    pub fn new(config: SparselocoConfig, params: &ParamSet) -> Result<Self> {
        config.validate()?;
        let cc = config.compressor_config()?;
        let compressors = params
            .shapes()
            .iter()
            .map(|shape| TensorCompressor::new(cc, shape))
            .collect::<Result<Vec<_>>>()?;
        // On the parameters' device, like every piece of optimizer state.
        let error = params.tensors().iter().map(|p| p.detach().zeros_like()).collect();
        let scratch = ScatterScratch::new();
        let drift = Drift::default();
        Ok(Self { config, global: params.snapshot(), error, compressors, scratch, drift })
    }

    /// The configuration.
    pub fn config(&self) -> &SparselocoConfig {
        &self.config
    }

    /// The global snapshot θ_global (what every replica agrees on).
    pub fn global(&self) -> &[Tensor] {
        &self.global
    }

    /// The error-feedback buffers, one tensor per parameter.
    pub fn error(&self) -> &[Tensor] {
        &self.error
    }

    /// Decodes every segment of one admitted payload into the sparse values it sends, or
    /// says why it cannot be used.
    fn decode_payload(
        &self,
        p: &Payload,
        params: &ParamSet,
    ) -> std::result::Result<Vec<Sparse>, Rejection> {
        p.check_segments(None, params.shapes(), &[Encoding::Compressed])?;
        let mut out = Vec::with_capacity(params.len());
        for (i, (s, c)) in p.segments.iter().zip(&self.compressors).enumerate() {
            out.push(c.cpu().decode_sparse(&s.body).map_err(|e| Rejection::tensor(i, e))?);
        }
        Ok(out)
    }
}

impl OuterOptimizer for Sparseloco {
    fn algorithm(&self) -> Algorithm {
        Algorithm::Sparseloco
    }

    fn exchange_due(&self, phase: Phase, step: u64) -> bool {
        phase == Phase::AfterInnerStep && (step + 1) % self.config.inner_steps == 0
    }

    fn prepare(&mut self, params: &ParamSet, round: u64, worker: u32) -> Result<Payload> {
        let decay = self.config.error_decay as f32;
        let mut segments = Vec::with_capacity(params.len());
        for (i, ((g, p), (e, c))) in self
            .global
            .iter()
            .zip(params.tensors())
            .zip(self.error.iter_mut().zip(&mut self.compressors))
            .enumerate()
        {
            // Δ = θ_global − θ_local, the direction a descent step subtracts.
            let delta = g.f_sub(p)?.contiguous();
            let name = &params.names()[i];
            // Ablation: no memory, so only this round's Δ competes for the top-k.
            let decay = if self.config.error_feedback { decay } else { 0.0 };
            device::accumulate(name, e, decay, &delta)?;
            // On the buffer's device: the CPU kernels for a CPU tensor, CUDA for a CUDA one.
            let sent = if self.config.error_feedback {
                // Subtract exactly what receivers decode (dequantized values), so the
                // quantization error stays in the buffer and is sent later.
                c.compress_and_subtract(name, e)?
            } else {
                let sent = c.compress(name, e)?;
                let _ = e.f_zero_()?;
                sent
            };
            segments.push(Segment::encoded(
                i as u32,
                &params.shapes()[i],
                Encoding::Compressed,
                sent.bytes,
            ));
        }
        self.drift.launch(params, self.config.overlap);
        Ok(Payload {
            algorithm: Algorithm::Sparseloco,
            round,
            worker,
            effort: Default::default(),
            segments,
        })
    }

    fn overlap(&self) -> u64 {
        self.config.overlap
    }

    fn balance(&self) -> bool {
        self.config.balance
    }

    fn apply(
        &mut self,
        params: &ParamSet,
        round: u64,
        payloads: &[Payload],
    ) -> Result<ApplyReport> {
        // Weights scale each member's kept values before the per-coordinate mean over its
        // senders: exact where a coordinate's senders trained alike, the round's weighting
        // otherwise.
        let balance = self.config.balance.then_some(self.config.inner_steps);
        let received = receive(
            Algorithm::Sparseloco,
            round,
            payloads,
            &self.config.robust,
            balance,
            |p, _| self.decode_payload(p, params),
        );
        let members = &received.members;
        if !members.is_empty() {
            let lr = self.config.outer_lr * self.config.outer_lr_schedule.factor(round);
            for (i, theta) in self.global.iter_mut().enumerate() {
                let contribs: Vec<Contribution<'_>> = members
                    .iter()
                    .map(|(w, v)| Contribution { worker: *w, sparse: &v[i] })
                    .collect();
                // A coordinate is averaged over the members that sent it: one sender out of
                // four moves it by its own value, not a quarter of it. On a GPU the mean is
                // formed there by the CUDA kernels.
                let mean = self.compressors[i].aggregate_on(
                    &mut self.scratch,
                    &contribs,
                    MeanOver::Contributors,
                    params.device(),
                )?;
                let step = mean.f_mul_scalar(lr)?;
                let _ = theta.f_sub_(&step)?;
            }
        }
        // θ_local ← θ_global (plus the drift of an overlapped round), also when nobody
        // delivered: every replica restarts from the same global point.
        self.drift.land(params, &self.global)?;
        Ok(received.report())
    }

    fn consensus_hash(&self, params: &ParamSet) -> Result<u64> {
        agreed_hash(params, self.consensus_params())
    }

    /// Overlapped, the local parameters carry each replica's drift: the global copy is
    /// what they agree on. Blocking, the parameters are that copy.
    fn consensus_params(&self) -> Option<&[Tensor]> {
        (self.config.overlap > 0).then_some(self.global.as_slice())
    }

    fn divergence_suspects(&self) -> Vec<crate::divergence::Suspect> {
        let published = SparselocoConfig::default().outer_lr;
        vec![crate::divergence::Suspect::published(
            "sparseloco.outer_lr",
            self.config.outer_lr,
            published,
        )]
    }

    fn state(&self) -> Result<OptimizerState> {
        let mut s = OptimizerState::new(Algorithm::Sparseloco);
        s.put_per_tensor("global", &self.global);
        s.put_per_tensor("error", &self.error);
        self.drift.put(&mut s);
        Ok(s)
    }

    fn load_state(&mut self, params: &ParamSet, state: &OptimizerState) -> Result<()> {
        state.expect_algorithm(Algorithm::Sparseloco)?;
        let global = state.per_tensor("global", params)?;
        let error = state.per_tensor("error", params)?;
        self.drift.load(state, params)?;
        self.global = global;
        self.error = error;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::harness::Harness;
    use crate::outer::tensor_from;
    use crate::testing::{run_checked, toy_harness};
    use crate::toy::{ToyConfig, ToyMlp};
    use meridian_kernels::chunks::ChunkSpec;
    use meridian_kernels::pack::encoded_len_chunked;
    use meridian_kernels::pipeline::Compressor;

    fn harness(config: SparselocoConfig, toy: ToyConfig) -> Harness<ToyMlp> {
        toy_harness(4, toy, |_, p| Ok(Box::new(Sparseloco::new(config, p)?)))
    }

    /// Hidden width 256 makes the middle matrix 65 536 elements (16 chunks of 4096), so the
    /// published 64-of-4096 selection runs as it would on a real model.
    fn wide() -> ToyConfig {
        ToyConfig { hidden: 256, ..ToyConfig::default() }
    }

    #[test]
    fn trains_at_the_published_density_with_identical_replicas() {
        let config = SparselocoConfig { inner_steps: 10, ..Default::default() };
        let mut h = harness(config, wide());
        let (exchanges, before, after) = run_checked(&mut h, 200);
        assert_eq!(exchanges.len(), 20);
        assert_eq!(
            exchanges.iter().map(|x| x.step).collect::<Vec<_>>(),
            (0..20).map(|r| r * 10 + 9).collect::<Vec<_>>()
        );
        // Measured 0.047 of the start.
        assert!(after < 0.15 * before, "loss {before} -> {after}");
    }

    #[test]
    fn trains_in_every_value_width() {
        // 16 of every 64 (25 %) on the small toy model, so the width is what differs.
        let mut bytes = Vec::new();
        let widths = [Some(1), Some(2), Some(4), Some(8), None];
        for (value_bits, value_levels) in widths
            .into_iter()
            .map(|b| (b, ValueLevels::SignLloyd))
            .chain([(Some(2), ValueLevels::EqualBins)])
        {
            let config = SparselocoConfig {
                inner_steps: 5,
                chunk: 64,
                topk: 16,
                value_bits,
                value_levels,
                ..Default::default()
            };
            let mut h = harness(config, ToyConfig::default());
            let (exchanges, before, after) = run_checked(&mut h, 200);
            assert_eq!(exchanges.len(), 40);
            // Measured 0.127–0.131 of the start for every width.
            assert!(
                after < 0.2 * before,
                "{value_bits:?} {value_levels:?}: loss {before} -> {after}"
            );
            bytes.push(exchanges[0].bytes_per_worker[0]);
        }
        // 1-bit < 2-bit < 4-bit < f32 values. (8-bit pays a 1 KiB codebook per tensor, more
        // than f32 on a model this small.) Both 2-bit level placements cost the same.
        assert!(bytes[0] < bytes[1] && bytes[1] < bytes[2] && bytes[2] < bytes[4], "{bytes:?}");
        assert_eq!(bytes[1], bytes[5]);
    }

    #[test]
    fn error_feedback_beats_its_ablation_at_1_5_percent_density() {
        // 64 of 4096 = 1.56 %, the same seed and steps; only error_feedback differs.
        let mut loss = Vec::new();
        for error_feedback in [true, false] {
            let config = SparselocoConfig { inner_steps: 10, error_feedback, ..Default::default() };
            let mut h = harness(config, wide());
            let (_, _, after) = run_checked(&mut h, 200);
            loss.push(after);
        }
        // Measured 0.374 with and 0.987 without (model seeds 1 and 2: 0.30 vs 0.83,
        // 0.34 vs 1.08): dropping what was not sent throws away ~98 % of every Δ.
        assert!(loss[0] < 0.6 * loss[1], "with {} vs without {}", loss[0], loss[1]);
    }

    /// Bytes of one compressed tensor as the pipeline lays them out, computed from the
    /// format rather than read off an encoder: (everything but the indices, the most the
    /// indices can take). Rice-coded indices vary with the selection, below their bound.
    fn compressed_len(numel: usize, config: &SparselocoConfig) -> (usize, usize) {
        let spec = ChunkSpec::new(numel, config.chunk, config.topk).unwrap();
        let kept = spec.total_k();
        let values = match config.value_bits {
            None => 4 * kept,
            // Quantized header, 2^b f32 entries per block of 4096, packed codes.
            Some(b) => 10 + 4 * (1 << b) * kept.div_ceil(4096) + (kept * b as usize).div_ceil(8),
        };
        (10 + values, encoded_len_chunked(&spec))
    }

    #[test]
    fn payload_bytes_are_the_compressor_encoding_plus_headers() {
        for value_bits in [Some(2), None] {
            let config = SparselocoConfig { inner_steps: 5, value_bits, ..Default::default() };
            let mut h = harness(config, wide());
            let (exchanges, _, _) = run_checked(&mut h, 5);
            let params = &h.workers()[0].params;
            let (mut fixed, mut indices) = (23usize, 0usize);
            for s in params.shapes() {
                let (rest, idx) = compressed_len(s.iter().product(), &config);
                // Segment header: tensor, encoding, rank, dims, body length.
                fixed += 4 + 1 + 1 + 4 * s.len() + 4 + rest;
                indices += idx;
            }
            for &b in &exchanges[0].bytes_per_worker {
                // Every index stream takes at least its tag and at most its bound.
                let tags = params.len();
                assert!(
                    b >= fixed + tags && b <= fixed + indices,
                    "{b} outside {fixed}+[{tags}, {indices}]"
                );
            }
            let (most, f32_bytes) = (fixed + indices, params.numel() * 4);
            if value_bits == Some(2) {
                // 71 172 parameters: 284 688 bytes as f32, at most 2 281 here (125×).
                assert!(most * 100 < f32_bytes, "{most} vs {f32_bytes}");
            } else {
                // Indices plus f32 values: still over 25× below dense f32.
                assert!(most * 25 < f32_bytes, "{most} vs {f32_bytes}");
            }
        }
    }

    fn single(values: &[f32], shape: &[i64]) -> ParamSet {
        ParamSet::new(vec![("w".into(), Tensor::from_slice(values).reshape(shape))]).unwrap()
    }

    fn flat(t: &Tensor) -> Vec<f32> {
        Vec::<f32>::try_from(t.flatten(0, -1)).unwrap()
    }

    /// A deterministic pseudo-gradient with a spread of magnitudes and both signs.
    fn wiggle(n: usize, phase: f32) -> Vec<f32> {
        (0..n).map(|i| ((i as f32 * 0.37 + phase).sin() * (1.0 + (i % 7) as f32)) / 64.0).collect()
    }

    #[test]
    fn error_feedback_keeps_what_was_not_sent() {
        let n = 256;
        let config = SparselocoConfig { inner_steps: 1, chunk: 64, topk: 4, ..Default::default() };
        let start: Vec<f32> = (0..n).map(|i| (i as f32) / 32.0 - 4.0).collect();
        let params = single(&start, &[8, 32]);
        let mut s = Sparseloco::new(config, &params).unwrap();
        // θ_local = θ_global − d, so that Δ = d up to f32 rounding.
        let moved = |g: &[f32], d: &[f32]| -> Tensor {
            let l: Vec<f32> = g.iter().zip(d).map(|(g, d)| g - d).collect();
            tensor_from(&l, &[8, 32])
        };
        // Round 0 leaves a non-zero buffer behind.
        params.assign(&[moved(&start, &wiggle(n, 0.0))]).unwrap();
        let p0 = s.prepare(&params, 0, 0).unwrap();
        s.apply(&params, 0, &[p0]).unwrap();
        let e_old = flat(&s.error()[0]);
        assert!(e_old.iter().filter(|v| **v != 0.0).count() > n / 2);

        // Round 1: Δ computed here exactly as f32 subtraction, as the optimizer does it.
        let g = flat(&s.global()[0]);
        params.assign(&[moved(&g, &wiggle(n, 1.3))]).unwrap();
        let l = flat(&params.tensors()[0]);
        let delta: Vec<f32> = g.iter().zip(&l).map(|(g, l)| g - l).collect();
        let p1 = s.prepare(&params, 1, 0).unwrap();
        let receiver = Compressor::new(config.compressor_config().unwrap(), &[8, 32]).unwrap();
        let sent = receiver.decode_sparse(&p1.segments[0].body).unwrap();
        assert_eq!(sent.len(), 16);
        let mut sent_dense = vec![0.0f64; n];
        for (&i, &v) in sent.indices.iter().zip(&sent.values) {
            sent_dense[i as usize] = f64::from(v);
        }
        let e_new = flat(&s.error()[0]);
        let mut residual_at_sent = 0;
        for j in 0..n {
            let acc = 0.95 * f64::from(e_old[j]) + f64::from(delta[j]);
            let want = acc - sent_dense[j];
            assert!(
                (f64::from(e_new[j]) - want).abs() <= 1e-6 * (1.0 + acc.abs()),
                "element {j}: {} vs {want}",
                e_new[j]
            );
            if sent_dense[j] != 0.0 && e_new[j] != 0.0 {
                residual_at_sent += 1;
            }
        }
        // 2-bit values are lossy: the quantization error stays in the buffer.
        assert!(residual_at_sent > 8, "{residual_at_sent} of 16 sent entries kept a residual");

        // The ablation keeps nothing and sends the top-k of this round's Δ alone.
        let ablation = SparselocoConfig { error_feedback: false, ..config };
        let mut a = Sparseloco::new(ablation, &single(&g, &[8, 32])).unwrap();
        a.error[0] = tensor_from(&e_old, &[8, 32]);
        let pa = a.prepare(&params, 1, 0).unwrap();
        assert!(flat(&a.error()[0]).iter().all(|&v| v == 0.0));
        let mut fresh = Compressor::new(config.compressor_config().unwrap(), &[8, 32]).unwrap();
        assert_eq!(pa.segments[0].body, fresh.compress(&delta).unwrap().bytes);
    }

    #[test]
    fn outer_step_averages_each_coordinate_over_its_senders() {
        // One of 4 kept, f32 values: exact. Members 0 and 2 send coordinate 0, member 1
        // sends coordinate 2; nobody sends 1 or 3.
        let config = SparselocoConfig {
            inner_steps: 1,
            outer_lr: 0.5,
            chunk: 4,
            topk: 1,
            value_bits: None,
            ..Default::default()
        };
        let start = [1.0f32, 2.0, 3.0, 4.0];
        let moves: [[f32; 4]; 3] =
            [[0.5, 0.0, 0.0, 0.0], [0.0, 0.0, -1.0, 0.0], [0.25, 0.0, 0.0, 0.0]];
        let mut payloads = Vec::new();
        for (w, m) in moves.iter().enumerate() {
            let p = single(&start, &[4]);
            let mut s = Sparseloco::new(config, &p).unwrap();
            // θ_local = θ_global − Δ, so Δ is `m`.
            let local: Vec<f32> = start.iter().zip(m).map(|(a, b)| a - b).collect();
            p.assign(&[Tensor::from_slice(&local)]).unwrap();
            payloads.push(s.prepare(&p, 0, w as u32).unwrap());
        }
        let p = single(&start, &[4]);
        let mut s = Sparseloco::new(config, &p).unwrap();
        s.apply(&p, 0, &payloads).unwrap();
        let lr = 0.5f32;
        // Coordinate 0: the mean of 0.5 and 0.25; coordinate 2: member 1's −1.0 alone.
        let want = [1.0 - lr * (0.5 + 0.25) / 2.0, 2.0, 3.0 + lr, 4.0];
        assert_eq!(flat(&p.tensors()[0]), want);
        assert_eq!(flat(&s.global()[0]), want);
    }

    #[test]
    fn the_outer_rate_follows_its_schedule_by_round() {
        // One member sends Δ = 1 on coordinate 0 (f32 values, exact); with a 4-round warmup
        // the step at round r is (r + 1)/4 of outer_lr, then the full rate.
        let config = SparselocoConfig {
            inner_steps: 1,
            outer_lr: 0.5,
            outer_lr_schedule: "warmup=4".parse().unwrap(),
            chunk: 4,
            topk: 1,
            value_bits: None,
            ..Default::default()
        };
        for (round, factor) in [(0u64, 0.25f32), (1, 0.5), (3, 1.0), (9, 1.0)] {
            let start = [1.0f32, 2.0, 3.0, 4.0];
            let p = single(&start, &[4]);
            let mut s = Sparseloco::new(config, &p).unwrap();
            p.assign(&[Tensor::from_slice(&[0.0f32, 2.0, 3.0, 4.0])]).unwrap();
            let payload = s.prepare(&p, round, 0).unwrap();
            s.apply(&p, round, &[payload]).unwrap();
            assert_eq!(flat(&s.global()[0])[0], 1.0 - 0.5 * factor, "round {round}");
        }
    }

    fn two_tensor_set(seed: f32) -> ParamSet {
        ParamSet::new(vec![
            ("a".into(), Tensor::from_slice(&wiggle(100, seed))),
            ("b".into(), Tensor::from_slice(&wiggle(64, seed + 0.5)).reshape([8, 8])),
        ])
        .unwrap()
    }

    #[test]
    fn corrupted_payloads_are_rejected_and_the_rest_applied() {
        // Tensor "a" has 100 elements in chunks of 64: the second chunk holds 36 and keeps
        // 2 offsets, each 6 bits wide (two per chunk travel in the fixed-width form), so an
        // offset can name a position past its end.
        let config = SparselocoConfig { inner_steps: 1, chunk: 64, topk: 2, ..Default::default() };
        let members: Vec<(ParamSet, Sparseloco)> = (0..5)
            .map(|_| {
                let p = two_tensor_set(0.0);
                let s = Sparseloco::new(config, &p).unwrap();
                (p, s)
            })
            .collect();
        let mut members = members;
        let mut payloads = Vec::new();
        for (w, (p, s)) in members.iter_mut().enumerate() {
            // Each member's inner steps moved it somewhere else.
            let moved = two_tensor_set(1.0 + w as f32);
            p.assign(&moved.snapshot()).unwrap();
            payloads.push(s.prepare(p, 7, w as u32).unwrap());
        }
        let good = [payloads[0].clone(), payloads[3].clone()];
        // Member 1: the last offset of tensor a's second chunk becomes 63 (≥ 36). Body:
        // 10-byte header, index tag, then 4 × 6 bits; the last offset is bits 18..24.
        let body = &mut payloads[1].segments[0].body;
        assert_eq!(body[10], meridian_kernels::pack::TAG_FIXED);
        body[11 + 2] |= 0xFC;
        // Member 2: tensor b's body loses its last byte.
        payloads[2].segments[1].body.pop();
        // Member 4: a NaN codebook entry (quantized header of 10 bytes after 10 + 1 + 3).
        payloads[4].segments[0].body[24..28].copy_from_slice(&f32::NAN.to_le_bytes());
        // The payloads survive the wire format: only the algorithm can judge their bodies.
        let shapes = members[0].0.shapes().to_vec();
        for p in &payloads {
            assert_eq!(&Payload::decode(&p.encode(), &shapes).unwrap(), p);
        }

        let mut hashes = Vec::new();
        for (w, (p, s)) in members.iter_mut().enumerate() {
            let mut arrived = payloads.clone();
            arrived.rotate_left(w);
            let report = s.apply(p, 7, &arrived).unwrap();
            assert_eq!(report.applied, vec![0, 3]);
            let ids: Vec<u32> = report.rejected.iter().map(|r| r.0).collect();
            assert_eq!(ids, vec![1, 2, 4], "{:?}", report.rejected);
            let reason = |k: usize| report.rejected[k].1.to_string();
            assert!(reason(0).contains("not below its length"), "{:?}", report.rejected);
            assert!(reason(1).contains("tensor 1"), "{:?}", report.rejected);
            assert!(reason(2).contains("non-finite"), "{:?}", report.rejected);
            hashes.push(p.hash().unwrap());
        }
        assert!(hashes.windows(2).all(|w| w[0] == w[1]), "{hashes:?}");
        // Exactly what applying the two good payloads alone gives, and not a no-op.
        let p = two_tensor_set(0.0);
        let start = p.hash().unwrap();
        let mut s = Sparseloco::new(config, &p).unwrap();
        assert_eq!(s.apply(&p, 7, &good).unwrap().applied, vec![0, 3]);
        assert_eq!(p.hash().unwrap(), hashes[0]);
        assert_ne!(start, hashes[0]);
    }

    #[test]
    fn nobody_delivering_still_resets_to_the_global_snapshot() {
        let config = SparselocoConfig { inner_steps: 1, chunk: 64, topk: 4, ..Default::default() };
        let p = two_tensor_set(0.0);
        let start = p.hash().unwrap();
        let mut s = Sparseloco::new(config, &p).unwrap();
        p.assign(&two_tensor_set(2.0).snapshot()).unwrap();
        let report = s.apply(&p, 0, &[]).unwrap();
        assert!(report.applied.is_empty() && report.rejected.is_empty());
        assert_eq!(p.hash().unwrap(), start);
    }

    #[test]
    fn state_survives_save_and_load() {
        let config = SparselocoConfig { inner_steps: 5, chunk: 256, topk: 4, ..Default::default() };
        let mut h = harness(config, ToyConfig::default());
        h.run(13).unwrap();
        let dir = std::env::temp_dir().join(format!("meridian-sparseloco-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("outer.safetensors");
        let w = &mut h.workers_mut()[0];
        w.outer.state().unwrap().save(&path).unwrap();
        let loaded = OptimizerState::load(&path).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
        let mut fresh = Sparseloco::new(config, &w.params).unwrap();
        fresh.load_state(&w.params, &loaded).unwrap();
        let names: Vec<String> = (0..w.params.len()).map(|i| format!("x{i}")).collect();
        for key in ["global", "error"] {
            let get = |s: &OptimizerState| -> Vec<Tensor> {
                (0..w.params.len()).map(|i| s.get(&format!("{key}.{i}")).unwrap().copy()).collect()
            };
            assert_eq!(
                crate::params::hash_tensors(&names, &get(&w.outer.state().unwrap())).unwrap(),
                crate::params::hash_tensors(&names, &get(&fresh.state().unwrap())).unwrap()
            );
        }
        // The error buffer is far from empty after two rounds at 1.56 % density, so the
        // check above is not vacuous.
        let e = Vec::<f32>::try_from(loaded.get("error.3").unwrap().flatten(0, -1)).unwrap();
        assert!(e.iter().filter(|v| **v != 0.0).count() > e.len() / 2);
        // A resumed worker sends the same bytes as the one that never stopped.
        let a = w.outer.prepare(&w.params, 2, 0).unwrap();
        let b = fresh.prepare(&w.params, 2, 0).unwrap();
        assert_eq!(a, b);

        let mut other = OptimizerState::new(Algorithm::Diloco);
        other.put_scalar("x", 1.0);
        assert!(fresh.load_state(&w.params, &other).is_err());
        let mut short = OptimizerState::new(Algorithm::Sparseloco);
        short.put("global.0", &w.params.tensors()[0]);
        assert!(fresh.load_state(&w.params, &short).is_err());
    }

    #[test]
    fn config_defaults_validation_and_file_form() {
        let d = SparselocoConfig::default();
        assert_eq!(
            (d.inner_steps, d.error_decay, d.outer_lr, d.chunk, d.topk, d.value_bits),
            (30, 0.95, 1.0, 4096, 64, Some(2))
        );
        assert!(d.error_feedback);
        assert_eq!(d.compressor_config().unwrap(), CompressorConfig::sparseloco());
        d.validate().unwrap();
        for bad in [
            SparselocoConfig { inner_steps: 0, ..d },
            SparselocoConfig { topk: 0, ..d },
            SparselocoConfig { topk: 4097, ..d },
            SparselocoConfig { chunk: 0, ..d },
            SparselocoConfig { error_decay: -0.1, ..d },
            SparselocoConfig { error_decay: 1.5, ..d },
            SparselocoConfig { error_decay: f64::NAN, ..d },
            SparselocoConfig { outer_lr: 0.0, ..d },
            SparselocoConfig { outer_lr: f64::INFINITY, ..d },
            SparselocoConfig { value_bits: Some(3), ..d },
            SparselocoConfig { value_bits: Some(0), ..d },
            SparselocoConfig { value_bits: Some(16), ..d },
        ] {
            assert!(bad.validate().is_err(), "{bad:?}");
            assert!(Sparseloco::new(bad, &two_tensor_set(0.0)).is_err());
        }
        for edge in [
            SparselocoConfig { error_decay: 0.0, ..d },
            SparselocoConfig { error_decay: 1.0, ..d },
            SparselocoConfig { topk: 4096, ..d },
            SparselocoConfig { value_bits: Some(1), ..d },
        ] {
            edge.validate().unwrap();
        }
        assert_eq!(d.value_levels, ValueLevels::SignLloyd);
        let equal: SparselocoConfig = toml::from_str("value_levels = \"equal_bins\"").unwrap();
        assert_eq!(equal, SparselocoConfig { value_levels: ValueLevels::EqualBins, ..d });
        assert_eq!(
            equal.compressor_config().unwrap().values,
            Some(QuantConfig::sparseloco_2bit_equal_bins())
        );
        let err = toml::from_str::<SparselocoConfig>("value_levels = \"lloyd\"").unwrap_err();
        assert!(err.to_string().contains("sign_lloyd"), "{err}");

        let parsed: SparselocoConfig = toml::from_str("inner_steps = 50\nvalue_bits = 32").unwrap();
        assert_eq!(parsed, SparselocoConfig { inner_steps: 50, value_bits: None, ..d });
        assert_eq!(parsed.compressor_config().unwrap().values, None);
        let others = [SparselocoConfig { value_bits: Some(8), error_feedback: false, ..d }, equal];
        for c in [d, parsed].into_iter().chain(others) {
            let text = toml::to_string(&c).unwrap();
            assert_eq!(toml::from_str::<SparselocoConfig>(&text).unwrap(), c, "{text}");
        }
        assert_eq!(toml::from_str::<SparselocoConfig>("").unwrap(), d);
        assert!(toml::from_str::<SparselocoConfig>("momentum = 0.9").is_err());
    }
}
