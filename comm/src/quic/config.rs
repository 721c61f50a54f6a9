//! Transport tuning for long fat links.
//!
//! quinn's defaults suit roughly 100 ms × 100 Mb/s: a 1.25 MB stream receive window caps a
//! single stream near 67 Mb/s on a 150 ms path however fast the link is. Meridian sends
//! payloads of hundreds of megabytes between continents, so the flow-control windows are
//! sized from the expected bandwidth-delay product instead: a sender can keep the pipe full
//! only if the receiver grants at least bandwidth × RTT of credit.
//!
//! [`TransportTuning`] is the user-facing config (serde, every field defaulted);
//! [`TransportTuning::plan`] validates it into a [`TransportPlan`] of derived values, which
//! builds the `quinn::TransportConfig`.

use std::sync::Arc;
use std::time::Duration;

use quinn::congestion::{BbrConfig, ControllerFactory, CubicConfig, NewRenoConfig};
use quinn::{IdleTimeout, MtuDiscoveryConfig, TransportConfig, VarInt};
use serde::{Deserialize, Serialize};

use crate::quic::error::QuicError;
use crate::quic::resilient::ResilientConfig;

/// Flow-control windows are rounded up to a multiple of this.
const WINDOW_GRANULE: u64 = 1 << 20;
/// Largest stream window accepted: the connection window is twice this and every connection
/// may buffer that much, so larger values are almost surely a unit mistake.
const MAX_STREAM_WINDOW: u64 = 1 << 30;
/// Longest RTT accepted, in ms.
const MAX_RTT_MS: f64 = 60_000.0;

/// Stream receive windows in bandwidth-delay products (see [`TransportTuning::plan`]).
pub const WINDOW_BDPS: f64 = 3.0;

/// The congestion controller run on every connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum Congestion {
    /// Model-based (bottleneck bandwidth and RTT); keeps throughput under random loss,
    /// where loss-based controllers back off. quinn marks its BBR experimental, and its
    /// pacer ignores BBR's pacing rate, so it overflows the bottleneck's queue: over the
    /// simulated 150 ms, 1 Gb/s path a bulk transfer holds 0.89 / 0.86 / 0.76 of capacity
    /// at 0 / 1 / 2% loss, and a round's payload after idle takes 1.3–3.5× Resilient's
    /// time (2–100 MB; 13× for a first 2 MB payload on a clean path; BENCHMARKS.md, "QUIC
    /// over the simulated WAN"). The default until Resilient opened its window at the
    /// configured rate.
    Bbr,
    /// CUBIC, quinn's default: as good as Resilient on clean links (0.96 of capacity at 0%
    /// loss in the same benchmark), but any random loss on a long path collapses its
    /// window (0.001 at 0.5%).
    Cubic,
    /// Classic Reno-style AIMD; mostly useful as a baseline.
    NewReno,
    /// The default. CUBIC that shrinks its window only on congestion-like loss (a loss rate
    /// significantly above the path's random-loss floor plus 2% over the last round trips,
    /// or loss with a standing queue), not on the random loss of long internet paths, and
    /// that opens its window at the configured `bandwidth_bps` × the first measured RTT
    /// instead of doubling up from ten datagrams; see
    /// [`Resilient`](crate::quic::Resilient). Its window is capped at the connection receive
    /// window and kept across idle gaps between rounds. The best both for bulk transfers
    /// (0.96 of capacity at 0–2% random loss, 0.95 at 3%, in the same benchmark) and for a
    /// round's payload (within 6% of one-way delay plus serialization on a clean path,
    /// from the first round on). It trusts `bandwidth_bps`: set it no higher than the
    /// slowest link's rate, or the first round trip overflows that link's queue.
    #[default]
    Resilient,
}

/// How QUIC connections are tuned. Every field has a default; in TOML, omitted fields keep
/// it and unknown fields are an error.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TransportTuning {
    /// Expected bottleneck bandwidth of a link, bits per second. Default 1e9 (1 Gb/s).
    pub bandwidth_bps: f64,
    /// Expected round-trip time of the longest link, milliseconds. Default 250 (Singapore–US
    /// is up to 260 ms by carrier SLA).
    pub rtt_ms: f64,
    /// RTT assumed before the first measurement, milliseconds; it sets the first
    /// retransmission timeouts. Default: `rtt_ms`.
    pub initial_rtt_ms: Option<f64>,
    /// Congestion controller. Default `resilient` (see [`Congestion`]).
    pub congestion: Congestion,
    /// A connection with no traffic for this long is dead, milliseconds (also bounds the
    /// handshake). Default 60 000.
    pub idle_timeout_ms: u64,
    /// Interval between keep-alive packets on a quiet connection, milliseconds; must be
    /// below `idle_timeout_ms` so a live peer never times out. Default 10 000 (also keeps NAT
    /// bindings open).
    pub keep_alive_ms: u64,
    /// How many unidirectional streams (one per frame) a peer may have open at once.
    /// Default 1024.
    pub max_concurrent_uni_streams: u32,
    /// Probe for a path MTU above QUIC's 1200-byte minimum. Default on.
    pub mtu_discovery: bool,
    /// Seed for QUIC's own random choices (skipped packet numbers, key-update intervals,
    /// greasing), mixed with each endpoint's local address so endpoints differ. `None`
    /// (the default) seeds from the OS. For reproducible simulations only: a known seed
    /// makes those choices predictable to an on-path attacker.
    pub rng_seed: Option<u64>,
}

