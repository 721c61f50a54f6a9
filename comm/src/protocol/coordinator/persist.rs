//! What the coordinator saves after every commit, and restoring from it.
//!
//! The state is small (names, ids, recent commit sets, deadline statistics, the run's
//! signature): payloads and snapshots are not saved. It is saved after every commit and
//! when the run's signature is adopted; a state saved before signatures existed still
//! loads (without one: the first joiner with a signature sets it again). After a restore
//! every member is disconnected; workers reconnect and join again under their names, get
//! their old ids back, and the round after the last committed one opens (again) once the
//! last round's members are back or
//! [`CoordinatorConfig::rejoin_grace`](super::CoordinatorConfig::rejoin_grace) has passed.
//! A worker that missed the last commit (the coordinator saved it and died before sending
//! it) gets it replayed; it usually holds the payloads already. In Relay a restarted
//! coordinator holds no payloads: one that must be fetched is asked of its author again,
//! and leads to a snapshot only when the author no longer holds it.

use std::collections::{BTreeSet, VecDeque};
use std::time::Instant;

use serde::{Deserialize, Serialize};
use tracing::{info, warn};

use super::{valid_name, Coordinator, CoordinatorConfig, Gate, Member, Phase};
use crate::ids::{MemberId, Round, RunId};
use crate::protocol::deadline::DeadlineStats;
use crate::protocol::messages::ToWorker;
use crate::protocol::types::{strictly_ascending, Delivery, Digest, PeerInfo};
use crate::protocol::{ProtocolError, RunSignature};

/// One committed round.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CommitRecord {
    /// The round.
    pub round: Round,
    /// The committed payloads, ascending by member.
    pub delivered: Vec<Delivery>,
    /// Members of the round that did not deliver, ascending.
    pub stragglers: Vec<MemberId>,
    /// Ring: the digest of the committed aggregate; `None` for a per-member commit.
    pub aggregate: Option<Digest>,
}

impl CommitRecord {
    pub(super) fn to_message(&self) -> ToWorker {
        ToWorker::Commit {
            round: self.round,
            delivered: self.delivered.clone(),
            stragglers: self.stragglers.clone(),
            aggregate: self.aggregate,
        }
    }
}

/// The coordinator's durable state (serde; [`CoordinatorState::encode`] is postcard).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CoordinatorState {
    /// The run.
    pub run: RunId,
    /// The last committed round.
    pub committed: Option<Round>,
    /// The id the next new name gets (ids are never reused).
    pub next_id: MemberId,
    /// Every name that ever joined, with its id, ascending by id.
    pub members: Vec<(MemberId, String)>,
    /// The members of the last round (a restart waits a while for them).
    pub last_round_members: Vec<MemberId>,
    /// The most recent commits, ascending and contiguous, the last one `committed`.
    pub commits: Vec<CommitRecord>,
    /// Observed round durations.
    pub deadline: DeadlineStats,
    /// The run's signature, once configured or adopted (see
    /// [`Coordinator::signature`](super::Coordinator::signature)).
    pub signature: Option<RunSignature>,
}

/// The state as saved before it held the run's signature (the same fields, in order).
#[derive(Deserialize)]
struct StateWithoutSignature {
    run: RunId,
    committed: Option<Round>,
    next_id: MemberId,
    members: Vec<(MemberId, String)>,
    last_round_members: Vec<MemberId>,
    commits: Vec<CommitRecord>,
    deadline: DeadlineStats,
}

impl CoordinatorState {
    /// The postcard encoding.
    pub fn encode(&self) -> Result<Vec<u8>, ProtocolError> {
        postcard::to_allocvec(self).map_err(ProtocolError::Encode)
    }

    /// Decodes [`CoordinatorState::encode`]'s output; trailing bytes are an error. A state
    /// saved by an older build, without the signature field, decodes with none (postcard
    /// has no optional trailing fields, so that layout is tried when this one fails).
    pub fn decode(bytes: &[u8]) -> Result<Self, ProtocolError> {
        match decode_exact::<CoordinatorState>(bytes) {
            Ok(state) => Ok(state),
            Err(error) => match decode_exact::<StateWithoutSignature>(bytes) {
                Ok(old) => Ok(CoordinatorState {
                    run: old.run,
                    committed: old.committed,
                    next_id: old.next_id,
                    members: old.members,
                    last_round_members: old.last_round_members,
                    commits: old.commits,
                    deadline: old.deadline,
                    signature: None,
                }),
                // The current layout's error says what is wrong with the bytes.
                Err(_) => Err(error),
            },
        }
    }

