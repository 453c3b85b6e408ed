//! The writes of [`Store`]: last-write-wins, the expiration index, log sequencing, the applied
//! sequence and namespace bookkeeping, each written once, as [`Batch`]es any backend commits.
//!
//! Every write holds the store's writer lock from the first read of a stored version to the
//! commit of its batch, so a version read is still the stored one when the batch lands. The
//! expiration index entry of a record goes into the record's own batch; it may later go stale
//! (the key overwritten, the namespace deleted), which [`Store::expire`] checks for.

use std::collections::HashMap;
use std::ops::Bound;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use bytes::Bytes;

use driftkv_core::record::RECORD_HEAD;
use driftkv_core::time::hlc_to_unix_ms;
use driftkv_core::{Change, LogEntry, Namespace, NamespaceId, Record, Version};

use crate::backend::{Batch, Tree};
use crate::layout::{
    corrupt, expiry_key, namespace_tombstone_key, next_namespace, read_sequence, record_key,
    sequence_bytes, tombstone_key, tombstone_value, APPLIED_SEQUENCE, LAST_SEQUENCE,
    PENDING_SEQUENCE, TRIMMED_VERSION,
};
use crate::store::{stored_head, NamespaceTombstone, Store};
use crate::{DueExpiration, StoreError};

/// Most keys one batch of a long removal (a namespace's records, old log entries) holds, so
/// that the removal takes memory in proportion to this rather than to what it removes.
pub(crate) const REMOVAL_CHUNK: usize = 10_000;

/// A batch being built under the writer lock, with the versions it stages, so that two
/// writes to one key in one batch are compared with each other, not with the stored record.
#[derive(Default)]
struct Staging {
    batch: Batch,
    versions: HashMap<Vec<u8>, Version>,
}

/// Writers of a merged append whose key changes are staged and not yet committed.
#[derive(Default)]
struct Run {
    staging: Staging,
    /// Where their results go.
    members: Vec<usize>,
    /// The last sequence before the run: where numbering resumes if the run fails.
    base: u64,
}

fn is_key(change: &Change) -> bool {
    matches!(change, Change::Key { .. })
}

impl Store {
    /// Stages `record` for `key` if its version is newer than the stored (or staged) one,
    /// stored as the bytes `stored` gives (its encoding, or a slice of its log entry's);
    /// returns those bytes if it was. A tombstone is indexed under `sequence`, the log
    /// sequence of its change ([`PENDING_SEQUENCE`] when not known yet), for garbage
    /// collection.
    fn stage_record(
        &self,
        staging: &mut Staging,
        namespace: NamespaceId,
        key: &str,
        record: &Record,
        stored: impl FnOnce() -> Bytes,
        sequence: u64,
    ) -> Result<Option<Bytes>, StoreError> {
        let stored_key = record_key(namespace, key.as_bytes());
        let current = match staging.versions.get(&stored_key) {
            Some(version) => Some(*version),
            None => match self
                .backend
                .get_head(Tree::Records, &stored_key, RECORD_HEAD)?
            {
                Some(head) => Some(stored_head(&head)?.version),
                None => None,
            },
        };
        if current.is_some_and(|current| current >= record.version) {
            return Ok(None);
        }
        if let Some(expiration) = record.live.as_ref().and_then(|live| live.expiration) {
            staging.batch.put(
                Tree::Expiry,
                expiry_key(expiration, namespace, key),
                Vec::new(),
            );
        }
        if record.live.is_none() {
            staging.batch.put(
                Tree::Tombstones,
                tombstone_key(sequence, namespace, key),
                tombstone_value(hlc_to_unix_ms(record.version.timestamp), record.version),
            );
        }
        let stored = stored();
        staging
            .batch
            .put(Tree::Records, stored_key.clone(), stored.clone());
        staging.versions.insert(stored_key, record.version);
        Ok(Some(stored))
    }

