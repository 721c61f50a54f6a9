//! A real multi-process run on 127.0.0.1: a coordinator and worker processes over QUIC.

// Test helpers outside #[test] functions may unwrap too: a failure is the test failing.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{coordinator, coordinator_with, corpus, log, Proc, BIN};

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn worker(dir: &Path, join: &str, name: &str, steps: u64, extra: &[&str]) -> Proc {
    worker_logged(dir, join, name, name, steps, extra)
}

/// A worker whose log goes to `DIR/{log}.log`.
fn worker_logged(
    dir: &Path,
    join: &str,
    name: &str,
    log: &str,
    steps: u64,
    extra: &[&str],
) -> Proc {
    let out = dir.join(name);
    let child = Command::new(BIN)
        .args(["worker", "--join", join, "--name", name, "--model", "mlp"])
        .args(if extra.contains(&"--algo") { &[][..] } else { &["--algo", "diloco"][..] })
        .args(if extra.contains(&"--inner-steps") { &[][..] } else { &["--inner-steps", "5"][..] })
        .args(["--steps", &steps.to_string(), "--shards", "4"])
        .args(["--data", &corpus()])
        .arg("--out")
        .arg(&out)
        .args(extra)
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::from(std::fs::File::create(dir.join(format!("{log}.log"))).unwrap()))
        .spawn()
        .unwrap();
    Proc(child)
}

fn summary(dir: &Path, name: &str) -> serde_json::Value {
    let path = dir.join(name).join("worker.json");
    serde_json::from_slice(
        &std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display())),
    )
    .unwrap()
}

