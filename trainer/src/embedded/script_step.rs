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

/// Where a snapshot keeps the program's optimizer state: its structure (serialized by the
/// program) and, beside it, its f32 tensors by position.
const SCRIPT_STATE: &str = "inner/script";
const SCRIPT_TENSOR: &str = "inner/script.t";

/// The program's optimizer state: its structure with the large f32 tensors taken out
/// (serialized by the program; small), and those tensors, shared with the optimizer.
/// Keeping the tensors apart lets a snapshot hold them by handle and copy them once, to
/// the bytes it sends, instead of the program serializing its moments at every exchange.
pub struct ScriptState {
    /// The structure, with a placeholder per tensor.
    pub meta: Vec<u8>,
    /// The f32 tensors, in placeholder order.
    pub tensors: Vec<Tensor>,
}

/// The program's own inner optimizer, as Meridian calls it.
pub trait ScriptOptimizer {
    /// One step on the gradients the parameters hold.
    fn step(&mut self) -> Result<()>;
    /// The optimizer's state (for a newcomer or a checkpoint); its tensors are the
    /// optimizer's own, not copies.
    fn state(&self) -> Result<ScriptState>;
    /// Replaces the optimizer's state with one [`ScriptOptimizer::state`] gave.
    fn load_state(&mut self, state: ScriptState) -> Result<()>;
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
    type Inner = ScriptState;

    fn share_inner(&self, s: &mut OptimizerState, _: &ParamSet) -> Result<()> {
        let state = self.inner.state().context("the program's optimizer state")?;
        s.put(SCRIPT_STATE, &Tensor::from_slice(&state.meta));
        for (i, t) in state.tensors.iter().enumerate() {
            s.share(format!("{SCRIPT_TENSOR}{i}"), t);
        }
        Ok(())
    }

    fn read_inner(&self, s: &OptimizerState, _: &ParamSet) -> Result<ScriptState> {
        let t = s.get(SCRIPT_STATE).context("the program's optimizer state")?;
        anyhow::ensure!(
            t.kind() == tch::Kind::Uint8,
            "{SCRIPT_STATE}: {:?}, expected bytes",
            t.kind()
        );
        let meta = Vec::<u8>::try_from(t.flatten(0, -1))?;
        let mut tensors = Vec::new();
        while let Ok(t) = s.get(&format!("{SCRIPT_TENSOR}{}", tensors.len())) {
            anyhow::ensure!(
                t.kind() == tch::Kind::Float,
                "{SCRIPT_TENSOR}{}: {:?}, expected f32",
                tensors.len(),
                t.kind()
            );
            tensors.push(t.shallow_clone());
        }
        Ok(ScriptState { meta, tensors })
    }

    fn restore_inner(&mut self, inner: ScriptState, _step: u64) -> Result<()> {
        // The program's learning-rate scheduler is its own: it resumes from the program's
        // checkpoint, not from Meridian's step counter.
        self.inner.load_state(inner).context("loading the program's optimizer state")
    }
}
