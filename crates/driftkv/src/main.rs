//! The `driftkv` binary: every role of a driftkv deployment behind one command line.

mod config;
mod membership;
mod node;
mod run;

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Parser, Subcommand};
use tracing_subscriber::EnvFilter;

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
}

fn init_logging() {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if std::env::var("DRIFTKV_LOG_FORMAT").is_ok_and(|f| f.eq_ignore_ascii_case("json")) {
        builder.json().init();
    } else {
        builder.init();
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    init_logging();
    match cli.command {
        Command::Dev { node, edges } => run::run_dev(node.load()?, edges).await,
        Command::Central { node } => run::run_central(node.load()?).await,
        Command::Edge { node } => run::run_edge(node.load()?).await,
    }
}
