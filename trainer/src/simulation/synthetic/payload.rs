//! A synthetic worker's payloads: made once by the algorithm's real encoder, sent every
//! round.
//!
//! For each tensor of the [`SyntheticModel`] the algorithm's own optimizer is built over
//! that one tensor ([`AlgoConfig::build_part`], which keeps Streaming DiLoCo's fragment of
//! it), the tensor is moved by a synthetic pseudo-gradient (also set as its gradient, for
//! the algorithms that send gradients), and the optimizer's `prepare` encodes it as it
//! would in the tensor's first round. The segments are then renumbered into the whole
//! model's canonical order. One tensor at a time keeps the memory this takes to a few
//! times the largest tensor, and the payload is exactly what `prepare` would produce for
//! the whole model: every algorithm encodes each tensor from that tensor alone.
//!
//! The pseudo-gradient is heavy-tailed, as real ones are (a few coordinates carry most of
//! the mass, which is what top-k and the codebooks are built for): a standard normal times
//! a log-normal scale, deterministic for the seed.
//!
//! Workers' payloads differ, as trained workers' do, without an encode per worker (eight
//! encodes of a 10^9-parameter model would take minutes and eight times the memory): the
//! model is encoded [`ENCODINGS`] times, each from its own pseudo-gradient seed, and each
//! worker's payload takes each segment from one of them, chosen by a bit of the worker's
//! index ([`Payloads::for_worker`]). Any two workers' payloads then differ in at least one
//! segment whenever a payload has at least log2(workers) segments.

use anyhow::{bail, Context, Result};
use meridian_kernels::rng::SplitMix64;
use meridian_optimizer::config::AlgoConfig;
use meridian_optimizer::outer::{OuterOptimizer, Phase};
use meridian_optimizer::params::ParamSet;
use meridian_optimizer::payload::{Payload, Segment};
use tch::{Kind, Tensor};

use super::model::SyntheticModel;
use crate::simulation::limits::steps_per_round;

/// Distinct encodings of the model (each from its own pseudo-gradient seed) that workers'
/// payloads are drawn from.
pub const ENCODINGS: usize = 2;

/// Every payload a synthetic worker of one algorithm sends: per encoding, one per exchange
/// kind (one for every algorithm but Streaming DiLoCo, whose exchanges each carry one
/// fragment).
#[derive(Debug, Clone)]
pub struct Payloads {
    /// Per encoding, per exchange kind, the payload (round and worker 0). Every encoding
    /// has the same exchange kinds and segments; the bodies' values differ, and with them,
    /// by a fraction of a percent, the sizes of Rice-coded indices.
    pub encodings: Vec<Vec<Payload>>,
}

impl Payloads {
    /// The exchange kind of the exchange after inner step `step` (Streaming DiLoCo: the
    /// fragment due then; the others: their only one).
    fn kind(algo: &AlgoConfig, step: u64) -> Option<usize> {
        match algo {
            AlgoConfig::Streaming(c) => c.fragment_due(step),
            _ => Some(0),
        }
    }

    /// The first encoding's payload of the exchange after inner step `step`: the
    /// structure (tensors, encodings, sizes) every worker's payload then has.
    pub fn for_step(&self, algo: &AlgoConfig, step: u64) -> Option<&Payload> {
        self.encodings.first()?.get(Self::kind(algo, step)?)
    }

    /// Worker `index`'s payload (of `workers`) for the exchange after inner step `step`,
    /// as round `round` from member `member`: segment `j` comes from the encoding that bit
    /// `j mod ⌈log2 workers⌉` of `index` names, so no two workers' payloads are the same
    /// where a payload has that many segments (module doc).
    pub fn for_worker(
        &self,
        algo: &AlgoConfig,
        step: u64,
        index: usize,
        workers: usize,
        (round, member): (u64, u32),
    ) -> Option<Payload> {
        let kind = Self::kind(algo, step)?;
        let first = self.encodings.first()?.get(kind)?;
        let bits = (usize::BITS - workers.saturating_sub(1).leading_zeros()).max(1) as usize;
        let segments = (0..first.segments.len())
            .map(|j| {
                let source = if self.encodings.len() < 2 { 0 } else { (index >> (j % bits)) & 1 };
                self.encodings.get(source)?.get(kind)?.segments.get(j).cloned()
            })
            .collect::<Option<Vec<Segment>>>()?;
        Some(Payload {
            algorithm: first.algorithm,
            round,
            worker: member,
            effort: Default::default(),
            segments,
        })
    }

