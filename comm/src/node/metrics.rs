//! The coordinator's live metrics (`--metrics-listen`): what its events say about rounds,
//! bytes per member and direction, stragglers, rejections, catch-ups, and each member's
//! round trip. The node feeds every event it reports through
//! [`CoordinatorMetrics::observe`]; the registry is served by
//! [`MetricsServer`](crate::metrics::MetricsServer).

use std::collections::BTreeSet;
use std::sync::atomic::AtomicU64;
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

use super::CoordinatorNodeEvent;
use crate::ids::MemberId;
use crate::protocol::{CoordinatorEvent, Dest};

/// A peer of the node: `coordinator` or `member N`, as in a worker's `worker.json`.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PeerLabel {
    /// The peer.
    pub peer: String,
}

/// A peer and a direction (`sent` or `received`).
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PeerDirection {
    /// The peer.
    pub peer: String,
    /// `sent` (to the peer) or `received` (from it).
    pub direction: &'static str,
}

/// Why input was turned away.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabel {
    /// The reason, in snake case.
    pub reason: String,
}

/// The label of a peer.
pub fn peer_label(peer: Dest) -> String {
    match peer {
        Dest::Coordinator => "coordinator".into(),
        Dest::Member(m) => format!("member {m}"),
    }
}

/// `WrongRound` → `wrong_round`, from a `Debug` rendering whose fields (if any) are dropped.
pub fn snake_case(debug: &str) -> String {
    let name = debug.split([' ', '{', '(']).next().unwrap_or_default();
    let mut out = String::with_capacity(name.len() + 4);
    for (i, c) in name.chars().enumerate() {
        if c.is_ascii_uppercase() {
            if i > 0 {
                out.push('_');
            }
            out.push(c.to_ascii_lowercase());
        } else {
            out.push(c);
        }
    }
    out
}

/// Round durations, from 50 ms to about 7 minutes: loopback to a slow cross-continent round.
pub fn round_buckets() -> impl Iterator<Item = f64> {
    exponential_buckets(0.05, 2.0, 14)
}

/// The coordinator's metrics.
#[derive(Debug)]
pub(crate) struct CoordinatorMetrics {
    rounds: Counter,
    round_duration: Histogram,
    last_round_duration: Gauge<f64, AtomicU64>,
    last_round_delivered: Gauge,
    stragglers: Family<PeerLabel, Counter>,
    bytes: Family<PeerDirection, Counter>,
    rejections: Family<ReasonLabel, Counter>,
    rtt: Family<PeerLabel, Gauge<f64, AtomicU64>>,
    members: Gauge,
    joins: Counter,
    snapshot_requests: Counter,
    state_transfers: Counter,
    state_bytes: Counter,
    live: Mutex<BTreeSet<MemberId>>,
}

