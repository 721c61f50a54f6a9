//! The coordinator's state folder: what a restarted coordinator needs to be the same one.
//!
//! - `node-cert.pem`, `node-key.pem`: its identity ([`NodeIdentity::load_or_generate`]), so
//!   the fingerprint in the join string stays valid;
//! - [`RUN_FILE`]: the run id and join secret (owner-readable only), so the join string is
//!   the same;
//! - [`STATE_FILE`]: the protocol's [`CoordinatorState`] (postcard), rewritten after every
//!   commit.
//!
//! Every file is written to a temporary name, synced and renamed over the old one, so a
//! crash leaves either the old or the new version.

use std::fs;
use std::path::{Path, PathBuf};

use super::NodeError;
use crate::error::Result;
use crate::ids::{JoinSecret, RunId};
use crate::protocol::CoordinatorState;
use crate::quic::{JoinString, NodeIdentity};

/// The run id and join secret, as text: `run=<32 hex>` and `secret=<64 hex>` lines.
pub const RUN_FILE: &str = "run.key";

/// The protocol state saved after every commit.
pub const STATE_FILE: &str = "coordinator.state";

/// A coordinator's state folder.
#[derive(Debug, Clone)]
pub(crate) struct StateDir {
    dir: PathBuf,
}

impl StateDir {
    /// The folder at `dir`, created if needed.
    pub(crate) fn open(dir: &Path) -> Result<Self> {
        fs::create_dir_all(dir).map_err(|e| io(dir, e))?;
        Ok(StateDir { dir: dir.to_path_buf() })
    }

    /// The identity kept here, made on first use.
    pub(crate) fn identity(&self) -> Result<NodeIdentity> {
        Ok(NodeIdentity::load_or_generate(&self.dir, "meridian-coordinator")?)
    }

    /// The run id and secret kept here, made on first use.
    pub(crate) fn run(&self) -> Result<(RunId, JoinSecret)> {
        let path = self.dir.join(RUN_FILE);
        match fs::read_to_string(&path) {
            Ok(text) => {
                parse_run(&text).map_err(|reason| NodeError::BadFile { path, reason }.into())
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let (run, secret) = JoinString::new_run()?;
                let text = format!("run={}\nsecret={}\n", hex(&run.0), hex(&secret.0));
                write_atomically(&path, text.as_bytes(), true)?;
                Ok((run, secret))
            }
            Err(e) => Err(io(&path, e)),
        }
    }

    /// The saved protocol state, if any.
    pub(crate) fn load_state(&self) -> Result<Option<CoordinatorState>> {
        let path = self.dir.join(STATE_FILE);
        match fs::read(&path) {
            Ok(bytes) => CoordinatorState::decode(&bytes)
                .map(Some)
                .map_err(|e| NodeError::BadFile { path, reason: e.to_string() }.into()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(io(&path, e)),
        }
    }

    /// Saves the protocol state (atomically).
    pub(crate) fn save_state(&self, state: &CoordinatorState) -> Result<()> {
        let bytes = state.encode()?;
        write_atomically(&self.dir.join(STATE_FILE), &bytes, false)
    }
}

fn io(path: &Path, source: std::io::Error) -> crate::CommError {
    NodeError::Io { path: path.to_path_buf(), source }.into()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex<const N: usize>(text: &str) -> Option<[u8; N]> {
    if text.len() != 2 * N || !text.is_ascii() {
        return None;
    }
    let mut out = [0u8; N];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&text[2 * i..2 * i + 2], 16).ok()?;
    }
    Some(out)
}

fn parse_run(text: &str) -> Result<(RunId, JoinSecret), String> {
    let mut run = None;
    let mut secret = None;
    for line in text.lines().map(str::trim).filter(|l| !l.is_empty()) {
        match line.split_once('=') {
            Some(("run", v)) => run = Some(unhex::<16>(v).ok_or("`run` is not 32 hex digits")?),
            Some(("secret", v)) => {
                secret = Some(unhex::<32>(v).ok_or("`secret` is not 64 hex digits")?)
            }
            _ => return Err(format!("unexpected line `{line}`")),
        }
    }
    match (run, secret) {
        (Some(run), Some(secret)) => Ok((RunId(run), JoinSecret(secret))),
        _ => Err("needs a `run=` and a `secret=` line".into()),
    }
}

fn write_atomically(path: &Path, contents: &[u8], private: bool) -> Result<()> {
    crate::fsutil::write_atomically(path, contents, private).map_err(|(p, e)| io(&p, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn run_file_round_trips_and_rejects_garbage() {
        let text = format!("run={}\nsecret={}\n", "ab".repeat(16), "0f".repeat(32));
        let (run, secret) = parse_run(&text).unwrap();
        assert_eq!(run, RunId([0xab; 16]));
        assert_eq!(secret, JoinSecret([0x0f; 32]));
        assert!(parse_run("run=zz\n").is_err());
        assert!(parse_run(&format!("run={}\n", "ab".repeat(16))).is_err());
        assert!(parse_run("hello").is_err());
        assert!(
            parse_run(&format!("run={}\nsecret=é{}\n", "ab".repeat(16), "0".repeat(62))).is_err()
        );
    }
}
