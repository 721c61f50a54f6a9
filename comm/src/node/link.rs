//! What both drivers share: outgoing frames and their writer task, reading frames off a
//! connection, clocks and timers, the debug line of a finished round.

use std::time::Instant;

use bytes::Bytes;
use quinn::{Connection, VarInt};
use tokio::sync::{mpsc, oneshot};
use tracing::{debug, warn};

use crate::ids::{MemberId, Round};
use crate::protocol::{Dest, RoundStats};
use crate::quic::{
    recv_frame, send_frame_delivered, send_frame_pending, QuicError, STOP_FRAME_TOO_LARGE,
};
use crate::wire::{Frame, FrameCodec, FrameKind, WireError, PREFIX_LEN};

/// A frame for a writer task to encode and send.
#[derive(Debug)]
pub(crate) struct Out {
    pub(crate) kind: FrameKind,
    pub(crate) round: Round,
    pub(crate) sender: MemberId,
    pub(crate) body: Bytes,
    /// Wait until the peer acknowledged the frame and report here.
    pub(crate) delivered: Option<oneshot::Sender<Result<(), QuicError>>>,
}

impl Out {
    pub(crate) fn new(kind: FrameKind, round: Round, sender: MemberId, body: Bytes) -> Self {
        Out { kind, round, sender, body, delivered: None }
    }
}

/// Frames (or bodies) larger than this are encoded or decoded on the blocking pool: hashing
/// and copying hundreds of megabytes must not stall the runtime's other tasks.
const BLOCKING_BYTES: usize = 1 << 20;

/// Whether a codec job of `len` bytes goes to the blocking pool. Never on a current-thread
/// runtime: that is how the simulator runs nodes, in virtual time, and a pool thread would
/// finish at a moment of real time, reordering events between runs of the same seed.
fn offload(len: usize) -> bool {
    len > BLOCKING_BYTES
        && tokio::runtime::Handle::try_current()
            .is_ok_and(|h| h.runtime_flavor() != tokio::runtime::RuntimeFlavor::CurrentThread)
}

/// Spawns the task that sends `conn`'s frames, one at a time and in order (so the peer's
/// single reader sees them in the order they were queued). It ends when the queue's senders
/// are gone or the connection fails.
pub(crate) fn spawn_writer(
    conn: Connection,
    codec: FrameCodec,
    mut queue: mpsc::UnboundedReceiver<Out>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        // Frames written and not yet acknowledged whole: when the queue closes (the worker
        // leaves), the writer waits for them, so that what it sent last still arrives (the
        // connection closes when the writer ends, and closing drops unsent data).
        let mut unacked = tokio::task::JoinSet::new();
        while let Some(out) = queue.recv().await {
            while unacked.try_join_next().is_some() {}
            let Out { kind, round, sender, body, delivered } = out;
            let encoded = if offload(body.len()) {
                let codec = codec.clone();
                tokio::task::spawn_blocking(move || codec.encode(kind, round, sender, &body, false))
                    .await
                    .unwrap_or_else(|e| Err(WireError::BadBody(e.to_string())))
            } else {
                codec.encode(kind, round, sender, &body, false)
            };
            let frame = match encoded {
                Ok(frame) => frame,
                Err(e) => {
                    // Limits are checked before a frame is queued; this is a bug, not input.
                    warn!(error = %e, ?kind, round, "cannot encode a frame");
                    continue;
                }
            };
            let result = match delivered {
                Some(reply) => {
                    let result = send_frame_delivered(&conn, &frame).await;
                    let failed = result.is_err();
                    let _ = reply.send(result);
                    if failed {
                        break;
                    }
                    continue;
                }
                None => send_frame_pending(&conn, &frame).await.map(|stream| {
                    unacked.spawn(async move {
                        let _ = stream.stopped().await;
                    });
                }),
            };
            if let Err(e) = result {
                debug!(peer = %conn.remote_address(), error = %e, "writer stops");
                return;
            }
        }
        while unacked.join_next().await.is_some() {}
    })
}

/// What reading the next frame gave.
pub(crate) enum Read {
    /// An authenticated frame.
    Frame(Frame),
    /// A frame that was rejected; the connection is still usable.
    Bad(String, Option<WireError>),
    /// The connection is gone.
    Lost(QuicError),
}

