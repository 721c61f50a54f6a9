//! The run's settings travel with the run: a coordinator started with `--config RUN.toml`
//! holding a `[run]` table hands them to every worker, so a worker needs only its join
//! file, name and data; a worker with settings of its own that differ, or other data than
//! the run names, is refused with each difference named; one with the same flags joins.

// Test helpers outside #[test] functions may unwrap too: a failure is the test failing.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::Path;
use std::time::Duration;

use common::{coordinator_with, corpus, log, meridian, scratch, spawn_logged};

/// The run: a small MLP, DiLoCo with two rounds of 5 steps, two shards.
fn run_toml(corpus_fingerprint: &str) -> String {
    format!(
        "[run]\nalgo = \"diloco\"\nmodel = \"mlp\"\nsteps = 10\nshards = 2\nseed = 3\n\
         corpus = \"{corpus_fingerprint}\"\n[diloco]\ninner_steps = 5\nouter_lr = 0.6\n"
    )
}

/// `meridian worker` with only a join file, a name, the data and an output folder, plus
/// `extra`.
fn worker(dir: &Path, name: &str, extra: &[&str]) -> Vec<String> {
    let mut args: Vec<String> = ["worker", "--join-file"].map(String::from).to_vec();
    args.push(dir.join("join").display().to_string());
    args.extend(["--name", name, "--data", &corpus()].map(String::from));
    args.extend(["--out".to_string(), dir.join(name).display().to_string()]);
    args.extend(extra.iter().map(|s| s.to_string()));
    args
}

/// The flags that name the run's settings, for a worker that brings its own.
const SAME_FLAGS: [&str; 14] = [
    "--algo",
    "diloco",
    "--model",
    "mlp",
    "--steps",
    "10",
    "--inner-steps",
    "5",
    "--shards",
    "2",
    "--seed",
    "3",
    "--set",
    "outer_lr=0.6",
];

fn hash(dir: &Path, name: &str) -> String {
    let text = std::fs::read_to_string(dir.join(name).join("worker.json")).unwrap();
    let json: serde_json::Value = serde_json::from_str(&text).unwrap();
    json["consensus_hash"].as_str().unwrap().to_string()
}

#[test]
fn workers_take_the_runs_settings_from_the_coordinator_and_differing_ones_are_refused() {
    // A run that requires a corpus no worker has: a follower is refused, naming its own
    // fingerprint (which the next run then requires).
    let dir = scratch("run-settings", "follow");
    std::fs::write(dir.join("wrong.toml"), run_toml("00000000000000aa")).unwrap();
    let wrong = dir.join("wrong.toml").display().to_string();
    let (coord, _) = coordinator_with(&dir, 2, 2, &["--config", &wrong]);
    let (ok, _, stderr) = meridian(&worker(&dir, "f0", &[]));
    assert!(!ok, "a worker with other data was admitted: {stderr}");
    let line = stderr
        .lines()
        .find(|l| l.contains("corpus fingerprint: the run has 00000000000000aa, this worker "))
        .unwrap_or_else(|| panic!("no corpus difference named: {stderr}"));
    let fingerprint = line.rsplit(' ').next().unwrap().to_string();
    assert_eq!(fingerprint.len(), 16, "{line}");
    drop(coord);
    std::fs::remove_dir_all(dir.join("coordinator")).unwrap();
    std::fs::remove_file(dir.join("join")).unwrap();

    // The run with the right corpus: a follower, a worker that brings the same flags, and
    // workers whose seed or algorithm setting differ.
    std::fs::write(dir.join("run.toml"), run_toml(&fingerprint)).unwrap();
    let run = dir.join("run.toml").display().to_string();
    let (mut coord, _) = coordinator_with(&dir, 2, 2, &["--config", &run]);
    let mut follower = spawn_logged(&dir, &worker(&dir, "f0", &[]), "f0");
    let mut seed = SAME_FLAGS.to_vec();
    seed[11] = "4";
    let (ok, _, stderr) = meridian(&worker(&dir, "w-seed", &seed));
    assert!(!ok && stderr.contains("run seed: the run has 3, this worker 4"), "{stderr}");
    let (ok, _, stderr) = meridian(&worker(&dir, "w-lr", &["--set", "outer_lr=0.5"]));
    assert!(!ok, "{stderr}");
    assert!(stderr.contains("setting outer_lr: the run has 0.6, this worker 0.5"), "{stderr}");
    assert!(stderr.contains("run steps: the run has 10, this worker 300"), "{stderr}");
    // The coordinator's file is not a worker's.
    let (ok, _, stderr) = meridian(&worker(&dir, "w-file", &["--config", &run]));
    assert!(!ok && stderr.contains("a file with a [run] table"), "{stderr}");
    let mut same = spawn_logged(&dir, &worker(&dir, "w1", &SAME_FLAGS), "w1");

    assert!(follower.wait_ok(Duration::from_secs(180)), "f0: {}", log(&dir, "f0"));
    assert!(same.wait_ok(Duration::from_secs(180)), "w1: {}", log(&dir, "w1"));
    assert!(coord.wait_ok(Duration::from_secs(60)), "{}", log(&dir, "coordinator"));
    assert!(log(&dir, "f0").contains("training the run's settings from the coordinator"));
    let summary = std::fs::read_to_string(dir.join("f0").join("worker.json")).unwrap();
    let json: serde_json::Value = serde_json::from_str(&summary).unwrap();
    assert_eq!((json["algorithm"].as_str(), json["steps"].as_u64()), (Some("diloco"), Some(10)));
    assert_eq!(json["rounds"].as_u64(), Some(2), "{summary}");
    assert_eq!(hash(&dir, "f0"), hash(&dir, "w1"), "the replicas differ");
    for refused in ["w-seed", "w-lr"] {
        assert!(!dir.join(refused).join("worker.json").exists());
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_follower_of_a_coordinator_without_settings_joins_with_its_defaults() {
    let dir = scratch("run-settings", "no-settings");
    let (_coord, _) = coordinator_with(&dir, 1, 1, &[]);
    let mut args = worker(&dir, "f0", &[]);
    // Only transport settings of its own: it still asks for the run's.
    args.extend(["--set", "transport.rtt_ms=50"].map(String::from));
    let _w = spawn_logged(&dir, &args, "f0");
    let start = std::time::Instant::now();
    while !log(&dir, "f0").contains("joined the run") {
        assert!(start.elapsed() < Duration::from_secs(60), "f0 never joined: {}", log(&dir, "f0"));
        std::thread::sleep(Duration::from_millis(50));
    }
    let text = log(&dir, "f0");
    assert!(text.contains("the coordinator holds no run settings"), "{text}");
    assert!(text.contains("followed=false"), "{text}");
    drop(_w);
    std::fs::remove_dir_all(&dir).unwrap();
}
