//! A worker's state as bytes, for a peer that catches up: its progress counters, its
//! parameters, its outer optimizer's state (global snapshot, momentum, and whatever else
//! the algorithm keeps) and its inner AdamW moments.
//!
//! The receiver checks everything (algorithm, names, shapes, finiteness) before replacing
//! any of its own state. The AdamW moments must agree where every replica steps AdamW with
//! the same averaged gradient (DDP); elsewhere they need not, and starting from a trained
//! peer's beats starting from zero. The data position stays the receiver's own.
//! An algorithm with error feedback hands over the provider's residual too; the receiver
//! sends that mass again later, a small double count that replicas agree on (every worker
//! applies only committed payloads).

use anyhow::{Context, Result};
use meridian_optimizer::outer::{OptimizerState, Phase};
use meridian_optimizer::params::ParamSet;
use meridian_optimizer::solo::{InFlight, SoloWorker};
use meridian_optimizer::train_step::TrainStep;
use tch::Tensor;

use crate::step::lm_step::LmStep;

const OUTER: &str = "outer/";
const PARAM: &str = "param";
const ADAM_M: &str = "inner/m";
const ADAM_V: &str = "inner/v";
/// The step at which the round in flight lands (absent: none in flight).
const LANDS_AT: &str = "in_flight/lands_at";
/// 1 when it lands after the backward pass, 0 after the inner step.
const LANDS_AFTER_BACKWARD: &str = "in_flight/after_backward";

/// The inner training's part of a worker's state: what a snapshot carries besides the
/// parameters, the outer optimizer and the progress counters (for Meridian's own steps,
/// AdamW's moments; for a wrapped script, its optimizer's `state_dict`).
pub trait InnerState: TrainStep {
    /// The inner state as read from a snapshot, checked, ready to install.
    type Inner;
    /// Adds the inner state to `s`, as handles where it has tensors (the caller encodes
    /// before the inner optimizer next steps).
    fn share_inner(&self, s: &mut OptimizerState, params: &ParamSet) -> Result<()>;
    /// Reads and checks the inner state in `s`, changing nothing.
    fn read_inner(&self, s: &OptimizerState, params: &ParamSet) -> Result<Self::Inner>;
    /// Installs `inner`, and moves the learning-rate schedule to inner step `step`.
    fn restore_inner(&mut self, inner: Self::Inner, step: u64) -> Result<()>;
}

/// A counter from a snapshot: a whole number a f64 holds exactly.
fn counter(s: &OptimizerState, name: &str) -> Result<u64> {
    let v = s.get_scalar(name)?;
    anyhow::ensure!(v >= 0.0 && v.fract() == 0.0 && v < 2f64.powi(53), "bad {name} {v}");
    Ok(v as u64)
}

impl InnerState for LmStep {
    type Inner = (Vec<Tensor>, Vec<Tensor>, u64);

    fn share_inner(&self, s: &mut OptimizerState, _: &ParamSet) -> Result<()> {
        let (m, v, adam_steps) = self.adam().state();
        s.share_per_tensor(ADAM_M, m);
        s.share_per_tensor(ADAM_V, v);
        s.put_scalar("adam_steps", adam_steps as f64);
        Ok(())
    }

    fn read_inner(&self, s: &OptimizerState, params: &ParamSet) -> Result<Self::Inner> {
        let m = s.per_tensor(ADAM_M, params).context("AdamW moments from a peer")?;
        let v = s.per_tensor(ADAM_V, params).context("AdamW moments from a peer")?;
        Ok((m, v, counter(s, "adam_steps")?))
    }

    fn restore_inner(&mut self, (m, v, steps): Self::Inner, step: u64) -> Result<()> {
        self.adam_mut().restore(m, v, steps).context("AdamW moments from a peer")?;
        self.set_schedule_step(step);
        Ok(())
    }
}

/// Encodes `w`'s state.
pub fn encode<S: InnerState>(w: &SoloWorker<S>) -> Result<Vec<u8>> {
    Captured::referencing(w)?.encode()
}

/// A worker's state taken before a step that exchanges, to serve a newcomer while the step
/// waits for its round (the coordinator holds rounds until the newcomer has a state).
/// Requests are rare, so the bytes are made only when one comes.
pub struct Captured(Taken);

