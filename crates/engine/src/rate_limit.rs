//! The per-key write rate limit of Workers KV: by default one write per second to any key.

use std::collections::HashMap;
use std::sync::Mutex;

use driftkv_core::{NamespaceId, Write};

/// Remembers when each key was last written and refuses writes that come too soon.
///
/// Only keys written within the last interval need remembering; the map is pruned of older
/// entries whenever it has doubled since the last pruning, so its size follows the write rate
/// rather than the number of keys ever written.
pub struct RateLimiter {
    /// Minimum time between two writes to a key; `None` when the limit is off.
    interval_ms: Option<u64>,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    last_write_ms: HashMap<(NamespaceId, String), u64>,
    prune_at: usize,
}

/// Entries kept before the first pruning.
const FIRST_PRUNE: usize = 4096;

impl RateLimiter {
    /// At most `writes_per_second` writes per second to each key; 0 turns the limit off.
    pub fn per_second(writes_per_second: u32) -> Self {
        RateLimiter {
            interval_ms: (writes_per_second > 0).then(|| 1000 / u64::from(writes_per_second)),
            state: Mutex::new(State {
                last_write_ms: HashMap::new(),
                prune_at: FIRST_PRUNE,
            }),
        }
    }

    /// Which writes of a batch may go ahead at `now_ms`, in order: `Ok` for those that may,
    /// and for the others how many milliseconds remain until their key may be written again
    /// (what a 429's `Retry-After` tells the client). A key written twice in one batch counts
    /// as one write: both go ahead, or neither.
    pub fn admit(
        &self,
        namespace: NamespaceId,
        writes: &[Write],
        now_ms: u64,
    ) -> Vec<Result<(), u64>> {
        let Some(interval) = self.interval_ms else {
            return vec![Ok(()); writes.len()];
        };
        let mut state = self.state.lock().expect("rate limit lock");
        let mut decided: HashMap<&str, Result<(), u64>> = HashMap::new();
        let admitted = writes
            .iter()
            .map(|write| {
                *decided.entry(&write.key).or_insert_with(|| {
                    let slot = state
                        .last_write_ms
                        .entry((namespace, write.key.clone()))
                        .or_insert(0);
                    let since = now_ms.saturating_sub(*slot);
                    if *slot == 0 || since >= interval {
                        *slot = now_ms;
                        Ok(())
                    } else {
                        Err(interval - since)
                    }
                })
            })
            .collect();
        if state.last_write_ms.len() >= state.prune_at {
            state
                .last_write_ms
                .retain(|_, last| now_ms.saturating_sub(*last) < interval);
            state.prune_at = (state.last_write_ms.len() * 2).max(FIRST_PRUNE);
        }
        admitted
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use driftkv_core::service::put;

    const NS: NamespaceId = NamespaceId([1; 16]);

    fn writes(keys: &[&str]) -> Vec<Write> {
        keys.iter().map(|k| put(*k, "v", None, None)).collect()
    }

    #[test]
    fn one_write_per_second_per_key() {
        let limiter = RateLimiter::per_second(1);
        assert_eq!(limiter.admit(NS, &writes(&["a"]), 10_000), [Ok(())]);
        assert_eq!(
            limiter.admit(NS, &writes(&["a", "b"]), 10_250),
            [Err(750), Ok(())]
        );
        assert_eq!(limiter.admit(NS, &writes(&["a"]), 10_999), [Err(1)]);
        assert_eq!(limiter.admit(NS, &writes(&["a"]), 11_000), [Ok(())]);
        // Another namespace's key of the same name is another key.
        assert_eq!(
            limiter.admit(NamespaceId([2; 16]), &writes(&["a"]), 11_000),
            [Ok(())]
        );
    }

    #[test]
    fn a_key_twice_in_a_batch_is_one_write() {
        let limiter = RateLimiter::per_second(1);
        assert_eq!(
            limiter.admit(NS, &writes(&["a", "a"]), 5_000),
            [Ok(()), Ok(())]
        );
        assert_eq!(
            limiter.admit(NS, &writes(&["a", "a"]), 5_500),
            [Err(500), Err(500)]
        );
    }

    #[test]
    fn zero_turns_the_limit_off() {
        let limiter = RateLimiter::per_second(0);
        for _ in 0..3 {
            assert_eq!(limiter.admit(NS, &writes(&["a"]), 1_000), [Ok(())]);
        }
    }

    #[test]
    fn old_entries_are_pruned() {
        let limiter = RateLimiter::per_second(1);
        let batch = |tag: &str| -> Vec<Write> {
            (0..FIRST_PRUNE)
                .map(|i| put(format!("{tag}{i}"), "v", None, None))
                .collect()
        };
        // The first batch fills the map while every entry is still recent: nothing goes.
        limiter.admit(NS, &batch("early"), 1_000);
        assert_eq!(
            limiter.state.lock().unwrap().last_write_ms.len(),
            FIRST_PRUNE
        );
        // Doubling it later prunes the entries whose interval has passed.
        limiter.admit(NS, &batch("late"), 5_000);
        assert_eq!(
            limiter.state.lock().unwrap().last_write_ms.len(),
            FIRST_PRUNE
        );
    }
}
