//! `meridian simulate` as a user runs it: real QUIC over the simulated WAN, in virtual time.

// Test helpers outside #[test] functions may unwrap too: a failure is the test failing.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{corpus, meridian};

use std::path::Path;

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
    assert_eq!(s["device"], "cpu");
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

/// `--chaos scenario` over `--steps 30` of DiLoCo: the clean run's summary, the faulted
/// run's, and what was printed. Checks what every scenario must keep: it completes, every
/// worker ends bit-identical, no committed payload applied twice or lost.
fn chaos(name: &str, scenario: &str) -> (serde_json::Value, serde_json::Value, String) {
    let (c, r, stdout, _) = chaos_in(name, scenario, "diloco");
    (c, r, stdout)
}

/// [`chaos`] with `algos` (the summaries returned are the first one's), and the output
/// folder.
fn chaos_in(
    name: &str,
    scenario: &str,
    algos: &str,
) -> (serde_json::Value, serde_json::Value, String, std::path::PathBuf) {
    chaos_in_with(name, scenario, algos, &[])
}

/// [`chaos_in`] with more arguments.
fn chaos_in_with(
    name: &str,
    scenario: &str,
    algos: &str,
    extra: &[&str],
) -> (serde_json::Value, serde_json::Value, String, std::path::PathBuf) {
    let out = scratch(name);
    let mut args = vec!["--algos", algos, "--steps", "30", "--chaos", scenario];
    args.extend_from_slice(extra);
    let (ok, stdout, stderr) = simulate(&out, &args);
    assert!(ok, "{stdout}\n{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    let (clean, run) = (summary(&out.join("clean")), summary(&out.join(scenario)));
    assert!(run["chaos"].as_str().is_some_and(|d| !d.is_empty()), "{run}");
    // The table's rows, as chaos.json has them.
    let rows: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("chaos.json")).unwrap()).unwrap();
    for (i, algo) in algos.split(',').enumerate() {
        let (c, r) = (&clean["algorithms"][i], &run["algorithms"][i]);
        assert_eq!(r["algorithm"], algo);
        assert_eq!(r["replicas_identical"], true, "{scenario}, {algo}");
        assert_eq!(r["commit_error"], serde_json::Value::Null, "{scenario}, {algo}");
        assert_eq!(r["rounds_committed"], c["rounds_committed"], "{scenario}, {algo}");
        let row = &rows[i];
        assert_eq!((&row["scenario"], &row["algorithm"]), (&scenario.into(), &algo.into()));
        assert_eq!(row["replicas_identical"], true);
        assert_eq!(row["commits_consistent"], true);
        assert_eq!(row["within_margin"], true, "{row}");
    }
    assert!(stdout.contains(scenario) && stdout.contains("vs clean"), "{stdout}");
    (clean["algorithms"][0].clone(), run["algorithms"][0].clone(), stdout, out)
}

fn loss(a: &serde_json::Value) -> f64 {
    a["final_val_loss"].as_f64().unwrap()
}

fn seconds(a: &serde_json::Value) -> f64 {
    a["simulated_seconds"].as_f64().unwrap()
}

#[test]
fn a_partition_between_continents_stalls_the_run_until_it_heals_and_loses_nothing() {
    let (c, p, stdout) = chaos("partition", "partition");
    assert!(stdout.contains("cut off from each other for 30 s"), "{stdout}");
    // Every round still commits with every worker (the deadline waits out the cut), so the
    // run trains exactly as the clean one, only later: it ends after the heal at t = 35 s.
    assert_eq!(p["rounds"], c["rounds"]);
    assert_eq!(loss(&p), loss(&c));
    let (cs, ps) = (seconds(&c), seconds(&p));
    assert!(cs < 35.0 && ps > 35.0, "clean {cs} s, partitioned {ps} s");
}

#[test]
fn bursty_loss_and_a_slower_link_cost_time_not_loss() {
    for scenario in ["bursty-loss", "slow-link"] {
        let (c, r, _) = chaos(scenario, scenario);
        // The network delays payloads; it never changes them.
        assert_eq!(loss(&r), loss(&c), "{scenario}");
        // Slower, or as fast within packet timing: a fault also changes which datagrams
        // the links' random loss draws, which can move a run this short (10 s) by
        // milliseconds either way (measured: slow-link 9.833 s against 9.834 s clean).
        assert!(seconds(&r) >= seconds(&c) - 0.01, "{scenario}: {} < {}", seconds(&r), seconds(&c));
    }
}

