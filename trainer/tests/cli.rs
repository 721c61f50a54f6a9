//! The `meridian` binary as a user runs it.

// Test helpers outside #[test] functions may unwrap too: a failure is the test failing.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{corpus, meridian};

use std::process::Command;

/// `meridian train` with the fast model on the corpus, writing into `out`.
fn train(out: &std::path::Path, extra: &[&str]) -> (bool, String, String) {
    let data = corpus();
    let mut args = vec!["train", "--threads", "1"];
    if !extra.contains(&"--model") {
        args.extend(["--model", "mlp"]);
    }
    if !extra.contains(&"--data") {
        args.extend(["--data", &data]);
    }
    let out = out.to_str().unwrap().to_string();
    args.extend(["--out", &out]);
    args.extend(extra);
    meridian(&args)
}

#[test]
fn train_compares_algorithms_with_identical_replicas() {
    let dir = scratch("compare");
    let (ok, stdout, stderr) = train(
        &dir,
        &[
            "--algo",
            "ddp,diloco,sparseloco",
            "--workers",
            "2",
            "--steps",
            "40",
            "--inner-steps",
            "10",
        ],
    );
    assert!(ok, "{stderr}");
    for algo in ["ddp", "diloco", "sparseloco"] {
        let line = stdout.lines().find(|l| l.starts_with(algo)).unwrap_or_default();
        assert!(line.contains("identical"), "{algo}: {stdout}");
    }
    // DiLoCo at H = 10 over 40 steps: 4 rounds.
    let diloco = stdout.lines().find(|l| l.starts_with("diloco")).unwrap_or_default();
    assert_eq!(diloco.split_whitespace().nth(5), Some("4"), "{diloco}");
    let summary: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("summary.json")).unwrap()).unwrap();
    let algos = summary["algorithms"].as_array().unwrap();
    assert_eq!(algos.len(), 3);
    for a in algos {
        let (v0, v) =
            (a["initial_val_loss"].as_f64().unwrap(), a["final_val_loss"].as_f64().unwrap());
        // SparseLoCo moves 1.6% of the coordinates per round: 4 rounds barely start it.
        let gain = if a["algorithm"] == "sparseloco" { 0.01 } else { 0.5 };
        assert!(v < v0 - gain, "{}: validation loss {v0} -> {v}", a["algorithm"]);
        assert_eq!(a["tokens_per_worker"].as_u64(), Some(40 * 8 * 64));
        let t = &a["round_totals"];
        assert_eq!(t["sent"].as_array().unwrap().len(), 2);
        assert!(a["curve"].as_array().unwrap().len() >= 2);
    }
    let ddp = algos.iter().find(|a| a["algorithm"] == "ddp").unwrap();
    let diloco = algos.iter().find(|a| a["algorithm"] == "diloco").unwrap();
    let ratio = ddp["bytes_sent_per_worker"].as_f64().unwrap()
        / diloco["bytes_sent_per_worker"].as_f64().unwrap();
    assert!((ratio - 10.0).abs() < 0.5, "DiLoCo at H = 10 sends a tenth of DDP: {ratio}");
    for plot in ["val_loss_vs_steps", "val_loss_vs_bytes"] {
        let svg = std::fs::read_to_string(dir.join(format!("{plot}.svg"))).unwrap();
        assert!(svg.contains("sparseloco") && svg.contains("diloco"), "{plot}: legend");
        let png = std::fs::read(dir.join(format!("{plot}.png"))).unwrap();
        assert!(png.starts_with(b"\x89PNG"), "{plot}.png");
    }
    let rounds = std::fs::read_to_string(dir.join("rounds-diloco.jsonl")).unwrap();
    assert_eq!(rounds.lines().count(), 4);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn mistakes_are_named_and_fail() {
    let dir = scratch("mistakes");
    let cases: &[(&[&str], &str)] = &[
        (&["--algo", "diloco", "--set", "momentun=0.5"], "momentun"),
        (&["--algo", "adam"], "adam"),
        (&["--algo", "diloco", "--inner-steps", "0"], "inner_steps"),
        (&["--config", "/nonexistent/run.toml"], "/nonexistent/run.toml"),
        (&["--data", "/nonexistent/corpus.txt"], "/nonexistent/corpus.txt"),
        (&["--set", "sparseloco.topk=5000", "--algo", "sparseloco"], "topk"),
        (&["--set", "inner.lr=0", "--algo", "ddp"], "lr"),
        (&["--set", "model.hidden=0", "--algo", "ddp"], "hidden"),
        (&["--model", "torchscript:/nonexistent/m.pt", "--algo", "ddp"], "/nonexistent/m.pt"),
        (&["--model", "transformer"], "transformer"),
        (&["--device", "tpu"], "choose cpu, cuda, cuda:N or auto"),
    ];
    for (args, needle) in cases {
        let (ok, _, stderr) = train(&dir, args);
        assert!(!ok && stderr.contains(needle), "{args:?}: {stderr}");
    }
    let empty = dir.join("empty.txt");
    std::fs::write(&empty, "").unwrap();
    let (ok, _, stderr) = train(&dir, &["--data", empty.to_str().unwrap()]);
    assert!(!ok && stderr.contains("empty"), "{stderr}");
    // Nothing was trained, so nothing was written.
    assert!(!dir.join("summary.json").exists());
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn config_file_tables_configure_each_algorithm() {
    let dir = scratch("config");
    let path = dir.join("run.toml");
    std::fs::write(&path, "[diloco]\ninner_steps = 5\n[model]\nhidden = 64\n[data]\nbatch = 4\n")
        .unwrap();
    let (ok, stdout, stderr) = train(
        &dir,
        &[
            "--algo",
            "diloco",
            "--workers",
            "2",
            "--steps",
            "20",
            "--config",
            path.to_str().unwrap(),
        ],
    );
    assert!(ok, "{stderr}");
    let diloco = stdout.lines().find(|l| l.starts_with("diloco")).unwrap_or_default();
    assert_eq!(diloco.split_whitespace().nth(5), Some("4"), "{diloco}");
    assert!(stdout.contains("hidden64"), "{stdout}");
    std::fs::write(&path, "[diloco]\ninner_stepz = 5\n").unwrap();
    let (ok, _, stderr) = train(&dir, &["--algo", "diloco", "--config", path.to_str().unwrap()]);
    assert!(!ok && stderr.contains("inner_stepz"), "{stderr}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_users_torchscript_model_trains_across_workers() {
    let dir = scratch("torchscript");
    let model = dir.join("model.pt");
    let python = concat!(env!("CARGO_MANIFEST_DIR"), "/../.venv/bin/python");
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../examples/export_torchscript.py");
    let status = Command::new(python).args([script, "--out", model.to_str().unwrap()]).status();
    assert!(status.is_ok_and(|s| s.success()), "exporting the example model failed");
    let spec = format!("torchscript:{}", model.display());
    let (ok, stdout, stderr) = train(
        &dir,
        &[
            "--model",
            &spec,
            "--algo",
            "diloco",
            "--workers",
            "2",
            "--steps",
            "20",
            "--inner-steps",
            "10",
        ],
    );
    assert!(ok, "{stderr}");
    let line = stdout.lines().find(|l| l.starts_with("diloco")).unwrap_or_default();
    assert!(line.contains("identical"), "{stdout}");
    let summary: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("summary.json")).unwrap()).unwrap();
    assert!(summary["model"].as_str().unwrap().starts_with("torchscript:"), "{summary}");
    let a = &summary["algorithms"][0];
    assert!(a["final_val_loss"].as_f64().unwrap() < a["initial_val_loss"].as_f64().unwrap() - 0.5);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn pre_tokenized_ids_train_with_their_vocabulary() {
    let dir = scratch("ids");
    // A repeating sequence over a 1000-token vocabulary, as little-endian u16.
    let ids: Vec<u8> =
        (0..60_000u32).flat_map(|i| (((i * 7) % 1000) as u16).to_le_bytes()).collect();
    let path = dir.join("tokens.u16");
    std::fs::write(&path, &ids).unwrap();
    let p = path.to_str().unwrap();
    let (ok, _, stderr) =
        train(&dir, &["--data", p, "--algo", "ddp", "--workers", "2", "--steps", "5"]);
    assert!(!ok && stderr.contains("--vocab"), "{stderr}");
    let (ok, _, stderr) = train(
        &dir,
        &["--data", p, "--vocab", "999", "--algo", "ddp", "--workers", "2", "--steps", "5"],
    );
    assert!(!ok && stderr.contains("not below the vocabulary size 999"), "{stderr}");
    let (ok, stdout, stderr) = train(
        &dir,
        &["--data", p, "--vocab", "1000", "--algo", "ddp", "--workers", "2", "--steps", "30"],
    );
    assert!(ok, "{stderr}");
    assert!(stdout.contains("vocab1000"), "{stdout}");
    let summary: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("summary.json")).unwrap()).unwrap();
    assert_eq!(summary["data"]["vocab"], 1000);
    assert_eq!(summary["data"]["tokens"], 60_000);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn every_algorithm_trains_on_a_gpu_and_resumes_there() {
    let dir = scratch("cuda");
    let quick = ["--workers", "2", "--steps", "40", "--inner-steps", "10", "--device", "cuda"];
    if !meridian_optimizer::device::cuda_is_available() {
        // Asking for a GPU that is not there is refused up front, with the way out.
        let (ok, _, stderr) = train(&dir, &[&quick[..], &["--algo", "ddp"]].concat());
        assert!(!ok && stderr.contains("no CUDA device is usable here"), "{stderr}");
        assert!(stderr.contains("--device cpu"), "{stderr}");
        println!("skipped: no CUDA device");
        std::fs::remove_dir_all(&dir).unwrap();
        return;
    }
    let algos = ["--algo", "ddp,diloco,sparseloco,demo,streaming"];
    let (ok, stdout, stderr) = train(&dir, &[&quick[..], &algos].concat());
    assert!(ok, "{stderr}");
    let summary: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("summary.json")).unwrap()).unwrap();
    assert_eq!(summary["device"], "cuda:0");
    for a in summary["algorithms"].as_array().unwrap() {
        let name = a["algorithm"].as_str().unwrap();
        let line = stdout.lines().find(|l| l.starts_with(name)).unwrap_or_default();
        assert!(line.contains("identical"), "{name}: {stdout}");
        let (v0, v) =
            (a["initial_val_loss"].as_f64().unwrap(), a["final_val_loss"].as_f64().unwrap());
        assert!(v < v0, "{name} on the GPU: validation loss {v0} -> {v}");
    }
    // A checkpoint written from device memory resumes onto the device.
    let resumed = scratch("cuda-resumed");
    let stop = ["--stop-after", "20", "--checkpoint-every", "0"];
    let (ok, _, stderr) = train(&resumed, &[&quick[..], &algos, &stop].concat());
    assert!(ok, "{stderr}");
    let (ok, stdout, stderr) = train(&resumed, &[&quick[..], &algos, &["--resume"]].concat());
    assert!(ok, "{stderr}");
    assert_eq!(stdout.lines().filter(|l| l.contains("identical")).count(), 5, "{stdout}");
    std::fs::remove_dir_all(&dir).unwrap();
    std::fs::remove_dir_all(&resumed).unwrap();
}

fn scratch(name: &str) -> std::path::PathBuf {
    common::scratch("cli", name)
}
