//! "Resilient": CUBIC that tells random loss from congestion, for long fat, lossy links.
//!
//! A loss-based controller reads every lost packet as a full queue. On a long path with a
//! little random loss (radio hops, policers, dirty fibre) that caps the window at what the
//! Mathis/CUBIC response functions allow for the loss rate: at 0.5% loss on 1 Gb/s × 150 ms
//! that is ~14 packets, about 1 Mb/s. Meridian's links are exactly such paths.
//!
//! This controller is CUBIC (RFC 9438: window growth `W(t) = C (t - K)^3 + W_max`,
//! multiplicative decrease β = 0.7, fast convergence, the Reno-friendly region) on top of
//! RFC 9002's recovery rules (one reduction per round trip: losses of packets sent before
//! the last reduction are not new congestion; persistent congestion collapses the window
//! to two datagrams). What differs is *which* losses count as congestion. A loss event
//! shrinks the window only if one of two signals says the bottleneck is full:
//!
//! - **loss rate**: more than the path's random-loss floor plus [`LOSS_THRESHOLD`] (2%) of
//!   the bytes resolved (acked or lost) over the current and the previous round trip were
//!   lost, by a margin of [`LOSS_SIGMAS`] binomial standard deviations and at least
//!   [`MIN_LOST_PACKETS`] lost packets (small windows see a few percent by chance). The
//!   idea is picoquic's loss filter and BBRv2/v3's `loss_thresh` (2%): a queue that
//!   overflows under a window growing past it loses a rising share of each round, while
//!   random loss stays at its own rate. That rate is the floor: the median lost share of
//!   the last samples of [`FLOOR_SAMPLE_PACKETS`] packets (capped at [`MAX_LOSS_FLOOR`]),
//!   which an overflow, lasting a round or two, does not move. Without it, random loss
//!   above the threshold (3% and more) would read as congestion every round; with it a
//!   bulk transfer holds 0.95 of a 1 Gb/s, 150 ms path at 3% loss (BENCHMARKS.md).
//! - **delay**: the smallest RTT sample of the latest round trip exceeds the path's
//!   minimum by more than [`QUEUE_DELAY_FRACTION`] of it (at least [`MIN_QUEUE_DELAY`]).
//!   When even the fastest packet of a round waited, a standing queue has built, and a
//!   loss then is taken for the queue's tail drop. The same comparison ends slow start (the delay
//!   increase test of HyStart++, RFC 9406 §4.2, against the path minimum; without its
//!   conservative phase), so slow start leaves before it floods the buffer. A loss with a
//!   standing queue cuts the window to the larger of β and min RTT / current RTT: the latter
//!   removes just the queue, so a short queue is drained without emptying the pipe.
//!
//! Two things set the window apart from CUBIC's for bursty traffic (a round's payload,
//! then seconds of compute):
//!
//! - **start at the configured rate**: with [`ResilientConfig::with_rate`] (Meridian
//!   passes `bandwidth_bps`) the window jumps, at the first RTT sample, to that rate × the
//!   sample, paced by quinn at 1.25 × window / RTT. Slow start from ten datagrams spends
//!   eight round trips on a 2 MB payload across an ocean; the jump sends it in one. Slow
//!   start then goes on and ends on the usual signals, so a rate set too high costs one
//!   round of drops answered as congestion (Careful Resume's idea, with the operator's
//!   figure as the retained state).
//! - **no slow-start restart**: a window is kept across idle time (RFC 9438 §5.8 allows
//!   either; RFC 7661 argues for keeping it). The path was measured a round ago, and the
//!   pacer spreads a full window over an RTT, so the next round's payload goes out at the
//!   measured rate rather than from ten datagrams again.
//!
//! Isolated losses (neither signal) change nothing: QUIC retransmits the data, and the
//! window keeps growing. A drop-tail queue that overflows with too little delay to see
//! (a buffer far below the BDP) is still caught by the loss rate once the window's excess
//! over the pipe reaches 2% of it, which bounds the overshoot.
//!
//! The window never exceeds the configured maximum (the peer's connection receive window:
//! beyond it data cannot be sent anyway, and a window grown while flow-control-limited
//! would burst later) nor drops below two datagrams (RFC 9002 `kMinimumWindow`).
//!
//! References: RFC 9438 (CUBIC), RFC 9002 §7 (QUIC congestion control and persistent
//! congestion), RFC 9406 (HyStart++), the loss filtering of picoquic's congestion
//! controllers (github.com/private-octopus/picoquic), BBRv2's loss threshold
//! (draft-cardwell-iccrg-bbr-congestion-control).

use std::any::Any;
use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use quinn::congestion::{Controller, ControllerFactory, ControllerMetrics};
use quinn_proto::RttEstimator;

