//! `--metrics-listen`: a coordinator and two workers on 127.0.0.1 serve Prometheus text over
//! HTTP, scraped during and after the run, and what the pages say agrees with the run.

// Test helpers outside #[test] functions may unwrap too: a failure is the test failing.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{corpus, log, meridian, Proc, BIN};

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const STEPS: u64 = 60;
const INNER: u64 = 5;

fn scratch(name: &str) -> PathBuf {
    common::scratch("metrics", name)
}

/// The metrics address `name`'s log announced, once it has.
fn announced(dir: &Path, name: &str) -> Option<SocketAddr> {
    let text = log(dir, name);
    let at = text.find("serving Prometheus metrics at http://")?;
    let rest = &text[at..];
    let start = rest.find("http://")? + "http://".len();
    let end = rest[start..].find("/metrics")? + start;
    rest[start..end].parse().ok()
}

/// Waits for [`announced`].
fn wait_announced(dir: &Path, name: &str) -> SocketAddr {
    let start = Instant::now();
    loop {
        if let Some(addr) = announced(dir, name) {
            return addr;
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "{name} served no metrics: {}",
            log(dir, name)
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// One scrape of `addr`: the body of a 200 answer, `None` if there was none.
fn scrape(addr: SocketAddr) -> Option<String> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    stream.write_all(b"GET /metrics HTTP/1.1\r\nHost: meridian\r\n\r\n").ok()?;
    let mut answer = String::new();
    stream.read_to_string(&mut answer).ok()?;
    let (head, body) = answer.split_once("\r\n\r\n")?;
    assert!(head.starts_with("HTTP/1.1 200 OK\r\n"), "{head}");
    assert!(head.contains("Content-Type: text/plain; version=0.0.4"), "{head}");
    Some(body.to_string())
}

/// The value of the sample `series` (name and labels exactly as printed), if present.
fn value(page: &str, series: &str) -> Option<f64> {
    page.lines().find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

fn bytes(page: &str, peer: &str, direction: &str) -> Option<u64> {
    let series = format!(r#"meridian_peer_bytes_total{{peer="{peer}",direction="{direction}"}}"#);
    value(page, &series).map(|v| v as u64)
}

fn worker(dir: &Path, join: &Path, name: &str) -> Proc {
    let child = Command::new(BIN)
        .args(["worker", "--join-file"])
        .arg(join)
        .args(["--name", name, "--model", "mlp", "--algo", "diloco"])
        .args(["--inner-steps", &INNER.to_string(), "--steps", &STEPS.to_string()])
        .args(["--shards", "2", "--data", &corpus()])
        // Slower steps, so that the run is still going while it is scraped.
        .args(["--set", "model.hidden=1024", "--set", "model.embed=64"])
        .args(["--metrics-listen", "127.0.0.1:0"])
        .arg("--out")
        .arg(dir.join(name))
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::from(std::fs::File::create(dir.join(format!("{name}.log"))).unwrap()))
        .spawn()
        .unwrap();
    Proc(child)
}

#[test]
fn a_run_scraped_over_http_counts_its_rounds_and_bytes() {
    let dir = scratch("run");
    let join = dir.join("join");
    // No --rounds: the coordinator serves until killed, so it can be scraped after the run.
    let coordinator = Command::new(BIN)
        .args(["coordinator", "--listen", "127.0.0.1:0", "--min-workers", "2"])
        .args(["--deadline-ms", "10000", "--metrics-listen", "127.0.0.1:0"])
        .arg("--state-dir")
        .arg(dir.join("coordinator"))
        .arg("--join-file")
        .arg(&join)
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::from(std::fs::File::create(dir.join("coordinator.log")).unwrap()))
        .spawn()
        .unwrap();
    let _coordinator = Proc(coordinator);
    let coord = wait_announced(&dir, "coordinator");
    let start = Instant::now();
    while !join.exists() {
        assert!(start.elapsed() < Duration::from_secs(20), "no join string");
        std::thread::sleep(Duration::from_millis(50));
    }
    let mut workers = [worker(&dir, &join, "a"), worker(&dir, &join, "b")];
    let addrs = [wait_announced(&dir, "a"), wait_announced(&dir, "b")];

    // Scrape both workers (and the coordinator) while they train.
    let mut pages: [Vec<String>; 2] = [Vec::new(), Vec::new()];
    let mut coordinator_pages = 0;
    let mut done = [false, false];
    let start = Instant::now();
    while done.iter().any(|d| !d) {
        assert!(start.elapsed() < Duration::from_secs(300), "the run did not finish");
        for i in 0..2 {
            if done[i] {
                continue;
            }
            if let Some(page) = scrape(addrs[i]) {
                pages[i].push(page);
            }
            if let Some(status) = workers[i].0.try_wait().unwrap() {
                assert!(status.success(), "worker {i}: {}", log(&dir, ["a", "b"][i]));
                done[i] = true;
            }
        }
        if let Some(page) = scrape(coord) {
            assert!(page.contains("# HELP meridian_rounds_committed_total "), "{page}");
            coordinator_pages += 1;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(coordinator_pages > 0, "the coordinator was never scraped during the run");

    // After the run: the coordinator's counters against what the workers report.
    let page = scrape(coord).expect("the coordinator serves after the run");
    let rounds = STEPS / INNER;
    assert_eq!(value(&page, "meridian_rounds_committed_total"), Some(rounds as f64), "{page}");
    assert_eq!(value(&page, "meridian_round_duration_seconds_count"), Some(rounds as f64));
    assert!(value(&page, "meridian_round_last_duration_seconds").unwrap() > 0.0, "{page}");
    assert_eq!(value(&page, "meridian_joins_total"), Some(2.0), "{page}");
    for (i, name) in ["a", "b"].into_iter().enumerate() {
        let path = dir.join(name).join("worker.json");
        let summary: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
        assert_eq!(summary["rounds"], rounds, "{summary}");
        let member = format!("member {}", summary["member"]);
        let sent = summary["bytes_sent"].as_u64().unwrap();
        let received = summary["bytes_received"].as_u64().unwrap();
        assert!(sent > 0, "{summary}");
        // Relay: the coordinator got each payload this worker sent, and relayed to it the
        // other worker's.
        assert_eq!(bytes(&page, &member, "received"), Some(sent), "{member}: {page}");
        assert_eq!(bytes(&page, &member, "sent"), Some(received), "{member}: {page}");
        let rtt = value(&page, &format!(r#"meridian_peer_rtt_seconds{{peer="{member}"}}"#));
        assert!(rtt.is_none() || rtt.unwrap() > 0.0, "a member that left has no round trip");

        // Every page scraped during the run matches the rounds applied by then: the bytes
        // sent are those of the first k rounds of worker.json (or k + 1, when the scrape
        // fell between a round's byte count and its round count).
        let per_round: Vec<u64> = summary["per_round"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["sent"].as_u64().unwrap())
            .collect();
        let mut mid_run = 0;
        for page in &pages[i] {
            let k = value(page, "meridian_rounds_applied_total").unwrap() as usize;
            if k == 0 {
                continue;
            }
            mid_run += 1;
            let scraped = bytes(page, "coordinator", "sent").unwrap();
            let upto = |n: usize| per_round[..n.min(per_round.len())].iter().sum::<u64>();
            assert!(
                scraped == upto(k) || scraped == upto(k + 1),
                "{name}: {k} rounds, {scraped} B: {page}"
            );
            let ratio = value(page, "meridian_compute_utilization_ratio").unwrap();
            assert!(ratio > 0.0 && ratio <= 1.0, "{name}: utilization {ratio}");
            assert!(value(page, "meridian_coordinator_rtt_seconds").unwrap() > 0.0, "{page}");
            assert!(page.contains("meridian_round_wait_seconds_bucket{le=\""), "{page}");
            // Each applied round was seen committing, with its latency.
            assert!(value(page, "meridian_round_seconds_count").unwrap() >= 1.0, "{page}");
        }
        assert!(
            mid_run > 0,
            "{name} was never scraped with a round applied: {} pages",
            pages[i].len()
        );
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn an_address_in_use_is_named_in_the_error() {
    let dir = scratch("in-use");
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let state = dir.join("coordinator").display().to_string();
    let (ok, _, err) = meridian(&[
        "coordinator",
        "--listen",
        "127.0.0.1:0",
        "--state-dir",
        &state,
        "--metrics-listen",
        &addr,
    ]);
    assert!(!ok, "a coordinator whose metrics address is taken must not start");
    assert!(err.contains(&format!("cannot serve metrics on {addr}")), "{err}");
    let join = common::fake_join("127.0.0.1:9");
    let mut args = common::worker_args(&join, "w", &corpus());
    args.extend(["--metrics-listen".into(), addr.clone()]);
    let (ok, _, err) = meridian(&args);
    assert!(!ok, "a worker whose metrics address is taken must not start");
    assert!(err.contains(&format!("--metrics-listen {addr}")), "{err}");
    drop(taken);
    std::fs::remove_dir_all(&dir).unwrap();
}
