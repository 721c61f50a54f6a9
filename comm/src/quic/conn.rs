//! Moving frames over an established connection, and closing it with a reason.
//!
//! A frame here is an opaque byte string (the wire layer builds and checks them). Each frame
//! travels on its own unidirectional stream: open, write everything, finish. That gives
//!
//! - per-frame flow control: a receiver grants credit per stream, so a huge payload frame
//!   cannot starve a small control frame sent after it, and an oversized frame can be refused
//!   (its stream stopped) without touching the connection;
//! - no head-of-line blocking between frames: a packet lost from one frame delays only that
//!   frame's stream, not the others in flight;
//! - framing for free: the stream's end marks the frame's end, so no length prefix has to be
//!   trusted before reading (the receiver still bounds what it buffers).
//!
//! Frames can be hundreds of megabytes; the flow-control windows from
//! [`TransportTuning`](crate::quic::TransportTuning) decide how fast they move on long links.
//! One task calling [`recv_frame`] repeatedly gets frames in the order their streams were
//! opened; callers that read several frames concurrently get them as they complete.

use quinn::{
    Connection, ConnectionError, ReadError, ReadToEndError, SendStream, StoppedError, VarInt,
    WriteError,
};
use rustls::pki_types::CertificateDer;

use crate::ids::CertFingerprint;
use crate::quic::certs::fingerprint_of;
use crate::quic::error::QuicError;

/// Application close code of an orderly close.
pub const CLOSE_DONE: u32 = 0;

/// Stream stop code sent when a frame exceeds the receiver's limit.
pub const STOP_FRAME_TOO_LARGE: u32 = 1;

/// Longest close reason sent; quinn truncates longer ones to fit one packet anyway.
const MAX_REASON_BYTES: usize = 512;

/// Why a peer was turned away: sent as the QUIC application close code, so the refused side
/// can tell its operator exactly what to fix.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum RefusalCode {
    /// The join secret presented is not the run's.
    WrongSecret,
    /// The peer's certificate or member id is not known for this run.
    UnknownPeer,
    /// The peer belongs to another run.
    RunMismatch,
    /// The run admits no more members.
    RunFull,
    /// The peer speaks an incompatible protocol or frame version.
    VersionMismatch,
    /// The peer sent something the protocol does not allow.
    ProtocolViolation,
    /// The member was removed from the run (for instance after missing too many rounds).
    Evicted,
}

impl RefusalCode {
    const ALL: [Self; 7] = [
        Self::WrongSecret,
        Self::UnknownPeer,
        Self::RunMismatch,
        Self::RunFull,
        Self::VersionMismatch,
        Self::ProtocolViolation,
        Self::Evicted,
    ];

    /// The application close code on the wire (0 is an orderly close, so refusals start at 1).
    pub fn code(self) -> u32 {
        match self {
            Self::WrongSecret => 1,
            Self::UnknownPeer => 2,
            Self::RunMismatch => 3,
            Self::RunFull => 4,
            Self::VersionMismatch => 5,
            Self::ProtocolViolation => 6,
            Self::Evicted => 7,
        }
    }

    /// The refusal a close code stands for, if it is one.
    pub fn from_code(code: u64) -> Option<Self> {
        Self::ALL.into_iter().find(|r| u64::from(r.code()) == code)
    }
}

impl std::fmt::Display for RefusalCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::WrongSecret => "wrong join secret",
            Self::UnknownPeer => "unknown peer",
            Self::RunMismatch => "different run",
            Self::RunFull => "run is full",
            Self::VersionMismatch => "incompatible protocol version",
            Self::ProtocolViolation => "protocol violation",
            Self::Evicted => "removed from the run",
        })
    }
}

/// Sends one frame on a new unidirectional stream and finishes the stream.
///
/// Returns once the whole frame is handed to QUIC (within the send window), not once the
/// peer has it: closing the connection right after may discard it. Use
/// [`send_frame_delivered`] when the next step depends on delivery.
pub async fn send_frame(conn: &Connection, frame: &[u8]) -> Result<(), QuicError> {
    send_frame_pending(conn, frame).await.map(drop)
}

/// Like [`send_frame`], returning the finished stream: its `stopped()` completes once the
/// peer has acknowledged every byte, which a sender about to close the connection awaits
/// (closing drops what is still unsent).
pub async fn send_frame_pending(conn: &Connection, frame: &[u8]) -> Result<SendStream, QuicError> {
    let mut stream = conn.open_uni().await?;
    stream.write_all(frame).await?;
    stream.finish().map_err(|e| QuicError::Stream(e.to_string()))?;
    Ok(stream)
}

/// Like [`send_frame`], then waits until the peer has acknowledged every byte (one extra
/// round trip at most). Fails with [`QuicError::FrameRejected`] if the receiver stopped the
/// stream, for instance because the frame exceeded its limit, before every byte was
/// acknowledged: a frame that fits the peer's stream receive window can be acknowledged
/// whole before the receiving application reads it, and then counts as delivered.
pub async fn send_frame_delivered(conn: &Connection, frame: &[u8]) -> Result<(), QuicError> {
    let stream = send_frame_pending(conn, frame).await?;
    match stream.stopped().await? {
        None => Ok(()),
        Some(code) => Err(QuicError::FrameRejected { code: code.into_inner() }),
    }
}