/// Share of bytes lost over the last two round trips, above the random-loss floor, beyond
/// which a loss is congestion.
pub const LOSS_THRESHOLD: f64 = 0.02;
/// Margin, in binomial standard deviations, by which the losses of the last two round trips
/// must exceed [`LOSS_THRESHOLD`] to count as congestion.
pub const LOSS_SIGMAS: f64 = 3.0;
/// Losses in the last two round trips below which the loss rate is not trusted: with a
/// window of a few dozen packets one random loss is already several percent.
pub const MIN_LOST_PACKETS: u64 = 3;
/// Queueing delay, as a share of the path's minimum RTT, that marks a standing queue.
pub const QUEUE_DELAY_FRACTION: f64 = 0.25;
/// Queueing delay that always counts as a standing queue is at least this (RTT samples of
/// short paths jitter by a few ms without any queue).
pub const MIN_QUEUE_DELAY: Duration = Duration::from_millis(4);

/// RFC 9438 multiplicative decrease factor.
const BETA: f64 = 0.7;
/// RFC 9438 CUBIC constant C, in segments per second cubed.
const C: f64 = 0.4;
/// RTT samples a round needs before its minimum says anything about the queue (RFC 9406
/// `N_RTT_SAMPLE`).
const MIN_ROUND_SAMPLES: u32 = 8;
/// Datagrams in the initial window (RFC 9002 §7.2).
const INITIAL_DATAGRAMS: u64 = 10;
/// Datagrams in the minimum window (RFC 9002 `kMinimumWindow`).
const MIN_DATAGRAMS: u64 = 2;
/// Packets resolved (acked or lost) per sample of the random-loss floor: enough that 1%
/// loss shows as about ten losses rather than as zero or one.
pub const FLOOR_SAMPLE_PACKETS: u64 = 1000;
/// Samples the random-loss floor is the median of.
const FLOOR_SAMPLES: usize = 15;
/// Highest random-loss floor believed: above it, losses count against the window as if
/// the floor were this (a path losing more than 5% at random is broken, and a higher floor
/// would let a buffer too shallow to show delay overflow by that much every round).
pub const MAX_LOSS_FLOOR: f64 = 0.05;

/// Builds [`Resilient`] controllers; what `Congestion::Resilient` installs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResilientConfig {
    max_window: u64,
    rate: Option<u64>,
}

impl ResilientConfig {
    /// Controllers whose window never exceeds `max_window` bytes (Meridian passes the
    /// connection receive window).
    pub fn new(max_window: u64) -> Self {
        Self { max_window, rate: None }
    }

    /// Controllers that jump, at their first RTT sample, to the window that carries
    /// `bytes_per_sec` over that RTT (see [`Resilient::with_rate`]); Meridian passes the
    /// configured `bandwidth_bps`.
    pub fn with_rate(mut self, bytes_per_sec: u64) -> Self {
        self.rate = Some(bytes_per_sec);
        self
    }

    /// The window cap, bytes.
    pub fn max_window(&self) -> u64 {
        self.max_window
    }

    /// The rate the window jumps to, bytes per second, if any.
    pub fn rate(&self) -> Option<u64> {
        self.rate
    }
}

impl Default for ResilientConfig {
    /// No cap beyond what the flow-control windows impose, and no jump.
    fn default() -> Self {
        Self { max_window: u64::MAX, rate: None }
    }
}

impl ControllerFactory for ResilientConfig {
    fn build(self: Arc<Self>, now: Instant, current_mtu: u16) -> Box<dyn Controller> {
        let cc = Resilient::new(self.max_window, now, current_mtu);
        Box::new(match self.rate {
            Some(rate) => cc.with_rate(rate),
            None => cc,
        })
    }
}

/// Bytes acked and lost, and RTT samples, over one round trip.
#[derive(Debug, Clone, Copy)]
struct Round {
    acked: u64,
    lost: u64,
    lost_packets: u64,
    min_rtt: Option<Duration>,
    samples: u32,
}

impl Round {
    const EMPTY: Round = Round { acked: 0, lost: 0, lost_packets: 0, min_rtt: None, samples: 0 };
}

/// The controller; see the module docs for what it does and why.
#[derive(Debug, Clone)]
pub struct Resilient {
    max_window: u64,
    mtu: u64,
    window: u64,
    ssthresh: u64,
    /// When the last reduction happened: losses of packets sent before it are part of the
    /// congestion already answered (RFC 9002 §7.3.2).
    recovery_start: Option<Instant>,
    /// Window before the last reduction, bytes (RFC 9438 `W_max`).
    w_max: f64,
    /// Start of the current congestion-avoidance epoch and its `K`, seconds.
    epoch: Option<(Instant, f64)>,
    /// Reno-friendly window estimate, bytes (RFC 9438 `W_est`).
    w_est: f64,
    /// Smallest RTT sample of the connection.
    min_rtt: Option<Duration>,
    current: Round,
    previous: Round,
    /// The round ends when a packet numbered at least this is acked.
    round_end: Option<u64>,
    last_sent: Option<u64>,
    /// Rate to jump to at the first RTT sample, bytes per second; `None` once done.
    jump_rate: Option<u64>,
    /// The random-loss floor's samples (lost share of [`FLOOR_SAMPLE_PACKETS`] packets),
    /// oldest first, and the sample being filled: (packets resolved, packets lost).
    floor_samples: VecDeque<f64>,
    floor_fill: (u64, u64),
}

