use meridian_optimizer::config::AlgoConfig;
use meridian_optimizer::outer::{OptimizerState, OuterOptimizer, Phase};
use meridian_optimizer::params::{hash_of_records, hash_records, ParamSet};
use meridian_optimizer::payload::{Payload, Segment};
use meridian_optimizer::Algorithm;
use tch::Tensor;

use super::*;

const SHAPES: [&[i64]; 5] = [&[6, 4], &[4], &[8, 3], &[3], &[5, 5]];

/// The model's tensors, names in canonical order ("t0" …), with values from `seed`.
fn model(seed: f64) -> Vec<(String, Tensor)> {
    SHAPES
        .iter()
        .enumerate()
        .map(|(i, shape)| {
            let n: i64 = shape.iter().product();
            let x = Tensor::arange(n, (tch::Kind::Float, tch::Device::Cpu));
            let t = ((x * 0.37 + seed + i as f64).sin() * 0.5).reshape(*shape);
            (format!("t{i}"), t.set_requires_grad(true))
        })
        .collect()
}

fn shapes() -> Vec<Vec<usize>> {
    SHAPES.iter().map(|s| s.iter().map(|&d| d as usize).collect()).collect()
}

/// Moves every parameter as an inner step would, and leaves a gradient on it (DeMo's
/// input), the same on every copy of the model given the same `salt`.
fn train(params: &[Tensor], first: usize, salt: f64) {
    for (k, p) in params.iter().enumerate() {
        let i = first + k;
        let n = p.numel() as i64;
        let x = Tensor::arange(n, (tch::Kind::Float, tch::Device::Cpu)).reshape(p.size());
        let wiggle = (x * 0.91 + salt * 3.1 + i as f64).cos() * 0.01;
        tch::no_grad(|| {
            let mut p = p.shallow_clone();
            let _ = p.g_add_(&wiggle);
        });
        let mut p = p.shallow_clone();
        p.zero_grad();
        (&p * &wiggle * 100.0).sum(tch::Kind::Float).backward();
    }
}

/// An outer optimizer's state as a snapshot holds it: under `outer/`, with a counter.
fn snapshot(outer: &dyn OuterOptimizer) -> Vec<u8> {
    let state = outer.state().unwrap();
    let mut s = OptimizerState::new(state.algorithm);
    for (k, t) in &state.tensors {
        s.share(format!("outer/{k}"), t);
    }
    s.put_scalar("step", 12.0);
    s.to_bytes().unwrap()
}

#[test]
fn bounds_balance_elements_and_give_every_rank_a_tensor() {
    assert_eq!(balanced_bounds(&[10, 10, 10, 10], 2), Some(vec![0, 2, 4]));
    assert_eq!(balanced_bounds(&[100, 1, 1, 1], 2), Some(vec![0, 1, 4]));
    assert_eq!(balanced_bounds(&[1, 1, 1, 100], 2), Some(vec![0, 3, 4]));
    assert_eq!(balanced_bounds(&[5, 5, 5], 3), Some(vec![0, 1, 2, 3]));
    assert_eq!(balanced_bounds(&[1000, 1, 1], 3), Some(vec![0, 1, 2, 3]));
    assert_eq!(balanced_bounds(&[5, 5], 3), None);
    assert_eq!(balanced_bounds(&[5], 0), None);
    let b = balanced_bounds(&[24, 4, 24, 3, 25], 2).unwrap();
    assert!(ShardLayout::new(shapes(), b, 1).is_ok());
    assert!(ShardLayout::new(shapes(), vec![0, 0, 5], 0).is_err(), "a rank without tensors");
    assert!(ShardLayout::new(shapes(), vec![0, 2, 4], 0).is_err(), "a tensor nobody holds");
    assert!(ShardLayout::new(shapes(), vec![0, 2, 5], 2).is_err(), "no such rank");
}

/// One process holding the whole model, a peer, and a site of two ranks holding parts of
/// the first process's model, all running `config`.
struct Trio {
    whole: ParamSet,
    other: ParamSet,
    one: Box<dyn OuterOptimizer>,
    peer: Box<dyn OuterOptimizer>,
    layouts: Vec<ShardLayout>,
    parts: Vec<ParamSet>,
    shards: Vec<Box<dyn OuterOptimizer>>,
}

