//! `meridian proxy`: WAN conditions between real processes on one machine, by forwarding
//! UDP through the simulator's link models (kernel `netem` needs privileges these machines
//! do not give).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::Args;
use meridian_simulate::proxy::{forwards_to_itself, links_from_topology, parse_link_spec};
use meridian_simulate::{LinkSpec, Proxy, ProxyConfig, Topology};

/// Options of `meridian proxy`.
#[derive(Debug, Clone, Args)]
#[command(after_help = "\
Each direction runs through its own link model: delay, jitter, a rate with a drop-tail
queue, random and bursty loss, reordering, duplication, outages (the fields of a topology
file's link tables, with units). Every client address gets its own upstream socket, so
replies find their way back; a client idle for --idle-timeout-s is forgotten.

Put a proxy in front of a coordinator, then point the workers' join string at the proxy.
The join string is meridian://HOST:PORT/?fp=..&run=..&secret=..; only HOST:PORT changes,
the fingerprint still pins the coordinator's certificate through the proxy:

  meridian coordinator --listen 127.0.0.1:7070 --min-workers 2 --join-file join.txt
  meridian proxy --listen 127.0.0.1:7071 --to 127.0.0.1:7070 \\
      --up '{ delay = \"40ms\", rate = \"100Mbps\", loss = \"0.1%\" }' --down '{ delay = \"40ms\" }'
  JOIN=$(sed 's#//127.0.0.1:7070/#//127.0.0.1:7071/#' join.txt)
  meridian worker --join \"$JOIN\" --name w0 ...

Or take a link from a preset or a topology file; clients sit in the first region, the
server (--to) in the second, and --down defaults to the reverse link:

  meridian proxy --listen 127.0.0.1:7071 --to 127.0.0.1:7070 \\
      --preset cross-continent --link 'ap-southeast -> us-east'

Only the traffic sent to the proxy is impaired: with `--topology relay` (the default)
that is all of a run's traffic; with all-gather or ring, workers also talk directly.
Counters per direction are logged every --report-every-s and printed on Ctrl-C: offered,
forwarded (handed to the network: UDP does not confirm delivery), dropped by the link model
(by reason), failed to send (the socket refused: no route, say), and refused by the
receiver (ICMP port unreachable: nothing listens at --to).")]
pub struct ProxyArgs {
    /// UDP address clients send to.
    #[arg(long, env = "MERIDIAN_PROXY_LISTEN")]
    pub listen: SocketAddr,
    /// UDP address datagrams are forwarded to (the server, e.g. the coordinator).
    #[arg(long, env = "MERIDIAN_PROXY_TO")]
    pub to: SocketAddr,
    /// Client → server link as a TOML inline table, e.g. '{ delay = "20ms", rate =
    /// "100Mbps" }'. Overrides the up direction of --link.
    #[arg(long, value_name = "SPEC", env = "MERIDIAN_PROXY_UP")]
    pub up: Option<String>,
    /// Server → client link, like --up. Default: the reverse of --link, else the same as
    /// --up.
    #[arg(long, value_name = "SPEC", env = "MERIDIAN_PROXY_DOWN")]
    pub down: Option<String>,
    /// A directed link of the topology, "CLIENT_REGION -> SERVER_REGION".
    #[arg(long, value_name = "FROM -> TO", env = "MERIDIAN_PROXY_LINK")]
    pub link: Option<String>,
    /// Topology preset --link is taken from (lan, cross-continent, home, lossy).
    #[arg(long, default_value = "cross-continent", env = "MERIDIAN_PROXY_PRESET")]
    pub preset: String,
    /// Topology file --link is taken from (instead of --preset).
    #[arg(long, value_name = "FILE", env = "MERIDIAN_PROXY_TOPOLOGY")]
    pub topology: Option<PathBuf>,
    /// Seed of the links' random draws (loss, jitter); the same seed and traffic give
    /// the same drops.
    #[arg(long, default_value_t = 0, env = "MERIDIAN_PROXY_SEED")]
    pub seed: u64,
    /// Seconds without traffic after which a client's mapping is dropped.
    #[arg(long, default_value_t = 60.0, env = "MERIDIAN_PROXY_IDLE_TIMEOUT_S")]
    pub idle_timeout_s: f64,
    /// Most clients mapped at once (each holds a socket).
    #[arg(long, default_value_t = 1024, env = "MERIDIAN_PROXY_MAX_CLIENTS")]
    pub max_clients: usize,
    /// Seconds between counter reports in the log (0: none).
    #[arg(long, default_value_t = 10.0, env = "MERIDIAN_PROXY_REPORT_EVERY_S")]
    pub report_every_s: f64,
}

/// The up and down links the arguments describe.
pub fn links(args: &ProxyArgs) -> Result<(LinkSpec, LinkSpec)> {
    let from_topology = match &args.link {
        Some(link) => {
            let topology = match &args.topology {
                Some(path) => {
                    let text = std::fs::read_to_string(path)
                        .with_context(|| format!("reading {}", path.display()))?;
                    Topology::from_toml(&text).with_context(|| path.display().to_string())?
                }
                None => Topology::preset(&args.preset)?,
            };
            Some(links_from_topology(&topology, link).context("--link")?)
        }
        None if args.topology.is_some() => bail!("--topology needs --link \"FROM -> TO\""),
        None => None,
    };
    let up = match &args.up {
        Some(text) => parse_link_spec(text).context("--up")?,
        None => match &from_topology {
            Some((up, _)) => up.clone(),
            None => bail!("give the client → server link: --up SPEC or --link \"FROM -> TO\""),
        },
    };
    let down = match (&args.down, from_topology) {
        (Some(text), _) => parse_link_spec(text).context("--down")?,
        (None, Some((_, down))) => down,
        (None, None) => up.clone(),
    };
    Ok((up, down))
}

fn seconds(value: f64, flag: &str) -> Result<Duration> {
    Duration::try_from_secs_f64(value)
        .with_context(|| format!("{flag} must be a non-negative number of seconds"))
}

/// Runs `meridian proxy` until Ctrl-C, then prints the counters.
pub fn run(args: &ProxyArgs) -> Result<()> {
    if args.to.port() == 0 {
        bail!(
            "--to {}: port 0 is no server's address; give the port the server listens on",
            args.to
        );
    }
    if forwards_to_itself(args.listen, args.to) {
        bail!(
            "--to {} is where the proxy itself listens (--listen {}): it would forward every \
             datagram back to itself, without end; give --to the server's address (the \
             coordinator's --listen) and --listen another port",
            args.to,
            args.listen
        );
    }
    let (up, down) = links(args)?;
    let idle = seconds(args.idle_timeout_s, "--idle-timeout-s")?;
    if idle.is_zero() {
        bail!("--idle-timeout-s must be positive");
    }
    if args.max_clients == 0 {
        bail!("--max-clients must be at least 1");
    }
    let report = seconds(args.report_every_s, "--report-every-s")?;
    eprintln!("up   ({} -> {}): {up}", args.listen, args.to);
    eprintln!("down ({} -> {}): {down}", args.to, args.listen);
    let mut cfg = ProxyConfig::new(args.listen, args.to, up, down);
    cfg.seed = args.seed;
    cfg.idle_timeout = idle;
    cfg.max_clients = args.max_clients;
    cfg.report_every = (!report.is_zero()).then_some(report);
    let rt = crate::networked::runtime()?;
    rt.block_on(async move {
        let proxy = Proxy::start(cfg).await.context("starting the proxy")?;
        // Scripts read the port from here when they asked for port 0.
        println!("{}", proxy.local_addr());
        tokio::signal::ctrl_c().await.context("waiting for Ctrl-C")?;
        println!("{}", proxy.shutdown());
        Ok(())
    })
}