impl Resilient {
    /// A controller for a path whose datagrams are `mtu` bytes, with window cap
    /// `max_window` bytes (raised to the minimum window if below it).
    pub fn new(max_window: u64, _now: Instant, mtu: u16) -> Self {
        let mtu = u64::from(mtu).max(1);
        let initial = initial_window(mtu);
        let max_window = max_window.max(MIN_DATAGRAMS * mtu);
        Self {
            max_window,
            mtu,
            window: initial.min(max_window),
            ssthresh: u64::MAX,
            recovery_start: None,
            w_max: 0.0,
            epoch: None,
            w_est: 0.0,
            min_rtt: None,
            current: Round::EMPTY,
            previous: Round::EMPTY,
            round_end: None,
            last_sent: None,
            jump_rate: None,
            floor_samples: VecDeque::with_capacity(FLOOR_SAMPLES),
            floor_fill: (0, 0),
        }
    }

    /// Jumps, at the first RTT sample, to the window that carries `bytes_per_sec` over
    /// that sample's RTT, instead of doubling up to it from ten datagrams.
    ///
    /// The rate is what the operator configured the link for (`bandwidth_bps`), so it plays
    /// the part of the state Careful Resume (draft-ietf-tsvwg-careful-resume) retains from
    /// an earlier connection, and the first RTT sample checks the path as its
    /// reconnaissance phase does. quinn paces at 1.25 × window / RTT, so the jump sends at
    /// 1.25 × the configured rate, not in one burst. A payload of a few MB, which slow
    /// start would spend eight round trips on, then arrives in about one. Slow start goes
    /// on from there and ends as before (delay, or a loss rate above the floor), so a rate
    /// set too high costs one round of queue drops, answered like any other congestion.
    pub fn with_rate(mut self, bytes_per_sec: u64) -> Self {
        self.jump_rate = (bytes_per_sec > 0).then_some(bytes_per_sec);
        self
    }

    fn min_window(&self) -> u64 {
        MIN_DATAGRAMS * self.mtu
    }

    /// Slow-start threshold, bytes (`u64::MAX` until slow start ends).
    pub fn ssthresh(&self) -> u64 {
        self.ssthresh
    }

    /// Whether the window is still in slow start.
    pub fn in_slow_start(&self) -> bool {
        self.window < self.ssthresh
    }

    /// Lost share of the bytes resolved over the current and the previous round trip, with
    /// the number of lost packets behind it.
    pub fn recent_loss_rate(&self) -> (f64, u64) {
        let lost = self.current.lost + self.previous.lost;
        let total = lost + self.current.acked + self.previous.acked;
        let rate = if total == 0 { 0.0 } else { lost as f64 / total as f64 };
        (rate, self.current.lost_packets + self.previous.lost_packets)
    }

    /// Queueing delay seen by the fastest packet of the latest round trip with enough
    /// samples; `None` before there is one.
    pub fn queue_delay(&self) -> Option<Duration> {
        let min = self.min_rtt?;
        let round = if self.current.samples >= MIN_ROUND_SAMPLES {
            self.current
        } else if self.previous.samples >= MIN_ROUND_SAMPLES {
            self.previous
        } else {
            return None;
        };
        Some(round.min_rtt?.saturating_sub(min))
    }

    fn standing_queue(&self) -> bool {
        match (self.queue_delay(), self.min_rtt) {
            (Some(delay), Some(min)) => {
                delay > min.mul_f64(QUEUE_DELAY_FRACTION).max(MIN_QUEUE_DELAY)
            }
            _ => false,
        }
    }

    /// The path's random-loss floor: the median lost share of the last samples of
    /// [`FLOOR_SAMPLE_PACKETS`] packets each (0 before the first), at most
    /// [`MAX_LOSS_FLOOR`]. Random loss shows in every sample; a queue that overflows shows
    /// in the few samples around each overflow, which the median leaves out.
    pub fn loss_floor(&self) -> f64 {
        let mut rates: Vec<f64> = self.floor_samples.iter().copied().collect();
        if rates.is_empty() {
            return 0.0;
        }
        rates.sort_by(f64::total_cmp);
        rates[rates.len() / 2].clamp(0.0, MAX_LOSS_FLOOR)
    }