#[test]
fn a_killed_worker_rejoins_takes_a_peers_state_and_replays_the_same_run() {
    // DDP too: its replicas agree only if the newcomer takes the AdamW moments and steps
    // with every replayed gradient.
    let (c, r, stdout, out) = chaos_in("worker-restart", "worker-restart", "diloco,ddp");
    assert!(stdout.contains("worker 3 is killed"), "{stdout}");
    let faults = &r["faults"];
    assert_eq!(faults["worker_restarts"], 2, "{faults}");
    // The coordinator saw both deaths (the restarted process superseded the dead
    // connection) and both returns.
    assert_eq!(faults["workers_lost"], 2, "{faults}");
    assert_eq!(faults["workers_rejoined"], 2, "{faults}");
    assert!(loss(&r) <= loss(&c) * 1.02, "{} vs clean {}", loss(&r), loss(&c));
    assert!(seconds(&r) > seconds(&c), "a restart costs time");
    // The same seed replays the same faults, byte for byte.
    let again = scratch("worker-restart-again");
    let args = ["--algos", "diloco,ddp", "--steps", "30", "--chaos", "worker-restart"];
    let (ok, _, stderr) = simulate(&again, &args);
    assert!(ok, "{stderr}");
    let first = std::fs::read(out.join("worker-restart/summary.json"));
    let second = std::fs::read(again.join("worker-restart/summary.json"));
    assert!(first.unwrap() == second.unwrap(), "two runs with one seed differ");
}

#[test]
fn a_restarted_coordinator_resumes_from_its_state_and_the_workers_notice_at_once() {
    let (c, r, _) = chaos("coordinator-restart", "coordinator-restart");
    let faults = &r["faults"];
    assert_eq!(faults["coordinator_restarts"], 1, "{faults}");
    assert_eq!(faults["workers_rejoined"], 4, "every worker reconnected: {faults}");
    // Its state folder kept every commit: the run ends exactly as the clean one.
    assert_eq!(loss(&r), loss(&c));
    // The restarted coordinator answers the workers' packets with stateless resets, so
    // they reconnect within round trips instead of after QUIC's 60 s idle timeout.
    let delay = seconds(&r) - seconds(&c);
    assert!(delay > 0.0 && delay < 30.0, "the restart cost {delay} s");
}

#[test]
fn a_worker_joining_mid_run_catches_up_and_ends_identical() {
    let (c, r, stdout) = chaos("late-join", "late-join");
    assert!(stdout.contains("worker 4 joins"), "{stdout}");
    let workers = r["workers"].as_array().unwrap();
    assert_eq!(workers.len(), 5, "{r}");
    assert_eq!(workers[4]["member"], 4);
    assert!(workers.iter().all(|w| w["hash"] == workers[0]["hash"]));
    // It joined after round 0: it took a peer's state, then trained in the later rounds.
    assert!(r["rounds_committed"] == c["rounds_committed"]);
}

#[test]
fn a_byzantine_worker_wrecks_a_plain_mean_and_is_rejected_by_robust_aggregation() {
    // Undefended (the default mean): one worker in four scaling its update by 100 ruins
    // the run, and the table says so.
    let out = scratch("byzantine-mean");
    let args = ["--algos", "diloco", "--steps", "30", "--chaos", "byzantine-scaled"];
    let (ok, stdout, stderr) = simulate(&out, &args);
    assert!(ok, "{stdout}\n{stderr}");
    assert!(stdout.contains("outside: byzantine-scaled (diloco)"), "{stdout}");
    let (c, r) = (
        &summary(&out.join("clean"))["algorithms"][0],
        &summary(&out.join("byzantine-scaled"))["algorithms"][0],
    );
    assert!(loss(r) > 1.5 * loss(c), "{} vs clean {}", loss(r), loss(c));
    assert_eq!(r["replicas_identical"], true, "wrecked, but wrecked alike");
    // Defended: every round rejects the attacker's payload, and the run ends near the clean
    // one (which ran with the same setting).
    let (_, r, _, _) = chaos_in_with(
        "byzantine-reject",
        "byzantine-scaled",
        "diloco",
        &["--set", "aggregation=reject_outliers"],
    );
    assert_eq!(r["faults"]["payloads_rejected"], r["rounds_committed"], "{r}");
}