/// Reads and decodes the next frame of `conn`.
pub(crate) async fn read_frame(conn: &Connection, codec: &FrameCodec) -> Read {
    match recv_frame(conn, codec.max_frame().saturating_add(PREFIX_LEN)).await {
        Ok(bytes) => match decode(codec, bytes).await {
            Ok(frame) => Read::Frame(frame),
            Err(e) => Read::Bad(e.to_string(), Some(e)),
        },
        Err(e @ (QuicError::FrameTooLarge { .. } | QuicError::FrameReset { .. })) => {
            Read::Bad(e.to_string(), None)
        }
        Err(QuicError::Stream(e)) => Read::Bad(e, None),
        Err(e) => Read::Lost(e),
    }
}

/// Reads and decodes the first frame of `conn`, from a peer that has not proven itself yet:
/// `codec`'s limit is what a join needs, not what a payload may take.
///
/// Unlike [`read_frame`], which collects a whole stream before looking at it, this feeds a
/// [`FrameReader`](crate::wire::FrameReader) as bytes arrive, so a length prefix over the
/// limit is refused as soon as its four bytes are in (the stream is stopped), before
/// anything of the claimed size is reserved or waited for. Bytes after the frame on its
/// stream are an error too ([`WireError::TrailingBytes`]).
pub(crate) async fn read_first_frame(conn: &Connection, codec: &FrameCodec) -> Read {
    let mut stream = match conn.accept_uni().await {
        Ok(stream) => stream,
        Err(e) => return Read::Lost(e.into()),
    };
    let refuse = |stream: &mut quinn::RecvStream, e: WireError| {
        // An already finished stream cannot be stopped; nothing is left to refuse then.
        let _ = stream.stop(VarInt::from_u32(STOP_FRAME_TOO_LARGE));
        Read::Bad(e.to_string(), Some(e))
    };
    let mut reader = codec.reader();
    let mut frame = None;
    loop {
        let chunk = match stream.read_chunk(usize::MAX, true).await {
            Ok(Some(chunk)) => chunk.bytes,
            Ok(None) => break,
            Err(e) => {
                return match QuicError::from(e) {
                    e @ QuicError::FrameReset { .. } => Read::Bad(e.to_string(), None),
                    QuicError::Stream(e) => Read::Bad(e, None),
                    e => Read::Lost(e),
                }
            }
        };
        if frame.is_some() {
            return refuse(&mut stream, WireError::TrailingBytes { extra: chunk.len() });
        }
        reader.push(&chunk);
        match reader.next_frame() {
            None => {}
            Some(Ok(done)) if reader.buffered() == 0 => frame = Some(done),
            Some(Ok(_)) => {
                let extra = reader.buffered();
                return refuse(&mut stream, WireError::TrailingBytes { extra });
            }
            Some(Err(e)) => return refuse(&mut stream, e),
        }
    }
    match (frame, reader.finish()) {
        (Some(frame), _) => Read::Frame(frame),
        (None, Err(e)) => Read::Bad(e.to_string(), Some(e)),
        // An empty stream: no frame at all.
        (None, Ok(())) => {
            let e = WireError::Truncated { needed: PREFIX_LEN, got: 0 };
            Read::Bad(e.to_string(), Some(e))
        }
    }
}

async fn decode(codec: &FrameCodec, bytes: Vec<u8>) -> Result<Frame, WireError> {
    if !offload(bytes.len()) {
        return codec.decode(&bytes);
    }
    let codec = codec.clone();
    tokio::task::spawn_blocking(move || codec.decode(&bytes))
        .await
        .unwrap_or_else(|e| Err(WireError::BadBody(e.to_string())))
}

/// The protocol's notion of now, from tokio's clock (so a paused clock drives it too).
pub(crate) fn now() -> Instant {
    tokio::time::Instant::now().into_std()
}

/// Sleeps until `at`, or forever when there is nothing to wait for.
pub(crate) async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(tokio::time::Instant::from_std(at)).await,
        None => std::future::pending().await,
    }
}

/// A round's bytes per link, as `(peer, received, sent)`, for a log line.
pub(crate) fn traffic(stats: &RoundStats) -> Vec<(Dest, u64, u64)> {
    stats.traffic.iter().map(|t| (t.peer, t.received, t.sent)).collect()
}

/// Logs a finished round at debug with `message`: who delivered, how long it took, bytes per
/// link. The coordinator's commits and the workers' RoundReady read alike.
pub(crate) fn log_round(round: Round, stats: &RoundStats, message: &str) {
    debug!(
        round,
        delivered = ?stats.delivered,
        stragglers = ?stats.stragglers,
        duration_ms = stats.duration.map(|d| d.as_millis() as u64),
        last_delivery_ms = stats.last_delivery.map(|d| d.as_millis() as u64),
        traffic = ?traffic(stats),
        "{message}"
    );
}
