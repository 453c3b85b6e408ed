//! Garbage collection of tombstones, and the snapshot install that makes it safe (see
//! `docs/gc.md` for the argument).
//!
//! Every tombstone a node stores is indexed in [`Tree::Tombstones`] by the log sequence of the
//! change that made it (a delete's own sequence; for an expiry, the node's position in the log
//! when it expired, which is at or after the put it ends) with the time the key went. A
//! tombstone is purged once that sequence is at or below the horizon (every replica has
//! applied past it) and the time is older than the grace period. Purging raises the
//! [garbage-collection floor](Store::gc_floor): a replica ignores replayed entries at or below
//! it, and central sends a replica below it to a snapshot.

use std::collections::HashSet;
use std::future::Future;
use std::ops::Bound;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};
use std::time::Duration;

use driftkv_core::record::RECORD_HEAD;
use driftkv_core::{KvError, NamespaceId, Record};

use crate::backend::{Batch, Tree};
use crate::commit::REMOVAL_CHUNK;
use crate::layout::{
    key_of, namespace_tombstone_key, next_namespace, parse_tombstone_key, parse_tombstone_value,
    record_key, sequence_bytes, tombstone_key, APPLIED_SEQUENCE, GC_FLOOR, PENDING_SEQUENCE,
};
use crate::store::{stored_head, NamespaceTombstone, Store};
use crate::StoreError;

/// Most index entries one purge batch examines, so that the writer lock is held briefly.
const PURGE_CHUNK: usize = 1000;

/// Keys removed (by garbage collection and log trimming) after which the trees they came from
/// are compacted, so that their space goes back to the file system.
pub const COMPACT_AFTER_REMOVALS: u64 = 100_000;

impl Store {
    /// Purges the tombstones logged at or below `horizon` (capped at this node's own position
    /// in the log) that went at or before `cutoff_ms` (unix milliseconds: now less the grace
    /// period). Returns how many tombstones went. A tombstone since overwritten (the key
    /// written again, or deleted again later) only loses its stale index entry.
    pub fn purge_tombstones(&self, horizon: u64, cutoff_ms: u64) -> Result<usize, StoreError> {
        let horizon = horizon.min(self.position());
        let end = horizon.saturating_add(1).to_be_bytes();
        let mut purged = 0;
        loop {
            let _writer = self.writer.lock().expect("writer lock");
            let mut batch = Batch::new();
            let mut examined = 0;
            let mut young = false;
            let mut purged_here = 0;
            for entry in self
                .backend
                .range(Tree::Tombstones, Bound::Unbounded, Bound::Excluded(&end))
                .take(PURGE_CHUNK)
            {
                let (k, v) = entry?;
                let (gone_at_ms, version) = parse_tombstone_value(&v)?;
                // The index is in log order, which is nearly time order: the first tombstone
                // still within its grace period ends the round.
                if gone_at_ms > cutoff_ms {
                    young = true;
                    break;
                }
                examined += 1;
                let (_, namespace, key) = parse_tombstone_key(&k)?;
                let stored_key = record_key(namespace, key.as_bytes());
                if let Some(head) =
                    self.backend
                        .get_head(Tree::Records, &stored_key, RECORD_HEAD)?
                {
                    let head = stored_head(&head)?;
                    if !head.live && head.version == version {
                        batch.remove(Tree::Records, stored_key);
                        purged_here += 1;
                    }
                }
                batch.remove(Tree::Tombstones, k.to_vec());
            }
            if batch.is_empty() {
                return Ok(purged);
            }
            let floor = self.gc_floor.load(Ordering::SeqCst).max(horizon);
            if purged_here > 0 {
                batch.put(Tree::Meta, GC_FLOOR.to_vec(), sequence_bytes(floor));
            }
            let removed = batch.len() as u64;
            self.backend.commit(batch)?;
            self.removed_since_compaction
                .fetch_add(removed, Ordering::SeqCst);
            if purged_here > 0 {
                self.gc_floor.store(floor, Ordering::SeqCst);
            }
            purged += purged_here;
            if young || examined < PURGE_CHUNK {
                return Ok(purged);
            }
        }
    }

    /// One round of garbage collection: [`Store::purge_tombstones`] and
    /// [`Store::purge_namespace_tombstones`] at `horizon` and `cutoff_ms`, then
    /// [`Store::compact_if_due`].
    pub fn collect_garbage(&self, horizon: u64, cutoff_ms: u64) -> Result<Purged, StoreError> {
        let purged = Purged {
            tombstones: self.purge_tombstones(horizon, cutoff_ms)?,
            namespaces: self.purge_namespace_tombstones(horizon, cutoff_ms)?,
        };
        self.compact_if_due()?;
        Ok(purged)
    }

    /// Compacts the trees garbage collection and log trimming remove from once they have
    /// removed [`COMPACT_AFTER_REMOVALS`] keys since the last compaction (see
    /// [`Backend::compact`](crate::Backend::compact)); returns whether it did.
    pub fn compact_if_due(&self) -> Result<bool, StoreError> {
        if self.removed_since_compaction.load(Ordering::SeqCst) < COMPACT_AFTER_REMOVALS {
            return Ok(false);
        }
        self.removed_since_compaction.store(0, Ordering::SeqCst);
        for tree in [Tree::Records, Tree::Tombstones, Tree::Log] {
            self.backend.compact(tree)?;
        }
        Ok(true)
    }

