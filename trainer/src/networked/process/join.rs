//! How a worker process joins: with its own flags, or following the run's settings.
//!
//! A worker started with none of the run-defining flags (`--algo`, `--steps`, `--seed`,
//! `--shards`, `--inner-steps`, `--model`, `--config`, `--set` other than `transport.*`)
//! asks the coordinator for the run's settings and builds its model and optimizer from
//! them; its join brings only its data's fingerprint. A coordinator without settings
//! refuses that join, and the worker then joins again with its defaults, as a worker with
//! flags does: its full signature (model, settings, steps, seed, shards, data) is checked
//! against the run's.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use meridian_comm::node::{NodeError, Refusal, WorkerHandle, WorkerNodeConfig, WorkerNodeEvent};
use meridian_comm::protocol::{RefuseReason, RunSignature, Topology};
use meridian_comm::quic::{JoinString, TransportTuning};
use meridian_comm::CommError;
use meridian_optimizer::params::ParamSet;
use tch::Device;

use crate::cli::worker::WorkerArgs;
use crate::data::Corpus;
use crate::model::{build_model, LanguageModel};
use crate::networked::ring_reducer::RingCell;
use crate::networked::settings::{corpus_fingerprint, join_facts, RunSettings, CORPUS_FACT};
use crate::run_config::RunConfig;

/// What this worker trains, from its flags or from the run's settings.
pub(super) struct Plan {
    pub config: RunConfig,
    pub model: Box<dyn LanguageModel>,
    pub steps: u64,
    pub seed: u64,
    pub shards: u32,
    /// Whether the settings came from the coordinator.
    pub followed: bool,
}

/// A joined worker: its plan, its node and what the welcome said.
pub(super) struct Joined {
    pub plan: Plan,
    pub handle: WorkerHandle,
    pub need_state: bool,
    pub topology: Topology,
}

/// The parts a join needs from the process.
pub(super) struct JoinContext<'a> {
    pub args: &'a WorkerArgs,
    pub join: JoinString,
    pub corpus: &'a Arc<Corpus>,
    pub device: Device,
    pub runtime: &'a tokio::runtime::Runtime,
    pub reducer: Arc<RingCell>,
}

impl JoinContext<'_> {
    /// Joins the run: following its settings where this worker was given none of its own
    /// (and the coordinator has them), with its own flags otherwise.
    pub fn join(&self) -> Result<Joined> {
        if !self.args.follows() {
            return self.join_with_flags();
        }
        match self.join_following() {
            Err(e) if refused_for_no_settings(&e) => {
                tracing::info!(
                    "the coordinator holds no run settings: this worker trains its defaults \
                     (give every worker the run's flags, or the coordinator --config RUN.toml \
                     with a [run] table)"
                );
                self.join_with_flags()
            }
            other => other,
        }
    }

    fn node_config(&self, tuning: TransportTuning) -> WorkerNodeConfig {
        let mut cfg = WorkerNodeConfig::new(self.join.clone(), self.args.name.clone());
        cfg.tuning = tuning;
        cfg.reducer = Some(self.reducer.clone());
        cfg.advertise = self.args.advertise;
        cfg
    }

    fn flags_config(&self) -> Result<RunConfig> {
        let args = self.args;
        if let Some(path) = &args.source.config {
            if RunSettings::from_file(path)?.is_some() {
                bail!(
                    "--config {}: a file with a [run] table holds a run's settings for \
                     `meridian coordinator --config`; a worker takes them from the coordinator \
                     when started without --config and the run's flags (or give it a file \
                     without [run], and the flags)",
                    path.display()
                );
            }
        }
        args.source.config(&[args.algo], args.schedule.inner_steps, &[])
    }

    fn fingerprint(&self) -> String {
        corpus_fingerprint(self.corpus.fingerprint())
    }

    /// Joins with the settings of this worker's flags, sending every fact.
    fn join_with_flags(&self) -> Result<Joined> {
        let args = self.args;
        let config = self.flags_config()?;
        let model = build_model(&config.model, self.corpus.vocab(), args.run.seed, self.device)?;
        let (steps, seed, shards) = (args.steps(), args.run.seed, args.shards);
        let mut cfg = self.node_config(config.transport.clone());
        // What this worker trains, sent in its join: the coordinator refuses it, naming every
        // difference, when its model, algorithm or settings differ from the run's.
        let params = ParamSet::new(model.parameters())?;
        let fingerprint = self.fingerprint();
        let facts = join_facts(&params, &config, steps, seed, shards, Some(&fingerprint))?;
        cfg.signature = RunSignature::from_facts(facts);
        let (handle, welcome) = self.connect(cfg)?;
        let plan = Plan { config, model, steps, seed, shards, followed: false };
        Ok(Joined { plan, handle, need_state: welcome.need_state, topology: welcome.topology })
    }

    /// Joins asking for the run's settings, then builds what they name.
    fn join_following(&self) -> Result<Joined> {
        // A follower's only own settings are its transport's (`--set transport.KEY=VALUE`).
        let source = &self.args.source;
        let tuning = crate::run_config::transport_only(source.config.as_deref(), &source.set)?;
        let mut cfg = self.node_config(tuning);
        cfg.protocol.follows = true;
        cfg.signature = [(CORPUS_FACT.to_string(), self.fingerprint())].into_iter().collect();
        let (handle, welcome) = self.connect(cfg)?;
        let Some(document) = welcome.settings else {
            bail!("the coordinator welcomed this worker without the run's settings it asked for");
        };
        let settings = RunSettings::from_document(&document)?;
        if settings.vocab != self.corpus.vocab() {
            bail!(
                "the run's vocabulary is {} tokens and --data {} has {}: give this worker the \
                 run's data (and --vocab for pre-tokenized files)",
                settings.vocab,
                self.args.source.data.data.display(),
                self.corpus.vocab()
            );
        }
        let model =
            build_model(&settings.config.model, settings.vocab, settings.seed, self.device)?;
        tracing::info!(
            algo = %settings.algo,
            model = %model.describe(),
            steps = settings.steps,
            seed = settings.seed,
            shards = settings.shards,
            "training the run's settings from the coordinator"
        );
        let plan = Plan {
            config: settings.config,
            model,
            steps: settings.steps,
            seed: settings.seed,
            shards: settings.shards,
            followed: true,
        };
        Ok(Joined { plan, handle, need_state: welcome.need_state, topology: welcome.topology })
    }

    /// Connects and waits for the welcome.
    fn connect(&self, cfg: WorkerNodeConfig) -> Result<(WorkerHandle, Welcome)> {
        let mut handle =
            WorkerHandle::spawn(cfg, self.runtime.handle()).context("joining the run")?;
        while let Some(event) = handle.next_event(Some(Duration::from_secs(30)))? {
            if let WorkerNodeEvent::Welcomed { need_state, topology, settings, .. } = event {
                return Ok((handle, Welcome { need_state, topology, settings }));
            }
        }
        bail!("joined the run, but no welcome came within 30 s")
    }
}

/// What this worker needs of the welcome.
struct Welcome {
    need_state: bool,
    topology: Topology,
    settings: Option<String>,
}

/// Whether `e` is the coordinator saying it holds no settings to follow.
fn refused_for_no_settings(e: &anyhow::Error) -> bool {
    e.chain().any(|cause| {
        let node = match cause.downcast_ref::<CommError>() {
            Some(CommError::Node(node)) => node,
            _ => match cause.downcast_ref::<NodeError>() {
                Some(node) => node,
                None => return false,
            },
        };
        matches!(node, NodeError::Refused(Refusal::Protocol(RefuseReason::NoSettings)))
    })
}
