//! A run stopped and resumed from its checkpoint ends bit-identical to one that was not,
//! for every outer algorithm; a checkpoint from another run is refused and left intact.

// Test helpers outside #[test] functions may unwrap too: a failure is the test failing.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::{Path, PathBuf};

/// `meridian train` on the fast model; `extra` flags replace the defaults of the same name
/// (`--set` adds to them: it repeats).
fn train(out: &Path, extra: &[&str]) -> (bool, String) {
    let data = common::corpus();
    let data = data.as_str();
    let mut flags: Vec<(&str, Option<&str>)> = vec![
        ("--model", Some("mlp")),
        ("--data", Some(data)),
        ("--threads", Some("1")),
        ("--workers", Some("2")),
        ("--steps", Some("60")),
        ("--inner-steps", Some("30")),
        ("--eval-every", Some("15")),
        ("--checkpoint-every", Some("0")),
        ("--algo", Some("ddp,diloco,sparseloco,demo,streaming")),
        ("--out", out.to_str()),
    ];
    let mut rest = extra.iter().copied().peekable();
    while let Some(flag) = rest.next() {
        let value = if flag == "--resume" { None } else { rest.next() };
        match flags.iter_mut().find(|(f, _)| *f == flag && flag != "--set") {
            Some(slot) => slot.1 = value,
            None => flags.push((flag, value)),
        }
    }
    let args: Vec<&str> = flags.iter().flat_map(|(f, v)| std::iter::once(*f).chain(*v)).collect();
    let args: Vec<&str> = std::iter::once("train").chain(args).collect();
    let (ok, _, stderr) = common::meridian(&args);
    (ok, stderr)
}

