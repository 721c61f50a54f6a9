//! A run's settings: the config file (`--config run.toml`), `--set` overrides and flags,
//! merged and validated before anything trains.
//!
//! The file has one table per concern; every key is optional and an unknown key or table
//! is an error that names it:
//! ```toml
//! [model]        # the model's shape (GptConfig for gpt, MlpConfig for mlp)
//! d_model = 256
//! [inner]        # the inner AdamW (InnerConfig)
//! lr = 1e-3
//! [data]         # batch and evaluation (DataConfig)
//! batch = 8
//! [diloco]       # one table per outer algorithm
//! inner_steps = 100
//! ```
//! `--set KEY=VALUE` sets KEY for every selected algorithm that has it; `--set
//! SCOPE.KEY=VALUE` sets it in one table (`model`, `inner`, `data` or an algorithm).
//! For instance `--set aggregation=clip_median` turns on Byzantine-robust aggregation for
//! every algorithm (see `meridian_optimizer::robust`; the default is the plain mean).

use anyhow::{bail, Context, Result};
use meridian_optimizer::config::AlgoConfig;
use meridian_optimizer::Algorithm;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use meridian_comm::quic::TransportTuning;

use crate::model::gpt::GptConfig;
use crate::model::mlp::MlpConfig;
use crate::model::ModelKind;
use crate::step::adamw::InnerConfig;

/// Batching and evaluation; the `[data]` table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DataConfig {
    /// Windows per inner step per worker.
    pub batch: u64,
    /// Validation batches per evaluation (the same windows every time).
    pub eval_batches: u64,
}

impl Default for DataConfig {
    fn default() -> Self {
        Self { batch: 8, eval_batches: 8 }
    }
}

/// A TorchScript model's settings (its `[model]` table): fallbacks for what the module
/// does not export itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TorchScriptConfig {
    /// Tokens per window, if the module has no `context()` method.
    pub context: Option<i64>,
}

/// The model's settings, by kind.
#[derive(Debug, Clone, PartialEq)]
pub enum ModelConfig {
    /// The built-in GPT.
    Gpt(GptConfig),
    /// The byte-level MLP.
    Mlp(MlpConfig),
    /// A TorchScript file.
    TorchScript(std::path::PathBuf, TorchScriptConfig),
}

impl ModelConfig {
    /// A built-in model's settings as its `[model]` table; `None` for a TorchScript file,
    /// whose settings are the module itself (and whose path is this machine's).
    pub fn to_table(&self) -> Result<Option<toml::Table>> {
        Ok(match self {
            ModelConfig::Gpt(c) => Some(toml::Table::try_from(c)?),
            ModelConfig::Mlp(c) => Some(toml::Table::try_from(c)?),
            ModelConfig::TorchScript(..) => None,
        })
    }
}

/// Everything configurable about a run, after the file and the overrides.
#[derive(Debug, Clone)]
pub struct RunConfig {
    /// The model.
    pub model: ModelConfig,
    /// The inner optimizer.
    pub inner: InnerConfig,
    /// Batching and evaluation.
    pub data: DataConfig,
    /// Each selected algorithm's settings, in the order given.
    pub algos: Vec<AlgoConfig>,
    /// QUIC tuning for runs across processes (`[transport]`).
    pub transport: TransportTuning,
}

/// Reads a run's TOML file (or nothing) and checks its tables are known ones. Its `[run]`
/// table (the run's algorithm, steps and seed, which `meridian coordinator` hands to its
/// workers: see `networked::settings`) is left out.
fn read_file(path: Option<&std::path::Path>) -> Result<toml::Table> {
    let mut file: toml::Table = match path {
        Some(path) => std::fs::read_to_string(path)
            .with_context(|| format!("config: cannot read {}", path.display()))?
            .parse()
            .with_context(|| format!("config: cannot parse {}", path.display()))?,
        None => toml::Table::new(),
    };
    file.remove(crate::networked::settings::RUN_TABLE);
    check_tables(&file)?;
    Ok(file)
}

/// Checks every table of a run's settings is a known one.
fn check_tables(file: &toml::Table) -> Result<()> {
    // A bare `key = value` above every table is a setting without a table: say where
    // that setting lives, rather than call it an unknown table.
    if let Some((key, _)) = file.iter().find(|(_, v)| !v.is_table()) {
        bail!("config: {}", top_level_setting(key));
    }
    if let Some(unknown) =
        file.keys().find(|k| !SCOPES.contains(&k.as_str()) && k.parse::<Algorithm>().is_err())
    {
        bail!("config: [{unknown}] is not a known table; {}", tables_sentence());
    }
    Ok(())
}

