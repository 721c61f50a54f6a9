//! `meridian simulate --model synthetic --params N`: payloads of the real encoders' size
//! at any scale, without training.

// Test helpers outside #[test] functions may unwrap too: a failure is the test failing.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::meridian;
use meridian_optimizer::config::AlgoConfig;
use meridian_optimizer::outer::Phase;
use meridian_optimizer::params::ParamSet;
use meridian_trainer::simulation::synthetic::model::SyntheticModel;
use tch::{Kind, Tensor};

/// A synthetic run (of 2 workers unless `extra` says); returns the summary, or panics with
/// what was printed.
fn run(name: &str, extra: &[&str]) -> serde_json::Value {
    let out = common::scratch("synthetic", name);
    let out_s = out.to_str().unwrap().to_string();
    let mut args = vec!["simulate", "--model", "synthetic", "--out", &out_s];
    if !extra.contains(&"--workers") {
        args.extend(["--workers", "2"]);
    }
    args.extend_from_slice(extra);
    let (ok, stdout, stderr) = meridian(&args);
    assert!(ok, "{stdout}\n{stderr}");
    assert!(stdout.contains("n/a") && stdout.contains("peak mem"), "{stdout}");
    serde_json::from_slice(&std::fs::read(out.join("summary.json")).unwrap()).unwrap()
}

/// The bytes the algorithm's real optimizer, built over the whole model of `params`
/// parameters, publishes over `steps` inner steps: each exchange's encoded payload.
fn real_bytes(algo: &AlgoConfig, params: u64, steps: u64) -> u64 {
    let shapes = SyntheticModel::new(params).unwrap().shapes;
    let named: Vec<(String, Tensor)> = shapes
        .iter()
        .enumerate()
        .map(|(i, s)| {
            let dims: Vec<i64> = s.iter().map(|&d| d as i64).collect();
            let t = Tensor::randn(dims.as_slice(), (Kind::Float, tch::Device::Cpu));
            (format!("p{i:04}"), t.set_requires_grad(true))
        })
        .collect();
    // Gradients for the algorithms that send them.
    let loss = named.iter().map(|(_, t)| (t * t).sum(Kind::Float)).reduce(|a, b| a + b).unwrap();
    loss.backward();
    let params = ParamSet::new(named).unwrap();
    let mut outer = algo.build(&params).unwrap();
    tch::no_grad(|| {
        for t in params.tensors() {
            let _ = t.shallow_clone().f_add_(&(t.randn_like() * 0.01)).unwrap();
        }
    });
    let mut bytes = 0;
    let mut round = 0;
    for step in 0..steps {
        for phase in [Phase::AfterBackward, Phase::AfterInnerStep] {
            if outer.exchange_due(phase, step) {
                bytes += outer.prepare(&params, round, 0).unwrap().encode().len() as u64;
                round += 1;
            }
        }
    }
    bytes
}

#[test]
fn every_algorithm_sends_exactly_what_its_real_encoder_produces_at_that_size() {
    let params = 40_000u64;
    for (algo, steps, sets) in [
        ("sparseloco", 20, vec!["--set", "inner_steps=10"]),
        ("diloco", 20, vec!["--set", "inner_steps=10", "--set", "transport=int8"]),
        ("streaming", 20, vec!["--set", "inner_steps=10", "--set", "overlap=1"]),
        ("demo", 4, vec![]),
        ("ddp", 4, vec![]),
    ] {
        let steps_s = steps.to_string();
        let mut args = vec!["--params", "4e4", "--algos", algo, "--steps", &steps_s];
        args.extend(&sets);
        let s = run(algo, &args);
        let a = &s["algorithms"][0];
        let sets: Vec<String> =
            sets.iter().filter(|s| **s != "--set").map(|s| s.to_string()).collect();
        let config = meridian_trainer::run_config::RunConfig::build(
            &meridian_trainer::model::ModelKind::Synthetic,
            &[algo.parse().unwrap()],
            None,
            None,
            &sets,
        )
        .unwrap();
        let expected = real_bytes(&config.algos[0], params, steps) as f64;
        // Relay: each worker uploads its payload once per round. Sparse payloads' indices
        // are Rice-coded, whose size follows the selection (here synthetic against random
        // values): within 1%; dense payloads to the byte.
        let sent = a["bytes_sent_per_worker"].as_f64().unwrap();
        if matches!(algo, "sparseloco" | "demo") {
            assert!((sent - expected).abs() <= expected / 100.0, "{algo}: {sent} vs {expected}");
        } else {
            assert_eq!(sent, expected, "{algo}");
        }
        assert!(a["rounds"].as_u64().unwrap() > 0, "{algo}");
        assert!(a["final_val_loss"].is_null(), "{algo}: a loss without training");
        assert_eq!(a["replicas_identical"], true, "{algo}");
        assert!(a["peak_memory_bytes"].as_u64().unwrap() > 0, "{algo}");
        assert_eq!(s["parameters"].as_u64().unwrap(), params);
    }
}

