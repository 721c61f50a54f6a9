//! DeMo / DisTrO (Peng, Quesnelle, Kingma 2024): decoupled momentum, compressed every step.
//!
//! Every worker keeps its own momentum δ and exchanges only a compressed view of it after
//! every backward pass (H = 1); the sign of the aggregate replaces the inner optimizer's
//! step:
//! ```text
//! prepare:  δ ← β·δ + lr·g
//!           sent ← top-k per 64×64 DCT tile of δ     (kernels Compressor)
//!           δ ← δ − IDCT(sent)                       (what was sent leaves the momentum)
//! apply:    g' ← IDCT(mean over contributors of every member's sent coefficients)
//!           θ ← θ·(1 − lr·wd) − lr·sign(g')
//! ```
//! Aggregation happens in the DCT domain with `Compressor::aggregate` in member-id order, and
//! the inverse DCT and the update are the same f32 operations on every replica, so all of
//! them end bit-identical. The decoupled weight decay is applied in `apply`, which runs
//! identically on every worker, exactly once per exchange.

use meridian_kernels::aggregate::{Contribution, MeanOver, ScatterScratch};
use meridian_kernels::pipeline::{CompressorConfig, Selection, Transform};
use meridian_kernels::quant::QuantConfig;
use meridian_kernels::sparse::Sparse;
use tch::{Device, Kind, Tensor};

use super::overlap::check_overlap;
use super::{receive, ApplyReport, OptimizerState, OuterOptimizer, Phase};
use crate::algorithm::Algorithm;
use crate::config::{algo_config, AlgoSettings};
use crate::device::{self, TensorCompressor};
use crate::divergence::show_number;
use crate::error::{OptimizerError, Result};
use crate::params::{with_param_mut, ParamSet};
use crate::payload::{Encoding, Payload, Segment};
use crate::rejection::Rejection;
use crate::robust::Robust;
use crate::view::{with_f32, with_f32_mut};

algo_config! {
    /// DeMo's settings. Defaults are those of the reference implementation (`demo.py` in
    /// bloc97/DeMo, the code of Peng, Quesnelle, Kingma 2024). Members' updates are combined
    /// with the plain mean (the published algorithm) unless `aggregation` picks
    /// `clip_median` or `reject_outliers`, which judge the sent values' norms;
    /// `trimmed_mean` needs dense payloads and is refused, and `trim` is unused here
    /// (accepted so that one settings file or `--set trim=…` fits every algorithm).
    pub struct DemoConfig {
        /// Learning rate: it scales both the gradient added to the momentum and the sign step.
        /// Default 1e-3: `demo.py` hands `lr` unchanged to `torch.optim.SGD`, whose default it
        /// is. It does double duty, so sweep it (the toy task wants 1e-3 to 1e-2).
        pub lr: f64,
        /// Momentum decay β (`compression_decay` in `demo.py`, default 0.999; Psyche's large
        /// runs use 0.995).
        pub momentum: f64,
        /// Decoupled weight decay: θ ← θ·(1 − lr·wd) every step (`demo.py` default 0.0).
        pub weight_decay: f64,
        /// DCT chunk per dimension: 2-D tensors go in `chunk × chunk` tiles
        /// (`compression_chunk`, default 64).
        pub chunk: usize,
        /// Coefficients kept per tile (`compression_topk`, default 32); a tile smaller than
        /// this is sent whole.
        pub topk: usize,
        /// Send 1-bit signs with a per-block scale instead of f32 values, as Psyche does
        /// (default false: `demo.py` sends the values as they are).
        pub sign_values: bool,
        /// 1: a step's exchange lands at the next step's exchange point, so it travels while
        /// that step's forward and backward passes run (Psyche's one-step delay; the
        /// gradient is then taken one outer step stale). 0 (default): it lands at once.
        pub overlap: u64,
    }
}

