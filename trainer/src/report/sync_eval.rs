//! The validation loss a run reports is that of the synchronized model: the parameters
//! every replica holds right after a round is applied. Between rounds each worker trains
//! its own copy on its own shard, so a mid-round figure of one worker (what the curve
//! showed before) is no model the run agrees on: DiLoCo's and SparseLoCo's curves
//! zig-zag with the round phase, and their final figure depends on where the run stops.
//!
//! When: right after the round that closes at or first after each evaluation point (a
//! multiple of `--eval-every`), and after the last round of the run. For algorithms that
//! sync every step (DDP, DeMo) that is every evaluation point. The decision is a pure
//! function of the algorithm's exchange schedule, the step and the run's length, so a run
//! resumed from a checkpoint evaluates at the same steps as one that was not.
//!
//! What: the worker's parameters, which right after an exchange are bit-identical on
//! every replica; for Streaming DiLoCo, whose unsynced fragments stay local, its global
//! copy ([`OuterOptimizer::consensus_params`]), swapped in for the evaluation and the
//! worker's own parameters restored after it, bit for bit.

use anyhow::Result;
use meridian_optimizer::outer::{OuterOptimizer, Phase};
use meridian_optimizer::params::ParamSet;
use meridian_optimizer::train_step::TrainStep;

/// How far the scans for the previous and the next round look: exchange schedules repeat
/// far sooner, and a bound keeps a degenerate schedule from scanning forever.
const SCAN: u64 = 1 << 20;

/// Whether a round closes when `done` inner steps are done: it lands in step `done − 1`
/// (counted from 0), where it was due, or `overlap` steps after that.
fn closes(outer: &dyn OuterOptimizer, done: u64) -> bool {
    let Some(due) = done.checked_sub(1 + outer.overlap()) else { return false };
    outer.exchange_due(Phase::AfterBackward, due) || outer.exchange_due(Phase::AfterInnerStep, due)
}

/// Whether the synchronized model is evaluated after the round that closed at `done`
/// inner steps, in a run of `end` steps evaluated every `every`: when an evaluation point
/// lies after the previous round and at or before this one, or when no round closes
/// after this one within the run.
pub fn due(outer: &dyn OuterOptimizer, every: u64, end: u64, done: u64) -> bool {
    let every = every.max(1);
    let previous = (done.saturating_sub(SCAN)..done).rev().find(|&d| closes(outer, d)).unwrap_or(0);
    let crosses = previous / every < done / every;
    let last =
        !(done.saturating_add(1)..=end.min(done.saturating_add(SCAN))).any(|d| closes(outer, d));
    crosses || last
}

/// Whether the worker's own parameters are the synchronized model right after an
/// exchange (then one evaluation serves both curves).
pub fn local_is_synchronized(outer: &dyn OuterOptimizer) -> bool {
    outer.consensus_params().is_none()
}

/// Validation loss of the synchronized model of a worker that has just applied a round.
pub fn eval_synchronized<S: TrainStep>(
    train: &mut S,
    params: &ParamSet,
    outer: &dyn OuterOptimizer,
) -> Result<f64> {
    let Some(consensus) = outer.consensus_params() else {
        return Ok(train.eval_loss()?);
    };
    let local = params.snapshot();
    params.assign(consensus)?;
    let loss = train.eval_loss();
    // Restored whether or not the evaluation worked: training goes on from its own state.
    params.assign(&local)?;
    Ok(loss?)
}

#[cfg(test)]
mod tests {
    use std::rc::Rc;
    use std::sync::Arc;

    use meridian_optimizer::config::AlgoConfig;
    use meridian_optimizer::solo::SoloWorker;
    use meridian_optimizer::Algorithm;

    use super::*;
    use crate::data::{Corpus, Split, TokenFormat};
    use crate::model::mlp::{Mlp, MlpConfig};
    use crate::step::adamw::InnerConfig;
    use crate::step::lm_step::LmStep;
    use crate::testing::tiny_worker;

    fn due_steps(algorithm: Algorithm, h: u64, every: u64, end: u64) -> Vec<u64> {
        let w = tiny_worker(0, algorithm, &[("inner_steps", &h.to_string())]);
        let outer = &*w.outer;
        (1..=end).filter(|&d| closes(outer, d) && due(outer, every, end, d)).collect()
    }