impl Default for TransportTuning {
    fn default() -> Self {
        Self {
            bandwidth_bps: 1e9,
            rtt_ms: 250.0,
            initial_rtt_ms: None,
            congestion: Congestion::default(),
            idle_timeout_ms: 60_000,
            keep_alive_ms: 10_000,
            max_concurrent_uni_streams: 1024,
            mtu_discovery: true,
            rng_seed: None,
        }
    }
}

/// Values derived from a valid [`TransportTuning`]; it cannot hold impossible ones.
#[derive(Debug, Clone, PartialEq)]
pub struct TransportPlan {
    stream_receive_window: u32,
    connection_receive_window: u32,
    send_window: u32,
    initial_rtt: Duration,
    idle_timeout_ms: u32,
    keep_alive: Duration,
    max_concurrent_uni_streams: u32,
    congestion: Congestion,
    mtu_discovery: bool,
    /// `bandwidth_bps` in bytes per second: where Resilient's window jumps at the first
    /// RTT sample.
    rate: u64,
}

fn bad(field: &'static str, reason: impl Into<String>) -> QuicError {
    QuicError::Tuning { field, reason: reason.into() }
}

fn check_rtt(field: &'static str, ms: f64) -> Result<Duration, QuicError> {
    if !(ms.is_finite() && ms > 0.0 && ms <= MAX_RTT_MS) {
        return Err(bad(field, format!("must be in (0, {MAX_RTT_MS}] ms, got {ms}")));
    }
    Ok(Duration::from_secs_f64(ms / 1000.0))
}

impl TransportTuning {
    /// Bandwidth × RTT in bytes: the data in flight on a full pipe.
    pub fn bdp_bytes(&self) -> f64 {
        self.bandwidth_bps / 8.0 * self.rtt_ms / 1000.0
    }

    /// Validates the tuning and derives the windows.
    ///
    /// - stream receive window: [`WINDOW_BDPS`] × BDP rounded up to a whole MiB, so one
    ///   frame's stream can fill the pipe while a lost packet's hole holds the receiver's
    ///   credit for about two round trips (with 2 × BDP, 0.5% loss capped goodput at 0.75
    ///   of a 1 Gb/s, 150 ms path; with 3 × BDP it reaches 0.92);
    /// - connection receive window and send window: twice the stream window, so a frame
    ///   whose reader has not started yet cannot take all of the connection's credit from
    ///   the one being read.
    pub fn plan(&self) -> Result<TransportPlan, QuicError> {
        if !(self.bandwidth_bps.is_finite() && self.bandwidth_bps > 0.0) {
            return Err(bad(
                "bandwidth_bps",
                format!("must be a positive number of bits per second, got {}", self.bandwidth_bps),
            ));
        }
        check_rtt("rtt_ms", self.rtt_ms)?;
        let initial_rtt = check_rtt("initial_rtt_ms", self.initial_rtt_ms.unwrap_or(self.rtt_ms))?;
        let granules = (WINDOW_BDPS * self.bdp_bytes() / WINDOW_GRANULE as f64).ceil().max(1.0);
        let stream_window = granules * WINDOW_GRANULE as f64;
        if stream_window > MAX_STREAM_WINDOW as f64 {
            return Err(bad(
                "bandwidth_bps",
                format!(
                    "× rtt_ms gives a {:.0} MiB stream window, above the {} MiB limit",
                    stream_window / WINDOW_GRANULE as f64,
                    MAX_STREAM_WINDOW / WINDOW_GRANULE
                ),
            ));
        }
        // At most 2^30 (checked above), so the cast is exact and twice it fits a u32.
        let stream_receive_window = stream_window as u32;
        let idle_timeout_ms = u32::try_from(self.idle_timeout_ms)
            .ok()
            .filter(|&ms| ms > 0)
            .ok_or_else(|| bad("idle_timeout_ms", "must be in 1..=4294967295 ms"))?;
        if self.keep_alive_ms == 0 || self.keep_alive_ms >= self.idle_timeout_ms {
            return Err(bad(
                "keep_alive_ms",
                format!(
                    "must be positive and below idle_timeout_ms ({}), got {}",
                    self.idle_timeout_ms, self.keep_alive_ms
                ),
            ));
        }
        if self.max_concurrent_uni_streams == 0 {
            return Err(bad("max_concurrent_uni_streams", "must be at least 1"));
        }
        Ok(TransportPlan {
            stream_receive_window,
            connection_receive_window: 2 * stream_receive_window,
            send_window: 2 * stream_receive_window,
            initial_rtt,
            idle_timeout_ms,
            keep_alive: Duration::from_millis(self.keep_alive_ms),
            max_concurrent_uni_streams: self.max_concurrent_uni_streams,
            congestion: self.congestion,
            mtu_discovery: self.mtu_discovery,
            // Positive and finite (checked above); the cast saturates, never wraps.
            rate: (self.bandwidth_bps / 8.0) as u64,
        })
    }
}

