//! Data-parallel training (DDP), the yardstick every byte count is measured against.
//!
//! Every inner step, after backward, each worker sends its raw gradient for every tensor,
//! dense, in f32 or bf16. `apply` takes the canonical-order mean (fp32 accumulation, member-id
//! order) and writes it into each parameter's `.grad`, so the wrapped inner optimizer (AdamW)
//! then steps on the mean gradient. Replicas stay bit-identical because every worker starts
//! from the same parameters and optimizer state and steps on the same gradient bits; gradient
//! clipping inside the inner step sees the same mean on every worker too.
//!
//! Bytes per worker per step: 4 per parameter in f32, 2 in bf16 (plus a small header). A
//! ring all-reduce ([`OuterOptimizer::ring`]) sends `2(n − 1)/n` of that per worker; this
//! harness counts the upload.

use tch::{Kind, Tensor};

use super::diloco::{dense_segment, Transport};
use super::{
    receive, receive_aggregate, tensor_from, ApplyReport, OptimizerState, OuterOptimizer, Phase,
};
use crate::algorithm::Algorithm;
use crate::config::{algo_config, AlgoSettings};
use crate::error::{OptimizerError, Result};
use crate::params::ParamSet;
use crate::payload::{Encoding, Payload};
use crate::rejection::Rejection;
use crate::ring::DenseRing;
use crate::robust::Robust;
use crate::view::with_host_f32;

algo_config! {
    /// DDP's settings. The default is f32 gradients, what PyTorch's `DistributedDataParallel`
    /// all-reduces for an f32 model unless a compression hook (such as its bf16 hook) is set.
    /// Gradients are combined with the plain mean unless `aggregation` picks a robust mode
    /// ([`crate::robust`]; the robust modes rule out the ring topology). Under
    /// `reject_outliers`, `outlier_factor` bounds a member's gradient norm, and `min_cosine`
    /// its direction: one step's gradient on a small batch can point away from the others'
    /// honestly, so on noisy gradients that test also rejects honest members now and then.
    pub struct DdpConfig {
        /// Gradient encoding on the wire: `f32` or `bf16` (`int8` is rejected: quantizing every
        /// step's raw gradient is a different algorithm from the baseline this measures).
        pub transport: Transport,
    }
}

impl Default for DdpConfig {
    fn default() -> Self {
        Self { transport: Transport::F32, robust: Robust::default() }
    }
}

impl AlgoSettings for DdpConfig {
    fn algorithm(&self) -> Algorithm {
        Algorithm::Ddp
    }

    /// Checks the transport is dense (f32 or bf16) and the aggregation settings.
    fn validate(&self) -> Result<()> {
        match self.transport {
            Transport::F32 | Transport::Bf16 => {}
            other => {
                let name = toml::Value::try_from(other)
                    .ok()
                    .and_then(|v| v.as_str().map(str::to_string))
                    .unwrap_or_default();
                return Err(OptimizerError::Config(format!(
                    "ddp.transport = \"{name}\" is not supported: DDP sends raw gradients in \
                     f32 or bf16"
                )));
            }
        }
        self.robust.validate("ddp", true)
    }

    fn build(&self, params: &ParamSet) -> Result<Box<dyn OuterOptimizer>> {
        Ok(Box::new(Ddp::new(*self, params)?))
    }
}

/// One worker's DDP: no state beyond its configuration.
#[derive(Debug)]
pub struct Ddp {
    config: DdpConfig,
}

impl Ddp {
    /// Checks the configuration; DDP keeps no copy of the parameters.
    pub fn new(config: DdpConfig, _params: &ParamSet) -> Result<Self> {
        config.validate()?;
        Ok(Self { config })
    }

    /// The configuration.
    pub fn config(&self) -> &DdpConfig {
        &self.config
    }
}

/// Decodes a payload that must carry every tensor densely (f32 or bf16), in canonical order,
/// with the model's shapes and finite values. `Err` holds the rejection reason.
fn dense_gradients(
    p: &Payload,
    params: &ParamSet,
) -> std::result::Result<Vec<Vec<f32>>, Rejection> {
    p.check_segments(None, params.shapes(), &[Encoding::F32, Encoding::Bf16])?;
    p.segments
        .iter()
        .map(|s| s.dense_values().map_err(|e| Rejection::tensor(s.tensor as usize, e)))
        .collect()
}

