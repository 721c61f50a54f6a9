//! A small byte-level MLP language model, for fast tests and quick comparisons.
//!
//! Each position predicts the next token from the `window` tokens ending at it (earlier
//! positions see zero padding): embed each, concatenate, one hidden GELU layer, logits.
//! About 0.2M parameters by default, so a step costs milliseconds, yet it learns real
//! byte statistics and its loss curves behave like a language model's.

use anyhow::{bail, Result};
use serde::{Deserialize, Serialize};
use tch::nn::{self, Module};
use tch::{Device, Tensor};

use super::init::NormalInit;
use super::size::{self, Count};
use super::{check_tokens, graph_if, next_token_loss, sorted_variables, LanguageModel};

/// Shape of the MLP; the `[model]` table of a run's config with `--model mlp`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MlpConfig {
    /// Tokens per training window.
    pub context: i64,
    /// Tokens each prediction looks back over.
    pub window: i64,
    /// Embedding width per token.
    pub embed: i64,
    /// Hidden width.
    pub hidden: i64,
}

impl Default for MlpConfig {
    fn default() -> Self {
        Self { context: 64, window: 8, embed: 32, hidden: 256 }
    }
}

impl MlpConfig {
    /// The settings that shrink the model, for messages.
    pub const SHRINK: &'static str = "use a smaller --vocab (token-id data: the largest id + 1) \
         or a smaller model (--set model.embed=N, model.hidden=N, model.window=N)";

    /// Checks the shape is buildable over `vocab` tokens (its size aside).
    pub fn validate(&self, vocab: i64) -> Result<()> {
        let c = self;
        if c.context < 1 || c.window < 1 || c.embed < 1 || c.hidden < 1 || vocab < 2 {
            bail!(
                "model: context, window, embed, hidden must be ≥ 1 and the vocabulary ≥ 2: {c:?}"
            );
        }
        Ok(())
    }

    /// Parameters of the MLP over `vocab` tokens, counted without overflow.
    pub fn parameter_count(&self, vocab: i64) -> Count {
        let (v, e, h) = (i128::from(vocab), i128::from(self.embed), i128::from(self.hidden));
        let inputs = i128::from(self.window) * e;
        Count::zero().tensor(&[v, e]).tensor(&[h, inputs]).tensor(&[h]).tensor(&[v, h]).tensor(&[v])
    }

    /// The model as messages name it.
    pub fn describe(&self, vocab: i64) -> String {
        format!(
            "model: mlp (window {}, embed {}, hidden {}) over a vocabulary of {vocab}",
            self.window, self.embed, self.hidden
        )
    }
}

/// The MLP and its parameters.
pub struct Mlp {
    vs: nn::VarStore,
    config: MlpConfig,
    vocab: i64,
    wte: nn::Embedding,
    fc: nn::Linear,
    head: nn::Linear,
}

impl std::fmt::Debug for Mlp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Mlp").field("config", &self.config).field("vocab", &self.vocab).finish()
    }
}

impl Mlp {
    /// Moves every parameter to `device` in place: handles taken before (the
    /// [`LanguageModel::parameters`] list) follow, as the tensors keep their identity.
    pub fn to_device(&mut self, device: Device) {
        if device != self.vs.device() {
            self.vs.set_device(device);
        }
    }

    /// An MLP over `vocab` tokens with parameters drawn from `seed`.
    pub fn new(config: MlpConfig, vocab: i64, seed: u64) -> Result<Self> {
        let c = config;
        c.validate(vocab)?;
        // Counted before LibTorch allocates: its allocation failure would be a panic.
        size::check(
            &c.describe(vocab),
            c.parameter_count(vocab),
            size::WEIGHT_BYTES_PER_PARAMETER,
            "building the model",
            MlpConfig::SHRINK,
        )?;
        let vs = nn::VarStore::new(Device::Cpu);
        let root = vs.root();
        let wte = nn::embedding(&root / "wte", vocab, c.embed, Default::default());
        let fc = nn::linear(&root / "fc", c.window * c.embed, c.hidden, Default::default());
        let head = nn::linear(&root / "head", c.hidden, vocab, Default::default());
        let model = Self { vs, config, vocab, wte, fc, head };
        let mut init = NormalInit::new(seed);
        for (name, t) in model.parameters() {
            if name.ends_with("bias") {
                NormalInit::constant(&t, 0.0);
            } else {
                init.normal(&t, 0.02);
            }
        }
        Ok(model)
    }
}

