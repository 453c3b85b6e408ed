//! [`Store`]: driftkv's data over any [`Backend`]. This file holds the state and the reads;
//! `commit.rs` the writes.

use std::collections::HashMap;
use std::ops::Bound;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use driftkv_core::record::RecordHead;
use driftkv_core::{Change, KeyInfo, LogEntry, Namespace, NamespaceId, Record, RecordView};

use crate::backend::{Backend, Tree};
use crate::layout::{
    corrupt, key_of, namespace_of, next_namespace, parse_expiry_key, read_sequence, record_key,
    sequence_bytes, APPLIED_SEQUENCE, GC_FLOOR, LAST_SEQUENCE, NAMESPACE_TOMBSTONE,
    TRIMMED_VERSION,
};
use crate::{DueExpiration, LogBounds, Scan, StoreError, SCAN_BUDGET};

/// Persistent storage for one node: namespaces, records applied last-write-wins, ordered
/// listings, an expiration index, the replication log (appended by the write region, applied by
/// replicas along with their applied sequence), over any [`Backend`].
///
/// Writes are visible to reads as soon as the call returns, and durable once a later
/// [`Store::sync`] (or [`Store::sync_blocking`]) has returned. Every write takes one lock,
/// so that reading a stored version and writing over it is one atomic step (last-write-wins
/// needs no transaction from the engine) and log sequences are handed out without gaps.
pub struct Store {
    pub(crate) backend: Arc<dyn Backend>,
    /// Every namespace, mirrored in memory so that the per-request namespace lookup costs no
    /// storage read. Changed only under `writer`, after the change is committed.
    pub(crate) namespaces: RwLock<HashMap<NamespaceId, Arc<Namespace>>>,
    /// Taken by every write.
    pub(crate) writer: Mutex<()>,
    /// The last sequence appended to the log (central), mirrored from [`LAST_SEQUENCE`].
    pub(crate) last_sequence: AtomicU64,
    /// The highest sequence applied (a replica), mirrored from [`APPLIED_SEQUENCE`].
    pub(crate) applied_sequence: AtomicU64,
    /// The garbage-collection floor, mirrored from [`GC_FLOOR`].
    pub(crate) gc_floor: AtomicU64,
    /// Deleted namespaces whose tombstones are kept, mirrored from the [`NAMESPACE_TOMBSTONE`]
    /// keys. Changed only under `writer`, after the change is committed.
    pub(crate) namespace_tombstones: RwLock<HashMap<NamespaceId, NamespaceTombstone>>,
    /// Mirrored from [`TRIMMED_VERSION`].
    pub(crate) trimmed_version: AtomicU64,
    /// Keys garbage collection and log trimming removed since the last compaction.
    pub(crate) removed_since_compaction: AtomicU64,
    /// No log entry has a lower sequence (entries are appended above the last and trimmed
    /// from the oldest). Scans of the log's head start here rather than at its beginning: an
    /// LSM engine keeps the trimmed entries' deletion markers until it compacts them, and a
    /// scan from the beginning walks every one of them (measured: 3% of central's CPU under
    /// write load went to finding the oldest entry for gossip once a second).
    pub(crate) log_floor: AtomicU64,
}

/// A deleted namespace's tombstone: the log sequence of its deletion
/// ([`PENDING_SEQUENCE`](crate::layout::PENDING_SEQUENCE) until known) and when it went
/// (unix ms; 0 when not known).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct NamespaceTombstone {
    pub(crate) sequence: u64,
    pub(crate) gone_at_ms: u64,
}

impl NamespaceTombstone {
    pub(crate) fn encode(self) -> Vec<u8> {
        [self.sequence.to_be_bytes(), self.gone_at_ms.to_be_bytes()].concat()
    }

    fn decode(bytes: &[u8]) -> Result<Self, StoreError> {
        let number = |at: usize| -> Result<u64, StoreError> {
            bytes
                .get(at..at + 8)
                .and_then(|b| b.try_into().ok())
                .map(u64::from_be_bytes)
                .ok_or_else(|| corrupt("a short namespace tombstone"))
        };
        Ok(NamespaceTombstone {
            sequence: number(0)?,
            gone_at_ms: number(8)?,
        })
    }
}

