//! Cluster membership over chitchat (scuttlebutt gossip on UDP with a phi-accrual failure
//! detector).
//!
//! Every node publishes a few small facts about itself ([`keys`]): its role, region, HTTP and
//! gRPC addresses, and how far its replication has come. Gossip is not a data path: it is how
//! edges find central from a list of seeds, and how `/cluster` can show every member, live or
//! dead, with each edge's replication lag.
//!
//! With cluster keys ([`GossipConfig::keys`]) every packet is sealed (see [`sealed`]): nodes
//! without a key can neither join nor be heard. Without keys gossip is plain UDP, which nodes
//! only accept on loopback (the node assembly checks that).

mod sealed;

use std::collections::BTreeMap;
use std::net::{SocketAddr, ToSocketAddrs, UdpSocket};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

pub use chitchat::transport::ChannelTransport;
use chitchat::transport::{Transport, UdpTransport};
use chitchat::{spawn_chitchat, ChitchatConfig, ChitchatHandle, ChitchatId, FailureDetectorConfig};
use serde::Serialize;
use tokio::sync::Mutex;

pub use sealed::{GossipKey, KeyError};

/// The keys a node publishes.
pub mod keys {
    /// `central` or `edge`.
    pub const ROLE: &str = "role";
    /// The region the node serves.
    pub const REGION: &str = "region";
    /// `http://host:port` of the REST API (edges).
    pub const HTTP: &str = "http";
    /// `http://host:port` of the gRPC service (central).
    pub const GRPC: &str = "grpc";
    /// `http://host:port` of the workerd KV binding listener (edges that serve one).
    pub const WORKERD: &str = "workerd";
    /// Central: the highest durable log sequence.
    pub const DURABLE_SEQUENCE: &str = "durable_sequence";
    /// Central: the oldest sequence its log still holds.
    pub const LOG_OLDEST_SEQUENCE: &str = "log_oldest_sequence";
    /// Edges: the highest log sequence applied to the replica.
    pub const APPLIED_SEQUENCE: &str = "applied_sequence";
    /// Edges: when (unix ms) the replica last had everything central had made durable.
    pub const CAUGHT_UP_AT_MS: &str = "caught_up_at_ms";
    /// The driftkv version the node runs.
    pub const VERSION: &str = "version";
}

/// A gossip failure.
#[derive(Debug, thiserror::Error)]
pub enum GossipError {
    /// The UDP socket could not be opened.
    #[error("cannot open the gossip socket on {addr}: {reason}")]
    Bind { addr: SocketAddr, reason: String },
    /// The advertised host does not resolve.
    #[error("cannot resolve the advertised gossip host {host:?}: {reason}")]
    Advertise { host: String, reason: String },
}

/// How this node takes part in gossip.
#[derive(Clone, Debug)]
pub struct GossipConfig {
    /// Unique in the cluster.
    pub node_id: String,
    /// Nodes gossip only with nodes of the same cluster id.
    pub cluster_id: String,
    /// UDP address to listen on; port 0 picks a free port.
    pub listen: SocketAddr,
    /// Host name or IP peers reach this node at, with the listen port. Without one: the
    /// listen address, or 127.0.0.1 when listening on all interfaces.
    pub advertise_host: Option<String>,
    /// `host:port` of nodes to contact first (names are resolved, and re-resolved).
    pub seeds: Vec<String>,
    /// Time between gossip rounds.
    pub interval: Duration,
    /// How long a dead node stays listed before it is forgotten.
    pub dead_node_grace_period: Duration,
    /// Cluster keys sealing every packet, the first one sealing what this node sends; empty:
    /// plain UDP.
    pub keys: Vec<GossipKey>,
    /// How packets travel.
    pub transport: GossipTransport,
}

/// How gossip packets travel between members.
#[derive(Clone, Default)]
pub enum GossipTransport {
    /// UDP, sealed with the cluster keys when there are some.
    #[default]
    Udp,
    /// Channels between members in this process (chitchat's in-memory transport), whose links
    /// a test can cut and restore ([`ChannelTransport::remove_link`]) to simulate partitions.
    /// Addresses are names only: no socket is opened.
    InProcess(ChannelTransport),
}