impl Default for DemoConfig {
    fn default() -> Self {
        Self {
            lr: 1e-3,
            momentum: 0.999,
            weight_decay: 0.0,
            chunk: 64,
            topk: 32,
            sign_values: false,
            overlap: 0,
            robust: Robust::default(),
        }
    }
}

impl AlgoSettings for DemoConfig {
    fn algorithm(&self) -> Algorithm {
        Algorithm::Demo
    }

    fn validate(&self) -> Result<()> {
        let bad = |what: String| Err(OptimizerError::Config(format!("demo: {what}")));
        if !(self.lr.is_finite() && self.lr > 0.0) {
            return Err(OptimizerError::Config(format!(
                "demo.lr = {} is out of range: DeMo's learning rate must be a finite number > 0 \
                 (the published value is {})",
                show_number(self.lr),
                show_number(Self::default().lr)
            )));
        }
        if !(0.0..1.0).contains(&self.momentum) {
            return Err(OptimizerError::Config(format!(
                "demo.momentum = {} is out of range: it must be in [0, 1) (the published value \
                 is {})",
                show_number(self.momentum),
                show_number(Self::default().momentum)
            )));
        }
        if !(self.weight_decay.is_finite() && self.weight_decay >= 0.0) {
            return bad(format!("weight_decay {} must be ≥ 0", self.weight_decay));
        }
        if self.lr * self.weight_decay >= 1.0 {
            return bad(format!(
                "lr·weight_decay = {} must be < 1 or the decay flips the parameters' sign",
                self.lr * self.weight_decay
            ));
        }
        if self.topk == 0 {
            return bad("topk must be at least 1".into());
        }
        if self.chunk == 0 {
            return bad("chunk must be at least 1".into());
        }
        check_overlap("demo", self.overlap, 1, "DeMo exchanges at every step")?;
        self.robust.validate("demo", false)
    }

    fn build(&self, params: &ParamSet) -> Result<Box<dyn OuterOptimizer>> {
        Ok(Box::new(Demo::new(*self, params)?))
    }

    fn payload_compressor(&self) -> Result<Option<CompressorConfig>> {
        Ok(Some(self.compressor_config()))
    }
}

impl DemoConfig {
    /// The compression pipeline this configuration sends with: chunked DCT, top-k per
    /// tile, f32 or 1-bit sign values.
    pub fn compressor_config(&self) -> CompressorConfig {
        CompressorConfig {
            transform: Transform::Dct { chunk: self.chunk },
            selection: Selection::PerChunk { k: self.topk },
            values: self.sign_values.then(QuantConfig::sign_1bit),
            ..CompressorConfig::demo()
        }
    }
}

/// `sign(x)` with `sign(±0) = +0`, as `torch.sign` but for the zero's sign (and NaN, which
/// cannot occur here, to 0).
fn sign(x: f32) -> f32 {
    if x > 0.0 {
        1.0
    } else if x < 0.0 {
        -1.0
    } else {
        0.0
    }
}

/// `δ ← β·δ + lr·g` on host memory.
fn momentum(delta: &mut [f32], beta: f32, lr: f32, g: &[f32]) {
    for (d, &g) in delta.iter_mut().zip(g) {
        *d = beta * *d + lr * g;
    }
}

/// [`momentum`] as LibTorch operations on any device (the GPU path): the same three
/// correctly rounded f32 operations per element, so the same bits as on the host.
fn momentum_by_ops(delta: &mut Tensor, beta: f32, lr: f32, g: &Tensor) -> Result<()> {
    let scaled = g.f_mul_scalar(f64::from(lr))?;
    let _ = delta.f_mul_scalar_(f64::from(beta))?.f_add_(&scaled)?;
    Ok(())
}

/// `θ ← θ·decay − lr·sign(u)` on host memory.
fn sign_step(theta: &mut [f32], decay: f32, lr: f32, update: &[f32]) {
    for (p, &u) in theta.iter_mut().zip(update) {
        *p = *p * decay - lr * sign(u);
    }
}

