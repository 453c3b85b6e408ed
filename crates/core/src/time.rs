//! Wall-clock time. Expiration in Workers KV is wall-clock time in unix seconds; each node
//! judges it by its own [`WallClock`], which tests and clock-skew experiments can move, per
//! node, without waiting for it.

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

/// Milliseconds since the unix epoch (0 if the clock is before 1970).
pub fn unix_now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Milliseconds since the unix epoch of an HLC timestamp (NTP64: seconds in the high 32 bits,
/// fraction of a second in the low 32), as versions carry.
pub fn hlc_to_unix_ms(timestamp: u64) -> u64 {
    let seconds = timestamp >> 32;
    let fraction = timestamp & 0xffff_ffff;
    seconds * 1000 + ((fraction * 1000) >> 32)
}

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
        unix_now_ms()
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
    fn hlc_timestamps_convert_to_milliseconds() {
        assert_eq!(hlc_to_unix_ms(0), 0);
        assert_eq!(hlc_to_unix_ms(5 << 32), 5000);
        // Half a second is 2^31 in the fraction.
        assert_eq!(hlc_to_unix_ms((5 << 32) | (1 << 31)), 5500);
    }
}