/// Writes `value` into parameter `i`'s gradient. A parameter without a gradient (unused in
/// this step's graph) is left alone when the mean for it is zero, as every worker's was;
/// otherwise stepping would leave this replica behind the others, so it is an error.
fn write_grad(params: &ParamSet, i: usize, value: &Tensor) -> Result<()> {
    let p = &params.tensors()[i];
    let mut g = p.grad();
    if !g.defined() {
        // No backward pass ran on this replica yet (a worker replaying the rounds after a
        // peer's state): a backward through zero gives the parameter its gradient tensor.
        if !p.requires_grad() {
            return Err(OptimizerError::Config(format!(
                "ddp: {} does not require a gradient",
                params.names()[i]
            )));
        }
        p.f_mul_scalar(0.0)?.f_sum(p.kind())?.f_backward()?;
        g = p.grad();
    }
    tch::no_grad(|| g.f_copy_(value).map(|_| ()))?;
    Ok(())
}

impl OuterOptimizer for Ddp {
    fn algorithm(&self) -> Algorithm {
        Algorithm::Ddp
    }

    fn exchange_due(&self, phase: Phase, _step: u64) -> bool {
        phase == Phase::AfterBackward
    }

    fn prepare(&mut self, params: &ParamSet, round: u64, worker: u32) -> Result<Payload> {
        let mut segments = Vec::with_capacity(params.len());
        for (i, g) in params.grads().iter().enumerate() {
            let g = g.f_to_kind(Kind::Float)?.contiguous();
            let seg = with_host_f32(&params.names()[i], &g, |v| {
                dense_segment(i as u32, &params.shapes()[i], v, self.config.transport)
            })??;
            segments.push(seg);
        }
        Ok(Payload {
            algorithm: Algorithm::Ddp,
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
        let robust = &self.config.robust;
        let received = receive(Algorithm::Ddp, round, payloads, robust, None, |p, _| {
            dense_gradients(p, params)
        });
        for (i, shape) in params.shapes().iter().enumerate() {
            // With nobody applied every replica writes zeros: the inner step then moves
            // every replica the same way (momentum only) instead of by its own gradient.
            let mut mean = vec![0.0f32; shape.iter().product()];
            let contribs: Vec<(u32, &[f32])> =
                received.members.iter().map(|(w, v)| (*w, v[i].as_slice())).collect();
            robust.combine_dense(&contribs, &mut mean)?;
            write_grad(params, i, &tensor_from(&mean, shape))?;
        }
        Ok(received.report())
    }

    fn ring(&self, params: &ParamSet) -> Option<DenseRing> {
        DenseRing::for_mean(Algorithm::Ddp, &self.config.robust, params, self.config.transport)
    }

    fn apply_aggregate(
        &mut self,
        params: &ParamSet,
        round: u64,
        members: &[u32],
        aggregate: &[u8],
    ) -> Result<ApplyReport> {
        let ring = self.ring(params);
        let (means, report) = receive_aggregate(
            ring,
            Algorithm::Ddp,
            &self.config.robust,
            round,
            members,
            aggregate,
        )?;
        for (i, shape) in params.shapes().iter().enumerate() {
            // As in `apply`: nothing applied writes zeros on every replica.
            let zeros;
            let mean = match &means {
                Some(means) => &means[i],
                None => {
                    zeros = vec![0.0f32; shape.iter().product()];
                    &zeros
                }
            };
            write_grad(params, i, &tensor_from(mean, shape))?;
        }
        Ok(report)
    }

    fn state(&self) -> Result<OptimizerState> {
        Ok(OptimizerState::new(Algorithm::Ddp))
    }

    fn load_state(&mut self, _params: &ParamSet, state: &OptimizerState) -> Result<()> {
        state.expect_algorithm(Algorithm::Ddp)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::harness::Harness;
    use crate::payload::Segment;
    use crate::robust::Aggregation;
    use crate::testing::{run_checked, toy_harness};
    use crate::toy::ToyConfig;
    use crate::train_step::TrainStep;
    use tch::nn::{self, Module, OptimizerConfig};

    #[test]
    fn trains_with_identical_replicas_and_sends_every_gradient() {
        for transport in [Transport::F32, Transport::Bf16] {
            let config = DdpConfig { transport, ..Default::default() };
            let mut h =
                toy_harness(4, ToyConfig::default(), |_, p| Ok(Box::new(Ddp::new(config, p)?)));
            let (exchanges, before, after) = run_checked(&mut h, 60);
            assert_eq!(exchanges.len(), 60, "one exchange per step");
            assert!(after < 0.5 * before, "{transport:?}: loss {before} -> {after}");
            let numel = h.workers()[0].params.numel();
            let per_value = if transport == Transport::F32 { 4 } else { 2 };
            for x in &exchanges {
                for &bytes in &x.bytes_per_worker {
                    assert!(
                        bytes >= numel * per_value && bytes < numel * per_value + 256,
                        "{transport:?}: {bytes} bytes for {numel} values"
                    );
                }
            }
        }
    }

    #[test]
    fn int8_transport_is_rejected() {
        assert!(DdpConfig { transport: Transport::Int8, ..Default::default() }.validate().is_err());
        assert!(DdpConfig::default().validate().is_ok());
        let parsed: DdpConfig = toml::from_str("transport = \"bf16\"").unwrap();
        assert_eq!(parsed.transport, Transport::Bf16);
        assert!(toml::from_str::<DdpConfig>("inner_steps = 3").is_err());
    }

    /// A linear least-squares task on a fixed batch, with deterministic data and initial
    /// weights (no global RNG), so that splitting a batch across workers can be compared
    /// with one worker on the whole batch.
    struct Linear {
        vs: nn::VarStore,
        lin: nn::Linear,
        opt: nn::Optimizer,
        x: Tensor,
        y: Tensor,
    }

    impl Linear {
        fn new((start, end): (i64, i64)) -> Self {
            let vs = nn::VarStore::new(tch::Device::Cpu);
            let lin = nn::linear(vs.root() / "lin", 6, 3, Default::default());
            tch::no_grad(|| {
                let w = Tensor::arange(18, (Kind::Float, tch::Device::Cpu)).reshape([3, 6]);
                lin.ws.shallow_clone().copy_(&(w * 0.37).sin());
                let _ = lin.bs.as_ref().unwrap().shallow_clone().fill_(0.1);
            });
            let all = Tensor::arange(32 * 6, (Kind::Float, tch::Device::Cpu)).reshape([32, 6]);
            let x_all = (all * 0.71).cos();
            let target = Tensor::arange(18, (Kind::Float, tch::Device::Cpu)).reshape([6, 3]) * 0.1;
            let y_all = x_all.matmul(&target).tanh();
            let (x, y) = (x_all.slice(0, start, end, 1), y_all.slice(0, start, end, 1));
            let opt = nn::AdamW { wd: 0.0, ..Default::default() }.build(&vs, 1e-2).unwrap();
            Self { vs, lin, opt, x, y }
        }
    }

    impl TrainStep for Linear {
        fn parameters(&self) -> Vec<(String, Tensor)> {
            self.vs.variables().into_iter().collect()
        }
        fn forward_backward(&mut self) -> Result<f64> {
            self.opt.zero_grad();
            let loss = self.lin.forward(&self.x).mse_loss(&self.y, tch::Reduction::Mean);
            loss.backward();
            Ok(loss.double_value(&[]))
        }
        fn inner_step(&mut self) -> Result<()> {
            self.opt.step();
            Ok(())
        }
        fn eval_loss(&mut self) -> Result<f64> {
            Ok(0.0)
        }
    }

    fn trained(shards: &[(i64, i64)], steps: u64) -> Vec<Tensor> {
        let trains = shards.iter().copied().map(Linear::new).collect();
        let mut h = Harness::new(trains, |_, p| {
            Ok(Box::new(Ddp::new(DdpConfig::default(), p)?) as Box<dyn OuterOptimizer>)
        })
        .unwrap();
        h.shuffle_arrivals(7);
        h.run(steps).unwrap();
        h.workers()[0].params.snapshot()
    }

    fn max_diff(a: &[Tensor], b: &[Tensor]) -> f64 {
        a.iter().zip(b).map(|(x, y)| (x - y).abs().max().double_value(&[])).fold(0.0, f64::max)
    }

    #[test]
    fn four_workers_match_one_worker_on_the_concatenated_batch() {
        // Equal shard sizes and a mean loss: the mean of the shard gradients is the gradient
        // of the whole batch, so the trajectories agree up to f32 rounding.
        let ddp = trained(&[(0, 8), (8, 16), (16, 24), (24, 32)], 25);
        let whole = trained(&[(0, 32)], 25);
        let diff = max_diff(&ddp, &whole);
        assert!(diff < 2e-5, "DDP drifted {diff} from whole-batch training");
        // Not vacuous: one shard alone ends somewhere else.
        let shard = trained(&[(0, 8)], 25);
        assert!(max_diff(&shard, &whole) > 1e-3);
    }

    fn grad_param() -> ParamSet {
        let w = Tensor::from_slice(&[1.0f32, 2.0]).set_requires_grad(true);
        (&w * &w).sum(Kind::Float).backward();
        ParamSet::new(vec![("w".into(), w)]).unwrap()
    }

    #[test]
    fn malformed_payloads_are_rejected_and_the_mean_is_written_to_grad() {
        let params = grad_param();
        let mut d = Ddp::new(DdpConfig::default(), &params).unwrap();
        // Worker 1 sends the real gradient 2w = [2, 4]; worker 0 sends zeros.
        let good = d.prepare(&params, 5, 1).unwrap();
        assert_eq!(good.segments[0].dense_values().unwrap(), vec![2.0, 4.0]);
        let zeros = Payload {
            algorithm: Algorithm::Ddp,
            round: 5,
            worker: 0,
            effort: Default::default(),
            segments: vec![Segment::dense(0, &[2], &[0.0, 0.0], false)],
        };
        let mut nan = good.clone();
        nan.worker = 2;
        nan.segments[0].body[4..8].copy_from_slice(&f32::INFINITY.to_le_bytes());
        let mut wrong_shape = good.clone();
        wrong_shape.worker = 3;
        wrong_shape.segments[0] = Segment::dense(0, &[1, 2], &[1.0, 1.0], false);
        let mut short = good.clone();
        short.worker = 4;
        short.segments[0].body.truncate(4);
        let mut quantized = good.clone();
        quantized.worker = 6;
        quantized.segments[0].encoding = Encoding::Quantized;
        let mut stale = good.clone();
        stale.worker = 7;
        stale.round = 4;
        let report =
            d.apply(&params, 5, &[stale, quantized, short, wrong_shape, nan, good, zeros]).unwrap();
        assert_eq!(report.applied, vec![0, 1]);
        assert_eq!(
            report.rejected.iter().map(|r| r.0).collect::<Vec<_>>(),
            vec![2, 3, 4, 6, 7],
            "{:?}",
            report.rejected
        );
        assert_eq!(Vec::<f32>::try_from(params.tensors()[0].grad()).unwrap(), vec![1.0, 2.0]);
        // Nobody left: every replica zeroes its gradient alike.
        let report = d.apply(&params, 6, &[]).unwrap();
        assert!(report.applied.is_empty());
        assert_eq!(Vec::<f32>::try_from(params.tensors()[0].grad()).unwrap(), vec![0.0, 0.0]);
    }

    #[test]
    fn clip_median_shrinks_the_large_gradient_and_refuses_the_ring() {
        let params = grad_param();
        let robust = Robust { aggregation: Aggregation::ClipMedian, ..Default::default() };
        let config = DdpConfig { robust, ..Default::default() };
        let mut d = Ddp::new(config, &params).unwrap();
        assert!(d.ring(&params).is_none());
        assert!(d.apply_aggregate(&params, 0, &[0], &[]).is_err());
        assert!(Ddp::new(DdpConfig::default(), &params).unwrap().ring(&params).is_some());
        let grads = [[3.0f32, 4.0], [0.0, 5.0], [-5.0, 0.0], [0.0, -500.0]];
        let payloads: Vec<Payload> = grads
            .iter()
            .enumerate()
            .map(|(w, g)| Payload {
                algorithm: Algorithm::Ddp,
                round: 0,
                worker: w as u32,
                effort: Default::default(),
                segments: vec![Segment::dense(0, &[2], g, false)],
            })
            .collect();
        let report = d.apply(&params, 0, &payloads).unwrap();
        assert_eq!(report.applied, vec![0, 1, 2, 3]);
        // Norms 5, 5, 5, 500: the median is 5, so member 3 counts as [0, −5].
        let got = Vec::<f32>::try_from(params.tensors()[0].grad()).unwrap();
        assert!((got[0] + 0.5).abs() < 1e-6 && (got[1] - 1.0).abs() < 1e-6, "{got:?}");
    }

    #[test]
    fn state_is_empty_and_checks_the_algorithm() {
        let params = grad_param();
        let mut d = Ddp::new(DdpConfig::default(), &params).unwrap();
        let s = d.state().unwrap();
        assert_eq!(s.algorithm, Algorithm::Ddp);
        assert!(s.tensors.is_empty());
        d.load_state(&params, &s).unwrap();
        assert!(d.load_state(&params, &OptimizerState::new(Algorithm::Diloco)).is_err());
        assert!(d.exchange_due(Phase::AfterBackward, 0));
        assert!(!d.exchange_due(Phase::AfterInnerStep, 0));
    }
}
