//! `driftkv certs`: the cluster's TLS material and gossip key, made in two commands.
//!
//! ```text
//! driftkv certs init  --dir secrets/ca                               # ca.pem, ca.key, gossip.key
//! driftkv certs issue --dir secrets/ca --node central --role central --host central.example.com \
//!                     --out secrets/central                          # a node's bundle
//! ```
//!
//! A node's bundle is everything it needs and nothing more: `ca.pem`, `node.pem`, `node.key`
//! and `gossip.key` (the CA's key stays where it was made). Keys are written 0600,
//! certificates 0644 (they are public: clients need `ca.pem` to trust the cluster); nothing is
//! overwritten unless `--force` is given. `--owner` hands the files to the user a node runs as
//! (the container image's 10001), for material made as root for a container to read.

use std::path::{Path, PathBuf};

use anyhow::Context as _;
use clap::{Args, Subcommand};
use driftkv_gossip::GossipKey;
use driftkv_tls::issue::{write_private, write_public, Authority, NodeRequest};
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
        #[command(flatten)]
        files: Files,
    },
    /// Issue a node certificate signed by the CA in --dir: NODE.pem and NODE.key there, or a
    /// node's whole bundle in --out.
    Issue(IssueArgs),
}

/// How files are written.
#[derive(Args, Debug)]
pub struct Files {
    /// Replace files that exist.
    #[arg(long)]
    force: bool,
    /// Give the files (and the directories made for them) to this user, `UID[:GID]`.
    #[arg(long, value_parser = parse_owner)]
    owner: Option<(u32, Option<u32>)>,
}

/// `driftkv certs issue`.
#[derive(Args, Debug)]
pub struct IssueArgs {
    /// The directory holding ca.pem and ca.key (and gossip.key).
    #[arg(long, default_value = "driftkv-secrets")]
    dir: PathBuf,
    /// The node's name (a DNS name).
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
    /// Write the node's bundle here (ca.pem, node.pem, node.key, gossip.key) instead of
    /// NODE.pem and NODE.key beside the CA.
    #[arg(long)]
    out: Option<PathBuf>,
    #[command(flatten)]
    files: Files,
}

fn parse_owner(text: &str) -> Result<(u32, Option<u32>), String> {
    let number = |s: &str| {
        s.parse::<u32>()
            .map_err(|_| format!("{text:?} is not UID or UID:GID"))
    };
    match text.split_once(':') {
        Some((uid, gid)) => Ok((number(uid)?, Some(number(gid)?))),
        None => Ok((number(text)?, None)),
    }
}

/// Runs a `certs` command.
pub fn run(command: CertsCommand) -> anyhow::Result<()> {
    match command {
        CertsCommand::Init { dir, name, files } => init(&dir, &name, &files),
        CertsCommand::Issue(args) => issue(args),
    }
}

impl Files {
    /// Makes `dir` (0700) if missing.
    fn dir(&self, dir: &Path) -> anyhow::Result<()> {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
                .with_context(|| format!("cannot restrict {}", dir.display()))?;
        }
        self.own(dir)
    }

    fn private(&self, path: &Path, contents: &[u8]) -> anyhow::Result<()> {
        write_private(path, contents, self.force)?;
        self.own(path)
    }

    fn public(&self, path: &Path, contents: &[u8]) -> anyhow::Result<()> {
        write_public(path, contents, self.force)?;
        self.own(path)
    }

    fn own(&self, path: &Path) -> anyhow::Result<()> {
        #[cfg(unix)]
        if let Some((uid, gid)) = self.owner {
            std::os::unix::fs::chown(path, Some(uid), gid)
                .with_context(|| format!("cannot give {} to {uid}", path.display()))?;
        }
        Ok(())
    }
}

fn init(dir: &Path, name: &str, files: &Files) -> anyhow::Result<()> {
    files.dir(dir)?;
    let ca = Authority::create(name)?;
    files.public(&dir.join("ca.pem"), ca.cert_pem.as_bytes())?;
    files.private(&dir.join("ca.key"), ca.key_pem.as_bytes())?;
    let key = format!(
        "# driftkv gossip keys: the first seals, any opens (add a new one, put it first\n\
         # everywhere, then remove the old one to rotate)\n{}\n",
        GossipKey::generate().to_base64()
    );
    files.private(&dir.join("gossip.key"), key.as_bytes())?;
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
    let files = &args.files;
    let (cert, key) = match &args.out {
        None => (
            args.dir.join(format!("{}.pem", args.node)),
            args.dir.join(format!("{}.key", args.node)),
        ),
        Some(out) => {
            files.dir(out)?;
            files.public(&out.join("ca.pem"), ca.cert_pem.as_bytes())?;
            let gossip = args.dir.join("gossip.key");
            let gossip = std::fs::read(&gossip)
                .with_context(|| format!("cannot read {}", gossip.display()))?;
            files.private(&out.join("gossip.key"), &gossip)?;
            (out.join("node.pem"), out.join("node.key"))
        }
    };
    files.public(&cert, issued.cert_pem.as_bytes())?;
    files.private(&key, issued.key_pem.as_bytes())?;
    println!(
        "wrote {} and {} ({} certificate for {}, valid {} days)",
        cert.display(),
        key.display(),
        args.role.name(),
        args.node,
        args.days
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn owners_parse_as_uid_or_uid_and_gid() {
        assert_eq!(parse_owner("10001"), Ok((10001, None)));
        assert_eq!(parse_owner("10001:20"), Ok((10001, Some(20))));
        assert!(parse_owner("app").is_err());
        assert!(parse_owner("1:x").is_err());
    }

    #[test]
    fn a_bundle_holds_what_a_node_needs_and_not_the_ca_key() {
        let dir = tempfile::tempdir().unwrap();
        let ca = dir.path().join("ca");
        let keep = Files {
            force: false,
            owner: None,
        };
        init(&ca, "t", &keep).unwrap();
        let out = dir.path().join("edge-1");
        issue(IssueArgs {
            dir: ca.clone(),
            node: "edge-1".into(),
            role: Role::Edge,
            hosts: vec!["edge-1.example.com".into()],
            no_loopback: false,
            days: 30,
            out: Some(out.clone()),
            files: keep,
        })
        .unwrap();
        let mut names: Vec<String> = std::fs::read_dir(&out)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        assert_eq!(names, ["ca.pem", "gossip.key", "node.key", "node.pem"]);
        driftkv_tls::ClusterIdentity::load(
            &out.join("ca.pem"),
            &out.join("node.pem"),
            &out.join("node.key"),
            Role::Edge,
        )
        .unwrap();
        assert_eq!(
            GossipKey::load_file(&out.join("gossip.key")).unwrap(),
            GossipKey::load_file(&ca.join("gossip.key")).unwrap()
        );
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            let mode = |name: &str| {
                std::fs::metadata(out.join(name))
                    .unwrap()
                    .permissions()
                    .mode()
                    & 0o777
            };
            assert_eq!(
                (mode("node.key"), mode("gossip.key"), mode("node.pem")),
                (0o600, 0o600, 0o644)
            );
        }
    }
}
