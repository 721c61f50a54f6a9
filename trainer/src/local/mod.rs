//! In-process training (`meridian train`): N workers in one process through the
//! optimizer's harness, one or several outer algorithms on the same model, data and token
//! budget; a summary, loss curves and checkpoints in `--out`.

use std::io::Write;
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use indicatif::{ProgressBar, ProgressStyle};
use meridian_optimizer::config::AlgoConfig;
use meridian_optimizer::harness::Harness;
use meridian_optimizer::params::ParamSet;
use meridian_optimizer::train_step::TrainStep;
use serde::{Deserialize, Serialize};
use tch::Device;

use crate::cli::train::TrainArgs;
use crate::data::{Corpus, Split};
use crate::model::{build_model, parameter_count};
use crate::report::checkpoint::{self, RunIdentity};
use crate::report::frontier::{DdpBaseline, Frontier};
use crate::report::metrics::{RoundMeter, RoundRecord, RoundTotals};
use crate::report::plot::{Curve, CurvePoint, XAxis};
use crate::report::summary::{AlgoSummary, DataSummary, Summary};
use crate::report::sync_eval;
use crate::run_config::RunConfig;
use crate::step::lm_step::LmStep;

/// What is saved beside a checkpoint so a resumed run's summary covers the whole run.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct Progress {
    /// Worker 0's own parameters at every evaluation point (mid-round for DiLoCo's kin).
    curve: Vec<CurvePoint>,
    /// The synchronized model right after rounds ([`sync_eval`]).
    #[serde(default)]
    synced: Vec<CurvePoint>,
    recent_train: Vec<f64>,
    initial_val_loss: f64,
    seconds: f64,
    bytes_sent: u64,
    identical: bool,
    totals: Option<RoundTotals>,
}

const PROGRESS: &str = "progress.json";

/// The shared inputs of every algorithm's run.
struct Setup<'a> {
    args: &'a TrainArgs,
    config: &'a RunConfig,
    corpus: Arc<Corpus>,
    eval_every: u64,
    device: Device,
}

