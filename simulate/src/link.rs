//! One direction of a link: its configuration ([`LinkSpec`]) and the deterministic model
//! that decides each datagram's fate ([`LinkModel`]).
//!
//! The model is sans-IO: it is fed `(now, size)` and answers when the datagram arrives (or
//! why it does not), so it is tested without sockets or clocks. Per datagram, in order
//! (the order `tc netem` applies its stages in, with the rate limiter behind it):
//! 1. **outage**: inside an outage window the datagram is dropped;
//! 2. **loss**: random loss, then Gilbert–Elliott bursty loss (a lost datagram never
//!    reaches the queue, so it costs no bandwidth);
//! 3. **queue**: a drop-tail FIFO in front of a serializer at `rate`; a datagram that does
//!    not fit (bytes, or the wait it would see) is dropped;
//! 4. **serialization**: `(size + 28 bytes of IPv4/UDP header) × 8 / rate` after the
//!    previous datagram leaves;
//! 5. **propagation**: `delay` plus uniform jitter in `[-jitter, +jitter]` (clamped at 0);
//!    a datagram never arrives before the one sent ahead of it unless it is picked for
//!    **reordering**, which adds `reorder_delay` and lets later datagrams overtake it;
//! 6. **duplication**: a copy arrives together with the original.
//!
//! Schedules: `outages` (windows of total loss) and `changes` (from a time on, another
//! rate, delay, loss or burst model) are given relative to the start of the simulation.

use std::collections::VecDeque;
use std::fmt;
use std::time::Duration;

use serde::Deserialize;

use crate::rng::Rng;
use crate::units::{short, Dur, Prob, QueueLimit, Rate};

/// Bytes of IPv4 + UDP header a datagram carries on the wire besides its payload.
pub const HEADER_BYTES: u64 = 28;

/// Largest UDP payload of a 1500-byte Ethernet MTU over IPv4.
pub const DEFAULT_MAX_DATAGRAM: usize = 1472;

/// One direction of a link between two hosts. In TOML every field is optional; unknown
/// fields are an error. Units are written in the value (see [`crate::units`]):
///
/// ```toml
/// delay = "35ms"        # one-way propagation delay
/// jitter = "1ms"        # uniform in [-1ms, +1ms], order kept
/// rate = "1Gbps"        # bottleneck rate; omit for none
/// queue = "50ms"        # drop-tail limit: "256KiB" (bytes) or "50ms" (wait)
/// loss = "0.2%"         # independent random loss
/// burst = { loss = "3%", mean_burst = 4 }   # Gilbert–Elliott bursty loss
/// reorder = "1%"        # datagrams held back by reorder_delay, others overtake them
/// duplicate = "0.1%"
/// outages = [{ at = "60s", duration = "30s" }]
/// changes = [{ at = "120s", rate = "100Mbps" }]
/// ```
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LinkSpec {
    /// One-way propagation delay. Default 0.
    pub delay: Dur,
    /// Half-width of the uniform jitter added to `delay`. Default 0.
    pub jitter: Dur,
    /// Bottleneck rate; `None` serializes instantly. Default `None`.
    pub rate: Option<Rate>,
    /// Drop-tail queue limit. Default 100 ms of waiting at the current rate.
    pub queue: QueueLimit,
    /// Independent random loss probability. Default 0.
    pub loss: Prob,
    /// Gilbert–Elliott bursty loss, on top of `loss`. Default none.
    pub burst: Option<GilbertElliott>,
    /// Probability a datagram is held back by `reorder_delay`. Default 0.
    pub reorder: Prob,
    /// Extra delay of a reordered datagram. Default 2 ms.
    pub reorder_delay: Dur,
    /// Probability a datagram is delivered twice. Default 0.
    pub duplicate: Prob,
    /// Largest datagram carried; larger ones are dropped (there is no fragmentation).
    /// Default 1472 (a 1500-byte MTU).
    pub max_datagram: usize,
    /// Windows in which every datagram is dropped.
    pub outages: Vec<Window>,
    /// Parameter changes from a given time on (later entries win).
    pub changes: Vec<Change>,
}

impl Default for LinkSpec {
    fn default() -> Self {
        LinkSpec {
            delay: Dur::default(),
            jitter: Dur::default(),
            rate: None,
            queue: QueueLimit::Time(Duration::from_millis(100)),
            loss: Prob::default(),
            burst: None,
            reorder: Prob::default(),
            reorder_delay: Dur(Duration::from_millis(2)),
            duplicate: Prob::default(),
            max_datagram: DEFAULT_MAX_DATAGRAM,
            outages: Vec::new(),
            changes: Vec::new(),
        }
    }
}

