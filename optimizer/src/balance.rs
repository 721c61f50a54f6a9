//! Sites of different speeds: each worker trains a share of a round's inner steps sized to
//! its pace, and each contribution counts by the steps it trained.
//!
//! Without balancing every worker trains every inner step of a round, so a site at half
//! speed reaches the round's exchange after twice the time and every other site waits for
//! it (hivemind's target batch and torchft's per-replica `sync_every` answer the same
//! problem). With an algorithm's `balance` setting on, the schedule of steps and rounds
//! stays the run's (so overlap, Streaming DiLoCo's fragments, catch-up and replay are
//! unchanged) but a slow worker *skips* some steps: it trains a fraction `duty` of them,
//! spread evenly (step `s` trains when `⌊(s+1)·duty⌋ > ⌊s·duty⌋`), and a skipped step costs
//! no time. Its round then takes about as long as a fast worker's.
//!
//! The duty is sized from what the payloads carry ([`Effort`]): each payload states the
//! steps its sender trained since its previous launch and its mean time per trained step.
//! When a round lands, a worker sets `duty = fastest / own` over the members applied, less
//! what it takes to make up compute it spent beyond rounds at the fastest pace, left at 1
//! when within [`DEAD_BAND`] of the fastest (jitter, not a slower site) and never below
//! [`MIN_DUTY`]. During its first round a worker has only its own pace; the first payload
//! of a faster peer, which arrives ahead of the commit, sizes the rest of that round
//! ([`Balance::early`]).
//!
//! The mean is weighted by the steps trained ([`weigh`]): every worker of a run steps the
//! same batch, so this is the token-weighted mean. Every replica weighs the same payloads
//! the same way, so replicas stay bit-identical. A claim beyond the steps a round spans is
//! counted as that many (a member cannot buy weight by overstating its work).

use crate::payload::Effort;
use crate::robust::MemberUpdate;

/// A worker within this fraction of the fastest member's pace trains every step.
pub const DEAD_BAND: f64 = 0.05;

/// The smallest share of steps a worker trains, however slow it is.
pub const MIN_DUTY: f64 = 1.0 / 64.0;

/// One worker's balancing: which steps it trains and what its next payload states.
#[derive(Debug, Clone)]
pub struct Balance {
    enabled: bool,
    duty: f64,
    /// Steps since the last launch: trained, and all of them.
    trained: u32,
    stepped: u64,
    /// The trained steps' measured compute time, and how many were measured.
    seconds: f64,
    timed: u32,
    /// Seconds per trained step, as last measured (kept across a round with none).
    pace: Option<f64>,
    /// Steps between the last two launches: a round's length, to spread a catch-up over.
    span: u64,
    /// Compute seconds this worker spent beyond rounds at the fastest member's pace since
    /// it joined: what it still has to catch up (never below zero).
    behind: f64,
    /// What this worker stated for the round in flight or in exchange.
    launched: Option<Effort>,
}

impl Balance {
    /// Balancing on or off (off: every step trains; payloads still state their effort).
    pub fn new(enabled: bool) -> Self {
        Self {
            enabled,
            duty: 1.0,
            trained: 0,
            stepped: 0,
            seconds: 0.0,
            timed: 0,
            pace: None,
            span: 0,
            behind: 0.0,
            launched: None,
        }
    }

    /// The share of inner steps this worker trains.
    pub fn duty(&self) -> f64 {
        self.duty
    }

    /// Compute seconds this worker still has to catch up on the fastest member's pace.
    pub fn behind(&self) -> f64 {
        self.behind
    }

    /// Whether inner step `step` trains (or is skipped, costing no time).
    pub fn trains(&self, step: u64) -> bool {
        if self.duty >= 1.0 {
            return true;
        }
        let s = step as f64;
        ((s + 1.0) * self.duty).floor() > (s * self.duty).floor()
    }

    /// An inner step passed, trained or skipped.
    pub fn stepped(&mut self, trained: bool) {
        self.stepped += 1;
        if trained {
            self.trained = self.trained.saturating_add(1);
        }
    }

    /// A trained step's compute time, as the driver measured it (a time that is not
    /// finite and positive is ignored).
    pub fn timed(&mut self, seconds: f64) {
        if seconds.is_finite() && seconds > 0.0 {
            self.seconds += seconds;
            self.timed += 1;
        }
    }

    /// A round launches: what its payload states, and the counters start over.
    pub fn launch(&mut self) -> Effort {
        if self.timed > 0 {
            self.pace = Some(self.seconds / f64::from(self.timed));
        }
        let step_micros =
            self.pace.map_or(0, |p| (p * 1e6).round().clamp(1.0, f64::from(u32::MAX)) as u32);
        let effort = Effort { steps: self.trained, step_micros };
        self.span = self.stepped;
        (self.trained, self.stepped, self.seconds, self.timed) = (0, 0, 0.0, 0);
        self.launched = Some(effort);
        effort
    }