    /// Counts `packets` resolved, `lost` of them lost, towards the loss floor's samples.
    fn sample_floor(&mut self, packets: u64, lost: u64) {
        let (total, lost_sum) = &mut self.floor_fill;
        *total = total.saturating_add(packets);
        *lost_sum = lost_sum.saturating_add(lost);
        if *total >= FLOOR_SAMPLE_PACKETS {
            let rate = *lost_sum as f64 / *total as f64;
            self.floor_fill = (0, 0);
            if self.floor_samples.len() == FLOOR_SAMPLES {
                self.floor_samples.pop_front();
            }
            self.floor_samples.push_back(rate);
        }
    }

    /// Whether the last two round trips lost significantly more than the loss floor plus
    /// [`LOSS_THRESHOLD`]:
    /// more packets than a loss rate of exactly the threshold would lose with a margin of
    /// [`LOSS_SIGMAS`] binomial standard deviations. A window of a hundred packets under 2%
    /// random loss loses 3 or more in two rounds a third of the time; without the margin
    /// those draws would read as congestion and pin the window near its start.
    fn congestion_by_loss_rate(&self) -> bool {
        let (rate, lost_packets) = self.recent_loss_rate();
        let p = self.loss_floor() + LOSS_THRESHOLD;
        if lost_packets < MIN_LOST_PACKETS || rate <= p {
            return false;
        }
        // Packets resolved in the two rounds, estimated from the lost ones and the rate.
        let n = lost_packets as f64 / rate;
        let expected = n * p;
        lost_packets as f64 > expected + LOSS_SIGMAS * (expected * (1.0 - p)).sqrt()
    }

    /// Records `bytes` acknowledged for a packet sent at `sent`, whose RTT sample is
    /// `now - sent`; `srtt` is the smoothed RTT (the CUBIC target looks one RTT ahead).
    /// What [`Controller::on_ack`] does, callable without quinn's `RttEstimator`.
    pub fn on_ack_sample(
        &mut self,
        now: Instant,
        sent: Instant,
        bytes: u64,
        app_limited: bool,
        srtt: Duration,
    ) {
        let sample = now.saturating_duration_since(sent);
        self.min_rtt = Some(self.min_rtt.map_or(sample, |m| m.min(sample)));
        self.sample_floor(bytes.div_ceil(self.mtu).max(1), 0);
        if let Some(rate) = self.jump_rate.take() {
            // Finite and non-negative; a cast saturates at u64::MAX, which the clamp caps.
            let jump = (rate as f64 * sample.as_secs_f64()) as u64;
            if self.in_slow_start() && jump > self.window {
                tracing::debug!(
                    window = self.window,
                    jump,
                    "resilient: jump to the configured rate"
                );
                self.window = jump.clamp(self.min_window(), self.max_window);
            }
        }
        self.current.acked = self.current.acked.saturating_add(bytes);
        self.current.samples = self.current.samples.saturating_add(1);
        self.current.min_rtt = Some(self.current.min_rtt.map_or(sample, |m| m.min(sample)));

        if self.recovery_start.is_some_and(|start| sent <= start) {
            // Still acking data sent before the last reduction: no growth (RFC 9002 §7.3.2).
            return;
        }
        if app_limited {
            // The window was not the limit, so acks say nothing about whether a larger one
            // fits (RFC 9438 §5.8); restart the epoch so time spent idle is not growth.
            self.epoch = None;
            return;
        }
        if self.in_slow_start() {
            if self.current.samples >= MIN_ROUND_SAMPLES && self.standing_queue() {
                // Delay rose in slow start: the pipe is full; continue in congestion
                // avoidance from here (HyStart++).
                tracing::debug!(window = self.window, "resilient: slow start ends on delay");
                self.ssthresh = self.window;
                self.w_max = self.window as f64;
                self.epoch = None;
            } else {
                self.window = self.window.saturating_add(bytes).min(self.ssthresh);
            }
        } else {
            self.grow_cubic(now, bytes, srtt);
        }
        self.window = self.window.clamp(self.min_window(), self.max_window);
    }

