//! Overlapped outer steps: a round's exchange runs while the next inner steps compute.
//!
//! With `overlap = τ` an algorithm's round `r` is *launched* where it is due (its payload
//! prepared and published) and *lands* τ inner steps later, at the same phase of that step
//! (its committed payloads applied). Every replica launches and lands at the same steps, so
//! they apply the same rounds to the same global state and stay bit-identical. At most one
//! round is in flight: τ ≤ H, and when τ = H a round lands just before the next launches.
//!
//! What happens to the τ inner steps taken while the round was on the wire is the
//! algorithm's choice. The DiLoCo family keeps them: the delayed variant of Kale et al.
//! (2025, "Eager updates for overlapped communication and computation in DiLoCo") and of
//! PCCL's async DiLoCo, where the local parameters restart from the new global copy *plus*
//! the drift since the launch,
//! ```text
//! θ_local ← θ_global' + (θ_local(now) − θ_local(launch))
//! ```
//! so the next pseudo-gradient still spans exactly H inner steps and no local work is lost.
//! Replicas then differ by their own drift between rounds; what they agree on is the global
//! copy, which is what they hash ([`super::OuterOptimizer::consensus_hash`]) and what a
//! report evaluates. DeMo moves the parameters only by its outer step, so a landing one
//! step late (Psyche's one-step delay) keeps the parameters themselves identical.

use tch::Tensor;

use crate::divergence::show_number;
use crate::error::{OptimizerError, Result};
use crate::params::ParamSet;

use super::OptimizerState;

/// The state key of the launched snapshot.
const LAUNCHED: &str = "launched";

/// Checks `overlap` against the most the algorithm's schedule allows (`limit`), naming
/// the setting, the limit and why.
pub fn check_overlap(algo: &str, overlap: u64, limit: u64, why: &str) -> Result<()> {
    if overlap > limit {
        return Err(OptimizerError::Config(format!(
            "{algo}.overlap = {} is out of range: it must be at most {limit} ({why}); 0 \
             exchanges without overlap",
            show_number(overlap as f64)
        )));
    }
    Ok(())
}

/// The hash replicas compare: of `agreed` (an overlapped algorithm's global copy) when
/// given, else of the parameters themselves.
pub fn agreed_hash(params: &ParamSet, agreed: Option<&[Tensor]>) -> Result<u64> {
    match agreed {
        Some(global) => crate::params::hash_tensors(params.names(), global),
        None => params.hash(),
    }
}

/// The local parameters at the launch of the round in flight, to carry the drift since
/// then across the landing (the DiLoCo family with `overlap` > 0).
#[derive(Debug, Default)]
pub struct Drift {
    launched: Option<Vec<Tensor>>,
}

impl Drift {
    /// A round launches: with `overlap` > 0, remembers where the local parameters stand.
    pub fn launch(&mut self, params: &ParamSet, overlap: u64) {
        self.launched = (overlap > 0).then(|| params.snapshot());
    }

    /// A round landed with the new global copy `global`: the local parameters restart from
    /// it, plus the drift since the launch when one was remembered (a worker that replays
    /// a round it never launched has none, and restarts from `global` itself).
    pub fn land(&mut self, params: &ParamSet, global: &[Tensor]) -> Result<()> {
        let Some(launched) = self.launched.take() else {
            return params.assign(global);
        };
        tch::no_grad(|| {
            for ((p, g), l) in params.tensors().iter().zip(global).zip(&launched) {
                // θ ← g + (θ − l), computed as one expression per tensor.
                let moved = g.f_add(&p.f_sub(l)?)?;
                p.shallow_clone().f_copy_(&moved)?;
            }
            Ok(())
        })
    }

    /// Whether a launched round's snapshot is held.
    pub fn in_flight(&self) -> bool {
        self.launched.is_some()
    }

    /// Adds the launched snapshot, if any, to a checkpoint or a peer's state.
    pub fn put(&self, s: &mut OptimizerState) {
        if let Some(l) = &self.launched {
            s.put_per_tensor(LAUNCHED, l);
        }
    }

    /// Reads the launched snapshot from `s` (none there: none held).
    pub fn load(&mut self, s: &OptimizerState, params: &ParamSet) -> Result<()> {
        let held = s.tensors.keys().any(|k| k.starts_with(&format!("{LAUNCHED}.")));
        self.launched = if held { Some(s.per_tensor(LAUNCHED, params)?) } else { None };
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::algorithm::Algorithm;

    fn values(t: &Tensor) -> Vec<f32> {
        Vec::<f32>::try_from(t).unwrap()
    }

    #[test]
    fn a_landing_keeps_the_drift_since_the_launch() {
        let params = ParamSet::new(vec![("w".into(), Tensor::from_slice(&[1.0f32, 2.0]))]).unwrap();
        let mut d = Drift::default();
        d.launch(&params, 3);
        assert!(d.in_flight());
        // Three inner steps move the local copy by (0.5, -1).
        params.assign(&[Tensor::from_slice(&[1.5f32, 1.0])]).unwrap();
        d.land(&params, &[Tensor::from_slice(&[10.0f32, 20.0])]).unwrap();
        assert_eq!(values(&params.tensors()[0]), vec![10.5, 19.0]);
        assert!(!d.in_flight(), "a round lands once");
        // Without a launch (a replay, or overlap 0) the local copy is the global one.
        d.land(&params, &[Tensor::from_slice(&[3.0f32, 4.0])]).unwrap();
        assert_eq!(values(&params.tensors()[0]), vec![3.0, 4.0]);
        d.launch(&params, 0);
        assert!(!d.in_flight(), "overlap 0 keeps nothing");
    }

    #[test]
    fn the_launched_snapshot_travels_with_the_state() {
        let params = ParamSet::new(vec![("w".into(), Tensor::from_slice(&[1.0f32, 2.0]))]).unwrap();
        let mut d = Drift::default();
        let mut s = OptimizerState::new(Algorithm::Diloco);
        d.put(&mut s);
        assert!(s.tensors.is_empty());
        d.launch(&params, 1);
        d.put(&mut s);
        let mut e = Drift::default();
        e.load(&s, &params).unwrap();
        params.assign(&[Tensor::from_slice(&[2.0f32, 2.0])]).unwrap();
        e.land(&params, &[Tensor::from_slice(&[0.0f32, 0.0])]).unwrap();
        assert_eq!(values(&params.tensors()[0]), vec![1.0, 0.0]);
    }

    #[test]
    fn an_overlap_beyond_the_schedule_names_the_setting_and_the_limit() {
        assert!(check_overlap("diloco", 30, 30, "H").is_ok());
        let e = check_overlap("diloco", 31, 30, "at most one round in flight: H = 30")
            .unwrap_err()
            .to_string();
        assert!(e.contains("diloco.overlap = 31") && e.contains("at most 30"), "{e}");
    }
}
