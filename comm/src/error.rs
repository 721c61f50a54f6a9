//! The crate's one error type.
//!
//! Each part of the crate keeps its detailed errors in its own module and is wrapped here, so a
//! caller matches on one enum and still gets the specific cause through `source()`.

use crate::node::NodeError;
use crate::protocol::ProtocolError;
use crate::quic::{JoinError, QuicError, TlsError};
use crate::wire::WireError;

/// Everything that can go wrong in `meridian-comm`.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CommError {
    /// A frame could not be encoded or was rejected on receipt.
    #[error(transparent)]
    Wire(#[from] WireError),
    /// The QUIC transport: endpoints, connections, streams, refusals.
    #[error(transparent)]
    Quic(#[from] QuicError),
    /// Certificates, keys and TLS configuration.
    #[error(transparent)]
    Tls(#[from] TlsError),
    /// The round protocol refused a call or could not decode a message.
    #[error(transparent)]
    Protocol(#[from] ProtocolError),
    /// A join string that does not parse or whose address does not resolve.
    #[error("join string: {0}")]
    Join(#[from] JoinError),
    /// A QUIC driver (coordinator or worker node): state files, refusals, reconnecting.
    #[error(transparent)]
    Node(#[from] NodeError),
}

/// `Result` with [`CommError`] as its default error.
pub type Result<T, E = CommError> = std::result::Result<T, E>;
