//! Building a run's model from its settings, on the device it trains on.

use anyhow::{bail, Result};
use tch::Device;

use super::gpt::Gpt;
use super::mlp::Mlp;
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
    Ok(match config {
        ModelConfig::Gpt(c) => {
            let mut m = Gpt::new(*c, i64::from(vocab), seed)?;
            m.to_device(device);
            Box::new(m)
        }
        ModelConfig::Mlp(c) => {
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