/// [`sign_step`] as LibTorch operations on any device (the GPU path), with `update` on
/// `theta`'s device. `sign` is built as `(u > 0) − (u < 0)`, which is this module's `sign`
/// to the bit (`torch.sign` keeps the sign of a −0); the multiply and subtract are single
/// correctly rounded f32 operations, so the host's bits.
fn sign_step_by_ops(theta: &Tensor, decay: f32, lr: f32, update: &Tensor) -> Result<()> {
    tch::no_grad(|| -> Result<()> {
        let sign = update
            .f_gt(0.0)?
            .f_to_kind(Kind::Float)?
            .f_sub(&update.f_lt(0.0)?.f_to_kind(Kind::Float)?)?;
        let step = sign.f_mul_scalar(f64::from(lr))?;
        let _ = theta.shallow_clone().f_mul_scalar_(f64::from(decay))?.f_sub_(&step)?;
        Ok(())
    })
}

/// One worker's DeMo state.
#[derive(Debug)]
pub struct Demo {
    config: DemoConfig,
    /// One per tensor, built from the model's shapes; senders and receivers agree on them.
    compressors: Vec<TensorCompressor>,
    /// The decoupled momentum δ per tensor: what has not been sent yet.
    delta: Vec<Tensor>,
    scratch: ScatterScratch,
    update: Vec<f32>,
}

impl Demo {
    /// Zero momentum and one compressor per tensor of `params`.
    pub fn new(config: DemoConfig, params: &ParamSet) -> Result<Self> {
        config.validate()?;
        let compressors = params
            .shapes()
            .iter()
            .map(|shape| TensorCompressor::new(config.compressor_config(), shape))
            .collect::<Result<Vec<_>>>()?;
        let delta = params.tensors().iter().map(|t| t.detach().zeros_like()).collect();
        Ok(Self { config, compressors, delta, scratch: ScatterScratch::new(), update: Vec::new() })
    }

    /// The configuration.
    pub fn config(&self) -> &DemoConfig {
        &self.config
    }

    /// The momentum buffers δ, one per tensor in canonical order.
    pub fn delta(&self) -> &[Tensor] {
        &self.delta
    }

    /// Every tensor's sent coefficients from one member's payload, or why it cannot be used.
    /// Values beyond `limit` in magnitude are refused so that the sum of all members' values
    /// cannot overflow f32 (which would fail the whole round, not just this payload).
    fn decode(
        &self,
        p: &Payload,
        params: &ParamSet,
        limit: f32,
    ) -> std::result::Result<Vec<Sparse>, Rejection> {
        p.check_segments(None, params.shapes(), &[Encoding::Compressed])?;
        let mut out = Vec::with_capacity(p.segments.len());
        for (i, (s, comp)) in p.segments.iter().zip(&self.compressors).enumerate() {
            let sparse = comp.cpu().decode_sparse(&s.body).map_err(|e| Rejection::tensor(i, e))?;
            if let Some(&value) = sparse.values.iter().find(|v| v.abs() > limit) {
                return Err(Rejection::OutOfRange { tensor: i, value });
            }
            out.push(sparse);
        }
        Ok(out)
    }
}

impl OuterOptimizer for Demo {
    fn algorithm(&self) -> Algorithm {
        Algorithm::Demo
    }

    fn runs_inner_optimizer(&self) -> bool {
        false
    }

    fn exchange_due(&self, phase: Phase, _step: u64) -> bool {
        phase == Phase::AfterBackward
    }

    fn overlap(&self) -> u64 {
        self.config.overlap
    }

