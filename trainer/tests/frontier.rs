//! The bytes/loss frontier in `meridian train`'s and `meridian simulate`'s outputs: bytes
//! sent and received against a computed bf16 ring DDP, the loss against DDP's, and a final
//! validation loss that is the synchronized model's, not one worker's mid-round copy.

// Test helpers outside #[test] functions may unwrap too: a failure is the test failing.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::Path;

use common::{corpus, meridian};
use serde_json::Value;

fn summary(dir: &Path) -> Value {
    serde_json::from_slice(&std::fs::read(dir.join("summary.json")).unwrap()).unwrap()
}

fn f(v: &Value) -> f64 {
    v.as_f64().unwrap_or_else(|| panic!("not a number: {v}"))
}

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() <= 1e-12 * a.abs().max(b.abs())
}

/// The steps of a curve's points.
fn steps(curve: &Value) -> Vec<u64> {
    curve.as_array().unwrap().iter().map(|p| p["step"].as_u64().unwrap()).collect()
}

/// Checks the run-level baseline against the formula, and every algorithm's frontier
/// against its bytes and DDP's loss; returns the algorithms by name.
fn check_frontier(s: &Value, steps: u64) -> Vec<(String, Value)> {
    let (p, n) = (f(&s["parameters"]), f(&s["workers"]));
    let b = &s["ddp_bf16_ring"];
    let each_way = 2.0 * (n - 1.0) / n * 2.0 * p * steps as f64;
    assert_eq!(b["steps"].as_u64(), Some(steps));
    assert!(close(f(&b["bytes_sent_per_worker"]), each_way), "{b}");
    assert!(close(f(&b["bytes_received_per_worker"]), each_way), "{b}");
    let algos: Vec<(String, Value)> = s["algorithms"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| (a["algorithm"].as_str().unwrap().to_string(), a.clone()))
        .collect();
    let ddp = algos.iter().find(|(n, _)| n == "ddp").map(|(_, a)| f(&a["final_val_loss"]));
    for (name, a) in &algos {
        let ours = f(&a["bytes_sent_per_worker"]) + f(&a["bytes_received_per_worker"]);
        let fr = &a["frontier"];
        assert!(close(f(&fr["bytes_per_worker"]), ours), "{name}: {fr}");
        assert!(ours > 0.0, "{name} sent nothing");
        let ratio = f(&fr["fewer_bytes_than_ddp_bf16"]);
        assert!(close(ratio, 2.0 * each_way / ours), "{name}: {ratio}");
        match ddp {
            Some(d) => {
                let rel = f(&fr["val_loss_vs_ddp"]);
                assert!(close(rel, (f(&a["final_val_loss"]) - d) / d), "{name}: {rel}");
            }
            None => assert!(fr["val_loss_vs_ddp"].is_null(), "{name}: no DDP ran: {fr}"),
        }
    }
    algos
}

/// A ratio as the tables show it.
fn shown(r: f64) -> String {
    match r {
        r if r >= 100.0 => format!("{r:.0}x"),
        r if r >= 10.0 => format!("{r:.1}x"),
        r => format!("{r:.2}x"),
    }
}

fn train(out: &Path, extra: &[&str]) -> (bool, String, String) {
    let data = corpus();
    let out = out.to_str().unwrap().to_string();
    let mut args = vec!["train", "--threads", "1", "--model", "mlp", "--data", &data];
    args.extend(["--out", &out, "--workers", "2", "--checkpoint-every", "0"]);
    args.extend(extra);
    meridian(&args)
}