    /// Applies a namespace change logged at `sequence` ([`PENDING_SEQUENCE`] when not known),
    /// committing it with `bookkeeping` (its log entry or applied sequence). A namespace record
    /// replaces the stored one only if its version is newer, and never recreates a deleted
    /// namespace (ids are never reused, so such a change is a late or replayed one); a
    /// deletion leaves a namespace tombstone, and the namespace's records go after it is
    /// committed. Returns whether the namespaces changed.
    fn commit_namespace(
        &self,
        change: &Change,
        mut bookkeeping: Batch,
        sequence: u64,
    ) -> Result<bool, StoreError> {
        match change {
            Change::Namespace(namespace) if self.namespace_deleted(namespace.id) => {
                self.backend.commit(bookkeeping)?;
                Ok(false)
            }
            Change::Namespace(namespace) => {
                let (newer, known) = {
                    let namespaces = self.namespaces.read().expect("namespace map lock");
                    let stored = namespaces.get(&namespace.id);
                    (
                        stored.is_none_or(|old| old.version < namespace.version),
                        stored.is_some(),
                    )
                };
                if newer {
                    if !known {
                        // What an interrupted deletion of the same id left must not reappear.
                        self.purge_records(namespace.id)?;
                    }
                    bookkeeping.put(
                        Tree::Namespaces,
                        namespace.id.0.to_vec(),
                        namespace.encode(),
                    );
                }
                self.backend.commit(bookkeeping)?;
                if newer {
                    self.namespaces
                        .write()
                        .expect("namespace map lock")
                        .insert(namespace.id, Arc::new(Namespace::clone(namespace)));
                }
                Ok(newer)
            }
            Change::NamespaceDeleted { id, version } => {
                let existed = self.has_namespace(*id);
                if existed {
                    bookkeeping.remove(Tree::Namespaces, id.0.to_vec());
                }
                let kept = self
                    .namespace_tombstones
                    .read()
                    .expect("namespace tombstones lock")
                    .get(id)
                    .copied();
                // A tombstone is written once, and again when its sequence becomes known.
                let tombstone = match kept {
                    Some(kept) if kept.sequence != PENDING_SEQUENCE => None,
                    Some(_) if sequence == PENDING_SEQUENCE => None,
                    _ => Some(NamespaceTombstone {
                        sequence,
                        gone_at_ms: hlc_to_unix_ms(version.timestamp),
                    }),
                };
                if let Some(tombstone) = tombstone {
                    bookkeeping.put(Tree::Meta, namespace_tombstone_key(*id), tombstone.encode());
                }
                self.backend.commit(bookkeeping)?;
                if let Some(tombstone) = tombstone {
                    self.namespace_tombstones
                        .write()
                        .expect("namespace tombstones lock")
                        .insert(*id, tombstone);
                }
                if existed {
                    self.forget_removed_namespace(*id)?;
                }
                Ok(existed)
            }
            Change::Key { .. } => Err(corrupt("a key change taken for a namespace change")),
        }
    }

    /// Drops a namespace whose removal is committed from memory, then removes its records (a
    /// crash before that is done leaves records that the next open removes). The caller holds
    /// the writer lock.
    fn forget_removed_namespace(&self, id: NamespaceId) -> Result<(), StoreError> {
        self.namespaces
            .write()
            .expect("namespace map lock")
            .remove(&id);
        self.purge_records(id)?;
        Ok(())
    }

    /// Removes a namespace and all its records *without* a tombstone; false if it did not
    /// exist. For a snapshot install: a namespace the snapshot lacks was deleted before the
    /// snapshot began, or created after (and its creation then follows in the log, which must
    /// not be refused); replays from before the snapshot are ignored by the floor the install
    /// sets.
    pub fn drop_namespace(&self, id: NamespaceId) -> Result<bool, StoreError> {
        let _writer = self.writer.lock().expect("writer lock");
        if !self.has_namespace(id) {
            return Ok(false);
        }
        let mut batch = Batch::new();
        batch.remove(Tree::Namespaces, id.0.to_vec());
        self.backend.commit(batch)?;
        self.forget_removed_namespace(id)?;
        Ok(true)
    }