impl TransportPlan {
    /// Receive credit per stream (per frame), bytes.
    pub fn stream_receive_window(&self) -> u64 {
        self.stream_receive_window.into()
    }

    /// Receive credit per connection, bytes; also what one peer can make us buffer.
    pub fn connection_receive_window(&self) -> u64 {
        self.connection_receive_window.into()
    }

    /// Unacknowledged data we keep buffered per connection, bytes.
    pub fn send_window(&self) -> u64 {
        self.send_window.into()
    }

    /// RTT assumed before the first sample.
    pub fn initial_rtt(&self) -> Duration {
        self.initial_rtt
    }

    /// Idle timeout.
    pub fn idle_timeout(&self) -> Duration {
        Duration::from_millis(self.idle_timeout_ms.into())
    }

    /// Keep-alive interval (below the idle timeout).
    pub fn keep_alive(&self) -> Duration {
        self.keep_alive
    }

    /// The congestion controller.
    pub fn congestion(&self) -> Congestion {
        self.congestion
    }

    /// Unidirectional streams (frames) a peer may have open at once.
    pub fn max_concurrent_uni_streams(&self) -> u32 {
        self.max_concurrent_uni_streams
    }

    /// The transport config for a connection that has yet to prove it belongs to the run:
    /// as [`transport_config`](Self::transport_config), but the peer may open one stream at
    /// a time and gets `allowance` bytes of connection credit (at most the usual window)
    /// instead of twice the stream window. QUIC grants credit as the receiver reads, so
    /// until the connection is admitted (see
    /// [`QuicEndpoint::admit`](crate::quic::QuicEndpoint::admit)) a peer that sends more
    /// than the receiver reads makes it buffer at most `allowance` bytes, not hundreds of
    /// megabytes. The stream window stays as it is: it is announced once, in the
    /// handshake, and admitted connections need it.
    pub fn unverified_transport_config(&self, allowance: u32) -> TransportConfig {
        let mut config = self.transport_config();
        config
            .receive_window(VarInt::from_u32(allowance.min(self.connection_receive_window)))
            .max_concurrent_uni_streams(VarInt::from_u32(1));
        config
    }

    /// The quinn transport config for both ends of a connection.
    ///
    /// Bidirectional streams and datagrams are disabled: frames travel one per
    /// unidirectional stream.
    pub fn transport_config(&self) -> TransportConfig {
        let mut config = TransportConfig::default();
        config
            .stream_receive_window(VarInt::from_u32(self.stream_receive_window))
            .receive_window(VarInt::from_u32(self.connection_receive_window))
            .send_window(self.send_window.into())
            .initial_rtt(self.initial_rtt)
            .max_idle_timeout(Some(IdleTimeout::from(VarInt::from_u32(self.idle_timeout_ms))))
            .keep_alive_interval(Some(self.keep_alive))
            .max_concurrent_uni_streams(VarInt::from_u32(self.max_concurrent_uni_streams))
            .max_concurrent_bidi_streams(VarInt::from_u32(0))
            .datagram_receive_buffer_size(None)
            .mtu_discovery_config(self.mtu_discovery.then(MtuDiscoveryConfig::default))
            .congestion_controller_factory(self.congestion_factory());
        config
    }

