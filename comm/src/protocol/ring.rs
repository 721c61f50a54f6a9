//! Ring all-reduce: the reducer callers supply, and the schedule of segments around a ring.
//!
//! The round's members, ascending by id, form the ring; member `i` sends to `i + 1` and
//! receives from `i − 1` (mod `n`). Each member splits its payload into `n` segments. A ring
//! takes `2(n − 1)` steps, numbered by *slot*:
//! - reduce-scatter, slots `0..n−1`: at slot `s` member `i` sends segment `(i − s) mod n`;
//!   the receiver combines it with its own copy of that segment and sends the result on at
//!   the next slot. After slot `n − 2` member `i` holds the finished segment `(i + 1) mod n`.
//! - all-gather, slots `n−1..2n−2`: finished segments travel once more around the ring and
//!   are copied, not combined.
//!
//! Segment `k` is summed starting at member `k`, in ring order, and every member ends with
//! copies of the same finished bytes: the aggregate is byte-identical everywhere and its
//! floating-point summation order is fixed by the member list. Each member sends
//! `2(n − 1)` segments of about `payload / n` bytes: `2(n − 1)/n ×` its payload.

use std::fmt;

use bytes::Bytes;

/// Why a reducer refused its input.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ReduceError(pub String);

/// How payload bytes are added up, supplied by the caller (comm does not know tensors).
///
/// The schedule: the round's members, ascending by id, form the ring; member `i` sends to
/// `i + 1` and receives from `i − 1` (mod `n`). In reduce-scatter, slots `0..n−1`, member
/// `i` sends segment `(i − s) mod n` at slot `s` and the receiver combines it with its own
/// copy; after it, member `i` holds the finished segment `(i + 1) mod n`. In all-gather,
/// slots `n−1..2n−2`, finished segments go once more around the ring and are copied.
/// Segment `k` is summed from member `k` on, in ring order, and every member ends with the
/// same bytes. Each member sends `2(n − 1)` segments of about `payload / n` bytes.
///
/// The segments of one payload and the results of [`RingReducer::combine`] share one
/// encoding; the aggregate [`RingReducer::join`] returns is the sum over the ring's members
/// in that encoding. Every method gets bytes that may come from a peer: it checks them and
/// returns an error, never panics. All members must use the same reducer, and `split` must
/// cut every member's payload at the same places (the payloads of a dense exchange have
/// one layout).
pub trait RingReducer: Send + Sync + fmt::Debug {
    /// Cuts `payload` (this member's own) into exactly `parts` segments.
    fn split(&self, payload: &[u8], parts: usize) -> Result<Vec<Bytes>, ReduceError>;

    /// The sum of `received` (a partial sum from the predecessor) and `own` (this member's
    /// segment at the same position).
    fn combine(&self, received: &[u8], own: &[u8]) -> Result<Bytes, ReduceError>;

    /// Checks a finished segment received in the all-gather phase, which is copied as is.
    fn check(&self, received: &[u8], own: &[u8]) -> Result<(), ReduceError>;

    /// The aggregate from the finished segments, in order.
    fn join(&self, segments: &[Bytes]) -> Result<Bytes, ReduceError>;
}

/// Slots in a ring of `n` members: `2(n − 1)`.
pub(crate) fn slots(n: usize) -> u32 {
    u32::try_from(2 * n.saturating_sub(1)).unwrap_or(u32::MAX)
}

/// The segment member `index` sends at `slot` in a ring of `n`.
pub(crate) fn sent_segment(index: usize, slot: u32, n: usize) -> usize {
    let slot = slot as usize;
    if slot + 1 < n {
        (index + n - slot % n) % n
    } else {
        (index + 1 + n - (slot + 1 - n) % n) % n
    }
}

