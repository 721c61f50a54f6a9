//! Divergence is a failure, and messages about settings and numbers name them: the
//! `meridian` binary as a user runs it with a learning rate far too high, a setting in
//! the wrong place, or values too large for the DCT.

// Test helpers outside #[test] functions may unwrap too: a failure is the test failing.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{coordinator, corpus, meridian, scratch};

use std::path::Path;

use tch::Tensor;

/// A short two-worker DiLoCo run of the small model, with `extra` flags.
fn train(out: &Path, extra: &[&str]) -> (bool, String, String) {
    let data = corpus();
    let out = out.to_str().unwrap().to_string();
    let mut args = vec!["train", "--threads", "1", "--model", "mlp", "--data", &data];
    args.extend(["--algo", "diloco", "--workers", "2", "--steps", "20", "--inner-steps", "5"]);
    args.extend(["--out", &out]);
    args.extend(extra);
    meridian(&args)
}

#[test]
fn a_diverging_train_run_fails_naming_the_algorithm_the_step_and_the_setting() {
    let dir = scratch("diverge", "train");
    for (lr, shown) in [("1e6", "1e6"), ("1e30", "1e30")] {
        let out = dir.join(lr);
        let (ok, stdout, stderr) = train(&out, &["--set", &format!("outer_lr={lr}")]);
        assert!(!ok, "a NaN result must not exit 0: {stdout}");
        assert!(stderr.contains("diloco diverged"), "{stderr}");
        assert!(stderr.contains("inner step"), "{stderr}");
        // The outer rate is to blame, not the inner one.
        let blame = format!("diloco.outer_lr={shown} is far above the published 0.7; lower it");
        assert!(stderr.contains(&blame), "{stderr}");
        assert!(!stderr.contains("inner.lr"), "{stderr}");
        // No summary with NaN in it.
        assert!(!out.join("summary.json").exists());
    }
    // The same run at the published rate succeeds.
    let (ok, stdout, stderr) = train(&dir.join("ok"), &[]);
    assert!(ok, "{stderr}");
    assert!(stdout.contains("identical"), "{stdout}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn an_inner_rate_too_high_is_blamed_on_the_inner_rate() {
    let dir = scratch("diverge", "inner");
    let (ok, _, stderr) = train(&dir.join("run"), &["--set", "inner.lr=1e4"]);
    assert!(!ok);
    assert!(stderr.contains("diloco diverged"), "{stderr}");
    assert!(stderr.contains("inner.lr=1e4 is far above the default 0.001"), "{stderr}");
    // An out-of-range inner setting is named in words, not dumped as a struct.
    let (ok, _, stderr) = train(&dir.join("run2"), &["--set", "inner.lr=-1"]);
    assert!(!ok);
    assert!(stderr.contains("inner.lr = -1 is out of range"), "{stderr}");
    assert!(!stderr.contains("InnerConfig") && !stderr.contains("warmup_steps: None"), "{stderr}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_diverging_simulation_fails_too() {
    let dir = scratch("diverge", "simulate");
    let data = corpus();
    let out = dir.to_str().unwrap().to_string();
    let (ok, _, stderr) = meridian(&[
        "simulate",
        "--model",
        "mlp",
        "--data",
        &data,
        "--algos",
        "diloco",
        "--workers",
        "2",
        "--steps",
        "20",
        "--inner-steps",
        "5",
        "--set",
        "outer_lr=1e6",
        "--out",
        &out,
    ]);
    assert!(!ok);
    assert!(stderr.contains("diloco diverged"), "{stderr}");
    assert!(stderr.contains("diloco.outer_lr=1e6 is far above the published 0.7"), "{stderr}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_diverging_worker_process_fails_too() {
    let dir = scratch("diverge", "worker");
    let (_coordinator, join) = coordinator(&dir, 1, 8);
    let data = corpus();
    let out = dir.join("w0");
    let mut args = common::worker_args(&join, "w0", &data);
    args.extend(
        ["--algo", "diloco", "--inner-steps", "5", "--steps", "40", "--shards", "1"]
            .map(String::from),
    );
    args.extend(["--set", "outer_lr=1e6", "--out", out.to_str().unwrap()].map(String::from));
    let (ok, _, stderr) = meridian(&args);
    assert!(!ok);
    assert!(stderr.contains("diloco diverged in round"), "{stderr}");
    assert!(stderr.contains("diloco.outer_lr=1e6 is far above the published 0.7"), "{stderr}");
    assert!(!out.join("worker.json").exists(), "no summary of a diverged run");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn settings_in_the_wrong_place_are_told_where_they_belong() {
    let dir = scratch("diverge", "settings");
    let config = dir.join("run.toml");
    std::fs::write(&config, "steps = 5\n").unwrap();
    let (ok, _, stderr) = train(&dir.join("a"), &["--config", config.to_str().unwrap()]);
    assert!(!ok);
    assert!(stderr.contains("`steps` is not a setting of the file's top level"), "{stderr}");
    assert!(stderr.contains("--steps") && stderr.contains("[diloco] inner_steps"), "{stderr}");
    assert!(!stderr.contains("[steps]"), "{stderr}");
    let (ok, _, stderr) = train(&dir.join("b"), &["--set", "lr=0.01"]);
    assert!(!ok);
    assert!(stderr.contains("--set inner.lr=VALUE"), "{stderr}");
    assert!(!stderr.contains("model.lr"), "there is no model.lr: {stderr}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn values_too_large_for_the_dct_are_reported_as_such() {
    let dir = scratch("diverge", "compress");
    let input = dir.join("big.safetensors");
    let mut big = vec![0.0f32; 4096];
    big[0] = 3e38;
    big[1] = -3e38;
    big[5] = 1.0;
    let big = Tensor::from_slice(&big);
    Tensor::write_safetensors(&[("layer.big", &big)], &input).unwrap();
    let path = input.to_str().unwrap();
    for algo in ["demo", "demo-2bit", "demo-sign"] {
        let (ok, _, stderr) = meridian(&["compress", "--input", path, "--algo", algo]);
        assert!(!ok, "{algo}");
        assert!(stderr.contains("layer.big"), "{algo}: {stderr}");
        assert!(stderr.contains("too large for the DCT in f32"), "{algo}: {stderr}");
        assert!(stderr.contains("handles magnitudes up to"), "{algo}: {stderr}");
        assert!(!stderr.contains("non-finite"), "{algo}: the input is finite: {stderr}");
    }
    // The largest f32 values travel in bf16 as the largest bf16, not as infinity.
    let max = Tensor::from_slice(&[f32::MAX, -f32::MAX, 1.0, 0.0]);
    let input = dir.join("max.safetensors");
    Tensor::write_safetensors(&[("layer.max", &max)], &input).unwrap();
    let (ok, stdout, stderr) =
        meridian(&["compress", "--input", input.to_str().unwrap(), "--algo", "diloco-bf16"]);
    assert!(ok, "{stderr}");
    assert!(stdout.contains("layer.max"), "{stdout}");
    std::fs::remove_dir_all(&dir).unwrap();
}
