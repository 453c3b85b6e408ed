//! The testbed's fault switches as the admin endpoint (`/admin/testbed/...`) takes and shows
//! them: one typed value for each body, shared by the node that serves the endpoint and the
//! testbed that calls it.

use std::time::Duration;

use rand::Rng as _;
use serde::{Deserialize, Serialize};

/// The replication faults in force at an edge (`PUT /admin/testbed/faults`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FaultSettings {
    /// Every replicated batch waits at least this long after it arrives, in milliseconds.
    #[serde(default)]
    pub delay_ms: u64,
    /// ... plus a uniformly random extra of up to this many milliseconds.
    #[serde(default)]
    pub jitter_ms: u64,
    /// Replication stops (nothing is read or applied) until this is cleared.
    #[serde(default)]
    pub paused: bool,
}

impl FaultSettings {
    /// How long the next batch waits.
    pub fn sample_delay(&self) -> Duration {
        let jitter = if self.jitter_ms == 0 {
            0
        } else {
            rand::thread_rng().gen_range(0..=self.jitter_ms)
        };
        Duration::from_millis(self.delay_ms + jitter)
    }
}

/// A node's clock skew (`PUT /admin/testbed/clock-skew`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClockSkew {
    /// Milliseconds ahead of the system clock; negative: behind.
    pub skew_ms: i64,
}

/// What the endpoint answers: the switches a node has and their positions.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FaultState {
    /// The replication faults, on an edge.
    pub replication: Option<FaultSettings>,
    /// The skew of the clock write versions are stamped from, where it is in the node's
    /// process.
    pub hlc_skew_ms: Option<i64>,
}