    /// Purges the namespace tombstones of deletions logged at or below `horizon` (capped at
    /// this node's own position in the log) that happened at or before `cutoff_ms`: the rule
    /// of [`Store::purge_tombstones`]. Returns how many went.
    pub fn purge_namespace_tombstones(
        &self,
        horizon: u64,
        cutoff_ms: u64,
    ) -> Result<usize, StoreError> {
        let _writer = self.writer.lock().expect("writer lock");
        let horizon = horizon.min(self.position());
        let due: Vec<NamespaceId> = self
            .namespace_tombstones
            .read()
            .expect("namespace tombstones lock")
            .iter()
            .filter(|(_, t)| t.sequence <= horizon && t.gone_at_ms <= cutoff_ms)
            .map(|(id, _)| *id)
            .collect();
        if due.is_empty() {
            return Ok(0);
        }
        let mut batch = Batch::new();
        for id in &due {
            batch.remove(Tree::Meta, namespace_tombstone_key(*id));
        }
        let floor = self.gc_floor.load(Ordering::SeqCst).max(horizon);
        batch.put(Tree::Meta, GC_FLOOR.to_vec(), sequence_bytes(floor));
        self.backend.commit(batch)?;
        self.gc_floor.store(floor, Ordering::SeqCst);
        let mut tombstones = self
            .namespace_tombstones
            .write()
            .expect("namespace tombstones lock");
        for id in &due {
            tombstones.remove(id);
        }
        Ok(due.len())
    }

    /// Installs one run of a snapshot's records of `namespace`, which central sends in key
    /// order: removes every local record whose key lies after `after` and up to the run's
    /// last key (to the namespace's end with `to_end`) and is neither in the run nor in
    /// `keep`, then applies the run last-write-wins. So a key central no longer holds
    /// (deleted, and its tombstone purged) does not survive the install, while `keep` (an
    /// edge's own writes logged after the snapshot began, which replication brings again)
    /// does. Returns how many local records were removed.
    pub fn install_snapshot_run(
        &self,
        namespace: NamespaceId,
        after: Option<&str>,
        records: &[(String, Record)],
        to_end: bool,
        keep: &HashSet<String>,
    ) -> Result<usize, StoreError> {
        let removed = {
            let _writer = self.writer.lock().expect("writer lock");
            if !self.has_namespace(namespace) {
                return Err(StoreError::NoSuchNamespace(namespace));
            }
            let in_run: HashSet<&str> = records.iter().map(|(key, _)| key.as_str()).collect();
            let start = record_key(namespace, after.unwrap_or_default().as_bytes());
            let from = match after {
                Some(_) => Bound::Excluded(start.as_slice()),
                None => Bound::Included(start.as_slice()),
            };
            let last = records
                .last()
                .map(|(key, _)| record_key(namespace, key.as_bytes()));
            let namespace_end = next_namespace(namespace).map(|next| record_key(next, b""));
            let to = match (&last, to_end) {
                (_, true) => namespace_end
                    .as_deref()
                    .map_or(Bound::Unbounded, Bound::Excluded),
                (Some(last), false) => Bound::Included(last.as_slice()),
                (None, false) => return Ok(0),
            };
            let mut removed = 0;
            let mut batch = Batch::new();
            // Keys only: a large value's pieces are not read.
            for entry in self.backend.range_heads(Tree::Records, from, to, 0) {
                let (k, _) = entry?;
                let key = key_of(&k)?;
                if !in_run.contains(key.as_str()) && !keep.contains(&key) {
                    batch.remove(Tree::Records, k.to_vec());
                    removed += 1;
                }
                if batch.len() == REMOVAL_CHUNK {
                    self.backend.commit(std::mem::take(&mut batch))?;
                }
            }
            if !batch.is_empty() {
                self.backend.commit(batch)?;
            }
            removed
        };
        self.apply(namespace, records)?;
        Ok(removed)
    }

