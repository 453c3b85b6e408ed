//! The client commands: `driftkv kv ...` shaped like wrangler's, plus namespace export and
//! import, and `driftkv cluster status`. They talk to any driftkv edge (or Cloudflare's API)
//! through `driftkv-client`.

use std::io::{IsTerminal as _, Write as _};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context as _};
use clap::{Args, Subcommand};
use driftkv_client::export;
use driftkv_client::{
    BulkItem, BulkReport, Client, ClientOptions, Progress, PutOptions, RetryPolicy,
};
use figment::providers::{Format as _, Toml};
use indicatif::{ProgressBar, ProgressStyle};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

/// The dev server, when nothing else is configured.
const DEFAULT_URL: &str = "http://127.0.0.1:8787";
/// How long a request is retried when nothing else is configured.
const DEFAULT_RETRY_SECS: u64 = 30;

/// Where the commands send their requests, and how they print.
#[derive(Args, Clone, Debug)]
pub struct Target {
    /// The edge (or API) to talk to [env: DRIFTKV_URL; then `url` in
    /// ~/.config/driftkv/config.toml; default http://127.0.0.1:8787].
    #[arg(long, global = true)]
    url: Option<String>,
    /// Bearer token [env: DRIFTKV_API_TOKEN; then `token` in the config file].
    #[arg(long, global = true)]
    token: Option<String>,
    /// Account id [env: DRIFTKV_ACCOUNT_ID; then `account_id` in the config file; default
    /// "dev"].
    #[arg(long, global = true)]
    account_id: Option<String>,
    /// A CA certificate (PEM) to trust for https:// URLs besides the system's, such as the
    /// cluster CA `driftkv certs init` made [env: DRIFTKV_CA_CERT; then `ca_cert` in the config
    /// file].
    #[arg(long, global = true)]
    ca_cert: Option<PathBuf>,
    /// Seconds to keep retrying a request that is rate limited (429), fails on the server's
    /// side (5xx) or gets no answer, with backoff and jitter, honouring Retry-After; 0 turns
    /// retries off [env: DRIFTKV_RETRY_SECS; then `retry_secs` in the config file; default 30].
    #[arg(long, global = true)]
    retry_secs: Option<u64>,
    /// Print JSON for scripts.
    #[arg(long, global = true)]
    json: bool,
}

/// `~/.config/driftkv/config.toml`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileSettings {
    url: Option<String>,
    token: Option<String>,
    account_id: Option<String>,
    retry_secs: Option<u64>,
    ca_cert: Option<PathBuf>,
}

fn config_file() -> Option<PathBuf> {
    let base = std::env::var_os("XDG_CONFIG_HOME")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|home| Path::new(&home).join(".config")))?;
    Some(base.join("driftkv").join("config.toml"))
}

/// Where to send requests, resolved from every layer.
pub struct Resolved {
    /// The endpoint.
    pub url: String,
    /// Bearer token, if any.
    pub token: Option<String>,
    /// Account id.
    pub account: String,
    /// How long one request is retried.
    pub retry: Duration,
    /// A CA certificate to trust, PEM.
    pub ca_pem: Option<Vec<u8>>,
}

impl Resolved {
    /// A client for the same account, token, CA and retries at another edge.
    pub fn client_at(&self, url: &str) -> anyhow::Result<Client> {
        let retry = RetryPolicy {
            give_up_after: self.retry,
            ..RetryPolicy::default()
        };
        let options = ClientOptions {
            token: self.token.clone(),
            ca_pem: self.ca_pem.clone(),
        };
        Ok(Client::with_options(url, &self.account, options)?.with_retry(retry))
    }
}

/// A CA certificate file for reqwest.
pub fn ca_certificate(path: &Path) -> anyhow::Result<reqwest::Certificate> {
    let pem = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    reqwest::Certificate::from_pem(&pem)
        .with_context(|| format!("{} is not a PEM certificate", path.display()))
}

impl Target {
    /// A client for the resolved target.
    fn client(&self) -> anyhow::Result<Client> {
        let resolved = self.resolve()?;
        resolved.client_at(&resolved.url)
    }

