//! Node configuration: built-in defaults, then a TOML file, then `DRIFTKV_*` environment
//! variables, then command-line flags, each overriding the one before.
//!
//! One file format serves every role (`central`, `edge`, `dev`); a role ignores the sections
//! it has no use for. Nested fields are set from the environment with a double underscore:
//! `DRIFTKV_CACHE__MIN_TTL_SECS=1` sets `cache.min_ttl_secs`.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::Context as _;
use figment::providers::{Env, Format, Serialized, Toml};
use figment::Figment;
use serde::{Deserialize, Serialize};

/// Configuration of one node.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// This node's id, unique in the cluster; the tie-breaker of write versions. Not 0.
    pub node_id: u64,
    /// The region this node serves, shown in gossip and `/cluster`.
    pub region: String,
    /// Where data lives.
    pub data_dir: PathBuf,
    /// HTTP listen address (edges and dev): the REST API, `/healthz`, `/cluster`.
    pub listen: SocketAddr,
    /// Host name or IP other nodes reach this node at, used in the addresses it gossips.
    /// Empty: the listen IP (127.0.0.1 when listening on all interfaces).
    pub advertise_host: String,
    /// API tokens accepted as `Authorization: Bearer <token>` (`DRIFTKV_API_TOKENS`, comma
    /// separated), each allowed everything in every account. Required (or `api_tokens_file`)
    /// when `listen` is not a loopback address.
    pub api_tokens: Vec<String>,
    /// A file of scoped tokens (`driftkv token create` prints entries for it: a token's
    /// SHA-256, its accounts, read or edit) or of plain tokens, one per line; reloaded on
    /// SIGHUP and when it changes. Empty: none.
    pub api_tokens_file: PathBuf,
    /// How often expired records are swept from storage, in milliseconds.
    pub sweep_interval_ms: u64,
    pub grpc: GrpcConfig,
    pub central: CentralConfig,
    pub gossip: GossipConfig,
    pub cache: CacheConfig,
    pub replication: ReplicationConfig,
    pub rate_limit: RateLimitConfig,
    pub testbed: TestbedConfig,
    pub log: LogConfig,
    pub tls: TlsConfig,
    pub https: HttpsConfig,
    pub http: HttpConfig,
    pub limits: LimitsConfig,
    pub workerd: WorkerdConfig,
    pub storage: StorageConfig,
}

/// Where a node keeps its data.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StorageConfig {
    /// The storage engine: `fjall` (the default) or `sled`. A data directory stays with the
    /// engine that created it; a node refuses to open another engine's database.
    pub engine: StorageEngine,
    /// Writes are refused (507, code 10054) while the data directory's filesystem has fewer
    /// free bytes than this, so that the engine never meets a full disk in the middle of a
    /// write; they resume once space is freed. 0 turns the check off.
    pub min_free_bytes: u64,
    /// How often the storage health probe writes and syncs a canary record, in milliseconds.
    pub probe_interval_ms: u64,
    /// How long a tombstone (a deleted or expired key) is kept at least, in seconds, once
    /// every edge has applied past it; then garbage collection purges it (see docs/gc.md).
    pub tombstone_grace_secs: u64,
    /// How often garbage collection runs, in milliseconds.
    pub gc_interval_ms: u64,
}

/// The storage engines a node can run on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StorageEngine {
    Sled,
    Fjall,
}

impl From<StorageEngine> for driftkv_store::EngineKind {
    fn from(engine: StorageEngine) -> Self {
        match engine {
            StorageEngine::Sled => driftkv_store::EngineKind::Sled,
            StorageEngine::Fjall => driftkv_store::EngineKind::Fjall,
        }
    }
}

/// The write region's gRPC endpoint.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GrpcConfig {
    /// Where central listens for edges.
    pub listen: SocketAddr,
    /// Most snapshots central streams at once (each a full copy of every account).
    pub max_snapshot_streams: usize,
}

/// Mutual TLS between nodes (gRPC): the cluster CA and this node's certificate and key, PEM
/// files made by `driftkv certs`. Empty: plain text, allowed only on loopback.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// The cluster CA certificate.
    pub ca: PathBuf,
    /// This node's certificate (its role must be the node's: central or edge).
    pub cert: PathBuf,
    /// This node's private key.
    pub key: PathBuf,
}

