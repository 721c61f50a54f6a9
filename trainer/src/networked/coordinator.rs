//! The coordinator process of a run across processes (`meridian coordinator`): it admits
//! workers that hold the run's join secret, closes rounds and commits who delivered; it
//! never sees a tensor.

use std::io::Write;
use std::path::Path;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use meridian_comm::node::{CoordinatorNode, CoordinatorNodeConfig, CoordinatorNodeEvent};
use meridian_comm::protocol::{CoordinatorEvent, DeadlinePolicy, RunSignature};

use crate::cli::coordinator::CoordinatorArgs;
use crate::networked::settings::RunSettings;

/// Runs a coordinator until its last round has committed (or forever).
pub fn run(args: &CoordinatorArgs) -> Result<()> {
    let tuning = crate::run_config::transport_only(args.config.as_deref(), &args.set)?;
    let rt = super::runtime()?;
    let mut cfg = CoordinatorNodeConfig::new(args.listen, args.topology.route());
    cfg.advertise_host = args.advertise.clone();
    cfg.state_dir = Some(args.state_dir.clone());
    cfg.tuning = tuning;
    cfg.metrics_listen = args.metrics_listen;
    cfg.protocol.min_members = args.min_workers.max(1) as usize;
    cfg.protocol.min_live = Some(args.min_live.max(1) as usize);
    if let Some(ms) = args.deadline_ms {
        cfg.protocol.deadline = DeadlinePolicy::Fixed(Duration::from_millis(ms.max(1)));
    }
    if let Some(path) = &args.join_file {
        check_join_file(path)?;
    }
    if let Some(settings) =
        args.config.as_deref().map(RunSettings::from_file).transpose()?.flatten()
    {
        // The run's model is built once here, on the CPU, for its parameters' shapes: what
        // a worker that brings its own flags is checked on.
        cfg.protocol.signature = Some(RunSignature::from_facts(settings.facts()?));
        cfg.protocol.settings = Some(settings.document()?);
        tracing::info!(
            algo = %settings.algo,
            model = %settings.model,
            steps = settings.steps,
            seed = settings.seed,
            shards = settings.shards,
            corpus = settings.corpus.as_deref().unwrap_or("unchecked"),
            "the run's settings: workers need only --join-file, --name and --data"
        );
    }
    rt.block_on(async move {
        let mut node = CoordinatorNode::start(cfg).context("starting the coordinator")?;
        let join = node.join_string().to_string();
        println!("{join}");
        if let Some(path) = &args.join_file {
            write_join_file(path, &join)?;
        }
        tracing::info!(listen = %node.local_addr(), "coordinator ready; waiting for workers");
        let mut members = std::collections::BTreeSet::new();
        // After the last round, wait for the workers to take its commit and leave.
        let mut finishing: Option<tokio::time::Instant> = None;
        loop {
            let event = match finishing {
                None => node.next_event().await,
                Some(until) => match tokio::time::timeout_at(until, node.next_event()).await {
                    Ok(e) => e,
                    Err(_) => break,
                },
            };
            let Some(event) = event else { break };
            match event {
                // The comm crate logs each commit with its stats; here it only counts, from
                // the run's start (a restarted coordinator goes on where it stopped).
                CoordinatorNodeEvent::Protocol(CoordinatorEvent::RoundCommitted {
                    round, ..
                }) => {
                    let committed = round + 1;
                    if finishing.is_none() && args.rounds.is_some_and(|n| committed >= n) {
                        finishing = Some(tokio::time::Instant::now() + Duration::from_secs(30));
                    }
                }
                CoordinatorNodeEvent::Protocol(CoordinatorEvent::Joined { member, .. }) => {
                    members.insert(member);
                    tracing::info!(member, "worker joined");
                }
                CoordinatorNodeEvent::Protocol(CoordinatorEvent::Left { member, .. }) => {
                    members.remove(&member);
                    tracing::info!(member, "worker left");
                    if finishing.is_some() && members.is_empty() {
                        break;
                    }
                }
                CoordinatorNodeEvent::Protocol(other) => {
                    tracing::debug!(event = ?other, "protocol")
                }
                CoordinatorNodeEvent::PeerRefused { peer, code, detail } => {
                    tracing::warn!(%peer, %code, %detail, "connection refused")
                }
                CoordinatorNodeEvent::FrameRejected { peer, error, .. } => {
                    tracing::warn!(%peer, %error, "frame rejected")
                }
                CoordinatorNodeEvent::Failed { reason } => bail!("coordinator stopped: {reason}"),
                other => tracing::debug!(event = ?other, "node"),
            }
        }
        node.shutdown().await.context("shutting down")?;
        Ok(())
    })
}

/// Refuses a `--join-file` that cannot be written before the coordinator starts: a folder,
/// or a path whose folder does not exist.
fn check_join_file(path: &Path) -> Result<()> {
    let shown = path.display();
    if path.is_dir() {
        bail!("--join-file {shown} is a directory; give the path of a file to write");
    }
    let folder = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    if !folder.is_dir() {
        bail!(
            "--join-file {shown}: the folder {} does not exist (or is not a folder); create it \
             or give another path",
            folder.display()
        );
    }
    Ok(())
}

/// Writes the join string to `--join-file`, whole or not at all, readable by its owner only
/// (mode 0600): it holds the run's secret. Errors name the file as the user gave it, not
/// the temporary it is written through.
fn write_join_file(path: &Path, join: &str) -> Result<()> {
    crate::atomic_write::replace_with(path, |temp| {
        let mut options = std::fs::OpenOptions::new();
        options.write(true).create_new(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
        let mut file = options.open(temp)?;
        file.write_all(join.as_bytes())?;
        Ok(())
    })
    .with_context(|| format!("--join-file {}: cannot write the join string", path.display()))
}
