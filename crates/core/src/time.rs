//! Wall-clock helpers. Expiration in Workers KV is wall-clock time in unix seconds.

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hlc_timestamps_convert_to_milliseconds() {
        assert_eq!(hlc_to_unix_ms(0), 0);
        assert_eq!(hlc_to_unix_ms(5 << 32), 5000);
        // Half a second is 2^31 in the fraction.
        assert_eq!(hlc_to_unix_ms((5 << 32) | (1 << 31)), 5500);
    }
}
