//! The built-in byte-level GPT: a decoder-only transformer (GPT-2 layout, pre-norm,
//! learned positions, GELU MLP, untied output head).
//!
//! Defaults (d_model 256, 4 layers, 4 heads, context 256, vocabulary 256) give 3.35M
//! parameters; every dimension is a multiple of 64 so the compression kernels' 64-wide
//! chunks tile it exactly. Initialisation follows GPT-2 (normal, std 0.02; residual
//! projections scaled by 1/√(2·layers)), drawn from [`super::init`] so every worker built
//! with the same seed holds the same bits.

use anyhow::{bail, Result};
use serde::{Deserialize, Serialize};
use tch::nn::{self, Module};
use tch::{Device, Tensor};

use super::init::NormalInit;
use super::size::{self, Count};
use super::{check_tokens, graph_if, next_token_loss, sorted_variables, LanguageModel};

/// Shape of the GPT; the `[model]` table of a run's config.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GptConfig {
    /// Width of the residual stream.
    pub d_model: i64,
    /// Transformer blocks.
    pub layers: i64,
    /// Attention heads (d_model / heads per head).
    pub heads: i64,
    /// Tokens per training window.
    pub context: i64,
}

impl Default for GptConfig {
    fn default() -> Self {
        Self { d_model: 256, layers: 4, heads: 4, context: 256 }
    }
}

impl GptConfig {
    /// Checks the shape is buildable.
    pub fn validate(&self) -> Result<()> {
        if self.d_model < 1 || self.layers < 1 || self.heads < 1 || self.context < 1 {
            bail!("model: d_model, layers, heads and context must all be at least 1: {self:?}");
        }
        if self.d_model % self.heads != 0 {
            bail!("model: d_model {} is not a multiple of heads {}", self.d_model, self.heads);
        }
        Ok(())
    }

    /// The settings that shrink the model, for messages.
    pub const SHRINK: &'static str = "use a smaller --vocab (token-id data: the largest id + 1) \
         or a smaller model (--set model.d_model=N, model.layers=N, model.context=N)";

    /// Parameters of the GPT over `vocab` tokens, counted without overflow.
    pub fn parameter_count(&self, vocab: i64) -> Count {
        let (v, d, t) = (i128::from(vocab), i128::from(self.d_model), i128::from(self.context));
        let norm = Count::zero().tensor(&[d]).tensor(&[d]);
        let linear = |i: i128, o: i128| Count::zero().tensor(&[o, i]).tensor(&[o]);
        // Widths 3d and 4d stay far inside i128 for any i64 d.
        let block = norm
            .plus(linear(d, 3 * d))
            .plus(linear(d, d))
            .plus(norm)
            .plus(linear(d, 4 * d))
            .plus(linear(4 * d, d));
        Count::zero()
            .tensor(&[v, d])
            .tensor(&[t, d])
            .plus(block.times(i128::from(self.layers)))
            .plus(norm)
            .tensor(&[v, d])
    }

    /// The model as messages name it.
    pub fn describe(&self, vocab: i64) -> String {
        format!(
            "model: gpt (d_model {}, layers {}, context {}) over a vocabulary of {vocab}",
            self.d_model, self.layers, self.context
        )
    }
}

struct Block {
    ln1: nn::LayerNorm,
    qkv: nn::Linear,
    proj: nn::Linear,
    ln2: nn::LayerNorm,
    fc: nn::Linear,
    out: nn::Linear,
    heads: i64,
}

impl Block {
    fn forward(&self, x: &Tensor) -> Tensor {
        let (b, t, d) = x.size3().unwrap_or((0, 0, 0));
        let hd = d / self.heads;
        let qkv = self.qkv.forward(&self.ln1.forward(x));
        let split = qkv.split(d, 2);
        let heads = |z: &Tensor| z.view([b, t, self.heads, hd]).transpose(1, 2);
        let (q, k, v) = (heads(&split[0]), heads(&split[1]), heads(&split[2]));
        let y = Tensor::scaled_dot_product_attention(
            &q,
            &k,
            &v,
            None::<Tensor>,
            0.0,
            true,
            None,
            false,
        );
        let y = y.transpose(1, 2).contiguous().view([b, t, d]);
        let x = x + self.proj.forward(&y);
        let h = self.fc.forward(&self.ln2.forward(&x)).gelu("none");
        &x + self.out.forward(&h)
    }
}

