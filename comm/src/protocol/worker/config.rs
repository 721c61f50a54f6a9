//! The worker's configuration.

use std::time::Duration;

use crate::protocol::coordinator::valid_name;
use crate::protocol::{
    PeerInfo, ProtocolError, RunSignature, MAX_PEER_INFO_LEN, MAX_SIGNATURE_BYTES,
    MAX_SIGNATURE_ENTRIES, MAX_TIMER,
};

/// The default [`WorkerConfig::state_chunk`]: 8 MiB, a few tens of milliseconds at 1 Gb/s,
/// so that a few in flight per donor fill a long path, and a lost donor costs little.
pub const DEFAULT_STATE_CHUNK: u32 = 8 << 20;

/// What a worker needs to know.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkerConfig {
    /// The worker's stable identity (1..=64 bytes, no control characters): the same name
    /// gets the same member id back after a restart.
    pub name: String,
    /// How other members reach this worker (AllGather), filled in by the driver.
    pub peer: PeerInfo,
    /// What this worker trains, sent in every join: the coordinator refuses it when it
    /// differs from the run's. Empty (the default): not checked.
    pub signature: RunSignature,
    /// Ask for the run's settings in the welcome: the worker builds what it trains from
    /// them, and its signature holds only what it reads (see `Join::follows`). Off by
    /// default.
    pub follows: bool,
    /// The largest payload accepted, in bytes. By default 1 GiB.
    pub max_payload: usize,
    /// The largest state snapshot accepted, in bytes. By default 16 GiB.
    pub max_state: usize,
    /// The largest state uploaded or taken whole, relayed by the coordinator in one frame;
    /// a larger one travels only in chunks between members. By default 16 GiB (a driver
    /// caps it to its largest frame).
    pub max_whole_state: usize,
    /// The chunk length this worker serves its state in, bytes: the unit a newcomer checks
    /// and fetches from one member. By default 8 MiB.
    pub state_chunk: u32,
    /// Applied rounds whose payloads stay held to serve other members' fetches. By default 8.
    pub keep_rounds: u64,
    /// How long after a commit a missing payload is waited for before it is fetched (it may
    /// still be on its way). By default 5 s.
    pub fetch_grace: Duration,
    /// How long a fetch (or a gap in the commits) waits for an answer before the next holder
    /// is asked (or the worker resynchronises). By default 60 s.
    pub fetch_timeout: Duration,
    /// How long a join waits for an answer before it is sent again. By default 30 s.
    pub join_timeout: Duration,
    /// How long the worker waits for a state snapshot before asking again. By default
    /// 10 minutes.
    pub state_timeout: Duration,
}

impl WorkerConfig {
    /// The defaults for a worker named `name`.
    pub fn new(name: impl Into<String>) -> Self {
        WorkerConfig {
            name: name.into(),
            peer: PeerInfo::default(),
            signature: RunSignature::default(),
            follows: false,
            max_payload: 1 << 30,
            max_state: 16 << 30,
            max_whole_state: 16 << 30,
            state_chunk: DEFAULT_STATE_CHUNK,
            keep_rounds: 8,
            fetch_grace: Duration::from_secs(5),
            fetch_timeout: Duration::from_secs(60),
            join_timeout: Duration::from_secs(30),
            state_timeout: Duration::from_secs(600),
        }
    }

    /// Checks the values are usable.
    pub fn validate(&self) -> Result<(), ProtocolError> {
        let bad = |what: &str| Err(ProtocolError::Config(format!("worker: {what}")));
        if !valid_name(&self.name) {
            return bad("name must be 1..=64 bytes without control characters");
        }
        if self.peer.0.len() > MAX_PEER_INFO_LEN {
            return bad("peer info exceeds 4096 bytes");
        }
        if !self.signature.within_limits() {
            return bad(&format!(
                "the run signature has {} facts and {} bytes; at most {MAX_SIGNATURE_ENTRIES} \
                 facts and {MAX_SIGNATURE_BYTES} bytes fit a join",
                self.signature.len(),
                self.signature.byte_len()
            ));
        }
        if self.state_chunk < 4096 {
            return bad("state_chunk must be at least 4096 bytes");
        }
        if self.keep_rounds == 0 {
            return bad("keep_rounds must be at least 1");
        }
        let timers = [self.fetch_grace, self.fetch_timeout, self.join_timeout, self.state_timeout];
        if timers.iter().any(|t| *t > MAX_TIMER) {
            return bad("durations must be at most 30 days");
        }
        if self.fetch_timeout.is_zero()
            || self.join_timeout.is_zero()
            || self.state_timeout.is_zero()
        {
            return bad("timeouts must be positive");
        }
        Ok(())
    }
}