#[test]
fn chaos_all_prints_one_row_per_scenario() {
    let out = scratch("chaos-all");
    let (ok, stdout, stderr) =
        simulate(&out, &["--algos", "diloco", "--steps", "20", "--chaos", "all"]);
    assert!(ok, "{stdout}\n{stderr}");
    let rows: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("chaos.json")).unwrap()).unwrap();
    let names: Vec<&str> =
        rows.as_array().unwrap().iter().map(|r| r["scenario"].as_str().unwrap()).collect();
    let expected = [
        "worker-restart",
        "partition",
        "bursty-loss",
        "slow-link",
        "coordinator-restart",
        "late-join",
        "byzantine-scaled",
        "byzantine-sign-flip",
        "byzantine-noise",
    ];
    assert_eq!(names, expected);
    for name in expected {
        assert!(stdout.lines().any(|l| l.starts_with(name)), "{name} missing:\n{stdout}");
        assert!(out.join(name).join("summary.json").exists());
    }
    for header in ["rounds", "lost", "rejoined", "rejected", "vs clean", "replicas"] {
        assert!(stdout.contains(header), "{header}:\n{stdout}");
    }
}

#[test]
fn overlapped_rounds_keep_the_workers_computing_while_the_round_travels() {
    // The same DiLoCo run across continents, blocking and with each round landing 5 inner
    // steps after its launch: the same rounds commit, every replica agrees on the global
    // copy, and the workers wait less.
    let (blocking, overlapped) = (scratch("blocking"), scratch("overlapped"));
    let args = ["--algos", "diloco,sparseloco", "--steps", "30"];
    let (ok, stdout, stderr) = simulate(&blocking, &args);
    assert!(ok, "{stdout}\n{stderr}");
    let mut with = args.to_vec();
    with.extend(["--set", "overlap=5"]);
    let (ok, stdout, stderr) = simulate(&overlapped, &with);
    assert!(ok, "{stdout}\n{stderr}");
    for i in 0..2 {
        let (b, o) = (&summary(&blocking)["algorithms"][i], &summary(&overlapped)["algorithms"][i]);
        let name = o["algorithm"].as_str().unwrap();
        assert_eq!(o["settings"]["overlap"], 5, "{name}");
        assert_eq!(o["replicas_identical"], true, "{name}");
        assert_eq!(o["rounds_committed"], b["rounds_committed"], "{name}");
        let util = |a: &serde_json::Value| a["compute_utilization"].as_f64().unwrap();
        assert!(util(o) > util(b), "{name}: overlapped {} vs blocking {}", util(o), util(b));
        assert!(seconds(o) < seconds(b), "{name}: {} s vs {} s", seconds(o), seconds(b));
        assert!(loss(o).is_finite() && loss(o) < o["initial_val_loss"].as_f64().unwrap());
    }
}

#[test]
fn overlapped_rounds_survive_every_chaos_scenario() {
    // Kills, restarts and a late joiner meet rounds in flight: a newcomer takes a state
    // that may hold one and lands it where the others do; a restarted worker replays.
    let args = ["--algos", "sparseloco", "--steps", "30", "--set", "overlap=5", "--chaos", "all"];
    every_chaos_scenario_keeps_replicas_identical("chaos-overlap", &args);
}

#[test]
fn streaming_diloco_survives_every_chaos_scenario_with_its_fragments_in_flight() {
    // Its τ is its overlap: with H = 10 in four fragments each fragment's round is in
    // flight for two of the two or three steps between fragments.
    let args = ["--algos", "streaming", "--steps", "22", "--set", "overlap=2", "--chaos", "all"];
    every_chaos_scenario_keeps_replicas_identical("chaos-streaming", &args);
}

