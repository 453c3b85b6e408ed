//! What a node needs before it may listen: its TLS material and gossip keys, loaded and
//! checked, and the rule that anything listening beyond loopback is authenticated and
//! encrypted. A node that would break the rule refuses to start with one line saying what to
//! set.

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context as _;
use driftkv_gossip::GossipKey;
use driftkv_tls::{ClusterIdentity, HttpsCertificate, Role};

use crate::config::Config;

/// The TLS material and keys a node runs with.
#[derive(Clone, Default)]
pub struct Security {
    /// Mutual TLS on gRPC.
    pub cluster: Option<ClusterIdentity>,
    /// The HTTP listener's certificate.
    pub https: Option<Arc<HttpsCertificate>>,
    /// The gossip keys; empty: plain UDP.
    pub gossip_keys: Vec<GossipKey>,
}

/// What set of listeners a node runs, for checking them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Runs {
    /// `driftkv central`.
    Central,
    /// `driftkv edge`.
    Edge,
    /// `driftkv dev`: central and edges on loopback, without cluster TLS.
    Dev,
}

impl Security {
    /// Loads what the configuration names, checking it fits the role.
    pub fn load(config: &Config, runs: Runs) -> anyhow::Result<Security> {
        check_listeners(config, runs)?;
        let role = match runs {
            Runs::Central => Some(Role::Central),
            Runs::Edge => Some(Role::Edge),
            Runs::Dev => None,
        };
        let cluster = match (role, config.tls.configured()) {
            (Some(role), true) => Some(
                ClusterIdentity::load(&config.tls.ca, &config.tls.cert, &config.tls.key, role)
                    .context("tls")?,
            ),
            (None, true) => anyhow::bail!(
                "driftkv dev runs every node on loopback without cluster TLS: tls.* is for `driftkv central` and `driftkv edge`"
            ),
            (_, false) => None,
        };
        let https = if config.https.cert.as_os_str().is_empty() {
            None
        } else {
            Some(HttpsCertificate::load(&config.https.cert, &config.https.key).context("https")?)
        };
        let gossip_keys = if config.gossip.keys_file.as_os_str().is_empty() {
            Vec::new()
        } else {
            GossipKey::load_file(&config.gossip.keys_file)?
        };
        Ok(Security {
            cluster,
            https,
            gossip_keys,
        })
    }
}

/// Refuses listeners beyond loopback that the configuration leaves unencrypted or
/// unauthenticated (the HTTP listeners' tokens are checked where their authentication is
/// built, `node::auth`). Checked before any material is loaded, so that a node never starts
/// half open.
pub fn check_listeners(config: &Config, runs: Runs) -> anyhow::Result<()> {
    let https = !config.https.cert.as_os_str().is_empty();
    let keyed = !config.gossip.keys_file.as_os_str().is_empty();
    {
        let http = config.listen;
        anyhow::ensure!(
            http.ip().is_loopback() || https,
            "refusing to serve HTTP on {http} in plain text: set https.cert and https.key (`driftkv certs issue` makes them), or listen on a loopback address"
        );
        if let Some(binding) = config.workerd.listen.filter(|_| runs != Runs::Central) {
            anyhow::ensure!(
                binding.ip().is_loopback() || https,
                "refusing to serve the workerd binding on {binding} in plain text: set https.cert and https.key, or set workerd.listen to a loopback address (or empty)"
            );
        }
        if runs == Runs::Dev {
            // Central, gossip and gRPC all stay on loopback in dev.
            return Ok(());
        }
        refuse_open(
            config.gossip.listen,
            keyed,
            "gossip",
            "gossip.keys_file (`driftkv certs init` writes one)",
        )?;
        if runs == Runs::Central {
            refuse_open(
                config.grpc.listen,
                config.tls.configured(),
                "gRPC",
                "tls.ca, tls.cert and tls.key (`driftkv certs` makes them)",
            )?;
        }
        Ok(())
    }
}

/// Shortest API token accepted: 32 bytes, as from `head -c 32 /dev/urandom | base64`.
const MIN_TOKEN_BYTES: usize = 32;

/// Tokens shipped in documentation and example files (this project's and earlier versions'):
/// anyone can read them, so they protect nothing.
const PLACEHOLDER_TOKENS: [&str; 5] = [
    "driftkv-dev-token",
    "replace-me-with-a-long-random-token",
    "change-me",
    "changeme",
    "your-token-here",
];

