//! Helpers the `meridian` binary's integration tests share: the corpus, scratch folders and
//! child processes that never outlive a failing test.

// Each test binary uses some of these, not all.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The `meridian` binary under test.
pub const BIN: &str = env!("CARGO_BIN_EXE_meridian");

/// Runs `meridian ARGS` to completion (warnings-only logs): whether it succeeded, its
/// stdout and its stderr.
pub fn meridian<S: AsRef<std::ffi::OsStr>>(args: &[S]) -> (bool, String, String) {
    let out = match Command::new(BIN).args(args).env("RUST_LOG", "warn").output() {
        Ok(out) => out,
        Err(e) => panic!("cannot run meridian: {e}"),
    };
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The corpus the set-up installs.
pub fn corpus() -> String {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../data/corpus.txt");
    assert!(Path::new(path).exists(), "{path} missing: run `make setup` first");
    path.to_string()
}

/// A fresh, empty folder for one test, unique to this process.
pub fn scratch(suite: &str, name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("meridian-{suite}-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Kills the child when dropped, so a failing test leaves no process behind.
pub struct Proc(pub Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Proc {
    /// Waits for the process to exit; whether it succeeded. Panics after `limit`.
    pub fn wait_ok(&mut self, limit: Duration) -> bool {
        let start = Instant::now();
        while start.elapsed() < limit {
            if let Some(status) = self.0.try_wait().unwrap() {
                return status.success();
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("process did not finish within {limit:?}");
    }
}

/// A coordinator on a free loopback port for `workers` workers and `rounds` rounds, its
/// state and log in `dir`; with its join string.
pub fn coordinator(dir: &Path, workers: u32, rounds: u64) -> (Proc, String) {
    coordinator_with(dir, workers, rounds, &[])
}

/// [`coordinator`] with more flags (`--listen` among them replaces the free port).
pub fn coordinator_with(dir: &Path, workers: u32, rounds: u64, extra: &[&str]) -> (Proc, String) {
    let join = dir.join("join");
    let child = Command::new(BIN)
        .args(["coordinator", "--deadline-ms", "3000"])
        .args(if extra.contains(&"--listen") { &[][..] } else { &["--listen", "127.0.0.1:0"][..] })
        .args(extra)
        .args(["--min-workers", &workers.to_string(), "--rounds", &rounds.to_string()])
        .arg("--state-dir")
        .arg(dir.join("coordinator"))
        .arg("--join-file")
        .arg(&join)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::from(std::fs::File::create(dir.join("coordinator.log")).unwrap()))
        .spawn()
        .unwrap();
    let proc = Proc(child);
    let start = Instant::now();
    while !join.exists() {
        assert!(start.elapsed() < Duration::from_secs(20), "no join string");
        std::thread::sleep(Duration::from_millis(50));
    }
    (proc, std::fs::read_to_string(&join).unwrap())
}

/// `worker --join JOIN --name NAME --model mlp --data DATA`: a worker of the fast model, for
/// the caller to add its own flags to.
pub fn worker_args(join: &str, name: &str, data: &str) -> Vec<String> {
    ["worker", "--join", join, "--name", name, "--model", "mlp", "--data", data]
        .map(String::from)
        .to_vec()
}

/// `meridian ARGS` in the background at `RUST_LOG=info`, its log in `DIR/NAME.log`
/// (read with [`log`]).
pub fn spawn_logged<S: AsRef<std::ffi::OsStr>>(dir: &Path, args: &[S], name: &str) -> Proc {
    let log = std::fs::File::create(dir.join(format!("{name}.log"))).unwrap();
    let child = Command::new(BIN)
        .args(args)
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::from(log))
        .spawn()
        .unwrap();
    Proc(child)
}

/// The log of the process [`spawn_logged`] started as `NAME` in `DIR` (empty until written).
pub fn log(dir: &Path, name: &str) -> String {
    std::fs::read_to_string(dir.join(format!("{name}.log"))).unwrap_or_default()
}

/// A well-formed join string for `host_port` (fingerprint, run and secret made up).
pub fn fake_join(host_port: &str) -> String {
    format!(
        "meridian://{host_port}/?fp={}&run={}&secret={}",
        "ab".repeat(32),
        "cd".repeat(16),
        "ef".repeat(32)
    )
}

/// `meridian compress --algo ALGO --input INPUT --out OUT`.
pub fn compress_to(algo: &str, input: &Path, out: &Path) -> (bool, String, String) {
    use std::ffi::OsStr;
    let flags = [OsStr::new("compress"), OsStr::new("--algo"), OsStr::new(algo)];
    let files = [OsStr::new("--input"), input.as_os_str(), OsStr::new("--out"), out.as_os_str()];
    meridian(&[&flags[..], &files[..]].concat())
}
