//! The edge's read cache: results of reads, found or not, kept for their `cacheTtl`.
//!
//! This is where Workers KV's staleness comes from: a cached result is served until its TTL
//! runs out even if the replica has meanwhile received a newer write (unless the edge is
//! configured to invalidate on replication). The cache is bounded in bytes.

use std::sync::Arc;
use std::time::{Duration, Instant};

use driftkv_core::{LiveValue, NamespaceId};
use driftkv_metrics::prometheus::IntCounter;
use driftkv_metrics::{CACHE_EVICTIONS, CACHE_LOOKUPS};
use moka::notification::RemovalCause;
use moka::sync::Cache;
use moka::Expiry;

/// A cached read result: the value, or `None` for "not found" (negative caching).
#[derive(Clone, Debug)]
pub struct Cached {
    pub value: Option<LiveValue>,
    ttl: Duration,
}

type Key = (NamespaceId, String);

/// Each entry expires after its own TTL.
struct PerEntryTtl;

impl Expiry<Key, Arc<Cached>> for PerEntryTtl {
    fn expire_after_create(&self, _: &Key, value: &Arc<Cached>, _: Instant) -> Option<Duration> {
        Some(value.ttl)
    }

    fn expire_after_update(
        &self,
        _: &Key,
        value: &Arc<Cached>,
        _: Instant,
        _: Option<Duration>,
    ) -> Option<Duration> {
        Some(value.ttl)
    }
}

/// The read cache of one edge.
#[derive(Clone)]
pub struct ReadCache {
    entries: Cache<Key, Arc<Cached>>,
    lookups: Lookups,
}

/// The lookup counters, resolved once for this edge's node label.
#[derive(Clone)]
struct Lookups {
    hit: IntCounter,
    negative_hit: IntCounter,
    miss: IntCounter,
}

/// What an entry costs beyond its key and value bytes (bookkeeping, the key tuple).
const ENTRY_OVERHEAD: usize = 96;

impl ReadCache {
    /// A cache holding at most about `max_bytes` of keys and values, counting its lookups and
    /// evictions under the node label `node`.
    pub fn new(max_bytes: u64, node: &str) -> Self {
        let lookup = |result: &str| CACHE_LOOKUPS.with_label_values(&[node, result]);
        let lookups = Lookups {
            hit: lookup("hit"),
            negative_hit: lookup("negative_hit"),
            miss: lookup("miss"),
        };
        let evictions = ["size", "expired", "replaced", "explicit"]
            .map(|cause| CACHE_EVICTIONS.with_label_values(&[node, cause]));
        let entries = Cache::builder()
            .max_capacity(max_bytes)
            .weigher(|(_, key): &Key, cached: &Arc<Cached>| {
                let value = cached.value.as_ref().map_or(0, |v| {
                    v.value.len() + v.metadata.as_ref().map_or(0, String::len)
                });
                u32::try_from(ENTRY_OVERHEAD + key.len() + value).unwrap_or(u32::MAX)
            })
            .expire_after(PerEntryTtl)
            .eviction_listener(move |_, _, cause| {
                let index = match cause {
                    RemovalCause::Size => 0,
                    RemovalCause::Expired => 1,
                    RemovalCause::Replaced => 2,
                    RemovalCause::Explicit => 3,
                };
                evictions[index].inc();
            })
            .build();
        ReadCache { entries, lookups }
    }

    /// The cached result for a key, if one is still within its TTL.
    pub fn get(&self, namespace: NamespaceId, key: &str) -> Option<Arc<Cached>> {
        // A borrowed lookup would need the tuple's parts borrowed together; keys are short.
        let found = self.entries.get(&(namespace, key.to_owned()));
        match &found {
            Some(cached) if cached.value.is_some() => self.lookups.hit.inc(),
            Some(_) => self.lookups.negative_hit.inc(),
            None => self.lookups.miss.inc(),
        }
        found
    }

    /// What the cached entries weigh against the cache's bound, in bytes.
    pub fn weighted_bytes(&self) -> u64 {
        // moka settles its bookkeeping lazily; settle it so the figure is current.
        self.entries.run_pending_tasks();
        self.entries.weighted_size()
    }

    /// Caches a read result unless a result for the key is already cached, and returns the one
    /// that is. A read that raced with a local write therefore never replaces the write's
    /// fresher entry with the older result it read.
    pub fn fill(
        &self,
        namespace: NamespaceId,
        key: &str,
        value: Option<LiveValue>,
        ttl: Duration,
    ) -> Arc<Cached> {
        self.entries
            .entry((namespace, key.to_owned()))
            .or_insert_with(|| Arc::new(Cached { value, ttl }))
            .into_value()
    }

    /// Caches the result of a write this edge made, replacing what was cached: a write is
    /// visible at once where it was made. The value must be in an allocation of its own, as
    /// [`driftkv_store::Store::apply_logged`] leaves it, not a slice of a larger buffer (as
    /// received, it is one of the request's whole receive buffer): the cache would keep that
    /// whole buffer alive for as long as it keeps the value.
    pub fn put(
        &self,
        namespace: NamespaceId,
        key: String,
        value: Option<LiveValue>,
        ttl: Duration,
    ) {
        self.entries
            .insert((namespace, key), Arc::new(Cached { value, ttl }));
    }

    /// Drops a key's cached result.
    pub fn invalidate(&self, namespace: NamespaceId, key: &str) {
        self.entries.invalidate(&(namespace, key.to_owned()));
    }

    /// Drops every cached result.
    pub fn clear(&self) {
        self.entries.invalidate_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    const NS: NamespaceId = NamespaceId([1; 16]);

    fn value(text: &'static str) -> Option<LiveValue> {
        Some(LiveValue {
            value: Bytes::from_static(text.as_bytes()),
            metadata: None,
            expiration: None,
        })
    }

    #[test]
    fn a_fill_never_replaces_a_cached_result() {
        let cache = ReadCache::new(1 << 20, "test");
        let long = Duration::from_secs(60);
        assert_eq!(cache.fill(NS, "k", None, long).value, None);
        // A later read of a newer replica still gets the cached "not found".
        assert_eq!(cache.fill(NS, "k", value("new"), long).value, None);
        // A local write replaces it.
        cache.put(NS, "k".into(), value("mine"), long);
        assert_eq!(cache.get(NS, "k").unwrap().value, value("mine"));
        cache.invalidate(NS, "k");
        assert!(cache.get(NS, "k").is_none());
    }

    #[test]
    fn entries_expire_after_their_own_ttl() {
        let cache = ReadCache::new(1 << 20, "test");
        cache.fill(NS, "short", value("s"), Duration::from_millis(50));
        cache.fill(NS, "long", value("l"), Duration::from_secs(60));
        let deadline = Instant::now() + Duration::from_secs(10);
        while cache.get(NS, "short").is_some() {
            assert!(Instant::now() < deadline, "the short entry never expired");
            std::thread::sleep(Duration::from_millis(10));
        }
        assert!(cache.get(NS, "long").is_some());
    }

    #[test]
    fn the_cache_is_bounded_in_bytes() {
        let cache = ReadCache::new(64 * 1024, "test");
        let big = Some(LiveValue {
            value: Bytes::from(vec![0u8; 8 * 1024]),
            metadata: None,
            expiration: None,
        });
        for i in 0..100 {
            cache.fill(NS, &format!("k{i}"), big.clone(), Duration::from_secs(60));
        }
        cache.entries.run_pending_tasks();
        assert!(cache.entries.weighted_size() <= 64 * 1024);
        assert!(cache.entries.entry_count() < 100);
    }
}
