//! `GET /cluster`: the cluster as one node's gossip sees it.
//!
//! One typed value for the wire shape: the node serialises it, and the CLI, the benchmark,
//! the membership metrics and the console's server side deserialise or read it.

use std::fmt;

use serde::{Deserialize, Serialize};

/// The answer of `GET /cluster`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterView {
    /// Every member gossip knows, live or dead.
    pub members: Vec<Member>,
    /// The write region's durable log sequence, as gossip last carried it.
    pub central_durable_sequence: Option<u64>,
}

impl ClusterView {
    /// The live members playing `role`.
    pub fn live(&self, role: NodeRole) -> impl Iterator<Item = &Member> {
        self.members
            .iter()
            .filter(move |m| m.live && m.role == Some(role))
    }
}

/// The role a node plays, as gossiped.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NodeRole {
    /// The write region.
    Central,
    /// A read replica serving the API.
    Edge,
}

impl NodeRole {
    /// The name gossip and `/cluster` use.
    pub fn as_str(self) -> &'static str {
        match self {
            NodeRole::Central => "central",
            NodeRole::Edge => "edge",
        }
    }

    /// The role a gossiped name stands for; `None` for a name this version does not know.
    pub fn parse(name: &str) -> Option<NodeRole> {
        match name {
            "central" => Some(NodeRole::Central),
            "edge" => Some(NodeRole::Edge),
            _ => None,
        }
    }
}

impl fmt::Display for NodeRole {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(self.as_str())
    }
}

/// Whether gossip's failure detector hears from a member.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum MemberStatus {
    /// Heard from recently.
    Live,
    /// Not heard from for longer than the failure detector allows.
    Dead,
    /// Known but not yet judged either way.
    #[default]
    Joining,
}

impl MemberStatus {
    /// Every status, in the order tables and metrics list them.
    pub const ALL: [MemberStatus; 3] = [
        MemberStatus::Live,
        MemberStatus::Dead,
        MemberStatus::Joining,
    ];

    /// The name `/cluster` and the metrics use.
    pub fn as_str(self) -> &'static str {
        match self {
            MemberStatus::Live => "live",
            MemberStatus::Dead => "dead",
            MemberStatus::Joining => "joining",
        }
    }
}

impl fmt::Display for MemberStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(self.as_str())
    }
}

/// One cluster member.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Member {
    /// Node id.
    pub node_id: String,
    /// Its role; `None` when it has not gossiped one this version knows.
    pub role: Option<NodeRole>,
    /// The node's region.
    pub region: Option<String>,
    /// Whether it is live (the same as `status == Live`, kept for scripts).
    pub live: bool,
    /// Live, dead or joining.
    pub status: MemberStatus,
    /// Gossip address.
    pub gossip: String,
    /// Software version.
    pub version: Option<String>,
    /// HTTP(S) address of the REST API (edges).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http: Option<String>,
    /// gRPC address (central).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grpc: Option<String>,
    /// Address of the workerd KV binding (edges that serve it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workerd: Option<String>,
    /// Central's durable log sequence (central).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub durable_sequence: Option<u64>,
    /// The oldest sequence central's log still holds: an edge behind it needs a snapshot.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub log_oldest_sequence: Option<u64>,
    /// Unix milliseconds when the edge last had every entry it knew of.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub caught_up_at_ms: Option<u64>,
    /// The edge's applied log sequence.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub applied_sequence: Option<u64>,
    /// How many log entries the edge lacks; absent while central's sequence is unknown.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lag_entries: Option<u64>,
    /// How long the edge has lacked entries, in milliseconds; absent while unknown.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lag_ms: Option<u64>,
}
