//! driftkv storage.
//!
//! [`Store`] is what every role persists through: namespaces, records applied last-write-wins,
//! ordered listings, an expiration index, the replication log (appended by the write region,
//! applied by replicas with their applied sequence), and a [`Store::sync`] that returns once
//! everything written before it is durable. [`SledStore`] is the sled backend. [`suite`] holds the
//! backend-agnostic tests: any backend that passes them can replace sled.

mod sled_store;
pub mod suite;

use std::sync::Arc;

use async_trait::async_trait;
use driftkv_core::{Change, KeyInfo, KvError, LogEntry, Namespace, NamespaceId, Record};

pub use sled_store::SledStore;

/// A storage failure.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The namespace does not exist (or was deleted while the operation ran).
    #[error("namespace {0} does not exist")]
    NoSuchNamespace(NamespaceId),
    /// Stored bytes could not be decoded.
    #[error("corrupt data: {0}")]
    Corrupt(String),
    /// The backend failed (disk, I/O).
    #[error("storage backend failed: {0}")]
    Backend(String),
}

impl From<StoreError> for KvError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::NoSuchNamespace(_) => KvError::NamespaceNotFound,
            other => KvError::Internal(other.to_string()),
        }
    }
}

/// One page of a scan: the live keys found, and where to resume if the scan stopped early.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Scan {
    pub keys: Vec<KeyInfo>,
    /// The last key examined, when more keys may follow; `None` when the scan reached the end.
    pub resume_after: Option<String>,
}

/// An entry of the expiration index that has come due.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DueExpiration {
    pub namespace: NamespaceId,
    pub key: String,
    /// The expiration (unix seconds) the index entry was made for.
    pub expiration: u64,
}

/// The sequences the replication log holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LogBounds {
    /// The oldest retained entry; `last + 1` when none is retained.
    pub oldest: u64,
    /// The last sequence handed out; 0 before the first append.
    pub last: u64,
}

/// Most records a single scan examines. A listing over many tombstones or expired keys
/// therefore returns a short (possibly empty) page with a cursor instead of walking the whole
/// namespace in one request, as Workers KV's listing is allowed to.
pub const SCAN_BUDGET: usize = 10_000;

/// Persistent storage for one node.
///
/// Writes are visible to reads as soon as the call returns; they are durable once a later
/// [`Store::sync`] has returned.
#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// Every namespace, of every account.
    fn namespaces(&self) -> Result<Vec<Namespace>, StoreError>;
    /// One namespace; shared, since it is looked up on every request.
    fn namespace(&self, id: NamespaceId) -> Result<Option<Arc<Namespace>>, StoreError>;
    /// Creates or replaces a namespace record (create and rename) unless the stored one has
    /// an equal or newer version; returns whether it was stored.
    fn put_namespace(&self, namespace: &Namespace) -> Result<bool, StoreError>;
    /// Removes a namespace and all its records; false if it did not exist.
    fn delete_namespace(&self, id: NamespaceId) -> Result<bool, StoreError>;
    /// Applies records last-write-wins: each replaces the stored record of its key only if its
    /// version is greater. Returns, per record, whether it was applied. Applying the same
    /// records again, or in another order, leaves the same state.
    fn apply(
        &self,
        namespace: NamespaceId,
        records: &[(String, Record)],
    ) -> Result<Vec<bool>, StoreError>;
    /// The write region's commit: applies `changes` and appends them to the replication log
    /// under consecutive sequences, atomically: consecutive key changes form one atomic step
    /// with their log entries, and so does each namespace change. Sequences have no gaps.
    /// Returns the last sequence used.
    fn append(&self, changes: &[Change]) -> Result<u64, StoreError>;
    /// A replica's commit: applies log entries last-write-wins (in any order, any number of
    /// times, with the same outcome) and records the highest sequence applied atomically with
    /// them. Key changes to namespaces the replica does not have are skipped.
    fn apply_replicated(&self, entries: &[LogEntry]) -> Result<(), StoreError>;
    /// The highest log sequence this replica has applied; 0 for none.
    fn applied_sequence(&self) -> Result<u64, StoreError>;
    /// Records that everything up to `sequence` is applied (after installing a snapshot).
    fn set_applied_sequence(&self, sequence: u64) -> Result<(), StoreError>;
    /// What the replication log holds.
    fn log_bounds(&self) -> Result<LogBounds, StoreError>;
    /// Up to `max` log entries from sequence `from` on, in order.
    fn log_entries(&self, from: u64, max: usize) -> Result<Vec<LogEntry>, StoreError>;
    /// Drops log entries older than `before`; returns how many went.
    fn trim_log(&self, before: u64) -> Result<usize, StoreError>;
    /// Up to `max` stored records of a namespace after key `after`, tombstones and expired
    /// values included, in key order: what a snapshot carries.
    fn records(
        &self,
        namespace: NamespaceId,
        after: Option<&str>,
        max: usize,
    ) -> Result<Vec<(String, Record)>, StoreError>;
    /// The stored record of a key, tombstones and expired values included.
    fn get(&self, namespace: NamespaceId, key: &str) -> Result<Option<Record>, StoreError>;
    /// Up to `limit` keys that start with `prefix`, come strictly after `after`, and are live at
    /// `now_ms`, in byte order. Examines at most [`SCAN_BUDGET`] records.
    fn scan(
        &self,
        namespace: NamespaceId,
        prefix: &str,
        after: Option<&str>,
        limit: usize,
        now_ms: u64,
    ) -> Result<Scan, StoreError>;
    /// Up to `max` entries of the expiration index due at `now_ms`, earliest first.
    fn due_expirations(&self, now_ms: u64, max: usize) -> Result<Vec<DueExpiration>, StoreError>;
    /// Turns the record of a due entry into a tombstone (keeping its version) if it still
    /// carries that expiration, and drops the index entry. Returns whether a record changed.
    fn expire(&self, due: &DueExpiration) -> Result<bool, StoreError>;
    /// Returns once every write made before the call is durable on disk. Concurrent callers
    /// share flushes (group commit).
    async fn sync(&self) -> Result<(), StoreError>;
    /// Bytes the database takes on disk.
    fn size_on_disk(&self) -> Result<u64, StoreError>;
}
