//! The sans-IO round protocol: membership, rounds, commits and catch-up as two state machines,
//! [`Coordinator`] and [`WorkerProto`], in the style of `quinn-proto`.
//!
//! Neither reads a clock, opens a socket or spawns a task. Every input takes `now`; outputs
//! are polled: `poll_transmit` (what to send), `poll_event` (what happened), `poll_timeout`
//! (when to call `handle_timeout`). A driver (QUIC, the simulator, the tests) moves frames:
//! control messages ([`messages`]) in `Control` frames, payloads in `Payload` frames and
//! state snapshots in `State` frames, whose headers carry the round and the author. Frames
//! are authenticated by the wire layer, so whatever reaches these machines comes from a
//! holder of the join secret; everything else about it is checked, and bad input is
//! rejected with an event, never a panic.
//!
//! # Peers
//! The coordinator sees connections ([`ConnId`], chosen by the driver) and, after
//! admission, members ([`MemberId`]). A member's id is tied to its name (its stable
//! identity) for the whole run, across reconnects and coordinator restarts, and never given
//! to another name. Workers address [`Dest::Coordinator`] or [`Dest::Member`]; how to reach
//! a member is an opaque [`PeerInfo`] the worker's driver declares at join and the
//! coordinator relays in `Members` lists.
//!
//! # Rounds
//! Round 0 opens when `min_members` members are live. `RoundOpen { round, members }` goes to
//! each member of the round, which publishes its payload:
//! - [`Topology::Relay`]: uploaded once to the coordinator, which forwards it to every other
//!   member of the round at once and keeps the last `keep_rounds` rounds' payloads to serve
//!   fetches;
//! - [`Topology::AllGather`]: sent directly to every other member, plus `Delivered { round,
//!   digest }` to the coordinator, which never holds payloads.
//!
//! The round closes when every member delivered, or at its deadline. The coordinator then
//! commits the set that delivered, as `(member, digest)` pairs ascending by member, and
//! immediately opens the next round with the members live at that boundary: newcomers join
//! here, disconnected members drop out (one that reconnects during a round it belongs to
//! may still deliver). A round nobody delivered to commits empty and everyone proceeds.
//! Rounds pause while fewer than `min_members` are live.
//!
//! Deadlines ([`DeadlinePolicy`]) are fixed, or by default adaptive:
//! `clamp(1.5 × median of the last 16 round durations, 5 s, 1 h)`, measured from opening to
//! last delivery, with 10 minutes until 3 rounds were observed.
//!
//! # Applying a commit
//! A worker applies commits in round order and emits [`WorkerEvent::RoundReady`] with the
//! committed payloads in member-id order, its own included, once it holds every one whose
//! digest matches the commit. It fetches a missing or mismatching one after `fetch_grace`
//! (it may still be on its way): in Relay from the coordinator; in AllGather from the
//! payload's author first, then from the other committed members in ascending order, since
//! every member keeps the payloads of its last `keep_rounds` applied rounds. When nobody
//! has it the worker asks for state (below).
//!
//! Duplicates: before a commit the first copy of a member's payload for a round wins, at the
//! coordinator and at each worker; later copies are rejected. The commit's digest decides in
//! the end: a held copy that does not match (a member that restarted and published again)
//! is dropped and the committed bytes fetched, so every worker applies the same bytes.
//! Payloads for applied rounds, from members outside a round or a commit, from a peer that
//! is not their author, or over the size limit are rejected without touching the round.
//!
//! # Catching up
//! A worker joins with the last round it applied. If it is current it is live at once. If
//! it is behind and the commits after its round are still remembered, they are replayed
//! to it (it fetches the payloads it lacks). Otherwise (or for a fresh worker after a
//! commit: initial states are not assumed to agree) it needs a snapshot: the coordinator
//! asks the lowest-id live member with `SnapshotRequest { round }`; that member's worker
//! emits [`WorkerEvent::SnapshotRequested`] once it applied the round and its driver uploads
//! its state with [`WorkerProto::provide_state`]. The coordinator caches the latest
//! snapshot, relays it with the commits after it, and the newcomer joins rounds from the
//! next boundary. Nobody waits for it: rounds keep committing meanwhile. A worker that gets
//! stuck later (commits it cannot obtain payloads for) asks for state with `StateWanted`.
//!
//! # Restarts
//! The coordinator's [`CoordinatorState`] (ids and names, recent commits, deadline
//! statistics) is saved after each commit. A restored coordinator waits for the workers to
//! join again, gives them their ids back and opens the round after the last commit; a
//! worker keeps its own payload until the round commits and sends it again on every
//! `RoundOpen` for it.

mod coordinator;
mod deadline;
mod error;
pub mod messages;
mod types;
mod worker;

#[cfg(test)]
mod tests;

use std::time::Duration;

pub use coordinator::{
    CommitRecord, Coordinator, CoordinatorConfig, CoordinatorState, Event as CoordinatorEvent,
    Transmit as CoordinatorTransmit,
};
pub use deadline::{AdaptiveDeadline, DeadlinePolicy, DeadlineStats};
pub use error::ProtocolError;
pub use messages::{PeerMessage, RefuseReason, ToCoordinator, ToWorker};
pub use types::{
    ConnId, Delivery, Dest, Digest, MemberInfo, PeerInfo, PeerTraffic, RejectReason, RoundStats,
    Topology, MAX_NAME_LEN, MAX_PEER_INFO_LEN,
};
pub use worker::{Event as WorkerEvent, Transmit as WorkerTransmit, WorkerConfig, WorkerProto};

pub use crate::ids::{MemberId, Round};

/// The longest duration any protocol timer accepts (30 days): keeps `now + duration` finite.
pub const MAX_TIMER: Duration = Duration::from_secs(30 * 24 * 3600);