/// Receives the next frame: accepts the next unidirectional stream and reads it to its end.
///
/// A frame longer than `max_len` bytes is not buffered past the limit: its stream is stopped
/// with [`STOP_FRAME_TOO_LARGE`], the call fails with [`QuicError::FrameTooLarge`], and the
/// connection stays usable for the next frame.
pub async fn recv_frame(conn: &Connection, max_len: usize) -> Result<Vec<u8>, QuicError> {
    let mut stream = conn.accept_uni().await?;
    match stream.read_to_end(max_len).await {
        Ok(frame) => Ok(frame),
        Err(ReadToEndError::TooLong) => {
            // Already-closed streams cannot be stopped; nothing is left to refuse then.
            let _ = stream.stop(VarInt::from_u32(STOP_FRAME_TOO_LARGE));
            tracing::warn!(
                peer = %conn.remote_address(),
                max_len,
                "refused an oversized frame"
            );
            Err(QuicError::FrameTooLarge { max_len })
        }
        Err(ReadToEndError::Read(e)) => Err(e.into()),
    }
}

/// SHA-256 of the certificate the peer authenticated with (its end-entity certificate), or
/// `None` before the handshake completes. On a server in
/// [`ClientAuth::AcceptAny`](crate::quic::ClientAuth::AcceptAny) mode this is how the
/// coordinator learns who connected.
pub fn peer_fingerprint(conn: &Connection) -> Option<CertFingerprint> {
    let identity = conn.peer_identity()?;
    let chain = identity.downcast::<Vec<CertificateDer<'static>>>().ok()?;
    chain.first().map(|cert| fingerprint_of(cert))
}

/// Closes the connection, telling the peer why it was refused; the peer's pending and later
/// calls fail with [`QuicError::Refused`]. `detail` is free text for the peer's operator
/// (kept to 512 bytes).
pub fn close_refused(conn: &Connection, code: RefusalCode, detail: &str) {
    tracing::info!(peer = %conn.remote_address(), %code, detail, "refusing peer");
    conn.close(VarInt::from_u32(code.code()), truncate(detail).as_bytes());
}

/// Closes the connection in an orderly way ([`CLOSE_DONE`]). Frames not yet delivered are
/// lost: close from the side that received last, or after [`send_frame_delivered`].
pub fn close_done(conn: &Connection, detail: &str) {
    conn.close(VarInt::from_u32(CLOSE_DONE), truncate(detail).as_bytes());
}

/// Waits until the connection ends and says why (refusals mapped to
/// [`QuicError::Refused`]).
pub async fn wait_closed(conn: &Connection) -> QuicError {
    conn.closed().await.into()
}

fn truncate(text: &str) -> &str {
    let mut end = text.len().min(MAX_REASON_BYTES);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

impl From<ConnectionError> for QuicError {
    fn from(err: ConnectionError) -> Self {
        match err {
            ConnectionError::ApplicationClosed(close) => {
                let code = close.error_code.into_inner();
                let reason = String::from_utf8_lossy(&close.reason).into_owned();
                match RefusalCode::from_code(code) {
                    Some(code) => Self::Refused { code, reason },
                    None => Self::Closed { code, reason },
                }
            }
            other => Self::Connection(other),
        }
    }
}

impl From<WriteError> for QuicError {
    fn from(err: WriteError) -> Self {
        match err {
            WriteError::Stopped(code) => Self::FrameRejected { code: code.into_inner() },
            WriteError::ConnectionLost(e) => e.into(),
            other => Self::Stream(other.to_string()),
        }
    }
}

impl From<ReadError> for QuicError {
    fn from(err: ReadError) -> Self {
        match err {
            ReadError::Reset(code) => Self::FrameReset { code: code.into_inner() },
            ReadError::ConnectionLost(e) => e.into(),
            other => Self::Stream(other.to_string()),
        }
    }
}

impl From<StoppedError> for QuicError {
    fn from(err: StoppedError) -> Self {
        match err {
            StoppedError::ConnectionLost(e) => e.into(),
            other => Self::Stream(other.to_string()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusal_codes_round_trip_and_read_well() {
        for code in RefusalCode::ALL {
            assert_eq!(RefusalCode::from_code(code.code().into()), Some(code));
            assert_ne!(code.code(), CLOSE_DONE);
        }
        assert_eq!(RefusalCode::from_code(0), None);
        assert_eq!(RefusalCode::from_code(99), None);
        let err = QuicError::Refused { code: RefusalCode::WrongSecret, reason: String::new() };
        assert_eq!(err.to_string(), "refused by peer: wrong join secret");
    }

    #[test]
    fn truncate_respects_char_boundaries() {
        let long = "é".repeat(400);
        let cut = truncate(&long);
        assert!(cut.len() <= MAX_REASON_BYTES);
        assert_eq!(cut.len(), 512);
        assert_eq!(truncate("short"), "short");
    }
}