#[test]
fn four_worker_processes_finish_twenty_rounds_bit_identical() {
    let dir = scratch("four");
    let (mut coord, join) = coordinator(&dir, 4, 20);
    let mut workers: Vec<Proc> =
        (0..4).map(|i| worker(&dir, &join, &format!("w{i}"), 100, &[])).collect();
    for (i, w) in workers.iter_mut().enumerate() {
        assert!(w.wait_ok(Duration::from_secs(240)), "w{i}: {}", log(&dir, &format!("w{i}")));
    }
    assert!(coord.wait_ok(Duration::from_secs(60)), "{}", log(&dir, "coordinator"));
    let all: Vec<serde_json::Value> = (0..4).map(|i| summary(&dir, &format!("w{i}"))).collect();
    let mut members: Vec<u64> = all.iter().map(|s| s["member"].as_u64().unwrap()).collect();
    members.sort();
    assert_eq!(members, vec![0, 1, 2, 3]);
    for s in &all {
        assert_eq!(s["rounds"], 20, "{s}");
        assert_eq!(s["device"], "cpu", "{s}");
        assert_eq!(s["consensus_hash"], all[0]["consensus_hash"], "replicas differ: {s}");
        assert!(s["bytes_sent"].as_u64().unwrap() > 0);
        // Relay: each worker receives the other three payloads of every round.
        assert_eq!(s["bytes_received"].as_u64().unwrap(), 3 * s["bytes_sent"].as_u64().unwrap());
        let rounds = s["per_round"].as_array().unwrap();
        assert_eq!(rounds.len(), 20);
        for (i, r) in rounds.iter().enumerate() {
            assert_eq!(r["round"], i as u64);
            assert_eq!(r["received"].as_u64().unwrap(), 3 * r["sent"].as_u64().unwrap(), "{r}");
            assert!(r["compute_seconds"].as_f64().unwrap() > 0.0, "{r}");
            let rtt = r["rtt_ms"].as_f64().unwrap();
            assert!(rtt > 0.0 && rtt < 1000.0, "loopback round trip: {r}");
        }
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn streaming_diloco_across_processes_syncs_every_fragment_identically() {
    // H = 20 in F = 4 fragments: one fragment every 5 steps, merged 2 steps later.
    let dir = scratch("streaming");
    let (mut coord, join) = coordinator(&dir, 2, 12);
    let settings = ["--algo", "streaming", "--set", "fragments=4", "--set", "overlap=2"];
    let mut workers: Vec<Proc> = (0..2)
        .map(|i| {
            let name = format!("s{i}");
            let mut extra = settings.to_vec();
            extra.extend(["--inner-steps", "20"]);
            worker(&dir, &join, &name, 60, &extra)
        })
        .collect();
    for (i, w) in workers.iter_mut().enumerate() {
        assert!(w.wait_ok(Duration::from_secs(240)), "s{i}: {}", log(&dir, &format!("s{i}")));
    }
    assert!(coord.wait_ok(Duration::from_secs(60)), "{}", log(&dir, "coordinator"));
    let (a, b) = (summary(&dir, "s0"), summary(&dir, "s1"));
    assert_eq!(a["rounds"], 12, "{a}");
    assert_eq!(a["algorithm"], "streaming");
    assert_eq!(a["consensus_hash"], b["consensus_hash"], "replicas differ");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn four_worker_processes_ring_reduce_diloco_int8_bit_identical() {
    let dir = scratch("ring");
    let (mut coord, join) = coordinator_with(&dir, 4, 8, &["--topology", "ring"]);
    let int8 = ["--set", "transport=int8"];
    let mut workers: Vec<Proc> =
        (0..4).map(|i| worker(&dir, &join, &format!("w{i}"), 40, &int8)).collect();
    for (i, w) in workers.iter_mut().enumerate() {
        assert!(w.wait_ok(Duration::from_secs(240)), "w{i}: {}", log(&dir, &format!("w{i}")));
    }
    assert!(coord.wait_ok(Duration::from_secs(60)), "{}", log(&dir, "coordinator"));
    let all: Vec<serde_json::Value> = (0..4).map(|i| summary(&dir, &format!("w{i}"))).collect();
    let mut rings = 0;
    for s in &all {
        assert_eq!(s["rounds"], 8, "{s}");
        assert_eq!(s["consensus_hash"], all[0]["consensus_hash"], "replicas differ: {s}");
        let me = s["member"].as_u64().unwrap();
        let (next, prev) = (format!("member {}", (me + 1) % 4), format!("member {}", (me + 3) % 4));
        for r in s["per_round"].as_array().unwrap() {
            let links = r["links"].as_array().unwrap();
            if links.iter().any(|l| l["peer"] == "coordinator") {
                continue; // a round that fell back to relay (a slow machine)
            }
            rings += 1;
            // Everything went to the successor and came from the predecessor, the same
            // amount: 2(N−1) segments of a quarter of the (equal-sized) payloads.
            let sent: Vec<_> = links.iter().filter(|l| l["sent"].as_u64() > Some(0)).collect();
            let got: Vec<_> = links.iter().filter(|l| l["received"].as_u64() > Some(0)).collect();
            assert_eq!(sent.len(), 1, "{r}");
            assert_eq!(got.len(), 1, "{r}");
            assert_eq!(sent[0]["peer"], next.as_str(), "{r}");
            assert_eq!(got[0]["peer"], prev.as_str(), "{r}");
            assert_eq!(r["sent"], r["received"], "{r}");
            assert!(r["sent"].as_u64().unwrap() > 0);
        }
    }
    assert!(rings >= 4 * 6, "most rounds went around the ring: {rings} of 32");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_sparse_algorithm_refuses_a_ring_run_with_a_clear_error() {
    let dir = scratch("ring-sparse");
    let (_coord, join) = coordinator_with(&dir, 1, 1, &["--topology", "ring"]);
    let mut w = worker(&dir, &join, "sparse", 10, &["--algo", "sparseloco"]);
    assert!(!w.wait_ok(Duration::from_secs(60)), "sparseloco cannot ring");
    let text = log(&dir, "sparse");
    assert!(text.contains("cannot run in a ring"), "{text}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_wrong_secret_is_refused_with_a_clear_error() {
    let dir = scratch("secret");
    let (_coord, join) = coordinator(&dir, 1, 1);
    // Replace the secret's last hex digit.
    let mut bad = join.trim().to_string();
    let last = bad.pop().unwrap();
    bad.push(if last == '0' { '1' } else { '0' });
    let mut w = worker(&dir, &bad, "intruder", 10, &[]);
    assert!(!w.wait_ok(Duration::from_secs(60)), "a wrong secret must fail");
    let text = log(&dir, "intruder");
    assert!(text.contains("wrong join secret"), "{text}");
    assert!(!dir.join("intruder").join("worker.json").exists());
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_killed_worker_does_not_stop_the_run_and_catches_up_when_restarted() {
    let dir = scratch("kill");
    let (mut coord, join) = coordinator(&dir, 3, 40);
    // Slow steps (a larger model) so that the run is still going when the worker dies.
    let slow = ["--set", "model.hidden=1024", "--set", "model.embed=64"];
    let mut a = worker(&dir, &join, "a", 200, &slow);
    let mut b = worker(&dir, &join, "b", 200, &slow);
    let mut c = worker(&dir, &join, "c", 200, &slow);
    // Wait until c has applied a few rounds, then kill it.
    let start = Instant::now();
    while log(&dir, "c").matches("round applied").count() < 3 {
        assert!(
            start.elapsed() < Duration::from_secs(120),
            "c made no progress: {}",
            log(&dir, "c")
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    c.0.kill().unwrap();
    let _ = c.0.wait();
    std::thread::sleep(Duration::from_secs(4));
    let mut c = worker_logged(&dir, &join, "c", "c-restarted", 200, &slow);
    for (name, w) in [("a", &mut a), ("b", &mut b), ("c-restarted", &mut c)] {
        assert!(w.wait_ok(Duration::from_secs(400)), "{name}: {}", log(&dir, name));
    }
    assert!(coord.wait_ok(Duration::from_secs(60)), "{}", log(&dir, "coordinator"));
    let (sa, sb, sc) = (summary(&dir, "a"), summary(&dir, "b"), summary(&dir, "c"));
    assert_eq!(sa["consensus_hash"], sb["consensus_hash"]);
    assert_eq!(sa["consensus_hash"], sc["consensus_hash"], "the restarted worker caught up: {sc}");
    assert!(
        sc["rounds_replayed"].as_u64().unwrap() > 0 || sc["rounds"].as_u64().unwrap() < 40,
        "{sc}"
    );
    assert_eq!(sc["member"], summary(&dir, "c")["member"]);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_killed_coordinator_restarted_from_its_state_folder_resets_the_workers_and_the_run_ends_identical(
) {
    let dir = scratch("coordinator-kill");
    let (mut coord, join) = coordinator(&dir, 3, 40);
    let slow = ["--set", "model.hidden=1024", "--set", "model.embed=64"];
    let mut workers: Vec<Proc> =
        ["a", "b", "c"].iter().map(|n| worker(&dir, &join, n, 200, &slow)).collect();
    let start = Instant::now();
    while log(&dir, "a").matches("round applied").count() < 3 {
        assert!(start.elapsed() < Duration::from_secs(120), "no progress: {}", log(&dir, "a"));
        std::thread::sleep(Duration::from_millis(100));
    }
    // Killed: no goodbye to anyone. Restarted on the same port from the same folder.
    coord.0.kill().unwrap();
    let _ = coord.0.wait();
    let port = join.split(':').nth(2).and_then(|s| s.split('/').next()).unwrap().to_string();
    std::fs::rename(dir.join("coordinator.log"), dir.join("coordinator-first.log")).unwrap();
    let listen = format!("127.0.0.1:{port}");
    let (mut coord, again) = coordinator_with(&dir, 3, 40, &["--listen", &listen]);
    assert_eq!(again, join, "the restarted coordinator prints the same join string");
    for (name, w) in ["a", "b", "c"].iter().zip(&mut workers) {
        assert!(w.wait_ok(Duration::from_secs(400)), "{name}: {}", log(&dir, name));
    }
    assert!(coord.wait_ok(Duration::from_secs(60)), "{}", log(&dir, "coordinator"));
    let (sa, sb, sc) = (summary(&dir, "a"), summary(&dir, "b"), summary(&dir, "c"));
    assert_eq!(sa["consensus_hash"], sb["consensus_hash"]);
    assert_eq!(sa["consensus_hash"], sc["consensus_hash"]);
    // The restarted coordinator's stateless resets told the workers their connections
    // were gone, rather than QUIC's 60 s idle timeout.
    for name in ["a", "b", "c"] {
        let log = log(&dir, name);
        assert!(log.contains("reset by peer"), "{name} did not see a reset:\n{log}");
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn coordinator_settings_are_checked_before_it_listens() {
    for (set, needle) in [("transport.rtt_ms=-1", "rtt"), ("inner.lr=1", "transport")] {
        let out = Command::new(BIN)
            .args(["coordinator", "--listen", "127.0.0.1:0", "--set", set])
            .arg("--state-dir")
            .arg(std::env::temp_dir().join(format!("meridian-mp-never-{}", std::process::id())))
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success() && err.contains(needle), "{set}: {err}");
    }
}

fn scratch(name: &str) -> std::path::PathBuf {
    common::scratch("mp", name)
}