#[test]
fn overlap_raises_compute_utilization() {
    let util = |name: &str, overlap: &str| {
        let s = run(
            name,
            &[
                "--params",
                "1e5",
                "--algos",
                "sparseloco",
                "--steps",
                "30",
                "--step-time",
                "1s",
                "--set",
                "inner_steps=10",
                "--set",
                overlap,
            ],
        );
        s["algorithms"][0]["compute_utilization"].as_f64().unwrap()
    };
    let (blocking, overlapped) = (util("blocking", "overlap=0"), util("overlapped", "overlap=10"));
    assert!(overlapped > blocking, "overlap {overlapped} vs blocking {blocking}");
    assert!(overlapped > 0.99, "{overlapped}");
}

#[test]
fn a_balanced_slow_worker_trains_a_share_that_keeps_it_in_step() {
    // Worker 1 of 2 at half speed. Unbalanced, it computes 40 s to the other's 20 and the
    // run takes twice as long. Balanced, it learns the other's pace from its first payload
    // and trains a share of the steps that keeps it in step: its compute ends within a few
    // of its steps of the other's, and the run takes about as long as the fast worker.
    let compute = |name: &str, balance: &str| {
        let s = run(
            name,
            &[
                "--params",
                "1e5",
                "--algos",
                "diloco",
                "--steps",
                "40",
                "--step-time",
                "500ms",
                "--worker-speed",
                "1=0.5",
                "--set",
                "inner_steps=10",
                "--set",
                "overlap=2",
                "--set",
                balance,
            ],
        );
        let a = &s["algorithms"][0];
        assert_eq!(a["replicas_identical"], true, "{a}");
        let workers = a["workers"].as_array().unwrap();
        let of = |i: usize, key: &str| workers[i][key].as_f64().unwrap();
        (of(0, "compute_seconds"), of(1, "compute_seconds"), of(0, "finished_seconds"))
    };
    let (fast, slow, unbalanced_end) = compute("unbalanced", "balance=false");
    assert_eq!((fast, slow), (20.0, 40.0));
    let (fast, slow, balanced_end) = compute("balanced", "balance=true");
    assert_eq!(fast, 20.0);
    assert!((slow - fast).abs() <= 2.0, "the slow worker computed {slow} s to {fast}");
    assert!(balanced_end < 0.75 * unbalanced_end, "{balanced_end} s against {unbalanced_end}");
}

#[test]
fn a_ring_run_sums_real_payloads_around_the_ring() {
    // DiLoCo int8 over the ring: every worker sends 2(N−1)/N of its payload per round, to
    // its successor, and every replica ends each round with the same aggregate bytes.
    let s = run(
        "ring",
        &[
            "--params",
            "1e6",
            "--workers",
            "4",
            "--algos",
            "diloco",
            "--steps",
            "20",
            "--step-time",
            "1s",
            "--set",
            "inner_steps=10",
            "--set",
            "transport=int8",
            "--route",
            "ring",
        ],
    );
    let a = &s["algorithms"][0];
    assert_eq!(a["replicas_identical"], true, "{a}");
    assert_eq!(a["rounds_committed"], 2, "{a}");
    let algo = AlgoConfig::from_parts(
        meridian_optimizer::Algorithm::Diloco,
        toml::Table::new(),
        &[("inner_steps".into(), "10".into()), ("transport".into(), "int8".into())],
    )
    .unwrap();
    // The ring re-encodes each segment (int8 blocks, segment headers): within 2% of
    // 2(N−1)/N of the payload, against N − 1 payloads through the relay.
    let ring_share = real_bytes(&algo, 1_000_000, 20) as f64 * 2.0 * 3.0 / 4.0;
    for key in ["bytes_sent_per_worker", "bytes_received_per_worker"] {
        let bytes = a[key].as_f64().unwrap();
        assert!((bytes / ring_share - 1.0).abs() < 0.02, "{key}: {bytes} against {ring_share}");
    }
}