impl Trio {
    fn new(config: &AlgoConfig) -> Self {
        check_shardable(config, 5).unwrap();
        let whole = ParamSet::new(model(0.0)).unwrap();
        let other = ParamSet::new(model(0.5)).unwrap();
        let (one, peer) = (config.build(&whole).unwrap(), config.build(&other).unwrap());
        let streaming = config.algorithm() == Algorithm::Streaming;
        let layouts: Vec<ShardLayout> = (0..2)
            .map(|r| {
                let l = ShardLayout::new(shapes(), vec![0, 2, 5], r).unwrap();
                if streaming {
                    l.with_partial_payloads()
                } else {
                    l
                }
            })
            .collect();
        let parts: Vec<ParamSet> = layouts
            .iter()
            .map(|l| ParamSet::new(model(0.0).drain(l.range()).collect()).unwrap())
            .collect();
        let shards = layouts
            .iter()
            .zip(&parts)
            .map(|(l, p)| config.build_part(p, l.range().start).unwrap())
            .collect();
        Self { whole, other, one, peer, layouts, parts, shards }
    }

    /// An inner step everywhere: the site's ranks train their parts as the first process.
    fn train(&mut self, salt: f64) {
        train(self.whole.tensors(), 0, salt);
        train(self.other.tensors(), 0, salt + 0.25);
        for (l, p) in self.layouts.iter().zip(&self.parts) {
            train(p.tensors(), l.range().start, salt);
        }
    }

    /// Round `round`: the site's merged payload is the first process's; everyone applies
    /// the first process's and the peer's.
    fn exchange(&mut self, round: u64, what: &str) {
        let mine = self.one.prepare(&self.whole, round, 0).unwrap().encode();
        let theirs = self.peer.prepare(&self.other, round, 1).unwrap().encode();
        let from_ranks: Vec<Vec<u8>> = self
            .shards
            .iter_mut()
            .zip(&self.parts)
            .map(|(s, p)| s.prepare(p, round, 0).unwrap().encode())
            .collect();
        let merged = self.layouts[0].merge_payloads(&from_ranks).unwrap();
        assert_eq!(merged, mine, "{what}: the site's payload, round {round}");
        let committed = [mine, theirs];
        let decoded: Vec<Payload> =
            committed.iter().map(|b| Payload::decode(b, &shapes()).unwrap()).collect();
        self.one.apply(&self.whole, round, &decoded).unwrap();
        self.peer.apply(&self.other, round, &decoded).unwrap();
        for ((s, p), l) in self.shards.iter_mut().zip(&self.parts).zip(&self.layouts) {
            let local: Vec<Payload> = committed
                .iter()
                .map(|b| Payload::decode(&l.localize_payload(b), p.shapes()).unwrap())
                .collect();
            assert_eq!(s.apply(p, round, &local).unwrap().applied, [0, 1], "{what}");
        }
    }

    /// The hash of the ranks' parts, of the tensors `pick` takes from each.
    fn parts_hash(&self, pick: impl Fn(&dyn OuterOptimizer, &ParamSet) -> Vec<Tensor>) -> u64 {
        let mut records = Vec::new();
        for (s, p) in self.shards.iter().zip(&self.parts) {
            records.extend(hash_records(p.names(), &pick(s.as_ref(), p)).unwrap());
        }
        hash_of_records(&records)
    }
}

fn local(_: &dyn OuterOptimizer, p: &ParamSet) -> Vec<Tensor> {
    p.tensors().iter().map(Tensor::shallow_clone).collect()
}

fn agreed(o: &dyn OuterOptimizer, p: &ParamSet) -> Vec<Tensor> {
    o.consensus_params().unwrap_or(p.tensors()).iter().map(Tensor::shallow_clone).collect()
}

fn config_of(algorithm: Algorithm, sets: &[(&str, &str)]) -> AlgoConfig {
    let overrides: Vec<(String, String)> =
        sets.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
    AlgoConfig::from_parts(algorithm, toml::Table::new(), &overrides).unwrap()
}

/// A sharded site's payloads and updates are, bit for bit, a single process's.
#[test]
fn ranks_holding_parts_of_the_model_act_as_one_process() {
    tch::set_num_threads(1);
    for (algorithm, sets) in [
        (Algorithm::Diloco, vec![]),
        (Algorithm::Diloco, vec![("transport", "int8")]),
        (Algorithm::Sparseloco, vec![]),
        (Algorithm::Demo, vec![]),
    ] {
        let what = format!("{algorithm} {sets:?}");
        let mut t = Trio::new(&config_of(algorithm, &sets));
        for round in 0..3u64 {
            t.train(round as f64);
            t.exchange(round, &what);
            let after = format!("{what}: the ranks' parts after round {round}");
            assert_eq!(t.parts_hash(local), t.whole.hash().unwrap(), "{after}");
        }
        // The state a site serves is the single process's, and each rank takes its part.
        let states: Vec<Vec<u8>> = t.shards.iter().map(|s| snapshot(s.as_ref())).collect();
        let merged = t.layouts[0].merge_states(&states).unwrap();
        assert_eq!(merged, snapshot(t.one.as_ref()), "{what}: state");
        for (l, s) in t.layouts.iter().zip(&states) {
            assert_eq!(&l.localize_state(&merged).unwrap(), s, "{what}: rank's part");
        }
    }
}

