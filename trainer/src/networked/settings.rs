//! The run's settings as a coordinator hands them to its workers, and the facts a worker's
//! join is checked on.
//!
//! `meridian coordinator --config run.toml` reads the file's `[run]` table beside the
//! tables every run's file has:
//! ```toml
//! [run]
//! algo = "sparseloco"   # the outer algorithm (required)
//! model = "gpt"         # gpt or mlp (default gpt)
//! steps = 300           # inner steps per worker (default 300)
//! seed = 0              # initial parameters and data order (default 0)
//! shards = 4            # data shards: a worker trains shard (member id mod shards)
//! vocab = 256           # the data's vocabulary (default 256: text, read as bytes)
//! corpus = "9f2c…"      # optional: the fingerprint every worker's data must have
//! [sparseloco]
//! topk = 32
//! ```
//! It resolves them into one [`RunSettings`], sends its [`RunSettings::document`] in every
//! welcome, and refuses a worker whose join facts ([`join_facts`]) differ from the run's.
//! A worker started with none of the run's flags follows the document: it builds exactly
//! the run's model and optimizer from it and brings only what it reads itself, its data's
//! fingerprint. A worker started with its own flags is compared on every fact.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{bail, Context, Result};
use meridian_optimizer::params::ParamSet;
use meridian_optimizer::signature::{add_settings, run_signature};
use meridian_optimizer::Algorithm;
use serde::{Deserialize, Serialize};

use crate::cli::args::DEFAULT_STEPS;
use crate::model::{build_model, ModelKind};
use crate::run_config::RunConfig;

/// The table a run's file names the run's own settings in.
pub const RUN_TABLE: &str = "run";

/// The key of the fact that says which corpus a worker reads (compared only where the run
/// names one: see `meridian_comm::protocol::OPTIONAL_KIND`).
pub const CORPUS_FACT: &str = "corpus.fingerprint";

/// The `[run]` table, as written.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct RunTable {
    algo: String,
    #[serde(default = "default_model")]
    model: String,
    #[serde(default = "default_steps")]
    steps: u64,
    #[serde(default)]
    seed: u64,
    #[serde(default = "one")]
    shards: u32,
    #[serde(default = "byte_vocab")]
    vocab: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    corpus: Option<String>,
}

fn default_model() -> String {
    "gpt".to_string()
}
fn default_steps() -> u64 {
    DEFAULT_STEPS
}
fn one() -> u32 {
    1
}
fn byte_vocab() -> u32 {
    256
}

/// Everything a worker needs to train its part of the run, as the coordinator holds it.
#[derive(Debug, Clone)]
pub struct RunSettings {
    /// The outer algorithm.
    pub algo: Algorithm,
    /// The model's kind (gpt or mlp: a TorchScript file is the worker's own).
    pub model: ModelKind,
    /// Inner steps per worker.
    pub steps: u64,
    /// The seed of the initial parameters and the data order.
    pub seed: u64,
    /// Data shards.
    pub shards: u32,
    /// The data's vocabulary.
    pub vocab: u32,
    /// The fingerprint every worker's data must have, where the run names one.
    pub corpus: Option<String>,
    /// The model, inner optimizer, batching and algorithm settings.
    pub config: RunConfig,
}

