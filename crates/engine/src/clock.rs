//! The clocks of a node: the wall clock that expiration is judged by, behind a trait so tests
//! and clock-skew experiments can move time, per node, without waiting for it; and the hybrid
//! logical clock write versions are stamped from, built on it.

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// A source of wall-clock time in unix milliseconds.
pub trait WallClock: Send + Sync + 'static {
    /// Milliseconds since the unix epoch.
    fn now_ms(&self) -> u64;
}

/// The system clock.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl WallClock for SystemClock {
    fn now_ms(&self) -> u64 {
        driftkv_core::time::unix_now_ms()
    }
}

/// A clock that only moves when told to, for tests.
#[derive(Debug, Default)]
pub struct ManualClock(AtomicU64);

impl ManualClock {
    /// A clock reading `now_ms`.
    pub fn new(now_ms: u64) -> Self {
        ManualClock(AtomicU64::new(now_ms))
    }

    /// Moves the clock to `now_ms`.
    pub fn set(&self, now_ms: u64) {
        self.0.store(now_ms, Ordering::SeqCst);
    }
}

impl WallClock for ManualClock {
    fn now_ms(&self) -> u64 {
        self.0.load(Ordering::SeqCst)
    }
}

/// A node's clock off by a settable skew: the testbed's clock-skew fault, per node. Zero unless
/// an experiment sets it.
pub struct SkewedClock {
    inner: Arc<dyn WallClock>,
    skew_ms: AtomicI64,
}

impl std::fmt::Debug for SkewedClock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SkewedClock")
            .field("skew_ms", &self.skew_ms())
            .finish()
    }
}

impl SkewedClock {
    /// `inner`, not skewed yet.
    pub fn new(inner: Arc<dyn WallClock>) -> Self {
        SkewedClock {
            inner,
            skew_ms: AtomicI64::new(0),
        }
    }

    /// Moves the clock `skew_ms` ahead of `inner` (behind, when negative); 0 restores it.
    pub fn set_skew_ms(&self, skew_ms: i64) {
        self.skew_ms.store(skew_ms, Ordering::SeqCst);
    }

    /// The skew in force, in milliseconds.
    pub fn skew_ms(&self) -> i64 {
        self.skew_ms.load(Ordering::SeqCst)
    }
}

impl WallClock for SkewedClock {
    fn now_ms(&self) -> u64 {
        self.inner.now_ms().saturating_add_signed(self.skew_ms())
    }
}

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

    #[test]
    fn the_skew_moves_the_clock_both_ways() {
        let base = Arc::new(ManualClock::new(1_000_000));
        let clock = SkewedClock::new(base.clone());
        clock.set_skew_ms(60_000);
        assert_eq!(clock.now_ms(), 1_060_000);
        clock.set_skew_ms(-60_000);
        assert_eq!(clock.now_ms(), 940_000);
        clock.set_skew_ms(0);
        assert_eq!(clock.now_ms(), 1_000_000);
    }

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
