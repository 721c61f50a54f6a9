//! What a worker trains, as `key = value` facts: the model's parameters (names, dtypes,
//! shapes), the outer algorithm and every one of its settings.
//!
//! Every worker of a run must agree on all of them: a payload decodes against the receiver's
//! shapes and applies with its settings, so a worker started with another model or
//! `--set outer_lr=…` would corrupt the run. The comm layer carries these facts in its join
//! (as a `RunSignature`, which this crate does not know) and the coordinator refuses a
//! worker whose facts differ, naming each one. Keys are `algorithm`, `param.NAME` and
//! `setting.KEY` (nested settings as `setting.KEY.SUBKEY`); the first word tells what kind
//! of fact it is when a difference is worded.

use std::collections::BTreeMap;

use tch::Kind;

use crate::config::AlgoConfig;
use crate::params::ParamSet;

/// The facts of a worker training `params` with `algo` (see the [module docs](self)), e.g.
/// `algorithm = diloco`, `param.h.0.attn.weight = f32[64, 64]`, `setting.outer_lr = 0.7`.
/// Settings come from the algorithm's TOML form, the one users write, so every key a file
/// or `--set` can change is covered; a string value is given without its quotes.
pub fn run_signature(params: &ParamSet, algo: &AlgoConfig) -> BTreeMap<String, String> {
    let mut facts = BTreeMap::new();
    facts.insert("algorithm".to_string(), algo.algorithm().to_string());
    for (name, tensor) in params.names().iter().zip(params.tensors()) {
        let dims: Vec<String> = tensor.size().iter().map(i64::to_string).collect();
        let fact = format!("{}[{}]", dtype(tensor.kind()), dims.join(", "));
        facts.insert(format!("param.{name}"), fact);
    }
    match algo.settings().to_table() {
        Ok(table) => add_settings(&mut facts, "setting", &table),
        // Not expected (every settings struct serializes); kept as a fact rather than
        // dropped, so that two workers whose settings cannot be read still differ from a
        // run whose settings can.
        Err(e) => {
            facts.insert("setting".to_string(), format!("unreadable: {e}"));
        }
    }
    facts
}

/// Adds `table`'s values under `prefix.KEY`, nested tables as `prefix.KEY.SUBKEY`, a string
/// without its quotes: how every settings table becomes facts (an application adds its
/// own tables, such as its inner optimizer's, the same way).
pub fn add_settings(facts: &mut BTreeMap<String, String>, prefix: &str, table: &toml::Table) {
    for (key, value) in table {
        let key = format!("{prefix}.{key}");
        match value {
            toml::Value::Table(inner) => add_settings(facts, &key, inner),
            toml::Value::String(text) => {
                facts.insert(key, text.clone());
            }
            other => {
                facts.insert(key, other.to_string());
            }
        }
    }
}

/// The short name of a tensor dtype: `f32`, `bf16`, …
fn dtype(kind: Kind) -> String {
    match kind {
        Kind::Float => "f32".into(),
        Kind::Double => "f64".into(),
        Kind::Half => "f16".into(),
        Kind::BFloat16 => "bf16".into(),
        Kind::Int8 => "i8".into(),
        Kind::Int16 => "i16".into(),
        Kind::Int => "i32".into(),
        Kind::Int64 => "i64".into(),
        Kind::Uint8 => "u8".into(),
        Kind::Bool => "bool".into(),
        other => format!("{other:?}").to_lowercase(),
    }
}

#[cfg(test)]
mod tests {
    use tch::Tensor;

    use super::*;
    use crate::algorithm::Algorithm;

    fn params(head: &[i64]) -> ParamSet {
        ParamSet::new(vec![
            ("h.0.attn.weight".into(), Tensor::zeros([64, 64], tch::kind::FLOAT_CPU)),
            ("lm_head.weight".into(), Tensor::zeros(head, tch::kind::FLOAT_CPU)),
            ("scale".into(), Tensor::zeros([] as [i64; 0], tch::kind::FLOAT_CPU)),
        ])
        .unwrap()
    }

    fn diloco(sets: &[(&str, &str)]) -> AlgoConfig {
        let sets: Vec<(String, String)> =
            sets.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        AlgoConfig::from_parts(Algorithm::Diloco, toml::Table::new(), &sets).unwrap()
    }

    #[test]
    fn names_the_algorithm_every_parameter_and_every_setting() {
        let facts = run_signature(&params(&[256, 64]), &diloco(&[("transport", "int8")]));
        assert_eq!(facts["algorithm"], "diloco");
        assert_eq!(facts["param.h.0.attn.weight"], "f32[64, 64]");
        assert_eq!(facts["param.lm_head.weight"], "f32[256, 64]");
        assert_eq!(facts["param.scale"], "f32[]");
        assert_eq!(facts["setting.outer_lr"], "0.7");
        assert_eq!(facts["setting.inner_steps"], "500");
        assert_eq!(facts["setting.transport"], "int8", "strings without quotes");
        // Every key of the TOML form is there, the shared robust-aggregation ones too.
        for algo in Algorithm::ALL {
            let config = AlgoConfig::default_for(algo);
            let facts = run_signature(&params(&[256, 64]), &config);
            let table = config.settings().to_table().unwrap();
            for key in table.keys() {
                assert!(facts.contains_key(&format!("setting.{key}")), "{algo}: {key}");
            }
            assert!(facts.contains_key("setting.aggregation"), "{algo}");
            assert_eq!(facts["algorithm"], algo.to_string());
        }
    }

    #[test]
    fn a_changed_setting_shape_or_algorithm_changes_the_facts() {
        let base = run_signature(&params(&[256, 64]), &diloco(&[]));
        assert_eq!(base, run_signature(&params(&[256, 64]), &diloco(&[])));
        let lr = run_signature(&params(&[256, 64]), &diloco(&[("outer_lr", "0.5")]));
        assert_eq!(lr["setting.outer_lr"], "0.5");
        let shape = run_signature(&params(&[256, 32]), &diloco(&[]));
        assert_eq!(shape["param.lm_head.weight"], "f32[256, 32]");
        let demo = run_signature(&params(&[256, 64]), &AlgoConfig::default_for(Algorithm::Demo));
        assert_eq!(demo["algorithm"], "demo");
        for other in [lr, shape, demo] {
            assert_ne!(other, base);
        }
    }
}
