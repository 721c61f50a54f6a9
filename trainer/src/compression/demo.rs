//! The demo of `meridian compress`: what one worker would send after one outer round.
//!
//! Trains a small MLP for `--inner-steps` AdamW steps on a seeded synthetic regression
//! task, takes the DiLoCo pseudo-gradient Δ = θ_start − θ_end of every parameter tensor,
//! and compresses it with each pipeline through the kernels, borrowing LibTorch's memory.
//! Reports the exact bytes each pipeline puts on the wire against fp32, how much of Δ the
//! receiver recovers, and how fast compression ran. `--algo` also takes the DiLoCo
//! transports (see [`crate::compression::codec`]).
//!
//! With `--input`, the same command measures a user's own safetensors file instead; that
//! is [`crate::compression::file`].

use anyhow::{bail, Context, Result};
use meridian_optimizer::view::with_f32;
use tch::nn::{self, Module, OptimizerConfig};
use tch::{Device, Kind, Tensor};

use crate::cli::compress::CompressArgs;
use crate::compression::codec::Codec;
use crate::compression::values::ValueStats;
use crate::model::size::{self, Count};

/// A named parameter tensor's pseudo-gradient, contiguous f32 on the CPU.
struct Delta {
    name: String,
    shape: Vec<usize>,
    values: Tensor,
}

fn pseudo_gradient(args: &CompressArgs) -> Result<Vec<Delta>> {
    if args.width < 1 || args.layers < 1 || args.inner_steps < 1 {
        bail!("--width, --layers and --inner-steps must be at least 1");
    }
    let (inputs, outputs): (i64, i64) = (64, 16);
    // Counted before LibTorch allocates: its allocation failure would be a panic.
    let (w, l) = (i128::from(args.width), i128::from(args.layers));
    let count = Count::zero()
        .tensor(&[w, inputs.into()])
        .tensor(&[w])
        .plus(Count::zero().tensor(&[w, w]).tensor(&[w]).times(l))
        .tensor(&[outputs.into(), w])
        .tensor(&[outputs.into()]);
    size::check(
        &format!("compress: the demo MLP of --width {} and --layers {}", args.width, args.layers),
        count,
        size::TRAINING_BYTES_PER_PARAMETER,
        "training it (weights, gradients and AdamW's two moments)",
        "use a smaller --width (parameters grow as width²) or fewer --layers",
    )?;
    tch::manual_seed(args.seed);
    let vs = nn::VarStore::new(Device::Cpu);
    let root = vs.root();
    let mut net = nn::seq().add(nn::linear(&root / "in", inputs, args.width, Default::default()));
    for l in 0..args.layers {
        net = net.add_fn(|x| x.gelu("none")).add(nn::linear(
            &root / format!("hidden{l}"),
            args.width,
            args.width,
            Default::default(),
        ));
    }
    let net = net.add_fn(|x| x.gelu("none")).add(nn::linear(
        &root / "out",
        args.width,
        outputs,
        Default::default(),
    ));

    let start: Vec<(String, Tensor)> =
        vs.variables().into_iter().map(|(n, t)| (n, t.detach().copy())).collect();
    let teacher = Tensor::randn([inputs, outputs], (Kind::Float, Device::Cpu));
    let mut opt = nn::AdamW::default().build(&vs, 1e-3)?;
    for _ in 0..args.inner_steps {
        let x = Tensor::randn([256, inputs], (Kind::Float, Device::Cpu));
        let y = x.matmul(&teacher).sin();
        let loss = net.forward(&x).mse_loss(&y, tch::Reduction::Mean);
        opt.backward_step_clip(&loss, 1.0);
    }
    let end = vs.variables();
    let mut deltas = Vec::new();
    for (name, before) in start {
        let after = end.get(&name).with_context(|| format!("parameter {name} vanished"))?;
        let values = (&before - after).contiguous();
        let shape = values.size().iter().map(|&d| d as usize).collect();
        deltas.push(Delta { name, shape, values });
    }
    deltas.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(deltas)
}

/// The demo: one outer round of a small MLP, compressed with each algorithm.
pub fn run_demo(args: &CompressArgs) -> Result<()> {
    let codecs: Vec<(String, Codec)> = args
        .algorithms()
        .iter()
        .map(|p| Ok((p.clone(), Codec::parse(p)?)))
        .collect::<Result<_>>()?;
    let deltas = pseudo_gradient(args)?;
    let params: usize = deltas.iter().map(|d| d.shape.iter().product::<usize>()).sum();
    println!(
        "One DiLoCo outer round of a {params}-parameter MLP ({} tensors, H = {}): what each worker sends.\n",
        deltas.len(),
        args.inner_steps
    );
    println!(
        "{:<22} {:>12} {:>10} {:>10} {:>10} {:>14}",
        "pipeline", "bytes", "vs fp32", "kept", "rel.error", "compress"
    );
    let fp32_bytes = params * 4;
    println!(
        "{:<22} {:>12} {:>9.1}x {:>9.2}% {:>10.4} {:>14}",
        "fp32", fp32_bytes, 1.0, 100.0, 0.0, "-"
    );
    let mut value_lines = Vec::new();
    for (name, codec) in &codecs {
        let mut values: Option<ValueStats> = None;
        let mut bytes = 0usize;
        let mut kept = 0usize;
        let (mut err2, mut norm2) = (0f64, 0f64);
        let mut seconds = 0f64;
        for d in &deltas {
            with_f32(&d.name, &d.values, |x| {
                let rt = codec
                    .round_trip(&d.shape, x)
                    .with_context(|| format!("{name} on {} {:?}", d.name, d.shape))?;
                seconds += rt.encode_seconds;
                bytes += rt.bytes;
                if let Some(v) = &rt.values {
                    values.get_or_insert_with(ValueStats::default).add(v);
                }
                kept += rt.kept;
                for (a, b) in x.iter().zip(&rt.decoded) {
                    err2 += f64::from(a - b).powi(2);
                    norm2 += f64::from(*a).powi(2);
                }
                anyhow::Ok(())
            })??;
        }
        let rel = if norm2 > 0.0 { (err2 / norm2).sqrt() } else { 0.0 };
        println!(
            "{:<22} {:>12} {:>9.1}x {:>9.2}% {:>10.4} {:>11.1} ms",
            name,
            bytes,
            fp32_bytes as f64 / bytes as f64,
            100.0 * kept as f64 / params as f64,
            rel,
            seconds * 1e3
        );
        if let Some(v) = values {
            value_lines.push(format!("{name:<22} {}", v.describe()));
        }
    }
    if !value_lines.is_empty() {
        println!("\nThe kept values (rel.error over them alone) and each quantizer level's share:");
        for line in value_lines {
            println!("{line}");
        }
    }
    println!(
        "\nrel.error = ‖Δ − decompress(compress(Δ))‖ / ‖Δ‖ for one round; error feedback carries\n\
         the rest into the next round. Bytes are the exact encoded lengths."
    );
    Ok(())
}