/// "the file's tables are …", naming every table a run's file may have.
fn tables_sentence() -> String {
    let algos: Vec<String> = Algorithm::ALL.iter().map(|a| format!("[{a}]")).collect();
    format!(
        "the file's tables are [run] (read by `meridian coordinator`), [model], [inner], \
         [data], [transport] and one per algorithm ({})",
        algos.join(", ")
    )
}

/// Every setting the `T` table takes, those whose default is unset (`Option`s, which a
/// default table leaves out) included: serde names them all when refusing a key no
/// struct has.
fn settings_of<T: DeserializeOwned + Serialize + Default>() -> Vec<String> {
    let mut keys: Vec<String> =
        toml::Table::try_from(T::default()).unwrap_or_default().keys().cloned().collect();
    let mut probe = toml::Table::new();
    probe.insert("\u{1}".into(), toml::Value::Integer(0));
    if let Err(e) = T::deserialize(toml::Value::Table(probe)) {
        let message = e.to_string();
        if let Some((_, expected)) = message.split_once("expected") {
            let quoted = expected.split('`').skip(1).step_by(2);
            keys.extend(quoted.map(str::to_string));
        }
    }
    keys.sort();
    keys.dedup();
    keys
}

/// Where settings live: one entry per table (`model` once per model kind, whose settings
/// differ) with its settings.
fn every_table() -> Vec<(String, Vec<String>)> {
    let mut tables = vec![
        ("model".to_string() + " (gpt)", settings_of::<GptConfig>()),
        ("model".to_string() + " (mlp)", settings_of::<MlpConfig>()),
        ("model".to_string() + " (torchscript)", settings_of::<TorchScriptConfig>()),
        ("inner".to_string(), settings_of::<InnerConfig>()),
        ("data".to_string(), settings_of::<DataConfig>()),
        ("transport".to_string(), settings_of::<TransportTuning>()),
    ];
    for a in Algorithm::ALL {
        tables.push((a.name().to_string(), algo_settings(a)));
    }
    tables
}

/// The settings of `algorithm`'s table.
fn algo_settings(algorithm: Algorithm) -> Vec<String> {
    AlgoConfig::default_for(algorithm)
        .to_toml()
        .parse::<toml::Table>()
        .map(|t| t.keys().filter(|k| *k != "algo").cloned().collect())
        .unwrap_or_default()
}

/// The command-line flag a key names (`steps` → `--steps`), if `train`, `worker` or
/// `simulate` has one.
fn flag_for(key: &str) -> Option<String> {
    use clap::Args;
    let long = key.replace('_', "-");
    let commands = [
        crate::cli::train::TrainArgs::augment_args(clap::Command::new("train")),
        crate::cli::worker::WorkerArgs::augment_args(clap::Command::new("worker")),
        crate::cli::simulate::SimulateArgs::augment_args(clap::Command::new("simulate")),
    ];
    let found = commands.iter().any(|c| c.get_arguments().any(|a| a.get_long() == Some(&long)));
    found.then(|| format!("--{long}"))
}

/// The tables (with the exact setting) that have `key`, and the settings with `key` as a
/// word of their name (`steps` → `[diloco] inner_steps`).
fn where_is(key: &str) -> (Vec<String>, Vec<String>) {
    let (mut exact, mut related) = (Vec::new(), Vec::new());
    for (table, settings) in every_table() {
        // `model (gpt)` reads `[model] (--model gpt)`.
        let shown = match table.split_once(" (") {
            Some((t, kind)) => format!("[{t}] (--model {}", kind),
            None => format!("[{table}]"),
        };
        for s in settings {
            if s == key {
                exact.push(shown.clone());
            } else if s.split('_').any(|word| word == key) {
                related.push(format!("{shown} {s}"));
            }
        }
    }
    (exact, related)
}