    fn validate(&self, config: &CoordinatorConfig) -> Result<(), ProtocolError> {
        let bad = |what: &str| Err(ProtocolError::BadState(what.to_string()));
        if self.run != config.run {
            return Err(ProtocolError::RunMismatch { expected: config.run, found: self.run });
        }
        if !strictly_ascending(self.members.iter().map(|(id, _)| *id)) {
            return bad("member ids are not strictly ascending");
        }
        if self.members.iter().any(|(id, _)| *id >= self.next_id) {
            return bad("a member id is not below next_id");
        }
        let names: BTreeSet<&str> = self.members.iter().map(|(_, n)| n.as_str()).collect();
        if names.len() != self.members.len() || !names.iter().all(|n| valid_name(n)) {
            return bad("member names are not unique and valid");
        }
        let known = |id: &MemberId| self.members.binary_search_by_key(id, |(m, _)| *m).is_ok();
        if !strictly_ascending(self.last_round_members.iter().copied())
            || !self.last_round_members.iter().all(known)
        {
            return bad("last round members are not known members in ascending order");
        }
        let mut expected = self.commits.first().map(|c| c.round);
        for commit in &self.commits {
            if Some(commit.round) != expected {
                return bad("commits are not contiguous");
            }
            expected = commit.round.checked_add(1);
            if !strictly_ascending(commit.delivered.iter().map(|d| d.member))
                || !commit.delivered.iter().all(|d| known(&d.member))
                || !strictly_ascending(commit.stragglers.iter().copied())
            {
                return bad("a commit's member lists are invalid");
            }
        }
        if self.commits.last().map(|c| c.round) != self.committed {
            return bad("the last commit is not the committed round");
        }
        if self.deadline.recent_ms.len() > crate::protocol::deadline::MAX_WINDOW {
            return bad("too many deadline samples");
        }
        if self.signature.as_ref().is_some_and(|s| !s.within_limits()) {
            return bad("the run signature exceeds its limits");
        }
        Ok(())
    }
}

fn decode_exact<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<T, ProtocolError> {
    let (state, rest) = postcard::take_from_bytes(bytes).map_err(ProtocolError::Decode)?;
    if !rest.is_empty() {
        return Err(ProtocolError::TrailingBytes(rest.len()));
    }
    Ok(state)
}

impl Coordinator {
    /// The state to save (after every [`Event::RoundCommitted`](super::Event::RoundCommitted)
    /// and [`Event::SignatureAdopted`](super::Event::SignatureAdopted)).
    pub fn persisted(&self) -> CoordinatorState {
        let last_round_members = self
            .members
            .iter()
            .filter(|(_, m)| m.conn.is_some() && m.phase == Phase::Live)
            .map(|(&id, _)| id)
            .collect();
        CoordinatorState {
            run: self.config.run,
            committed: self.committed,
            next_id: self.next_id,
            members: self.members.iter().map(|(&id, m)| (id, m.name.clone())).collect(),
            last_round_members,
            commits: self.commits.iter().cloned().collect(),
            deadline: self.deadline_stats.clone(),
            signature: self.signature.clone(),
        }
    }

    /// A coordinator that continues the run `state` was saved from. No member is connected;
    /// the next round opens once the last round's members are back (or the grace passed).
    pub fn restore(
        config: CoordinatorConfig,
        state: CoordinatorState,
        now: Instant,
    ) -> Result<Self, ProtocolError> {
        config.validate()?;
        state.validate(&config)?;
        let mut coordinator = Self::empty(config);
        for (id, name) in state.members {
            coordinator.names.insert(name.clone(), id);
            coordinator.members.insert(
                id,
                Member {
                    name,
                    peer: PeerInfo::default(),
                    conn: None,
                    phase: Phase::Live,
                    last_applied: None,
                    relayed_state: false,
                },
            );
        }
        let keep = usize::try_from(coordinator.config.keep_rounds).unwrap_or(usize::MAX);
        let skip = state.commits.len().saturating_sub(keep);
        coordinator.commits = state.commits.into_iter().skip(skip).collect::<VecDeque<_>>();
        coordinator.next_id = state.next_id;
        coordinator.committed = state.committed;
        coordinator.deadline_stats = state.deadline;
        // A configured signature is the operator's word and wins over the saved one.
        let saved = state.signature.filter(|s| !s.is_empty());
        match (&coordinator.signature, saved) {
            (Some(configured), Some(saved)) if *configured != saved => {
                let differences = saved.differences(configured);
                warn!(?differences, "the configured run signature replaces the saved one");
            }
            (None, saved) => coordinator.signature = saved,
            _ => {}
        }
        coordinator.gate = Some(Gate {
            until: now + coordinator.config.rejoin_grace,
            expected: state.last_round_members,
        });
        info!(committed = ?coordinator.committed, members = coordinator.members.len(), "coordinator restored");
        Ok(coordinator)
    }
}
