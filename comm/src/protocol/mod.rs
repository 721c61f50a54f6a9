//! The sans-IO round protocol: membership, rounds, commits and catch-up as two state machines,
//! [`Coordinator`] and [`WorkerProto`], in the style of `quinn-proto`.
//!
//! Neither reads a clock, opens a socket or spawns a task. Every input takes `now`; outputs
//! are polled: `poll_transmit` (what to send), `poll_event` (what happened), `poll_timeout`
//! (when to call `handle_timeout`). A driver (QUIC, the simulator, the tests) moves frames:
//! control messages ([`messages`]) in `Control` frames, payloads in `Payload` frames and
//! state snapshots in `State` frames (whole) or `StateChunk` frames (chunk by chunk, between
//! members), whose headers carry the round and the author. Frames
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
//! # Run signature
//! A `Join` carries the worker's [`RunSignature`]: what it trains, as `key = value` facts
//! (model shapes, algorithm, settings). The run's signature is
//! [`CoordinatorConfig::signature`] where set, else the first admitted joiner's; it is part
//! of the persisted state, so a restarted coordinator keeps it. A join whose non-empty
//! signature differs is refused with [`RefuseReason::SignatureMismatch`], which names every
//! difference (up to [`MAX_LISTED_DIFFERENCES`]); an empty one (a test double, a tool) is
//! not checked.
//!
//! # Rounds
//! Round 0 opens when `min_members` members are live. `RoundOpen { round, members }` goes to
//! each member of the round, which publishes its payload:
//! - [`Topology::Relay`]: uploaded once to the coordinator, which forwards it to every other
//!   member of the round at once and keeps the last `keep_rounds` rounds' payloads to serve
//!   fetches;
//! - [`Topology::AllGather`]: sent directly to every other member, plus `Delivered { round,
//!   digest }` to the coordinator, which never holds payloads;
//! - [`Topology::Ring`]: reduced around the ring of the round's members (ascending id) with
//!   a [`RingReducer`] the application supplies ([`WorkerProto::with_reducer`]): reduce-scatter
//!   then all-gather of `Segment` frames to the next member, so each member sends
//!   `2(n − 1)/n ×` its payload ([`RingReducer`] gives the schedule). Every
//!   member ends with the same aggregate bytes (the sum over the members) and reports its
//!   digest as `Delivered`; when all agree the round commits the aggregate
//!   (`Commit { aggregate: Some(digest), .. }`, `delivered` naming the members) and workers
//!   get [`WorkerEvent::AggregateReady`] instead of `RoundReady`.
//!
//! A ring that cannot finish does not stall the round: a member that disconnects before it
//! finished, a member that reports `RingFailed` (its predecessor sent a segment the reducer
//! refused or an oversized one; the rejection names that sender), digests that disagree,
//! or the deadline make the coordinator send `Fallback { round }`. Members then upload their
//! own payloads (kept until the commit) as in Relay, the coordinator forwards them, and the
//! round commits per member when every connected member uploaded, or one round deadline
//! after the fallback. Segments are accepted only from the ring predecessor, for the
//! round's ring, at a slot not seen before and within the size limit; ones that arrive
//! before their round opened here are buffered (a ring's worth, for the next two rounds).
//! A reopened round (after a reconnect or a coordinator restart) whose ring already ran
//! here is not run again: the member reports its outcome again.
//!
//! The round closes when every member delivered, or at its deadline. The coordinator then
//! commits the set that delivered, as `(member, digest)` pairs ascending by member, and
//! immediately opens the next round with the members live at that boundary: newcomers join
//! here, disconnected members drop out (one that reconnects during a round it belongs to
//! may still deliver). A round nobody delivered to commits empty and everyone proceeds.
//! Rounds pause while fewer than `min_members` are live (after the first commit, fewer than
//! `min_live` where that is set).
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
//! every member keeps the payloads of its last `keep_rounds` applied rounds (and the
//! coordinator holds none). A ring aggregate is fetched from the commit's members in
//! ascending order (each keeps its last `keep_rounds` aggregates; the coordinator holds
//! none), named by the commit's first member; a ring round that fell back is fetched from
//! the coordinator as in Relay. When nobody has it the worker asks for state (below). A worker
//! that sees a gap in the commits (one went missing) joins again, which replays them. Fetches
//! the coordinator was asked for when its connection was lost are asked again once the worker
//! is welcomed back (after `fetch_grace`): the requests died with the connection.
//!
//! Duplicates: before a commit the first copy of a member's payload for a round wins, at the
//! coordinator and at each worker; later copies are rejected. The commit's digest decides in
//! the end: a held copy that does not match (a member that restarted and published again)
//! is dropped and the committed bytes fetched, so every worker applies the same bytes.
//! Payloads for applied rounds, from members outside a round or a commit, from a peer that
//! is not their author, or over the size limit are rejected without touching the round.
//!
//! # Members that cannot reach each other
//! Payloads (all-gather), segments (ring), fetches and state chunks go from member to
//! member. A driver that cannot reach a member (its dial fails: a firewall, NAT without
//! forwarding) hands those frames to the coordinator, which passes them on over the
//! member's own connection, naming the sender ([`Coordinator::handle_forward`]); the
//! receiving worker handles them as if they came directly. Per pair: members that reach
//! each other keep their direct links, and the coordinator holds nothing.
//!
//! # Catching up
//! A worker joins with the last round it applied. If it is current it is live at once. If
//! it is behind and the commits after its round are still remembered, they are replayed
//! to it (it fetches the payloads it lacks). Otherwise (or for a fresh worker after a
//! commit: initial states are not assumed to agree) it needs a snapshot.
//!
//! Directly, from several members (the default, [`CoordinatorConfig::state_donors`] > 0):
//! the coordinator asks up to that many live members, the most current first (from joins,
//! state requests and the commits since a member was known current, then the lowest id), with
//! `SnapshotRequest { round, direct: true }`. Each member's worker emits
//! [`WorkerEvent::SnapshotRequested`] once it applied the round; its driver provides its
//! state with [`WorkerProto::provide_state`], which the worker keeps (for `keep_rounds`
//! rounds) and describes to the coordinator as a [`StateManifest`]: chunks of
//! [`WorkerConfig::state_chunk`] bytes, each with its digest. Once every donor answered, or
//! two seconds after the first, the coordinator sends the newcomer a `StateOffer` (the
//! donors whose state has the first answer's round and length, with their digests) and the
//! commits after that round, and counts it live. The newcomer fetches chunks from all
//! donors at once (`FetchChunk`, answered by `StateChunk` frames), up to 16 in flight per
//! donor, and checks each against the serving donor's digest. It takes one consistent
//! state: chunks all donors agree on (replicated state) from any of them, the others
//! (per-member state such as inner optimizer moments) from the first donor to deliver (the
//! fastest path). A donor that leaves, answers `ChunkUnavailable`, sends a wrong chunk or
//! stays silent for `fetch_timeout` is dropped and its chunks go to the others; with no
//! donor left the worker asks again, keeping the chunks it verified for an offer of the same
//! round. A worker that received no chunk at all (it cannot reach the members: a firewall,
//! NAT) asks for the state relayed instead.
//!
//! Relayed (with `state_donors` = 0, or for a worker that asked `StateWanted { direct:
//! false }`): the coordinator asks one live member, the most current, with
//! `SnapshotRequest { round, direct: false }`; it uploads its state whole (a `State` frame
//! whose header names the round); the coordinator caches the latest snapshot, relays it
//! with the commits after it. A slow or vanished provider is replaced after
//! `snapshot_timeout` by the next live member.
//!
//! Either way the newcomer replays those commits and joins rounds from the next boundary (a
//! member of the open round, back from a crash during it, is sent the `RoundOpen` again and
//! may still deliver). Nobody waits for it: rounds keep committing meanwhile. A worker that
//! gets stuck later (commits it cannot obtain payloads for) asks for state with
//! `StateWanted`.
//!
//! # Restarts
//! The coordinator's [`CoordinatorState`] (ids and names, recent commits, deadline
//! statistics, the run's signature) is saved after each commit, and when the run's
//! signature is adopted from its first joiner ([`CoordinatorEvent::SignatureAdopted`]). A restored coordinator waits for the workers to
//! join again, gives them their ids back and opens the round after the last commit (once
//! the last round's members are back, or after `rejoin_grace`); a worker keeps its own
//! payload until the round commits and sends it again on every `RoundOpen` for it. A Relay
//! coordinator that restarted holds no payloads: when one is fetched it asks the author to
//! upload it again (`Reupload`), and takes a payload of a committed round only as the
//! answer to such a request. An author that restarted too answers `NotHeld` (or uploads
//! other bytes: it published the round again); the coordinator then answers that fetch, and
//! every later one of that payload, with `Unavailable` at once, so the fetching worker asks
//! for state while live members can still provide it. The coordinator takes a committed
//! payload only when asked for because frames carry no nonce: a captured payload frame of a
//! committed round, replayed on a fresh connection after the restart, is rejected as
//! `Late` like any other. The driver saves the state on
//! [`CoordinatorEvent::RoundCommitted`], before it sends that round's commits; workers that
//! claim a round the restored coordinator never committed are refused. (The node layer
//! derives QUIC's stateless-reset and connection-id keys from the coordinator's identity,
//! so its workers learn of the restart from their next packet, well within
//! `rejoin_grace`.)
//!
//! # Limits
//! Names are at most [`MAX_NAME_LEN`] bytes, peer infos [`MAX_PEER_INFO_LEN`], signatures
//! [`MAX_SIGNATURE_ENTRIES`] facts and [`MAX_SIGNATURE_BYTES`] bytes, so a `Join` body is
//! at most [`MAX_JOIN_LEN`] bytes (what a driver lets a connection send before it joined);
//! payloads and
//! state blobs have configured maxima at both ends. Timers accept at most [`MAX_TIMER`].
//! If every connected member needs state, nobody can provide it and they wait (logged).

