//! `meridian compress`: what one worker would send after one outer round, or what each
//! pipeline makes of a user's own safetensors file or of a seeded synthetic tensor (see
//! [`crate::compression`]).

use std::path::PathBuf;

use anyhow::Result;
use clap::Args;

use crate::compression::codec;
use crate::compression::synthetic::{self, Distribution};

/// Options of `meridian compress`.
#[derive(Debug, Clone, Args)]
pub struct CompressArgs {
    /// A safetensors file to compress instead of the demo's pseudo-gradient: any
    /// gradients, pseudo-gradients or weights (f16, bf16, f32 or f64; integer, bool and
    /// empty tensors are skipped). Prints bytes, ratio and relative error per tensor and
    /// in total.
    #[arg(long, value_name = "FILE.safetensors")]
    pub input: Option<PathBuf>,
    /// Instead of the demo: one 1024×1024 tensor drawn from this distribution with
    /// --seed (student-t is ν = 3), reported like --input's tensors, with the kept values'
    /// error and how many values each quantizer level took.
    #[arg(long, value_enum, value_name = "DIST", conflicts_with = "input")]
    pub synthetic: Option<Distribution>,
    /// With --input and one --algo: write the decoded tensors here (same names, shapes and
    /// dtypes), to compare with other implementations. A regular file, replaced whole;
    /// never the input file, and never a symlink, device or other special file (refused).
    /// `-` writes the safetensors bytes to standard output (to a pipe or file, not a
    /// terminal) and the report to standard error; `./-` names a file called `-`.
    #[arg(long, value_name = "DECODED.safetensors|-", requires = "input")]
    pub out: Option<PathBuf>,
    /// Algorithms to run, comma separated: the kernel pipelines sparseloco,
    /// sparseloco-equal-bins (SparseLoCo with the reference's 2-bit grid, for comparison),
    /// demo, demo-2bit, demo-sign, the DiLoCo transports diloco-f32, diloco-bf16,
    /// diloco-int8, and Streaming DiLoCo's 4-bit values streaming-int4 and streaming-fp4
    /// (E2M1). Default: all of them with --input or --synthetic, the five pipelines
    /// without.
    #[arg(long, value_delimiter = ',', env = "MERIDIAN_COMPRESS_ALGO")]
    pub algo: Option<Vec<String>>,
    /// Older name of --algo, kept for existing scripts; --algo wins when both are given.
    #[arg(long, value_delimiter = ',', env = "MERIDIAN_PIPELINES")]
    pub pipelines: Option<Vec<String>>,
    /// Demo only: hidden width of the MLP (parameters grow as width²).
    #[arg(long, default_value_t = 1024, env = "MERIDIAN_WIDTH")]
    pub width: i64,
    /// Demo only: hidden layers of the MLP.
    #[arg(long, default_value_t = 3, env = "MERIDIAN_LAYERS")]
    pub layers: i64,
    /// Demo only: inner AdamW steps before the pseudo-gradient is taken (DiLoCo's H).
    #[arg(long, default_value_t = 20, env = "MERIDIAN_INNER_STEPS")]
    pub inner_steps: i64,
    /// Demo and --synthetic: seed for the model, the data, the tensor and everything
    /// random.
    #[arg(long, default_value_t = 0, env = "MERIDIAN_SEED")]
    pub seed: i64,
}

impl CompressArgs {
    /// The algorithms to run: --algo, else --pipelines, else the default for the mode.
    pub fn algorithms(&self) -> Vec<String> {
        let default: &[&str] = if self.input.is_some() || self.synthetic.is_some() {
            &codec::ALL
        } else {
            &codec::PIPELINES
        };
        self.algo
            .clone()
            .or_else(|| self.pipelines.clone())
            .unwrap_or_else(|| default.iter().map(|s| (*s).to_owned()).collect())
    }
}

/// Runs `meridian compress`: on the file given with `--input`, else the demo.
pub fn run(args: &CompressArgs) -> Result<()> {
    match &args.input {
        Some(input) => {
            crate::compression::file::run(input, &args.algorithms(), args.out.as_deref())
        }
        None => match args.synthetic {
            Some(dist) => {
                let file = synthetic::tensor(dist, args.seed)?;
                let side = synthetic::SIDE;
                let label =
                    format!("synthetic {} tensor ({side}×{side}, seed {})", dist.name(), args.seed);
                crate::compression::file::run_in_memory(&label, &file, &args.algorithms())
            }
            None => crate::compression::demo::run_demo(args),
        },
    }
}
