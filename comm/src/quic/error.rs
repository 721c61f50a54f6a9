//! Errors of the QUIC transport and of its certificates.

use std::io;
use std::net::SocketAddr;
use std::path::PathBuf;

use crate::ids::CertFingerprint;
use crate::quic::conn::RefusalCode;

/// What went wrong with an endpoint, a connection or a stream.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum QuicError {
    /// The UDP socket could not be bound.
    #[error("cannot bind a UDP socket on {addr}: {source}")]
    Bind {
        /// The address asked for.
        addr: SocketAddr,
        /// Why the OS refused.
        #[source]
        source: io::Error,
    },
    /// The endpoint could not be built on its socket, or its socket failed.
    #[error("QUIC endpoint: {0}")]
    Endpoint(#[source] io::Error),
    /// A [`TransportTuning`](crate::quic::TransportTuning) field holds an impossible value.
    #[error("transport tuning: `{field}` {reason}")]
    Tuning {
        /// The offending field, as named in the config file.
        field: &'static str,
        /// What is wrong with it.
        reason: String,
    },
    /// quinn refused to start a connection (endpoint closing, bad address, ...).
    #[error("cannot start a connection to {addr}: {source}")]
    Connect {
        /// The peer's address.
        addr: SocketAddr,
        /// quinn's reason.
        #[source]
        source: quinn::ConnectError,
    },
    /// The peer's certificate is not the pinned one: a wrong join string, a restarted peer
    /// that lost its identity, or someone in the middle.
    #[error("certificate fingerprint {presented} of {addr} does not match the pinned {pinned}")]
    PinMismatch {
        /// The peer's address.
        addr: SocketAddr,
        /// SHA-256 of the certificate the peer presented.
        presented: CertFingerprint,
        /// The fingerprint we expected.
        pinned: CertFingerprint,
    },
    /// The TLS/QUIC handshake did not complete.
    #[error("handshake with {addr} failed: {source}")]
    Handshake {
        /// The peer's address.
        addr: SocketAddr,
        /// How the connection ended.
        #[source]
        source: quinn::ConnectionError,
    },
    /// The peer closed the connection with one of Meridian's refusal codes.
    #[error("refused by peer: {code}{}", detail(reason))]
    Refused {
        /// Why, as a code both sides know.
        code: RefusalCode,
        /// The peer's free-text explanation (may be empty).
        reason: String,
    },
    /// The peer closed the connection with an application code that is not a refusal
    /// (0 is an orderly close).
    #[error("peer closed the connection (code {code}){}", detail(reason))]
    Closed {
        /// The application error code.
        code: u64,
        /// The peer's free-text explanation (may be empty).
        reason: String,
    },
    /// The connection ended for a transport reason (timeout, reset, protocol violation,
    /// handshake rejected by the peer, closed locally).
    #[error("connection lost: {0}")]
    Connection(#[source] quinn::ConnectionError),
    /// A received frame was longer than the receiver's limit; its stream was stopped and the
    /// connection stays usable.
    #[error("incoming frame exceeds the {max_len}-byte limit; its stream was stopped")]
    FrameTooLarge {
        /// The limit that was exceeded.
        max_len: usize,
    },
    /// The receiver stopped reading our frame (for instance because it was too large for it).
    #[error("peer stopped reading the frame (stream stop code {code})")]
    FrameRejected {
        /// The code the receiver gave.
        code: u64,
    },
    /// The sender abandoned a frame half-way.
    #[error("peer abandoned the frame (stream reset code {code})")]
    FrameReset {
        /// The code the sender gave.
        code: u64,
    },
    /// A stream was used after it was finished or reset: a bug in the caller or here.
    #[error("stream: {0}")]
    Stream(String),
}

fn detail(reason: &str) -> String {
    if reason.is_empty() {
        String::new()
    } else {
        format!(": {reason}")
    }
}

/// What went wrong with certificates, keys or TLS configuration.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TlsError {
    /// rcgen could not make a certificate (for instance a non-ASCII node name).
    #[error("cannot generate a certificate for `{name}`: {source}")]
    Generate {
        /// The node name asked for.
        name: String,
        /// rcgen's reason.
        #[source]
        source: rcgen::Error,
    },
    /// Reading or writing an identity file failed.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file or folder.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// A PEM file holds no usable certificate or key.
    #[error("{what}: {reason}")]
    Pem {
        /// Which input (a path or "certificate PEM").
        what: String,
        /// What is wrong with it.
        reason: String,
    },
    /// Only one of the two identity files exists: refusing to overwrite the other.
    #[error("identity in {} is incomplete: {} is missing", dir.display(), missing.display())]
    IncompleteIdentity {
        /// The identity folder.
        dir: PathBuf,
        /// The file that is not there.
        missing: PathBuf,
    },
    /// rustls rejected the certificate, key or configuration (including a key that does not
    /// belong to the certificate).
    #[error("TLS configuration: {0}")]
    Config(#[source] rustls::Error),
    /// quinn rejected the rustls configuration (no QUIC-capable cipher suite).
    #[error("QUIC crypto configuration: {0}")]
    QuicCrypto(String),
}