impl TlsConfig {
    /// Whether any of the files is set.
    pub fn configured(&self) -> bool {
        [&self.ca, &self.cert, &self.key]
            .iter()
            .any(|p| !p.as_os_str().is_empty())
    }
}

/// Quotas, as Cloudflare's account limits.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitsConfig {
    /// Most namespaces one account may have (Workers KV's default: 1,000).
    pub namespaces_per_account: usize,
    /// Most live keys one namespace may hold; 0 (the default) for no limit, as Workers KV.
    /// Enforced by the write region; deleted and expired keys free room within 10 s.
    pub keys_per_namespace: u64,
}

/// How the HTTP listeners (REST API, workerd binding) treat connections and requests, so that
/// slow or greedy clients cannot hold a node.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpConfig {
    /// Longest a client may take to send a request's headers (and a TLS handshake), in ms.
    pub header_read_timeout_ms: u64,
    /// A connection that carries nothing for this long is closed, in ms.
    pub idle_timeout_ms: u64,
    /// Most connections open at once per listener; more are answered 503 and closed.
    pub max_connections: usize,
    /// Most requests in flight at once per listener; more are answered 503 with Retry-After.
    pub max_in_flight: usize,
    /// Longest a request may take, its body included, in ms; past it the answer is 408.
    pub request_timeout_ms: u64,
    /// Slowest a request body may arrive once `header_read_timeout_ms` has passed, in bytes a
    /// second on average; slower is answered 408. 0 turns the floor off.
    pub min_body_rate_bytes_per_sec: u64,
}

/// HTTPS for the node's HTTP listener (the REST API, `/cluster`, `/metrics`): a certificate
/// chain and key, PEM, reloaded on SIGHUP or when the files change. Empty: plain HTTP, allowed
/// only on loopback.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpsConfig {
    /// The certificate chain.
    pub cert: PathBuf,
    /// Its private key.
    pub key: PathBuf,
}

/// Membership gossip (chitchat, UDP).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GossipConfig {
    /// UDP address gossip listens on; port 0 picks a free port.
    pub listen: SocketAddr,
    /// `host:port` of nodes to contact first; names are resolved (and re-resolved).
    pub seeds: Vec<String>,
    /// Nodes only gossip with nodes of the same cluster id.
    pub cluster_id: String,
    /// Time between gossip rounds, in milliseconds.
    pub interval_ms: u64,
    /// How long a dead node stays listed in /cluster, in seconds.
    pub dead_node_grace_secs: u64,
    /// A file of cluster keys (base64, one per line, the first sealing) that authenticate and
    /// encrypt every gossip packet. Empty: plain UDP, allowed only on loopback.
    pub keys_file: PathBuf,
}

/// How an edge reaches central.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CentralConfig {
    /// Central's gRPC address, `http://host:port`. Empty: learn it through gossip.
    pub address: String,
    /// Longest wait for central to answer a write or a read-through, in milliseconds; a write
    /// that takes longer fails with 503.
    pub request_timeout_ms: u64,
    /// Longest wait to connect to central, in milliseconds.
    pub connect_timeout_ms: u64,
}

/// An edge's read cache.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CacheConfig {
    /// Upper bound of cached keys and values, in bytes.
    pub max_bytes: u64,
    /// Smallest `cache_ttl` a read may ask for, in seconds (Workers KV: 30 since January
    /// 2026, 60 before).
    pub min_ttl_secs: u64,
    /// TTL of reads that ask for none, in seconds (Workers KV: 60).
    pub default_ttl_secs: u64,
    /// Largest `cache_ttl` a read gets, in seconds: longer ones are cut to it, so that no
    /// client pins a stale value (or "not found") at the edge for everyone for longer.
    pub max_ttl_secs: u64,
    /// Drop cached results when replication changes their key (not Workers KV behaviour;
    /// for experiments).
    pub invalidate_on_replication: bool,
}