    fn grow_cubic(&mut self, now: Instant, bytes: u64, srtt: Duration) {
        let mtu = self.mtu as f64;
        let window = self.window as f64;
        let (start, k) = *self.epoch.get_or_insert_with(|| {
            // RFC 9438 §4.2: K is when the cubic curve climbs back to W_max from here.
            let k =
                if self.w_max > window { ((self.w_max - window) / mtu / C).cbrt() } else { 0.0 };
            (now, k)
        });
        if self.w_max < window {
            self.w_max = window;
        }
        if self.w_est < mtu {
            self.w_est = window;
        }
        let t = now.saturating_duration_since(start).as_secs_f64();
        let cubic_at = |t: f64| C * (t - k).powi(3) * mtu + self.w_max;
        // RFC 9438 §4.3: Reno-friendly estimate, α = 3(1 - β)/(1 + β) segments per RTT.
        let alpha = 3.0 * (1.0 - BETA) / (1.0 + BETA);
        self.w_est += alpha * mtu * bytes as f64 / window;
        let next = if cubic_at(t) < self.w_est {
            self.w_est
        } else {
            // §4.4–4.5: approach the curve's value one RTT ahead, at most 1.5 × per RTT.
            let target = cubic_at(t + srtt.as_secs_f64()).clamp(window, 1.5 * window);
            window + (target - window) * bytes as f64 / window
        };
        // Finite and within [window, 1.5 window + w_est], so the cast cannot wrap.
        self.window = (next.max(window) as u64).max(self.window);
    }

    /// Records a send; the round trip in progress ends when packet `packet_number` or a
    /// later one is acked.
    fn sent(&mut self, packet_number: u64) {
        self.last_sent = Some(packet_number);
        if self.round_end.is_none() {
            self.round_end = Some(packet_number);
        }
    }

    /// Closes the round trip if the ack batch reached its end.
    fn end_acks(&mut self, largest_acked: Option<u64>) {
        let (Some(largest), Some(end)) = (largest_acked, self.round_end) else { return };
        if largest >= end {
            self.previous = self.current;
            self.current = Round::EMPTY;
            self.round_end = self.last_sent.map(|pn| pn.max(largest.saturating_add(1)));
        }
    }

    /// Records `lost_bytes` lost, the newest of them sent at `sent`; shrinks the window if
    /// the loss looks like congestion (see the module docs).
    fn congestion_event(&mut self, now: Instant, sent: Instant, persistent: bool, lost_bytes: u64) {
        let packets = lost_bytes.div_ceil(self.mtu).max(1);
        self.current.lost = self.current.lost.saturating_add(lost_bytes);
        self.current.lost_packets = self.current.lost_packets.saturating_add(packets);
        self.sample_floor(packets, packets);
        if persistent {
            // RFC 9002 §7.6.2: every packet over a long span was lost; start over.
            self.reduce(now, BETA, "persistent congestion");
            self.window = self.min_window();
            return;
        }
        if self.recovery_start.is_some_and(|start| sent <= start) {
            return;
        }
        let by_rate = self.congestion_by_loss_rate();
        let by_delay = self.standing_queue();
        if by_rate {
            self.reduce(now, BETA, "loss rate");
        } else if by_delay {
            // The queue, not the pipe, is what overflowed: when the standing queue holds
            // less than 1/β - 1 of the window, a cut to β would empty part of the pipe too.
            // Cut to the pipe's share (min RTT / the round's fastest RTT) instead, which
            // drains the queue; a deep queue still gets the full cut to β.
            self.reduce(now, self.pipe_share().max(BETA), "queueing delay");
        }
    }

    /// Minimum RTT over the latest round's fastest RTT: the share of the window that is
    /// in the pipe rather than in a queue (1 without a measurement).
    fn pipe_share(&self) -> f64 {
        match (self.min_rtt, self.queue_delay()) {
            (Some(min), Some(delay)) if !(min + delay).is_zero() => {
                min.as_secs_f64() / (min + delay).as_secs_f64()
            }
            _ => 1.0,
        }
    }

    fn reduce(&mut self, now: Instant, beta: f64, why: &'static str) {
        let window = self.window as f64;
        // RFC 9438 §4.7 fast convergence: a flow that lost below its last peak yields.
        self.w_max = if window < self.w_max { window * (1.0 + BETA) / 2.0 } else { window };
        let reduced = ((window * beta) as u64).max(self.min_window());
        tracing::debug!(window = self.window, reduced, why, "resilient: congestion");
        self.window = reduced;
        self.ssthresh = reduced;
        self.w_est = reduced as f64;
        self.epoch = None;
        self.recovery_start = Some(now);
        // The evidence has been acted on; the next reduction needs fresh evidence.
        self.current = Round { lost: 0, lost_packets: 0, acked: 0, ..self.current };
        self.previous = Round::EMPTY;
    }
}

fn initial_window(mtu: u64) -> u64 {
    (INITIAL_DATAGRAMS * mtu).min(14_720.max(MIN_DATAGRAMS * mtu))
}

impl Controller for Resilient {
    fn on_sent(&mut self, _now: Instant, _bytes: u64, last_packet_number: u64) {
        self.sent(last_packet_number);
    }

    fn on_ack(
        &mut self,
        now: Instant,
        sent: Instant,
        bytes: u64,
        app_limited: bool,
        rtt: &RttEstimator,
    ) {
        self.on_ack_sample(now, sent, bytes, app_limited, rtt.get());
    }