    /// Flags, then environment, then the config file, then defaults.
    pub fn resolve(&self) -> anyhow::Result<Resolved> {
        let file = match config_file().filter(|p| p.exists()) {
            Some(path) => {
                let text = std::fs::read_to_string(&path)
                    .with_context(|| format!("cannot read {}", path.display()))?;
                figment::Figment::from(Toml::string(&text))
                    .extract::<FileSettings>()
                    .with_context(|| format!("{} is not a valid config", path.display()))?
            }
            None => FileSettings::default(),
        };
        let env = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
        let url = self
            .url
            .clone()
            .or_else(|| env("DRIFTKV_URL"))
            .or(file.url)
            .unwrap_or_else(|| DEFAULT_URL.to_owned());
        let token = self
            .token
            .clone()
            .or_else(|| env("DRIFTKV_API_TOKEN"))
            .or(file.token);
        let account = self
            .account_id
            .clone()
            .or_else(|| env("DRIFTKV_ACCOUNT_ID"))
            .or(file.account_id)
            .unwrap_or_else(|| driftkv_client::DEFAULT_ACCOUNT.to_owned());
        let retry_secs = match self.retry_secs {
            Some(secs) => secs,
            None => match env("DRIFTKV_RETRY_SECS") {
                Some(text) => text.parse().with_context(|| {
                    format!("DRIFTKV_RETRY_SECS={text:?} is not a number of seconds")
                })?,
                None => file.retry_secs.unwrap_or(DEFAULT_RETRY_SECS),
            },
        };
        let ca_cert = self
            .ca_cert
            .clone()
            .or_else(|| env("DRIFTKV_CA_CERT").map(PathBuf::from))
            .or(file.ca_cert);
        let ca_pem = ca_cert
            .map(|path| {
                ca_certificate(&path)?;
                std::fs::read(&path).with_context(|| format!("cannot read {}", path.display()))
            })
            .transpose()?;
        Ok(Resolved {
            url,
            token,
            account,
            retry: Duration::from_secs(retry_secs),
            ca_pem,
        })
    }
}

/// `driftkv kv ...`
#[derive(Subcommand, Debug)]
pub enum Kv {
    /// Namespaces: create, list, rename, delete, export, import.
    #[command(subcommand)]
    Namespace(NamespaceCommand),
    /// Single keys: put, get, list, delete.
    #[command(subcommand)]
    Key(KeyCommand),
    /// Many keys from a JSON file in wrangler's format.
    #[command(subcommand)]
    Bulk(BulkCommand),
}

#[derive(Args, Debug)]
pub struct NamespaceId {
    /// The namespace's id (32 hex characters).
    #[arg(long)]
    namespace_id: String,
}

#[derive(Subcommand, Debug)]
pub enum NamespaceCommand {
    /// Create a namespace.
    Create { title: String },
    /// List the account's namespaces (a JSON array).
    List,
    /// Give a namespace a new title.
    Rename {
        #[command(flatten)]
        id: NamespaceId,
        /// The new title.
        title: String,
    },
    /// Delete a namespace and all its keys.
    Delete {
        #[command(flatten)]
        id: NamespaceId,
    },
    /// Write every key of a namespace (value, metadata, expiration) to FILE, one JSON object
    /// per line, streaming.
    Export {
        #[command(flatten)]
        id: NamespaceId,
        file: PathBuf,
    },
    /// Load an export FILE into the namespace --namespace-id, or into a new namespace with the
    /// exported title.
    Import {
        /// Target namespace [default: a new namespace with the exported title].
        #[arg(long)]
        namespace_id: Option<String>,
        file: PathBuf,
    },
}

#[derive(Subcommand, Debug)]
pub enum KeyCommand {
    /// Write a value, given inline or read from --path.
    Put {
        key: String,
        /// The value (or use --path).
        value: Option<String>,
        #[command(flatten)]
        id: NamespaceId,
        /// Read the value from this file (binary-safe).
        #[arg(long, conflicts_with = "value")]
        path: Option<PathBuf>,
        /// Expire after this many seconds (at least 60).
        #[arg(long)]
        ttl: Option<u64>,
        /// Expire at this unix time (seconds, at least 60 s ahead).
        #[arg(long)]
        expiration: Option<u64>,
        /// JSON metadata to store with the value.
        #[arg(long)]
        metadata: Option<String>,
    },
    /// Read a value: raw bytes to stdout, or to --path.
    Get {
        key: String,
        #[command(flatten)]
        id: NamespaceId,
        /// Decode the value as UTF-8 text and end it with a newline.
        #[arg(long)]
        text: bool,
        /// Write the value to this file instead of stdout.
        #[arg(long)]
        path: Option<PathBuf>,
    },
    /// List keys (a JSON array, every page followed).
    List {
        #[command(flatten)]
        id: NamespaceId,
        /// Only keys starting with this.
        #[arg(long)]
        prefix: Option<String>,
    },
    /// Delete a key (succeeds whether or not it exists).
    Delete {
        key: String,
        #[command(flatten)]
        id: NamespaceId,
    },
}

