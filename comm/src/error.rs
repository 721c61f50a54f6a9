//! The crate's error type: one enum, each part of the crate contributing its own variants.

use crate::wire::WireError;

/// Everything that can go wrong in `meridian-comm`.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CommError {
    /// A frame could not be encoded or was rejected on receipt.
    #[error(transparent)]
    Wire(#[from] WireError),
}