/// Runs `--chaos all` with `args`: every scenario's replicas agree and apply exactly the
/// commits, and but for the Byzantine ones the loss stays within the margin.
fn every_chaos_scenario_keeps_replicas_identical(name: &str, args: &[&str]) {
    let out = scratch(name);
    let (ok, stdout, stderr) = simulate(&out, args);
    assert!(ok, "{stdout}\n{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    let rows: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("chaos.json")).unwrap()).unwrap();
    let rows = rows.as_array().unwrap();
    assert_eq!(rows.len(), 9);
    for row in rows {
        assert_eq!(row["replicas_identical"], true, "{row}");
        assert_eq!(row["commits_consistent"], true, "{row}");
        let scenario = row["scenario"].as_str().unwrap();
        if !scenario.starts_with("byzantine") {
            assert_eq!(row["within_margin"], true, "{row}");
        }
    }
}

#[test]
fn a_slow_region_steps_slower_and_the_others_wait_for_it_unless_balanced() {
    // ap-southeast's accelerator at half speed: its steps take twice the stated time, and
    // with blocking rounds the other regions wait for its payload every round.
    let out = scratch("speed");
    let args = ["--algos", "diloco", "--steps", "20", "--speed", "ap-southeast=0.5"];
    let (ok, stdout, stderr) = simulate(&out, &args);
    assert!(ok, "{stdout}\n{stderr}");
    assert!(stdout.contains("compute by region"), "{stdout}");
    let s = summary(&out);
    assert_eq!(s["uneven_compute"], true);
    let a = &s["algorithms"][0];
    assert_eq!(a["replicas_identical"], true, "{a}");
    let workers = a["workers"].as_array().unwrap();
    let compute = |region: &str| -> Vec<f64> {
        workers
            .iter()
            .filter(|w| w["region"] == region)
            .map(|w| w["compute_seconds"].as_f64().unwrap())
            .collect()
    };
    let utilization = |region: &str| -> f64 {
        let w = workers.iter().find(|w| w["region"] == region).unwrap();
        w["compute_seconds"].as_f64().unwrap() / w["finished_seconds"].as_f64().unwrap()
    };
    // --quick steps take 250 ms: 20 of them are 5 s, and 10 s at half speed, exactly.
    assert_eq!(compute("us-east"), vec![5.0]);
    assert_eq!(compute("ap-southeast"), vec![10.0]);
    assert!(utilization("us-east") < 0.6, "{}", utilization("us-east"));
    assert!(utilization("ap-southeast") > utilization("us-east") + 0.3);
    let waiting = utilization("us-east");

    // Balanced: the others' first payloads reach the slow site halfway through the first
    // round (H = 10) and tell it their pace; from then on it trains every other step, so
    // the others wait less; replicas stay identical.
    let balanced = scratch("speed-balanced");
    let (ok, stdout, stderr) =
        simulate(&balanced, &[&args[..], &["--set", "diloco.balance=true"]].concat());
    assert!(ok, "{stdout}\n{stderr}");
    let b = &summary(&balanced)["algorithms"][0];
    assert_eq!(b["replicas_identical"], true, "{b}");
    let workers = b["workers"].as_array().unwrap();
    let of = |region: &str| workers.iter().find(|w| w["region"] == region).unwrap();
    let seconds = |region: &str, key: &str| of(region)[key].as_f64().unwrap();
    // 10 of its 20 steps at 500 ms: the others' 20 at 250 ms.
    assert_eq!(seconds("ap-southeast", "compute_seconds"), 5.0);
    assert_eq!(seconds("us-east", "compute_seconds"), 5.0);
    let busy = seconds("us-east", "compute_seconds") / seconds("us-east", "finished_seconds");
    // As busy as when every site is fast (74% here; the rest is the blocking exchange):
    // without the first round's sizing it would wait a round's half for the slow site.
    assert!(busy > 0.7 && busy > waiting + 0.2, "balanced {busy} against {waiting}");
    // A malformed or out-of-range speed is refused before anything runs.
    for (bad, says) in
        [("ap-southeast", "REGION=FACTOR"), ("mars=0.5", "mars"), ("us-east=0", "speed of us-east")]
    {
        let (ok, _, stderr) =
            simulate(&scratch("speed-bad"), &["--algos", "diloco", "--speed", bad]);
        assert!(!ok && stderr.contains(says), "--speed {bad}: {stderr}");
    }
}