    #[test]
    fn algorithms_that_sync_every_step_evaluate_at_every_point() {
        let w = tiny_worker(0, Algorithm::Ddp, &[]);
        let due_at = |end| -> Vec<u64> {
            (1..=end).filter(|&d| closes(&*w.outer, d) && due(&*w.outer, 15, end, d)).collect()
        };
        assert_eq!(due_at(60), vec![15, 30, 45, 60]);
        // A run that ends off the grid still gets its last round.
        assert_eq!(due_at(50), vec![15, 30, 45, 50]);
    }

    #[test]
    fn round_algorithms_evaluate_the_round_after_each_point_and_the_last() {
        // Points at 15, 30, 45, ...: each lies in a round closing at a multiple of 30,
        // and that round is evaluated once.
        assert_eq!(due_steps(Algorithm::Diloco, 30, 15, 120), vec![30, 60, 90, 120]);
        // Points rarer than rounds: the round at or first after 50 and 100, and the last.
        assert_eq!(due_steps(Algorithm::Diloco, 30, 50, 130), vec![60, 120]);
        assert_eq!(due_steps(Algorithm::Diloco, 30, 50, 150), vec![60, 120, 150]);
        assert_eq!(due_steps(Algorithm::Sparseloco, 10, 15, 60), vec![20, 30, 50, 60]);
    }

    /// A worker of `algorithm` on a tiny MLP, with held-out batches to evaluate on.
    fn evaluable(algorithm: Algorithm, settings: &[(&str, &str)]) -> SoloWorker<LmStep> {
        let text: Vec<u8> = (0..40_000u32).map(|i| b"abcdefgh ijk."[(i % 13) as usize]).collect();
        let corpus = Arc::new(Corpus::from_bytes(&text, TokenFormat::Text, None, "t").unwrap());
        let split = Split::new(corpus, 16).unwrap();
        let model = Box::new(
            Mlp::new(MlpConfig { context: 16, hidden: 32, ..Default::default() }, 256, 1).unwrap(),
        );
        let validation = Rc::new(split.validation(4, 2));
        let shard = split.shard(0, 1, 1, 4).unwrap();
        let lm = LmStep::new(model, InnerConfig::default(), shard, validation, 100).unwrap();
        let settings: Vec<(String, String)> =
            settings.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        let algo = AlgoConfig::from_parts(algorithm, toml::Table::new(), &settings).unwrap();
        SoloWorker::new(0, lm, |p| algo.build(p)).unwrap()
    }

    #[test]
    fn streaming_is_evaluated_on_its_global_copy_and_keeps_its_own_parameters() {
        let settings = [("inner_steps", "10"), ("fragments", "2"), ("overlap", "0")];
        let mut w = evaluable(Algorithm::Streaming, &settings);
        // No exchange yet: the global copy is still the starting point.
        let start = w.train.eval_loss().unwrap();
        for _ in 0..3 {
            w.train.forward_backward().unwrap();
            w.train.inner_step().unwrap();
        }
        let (local_hash, local) = (w.params.hash().unwrap(), w.train.eval_loss().unwrap());
        assert_ne!(local, start, "local training moved the worker's own parameters");
        assert!(!local_is_synchronized(&*w.outer));
        let synced = eval_synchronized(&mut w.train, &w.params, &*w.outer).unwrap();
        assert_eq!(synced, start, "the synchronized model is the global copy");
        assert_eq!(w.params.hash().unwrap(), local_hash, "own parameters restored bit for bit");
        assert_eq!(w.train.eval_loss().unwrap(), local);
    }

    #[test]
    fn a_replica_holding_the_consensus_is_evaluated_as_it_is() {
        let mut w = evaluable(Algorithm::Diloco, &[("inner_steps", "10")]);
        w.train.forward_backward().unwrap();
        w.train.inner_step().unwrap();
        assert!(local_is_synchronized(&*w.outer));
        let own = w.train.eval_loss().unwrap();
        assert_eq!(eval_synchronized(&mut w.train, &w.params, &*w.outer).unwrap(), own);
    }
}
