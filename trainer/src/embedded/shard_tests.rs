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

/// A sharded site's payloads and updates are, bit for bit, a single process's.
#[test]
fn ranks_holding_parts_of_the_model_act_as_one_process() {
    tch::set_num_threads(1);
    let bounds = vec![0, 2, 5];
    for (algorithm, sets) in [
        (Algorithm::Diloco, vec![]),
        (Algorithm::Diloco, vec![("transport", "int8")]),
        (Algorithm::Sparseloco, vec![]),
        (Algorithm::Demo, vec![]),
    ] {
        let overrides: Vec<(String, String)> =
            sets.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        let config = AlgoConfig::from_parts(algorithm, toml::Table::new(), &overrides).unwrap();
        check_shardable(&config, 5).unwrap();
        let whole = ParamSet::new(model(0.0)).unwrap();
        let other = ParamSet::new(model(0.5)).unwrap();
        let mut one = config.build(&whole).unwrap();
        let mut peer = config.build(&other).unwrap();
        let layouts: Vec<ShardLayout> =
            (0..2).map(|r| ShardLayout::new(shapes(), bounds.clone(), r).unwrap()).collect();
        let parts: Vec<ParamSet> = layouts
            .iter()
            .map(|l| ParamSet::new(model(0.0).drain(l.range()).collect()).unwrap())
            .collect();
        let mut shards: Vec<_> = parts.iter().map(|p| config.build(p).unwrap()).collect();
        for round in 0..3u64 {
            let salt = round as f64;
            train(whole.tensors(), 0, salt);
            train(other.tensors(), 0, salt + 0.25);
            for (l, p) in layouts.iter().zip(&parts) {
                train(p.tensors(), l.range().start, salt);
            }
            let mine = one.prepare(&whole, round, 0).unwrap().encode();
            let theirs = peer.prepare(&other, round, 1).unwrap().encode();
            let from_ranks: Vec<Vec<u8>> = shards
                .iter_mut()
                .zip(&parts)
                .map(|(s, p)| s.prepare(p, round, 0).unwrap().encode())
                .collect();
            let merged = layouts[0].merge_payloads(&from_ranks).unwrap();
            assert_eq!(merged, mine, "{algorithm} {sets:?}: the site's payload, round {round}");

            let committed = [mine, theirs];
            let decoded: Vec<Payload> =
                committed.iter().map(|b| Payload::decode(b, &shapes()).unwrap()).collect();
            one.apply(&whole, round, &decoded).unwrap();
            peer.apply(&other, round, &decoded).unwrap();
            let mut records = Vec::new();
            for ((s, p), l) in shards.iter_mut().zip(&parts).zip(&layouts) {
                let local: Vec<Payload> = committed
                    .iter()
                    .map(|b| Payload::decode(&l.localize_payload(b), p.shapes()).unwrap())
                    .collect();
                let report = s.apply(p, round, &local).unwrap();
                assert_eq!(report.applied, [0, 1]);
                records.extend(hash_records(p.names(), p.tensors()).unwrap());
            }
            assert_eq!(
                hash_of_records(&records),
                whole.hash().unwrap(),
                "{algorithm} {sets:?}: the ranks' parts after round {round}"
            );
        }
        // The state a site serves is the single process's, and each rank takes its part.
        let states: Vec<Vec<u8>> = shards.iter().map(|s| snapshot(s.as_ref())).collect();
        let merged = layouts[0].merge_states(&states).unwrap();
        assert_eq!(merged, snapshot(one.as_ref()), "{algorithm}: state");
        for (l, s) in layouts.iter().zip(&states) {
            assert_eq!(&l.localize_state(&merged).unwrap(), s, "{algorithm}: rank's part");
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
    let whole = Payload { algorithm: Algorithm::Diloco, round: 3, worker: 1, segments };
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
        let overrides: Vec<(String, String)> =
            sets.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        let config = AlgoConfig::from_parts(algorithm, toml::Table::new(), &overrides).unwrap();
        let e = check_shardable(&config, tensors).unwrap_err();
        assert!(format!("{e:#}").contains(why), "{algorithm}: {e:#}");
    }
}

/// Streaming DiLoCo on parts of the model: each tensor keeps its whole-model fragment, so
/// the site's fragment payloads, global copy and local merges are a single process's.
#[test]
fn streaming_ranks_keep_the_whole_models_fragments() {
    tch::set_num_threads(1);
    let bounds = vec![0, 2, 5];
    let sets = [("inner_steps", "6"), ("fragments", "3"), ("overlap", "1")];
    let overrides: Vec<(String, String)> =
        sets.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
    let config =
        AlgoConfig::from_parts(Algorithm::Streaming, toml::Table::new(), &overrides).unwrap();
    check_shardable(&config, 5).unwrap();
    let whole = ParamSet::new(model(0.0)).unwrap();
    let other = ParamSet::new(model(0.5)).unwrap();
    let mut one = config.build(&whole).unwrap();
    let mut peer = config.build(&other).unwrap();
    let layouts: Vec<ShardLayout> = (0..2)
        .map(|r| ShardLayout::new(shapes(), bounds.clone(), r).unwrap().with_partial_payloads())
        .collect();
    let parts: Vec<ParamSet> = layouts
        .iter()
        .map(|l| ParamSet::new(model(0.0).drain(l.range()).collect()).unwrap())
        .collect();
    let mut shards: Vec<_> = layouts
        .iter()
        .zip(&parts)
        .map(|(l, p)| config.build_part(p, l.range().start).unwrap())
        .collect();
    let mut round = 0;
    for step in 0..14u64 {
        let salt = step as f64;
        train(whole.tensors(), 0, salt);
        train(other.tensors(), 0, salt + 0.25);
        for (l, p) in layouts.iter().zip(&parts) {
            train(p.tensors(), l.range().start, salt);
        }
        one.after_inner_step(&whole, step).unwrap();
        peer.after_inner_step(&other, step).unwrap();
        for (s, p) in shards.iter_mut().zip(&parts) {
            s.after_inner_step(p, step).unwrap();
        }
        if one.exchange_due(Phase::AfterInnerStep, step) {
            let mine = one.prepare(&whole, round, 0).unwrap().encode();
            let theirs = peer.prepare(&other, round, 1).unwrap().encode();
            let from_ranks: Vec<Vec<u8>> = shards
                .iter_mut()
                .zip(&parts)
                .map(|(s, p)| s.prepare(p, round, 0).unwrap().encode())
                .collect();
            assert_eq!(layouts[0].merge_payloads(&from_ranks).unwrap(), mine, "step {step}");
            let committed = [mine, theirs];
            let decoded: Vec<Payload> =
                committed.iter().map(|b| Payload::decode(b, &shapes()).unwrap()).collect();
            one.apply(&whole, round, &decoded).unwrap();
            peer.apply(&other, round, &decoded).unwrap();
            for ((s, p), l) in shards.iter_mut().zip(&parts).zip(&layouts) {
                let local: Vec<Payload> = committed
                    .iter()
                    .map(|b| Payload::decode(&l.localize_payload(b), p.shapes()).unwrap())
                    .collect();
                assert_eq!(s.apply(p, round, &local).unwrap().applied, [0, 1]);
            }
            round += 1;
        }
        // Global copies and local parameters (merges included) agree at every step.
        let records = |pick: &dyn Fn(&dyn OuterOptimizer, &ParamSet) -> Vec<Tensor>| {
            let mut r = Vec::new();
            for (s, p) in shards.iter().zip(&parts) {
                r.extend(hash_records(p.names(), &pick(s.as_ref(), p)).unwrap());
            }
            hash_of_records(&r)
        };
        let global = |o: &dyn OuterOptimizer, p: &ParamSet| {
            o.consensus_params().unwrap_or(p.tensors()).iter().map(Tensor::shallow_clone).collect()
        };
        let local = |_: &dyn OuterOptimizer, p: &ParamSet| {
            p.tensors().iter().map(Tensor::shallow_clone).collect()
        };
        assert_eq!(records(&global), one.consensus_hash(&whole).unwrap(), "global, step {step}");
        assert_eq!(records(&local), whole.hash().unwrap(), "local, step {step}");
    }
    assert!(round >= 4, "{round} rounds");
    let merges: u64 = shards.iter().map(|s| s.local_merges()).sum();
    assert!(merges >= 4 && one.local_merges() >= 4, "merges: {merges}, {}", one.local_merges());
}