/// Refuses API tokens that would leave the API open or guessable: empty ones (which match
/// nothing, so a list of only those would have turned authentication off), short ones, and
/// documented placeholders.
pub fn check_tokens(tokens: &[String]) -> anyhow::Result<()> {
    for (index, token) in tokens.iter().enumerate() {
        let token = token.trim();
        anyhow::ensure!(
            !token.is_empty(),
            "API token {} is empty: remove it, or set a random token of at least {MIN_TOKEN_BYTES} bytes",
            index + 1
        );
        anyhow::ensure!(
            !PLACEHOLDER_TOKENS
                .iter()
                .any(|p| p.eq_ignore_ascii_case(token)),
            "API token {} is a placeholder from the documentation: set a random token of at least {MIN_TOKEN_BYTES} bytes (head -c 32 /dev/urandom | base64)",
            index + 1
        );
        anyhow::ensure!(
            token.len() >= MIN_TOKEN_BYTES,
            "API token {} is {} bytes long: tokens must have at least {MIN_TOKEN_BYTES} (head -c 32 /dev/urandom | base64)",
            index + 1,
            token.len()
        );
    }
    Ok(())
}

/// An error unless `listen` is loopback or `secured`.
fn refuse_open(listen: SocketAddr, secured: bool, what: &str, set: &str) -> anyhow::Result<()> {
    anyhow::ensure!(
        secured || listen.ip().is_loopback(),
        "refusing to serve {what} on {listen} without authentication and encryption: set {set}, or listen on a loopback address"
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(listen: &str) -> SocketAddr {
        listen.parse().unwrap()
    }

    #[test]
    fn tokens_that_guard_nothing_are_refused() {
        let ok = "k7VhL2pQ9xZb4MnR8sTw1YcE6uJ3aFgD".to_owned();
        check_tokens(std::slice::from_ref(&ok)).unwrap();
        check_tokens(&[]).unwrap();
        for (bad, why) in [
            ("", "is empty"),
            ("   ", "is empty"),
            ("short", "bytes long"),
            ("replace-me-with-a-long-random-token", "placeholder"),
            ("DRIFTKV-DEV-TOKEN", "placeholder"),
        ] {
            let refused = check_tokens(&[ok.clone(), bad.to_owned()])
                .unwrap_err()
                .to_string();
            assert!(
                refused.contains("API token 2") && refused.contains(why),
                "{refused}"
            );
        }
    }

    #[test]
    fn open_listeners_beyond_loopback_are_refused_with_what_to_set() {
        let config = Config {
            listen: at("0.0.0.0:8787"),
            ..Config::default()
        };
        for runs in [Runs::Edge, Runs::Dev, Runs::Central] {
            let refused = check_listeners(&config, runs).unwrap_err().to_string();
            assert!(refused.contains("https.cert"), "{refused}");
        }

        let mut config = Config::default();
        config.gossip.listen = at("10.0.0.1:7946");
        let refused = check_listeners(&config, Runs::Edge)
            .unwrap_err()
            .to_string();
        assert!(refused.contains("gossip.keys_file"), "{refused}");
        config.gossip.keys_file = "gossip.key".into();
        check_listeners(&config, Runs::Edge).unwrap();

        let mut config = Config::default();
        config.grpc.listen = at("0.0.0.0:7070");
        let refused = check_listeners(&config, Runs::Central)
            .unwrap_err()
            .to_string();
        assert!(
            refused.contains("tls.ca, tls.cert and tls.key"),
            "{refused}"
        );
        // An edge does not serve gRPC.
        check_listeners(&config, Runs::Edge).unwrap();
        // Everything on loopback needs nothing.
        check_listeners(&Config::default(), Runs::Central).unwrap();
        check_listeners(&Config::default(), Runs::Dev).unwrap();
    }

    /// Every example deployment is secure by default: it passes the start-up checks.
    #[test]
    #[allow(clippy::result_large_err)] // figment's Jail dictates the closure's error type
    fn the_example_deployments_pass_the_checks() {
        figment::Jail::expect_with(|_| {
            for (file, runs) in [
                ("central.toml", Runs::Central),
                ("edge.toml", Runs::Edge),
                ("compose/central.toml", Runs::Central),
                ("compose/edge-1.toml", Runs::Edge),
                ("compose/edge-2.toml", Runs::Edge),
                ("compose/edge-3.toml", Runs::Edge),
                ("k8s/central.toml", Runs::Central),
                ("k8s/edge.toml", Runs::Edge),
            ] {
                let path = format!("{}/../../deploy/{file}", env!("CARGO_MANIFEST_DIR"));
                let config = Config::load(
                    Some(std::path::Path::new(&path)),
                    crate::config::Overrides::default(),
                )
                .unwrap();
                check_listeners(&config, runs).unwrap_or_else(|e| panic!("{file}: {e}"));
            }
            Ok(())
        });
    }
}
