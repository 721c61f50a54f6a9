//! A Byzantine worker, for testing defences: its outer optimizer trains and applies rounds
//! like everyone's, but the update it sends is doctored (scaled ×100, sign-flipped, or
//! random noise of plausible norm). The attack tests and `meridian simulate --chaos`
//! mount it; nothing else should.

use meridian_kernels::pipeline::Compressor;
use meridian_kernels::rng::SplitMix64;
use tch::Tensor;

use crate::algorithm::Algorithm;
use crate::error::Result;
use crate::outer::diloco::segment_values;
use crate::outer::{ApplyReport, OptimizerState, OuterOptimizer, Phase};
use crate::params::ParamSet;
use crate::payload::{Encoding, Payload, Segment};
use crate::ring::DenseRing;

/// The noise attack's norm, in multiples of the honest update's.
const NOISE_NORM: f64 = 2.5;

/// What a Byzantine member does to its update.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Attack {
    /// Multiplies every value by 100.
    Scaled,
    /// Negates every value.
    SignFlipped,
    /// Sends uniform noise rescaled, tensor by tensor, to 2.5× the norm of its honest
    /// update: a plausible norm, inside the default `outlier_factor` of 3, so rejection by
    /// norm does not see it.
    Noise,
}

impl Attack {
    fn apply(self, values: &mut [f32], rng: &mut SplitMix64) {
        match self {
            Attack::Scaled => values.iter_mut().for_each(|v| *v *= 100.0),
            Attack::SignFlipped => values.iter_mut().for_each(|v| *v = -*v),
            Attack::Noise => {
                let norm = |x: &[f32]| x.iter().map(|v| f64::from(*v).powi(2)).sum::<f64>().sqrt();
                let honest = norm(values);
                values.iter_mut().for_each(|v| *v = rng.next_unit_f32() * 2.0 - 1.0);
                let noise = norm(values);
                if noise > 0.0 {
                    let by = (NOISE_NORM * honest / noise) as f32;
                    values.iter_mut().for_each(|v| *v *= by);
                }
            }
        }
    }
}

/// A member's honest optimizer with its outgoing payload doctored. For compressed payloads
/// the attack is applied to the decompressed update, which is compressed again with the
/// same pipeline, so the payload stays well-formed and only its content lies.
pub struct Byzantine {
    inner: Box<dyn OuterOptimizer>,
    attack: Attack,
    rng: SplitMix64,
    /// One compressor per tensor, for algorithms that send compressed segments.
    compressors: Vec<Compressor>,
}

impl Byzantine {
    /// Wraps `inner`; `compressors` (one per tensor, in parameter order) decode and
    /// re-encode compressed segments; `seed` drives the noise.
    pub fn new(
        inner: Box<dyn OuterOptimizer>,
        attack: Attack,
        compressors: Vec<Compressor>,
        seed: u64,
    ) -> Self {
        Byzantine { inner, attack, rng: SplitMix64::new(seed), compressors }
    }
}

impl OuterOptimizer for Byzantine {
    fn algorithm(&self) -> Algorithm {
        self.inner.algorithm()
    }
    fn runs_inner_optimizer(&self) -> bool {
        self.inner.runs_inner_optimizer()
    }
    fn exchange_due(&self, phase: Phase, step: u64) -> bool {
        self.inner.exchange_due(phase, step)
    }
    fn prepare(&mut self, params: &ParamSet, round: u64, worker: u32) -> Result<Payload> {
        let mut p = self.inner.prepare(params, round, worker)?;
        for s in &mut p.segments {
            let shape: Vec<usize> = s.shape.iter().map(|&d| d as usize).collect();
            if s.encoding == Encoding::Compressed {
                let Some(c) = self.compressors.get_mut(s.tensor as usize) else {
                    return Err(crate::OptimizerError::Config(format!(
                        "byzantine: no compressor for tensor {}",
                        s.tensor
                    )));
                };
                let mut values = c.decompress(&s.body)?;
                self.attack.apply(&mut values, &mut self.rng);
                s.body = c.compress(&values)?.bytes;
            } else {
                let mut values = segment_values(s)?;
                self.attack.apply(&mut values, &mut self.rng);
                *s = Segment::dense(s.tensor, &shape, &values, false);
            }
        }
        Ok(p)
    }
    fn apply(
        &mut self,
        params: &ParamSet,
        round: u64,
        payloads: &[Payload],
    ) -> Result<ApplyReport> {
        self.inner.apply(params, round, payloads)
    }
    fn ring(&self, params: &ParamSet) -> Option<DenseRing> {
        self.inner.ring(params)
    }
    fn apply_aggregate(
        &mut self,
        params: &ParamSet,
        round: u64,
        members: &[u32],
        aggregate: &[u8],
    ) -> Result<ApplyReport> {
        self.inner.apply_aggregate(params, round, members, aggregate)
    }
    fn consensus_hash(&self, params: &ParamSet) -> Result<u64> {
        self.inner.consensus_hash(params)
    }
    fn consensus_params(&self) -> Option<&[Tensor]> {
        self.inner.consensus_params()
    }

    fn overlap(&self) -> u64 {
        self.inner.overlap()
    }
    fn balance(&self) -> bool {
        self.inner.balance()
    }
    fn divergence_suspects(&self) -> Vec<crate::divergence::Suspect> {
        self.inner.divergence_suspects()
    }
    fn state(&self) -> Result<OptimizerState> {
        self.inner.state()
    }
    fn load_state(&mut self, params: &ParamSet, state: &OptimizerState) -> Result<()> {
        self.inner.load_state(params, state)
    }
}
