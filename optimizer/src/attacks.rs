//! Attack scenarios for robust aggregation: eight toy workers, one of them (member 3)
//! Byzantine. It trains and applies rounds like everyone else, but sends a doctored update:
//! scaled ×100, sign-flipped, or random noise with the norm of its honest update. Each
//! scenario is run with the defence on (final loss within a stated margin of the clean
//! run) and off (measurably worse), with every replica checked identical after every round.
#![cfg(test)]

use std::sync::OnceLock;

use meridian_kernels::pipeline::Compressor;

use crate::byzantine::{Attack, Byzantine};
use crate::error::Result;
use crate::harness::Harness;
use crate::outer::ddp::{Ddp, DdpConfig};
use crate::outer::diloco::{Diloco, DilocoConfig};
use crate::outer::sparseloco::{Sparseloco, SparselocoConfig};
use crate::outer::OuterOptimizer;
use crate::params::ParamSet;
use crate::robust::{Aggregation, Robust};
use crate::testing::toy_harness;
use crate::toy::{ToyConfig, ToyMlp};

const WORKERS: u32 = 8;
const ATTACKER: u32 = 3;

/// Which algorithm a scenario runs, with its robust setting.
#[derive(Debug, Clone, Copy)]
enum Algo {
    Ddp(DdpConfig),
    Diloco(DilocoConfig),
    Sparseloco(SparselocoConfig),
}

impl Algo {
    fn build(self, params: &ParamSet) -> Result<(Box<dyn OuterOptimizer>, Vec<Compressor>)> {
        Ok(match self {
            Algo::Ddp(c) => (Box::new(Ddp::new(c, params)?), Vec::new()),
            Algo::Diloco(c) => (Box::new(Diloco::new(c, params)?), Vec::new()),
            Algo::Sparseloco(c) => {
                let cc = c.compressor_config()?;
                let comps = params
                    .shapes()
                    .iter()
                    .map(|s| Compressor::new(cc, s))
                    .collect::<std::result::Result<Vec<_>, _>>()?;
                (Box::new(Sparseloco::new(c, params)?), comps)
            }
        })
    }
}

/// Runs `steps` inner steps with member 3 mounting `attack` (or nobody, for `None`);
/// asserts identical replicas after every round and returns the final held-out loss with
/// every member ever rejected.
fn run(algo: Algo, attack: Option<Attack>, steps: u64) -> (f64, Vec<u32>) {
    let mut h: Harness<ToyMlp> = toy_harness(WORKERS, ToyConfig::default(), |w, p| {
        let (inner, compressors) = algo.build(p)?;
        Ok(match attack {
            Some(attack) if w == ATTACKER => {
                Box::new(Byzantine::new(inner, attack, compressors, 0xBAD))
            }
            _ => inner,
        })
    });
    let mut rejected = Vec::new();
    for report in h.run(steps).unwrap() {
        for x in report.exchanges {
            assert!(x.replicas_identical(), "round {}: replicas differ {:?}", x.round, x.hashes);
            rejected.extend(x.rejected.iter().map(|r| r.0));
        }
    }
    rejected.sort_unstable();
    rejected.dedup();
    (h.eval_loss().unwrap(), rejected)
}

fn ddp(aggregation: Aggregation) -> Algo {
    Algo::Ddp(DdpConfig {
        robust: Robust { aggregation, ..Default::default() },
        ..Default::default()
    })
}

fn diloco(aggregation: Aggregation) -> Algo {
    Algo::Diloco(DilocoConfig {
        inner_steps: 10,
        robust: Robust { aggregation, ..Default::default() },
        ..Default::default()
    })
}

fn sparseloco(aggregation: Aggregation) -> Algo {
    Algo::Sparseloco(SparselocoConfig {
        inner_steps: 10,
        chunk: 64,
        topk: 16,
        robust: Robust { aggregation, ..Default::default() },
        ..Default::default()
    })
}

/// Inner steps per scenario: 20 rounds of H = 10. Each run takes a second or two in debug.
const STEPS: u64 = 200;

/// How far above the clean run's final loss a defended run may end.
const MARGIN: f64 = 1.035;

/// The clean run's final loss (all eight honest, plain mean), computed once per algorithm.
fn clean(algo: fn(Aggregation) -> Algo, cell: &'static OnceLock<f64>) -> f64 {
    *cell.get_or_init(|| {
        let (loss, rejected) = run(algo(Aggregation::Mean), None, STEPS);
        assert!(rejected.is_empty(), "{rejected:?}");
        loss
    })
}

static DDP_CLEAN: OnceLock<f64> = OnceLock::new();
static DILOCO_CLEAN: OnceLock<f64> = OnceLock::new();
static SPARSELOCO_CLEAN: OnceLock<f64> = OnceLock::new();

/// Runs `attack` without a defence and under each of `defences`; asserts the undefended run
/// ends worse than `damage` × the clean loss and every defended one within [`MARGIN`].
/// Returns who was rejected under each defence.
fn scenario(
    algo: fn(Aggregation) -> Algo,
    cell: &'static OnceLock<f64>,
    attack: Attack,
    damage: f64,
    defences: &[Aggregation],
) -> Vec<Vec<u32>> {
    let clean = clean(algo, cell);
    let (off, rejected) = run(algo(Aggregation::Mean), Some(attack), STEPS);
    assert!(rejected.is_empty(), "{rejected:?}");
    assert!(off > damage * clean, "{attack:?} undefended: {off} vs clean {clean}");
    defences
        .iter()
        .map(|&defence| {
            let (on, rejected) = run(algo(defence), Some(attack), STEPS);
            assert!(on < MARGIN * clean, "{attack:?} under {defence}: {on} vs clean {clean}");
            rejected
        })
        .collect()
}

