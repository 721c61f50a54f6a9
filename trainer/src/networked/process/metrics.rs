//! A worker's live metrics (`meridian worker --metrics-listen ADDR`), in the Prometheus text
//! format at `http://ADDR/metrics`: rounds applied and replayed, bytes per peer and
//! direction, time waiting for each round, compute utilization, the round trip to the
//! coordinator, and catch-ups, fed once per applied round from what `OUT/worker.json`
//! records; and, as the network's events arrive ([`NetCounters`]), input rejected by
//! reason, stragglers per member and each round's latency. The coordinator's side of the
//! same run is in `meridian_comm::node`.

use std::net::SocketAddr;
use std::sync::atomic::AtomicU64;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use meridian_comm::metrics::MetricsServer;
use meridian_comm::node::{round_buckets, PeerDirection};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use crate::networked::quic_link::{LinkRecord, NetCounters};

/// One applied round, as the metrics take it.
pub(super) struct RoundSample<'a> {
    /// The round.
    pub(super) round: u64,
    /// Replayed from the commits while catching up.
    pub(super) replayed: bool,
    /// Bytes per peer in this round.
    pub(super) links: &'a [LinkRecord],
    /// Training since the previous round.
    pub(super) compute: Duration,
    /// Waiting for the network since the previous round.
    pub(super) waited: Duration,
    /// The round trip to the coordinator.
    pub(super) rtt: Option<Duration>,
}

/// The worker's metrics and their endpoint (stopped when this is dropped).
pub(super) struct WorkerMetrics {
    rounds: Counter,
    replayed: Counter,
    state_transfers: Counter,
    bytes: Family<PeerDirection, Counter>,
    wait: Histogram,
    last_wait: Gauge<f64, AtomicU64>,
    compute: Counter<f64, AtomicU64>,
    wall: Gauge<f64, AtomicU64>,
    utilization: Gauge<f64, AtomicU64>,
    rtt: Gauge<f64, AtomicU64>,
    net: NetCounters,
    last_round: Option<u64>,
    compute_total: Duration,
    start: Instant,
    _server: MetricsServer,
}

impl WorkerMetrics {
    /// Serves the metrics on `addr`; must be called inside the node's tokio runtime.
    pub(super) fn serve(addr: SocketAddr) -> Result<Self> {
        let rounds = Counter::default();
        let replayed = Counter::default();
        let state_transfers = Counter::default();
        let bytes = Family::default();
        let wait = Histogram::new(round_buckets());
        let last_wait = Gauge::default();
        let compute = Counter::default();
        let wall = Gauge::default();
        let utilization = Gauge::default();
        let rtt = Gauge::default();
        let net = NetCounters::default();
        let mut r = Registry::default();
        r.register(
            "meridian_rounds_applied",
            "Rounds this worker applied (trained through or replayed)",
            rounds.clone(),
        );
        r.register(
            "meridian_rounds_replayed",
            "Catch-ups: rounds applied from the commits after taking a peer's state",
            replayed.clone(),
        );
        r.register(
            "meridian_state_transfers",
            "Catch-ups: times this worker continued from a peer's state (seen as applied \
             rounds skipping ahead)",
            state_transfers.clone(),
        );
        r.register(
            "meridian_peer_bytes",
            "Payload and segment bytes moved with each peer (frame bodies, per applied round, \
             as worker.json's links), by direction",
            bytes.clone(),
        );
        r.register(
            "meridian_round_wait_seconds",
            "Time blocked on the network per applied round (publish to commit)",
            wait.clone(),
        );
        r.register(
            "meridian_round_last_wait_seconds",
            "Time blocked on the network for the last applied round",
            last_wait.clone(),
        );
        r.register(
            "meridian_compute_seconds",
            "Time spent training (not waiting for the network)",
            compute.clone(),
        );
        r.register(
            "meridian_wall_seconds",
            "Time since the worker started training, at the last applied round",
            wall.clone(),
        );
        r.register(
            "meridian_compute_utilization_ratio",
            "Compute seconds over wall seconds, at the last applied round",
            utilization.clone(),
        );
        r.register(
            "meridian_coordinator_rtt_seconds",
            "QUIC's round-trip estimate to the coordinator, at the last applied round",
            rtt.clone(),
        );
        r.register(
            "meridian_rejections",
            "Input this worker rejected (from the coordinator or a peer), by reason",
            net.rejections.clone(),
        );
        r.register(
            "meridian_stragglers",
            "Rounds each member missed the deadline of, as the commits said",
            net.stragglers.clone(),
        );
        r.register(
            "meridian_round_seconds",
            "Round latency: its opening, as this worker received it, to its commit",
            net.round_seconds.clone(),
        );
        let server =
            MetricsServer::start(addr, r).with_context(|| format!("--metrics-listen {addr}"))?;
        Ok(WorkerMetrics {
            rounds,
            replayed,
            state_transfers,
            bytes,
            wait,
            last_wait,
            compute,
            wall,
            utilization,
            rtt,
            net,
            last_round: None,
            compute_total: Duration::ZERO,
            start: Instant::now(),
            _server: server,
        })
    }