impl std::fmt::Debug for GossipTransport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            GossipTransport::Udp => "Udp",
            GossipTransport::InProcess(_) => "InProcess",
        })
    }
}

/// One member as gossip knows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Member {
    pub node_id: String,
    /// The gossip address.
    pub gossip: SocketAddr,
    /// The failure detector considers the node alive.
    pub live: bool,
    /// The failure detector considers the node dead. A node that is neither has just been
    /// discovered: the detector has not heard from it often enough to judge.
    pub dead: bool,
    /// Everything the node published.
    pub facts: BTreeMap<String, String>,
}

impl Member {
    /// A published fact.
    pub fn fact(&self, key: &str) -> Option<&str> {
        self.facts.get(key).map(String::as_str)
    }

    /// A published number.
    pub fn number(&self, key: &str) -> Option<u64> {
        self.fact(key)?.parse().ok()
    }
}

/// This node's gossip membership.
pub struct Gossip {
    handle: Mutex<Option<ChitchatHandle>>,
    chitchat: Arc<Mutex<chitchat::Chitchat>>,
    addr: SocketAddr,
    self_id: ChitchatId,
}

impl Gossip {
    /// Joins the cluster, publishing `facts`.
    pub async fn start(
        config: GossipConfig,
        facts: Vec<(String, String)>,
    ) -> Result<Gossip, GossipError> {
        let listen = match config.transport {
            GossipTransport::Udp => resolve_port(config.listen)?,
            GossipTransport::InProcess(_) => config.listen,
        };
        let advertise = advertise_addr(listen, config.advertise_host.as_deref())?;
        // The generation tells a restarted node from its previous life.
        let generation = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        let self_id = ChitchatId::new(config.node_id.clone(), generation, advertise);
        let failure_detector_config = FailureDetectorConfig {
            initial_interval: config.interval,
            dead_node_grace_period: config.dead_node_grace_period,
            ..Default::default()
        };
        let chitchat_config = ChitchatConfig {
            chitchat_id: self_id.clone(),
            cluster_id: config.cluster_id,
            gossip_interval: config.interval,
            listen_addr: listen,
            seed_nodes: config.seeds,
            failure_detector_config,
            marked_for_deletion_grace_period: Duration::from_secs(3600),
            catchup_callback: None,
            extra_liveness_predicate: None,
            protocol_version: chitchat::ProtocolVersion::V0,
        };
        let sealed;
        let transport: &dyn Transport = match &config.transport {
            GossipTransport::InProcess(channels) => channels,
            GossipTransport::Udp if config.keys.is_empty() => &UdpTransport,
            GossipTransport::Udp => {
                sealed = sealed::SealedTransport {
                    sealer: sealed::Sealer::new(&config.keys, &config.node_id),
                };
                &sealed
            }
        };
        let handle = spawn_chitchat(chitchat_config, facts, transport)
            .await
            .map_err(|e| GossipError::Bind {
                addr: listen,
                reason: e.to_string(),
            })?;
        let chitchat = handle.chitchat();
        tracing::info!(gossip = %advertise, "joined gossip");
        Ok(Gossip {
            handle: Mutex::new(Some(handle)),
            chitchat,
            addr: advertise,
            self_id,
        })
    }

    /// This node's id in the cluster.
    pub fn node_id(&self) -> &str {
        &self.self_id.node_id
    }

    /// The address peers gossip with this node at.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Publishes (or updates) a fact about this node.
    pub async fn set(&self, key: &str, value: impl ToString) {
        self.chitchat.lock().await.self_node_state().set(key, value);
    }

    /// Every member gossip knows, this node included, live or dead, ordered by node id.
    pub async fn members(&self) -> Vec<Member> {
        let chitchat = self.chitchat.lock().await;
        let live: Vec<&ChitchatId> = chitchat.live_nodes().collect();
        let dead: Vec<&ChitchatId> = chitchat.dead_nodes().collect();
        let mut members: BTreeMap<String, Member> = BTreeMap::new();
        for (id, state) in chitchat.node_states() {
            let member = Member {
                node_id: id.node_id.to_string(),
                gossip: id.gossip_advertise_addr,
                live: *id == self.self_id || live.contains(&id),
                dead: dead.contains(&id),
                facts: state
                    .key_values()
                    .map(|(k, v)| (k.to_owned(), v.to_owned()))
                    .collect(),
            };
            // A restarted node appears under each generation; its newest counts.
            match members.get(&member.node_id) {
                Some(known) if known.live && !member.live => {}
                _ => {
                    members.insert(member.node_id.clone(), member);
                }
            }
        }
        members.into_values().collect()
    }