/// The GPT and its parameters.
pub struct Gpt {
    vs: nn::VarStore,
    config: GptConfig,
    vocab: i64,
    wte: nn::Embedding,
    wpe: Tensor,
    blocks: Vec<Block>,
    ln_f: nn::LayerNorm,
    head: nn::Linear,
}

impl std::fmt::Debug for Gpt {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gpt").field("config", &self.config).field("vocab", &self.vocab).finish()
    }
}

impl Gpt {
    /// Moves every parameter to `device` in place: handles taken before (the
    /// [`LanguageModel::parameters`] list) follow, as the tensors keep their identity.
    pub fn to_device(&mut self, device: Device) {
        if device != self.vs.device() {
            self.vs.set_device(device);
        }
    }

    /// A GPT over `vocab` tokens with parameters drawn from `seed`.
    pub fn new(config: GptConfig, vocab: i64, seed: u64) -> Result<Self> {
        config.validate()?;
        if vocab < 2 {
            bail!("model: vocabulary {vocab} is too small");
        }
        // Counted before LibTorch allocates: its allocation failure would be a panic.
        size::check(
            &config.describe(vocab),
            config.parameter_count(vocab),
            size::WEIGHT_BYTES_PER_PARAMETER,
            "building the model",
            GptConfig::SHRINK,
        )?;
        let vs = nn::VarStore::new(Device::Cpu);
        let root = vs.root();
        let d = config.d_model;
        let linear = |p: nn::Path, i: i64, o: i64| nn::linear(p, i, o, Default::default());
        let wte = nn::embedding(&root / "wte", vocab, d, Default::default());
        let wpe = root.zeros("wpe", &[config.context, d]);
        let blocks = (0..config.layers)
            .map(|l| {
                let p = &root / format!("h{l}");
                Block {
                    ln1: nn::layer_norm(&p / "ln1", vec![d], Default::default()),
                    qkv: linear(&p / "qkv", d, 3 * d),
                    proj: linear(&p / "proj", d, d),
                    ln2: nn::layer_norm(&p / "ln2", vec![d], Default::default()),
                    fc: linear(&p / "fc", d, 4 * d),
                    out: linear(&p / "out", 4 * d, d),
                    heads: config.heads,
                }
            })
            .collect();
        let ln_f = nn::layer_norm(&root / "ln_f", vec![d], Default::default());
        let head = nn::linear(
            &root / "head",
            d,
            vocab,
            nn::LinearConfig { bias: false, ..Default::default() },
        );
        let model = Self { vs, config, vocab, wte, wpe, blocks, ln_f, head };
        model.init(seed);
        Ok(model)
    }

    fn init(&self, seed: u64) {
        let mut init = NormalInit::new(seed);
        let residual = 0.02 / (2.0 * self.config.layers as f64).sqrt();
        for (name, t) in self.parameters() {
            if name.contains("ln") {
                // LayerNorm: weight 1, bias 0.
                NormalInit::constant(&t, if name.ends_with("weight") { 1.0 } else { 0.0 });
            } else if name.ends_with("bias") {
                NormalInit::constant(&t, 0.0);
            } else if name.ends_with("proj.weight") || name.ends_with("out.weight") {
                init.normal(&t, residual);
            } else {
                init.normal(&t, 0.02);
            }
        }
    }

    /// Logits `[batch, tokens, vocab]` for `inputs` `[batch, tokens]`.
    pub fn logits(&self, inputs: &Tensor) -> Tensor {
        let t = inputs.size().get(1).copied().unwrap_or(0);
        let mut x = self.wte.forward(inputs) + self.wpe.narrow(0, 0, t);
        for block in &self.blocks {
            x = block.forward(&x);
        }
        self.head.forward(&self.ln_f.forward(&x))
    }
}

impl LanguageModel for Gpt {
    fn parameters(&self) -> Vec<(String, Tensor)> {
        sorted_variables(&self.vs)
    }