// Measured final held-out losses (start 7.96; clean runs: DiLoCo 1.018, SparseLoCo 1.083):
//
// | attack        | algorithm  | mean  | clip_median | trimmed_mean | reject_outliers |
// |---------------|------------|-------|-------------|--------------|-----------------|
// | ×100          | DiLoCo     | 205   | 1.018       | 1.022        | 1.015 (3 out)   |
// | sign-flipped  | DiLoCo     | 1.092 | 1.099       | 1.042        | 1.015 (3 out)   |
// | noise (2.5×)  | DiLoCo     | 1.102 | 1.031       | 1.019        | 1.102           |
// | ×100          | SparseLoCo | 151   | 1.052       | refused      | 1.032 (3 out)   |
// | sign-flipped  | SparseLoCo | 1.202 | -           | refused      | 1.032 (3 out)   |
// | noise (2.5×)  | SparseLoCo | 1.116 | 1.082       | refused      | -               |
//
// DDP (clean 0.790): ×100 under the mean 1.458, under clip_median 0.789; a sign flip under
// the mean 0.973, under trimmed_mean 0.985, under reject_outliers 0.967. One step's gradient
// on the toy's small batches is noisy enough that the direction test of `reject_outliers`
// also rejects honest members now and then (every member at least once in 200 rounds; 0.880
// with nobody attacking), so DDP has no defence against a sign flip here yet.
//
// Honest runs: DiLoCo clip 1.017, trimmed 1.028, reject 1.018 (nobody rejected); SparseLoCo
// clip 1.057, reject 1.083. (SparseLoCo's rows are with its sign/Lloyd 2-bit values; the
// equal-bin grid before it measured clean 1.078 and noise under the mean 1.145; `-`: the
// tests do not run that cell.) A sign-flipped update has an honest norm: only the trimmed mean
// and the direction test of `reject_outliers` see it. Noise of plausible norm is nearly
// orthogonal to everyone, so the direction test does not see it; clipping bounds it.

#[test]
fn diloco_survives_a_member_scaling_its_update_by_100() {
    let rejected = scenario(
        diloco,
        &DILOCO_CLEAN,
        Attack::Scaled,
        10.0,
        &[Aggregation::ClipMedian, Aggregation::RejectOutliers],
    );
    // Clipping keeps the attacker in (shrunk); rejection names it, and only it.
    assert_eq!(rejected, vec![vec![], vec![ATTACKER]]);
}

#[test]
fn diloco_survives_a_sign_flipped_member() {
    let rejected = scenario(
        diloco,
        &DILOCO_CLEAN,
        Attack::SignFlipped,
        1.05,
        &[Aggregation::TrimmedMean, Aggregation::RejectOutliers],
    );
    // The trimmed mean keeps everyone; the direction test names the attacker, and only it.
    assert_eq!(rejected, vec![vec![], vec![ATTACKER]]);
}

#[test]
fn sparseloco_survives_a_sign_flipped_member() {
    let rejected = scenario(
        sparseloco,
        &SPARSELOCO_CLEAN,
        Attack::SignFlipped,
        1.1,
        &[Aggregation::RejectOutliers],
    );
    assert_eq!(rejected, vec![vec![ATTACKER]]);
}

#[test]
fn diloco_survives_a_member_sending_noise_of_plausible_norm() {
    let rejected = scenario(
        diloco,
        &DILOCO_CLEAN,
        Attack::Noise,
        1.05,
        &[Aggregation::ClipMedian, Aggregation::TrimmedMean],
    );
    assert_eq!(rejected, vec![Vec::<u32>::new(); 2]);
}

#[test]
fn sparseloco_survives_a_member_scaling_its_update_by_100() {
    let rejected = scenario(
        sparseloco,
        &SPARSELOCO_CLEAN,
        Attack::Scaled,
        10.0,
        &[Aggregation::ClipMedian, Aggregation::RejectOutliers],
    );
    assert_eq!(rejected, vec![vec![], vec![ATTACKER]]);
}

#[test]
fn sparseloco_survives_a_member_sending_noise_of_plausible_norm() {
    scenario(sparseloco, &SPARSELOCO_CLEAN, Attack::Noise, 1.025, &[Aggregation::ClipMedian]);
}

#[test]
fn honest_runs_end_alike_under_every_robust_mode() {
    // Nobody attacks: no mode may reject an honest member, and none may cost more than the
    // margin (measured values above the tests).
    let base = clean(diloco, &DILOCO_CLEAN);
    for mode in [Aggregation::ClipMedian, Aggregation::TrimmedMean, Aggregation::RejectOutliers] {
        let (loss, rejected) = run(diloco(mode), None, STEPS);
        assert!(rejected.is_empty(), "{mode}: {rejected:?}");
        assert!(loss < MARGIN * base, "{mode}: {loss} vs {base}");
    }
    let base = clean(sparseloco, &SPARSELOCO_CLEAN);
    for mode in [Aggregation::ClipMedian, Aggregation::RejectOutliers] {
        let (loss, rejected) = run(sparseloco(mode), None, STEPS);
        assert!(rejected.is_empty(), "{mode}: {rejected:?}");
        assert!(loss < MARGIN * base, "{mode}: {loss} vs {base}");
    }
}

#[test]
fn ddp_survives_a_member_scaling_its_gradient_by_100() {
    // Every step is a round: the attacker strikes 200 times. Clipping to the median norm
    // keeps it in, shrunk.
    let rejected = scenario(ddp, &DDP_CLEAN, Attack::Scaled, 1.5, &[Aggregation::ClipMedian]);
    assert_eq!(rejected, vec![Vec::<u32>::new()]);
}