/// A time window, relative to the start of the simulation.
#[derive(Debug, Clone, Copy, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Window {
    /// Start.
    pub at: Dur,
    /// Length.
    pub duration: Dur,
}

impl Window {
    fn contains(&self, t: Duration) -> bool {
        t >= self.at.0 && t < self.at.0 + self.duration.0
    }
}

/// From `at` on, the given parameters replace the link's (omitted ones stay).
#[derive(Debug, Clone, PartialEq, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Change {
    /// When the change takes effect, relative to the start of the simulation.
    pub at: Dur,
    /// New rate.
    pub rate: Option<Rate>,
    /// New one-way delay.
    pub delay: Option<Dur>,
    /// New random loss.
    pub loss: Option<Prob>,
    /// New bursty loss model (`{ loss = 0 }` turns it off).
    pub burst: Option<GilbertElliott>,
}

/// Gilbert–Elliott two-state loss: a good state and a bad (burst) state, one transition
/// draw per datagram. Written either by its long-run figures, `{ loss, mean_burst }` (the
/// bad state loses everything, the good state nothing), or by its transition
/// probabilities `{ p, r }` with optional per-state loss `loss_bad` (default 1) and
/// `loss_good` (default 0), as in Hasslinger & Hohlfeld's parameterisation and netem's
/// `loss gemodel p r 1-h 1-k`.
#[derive(Debug, Clone, Copy, PartialEq, Deserialize)]
#[serde(try_from = "BurstToml")]
pub struct GilbertElliott {
    /// Probability of going from good to bad, per datagram.
    pub p: f64,
    /// Probability of going from bad to good, per datagram.
    pub r: f64,
    /// Loss probability in the bad state.
    pub loss_bad: f64,
    /// Loss probability in the good state.
    pub loss_good: f64,
}

impl GilbertElliott {
    /// A model whose bad state drops everything, with long-run loss `loss` and mean burst
    /// length `mean_burst` datagrams: r = 1 / mean_burst, p = r·loss / (1 − loss).
    pub fn with_mean(loss: f64, mean_burst: f64) -> Result<GilbertElliott, String> {
        if !(0.0..1.0).contains(&loss) {
            return Err(format!("burst loss must be in [0, 1), got {loss}"));
        }
        if !(mean_burst.is_finite() && mean_burst >= 1.0) {
            return Err(format!("mean_burst must be at least 1 datagram, got {mean_burst}"));
        }
        let r = 1.0 / mean_burst;
        let p = r * loss / (1.0 - loss);
        if p > 1.0 {
            return Err(format!("burst loss {loss} with mean_burst {mean_burst} needs p > 1"));
        }
        Ok(GilbertElliott { p, r, loss_bad: 1.0, loss_good: 0.0 })
    }

