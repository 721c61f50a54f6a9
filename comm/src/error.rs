//! The crate's error type: one enum, each part of the crate contributing its own variant.

use crate::protocol::ProtocolError;

/// Everything that can go wrong in `meridian-comm`.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CommError {
    /// The round protocol refused a call or could not decode a message.
    #[error(transparent)]
    Protocol(#[from] ProtocolError),
}

/// `Result` with [`CommError`].
pub type Result<T> = std::result::Result<T, CommError>;
