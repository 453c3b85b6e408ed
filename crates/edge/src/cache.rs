//! The edge's read cache: results of reads, found or not, kept for their `cacheTtl`.
//!
//! This is where Workers KV's staleness comes from: a cached result is served until its TTL
//! runs out even if the replica has meanwhile received a newer write (unless the edge is
//! configured to invalidate on replication). The cache is bounded in bytes.
//!
//! Only reads fill it. A write this edge made (or, with `invalidate_on_replication`, one
//! replication brought) drops the key's entry once the replica holds the write, so the next
//! read finds the write in the replica; writes never fill the cache, so a write-heavy load does
//! not evict the entries reads use, nor pay for caching values nobody reads (measured: caching
//! every written value, and moka rehashing its growing table, was 18% of the CPU of
//! `bench/writes.sh`). A read that was under way when a write to its key landed may have read
//! the replica before the write: [`ReadCache::fill`] sees that from the key's write stripe
//! (see [`ReadTicket`]) and does not leave such a result cached.

use std::collections::hash_map::RandomState;
use std::hash::BuildHasher;
use std::sync::atomic::{AtomicU64, Ordering};
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
    /// Per stripe of keys, how many writes to its keys have landed in the replica.
    writes: Arc<[AtomicU64]>,
    /// Picks a key's stripe; keyed randomly, so that no client can aim at one stripe.
    stripes: RandomState,
}

/// Write stripes: a write to a key makes reads of the keys sharing its stripe that were under
/// way not cache what they read, so more stripes mean fewer such reads go uncached.
const STRIPES: usize = 4096;

/// Taken before a read of the replica, and handed to [`ReadCache::fill`] with what the read
/// found: the key's write stripe and how many writes it had seen.
#[derive(Clone, Copy, Debug)]
pub struct ReadTicket {
    stripe: usize,
    writes: u64,
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
        ReadCache {
            entries,
            lookups,
            writes: (0..STRIPES).map(|_| AtomicU64::new(0)).collect(),
            stripes: RandomState::new(),
        }
    }

    fn stripe(&self, namespace: NamespaceId, key: &str) -> usize {
        (self.stripes.hash_one((namespace, key)) % STRIPES as u64) as usize
    }

    /// To take before reading `key` in the replica, for [`ReadCache::fill`].
    pub fn ticket(&self, namespace: NamespaceId, key: &str) -> ReadTicket {
        let stripe = self.stripe(namespace, key);
        ReadTicket {
            stripe,
            writes: self.writes[stripe].load(Ordering::SeqCst),
        }
    }

    fn written_since(&self, ticket: ReadTicket) -> bool {
        self.writes[ticket.stripe].load(Ordering::SeqCst) != ticket.writes
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

    /// Caches what a read that took `ticket` found, unless a result for the key is cached
    /// already, and returns the cached result, or the read's own if it is not to be cached: a
    /// write to a key of its stripe landed in the replica after the ticket was taken, so what
    /// the read found may be older than that write. Checked before and again after the entry
    /// goes in: a write that lands in between sees the entry and drops it, or this sees the
    /// write and drops it (see [`ReadCache::written`]).
    pub fn fill(
        &self,
        ticket: ReadTicket,
        namespace: NamespaceId,
        key: &str,
        value: Option<LiveValue>,
        ttl: Duration,
    ) -> Arc<Cached> {
        let read = Arc::new(Cached { value, ttl });
        if self.written_since(ticket) {
            return read;
        }
        let key = (namespace, key.to_owned());
        let cached = self
            .entries
            .entry_by_ref(&key)
            .or_insert_with(|| read.clone())
            .into_value();
        if self.written_since(ticket) {
            self.entries.invalidate(&key);
            return read;
        }
        cached
    }

    /// A write to `key` has landed in the replica: drops the key's cached result, so the next
    /// read finds the write, and keeps reads under way from caching what they read before it.
    pub fn written(&self, namespace: NamespaceId, key: &str) {
        let stripe = self.stripe(namespace, key);
        // Counted first, dropped second: a read's fill that comes between the two is dropped
        // here, and one that comes after sees the count.
        self.writes[stripe].fetch_add(1, Ordering::SeqCst);
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

    fn fill(cache: &ReadCache, key: &str, found: Option<LiveValue>) -> Option<LiveValue> {
        let ticket = cache.ticket(NS, key);
        let ttl = Duration::from_secs(60);
        cache.fill(ticket, NS, key, found, ttl).value.clone()
    }

    #[test]
    fn a_fill_never_replaces_a_cached_result_and_a_write_drops_it() {
        let cache = ReadCache::new(1 << 20, "test");
        assert_eq!(fill(&cache, "k", None), None);
        // A later read of a newer replica still gets the cached "not found".
        assert_eq!(fill(&cache, "k", value("new")), None);
        // A local write drops it: the next read caches what it finds.
        cache.written(NS, "k");
        assert!(cache.get(NS, "k").is_none());
        assert_eq!(fill(&cache, "k", value("mine")), value("mine"));
        assert_eq!(cache.get(NS, "k").unwrap().value, value("mine"));
    }

    #[test]
    fn a_read_overtaken_by_a_write_is_not_cached() {
        let cache = ReadCache::new(1 << 20, "test");
        let ttl = Duration::from_secs(60);
        // The read took its ticket (and read the replica) before the write landed.
        let ticket = cache.ticket(NS, "k");
        cache.written(NS, "k");
        let answered = cache.fill(ticket, NS, "k", value("old"), ttl);
        assert_eq!(answered.value, value("old"));
        assert!(cache.get(NS, "k").is_none(), "the older read stayed cached");
        // Reads that start after the write cache again.
        assert_eq!(fill(&cache, "k", value("new")), value("new"));
        assert!(cache.get(NS, "k").is_some());
    }

    #[test]
    fn entries_expire_after_their_own_ttl() {
        let cache = ReadCache::new(1 << 20, "test");
        let short = cache.ticket(NS, "short");
        cache.fill(short, NS, "short", value("s"), Duration::from_millis(50));
        let long = cache.ticket(NS, "long");
        cache.fill(long, NS, "long", value("l"), Duration::from_secs(60));
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
            let key = format!("k{i}");
            let ticket = cache.ticket(NS, &key);
            cache.fill(ticket, NS, &key, big.clone(), Duration::from_secs(60));
        }
        cache.entries.run_pending_tasks();
        assert!(cache.entries.weighted_size() <= 64 * 1024);
        assert!(cache.entries.entry_count() < 100);
    }
}