    fn prepare(&mut self, params: &ParamSet, round: u64, worker: u32) -> Result<Payload> {
        let grads: Vec<Tensor> = params.grads().iter().map(Tensor::contiguous).collect();
        // Refuse a non-finite gradient before touching any momentum, so a failed prepare
        // leaves the state as it was. The loss was finite, so training diverged.
        for (name, g) in params.names().iter().zip(&grads) {
            device::check_finite(name, "gradient", g).map_err(|e| match e {
                OptimizerError::Kernel(meridian_kernels::KernelError::NonFinite {
                    index,
                    value,
                    ..
                }) => crate::divergence::Divergence::new(format!(
                    "the gradient of {name} holds {value} (element {index})"
                ))
                .into_error(),
                other => other,
            })?;
        }
        let beta = self.config.momentum as f32;
        let lr = self.config.lr as f32;
        let mut segments = Vec::with_capacity(params.len());
        for (i, (name, g)) in params.names().iter().zip(&grads).enumerate() {
            let delta = &mut self.delta[i];
            if delta.device() == Device::Cpu {
                with_f32(name, g, |g| with_f32_mut(name, delta, |d| momentum(d, beta, lr, g)))??;
            } else {
                momentum_by_ops(delta, beta, lr, g)?;
            }
            let comp = &mut self.compressors[i];
            // On the delta's device: the CPU kernels for a CPU tensor, CUDA for a CUDA one.
            let out = comp.compress_and_subtract(name, delta)?;
            segments.push(Segment::encoded(
                i as u32,
                &params.shapes()[i],
                Encoding::Compressed,
                out.bytes,
            ));
        }
        Ok(Payload {
            algorithm: Algorithm::Demo,
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
        let received =
            receive(Algorithm::Demo, round, payloads, &self.config.robust, None, |p, admitted| {
                // The admitted set is the same on every replica, so is this bound.
                let limit = f32::MAX / admitted.max(1) as f32;
                self.decode(p, params, limit)
            });
        let members = &received.members;
        let lr = self.config.lr as f32;
        let decay = (1.0 - self.config.lr * self.config.weight_decay) as f32;
        let device = params.device();
        for (i, comp) in self.compressors.iter_mut().enumerate() {
            let contribs: Vec<Contribution<'_>> =
                members.iter().map(|(w, s)| Contribution { worker: *w, sparse: &s[i] }).collect();
            let (name, p) = (&params.names()[i], &params.tensors()[i]);
            if device == Device::Cpu {
                self.update.clear();
                self.update.resize(comp.cpu().len(), 0.0);
                if !contribs.is_empty() {
                    let mode = MeanOver::Contributors;
                    comp.cpu().aggregate(&mut self.scratch, &contribs, mode, &mut self.update)?;
                }
                with_param_mut(name, p, |p| sign_step(p, decay, lr, &self.update))?;
            } else {
                // On the parameters' device: aggregated and inverted there by the CUDA
                // kernels, with the CPU's bits.
                let update = if contribs.is_empty() {
                    p.f_zeros_like()?
                } else {
                    comp.aggregate_on(&mut self.scratch, &contribs, MeanOver::Contributors, device)?
                };
                sign_step_by_ops(p, decay, lr, &update)?;
            }
        }
        Ok(received.report())
    }

    fn divergence_suspects(&self) -> Vec<crate::divergence::Suspect> {
        let published = DemoConfig::default().lr;
        vec![crate::divergence::Suspect::published("demo.lr", self.config.lr, published)]
    }

    fn state(&self) -> Result<OptimizerState> {
        let mut s = OptimizerState::new(Algorithm::Demo);
        s.put_per_tensor("delta", &self.delta);
        Ok(s)
    }

    fn load_state(&mut self, params: &ParamSet, state: &OptimizerState) -> Result<()> {
        state.expect_algorithm(Algorithm::Demo)?;
        self.delta = state.per_tensor("delta", params)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::harness::Harness;
    use crate::params::hash_tensors;
    use crate::robust::Aggregation;
    use crate::testing::{run_checked, toy_harness};
    use crate::toy::{ToyConfig, ToyMlp};
    use crate::train_step::TrainStep;
    use meridian_kernels::pipeline::Compressor;
    use meridian_kernels::rng::SplitMix64;

    /// Values with every sign, zeros of both signs, tiny and large magnitudes.
    fn awkward(n: usize, seed: u64) -> Vec<f32> {
        let mut rng = SplitMix64::new(seed);
        (0..n)
            .map(|i| match i % 7 {
                0 => 0.0,
                1 => -0.0,
                2 => f32::MIN_POSITIVE * rng.next_unit_f32(),
                3 => 3.0e30 * (rng.next_unit_f32() - 0.5),
                _ => rng.next_unit_f32() * 2.0 - 1.0,
            })
            .collect()
    }

    #[test]
    fn the_gpu_paths_give_the_host_bits() {
        // The device path (LibTorch operations) run on CPU tensors must give the host loop's
        // bits, zeros' signs included; on a GPU the same operations are just as exact.
        let (d0, g, u) = (awkward(1000, 1), awkward(1000, 2), awkward(1000, 3));
        let (beta, lr, decay) = (0.999f32, 1e-3f32, 1.0 - 1e-3 * 0.1);
        let mut want = d0.clone();
        momentum(&mut want, beta, lr, &g);
        let mut got = Tensor::from_slice(&d0);
        momentum_by_ops(&mut got, beta, lr, &Tensor::from_slice(&g)).unwrap();
        let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        assert_eq!(bits(&Vec::<f32>::try_from(&got).unwrap()), bits(&want));
        let mut want = d0.clone();
        sign_step(&mut want, decay, lr, &u);
        let theta = Tensor::from_slice(&d0).reshape([10, 100]).set_requires_grad(true);
        sign_step_by_ops(&theta, decay, lr, &Tensor::from_slice(&u).reshape([10, 100])).unwrap();
        let got = Vec::<f32>::try_from(&theta.detach().reshape([-1])).unwrap();
        assert_eq!(bits(&got), bits(&want));
    }

    /// Hidden 128: the 128×128 layer is four full 64×64 tiles.
    fn toy() -> ToyConfig {
        ToyConfig { hidden: 128, ..ToyConfig::default() }
    }

    fn harness(config: DemoConfig) -> Harness<ToyMlp> {
        toy_harness(4, toy(), |_, p| Ok(Box::new(Demo::new(config, p)?)))
    }

    fn to_vec(t: &Tensor) -> Vec<f32> {
        Vec::<f32>::try_from(t.flatten(0, -1)).unwrap()
    }

    fn random(n: usize, seed: u64) -> Vec<f32> {
        let mut rng = SplitMix64::new(seed);
        (0..n).map(|_| rng.next_unit_f32() * 2.0 - 1.0).collect()
    }

    #[test]
    fn trains_the_toy_task_with_identical_replicas() {
        for sign_values in [false, true] {
            let mut h = harness(DemoConfig { lr: 5e-3, sign_values, ..Default::default() });
            let (exchanges, before, after) = run_checked(&mut h, 150);
            // One exchange after every backward pass, none after the (skipped) inner step.
            assert_eq!(exchanges.len(), 150);
            assert!(after < 0.2 * before, "sign_values {sign_values}: loss {before} -> {after}");
        }
    }

    #[test]
    fn sends_far_less_than_dense_f32_and_signs_less_still() {
        let mut bytes = Vec::new();
        for sign_values in [false, true] {
            let mut h = harness(DemoConfig { sign_values, ..Default::default() });
            let (exchanges, _, _) = run_checked(&mut h, 2);
            let numel = h.workers()[0].params.numel();
            // Rice-coded indices: sizes differ a little with each worker's selection.
            let sent = *exchanges[1].bytes_per_worker.iter().max().unwrap();
            // About 2 % of the coefficients at ~40 bits (f32 value + coded index) each.
            assert!(sent * 25 < numel * 4, "sign_values {sign_values}: {sent} B for {numel}");
            bytes.push(sent);
        }
        // 1-bit values instead of 32-bit: the index bytes remain, so about a third.
        assert!(bytes[1] * 2 < bytes[0], "{bytes:?}");
    }

    #[test]
    fn what_was_sent_leaves_the_momentum() {
        for sign_values in [false, true] {
            let config = DemoConfig { sign_values, ..Default::default() };
            let mut h = harness(config);
            h.run(3).unwrap();
            let w = &mut h.workers_mut()[0];
            let i = w.params.names().iter().position(|n| n == "l2.weight").unwrap();
            w.train.forward_backward().unwrap();
            let key = format!("delta.{i}");
            let old = to_vec(w.outer.state().unwrap().get(&key).unwrap());
            let g = to_vec(&w.params.grads()[i]);
            let p = w.outer.prepare(&w.params, 3, 0).unwrap();
            let new = to_vec(w.outer.state().unwrap().get(&key).unwrap());
            let comp = Compressor::new(config.compressor_config(), &w.params.shapes()[i]).unwrap();
            let sent = comp.decompress(&p.segments[i].body).unwrap();
            let (beta, lr) = (config.momentum as f32, config.lr as f32);
            let scale = old.iter().fold(0.0f32, |m, v| m.max(v.abs()));
            assert!(scale > 0.0 && sent.iter().any(|&v| v != 0.0), "vacuous");
            for j in 0..new.len() {
                let want = (beta * old[j] + lr * g[j]) - sent[j];
                assert!((new[j] - want).abs() <= 1e-6 * scale, "{j}: {} vs {want}", new[j]);
            }
        }
    }

    #[test]
    fn corrupt_payloads_are_rejected_and_the_rest_applied() {
        let mut h = harness(DemoConfig::default());
        h.run(2).unwrap();
        let mut payloads = Vec::new();
        for w in h.workers_mut() {
            w.train.forward_backward().unwrap();
            payloads.push(w.outer.prepare(&w.params, 2, w.id).unwrap());
        }
        let good = [payloads[0].clone(), payloads[3].clone()];
        let mut truncated = payloads[1].clone();
        truncated.segments[3].body.pop();
        let mut nan = payloads[2].clone();
        let body = &mut nan.segments[1].body;
        let end = body.len();
        body[end - 4..].copy_from_slice(&f32::NAN.to_le_bytes());
        let mut short = payloads[0].clone();
        short.worker = 7;
        short.segments.pop();
        let mut dense = payloads[0].clone();
        dense.worker = 8;
        dense.segments[0].encoding = Encoding::F32;

        let before = h.workers()[0].params.hash().unwrap();
        let all = [truncated, nan, good[1].clone(), short, good[0].clone(), dense];
        let workers = h.workers_mut();
        let report = workers[0].outer.apply(&workers[0].params, 2, &all).unwrap();
        assert_eq!(report.applied, vec![0, 3]);
        assert_eq!(report.rejected.iter().map(|r| r.0).collect::<Vec<_>>(), vec![1, 2, 7, 8]);
        // The same result as a round in which only the good payloads arrived.
        workers[1].outer.apply(&workers[1].params, 2, &good).unwrap();
        let applied = workers[0].params.hash().unwrap();
        assert_ne!(applied, before);
        assert_eq!(applied, workers[1].params.hash().unwrap());
        // And not the result of applying all four.
        workers[2].outer.apply(&workers[2].params, 2, &payloads).unwrap();
        assert_ne!(applied, workers[2].params.hash().unwrap());
    }

    #[test]
    fn update_matches_the_tch_reference_with_weight_decay() {
        use crate::reference::{demo_aggregate_reference, demo_encode_reference, Tiling};
        let shape = [128usize, 64];
        let n = shape[0] * shape[1];
        let theta = random(n, 99);
        let params =
            ParamSet::new(vec![("w".into(), Tensor::from_slice(&theta).reshape([128, 64]))])
                .unwrap();
        let config = DemoConfig { lr: 1e-2, weight_decay: 0.1, ..Default::default() };
        let mut demo = Demo::new(config, &params).unwrap();
        let mut comp = Compressor::new(config.compressor_config(), &shape).unwrap();
        let tiling = Tiling::new(&[128, 64], 64).unwrap();
        let (mut payloads, mut members) = (Vec::new(), Vec::new());
        for w in 0..3u32 {
            let x = random(n, 7 + u64::from(w));
            let out = comp.compress(&x).unwrap();
            let segments = vec![Segment {
                tensor: 0,
                encoding: Encoding::Compressed,
                shape: vec![128, 64],
                body: out.bytes,
            }];
            payloads.push(Payload {
                algorithm: Algorithm::Demo,
                round: 0,
                worker: w,
                effort: Default::default(),
                segments,
            });
            let xt = Tensor::from_slice(&x).reshape([128, 64]);
            members.push(demo_encode_reference(&tiling, &xt, 32).unwrap());
        }
        payloads.reverse();
        demo.apply(&params, 0, &payloads).unwrap();
        let got = to_vec(&params.tensors()[0]);
        let g = to_vec(&demo_aggregate_reference(&tiling, &members).unwrap());
        let gmax = g.iter().fold(0.0f32, |m, v| m.max(v.abs()));
        let (lr, decay) = (1e-2f32, (1.0 - 1e-2 * 0.1) as f32);
        let mut checked = 0;
        for j in 0..n {
            // Where the aggregate is within rounding of zero its sign is not defined by
            // the math; everywhere else the two implementations must agree exactly.
            if g[j].abs() > 1e-4 * gmax {
                let want = theta[j] * decay - lr * g[j].signum();
                assert_eq!(got[j], want, "{j}: g' = {}", g[j]);
                checked += 1;
            }
        }
        assert!(checked > n * 99 / 100, "{checked} of {n}");
    }

    #[test]
    fn reject_outliers_drops_a_scaled_member_and_trimmed_mean_is_refused() {
        let shape = [128usize, 64];
        let n = shape[0] * shape[1];
        let params =
            ParamSet::new(vec![("w".into(), Tensor::zeros([128, 64], tch::kind::FLOAT_CPU))])
                .unwrap();
        let robust = Robust { aggregation: Aggregation::RejectOutliers, ..Default::default() };
        let config = DemoConfig { robust, ..Default::default() };
        let mut demo = Demo::new(config, &params).unwrap();
        let mut comp = Compressor::new(config.compressor_config(), &shape).unwrap();
        // Members agree on a common direction (as honest momenta do), each with its own part.
        let common = random(n, 7);
        let payloads: Vec<Payload> = (0..4u32)
            .map(|w| {
                let scale = if w == 2 { 100.0 } else { 1.0 };
                let own = random(n, 8 + u64::from(w));
                let x: Vec<f32> =
                    common.iter().zip(&own).map(|(c, o)| (c + 0.5 * o) * scale).collect();
                let body = comp.compress(&x).unwrap().bytes;
                let segments = vec![Segment::encoded(0, &shape, Encoding::Compressed, body)];
                Payload {
                    algorithm: Algorithm::Demo,
                    round: 0,
                    worker: w,
                    effort: Default::default(),
                    segments,
                }
            })
            .collect();
        let report = demo.apply(&params, 0, &payloads).unwrap();
        assert_eq!(report.applied, vec![0, 1, 3]);
        assert_eq!(report.rejected.iter().map(|r| r.0).collect::<Vec<_>>(), vec![2]);
        assert!(report.rejected[0].1.to_string().contains("median"), "{:?}", report.rejected);
        let robust = Robust { aggregation: Aggregation::TrimmedMean, ..Default::default() };
        let trimmed = DemoConfig { robust, ..Default::default() };
        assert!(Demo::new(trimmed, &params).is_err());
    }

    #[test]
    fn state_survives_save_and_load() {
        let config = DemoConfig::default();
        let mut h = harness(config);
        h.run(4).unwrap();
        let dir = std::env::temp_dir().join(format!("meridian-demo-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("outer.safetensors");
        let w = &h.workers()[0];
        w.outer.state().unwrap().save(&path).unwrap();
        let loaded = OptimizerState::load(&path).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
        let mut fresh = Demo::new(config, &w.params).unwrap();
        fresh.load_state(&w.params, &loaded).unwrap();
        let names: Vec<String> = w.params.names().to_vec();
        let saved = w.outer.state().unwrap();
        let a: Vec<Tensor> =
            (0..names.len()).map(|i| saved.get(&format!("delta.{i}")).unwrap().copy()).collect();
        assert_eq!(hash_tensors(&names, &a).unwrap(), hash_tensors(&names, fresh.delta()).unwrap());
        // The momentum is non-zero after four steps, so the comparison is not vacuous.
        assert!(a.iter().all(|d| f64::try_from(d.abs().sum(tch::Kind::Float)).unwrap() > 0.0));
        // The restored optimizer prepares the same payload as the original.
        let w = &mut h.workers_mut()[0];
        w.train.forward_backward().unwrap();
        let from_fresh = fresh.prepare(&w.params, 4, 0).unwrap();
        assert_eq!(w.outer.prepare(&w.params, 4, 0).unwrap(), from_fresh);

        let mut other = OptimizerState::new(Algorithm::Diloco);
        other.put("delta.0", &a[0]);
        assert!(fresh.load_state(&w.params, &other).is_err());
        let mut missing = OptimizerState::new(Algorithm::Demo);
        missing.put("delta.0", &a[0]);
        assert!(fresh.load_state(&w.params, &missing).is_err());
        let mut wrong = OptimizerState::new(Algorithm::Demo);
        for i in 0..names.len() {
            wrong.put(format!("delta.{i}"), &a[(i + 1) % names.len()]);
        }
        assert!(fresh.load_state(&w.params, &wrong).is_err());
    }

    #[test]
    fn config_defaults_parse_and_validate() {
        let d = DemoConfig::default();
        assert_eq!((d.lr, d.momentum, d.weight_decay, d.chunk, d.topk), (1e-3, 0.999, 0.0, 64, 32));
        assert!(!d.sign_values);
        d.validate().unwrap();
        let parsed: DemoConfig = toml::from_str("lr = 0.01\nsign_values = true").unwrap();
        assert_eq!(parsed, DemoConfig { lr: 0.01, sign_values: true, ..d });
        assert!(toml::from_str::<DemoConfig>("beta = 0.9").is_err());
        for bad in [
            DemoConfig { lr: 0.0, ..d },
            DemoConfig { lr: f64::NAN, ..d },
            DemoConfig { momentum: 1.0, ..d },
            DemoConfig { momentum: -0.1, ..d },
            DemoConfig { weight_decay: -1.0, ..d },
            DemoConfig { lr: 0.5, weight_decay: 2.0, ..d },
            DemoConfig { topk: 0, ..d },
            DemoConfig { chunk: 0, ..d },
        ] {
            assert!(bad.validate().is_err(), "{bad:?}");
        }
        let params =
            ParamSet::new(vec![("w".into(), Tensor::zeros([8], tch::kind::FLOAT_CPU))]).unwrap();
        assert!(Demo::new(DemoConfig { chunk: 1 << 20, ..d }, &params).is_err());
        let demo = Demo::new(d, &params).unwrap();
        assert!(!demo.runs_inner_optimizer());
        assert!(demo.exchange_due(Phase::AfterBackward, 0));
        assert!(!demo.exchange_due(Phase::AfterInnerStep, 0));
    }
}