    /// Removes every record of `namespace`, a chunk per batch; returns how many went. The
    /// caller holds the writer lock.
    pub(crate) fn purge_records(&self, namespace: NamespaceId) -> Result<usize, StoreError> {
        let start = record_key(namespace, b"");
        let end = next_namespace(namespace).map(|next| record_key(next, b""));
        let end = end.as_deref().map_or(Bound::Unbounded, Bound::Excluded);
        self.remove_all(Tree::Records, Bound::Included(&start), end)
    }

    /// Removes every key of `tree` in a range, a chunk per batch; returns how many went.
    pub(crate) fn remove_all(
        &self,
        tree: Tree,
        from: Bound<&[u8]>,
        to: Bound<&[u8]>,
    ) -> Result<usize, StoreError> {
        let mut removed = 0;
        loop {
            let mut batch = Batch::new();
            // Keys only: a large value's pieces are not read.
            for entry in self
                .backend
                .range_heads(tree, from, to, 0)
                .take(REMOVAL_CHUNK)
            {
                batch.remove(tree, entry?.0.to_vec());
            }
            if batch.is_empty() {
                return Ok(removed);
            }
            removed += batch.len();
            self.backend.commit(batch)?;
        }
    }

    /// Creates or replaces a namespace record (create and rename) unless the stored one has an
    /// equal or newer version; returns whether it was stored.
    pub fn put_namespace(&self, namespace: &Namespace) -> Result<bool, StoreError> {
        let _writer = self.writer.lock().expect("writer lock");
        self.commit_namespace(
            &Change::Namespace(namespace.clone()),
            Batch::new(),
            PENDING_SEQUENCE,
        )
    }

    /// Removes a namespace and all its records, leaving a tombstone (kept from garbage
    /// collection until the deletion's log entry, or the end of a snapshot install, says at
    /// which sequence it was deleted); false if it did not exist.
    pub fn delete_namespace(&self, id: NamespaceId) -> Result<bool, StoreError> {
        let _writer = self.writer.lock().expect("writer lock");
        let deletion = Change::NamespaceDeleted {
            id,
            version: Version::default(),
        };
        self.commit_namespace(&deletion, Batch::new(), PENDING_SEQUENCE)
    }

    /// Applies records last-write-wins: each replaces the stored record of its key only if its
    /// version is greater. Returns, per record, whether it was applied. Applying the same
    /// records again, or in another order, leaves the same state. Their log sequences are not
    /// known: tombstones among them are kept from garbage collection until
    /// [`Store::finish_snapshot`] settles them (see [`Store::apply_logged`] otherwise).
    pub fn apply(
        &self,
        namespace: NamespaceId,
        records: &[(String, Record)],
    ) -> Result<Vec<bool>, StoreError> {
        self.apply_at(namespace, records, |_| PENDING_SEQUENCE)
    }

    /// [`Store::apply`] of records whose log sequences are known (`sequences`, one per
    /// record): a replica's own acknowledged writes.
    pub fn apply_logged(
        &self,
        namespace: NamespaceId,
        records: &[(String, Record)],
        sequences: &[u64],
    ) -> Result<Vec<bool>, StoreError> {
        if sequences.len() != records.len() {
            return Err(corrupt("a sequence is needed for every record"));
        }
        self.apply_at(namespace, records, |i| sequences[i])
    }

    /// Applies records last-write-wins; returns, per record, whether it was applied.
    fn apply_at(
        &self,
        namespace: NamespaceId,
        records: &[(String, Record)],
        sequence: impl Fn(usize) -> u64,
    ) -> Result<Vec<bool>, StoreError> {
        let _writer = self.writer.lock().expect("writer lock");
        if !self.has_namespace(namespace) {
            return Err(StoreError::NoSuchNamespace(namespace));
        }
        let mut staging = Staging::default();
        let applied = records
            .iter()
            .enumerate()
            .map(|(i, (key, record))| {
                let stored = || Bytes::from(record.encode());
                let staged =
                    self.stage_record(&mut staging, namespace, key, record, stored, sequence(i));
                staged.map(|stored| stored.is_some())
            })
            .collect::<Result<Vec<_>, _>>()?;
        if !staging.batch.is_empty() {
            self.backend.commit(staging.batch)?;
        }
        Ok(applied)
    }