#[derive(Subcommand, Debug)]
pub enum BulkCommand {
    /// Write the items of FILE: a JSON array of {key, value, base64?, expiration?,
    /// expiration_ttl?, metadata?}.
    Put {
        file: PathBuf,
        #[command(flatten)]
        id: NamespaceId,
    },
    /// Delete the keys of FILE: a JSON array of key strings.
    Delete {
        file: PathBuf,
        #[command(flatten)]
        id: NamespaceId,
    },
    /// Read the keys of FILE (a JSON array of key strings): prints {key: {value, metadata}}.
    Get {
        file: PathBuf,
        #[command(flatten)]
        id: NamespaceId,
    },
}

/// `driftkv cluster ...`
#[derive(Subcommand, Debug)]
pub enum ClusterCommand {
    /// Members, roles, regions, liveness and replication lag, as a table (--json for scripts).
    Status,
}

/// A progress bar on a terminal, nothing when piped.
#[derive(Clone)]
pub struct Bar(ProgressBar);

impl Bar {
    /// A bar for `total` items (a spinner when unknown), labelled `what`.
    pub fn new(total: Option<u64>, what: &str) -> Self {
        if !std::io::stderr().is_terminal() {
            return Bar(ProgressBar::hidden());
        }
        let bar = match total {
            Some(total) => ProgressBar::new(total),
            None => ProgressBar::new_spinner(),
        };
        let template = if total.is_some() {
            "{msg} [{bar:40}] {pos}/{len} ({per_sec}, {eta} left)"
        } else {
            "{msg} {spinner} {pos} ({per_sec})"
        };
        bar.set_style(
            ProgressStyle::with_template(template)
                .expect("a valid template")
                .progress_chars("=> "),
        );
        bar.set_message(what.to_owned());
        bar.enable_steady_tick(Duration::from_millis(200));
        Bar(bar)
    }
}

impl Progress for Bar {
    fn advance(&self, items: u64) {
        self.0.inc(items);
    }
}

impl Drop for Bar {
    fn drop(&mut self) {
        self.0.finish_and_clear();
    }
}

fn print_json(value: &impl Serialize) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(value)?);
    Ok(())
}

/// Reports a bulk operation; an error when some keys still failed.
fn finish_bulk(report: &BulkReport, verb: &str, json: bool) -> anyhow::Result<()> {
    if json {
        print_json(&json!({
            "succeeded": report.succeeded,
            "failed_keys": report.failed_keys,
            "retries": report.retries,
        }))?;
    } else if report.failed_keys.is_empty() {
        eprintln!("{verb} {} keys", report.succeeded);
    }
    bulk_failures(report)
}

/// An error naming the keys a bulk operation could not do, if any.
fn bulk_failures(report: &BulkReport) -> anyhow::Result<()> {
    if !report.failed_keys.is_empty() {
        let shown: Vec<&str> = report
            .failed_keys
            .iter()
            .take(10)
            .map(String::as_str)
            .collect();
        bail!(
            "{} keys failed after retries ({}), {} succeeded; failed: {}{}",
            report.failed_keys.len(),
            report.last_error.as_deref().unwrap_or("unknown error"),
            report.succeeded,
            shown.join(", "),
            if report.failed_keys.len() > shown.len() {
                ", ..."
            } else {
                ""
            }
        );
    }
    Ok(())
}

fn read_json_file<T: serde::de::DeserializeOwned>(path: &Path, shape: &str) -> anyhow::Result<T> {
    let file =
        std::fs::File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    serde_json::from_reader(std::io::BufReader::new(file))
        .with_context(|| format!("{} is not {shape}", path.display()))
}