    /// Another member launched the round this worker is still training for, stating `peer`
    /// (its payload arrived ahead of the commit). During its first round (before it has
    /// launched one) a worker knows no pace but its own; a peer done first tells it whether
    /// it is slower. If finishing the round at its current duty would take it more than
    /// [`DEAD_BAND`] beyond the time the peer spent on the round, the duty drops so that it
    /// finishes about then (a half-speed worker learns it halfway through its first round,
    /// instead of a round late). Later rounds are sized at their landing.
    pub fn early(&mut self, peer: Effort) {
        if !self.enabled || self.span > 0 || peer.step_micros == 0 || self.stepped == 0 {
            return;
        }
        let own = if self.timed > 0 { self.seconds / f64::from(self.timed) } else { return };
        let peer_spent = f64::from(peer.steps) * f64::from(peer.step_micros) * 1e-6;
        let spent = f64::from(self.trained) * own;
        // The first round: the peer trained every one of its steps.
        let remaining = u64::from(peer.steps).saturating_sub(self.stepped).max(1) as f64;
        if spent + remaining * self.duty * own <= (1.0 + DEAD_BAND) * peer_spent {
            return;
        }
        let duty = ((peer_spent - spent) / (remaining * own)).max(MIN_DUTY);
        self.duty = self.duty.min(duty);
    }

    /// A round this worker launched landed with the members' `efforts`. Sizes the duty of
    /// the next steps: the fastest member's pace over this worker's own, less what it
    /// takes to make up the compute it spent beyond a round at that pace so far (a worker
    /// that trained every step of the first round at half speed is half a round late, and
    /// would hold every later round up by as much).
    pub fn landed(&mut self, efforts: &[Effort]) {
        let launched = self.launched.take();
        if !self.enabled {
            return;
        }
        let Some(own) = self.pace else { return };
        let Some(fastest) = efforts.iter().map(|e| e.step_micros).filter(|&t| t > 0).min() else {
            return;
        };
        let fastest = f64::from(fastest) * 1e-6;
        if let Some(mine) = launched {
            // The round's steps at the fastest pace: what the round took the run.
            let ideal = self.span as f64 * fastest;
            let spent = f64::from(mine.steps) * f64::from(mine.step_micros) * 1e-6;
            if (spent - ideal).abs() > DEAD_BAND * ideal {
                self.behind = (self.behind + spent - ideal).max(0.0);
            }
        }
        let catch_up = if self.span > 0 { self.behind / (own * self.span as f64) } else { 0.0 };
        let duty = (fastest / own).min(1.0) - catch_up;
        self.duty = if duty >= 1.0 - DEAD_BAND { 1.0 } else { duty.max(MIN_DUTY) };
    }
}