    /// The counters the worker's network link feeds as events arrive.
    pub(super) fn net_counters(&self) -> NetCounters {
        self.net.clone()
    }

    /// Training starts now, at `at`: utilization counts wall time from here, as the
    /// compute time it divides does.
    pub(super) fn training_started(&mut self, at: Instant) {
        self.start = at;
    }

    /// Records an applied round.
    pub(super) fn round(&mut self, s: &RoundSample<'_>) {
        if s.replayed {
            self.replayed.inc();
        }
        // Rounds are applied in order, each once; a gap means a peer's state covered the
        // rounds between (a newcomer's first round after round 0 too).
        let skipped = match self.last_round {
            None => s.round > 0,
            Some(last) => s.round > last + 1,
        };
        if skipped {
            self.state_transfers.inc();
        }
        self.last_round = Some(s.round);
        for link in s.links {
            for (direction, n) in [("sent", link.sent), ("received", link.received)] {
                let label = PeerDirection { peer: link.peer.clone(), direction };
                self.bytes.get_or_create(&label).inc_by(n);
            }
        }
        self.wait.observe(s.waited.as_secs_f64());
        self.last_wait.set(s.waited.as_secs_f64());
        self.compute.inc_by(s.compute.as_secs_f64());
        self.compute_total += s.compute;
        let wall = self.start.elapsed().as_secs_f64();
        self.wall.set(wall);
        if wall > 0.0 {
            self.utilization.set(self.compute_total.as_secs_f64() / wall);
        }
        if let Some(rtt) = s.rtt {
            self.rtt.set(rtt.as_secs_f64());
        }
        // Last, so a scrape that falls within this update sees the round's bytes before
        // it sees the round counted, never a round without its bytes.
        self.rounds.inc();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use meridian_comm::node::WorkerNodeEvent;
    use meridian_comm::protocol::{Dest, RejectReason, RoundStats, WorkerEvent};

    /// The page a scrape of `addr` gets.
    fn scrape(addr: SocketAddr) -> String {
        use std::io::{Read, Write};
        let mut stream = std::net::TcpStream::connect(addr).unwrap();
        stream.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
        let mut text = String::new();
        stream.read_to_string(&mut text).unwrap();
        text
    }

    #[test]
    fn rounds_bytes_catch_ups_and_utilization_reach_a_scrape() {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let mut m = {
            let _rt = rt.enter();
            WorkerMetrics::serve("127.0.0.1:0".parse().unwrap()).unwrap()
        };
        m.training_started(Instant::now().checked_sub(Duration::from_secs(4)).unwrap());
        let addr = m._server.local_addr();
        let link = |sent, received| LinkRecord { peer: "coordinator".into(), sent, received };
        let sample = |round, replayed, links| RoundSample {
            round,
            replayed,
            links,
            compute: Duration::from_secs(1),
            waited: Duration::from_millis(500),
            rtt: Some(Duration::from_millis(20)),
        };
        let (trained, replayed) = ([link(100, 300)], [link(0, 400)]);
        m.round(&sample(0, false, &trained));
        m.round(&sample(1, false, &trained));
        // A peer's state covered rounds 2..=4; round 5 is replayed from the commits.
        m.round(&sample(5, true, &replayed));
        let net = m.net_counters();
        net.committed(&RoundStats {
            round: 6,
            members: vec![0, 1, 2],
            delivered: vec![0, 1],
            stragglers: vec![2],
            duration: Some(Duration::from_millis(300)),
            last_delivery: None,
            traffic: Vec::new(),
        });
        net.observe(&WorkerNodeEvent::Protocol(WorkerEvent::Rejected {
            from: Dest::Member(1),
            round: Some(9),
            reason: RejectReason::WrongRound,
        }));
        let text = scrape(addr);
        assert!(text.starts_with("HTTP/1.1 200 OK\r\n"), "{text}");
        for line in [
            "meridian_rounds_applied_total 3",
            "meridian_rounds_replayed_total 1",
            "meridian_state_transfers_total 1",
            r#"meridian_peer_bytes_total{peer="coordinator",direction="sent"} 200"#,
            r#"meridian_peer_bytes_total{peer="coordinator",direction="received"} 1000"#,
            "meridian_compute_seconds_total 3.0",
            "meridian_round_wait_seconds_count 3",
            "meridian_coordinator_rtt_seconds 0.02",
            r#"meridian_stragglers_total{peer="member 2"} 1"#,
            r#"meridian_rejections_total{reason="wrong_round"} 1"#,
            "meridian_round_seconds_count 1",
            "meridian_round_seconds_sum 0.3",
        ] {
            assert!(text.lines().any(|l| l == line), "missing `{line}` in\n{text}");
        }
        let ratio = text
            .lines()
            .find_map(|l| l.strip_prefix("meridian_compute_utilization_ratio "))
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap();
        // 3 compute seconds over at least the 4 s since `start`.
        assert!(ratio > 0.0 && ratio <= 0.75, "{ratio}");
    }
}