    /// The largest payload any worker can send, in bytes: per exchange kind, each segment
    /// at its largest over the encodings (a worker mixes them, and Rice-coded indices make
    /// the same segment's size vary a little between encodings).
    pub fn largest(&self) -> usize {
        let Some(first) = self.encodings.first() else { return 0 };
        (0..first.len())
            .map(|kind| {
                // A segment's header does not depend on its body: only body lengths vary.
                let extra: usize = (0..first[kind].segments.len())
                    .map(|j| {
                        let len =
                            |e: &Vec<Payload>| e.get(kind)?.segments.get(j).map(|s| s.body.len());
                        let own = len(first).unwrap_or(0);
                        self.encodings.iter().filter_map(len).max().unwrap_or(own) - own
                    })
                    .sum();
                first[kind].encoded_len() + extra
            })
            .max()
            .unwrap_or(0)
    }

    /// Segments in the largest exchange.
    pub fn segments(&self) -> usize {
        self.encodings.iter().flatten().map(|p| p.segments.len()).max().unwrap_or(0)
    }

    /// Every payload's bytes together, over every encoding (what the run holds).
    pub fn total(&self) -> usize {
        self.encodings.iter().flatten().map(Payload::encoded_len).sum()
    }
}

/// A deterministic heavy-tailed pseudo-gradient of `n` values: N(0, 1) times a
/// log-normal scale e^{N(0, 1)}, times 10^-3 (a typical size of one round's drift).
pub fn pseudo_gradient(n: usize, seed: u64) -> Vec<f32> {
    let mut rng = SplitMix64::new(seed);
    let mut normal = || {
        // Box–Muller; 1 − u keeps the logarithm's argument in (0, 1].
        let u = 1.0 - rng.next_unit_f32();
        let v = rng.next_unit_f32();
        (-2.0 * u.ln()).sqrt() * (std::f32::consts::TAU * v).cos()
    };
    (0..n).map(|_| normal() * normal().exp() * 1e-3).collect()
}

/// Encodes `model`'s payloads for `algo` with the algorithm's real encoder, `encodings`
/// times (module doc); `seed` makes the pseudo-gradients.
pub fn encode(
    algo: &AlgoConfig,
    model: &SyntheticModel,
    seed: u64,
    encodings: usize,
) -> Result<Payloads> {
    let encodings = (0..encodings.max(1) as u64)
        .map(|e| encode_one(algo, model, seed ^ e.wrapping_mul(0xd1b5_4a32_d192_ed03)))
        .collect::<Result<Vec<_>>>()?;
    Ok(Payloads { encodings })
}

/// One encoding of `model`'s payloads, per exchange kind, from the pseudo-gradient `seed`.
fn encode_one(algo: &AlgoConfig, model: &SyntheticModel, seed: u64) -> Result<Vec<Payload>> {
    let kinds = match algo {
        AlgoConfig::Streaming(c) => {
            if c.fragments > model.shapes.len() as u64 {
                bail!(
                    "streaming: {} fragments for a synthetic model of {} tensors would leave one \
                     empty; use --set fragments=N with N at most {}",
                    c.fragments,
                    model.shapes.len(),
                    model.shapes.len()
                );
            }
            c.fragments as usize
        }
        _ => 1,
    };
    let mut segments: Vec<Vec<Segment>> = vec![Vec::new(); kinds];
    for (i, shape) in model.shapes.iter().enumerate() {
        let segment = encode_tensor(algo, i, shape, seed)
            .with_context(|| format!("encoding synthetic tensor {i} {shape:?}"))?;
        let kind = match algo {
            AlgoConfig::Streaming(c) => c.fragment_of(i),
            _ => 0,
        };
        segments[kind].push(segment);
    }
    let algorithm = algo.algorithm();
    let payloads = segments.into_iter().map(|segments| Payload {
        algorithm,
        round: 0,
        worker: 0,
        effort: Default::default(),
        segments,
    });
    Ok(payloads.collect())
}

/// Tensor `index` of `shape`, encoded by `algo`'s optimizer in its first exchange.
fn encode_tensor(algo: &AlgoConfig, index: usize, shape: &[usize], seed: u64) -> Result<Segment> {
    let numel: usize = shape.iter().product();
    let dims: Vec<i64> = shape.iter().map(|&d| d as i64).collect();
    let values = pseudo_gradient(numel, seed ^ (index as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15));
    let g = Tensor::from_slice(&values).reshape(dims.as_slice());
    drop(values);
    let mut t =
        Tensor::zeros(dims.as_slice(), (Kind::Float, tch::Device::Cpu)).set_requires_grad(true);
    // ∂(t·g)/∂t = g: the gradient the algorithms that send gradients (DDP, DeMo) read.
    t.f_mul(&g)?.f_sum(Kind::Float)?.f_backward()?;
    let params = ParamSet::new(vec![("synthetic".to_string(), t.shallow_clone())])?;
    let mut outer = algo.build_part(&params, index)?;
    // θ_local = θ_global − g: the pseudo-gradient Δ = θ_global − θ_local is g.
    tch::no_grad(|| t.f_sub_(&g).map(drop))?;
    drop(g);
    let segment = first_segment(&mut *outer, &params, steps_per_round(algo))?;
    Ok(Segment { tensor: index as u32, ..segment })
}

