//! Gossip wiring: what each role publishes, how an edge finds central, and `GET /cluster`.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use axum::extract::State;
use axum::routing::get;
use axum::{Json, Router};
use driftkv_central::Central;
use driftkv_core::cluster::{self, ClusterView, MemberStatus, NodeRole};
use driftkv_core::time::unix_now_ms;
use driftkv_edge::{CentralLink, Edge};
use driftkv_gossip::{keys, Gossip, GossipConfig, GossipTransport, Member};
use tokio::task::JoinHandle;

use crate::config::Config;
use crate::node::GossipPlace;
use crate::ops;
use crate::security::Security;

/// `http://host:port` (`https://` when `tls`) other nodes reach `addr` at.
pub fn advertised(config: &Config, addr: SocketAddr, tls: bool) -> String {
    let host = if !config.advertise_host.is_empty() {
        config.advertise_host.clone()
    } else if addr.ip().is_unspecified() {
        "127.0.0.1".to_owned()
    } else {
        addr.ip().to_string()
    };
    let scheme = if tls { "https" } else { "http" };
    format!("{scheme}://{host}:{}", addr.port())
}

/// Joins gossip as `node_id` playing `role`, publishing the address of its service.
pub async fn join(
    config: &Config,
    node_id: u64,
    role: NodeRole,
    place: GossipPlace,
    security: &Security,
    service: (&str, String),
) -> anyhow::Result<Arc<Gossip>> {
    let gossip = Gossip::start(
        GossipConfig {
            node_id: node_id.to_string(),
            cluster_id: config.gossip.cluster_id.clone(),
            listen: place.listen,
            advertise_host: (!config.advertise_host.is_empty())
                .then(|| config.advertise_host.clone()),
            seeds: place.seeds,
            interval: Duration::from_millis(config.gossip.interval_ms),
            dead_node_grace_period: Duration::from_secs(config.gossip.dead_node_grace_secs),
            keys: security.gossip_keys.clone(),
            transport: GossipTransport::Udp,
        },
        vec![
            (keys::ROLE.into(), role.as_str().into()),
            (keys::REGION.into(), config.region.clone()),
            (keys::VERSION.into(), env!("CARGO_PKG_VERSION").into()),
            (service.0.into(), service.1),
        ],
    )
    .await
    .context("cannot join gossip")?;
    Ok(Arc::new(gossip))
}

/// Every `every`: publishes central's durable sequence and the oldest sequence its log still
/// holds (an edge behind that needs a snapshot), and tells central how far every edge member
/// has applied (what garbage collection may purge up to).
pub fn publish_central(
    gossip: Arc<Gossip>,
    central: Arc<Central>,
    every: Duration,
) -> JoinHandle<()> {
    let store = central.engine().store().clone();
    let durable = central.engine().durable_sequence();
    tokio::spawn(async move {
        let mut ticks = tokio::time::interval(every);
        loop {
            ticks.tick().await;
            let members = gossip.members().await;
            central.set_edges_applied(Some(edges_applied(&members)));
            let sequence = *durable.borrow();
            gossip.set(keys::DURABLE_SEQUENCE, sequence).await;
            match store.log_bounds() {
                Ok(bounds) => gossip.set(keys::LOG_OLDEST_SEQUENCE, bounds.oldest).await,
                Err(e) => tracing::warn!(error = %e, "cannot read the log bounds"),
            }
            record(&gossip, &members);
        }
    })
}

/// The lowest log sequence the edges among `members` have applied: every edge gossip still
/// lists counts, live or not (a dead one until gossip forgets it, `gossip.dead_node_grace_secs`
/// later), and one that has not said how far it is counts as having applied nothing. With no
/// edge listed there is nothing to wait for (`u64::MAX`): an edge that joins later is behind
/// central's garbage-collection floor and starts from a snapshot (see docs/gc.md).
fn edges_applied(members: &[Member]) -> u64 {
    members
        .iter()
        .filter(|m| m.fact(keys::ROLE) == Some(NodeRole::Edge.as_str()))
        .map(|edge| edge.number(keys::APPLIED_SEQUENCE).unwrap_or(0))
        .min()
        .unwrap_or(u64::MAX)
}