fn run_one(s: &Setup<'_>, algo: &AlgoConfig) -> Result<AlgoSummary> {
    let args = s.args;
    let name = algo.algorithm().name();
    let vocab = s.corpus.vocab();
    let models = (0..args.workers)
        .map(|_| build_model(&s.config.model, vocab, args.run.seed, s.device))
        .collect::<Result<Vec<_>>>()?;
    let context = models[0].context();
    let model_name = models[0].describe();
    let split = Split::new(s.corpus.clone(), context as usize)?;
    let batch = s.config.data.batch as usize;
    let validation = std::rc::Rc::new(split.validation(batch, s.config.data.eval_batches as usize));
    let workers = models
        .into_iter()
        .enumerate()
        .map(|(i, m)| {
            let shard = split.shard(i as u32, args.workers, args.run.seed, batch)?;
            Ok(LmStep::new(m, s.config.inner, shard, validation.clone(), args.steps())?
                .with_round_steps(algo.round_steps()))
        })
        .collect::<Result<Vec<_>>>()?;
    let mut h = Harness::new(workers, |_, p: &ParamSet| algo.build(p))?;
    let identity = RunIdentity {
        model: model_name,
        params: h.workers()[0]
            .params
            .names()
            .iter()
            .cloned()
            .zip(
                h.workers()[0]
                    .params
                    .shapes()
                    .iter()
                    .map(|s| s.iter().map(|&d| d as i64).collect()),
            )
            .collect(),
        algorithm: algo.to_toml(),
        inner: s.config.inner_toml(),
        schedule_steps: args.steps(),
        batch: batch as u64,
        seed: args.run.seed,
        workers: args.workers,
        data: s.corpus.fingerprint(),
    };
    let ckpt = checkpoint::dir_for(&args.run.out, name);
    let rounds_path = args.run.out.join(format!("rounds-{name}.jsonl"));
    let mut progress = Progress { identical: true, ..Progress::default() };
    let mut meter = RoundMeter::new(args.workers as usize);
    let mut resumed_from = None;
    // `check_out` refused a checkpoint folder that holds files without a manifest, so no
    // manifest here means no checkpoint.
    if args.resume && ckpt.join(checkpoint::MANIFEST).exists() {
        let manifest = checkpoint::load(&ckpt, &mut h, &identity)
            .with_context(|| format!("resuming {name} from {}", ckpt.display()))?;
        let bytes = std::fs::read(ckpt.join(PROGRESS))
            .with_context(|| format!("checkpoint: {} has no {PROGRESS}", ckpt.display()))?;
        progress = serde_json::from_slice(&bytes).context("checkpoint: progress.json")?;
        if let Some(t) = &progress.totals {
            meter = RoundMeter::resume(t.clone());
        }
        resumed_from = Some(manifest.step);
        tracing::info!(algo = name, step = manifest.step, "resumed from {}", ckpt.display());
    } else if args.resume {
        tracing::info!(algo = name, "no checkpoint in {}: starting afresh", ckpt.display());
    }
    // A resumed run keeps the rounds its checkpoint covers and drops any logged after it
    // (by a run that went on past its last checkpoint and then died).
    let kept: Vec<String> = match resumed_from {
        Some(_) => std::fs::read_to_string(&rounds_path)
            .unwrap_or_default()
            .lines()
            .filter(|l| {
                serde_json::from_str::<RoundRecord>(l).is_ok_and(|r| r.round < h.rounds_done())
            })
            .map(str::to_string)
            .collect(),
        None => Vec::new(),
    };
    let mut rounds_log = std::fs::File::create(&rounds_path)
        .with_context(|| format!("creating {}", rounds_path.display()))?;
    for line in kept {
        writeln!(rounds_log, "{line}")?;
    }
    let tokens_per_step = (batch as u64) * context as u64;
    if resumed_from.is_none() {
        // Every replica starts from the same seed: the first point is synchronized too.
        let loss = h.workers_mut()[0].train.eval_loss()?;
        progress.initial_val_loss = loss;
        let point =
            CurvePoint { step: 0, tokens: 0, bytes_per_worker: 0.0, seconds: 0.0, val_loss: loss };
        progress.curve.push(point);
        progress.synced.push(point);
    }
    let bar = ProgressBar::new(args.steps()).with_prefix(format!("{name:<10}"));
    bar.set_style(
        ProgressStyle::with_template("{prefix} [{bar:30}] {pos}/{len} steps {msg} ({eta})")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    bar.set_position(h.steps_done());
    let keep = (args.steps() / 20).max(1) as usize;
    let start = Instant::now();
    let base_seconds = progress.seconds;
    let stop = args.stop_after.unwrap_or(args.steps()).min(args.steps());
    while h.steps_done() < stop {
        let mut report = h.step()?;
        let step = report.step + 1;
        if step == args.steps() {
            // An overlapped run ends by landing its last round: the final model holds it.
            report.exchanges.extend(h.land_now()?);
        }
        meter.add_compute(&report.compute_seconds);
        for x in &report.exchanges {
            let r = meter.close(x.round, x.step, &x.bytes_per_worker, x.seconds);
            tracing::debug!(
                algo = name,
                round = r.round,
                step = r.step,
                sent = ?r.sent,
                received = ?r.received,
                compute_s = ?r.compute_seconds,
                latency_s = r.latency_seconds,
                straggler = r.straggler,
                "round"
            );
            serde_json::to_writer(&mut rounds_log, &r)?;
            rounds_log.write_all(b"\n")?;
            progress.bytes_sent += x.bytes_per_worker.iter().map(|&b| b as u64).sum::<u64>();
            progress.identical &= x.replicas_identical();
            for (worker, reason) in &x.rejected {
                bar.suspend(
                    || tracing::warn!(round = x.round, worker, %reason, "payload rejected"),
                );
            }
        }
        progress.recent_train.push(report.mean_loss);
        if progress.recent_train.len() > keep {
            progress.recent_train.remove(0);
        }
        let bytes_per_worker = progress.bytes_sent as f64 / f64::from(args.workers);
        let point = |val_loss: f64| CurvePoint {
            step,
            tokens: step * tokens_per_step,
            bytes_per_worker,
            seconds: base_seconds + start.elapsed().as_secs_f64(),
            val_loss,
        };
        // The end of the schedule, not `stop`: a run stopped and resumed evaluates at the
        // same steps as one that was not.
        let mut synced_loss = None;
        let w = &mut h.workers_mut()[0];
        if !report.exchanges.is_empty()
            && sync_eval::due(&*w.outer, s.eval_every, args.steps(), step)
        {
            let loss = sync_eval::eval_synchronized(&mut w.train, &w.params, &*w.outer)?;
            progress.synced.push(point(loss));
            synced_loss = sync_eval::local_is_synchronized(&*w.outer).then_some(loss);
        }
        if step % s.eval_every == 0 || step == stop {
            let loss = match synced_loss {
                Some(loss) => loss,
                None => w.train.eval_loss()?,
            };
            progress.curve.push(point(loss));
            bar.set_message(format!("train {:.3} val {loss:.3}", report.mean_loss));
        }
        let due = args.checkpoint_every > 0 && step % args.checkpoint_every == 0;
        if due || step == stop {
            progress.seconds = base_seconds + start.elapsed().as_secs_f64();
            progress.totals = Some(meter.totals().clone());
            let extra = serde_json::to_vec(&progress)?;
            checkpoint::save(&ckpt, &h, &identity, &[(PROGRESS, extra)])?;
            rounds_log.flush()?;
        }
        bar.inc(1);
    }
    bar.finish_and_clear();
    let seconds = base_seconds + start.elapsed().as_secs_f64();
    let totals = meter.totals().clone();
    let final_val = progress.synced.last().map_or(f64::NAN, |p| p.val_loss);
    let mean = |v: &[u64]| v.iter().sum::<u64>() as f64 / v.len().max(1) as f64;
    if totals.rounds == 0 {
        tracing::warn!(
            algo = name,
            steps = args.steps(),
            "no outer round completed: its inner steps per round exceed --steps; lower --inner-steps"
        );
    }
    Ok(AlgoSummary {
        algorithm: name.to_string(),
        settings: toml::from_str::<serde_json::Value>(&algo.to_toml()).unwrap_or_default(),
        initial_val_loss: progress.initial_val_loss,
        final_train_loss: progress.recent_train.iter().sum::<f64>()
            / progress.recent_train.len().max(1) as f64,
        final_val_loss: final_val,
        rounds: totals.rounds,
        bytes_sent_per_worker: mean(&totals.sent),
        bytes_received_per_worker: mean(&totals.received),
        tokens: h.steps_done() * tokens_per_step * u64::from(args.workers),
        tokens_per_worker: h.steps_done() * tokens_per_step,
        wall_seconds: seconds,
        replicas_identical: progress.identical,
        resumed_from_step: resumed_from,
        round_totals: totals,
        // Filled once every algorithm has run (it needs DDP's loss).
        frontier: Frontier::default(),
        curve: progress.synced,
        local_curve: progress.curve,
    })
}

/// Checks everything that can be checked before any training or writing.
fn validate(args: &TrainArgs) -> Result<()> {
    if args.workers == 0 || args.steps() == 0 {
        bail!("--workers and --steps must be at least 1");
    }
    if args.algo.is_empty() {
        bail!("--algo: name at least one algorithm");
    }
    let mut seen = std::collections::BTreeSet::new();
    if let Some(dup) = args.algo.iter().find(|a| !seen.insert(**a)) {
        bail!("--algo: {dup} is named twice");
    }
    if args.eval_every == Some(0) {
        bail!("--eval-every must be at least 1");
    }
    if args.stop_after == Some(0) {
        bail!("--stop-after must be at least 1");
    }
    if args.run.threads == Some(0) {
        bail!("--threads must be at least 1");
    }
    Ok(())
}

/// The non-hidden entries of `--out`'s checkpoint folder that hold something (hidden ones
/// are a save's temporaries), as `checkpoints/NAME`, sorted.
fn held_checkpoints(out: &Path) -> Result<Vec<String>> {
    let root = out.join("checkpoints");
    let entries = match std::fs::read_dir(&root) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => bail!("cannot read {}: {e}", root.display()),
    };
    let mut held = Vec::new();
    for entry in entries {
        let entry = entry.with_context(|| format!("reading {}", root.display()))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with('.') {
            continue;
        }
        // An empty folder holds nothing to lose; anything else (a file included) might.
        let empty = std::fs::read_dir(entry.path()).is_ok_and(|mut d| d.next().is_none());
        if !empty {
            held.push(format!("checkpoints/{name}"));
        }
    }
    held.sort();
    Ok(held)
}

