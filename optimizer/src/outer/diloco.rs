//! DiLoCo (Douillard et al. 2023): H inner steps, then an outer Nesterov step on the mean
//! pseudo-gradient Δ = θ_global − θ_local. Transport in f32, bf16, or INTELLECT-1-style
//! int8 (an 8-bit codebook over ±3σ; the mean is taken in f32 from every member's
//! dequantized values, so all replicas end bit-identical).

use meridian_kernels::quant::{quantize, Bits, QuantConfig, Quantized, Rounding, Scheme};
use serde::{Deserialize, Serialize};
use tch::Tensor;

use super::overlap::{agreed_hash, check_overlap, Drift};
use super::schedule::OuterLrSchedule;
use super::{
    receive, receive_aggregate, tensor_on, ApplyReport, OptimizerState, OuterOptimizer, Phase,
};
use crate::algorithm::Algorithm;
use crate::config::{algo_config, AlgoSettings};
use crate::divergence::show_number;
use crate::error::{OptimizerError, Result};
use crate::params::ParamSet;
use crate::payload::{Encoding, Payload, Segment};
use crate::rejection::Rejection;
use crate::ring::DenseRing;
use crate::robust::Robust;
use crate::view::with_host_f32;

/// How pseudo-gradients travel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Transport {
    /// 32 bits per value (the DiLoCo paper).
    #[default]
    F32,
    /// 16 bits per value (OpenDiLoCo also ran fp16).
    Bf16,
    /// 8-bit codebook values (INTELLECT-1).
    Int8,
}