#[test]
fn a_payload_a_process_would_reject_whole_is_rejected_by_every_rank() {
    let l = ShardLayout::new(shapes(), vec![0, 2, 5], 1).unwrap();
    let segments: Vec<Segment> = shapes()
        .iter()
        .enumerate()
        .map(|(i, s)| Segment::dense(i as u32, s, &vec![0.5; s.iter().product()], false))
        .collect();
    let whole = Payload {
        algorithm: Algorithm::Diloco,
        round: 3,
        worker: 1,
        effort: Default::default(),
        segments,
    };
    let bytes = whole.encode();
    let part = Payload::decode(&l.localize_payload(&bytes), &shapes()[2..]).unwrap();
    assert_eq!(part.segments.len(), 3);
    assert_eq!((part.round, part.worker), (3, 1));
    assert!(part.segments.iter().enumerate().all(|(k, s)| s.tensor as usize == k));
    // Damaged, truncated, or missing a tensor outside this rank's part: empty for everyone.
    let mut damaged = bytes.clone();
    damaged[0] ^= 1;
    assert!(l.localize_payload(&damaged).is_empty());
    assert!(l.localize_payload(&bytes[..bytes.len() - 1]).is_empty());
    let mut short = whole.clone();
    short.segments.remove(0);
    assert!(l.localize_payload(&short.encode()).is_empty());
    // Merging refuses parts that disagree on the round, or that do not decode.
    let part0 = Payload { segments: whole.segments[..2].to_vec(), ..whole.clone() };
    let mut part1 = Payload { segments: whole.segments[2..].to_vec(), ..whole.clone() };
    for (k, s) in part1.segments.iter_mut().enumerate() {
        s.tensor = k as u32;
    }
    assert_eq!(l.merge_payloads(&[part0.encode(), part1.encode()]).unwrap(), bytes);
    let late = Payload { round: 4, ..part1.clone() };
    let e = l.merge_payloads(&[part0.encode(), late.encode()]).unwrap_err();
    assert!(format!("{e:#}").contains("round 4"), "{e:#}");
    assert!(l.merge_payloads(&[part0.encode(), vec![1, 2, 3]]).is_err());
    assert!(l.merge_payloads(&[part0.encode()]).is_err());
}

#[test]
fn what_a_sharded_site_cannot_run_is_named() {
    for (algorithm, sets, tensors, why) in [
        (Algorithm::Ddp, vec![], 5, "no outer state"),
        (Algorithm::Streaming, vec![], 3, "4 fragments for a model of 3 tensors"),
        (Algorithm::Diloco, vec![("aggregation", "clip_median")], 5, "clip_median"),
    ] {
        let e = check_shardable(&config_of(algorithm, &sets), tensors).unwrap_err();
        assert!(format!("{e:#}").contains(why), "{algorithm}: {e:#}");
    }
}

/// Streaming DiLoCo on parts of the model: each tensor keeps its whole-model fragment, so
/// the site's fragment payloads, global copy and local merges are a single process's.
#[test]
fn streaming_ranks_keep_the_whole_models_fragments() {
    tch::set_num_threads(1);
    let sets = [("inner_steps", "6"), ("fragments", "3"), ("overlap", "1")];
    let mut t = Trio::new(&config_of(Algorithm::Streaming, &sets));
    let mut round = 0;
    for step in 0..14u64 {
        t.train(step as f64);
        if t.one.exchange_due(Phase::AfterInnerStep, step) {
            t.exchange(round, &format!("streaming, step {step}"));
            round += 1;
        }
        // Global copies and local parameters (merges included) agree at every step.
        let global = t.one.consensus_hash(&t.whole).unwrap();
        assert_eq!(t.parts_hash(agreed), global, "global, step {step}");
        assert_eq!(t.parts_hash(local), t.whole.hash().unwrap(), "local, step {step}");
    }
    assert!(round >= 4, "{round} rounds");
    // The merges kept part of the local training: the local copy is not the global one.
    assert_ne!(t.whole.hash().unwrap(), t.one.consensus_hash(&t.whole).unwrap());
}
