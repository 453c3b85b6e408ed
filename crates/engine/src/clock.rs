//! The hybrid logical clock write versions are stamped from, built on the node's wall clock
//! ([`driftkv_core::time::WallClock`]).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use driftkv_core::time::WallClock;

/// The hybrid logical clock write versions are stamped from: the node's wall clock (in NTP64
/// form, seconds and binary fractions, as versions have always been), but never less than one
/// tick past the last version it gave, so versions only grow even when the wall clock steps
/// back (a skew taken back, an NTP correction) or many are stamped within one millisecond.
pub(crate) struct VersionClock {
    wall: Arc<dyn WallClock>,
    last: AtomicU64,
}

impl VersionClock {
    pub(crate) fn new(wall: Arc<dyn WallClock>) -> Self {
        VersionClock {
            wall,
            last: AtomicU64::new(0),
        }
    }

    /// Makes every later version greater than `timestamp` (one already given out).
    pub(crate) fn resume_after(&self, timestamp: u64) {
        self.last.fetch_max(timestamp, Ordering::SeqCst);
    }

    /// The next version timestamp.
    pub(crate) fn next(&self) -> u64 {
        let physical = uhlc::NTP64::from(Duration::from_millis(self.wall.now_ms())).as_u64();
        let mut last = self.last.load(Ordering::SeqCst);
        loop {
            let next = physical.max(last + 1);
            match self
                .last
                .compare_exchange_weak(last, next, Ordering::SeqCst, Ordering::SeqCst)
            {
                Ok(_) => return next,
                Err(now) => last = now,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use driftkv_core::time::ManualClock;

    #[test]
    fn versions_follow_the_wall_clock_and_never_step_back() {
        let wall = Arc::new(ManualClock::new(5_000));
        let clock = VersionClock::new(wall.clone());
        let ms = |t: u64| uhlc::NTP64(t).to_duration().as_millis();
        let first = clock.next();
        assert_eq!(ms(first), 5_000);
        // Within the same millisecond: one tick more.
        assert_eq!(clock.next(), first + 1);
        // The wall clock steps back: versions still grow.
        wall.set(1_000);
        let after_step_back = clock.next();
        assert!(after_step_back > first + 1);
        // The wall clock moves on past them: versions follow it again.
        wall.set(9_000);
        assert_eq!(ms(clock.next()), 9_000);
        // A restart resumes after the newest version given before it.
        let restarted = VersionClock::new(Arc::new(ManualClock::new(1_000)));
        restarted.resume_after(first + 5);
        assert_eq!(restarted.next(), first + 6);
    }
}