    /// Long-run loss probability: π_bad·loss_bad + π_good·loss_good.
    pub fn mean_loss(&self) -> f64 {
        if self.p + self.r == 0.0 {
            return self.loss_good;
        }
        let bad = self.p / (self.p + self.r);
        bad * self.loss_bad + (1.0 - bad) * self.loss_good
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct BurstToml {
    loss: Option<Prob>,
    mean_burst: Option<f64>,
    p: Option<Prob>,
    r: Option<Prob>,
    loss_bad: Option<Prob>,
    loss_good: Option<Prob>,
}

impl TryFrom<BurstToml> for GilbertElliott {
    type Error = String;

    fn try_from(t: BurstToml) -> Result<Self, String> {
        match t {
            BurstToml {
                loss: Some(loss),
                mean_burst,
                p: None,
                r: None,
                loss_bad: None,
                loss_good: None,
            } => GilbertElliott::with_mean(loss.get(), mean_burst.unwrap_or(1.0)),
            BurstToml {
                loss: None,
                mean_burst: None,
                p: Some(p),
                r: Some(r),
                loss_bad,
                loss_good,
            } => Ok(GilbertElliott {
                p: p.get(),
                r: r.get(),
                loss_bad: loss_bad.map_or(1.0, Prob::get),
                loss_good: loss_good.map_or(0.0, Prob::get),
            }),
            _ => Err("burst takes either { loss, mean_burst } or { p, r, loss_bad, loss_good }"
                .to_string()),
        }
    }
}

impl LinkSpec {
    /// A link with this one-way delay and rate, nothing else.
    pub fn new(delay: Duration, rate_bps: Option<f64>) -> Result<LinkSpec, String> {
        let rate = rate_bps.map(Rate::new).transpose()?;
        Ok(LinkSpec { delay: Dur(delay), rate, ..LinkSpec::default() })
    }

    /// Checks what the types cannot: sizes, ordering of schedules, probabilities of
    /// programmatically built burst models. `Err` holds the field and the reason.
    pub fn validate(&self) -> Result<(), (String, String)> {
        let bad = |field: &str, reason: String| Err((field.to_string(), reason));
        if let Some(rate) = self.rate {
            if let Err(e) = Rate::new(rate.bits_per_sec()) {
                return bad("rate", e);
            }
        }
        if self.max_datagram == 0 {
            return bad("max_datagram", "must be at least 1 byte".into());
        }
        if self.queue == QueueLimit::Bytes(0) || self.queue == QueueLimit::Time(Duration::ZERO) {
            return bad("queue", "must be positive".into());
        }
        let bursts = self.burst.iter().chain(self.changes.iter().filter_map(|c| c.burst.as_ref()));
        for ge in bursts {
            for (name, v) in
                [("p", ge.p), ("r", ge.r), ("loss_bad", ge.loss_bad), ("loss_good", ge.loss_good)]
            {
                if !(0.0..=1.0).contains(&v) {
                    return bad("burst", format!("{name} must be in [0, 1], got {v}"));
                }
            }
        }
        if self.changes.windows(2).any(|w| w[0].at > w[1].at) {
            return bad("changes", "must be in order of `at`".into());
        }
        Ok(())
    }

    /// Mean one-way delay, ignoring queueing and serialization.
    pub fn base_delay(&self) -> Duration {
        self.delay.0
    }
}

impl fmt::Display for LinkSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "delay {}", self.delay)?;
        if self.jitter.0 > Duration::ZERO {
            write!(f, " ±{}", self.jitter)?;
        }
        match self.rate {
            Some(rate) => write!(f, ", {rate}, queue {}", self.queue)?,
            None => write!(f, ", no rate limit")?,
        }
        if self.loss.get() > 0.0 {
            write!(f, ", loss {}", self.loss)?;
        }
        if let Some(ge) = self.burst {
            let (loss, burst) = (short(ge.mean_loss() * 100.0), short(1.0 / ge.r));
            write!(f, ", bursty loss {loss}% (mean burst {burst})")?;
        }
        if self.reorder.get() > 0.0 {
            write!(f, ", reorder {}", self.reorder)?;
        }
        if self.duplicate.get() > 0.0 {
            write!(f, ", duplicate {}", self.duplicate)?;
        }
        for w in &self.outages {
            write!(f, ", outage at {} for {}", w.at, w.duration)?;
        }
        for c in &self.changes {
            write!(f, ", at {}:", c.at)?;
            if let Some(rate) = c.rate {
                write!(f, " rate {rate}")?;
            }
            if let Some(delay) = c.delay {
                write!(f, " delay {delay}")?;
            }
            if let Some(loss) = c.loss {
                write!(f, " loss {loss}")?;
            }
            if let Some(ge) = c.burst {
                write!(f, " bursty loss {}%", short(ge.mean_loss() * 100.0))?;
            }
        }
        Ok(())
    }
}

/// Why a datagram did not arrive.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DropReason {
    /// Random loss.
    Random,
    /// Gilbert–Elliott burst loss.
    Burst,
    /// The drop-tail queue was full.
    Queue,
    /// An outage window (or a partition) was in effect.
    Outage,
    /// Larger than the link's `max_datagram`.
    TooLarge,
}

/// A datagram's fate on one link.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fate {
    /// Arrives at this time (since the start), once or (duplicated) twice.
    Arrives {
        /// Arrival time.
        at: Duration,
        /// True when a copy arrives too, at the same time.
        duplicated: bool,
    },
    /// Does not arrive.
    Dropped(DropReason),
}

/// The state of one link direction: its RNG, the queue, the Gilbert–Elliott state.
///
/// Feed datagrams with [`offer`](Self::offer) in nondecreasing `now` order.
#[derive(Debug, Clone)]
pub struct LinkModel {
    spec: LinkSpec,
    rng: Rng,
    /// Parameters in effect (after the changes applied so far).
    rate: Option<f64>,
    delay: Duration,
    loss: f64,
    burst: Option<GilbertElliott>,
    next_change: usize,
    /// Departure time (end of serialization) and wire size of each queued datagram.
    queue: VecDeque<(Duration, u64)>,
    queued_bytes: u64,
    /// When the serializer is free again.
    busy_until: Duration,
    /// Latest arrival scheduled for an in-order datagram.
    last_arrival: Duration,
    bad_state: bool,
}

