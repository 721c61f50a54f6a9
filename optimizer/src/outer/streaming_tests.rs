//! Streaming DiLoCo's tests: schedule, fragment payloads, overlapped landings, state.

use super::*;
use crate::harness::Harness;
use crate::payload::Encoding;
use crate::robust::Aggregation;
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
    // F exchanges per H steps; the last one, launched after the last step, lands after it.
    assert_eq!(exchanges.len(), 200 / 20 * 4 - 1, "F exchanges per H steps");
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
        let c = StreamingConfig { inner_steps: h, fragments: f, overlap: 0, ..Default::default() };
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
    // Round r carries the fragment the schedule makes due at the r-th exchange.
    for (h, f) in [(12u64, 4u64), (10, 3), (5, 5), (7, 1), (100, 4)] {
        let c = StreamingConfig { inner_steps: h, fragments: f, overlap: 0, ..Default::default() };
        let due = (0..5 * h).filter_map(|s| c.fragment_due(s));
        for (round, p) in due.enumerate() {
            assert_eq!(c.fragment_of_round(round as u64), p, "H={h} F={f} round {round}");
        }
    }
}

#[test]
fn each_exchange_carries_one_fragment_in_four_bits() {
    use super::super::diloco::{Diloco, DilocoConfig};
    let (n, numel, f) = (8, 1024, 4u64);
    let params = equal_params(n, numel);
    let config = StreamingConfig { inner_steps: 8, fragments: f, overlap: 1, ..Default::default() };
    let mut s = Streaming::new(config, &params).unwrap();
    let full_f32 = Diloco::new(DilocoConfig::default(), &params)
        .unwrap()
        .prepare(&params, 0, 0)
        .unwrap()
        .encoded_len();
    let mut seen = Vec::new();
    let mut round = 0;
    for step in 0..8 {
        fake_inner_step(&params, 0.01 * (step + 1) as f64);
        if !s.exchange_due(Phase::AfterInnerStep, step) {
            continue;
        }
        let payload = s.prepare(&params, round, 0).unwrap();
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
        s.apply(&params, round, &[payload]).unwrap();
        round += 1;
    }
    seen.sort_unstable();
    assert_eq!(seen, (0..n).collect::<Vec<_>>(), "every tensor once per H steps");
    // 8-bit values (the int8 codebook, for tensors of at least 4096 values): one byte
    // per value plus a 1 KiB codebook.
    let big = equal_params(2, 8192);
    let c8 = StreamingConfig { value_bits: 8, inner_steps: 2, fragments: 2, overlap: 0, ..config };
    let mut s8 = Streaming::new(c8, &big).unwrap();
    let p8 = s8.prepare(&big, 0, 0).unwrap();
    assert_eq!(p8.segments.len(), 1);
    assert_eq!(p8.segments[0].encoding, Encoding::Quantized);
    assert!(p8.encoded_len() > 8192 && p8.encoded_len() < 8192 + 1100, "{}", p8.encoded_len());
}

#[test]
fn a_round_lands_tau_steps_later_and_merges_the_fragment_trained_meanwhile() {
    // H = 4, F = 2: round 0 carries fragment 1 (tensor 1), launched after step 1.
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
        assert_eq!(s.overlap(), tau, "τ is the driver's overlap");
        let g0 = values(&s.global()[1]);
        fake_inner_step(&params, 0.25);
        fake_inner_step(&params, 0.25);
        assert!(s.exchange_due(Phase::AfterInnerStep, 1));
        let payload = s.prepare(&params, 0, 0).unwrap();
        // The τ steps between the launch and the landing train the fragment on.
        for _ in 0..tau {
            fake_inner_step(&params, 0.25);
        }
        let other_before = values(&params.tensors()[0]);
        let trained = values(&params.tensors()[1]);
        let report = s.apply(&params, 0, &[payload]).unwrap();
        assert_eq!(report.applied, vec![0]);
        // The outer step moved θ_global toward the local model as it stood at the launch:
        // by the same amount whatever τ.
        let g1 = values(&s.global()[1]);
        assert!(g1.iter().zip(&g0).all(|(a, b)| a > b), "{g1:?} vs {g0:?}");
        assert_eq!(values(&params.tensors()[0]), other_before, "other fragment untouched");
        // The landing mixes the fragment as trained up to now into the new global value.
        let lerp: Vec<f32> = g1.iter().zip(&trained).map(|(g, l)| g + 0.25 * (l - g)).collect();
        let merged = values(&params.tensors()[1]);
        assert!(merged.iter().zip(&lerp).all(|(x, y)| (x - y).abs() < 1e-6), "τ = {tau}");
    }
}