/// Runs `driftkv kv ...`.
pub async fn kv(target: &Target, command: Kv) -> anyhow::Result<()> {
    let client = target.client()?;
    match command {
        Kv::Namespace(command) => namespace(&client, target.json, command).await,
        Kv::Key(command) => key(&client, target.json, command).await,
        Kv::Bulk(command) => bulk(&client, target.json, command).await,
    }
}

async fn namespace(client: &Client, json: bool, command: NamespaceCommand) -> anyhow::Result<()> {
    match command {
        NamespaceCommand::Create { title } => {
            let ns = client.create_namespace(&title).await?;
            if json {
                print_json(&ns)
            } else {
                println!("Created namespace \"{}\" with id {}", ns.title, ns.id);
                Ok(())
            }
        }
        NamespaceCommand::List => print_json(&client.list_namespaces().await?),
        NamespaceCommand::Rename { id, title } => {
            let ns = client.rename_namespace(&id.namespace_id, &title).await?;
            if json {
                print_json(&ns)
            } else {
                println!("Renamed namespace {} to \"{}\"", ns.id, ns.title);
                Ok(())
            }
        }
        NamespaceCommand::Delete { id } => {
            client.delete_namespace(&id.namespace_id).await?;
            if json {
                print_json(&json!({ "deleted": id.namespace_id }))
            } else {
                println!("Deleted namespace {}", id.namespace_id);
                Ok(())
            }
        }
        NamespaceCommand::Export { id, file } => {
            export(client, &id.namespace_id, &file, json).await
        }
        NamespaceCommand::Import { namespace_id, file } => {
            import(client, namespace_id, &file, json).await
        }
    }
}

async fn key(client: &Client, json: bool, command: KeyCommand) -> anyhow::Result<()> {
    match command {
        KeyCommand::Put {
            key,
            value,
            id,
            path,
            ttl,
            expiration,
            metadata,
        } => {
            let value: Vec<u8> = match (value, path) {
                (Some(value), None) => value.into_bytes(),
                (None, Some(path)) => std::fs::read(&path)
                    .with_context(|| format!("cannot read {}", path.display()))?,
                _ => bail!("give the value, or --path FILE"),
            };
            let metadata = metadata
                .map(|m| serde_json::from_str::<Value>(&m))
                .transpose()
                .context("--metadata is not JSON")?;
            let options = PutOptions {
                expiration,
                expiration_ttl: ttl,
                metadata,
            };
            client.put(&id.namespace_id, &key, value, &options).await?;
            if json {
                print_json(&json!({ "written": key }))
            } else {
                eprintln!("Wrote \"{key}\"");
                Ok(())
            }
        }
        KeyCommand::Get {
            key,
            id,
            text,
            path,
        } => {
            let Some(value) = client.get(&id.namespace_id, &key).await? else {
                bail!("key \"{key}\" not found (code 10009, HTTP 404)");
            };
            match path {
                Some(path) => std::fs::write(&path, &value)
                    .with_context(|| format!("cannot write {}", path.display()))?,
                None if text => println!("{}", String::from_utf8_lossy(&value)),
                None => {
                    let mut out = std::io::stdout().lock();
                    out.write_all(&value)?;
                    out.flush()?;
                }
            }
            Ok(())
        }
        KeyCommand::List { id, prefix } => {
            print_json(&client.all_keys(&id.namespace_id, prefix.as_deref()).await?)
        }
        KeyCommand::Delete { key, id } => {
            client.delete(&id.namespace_id, &key).await?;
            if json {
                print_json(&json!({ "deleted": key }))
            } else {
                eprintln!("Deleted \"{key}\"");
                Ok(())
            }
        }
    }
}

async fn bulk(client: &Client, json: bool, command: BulkCommand) -> anyhow::Result<()> {
    match command {
        BulkCommand::Put { file, id } => {
            let items: Vec<BulkItem> = read_json_file(
                &file,
                "a JSON array of {key, value, base64?, expiration?, expiration_ttl?, metadata?}",
            )?;
            let bar = Bar::new(Some(items.len() as u64), "writing");
            let report = client.bulk_put_all(&id.namespace_id, items, &bar).await?;
            drop(bar);
            finish_bulk(&report, "Wrote", json)
        }
        BulkCommand::Delete { file, id } => {
            let keys: Vec<String> = read_json_file(&file, "a JSON array of key strings")?;
            let bar = Bar::new(Some(keys.len() as u64), "deleting");
            let report = client.bulk_delete_all(&id.namespace_id, keys, &bar).await?;
            drop(bar);
            finish_bulk(&report, "Deleted", json)
        }
        BulkCommand::Get { file, id } => {
            let keys: Vec<String> = read_json_file(&file, "a JSON array of key strings")?;
            let mut found = serde_json::Map::new();
            for chunk in keys.chunks(driftkv_client::MAX_BULK_GET_KEYS) {
                for (key, value) in client.bulk_get(&id.namespace_id, chunk).await? {
                    found.insert(key, serde_json::to_value(value)?);
                }
            }
            print_json(&found)
        }
    }
}