/// The replication log and stream.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReplicationConfig {
    /// Log entries central keeps; an edge further behind rebuilds from a snapshot.
    pub log_retention_entries: u64,
    /// Central drops log entries written longer ago than this, in seconds (the newest entry
    /// always stays); 0 keeps them whatever their age.
    pub log_retention_secs: u64,
    /// How often central trims its log to the retention, in milliseconds.
    pub trim_interval_ms: u64,
    /// How often central tells an idle subscriber it is alive, in milliseconds.
    pub heartbeat_ms: u64,
    /// How long an edge waits on a silent stream before reconnecting, in milliseconds; keep it
    /// several times central's `heartbeat_ms`.
    pub stream_silence_ms: u64,
}

/// Central's per-key write rate limit.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimitConfig {
    /// Writes per second allowed to one key (Workers KV: 1); 0 turns the limit off.
    pub writes_per_key_per_second: u32,
}

/// The consistency testbed's fault injection, off unless asked for.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TestbedConfig {
    /// Serve the admin endpoint that injects faults (`/admin/testbed/...`).
    pub enabled: bool,
    /// The bearer token the admin endpoint requires; must be set when `enabled`.
    pub admin_token: String,
}

/// What a node logs besides its lifecycle (at the level `RUST_LOG` sets, INFO by default).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogConfig {
    /// Log every HTTP request (method, path, status, latency) at INFO under the target
    /// `driftkv::access`. Off by default: a line per request costs more than serving a
    /// cached read.
    pub access: bool,
}

/// An edge's workerd KV binding listener: the protocol workerd's `KVNamespace` binding
/// speaks, so that Workers on self-hosted workerd can bind KV to the edge.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WorkerdConfig {
    /// Where the listener listens; `None` (an empty string in the file) turns it off. A
    /// non-loopback address requires `api_tokens`.
    #[serde(with = "optional_addr")]
    pub listen: Option<SocketAddr>,
}

