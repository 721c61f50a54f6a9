//! The `meridian` command-line tool.

use std::process::ExitCode;

use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};

/// Meridian: train one network across continents over ordinary internet links.
#[derive(Debug, Parser)]
#[command(version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Compress one outer round's pseudo-gradient of a small model with each pipeline and
    /// report bytes on the wire, reconstruction error and speed; with --input, the tensors
    /// of your own safetensors file instead.
    Compress(meridian_trainer::cli::compress::CompressArgs),
    /// Train N workers in one process with one or more outer algorithms (DDP, DiLoCo, DeMo,
    /// SparseLoCo, Streaming DiLoCo) and compare their loss and bytes on the wire.
    Train(meridian_trainer::cli::train::TrainArgs),
    /// Coordinate a run across processes or machines: admit workers that hold the join
    /// secret, close rounds, commit who delivered. Prints the join string.
    Coordinator(meridian_trainer::cli::coordinator::CoordinatorArgs),
    /// Train one worker of a multi-process run, syncing through a coordinator over QUIC.
    Worker(meridian_trainer::cli::worker::WorkerArgs),
    /// What happens if you train across continents: every algorithm trains over the same
    /// simulated wide-area network (real QUIC, simulated links, virtual time) and is
    /// compared on loss, bytes, simulated wall-clock and compute utilization.
    Simulate(meridian_trainer::cli::simulate::SimulateArgs),
    /// Size a real run without training: bytes per round, communication time and compute
    /// utilization per algorithm for a model of any size on a preset or custom network, and
    /// the link rate a target utilization needs.
    WhatIf(meridian_trainer::cli::what_if::WhatIfArgs),
    /// Forward UDP between real processes through WAN link models (delay, rate, loss...):
    /// put it in front of a coordinator to run a multi-process trial under WAN conditions
    /// on one machine.
    Proxy(meridian_trainer::cli::proxy::ProxyArgs),
}

fn main() -> ExitCode {
    // Before LibTorch creates its threads, so that they inherit it.
    meridian_trainer::float_env::flush_denormals();
    let matches = Cli::command().get_matches();
    let mut cli = Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
    // A worker given none of the run's flags follows the coordinator's settings: which were
    // given is known only from the matches.
    if let (Command::Worker(args), Some(("worker", sub))) = (&mut cli.command, matches.subcommand())
    {
        args.note_explicit(sub);
    }
    // A simulation runs dozens of nodes in one process: their routine logs would bury the
    // progress bars, so only warnings show unless RUST_LOG asks for more.
    let default_filter = match cli.command {
        Command::Simulate(_) => "warn",
        _ => "info",
    };
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_filter)),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let result = match cli.command {
        Command::Compress(args) => meridian_trainer::cli::compress::run(&args),
        Command::Train(args) => meridian_trainer::cli::train::run(&args),
        Command::Coordinator(args) => meridian_trainer::cli::coordinator::run(&args),
        Command::Worker(args) => meridian_trainer::cli::worker::run(&args),
        Command::Simulate(args) => meridian_trainer::cli::simulate::run(&args),
        Command::WhatIf(args) => meridian_trainer::cli::what_if::run(&args),
        Command::Proxy(args) => meridian_trainer::cli::proxy::run(&args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {}", report(&e));
            ExitCode::FAILURE
        }
    }
}

/// The error and its causes joined with `: `, each message once. Some library errors put
/// their source into their own message (`cannot bind …: {source}`) and also return it as
/// their `source()`, so anyhow's `{:#}` would print that source twice; a cause whose text
/// already ends what has been printed is left out.
fn report(e: &anyhow::Error) -> String {
    let mut text = String::new();
    for cause in e.chain() {
        let message = cause.to_string();
        if text.ends_with(&message) {
            continue;
        }
        if !text.is_empty() {
            text.push_str(": ");
        }
        text.push_str(&message);
    }
    text
}
