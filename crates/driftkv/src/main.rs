//! The `driftkv` binary: every role of a driftkv deployment behind one command line.

mod admin;
mod cli;
mod config;
mod experiments;
mod membership;
mod node;
mod ops;
mod run;
mod telemetry;
mod testbed;

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Parser, Subcommand};

/// mimalloc instead of the system allocator: request handling allocates many small,
/// short-lived buffers, and glibc malloc showed up at about 7% of a hot-GET profile.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// driftkv: a self-hosted, eventually consistent key-value store that speaks the Cloudflare
/// Workers KV REST API.
#[derive(Parser)]
#[command(name = "driftkv", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

/// Options every server role shares.
#[derive(clap::Args)]
struct NodeArgs {
    /// TOML configuration file (every field can also be set with DRIFTKV_* variables).
    #[arg(long)]
    config: Option<PathBuf>,
    /// Data directory [default: ./.driftkv].
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// HTTP listen address [default: 127.0.0.1:8787].
    #[arg(long)]
    listen: Option<SocketAddr>,
}

impl NodeArgs {
    fn load(self) -> anyhow::Result<config::Config> {
        config::Config::load(
            self.config.as_deref(),
            config::Overrides {
                data_dir: self.data_dir,
                listen: self.listen,
            },
        )
    }
}

#[derive(Subcommand)]
enum Command {
    /// Run a whole cluster in one process: a central write region and --edges edges (real
    /// gRPC over loopback), edge i serving the Workers KV REST API on the --listen port + i,
    /// data under --data-dir.
    Dev {
        #[command(flatten)]
        node: NodeArgs,
        /// Number of edges.
        #[arg(long, default_value_t = 1)]
        edges: usize,
    },
    /// Run the central write region: the gRPC service edges forward writes to and replicate
    /// from (grpc.listen in the config).
    Central {
        #[command(flatten)]
        node: NodeArgs,
    },
    /// Run an edge: the Workers KV REST API on --listen, served from a local replica, writes
    /// forwarded to central (central.address in the config).
    Edge {
        #[command(flatten)]
        node: NodeArgs,
    },
    /// Workers KV commands shaped like wrangler's, against any driftkv edge: namespaces, keys,
    /// bulk files, export and import.
    Kv {
        #[command(flatten)]
        target: cli::Target,
        #[command(subcommand)]
        command: cli::Kv,
    },
    /// The cluster as a node sees it.
    Cluster {
        #[command(flatten)]
        target: cli::Target,
        #[command(subcommand)]
        command: cli::ClusterCommand,
    },
    /// The consistency testbed: check recorded histories against the consistency model.
    Testbed {
        #[command(subcommand)]
        command: testbed::TestbedCommand,
    },
    /// Check a node's health endpoint and exit 0 if it answers 200, non-zero otherwise: a
    /// container health check that needs no curl.
    Health {
        /// The endpoint to check.
        #[arg(long, default_value = "http://127.0.0.1:8787/healthz")]
        url: String,
        /// Seconds to wait for an answer.
        #[arg(long, default_value_t = 3)]
        timeout_secs: u64,
    },
}

/// `driftkv health`.
async fn health(url: &str, timeout: std::time::Duration) -> anyhow::Result<()> {
    let response = reqwest::Client::builder()
        .timeout(timeout)
        .build()?
        .get(url)
        .send()
        .await
        .map_err(|e| anyhow::Error::new(e).context(format!("{url} is not healthy")))?;
    let status = response.status();
    anyhow::ensure!(status.is_success(), "{url} is not healthy: HTTP {status}");
    println!("{url}: healthy");
    Ok(())
}

/// Ends a client command: a failure is one line on stderr and exit status 1, for scripts.
fn client_outcome(outcome: anyhow::Result<()>) -> anyhow::Result<()> {
    if let Err(e) = outcome {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
    Ok(())
}

/// Runs a server role with its logs and traces installed, flushing the traces at the end.
async fn with_telemetry(
    role: &str,
    run: impl std::future::Future<Output = anyhow::Result<()>>,
) -> anyhow::Result<()> {
    let telemetry = telemetry::Telemetry::init(role)?;
    let outcome = run.await;
    telemetry.shutdown();
    outcome
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Kv { target, command } => client_outcome(cli::kv(&target, command).await),
        Command::Cluster { target, command } => {
            client_outcome(cli::cluster(&target, command).await)
        }
        Command::Testbed { command } => client_outcome(testbed::run(command).await),
        Command::Health { url, timeout_secs } => {
            health(&url, std::time::Duration::from_secs(timeout_secs)).await
        }
        Command::Dev { node, edges } => {
            with_telemetry("dev", run::run_dev(node.load()?, edges)).await
        }
        Command::Central { node } => {
            with_telemetry("central", run::run_central(node.load()?)).await
        }
        Command::Edge { node } => with_telemetry("edge", run::run_edge(node.load()?)).await,
    }
}