    fn congestion_factory(&self) -> Arc<dyn ControllerFactory + Send + Sync> {
        match self.congestion {
            Congestion::Bbr => Arc::new(BbrConfig::default()),
            Congestion::Cubic => Arc::new(CubicConfig::default()),
            Congestion::NewReno => Arc::new(NewRenoConfig::default()),
            Congestion::Resilient => Arc::new(
                ResilientConfig::new(self.connection_receive_window.into()).with_rate(self.rate),
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1 << 20;

    #[test]
    fn default_windows_cover_three_times_the_bdp() {
        let tuning = TransportTuning::default();
        // 1 Gb/s × 250 ms = 31.25 MB; three times that is 93.75 MB = 89.4 MiB → 90 MiB.
        assert_eq!(tuning.bdp_bytes(), 31_250_000.0);
        let plan = tuning.plan().unwrap();
        assert_eq!(plan.stream_receive_window(), 90 * MIB);
        assert_eq!(plan.connection_receive_window(), 180 * MIB);
        assert_eq!(plan.send_window(), 180 * MIB);
        assert!(plan.stream_receive_window() as f64 >= 3.0 * tuning.bdp_bytes());
        assert_eq!(plan.initial_rtt(), Duration::from_millis(250));
        assert_eq!(plan.idle_timeout(), Duration::from_secs(60));
        assert_eq!(plan.keep_alive(), Duration::from_secs(10));
    }

    #[test]
    fn windows_follow_bandwidth_and_rtt() {
        // A consumer uplink: 20 Mb/s × 150 ms = 375 kB; three times that rounds up to 2 MiB.
        let slow = TransportTuning { bandwidth_bps: 20e6, rtt_ms: 150.0, ..Default::default() };
        assert_eq!(slow.plan().unwrap().stream_receive_window(), 2 * MIB);
        // 10 Gb/s × 100 ms = 125 MB; three times that is 357.6 MiB → 358 MiB.
        let fast = TransportTuning { bandwidth_bps: 10e9, rtt_ms: 100.0, ..Default::default() };
        assert_eq!(fast.plan().unwrap().stream_receive_window(), 358 * MIB);
        let explicit = TransportTuning { initial_rtt_ms: Some(80.0), ..Default::default() };
        assert_eq!(explicit.plan().unwrap().initial_rtt(), Duration::from_millis(80));
    }

    #[test]
    fn impossible_tunings_are_refused_naming_the_field() {
        let field_of = |t: TransportTuning| match t.plan() {
            Err(QuicError::Tuning { field, .. }) => field,
            other => panic!("expected a tuning error, got {other:?}"),
        };
        let d = TransportTuning::default;
        assert_eq!(field_of(TransportTuning { keep_alive_ms: 60_000, ..d() }), "keep_alive_ms");
        assert_eq!(field_of(TransportTuning { keep_alive_ms: 0, ..d() }), "keep_alive_ms");
        assert_eq!(field_of(TransportTuning { idle_timeout_ms: 0, ..d() }), "idle_timeout_ms");
        assert_eq!(field_of(TransportTuning { bandwidth_bps: 0.0, ..d() }), "bandwidth_bps");
        assert_eq!(field_of(TransportTuning { bandwidth_bps: f64::NAN, ..d() }), "bandwidth_bps");
        assert_eq!(field_of(TransportTuning { rtt_ms: -1.0, ..d() }), "rtt_ms");
        assert_eq!(
            field_of(TransportTuning { initial_rtt_ms: Some(0.0), ..d() }),
            "initial_rtt_ms"
        );
        assert_eq!(
            field_of(TransportTuning { max_concurrent_uni_streams: 0, ..d() }),
            "max_concurrent_uni_streams"
        );
        // 100 Gb/s × 1 s would ask for a 23 GiB window.
        assert_eq!(
            field_of(TransportTuning { bandwidth_bps: 100e9, rtt_ms: 1000.0, ..d() }),
            "bandwidth_bps"
        );
    }

    #[test]
    fn every_congestion_controller_builds() {
        for congestion in
            [Congestion::Bbr, Congestion::Cubic, Congestion::NewReno, Congestion::Resilient]
        {
            let plan = TransportTuning { congestion, ..Default::default() }.plan().unwrap();
            assert_eq!(plan.congestion(), congestion);
            let _config: TransportConfig = plan.transport_config();
        }
    }

    #[test]
    fn serde_defaults_fill_missing_fields_and_unknown_fields_fail() {
        let tuning: TransportTuning =
            serde_json::from_str(r#"{"rtt_ms": 90, "congestion": "bbr"}"#).unwrap();
        assert_eq!(tuning.rtt_ms, 90.0);
        assert_eq!(tuning.congestion, Congestion::Bbr);
        assert_eq!(tuning.bandwidth_bps, 1e9);
        let omitted: TransportTuning = serde_json::from_str(r#"{"rtt_ms": 90}"#).unwrap();
        assert_eq!(omitted.congestion, Congestion::Resilient);
        assert!(serde_json::from_str::<TransportTuning>(r#"{"rtt": 90}"#).is_err());
    }
}