    fn loss(&self, inputs: &Tensor, targets: &Tensor, train: bool) -> Result<Tensor> {
        check_tokens(inputs, targets, self.config.context, self.vocab)?;
        graph_if(train, || next_token_loss(&self.logits(inputs), targets, self.vocab))
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
            "gpt d{} l{} h{} ctx{} vocab{}",
            c.d_model, c.layers, c.heads, c.context, self.vocab
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::parameter_count;
    use tch::Kind;

    #[test]
    fn default_shape_has_about_3_to_5_million_parameters() {
        let gpt = Gpt::new(GptConfig::default(), 256, 0).unwrap();
        let n = parameter_count(&gpt);
        assert!((3_000_000..5_000_000).contains(&n), "{n}");
        for (name, t) in gpt.parameters() {
            assert!(t.size().iter().all(|d| d % 64 == 0 || *d == 1), "{name} {:?}", t.size());
        }
    }

    #[test]
    fn same_seed_same_bits_and_initial_loss_near_uniform() {
        let cfg = GptConfig { d_model: 64, layers: 2, heads: 2, context: 32 };
        let a = Gpt::new(cfg, 256, 7).unwrap();
        let b = Gpt::new(cfg, 256, 7).unwrap();
        let c = Gpt::new(cfg, 256, 8).unwrap();
        for ((na, ta), (nb, tb)) in a.parameters().iter().zip(b.parameters()) {
            assert_eq!(na, &nb);
            assert!(ta.equal(&tb), "{na}");
        }
        assert!(a.parameters().iter().zip(c.parameters()).any(|(x, y)| !x.1.equal(&y.1)));
        let x = Tensor::randint(256, [4, 32], (Kind::Int64, Device::Cpu));
        let y = Tensor::randint(256, [4, 32], (Kind::Int64, Device::Cpu));
        let loss = a.loss(&x, &y, false).unwrap().double_value(&[]);
        assert!((loss - 256f64.ln()).abs() < 0.3, "{loss}");
    }

    #[test]
    fn attention_is_causal() {
        let cfg = GptConfig { d_model: 64, layers: 2, heads: 2, context: 16 };
        let gpt = Gpt::new(cfg, 256, 1).unwrap();
        let x = Tensor::randint(256, [1, 16], (Kind::Int64, Device::Cpu));
        let x2 = x.copy();
        let _ = x2.get(0).get(15).fill_((x.int64_value(&[0, 15]) + 1) % 256);
        let (a, b) = tch::no_grad(|| (gpt.logits(&x), gpt.logits(&x2)));
        assert!(a.narrow(1, 0, 15).equal(&b.narrow(1, 0, 15)), "earlier positions unchanged");
        assert!(!a.narrow(1, 15, 1).equal(&b.narrow(1, 15, 1)));
    }

    #[test]
    fn the_count_matches_the_built_model_and_a_huge_one_is_refused_before_allocation() {
        let cfg = GptConfig { d_model: 8, layers: 3, heads: 2, context: 5 };
        let gpt = Gpt::new(cfg, 11, 0).unwrap();
        assert_eq!(cfg.parameter_count(11).get(), Some(parameter_count(&gpt)));
        let e = Gpt::new(GptConfig::default(), i64::from(u32::MAX), 0).unwrap_err().to_string();
        assert!(e.contains("--vocab") && e.contains("memory"), "{e}");
        let huge = GptConfig { layers: i64::MAX, ..cfg };
        let e = Gpt::new(huge, 256, 0).unwrap_err().to_string();
        assert!(e.contains("64-bit") && e.contains("model.layers"), "{e}");
    }

    #[test]
    fn refuses_bad_shapes_and_tokens() {
        let cfg = GptConfig { d_model: 64, layers: 1, heads: 3, context: 8 };
        assert!(Gpt::new(cfg, 256, 0).unwrap_err().to_string().contains("multiple of heads"));
        let gpt = Gpt::new(GptConfig { heads: 2, ..cfg }, 256, 0).unwrap();
        let long = Tensor::zeros([1, 9], (Kind::Int64, Device::Cpu));
        assert!(gpt.loss(&long, &long, false).is_err());
        let big = Tensor::full([1, 8], 256, (Kind::Int64, Device::Cpu));
        assert!(gpt.loss(&big, &big, false).unwrap_err().to_string().contains("vocabulary"));
    }
}
