//! The one receive path of [`OuterOptimizer::apply`](super::OuterOptimizer::apply):
//! [`admit`] (round, algorithm, duplicates), the algorithm's decoder (shapes, encodings,
//! indices, finiteness), then [`Robust::screen`] (overflow bound, norm clipping or outlier
//! rejection). Every algorithm calls [`receive`] once and aggregates the members it
//! returns; a ring aggregate takes [`receive_aggregate`] instead. Both hand back the
//! [`ApplyReport`] of the round, so every algorithm reports applied and rejected members
//! the same way, in member-id order.

use std::collections::BTreeMap;

use super::ApplyReport;
use crate::algorithm::Algorithm;
use crate::error::{OptimizerError, Result};
use crate::payload::Payload;
use crate::rejection::{self, Rejection, Rejections};
use crate::ring::DenseRing;
use crate::robust::{MemberUpdate, Robust};

/// Splits `payloads` into those fit to apply, sorted by member id, and rejections: another
/// algorithm, another round, or a member id that appears more than once (all copies are
/// rejected, so the outcome does not depend on arrival order).
pub fn admit(
    algorithm: Algorithm,
    round: u64,
    payloads: &[Payload],
) -> (Vec<&Payload>, Rejections) {
    let mut counts: BTreeMap<u32, usize> = BTreeMap::new();
    for p in payloads {
        *counts.entry(p.worker).or_default() += 1;
    }
    let mut ok = Vec::new();
    let mut rejected = Vec::new();
    for p in payloads {
        if counts[&p.worker] > 1 {
            rejected.push((p.worker, Rejection::Duplicate));
        } else if p.algorithm != algorithm {
            rejected.push((
                p.worker,
                Rejection::WrongAlgorithm { sent: p.algorithm, applying: algorithm },
            ));
        } else if p.round != round {
            rejected.push((p.worker, Rejection::WrongRound { sent: p.round, applying: round }));
        } else {
            ok.push(p);
        }
    }
    ok.sort_by_key(|p| p.worker);
    rejection::sort(&mut rejected);
    rejected.dedup();
    (ok, rejected)
}

/// A round's payloads after the receive path.
#[derive(Debug)]
pub struct Received<T> {
    /// The members to aggregate with their decoded updates (clipped where the robust mode
    /// says so), in member-id order.
    pub members: Vec<(u32, T)>,
    /// Every member left out, with the reason, sorted by member.
    pub rejected: Rejections,
}

impl<T> Received<T> {
    /// The report of a round that applied every member in [`Received::members`].
    pub fn report(self) -> ApplyReport {
        ApplyReport { applied: self.members.iter().map(|m| m.0).collect(), rejected: self.rejected }
    }
}

/// Takes `algorithm`'s `payloads` for `round` through the receive path: [`admit`], then
/// `decode` on each admitted payload, then `robust`'s screening, then, with `balance` (the
/// steps a round spans, for an algorithm whose `balance` is on), the weighting by the steps
/// each member trained ([`crate::balance::weigh`]). `decode` gets the payload
/// and how many were admitted (the same on every replica, so a bound derived from it is
/// too); a payload it refuses is rejected with its reason. The outcome does not depend on
/// the order of `payloads`.
pub fn receive<T: MemberUpdate>(
    algorithm: Algorithm,
    round: u64,
    payloads: &[Payload],
    robust: &Robust,
    balance: Option<u64>,
    mut decode: impl FnMut(&Payload, usize) -> std::result::Result<T, Rejection>,
) -> Received<T> {
    let (admitted, mut rejected) = admit(algorithm, round, payloads);
    let count = admitted.len();
    let mut members = Vec::with_capacity(count);
    let mut steps = BTreeMap::new();
    for p in admitted {
        match decode(p, count) {
            Ok(v) => {
                steps.insert(p.worker, p.effort.steps);
                members.push((p.worker, v));
            }
            Err(reason) => rejected.push((p.worker, reason)),
        }
    }
    rejection::sort(&mut rejected);
    let mut members = robust.screen(members, &mut rejected);
    if let Some(span) = balance {
        let trained: Vec<u32> =
            members.iter().map(|(w, _)| steps.get(w).copied().unwrap_or(0)).collect();
        crate::balance::weigh(&mut members, &trained, span);
    }
    Received { members, rejected }
}