fn manifest(out: &Path, algo: &str) -> serde_json::Value {
    let path = out.join("checkpoints").join(algo).join("manifest.json");
    serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap()
}

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("meridian-resume-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

const ALGOS: [&str; 5] = ["ddp", "diloco", "sparseloco", "demo", "streaming"];

#[test]
fn stopped_and_resumed_equals_uninterrupted_bit_for_bit() {
    let (straight, resumed) = (scratch("straight"), scratch("resumed"));
    let (ok, err) = train(&straight, &[]);
    assert!(ok, "{err}");
    // Step 45 is in the middle of a DiLoCo round (H = 30).
    let (ok, err) = train(&resumed, &["--stop-after", "45"]);
    assert!(ok, "{err}");
    for algo in ALGOS {
        assert_eq!(manifest(&resumed, algo)["step"], 45, "{algo}");
        assert_ne!(manifest(&resumed, algo)["files"], manifest(&straight, algo)["files"]);
    }
    let (ok, err) = train(&resumed, &["--resume"]);
    assert!(ok, "{err}");
    for algo in ALGOS {
        let (a, b) = (manifest(&straight, algo), manifest(&resumed, algo));
        assert_eq!(a["step"], 60);
        // Every file hash equal: parameters, AdamW moments, outer state, data position.
        assert_eq!(
            a["files"]["worker-0.safetensors"], b["files"]["worker-0.safetensors"],
            "{algo}"
        );
        assert_eq!(
            a["files"]["worker-1.safetensors"], b["files"]["worker-1.safetensors"],
            "{algo}"
        );
        assert_eq!(
            a["files"]["worker-1.outer.safetensors"], b["files"]["worker-1.outer.safetensors"],
            "{algo}"
        );
        assert_eq!(a["shards"], b["shards"], "{algo}");
        assert_eq!(a["round"], b["round"], "{algo}");
    }
    let read = |d: &Path| -> serde_json::Value {
        serde_json::from_slice(&std::fs::read(d.join("summary.json")).unwrap()).unwrap()
    };
    let (sa, sb) = (read(&straight), read(&resumed));
    for (a, b) in
        sa["algorithms"].as_array().unwrap().iter().zip(sb["algorithms"].as_array().unwrap())
    {
        assert_eq!(a["final_val_loss"], b["final_val_loss"]);
        assert_eq!(a["bytes_sent_per_worker"], b["bytes_sent_per_worker"]);
        assert_eq!(a["rounds"], b["rounds"]);
        assert_eq!(b["resumed_from_step"], 45);
    }
    let lines = std::fs::read_to_string(resumed.join("rounds-diloco.jsonl")).unwrap();
    assert_eq!(lines.lines().count(), 2, "each round logged once");
    std::fs::remove_dir_all(&straight).unwrap();
    std::fs::remove_dir_all(&resumed).unwrap();
}

#[test]
fn a_checkpoint_from_another_run_is_refused_and_left_intact() {
    let dir = scratch("refuse");
    let (ok, err) = train(&dir, &["--stop-after", "10", "--algo", "diloco"]);
    assert!(ok, "{err}");
    let before = manifest(&dir, "diloco");
    let cases: &[(&[&str], &str)] = &[
        (&["--seed", "1"], "seed"),
        (&["--set", "inner.lr=0.01"], "\"lr\""),
        (&["--set", "diloco.outer_lr=0.5"], "outer_lr"),
        (&["--set", "model.hidden=128"], "model"),
        (&["--workers", "3"], "workers"),
        (&["--steps", "90"], "--steps"),
    ];
    for (args, needle) in cases {
        let mut a = vec!["--resume", "--algo", "diloco"];
        a.extend(*args);
        let (ok, err) = train(&dir, &a);
        assert!(!ok && err.contains(needle) && err.contains("differs"), "{args:?}: {err}");
    }
    let corrupt = dir.join("checkpoints/diloco/worker-1.safetensors");
    let mut bytes = std::fs::read(&corrupt).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 1;
    std::fs::write(&corrupt, &bytes).unwrap();
    let (ok, err) = train(&dir, &["--resume", "--algo", "diloco"]);
    assert!(!ok && err.contains("corrupt"), "{err}");
    bytes[last] ^= 1;
    std::fs::write(&corrupt, &bytes).unwrap();
    assert_eq!(manifest(&dir, "diloco"), before, "the checkpoint was not touched");
    let (ok, err) = train(&dir, &["--resume", "--algo", "diloco"]);
    assert!(ok, "the intact checkpoint still resumes: {err}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn stopped_with_a_round_in_flight_and_resumed_equals_uninterrupted_bit_for_bit() {
    // Overlapped rounds: DiLoCo's and SparseLoCo's round 0 launches at step 30 and lands
    // at 40, DeMo's every round one step after it launched; step 35 has one in flight for
    // each, which the checkpoint must carry.
    let overlapped: &[&str] = &[
        "--algo",
        "diloco,sparseloco,demo",
        "--set",
        "diloco.overlap=10",
        "--set",
        "sparseloco.overlap=10",
        "--set",
        "demo.overlap=1",
    ];
    let (straight, resumed) = (scratch("overlap-straight"), scratch("overlap-resumed"));
    let (ok, err) = train(&straight, overlapped);
    assert!(ok, "{err}");
    let stop = [overlapped, &["--stop-after", "35"]].concat();
    let (ok, err) = train(&resumed, &stop);
    assert!(ok, "{err}");
    for algo in ["diloco", "sparseloco", "demo"] {
        let files = &manifest(&resumed, algo)["files"];
        assert!(files.get("in_flight.safetensors").is_some(), "{algo}: {files}");
    }
    let (ok, err) = train(&resumed, &[overlapped, &["--resume"]].concat());
    assert!(ok, "{err}");
    for algo in ["diloco", "sparseloco", "demo"] {
        let (mut a, mut b) = (manifest(&straight, algo), manifest(&resumed, algo));
        assert_eq!(a["step"], 60);
        // Every file but the progress record (it holds wall-clock times): parameters,
        // AdamW moments, outer state, and no round left in flight.
        for m in [&mut a, &mut b] {
            m["files"].as_object_mut().unwrap().remove("progress.json");
        }
        assert_eq!(a["files"], b["files"], "{algo}");
        assert_eq!(a["round"], b["round"], "{algo}");
    }
    let lines = std::fs::read_to_string(resumed.join("rounds-diloco.jsonl")).unwrap();
    assert_eq!(lines.lines().count(), 2, "each round logged once");
    std::fs::remove_dir_all(&straight).unwrap();
    std::fs::remove_dir_all(&resumed).unwrap();
}