impl RunSettings {
    /// The settings of the run's file, `None` when it has no `[run]` table (a coordinator
    /// that only reads `[transport]`).
    pub fn from_file(path: &Path) -> Result<Option<Self>> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("config: cannot read {}", path.display()))?;
        let mut table: toml::Table =
            text.parse().with_context(|| format!("config: cannot parse {}", path.display()))?;
        if !table.contains_key(RUN_TABLE) {
            return Ok(None);
        }
        // The coordinator's own transport is not the workers': each site tunes its own.
        table.remove("transport");
        Self::from_table(table).map(Some).with_context(|| format!("config {}", path.display()))
    }

    /// The settings a coordinator sent ([`RunSettings::document`]).
    pub fn from_document(text: &str) -> Result<Self> {
        let table: toml::Table =
            text.parse().context("the run's settings from the coordinator do not parse")?;
        Self::from_table(table).context("the run's settings from the coordinator")
    }

    fn from_table(mut table: toml::Table) -> Result<Self> {
        let run: RunTable = match table.remove(RUN_TABLE) {
            Some(value @ toml::Value::Table(_)) => value.try_into().context(
                "[run]: its keys are algo (required), model, steps, seed, shards, vocab and corpus",
            )?,
            Some(_) => bail!("[run] must be a table"),
            None => bail!("no [run] table"),
        };
        let algo: Algorithm = run.algo.parse().map_err(|e| anyhow::anyhow!("[run] algo: {e}"))?;
        let model: ModelKind = run.model.parse().context("[run] model")?;
        if !matches!(model, ModelKind::Gpt | ModelKind::Mlp) {
            bail!(
                "[run] model = {:?}: a run's settings name a built-in model (gpt or mlp); with \
                 a TorchScript model, start every worker with its own flags",
                run.model
            );
        }
        if run.steps == 0 || run.shards == 0 || run.vocab == 0 {
            bail!("[run] steps, shards and vocab must be at least 1");
        }
        if let Some(corpus) = &run.corpus {
            if u64::from_str_radix(corpus, 16).is_err() {
                bail!(
                    "[run] corpus = {corpus:?}: the fingerprint a worker logs for its data \
                     (16 hex digits)"
                );
            }
        }
        let config = RunConfig::from_table(&model, &[algo], table, None, &[])?;
        Ok(Self {
            algo,
            model,
            steps: run.steps,
            seed: run.seed,
            shards: run.shards,
            vocab: run.vocab,
            corpus: run.corpus,
            config,
        })
    }

    /// The settings as one TOML document: `[run]`, `[model]`, `[inner]`, `[data]` and the
    /// algorithm's table, every value resolved (defaults written out), so a worker builds
    /// exactly what the coordinator checked.
    pub fn document(&self) -> Result<String> {
        let run = RunTable {
            algo: self.algo.to_string(),
            model: self.model.to_string(),
            steps: self.steps,
            seed: self.seed,
            shards: self.shards,
            vocab: self.vocab,
            corpus: self.corpus.clone(),
        };
        let mut doc = toml::Table::new();
        doc.insert(RUN_TABLE.into(), toml::Value::try_from(&run)?);
        let Some(model) = self.config.model.to_table()? else {
            bail!("a TorchScript model has no run settings")
        };
        doc.insert("model".into(), toml::Value::Table(model));
        doc.insert("inner".into(), toml::Value::try_from(self.config.inner)?);
        doc.insert("data".into(), toml::Value::try_from(self.config.data)?);
        let Some(algo) = self.config.algos.first() else { bail!("no algorithm") };
        let mut table: toml::Table = algo.to_toml().parse()?;
        table.remove("algo");
        doc.insert(self.algo.to_string(), toml::Value::Table(table));
        Ok(toml::to_string(&doc)?)
    }

    /// The run's signature facts: its model's parameters (built once, on the CPU, from the
    /// seed) and every setting.
    pub fn facts(&self) -> Result<BTreeMap<String, String>> {
        let model = build_model(&self.config.model, self.vocab, self.seed, tch::Device::Cpu)
            .context("building the run's model to learn its parameters")?;
        let params = ParamSet::new(model.parameters())?;
        let corpus = self.corpus.as_deref();
        join_facts(&params, &self.config, self.steps, self.seed, self.shards, corpus)
    }
}

/// What a worker trains, as the facts its join is checked on: the outer algorithm's facts
/// (parameters and settings, see [`run_signature`]), the inner optimizer's, model's and
/// batching settings (`inner.KEY`, `model.KEY`, `data.KEY`), the run's steps, seed and
/// shards (`run.KEY`) and, where known, the data's fingerprint ([`CORPUS_FACT`]).
pub fn join_facts(
    params: &ParamSet,
    config: &RunConfig,
    steps: u64,
    seed: u64,
    shards: u32,
    corpus: Option<&str>,
) -> Result<BTreeMap<String, String>> {
    let Some(algo) = config.algos.first() else { bail!("no algorithm") };
    let mut facts = run_signature(params, algo);
    // A TorchScript model has no table: its parameters are its facts.
    let tables = [
        ("model", config.model.to_table()?),
        ("inner", Some(toml::Table::try_from(config.inner)?)),
        ("data", Some(toml::Table::try_from(config.data)?)),
    ];
    for (kind, table) in tables {
        if let Some(table) = table {
            add_settings(&mut facts, kind, &table);
        }
    }
    for (key, value) in [("steps", steps), ("seed", seed), ("shards", u64::from(shards))] {
        facts.insert(format!("run.{key}"), value.to_string());
    }
    if let Some(corpus) = corpus {
        facts.insert(CORPUS_FACT.to_string(), corpus.to_string());
    }
    Ok(facts)
}