#[test]
fn an_overlapped_run_lands_each_fragment_tau_steps_after_its_launch() {
    // Through the in-process driver: τ = 2 with H = 8, F = 2 lands round r at its launch
    // step + 2, and the replicas' global copies agree after every landing.
    let config = StreamingConfig { inner_steps: 8, fragments: 2, overlap: 2, ..Default::default() };
    let mut h = harness(config, ToyConfig::default());
    let (exchanges, _, _) = run_checked(&mut h, 24);
    let landed: Vec<u64> = exchanges.iter().map(|x| x.step).collect();
    let launched: Vec<u64> = (0..24).filter(|&s| config.fragment_due(s).is_some()).collect();
    assert_eq!(landed[..], launched.iter().map(|s| s + 2).collect::<Vec<_>>()[..landed.len()]);
    assert!(landed.len() >= 5, "{landed:?}");
}

#[test]
fn payloads_for_the_wrong_fragment_are_rejected() {
    let params = equal_params(4, 8);
    let config = StreamingConfig { inner_steps: 4, fragments: 2, overlap: 0, ..Default::default() };
    let mut s = Streaming::new(config, &params).unwrap();
    fake_inner_step(&params, 0.1);
    // Round 0 carries fragment 1 = tensors 1, 3.
    let good = s.prepare(&params, 0, 1).unwrap();
    let mut wrong = good.clone();
    wrong.worker = 2;
    wrong.segments =
        vec![Segment::dense(0, &[8], &[0.0; 8], false), Segment::dense(2, &[8], &[0.0; 8], false)];
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
    let reason = report.rejected[0].1.to_string();
    assert!(reason.contains("fragment 1"), "{reason}");
}

#[test]
fn reject_outliers_judges_the_fragment_exchanged() {
    let params = equal_params(4, 8);
    let config = StreamingConfig {
        inner_steps: 4,
        fragments: 2,
        overlap: 0,
        robust: Robust { aggregation: Aggregation::RejectOutliers, ..Default::default() },
        ..Default::default()
    };
    let mut s = Streaming::new(config, &params).unwrap();
    fake_inner_step(&params, 0.1);
    // Round 0 carries fragment 1 = tensors 1, 3.
    let good = s.prepare(&params, 0, 0).unwrap();
    let mut payloads: Vec<Payload> =
        (0..4).map(|w| Payload { worker: w, ..good.clone() }).collect();
    payloads[2].segments[1] = Segment::dense(3, &[8], &[-100.0; 8], false);
    let report = s.apply(&params, 0, &payloads).unwrap();
    assert_eq!(report.applied, vec![0, 1, 3]);
    assert_eq!(report.rejected.iter().map(|r| r.0).collect::<Vec<_>>(), vec![2]);
    let robust = Robust { aggregation: Aggregation::TrimmedMean, ..config.robust };
    let trimmed = StreamingConfig { robust, ..config };
    assert!(trimmed.validate().is_ok(), "streaming exchanges are dense");
}