impl CoordinatorMetrics {
    /// The metrics, and the registry that serves them.
    pub(crate) fn new() -> (Self, Registry) {
        let m = CoordinatorMetrics {
            rounds: Counter::default(),
            round_duration: Histogram::new(round_buckets()),
            last_round_duration: Gauge::default(),
            last_round_delivered: Gauge::default(),
            stragglers: Family::default(),
            bytes: Family::default(),
            rejections: Family::default(),
            rtt: Family::default(),
            members: Gauge::default(),
            joins: Counter::default(),
            snapshot_requests: Counter::default(),
            state_transfers: Counter::default(),
            state_bytes: Counter::default(),
            live: Mutex::default(),
        };
        let mut r = Registry::default();
        r.register(
            "meridian_rounds_committed",
            "Rounds this coordinator committed since it started",
            m.rounds.clone(),
        );
        r.register(
            "meridian_round_duration_seconds",
            "Rounds from opening to commit",
            m.round_duration.clone(),
        );
        r.register(
            "meridian_round_last_duration_seconds",
            "The last committed round, from opening to commit",
            m.last_round_duration.clone(),
        );
        r.register(
            "meridian_round_last_delivered_members",
            "Members whose payload the last round committed",
            m.last_round_delivered.clone(),
        );
        r.register(
            "meridian_stragglers",
            "Rounds a member belonged to but did not deliver by the deadline",
            m.stragglers.clone(),
        );
        r.register(
            "meridian_peer_bytes",
            "Payload and state bytes moved with each member (frame bodies, counted per \
             committed round), by direction",
            m.bytes.clone(),
        );
        r.register(
            "meridian_rejections",
            "Input turned away, by reason: protocol rejections (wrong_round, duplicate, ...), \
             refused joins (join_*), connections refused on their first frame (refused_*), \
             bad frames of admitted connections (bad_frame), pre-authentication limits \
             (pre_auth_limit)",
            m.rejections.clone(),
        );
        r.register(
            "meridian_peer_rtt_seconds",
            "QUIC's round-trip estimate to each connected member, at the last commit",
            m.rtt.clone(),
        );
        r.register("meridian_members_connected", "Members connected now", m.members.clone());
        r.register("meridian_joins", "Joins admitted (rejoins included)", m.joins.clone());
        r.register(
            "meridian_snapshot_requests",
            "Catch-ups: members asked for their state to serve a member that needs it",
            m.snapshot_requests.clone(),
        );
        r.register(
            "meridian_state_transfers",
            "Catch-ups: states relayed to, or offered for fetching from members by, a member that needed one",
            m.state_transfers.clone(),
        );
        r.register(
            "meridian_state_transfer_bytes",
            "Bytes of the states relayed or offered to members that needed one",
            m.state_bytes.clone(),
        );
        (m, r)
    }

    /// Records what `event` says.
    pub(crate) fn observe(&self, event: &CoordinatorNodeEvent) {
        let reject = |reason: String| self.rejections.get_or_create(&ReasonLabel { reason }).inc();
        match event {
            CoordinatorNodeEvent::Protocol(event) => self.protocol(event),
            CoordinatorNodeEvent::PreAuthLimit { .. } => {
                reject("pre_auth_limit".into());
            }
            CoordinatorNodeEvent::PeerRefused { code, .. } => {
                reject(format!("refused_{}", snake_case(&format!("{code:?}"))));
            }
            CoordinatorNodeEvent::FrameRejected { .. } => {
                reject("bad_frame".into());
            }
            CoordinatorNodeEvent::Failed { .. } => {}
        }
    }

    fn protocol(&self, event: &CoordinatorEvent) {
        match event {
            CoordinatorEvent::RoundCommitted { stats, .. } => {
                self.rounds.inc();
                if let Some(d) = stats.duration {
                    self.round_duration.observe(d.as_secs_f64());
                    self.last_round_duration.set(d.as_secs_f64());
                }
                self.last_round_delivered.set(stats.delivered.len() as i64);
                for &m in &stats.stragglers {
                    self.stragglers
                        .get_or_create(&PeerLabel { peer: peer_label(Dest::Member(m)) })
                        .inc();
                }
                for t in &stats.traffic {
                    let peer = peer_label(t.peer);
                    let count = |direction, bytes| {
                        let label = PeerDirection { peer: peer.clone(), direction };
                        self.bytes.get_or_create(&label).inc_by(bytes);
                    };
                    count("received", t.received);
                    count("sent", t.sent);
                }
            }
            CoordinatorEvent::Joined { member, .. } => {
                self.joins.inc();
                self.set_live(|live| live.insert(*member));
            }
            CoordinatorEvent::Left { member, .. } => {
                self.set_live(|live| live.remove(member));
                // A member that is gone has no round trip; its series would stay frozen.
                self.rtt.remove(&PeerLabel { peer: peer_label(Dest::Member(*member)) });
            }
            CoordinatorEvent::Refused { reason, .. } => {
                let reason = format!("join_{}", snake_case(&format!("{reason:?}")));
                self.rejections.get_or_create(&ReasonLabel { reason }).inc();
            }
            CoordinatorEvent::Rejected { reason, .. } => {
                let reason = snake_case(&format!("{reason:?}"));
                self.rejections.get_or_create(&ReasonLabel { reason }).inc();
            }
            CoordinatorEvent::SnapshotRequested { .. } => {
                self.snapshot_requests.inc();
            }
            CoordinatorEvent::StateRelayed { len, .. } => {
                self.state_transfers.inc();
                self.state_bytes.inc_by(*len as u64);
            }
            CoordinatorEvent::StateOffered { len, .. } => {
                // The bytes go from the donors to the member, not through here.
                self.state_transfers.inc();
                self.state_bytes.inc_by(*len);
            }
            _ => {}
        }
    }

