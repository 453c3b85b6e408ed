//! The keys-per-namespace quota (`limits.keys_per_namespace`, off by default): a write that
//! would bring a namespace's live keys over the limit is refused whole (403, code 10053).
//!
//! Counting a namespace's live keys costs a scan of them, so a count is kept per namespace and
//! taken again at most every [`RECOUNT_EVERY_MS`]; in between, every key a write adds is added
//! to it, and keys deleted or expired only free room at the next count. A write's keys are
//! counted from its admission: pending while it waits for the commit thread (a count cannot see
//! them yet), then landed. A count is taken outside the lock (other writers go on meanwhile) and
//! kept together with the keys that landed while it ran, which it may have missed. The count
//! can only be high, never low (two writers adding the same new key at once both count it, and
//! a key that landed while a count ran may be counted twice), so the quota may refuse a little
//! early but is never passed.

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;

use driftkv_core::{KvError, NamespaceId, Write, WriteOp};
use driftkv_store::Store;

/// How long a namespace's count of live keys is trusted before it is taken again.
pub(crate) const RECOUNT_EVERY_MS: u64 = 10_000;

/// Keys one page of a recount reads.
const RECOUNT_PAGE: usize = 1000;

/// What is known of a namespace's live keys: `counted` at the last count, plus those landed
/// since it began, plus those pending.
#[derive(Default)]
struct Count {
    /// The live keys the last count found, if one has been taken.
    counted: Option<u64>,
    /// `landed` when the last count began.
    landed_before_count: u64,
    /// When the last count was taken.
    counted_at_ms: u64,
    /// Whether a recount is under way (so that other writers use the count they have).
    recounting: bool,
    /// The keys of all writes that landed, ever (only the difference matters).
    landed: u64,
    /// The keys of admitted writes that have not landed or failed yet.
    pending: u64,
}

impl Count {
    /// The keys the namespace holds or is about to, if a count has been taken.
    fn keys(&self) -> Option<u64> {
        self.counted
            // Saturating: a namespace deleted while counted may count from 0 again.
            .map(|counted| {
                counted + self.landed.saturating_sub(self.landed_before_count) + self.pending
            })
    }
}

/// The quota and the counts it keeps.
pub(crate) struct KeyQuota {
    /// Most live keys a namespace may hold; 0 for no limit.
    limit: u64,
    counts: Mutex<HashMap<NamespaceId, Count>>,
}

/// The keys a write was admitted with, pending until [`Admission::landed`] (the write is in the
/// store) or until dropped (it failed).
#[must_use = "an admission is pending until the write lands or fails"]
pub(crate) struct Admission<'a> {
    quota: &'a KeyQuota,
    namespace: NamespaceId,
    keys: u64,
}

impl Admission<'_> {
    /// The write is in the store: its keys count as landed.
    pub(crate) fn landed(mut self) {
        self.release(true);
    }

    fn release(&mut self, landed: bool) {
        let keys = std::mem::take(&mut self.keys);
        if keys == 0 {
            return;
        }
        let mut counts = self.quota.counts.lock().expect("key count lock");
        // Gone if the namespace was deleted meanwhile.
        if let Some(count) = counts.get_mut(&self.namespace) {
            count.pending = count.pending.saturating_sub(keys);
            if landed {
                count.landed += keys;
            }
        }
    }
}

impl std::fmt::Debug for Admission<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Admission")
            .field("namespace", &self.namespace)
            .field("keys", &self.keys)
            .finish()
    }
}

impl Drop for Admission<'_> {
    fn drop(&mut self) {
        self.release(false);
    }
}

impl KeyQuota {
    /// A quota of `limit` live keys per namespace; 0 turns it off.
    pub(crate) fn new(limit: u64) -> Self {
        KeyQuota {
            limit,
            counts: Mutex::new(HashMap::new()),
        }
    }

