//! What Meridian needs from a training step it drives.

use tch::Tensor;

use crate::error::Result;

/// One worker's wrapped training: a model, its inner optimizer and its data shard.
///
/// The trainer crate implements it for real models (GPT, TorchScript); [`crate::toy`] has a
/// small MLP for tests. Every worker of a run must start from identical parameters.
pub trait TrainStep {
    /// The trainable parameters by name, sharing storage with the model.
    fn parameters(&self) -> Vec<(String, Tensor)>;
    /// Zeroes gradients, runs forward and backward on this worker's next batch, and returns
    /// the loss. Gradients are left on the parameters.
    fn forward_backward(&mut self) -> Result<f64>;
    /// The inner optimizer's step on the current gradients (clipping and the learning-rate
    /// schedule included).
    fn inner_step(&mut self) -> Result<()>;
    /// Loss on held-out data, without touching gradients or optimizer state.
    fn eval_loss(&mut self) -> Result<f64>;
}