enum Taken {
    /// Already encoded: the exchange follows the inner step, which moves the parameters
    /// and the inner optimizer's state before the wait, so they were copied out (to the
    /// host) up front.
    Encoded(Vec<u8>),
    /// The exchange follows the backward pass (DDP, DeMo): until the round commits,
    /// nothing changes the parameters or the inner state, so they are referenced as they
    /// are (handles, with the worker's counters); only the outer state, which preparing
    /// the payload changes (DeMo's momentum), was copied, on its device.
    Referenced(OptimizerState),
}

impl Captured {
    /// What [`encode`] would return now, taken before a step that exchanges in `phase`.
    pub fn before_step<S: InnerState>(w: &SoloWorker<S>, phase: Phase) -> Result<Self> {
        match phase {
            Phase::AfterBackward => Self::referencing(w),
            Phase::AfterInnerStep => Ok(Self(Taken::Encoded(encode(w)?))),
        }
    }

    /// What [`encode`] would return now, for a worker that will not move before the bytes
    /// are made (one waiting for a commit with nothing left to train).
    pub fn now<S: InnerState>(w: &SoloWorker<S>) -> Result<Self> {
        Self::referencing(w)
    }

    fn referencing<S: InnerState>(w: &SoloWorker<S>) -> Result<Self> {
        let outer = w.outer.state()?;
        let mut s = OptimizerState::new(outer.algorithm);
        // Handles, not copies: `to_bytes` copies every tensor to the host once.
        for (k, t) in &outer.tensors {
            s.share(format!("{OUTER}{k}"), t);
        }
        s.share_per_tensor(PARAM, w.params.tensors());
        w.train.share_inner(&mut s, &w.params)?;
        s.put_scalar("step", w.steps_done() as f64);
        s.put_scalar("round", w.rounds_done() as f64);
        if let Some(f) = w.in_flight() {
            // An overlapped round this worker published and has not applied: the newcomer
            // lands it where this worker would (the commit reaches it as a member).
            s.put_scalar(LANDS_AT, f.lands_at as f64);
            s.put_scalar(
                LANDS_AFTER_BACKWARD,
                f64::from(u8::from(f.phase == Phase::AfterBackward)),
            );
        }
        Ok(Self(Taken::Referenced(s)))
    }

    /// The state's bytes, as [`restore`] reads them.
    pub fn encode(&self) -> Result<Vec<u8>> {
        match &self.0 {
            Taken::Encoded(bytes) => Ok(bytes.clone()),
            Taken::Referenced(s) => Ok(s.to_bytes()?),
        }
    }
}

/// Replaces `w`'s state with the one in `bytes`, or changes nothing and says why. The
/// learning-rate schedule moves to the provider's step.
pub fn restore<S: InnerState>(w: &mut SoloWorker<S>, bytes: &[u8]) -> Result<()> {
    let s = OptimizerState::from_bytes(bytes).context("state from a peer")?;
    s.expect_algorithm(w.outer.algorithm()).context("state from a peer")?;
    let params = s.per_tensor(PARAM, &w.params).context("state from a peer")?;
    let (step, round) = (counter(&s, "step")?, counter(&s, "round")?);
    let in_flight = in_flight(&s, round)?;
    let inner = w.train.read_inner(&s, &w.params)?;
    let mut outer = OptimizerState::new(s.algorithm);
    for (k, t) in &s.tensors {
        if let Some(name) = k.strip_prefix(OUTER) {
            outer.tensors.insert(name.to_string(), t.shallow_clone());
        }
    }
    // The outer optimizer checks its own state last, then the parameters are replaced.
    w.outer.load_state(&w.params, &outer).context("state from a peer")?;
    w.train.restore_inner(inner, step)?;
    tch::no_grad(|| {
        for (p, v) in w.params.tensors().iter().zip(&params) {
            let mut p = p.shallow_clone();
            p.copy_(v);
        }
    });
    match in_flight {
        Some(f) => w.resume_in_flight(step, round, f)?,
        None => w.resume_at(step, round),
    }
    Ok(())
}

