//! A `meridian worker` started with other settings than the run's is refused when it joins,
//! with an error naming the setting, and the run goes on with the workers that match.

// Test helpers outside #[test] functions may unwrap too: a failure is the test failing.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{coordinator, corpus, log, meridian, scratch, spawn_logged, worker_args, Proc, BIN};

/// `worker_args` for a short diloco run (two rounds of 5 steps), writing to `DIR/NAME`.
fn args(dir: &Path, join: &str, name: &str, extra: &[&str]) -> Vec<String> {
    let mut args = worker_args(join, name, &corpus());
    args.extend(["--algo", "diloco", "--inner-steps", "5", "--steps", "10"].map(String::from));
    args.extend(["--out".to_string(), dir.join(name).display().to_string()]);
    args.extend(extra.iter().map(|s| s.to_string()));
    args
}

/// A worker in the background, its log in `DIR/NAME.log`.
fn spawn(dir: &Path, join: &str, name: &str) -> Proc {
    spawn_logged(dir, &args(dir, join, name, &[]), name)
}

#[test]
fn a_worker_with_another_outer_lr_is_refused_naming_it_and_the_run_goes_on() {
    let dir = scratch("refused-join", "outer-lr");
    // Two workers needed: no round opens before the matching second one joins, so the
    // first is still in the run when the mismatching one knocks.
    let (mut coord, join) = coordinator(&dir, 2, 2);
    let mut first = spawn(&dir, &join, "w0");
    let start = Instant::now();
    while !log(&dir, "w0").contains("joined the run") {
        assert!(start.elapsed() < Duration::from_secs(60), "w0 never joined: {}", log(&dir, "w0"));
        std::thread::sleep(Duration::from_millis(50));
    }

    let (ok, _, stderr) = meridian(&args(&dir, &join, "w1", &["--set", "outer_lr=0.5"]));
    assert!(!ok, "a worker with another outer_lr was admitted: {stderr}");
    assert!(stderr.contains("refused by coordinator"), "{stderr}");
    assert!(stderr.contains("setting outer_lr: the run has 0.7, this worker 0.5"), "{stderr}");
    assert!(!dir.join("w1").join("worker.json").exists());

    // The matching worker reads the join string from a private file (the form the README
    // shows: the secret stays off the command line).
    let file = dir.join("join.txt");
    std::fs::write(&file, format!("{join}\n")).unwrap();
    std::fs::set_permissions(&file, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    let mut w2_args = args(&dir, &join, "w2", &[]);
    let at = w2_args.iter().position(|a| a == "--join").unwrap();
    w2_args.splice(at..at + 2, ["--join-file".to_string(), file.display().to_string()]);
    let log2 = std::fs::File::create(dir.join("w2.log")).unwrap();
    let mut second = Proc(
        Command::new(BIN)
            .args(&w2_args)
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(Stdio::from(log2))
            .spawn()
            .unwrap(),
    );
    assert!(first.wait_ok(Duration::from_secs(120)), "w0: {}", log(&dir, "w0"));
    assert!(second.wait_ok(Duration::from_secs(120)), "w2: {}", log(&dir, "w2"));
    assert!(coord.wait_ok(Duration::from_secs(60)), "{}", log(&dir, "coordinator"));
    for name in ["w0", "w2"] {
        assert!(dir.join(name).join("worker.json").exists(), "{name} wrote no summary");
    }
    std::fs::remove_dir_all(&dir).unwrap();
}