/// Checks `--out` against what the run will do to it, before anything is trained or
/// written, so that a refusal leaves every file as it was:
/// - without `--resume` or `--overwrite`, an earlier run's checkpoints are refused (the
///   run would replace them, and its summary, plots and round logs);
/// - with `--resume`, every selected algorithm's checkpoint must be absent, or hold a
///   manifest that parses and was not edited and every file it lists, intact: a folder
///   that holds files but no manifest is refused rather than taken for "no checkpoint" and
///   overwritten. (Whether it is this run's checkpoint needs the run's model: `run_one`
///   checks that when it loads it.)
fn check_out(args: &TrainArgs, algos: &[&str]) -> Result<()> {
    let out = &args.run.out;
    if !args.resume && !args.overwrite {
        let held = held_checkpoints(out)?;
        if !held.is_empty() {
            bail!(
                "--out {} already holds an earlier run's checkpoints ({}), which this run would \
                 replace: add --resume to continue that run, or --overwrite to start afresh and \
                 replace them (or choose another --out)",
                out.display(),
                held.join(", ")
            );
        }
    }
    if args.resume {
        for name in algos {
            let ckpt = checkpoint::dir_for(out, name);
            let manifest = ckpt.join(checkpoint::MANIFEST);
            if manifest.symlink_metadata().is_ok() {
                // What can be checked without the run's model: the manifest and the files'
                // hashes. `checkpoint::load` checks the run's identity when it comes.
                checkpoint::read_manifest(&ckpt)
                    .and_then(|m| checkpoint::check_files(&ckpt, &m))
                    .with_context(|| format!("resuming {name} from {}", ckpt.display()))?;
                continue;
            }
            let holds_files = match std::fs::read_dir(&ckpt) {
                Ok(mut entries) => entries.next().is_some(),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => false,
                Err(e) => bail!("resuming {name}: cannot read {}: {e}", ckpt.display()),
            };
            if holds_files {
                bail!(
                    "resuming {name}: {} holds checkpoint files but no {}, without which they \
                     cannot be checked or resumed; put the manifest back, or start afresh with \
                     --overwrite (which replaces them)",
                    ckpt.display(),
                    checkpoint::MANIFEST
                );
            }
        }
    }
    Ok(())
}