/// Why `key = …` at a file's top level is refused, and where it belongs.
fn top_level_setting(key: &str) -> String {
    let mut out = format!("`{key}` is not a setting of the file's top level");
    let (exact, related) = where_is(key);
    let mut places = Vec::new();
    if let Some(flag) = flag_for(key) {
        places.push(format!("the {flag} flag"));
    }
    if !exact.is_empty() {
        let which = if exact.len() == 1 { "that table" } else { "the table it is meant for" };
        places.push(format!("a setting of {}: put it under {which}", exact.join(", ")));
    }
    if places.is_empty() {
        out.push_str("; no table has it either");
    } else {
        out.push_str(&format!("; it is {}", places.join(", or ")));
    }
    if !related.is_empty() {
        out.push_str(&format!(" (related settings: {})", related.join(", ")));
    }
    out.push_str(&format!("; {}", tables_sentence()));
    out
}

/// The `[transport]` table with `transport.KEY=VALUE` overrides, checked.
fn transport_section(
    file: &toml::Table,
    sets: &[(Option<String>, String, String)],
) -> Result<TransportTuning> {
    let overrides: Vec<(String, String)> = sets
        .iter()
        .filter(|(s, _, _)| s.as_deref() == Some("transport"))
        .map(|(_, k, v)| (k.clone(), v.clone()))
        .collect();
    let t: TransportTuning = section("transport", file, &overrides)?;
    t.plan().map_err(|e| anyhow::anyhow!("[transport]: {e}"))?;
    Ok(t)
}

/// Only the QUIC tuning of a run's file and `--set` values (what a coordinator needs);
/// the file's other tables are checked for names only.
pub fn transport_only(file: Option<&std::path::Path>, sets: &[String]) -> Result<TransportTuning> {
    let file = read_file(file)?;
    let sets = parse_sets(sets)?;
    if let Some((scope, key, _)) = sets.iter().find(|(s, _, _)| s.as_deref() != Some("transport")) {
        let shown = scope.as_deref().map_or(key.clone(), |s| format!("{s}.{key}"));
        bail!("--set {shown}: a coordinator takes only transport.* settings");
    }
    transport_section(&file, &sets)
}

const SCOPES: [&str; 4] = ["model", "inner", "data", "transport"];

/// A bare word is a string; anything else is parsed as a TOML value.
fn toml_value(raw: &str) -> toml::Value {
    format!("v = {raw}")
        .parse::<toml::Table>()
        .ok()
        .and_then(|mut t| t.remove("v"))
        .unwrap_or_else(|| toml::Value::String(raw.to_string()))
}

fn section<T: DeserializeOwned + Serialize + Default>(
    scope: &str,
    file: &toml::Table,
    overrides: &[(String, String)],
) -> Result<T> {
    let mut table = match file.get(scope) {
        Some(toml::Value::Table(t)) => t.clone(),
        Some(_) => bail!("config: [{scope}] must be a table"),
        None => toml::Table::new(),
    };
    for (k, v) in overrides {
        table.insert(k.clone(), toml_value(v));
    }
    T::deserialize(toml::Value::Table(table)).map_err(|e| {
        anyhow::anyhow!("[{scope}]: {e}; its settings are {}", settings_of::<T>().join(", "))
    })
}

/// Splits `--set` values into (scope, key, value); scope `None` means "every selected
/// algorithm that has the key".
fn parse_sets(sets: &[String]) -> Result<Vec<(Option<String>, String, String)>> {
    sets.iter()
        .map(|s| {
            let (key, value) =
                s.split_once('=').with_context(|| format!("--set {s:?}: expected KEY=VALUE"))?;
            let (scope, key) = match key.trim().split_once('.') {
                Some((a, k)) => (Some(a.to_string()), k.to_string()),
                None => (None, key.trim().to_string()),
            };
            if let Some(scope) = &scope {
                if !SCOPES.contains(&scope.as_str()) && scope.parse::<Algorithm>().is_err() {
                    bail!("--set {s}: {scope:?} is neither model, inner, data nor an algorithm");
                }
            }
            Ok((scope, key, value.trim().to_string()))
        })
        .collect()
}