/// `driftkv kv export`: the namespace to `path`, in [`driftkv_client::export`]'s format.
async fn export(
    client: &Client,
    namespace_id: &str,
    path: &Path,
    json: bool,
) -> anyhow::Result<()> {
    let file =
        std::fs::File::create(path).with_context(|| format!("cannot create {}", path.display()))?;
    let mut out = std::io::BufWriter::new(file);
    let bar = Bar::new(None, "exporting");
    let done = export::export(client, namespace_id, &mut out, &bar)
        .await
        .with_context(|| format!("exporting to {}", path.display()))?;
    drop(bar);
    if json {
        print_json(&json!({ "exported": done.exported, "vanished": done.vanished }))
    } else {
        eprintln!("Exported {} keys to {}", done.exported, path.display());
        Ok(())
    }
}

/// `driftkv kv import`: an export from `path`, into `namespace_id` or a new namespace.
async fn import(
    client: &Client,
    namespace_id: Option<String>,
    path: &Path,
    json: bool,
) -> anyhow::Result<()> {
    let file =
        std::fs::File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs();
    let bar = Bar::new(None, "importing");
    let imported = export::import(
        client,
        namespace_id,
        std::io::BufReader::new(file),
        now,
        &bar,
    )
    .await
    .with_context(|| format!("importing {}", path.display()))?;
    drop(bar);
    let (report, skipped) = (&imported.report, imported.skipped_expiring);
    if json {
        print_json(&json!({
            "namespace_id": imported.namespace_id,
            "imported": report.succeeded,
            "skipped_expiring": skipped,
            "failed_keys": report.failed_keys,
            "retries": report.retries,
        }))?;
    } else if report.failed_keys.is_empty() {
        eprintln!(
            "Imported {} keys into namespace {}{}",
            report.succeeded,
            imported.namespace_id,
            if skipped > 0 {
                format!(" ({skipped} skipped: expiring within 60 s)")
            } else {
                String::new()
            }
        );
    }
    bulk_failures(report)
}

/// Runs `driftkv cluster status`.
pub async fn cluster(target: &Target, command: ClusterCommand) -> anyhow::Result<()> {
    match command {
        ClusterCommand::Status => {
            let view = target.client()?.cluster().await?;
            if target.json {
                return print_json(&view);
            }
            println!(
                "{:<8} {:<8} {:<12} {:<8} {:>12} {:>10} {:>10}  ADDRESS",
                "NODE", "ROLE", "REGION", "STATUS", "APPLIED", "LAG", "LAG MS"
            );
            let dash = || "-".to_owned();
            for m in &view.members {
                // An edge's API (and workerd binding, when it serves one); central's gRPC.
                let address = match (&m.http, &m.workerd, &m.grpc) {
                    (Some(http), Some(workerd), _) => format!("{http} (workerd {workerd})"),
                    (Some(http), None, _) => http.clone(),
                    (None, _, Some(grpc)) => grpc.clone(),
                    _ => dash(),
                };
                println!(
                    "{:<8} {:<8} {:<12} {:<8} {:>12} {:>10} {:>10}  {address}",
                    m.node_id,
                    m.role.map_or_else(dash, |r| r.to_string()),
                    m.region.clone().unwrap_or_else(dash),
                    m.status,
                    m.applied_sequence.map_or_else(dash, |v| v.to_string()),
                    m.lag_entries.map_or_else(dash, |v| v.to_string()),
                    m.lag_ms.map_or_else(dash, |v| v.to_string()),
                );
            }
            println!(
                "central durable sequence: {}",
                view.central_durable_sequence
                    .map_or_else(|| "unknown".to_owned(), |v| v.to_string())
            );
            Ok(())
        }
    }
}