/// Weighs `members`' updates by the steps each trained (`steps`, in the same order), each
/// claim capped at `span`, the steps a round spans: after this, the plain mean of the
/// updates is the step-weighted mean. Equal claims (the unbalanced case) leave the updates
/// untouched, bit for bit; so do claims that sum to zero.
pub fn weigh<T: MemberUpdate>(members: &mut [(u32, T)], steps: &[u32], span: u64) {
    let capped: Vec<f64> = steps.iter().map(|&s| u64::from(s).min(span) as f64).collect();
    let total: f64 = capped.iter().sum();
    if total <= 0.0 || capped.windows(2).all(|w| w[0] == w[1]) {
        return;
    }
    let n = capped.len() as f64;
    for ((_, u), w) in members.iter_mut().zip(&capped) {
        u.scale((w * n / total) as f32);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_half_speed_worker_trains_every_other_step_and_a_fast_one_every_step() {
        // A worker at half the pace of the others, in step with them (it trained 15 of 30).
        let mut b = Balance::new(true);
        for s in 0..30 {
            b.stepped(s % 2 == 1);
            if s % 2 == 1 {
                b.timed(2.0);
            }
        }
        let mine = b.launch();
        assert_eq!(mine, Effort { steps: 15, step_micros: 2_000_000 });
        let fast = Effort { steps: 30, step_micros: 1_000_000 };
        b.landed(&[fast, fast, mine]);
        assert_eq!((b.duty(), b.behind()), (0.5, 0.0));
        let trained = (0..30).filter(|&s| b.trains(s)).count();
        assert_eq!(trained, 15, "half of a round's steps, spread evenly");
        assert!((0..30).step_by(2).all(|s| !b.trains(s) || !b.trains(s + 1)));

        // Within the dead band of the fastest (jitter), every step trains.
        let mut near = Balance::new(true);
        near.stepped(true);
        near.timed(1.03);
        let e = near.launch();
        near.landed(&[fast, e]);
        assert_eq!(near.duty(), 1.0);
        // Off: the duty never moves.
        let mut off = Balance::new(false);
        off.stepped(true);
        off.timed(2.0);
        let e = off.launch();
        off.landed(&[fast, e]);
        assert_eq!(off.duty(), 1.0);
        // A hopeless pace trains the floor's share; a round it trained nothing in keeps the
        // pace last measured.
        let mut slow = Balance::new(true);
        slow.stepped(true);
        slow.timed(1000.0);
        let e = slow.launch();
        slow.landed(&[fast, e]);
        assert_eq!(slow.duty(), MIN_DUTY);
        slow.stepped(false);
        let idle = slow.launch();
        assert_eq!(idle, Effort { steps: 0, step_micros: 1_000_000_000 });
    }

    #[test]
    fn a_worker_that_ran_behind_trains_less_until_it_has_caught_up() {
        // The first round, before any pace was known: 30 steps at 2 s against the others'
        // 30 at 1 s, so it is 30 s late.
        let mut b = Balance::new(true);
        for _ in 0..30 {
            b.stepped(true);
            b.timed(2.0);
        }
        let fast = Effort { steps: 30, step_micros: 1_000_000 };
        let mine = b.launch();
        b.landed(&[fast, fast, mine]);
        assert_eq!(b.behind(), 30.0);
        // Half speed, less 30 s over a 30-step round at 2 s a step: the floor.
        assert_eq!(b.duty(), MIN_DUTY);
        let round = |b: &mut Balance, first: u64| {
            let steps: Vec<bool> = (first..first + 30).map(|s| b.trains(s)).collect();
            for &trained in &steps {
                b.stepped(trained);
                if trained {
                    b.timed(2.0);
                }
            }
            let mine = b.launch();
            b.landed(&[fast, fast, mine]);
            steps.iter().filter(|&&t| t).count()
        };
        // Steps 30 to 59 at the floor's share (one step in 64) train none: it makes up its
        // 30 s, and then trains every other step, in step with the others.
        assert_eq!(round(&mut b, 30), 0);
        assert_eq!((b.behind(), b.duty()), (0.0, 0.5));
        assert_eq!(round(&mut b, 60), 15);
        assert_eq!((b.behind(), b.duty()), (0.0, 0.5));
    }

    #[test]
    fn a_peer_done_first_tells_a_slow_worker_to_skip_before_its_first_landing() {
        // Halfway through a 30-step first round at 2 s a step, a peer's payload says it
        // trained the 30 steps at 1 s: finishing all 15 left would take 60 s against its 30,
        // so the worker trains none of them (its 30 s are spent) and is in step.
        let fast = Effort { steps: 30, step_micros: 1_000_000 };
        let mut b = Balance::new(true);
        for _ in 0..15 {
            b.stepped(true);
            b.timed(2.0);
        }
        b.early(fast);
        assert_eq!(b.duty(), MIN_DUTY);
        // A peer that finished just ahead of a worker of the same pace changes nothing.
        let mut twin = Balance::new(true);
        for _ in 0..29 {
            twin.stepped(true);
            twin.timed(1.02);
        }
        twin.early(fast);
        assert_eq!(twin.duty(), 1.0);
        // Nor does a peer's payload once rounds have landed (their sizing takes over), or
        // with balancing off.
        let mut later = Balance::new(true);
        later.stepped(true);
        later.timed(2.0);
        later.launch();
        later.stepped(true);
        later.early(fast);
        assert_eq!(later.duty(), 1.0);
        let mut off = Balance::new(false);
        off.stepped(true);
        off.timed(2.0);
        off.early(fast);
        assert_eq!(off.duty(), 1.0);
    }

    #[test]
    fn weights_follow_the_steps_trained_and_overstated_claims_are_capped() {
        let mut members: Vec<(u32, Vec<Vec<f32>>)> =
            vec![(0, vec![vec![1.0]]), (1, vec![vec![1.0]]), (2, vec![vec![1.0]])];
        weigh(&mut members, &[30, 30, 15], 30);
        // Weights 30, 30, 15 over 75 steps: scaled by w·3/75, so the plain mean of the
        // scaled values is the weighted one.
        let scaled: Vec<f32> = members.iter().map(|m| m.1[0][0]).collect();
        assert_eq!(scaled, vec![1.2, 1.2, 0.6]);
        // A member claiming a million steps counts as the round's 30.
        let mut members: Vec<(u32, Vec<Vec<f32>>)> =
            vec![(0, vec![vec![1.0]]), (1, vec![vec![1.0]])];
        weigh(&mut members, &[1_000_000, 30], 30);
        assert_eq!(members[0].1[0][0], 1.0);
        assert_eq!(members[1].1[0][0], 1.0);
        // Equal claims, or none at all: untouched.
        let mut members: Vec<(u32, Vec<Vec<f32>>)> =
            vec![(0, vec![vec![0.3]]), (1, vec![vec![0.7]])];
        weigh(&mut members, &[0, 0], 30);
        weigh(&mut members, &[12, 12], 30);
        assert_eq!(members[0].1[0][0], 0.3);
        assert_eq!(members[1].1[0][0], 0.7);
    }
}
