//! The coordinator's configuration.

use std::time::Duration;

use crate::ids::RunId;
use crate::protocol::deadline::DeadlinePolicy;
use crate::protocol::{
    ProtocolError, RunSignature, Topology, MAX_SIGNATURE_BYTES, MAX_SIGNATURE_ENTRIES, MAX_TIMER,
};

/// What the coordinator needs to know about its run.
#[derive(Debug, Clone, PartialEq)]
pub struct CoordinatorConfig {
    /// The run (checked against persisted state on restore).
    pub run: RunId,
    /// How payloads travel.
    pub topology: Topology,
    /// Members needed before a round opens: round 0 waits for them, and rounds pause while
    /// fewer are connected. By default 1.
    pub min_members: usize,
    /// Live members needed to open a round once a round has committed. `None`: the same as
    /// `min_members`. `Some(1)`: a run that lost members goes on with whoever is left (and
    /// takes the others back as they return) instead of pausing.
    pub min_live: Option<usize>,
    /// The most members (distinct names) the run admits over its lifetime. By default 1024.
    pub max_members: usize,
    /// Round deadlines. By default adaptive (see [`AdaptiveDeadline`](crate::protocol::AdaptiveDeadline)).
    pub deadline: DeadlinePolicy,
    /// Committed rounds remembered for catch-up by replay (and, in Relay, whose payloads are
    /// kept to serve fetches). By default 8.
    pub keep_rounds: u64,
    /// The largest payload accepted, in bytes. By default 1 GiB.
    pub max_payload: usize,
    /// The largest state snapshot accepted, in bytes. By default 16 GiB.
    pub max_state: usize,
    /// Members a newcomer takes its state from at once, in chunks, directly (see
    /// [`ToWorker::StateOffer`](crate::protocol::ToWorker::StateOffer)). 0: every state is
    /// relayed whole through the coordinator, from one member. By default 4.
    pub state_donors: usize,
    /// How long a member asked for a snapshot has before the next one is asked. By default
    /// 5 minutes (a snapshot waits for the member to apply the round, then uploads).
    pub snapshot_timeout: Duration,
    /// After a restore, how long the first round waits for every member of the last round to
    /// rejoin (it opens earlier once all are back, and never before `min_members`).
    /// By default 30 s.
    pub rejoin_grace: Duration,
    /// The run's signature: what every worker must train (see
    /// [`RunSignature`]). `None` (the default; an empty one counts the same): the first
    /// admitted worker with a non-empty signature sets it. Where set it also replaces a
    /// restored state's.
    pub signature: Option<RunSignature>,
    /// The run's settings, handed to every worker in its welcome (a worker that follows
    /// them needs no flags of its own); at most
    /// [`MAX_SETTINGS_LEN`](crate::protocol::MAX_SETTINGS_LEN) bytes. The application
    /// writes and reads them; the protocol only carries them. `None`: a worker that asks
    /// for them is refused ([`RefuseReason::NoSettings`](crate::protocol::RefuseReason)).
    pub settings: Option<String>,
}

impl CoordinatorConfig {
    /// The defaults for `run` and `topology`.
    pub fn new(run: RunId, topology: Topology) -> Self {
        CoordinatorConfig {
            run,
            topology,
            min_members: 1,
            min_live: None,
            max_members: 1024,
            deadline: DeadlinePolicy::default(),
            keep_rounds: 8,
            max_payload: 1 << 30,
            max_state: 16 << 30,
            state_donors: 4,
            snapshot_timeout: Duration::from_secs(300),
            rejoin_grace: Duration::from_secs(30),
            signature: None,
            settings: None,
        }
    }

    /// Checks the values are usable.
    pub fn validate(&self) -> Result<(), ProtocolError> {
        let bad = |what: &str| Err(ProtocolError::Config(format!("coordinator: {what}")));
        self.deadline.validate()?;
        if self.deadline.longest() > MAX_TIMER
            || self.snapshot_timeout > MAX_TIMER
            || self.rejoin_grace > MAX_TIMER
        {
            return bad("durations must be at most 30 days");
        }
        if self.min_members == 0 {
            return bad("min_members must be at least 1");
        }
        if self.max_members < self.min_members {
            return bad("max_members is below min_members");
        }
        if self.min_live == Some(0) {
            return bad("min_live must be at least 1");
        }
        if self.keep_rounds == 0 {
            return bad("keep_rounds must be at least 1");
        }
        if self.snapshot_timeout.is_zero() {
            return bad("snapshot_timeout must be positive");
        }
        if self.signature.as_ref().is_some_and(|s| !s.within_limits()) {
            return bad(&format!(
                "signature exceeds {MAX_SIGNATURE_ENTRIES} facts or {MAX_SIGNATURE_BYTES} bytes"
            ));
        }
        if self.settings.as_ref().is_some_and(|s| s.len() > crate::protocol::MAX_SETTINGS_LEN) {
            return bad(&format!("settings exceed {} bytes", crate::protocol::MAX_SETTINGS_LEN));
        }
        Ok(())
    }

    /// The configured run signature, `None` when unset or empty.
    pub(crate) fn run_signature(&self) -> Option<RunSignature> {
        self.signature.clone().filter(|s| !s.is_empty())
    }

    /// Live members needed to open the next round: `min_members` before anything
    /// committed, then `min_live` where set.
    pub fn quorum(&self, started: bool) -> usize {
        match (started, self.min_live) {
            (true, Some(n)) => n,
            _ => self.min_members,
        }
    }
}