/// The settings of one algorithm after the file, `inner_steps` and the overrides.
fn algo_config(
    algorithm: Algorithm,
    file: &toml::Table,
    inner_steps: Option<u64>,
    sets: &[(Option<String>, String, String)],
) -> Result<AlgoConfig> {
    let fields = match file.get(algorithm.name()) {
        Some(toml::Value::Table(t)) => t.clone(),
        Some(_) => bail!("config: [{algorithm}] must be a table"),
        None => toml::Table::new(),
    };
    let defaults: toml::Table = AlgoConfig::default_for(algorithm).to_toml().parse()?;
    let mut overrides = Vec::new();
    if let Some(h) = inner_steps {
        if defaults.contains_key("inner_steps") {
            overrides.push(("inner_steps".to_string(), h.to_string()));
        }
    }
    for (scope, key, value) in sets {
        let applies = match scope {
            Some(s) => s.parse::<Algorithm>().ok() == Some(algorithm),
            None => defaults.contains_key(key),
        };
        if applies {
            overrides.push((key.clone(), value.clone()));
        }
    }
    Ok(AlgoConfig::from_parts(algorithm, fields, &overrides)?)
}

/// Why an unscoped `--set KEY` fits no selected algorithm, and where KEY lives instead:
/// `[inner] lr` is `--set inner.lr=…`; a setting of an algorithm `--algo` does not select
/// is named as such; a flag is named as a flag.
fn unscoped_elsewhere(
    key: &str,
    model: &ModelKind,
    algos: &[Algorithm],
    known: &std::collections::BTreeSet<String>,
) -> String {
    let selected: Vec<&str> = algos.iter().map(|a| a.name()).collect();
    let mut out = format!("no selected algorithm ({}) has this setting", selected.join(", "));
    let model_table = match model {
        ModelKind::Gpt => "model (gpt)",
        ModelKind::Mlp => "model (mlp)",
        ModelKind::TorchScript(_) => "model (torchscript)",
        ModelKind::Synthetic => "model (synthetic)",
    };
    let mut hints = Vec::new();
    let mut unselected = Vec::new();
    let mut other_models = Vec::new();
    for (table, settings) in every_table() {
        if !settings.iter().any(|s| s == key) {
            continue;
        }
        match table.split_once(' ') {
            Some(("model", _)) if table == model_table => {
                hints.push(format!("--set model.{key}=VALUE (the [model] table's {key})"))
            }
            Some(("model", kind)) => {
                other_models.push(kind.trim_matches(|c| c == '(' || c == ')').to_string())
            }
            _ if SCOPES.contains(&table.as_str()) => {
                hints.push(format!("--set {table}.{key}=VALUE (the [{table}] table's {key})"))
            }
            _ => unselected.push(table),
        }
    }
    if let Some(flag) = flag_for(key) {
        hints.push(format!("the {flag} flag"));
    }
    if !unselected.is_empty() {
        out.push_str(&format!(
            "; it is a setting of {}, which --algo does not select",
            unselected.join(", ")
        ));
    }
    if !other_models.is_empty() && hints.is_empty() {
        out.push_str(&format!(
            "; it is a [model] setting of --model {}, not of this model",
            other_models.join(" or ")
        ));
    }
    if !hints.is_empty() {
        out.push_str(&format!("; use {}", hints.join(", or ")));
    }
    if hints.is_empty() && unselected.is_empty() && other_models.is_empty() {
        let known: Vec<&str> = known.iter().map(String::as_str).collect();
        out.push_str(&format!(
            "; the selected algorithms have {}; for [model], [inner], [data] or [transport] \
             write --set TABLE.KEY=VALUE",
            known.join(", ")
        ));
    }
    out
}

impl RunConfig {
    /// Merges the file (if any), `--inner-steps` and `--set` for `model` and `algos`.
    pub fn build(
        model: &ModelKind,
        algos: &[Algorithm],
        file: Option<&std::path::Path>,
        inner_steps: Option<u64>,
        sets: &[String],
    ) -> Result<Self> {
        Self::from_table(model, algos, read_file(file)?, inner_steps, sets)
    }

