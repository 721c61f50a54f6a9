//! A multi-process run on 127.0.0.1 with the coordinator behind `meridian proxy`: the
//! workers see the proxy's WAN delay and still end bit-identical.

// Test helpers outside #[test] functions may unwrap too: a failure is the test failing.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{corpus, log, Proc, BIN};

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn stderr_to(dir: &Path, name: &str) -> Stdio {
    Stdio::from(std::fs::File::create(dir.join(format!("{name}.log"))).unwrap())
}

#[test]
fn workers_behind_a_delaying_proxy_see_its_rtt_and_end_bit_identical() {
    let dir = scratch("delay");
    let join_file = dir.join("join");
    let mut coord = Proc(
        Command::new(BIN)
            .args(["coordinator", "--listen", "127.0.0.1:0", "--deadline-ms", "5000"])
            .args(["--min-workers", "2", "--rounds", "4"])
            .arg("--state-dir")
            .arg(dir.join("coordinator"))
            .arg("--join-file")
            .arg(&join_file)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(stderr_to(&dir, "coordinator"))
            .spawn()
            .unwrap(),
    );
    let start = Instant::now();
    while !join_file.exists() {
        assert!(start.elapsed() < Duration::from_secs(20), "no join string");
        std::thread::sleep(Duration::from_millis(50));
    }
    let join = std::fs::read_to_string(&join_file).unwrap().trim().to_string();
    // meridian://127.0.0.1:PORT/?...: the coordinator's address, then the rest.
    let rest = join.strip_prefix("meridian://").unwrap();
    let (coord_addr, query) = rest.split_once('/').unwrap();

    let mut proxy = Command::new(BIN)
        .args(["proxy", "--listen", "127.0.0.1:0", "--to", coord_addr])
        .args(["--up", "{ delay = \"20ms\" }", "--down", "{ delay = \"20ms\" }"])
        .env("RUST_LOG", "info")
        .stdout(Stdio::piped())
        .stderr(stderr_to(&dir, "proxy"))
        .spawn()
        .unwrap();
    // The proxy prints the address it listens on first.
    let mut line = String::new();
    BufReader::new(proxy.stdout.take().unwrap()).read_line(&mut line).unwrap();
    let _proxy = Proc(proxy);
    let proxy_addr = line.trim();
    assert!(proxy_addr.starts_with("127.0.0.1:"), "{line:?}: {}", log(&dir, "proxy"));
    let via_proxy = format!("meridian://{proxy_addr}/{query}");

    let mut workers: Vec<Proc> = (0..2)
        .map(|i| {
            let name = format!("w{i}");
            Proc(
                Command::new(BIN)
                    .args(["worker", "--join", &via_proxy, "--name", &name, "--model", "mlp"])
                    .args(["--algo", "diloco", "--inner-steps", "5", "--steps", "20"])
                    .args(["--shards", "2", "--data", &corpus()])
                    .arg("--out")
                    .arg(dir.join(&name))
                    .env("RUST_LOG", "info")
                    .stdout(Stdio::null())
                    .stderr(stderr_to(&dir, &name))
                    .spawn()
                    .unwrap(),
            )
        })
        .collect();
    for (i, w) in workers.iter_mut().enumerate() {
        let name = format!("w{i}");
        assert!(w.wait_ok(Duration::from_secs(240)), "{name}: {}", log(&dir, &name));
    }
    assert!(coord.wait_ok(Duration::from_secs(60)), "{}", log(&dir, "coordinator"));

    let all: Vec<serde_json::Value> = (0..2)
        .map(|i| {
            let path = dir.join(format!("w{i}")).join("worker.json");
            serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap()
        })
        .collect();
    for s in &all {
        assert_eq!(s["rounds"], 4, "{s}");
        assert_eq!(s["consensus_hash"], all[0]["consensus_hash"], "replicas differ: {s}");
        let rounds = s["per_round"].as_array().unwrap();
        assert_eq!(rounds.len(), 4, "{s}");
        for r in rounds {
            // 20 ms each way through the proxy: no round trip can be shorter than 40 ms.
            let rtt = r["rtt_ms"].as_f64().unwrap();
            assert!(rtt >= 40.0, "round trip through the proxy: {r}");
        }
    }
    let rtts: Vec<f64> = all[0]["per_round"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["rtt_ms"].as_f64().unwrap())
        .collect();
    eprintln!("round trips through the proxy (ms): {rtts:?}");
    std::fs::remove_dir_all(&dir).unwrap();
}

/// A worker other members cannot dial (it advertises a `meridian proxy` that drops every
/// datagram, as a firewall or a NAT without forwarding would) still takes part in every
/// all-gather round: the others hand their payloads for it to the coordinator, which
/// passes them on, and all three end bit-identical.
#[test]
fn a_worker_no_member_can_dial_gets_their_frames_through_the_coordinator() {
    // Enough rounds to outlast the first dial's 10 s timeout, after which the others'
    // frames for it go through the coordinator.
    const ROUNDS: u64 = 12;
    let dir = scratch("unreachable");
    let (mut coord, join) = common::coordinator_with(&dir, 3, 4, &["--topology", "all-gather"]);
    // The "firewall": a proxy that forwards nowhere and drops everything.
    let mut wall = Command::new(BIN)
        .args(["proxy", "--listen", "127.0.0.1:0", "--to", "127.0.0.1:9"])
        .args(["--up", "{ loss = \"100%\" }", "--down", "{ loss = \"100%\" }"])
        .env("RUST_LOG", "info")
        .stdout(Stdio::piped())
        .stderr(stderr_to(&dir, "wall"))
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(wall.stdout.take().unwrap()).read_line(&mut line).unwrap();
    let _wall = Proc(wall);
    let wall_addr = line.trim().to_string();
    assert!(wall_addr.starts_with("127.0.0.1:"), "{line:?}: {}", log(&dir, "wall"));

    let mut workers: Vec<Proc> = (0..3)
        .map(|i| {
            let name = format!("w{i}");
            let mut cmd = Command::new(BIN);
            cmd.args(["worker", "--join", &join, "--name", &name, "--model", "mlp"])
                .args(["--algo", "diloco", "--inner-steps", "5"])
                .args(["--steps", &(5 * ROUNDS).to_string()])
                .args(["--shards", "3", "--data", &corpus()])
                .arg("--out")
                .arg(dir.join(&name))
                .env("RUST_LOG", "info")
                .stdout(Stdio::null())
                .stderr(stderr_to(&dir, &name));
            if i == 2 {
                cmd.args(["--advertise", &wall_addr]);
            }
            Proc(cmd.spawn().unwrap())
        })
        .collect();
    for (i, w) in workers.iter_mut().enumerate() {
        let name = format!("w{i}");
        assert!(w.wait_ok(Duration::from_secs(300)), "{name}: {}", log(&dir, &name));
    }
    assert!(coord.wait_ok(Duration::from_secs(60)), "{}", log(&dir, "coordinator"));
    let all: Vec<serde_json::Value> = (0..3)
        .map(|i| {
            let path = dir.join(format!("w{i}")).join("worker.json");
            serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap()
        })
        .collect();
    for s in &all {
        assert_eq!(s["rounds"], ROUNDS, "{s}");
        assert_eq!(s["consensus_hash"], all[0]["consensus_hash"], "replicas differ: {s}");
    }
    for name in ["w0", "w1"] {
        let text = log(&dir, name);
        assert!(text.contains("its frames go through the coordinator"), "{name}: {text}");
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

fn scratch(name: &str) -> std::path::PathBuf {
    common::scratch("proxy", name)
}