    /// The write region's commit of one writer: see [`Store::append_writers`].
    pub fn append(&self, changes: &mut [Change]) -> Result<u64, StoreError> {
        self.append_writers(&mut [changes])
            .pop()
            .expect("one result per writer")
    }

    /// The write region's commit: applies each writer's changes and appends them to the
    /// replication log under consecutive sequences, and returns, per writer, the last sequence
    /// its changes took, or why they were refused. A writer's key changes are committed
    /// atomically with their log entries, in one batch with the other writers' key changes
    /// (the point of merging writers); a writer's namespace changes are committed one by one,
    /// in order. A writer with a key change to a namespace that does not exist is refused
    /// whole and takes no sequence. Sequences have no gaps.
    ///
    /// The value of each key change staged is then a slice of its log entry's stored bytes:
    /// what the caller keeps of the changes (central hands them to its replication streams)
    /// holds that allocation of the value's own, not the buffer the value arrived in (a whole
    /// request's).
    pub fn append_writers(&self, writers: &mut [&mut [Change]]) -> Vec<Result<u64, StoreError>> {
        let _writer = self.writer.lock().expect("writer lock");
        let mut last = self.last_sequence.load(Ordering::SeqCst);
        let mut results = Vec::with_capacity(writers.len());
        let mut run = Run {
            base: last,
            ..Run::default()
        };
        for changes in writers.iter_mut() {
            if changes.iter().all(is_key) {
                let missing = changes.iter().find_map(|change| match change {
                    Change::Key { namespace, .. } if !self.has_namespace(*namespace) => {
                        Some(*namespace)
                    }
                    _ => None,
                });
                if let Some(namespace) = missing {
                    results.push(Err(StoreError::NoSuchNamespace(namespace)));
                    continue;
                }
                match self.stage_logged(&mut run.staging, changes, &mut last) {
                    Ok(()) => {
                        run.members.push(results.len());
                        results.push(Ok(last));
                    }
                    Err(e) => {
                        // The staged batch is unusable: the run fails whole.
                        results.push(Err(e.clone()));
                        self.fail_run(&mut run, &mut results, e, &mut last);
                    }
                }
                continue;
            }
            if changes.iter().any(is_key) {
                results.push(Err(corrupt("a writer mixes key and namespace changes")));
                continue;
            }
            // Namespace changes go one by one, after what is staged.
            self.commit_run(&mut run, &mut results, &mut last);
            let mut outcome = Ok(last);
            for change in changes.iter() {
                let mut bookkeeping = Batch::new();
                bookkeeping.put(Tree::Log, sequence_bytes(last + 1), change.encode());
                bookkeeping.put(Tree::Meta, LAST_SEQUENCE.to_vec(), sequence_bytes(last + 1));
                if let Err(e) = self.commit_namespace(change, bookkeeping, last + 1) {
                    outcome = Err(e);
                    break;
                }
                last += 1;
                self.last_sequence.store(last, Ordering::SeqCst);
                outcome = Ok(last);
            }
            results.push(outcome);
            run.base = last;
        }
        self.commit_run(&mut run, &mut results, &mut last);
        results
    }

    /// Stages key changes with their log entries under the sequences after `last`, each
    /// value then a slice of its entry's bytes.
    fn stage_logged(
        &self,
        staging: &mut Staging,
        changes: &mut [Change],
        last: &mut u64,
    ) -> Result<(), StoreError> {
        for change in changes {
            let logged = Bytes::from(change.encode());
            if let Change::Key {
                namespace,
                key,
                record,
            } = change
            {
                // The record is the tail of its log entry: stored once for both trees.
                let stored = || logged.slice(logged.len() - record.encoded_len()..);
                self.stage_record(staging, *namespace, key, record, stored, *last + 1)?;
                record.share_stored_value(&logged);
            }
            *last += 1;
            staging.batch.put(Tree::Log, sequence_bytes(*last), logged);
        }
        Ok(())
    }