    /// [`RunConfig::build`] from a file's tables already read (a coordinator's settings).
    pub fn from_table(
        model: &ModelKind,
        algos: &[Algorithm],
        file: toml::Table,
        inner_steps: Option<u64>,
        sets: &[String],
    ) -> Result<Self> {
        check_tables(&file)?;
        let sets = parse_sets(sets)?;
        // A KEY=VALUE meant for "every algorithm that has it" must fit at least one, or a
        // typo would pass silently.
        for (scope, key, _) in &sets {
            if scope.is_some() {
                continue;
            }
            let mut known = std::collections::BTreeSet::new();
            for &a in algos {
                let defaults: toml::Table = AlgoConfig::default_for(a).to_toml().parse()?;
                known.extend(defaults.keys().filter(|k| *k != "algo").cloned());
            }
            if !known.contains(key) {
                bail!("--set {key}: {}", unscoped_elsewhere(key, model, algos, &known));
            }
        }
        let scoped = |scope: &str| -> Vec<(String, String)> {
            sets.iter()
                .filter(|(s, _, _)| s.as_deref() == Some(scope))
                .map(|(_, k, v)| (k.clone(), v.clone()))
                .collect()
        };
        let model = match model {
            ModelKind::Gpt => {
                let c: GptConfig = section("model", &file, &scoped("model"))?;
                c.validate()?;
                ModelConfig::Gpt(c)
            }
            ModelKind::Mlp => ModelConfig::Mlp(section("model", &file, &scoped("model"))?),
            ModelKind::TorchScript(path) => {
                ModelConfig::TorchScript(path.clone(), section("model", &file, &scoped("model"))?)
            }
            // Nothing is built: the size is `--params`. The MLP's defaults stand in for the
            // settings no synthetic run reads.
            ModelKind::Synthetic => {
                if let Some((key, _)) = scoped("model").first() {
                    bail!(
                        "--set model.{key}: --model synthetic has no [model] settings; its size \
                         is --params"
                    );
                }
                ModelConfig::Mlp(MlpConfig::default())
            }
        };
        let transport = transport_section(&file, &sets)?;
        let inner: InnerConfig = section("inner", &file, &scoped("inner"))?;
        inner.validate()?;
        let data: DataConfig = section("data", &file, &scoped("data"))?;
        if data.batch == 0 || data.eval_batches == 0 {
            bail!("[data]: batch and eval_batches must be at least 1");
        }
        let algos = algos
            .iter()
            .map(|&a| algo_config(a, &file, inner_steps, &sets))
            .collect::<Result<Vec<_>>>()?;
        Ok(Self { model, inner, data, algos, transport })
    }