    fn on_end_acks(
        &mut self,
        _now: Instant,
        _in_flight: u64,
        _app_limited: bool,
        largest_packet_num_acked: Option<u64>,
    ) {
        self.end_acks(largest_packet_num_acked);
    }

    fn on_congestion_event(
        &mut self,
        now: Instant,
        sent: Instant,
        is_persistent_congestion: bool,
        lost_bytes: u64,
    ) {
        self.congestion_event(now, sent, is_persistent_congestion, lost_bytes);
    }

    fn on_mtu_update(&mut self, new_mtu: u16) {
        self.mtu = u64::from(new_mtu).max(1);
        self.max_window = self.max_window.max(self.min_window());
        self.window = self.window.clamp(self.min_window(), self.max_window);
    }

    fn window(&self) -> u64 {
        self.window
    }

    fn metrics(&self) -> ControllerMetrics {
        let mut metrics = ControllerMetrics::default();
        metrics.congestion_window = self.window;
        metrics.ssthresh = (self.ssthresh != u64::MAX).then_some(self.ssthresh);
        metrics
    }

    fn clone_box(&self) -> Box<dyn Controller> {
        Box::new(self.clone())
    }

    fn initial_window(&self) -> u64 {
        initial_window(self.mtu).min(self.max_window)
    }