impl LinkModel {
    /// A model of `spec` whose random stream is fixed by `seed`.
    pub fn new(spec: LinkSpec, seed: u64) -> LinkModel {
        LinkModel {
            rate: spec.rate.map(Rate::bits_per_sec),
            delay: spec.delay.0,
            loss: spec.loss.get(),
            burst: spec.burst,
            spec,
            rng: Rng::new(seed),
            next_change: 0,
            queue: VecDeque::new(),
            queued_bytes: 0,
            busy_until: Duration::ZERO,
            last_arrival: Duration::ZERO,
            bad_state: false,
        }
    }

    /// The spec this model runs.
    pub fn spec(&self) -> &LinkSpec {
        &self.spec
    }

    /// Decides the fate of a datagram of `len` payload bytes offered at `now` (time since
    /// the start of the simulation; nondecreasing across calls).
    pub fn offer(&mut self, now: Duration, len: usize) -> Fate {
        self.apply_changes(now);
        // Draw every random number each time, so a datagram's fate depends only on its
        // position in the stream, not on which earlier stage dropped an earlier one.
        let loss_draw = self.rng.unit();
        let burst_draw = self.rng.unit();
        let transition_draw = self.rng.unit();
        let jitter_draw = self.rng.unit();
        let reorder_draw = self.rng.unit();
        let dup_draw = self.rng.unit();

        if len > self.spec.max_datagram {
            return Fate::Dropped(DropReason::TooLarge);
        }
        if self.spec.outages.iter().any(|w| w.contains(now)) {
            return Fate::Dropped(DropReason::Outage);
        }
        if loss_draw < self.loss {
            return Fate::Dropped(DropReason::Random);
        }
        if let Some(ge) = self.burst {
            // Move the chain first, then lose with the new state's probability.
            self.bad_state =
                if self.bad_state { transition_draw >= ge.r } else { transition_draw < ge.p };
            let p = if self.bad_state { ge.loss_bad } else { ge.loss_good };
            if burst_draw < p {
                return Fate::Dropped(DropReason::Burst);
            }
        }

        let wire = len as u64 + HEADER_BYTES;
        let departs = match self.rate {
            None => now,
            Some(rate) => {
                while self.queue.front().is_some_and(|&(t, _)| t <= now) {
                    if let Some((_, b)) = self.queue.pop_front() {
                        self.queued_bytes -= b;
                    }
                }
                let start = self.busy_until.max(now);
                let fits = match self.spec.queue {
                    QueueLimit::Bytes(limit) => self.queued_bytes + wire <= limit,
                    QueueLimit::Time(limit) => start - now <= limit,
                };
                if !fits {
                    return Fate::Dropped(DropReason::Queue);
                }
                let serialize = Duration::from_secs_f64(wire as f64 * 8.0 / rate);
                let departs = start + serialize;
                self.busy_until = departs;
                self.queue.push_back((departs, wire));
                self.queued_bytes += wire;
                departs
            }
        };

        let jitter = self.spec.jitter.0.as_secs_f64() * (2.0 * jitter_draw - 1.0);
        let delay = (self.delay.as_secs_f64() + jitter).max(0.0);
        let mut at = departs + Duration::from_secs_f64(delay);
        if reorder_draw < self.spec.reorder.get() {
            at += self.spec.reorder_delay.0;
        } else {
            at = at.max(self.last_arrival);
            self.last_arrival = at;
        }
        Fate::Arrives { at, duplicated: dup_draw < self.spec.duplicate.get() }
    }

    fn apply_changes(&mut self, now: Duration) {
        while let Some(change) = self.spec.changes.get(self.next_change) {
            if change.at.0 > now {
                break;
            }
            if let Some(rate) = change.rate {
                self.rate = Some(rate.bits_per_sec());
            }
            if let Some(delay) = change.delay {
                self.delay = delay.0;
            }
            if let Some(loss) = change.loss {
                self.loss = loss.get();
            }
            if let Some(ge) = change.burst {
                self.burst = Some(ge);
            }
            self.next_change += 1;
        }
    }
}

#[cfg(test)]
mod tests;
