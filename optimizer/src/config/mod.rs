//! Selecting and configuring an outer algorithm by name, from TOML and from `key=value`
//! overrides (the CLI's `--set`), all mapping onto the algorithms' own config structs.
//!
//! A TOML file names the algorithm and sets any of its fields; omitted fields keep the
//! published defaults, unknown fields are an error that names them:
//! ```toml
//! algo = "sparseloco"
//! inner_steps = 30
//! topk = 64
//! ```
//!
//! Each algorithm's settings struct (`DilocoConfig`, …) is declared with
//! `algo_config!` (module `settings`), which embeds the shared robust-aggregation
//! settings ([`crate::robust::Robust`]) as its `robust` field while files and `--set` keep
//! writing them as flat keys, and implements [`AlgoSettings`]; [`AlgoConfig::settings`] is
//! the one place that tells the algorithms apart.

mod settings;

pub(crate) use settings::algo_config;
pub use settings::{AlgoSettings, SettingsForm};

use crate::algorithm::Algorithm;
use crate::byzantine::{Attack, Byzantine};
use crate::error::{OptimizerError, Result};
use crate::outer::ddp::DdpConfig;
use crate::outer::demo::DemoConfig;
use crate::outer::diloco::DilocoConfig;
use crate::outer::sparseloco::SparselocoConfig;
use crate::outer::streaming::{Streaming, StreamingConfig};
use crate::outer::OuterOptimizer;
use crate::params::ParamSet;
use meridian_kernels::pipeline::Compressor;

/// One algorithm with its settings.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum AlgoConfig {
    /// Data-parallel baseline.
    Ddp(DdpConfig),
    /// DiLoCo.
    Diloco(DilocoConfig),
    /// DeMo / DisTrO.
    Demo(DemoConfig),
    /// SparseLoCo.
    Sparseloco(SparselocoConfig),
    /// Streaming DiLoCo.
    Streaming(StreamingConfig),
}

impl From<DdpConfig> for AlgoConfig {
    fn from(c: DdpConfig) -> Self {
        AlgoConfig::Ddp(c)
    }
}

impl From<DilocoConfig> for AlgoConfig {
    fn from(c: DilocoConfig) -> Self {
        AlgoConfig::Diloco(c)
    }
}

impl From<DemoConfig> for AlgoConfig {
    fn from(c: DemoConfig) -> Self {
        AlgoConfig::Demo(c)
    }
}

impl From<SparselocoConfig> for AlgoConfig {
    fn from(c: SparselocoConfig) -> Self {
        AlgoConfig::Sparseloco(c)
    }
}

impl From<StreamingConfig> for AlgoConfig {
    fn from(c: StreamingConfig) -> Self {
        AlgoConfig::Streaming(c)
    }
}

/// `defaults`' algorithm's settings from the file's `base` fields and the command line's
/// `overrides`, not yet validated.
fn parse_fields(
    defaults: &dyn AlgoSettings,
    base: toml::Table,
    overrides: &[(String, String)],
) -> Result<AlgoConfig> {
    let algorithm = defaults.algorithm();
    // Start from the defaults so that overrides of nested values merge, then layer the
    // file's fields, then the command line's.
    let mut table =
        defaults.to_table().map_err(|e| OptimizerError::Config(format!("{algorithm}: {e}")))?;
    for (k, v) in base {
        table.insert(k, v);
    }
    for (key, raw) in overrides {
        if !table.contains_key(key) {
            let known: Vec<&str> = table.keys().map(String::as_str).collect();
            return Err(OptimizerError::Config(format!(
                "{algorithm} has no setting {key:?}; its settings are {}",
                known.join(", ")
            )));
        }
        // A bare word (a transport name) is a string; anything else is a TOML value.
        let value = format!("v = {raw}")
            .parse::<toml::Table>()
            .ok()
            .and_then(|mut t| t.remove("v"))
            .unwrap_or_else(|| toml::Value::String(raw.clone()));
        table.insert(key.clone(), value);
    }
    defaults.parse(table).map_err(|e| OptimizerError::Config(format!("{algorithm} settings: {e}")))
}

impl AlgoConfig {
    /// The published defaults of `algorithm`.
    pub fn default_for(algorithm: Algorithm) -> Self {
        match algorithm {
            Algorithm::Ddp => AlgoConfig::Ddp(DdpConfig::default()),
            Algorithm::Diloco => AlgoConfig::Diloco(DilocoConfig::default()),
            Algorithm::Demo => AlgoConfig::Demo(DemoConfig::default()),
            Algorithm::Sparseloco => AlgoConfig::Sparseloco(SparselocoConfig::default()),
            Algorithm::Streaming => AlgoConfig::Streaming(StreamingConfig::default()),
        }
    }

