//! The optimizer's [`DenseRing`] as the comm crate's [`RingReducer`]: how a worker process
//! sums payloads in a ring run.
//!
//! The worker node needs its reducer when it connects, before the worker knows its member
//! id and builds its optimizer; [`RingCell`] is handed over empty and filled once the
//! optimizer exists. A ring it is asked to take part in before then fails (the round falls
//! back to relay), which cannot happen in practice: the worker publishes nothing before.

use std::sync::OnceLock;

use bytes::Bytes;
use meridian_comm::protocol::{ReduceError, RingReducer};
use meridian_optimizer::ring::DenseRing;

/// A [`RingReducer`] backed by a [`DenseRing`] set once.
#[derive(Debug, Default)]
pub struct RingCell(OnceLock<DenseRing>);

impl RingCell {
    /// Sets the ring; false when one was set already (the first stays).
    pub fn set(&self, ring: DenseRing) -> bool {
        self.0.set(ring).is_ok()
    }

    fn ring(&self) -> Result<&DenseRing, ReduceError> {
        self.0.get().ok_or_else(|| ReduceError("the optimizer is not ready yet".into()))
    }
}

fn reduce_error(e: meridian_optimizer::OptimizerError) -> ReduceError {
    ReduceError(e.to_string())
}

impl RingReducer for RingCell {
    fn split(&self, payload: &[u8], parts: usize) -> Result<Vec<Bytes>, ReduceError> {
        let parts = self.ring()?.split(payload, parts).map_err(reduce_error)?;
        Ok(parts.into_iter().map(Bytes::from).collect())
    }

    fn combine(&self, received: &[u8], own: &[u8]) -> Result<Bytes, ReduceError> {
        self.ring()?.combine(received, own).map(Bytes::from).map_err(reduce_error)
    }

    fn check(&self, received: &[u8], own: &[u8]) -> Result<(), ReduceError> {
        self.ring()?.check(received, own).map_err(reduce_error)
    }

    fn join(&self, segments: &[Bytes]) -> Result<Bytes, ReduceError> {
        let refs: Vec<&[u8]> = segments.iter().map(|s| s.as_ref()).collect();
        self.ring()?.join(&refs).map(Bytes::from).map_err(reduce_error)
    }
}
