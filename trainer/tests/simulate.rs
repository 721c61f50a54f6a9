//! `meridian simulate` as a user runs it: real QUIC over the simulated WAN, in virtual time.

// Test helpers outside #[test] functions may unwrap too: a failure is the test failing.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::corpus;

use std::path::Path;
use std::process::Command;

fn meridian(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_meridian"))
        .args(args)
        .env("RUST_LOG", "warn")
        .output()
        .unwrap_or_else(|e| panic!("cannot run meridian: {e}"));
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A quick simulation, shortened further for the test suite.
fn simulate(out: &Path, extra: &[&str]) -> (bool, String, String) {
    let data = corpus();
    let out = out.to_str().unwrap().to_string();
    let mut args = vec!["simulate", "--quick", "--threads", "1", "--data", &data, "--out", &out];
    if !extra.contains(&"--steps") {
        args.extend(["--steps", "20"]);
    }
    args.extend_from_slice(extra);
    meridian(&args)
}

fn summary(dir: &Path) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(dir.join("summary.json")).unwrap()).unwrap()
}

#[test]
fn the_same_seed_gives_a_byte_identical_summary() {
    let (a, b) = (scratch("det-a"), scratch("det-b"));
    let algos = ["--algos", "diloco,sparseloco"];
    let (ok, stdout, stderr) = simulate(&a, &algos);
    assert!(ok, "{stdout}\n{stderr}");
    let (ok, stdout, stderr) = simulate(&b, &algos);
    assert!(ok, "{stdout}\n{stderr}");
    let (first, second) = (
        std::fs::read(a.join("summary.json")).unwrap(),
        std::fs::read(b.join("summary.json")).unwrap(),
    );
    assert!(first == second, "two runs with seed 0 wrote different summaries");

    let s = summary(&a);
    assert_eq!(s["deterministic"], true);
    for algo in s["algorithms"].as_array().unwrap() {
        let name = algo["algorithm"].as_str().unwrap();
        assert_eq!(algo["replicas_identical"], true, "{name}");
        // It trained: the loss fell from its initial value.
        let (initial, last) =
            (algo["initial_val_loss"].as_f64().unwrap(), algo["final_val_loss"].as_f64().unwrap());
        assert!(last < initial, "{name}: {initial} -> {last}");
        // 20 steps at 250 ms each: the compute alone takes 5 simulated seconds, and the
        // network makes it longer, so utilization is below one.
        let seconds = algo["simulated_seconds"].as_f64().unwrap();
        let util = algo["compute_utilization"].as_f64().unwrap();
        assert!(seconds > 5.0, "{name}: {seconds}");
        assert!(util > 0.0 && util < 1.0, "{name}: {util}");
        assert!(
            algo["wire_bytes"].as_u64().unwrap() as f64
                > algo["bytes_sent_per_worker"].as_f64().unwrap()
        );
    }
    for plot in ["val_loss_vs_time.svg", "val_loss_vs_bytes.svg"] {
        assert!(a.join(plot).exists(), "{plot} missing");
    }
    // Another seed is another run (other data shards and initial weights).
    let c = scratch("det-c");
    let (ok, _, stderr) = simulate(&c, &["--algos", "diloco", "--seed", "1"]);
    assert!(ok, "{stderr}");
    assert_ne!(
        summary(&c)["algorithms"][0]["final_val_loss"],
        s["algorithms"][0]["final_val_loss"]
    );
}