    /// The algorithm's own settings struct: the one place that tells the variants apart.
    pub fn settings(&self) -> &dyn AlgoSettings {
        match self {
            AlgoConfig::Ddp(c) => c,
            AlgoConfig::Diloco(c) => c,
            AlgoConfig::Demo(c) => c,
            AlgoConfig::Sparseloco(c) => c,
            AlgoConfig::Streaming(c) => c,
        }
    }

    /// Inner steps per outer round: the algorithm's `inner_steps` (its H), or 1 for one
    /// that exchanges every step.
    pub fn round_steps(&self) -> u64 {
        match self {
            AlgoConfig::Ddp(_) | AlgoConfig::Demo(_) => 1,
            AlgoConfig::Diloco(c) => c.inner_steps,
            AlgoConfig::Sparseloco(c) => c.inner_steps,
            AlgoConfig::Streaming(c) => c.inner_steps,
        }
    }

    /// Which algorithm.
    pub fn algorithm(&self) -> Algorithm {
        self.settings().algorithm()
    }

    /// `algorithm`'s settings from `toml` fields (without the `algo` key) and `key=value`
    /// overrides, validated.
    pub fn from_parts(
        algorithm: Algorithm,
        fields: toml::Table,
        overrides: &[(String, String)],
    ) -> Result<Self> {
        let given = fields.contains_key("overlap") || overrides.iter().any(|(k, _)| k == "overlap");
        let mut c = parse_fields(Self::default_for(algorithm).settings(), fields, overrides)?;
        if let (AlgoConfig::Streaming(s), false) = (&mut c, given) {
            // Streaming DiLoCo's default τ (5) assumes the default H; with fewer steps per
            // fragment it takes the largest τ the schedule allows instead of being refused.
            s.overlap = s.overlap.min(s.max_overlap());
        }
        c.validate()?;
        Ok(c)
    }

    /// Parses a TOML document whose `algo` key names the algorithm (see the module doc).
    pub fn from_toml(text: &str) -> Result<Self> {
        let mut table: toml::Table =
            text.parse().map_err(|e| OptimizerError::Config(format!("config: {e}")))?;
        let name = match table.remove("algo") {
            Some(toml::Value::String(s)) => s,
            Some(other) => {
                return Err(OptimizerError::Config(format!(
                    "config: algo must be a string, got {other}"
                )))
            }
            None => return Err(OptimizerError::Config("config: missing `algo = \"...\"`".into())),
        };
        let algorithm: Algorithm = name.parse().map_err(OptimizerError::Config)?;
        Self::from_parts(algorithm, table, &[])
    }

    /// Checks every setting is in range.
    pub fn validate(&self) -> Result<()> {
        self.settings().validate()
    }

    /// The settings as TOML (for run summaries), `algo` first.
    pub fn to_toml(&self) -> String {
        let body = self.settings().to_table().map(|t| t.to_string()).unwrap_or_default();
        format!("algo = \"{}\"\n{body}", self.algorithm())
    }

    /// Builds the optimizer for one worker whose parameters are `params`.
    pub fn build(&self, params: &ParamSet) -> Result<Box<dyn OuterOptimizer>> {
        self.settings().build(params)
    }

    /// Builds the optimizer of a run of a model's tensors, `params`, starting at canonical
    /// index `first` (a rank of a site holding part of the model). Every algorithm updates
    /// a tensor from that tensor alone, except that Streaming DiLoCo assigns fragments by
    /// canonical index, which the part keeps.
    pub fn build_part(&self, params: &ParamSet, first: usize) -> Result<Box<dyn OuterOptimizer>> {
        match self {
            AlgoConfig::Streaming(c) => Ok(Box::new(Streaming::new_part(*c, params, first)?)),
            _ => self.build(params),
        }
    }

