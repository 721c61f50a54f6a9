//! One worker's wrapped training: a [`LanguageModel`], its [`AdamW`] inner optimizer with
//! the warmup–cosine schedule, its data [`Shard`] and the shared validation batches. This
//! is the [`TrainStep`] the outer optimizers drive.

use std::rc::Rc;

use meridian_optimizer::divergence::{Divergence, Suspect};
use meridian_optimizer::train_step::TrainStep;
use meridian_optimizer::{Algorithm, OptimizerError, Result};
use tch::{Device, Tensor};

use crate::data::Shard;
use crate::model::LanguageModel;
use crate::step::adamw::{AdamW, InnerConfig};

/// A language model training on one shard.
pub struct LmStep {
    model: Box<dyn LanguageModel>,
    params: Vec<Tensor>,
    adam: AdamW,
    inner: InnerConfig,
    shard: Shard,
    validation: Rc<Vec<(Tensor, Tensor)>>,
    total_steps: u64,
    /// Inner steps per outer round, for a schedule aligned with the rounds (1 until
    /// [`LmStep::with_round_steps`] says otherwise).
    round_steps: u64,
    /// Inner steps this worker has been credited with: its own, plus those of the rounds
    /// it took from a peer's state. Drives the learning-rate schedule, so a worker that
    /// catches up continues at the run's rate rather than warming up again.
    schedule_step: u64,
    last_grad_norm: f64,
    /// The model's device: batches, which the data pipeline builds on the host, move here.
    device: Device,
    /// The outer algorithm that drives this worker and its divergence suspects, once the
    /// driver has said ([`TrainStep::driven_by`]).
    driver: Option<(Algorithm, Vec<Suspect>)>,
}

impl std::fmt::Debug for LmStep {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LmStep")
            .field("model", &self.model.describe())
            .field("inner_steps", &self.adam.steps())
            .finish_non_exhaustive()
    }
}

fn step_error(e: impl std::fmt::Display) -> OptimizerError {
    OptimizerError::TrainStep(e.to_string())
}

impl LmStep {
    /// Wraps `model` with a fresh AdamW; `total_steps` sets the schedule's length.
    pub fn new(
        model: Box<dyn LanguageModel>,
        inner: InnerConfig,
        shard: Shard,
        validation: Rc<Vec<(Tensor, Tensor)>>,
        total_steps: u64,
    ) -> anyhow::Result<Self> {
        let params: Vec<Tensor> = model.parameters().into_iter().map(|(_, t)| t).collect();
        let adam = AdamW::new(inner, &params)?;
        let device = params.first().map_or(Device::Cpu, Tensor::device);
        Ok(Self {
            model,
            params,
            adam,
            inner,
            shard,
            validation,
            total_steps,
            round_steps: 1,
            schedule_step: 0,
            last_grad_norm: 0.0,
            device,
            driver: None,
        })
    }

    /// The model.
    pub fn model(&self) -> &dyn LanguageModel {
        self.model.as_ref()
    }

    /// The inner optimizer (its state goes into checkpoints).
    pub fn adam(&self) -> &AdamW {
        &self.adam
    }

    /// The inner optimizer, mutably (to restore it).
    pub fn adam_mut(&mut self) -> &mut AdamW {
        &mut self.adam
    }

    /// The data shard (its position goes into checkpoints).
    pub fn shard(&self) -> &Shard {
        &self.shard
    }

    /// The data shard, mutably (to restore it).
    pub fn shard_mut(&mut self) -> &mut Shard {
        &mut self.shard
    }

    /// Sets the outer round's length in inner steps, which an inner schedule aligned with
    /// the rounds (`inner.align_to_rounds`) turns on.
    pub fn with_round_steps(mut self, round_steps: u64) -> Self {
        self.round_steps = round_steps.max(1);
        self
    }

    /// Puts the learning-rate schedule at inner step `step` (a worker that caught up).
    pub fn set_schedule_step(&mut self, step: u64) {
        self.schedule_step = step;
    }

    /// Where the learning-rate schedule stands.
    pub fn schedule_step(&self) -> u64 {
        self.schedule_step
    }

    /// Global gradient norm before clipping at the last inner step.
    pub fn last_grad_norm(&self) -> f64 {
        self.last_grad_norm
    }

    /// The divergence error for `what`, naming the driving algorithm and every learning
    /// rate that may be to blame (the outer one first: it is the likelier culprit when both
    /// are raised).
    fn diverged(&self, what: String) -> Divergence {
        let mut d = Divergence::new(what);
        if let Some((algorithm, suspects)) = &self.driver {
            d.algorithm = Some(*algorithm);
            d = d.suspect(suspects.iter().cloned());
        }
        d.suspect(self.divergence_suspects())
    }
}

impl TrainStep for LmStep {
    fn parameters(&self) -> Vec<(String, Tensor)> {
        self.model.parameters()
    }

    fn forward_backward(&mut self) -> Result<f64> {
        for p in &mut self.params {
            p.zero_grad();
        }
        let (x, y) = self.shard.next_batch();
        let (x, y) = (x.f_to_device(self.device)?, y.f_to_device(self.device)?);
        let loss = self.model.loss(&x, &y, true).map_err(step_error)?;
        loss.f_backward()?;
        let value = loss.f_double_value(&[])?;
        if !value.is_finite() {
            // Which learning rate is to blame is for the driver to say: it adds the outer
            // optimizer's suspects to this one's.
            let what =
                format!("the training loss is {value} at batch {}", self.shard.state().batches);
            return Err(Divergence::new(what).into_error());
        }
        Ok(value)
    }

    fn inner_step(&mut self) -> Result<()> {
        self.last_grad_norm = self.adam.clip_gradients(&self.params);
        let lr = self.inner.lr_at(self.schedule_step, self.total_steps, self.round_steps);
        self.adam.step(&self.params, lr);
        self.schedule_step += 1;
        Ok(())
    }

    fn eval_loss(&mut self) -> Result<f64> {
        let mut total = 0.0;
        for (x, y) in self.validation.iter() {
            let (x, y) = (x.f_to_device(self.device)?, y.f_to_device(self.device)?);
            total += self.model.loss(&x, &y, false).map_err(step_error)?.f_double_value(&[])?;
        }
        let loss = total / self.validation.len().max(1) as f64;
        if !loss.is_finite() {
            // Parameters can stay finite while the loss overflows: a result that is NaN is
            // a diverged run, not a number to report.
            let mut d = self.diverged(format!(
                "the validation loss is {loss} (the parameters have grown too large)"
            ));
            d.step = Some(self.schedule_step);
            return Err(d.into_error());
        }
        Ok(loss)
    }

    fn divergence_suspects(&self) -> Vec<Suspect> {
        vec![Suspect::default_value("inner.lr", self.inner.lr, InnerConfig::default().lr)]
    }

    fn driven_by(&mut self, algorithm: Algorithm, suspects: Vec<Suspect>) {
        self.driver = Some((algorithm, suspects));
    }
}