#[test]
fn state_survives_save_and_load() {
    let config = StreamingConfig { inner_steps: 8, fragments: 4, overlap: 1, ..Default::default() };
    let mut h = harness(config, ToyConfig::default());
    h.run(16).unwrap();
    let dir = std::env::temp_dir().join(format!("meridian-streaming-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("outer.safetensors");
    let w = &mut h.workers_mut()[0];
    let saved = w.outer.state().unwrap();
    saved.save(&path).unwrap();
    let loaded = OptimizerState::load(&path).unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
    let mut fresh = Streaming::new(config, &w.params).unwrap();
    fresh.load_state(&w.params, &loaded).unwrap();
    assert_eq!(global_hash(&fresh, &w.params), global_hash(w.outer.as_ref(), &w.params));
    let back = fresh.state().unwrap();
    assert_eq!(back.tensors.len(), saved.tensors.len());
    for (k, v) in &saved.tensors {
        assert!(back.get(k).unwrap().equal(v), "{k} differs after the round trip");
    }
    // Momentum is non-zero after the exchanges, so the comparison is not vacuous.
    assert!(saved.get("momentum.0").unwrap().abs().sum(tch::Kind::Float).double_value(&[]) > 0.0);
    // Both apply the same round to identical copies of the local model identically.
    let copy = |p: &ParamSet| {
        ParamSet::new(p.names().iter().cloned().zip(p.snapshot()).collect()).unwrap()
    };
    let (a, b) = (copy(&w.params), copy(&w.params));
    fake_inner_step(&a, 0.01);
    fake_inner_step(&b, 0.01);
    let (pa, pb) = (w.outer.prepare(&a, 9, 0).unwrap(), fresh.prepare(&b, 9, 0).unwrap());
    assert_eq!(pa.encode(), pb.encode());
    w.outer.apply(&a, 9, &[pa]).unwrap();
    fresh.apply(&b, 9, &[pb]).unwrap();
    assert_eq!(a.hash().unwrap(), b.hash().unwrap());
    // Another algorithm's state, another fragment count, or a state holding a merge
    // pending (saved by a version that merged after the round applied) is refused.
    assert!(fresh.load_state(&w.params, &OptimizerState::new(Algorithm::Diloco)).is_err());
    let other = StreamingConfig { fragments: 2, ..config };
    let mut two = Streaming::new(other, &w.params).unwrap();
    assert!(two.load_state(&w.params, &loaded).is_err());
    let mut old = loaded;
    old.put_scalar("pending.count", 1.0);
    let e = fresh.load_state(&w.params, &old).unwrap_err().to_string();
    assert!(e.contains("merge pending"), "{e}");
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
        StreamingConfig { value_bits: 8, value_format: super::ValueFormat::Fp4, ..ok },
    ] {
        assert!(bad.validate().is_err(), "{bad:?}");
    }
    StreamingConfig { overlap: 24, ..ok }.validate().unwrap();
    let e = StreamingConfig { overlap: 25, ..ok }.validate().unwrap_err().to_string();
    assert!(e.contains("streaming.overlap = 25") && e.contains("at most 24"), "{e}");
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
    let fp4: StreamingConfig = toml::from_str("value_format = \"fp4\"").unwrap();
    assert_eq!(fp4.value_format, super::ValueFormat::Fp4);
    assert!(toml::from_str::<StreamingConfig>("value_format = \"fp8\"").is_err());
}

#[test]
fn fp4_values_travel_as_fp4_with_int4s_bytes() {
    // The same exchange with each 4-bit format: same size, the quantized body's scheme byte
    // says which (`meridian_kernels::quant`: 0 = absmax, 3 = FP4), and both decode.
    let params = equal_params(4, 1024);
    let mut sizes = Vec::new();
    for (format, tag) in [(super::ValueFormat::Int4, 0u8), (super::ValueFormat::Fp4, 3)] {
        let config = StreamingConfig {
            inner_steps: 4,
            fragments: 2,
            overlap: 0,
            value_format: format,
            ..Default::default()
        };
        let mut s = Streaming::new(config, &params).unwrap();
        fake_inner_step(&params, 0.01);
        assert!(s.exchange_due(Phase::AfterInnerStep, 1));
        let payload = s.prepare(&params, 1, 0).unwrap();
        assert!(payload.segments.iter().all(|x| x.body[0] == tag), "{format:?}");
        sizes.push(payload.encoded_len());
        s.apply(&params, 1, &[payload]).unwrap();
    }
    assert_eq!(sizes[0], sizes[1]);
}

#[test]
fn the_default_tau_fits_a_short_schedule_and_a_given_one_is_checked() {
    use crate::config::AlgoConfig;
    let parts = |sets: &[(&str, &str)]| {
        let sets: Vec<(String, String)> =
            sets.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        AlgoConfig::from_parts(Algorithm::Streaming, toml::Table::new(), &sets)
    };
    let tau = |c: AlgoConfig| match c {
        AlgoConfig::Streaming(s) => s.overlap,
        other => panic!("{other:?}"),
    };
    assert_eq!(tau(parts(&[]).unwrap()), 5);
    // H = 10 in four fragments: exchanges 2 or 3 steps apart, so τ = 2 at most.
    assert_eq!(tau(parts(&[("inner_steps", "10")]).unwrap()), 2);
    assert_eq!(tau(parts(&[("inner_steps", "8"), ("fragments", "8")]).unwrap()), 0);
    // Given explicitly, τ is the user's and out of range is an error naming the limit.
    assert_eq!(tau(parts(&[("inner_steps", "10"), ("overlap", "1")]).unwrap()), 1);
    let e = parts(&[("inner_steps", "10"), ("overlap", "5")]).unwrap_err().to_string();
    assert!(e.contains("streaming.overlap = 5") && e.contains("at most 2"), "{e}");
    let mut table = toml::Table::new();
    table.insert("inner_steps".into(), toml::Value::Integer(10));
    table.insert("overlap".into(), toml::Value::Integer(5));
    assert!(AlgoConfig::from_parts(Algorithm::Streaming, table, &[]).is_err());
}