/// The round in flight that a state records, if any: round `round`, the next to apply.
fn in_flight(s: &OptimizerState, round: u64) -> Result<Option<InFlight>> {
    if !s.tensors.contains_key(LANDS_AT) {
        return Ok(None);
    }
    let lands_at = counter(s, LANDS_AT)?;
    let phase = match counter(s, LANDS_AFTER_BACKWARD)? {
        0 => Phase::AfterInnerStep,
        1 => Phase::AfterBackward,
        other => anyhow::bail!("state from a peer: bad {LANDS_AFTER_BACKWARD} {other}"),
    };
    Ok(Some(InFlight { round, lands_at, phase, sent: 0 }))
}

#[cfg(test)]
mod tests {

    use meridian_optimizer::solo::Exchange;

    use super::*;

    /// One member alone: its own payload is the whole commit.
    struct Alone;
    impl Exchange for Alone {
        fn exchange(&mut self, _: u64, p: Vec<u8>) -> meridian_optimizer::Result<Vec<Vec<u8>>> {
            Ok(vec![p])
        }
    }

    fn worker(id: u32) -> SoloWorker<LmStep> {
        crate::testing::tiny_diloco_worker(id)
    }

    /// Encodes `captured` when the step's exchange happens, as a blocked worker serves it.
    struct Serving<'a> {
        captured: &'a Captured,
        served: Option<Vec<u8>>,
    }
    impl Exchange for Serving<'_> {
        fn exchange(&mut self, _: u64, p: Vec<u8>) -> meridian_optimizer::Result<Vec<Vec<u8>>> {
            self.served = Some(self.captured.encode().unwrap());
            Ok(vec![p])
        }
    }

    #[test]
    fn a_state_served_while_waiting_is_the_state_from_before_the_step() {
        use crate::testing::tiny_worker;
        use meridian_optimizer::Algorithm;
        for (algorithm, settings) in [
            (Algorithm::Demo, &[][..]),
            (Algorithm::Ddp, &[][..]),
            (Algorithm::Sparseloco, &[("inner_steps", "2")][..]),
        ] {
            let mut w = tiny_worker(0, algorithm, settings);
            for _ in 0..3 {
                let before = encode(&w).unwrap();
                let phase = [Phase::AfterBackward, Phase::AfterInnerStep]
                    .into_iter()
                    .find(|&p| w.outer.exchange_due(p, w.steps_done()));
                let Some(phase) = phase else {
                    w.step(&mut Alone).unwrap();
                    continue;
                };
                let captured = Captured::before_step(&w, phase).unwrap();
                let mut serving = Serving { captured: &captured, served: None };
                w.step(&mut serving).unwrap();
                // Preparing DeMo's payload changed its momentum, and an inner step ran for
                // SparseLoCo; what was served is still the state from before the step.
                assert_eq!(serving.served.unwrap(), before, "{algorithm}");
                assert_ne!(encode(&w).unwrap(), before, "{algorithm}: the step changed nothing");
            }
        }
    }

    #[test]
    fn a_fresh_worker_takes_a_peers_state_and_then_agrees_with_it() {
        let mut a = worker(0);
        for _ in 0..7 {
            a.step(&mut Alone).unwrap();
        }
        let bytes = encode(&a).unwrap();
        let mut b = worker(1);
        assert_ne!(
            b.outer.consensus_hash(&b.params).unwrap(),
            a.outer.consensus_hash(&a.params).unwrap()
        );
        let before = b.outer.consensus_hash(&b.params).unwrap();
        let mut bad = bytes.clone();
        let mid = bad.len() / 2;
        bad[mid] ^= 0xFF;
        bad.truncate(bad.len() - 3);
        assert!(restore(&mut b, &bad).is_err());
        assert_eq!(b.outer.consensus_hash(&b.params).unwrap(), before, "nothing replaced");
        restore(&mut b, &bytes).unwrap();
        assert_eq!((b.steps_done(), b.rounds_done()), (7, 2));
        assert_eq!(b.train.schedule_step(), 7, "the schedule follows the run");
        assert_eq!(
            b.outer.consensus_hash(&b.params).unwrap(),
            a.outer.consensus_hash(&a.params).unwrap()
        );
        // Both apply the same commit: still identical.
        let p = a.outer.prepare(&a.params, 2, 0).unwrap().encode();
        a.apply_committed(2, std::slice::from_ref(&p)).unwrap();
        b.apply_committed(2, &[p]).unwrap();
        assert_eq!(
            b.outer.consensus_hash(&b.params).unwrap(),
            a.outer.consensus_hash(&a.params).unwrap()
        );
    }
}
