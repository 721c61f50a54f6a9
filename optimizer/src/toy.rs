//! A small MLP regression task implementing [`TrainStep`], for tests, examples and
//! benchmarks that need a real tch model without the trainer crate.
//!
//! A fixed random "teacher" network (the same for every worker) maps inputs to targets;
//! each worker draws its own shard of inputs from its own seed, so shards are disjoint in
//! expectation and deterministic. The student is an MLP trained with AdamW.

use tch::nn::{self, Module, OptimizerConfig};
use tch::{Device, Kind, Tensor};

use crate::error::{OptimizerError, Result};
use crate::train_step::TrainStep;

static SEED_LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Settings of the toy task.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ToyConfig {
    /// Input features.
    pub inputs: i64,
    /// Hidden width.
    pub hidden: i64,
    /// Outputs.
    pub outputs: i64,
    /// Samples per batch.
    pub batch: i64,
    /// Batches in each worker's shard (cycled).
    pub batches: i64,
    /// Inner AdamW learning rate.
    pub lr: f64,
    /// Inner AdamW weight decay.
    pub weight_decay: f64,
    /// Gradient-norm clip.
    pub clip: f64,
    /// Seed of the model's initial parameters and of the teacher (shared by all workers).
    pub model_seed: i64,
    /// Where the model, its data and so the outer optimizer's state live. The data are
    /// drawn on the CPU and moved, so every device trains on the same samples.
    pub device: Device,
}

impl Default for ToyConfig {
    fn default() -> Self {
        Self {
            inputs: 16,
            hidden: 64,
            outputs: 4,
            batch: 32,
            batches: 64,
            lr: 3e-3,
            weight_decay: 0.0,
            clip: 1.0,
            model_seed: 0,
            device: Device::Cpu,
        }
    }
}

/// One worker's toy model, optimizer and shard.
pub struct ToyMlp {
    vs: nn::VarStore,
    net: nn::Sequential,
    opt: nn::Optimizer,
    data: Vec<(Tensor, Tensor)>,
    eval: (Tensor, Tensor),
    cursor: usize,
    clip: f64,
}

impl std::fmt::Debug for ToyMlp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ToyMlp").field("cursor", &self.cursor).finish_non_exhaustive()
    }
}

fn teacher(x: &Tensor, w1: &Tensor, w2: &Tensor) -> Tensor {
    x.matmul(w1).tanh().matmul(w2)
}

impl ToyMlp {
    /// Worker `worker`'s instance: identical initial parameters for every worker, its own
    /// data shard.
    pub fn new(cfg: ToyConfig, worker: u32) -> Result<Self> {
        if cfg.inputs < 1 || cfg.hidden < 1 || cfg.outputs < 1 || cfg.batch < 1 || cfg.batches < 1 {
            return Err(OptimizerError::Config("toy: every dimension must be at least 1".into()));
        }
        let opts = (Kind::Float, Device::Cpu);
        // LibTorch's generator is global: hold the lock so that a model built on another
        // thread cannot draw from it between our seeding and our draws.
        let _seeded = SEED_LOCK.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        tch::manual_seed(cfg.model_seed);
        let w1 = Tensor::randn([cfg.inputs, 32], opts);
        let w2 = Tensor::randn([32, cfg.outputs], opts) * 0.5;
        let vs = nn::VarStore::new(cfg.device);
        let root = vs.root();
        let net = nn::seq()
            .add(nn::linear(&root / "l1", cfg.inputs, cfg.hidden, Default::default()))
            .add_fn(|x| x.tanh())
            .add(nn::linear(&root / "l2", cfg.hidden, cfg.hidden, Default::default()))
            .add_fn(|x| x.tanh())
            .add(nn::linear(&root / "l3", cfg.hidden, cfg.outputs, Default::default()));
        let eval_x = Tensor::randn([256, cfg.inputs], opts);
        let on = |t: Tensor| t.to_device(cfg.device);
        let eval = (on(teacher(&eval_x, &w1, &w2)), on(eval_x));
        tch::manual_seed(cfg.model_seed.wrapping_add(1 + i64::from(worker)).wrapping_mul(7919));
        let data = (0..cfg.batches)
            .map(|_| {
                let x = Tensor::randn([cfg.batch, cfg.inputs], opts);
                (on(teacher(&x, &w1, &w2)), on(x))
            })
            .collect();
        let opt =
            nn::AdamW { beta1: 0.9, beta2: 0.95, wd: cfg.weight_decay, eps: 1e-8, amsgrad: false }
                .build(&vs, cfg.lr)?;
        Ok(Self { vs, net, opt, data, eval, cursor: 0, clip: cfg.clip })
    }
}

impl TrainStep for ToyMlp {
    fn parameters(&self) -> Vec<(String, Tensor)> {
        self.vs.variables().into_iter().collect()
    }

    fn forward_backward(&mut self) -> Result<f64> {
        let (y, x) = &self.data[self.cursor % self.data.len()];
        self.cursor += 1;
        self.opt.zero_grad();
        let loss = self.net.forward(x).f_mse_loss(y, tch::Reduction::Mean)?;
        loss.f_backward()?;
        Ok(loss.f_double_value(&[])?)
    }

    fn inner_step(&mut self) -> Result<()> {
        if self.clip > 0.0 {
            self.opt.clip_grad_norm(self.clip);
        }
        self.opt.step();
        Ok(())
    }

    fn eval_loss(&mut self) -> Result<f64> {
        let (y, x) = &self.eval;
        let loss = tch::no_grad(|| self.net.forward(x).f_mse_loss(y, tch::Reduction::Mean))?;
        Ok(loss.f_double_value(&[])?)
    }
}