    fn into_any(self: Box<Self>) -> Box<dyn Any> {
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MTU: u16 = 1200;
    const PKT: u64 = MTU as u64;
    const RTT: Duration = Duration::from_millis(150);

    /// Drives a controller round trip by round trip: each round sends a window of packets
    /// at `now`, and their acks and losses arrive one `rtt` later.
    struct Path {
        cc: Resilient,
        now: Instant,
        next_pn: u64,
    }

    impl Path {
        fn new(max_window: u64) -> Self {
            let now = Instant::now();
            Self { cc: Resilient::new(max_window, now, MTU), now, next_pn: 0 }
        }

        fn with_rate(max_window: u64, bytes_per_sec: u64) -> Self {
            let mut path = Self::new(max_window);
            path.cc = path.cc.with_rate(bytes_per_sec);
            path
        }

        /// One round: sends the window, loses the packets `lost` picks (by index in the
        /// round), acks the rest after `rtt`. Returns the window at the end.
        fn round(&mut self, rtt: Duration, lost: impl Fn(u64) -> bool) -> u64 {
            let packets = (self.cc.window() / PKT).max(1);
            let sent = self.now;
            let first = self.next_pn;
            for i in 0..packets {
                self.cc.on_sent(sent, PKT, first + i);
            }
            self.next_pn += packets;
            // Acks arrive spread over the last tenth of the round, one batch per ten packets.
            for i in 0..packets {
                let at = sent + rtt + rtt.mul_f64(i as f64 / packets as f64 / 10.0);
                if lost(i) {
                    self.cc.on_congestion_event(at, sent, false, PKT);
                } else {
                    self.cc.on_ack_sample(at, sent, PKT, false, rtt);
                }
                if i % 10 == 9 || i + 1 == packets {
                    self.cc.on_end_acks(at, 0, false, Some(first + i));
                }
            }
            self.now = sent + rtt + rtt / 10;
            self.cc.window()
        }

        /// Grows the window in slow start without loss or queue to at least `bytes`.
        fn grow_to(&mut self, bytes: u64) {
            while self.cc.window() < bytes {
                self.round(RTT, |_| false);
            }
        }
    }

    #[test]
    fn slow_start_doubles_and_ends_when_delay_rises_without_a_cut() {
        let mut path = Path::new(u64::MAX);
        let w0 = path.cc.window();
        assert_eq!(w0, 10 * PKT);
        let w1 = path.round(RTT, |_| false);
        assert_eq!(w1, 2 * w0);
        path.grow_to(1000 * PKT);
        assert!(path.cc.in_slow_start());
        // A queue of half the path's RTT: the pipe is full.
        let before = path.cc.window();
        let after = path.round(RTT + RTT / 2, |_| false);
        assert!(!path.cc.in_slow_start());
        assert!(after >= before && after < 2 * before, "{before} -> {after}");
        assert_eq!(path.cc.ssthresh(), path.cc.window().min(path.cc.ssthresh()));
    }

    #[test]
    fn isolated_random_loss_does_not_shrink_the_window() {
        let mut path = Path::new(u64::MAX);
        path.grow_to(2000 * PKT);
        // 0.5% loss: one packet in 200, every round, no queue. Slow start goes on.
        let mut window = path.cc.window();
        for _ in 0..3 {
            let next = path.round(RTT, |i| i % 200 == 17);
            // Doubles less only the lost packets, which are not acked.
            assert!(
                next >= 2 * window - window / 100,
                "random loss cut slow start: {window} -> {next}"
            );
            window = next;
        }
        assert!(path.cc.in_slow_start());
        // And in congestion avoidance (CUBIC growth) after slow start ended on delay.
        path.round(RTT + RTT / 2, |_| false);
        assert!(!path.cc.in_slow_start());
        let mut window = path.cc.window();
        let start = window;
        for _ in 0..20 {
            let next = path.round(RTT, |i| i % 200 == 17);
            assert!(next >= window, "random loss shrank the window: {window} -> {next}");
            window = next;
        }
        assert!(window > start);
    }

    #[test]
    fn a_high_loss_rate_is_congestion() {
        let mut path = Path::new(u64::MAX);
        path.grow_to(2000 * PKT);
        let before = path.cc.window();
        // 10% of the round lost, with no queueing delay.
        path.round(RTT, |i| i % 10 == 3);
        let after = path.cc.window();
        // Slow start grew the window by the acks before the cut, so the cut to 0.7 lands
        // somewhat above 0.7 of the window the round started with.
        assert!(after <= before * 3 / 4, "{before} -> {after}");
        assert!(!path.cc.in_slow_start());
        // One reduction for the round: the rest of that round's losses were sent before it.
        assert!(after >= before * 2 / 3, "reduced more than once: {before} -> {after}");
    }

    #[test]
    fn loss_with_a_standing_queue_is_congestion() {
        let mut path = Path::new(u64::MAX);
        path.grow_to(2000 * PKT);
        let before = path.cc.window();
        // A queue as long as the path's RTT and a single loss late in the round.
        let packets = before / PKT;
        path.round(2 * RTT, |i| i == packets - 5);
        let after = path.cc.window();
        assert!(after < before, "{before} -> {after}");
        assert!(after >= before * 7 / 10 - PKT);
    }

    #[test]
    fn a_short_standing_queue_is_drained_not_cut_by_beta() {
        let mut path = Path::new(u64::MAX);
        path.grow_to(2000 * PKT);
        path.round(RTT + RTT / 2, |_| false); // ends slow start
        let before = path.cc.window();
        // A 40% queue: cutting to 0.7 would empty part of the pipe; the cut is to 1/1.4.
        let packets = before / PKT;
        path.round(RTT.mul_f64(1.4), |i| i == packets - 5);
        let after = path.cc.window() as f64;
        let share = after / before as f64;
        assert!((share - 1.0 / 1.4).abs() < 0.01, "cut to {share} of the window");
    }

    #[test]
    fn persistent_congestion_collapses_the_window() {
        let mut path = Path::new(u64::MAX);
        path.grow_to(500 * PKT);
        let now = path.now + RTT * 4;
        path.cc.on_congestion_event(now, path.now, true, 100 * PKT);
        assert_eq!(path.cc.window(), 2 * PKT);
        // It recovers: acks of packets sent after the collapse grow it again.
        path.now = now + Duration::from_millis(1);
        let grown = path.round(RTT, |_| false);
        assert!(grown > 2 * PKT);
    }

    #[test]
    fn the_window_stays_within_its_limits_under_any_feedback() {
        let max = 300 * PKT;
        let mut path = Path::new(max);
        assert_eq!(path.cc.initial_window(), 10 * PKT);
        // A small deterministic generator: loss patterns, RTTs from 0 to 3 × the base.
        let mut state = 0x9e37_79b9_7f4a_7c15_u64;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        for _ in 0..300 {
            let r = next();
            let rtt = RTT.mul_f64((r % 300) as f64 / 100.0);
            let modulus = 1 + (r >> 20) % 50;
            path.round(rtt, |i| i % modulus == 0 && (r >> 40) % 3 == 0);
            let w = path.cc.window();
            assert!((2 * PKT..=max).contains(&w), "window {w} outside [2, 300] packets");
        }
        // Degenerate inputs do not panic and keep the window in range.
        let now = path.now;
        path.cc.on_ack_sample(now, now + RTT, 0, false, Duration::ZERO);
        path.cc.on_congestion_event(now, now + RTT, false, 0);
        path.cc.on_end_acks(now, 0, false, None);
        path.cc.on_mtu_update(0);
        path.cc.on_mtu_update(u16::MAX);
        assert!((2 * u64::from(u16::MAX)..=max).contains(&path.cc.window()));
        let factory = Arc::new(ResilientConfig::new(1));
        let tiny = factory.build(now, MTU);
        assert_eq!(tiny.window(), 2 * PKT, "the cap never goes below the minimum window");
    }

    #[test]
    fn app_limited_acks_do_not_grow_the_window() {
        let mut path = Path::new(u64::MAX);
        let before = path.cc.window();
        let now = path.now;
        for pn in 0..10 {
            path.cc.on_sent(now, PKT, pn);
            path.cc.on_ack_sample(now + RTT, now, PKT, true, RTT);
        }
        assert_eq!(path.cc.window(), before);
    }

    #[test]
    fn the_window_jumps_to_the_configured_rate_at_the_first_rtt_sample() {
        // 1 Gb/s over a measured 150 ms: an 18.75 MB window after the first round trip,
        // where slow start alone would have doubled ten datagrams to twenty.
        let mut path = Path::with_rate(u64::MAX, 125_000_000);
        assert_eq!(path.cc.window(), 10 * PKT);
        let after = path.round(RTT, |_| false);
        assert!(after >= 18_750_000, "no jump: {after}");
        assert!(path.cc.in_slow_start(), "the jump is not a cut");
        let mut plain = Path::new(u64::MAX);
        assert_eq!(plain.round(RTT, |_| false), 20 * PKT);
        // Capped by the window limit, and only once: a later, longer RTT sample does not
        // jump again (the window then grows by slow start's doubling, which is less).
        let mut capped = Path::with_rate(5_000_000, 125_000_000);
        assert_eq!(capped.round(RTT, |_| false), 5_000_000);
        let mut once = Path::with_rate(u64::MAX, 125_000_000);
        once.round(RTT / 10, |_| false);
        let jumped = once.cc.window();
        assert!(jumped < 2_000_000, "jumped for a 15 ms RTT: {jumped}");
        assert!(once.round(RTT, |_| false) <= 2 * jumped);
    }

    #[test]
    fn the_window_is_kept_across_idle() {
        // A round's payload, then seconds of silence (the inner steps), then the next
        // round: the window the path was measured at a round ago is still there, and the
        // next round sends all of it at once (no slow-start restart).
        let mut path = Path::new(u64::MAX);
        path.grow_to(1000 * PKT);
        path.round(RTT + RTT / 2, |_| false); // ends slow start on delay
        path.round(RTT, |_| false);
        let before = path.cc.window();
        // The tail of the payload: acked while there was nothing left to send.
        let now = path.now;
        for i in 0..10 {
            path.cc.on_sent(now, PKT, path.next_pn + i);
            path.cc.on_ack_sample(now + RTT, now, PKT, true, RTT);
        }
        path.next_pn += 10;
        path.now += Duration::from_millis(7500);
        assert_eq!(path.cc.window(), before);
        // The next round: a full window in flight, no loss, so no reduction.
        let after = path.round(RTT, |_| false);
        assert!(after >= before, "{before} -> {after}");
    }

    #[test]
    fn random_loss_above_the_fixed_threshold_becomes_the_floor_and_a_rise_above_it_is_congestion() {
        // 4% random loss from the first packet: twice LOSS_THRESHOLD, so without the floor
        // every round with enough packets would read as congestion and cut the window.
        let mut path = Path::new(u64::MAX);
        let four_percent = |i: u64| i % 25 == 7;
        for _ in 0..30 {
            path.round(RTT, four_percent);
        }
        let floor = path.cc.loss_floor();
        assert!((0.03..=0.05).contains(&floor), "floor {floor}");
        let mut window = path.cc.window();
        // Large enough that two rounds at 4% lose far more than 2% + 3σ would allow.
        assert!(window > 500 * PKT, "the window stayed small: {window}");
        for _ in 0..20 {
            let next = path.round(RTT, four_percent);
            assert!(
                next >= window,
                "random loss at the floor shrank the window: {window} -> {next}"
            );
            window = next;
        }
        // Congestion on top of the random loss: a fifth of the round lost.
        let before = path.cc.window();
        path.round(RTT, |i| i % 5 == 1);
        let after = path.cc.window();
        assert!(after <= before * 3 / 4, "{before} -> {after}");
    }

    #[test]
    fn the_loss_floor_ignores_overflows_and_is_capped() {
        let mut path = Path::new(u64::MAX);
        path.grow_to(2000 * PKT);
        assert_eq!(path.cc.loss_floor(), 0.0);
        // Clean rounds with one overflowing round among them: the median leaves it out.
        for round in 0..12 {
            path.round(RTT, |i| round == 5 && i % 4 == 0);
        }
        assert_eq!(path.cc.loss_floor(), 0.0);
        // A path losing half of everything is not given a 50% floor.
        let mut bad = Path::new(u64::MAX);
        let now = bad.now;
        for _ in 0..FLOOR_SAMPLE_PACKETS * 10 {
            bad.cc.on_ack_sample(now + RTT, now, PKT, false, RTT);
            bad.cc.on_congestion_event(now + RTT, now, false, PKT);
        }
        assert_eq!(bad.cc.loss_floor(), MAX_LOSS_FLOOR);
    }
}