//! # Example
//! One coordinator and one worker wired by hand, every `now` the same (a driver moves these
//! over QUIC and feeds real time):
//! ```
//! use std::time::Instant;
//!
//! use bytes::Bytes;
//! use meridian_comm::ids::RunId;
//! use meridian_comm::protocol::*;
//!
//! let now = Instant::now();
//! let config = CoordinatorConfig::new(RunId([0; 16]), Topology::Relay);
//! let mut coordinator = Coordinator::new(config, now)?;
//! let mut worker = WorkerProto::new(WorkerConfig::new("w0"), None)?;
//! let conn = ConnId(1); // the driver's name for the worker's connection
//! worker.handle_connected(now); // sends Join
//! worker.publish(now, 0, Bytes::from_static(b"round 0 payload"))?; // sent once round 0 opens
//! let mut ready = None;
//! for _ in 0..10 {
//!     while let Some(t) = worker.poll_transmit() {
//!         match t {
//!             WorkerTransmit::Control { msg } => coordinator.handle_message(now, conn, msg),
//!             WorkerTransmit::Payload { round, from_member, bytes, .. } => {
//!                 coordinator.handle_payload(now, conn, round, from_member, bytes)
//!             }
//!             _ => {}
//!         }
//!     }
//!     while let Some(t) = coordinator.poll_transmit() {
//!         match t {
//!             CoordinatorTransmit::Control { msg, .. } => worker.handle_coordinator(now, msg),
//!             CoordinatorTransmit::Payload { round, from_member, bytes, .. } => {
//!                 worker.handle_payload(now, Dest::Coordinator, round, from_member, bytes)
//!             }
//!             CoordinatorTransmit::State { round, bytes, .. } => {
//!                 worker.handle_state(now, round, bytes)
//!             }
//!             // Frames between members, for one that could not reach another (none here).
//!             CoordinatorTransmit::Forwarded { .. } => {}
//!         }
//!     }
//!     while let Some(event) = worker.poll_event() {
//!         if let WorkerEvent::RoundReady { round, payloads, .. } = event {
//!             ready = Some((round, payloads));
//!         }
//!     }
//! }
//! assert_eq!(ready, Some((0, vec![(0, Bytes::from_static(b"round 0 payload"))])));
//! # Ok::<(), ProtocolError>(())
//! ```

