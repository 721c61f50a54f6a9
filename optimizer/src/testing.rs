//! Helpers shared by this crate's algorithm tests: a toy harness and its checks.
#![cfg(test)]

use crate::error::Result;
use crate::harness::{ExchangeReport, Harness};
use crate::outer::OuterOptimizer;
use crate::params::ParamSet;
use crate::toy::{ToyConfig, ToyMlp};

/// A harness of `n` toy workers with the outer optimizer `make` builds.
pub fn toy_harness(
    n: u32,
    cfg: ToyConfig,
    make: impl FnMut(u32, &ParamSet) -> Result<Box<dyn OuterOptimizer>>,
) -> Harness<ToyMlp> {
    tch::set_num_threads(1);
    let trains = (0..n).map(|w| ToyMlp::new(cfg, w).unwrap()).collect();
    let mut h = Harness::new(trains, make).unwrap();
    h.shuffle_arrivals(0xA11CE);
    h
}

/// Runs `steps` and asserts every exchange left bit-identical replicas; returns the
/// exchanges and the held-out loss before and after.
pub fn run_checked(h: &mut Harness<ToyMlp>, steps: u64) -> (Vec<ExchangeReport>, f64, f64) {
    let before = h.eval_loss().unwrap();
    let mut exchanges = Vec::new();
    for report in h.run(steps).unwrap() {
        for x in report.exchanges {
            assert!(x.replicas_identical(), "round {}: replicas differ {:?}", x.round, x.hashes);
            assert!(x.rejected.is_empty(), "round {}: rejected {:?}", x.round, x.rejected);
            exchanges.push(x);
        }
    }
    let after = h.eval_loss().unwrap();
    (exchanges, before, after)
}