    /// Commits the run's staged changes with the last sequence; on failure its writers get the
    /// error and numbering resumes where the run began.
    fn commit_run(&self, run: &mut Run, results: &mut [Result<u64, StoreError>], last: &mut u64) {
        if run.staging.batch.is_empty() {
            run.base = *last;
            return;
        }
        let mut staging = std::mem::take(&mut run.staging);
        staging
            .batch
            .put(Tree::Meta, LAST_SEQUENCE.to_vec(), sequence_bytes(*last));
        match self.backend.commit(staging.batch) {
            Ok(()) => {
                self.last_sequence.store(*last, Ordering::SeqCst);
                run.members.clear();
                run.base = *last;
            }
            Err(e) => self.fail_run(run, results, e.into(), last),
        }
    }

    fn fail_run(
        &self,
        run: &mut Run,
        results: &mut [Result<u64, StoreError>],
        error: StoreError,
        last: &mut u64,
    ) {
        for member in run.members.drain(..) {
            results[member] = Err(error.clone());
        }
        run.staging = Staging::default();
        *last = run.base;
    }

    /// A replica's commit: applies log entries last-write-wins (in any order, any number of
    /// times, with the same outcome) and records the highest sequence applied, at least
    /// `through`, atomically with them. `through` covers entries the caller left out because
    /// their records are already stored (committed before this call). Key changes to
    /// namespaces the replica does not have are skipped, and so are entries at or below the
    /// [garbage-collection floor](Store::gc_floor): they were applied before, and the
    /// tombstone that made one of them obsolete may be gone.
    pub fn apply_replicated(&self, entries: &[LogEntry], through: u64) -> Result<(), StoreError> {
        let _writer = self.writer.lock().expect("writer lock");
        let mut applied = self.applied_sequence.load(Ordering::SeqCst);
        let floor = self.gc_floor.load(Ordering::SeqCst);
        let mut staging = Staging::default();
        for entry in entries.iter().filter(|entry| entry.sequence > floor) {
            match &entry.change {
                Change::Key {
                    namespace,
                    key,
                    record,
                } => {
                    if self.has_namespace(*namespace) {
                        let stored = || Bytes::from(record.encode());
                        self.stage_record(
                            &mut staging,
                            *namespace,
                            key,
                            record,
                            stored,
                            entry.sequence,
                        )?;
                    }
                }
                change => {
                    // What is staged goes first, then the namespace change with its sequence.
                    self.commit_applied(std::mem::take(&mut staging).batch, applied)?;
                    let mut bookkeeping = Batch::new();
                    let sequence = applied.max(entry.sequence);
                    bookkeeping.put(
                        Tree::Meta,
                        APPLIED_SEQUENCE.to_vec(),
                        sequence_bytes(sequence),
                    );
                    self.commit_namespace(change, bookkeeping, entry.sequence)?;
                    self.applied_sequence.store(sequence, Ordering::SeqCst);
                }
            }
            applied = applied.max(entry.sequence);
        }
        self.commit_applied(staging.batch, applied.max(through))
    }

    /// Commits `batch` with the applied sequence, if either changes anything.
    fn commit_applied(&self, mut batch: Batch, applied: u64) -> Result<(), StoreError> {
        let moved = applied > self.applied_sequence.load(Ordering::SeqCst);
        if batch.is_empty() && !moved {
            return Ok(());
        }
        if moved {
            batch.put(
                Tree::Meta,
                APPLIED_SEQUENCE.to_vec(),
                sequence_bytes(applied),
            );
        }
        self.backend.commit(batch)?;
        self.applied_sequence.store(applied, Ordering::SeqCst);
        Ok(())
    }

    /// Records that everything up to `sequence` is applied (after installing a snapshot).
    pub fn set_applied_sequence(&self, sequence: u64) -> Result<(), StoreError> {
        let _writer = self.writer.lock().expect("writer lock");
        let mut batch = Batch::new();
        batch.put(
            Tree::Meta,
            APPLIED_SEQUENCE.to_vec(),
            sequence_bytes(sequence),
        );
        self.backend.commit(batch)?;
        self.applied_sequence.store(sequence, Ordering::SeqCst);
        Ok(())
    }

    /// Drops log entries older than `before`, but never the newest one; returns how many
    /// went. The newest version among them is kept (see [`Store::trimmed_version`]).
    pub fn trim_log(&self, before: u64) -> Result<usize, StoreError> {
        self.trim_log_while(|entry| entry.sequence < before)
    }