/// An optional socket address written as a string, empty for none (TOML has no null).
mod optional_addr {
    use std::net::SocketAddr;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(addr: &Option<SocketAddr>, s: S) -> Result<S::Ok, S::Error> {
        match addr {
            Some(addr) => s.collect_str(addr),
            None => s.serialize_str(""),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<SocketAddr>, D::Error> {
        let text = String::deserialize(d)?;
        match text.trim() {
            "" => Ok(None),
            addr => addr.parse().map(Some).map_err(|e| {
                serde::de::Error::custom(format!(
                    "{addr:?} is not a socket address (like 127.0.0.1:8786), nor empty: {e}"
                ))
            }),
        }
    }
}

impl Default for Config {
    fn default() -> Self {
        Config {
            node_id: 1,
            region: "local".into(),
            data_dir: PathBuf::from(".driftkv"),
            listen: SocketAddr::from(([127, 0, 0, 1], 8787)),
            advertise_host: String::new(),
            api_tokens: Vec::new(),
            api_tokens_file: PathBuf::new(),
            sweep_interval_ms: 1000,
            grpc: GrpcConfig {
                listen: SocketAddr::from(([127, 0, 0, 1], 7070)),
                max_snapshot_streams: 2,
            },
            central: CentralConfig {
                address: String::new(),
                request_timeout_ms: 2000,
                connect_timeout_ms: 1000,
            },
            gossip: GossipConfig {
                listen: SocketAddr::from(([127, 0, 0, 1], 7946)),
                seeds: Vec::new(),
                cluster_id: "driftkv".into(),
                interval_ms: 500,
                dead_node_grace_secs: 3600,
                keys_file: PathBuf::new(),
            },
            cache: CacheConfig {
                max_bytes: 256 * 1024 * 1024,
                min_ttl_secs: 30,
                default_ttl_secs: 60,
                max_ttl_secs: 86_400,
                invalidate_on_replication: false,
            },
            replication: ReplicationConfig {
                log_retention_entries: 1_000_000,
                log_retention_secs: 604_800,
                trim_interval_ms: 10_000,
                heartbeat_ms: 1000,
                stream_silence_ms: 5000,
            },
            rate_limit: RateLimitConfig {
                writes_per_key_per_second: 1,
            },
            testbed: TestbedConfig {
                enabled: false,
                admin_token: String::new(),
            },
            log: LogConfig { access: false },
            tls: TlsConfig::default(),
            https: HttpsConfig::default(),
            limits: LimitsConfig {
                namespaces_per_account: 1000,
                keys_per_namespace: 0,
            },
            http: HttpConfig {
                header_read_timeout_ms: 10_000,
                idle_timeout_ms: 60_000,
                max_connections: 4096,
                max_in_flight: 1024,
                request_timeout_ms: 300_000,
                min_body_rate_bytes_per_sec: 1024,
            },
            workerd: WorkerdConfig {
                listen: Some(SocketAddr::from(([127, 0, 0, 1], 8786))),
            },
            storage: StorageConfig {
                engine: StorageEngine::Fjall,
                min_free_bytes: 256 * 1024 * 1024,
                probe_interval_ms: 10_000,
                tombstone_grace_secs: 86_400,
                gc_interval_ms: 60_000,
            },
        }
    }
}

/// The top-level fields and sections settable from the environment; other `DRIFTKV_*`
/// variables (the log format, client settings, test switches) belong to other parts and must
/// not fail the load. `api_tokens` is read separately: its variable is a comma-separated list.
const ENV_KEYS: [&str; 21] = [
    "node_id",
    "region",
    "advertise_host",
    "api_tokens_file",
    "gossip",
    "data_dir",
    "listen",
    "sweep_interval_ms",
    "grpc",
    "central",
    "cache",
    "replication",
    "rate_limit",
    "testbed",
    "log",
    "tls",
    "https",
    "http",
    "limits",
    "workerd",
    "storage",
];

/// Flags that override the configuration when given.
#[derive(Debug, Default, Serialize)]
pub struct Overrides {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub data_dir: Option<PathBuf>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub listen: Option<SocketAddr>,
}

impl Config {
    /// Loads the configuration from its layers.
    pub fn load(file: Option<&Path>, overrides: Overrides) -> anyhow::Result<Self> {
        let mut figment = Figment::from(Serialized::defaults(Config::default()));
        if let Some(file) = file {
            anyhow::ensure!(
                file.exists(),
                "config file {} does not exist",
                file.display()
            );
            figment = figment.merge(Toml::file_exact(file));
        }
        figment = figment.merge(
            Env::prefixed("DRIFTKV_")
                .filter(|key| {
                    let top = key.as_str().split("__").next().unwrap_or_default();
                    ENV_KEYS.iter().any(|k| top.eq_ignore_ascii_case(k))
                })
                .split("__"),
        );
        if let Ok(tokens) = std::env::var("DRIFTKV_API_TOKENS") {
            let tokens: Vec<String> = tokens
                .split(',')
                .map(str::trim)
                .filter(|t| !t.is_empty())
                .map(String::from)
                .collect();
            figment = figment.merge(Serialized::default("api_tokens", tokens));
        }
        let config: Config = figment
            .merge(Serialized::defaults(overrides))
            .extract()
            .context("invalid configuration")?;
        config.check()?;
        Ok(config)
    }

    fn check(&self) -> anyhow::Result<()> {
        anyhow::ensure!(self.node_id != 0, "node_id must not be 0");
        anyhow::ensure!(
            !self.testbed.enabled || !self.testbed.admin_token.is_empty(),
            "testbed.enabled needs testbed.admin_token (DRIFTKV_TESTBED__ADMIN_TOKEN): the admin endpoint can stall replication"
        );
        anyhow::ensure!(
            self.sweep_interval_ms > 0,
            "sweep_interval_ms must be greater than 0"
        );
        anyhow::ensure!(
            self.cache.max_ttl_secs >= self.cache.default_ttl_secs,
            "cache.max_ttl_secs ({}) must not be below cache.default_ttl_secs ({})",
            self.cache.max_ttl_secs,
            self.cache.default_ttl_secs
        );
        anyhow::ensure!(
            self.cache.default_ttl_secs >= self.cache.min_ttl_secs,
            "cache.default_ttl_secs ({}) must not be below cache.min_ttl_secs ({})",
            self.cache.default_ttl_secs,
            self.cache.min_ttl_secs
        );
        anyhow::ensure!(
            self.limits.namespaces_per_account > 0,
            "limits.namespaces_per_account must be greater than 0"
        );
        anyhow::ensure!(
            self.storage.probe_interval_ms > 0,
            "storage.probe_interval_ms must be greater than 0"
        );
        anyhow::ensure!(
            self.grpc.max_snapshot_streams > 0,
            "grpc.max_snapshot_streams must be greater than 0"
        );
        anyhow::ensure!(
            self.https.cert.as_os_str().is_empty() == self.https.key.as_os_str().is_empty(),
            "https.cert and https.key go together: set both, or neither"
        );
        anyhow::ensure!(
            !self.tls.configured()
                || [&self.tls.ca, &self.tls.cert, &self.tls.key]
                    .iter()
                    .all(|p| !p.as_os_str().is_empty()),
            "tls.ca, tls.cert and tls.key go together: set all three, or none"
        );
        anyhow::ensure!(
            self.replication.log_retention_entries > 0,
            "replication.log_retention_entries must be greater than 0"
        );
        for (name, ms) in [
            ("replication.heartbeat_ms", self.replication.heartbeat_ms),
            ("gossip.interval_ms", self.gossip.interval_ms),
            (
                "replication.trim_interval_ms",
                self.replication.trim_interval_ms,
            ),
            (
                "replication.stream_silence_ms",
                self.replication.stream_silence_ms,
            ),
            (
                "central.request_timeout_ms",
                self.central.request_timeout_ms,
            ),
            (
                "central.connect_timeout_ms",
                self.central.connect_timeout_ms,
            ),
            (
                "http.header_read_timeout_ms",
                self.http.header_read_timeout_ms,
            ),
            ("http.idle_timeout_ms", self.http.idle_timeout_ms),
            ("http.request_timeout_ms", self.http.request_timeout_ms),
            ("http.max_connections", self.http.max_connections as u64),
            ("http.max_in_flight", self.http.max_in_flight as u64),
            ("storage.gc_interval_ms", self.storage.gc_interval_ms),
        ] {
            anyhow::ensure!(ms > 0, "{name} must be greater than 0");
        }
        Ok(())
    }
}

#[cfg(test)]
// figment's Jail dictates the closure's error type (figment::Error), which clippy finds large.
#[allow(clippy::result_large_err)]
mod tests {
    use super::*;

    #[test]
    fn layers_override_in_order() {
        figment::Jail::expect_with(|jail| {
            jail.create_file(
                "node.toml",
                "listen = \"127.0.0.1:9000\"\nnode_id = 7\napi_tokens = [\"from-file\"]\n\
                 [cache]\nmin_ttl_secs = 5\ndefault_ttl_secs = 5\n",
            )?;
            jail.set_env("DRIFTKV_NODE_ID", "9");
            jail.set_env("DRIFTKV_API_TOKENS", "a, b,,c");
            jail.set_env("DRIFTKV_CACHE__MIN_TTL_SECS", "2");
            jail.set_env("DRIFTKV_RATE_LIMIT__WRITES_PER_KEY_PER_SECOND", "0");
            jail.set_env("DRIFTKV_WORKERD__LISTEN", "127.0.0.1:0");
            let overrides = Overrides {
                data_dir: Some("/tmp/x".into()),
                listen: None,
            };
            let config =
                Config::load(Some(Path::new("node.toml")), overrides).expect("config loads");
            assert_eq!(config.listen, "127.0.0.1:9000".parse().unwrap());
            assert_eq!(config.node_id, 9);
            assert_eq!(config.api_tokens, ["a", "b", "c"]);
            assert_eq!(config.data_dir, PathBuf::from("/tmp/x"));
            assert_eq!(
                (config.cache.min_ttl_secs, config.cache.default_ttl_secs),
                (2, 5)
            );
            assert_eq!(config.rate_limit.writes_per_key_per_second, 0);
            assert_eq!(config.workerd.listen, Some("127.0.0.1:0".parse().unwrap()));
            Ok(())
        });
    }

    #[test]
    fn the_example_configs_load() {
        // Inside a jail, so that the environment other tests set cannot leak in.
        figment::Jail::expect_with(|_| {
            let dev = concat!(env!("CARGO_MANIFEST_DIR"), "/../../deploy/dev.toml");
            let config =
                Config::load(Some(Path::new(dev)), Overrides::default()).expect("dev.toml loads");
            // dev.toml documents the defaults, so it must say exactly what they are.
            assert_eq!(
                serde_json::to_value(&config).unwrap(),
                serde_json::to_value(Config::default()).unwrap()
            );
            for example in [
                "central.toml",
                "edge.toml",
                "compose/central.toml",
                "compose/edge-1.toml",
                "compose/edge-2.toml",
                "compose/edge-3.toml",
                "k8s/central.toml",
                "k8s/edge.toml",
            ] {
                let path = format!("{}/../../deploy/{example}", env!("CARGO_MANIFEST_DIR"));
                Config::load(Some(Path::new(&path)), Overrides::default())
                    .unwrap_or_else(|e| panic!("{example} does not load: {e:#}"));
            }
            Ok(())
        });
    }

    /// The paths of every field in a JSON tree (`cache.max_bytes`, ...).
    fn field_paths(value: &serde_json::Value, prefix: &str, paths: &mut Vec<String>) {
        if let serde_json::Value::Object(fields) = value {
            for (name, inner) in fields {
                let path = format!("{prefix}{name}");
                field_paths(inner, &format!("{path}."), paths);
                paths.push(path);
            }
        }
    }

    #[test]
    fn dev_toml_names_every_field_the_config_accepts() {
        let dev = concat!(env!("CARGO_MANIFEST_DIR"), "/../../deploy/dev.toml");
        // The file alone, without the defaults under it.
        let written: serde_json::Value = Figment::from(Toml::file_exact(dev))
            .extract()
            .expect("dev.toml parses");
        let (mut named, mut accepted) = (Vec::new(), Vec::new());
        field_paths(&written, "", &mut named);
        field_paths(
            &serde_json::to_value(Config::default()).unwrap(),
            "",
            &mut accepted,
        );
        named.sort();
        accepted.sort();
        assert_eq!(named, accepted, "deploy/dev.toml must list every field");
    }

    #[test]
    fn other_driftkv_variables_are_left_alone() {
        figment::Jail::expect_with(|jail| {
            jail.set_env("DRIFTKV_REQUIRE_SDK", "1");
            jail.set_env("DRIFTKV_URL", "http://elsewhere");
            jail.set_env("DRIFTKV_LOG_FORMAT", "json");
            jail.set_env("DRIFTKV_SWEEP_INTERVAL_MS", "250");
            jail.set_env("DRIFTKV_DATA_DIR", "/var/lib/driftkv");
            let config = Config::load(None, Overrides::default()).expect("config loads");
            assert_eq!(config.sweep_interval_ms, 250);
            assert_eq!(config.data_dir, PathBuf::from("/var/lib/driftkv"));
            Ok(())
        });
    }

    #[test]
    fn bad_configs_are_refused() {
        figment::Jail::expect_with(|jail| {
            jail.create_file("typo.toml", "lisen = \"127.0.0.1:9000\"\n")?;
            assert!(Config::load(Some(Path::new("typo.toml")), Overrides::default()).is_err());
            jail.create_file("zero.toml", "node_id = 0\n")?;
            assert!(Config::load(Some(Path::new("zero.toml")), Overrides::default()).is_err());
            jail.create_file(
                "ttl.toml",
                "[cache]\nmin_ttl_secs = 60\ndefault_ttl_secs = 5\n",
            )?;
            assert!(Config::load(Some(Path::new("ttl.toml")), Overrides::default()).is_err());
            jail.create_file("section.toml", "[cache]\nmax_byte = 1\n")?;
            assert!(Config::load(Some(Path::new("section.toml")), Overrides::default()).is_err());
            jail.create_file("workerd.toml", "[workerd]\nlisten = \"localhost\"\n")?;
            assert!(Config::load(Some(Path::new("workerd.toml")), Overrides::default()).is_err());
            jail.create_file("off.toml", "[workerd]\nlisten = \"\"\n")?;
            let off = Config::load(Some(Path::new("off.toml")), Overrides::default())
                .expect("an empty address turns the listener off");
            assert_eq!(off.workerd.listen, None);
            assert!(Config::load(Some(Path::new("missing.toml")), Overrides::default()).is_err());
            Ok(())
        });
    }
}
