//! The keys-per-namespace quota (`limits.keys_per_namespace`, off by default): a write that
//! would bring a namespace's live keys over the limit is refused whole (403, code 10053).
//!
//! Counting a namespace's live keys costs a scan of them, so a count is kept per namespace and
//! taken again at most every [`RECOUNT_EVERY_MS`]; in between, every key a write adds is added
//! to it, and keys deleted or expired only free room at the next count. The count can only be
//! high, never low (two writers adding the same new key at once both count it), so the quota
//! may refuse a little early but is never passed.

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;

use driftkv_core::{KvError, NamespaceId, Write, WriteOp};
use driftkv_store::Store;

/// How long a namespace's count of live keys is trusted before it is taken again.
pub(crate) const RECOUNT_EVERY_MS: u64 = 10_000;

/// Keys one page of a recount reads.
const RECOUNT_PAGE: usize = 1000;

/// A namespace's live keys when last counted, plus those added since.
struct Count {
    keys: u64,
    counted_at_ms: u64,
}

/// The quota and the counts it keeps.
pub(crate) struct KeyQuota {
    /// Most live keys a namespace may hold; 0 for no limit.
    limit: u64,
    counts: Mutex<HashMap<NamespaceId, Count>>,
}

impl KeyQuota {
    /// A quota of `limit` live keys per namespace; 0 turns it off.
    pub(crate) fn new(limit: u64) -> Self {
        KeyQuota {
            limit,
            counts: Mutex::new(HashMap::new()),
        }
    }

    /// Admits `writes` to `namespace` if the keys they add still fit, and counts them.
    pub(crate) fn admit(
        &self,
        store: &Store,
        namespace: NamespaceId,
        writes: &[Write],
        now_ms: u64,
    ) -> Result<(), KvError> {
        if self.limit == 0 {
            return Ok(());
        }
        let mut added = HashSet::new();
        for write in writes {
            if matches!(write.op, WriteOp::Put(_)) && !added.contains(write.key.as_str()) {
                let live = store
                    .get(namespace, &write.key)?
                    .and_then(|record| record.live)
                    .is_some_and(|value| !value.is_expired(now_ms));
                if !live {
                    added.insert(write.key.as_str());
                }
            }
        }
        if added.is_empty() {
            return Ok(());
        }
        let mut counts = self.counts.lock().expect("key count lock");
        let stale = counts
            .get(&namespace)
            .is_none_or(|count| now_ms.saturating_sub(count.counted_at_ms) >= RECOUNT_EVERY_MS);
        if stale {
            let keys = live_keys(store, namespace, now_ms)?;
            counts.insert(
                namespace,
                Count {
                    keys,
                    counted_at_ms: now_ms,
                },
            );
        }
        let count = counts.get_mut(&namespace).expect("counted above");
        let after = count.keys + added.len() as u64;
        if after > self.limit {
            return Err(KvError::QuotaExceeded(format!(
                "namespace {namespace} holds {} keys and the write adds {}, over the {} a namespace may hold (limits.keys_per_namespace)",
                count.keys,
                added.len(),
                self.limit
            )));
        }
        count.keys = after;
        Ok(())
    }

    /// Forgets a deleted namespace's count.
    pub(crate) fn forget(&self, namespace: NamespaceId) {
        self.counts
            .lock()
            .expect("key count lock")
            .remove(&namespace);
    }
}

/// The live keys of `namespace` at `now_ms`, counted page by page.
fn live_keys(store: &Store, namespace: NamespaceId, now_ms: u64) -> Result<u64, KvError> {
    let mut keys = 0;
    let mut after: Option<String> = None;
    loop {
        let page = store.scan(namespace, "", after.as_deref(), RECOUNT_PAGE, now_ms)?;
        keys += page.keys.len() as u64;
        match page.resume_after {
            Some(next) => after = Some(next),
            None => return Ok(keys),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use driftkv_core::{LiveValue, Record, Version};

    fn put(key: &str) -> Write {
        Write {
            key: key.into(),
            op: WriteOp::Put(LiveValue {
                value: "v".into(),
                expiration: None,
                metadata: None,
            }),
        }
    }

    #[test]
    fn keys_are_counted_and_refused_over_the_limit_and_room_freed_at_the_next_count() {
        let dir = tempfile::tempdir().unwrap();
        let store = driftkv_store::open(driftkv_store::EngineKind::Fjall, dir.path()).unwrap();
        let ns = driftkv_store::suite::ns(1);
        store.put_namespace(&ns).unwrap();
        let quota = KeyQuota::new(3);
        let now = 1_000_000;
        quota
            .admit(&store, ns.id, &[put("a"), put("b")], now)
            .unwrap();
        let version = |t| Version {
            timestamp: t,
            origin: 1,
        };
        for key in ["a", "b"] {
            let record = put(key).into_record(version(1));
            store.apply(ns.id, &[(key.to_owned(), record)]).unwrap();
        }
        // Rewriting a key adds none; the same new key twice adds one.
        quota
            .admit(&store, ns.id, &[put("a"), put("c"), put("c")], now)
            .unwrap();
        let refused = quota.admit(&store, ns.id, &[put("d")], now).unwrap_err();
        assert!(matches!(refused, KvError::QuotaExceeded(_)), "{refused}");
        assert!(refused.to_string().contains("limits.keys_per_namespace"));
        // "c" was never stored and "b" is deleted: the next count frees their room.
        store
            .apply(ns.id, &[("b".to_owned(), Record::tombstone(version(2)))])
            .unwrap();
        assert!(quota.admit(&store, ns.id, &[put("d")], now + 1).is_err());
        let later = now + RECOUNT_EVERY_MS;
        quota
            .admit(&store, ns.id, &[put("d"), put("e")], later)
            .unwrap();
        assert!(quota.admit(&store, ns.id, &[put("f")], later).is_err());
        // Off: anything goes.
        KeyQuota::new(0)
            .admit(&store, ns.id, &[put("f"), put("g")], later)
            .unwrap();
    }
}
