//! What an edge needs from the write region, whatever carries it.
//!
//! An edge forwards writes and namespace changes to central, reads through it while its
//! replica is empty, follows its replication log and, when it is too far behind for the log,
//! rebuilds from a snapshot. [`Upstream`] is that contract in the domain's own types. Central
//! implements it directly (so an edge can run against a central in the same process, as the
//! simulation does); the edge's gRPC client implements it over the network; and wrappers at
//! this seam inject faults (the testbed's delays and pauses, a simulated network's
//! partitions) without the follow loop knowing.

use std::pin::Pin;

use async_trait::async_trait;
use futures_core::Stream;

use crate::error::KvError;
use crate::namespace::{Namespace, NamespaceId};
use crate::record::{LiveValue, Record};
use crate::service::{Write, WriteResult};
use crate::LogEntry;

/// One writer's writes to one namespace, as an edge forwards them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WriteRequest {
    /// The account the namespace must belong to.
    pub account_id: String,
    /// The namespace written.
    pub namespace: NamespaceId,
    /// The writes, in order.
    pub writes: Vec<Write>,
}

impl WriteRequest {
    /// Bytes the writes carry (keys, values, metadata): what sizes a call's deadline.
    pub fn payload_bytes(&self) -> usize {
        self.writes.iter().map(Write::payload_bytes).sum()
    }
}

/// The fate of each writer's writes in a batch: per write its result, or the error that
/// refused all of that writer's writes (the other writers' are unaffected).
pub type BatchOutcome = Vec<Result<Vec<WriteResult>, KvError>>;

/// What the replication log tells a subscriber.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ReplicationEvent {
    /// Consecutive durable entries, in sequence order.
    Entries(Vec<LogEntry>),
    /// The subscriber has every entry up to central's durable sequence, which is this.
    Heartbeat {
        /// Central's durable log sequence.
        durable_sequence: u64,
    },
    /// The log no longer reaches back to where the subscriber asked to start (or central
    /// holds less than the subscriber has applied): only a snapshot can bring it in line.
    SnapshotNeeded {
        /// The oldest sequence the log still holds.
        oldest_retained: u64,
    },
    /// Central's garbage-collection horizon moved: every edge has applied the log up to this
    /// sequence, so the subscriber may purge tombstones logged at or below it once their
    /// grace period has passed (see `docs/gc.md`).
    Horizon {
        /// The highest sequence every edge has applied.
        sequence: u64,
    },
}

/// A piece of a snapshot. The first chunk carries every namespace; the following ones carry
/// records (tombstones included) namespace by namespace; the last one is `complete` and says
/// up to which log sequence the snapshot covers.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SnapshotChunk {
    /// Every namespace central holds (first chunk only).
    pub namespaces: Vec<Namespace>,
    /// Records, grouped by namespace.
    pub records: Vec<(NamespaceId, String, Record)>,
    /// Whether this is the last chunk.
    pub complete: bool,
    /// Everything up to this log sequence is in the snapshot. Sent with the first chunk (so
    /// that an edge knows which of its own writes the snapshot may lack) and the last.
    pub sequence: u64,
    /// With `complete`: every record in the snapshot was written at or before this log
    /// sequence (at least `sequence`); the tombstones it carries are indexed under it.
    pub written_through: u64,
}

/// A stream of replication events; it ends (or fails) when the subscription does.
pub type EventStream = Pin<Box<dyn Stream<Item = Result<ReplicationEvent, KvError>> + Send>>;

/// A stream of snapshot chunks.
pub type SnapshotStream = Pin<Box<dyn Stream<Item = Result<SnapshotChunk, KvError>> + Send>>;

/// The write region, as an edge uses it.
#[async_trait]
pub trait Upstream: Send + Sync + 'static {
    /// Stores writers' writes durably and stamps them; one outcome per request, in order.
    async fn write_batch(&self, requests: Vec<WriteRequest>) -> Result<BatchOutcome, KvError>;

    /// Creates a namespace titled `title` in the account.
    async fn create_namespace(&self, account_id: &str, title: &str) -> Result<Namespace, KvError>;

    /// Renames the account's namespace `id`.
    async fn rename_namespace(
        &self,
        account_id: &str,
        id: NamespaceId,
        title: &str,
    ) -> Result<Namespace, KvError>;

    /// Deletes the account's namespace `id` and its keys.
    async fn delete_namespace(&self, account_id: &str, id: NamespaceId) -> Result<(), KvError>;

    /// Reads a key's live value.
    async fn get(
        &self,
        account_id: &str,
        id: NamespaceId,
        key: &str,
    ) -> Result<Option<LiveValue>, KvError>;

    /// Follows the replication log from sequence `from` on, for subscriber `node_id`.
    async fn subscribe(&self, node_id: u64, from: u64) -> Result<EventStream, KvError>;

    /// A full copy of central's data, for subscriber `node_id`.
    async fn snapshot(&self, node_id: u64) -> Result<SnapshotStream, KvError>;
}
