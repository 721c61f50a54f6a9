//! Helpers the `meridian` binary's integration tests share: the corpus, scratch folders and
//! child processes that never outlive a failing test.

// Each test binary uses some of these, not all.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

/// The `meridian` binary under test.
pub const BIN: &str = env!("CARGO_BIN_EXE_meridian");

/// Runs `meridian ARGS` to completion (warnings-only logs): whether it succeeded, its
/// stdout and its stderr.
pub fn meridian(args: &[&str]) -> (bool, String, String) {
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
