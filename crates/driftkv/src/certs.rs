//! `driftkv certs`: the cluster's TLS material and gossip key, made in two commands.
//!
//! ```text
//! driftkv certs init  --dir secrets                                  # ca.pem, ca.key, gossip.key
//! driftkv certs issue --dir secrets --node central --role central --host central.example.com
//! driftkv certs issue --dir secrets --node edge-1 --role edge --host edge-1.example.com
//! ```
//!
//! Every file is written 0600 and never overwritten unless `--force` is given.

use std::path::{Path, PathBuf};

use anyhow::Context as _;
use clap::{Args, Subcommand};
use driftkv_gossip::GossipKey;
use driftkv_tls::issue::{write_private, Authority, NodeRequest};
use driftkv_tls::Role;

/// `driftkv certs ...`
#[derive(Subcommand, Debug)]
pub enum CertsCommand {
    /// Create a cluster CA (ca.pem, ca.key) and a gossip key (gossip.key) in --dir.
    Init {
        /// Where to write them (created if missing).
        #[arg(long, default_value = "driftkv-secrets")]
        dir: PathBuf,
        /// A name for the cluster, in the CA certificate.
        #[arg(long, default_value = "driftkv")]
        name: String,
        /// Replace files that exist.
        #[arg(long)]
        force: bool,
    },
    /// Issue a node certificate signed by the CA in --dir: NODE.pem and NODE.key.
    Issue(IssueArgs),
}

/// `driftkv certs issue`.
#[derive(Args, Debug)]
pub struct IssueArgs {
    /// The directory holding ca.pem and ca.key; the certificate goes there too.
    #[arg(long, default_value = "driftkv-secrets")]
    dir: PathBuf,
    /// The node's name (a DNS name; the file names too).
    #[arg(long)]
    node: String,
    /// What the certificate lets the node be: central, edge, or client (a tool such as
    /// driftkv-bench dialling central).
    #[arg(long)]
    role: Role,
    /// Another host name or IP address the node serves HTTPS as (repeatable).
    #[arg(long = "host")]
    hosts: Vec<String>,
    /// Leave out localhost, 127.0.0.1 and ::1 (in by default: health checks use them).
    #[arg(long)]
    no_loopback: bool,
    /// Days the certificate stays valid.
    #[arg(long, default_value_t = 365)]
    days: u32,
    /// Replace files that exist.
    #[arg(long)]
    force: bool,
}

/// Runs a `certs` command.
pub fn run(command: CertsCommand) -> anyhow::Result<()> {
    match command {
        CertsCommand::Init { dir, name, force } => init(&dir, &name, force),
        CertsCommand::Issue(args) => issue(args),
    }
}

fn create_dir(dir: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
            .with_context(|| format!("cannot restrict {}", dir.display()))?;
    }
    Ok(())
}

fn init(dir: &Path, name: &str, force: bool) -> anyhow::Result<()> {
    create_dir(dir)?;
    let ca = Authority::create(name)?;
    write_private(&dir.join("ca.pem"), ca.cert_pem.as_bytes(), force)?;
    write_private(&dir.join("ca.key"), ca.key_pem.as_bytes(), force)?;
    let key = format!(
        "# driftkv gossip keys: the first seals, any opens (add a new one, put it first\n\
         # everywhere, then remove the old one to rotate)\n{}\n",
        GossipKey::generate().to_base64()
    );
    write_private(&dir.join("gossip.key"), key.as_bytes(), force)?;
    println!(
        "wrote {0}/ca.pem, {0}/ca.key (keep it off the nodes) and {0}/gossip.key",
        dir.display()
    );
    Ok(())
}

fn issue(args: IssueArgs) -> anyhow::Result<()> {
    anyhow::ensure!(
        !args.node.is_empty()
            && args
                .node
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.'),
        "--node {:?} must be a DNS name (letters, digits, '-' and '.')",
        args.node
    );
    let ca = Authority::load(&args.dir.join("ca.pem"), &args.dir.join("ca.key"))
        .context("no CA to sign with: run `driftkv certs init` first, or give --dir")?;
    let issued = ca.issue(&NodeRequest {
        node: args.node.clone(),
        role: args.role,
        hosts: args.hosts,
        loopback: !args.no_loopback,
        days: args.days,
    })?;
    let cert = args.dir.join(format!("{}.pem", args.node));
    let key = args.dir.join(format!("{}.key", args.node));
    write_private(&cert, issued.cert_pem.as_bytes(), args.force)?;
    write_private(&key, issued.key_pem.as_bytes(), args.force)?;
    println!(
        "wrote {} and {} ({} certificate, valid {} days)",
        cert.display(),
        key.display(),
        args.role.name(),
        args.days
    );
    Ok(())
}