    /// Admits `writes` to `namespace` if the keys they add still fit, and counts them as
    /// pending until the admission lands or is dropped.
    pub(crate) fn admit(
        &self,
        store: &Store,
        namespace: NamespaceId,
        writes: &[Write],
        now_ms: u64,
    ) -> Result<Admission<'_>, KvError> {
        let mut admission = Admission {
            quota: self,
            namespace,
            keys: 0,
        };
        if self.limit == 0 {
            return Ok(admission);
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
            return Ok(admission);
        }
        let (mut counts, keys) = loop {
            self.recount_if_stale(store, namespace, now_ms)?;
            let counts = self.counts.lock().expect("key count lock");
            // None if the count was forgotten (the namespace deleted) since: count again.
            if let Some(keys) = counts.get(&namespace).and_then(Count::keys) {
                break (counts, keys);
            }
        };
        let count = counts.get_mut(&namespace).expect("found above");
        if keys + added.len() as u64 > self.limit {
            return Err(KvError::QuotaExceeded(format!(
                "namespace {namespace} holds {keys} keys and the write adds {}, over the {} a namespace may hold (limits.keys_per_namespace)",
                added.len(),
                self.limit
            )));
        }
        count.pending += added.len() as u64;
        admission.keys = added.len() as u64;
        Ok(admission)
    }

    /// Counts `namespace`'s live keys again if its count is missing or stale and no one else is
    /// counting them already: the scan outside the lock, then kept with what landed meanwhile.
    fn recount_if_stale(
        &self,
        store: &Store,
        namespace: NamespaceId,
        now_ms: u64,
    ) -> Result<(), KvError> {
        let landed_before = {
            let mut counts = self.counts.lock().expect("key count lock");
            let count = counts.entry(namespace).or_default();
            let stale = now_ms.saturating_sub(count.counted_at_ms) >= RECOUNT_EVERY_MS;
            // Until a first count is in, every writer counts (there is nothing to go on).
            if count.counted.is_some() && (!stale || count.recounting) {
                return Ok(());
            }
            count.recounting = true;
            count.landed
        };
        let scanned = live_keys(store, namespace, now_ms);
        let mut counts = self.counts.lock().expect("key count lock");
        let count = counts.entry(namespace).or_default();
        count.recounting = false;
        let scanned = scanned?;
        // A newer count than this one may be in already (first counts run side by side).
        if count.counted.is_none() || landed_before >= count.landed_before_count {
            count.counted = Some(scanned);
            count.landed_before_count = landed_before;
            count.counted_at_ms = now_ms;
        }
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
            .unwrap()
            .landed();
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
            .unwrap()
            .landed();
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
            .unwrap()
            .landed();
        assert!(quota.admit(&store, ns.id, &[put("f")], later).is_err());
        // A write that fails frees its room at once.
        let mut later = later + RECOUNT_EVERY_MS;
        drop(quota.admit(&store, ns.id, &[put("d")], later).unwrap());
        later += 1;
        quota
            .admit(&store, ns.id, &[put("d")], later)
            .unwrap()
            .landed();
        // Off: anything goes.
        KeyQuota::new(0)
            .admit(&store, ns.id, &[put("f"), put("g")], later)
            .unwrap()
            .landed();
    }

    fn store_with_namespace() -> (tempfile::TempDir, Store, NamespaceId) {
        let dir = tempfile::tempdir().unwrap();
        let store = driftkv_store::open(driftkv_store::EngineKind::Fjall, dir.path()).unwrap();
        let ns = driftkv_store::suite::ns(1);
        store.put_namespace(&ns).unwrap();
        (dir, store, ns.id)
    }

    fn land(store: &Store, namespace: NamespaceId, keys: &[&str]) {
        let version = Version {
            timestamp: 1,
            origin: 1,
        };
        for key in keys {
            let record = put(key).into_record(version);
            store
                .apply(namespace, &[(key.to_string(), record)])
                .unwrap();
        }
    }

    #[test]
    fn a_recount_keeps_the_keys_of_writes_still_on_their_way_to_the_store() {
        // Found by review: 8 writers of 20-key bulk writes ended with 180 live keys under a
        // limit of 100, as recounts dropped the keys queued at the commit thread.
        let (_dir, store, ns) = store_with_namespace();
        let quota = KeyQuota::new(3);
        let now = 1_000_000;
        let first = quota.admit(&store, ns, &[put("a"), put("b")], now).unwrap();
        // The count is stale, the store still empty: a recount finds nothing.
        let later = now + RECOUNT_EVERY_MS;
        let second = quota.admit(&store, ns, &[put("c")], later).unwrap();
        let refused = quota.admit(&store, ns, &[put("d")], later).unwrap_err();
        assert!(matches!(refused, KvError::QuotaExceeded(_)), "{refused}");
        // They land: the recount finds them, and counts them once.
        land(&store, ns, &["a", "b", "c"]);
        first.landed();
        second.landed();
        let again = later + RECOUNT_EVERY_MS;
        assert!(quota.admit(&store, ns, &[put("d")], again).is_err());
        store
            .apply(
                ns,
                &[(
                    "a".to_owned(),
                    Record::tombstone(Version {
                        timestamp: 2,
                        origin: 1,
                    }),
                )],
            )
            .unwrap();
        let after_delete = again + RECOUNT_EVERY_MS;
        quota
            .admit(&store, ns, &[put("d")], after_delete)
            .unwrap()
            .landed();
    }
}