#[test]
fn bad_input_is_refused_naming_the_setting_and_the_limit() {
    let refused = |args: &[&str]| {
        let out = common::scratch("synthetic", "bad");
        let mut all = vec!["simulate", "--out", out.to_str().unwrap()];
        all.extend_from_slice(args);
        let (ok, stdout, stderr) = meridian(&all);
        assert!(!ok, "{args:?} ran:\n{stdout}");
        stderr
    };
    let e = refused(&["--model", "synthetic"]);
    assert!(e.contains("--params") && e.contains("16384"), "{e}");
    let e = refused(&["--params", "1e9"]);
    assert!(e.contains("--params") && e.contains("--model synthetic"), "{e}");
    let e = refused(&["--model", "synthetic", "--params", "100"]);
    assert!(e.contains("--params 100") && e.contains("16384"), "{e}");
    // Beyond the protocol's largest payload, and beyond this machine's memory.
    let e = refused(&["--model", "synthetic", "--params", "1e12", "--algos", "diloco"]);
    assert!(e.contains("--params 1.000e12") && e.contains("largest payload"), "{e}");
    let e = refused(&[
        "--model",
        "synthetic",
        "--params",
        "5e8",
        "--algos",
        "diloco",
        "--set",
        "transport=int8",
        "--workers",
        "8",
    ]);
    assert!(e.contains("GiB") && e.contains("at most --params"), "{e}");
    let e = refused(&["--model", "synthetic", "--params", "1e6", "--chaos", "byzantine-noise"]);
    assert!(e.contains("--chaos byzantine-noise"), "{e}");
    let e = refused(&[
        "--model",
        "synthetic",
        "--params",
        "1e6",
        "--algos",
        "sparseloco",
        "--route",
        "ring",
    ]);
    assert!(e.contains("--route ring") && e.contains("sparseloco"), "{e}");
    let e = refused(&["--model", "synthetic", "--params", "1.5"]);
    assert!(e.contains("--params") && e.contains("whole number"), "{e}");
    let e = refused(&["--model", "synthetic", "--params", "1e6", "--set", "model.d_model=64"]);
    assert!(e.contains("--set model.d_model") && e.contains("--params"), "{e}");
    // Training needs a model.
    let (ok, _, e) = meridian(&["train", "--model", "synthetic", "--steps", "1"]);
    assert!(!ok && e.contains("--model synthetic"), "{e}");
}

#[test]
fn an_all_gather_run_ends_with_every_payload_of_its_last_round_delivered() {
    // 10 MB payloads pushed member to member across continents: the last round commits
    // while pushes are still on the wire, and the authors leave right after it. Each must
    // finish handing its payload over first; before it did, a member missing one found
    // no holder left and (with no state to catch up from) never finished.
    let out = common::scratch("synthetic", "all-gather-end");
    let out_s = out.to_str().unwrap().to_string();
    let args = [
        "simulate",
        "--model",
        "synthetic",
        "--workers",
        "4",
        "--out",
        &out_s,
        "--params",
        "2.5e6",
        "--algos",
        "diloco",
        "--set",
        "inner_steps=10",
        "--steps",
        "40",
        "--step-time",
        "1s",
        "--route",
        "all-gather",
    ];
    let (ok, stdout, stderr) = meridian(&args);
    assert!(ok, "{stdout}\n{stderr}");
    let s: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("summary.json")).unwrap()).unwrap();
    let a = &s["algorithms"][0];
    assert_eq!((a["rounds"].as_u64(), a["rounds_committed"].as_u64()), (Some(4), Some(4)), "{a}");
    assert_eq!(a["replicas_identical"], true, "{a}");
    assert_eq!(a["workers"].as_array().unwrap().len(), 4);
}
