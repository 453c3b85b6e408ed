//! The `driftkv` binary: every role of a driftkv deployment behind one command line.

mod certs;
mod cli;
mod telemetry;
mod testbed;
mod token;

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
    fn load(self) -> anyhow::Result<driftkv_node::Config> {
        driftkv_node::Config::load(
            self.config.as_deref(),
            driftkv_node::Overrides {
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
    /// API tokens: `create` makes a random token and the api_tokens_file entry granting it.
    Token {
        #[command(subcommand)]
        command: TokenCommand,
    },
    /// The cluster's TLS material: a CA and gossip key (`init`), node certificates (`issue`).
    Certs {
        #[command(subcommand)]
        command: certs::CertsCommand,
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
        /// A CA certificate (PEM) to trust for an https:// URL, besides the system's.
        #[arg(long)]
        ca_cert: Option<std::path::PathBuf>,
    },
}

/// `driftkv token ...`
#[derive(Subcommand)]
enum TokenCommand {
    /// Print a new random API token and the [[tokens]] entry (its SHA-256, accounts and
    /// permission) that grants it in an api_tokens_file.
    Create(token::CreateArgs),
}

/// `driftkv health`.
async fn health(
    url: &str,
    timeout: std::time::Duration,
    ca_cert: Option<&std::path::Path>,
) -> anyhow::Result<()> {
    let mut builder = reqwest::Client::builder().timeout(timeout);
    if let Some(path) = ca_cert {
        builder = builder.add_root_certificate(cli::ca_certificate(path)?);
    }
    let response = builder
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

/// Ends a command: a failure is one line on stderr (the error and its causes) and exit status
/// 1, for scripts and for operators reading why a node would not start.
fn client_outcome(outcome: anyhow::Result<()>) -> anyhow::Result<()> {
    if let Err(e) = outcome {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
    Ok(())
}

/// Runs a server role with its configuration loaded and its logs and traces installed,
/// flushing the traces at the end. `run` is told what to record of each HTTP request.
async fn serve<F, Fut>(role: &str, node: NodeArgs, run: F) -> anyhow::Result<()>
where
    F: FnOnce(driftkv_node::Config, driftkv_http::RequestTracing) -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<()>>,
{
    let config = node.load()?;
    // Whatever a node writes (its database, saved experiments) is its own alone: 0600 files,
    // 0700 directories.
    #[cfg(unix)]
    // SAFETY: umask only swaps the process's file mode mask; it cannot fail.
    unsafe {
        libc::umask(0o077);
    }
    let telemetry = telemetry::Telemetry::init(role)?;
    let tracing = driftkv_http::RequestTracing {
        spans: telemetry.exports_spans(),
        access_log: config.log.access,
    };
    let outcome = run(config, tracing).await;
    telemetry.shutdown();
    outcome
}

/// Allocations of this many KiB and more are mapped from the operating system of their own
/// and unmapped the moment they are freed, instead of coming from mimalloc's arenas: a large
/// value's buffers (a request's receive buffer, the log entry, the buffer LZ4 zero-fills
/// whole to compress a value into fjall's journal) then leave the resident set as soon as
/// they are dropped, and a fresh zeroed one costs no writes. From an arena, a freed block
/// stays resident for mimalloc's purge delay (a second), and zeroing a reused one writes all
/// of it: in about one 25 MiB write of four, central held the write's receive buffer (freed
/// on the commit thread just before the journal write), its log entry and a rezeroed 27.5
/// MiB journal buffer at once, 3.2 times the value at its peak (2.1 with these buffers the
/// operating system's own). Buffers this large are few and each costs a copy of megabytes,
/// next to which a map and an unmap are cheap.
const OWN_MAPPING_KIB: std::ffi::c_long = 8 * 1024;

/// `mi_option_arena_max_object_size` in the mimalloc the `libmimalloc-sys` crate builds,
/// which does not name it: two before `_mi_option_last`.
const ARENA_MAX_OBJECT_SIZE: libmimalloc_sys::mi_option_t = 45;
// The options are numbered by their order, which changes between mimalloc versions: one with
// a different number of options needs the number above checked against its `mimalloc.h`.
const _: () = assert!(libmimalloc_sys::_mi_option_last == ARENA_MAX_OBJECT_SIZE + 2);

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    // SAFETY: setting an option is safe at any time; it applies to allocations from then on.
    unsafe { libmimalloc_sys::mi_option_set(ARENA_MAX_OBJECT_SIZE, OWN_MAPPING_KIB) };
    let cli = Cli::parse();
    match cli.command {
        Command::Kv { target, command } => client_outcome(cli::kv(&target, command).await),
        Command::Cluster { target, command } => {
            client_outcome(cli::cluster(&target, command).await)
        }
        Command::Testbed { command } => client_outcome(testbed::run(command).await),
        Command::Certs { command } => client_outcome(certs::run(command)),
        Command::Token {
            command: TokenCommand::Create(args),
        } => client_outcome(token::create(args)),
        Command::Health {
            url,
            timeout_secs,
            ca_cert,
        } => client_outcome(
            health(
                &url,
                std::time::Duration::from_secs(timeout_secs),
                ca_cert.as_deref(),
            )
            .await,
        ),
        Command::Dev { node, edges } => client_outcome(
            serve("dev", node, |config, tracing| {
                driftkv_node::run_dev(config, edges, tracing, driftkv_node::signal())
            })
            .await,
        ),
        Command::Central { node } => client_outcome(
            serve("central", node, |config, tracing| {
                driftkv_node::run_central(config, tracing, driftkv_node::signal())
            })
            .await,
        ),
        Command::Edge { node } => client_outcome(
            serve("edge", node, |config, tracing| {
                driftkv_node::run_edge(config, tracing, driftkv_node::signal())
            })
            .await,
        ),
    }
}