/// The segment of the first exchange that carries this part's tensor, within two rounds
/// of steps (Streaming DiLoCo's other fragments are empty in a one-tensor part).
fn first_segment(
    outer: &mut dyn OuterOptimizer,
    params: &ParamSet,
    steps_per_round: u64,
) -> Result<Segment> {
    let mut round = 0;
    for step in 0..2 * steps_per_round.max(1) {
        for phase in [Phase::AfterBackward, Phase::AfterInnerStep] {
            if !outer.exchange_due(phase, step) {
                continue;
            }
            let payload = outer.prepare(params, round, 0)?;
            round += 1;
            if let Some(segment) = payload.segments.into_iter().next() {
                return Ok(segment);
            }
        }
    }
    bail!("{} sent nothing for this tensor within two rounds", outer.algorithm())
}

#[cfg(test)]
#[cfg_attr(test, allow(clippy::unwrap_used))]
mod tests {
    use super::*;
    use meridian_optimizer::Algorithm;

    #[test]
    fn the_pseudo_gradient_is_seeded_finite_and_heavy_tailed() {
        let a = pseudo_gradient(100_000, 7);
        assert_eq!(a, pseudo_gradient(100_000, 7));
        assert_ne!(a, pseudo_gradient(100_000, 8));
        assert!(a.iter().all(|v| v.is_finite()));
        // Kurtosis far above a normal's 3: the tails a top-k feeds on.
        let n = a.len() as f64;
        let mean = a.iter().map(|&v| f64::from(v)).sum::<f64>() / n;
        let m2 = a.iter().map(|&v| (f64::from(v) - mean).powi(2)).sum::<f64>() / n;
        let m4 = a.iter().map(|&v| (f64::from(v) - mean).powi(4)).sum::<f64>() / n;
        assert!(m4 / (m2 * m2) > 10.0, "kurtosis {}", m4 / (m2 * m2));
    }

    #[test]
    fn every_algorithm_encodes_every_tensor_once() {
        let model = SyntheticModel::new(super::super::model::MIN_PARAMS).unwrap();
        for a in Algorithm::ALL {
            let algo = AlgoConfig::default_for(a);
            let p = encode(&algo, &model, 1, 1).unwrap();
            let mut tensors: Vec<u32> =
                p.encodings[0].iter().flat_map(|p| p.segments.iter().map(|s| s.tensor)).collect();
            tensors.sort_unstable();
            let all: Vec<u32> = (0..model.shapes.len() as u32).collect();
            assert_eq!(tensors, all, "{a}");
            for payload in &p.encodings[0] {
                // Each payload decodes as a valid payload of the model.
                Payload::decode(&payload.encode(), &model.shapes).unwrap();
            }
        }
    }

    #[test]
    fn every_worker_sends_its_own_valid_payload_of_about_the_same_size() {
        let model = SyntheticModel::new(super::super::model::MIN_PARAMS).unwrap();
        for a in [Algorithm::Sparseloco, Algorithm::Diloco, Algorithm::Demo] {
            let algo = AlgoConfig::default_for(a);
            let p = encode(&algo, &model, 1, ENCODINGS).unwrap();
            // Every exchange of these algorithms carries the one kind of payload.
            let step = 0;
            let sent: Vec<Payload> = (0..8)
                .map(|w| p.for_worker(&algo, step, w, 8, (3, w as u32 + 10)).unwrap())
                .collect();
            for (w, payload) in sent.iter().enumerate() {
                assert_eq!((payload.round, payload.worker), (3, w as u32 + 10), "{a}");
                // Equal but for the Rice-coded indices of sparse payloads, which vary with
                // the selection: within 1% of the largest encoding.
                let (len, largest) = (payload.encoded_len(), p.largest());
                assert!(len <= largest && len * 100 >= largest * 99, "{a}: {len} vs {largest}");
                Payload::decode(&payload.encode(), &model.shapes).unwrap();
                // The bodies (not only the headers) differ from every other worker's.
                for other in &sent[..w] {
                    assert_ne!(payload.segments, other.segments, "{a}: worker {w}");
                }
            }
            // Deterministic: the same worker sends the same bytes again.
            assert_eq!(p.for_worker(&algo, step, 5, 8, (3, 15)).unwrap(), sent[5], "{a}");
        }
    }
}