    fn set_live(&self, change: impl FnOnce(&mut BTreeSet<MemberId>) -> bool) {
        // Each update is one insert or remove, so a poisoned set is still consistent.
        let mut live = self.live.lock().unwrap_or_else(PoisonError::into_inner);
        change(&mut live);
        self.members.set(live.len() as i64);
    }

    /// `member`'s current round-trip estimate.
    pub(crate) fn rtt(&self, member: MemberId, rtt: Duration) {
        let label = PeerLabel { peer: peer_label(Dest::Member(member)) };
        self.rtt.get_or_create(&label).set(rtt.as_secs_f64());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::{PeerTraffic, RejectReason, RoundStats};
    use crate::quic::RefusalCode;

    fn committed(
        round: u64,
        stragglers: Vec<MemberId>,
        traffic: Vec<PeerTraffic>,
    ) -> CoordinatorNodeEvent {
        CoordinatorNodeEvent::Protocol(CoordinatorEvent::RoundCommitted {
            round,
            delivered: Vec::new(),
            aggregate: None,
            stats: RoundStats {
                round,
                members: vec![0, 1],
                delivered: vec![0],
                stragglers,
                duration: Some(Duration::from_millis(1500)),
                last_delivery: None,
                traffic,
            },
        })
    }

    #[test]
    fn events_become_counters_by_peer_direction_and_reason() {
        let (m, registry) = CoordinatorMetrics::new();
        let t = |peer, received, sent| PeerTraffic { peer: Dest::Member(peer), received, sent };
        m.observe(&committed(0, vec![1], vec![t(0, 100, 7), t(1, 0, 100)]));
        m.observe(&committed(1, vec![], vec![t(0, 50, 0)]));
        m.observe(&CoordinatorNodeEvent::Protocol(CoordinatorEvent::Rejected {
            conn: crate::protocol::ConnId(1),
            round: Some(3),
            reason: RejectReason::WrongRound,
        }));
        let peer = "127.0.0.1:9".parse().unwrap();
        m.observe(&CoordinatorNodeEvent::PeerRefused {
            peer,
            code: RefusalCode::WrongSecret,
            detail: String::new(),
        });
        m.observe(&CoordinatorNodeEvent::PreAuthLimit { peer, detail: String::new() });
        m.rtt(0, Duration::from_millis(250));
        let text = crate::metrics::render(&registry);
        for line in [
            "meridian_rounds_committed_total 2",
            r#"meridian_peer_bytes_total{peer="member 0",direction="received"} 150"#,
            r#"meridian_peer_bytes_total{peer="member 0",direction="sent"} 7"#,
            r#"meridian_peer_bytes_total{peer="member 1",direction="sent"} 100"#,
            r#"meridian_stragglers_total{peer="member 1"} 1"#,
            r#"meridian_rejections_total{reason="wrong_round"} 1"#,
            r#"meridian_rejections_total{reason="refused_wrong_secret"} 1"#,
            r#"meridian_rejections_total{reason="pre_auth_limit"} 1"#,
            r#"meridian_peer_rtt_seconds{peer="member 0"} 0.25"#,
            "meridian_round_last_duration_seconds 1.5",
            "meridian_round_duration_seconds_count 2",
        ] {
            assert!(text.lines().any(|l| l == line), "missing `{line}` in\n{text}");
        }
        assert!(text.contains("# HELP meridian_peer_bytes_total "), "{text}");
    }

    #[test]
    fn reasons_are_snake_case_without_fields() {
        assert_eq!(snake_case("WrongRound"), "wrong_round");
        assert_eq!(snake_case("SignatureMismatch { differences: [] }"), "signature_mismatch");
        assert_eq!(snake_case("Full"), "full");
    }
}