    /// Leaves the cluster.
    pub async fn shutdown(&self) {
        if let Some(handle) = self.handle.lock().await.take() {
            if let Err(e) = handle.shutdown().await {
                tracing::warn!(error = %e, "gossip did not shut down cleanly");
            }
        }
    }
}

/// The address peers gossip with this node at: chitchat needs an IP address, so a host name
/// is resolved here.
fn advertise_addr(listen: SocketAddr, host: Option<&str>) -> Result<SocketAddr, GossipError> {
    let Some(host) = host else {
        return Ok(if listen.ip().is_unspecified() {
            SocketAddr::from(([127, 0, 0, 1], listen.port()))
        } else {
            listen
        });
    };
    let failed = |reason: String| GossipError::Advertise {
        host: host.to_owned(),
        reason,
    };
    (host, listen.port())
        .to_socket_addrs()
        .map_err(|e| failed(e.to_string()))?
        .next()
        .ok_or_else(|| failed("no address".into()))
}

/// Port 0 means "any free port", but chitchat must be told the port it advertises before it
/// opens its socket: take a free port from the system first.
fn resolve_port(listen: SocketAddr) -> Result<SocketAddr, GossipError> {
    if listen.port() != 0 {
        return Ok(listen);
    }
    let probe = UdpSocket::bind(listen).map_err(|e| GossipError::Bind {
        addr: listen,
        reason: e.to_string(),
    })?;
    probe.local_addr().map_err(|e| GossipError::Bind {
        addr: listen,
        reason: e.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    fn config(node_id: &str, seeds: Vec<String>) -> GossipConfig {
        GossipConfig {
            node_id: node_id.into(),
            cluster_id: "test".into(),
            listen: "127.0.0.1:0".parse().unwrap(),
            advertise_host: None,
            seeds,
            interval: Duration::from_millis(50),
            dead_node_grace_period: Duration::from_secs(3600),
            keys: Vec::new(),
            transport: GossipTransport::Udp,
        }
    }

    async fn wait_until(what: &str, mut check: impl AsyncFnMut() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while !check().await {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    #[test]
    fn the_advertised_address_is_one_peers_can_reach() {
        let any: SocketAddr = "0.0.0.0:7946".parse().unwrap();
        assert_eq!(
            advertise_addr(any, None).unwrap(),
            "127.0.0.1:7946".parse().unwrap()
        );
        let one: SocketAddr = "10.1.2.3:7946".parse().unwrap();
        assert_eq!(advertise_addr(one, None).unwrap(), one);
        assert_eq!(
            advertise_addr(any, Some("127.0.0.2")).unwrap(),
            "127.0.0.2:7946".parse().unwrap()
        );
        assert!(advertise_addr(any, Some("no-such-host.invalid")).is_err());
    }

    /// Nodes sealing with the cluster key find each other; a node with another key, or none,
    /// is never seen by them, and they are never seen by it.
    #[tokio::test]
    async fn only_nodes_with_the_cluster_key_are_members() {
        let key = GossipKey::generate();
        let keyed = |id: &str, seeds: Vec<String>, keys: Vec<GossipKey>| GossipConfig {
            keys,
            ..config(id, seeds)
        };
        let a = Gossip::start(keyed("a", vec![], vec![key.clone()]), vec![])
            .await
            .unwrap();
        let seeds = vec![a.addr().to_string()];
        let b = Gossip::start(keyed("b", seeds.clone(), vec![key.clone()]), vec![])
            .await
            .unwrap();
        let wrong = Gossip::start(
            keyed("wrong", seeds.clone(), vec![GossipKey::generate()]),
            vec![],
        )
        .await
        .unwrap();
        let plain = Gossip::start(config("plain", seeds), vec![]).await.unwrap();
        wait_until("a and b to see each other", async || {
            let members = a.members().await;
            members.iter().any(|m| m.node_id == "b" && m.live)
                && b.members().await.iter().any(|m| m.node_id == "a" && m.live)
        })
        .await;
        // Long enough for the outsiders to have sent many rounds (every 50 ms).
        tokio::time::sleep(Duration::from_millis(500)).await;
        for insider in [&a, &b] {
            let ids: Vec<String> = insider
                .members()
                .await
                .into_iter()
                .map(|m| m.node_id)
                .collect();
            assert_eq!(ids, ["a", "b"]);
        }
        for outsider in [&wrong, &plain] {
            assert_eq!(
                outsider.members().await.len(),
                1,
                "an outsider heard the cluster"
            );
        }
        let rejected = driftkv_metrics::GOSSIP_PACKETS_REJECTED
            .with_label_values(&["a", "unauthenticated"])
            .get()
            + driftkv_metrics::GOSSIP_PACKETS_REJECTED
                .with_label_values(&["a", "malformed"])
                .get();
        assert!(rejected > 0, "the outsiders' packets were counted");
    }

    /// Over the in-process transport, on tokio's paused clock: a member cut off from the
    /// others is judged dead by them, and live again once the links are restored.
    #[tokio::test(start_paused = true)]
    async fn a_partition_in_process_is_seen_and_heals() {
        let channels = ChannelTransport::default();
        let at = |port: u16| SocketAddr::from(([10, 0, 0, 1], port));
        let member = |id: &str, port: u16| GossipConfig {
            listen: at(port),
            seeds: vec![at(1).to_string()],
            transport: GossipTransport::InProcess(channels.clone()),
            ..config(id, vec![])
        };
        let a = Gossip::start(member("a", 1), vec![]).await.unwrap();
        let b = Gossip::start(member("b", 2), vec![]).await.unwrap();
        let c = Gossip::start(member("c", 3), vec![]).await.unwrap();
        let status = async |observer: &Gossip, id: &str| {
            let members = observer.members().await;
            members.iter().find(|m| m.node_id == id).map(|m| m.live)
        };
        wait_until("everyone to see everyone", async || {
            let members = a.members().await;
            members.len() == 3 && members.iter().all(|m| m.live)
        })
        .await;
        for other in [at(1), at(2)] {
            channels.remove_link(at(3), other).await;
        }
        wait_until("c and the others to see each other dead", async || {
            status(&a, "c").await == Some(false)
                && status(&b, "c").await == Some(false)
                && status(&c, "a").await == Some(false)
        })
        .await;
        assert_eq!(status(&a, "b").await, Some(true), "a and b still talk");
        for other in [at(1), at(2)] {
            channels.add_link(at(3), other).await;
        }
        wait_until("c to be seen live again", async || {
            status(&a, "c").await == Some(true) && status(&b, "c").await == Some(true)
        })
        .await;
    }

    #[tokio::test]
    async fn nodes_find_each_other_share_facts_and_notice_a_death() {
        let a = Gossip::start(config("a", vec![]), vec![("role".into(), "central".into())])
            .await
            .unwrap();
        let seeds = vec![a.addr().to_string()];
        let b = Gossip::start(
            config("b", seeds.clone()),
            vec![("role".into(), "edge".into())],
        )
        .await
        .unwrap();
        let c = Gossip::start(config("c", seeds), vec![]).await.unwrap();
        wait_until("everyone to see everyone", async || {
            let members = c.members().await;
            members.len() == 3 && members.iter().all(|m| m.live)
        })
        .await;
        b.set(keys::APPLIED_SEQUENCE, 42).await;
        wait_until("b's fact to reach c", async || {
            c.members()
                .await
                .iter()
                .any(|m| m.node_id == "b" && m.number(keys::APPLIED_SEQUENCE) == Some(42))
        })
        .await;
        let central = c
            .members()
            .await
            .into_iter()
            .find(|m| m.node_id == "a")
            .unwrap();
        assert_eq!(central.fact(keys::ROLE), Some("central"));
        b.shutdown().await;
        wait_until("b to be seen dead", async || {
            c.members()
                .await
                .iter()
                .any(|m| m.node_id == "b" && !m.live && m.dead)
        })
        .await;
    }
}
