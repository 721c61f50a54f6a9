//! Bad input made visible: what-if sizes beyond its arithmetic, a proxy pointed at itself
//! or at nothing, a worker dialing nobody, simulations that could never finish. Each is a
//! clear error naming the setting, or a log line saying what is going on; never a panic
//! or silence.

// Test helpers outside #[test] functions may unwrap too: a failure is the test failing.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{corpus, meridian, Proc, BIN};

use std::io::{BufRead, BufReader, Read};
use std::net::UdpSocket;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn scratch(name: &str) -> PathBuf {
    common::scratch("visible", name)
}

/// A UDP port nothing listens on (bound, then released).
fn free_port() -> u16 {
    UdpSocket::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// Waits up to `limit` for `path` to hold every one of `needles`; its text either way.
fn wait_for(path: &Path, needles: &[&str], limit: Duration) -> (bool, String) {
    let start = Instant::now();
    loop {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        if needles.iter().all(|n| text.contains(n)) {
            return (true, text);
        }
        if start.elapsed() > limit {
            return (false, text);
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn what_if_sizes_beyond_its_arithmetic_are_errors_naming_the_limit() {
    // 1e26 and up used to panic converting seconds to a Duration; 1e20 printed the search
    // cap (2^40) as the answer.
    for params in ["1e20", "1e26", "1e30"] {
        let (ok, stdout, stderr) = meridian(&["what-if", "--params", params]);
        assert!(!ok, "--params {params} should fail:\n{stdout}");
        assert!(stderr.contains("--params") && stderr.contains("1e15"), "{params}: {stderr}");
        assert!(!stderr.contains("panicked"), "{params}: {stderr}");
        assert!(!stdout.contains("1099511627776"), "{params}: {stdout}");
    }
}

#[test]
fn a_proxy_pointed_at_its_own_listen_address_is_refused() {
    let port = free_port();
    for listen in ["127.0.0.1", "0.0.0.0"] {
        let dir = scratch(&format!("loop-{listen}"));
        let log = dir.join("proxy.log");
        let mut proxy = Proc(
            Command::new(BIN)
                .args(["proxy", "--listen", &format!("{listen}:{port}")])
                .args(["--to", &format!("127.0.0.1:{port}"), "--up", "delay = \"1ms\""])
                .env("RUST_LOG", "warn")
                .stdout(Stdio::null())
                .stderr(Stdio::from(std::fs::File::create(&log).unwrap()))
                .spawn()
                .unwrap(),
        );
        // It used to forward in a loop until killed.
        assert!(!proxy.wait_ok(Duration::from_secs(30)), "the looping proxy succeeded");
        let err = std::fs::read_to_string(&log).unwrap();
        assert!(
            err.contains("--to") && err.contains("--listen") && err.contains("itself"),
            "{err}"
        );
        assert!(!err.contains("panicked"), "{err}");
    }
}

#[test]
fn a_proxy_to_a_closed_port_counts_refusals_and_calls_nothing_delivered() {
    let closed = free_port();
    let mut child = Command::new(BIN)
        .args(["proxy", "--listen", "127.0.0.1:0", "--to", &format!("127.0.0.1:{closed}")])
        .args(["--up", "delay = \"1ms\"", "--report-every-s", "0"])
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let pid = child.id();
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    let mut proxy = Proc(child);
    let mut line = String::new();
    stdout.read_line(&mut line).unwrap();
    let addr = line.trim().to_string();
    let client = UdpSocket::bind("127.0.0.1:0").unwrap();
    for i in 0..5u8 {
        client.send_to(&[i; 16], &addr).unwrap();
        // Time for each port-unreachable answer to come back.
        std::thread::sleep(Duration::from_millis(100));
    }
    // Ctrl-C: the proxy prints its counters and exits.
    let status = Command::new("kill").args(["-INT", &pid.to_string()]).status().unwrap();
    assert!(status.success());
    assert!(proxy.wait_ok(Duration::from_secs(30)), "the proxy did not stop on Ctrl-C");
    let mut counters = String::new();
    stdout.read_to_string(&mut counters).unwrap();
    let up = counters.lines().find(|l| l.starts_with("up")).unwrap_or_default();
    assert!(up.contains("5 datagrams (80 B) offered"), "{counters}");
    assert!(up.contains("forwarded") && !counters.contains("delivered"), "{counters}");
    let refused: u64 = up
        .split("; ")
        .find_map(|part| part.strip_suffix(" refused by the receiver"))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or_else(|| panic!("no refusal count: {counters}"));
    assert!(refused >= 1, "nothing listens at port {closed}, yet no refusal: {counters}");
}

#[test]
fn a_worker_with_nobody_to_join_says_where_it_dials_and_why_it_has_not_connected() {
    let dir = scratch("dial");
    let log = dir.join("worker.log");
    let addr = format!("127.0.0.1:{}", free_port());
    let join = common::fake_join(&addr);
    let _worker = Proc(
        Command::new(BIN)
            .args(common::worker_args(&join, "w0", &corpus()))
            .arg("--out")
            .arg(dir.join("out"))
            // The default filter: what a person running it sees.
            .env_remove("RUST_LOG")
            .stdout(Stdio::null())
            .stderr(Stdio::from(std::fs::File::create(&log).unwrap()))
            .spawn()
            .unwrap(),
    );
    // It used to print nothing until it gave up, 600 s later.
    let (seen, text) = wait_for(
        &log,
        &["connecting to the coordinator", &addr, "attempt"],
        Duration::from_secs(60),
    );
    assert!(seen, "no sign of dialing {addr}: {text}");
    assert!(text.contains("600 s"), "the overall timeout is not said: {text}");
    let (seen, text) = wait_for(
        &log,
        &["cannot reach the coordinator yet", "no answer to the handshake"],
        Duration::from_secs(60),
    );
    assert!(seen, "no reason why it has not connected: {text}");
    assert!(text.contains("WARN"), "the failure is not a warning: {text}");
}

/// `meridian simulate --quick` on the MLP with `extra`, into `out`.
fn simulate(out: &Path, extra: &[&str]) -> (bool, String, String) {
    let data = corpus();
    let out = out.to_str().unwrap().to_string();
    let mut args = vec!["simulate", "--quick", "--model", "mlp", "--threads", "1", "--data", &data];
    args.extend(["--out", &out]);
    args.extend_from_slice(extra);
    meridian(&args)
}

#[test]
fn simulations_that_could_never_finish_are_refused_before_anything_runs() {
    let dir = scratch("absurd");
    // 250 regions, every pair linked.
    let regions: Vec<String> = (0..250).map(|i| format!("r{i}")).collect();
    let mut toml = format!(
        "regions = [{}]\n",
        regions.iter().map(|r| format!("\"{r}\"")).collect::<Vec<_>>().join(", ")
    );
    for i in 0..regions.len() {
        for j in i + 1..regions.len() {
            toml.push_str(&format!("[links.\"r{i} <-> r{j}\"]\ndelay = \"20ms\"\n"));
        }
    }
    let topology = dir.join("big.toml");
    std::fs::write(&topology, toml).unwrap();
    let topology = topology.to_str().unwrap();
    for (extra, needles) in [
        // 4.29e8 s per step: this and the next ran for days, silently.
        (vec!["--workers", "2", "--tflops", "1e-12"], vec!["--tflops", "at most"]),
        (vec!["--workers", "2", "--step-time", "100000000s"], vec!["--step-time", "at most"]),
        (vec!["--workers", "2", "--step-time", "100000s"], vec!["--steps 60", "at most 1e7"]),
        // A step beyond any clock used to panic.
        (vec!["--workers", "2", "--tflops", "1e-30"], vec!["--tflops", "at most 1e9 s"]),
        (vec!["--workers", "2", "--steps", "5"], vec!["--steps 5", "never sync"]),
        // Relayed payloads grow with the square of the workers: this one ran out of memory.
        (
            vec!["--topology", topology, "--workers", "150", "--steps", "10"],
            vec!["--workers 150", "at most"],
        ),
    ] {
        let out = dir.join("out");
        let mut args = vec!["--algos", "diloco"];
        args.extend_from_slice(&extra);
        let (ok, stdout, stderr) = simulate(&out, &args);
        assert!(!ok, "{extra:?} should fail:\n{stdout}");
        assert!(needles.iter().all(|n| stderr.contains(n)), "{extra:?}: {stderr}");
        assert!(!stderr.contains("panicked"), "{extra:?}: {stderr}");
        assert!(!out.join("summary.json").exists(), "{extra:?} ran anyway");
    }
}

#[test]
fn long_simulated_steps_train_as_short_ones_do() {
    // 1000 s steps: a round of 10 of them outlasted the coordinator's first deadline
    // (600 s), so every round closed empty and nothing trained.
    let (short, long) = (scratch("short-steps"), scratch("long-steps"));
    let base = ["--workers", "2", "--algos", "diloco", "--steps", "20"];
    let (ok, _, stderr) = simulate(&short, &base);
    assert!(ok, "{stderr}");
    let mut args = base.to_vec();
    args.extend(["--step-time", "1000s"]);
    let (ok, _, stderr) = simulate(&long, &args);
    assert!(ok, "{stderr}");
    let read = |dir: &Path| -> serde_json::Value {
        serde_json::from_slice(&std::fs::read(dir.join("summary.json")).unwrap()).unwrap()
    };
    let (s, l) = (read(&short), read(&long));
    let (s, l) = (&s["algorithms"][0], &l["algorithms"][0]);
    assert!(l["bytes_sent_per_worker"].as_f64().unwrap() > 0.0, "no payload was sent: {l}");
    assert_eq!(l["final_val_loss"], s["final_val_loss"], "the step time changed the training");
    assert!(l["simulated_seconds"].as_f64().unwrap() >= 20_000.0, "{l}");
}

#[test]
fn without_a_terminal_a_simulation_writes_progress_lines_to_its_log() {
    let out = scratch("progress");
    let args = ["--workers", "2", "--algos", "diloco", "--steps", "40", "--progress-every", "1s"];
    let (ok, _, stderr) = simulate(&out, &args);
    assert!(ok, "{stderr}");
    let line = stderr.lines().find(|l| l.starts_with("simulate diloco: ")).unwrap_or_else(|| {
        panic!("no progress line in the log: {stderr}");
    });
    assert!(line.contains("/40 steps") && line.contains("simulated"), "{line}");
}