/// True when the segment received at `slot` is combined (reduce-scatter), false when it is
/// copied (all-gather).
pub(crate) fn is_reduce(slot: u32, n: usize) -> bool {
    (slot as usize) + 1 < n
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Simulates the schedule on sets of contributors: after the ring every member must hold
    /// every segment with every member's contribution, each exactly once.
    #[test]
    fn schedule_sums_every_segment_over_every_member_once() {
        for n in 1..=7usize {
            let mut held: Vec<Vec<Vec<usize>>> =
                (0..n).map(|i| (0..n).map(|_| vec![i]).collect()).collect();
            for slot in 0..slots(n) {
                let sent: Vec<(usize, Vec<usize>)> = (0..n)
                    .map(|i| {
                        let k = sent_segment(i, slot, n);
                        (k, held[i][k].clone())
                    })
                    .collect();
                for (i, h) in held.iter_mut().enumerate() {
                    let (k, ref got) = sent[(i + n - 1) % n];
                    if is_reduce(slot, n) {
                        let mut sum = got.clone();
                        sum.extend(&h[k]);
                        h[k] = sum;
                    } else {
                        h[k] = got.clone();
                    }
                }
            }
            for (i, h) in held.iter().enumerate() {
                for (k, seg) in h.iter().enumerate() {
                    let mut got = seg.clone();
                    got.sort_unstable();
                    assert_eq!(got, (0..n).collect::<Vec<_>>(), "n {n} member {i} segment {k}");
                    // Summation order: starts at member k, then ring order.
                    let order: Vec<usize> = (0..n).map(|j| (k + j) % n).collect();
                    assert_eq!(seg, &order, "n {n} member {i} segment {k}");
                }
            }
        }
    }

    #[test]
    fn a_ring_of_n_takes_two_n_minus_two_slots() {
        assert_eq!(slots(1), 0);
        assert_eq!(slots(2), 2);
        assert_eq!(slots(4), 6);
    }
}

/// A reducer for tests: sums little-endian f32 vectors.
#[cfg(test)]
pub(crate) mod testing {
    use bytes::Bytes;

    use super::{ReduceError, RingReducer};

    /// Sums little-endian f32 vectors, cut into `parts` contiguous ranges.
    #[derive(Debug)]
    pub(crate) struct F32Sum;

    pub(crate) fn floats(bytes: &[u8]) -> Result<Vec<f32>, ReduceError> {
        if bytes.len() % 4 != 0 {
            return Err(ReduceError(format!("{} bytes is not a whole number of f32", bytes.len())));
        }
        let v: Vec<f32> =
            bytes.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect();
        if v.iter().any(|x| !x.is_finite()) {
            return Err(ReduceError("non-finite value".into()));
        }
        Ok(v)
    }

    pub(crate) fn to_bytes(v: &[f32]) -> Bytes {
        v.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>().into()
    }

    fn same_len(a: &[u8], b: &[u8]) -> Result<(), ReduceError> {
        if a.len() != b.len() {
            return Err(ReduceError(format!("segment of {} bytes, expected {}", a.len(), b.len())));
        }
        Ok(())
    }

    impl RingReducer for F32Sum {
        fn split(&self, payload: &[u8], parts: usize) -> Result<Vec<Bytes>, ReduceError> {
            let v = floats(payload)?;
            Ok((0..parts)
                .map(|k| to_bytes(&v[k * v.len() / parts..(k + 1) * v.len() / parts]))
                .collect())
        }

        fn combine(&self, received: &[u8], own: &[u8]) -> Result<Bytes, ReduceError> {
            same_len(received, own)?;
            let (a, b) = (floats(received)?, floats(own)?);
            Ok(to_bytes(&a.iter().zip(&b).map(|(x, y)| x + y).collect::<Vec<f32>>()))
        }

        fn check(&self, received: &[u8], own: &[u8]) -> Result<(), ReduceError> {
            same_len(received, own)?;
            floats(received).map(|_| ())
        }

        fn join(&self, segments: &[Bytes]) -> Result<Bytes, ReduceError> {
            Ok(segments.iter().flat_map(|s| s.iter().copied()).collect::<Vec<u8>>().into())
        }
    }
}
