//! Placeholder until the plotting module lands: the types only.
#![allow(missing_docs)]
use std::path::{Path, PathBuf};
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct CurvePoint {
    pub step: u64,
    pub tokens: u64,
    pub bytes_per_worker: f64,
    pub seconds: f64,
    pub val_loss: f64,
}
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Curve {
    pub label: String,
    pub points: Vec<CurvePoint>,
}
pub enum XAxis {
    Steps,
    BytesPerWorker,
    Seconds,
}
pub fn write_loss_plot(
    _dir: &Path,
    _stem: &str,
    _title: &str,
    _x: XAxis,
    _curves: &[Curve],
) -> anyhow::Result<Vec<PathBuf>> {
    Ok(vec![])
}
