//! The `driftkv` binary: every role of a driftkv deployment behind one command line.

mod config;
mod dev;

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

#[derive(Subcommand)]
enum Command {
    /// Run everything embedded in one process: the Workers KV REST API on --listen, data in
    /// --data-dir.
    Dev {
        /// TOML configuration file (every field can also be set with DRIFTKV_* variables).
        #[arg(long)]
        config: Option<PathBuf>,
        /// Data directory [default: ./.driftkv].
        #[arg(long)]
        data_dir: Option<PathBuf>,
        /// HTTP listen address [default: 127.0.0.1:8787].
        #[arg(long)]
        listen: Option<SocketAddr>,
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
        Command::Dev {
            config,
            data_dir,
            listen,
        } => {
            let config =
                config::DevConfig::load(config.as_deref(), config::Overrides { data_dir, listen })?;
            dev::run(config).await
        }
    }
}