/// Runs `meridian train`.
pub fn run(args: &TrainArgs) -> Result<()> {
    validate(args)?;
    let config = args.source.config(&args.algo, args.schedule.inner_steps, &[])?;
    let names: Vec<&str> = config.algos.iter().map(|a| a.algorithm().name()).collect();
    check_out(args, &names)?;
    let corpus = Arc::new(args.source.data.load()?);
    tch::set_num_threads(
        args.run
            .threads
            .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
            as i32,
    );
    let device = args.source.device.resolve()?;
    // Build one model now: a bad TorchScript file or shape fails before anything is written.
    let probe = build_model(&config.model, corpus.vocab(), args.run.seed, device)?;
    let split = Split::new(corpus.clone(), probe.context() as usize)?;
    for w in 0..args.workers {
        split.shard(w, args.workers, args.run.seed, config.data.batch as usize)?;
    }
    std::fs::create_dir_all(&args.run.out)
        .with_context(|| format!("creating {}", args.run.out.display()))?;
    let eval_every = args.eval_every.unwrap_or((args.steps() / 20).max(1));
    let (train_tokens, val_tokens) = split.sizes();
    let params = parameter_count(probe.as_ref());
    println!(
        "Training {} ({:.2}M parameters, on {}) with {} workers for {} inner steps each, per \
         algorithm,\non {} ({:.1} MB: {} training, {} validation tokens).\n",
        probe.describe(),
        params as f64 / 1e6,
        crate::device::name(device),
        args.workers,
        args.steps(),
        corpus.source(),
        corpus.len() as f64 / 1e6,
        train_tokens,
        val_tokens
    );
    let setup = Setup { args, config: &config, corpus: corpus.clone(), eval_every, device };
    let mut algos = Vec::new();
    for algo in &config.algos {
        tracing::info!(algo = %algo.algorithm(), "training");
        algos.push(run_one(&setup, algo)?);
    }
    let stop = args.stop_after.unwrap_or(args.steps()).min(args.steps());
    let mut summary = Summary {
        model: probe.describe(),
        parameters: params,
        device: crate::device::name(device),
        data: DataSummary {
            source: corpus.source().to_string(),
            tokens: corpus.len() as u64,
            train_tokens: train_tokens as u64,
            val_tokens: val_tokens as u64,
            vocab: corpus.vocab(),
        },
        workers: args.workers,
        steps: args.steps(),
        seed: args.run.seed,
        batch: config.data.batch,
        context: probe.context() as u64,
        inner: config.inner,
        ddp_bf16_ring: DdpBaseline::bf16_ring(params, args.workers, stop),
        algorithms: algos,
    };
    summary.set_frontier();
    summary.write(&args.run.out.join("summary.json"))?;
    let curves: Vec<Curve> = summary
        .algorithms
        .iter()
        .map(|a| Curve { label: a.algorithm.clone(), points: a.curve.clone() })
        .collect();
    // A plot that cannot be drawn (no round finished yet, so no bytes) is a note, not a
    // failure: the summary already holds the numbers.
    let mut plots = Vec::new();
    for (stem, title, x) in [
        (
            "val_loss_vs_steps",
            "Validation loss of the synchronized model against inner steps",
            XAxis::Steps,
        ),
        (
            "val_loss_vs_bytes",
            "Validation loss of the synchronized model against bytes sent per worker",
            XAxis::BytesPerWorker,
        ),
    ] {
        match crate::report::plot::write_loss_plot(&args.run.out, stem, title, x, &curves) {
            Ok(paths) => plots.extend(paths),
            Err(e) => tracing::warn!("{stem} not plotted: {e:#}"),
        }
    }
    summary.print_table();
    if let Some(stop) = args.stop_after.filter(|&s| s < args.steps()) {
        println!(
            "\nStopped after step {stop} of {}; continue with the same flags and --resume.",
            args.steps()
        );
    }
    println!("\nWrote summary.json and {} plots in {}.", plots.len(), args.run.out.display());
    if summary.algorithms.iter().any(|a| !a.replicas_identical) {
        bail!("replicas diverged");
    }
    Ok(())
}
