//! Building a run's model from its settings, on the device it trains on.

use anyhow::{bail, Result};
use tch::Device;

use super::gpt::{Gpt, GptConfig};
use super::mlp::{Mlp, MlpConfig};
use super::size;
use super::LanguageModel;
use crate::run_config::ModelConfig;

/// Builds one worker's model on `device`. The built-in models draw their parameters on the
/// host (the same bits on every machine) and then move there.
pub fn build_model(
    config: &ModelConfig,
    vocab: u32,
    seed: u64,
    device: Device,
) -> Result<Box<dyn LanguageModel>> {
    let vocab_i64 = i64::from(vocab);
    // A model that trains on the CPU keeps its weights, gradients and AdamW moments in
    // this machine's memory: refuse one that cannot fit before building it. (On a GPU only
    // the weights pass through here; `new` checks those.)
    let training = |describe: String, count, shrink| {
        if device == Device::Cpu {
            size::check(
                &describe,
                count,
                size::TRAINING_BYTES_PER_PARAMETER,
                "training on the CPU (weights, gradients and AdamW's two moments)",
                shrink,
            )?;
        }
        anyhow::Ok(())
    };
    Ok(match config {
        ModelConfig::Gpt(c) => {
            c.validate()?;
            training(c.describe(vocab_i64), c.parameter_count(vocab_i64), GptConfig::SHRINK)?;
            let mut m = Gpt::new(*c, i64::from(vocab), seed)?;
            m.to_device(device);
            Box::new(m)
        }
        ModelConfig::Mlp(c) => {
            c.validate(vocab_i64)?;
            training(c.describe(vocab_i64), c.parameter_count(vocab_i64), MlpConfig::SHRINK)?;
            let mut m = Mlp::new(*c, i64::from(vocab), seed)?;
            m.to_device(device);
            Box::new(m)
        }
        ModelConfig::TorchScript(path, c) => {
            let m = crate::model::torchscript::TorchScriptModel::load(
                path,
                c.context,
                Some(i64::from(vocab)),
                device,
            )?;
            if m.vocab() < i64::from(vocab) {
                bail!(
                    "{}: the module predicts {} tokens but the data has a vocabulary of {vocab}",
                    path.display(),
                    m.vocab()
                );
            }
            Box::new(m)
        }
    })
}