algo_config! {
    /// DiLoCo's settings. Defaults are the paper's (Douillard et al. 2023, §3): H = 500, outer
    /// SGD with Nesterov momentum 0.9 and learning rate 0.7, and the plain mean of the
    /// members' pseudo-gradients (a robust `aggregation` rules out the ring topology).
    pub struct DilocoConfig {
        /// Inner steps per outer round (H).
        pub inner_steps: u64,
        /// Outer learning rate.
        pub outer_lr: f64,
        /// How the outer rate moves over the rounds: `constant` (the papers' and the
        /// default), or a warmup and cosine decay in rounds, e.g. `warmup=2,cosine=18,min=0.1`
        /// (see `outer::schedule`).
        pub outer_lr_schedule: OuterLrSchedule,
        /// Outer momentum.
        pub momentum: f64,
        /// Nesterov momentum (as in the paper) or plain heavy-ball.
        pub nesterov: bool,
        /// Value encoding on the wire.
        pub transport: Transport,
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

impl Default for DilocoConfig {
    fn default() -> Self {
        Self {
            inner_steps: 500,
            outer_lr: 0.7,
            outer_lr_schedule: OuterLrSchedule::CONSTANT,
            momentum: 0.9,
            nesterov: true,
            transport: Transport::F32,
            overlap: 0,
            balance: false,
            robust: Robust::default(),
        }
    }
}

impl AlgoSettings for DilocoConfig {
    fn algorithm(&self) -> Algorithm {
        Algorithm::Diloco
    }

    fn validate(&self) -> Result<()> {
        if self.inner_steps == 0 {
            return Err(OptimizerError::Config(
                "diloco: inner_steps (H) must be at least 1".into(),
            ));
        }
        self.outer_lr_schedule
            .validate("diloco.outer_lr_schedule")
            .map_err(OptimizerError::Config)?;
        if !(self.outer_lr.is_finite() && self.outer_lr > 0.0) {
            return Err(OptimizerError::Config(format!(
                "diloco.outer_lr = {} is out of range: it must be a finite number > 0 (the \
                 published value is 0.7)",
                show_number(self.outer_lr)
            )));
        }
        if !(0.0..1.0).contains(&self.momentum) {
            return Err(OptimizerError::Config(format!(
                "diloco.momentum = {} is out of range: it must be in [0, 1) (the published \
                 value is 0.9)",
                show_number(self.momentum)
            )));
        }
        check_overlap(
            "diloco",
            self.overlap,
            self.inner_steps,
            &format!("inner_steps = {}: one round in flight at a time", self.inner_steps),
        )?;
        self.robust.validate("diloco", true)
    }

    fn build(&self, params: &ParamSet) -> Result<Box<dyn OuterOptimizer>> {
        Ok(Box::new(Diloco::new(*self, params)?))
    }
}

/// INTELLECT-1's int8 exchange: 256 bins over ±3σ with bucket means, large blocks so the
/// 1 KiB codebook per block stays below 0.1 % of the bytes.
pub fn int8_codebook() -> QuantConfig {
    QuantConfig {
        bits: Bits::B8,
        scheme: Scheme::Codebook { clip_sigmas: 3.0 },
        block: 1 << 20,
        rounding: Rounding::Nearest,
    }
}

/// Below this many elements an int8 tensor travels as f32: the 1 KiB codebook would
/// outweigh the values (biases and norm gains; a negligible share of a real model).
pub const INT8_MIN_ELEMENTS: usize = 4096;

/// Encodes dense values as a segment in the given transport.
pub fn dense_segment(
    tensor: u32,
    shape: &[usize],
    values: &[f32],
    transport: Transport,
) -> Result<Segment> {
    Ok(match transport {
        Transport::F32 => Segment::dense(tensor, shape, values, false),
        Transport::Int8 if values.len() < INT8_MIN_ELEMENTS => {
            Segment::dense(tensor, shape, values, false)
        }
        Transport::Bf16 => Segment::dense(tensor, shape, values, true),
        Transport::Int8 => quantized_segment(tensor, shape, values, &int8_codebook())?,
    })
}

/// Encodes `values` quantized with `config` as a [`Encoding::Quantized`] segment.
pub fn quantized_segment(
    tensor: u32,
    shape: &[usize],
    values: &[f32],
    config: &QuantConfig,
) -> Result<Segment> {
    let q = quantize(values, config)?;
    let mut body = Vec::with_capacity(q.encoded_len());
    q.encode_into(&mut body);
    Ok(Segment::encoded(tensor, shape, Encoding::Quantized, body))
}

/// Decodes a dense or quantized segment to `numel` finite values.
pub fn segment_values(s: &Segment) -> Result<Vec<f32>> {
    match s.encoding {
        Encoding::F32 | Encoding::Bf16 => s.dense_values(),
        Encoding::Quantized => {
            let (q, used) = Quantized::decode(&s.body, s.numel())?;
            if used != s.body.len() || q.len != s.numel() {
                return Err(OptimizerError::Config(format!(
                    "quantized segment for tensor {} holds {} values in {used} of {} bytes",
                    s.tensor,
                    q.len,
                    s.body.len()
                )));
            }
            Ok(q.dequantize()?)
        }
        other => Err(OptimizerError::Config(format!("unexpected {other:?} segment"))),
    }
}

/// Decodes one payload that must carry every tensor densely (f32, bf16 or quantized), in
/// canonical order with the model's shapes; `Err` holds the rejection reason.
pub fn dense_payload_values(
    p: &Payload,
    params: &ParamSet,
) -> std::result::Result<Vec<Vec<f32>>, Rejection> {
    p.check_segments(None, params.shapes(), &DENSE_ENCODINGS)?;
    p.segments
        .iter()
        .map(|s| segment_values(s).map_err(|e| Rejection::tensor(s.tensor as usize, e)))
        .collect()
}

/// The encodings [`segment_values`] reads.
pub const DENSE_ENCODINGS: [Encoding; 3] = [Encoding::F32, Encoding::Bf16, Encoding::Quantized];

/// Every member's dense values combined tensor by tensor in member-id order: the
/// canonical-order mean, or the trimmed mean when `robust` says so.
pub fn mean_per_tensor(
    members: &[(u32, Vec<Vec<f32>>)],
    params: &ParamSet,
    robust: &Robust,
) -> Result<Vec<Tensor>> {
    let mut out = Vec::with_capacity(params.len());
    for (i, shape) in params.shapes().iter().enumerate() {
        let contribs: Vec<(u32, &[f32])> =
            members.iter().map(|(w, v)| (*w, v[i].as_slice())).collect();
        let mut mean = vec![0.0f32; shape.iter().product()];
        robust.combine_dense(&contribs, &mut mean)?;
        out.push(tensor_on(&mean, shape, params.device())?);
    }
    Ok(out)
}

/// One worker's DiLoCo state.
#[derive(Debug)]
pub struct Diloco {
    config: DilocoConfig,
    global: Vec<Tensor>,
    momentum: Vec<Tensor>,
    drift: Drift,
}

impl Diloco {
    /// Starts from the worker's current parameters as the global snapshot.
    pub fn new(config: DilocoConfig, params: &ParamSet) -> Result<Self> {
        config.validate()?;
        let global = params.snapshot();
        let momentum = global.iter().map(Tensor::zeros_like).collect();
        Ok(Self { config, global, momentum, drift: Drift::default() })
    }

    /// The configuration.
    pub fn config(&self) -> &DilocoConfig {
        &self.config
    }

    /// The global snapshot θ_global (what every replica agrees on).
    pub fn global(&self) -> &[Tensor] {
        &self.global
    }
}

impl Diloco {
    /// The outer Nesterov step on the mean pseudo-gradient, per tensor.
    fn outer_step(&mut self, mean: &[Tensor], round: u64) -> Result<()> {
        let lr = self.config.outer_lr * self.config.outer_lr_schedule.factor(round);
        for ((theta, m), g) in self.global.iter_mut().zip(&mut self.momentum).zip(mean) {
            sgd_momentum_step(theta, m, g, lr, self.config.momentum, self.config.nesterov)?;
        }
        Ok(())
    }
}

/// Outer SGD with (Nesterov) momentum, as `torch.optim.SGD` does it with dampening 0:
/// m ← μ·m + g; step = g + μ·m (Nesterov) or m; θ ← θ − lr·step.
pub fn sgd_momentum_step(
    theta: &mut Tensor,
    m: &mut Tensor,
    g: &Tensor,
    lr: f64,
    mu: f64,
    nesterov: bool,
) -> Result<()> {
    let _ = m.f_mul_scalar_(mu)?.f_add_(g)?;
    let step = if nesterov { g.f_add(&m.f_mul_scalar(mu)?)? } else { m.shallow_clone() };
    let _ = theta.f_sub_(&step.f_mul_scalar(lr)?)?;
    Ok(())
}

impl OuterOptimizer for Diloco {
    fn algorithm(&self) -> Algorithm {
        Algorithm::Diloco
    }

    fn exchange_due(&self, phase: Phase, step: u64) -> bool {
        phase == Phase::AfterInnerStep && (step + 1) % self.config.inner_steps == 0
    }

    fn prepare(&mut self, params: &ParamSet, round: u64, worker: u32) -> Result<Payload> {
        let mut segments = Vec::with_capacity(params.len());
        for (i, (g, p)) in self.global.iter().zip(params.tensors()).enumerate() {
            // Δ = θ_global − θ_local: the sign torchft once shipped reversed.
            let delta = g.f_sub(p)?.contiguous();
            let shape = &params.shapes()[i];
            let seg = with_host_f32(&params.names()[i], &delta, |d| {
                dense_segment(i as u32, shape, d, self.config.transport)
            })??;
            segments.push(seg);
        }
        self.drift.launch(params, self.config.overlap);
        Ok(Payload {
            algorithm: Algorithm::Diloco,
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
        let robust = &self.config.robust;
        let balance = self.config.balance.then_some(self.config.inner_steps);
        let received = receive(Algorithm::Diloco, round, payloads, robust, balance, |p, _| {
            dense_payload_values(p, params)
        });
        if !received.members.is_empty() {
            let mean = mean_per_tensor(&received.members, params, robust)?;
            self.outer_step(&mean, round)?;
        }
        // θ_local ← θ_global (plus the drift of an overlapped round), also when nobody
        // delivered: every replica restarts from the same global point.
        self.drift.land(params, &self.global)?;
        Ok(received.report())
    }

    fn ring(&self, params: &ParamSet) -> Option<DenseRing> {
        if self.config.balance {
            return None;
        }
        DenseRing::for_mean(Algorithm::Diloco, &self.config.robust, params, self.config.transport)
    }

    fn apply_aggregate(
        &mut self,
        params: &ParamSet,
        round: u64,
        members: &[u32],
        aggregate: &[u8],
    ) -> Result<ApplyReport> {
        let ring = self.ring(params);
        let robust = &self.config.robust;
        let (means, report) =
            receive_aggregate(ring, Algorithm::Diloco, robust, round, members, aggregate)?;
        if let Some(means) = means {
            let mean = means
                .iter()
                .zip(params.shapes())
                .map(|(v, s)| tensor_on(v, s, params.device()))
                .collect::<Result<Vec<Tensor>>>()?;
            self.outer_step(&mean, round)?;
        }
        self.drift.land(params, &self.global)?;
        Ok(report)
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
        let published = DilocoConfig::default().outer_lr;
        vec![crate::divergence::Suspect::published(
            "diloco.outer_lr",
            self.config.outer_lr,
            published,
        )]
    }

    fn state(&self) -> Result<OptimizerState> {
        let mut s = OptimizerState::new(Algorithm::Diloco);
        s.put_per_tensor("global", &self.global);
        s.put_per_tensor("momentum", &self.momentum);
        self.drift.put(&mut s);
        Ok(s)
    }

    fn load_state(&mut self, params: &ParamSet, state: &OptimizerState) -> Result<()> {
        state.expect_algorithm(Algorithm::Diloco)?;
        let global = state.per_tensor("global", params)?;
        let momentum = state.per_tensor("momentum", params)?;
        self.drift.load(state, params)?;
        self.global = global;
        self.momentum = momentum;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::robust::Aggregation;
    use crate::testing::{run_checked, toy_harness};
    use crate::toy::ToyConfig;

    fn harness(config: DilocoConfig) -> crate::harness::Harness<crate::toy::ToyMlp> {
        toy_harness(4, ToyConfig::default(), |_, p| Ok(Box::new(Diloco::new(config, p)?)))
    }

    #[test]
    fn trains_with_identical_replicas_in_every_transport() {
        let mut f32_bytes = 0;
        for transport in [Transport::F32, Transport::Bf16, Transport::Int8] {
            let config = DilocoConfig { inner_steps: 10, transport, ..Default::default() };
            let toy = ToyConfig { hidden: 128, ..ToyConfig::default() };
            let mut h = toy_harness(4, toy, |_, p| Ok(Box::new(Diloco::new(config, p)?)));
            let (exchanges, before, after) = run_checked(&mut h, 200);
            assert_eq!(exchanges.len(), 20);
            assert!(after < 0.25 * before, "{transport:?}: loss {before} -> {after}");
            let numel = h.workers()[0].params.numel();
            let bytes = exchanges[0].bytes_per_worker[0];
            match transport {
                Transport::F32 => {
                    f32_bytes = bytes;
                    assert!(bytes >= numel * 4 && bytes < numel * 4 + 512, "{bytes} for {numel}");
                }
                Transport::Bf16 => assert!(bytes >= numel * 2 && bytes < numel * 2 + 512),
                // The 128×128 matrix goes as 8-bit codes, the small tensors as f32.
                Transport::Int8 => assert!(bytes * 100 < f32_bytes * 45, "{bytes} vs {f32_bytes}"),
            }
        }
    }

    #[test]
    fn overlapped_rounds_train_and_keep_the_drift_of_the_steps_in_flight() {
        // H = 10, each round landing 5 steps after its launch: replicas agree on the
        // global copy, and the run trains about as well as the blocking one.
        let mut losses = Vec::new();
        for overlap in [0, 5] {
            let config = DilocoConfig { inner_steps: 10, overlap, ..Default::default() };
            let mut h = harness(config);
            let (exchanges, before, after) = run_checked(&mut h, 200);
            assert_eq!(exchanges.len(), if overlap == 0 { 20 } else { 19 });
            assert!(after < 0.25 * before, "overlap {overlap}: loss {before} -> {after}");
            losses.push(after);
            if overlap > 0 {
                // Each worker's parameters are the global copy plus its own drift.
                let w = &h.workers()[0];
                let global = w.outer.consensus_params().expect("overlapped: the global copy");
                let gap = (&w.params.tensors()[0] - &global[0]).abs().max();
                assert!(f64::try_from(gap).unwrap() > 0.0, "the drift was dropped");
                assert!(exchanges.iter().all(|x| x.step % 10 == 4), "rounds land at 10r + 9 + 5");
            }
        }
        // Measured: final losses 1.13 blocking and 1.52 overlapped, both under a quarter of
        // the start: the delay costs something on this fast-moving toy.
        assert!(losses[1] < 1.5 * losses[0], "overlap cost: {losses:?}");
    }

    #[test]
    fn pseudo_gradient_points_from_local_to_global() {
        let mut h = harness(DilocoConfig { inner_steps: 5, ..Default::default() });
        h.run(4).unwrap();
        let w = &mut h.workers_mut()[0];
        let p = w.outer.prepare(&w.params, 0, 0).unwrap();
        let delta = segment_values(&p.segments[0]).unwrap();
        let global =
            Vec::<f32>::try_from(w.outer.state().unwrap().get("global.0").unwrap().flatten(0, -1))
                .unwrap();
        let local = Vec::<f32>::try_from(w.params.tensors()[0].flatten(0, -1)).unwrap();
        for ((d, g), l) in delta.iter().zip(&global).zip(&local) {
            assert_eq!(*d, g - l);
        }
    }

    #[test]
    fn outer_step_matches_torch_sgd_nesterov_by_hand() {
        // One member, Δ known: θ' = θ − lr·(Δ + μ·(μ·0 + Δ)).
        let params = ParamSet::new(vec![("w".into(), Tensor::from_slice(&[1.0f32, 2.0]))]).unwrap();
        let mut d =
            Diloco::new(DilocoConfig { inner_steps: 1, ..Default::default() }, &params).unwrap();
        params.assign(&[Tensor::from_slice(&[0.5f32, 2.5])]).unwrap();
        let p = d.prepare(&params, 0, 0).unwrap();
        d.apply(&params, 0, &[p]).unwrap();
        let got = Vec::<f32>::try_from(&params.tensors()[0]).unwrap();
        let (lr, mu) = (0.7f32, 0.9f32);
        let expect: Vec<f32> = [(1.0f32, 0.5f32), (2.0, 2.5)]
            .iter()
            .map(|&(g, l)| {
                let delta = g - l;
                g - lr * (delta + mu * delta)
            })
            .collect();
        for (a, b) in got.iter().zip(&expect) {
            assert!((a - b).abs() < 1e-6, "{got:?} vs {expect:?}");
        }
    }

    #[test]
    fn bad_payloads_are_rejected_and_the_round_goes_on() {
        let params = ParamSet::new(vec![("w".into(), Tensor::from_slice(&[1.0f32, 2.0]))]).unwrap();
        let mut d =
            Diloco::new(DilocoConfig { inner_steps: 1, ..Default::default() }, &params).unwrap();
        let good = d.prepare(&params, 3, 1).unwrap();
        let mut nan = good.clone();
        nan.worker = 2;
        nan.segments[0].body[0..4].copy_from_slice(&f32::NAN.to_le_bytes());
        let mut stale = good.clone();
        stale.worker = 4;
        stale.round = 2;
        let mut empty = good.clone();
        empty.worker = 5;
        empty.segments.clear();
        // Finite, but with another member's values the f32 sum would overflow: without the
        // bound the whole round would fail instead of this one payload.
        let mut huge = good.clone();
        huge.worker = 6;
        huge.segments[0] = Segment::dense(0, &[2], &[f32::MAX / 2.0, 1.0], false);
        let report = d.apply(&params, 3, &[stale, nan, good, empty, huge]).unwrap();
        assert_eq!(report.applied, vec![1]);
        assert_eq!(report.rejected.iter().map(|r| r.0).collect::<Vec<_>>(), vec![2, 4, 5, 6]);
        assert!(report.rejected[3].1.to_string().contains("bound"), "{:?}", report.rejected);
    }

    #[test]
    fn robust_modes_refuse_the_ring_and_trim_each_coordinate() {
        let params = ParamSet::new(vec![("w".into(), Tensor::from_slice(&[0.0f32, 0.0]))]).unwrap();
        let mean = DilocoConfig { inner_steps: 1, ..Default::default() };
        assert!(Diloco::new(mean, &params).unwrap().ring(&params).is_some());
        let robust = Robust { aggregation: Aggregation::TrimmedMean, trim: 0.25, ..mean.robust };
        let trimmed = DilocoConfig { robust, ..mean };
        let mut d = Diloco::new(trimmed, &params).unwrap();
        assert!(d.ring(&params).is_none());
        let e = d.apply_aggregate(&params, 0, &[0], &[]).unwrap_err().to_string();
        assert!(e.contains("trimmed_mean") && e.contains("relay"), "{e}");
        // Four members; per coordinate the lowest and highest are dropped. Δ is the
        // negated step, so with lr 0.7 and Nesterov 0.9: θ = −0.7·1.9·mean.
        let payloads: Vec<Payload> = [[1.0f32, -8.0], [2.0, 4.0], [3.0, 2.0], [100.0, 0.0]]
            .iter()
            .enumerate()
            .map(|(w, v)| Payload {
                algorithm: Algorithm::Diloco,
                round: 0,
                worker: w as u32,
                effort: Default::default(),
                segments: vec![Segment::dense(0, &[2], v, false)],
            })
            .collect();
        let report = d.apply(&params, 0, &payloads).unwrap();
        assert_eq!((report.applied.len(), report.rejected.len()), (4, 0));
        let got = Vec::<f32>::try_from(&params.tensors()[0]).unwrap();
        let want = [2.5f32, 1.0].map(|m| -0.7 * 1.9 * m);
        for (a, b) in got.iter().zip(&want) {
            assert!((a - b).abs() < 1e-5, "{got:?} vs {want:?}");
        }
    }

    #[test]
    fn balanced_rounds_weigh_each_member_by_the_steps_it_trained() {
        // Δ 1.0 after 4 steps and Δ 4.0 after 2: the step-weighted mean is (4·1 + 2·4)/6 = 2,
        // the plain one 2.5; plain SGD with lr 1 moves θ by exactly the mean.
        let plain = DilocoConfig {
            inner_steps: 4,
            outer_lr: 1.0,
            momentum: 0.0,
            nesterov: false,
            ..Default::default()
        };
        for (balance, want) in [(false, -2.5f32), (true, -2.0)] {
            let params = ParamSet::new(vec![("w".into(), Tensor::from_slice(&[0.0f32]))]).unwrap();
            let mut d = Diloco::new(DilocoConfig { balance, ..plain }, &params).unwrap();
            assert_eq!(d.ring(&params).is_some(), !balance, "a ring's sums carry no weights");
            let payloads: Vec<Payload> = [(1.0f32, 4), (4.0, 2)]
                .iter()
                .enumerate()
                .map(|(w, &(v, steps))| Payload {
                    algorithm: Algorithm::Diloco,
                    round: 0,
                    worker: w as u32,
                    effort: crate::payload::Effort { steps, step_micros: 0 },
                    segments: vec![Segment::dense(0, &[1], &[v], false)],
                })
                .collect();
            d.apply(&params, 0, &payloads).unwrap();
            assert_eq!(Vec::<f32>::try_from(&params.tensors()[0]).unwrap(), vec![want]);
        }
    }

    #[test]
    fn state_survives_save_and_load() {
        let mut h = harness(DilocoConfig { inner_steps: 5, ..Default::default() });
        h.run(10).unwrap();
        let dir = std::env::temp_dir().join(format!("meridian-diloco-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("outer.safetensors");
        let w = &h.workers()[0];
        w.outer.state().unwrap().save(&path).unwrap();
        let loaded = OptimizerState::load(&path).unwrap();
        let mut fresh =
            Diloco::new(DilocoConfig { inner_steps: 5, ..Default::default() }, &w.params).unwrap();
        fresh.load_state(&w.params, &loaded).unwrap();
        let names: Vec<String> = (0..w.params.len()).map(|i| format!("x{i}")).collect();
        for key in ["global", "momentum"] {
            let a: Vec<Tensor> = (0..w.params.len())
                .map(|i| w.outer.state().unwrap().get(&format!("{key}.{i}")).unwrap().copy())
                .collect();
            let b: Vec<Tensor> = (0..w.params.len())
                .map(|i| fresh.state().unwrap().get(&format!("{key}.{i}")).unwrap().copy())
                .collect();
            assert_eq!(
                crate::params::hash_tensors(&names, &a).unwrap(),
                crate::params::hash_tensors(&names, &b).unwrap()
            );
        }
        // Momentum is non-zero after two rounds, so the check above is not vacuous.
        assert!(
            f64::try_from(loaded.get("momentum.0").unwrap().abs().sum(tch::Kind::Float)).unwrap()
                > 0.0
        );
        std::fs::remove_dir_all(&dir).unwrap();
        let mut other = OptimizerState::new(Algorithm::Demo);
        other.put_scalar("x", 1.0);
        assert!(fresh.load_state(&w.params, &other).is_err());
    }
}