/// Every `every`: publishes the edge's replication progress and, when given the edge's `link`
/// to discover central with, points it at a live central gossip knows of.
///
/// Gossip only proposes: the edge keeps the central it has while gossip shows it live, and
/// moves to another only after dialling it (with TLS, that is a handshake in which the node
/// must show a certificate the cluster CA issued for central). So a node that merely claims
/// to be central in gossip never becomes the edge's central.
pub fn publish_edge(
    gossip: Arc<Gossip>,
    edge: Arc<Edge>,
    discover: Option<Arc<CentralLink>>,
    every: Duration,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut ticks = tokio::time::interval(every);
        let mut refused = HashSet::new();
        loop {
            ticks.tick().await;
            let status = edge.status().borrow().clone();
            gossip.set(keys::APPLIED_SEQUENCE, status.applied).await;
            if let Some(at) = status.caught_up_at_ms {
                gossip.set(keys::CAUGHT_UP_AT_MS, at).await;
            }
            let members = gossip.members().await;
            record(&gossip, &members);
            if let Some(link) = &discover {
                discover_central(link, &members, &mut refused).await;
            }
        }
    })
}

/// Points the edge at a live central from gossip, unless the one it has is still live.
/// `refused` holds the addresses already reported as unusable, so that each is logged once.
async fn discover_central(link: &CentralLink, members: &[Member], refused: &mut HashSet<String>) {
    let centrals: Vec<&str> = members
        .iter()
        .filter(|m| m.live && m.fact(keys::ROLE) == Some(NodeRole::Central.as_str()))
        .filter_map(|m| m.fact(keys::GRPC))
        .collect();
    let current = link.address();
    if current.as_deref().is_some_and(|c| centrals.contains(&c)) {
        return;
    }
    for candidate in centrals {
        match link.probe(candidate).await {
            Ok(()) => {
                if let Err(e) = link.set_address(candidate) {
                    tracing::warn!(error = %e, "central gossiped an unusable address");
                }
                return;
            }
            Err(e) => {
                if refused.insert(candidate.to_owned()) {
                    tracing::warn!(error = %e, "not following a node gossip calls central");
                }
            }
        }
    }
}

/// Brings this node's membership metrics up to date with gossip: members by status, and
/// each edge's lag.
fn record(gossip: &Gossip, members: &[Member]) {
    ops::record_membership(gossip.node_id(), &describe(members, unix_now_ms()));
}

/// `GET /cluster`.
pub fn routes(gossip: Arc<Gossip>) -> Router {
    Router::new()
        .route("/cluster", get(cluster))
        .with_state(gossip)
}

/// Every member gossip knows, live or dead, and each edge's replication lag in entries and
/// milliseconds measured against central's durable sequence.
async fn cluster(State(gossip): State<Arc<Gossip>>) -> Json<ClusterView> {
    Json(describe(&gossip.members().await, unix_now_ms()))
}