impl LanguageModel for Mlp {
    fn parameters(&self) -> Vec<(String, Tensor)> {
        sorted_variables(&self.vs)
    }

    fn loss(&self, inputs: &Tensor, targets: &Tensor, train: bool) -> Result<Tensor> {
        check_tokens(inputs, targets, self.config.context, self.vocab)?;
        let run = || {
            let (b, t) = inputs.size2()?;
            let w = self.config.window;
            // Left-pad with token 0 so position i sees tokens i−w+1 ..= i.
            let padded = inputs.f_constant_pad_nd([w - 1, 0])?;
            let ctx = padded.f_unfold(1, w, 1)?; // [b, t, w]
            let x = self.wte.forward(&ctx).f_reshape([b, t, w * self.config.embed])?;
            let logits = self.head.forward(&self.fc.forward(&x).gelu("none"));
            next_token_loss(&logits, targets, self.vocab)
        };
        graph_if(train, run)
    }

    fn context(&self) -> i64 {
        self.config.context
    }

    fn vocab(&self) -> i64 {
        self.vocab
    }

    fn describe(&self) -> String {
        let c = &self.config;
        format!(
            "mlp ctx{} window{} embed{} hidden{} vocab{}",
            c.context, c.window, c.embed, c.hidden, self.vocab
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::Kind;

    #[test]
    fn learns_a_repeating_text() {
        let mlp = Mlp::new(MlpConfig { context: 16, ..Default::default() }, 256, 0).unwrap();
        let bytes: Vec<i64> = b"the cat sat on the mat. "
            .iter()
            .cycle()
            .take(17 * 8)
            .map(|&b| i64::from(b))
            .collect();
        let all = Tensor::from_slice(&bytes).view([8, 17]);
        let (x, y) = (all.narrow(1, 0, 16), all.narrow(1, 1, 16));
        let first = mlp.loss(&x, &y, false).unwrap().double_value(&[]);
        let params: Vec<Tensor> = mlp.parameters().into_iter().map(|(_, t)| t).collect();
        for _ in 0..60 {
            let loss = mlp.loss(&x, &y, true).unwrap();
            for p in &params {
                let mut g = p.grad();
                if g.defined() {
                    let _ = g.zero_();
                }
            }
            loss.backward();
            tch::no_grad(|| {
                for p in &params {
                    let _ = p.shallow_clone().f_sub_(&(p.grad() * 0.5)).unwrap();
                }
            });
        }
        let last = mlp.loss(&x, &y, false).unwrap().double_value(&[]);
        assert!((first - 256f64.ln()).abs() < 0.1, "{first}");
        assert!(last < first / 2.0, "{first} -> {last}");
        assert_eq!(mlp.loss(&x, &y, false).unwrap().kind(), Kind::Float);
    }

    #[test]
    fn the_count_matches_the_built_model_and_a_huge_one_is_refused_before_allocation() {
        let cfg = MlpConfig { context: 8, window: 3, embed: 5, hidden: 7 };
        let mlp = Mlp::new(cfg, 11, 0).unwrap();
        assert_eq!(cfg.parameter_count(11).get(), Some(crate::model::parameter_count(&mlp)));
        let e = Mlp::new(MlpConfig::default(), i64::from(u32::MAX), 0).unwrap_err().to_string();
        assert!(e.contains("--vocab") && e.contains("parameters"), "{e}");
        let huge = MlpConfig { hidden: i64::MAX, embed: i64::MAX, ..cfg };
        let e = Mlp::new(huge, 256, 0).unwrap_err().to_string();
        assert!(e.contains("64-bit") && e.contains("model.hidden"), "{e}");
    }
}
