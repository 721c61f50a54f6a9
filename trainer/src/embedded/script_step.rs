//! A wrapped program's training as a [`TrainStep`]: the program has already run forward and
//! backward when it asks for a step, and its own optimizer takes the inner step when the
//! algorithm runs one (DeMo replaces it).

use anyhow::{Context, Result};
use meridian_optimizer::outer::OptimizerState;
use meridian_optimizer::params::ParamSet;
use meridian_optimizer::train_step::TrainStep;
use meridian_optimizer::OptimizerError;
use tch::Tensor;

use crate::networked::snapshot::InnerState;

/// Where a snapshot keeps the program's optimizer state.
const SCRIPT_STATE: &str = "inner/script";

/// The program's own inner optimizer, as Meridian calls it.
pub trait ScriptOptimizer {
    /// One step on the gradients the parameters hold.
    fn step(&mut self) -> Result<()>;
    /// The optimizer's state, serialized by the program (for a newcomer or a checkpoint).
    fn state(&self) -> Result<Vec<u8>>;
    /// Replaces the optimizer's state with bytes [`ScriptOptimizer::state`] wrote.
    fn load_state(&mut self, bytes: &[u8]) -> Result<()>;
}

/// The program's training, stepped by Meridian one inner step at a time.
pub struct ScriptStep {
    params: Vec<(String, Tensor)>,
    inner: Box<dyn ScriptOptimizer>,
    /// The loss the program reported for the step being taken (0 when it gave none).
    pub loss: f64,
}

impl ScriptStep {
    /// Wraps `params` (sharing storage with the program's model) and its optimizer.
    pub fn new(params: Vec<(String, Tensor)>, inner: Box<dyn ScriptOptimizer>) -> Self {
        Self { params, inner, loss: 0.0 }
    }
}

fn failed(e: anyhow::Error) -> OptimizerError {
    OptimizerError::TrainStep(format!("{e:#}"))
}

impl TrainStep for ScriptStep {
    fn parameters(&self) -> Vec<(String, Tensor)> {
        self.params.iter().map(|(n, t)| (n.clone(), t.shallow_clone())).collect()
    }

    /// The program ran forward and backward before asking for the step: the gradients are
    /// on the parameters already.
    fn forward_backward(&mut self) -> meridian_optimizer::Result<f64> {
        Ok(self.loss)
    }

    fn inner_step(&mut self) -> meridian_optimizer::Result<()> {
        self.inner.step().map_err(failed)
    }

    fn eval_loss(&mut self) -> meridian_optimizer::Result<f64> {
        Err(OptimizerError::TrainStep(
            "a wrapped program evaluates its own model; Meridian holds no validation data".into(),
        ))
    }
}

impl InnerState for ScriptStep {
    type Inner = Vec<u8>;

    fn share_inner(&self, s: &mut OptimizerState, _: &ParamSet) -> Result<()> {
        let bytes = self.inner.state().context("the program's optimizer state")?;
        s.put(SCRIPT_STATE, &Tensor::from_slice(&bytes));
        Ok(())
    }

    fn read_inner(&self, s: &OptimizerState, _: &ParamSet) -> Result<Vec<u8>> {
        let t = s.get(SCRIPT_STATE).context("the program's optimizer state")?;
        anyhow::ensure!(
            t.kind() == tch::Kind::Uint8,
            "{SCRIPT_STATE}: {:?}, expected bytes",
            t.kind()
        );
        Ok(Vec::<u8>::try_from(t.flatten(0, -1))?)
    }

    fn restore_inner(&mut self, inner: Vec<u8>, _step: u64) -> Result<()> {
        // The program's learning-rate scheduler is its own: it resumes from the program's
        // checkpoint, not from Meridian's step counter.
        self.inner.load_state(&inner).context("loading the program's optimizer state")
    }
}