    /// Drops the log entries, oldest first, whose write happened at or before `cutoff_ms`
    /// (unix milliseconds, by their HLC version), stopping at the first newer one and never
    /// dropping the newest entry; returns how many went.
    pub fn trim_log_by_age(&self, cutoff_ms: u64) -> Result<usize, StoreError> {
        self.trim_log_while(|entry| {
            entry
                .change
                .timestamp()
                .is_none_or(|timestamp| hlc_to_unix_ms(timestamp) <= cutoff_ms)
        })
    }

    /// Drops log entries from the oldest on while `old` says so, a chunk per batch, keeping
    /// the newest entry and raising [`TRIMMED_VERSION`] in each batch to the newest version
    /// it drops. The writer lock is taken per chunk, so that a long trim (the first one after
    /// the retention was lowered) does not hold writes up for all of it.
    fn trim_log_while(&self, old: impl Fn(&LogEntry) -> bool) -> Result<usize, StoreError> {
        let mut trimmed = 0;
        loop {
            let _writer = self.writer.lock().expect("writer lock");
            let last = self.last_sequence.load(Ordering::SeqCst);
            let mut batch = Batch::new();
            let mut newest = self.trimmed_version.load(Ordering::SeqCst);
            let mut done = false;
            let floor = sequence_bytes(self.log_floor.load(Ordering::SeqCst));
            let mut kept = self.log_floor.load(Ordering::SeqCst);
            for entry in self
                .backend
                .range(Tree::Log, Bound::Included(&floor), Bound::Unbounded)
                .take(REMOVAL_CHUNK)
            {
                let (k, v) = entry?;
                let entry = LogEntry {
                    sequence: read_sequence(Some(&k))?,
                    change: Change::decode(&v).map_err(corrupt)?,
                };
                if entry.sequence >= last || !old(&entry) {
                    done = true;
                    break;
                }
                newest = newest.max(entry.change.timestamp().unwrap_or(0));
                batch.remove(Tree::Log, k.to_vec());
                kept = entry.sequence + 1;
            }
            if batch.is_empty() {
                return Ok(trimmed);
            }
            trimmed += batch.len();
            self.removed_since_compaction
                .fetch_add(batch.len() as u64, Ordering::SeqCst);
            batch.put(Tree::Meta, TRIMMED_VERSION.to_vec(), sequence_bytes(newest));
            self.backend.commit(batch)?;
            self.trimmed_version.store(newest, Ordering::SeqCst);
            self.log_floor.fetch_max(kept, Ordering::SeqCst);
            if done {
                return Ok(trimmed);
            }
        }
    }

    /// Turns the record of a due entry into a tombstone (keeping its version) if it still
    /// carries that expiration, and drops the index entry. Returns whether a record changed.
    /// The tombstone is indexed for garbage collection under this node's position in the log
    /// (the record's put came at or before it) and the expiration time.
    pub fn expire(&self, due: &DueExpiration) -> Result<bool, StoreError> {
        let _writer = self.writer.lock().expect("writer lock");
        let mut batch = Batch::new();
        let mut changed = false;
        if self.has_namespace(due.namespace) {
            let stored_key = record_key(due.namespace, due.key.as_bytes());
            if let Some(head) = self
                .backend
                .get_head(Tree::Records, &stored_key, RECORD_HEAD)?
            {
                let head = stored_head(&head)?;
                if head.live && head.expiration == Some(due.expiration) {
                    batch.put(
                        Tree::Records,
                        stored_key,
                        Record::tombstone(head.version).encode(),
                    );
                    batch.put(
                        Tree::Tombstones,
                        tombstone_key(self.position(), due.namespace, &due.key),
                        tombstone_value(due.expiration.saturating_mul(1000), head.version),
                    );
                    changed = true;
                }
            }
        }
        batch.remove(
            Tree::Expiry,
            expiry_key(due.expiration, due.namespace, &due.key),
        );
        self.backend.commit(batch)?;
        Ok(changed)
    }
}