/// A corpus fingerprint as the facts and `[run] corpus` write it.
pub fn corpus_fingerprint(fingerprint: u64) -> String {
    format!("{fingerprint:016x}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(text: &str) -> Result<RunSettings> {
        let table: toml::Table = text.parse()?;
        RunSettings::from_table(table)
    }

    const RUN: &str = "[run]\nalgo = \"diloco\"\nmodel = \"mlp\"\nsteps = 40\nshards = 2\n\
                       [diloco]\ninner_steps = 5\nouter_lr = 0.5\n[inner]\nlr = 0.002\n";

    #[test]
    fn the_document_rebuilds_the_same_run() {
        let s = settings(RUN).unwrap();
        assert_eq!(
            (s.algo, s.steps, s.seed, s.shards, s.vocab),
            (Algorithm::Diloco, 40, 0, 2, 256)
        );
        let doc = s.document().unwrap();
        let back = RunSettings::from_document(&doc).unwrap();
        assert_eq!(back.document().unwrap(), doc, "a document is its own fixed point");
        let facts = s.facts().unwrap();
        assert_eq!(back.facts().unwrap(), facts);
        assert_eq!(facts["setting.outer_lr"], "0.5");
        assert_eq!(facts["inner.lr"], "0.002");
        assert_eq!(facts["run.steps"], "40");
        assert!(facts.keys().any(|k| k.starts_with("param.")), "{facts:?}");
        assert!(!facts.contains_key(CORPUS_FACT), "no corpus named, none checked");
    }

    #[test]
    fn a_worker_with_the_same_flags_has_the_same_facts() {
        let s = settings(RUN).unwrap();
        let sets = ["diloco.outer_lr=0.5", "inner.lr=0.002"].map(String::from);
        let flags =
            RunConfig::build(&ModelKind::Mlp, &[Algorithm::Diloco], None, Some(5), &sets).unwrap();
        let model = build_model(&flags.model, 256, 0, tch::Device::Cpu).unwrap();
        let params = ParamSet::new(model.parameters()).unwrap();
        assert_eq!(join_facts(&params, &flags, 40, 0, 2, None).unwrap(), s.facts().unwrap());
        let other = join_facts(&params, &flags, 40, 1, 2, None).unwrap();
        assert_eq!(other["run.seed"], "1");
    }

    #[test]
    fn a_bad_run_table_is_refused_naming_what_is_wrong() {
        let cases = [
            ("[run]\nmodel = \"gpt\"\n", "algo"),
            ("[run]\nalgo = \"adam\"\n", "[run] algo"),
            ("[run]\nalgo = \"diloco\"\nstep = 3\n", "steps"),
            ("[run]\nalgo = \"diloco\"\nsteps = 0\n", "at least 1"),
            ("[run]\nalgo = \"diloco\"\nmodel = \"torchscript:m.pt\"\n", "TorchScript"),
            ("[run]\nalgo = \"diloco\"\ncorpus = \"data.txt\"\n", "16 hex digits"),
            ("[run]\nalgo = \"diloco\"\n[modle]\nx = 1\n", "[modle]"),
            ("[run]\nalgo = \"diloco\"\n[diloco]\nouter_lr = -1.0\n", "outer_lr"),
        ];
        for (text, said) in cases {
            let e = format!("{:#}", settings(text).unwrap_err());
            assert!(e.contains(said), "{text:?}: {e}");
        }
    }

    #[test]
    fn the_corpus_fact_is_the_kind_the_coordinator_may_leave_unchecked() {
        let kind = CORPUS_FACT.split('.').next().unwrap();
        assert_eq!(kind, meridian_comm::protocol::OPTIONAL_KIND);
        assert_eq!(corpus_fingerprint(0xa5), "00000000000000a5");
    }
}
