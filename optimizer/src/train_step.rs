//! What Meridian needs from a training step it drives.

use tch::Tensor;

use crate::algorithm::Algorithm;
use crate::divergence::Suspect;
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
    /// The settings of the inner training that can make it diverge (its learning rate),
    /// with their default values, for the error that stops a diverged run
    /// ([`crate::divergence`]). None by default.
    fn divergence_suspects(&self) -> Vec<Suspect> {
        Vec::new()
    }
    /// Told once by the driver that builds the outer optimizer: which algorithm drives this
    /// training and that algorithm's suspects, so that a divergence found outside the
    /// driver (a validation loss, which callers compute directly) can still name them.
    /// Ignored by default.
    fn driven_by(&mut self, _algorithm: Algorithm, _suspects: Vec<Suspect>) {}
}
