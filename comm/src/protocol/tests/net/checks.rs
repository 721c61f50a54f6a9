//! What the tests ask of a network afterwards: progress, commits, rejections, and the
//! replica-consistency check.

use std::collections::BTreeMap;

use bytes::Bytes;

use super::{Applied, Net};
use crate::ids::{MemberId, Round};
use crate::protocol::{CoordinatorEvent, RejectReason, WorkerEvent, WorkerProto};

impl Net {
    /// Every live worker applied `round`.
    pub fn all_applied(&self, round: Round) -> bool {
        self.nodes
            .iter()
            .filter(|n| n.proto.is_some())
            .all(|n| n.app.applied.is_some_and(|a| a >= round))
    }

    /// The coordinator's commits: round → committed members (every incarnation).
    pub fn commits(&self) -> BTreeMap<Round, Vec<MemberId>> {
        let mut commits = BTreeMap::new();
        for e in &self.coordinator_events {
            if let CoordinatorEvent::RoundCommitted { round, delivered, .. } = e {
                let members: Vec<MemberId> = delivered.iter().map(|d| d.member).collect();
                let previous = commits.insert(*round, members.clone());
                assert!(
                    previous.is_none_or(|p| p == members),
                    "round {round} committed twice with different sets"
                );
            }
        }
        commits
    }

    /// Every two workers that applied a round applied the same payloads, in member-id
    /// order, matching the coordinator's commit; and hold the same state after it.
    pub fn check_consistency(&self) {
        let mut digests: BTreeMap<Round, Vec<crate::protocol::Delivery>> = BTreeMap::new();
        let mut aggregates = BTreeMap::new();
        for e in &self.coordinator_events {
            if let CoordinatorEvent::RoundCommitted { round, delivered, aggregate, .. } = e {
                digests.insert(*round, delivered.clone());
                aggregates.insert(*round, *aggregate);
            }
        }
        let mut seen_aggregates: BTreeMap<Round, (&str, &Bytes)> = BTreeMap::new();
        for node in &self.nodes {
            for (round, (members, bytes)) in &node.app.aggregates {
                assert!(!node.app.ready.contains_key(round), "{} round {round}", node.name);
                if let Some(committed) = aggregates.get(round) {
                    let digest = crate::protocol::Digest::of(bytes);
                    assert_eq!(*committed, Some(digest), "{} round {round}", node.name);
                    let ids: Vec<MemberId> = digests[round].iter().map(|d| d.member).collect();
                    assert_eq!(&ids, members, "{} round {round}", node.name);
                }
                match seen_aggregates.get(round) {
                    Some((other, theirs)) => assert_eq!(
                        *theirs, bytes,
                        "{} and {other} applied different aggregates in round {round}",
                        node.name
                    ),
                    None => {
                        seen_aggregates.insert(*round, (&node.name, bytes));
                    }
                }
            }
        }
        let mut seen: BTreeMap<Round, (&str, &Applied)> = BTreeMap::new();
        let mut states: BTreeMap<Round, (&str, u64)> = BTreeMap::new();
        for node in &self.nodes {
            for (round, payloads) in &node.app.ready {
                let ids: Vec<MemberId> = payloads.iter().map(|(m, _)| *m).collect();
                assert!(crate::protocol::types::strictly_ascending(ids.iter().copied()));
                if let Some(committed) = digests.get(round) {
                    let expected: Vec<_> = committed.iter().map(|d| (d.member, d.digest)).collect();
                    let got: Vec<_> = payloads
                        .iter()
                        .map(|(m, b)| (*m, crate::protocol::Digest::of(b)))
                        .collect();
                    assert_eq!(got, expected, "{} round {round}: not the commit", node.name);
                }
                match seen.get(round) {
                    Some((other, theirs)) => assert_eq!(
                        *theirs, payloads,
                        "{} and {other} applied different payloads in round {round}",
                        node.name
                    ),
                    None => {
                        seen.insert(*round, (&node.name, payloads));
                    }
                }
            }
            for (round, state) in &node.app.states {
                match states.get(round) {
                    Some((other, theirs)) => assert_eq!(
                        theirs, state,
                        "{} and {other} hold different states after round {round}",
                        node.name
                    ),
                    None => {
                        states.insert(*round, (&node.name, *state));
                    }
                }
            }
        }
    }

    /// Rejections the workers reported.
    pub fn worker_rejections(&self, i: usize) -> Vec<RejectReason> {
        self.nodes[i]
            .app
            .events
            .iter()
            .filter_map(|e| match e {
                WorkerEvent::Rejected { reason, .. } => Some(*reason),
                _ => None,
            })
            .collect()
    }

    pub fn member(&self, i: usize) -> MemberId {
        self.nodes[i].proto.as_ref().and_then(WorkerProto::member).expect("welcomed")
    }
}
