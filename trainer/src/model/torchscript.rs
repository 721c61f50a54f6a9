//! Placeholder until TorchScript support lands.
#![allow(missing_docs)]
use std::path::Path;
pub struct TorchScriptModel;
impl TorchScriptModel {
    pub fn load(path: &Path, _c: Option<i64>, _v: Option<i64>) -> anyhow::Result<Self> {
        anyhow::bail!("{}: TorchScript models are not available in this build", path.display())
    }
}
impl super::LanguageModel for TorchScriptModel {
    fn parameters(&self) -> Vec<(String, tch::Tensor)> {
        vec![]
    }
    fn loss(&self, _: &tch::Tensor, _: &tch::Tensor, _: bool) -> anyhow::Result<tch::Tensor> {
        anyhow::bail!("unavailable")
    }
    fn context(&self) -> i64 {
        1
    }
    fn vocab(&self) -> i64 {
        1
    }
    fn describe(&self) -> String {
        String::new()
    }
}