/// The receive path of a ring aggregate, the sum of `members`' payloads (ascending) as
/// [`DenseRing::join`] packed it: their per-tensor means and the report. An aggregate that
/// does not decode rejects every member and gives no means (the round then applies as if
/// nobody delivered), the same on every replica; so does an empty `members`. `ring` is the
/// algorithm's [`OuterOptimizer::ring`](super::OuterOptimizer::ring): `None` (a robust
/// `aggregation`, which needs every member's own update) is an error.
pub fn receive_aggregate(
    ring: Option<DenseRing>,
    algorithm: Algorithm,
    robust: &Robust,
    round: u64,
    members: &[u32],
    aggregate: &[u8],
) -> Result<(Option<Vec<Vec<f32>>>, ApplyReport)> {
    let ring = ring.ok_or_else(|| ring_refused(algorithm, robust))?;
    Ok(match aggregate_means(&ring, round, members, aggregate) {
        Ok(means) => (Some(means), ApplyReport { applied: members.to_vec(), rejected: Vec::new() }),
        Err(rejected) => (None, ApplyReport { applied: Vec::new(), rejected }),
    })
}

/// The error for a ring aggregate offered to an algorithm whose robust aggregation needs
/// every member's own update.
fn ring_refused(algorithm: Algorithm, robust: &Robust) -> OptimizerError {
    OptimizerError::Config(format!(
        "{algorithm}: aggregation = \"{}\" needs every member's update, which a ring all-reduce \
         does not deliver; use the relay or all-gather topology, or aggregation = \"mean\"",
        robust.aggregation
    ))
}

/// The per-tensor means of a ring aggregate for `members`, or every member rejected with
/// the reason the aggregate does not decode.
fn aggregate_means(
    ring: &DenseRing,
    round: u64,
    members: &[u32],
    aggregate: &[u8],
) -> std::result::Result<Vec<Vec<f32>>, Rejections> {
    if members.is_empty() {
        return Err(Vec::new());
    }
    let count = members.len() as f32;
    match ring.decode_aggregate(aggregate, round) {
        Ok(mut sums) => {
            for v in sums.iter_mut().flatten() {
                *v /= count;
            }
            Ok(sums)
        }
        Err(e) => Err(members.iter().map(|&m| (m, Rejection::Aggregate(e.to_string()))).collect()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::payload::Segment;

    fn p(worker: u32, round: u64, algorithm: Algorithm) -> Payload {
        let segments = vec![Segment::dense(0, &[1], &[1.0], false)];
        Payload { algorithm, round, worker, effort: Default::default(), segments }
    }

    #[test]
    fn admit_sorts_and_rejects_deterministically() {
        let given = vec![
            p(3, 5, Algorithm::Diloco),
            p(1, 5, Algorithm::Diloco),
            p(2, 4, Algorithm::Diloco),
            p(4, 5, Algorithm::Demo),
            p(7, 5, Algorithm::Diloco),
            p(7, 5, Algorithm::Diloco),
        ];
        let (ok, rejected) = admit(Algorithm::Diloco, 5, &given);
        assert_eq!(ok.iter().map(|p| p.worker).collect::<Vec<_>>(), vec![1, 3]);
        assert_eq!(rejected.iter().map(|r| r.0).collect::<Vec<_>>(), vec![2, 4, 7]);
        let mut reversed = given.clone();
        reversed.reverse();
        let (ok2, rejected2) = admit(Algorithm::Diloco, 5, &reversed);
        assert_eq!(ok, ok2);
        assert_eq!(rejected, rejected2);
    }
}