mod coordinator;
mod deadline;
mod error;
pub mod messages;
pub(crate) mod ring;
mod signature;
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
pub use messages::{
    Donor, PeerMessage, RefuseReason, StateManifest, ToCoordinator, ToWorker, MAX_JOIN_LEN,
    MAX_SETTINGS_LEN,
};
pub use ring::{ReduceError, RingReducer};
pub use signature::{
    RunSignature, MAX_DIFFERENCE_LINE, MAX_LISTED_DIFFERENCES, MAX_SIGNATURE_BYTES,
    MAX_SIGNATURE_ENTRIES, OPTIONAL_KIND, OVERFLOW_KEY,
};
pub use types::{
    ConnId, Delivery, Dest, Digest, MemberInfo, PeerInfo, PeerTraffic, RejectReason, RoundStats,
    Topology, MAX_NAME_LEN, MAX_PEER_INFO_LEN,
};
pub use worker::{
    Event as WorkerEvent, Transmit as WorkerTransmit, WorkerConfig, WorkerProto, PAYLOAD_HEAD_LEN,
};

pub use crate::ids::{MemberId, Round};

/// The longest duration any protocol timer accepts (30 days): keeps `now + duration` finite.
pub const MAX_TIMER: Duration = Duration::from_secs(30 * 24 * 3600);
