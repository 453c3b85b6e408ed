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

/// Consecutive durable log entries, as a subscriber receives them: those sent whole, and the
/// sequences of those left out because they are the subscriber's own writes, which it applied
/// itself when central acknowledged them (see [`Subscription::writer`]). Together they are a
/// run with no gap.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LogBatch {
    /// The entries sent whole, in sequence order.
    pub entries: Vec<LogEntry>,
    /// The sequences left out, in order.
    pub yours: Vec<u64>,
}

impl LogBatch {
    /// The highest sequence the batch covers, if it covers any.
    pub fn last(&self) -> Option<u64> {
        let entries = self.entries.iter().map(|entry| entry.sequence);
        entries.chain(self.yours.iter().copied()).max()
    }
}

/// What a subscriber asks of central's replication log.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Subscription {
    /// The subscriber's node id, for central's logs.
    pub node_id: u64,
    /// The first sequence wanted: one past the last the subscriber applied.
    pub from: u64,
    /// The writer id the subscriber sends its writes with ([`Upstream::write_batch`]), if
    /// any: the entries of those writes come as their sequences alone ([`LogBatch::yours`]),
    /// since the subscriber applies them itself once they are acknowledged. Replicating a
    /// write back to the edge that made it cost that edge a decode and, for a large value, a
    /// second copy of it in memory, and central an encode.
    pub writer: Option<u64>,
    /// Entries at or below this sequence come whole even where they are the subscriber's
    /// own: what it asks for when it could not apply some of its writes itself.
    pub full_through: u64,
}

/// What the replication log tells a subscriber.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ReplicationEvent {
    /// Consecutive durable entries, in sequence order.
    Entries(LogBatch),
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
    /// `writer` is the id the caller subscribes with ([`Subscription::writer`]): its
    /// subscription gets these writes' sequences, not their changes. `None` (tools) leaves
    /// every subscription the writes whole.
    async fn write_batch(
        &self,
        writer: Option<u64>,
        requests: Vec<WriteRequest>,
    ) -> Result<BatchOutcome, KvError>;

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

    /// Follows the replication log as `subscription` asks.
    async fn subscribe(&self, subscription: Subscription) -> Result<EventStream, KvError>;

    /// A full copy of central's data, for subscriber `node_id`.
    async fn snapshot(&self, node_id: u64) -> Result<SnapshotStream, KvError>;
}
