//! Helpers shared by this crate's unit tests.
#![cfg(test)]

use std::rc::Rc;
use std::sync::Arc;

use meridian_optimizer::config::AlgoConfig;
use meridian_optimizer::solo::SoloWorker;
use meridian_optimizer::Algorithm;

use crate::data::{Corpus, Split, TokenFormat};
use crate::model::mlp::{Mlp, MlpConfig};
use crate::step::adamw::InnerConfig;
use crate::step::lm_step::LmStep;

/// Member `id` of a two-worker DiLoCo run (H = 3) of a tiny MLP on a repeating text.
pub fn tiny_diloco_worker(id: u32) -> SoloWorker<LmStep> {
    tiny_worker(id, Algorithm::Diloco, &[("inner_steps", "3")])
}

/// Member `id` of a two-worker run of `algorithm` with `settings` on the same tiny MLP.
pub fn tiny_worker(id: u32, algorithm: Algorithm, settings: &[(&str, &str)]) -> SoloWorker<LmStep> {
    let text: Vec<u8> = (0..40_000u32).map(|i| b"abcdefgh ijk."[(i % 13) as usize]).collect();
    let corpus = Arc::new(Corpus::from_bytes(&text, TokenFormat::Text, None, "t").unwrap());
    let cfg = MlpConfig { context: 16, hidden: 32, ..Default::default() };
    let split = Split::new(corpus, 16).unwrap();
    let model = Box::new(Mlp::new(cfg, 256, 1).unwrap());
    let shard = split.shard(id, 2, 1, 4).unwrap();
    let lm = LmStep::new(model, InnerConfig::default(), shard, Rc::new(vec![]), 100).unwrap();
    let settings: Vec<(String, String)> =
        settings.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
    let algo = AlgoConfig::from_parts(algorithm, toml::Table::new(), &settings).unwrap();
    SoloWorker::new(id, lm, |p| algo.build(p)).unwrap()
}
