//! Node configuration: built-in defaults, then a TOML file, then `DRIFTKV_*` environment
//! variables, then command-line flags, each overriding the one before.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::Context as _;
use figment::providers::{Env, Format, Serialized, Toml};
use figment::Figment;
use serde::{Deserialize, Serialize};

/// Configuration of the embedded dev server.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DevConfig {
    /// Where data lives (`DRIFTKV_DATA_DIR`).
    pub data_dir: PathBuf,
    /// HTTP listen address (`DRIFTKV_LISTEN`).
    pub listen: SocketAddr,
    /// This node's id, the tie-breaker of write versions (`DRIFTKV_NODE_ID`); not 0.
    pub node_id: u64,
    /// API tokens accepted as `Authorization: Bearer <token>` (`DRIFTKV_API_TOKENS`, comma
    /// separated). Required when `listen` is not a loopback address.
    pub api_tokens: Vec<String>,
    /// How often expired records are swept from storage, in milliseconds
    /// (`DRIFTKV_SWEEP_INTERVAL_MS`).
    pub sweep_interval_ms: u64,
}

impl Default for DevConfig {
    fn default() -> Self {
        DevConfig {
            data_dir: PathBuf::from(".driftkv"),
            listen: SocketAddr::from(([127, 0, 0, 1], 8787)),
            node_id: 1,
            api_tokens: Vec::new(),
            sweep_interval_ms: 1000,
        }
    }
}

/// The fields settable as `DRIFTKV_<FIELD>`; `api_tokens` is read separately because its
/// variable holds a comma-separated list.
const ENV_KEYS: [&str; 4] = ["data_dir", "listen", "node_id", "sweep_interval_ms"];

/// Flags that override the configuration when given.
#[derive(Debug, Default, Serialize)]
pub struct Overrides {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub data_dir: Option<PathBuf>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub listen: Option<SocketAddr>,
}

impl DevConfig {
    /// Loads the configuration from its layers.
    pub fn load(file: Option<&Path>, overrides: Overrides) -> anyhow::Result<Self> {
        let mut figment = Figment::from(Serialized::defaults(DevConfig::default()));
        if let Some(file) = file {
            anyhow::ensure!(
                file.exists(),
                "config file {} does not exist",
                file.display()
            );
            figment = figment.merge(Toml::file_exact(file));
        }
        // Only the configuration's own keys: other DRIFTKV_* variables (the log format, client
        // settings, test switches) belong to other parts and must not fail the load.
        figment = figment.merge(Env::prefixed("DRIFTKV_").only(&ENV_KEYS));
        if let Ok(tokens) = std::env::var("DRIFTKV_API_TOKENS") {
            let tokens: Vec<String> = tokens
                .split(',')
                .map(str::trim)
                .filter(|t| !t.is_empty())
                .map(String::from)
                .collect();
            figment = figment.merge(Serialized::default("api_tokens", tokens));
        }
        let config: DevConfig = figment
            .merge(Serialized::defaults(overrides))
            .extract()
            .context("invalid configuration")?;
        anyhow::ensure!(config.node_id != 0, "node_id must not be 0");
        anyhow::ensure!(
            config.sweep_interval_ms > 0,
            "sweep_interval_ms must be greater than 0"
        );
        Ok(config)
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
                "listen = \"127.0.0.1:9000\"\nnode_id = 7\napi_tokens = [\"from-file\"]\n",
            )?;
            jail.set_env("DRIFTKV_NODE_ID", "9");
            jail.set_env("DRIFTKV_API_TOKENS", "a, b,,c");
            let overrides = Overrides {
                data_dir: Some("/tmp/x".into()),
                listen: None,
            };
            let config =
                DevConfig::load(Some(Path::new("node.toml")), overrides).expect("config loads");
            assert_eq!(config.listen, "127.0.0.1:9000".parse().unwrap());
            assert_eq!(config.node_id, 9);
            assert_eq!(config.api_tokens, ["a", "b", "c"]);
            assert_eq!(config.data_dir, PathBuf::from("/tmp/x"));
            Ok(())
        });
    }

    #[test]
    fn the_example_config_is_the_defaults() {
        // Inside a jail, so that the environment other tests set cannot leak in.
        figment::Jail::expect_with(|_| {
            let example = concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/dev.toml");
            let config = DevConfig::load(Some(Path::new(example)), Overrides::default())
                .expect("example loads");
            let defaults = DevConfig::default();
            assert_eq!(
                (
                    config.data_dir,
                    config.listen,
                    config.node_id,
                    config.api_tokens,
                    config.sweep_interval_ms
                ),
                (
                    defaults.data_dir,
                    defaults.listen,
                    defaults.node_id,
                    defaults.api_tokens,
                    defaults.sweep_interval_ms
                )
            );
            Ok(())
        });
    }

    #[test]
    fn other_driftkv_variables_are_left_alone() {
        figment::Jail::expect_with(|jail| {
            jail.set_env("DRIFTKV_REQUIRE_SDK", "1");
            jail.set_env("DRIFTKV_URL", "http://elsewhere");
            jail.set_env("DRIFTKV_SWEEP_INTERVAL_MS", "250");
            jail.set_env("DRIFTKV_DATA_DIR", "/var/lib/driftkv");
            let config = DevConfig::load(None, Overrides::default()).expect("config loads");
            assert_eq!(config.sweep_interval_ms, 250);
            assert_eq!(config.data_dir, PathBuf::from("/var/lib/driftkv"));
            Ok(())
        });
    }

    #[test]
    fn bad_configs_are_refused() {
        figment::Jail::expect_with(|jail| {
            jail.create_file("typo.toml", "lisen = \"127.0.0.1:9000\"\n")?;
            assert!(DevConfig::load(Some(Path::new("typo.toml")), Overrides::default()).is_err());
            jail.create_file("zero.toml", "node_id = 0\n")?;
            assert!(DevConfig::load(Some(Path::new("zero.toml")), Overrides::default()).is_err());
            assert!(
                DevConfig::load(Some(Path::new("missing.toml")), Overrides::default()).is_err()
            );
            Ok(())
        });
    }
}
