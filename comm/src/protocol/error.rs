//! Errors of the round protocol: misuse of its API, bad configs, undecodable messages.
//!
//! Bad input from peers is not an error here: the state machines reject it with a
//! [`RejectReason`](super::RejectReason) event and carry on.

use crate::ids::{Round, RunId};

/// Why a protocol call failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ProtocolError {
    /// A config value is out of range.
    #[error("invalid protocol config: {0}")]
    Config(String),
    /// A message could not be serialized.
    #[error("cannot encode protocol message: {0}")]
    Encode(#[source] postcard::Error),
    /// A control message body is not a valid message.
    #[error("malformed protocol message: {0}")]
    Decode(#[source] postcard::Error),
    /// A control message body has bytes after the message.
    #[error("protocol message followed by {0} trailing bytes")]
    TrailingBytes(usize),
    /// A payload larger than the configured limit.
    #[error("payload of {len} bytes exceeds the limit of {max} bytes")]
    PayloadTooLarge {
        /// Its length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// A state blob larger than the configured limit.
    #[error("state of {len} bytes exceeds the limit of {max} bytes")]
    StateTooLarge {
        /// Its length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// A payload for a round this worker already applied.
    #[error("round {round} is already applied (last applied: {applied})")]
    RoundApplied {
        /// The round asked for.
        round: Round,
        /// The last applied round.
        applied: Round,
    },
    /// A second, different payload for a round this worker already published.
    #[error("a different payload was already published for round {0}")]
    AlreadyPublished(Round),
    /// The worker is waiting for state and cannot publish.
    #[error("the worker is waiting for state from the run")]
    AwaitingState,
    /// `provide_state` for a round no snapshot was asked for.
    #[error("no snapshot of round {0} was requested")]
    SnapshotNotRequested(Round),
    /// Persisted coordinator state that contradicts itself.
    #[error("persisted coordinator state is inconsistent: {0}")]
    BadState(String),
    /// Persisted coordinator state of another run.
    #[error("persisted coordinator state belongs to run {found}, not {expected}")]
    RunMismatch {
        /// The configured run.
        expected: RunId,
        /// The run in the state.
        found: RunId,
    },
}