#[test]
fn a_slower_network_costs_simulated_time_not_loss() {
    // The same training over the LAN and across continents: identical losses and bytes
    // (the network moves payloads, it does not change them), a longer wall-clock.
    let (lan, wan) = (scratch("lan"), scratch("wan"));
    let (ok, _, stderr) = simulate(&lan, &["--algos", "ddp", "--preset", "lan", "--steps", "8"]);
    assert!(ok, "{stderr}");
    let (ok, _, stderr) =
        simulate(&wan, &["--algos", "ddp", "--preset", "cross-continent", "--steps", "8"]);
    assert!(ok, "{stderr}");
    let (l, w) = (&summary(&lan)["algorithms"][0], &summary(&wan)["algorithms"][0]);
    assert_eq!(l["final_val_loss"], w["final_val_loss"]);
    assert_eq!(l["bytes_sent_per_worker"], w["bytes_sent_per_worker"]);
    let (ls, ws) =
        (l["simulated_seconds"].as_f64().unwrap(), w["simulated_seconds"].as_f64().unwrap());
    assert!(ws > ls + 8.0 * 0.1, "8 DDP rounds over >100 ms RTTs: lan {ls} s, wan {ws} s");
    assert!(
        w["compute_utilization"].as_f64().unwrap() < l["compute_utilization"].as_f64().unwrap()
    );
}

#[test]
fn bad_input_is_a_clear_error() {
    let out = scratch("bad");
    for (args, expected) in [
        (vec!["--preset", "mars"], "mars"),
        (vec!["--workers", "0"], "--workers"),
        (vec!["--algos", "streaming"], "Streaming"),
        (vec!["--step-time", "fast"], "fast"),
        (vec!["--tflops=0"], "--tflops"),
    ] {
        let (ok, stdout, stderr) = simulate(&out, &args);
        assert!(!ok, "{args:?} should fail:\n{stdout}");
        assert!(stderr.contains(expected), "{args:?}: {stderr}");
        assert!(!stderr.contains("panicked"), "{args:?}: {stderr}");
    }
    // Topology files: a missing link, a negative rate, more workers than the regions hold.
    let head = "name = \"x\"\nregions = [\"a\", \"b\"]\ncoordinator = \"a\"\n";
    for (name, body, workers, expected) in [
        (
            "one-way.toml",
            "[links.\"a -> b\"]\ndelay = \"10ms\"\n",
            "2",
            "no link from region \"b\"",
        ),
        ("negative.toml", "[links.\"a <-> b\"]\nrate = \"-5Mbps\"\n", "2", "rate must be positive"),
        (
            "small.toml",
            "capacity = { a = 1, b = 1 }\n[links.\"a <-> b\"]\ndelay = \"10ms\"\n",
            "4",
            "cannot place 4 workers",
        ),
    ] {
        let path = out.join(name);
        std::fs::write(&path, format!("{head}{body}")).unwrap();
        let args = ["--topology", path.to_str().unwrap(), "--workers", workers];
        let (ok, stdout, stderr) = simulate(&out, &args);
        assert!(!ok, "{name} should fail:\n{stdout}");
        assert!(stderr.contains(expected), "{name}: {stderr}");
        assert!(!stderr.contains("panicked"), "{name}: {stderr}");
    }
}

fn scratch(name: &str) -> std::path::PathBuf {
    common::scratch("sim", name)
}

#[test]
fn a_partition_between_continents_stalls_the_run_until_it_heals_and_loses_nothing() {
    let (clean, cut) = (scratch("clean"), scratch("partition"));
    let algos = ["--algos", "diloco", "--steps", "30"];
    let (ok, _, stderr) = simulate(&clean, &algos);
    assert!(ok, "{stderr}");
    let (ok, stdout, stderr) = simulate(&cut, &[&algos[..], &["--chaos", "partition"]].concat());
    assert!(ok, "{stderr}");
    assert!(stdout.contains("cut off from each other for 30 s"), "{stdout}");
    let (c, p) = (&summary(&clean)["algorithms"][0], &summary(&cut)["algorithms"][0]);
    assert!(summary(&cut)["chaos"].as_str().unwrap().contains("30 s"));
    // Every round still commits with every worker (the deadline waits out the cut), so the
    // run trains exactly as the clean one, only later: it ends after the heal at t = 35 s.
    assert_eq!(p["replicas_identical"], true);
    assert_eq!(p["rounds"], c["rounds"]);
    assert_eq!(p["final_val_loss"], c["final_val_loss"]);
    let (cs, ps) =
        (c["simulated_seconds"].as_f64().unwrap(), p["simulated_seconds"].as_f64().unwrap());
    assert!(cs < 35.0 && ps > 35.0, "clean {cs} s, partitioned {ps} s");
}
