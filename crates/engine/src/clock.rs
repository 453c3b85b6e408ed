//! The wall clock that expiration is judged by, behind a trait so tests (and, later,
//! clock-skew experiments) can move time without waiting for it.

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
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

/// The skew the testbed adds to the hybrid-logical-clock source of every engine in the process,
/// in milliseconds (negative: behind). Zero unless an experiment sets it.
static HLC_SKEW_MS: AtomicI64 = AtomicI64::new(0);

/// Skews the clock write versions are stamped from by `skew_ms` (the testbed's clock-skew
/// fault); 0 restores it. The hybrid logical clock stays monotonic whatever the skew: moving
/// it back only slows its physical part until real time catches up.
pub fn set_hlc_skew_ms(skew_ms: i64) {
    HLC_SKEW_MS.store(skew_ms, Ordering::SeqCst);
}

/// The skew in force, in milliseconds.
pub fn hlc_skew_ms() -> i64 {
    HLC_SKEW_MS.load(Ordering::SeqCst)
}

/// The physical clock of write versions: the system clock plus the testbed's skew.
pub(crate) fn skewed_clock() -> uhlc::NTP64 {
    let now = uhlc::system_time_clock();
    let skew = hlc_skew_ms();
    let by = uhlc::NTP64::from(Duration::from_millis(skew.unsigned_abs()));
    if skew >= 0 {
        now + by
    } else {
        now - by
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_skew_moves_the_version_clock_both_ways() {
        let ms = |t: uhlc::NTP64| t.to_duration().as_millis() as i64;
        set_hlc_skew_ms(60_000);
        let ahead = ms(skewed_clock()) - ms(uhlc::system_time_clock());
        set_hlc_skew_ms(-60_000);
        let behind = ms(skewed_clock()) - ms(uhlc::system_time_clock());
        set_hlc_skew_ms(0);
        assert!((59_990..=60_010).contains(&ahead), "{ahead}");
        assert!((-60_010..=-59_990).contains(&behind), "{behind}");
    }
}
