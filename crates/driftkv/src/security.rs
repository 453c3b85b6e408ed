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
        let security = Security {
            cluster,
            https,
            gossip_keys,
        };
        security.check(config, runs)?;
        Ok(security)
    }

    /// Refuses listeners beyond loopback that are not encrypted and authenticated (the HTTP
    /// listener's tokens are checked where its authentication is built, `node::auth`).
    fn check(&self, config: &Config, runs: Runs) -> anyhow::Result<()> {
        let http = config.listen;
        anyhow::ensure!(
            http.ip().is_loopback() || self.https.is_some(),
            "refusing to serve HTTP on {http} in plain text: set https.cert and https.key (`driftkv certs issue` makes them), or listen on a loopback address"
        );
        if let Some(binding) = config.workerd.listen.filter(|_| runs != Runs::Central) {
            anyhow::ensure!(
                binding.ip().is_loopback() || self.https.is_some(),
                "refusing to serve the workerd binding on {binding} in plain text: set https.cert and https.key, or set workerd.listen to a loopback address (or empty)"
            );
        }
        if runs == Runs::Dev {
            // Central, gossip and gRPC all stay on loopback in dev.
            return Ok(());
        }
        refuse_open(
            config.gossip.listen,
            !self.gossip_keys.is_empty(),
            "gossip",
            "gossip.keys_file (`driftkv certs init` writes one)",
        )?;
        if runs == Runs::Central {
            refuse_open(
                config.grpc.listen,
                self.cluster.is_some(),
                "gRPC",
                "tls.ca, tls.cert and tls.key (`driftkv certs` makes them)",
            )?;
        }
        Ok(())
    }
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
    fn open_listeners_beyond_loopback_are_refused_with_what_to_set() {
        let none = Security::default();
        let config = Config {
            listen: at("0.0.0.0:8787"),
            ..Config::default()
        };
        for runs in [Runs::Edge, Runs::Dev, Runs::Central] {
            let refused = none.check(&config, runs).unwrap_err().to_string();
            assert!(refused.contains("https.cert"), "{refused}");
        }

        let mut config = Config::default();
        config.gossip.listen = at("10.0.0.1:7946");
        let refused = none.check(&config, Runs::Edge).unwrap_err().to_string();
        assert!(refused.contains("gossip.keys_file"), "{refused}");
        let keyed = Security {
            gossip_keys: vec![GossipKey::generate()],
            ..Security::default()
        };
        keyed.check(&config, Runs::Edge).unwrap();

        let mut config = Config::default();
        config.grpc.listen = at("0.0.0.0:7070");
        let refused = none.check(&config, Runs::Central).unwrap_err().to_string();
        assert!(
            refused.contains("tls.ca, tls.cert and tls.key"),
            "{refused}"
        );
        // An edge does not serve gRPC.
        none.check(&config, Runs::Edge).unwrap();
        // Everything on loopback needs nothing.
        none.check(&Config::default(), Runs::Central).unwrap();
        none.check(&Config::default(), Runs::Dev).unwrap();
    }
}
