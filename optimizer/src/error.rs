//! The one error type of this crate.

use thiserror::Error;

/// Why an optimizer operation failed.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum OptimizerError {
    /// A compression kernel refused its input.
    #[error(transparent)]
    Kernel(#[from] meridian_kernels::KernelError),
    /// LibTorch reported an error.
    #[error("libtorch: {0}")]
    Torch(#[from] tch::TchError),
    /// The wrapped training step (model, data, inner optimizer) failed.
    #[error("training step: {0}")]
    TrainStep(String),
    /// A configuration or argument is outside what the algorithm accepts.
    #[error("{0}")]
    Config(String),
    /// A payload failed validation; it is not applied.
    #[error("payload from worker {worker}: {reason}")]
    InvalidPayload {
        /// The sender the payload claims.
        worker: u32,
        /// What is wrong with it.
        reason: String,
    },
    /// Optimizer state (from a checkpoint) does not fit this optimizer.
    #[error("optimizer state: {0}")]
    State(String),
    /// Training diverged: a loss, a gradient or the parameters became NaN or infinite.
    /// Says where and which setting most likely caused it ([`crate::divergence`]).
    #[error("{0}")]
    Diverged(Box<crate::divergence::Divergence>),
    /// A tensor is not in the form a kernel can borrow (dtype, device, layout).
    #[error("tensor {name}: {reason}")]
    UnsupportedTensor {
        /// Which tensor.
        name: String,
        /// What about it is unsupported.
        reason: String,
    },
}

/// Shorthand for results of this crate.
pub type Result<T> = std::result::Result<T, OptimizerError>;