impl Store {
    /// driftkv's data in `backend`. Finishes a namespace deletion a crash interrupted.
    pub fn open(backend: Arc<dyn Backend>) -> Result<Self, StoreError> {
        let mut namespaces = HashMap::new();
        for entry in backend.range(Tree::Namespaces, Bound::Unbounded, Bound::Unbounded) {
            let (_, bytes) = entry?;
            let namespace = Namespace::decode(&bytes).map_err(corrupt)?;
            namespaces.insert(namespace.id, Arc::new(namespace));
        }
        let last = read_sequence(backend.get(Tree::Meta, LAST_SEQUENCE)?.as_deref())?;
        let applied = read_sequence(backend.get(Tree::Meta, APPLIED_SEQUENCE)?.as_deref())?;
        let gc_floor = read_sequence(backend.get(Tree::Meta, GC_FLOOR)?.as_deref())?;
        let trimmed_version = read_sequence(backend.get(Tree::Meta, TRIMMED_VERSION)?.as_deref())?;
        let mut namespace_tombstones = HashMap::new();
        for entry in backend.range(
            Tree::Meta,
            Bound::Included(NAMESPACE_TOMBSTONE),
            Bound::Unbounded,
        ) {
            let (k, v) = entry?;
            let Some(id) = k.strip_prefix(NAMESPACE_TOMBSTONE) else {
                break;
            };
            let id = NamespaceId(id.try_into().map_err(|_| corrupt("a short namespace id"))?);
            namespace_tombstones.insert(id, NamespaceTombstone::decode(&v)?);
        }
        let store = Store {
            backend,
            namespaces: RwLock::new(namespaces),
            writer: Mutex::new(()),
            last_sequence: AtomicU64::new(last),
            applied_sequence: AtomicU64::new(applied),
            gc_floor: AtomicU64::new(gc_floor),
            namespace_tombstones: RwLock::new(namespace_tombstones),
            trimmed_version: AtomicU64::new(trimmed_version),
            removed_since_compaction: AtomicU64::new(0),
            log_floor: AtomicU64::new(0),
        };
        store.purge_orphans()?;
        Ok(store)
    }

    /// The engine underneath.
    pub fn backend(&self) -> &Arc<dyn Backend> {
        &self.backend
    }

    /// Removes the records of namespaces that no longer exist: a crash between a namespace's
    /// deletion and the removal of its records leaves them behind. Visits one key per
    /// namespace present, jumping from one namespace's range to the next.
    fn purge_orphans(&self) -> Result<(), StoreError> {
        let _writer = self.writer.lock().expect("writer lock");
        let mut from: Option<Vec<u8>> = None;
        loop {
            let start = from.as_deref().map_or(Bound::Unbounded, Bound::Included);
            let Some(first) = self
                .backend
                .range_heads(Tree::Records, start, Bound::Unbounded, 0)
                .next()
            else {
                return Ok(());
            };
            let id = namespace_of(&first?.0)?;
            if !self.has_namespace(id) {
                let purged = self.purge_records(id)?;
                tracing::info!(namespace = %id, records = purged, "removed the records of a deleted namespace");
            }
            match next_namespace(id) {
                Some(next) => from = Some(record_key(next, b"")),
                None => return Ok(()),
            }
        }
    }

    /// Whether `id` was deleted and its tombstone is still kept.
    pub fn namespace_deleted(&self, id: NamespaceId) -> bool {
        self.namespace_tombstones
            .read()
            .expect("namespace tombstones lock")
            .contains_key(&id)
    }

    /// Whether the namespace `id` exists here.
    pub fn has_namespace(&self, id: NamespaceId) -> bool {
        self.namespaces
            .read()
            .expect("namespace map lock")
            .contains_key(&id)
    }

    fn require_namespace(&self, id: NamespaceId) -> Result<(), StoreError> {
        if self.has_namespace(id) {
            Ok(())
        } else {
            Err(StoreError::NoSuchNamespace(id))
        }
    }