    /// Finishes a snapshot install: everything up to `sequence` is applied (and replays at or
    /// below it are ignored from now on), and the tombstones the snapshot brought are indexed
    /// under `written_through`, a sequence at or after every change the snapshot reflects, so
    /// that garbage collection may purge them in time; so are the tombstones of namespaces
    /// this replica deleted itself and has not seen the log entry of.
    pub fn finish_snapshot(&self, sequence: u64, written_through: u64) -> Result<(), StoreError> {
        let _writer = self.writer.lock().expect("writer lock");
        let pending = PENDING_SEQUENCE.to_be_bytes();
        loop {
            let mut batch = Batch::new();
            for entry in self
                .backend
                .range(
                    Tree::Tombstones,
                    Bound::Included(&pending),
                    Bound::Unbounded,
                )
                .take(REMOVAL_CHUNK)
            {
                let (k, v) = entry?;
                let (_, namespace, key) = parse_tombstone_key(&k)?;
                batch.remove(Tree::Tombstones, k.to_vec());
                batch.put(
                    Tree::Tombstones,
                    tombstone_key(written_through.max(sequence), namespace, &key),
                    v.to_vec(),
                );
            }
            if batch.is_empty() {
                break;
            }
            self.backend.commit(batch)?;
        }
        let settled = written_through.max(sequence);
        let pending: Vec<(NamespaceId, NamespaceTombstone)> = self
            .namespace_tombstones
            .read()
            .expect("namespace tombstones lock")
            .iter()
            .filter(|(_, t)| t.sequence == PENDING_SEQUENCE)
            .map(|(id, t)| {
                (
                    *id,
                    NamespaceTombstone {
                        sequence: settled,
                        ..*t
                    },
                )
            })
            .collect();
        let floor = self.gc_floor.load(Ordering::SeqCst).max(sequence);
        let mut batch = Batch::new();
        for (id, tombstone) in &pending {
            batch.put(Tree::Meta, namespace_tombstone_key(*id), tombstone.encode());
        }
        batch.put(
            Tree::Meta,
            APPLIED_SEQUENCE.to_vec(),
            sequence_bytes(sequence),
        );
        batch.put(Tree::Meta, GC_FLOOR.to_vec(), sequence_bytes(floor));
        self.backend.commit(batch)?;
        self.applied_sequence.store(sequence, Ordering::SeqCst);
        self.gc_floor.store(floor, Ordering::SeqCst);
        self.namespace_tombstones
            .write()
            .expect("namespace tombstones lock")
            .extend(pending);
        Ok(())
    }

    /// Counts the records stored, with a value or as tombstones: a scan of every record's
    /// head, for gauges refreshed now and then.
    pub fn count_records(&self) -> Result<RecordCounts, StoreError> {
        let mut counts = RecordCounts::default();
        let heads = self.backend.range_heads(
            Tree::Records,
            Bound::Unbounded,
            Bound::Unbounded,
            RECORD_HEAD,
        );
        for entry in heads {
            let (_, v) = entry?;
            if stored_head(&v)?.live {
                counts.values += 1;
            } else {
                counts.tombstones += 1;
            }
        }
        Ok(counts)
    }
}

/// Runs `round` every `every` (the first at once, a late one delaying the next) on `owner`,
/// which the task holds weakly: it stops by itself once `owner` has been dropped. A node's
/// periodic maintenance (garbage collection, expiry sweeps, log trimming) runs on it.
pub fn spawn_every<T, F, Fut>(
    owner: Weak<T>,
    every: Duration,
    round: F,
) -> tokio::task::JoinHandle<()>
where
    T: Send + Sync + 'static,
    F: Fn(Arc<T>) -> Fut + Send + 'static,
    Fut: Future<Output = ()> + Send,
{
    tokio::spawn(async move {
        let mut ticks = tokio::time::interval(every);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticks.tick().await;
            let Some(owner) = owner.upgrade() else { return };
            round(owner).await;
        }
    })
}

/// Runs `round` (one round of a node's garbage collection) every `every` until `owner` is
/// dropped, counting what each round purged in
/// `driftkv_gc_purged_total{kind="tombstone"|"namespace"}` under the node label `node`.
/// Central and an edge differ only in their round.
pub fn spawn_gc_rounds<T, F, Fut>(
    owner: Weak<T>,
    node: &str,
    every: Duration,
    round: F,
) -> tokio::task::JoinHandle<()>
where
    T: Send + Sync + 'static,
    F: Fn(Arc<T>) -> Fut + Send + 'static,
    Fut: Future<Output = Result<Purged, KvError>> + Send,
{
    let counted = Arc::new(PurgeCounters {
        tombstones: driftkv_metrics::GC_PURGED.with_label_values(&[node, "tombstone"]),
        namespaces: driftkv_metrics::GC_PURGED.with_label_values(&[node, "namespace"]),
    });
    spawn_every(owner, every, move |owner| {
        let (done, counted) = (round(owner), counted.clone());
        async move { counted.record(done.await) }
    })
}

/// `driftkv_gc_purged_total` of one node, by kind.
struct PurgeCounters {
    tombstones: driftkv_metrics::prometheus::IntCounter,
    namespaces: driftkv_metrics::prometheus::IntCounter,
}

impl PurgeCounters {
    fn record(&self, round: Result<Purged, KvError>) {
        match round {
            Ok(done) => {
                self.tombstones.inc_by(done.tombstones as u64);
                self.namespaces.inc_by(done.namespaces as u64);
                if done != Purged::default() {
                    tracing::debug!(?done, "purged tombstones");
                }
            }
            Err(e) => tracing::warn!(error = %e, "garbage collection failed"),
        }
    }
}

/// What a round of garbage collection purged.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Purged {
    /// Key tombstones.
    pub tombstones: usize,
    /// Namespace tombstones.
    pub namespaces: usize,
}

/// The records a node stores, by kind.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RecordCounts {
    /// Records with a value (live, or expired and not swept yet).
    pub values: u64,
    /// Tombstones: deleted or expired keys.
    pub tombstones: u64,
}