    /// The inner optimizer's settings as TOML (checkpoints compare it).
    pub fn inner_toml(&self) -> String {
        toml::to_string(&self.inner).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(text: &str) -> tempfile_path::TempToml {
        tempfile_path::TempToml::new(text)
    }

    mod tempfile_path {
        pub struct TempToml(pub std::path::PathBuf);
        impl TempToml {
            pub fn new(text: &str) -> Self {
                static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
                let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let p = std::env::temp_dir()
                    .join(format!("meridian-run-{}-{n}.toml", std::process::id()));
                std::fs::write(&p, text).unwrap();
                Self(p)
            }
        }
        impl Drop for TempToml {
            fn drop(&mut self) {
                let _ = std::fs::remove_file(&self.0);
            }
        }
    }

    #[test]
    fn tables_and_overrides_merge_and_typos_are_named() {
        let f = write("[model]\nd_model = 128\n[inner]\nlr = 0.002\n[diloco]\ninner_steps = 7\n");
        let sets = vec!["model.layers=2".to_string(), "data.batch=3".to_string()];
        let c = RunConfig::build(&ModelKind::Gpt, &[Algorithm::Diloco], Some(&f.0), None, &sets)
            .unwrap();
        assert_eq!(
            c.model,
            ModelConfig::Gpt(GptConfig { d_model: 128, layers: 2, ..Default::default() })
        );
        assert_eq!(c.inner.lr, 0.002);
        assert_eq!(c.data.batch, 3);
        assert!(c.algos[0].to_toml().contains("inner_steps = 7"));
        let bad = write("[model]\nd_modle = 128\n");
        let e = RunConfig::build(&ModelKind::Gpt, &[Algorithm::Ddp], Some(&bad.0), None, &[]);
        assert!(e.unwrap_err().to_string().contains("d_modle"));
        let bad = write("[optim]\nlr = 1\n");
        let e = RunConfig::build(&ModelKind::Gpt, &[Algorithm::Ddp], Some(&bad.0), None, &[]);
        assert!(e.unwrap_err().to_string().contains("[optim]"));
        let e = RunConfig::build(
            &ModelKind::Mlp,
            &[Algorithm::Ddp],
            None,
            None,
            &["inner.lr=-1".into()],
        );
        assert!(e.unwrap_err().to_string().starts_with("inner.lr = -1 is out of range"));
        let e =
            RunConfig::build(&ModelKind::Mlp, &[Algorithm::Ddp], None, None, &["modle.x=1".into()]);
        assert!(e.unwrap_err().to_string().contains("modle"));
        let e = RunConfig::build(
            &ModelKind::Gpt,
            &[Algorithm::Ddp],
            None,
            None,
            &["model.heads=3".into()],
        );
        assert!(e.unwrap_err().to_string().contains("multiple of heads"));
        let e = RunConfig::build(
            &ModelKind::Mlp,
            &[Algorithm::Ddp],
            None,
            None,
            &["data.batch=0".into()],
        );
        assert!(e.unwrap_err().to_string().contains("batch"));
    }

    #[test]
    fn robust_aggregation_is_set_for_every_selected_algorithm() {
        let algos = [Algorithm::Diloco, Algorithm::Sparseloco];
        let sets = vec!["aggregation=clip_median".to_string()];
        let c = RunConfig::build(&ModelKind::Mlp, &algos, None, None, &sets).unwrap();
        for a in &c.algos {
            assert!(a.to_toml().contains("aggregation = \"clip_median\""), "{}", a.to_toml());
        }
        let c = RunConfig::build(&ModelKind::Mlp, &algos, None, None, &[]).unwrap();
        assert!(c.algos.iter().all(|a| a.to_toml().contains("aggregation = \"mean\"")));
        // The trimmed mean needs dense payloads: SparseLoCo refuses it by name.
        let sets = vec!["sparseloco.aggregation=trimmed_mean".to_string()];
        let e = RunConfig::build(&ModelKind::Mlp, &algos, None, None, &sets).unwrap_err();
        assert!(format!("{e:#}").contains("dense"), "{e:#}");
    }

    #[test]
    fn an_unscoped_key_is_pointed_to_the_table_that_has_it() {
        let build = |model: ModelKind, set: &str| {
            let algos = [Algorithm::Diloco];
            format!(
                "{:#}",
                RunConfig::build(&model, &algos, None, None, &[set.into()]).unwrap_err()
            )
        };
        // `lr` is the [inner] table's, and no model has one.
        let e = build(ModelKind::Mlp, "lr=0.01");
        assert!(e.contains("--set inner.lr=VALUE"), "{e}");
        assert!(e.contains("demo, which --algo does not select"), "{e}");
        assert!(!e.contains("model.lr") && !e.contains("data.lr"), "{e}");
        let e = build(ModelKind::Mlp, "batch=4");
        assert!(e.contains("--set data.batch=VALUE") && !e.contains("model.batch"), "{e}");
        let e = build(ModelKind::Gpt, "layers=2");
        assert!(e.contains("--set model.layers=VALUE"), "{e}");
        let e = build(ModelKind::Mlp, "layers=2");
        assert!(e.contains("--model gpt, not of this model"), "{e}");
        let e = build(ModelKind::Mlp, "steps=5");
        assert!(e.contains("the --steps flag"), "{e}");
        let e = build(ModelKind::Mlp, "warmup_steps=5");
        assert!(e.contains("--set inner.warmup_steps=VALUE"), "{e}");
        let e = build(ModelKind::Mlp, "nonsense=5");
        assert!(e.contains("the selected algorithms have") && e.contains("outer_lr"), "{e}");
    }

    #[test]
    fn a_top_level_setting_is_told_where_it_belongs() {
        let run = |text: &str| {
            let f = write(text);
            let algos = [Algorithm::Diloco];
            format!(
                "{:#}",
                RunConfig::build(&ModelKind::Mlp, &algos, Some(&f.0), None, &[]).unwrap_err()
            )
        };
        let e = run("steps = 5\n");
        assert!(e.contains("`steps` is not a setting of the file's top level"), "{e}");
        assert!(!e.contains("not a known table"), "{e}");
        assert!(e.contains("the --steps flag") && e.contains("[diloco] inner_steps"), "{e}");
        assert!(e.contains("[model], [inner], [data], [transport]"), "{e}");
        let e = run("lr = 0.01\n[inner]\nclip = 1.0\n");
        assert!(e.contains("a setting of [inner], [demo]"), "{e}");
        let e = run("batch = 4\n");
        assert!(e.contains("a setting of [data]: put it under that table"), "{e}");
        // A real table that is unknown is still called one.
        let e = run("[steps]\nx = 1\n");
        assert!(e.contains("[steps] is not a known table"), "{e}");
        // The settings a table lists include those unset by default.
        assert!(settings_of::<InnerConfig>().contains(&"warmup_steps".to_string()));
    }
}