    /// The range of `namespace`'s record keys that come after `start`.
    fn namespace_range(
        &self,
        namespace: NamespaceId,
        start: Bound<&[u8]>,
    ) -> crate::backend::Entries<'_> {
        let end = next_namespace(namespace).map(|next| record_key(next, b""));
        self.backend.range(
            Tree::Records,
            start,
            end.as_deref().map_or(Bound::Unbounded, Bound::Excluded),
        )
    }

    /// Every namespace, of every account.
    pub fn namespaces(&self) -> Result<Vec<Namespace>, StoreError> {
        let namespaces = self.namespaces.read().expect("namespace map lock");
        Ok(namespaces.values().map(|ns| Namespace::clone(ns)).collect())
    }

    /// One namespace; shared, since it is looked up on every request.
    pub fn namespace(&self, id: NamespaceId) -> Result<Option<Arc<Namespace>>, StoreError> {
        let namespaces = self.namespaces.read().expect("namespace map lock");
        Ok(namespaces.get(&id).cloned())
    }

    /// The highest log sequence this replica has applied; 0 for none.
    pub fn applied_sequence(&self) -> Result<u64, StoreError> {
        Ok(self.applied_sequence.load(Ordering::SeqCst))
    }

    /// The garbage-collection floor: the highest log sequence at or below which tombstones may
    /// have been purged (or, on a replica, that an installed snapshot covers); 0 for none. A
    /// replica whose applied sequence is below central's floor can only catch up from a
    /// snapshot, and a replica ignores replayed entries at or below its own floor.
    pub fn gc_floor(&self) -> u64 {
        self.gc_floor.load(Ordering::SeqCst)
    }

    /// How far this node's data reaches in the log: the last sequence appended (central) or
    /// applied (a replica).
    pub(crate) fn position(&self) -> u64 {
        self.last_sequence
            .load(Ordering::SeqCst)
            .max(self.applied_sequence.load(Ordering::SeqCst))
    }

    /// The newest version timestamp among the log entries trimmed away (0 for none): a
    /// restarted write region resumes its version clock above it and above the versions the
    /// log still holds.
    pub fn trimmed_version(&self) -> u64 {
        self.trimmed_version.load(Ordering::SeqCst)
    }

    /// What the replication log holds.
    pub fn log_bounds(&self) -> Result<LogBounds, StoreError> {
        let last = self.last_sequence.load(Ordering::SeqCst);
        let floor = sequence_bytes(self.log_floor.load(Ordering::SeqCst));
        let oldest = match self
            .backend
            .range(Tree::Log, Bound::Included(&floor), Bound::Unbounded)
            .next()
        {
            Some(entry) => read_sequence(Some(&entry?.0))?,
            None => last + 1,
        };
        self.log_floor.fetch_max(oldest.min(last), Ordering::SeqCst);
        Ok(LogBounds { oldest, last })
    }

    /// Up to `max` log entries from sequence `from` on, in order, ending with the one that
    /// brings their size ([`Change::size`]) to `max_bytes` or more: a reader of the log holds
    /// about that much, whatever the size of the entries.
    pub fn log_entries(
        &self,
        from: u64,
        max: usize,
        max_bytes: usize,
    ) -> Result<Vec<LogEntry>, StoreError> {
        let start = sequence_bytes(from);
        let mut entries = Vec::new();
        let mut bytes = 0;
        for entry in self
            .backend
            .range(Tree::Log, Bound::Included(&start), Bound::Unbounded)
            .take(max)
        {
            let (k, v) = entry?;
            let change = Change::decode(&v).map_err(corrupt)?;
            bytes += change.size();
            entries.push(LogEntry {
                sequence: read_sequence(Some(&k))?,
                change,
            });
            if bytes >= max_bytes {
                break;
            }
        }
        Ok(entries)
    }

    /// Up to `max` stored records of a namespace after key `after`, tombstones and expired
    /// values included, in key order: what a snapshot carries.
    pub fn records(
        &self,
        namespace: NamespaceId,
        after: Option<&str>,
        max: usize,
    ) -> Result<Vec<(String, Record)>, StoreError> {
        self.require_namespace(namespace)?;
        let start = record_key(namespace, after.unwrap_or_default().as_bytes());
        let start = match after {
            Some(_) => Bound::Excluded(start.as_slice()),
            None => Bound::Included(start.as_slice()),
        };
        let mut records = Vec::new();
        for entry in self.namespace_range(namespace, start).take(max) {
            let (k, v) = entry?;
            records.push((key_of(&k)?, Record::decode(v).map_err(corrupt)?));
        }
        Ok(records)
    }

    /// The stored record of a key, tombstones and expired values included.
    pub fn get(&self, namespace: NamespaceId, key: &str) -> Result<Option<Record>, StoreError> {
        self.require_namespace(namespace)?;
        match self
            .backend
            .get(Tree::Records, &record_key(namespace, key.as_bytes()))?
        {
            Some(bytes) => Ok(Some(Record::decode(bytes).map_err(corrupt)?)),
            None => Ok(None),
        }
    }

    /// Up to `limit` keys that start with `prefix`, come strictly after `after`, and are live at
    /// `now_ms`, in byte order. Examines at most [`SCAN_BUDGET`] records.
    pub fn scan(
        &self,
        namespace: NamespaceId,
        prefix: &str,
        after: Option<&str>,
        limit: usize,
        now_ms: u64,
    ) -> Result<Scan, StoreError> {
        self.require_namespace(namespace)?;
        let full_prefix = record_key(namespace, prefix.as_bytes());
        let resume;
        let start = match after {
            Some(after) if after >= prefix => {
                resume = record_key(namespace, after.as_bytes());
                Bound::Excluded(resume.as_slice())
            }
            _ => Bound::Included(full_prefix.as_slice()),
        };
        let mut iter = self.namespace_range(namespace, start);
        let mut scan = Scan::default();
        let mut examined = 0;
        while let Some(entry) = iter.next() {
            let (k, v) = entry?;
            if !k.starts_with(&full_prefix) {
                return Ok(scan);
            }
            examined += 1;
            let view = RecordView::decode(&v).map_err(corrupt)?;
            if view.is_live(now_ms) {
                scan.keys.push(KeyInfo {
                    name: key_of(&k)?,
                    expiration: view.expiration,
                    metadata: view.metadata.map(str::to_owned),
                });
            }
            if scan.keys.len() == limit || examined == SCAN_BUDGET {
                // Only hand out a cursor when something with the prefix follows, so the last
                // page says it is the last.
                let more = match iter.next() {
                    Some(next) => next?.0.starts_with(&full_prefix),
                    None => false,
                };
                if more {
                    scan.resume_after = Some(key_of(&k)?);
                }
                return Ok(scan);
            }
        }
        Ok(scan)
    }

    /// Up to `max` entries of the expiration index due at `now_ms`, earliest first.
    pub fn due_expirations(
        &self,
        now_ms: u64,
        max: usize,
    ) -> Result<Vec<DueExpiration>, StoreError> {
        let end = (now_ms / 1000 + 1).to_be_bytes();
        let mut due = Vec::new();
        for entry in self
            .backend
            .range(Tree::Expiry, Bound::Unbounded, Bound::Excluded(&end))
            .take(max)
        {
            due.push(parse_expiry_key(&entry?.0)?);
        }
        Ok(due)
    }

    /// Returns once every write made before the call is durable on disk (see
    /// [`Backend::sync`]), off the async threads.
    pub async fn sync(&self) -> Result<(), StoreError> {
        let backend = self.backend.clone();
        tokio::task::spawn_blocking(move || backend.sync())
            .await
            .map_err(|e| StoreError::Corrupt(format!("the sync task failed: {e}")))??;
        Ok(())
    }

    /// [`Store::sync`] on the calling thread: for a thread of its own, such as the write
    /// region's commit thread.
    pub fn sync_blocking(&self) -> Result<(), StoreError> {
        Ok(self.backend.sync()?)
    }

    /// Bytes the database takes on disk.
    pub fn size_on_disk(&self) -> Result<u64, StoreError> {
        Ok(self.backend.size_on_disk()?)
    }
}

/// The head of a stored record (see [`Backend::get_head`]).
pub(crate) fn stored_head(head: &[u8]) -> Result<RecordHead, StoreError> {
    RecordHead::decode(head).map_err(corrupt)
}