#[test]
fn train_reports_bytes_against_bf16_ddp_and_the_synchronized_loss() {
    let dir = common::scratch("frontier", "train");
    // 45 steps at H = 30: one round, at step 30; the run ends mid-round.
    let flags = ["--steps", "45", "--inner-steps", "30", "--eval-every", "15"];
    let mut args = flags.to_vec();
    args.extend(["--algo", "ddp,diloco,sparseloco,streaming"]);
    let (ok, stdout, stderr) = train(&dir, &args);
    assert!(ok, "{stderr}");
    let s = summary(&dir);
    let algos = check_frontier(&s, 45);
    for (name, a) in &algos {
        let (synced, local) = (&a["curve"], &a["local_curve"]);
        let last = synced.as_array().unwrap().last().unwrap();
        assert_eq!(a["final_val_loss"], last["val_loss"], "{name}: the last synchronized point");
        assert_eq!(steps(local), vec![0, 15, 30, 45], "{name}: every evaluation point");
        match name.as_str() {
            "ddp" => {
                // Synchronized every step: both curves hold the same losses.
                let losses = |c: &Value| -> Vec<Value> {
                    c.as_array().unwrap().iter().map(|p| p["val_loss"].clone()).collect()
                };
                assert_eq!((steps(synced), losses(synced)), (steps(local), losses(local)));
                assert!(close(f(&a["frontier"]["val_loss_vs_ddp"]), 0.0));
            }
            "streaming" => {
                // Four fragments of H = 30 launch at steps 8, 15, 23, 30, 38 and 45 and land
                // τ = 5 steps later (13, 20, 28, 35, 43; the last at the run's end): the
                // first landing after each evaluation point, the last one within the run
                // and the final one are evaluated. What is evaluated is the global copy,
                // never the worker's own parameters with their unsynced fragments.
                assert_eq!(steps(synced), vec![0, 20, 35, 43, 45]);
                for i in 1..4 {
                    assert_ne!(synced[i]["val_loss"], local[i]["val_loss"], "step {}", i * 15);
                }
            }
            _ => {
                // Only the round boundary, and not worker 0 halfway through round 2.
                assert_eq!(steps(synced), vec![0, 30], "{name}");
                assert_ne!(a["final_val_loss"], local[3]["val_loss"], "{name}: mid-round");
                // Right after the round worker 0 holds the consensus itself.
                assert_eq!(a["final_val_loss"], local[2]["val_loss"], "{name}");
            }
        }
        let row = stdout.lines().find(|l| l.starts_with(name.as_str())).unwrap_or_default();
        let ratio = shown(f(&a["frontier"]["fewer_bytes_than_ddp_bf16"]));
        assert!(row.contains(&ratio), "{name}: {ratio} in {row}");
        assert!(row.contains('%'), "{name}: loss against DDP's: {row}");
    }
    assert!(stdout.contains("bf16 ring DDP (computed, not trained)"), "{stdout}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn without_ddp_the_loss_difference_is_not_applicable() {
    let dir = common::scratch("frontier", "alone");
    let args = ["--steps", "20", "--inner-steps", "10", "--algo", "diloco"];
    let (ok, stdout, stderr) = train(&dir, &args);
    assert!(ok, "{stderr}");
    check_frontier(&summary(&dir), 20);
    let row = stdout.lines().find(|l| l.starts_with("diloco")).unwrap_or_default();
    assert!(row.contains("n/a"), "{row}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn simulate_reports_the_frontier_and_the_synchronized_loss() {
    let dir = common::scratch("frontier", "simulate");
    let data = corpus();
    let out = dir.to_str().unwrap().to_string();
    let args = [
        "simulate",
        "--quick",
        "--threads",
        "1",
        "--data",
        &data,
        "--out",
        &out,
        "--steps",
        "35",
        "--eval-every",
        "5",
        "--algos",
        "ddp,sparseloco",
    ];
    // The run ends mid-round: the replicas' local parameters then differ, which is no
    // divergence (they agreed after every round).
    let (ok, stdout, stderr) = meridian(&args);
    assert!(ok, "{stdout}\n{stderr}");
    let s = summary(&dir);
    let algos = check_frontier(&s, 35);
    let (_, sparse) = algos.iter().find(|(n, _)| n == "sparseloco").unwrap();
    assert_eq!(sparse["replicas_identical"], true);
    // --quick: H = 10, so rounds close at 10, 20 and 30; the local curve also has the
    // points halfway through each round, and the last step's.
    assert_eq!(steps(&sparse["curve"]), vec![0, 10, 20, 30]);
    assert_eq!(steps(&sparse["local_curve"]), vec![0, 5, 10, 15, 20, 25, 30, 35]);
    assert_eq!(sparse["final_val_loss"], sparse["curve"][3]["val_loss"]);
    for (name, a) in &algos {
        let row = stdout.lines().find(|l| l.starts_with(name.as_str())).unwrap_or_default();
        let ratio = shown(f(&a["frontier"]["fewer_bytes_than_ddp_bf16"]));
        assert!(row.contains(&ratio) && row.contains('%'), "{name}: {ratio} in {row}");
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn the_demo_runs_sparseloco_at_its_frontier_settings_unless_told_otherwise() {
    // `meridian simulate` on its default GPT: SparseLoCo at H = 10 with top-32 and 1-bit
    // values (what the frontier search found); --inner-steps or --config take over, --set
    // still overrides.
    let data = corpus();
    let cases: [(&[&str], u64, u64, u64); 3] = [
        (&[], 10, 32, 1),
        (&["--inner-steps", "5"], 5, 64, 2),
        (&["--set", "sparseloco.topk=16"], 10, 16, 1),
    ];
    for (i, (extra, h, k, bits)) in cases.into_iter().enumerate() {
        let dir = common::scratch("frontier", &format!("demo-settings-{i}"));
        let out = dir.to_str().unwrap().to_string();
        let mut args = vec![
            "simulate",
            "--threads",
            "1",
            "--data",
            &data,
            "--out",
            &out,
            "--steps",
            "20",
            "--workers",
            "2",
            "--algos",
            "sparseloco",
        ];
        args.extend_from_slice(extra);
        let (ok, stdout, stderr) = meridian(&args);
        assert!(ok, "{extra:?}: {stdout}\n{stderr}");
        let s = summary(&dir);
        let settings = &s["algorithms"][0]["settings"];
        let got = ["inner_steps", "topk", "value_bits"].map(|key| settings[key].as_u64());
        assert_eq!(got, [Some(h), Some(k), Some(bits)], "{extra:?}");
        assert_eq!(s["algorithms"][0]["rounds"].as_u64(), Some(20 / h), "{extra:?}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
