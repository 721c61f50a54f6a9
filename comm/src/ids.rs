//! The identifiers every layer of the comm crate shares.

use serde::{Deserialize, Serialize};

/// A member's id within a run: assigned by the coordinator at admission, never reused.
/// Payloads are always aggregated in ascending member-id order.
pub type MemberId = u32;

/// An outer round number, from 0.
pub type Round = u64;

/// Identifies one training run; frames of another run are rejected.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct RunId(pub [u8; 16]);

/// The run's shared secret: only its holders may join, publish or read payloads.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JoinSecret(pub [u8; 32]);

impl std::fmt::Debug for JoinSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the secret itself (logs travel).
        f.write_str("JoinSecret(..)")
    }
}

/// SHA-256 of a peer's DER certificate: what a peer pins.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct CertFingerprint(pub [u8; 32]);

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

impl std::fmt::Display for RunId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&hex(&self.0))
    }
}

impl std::fmt::Display for CertFingerprint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&hex(&self.0))
    }
}
