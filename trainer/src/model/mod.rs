//! Language models Meridian can train: the built-in byte-level GPT, a small byte-level MLP
//! for fast tests, and a user's own TorchScript module.
//!
//! Every model maps a batch of token windows to the mean next-token cross-entropy, so the
//! same data pipeline, inner optimizer ([`crate::step::adamw`]) and checkpoint format serve all
//! of them.

mod build;
pub mod gpt;
pub mod init;
pub mod mlp;
pub mod size;
pub mod torchscript;

use std::path::PathBuf;

use anyhow::{bail, Result};

pub use build::build_model;
use tch::Tensor;

/// A model whose loss Meridian's inner loop minimises.
///
/// `inputs` and `targets` are `[batch, context]` int64 token tensors on the model's device;
/// `targets` is `inputs` shifted left by one token.
pub trait LanguageModel {
    /// The trainable parameters by name, sharing storage with the model, in a stable order
    /// (the same on every worker and every run).
    fn parameters(&self) -> Vec<(String, Tensor)>;
    /// Mean next-token cross-entropy in nats, a 0-d float tensor with a graph back to the
    /// parameters when `train` is true (dropout and the like on); without one when false.
    fn loss(&self, inputs: &Tensor, targets: &Tensor, train: bool) -> Result<Tensor>;
    /// Tokens per training window.
    fn context(&self) -> i64;
    /// Size of the vocabulary it predicts over; every token id must be below it.
    fn vocab(&self) -> i64;
    /// One line for logs and the checkpoint manifest, e.g. `gpt d256 l4 h4 ctx256`.
    fn describe(&self) -> String;
}

/// Which model `--model` names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ModelKind {
    /// The built-in byte-level GPT.
    Gpt,
    /// The small byte-level MLP.
    Mlp,
    /// A TorchScript module saved by `torch.jit.save`.
    TorchScript(PathBuf),
    /// No model: `meridian simulate --params N` sends payloads of a model of N parameters
    /// without training one.
    Synthetic,
}

impl std::str::FromStr for ModelKind {
    type Err = anyhow::Error;

    fn from_str(s: &str) -> Result<Self> {
        match s {
            "gpt" => Ok(Self::Gpt),
            "mlp" => Ok(Self::Mlp),
            "synthetic" => Ok(Self::Synthetic),
            _ => match s.strip_prefix("torchscript:") {
                Some("") => bail!("--model torchscript:PATH needs the path of a saved module"),
                Some(path) => Ok(Self::TorchScript(PathBuf::from(path))),
                None => {
                    bail!("unknown model {s:?}; choose gpt, mlp, torchscript:PATH or synthetic")
                }
            },
        }
    }
}

impl std::fmt::Display for ModelKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Gpt => f.write_str("gpt"),
            Self::Mlp => f.write_str("mlp"),
            Self::TorchScript(p) => write!(f, "torchscript:{}", p.display()),
            Self::Synthetic => f.write_str("synthetic"),
        }
    }
}

/// Number of scalar parameters of a model.
pub fn parameter_count(model: &dyn LanguageModel) -> i64 {
    model.parameters().iter().map(|(_, t)| t.numel() as i64).sum()
}

/// Checks a batch before it reaches LibTorch (whose shape errors are panics): matching
/// `[batch, tokens]` int64 shapes, at most `context` tokens, every id below `vocab`.
pub fn check_tokens(inputs: &Tensor, targets: &Tensor, context: i64, vocab: i64) -> Result<()> {
    let shape = inputs.size();
    if shape.len() != 2 || shape != targets.size() {
        bail!(
            "batch: inputs {shape:?} and targets {:?} must both be [batch, tokens]",
            targets.size()
        );
    }
    if shape[1] < 1 || shape[1] > context {
        bail!("batch: {} tokens per window; the model takes 1 to {context}", shape[1]);
    }
    if inputs.kind() != tch::Kind::Int64 || targets.kind() != tch::Kind::Int64 {
        bail!("batch: token ids must be int64");
    }
    for (what, t) in [("inputs", inputs), ("targets", targets)] {
        if t.numel() > 0 {
            let (lo, hi) = (t.min().int64_value(&[]), t.max().int64_value(&[]));
            if lo < 0 || hi >= vocab {
                bail!("batch: {what} hold token ids in [{lo}, {hi}], outside the vocabulary 0..{vocab}");
            }
        }
    }
    Ok(())
}

/// Mean cross-entropy of `logits` `[.., vocab]` against `targets` (the same leading shape).
pub fn next_token_loss(logits: &Tensor, targets: &Tensor, vocab: i64) -> Result<Tensor> {
    Ok(logits.f_reshape([-1, vocab])?.f_cross_entropy_loss(
        &targets.f_reshape([-1])?,
        None::<Tensor>,
        tch::Reduction::Mean,
        -100,
        0.0,
    )?)
}

/// Runs `f` recording a graph when `train`, under `no_grad` otherwise.
pub fn graph_if<T>(train: bool, f: impl FnOnce() -> Result<T>) -> Result<T> {
    if train {
        f()
    } else {
        tch::no_grad(f)
    }
}

/// A VarStore's variables sorted by name: the same order on every worker and run.
pub fn sorted_variables(vs: &tch::nn::VarStore) -> Vec<(String, Tensor)> {
    let mut v: Vec<(String, Tensor)> = vs.variables().into_iter().collect();
    v.sort_by(|a, b| a.0.cmp(&b.0));
    v
}