fn describe(members: &[Member], now_ms: u64) -> ClusterView {
    let role = |m: &Member| m.fact(keys::ROLE).and_then(NodeRole::parse);
    let central = members
        .iter()
        .filter(|m| role(m) == Some(NodeRole::Central))
        .max_by_key(|m| (m.live, m.number(keys::DURABLE_SEQUENCE)));
    let durable = central.and_then(|c| c.number(keys::DURABLE_SEQUENCE));
    let members = members
        .iter()
        .map(|m| {
            let applied = m.number(keys::APPLIED_SEQUENCE);
            let caught_up_at_ms = m.number(keys::CAUGHT_UP_AT_MS);
            let lag_entries = durable.zip(applied).map(|(d, a)| d.saturating_sub(a));
            let lag_ms = match lag_entries {
                Some(0) => Some(0),
                _ => applied
                    .and(caught_up_at_ms)
                    .map(|at| now_ms.saturating_sub(at)),
            };
            let fact = |key| m.fact(key).map(str::to_owned);
            cluster::Member {
                node_id: m.node_id.clone(),
                role: role(m),
                region: fact(keys::REGION),
                live: m.live,
                status: if m.live {
                    MemberStatus::Live
                } else if m.dead {
                    MemberStatus::Dead
                } else {
                    MemberStatus::Joining
                },
                gossip: m.gossip.to_string(),
                version: fact(keys::VERSION),
                http: fact(keys::HTTP),
                grpc: fact(keys::GRPC),
                workerd: fact(keys::WORKERD),
                durable_sequence: m.number(keys::DURABLE_SEQUENCE),
                log_oldest_sequence: m.number(keys::LOG_OLDEST_SEQUENCE),
                caught_up_at_ms,
                applied_sequence: applied,
                lag_entries,
                lag_ms,
            }
        })
        .collect();
    ClusterView {
        members,
        central_durable_sequence: durable,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn member(id: &str, live: bool, facts: &[(&str, &str)]) -> Member {
        Member {
            node_id: id.into(),
            gossip: "127.0.0.1:1".parse().unwrap(),
            live,
            dead: !live,
            facts: facts
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        }
    }

    #[test]
    fn lag_is_measured_against_central() {
        let members = [
            member(
                "1",
                true,
                &[("role", "central"), ("durable_sequence", "100")],
            ),
            member(
                "2",
                true,
                &[
                    ("role", "edge"),
                    ("applied_sequence", "100"),
                    ("caught_up_at_ms", "5000"),
                ],
            ),
            member(
                "3",
                false,
                &[
                    ("role", "edge"),
                    ("applied_sequence", "60"),
                    ("caught_up_at_ms", "4000"),
                ],
            ),
        ];
        let view = describe(&members, 9000);
        assert_eq!(view.central_durable_sequence, Some(100));
        let lag = |m: &cluster::Member| (m.lag_entries, m.lag_ms);
        assert_eq!(view.members[0].role, Some(NodeRole::Central));
        assert_eq!(lag(&view.members[0]), (None, None));
        assert_eq!(lag(&view.members[1]), (Some(0), Some(0)));
        assert_eq!(
            (view.members[2].live, view.members[2].status),
            (false, MemberStatus::Dead)
        );
        assert_eq!(lag(&view.members[2]), (Some(40), Some(5000)));
        // The wire shape scripts read.
        let json = serde_json::to_value(&view).unwrap();
        assert_eq!(json["members"][2]["status"], "dead");
        assert_eq!(json["members"][2]["lag_ms"], 5000);
        assert_eq!(serde_json::from_value::<ClusterView>(json).unwrap(), view);
    }

    #[test]
    fn every_listed_edge_holds_the_horizon_back() {
        let central = member(
            "1",
            true,
            &[("role", "central"), ("durable_sequence", "100")],
        );
        assert_eq!(edges_applied(std::slice::from_ref(&central)), u64::MAX);
        let live = member("2", true, &[("role", "edge"), ("applied_sequence", "90")]);
        let dead = member("3", false, &[("role", "edge"), ("applied_sequence", "60")]);
        let silent = member("4", true, &[("role", "edge")]);
        assert_eq!(edges_applied(&[central.clone(), live.clone()]), 90);
        assert_eq!(edges_applied(&[central.clone(), live.clone(), dead]), 60);
        assert_eq!(edges_applied(&[central, live, silent]), 0);
    }

    #[test]
    fn advertised_addresses_are_reachable() {
        let mut config = Config::default();
        let any: SocketAddr = "0.0.0.0:7070".parse().unwrap();
        assert_eq!(advertised(&config, any, false), "http://127.0.0.1:7070");
        config.advertise_host = "central".into();
        assert_eq!(advertised(&config, any, true), "https://central:7070");
    }
}