    /// Builds the optimizer of a Byzantine worker that mounts `attack` (see
    /// [`crate::byzantine`]): for testing defences only.
    pub fn build_byzantine(
        &self,
        params: &ParamSet,
        attack: Attack,
        seed: u64,
    ) -> Result<Box<dyn OuterOptimizer>> {
        let compressors = match self.settings().payload_compressor()? {
            Some(config) => params
                .shapes()
                .iter()
                .map(|shape| Compressor::new(config, shape))
                .collect::<std::result::Result<Vec<_>, _>>()?,
            None => Vec::new(),
        };
        Ok(Box::new(Byzantine::new(self.build(params)?, attack, compressors, seed)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_the_published_ones() {
        let AlgoConfig::Diloco(d) = AlgoConfig::default_for(Algorithm::Diloco) else { panic!() };
        assert_eq!((d.inner_steps, d.outer_lr, d.momentum, d.nesterov), (500, 0.7, 0.9, true));
        for a in Algorithm::ALL {
            let c = AlgoConfig::default_for(a);
            assert_eq!(c.algorithm(), a);
            c.validate().unwrap();
            // The TOML form parses back to the same settings.
            assert_eq!(AlgoConfig::from_toml(&c.to_toml()).unwrap(), c, "{a}");
        }
    }

    #[test]
    fn toml_and_overrides_map_onto_the_structs() {
        let c = AlgoConfig::from_toml("algo = \"diloco\"\ninner_steps = 100\ntransport = \"int8\"")
            .unwrap();
        let AlgoConfig::Diloco(d) = c else { panic!() };
        assert_eq!(d.inner_steps, 100);
        assert_eq!(d.transport, crate::outer::diloco::Transport::Int8);
        assert_eq!(d.outer_lr, 0.7);
        let o =
            vec![("outer_lr".to_string(), "0.5".to_string()), ("transport".into(), "bf16".into())];
        let AlgoConfig::Diloco(d) =
            AlgoConfig::from_parts(Algorithm::Diloco, toml::Table::new(), &o).unwrap()
        else {
            panic!()
        };
        assert_eq!((d.outer_lr, d.transport), (0.5, crate::outer::diloco::Transport::Bf16));
    }

    #[test]
    fn robust_aggregation_is_a_setting_of_every_exchange_algorithm() {
        use crate::robust::Aggregation;
        let c =
            AlgoConfig::from_toml("algo = \"ddp\"\naggregation = \"trimmed_mean\"\ntrim = 0.25")
                .unwrap();
        let AlgoConfig::Ddp(d) = c else { panic!() };
        assert_eq!(
            (d.robust.aggregation, d.robust.trim, d.robust.outlier_factor),
            (Aggregation::TrimmedMean, 0.25, 3.0)
        );
        assert_eq!(AlgoConfig::from_toml(&c.to_toml()).unwrap(), c);
        let o = vec![
            ("aggregation".to_string(), "reject_outliers".to_string()),
            ("outlier_factor".into(), "4".into()),
            ("min_cosine".into(), "-0.2".into()),
        ];
        let AlgoConfig::Sparseloco(s) =
            AlgoConfig::from_parts(Algorithm::Sparseloco, toml::Table::new(), &o).unwrap()
        else {
            panic!()
        };
        assert_eq!(
            (s.robust.aggregation, s.robust.outlier_factor, s.robust.min_cosine),
            (Aggregation::RejectOutliers, 4.0, -0.2)
        );
        for a in [Algorithm::Demo, Algorithm::Sparseloco] {
            let o = vec![("aggregation".to_string(), "trimmed_mean".to_string())];
            let e = AlgoConfig::from_parts(a, toml::Table::new(), &o).unwrap_err().to_string();
            assert!(e.contains("trimmed_mean") && e.contains("dense"), "{a}: {e}");
        }
        for a in Algorithm::ALL {
            // The default is the plain mean, and a misspelt mode is an error.
            assert!(AlgoConfig::default_for(a).to_toml().contains("aggregation = \"mean\""));
            let o = vec![("aggregation".to_string(), "median".to_string())];
            assert!(AlgoConfig::from_parts(a, toml::Table::new(), &o).is_err(), "{a}");
        }
        let o = vec![("trim".to_string(), "0.5".to_string())];
        assert!(AlgoConfig::from_parts(Algorithm::Diloco, toml::Table::new(), &o).is_err());
    }

    #[test]
    fn mistakes_are_named() {
        let e =
            AlgoConfig::from_toml("algo = \"diloco\"\ninner_step = 100").unwrap_err().to_string();
        assert!(e.contains("inner_step"), "{e}");
        let e =
            AlgoConfig::from_toml("algo = \"diloco\"\ninner_steps = 0").unwrap_err().to_string();
        assert!(e.contains("inner_steps"), "{e}");
        let e = AlgoConfig::from_toml("algo = \"adam\"").unwrap_err().to_string();
        assert!(e.contains("adam"), "{e}");
        assert!(AlgoConfig::from_toml("inner_steps = 3").unwrap_err().to_string().contains("algo"));
        let o = vec![("momentun".to_string(), "0.5".to_string())];
        let e = AlgoConfig::from_parts(Algorithm::Diloco, toml::Table::new(), &o)
            .unwrap_err()
            .to_string();
        assert!(e.contains("momentun") && e.contains("momentum"), "{e}");
        let o = vec![("outer_lr".to_string(), "fast".to_string())];
        assert!(AlgoConfig::from_parts(Algorithm::Diloco, toml::Table::new(), &o).is_err());
    }
}
