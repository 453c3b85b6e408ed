//! Faults the consistency testbed injects into an edge's replication: a delay (fixed plus
//! uniform jitter) between a batch's arrival and its application, a pause, and a forced
//! resynchronisation from a snapshot. They are only reachable through the admin endpoint a node
//! serves when its config enables the testbed; with none set, replication runs as usual.

use std::time::Duration;

use rand::Rng as _;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

/// The faults in force.
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

/// An edge's fault switches.
#[derive(Debug, Default)]
pub struct Faults {
    settings: watch::Sender<FaultSettings>,
    /// Bumped to make the follower drop its stream and rebuild from a snapshot.
    resyncs: watch::Sender<u64>,
}

impl Faults {
    /// The faults in force.
    pub fn settings(&self) -> FaultSettings {
        self.settings.borrow().clone()
    }

    /// Puts `settings` in force (and clears a pause if they do).
    pub fn set(&self, settings: FaultSettings) {
        self.settings.send_replace(settings);
    }

    /// Drops the replication stream and rebuilds the replica from a snapshot.
    pub fn resync(&self) {
        self.resyncs.send_modify(|n| *n += 1);
    }

    pub(crate) fn watch_settings(&self) -> watch::Receiver<FaultSettings> {
        self.settings.subscribe()
    }

    pub(crate) fn watch_resyncs(&self) -> watch::Receiver<u64> {
        self.resyncs.subscribe()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_stay_within_the_fixed_part_plus_jitter() {
        let settings = FaultSettings {
            delay_ms: 100,
            jitter_ms: 50,
            paused: false,
        };
        for _ in 0..200 {
            let delay = settings.sample_delay();
            assert!(delay >= Duration::from_millis(100) && delay <= Duration::from_millis(150));
        }
        assert_eq!(FaultSettings::default().sample_delay(), Duration::ZERO);
    }
}
