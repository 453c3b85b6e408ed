//! The gRPC contract between driftkv edges and the central write region.
//!
//! [`pb`] is generated from `proto/driftkv.proto`. This crate also converts between the wire
//! types and the core types (checking what the wire cannot: lengths of ids, required fields),
//! and carries [`KvError`]s across the wire as gRPC statuses that keep the Cloudflare error code
//! and HTTP status, so an edge reports exactly the error central decided on.

use driftkv_core::limits::{
    MAX_BULK_BODY_BYTES, MAX_KEY_BYTES, MAX_METADATA_BYTES, MAX_VALUE_BYTES,
};
use driftkv_core::upstream::{LogBatch, ReplicationEvent, SnapshotChunk, WriteRequest};
use driftkv_core::{
    Change, KvError, LiveValue, LogEntry, Namespace, NamespaceId, Record, Version, Write, WriteOp,
    WriteResult,
};
use tonic::metadata::MetadataValue;
use tonic::{Code, Status};

pub mod codec;
pub mod tls;
pub mod trace;

/// The generated protobuf messages and gRPC client and server.
pub mod pb {
    #![allow(missing_docs, clippy::all)]
    tonic::include_proto!("driftkv.v1");
}

/// Size a log batch or snapshot chunk is cut at; a single larger entry still travels alone.
pub const BATCH_BYTES: usize = 4 * 1024 * 1024;

/// Room for what a message carries besides keys, values and metadata (field tags, lengths,
/// versions, ids).
const FRAMING_BYTES: usize = 1024 * 1024;

/// Largest request central accepts (and an edge sends): a bulk write at the API's body limit.
/// (tonic's default of 4 MiB would refuse a single 25 MiB value.)
pub const MAX_REQUEST_BYTES: usize = MAX_BULK_BODY_BYTES + FRAMING_BYTES;

/// Largest reply central sends (and an edge accepts): a log batch or snapshot chunk, which is
/// cut at [`BATCH_BYTES`] but may end with one more record, or one value read through.
pub const MAX_REPLY_BYTES: usize =
    BATCH_BYTES + MAX_VALUE_BYTES + MAX_KEY_BYTES + MAX_METADATA_BYTES + FRAMING_BYTES;

/// Metadata key of the Cloudflare error code on an error status.
pub const ERROR_CODE_KEY: &str = "driftkv-error-code";
/// Metadata key of the HTTP status on an error status.
pub const HTTP_STATUS_KEY: &str = "driftkv-http-status";

fn missing(field: &str) -> KvError {
    KvError::BadRequest(format!("the message has no {field}"))
}

impl From<Version> for pb::Version {
    fn from(v: Version) -> Self {
        pb::Version {
            timestamp: v.timestamp,
            origin: v.origin,
        }
    }
}

impl From<pb::Version> for Version {
    fn from(v: pb::Version) -> Self {
        Version {
            timestamp: v.timestamp,
            origin: v.origin,
        }
    }
}

/// A required version field.
pub fn required_version(v: Option<pb::Version>) -> Result<Version, KvError> {
    v.map(Version::from).ok_or_else(|| missing("version"))
}

impl From<LiveValue> for pb::LiveValue {
    fn from(l: LiveValue) -> Self {
        pb::LiveValue {
            value: l.value,
            metadata: l.metadata,
            expiration: l.expiration,
        }
    }
}

impl From<pb::LiveValue> for LiveValue {
    fn from(l: pb::LiveValue) -> Self {
        LiveValue {
            value: l.value,
            metadata: l.metadata,
            expiration: l.expiration,
        }
    }
}

impl From<Record> for pb::Record {
    fn from(r: Record) -> Self {
        pb::Record {
            version: Some(r.version.into()),
            live: r.live.map(Into::into),
        }
    }
}

impl TryFrom<pb::Record> for Record {
    type Error = KvError;

    fn try_from(r: pb::Record) -> Result<Self, KvError> {
        Ok(Record {
            version: required_version(r.version)?,
            live: r.live.map(Into::into),
        })
    }
}

/// A namespace id from its 16 wire bytes.
pub fn namespace_id(bytes: &[u8]) -> Result<NamespaceId, KvError> {
    let id: [u8; 16] = bytes.try_into().map_err(|_| {
        KvError::InvalidIdentifier(format!("namespace id of {} bytes", bytes.len()))
    })?;
    Ok(NamespaceId(id))
}

impl From<&Namespace> for pb::Namespace {
    fn from(ns: &Namespace) -> Self {
        pb::Namespace {
            id: ns.id.0.to_vec(),
            account_id: ns.account_id.clone(),
            title: ns.title.clone(),
            version: Some(ns.version.into()),
        }
    }
}

impl TryFrom<pb::Namespace> for Namespace {
    type Error = KvError;

    fn try_from(ns: pb::Namespace) -> Result<Self, KvError> {
        Ok(Namespace {
            id: namespace_id(&ns.id)?,
            account_id: ns.account_id,
            title: ns.title,
            version: required_version(ns.version)?,
        })
    }
}

impl From<Write> for pb::Write {
    fn from(w: Write) -> Self {
        let put = match w.op {
            WriteOp::Put(live) => Some(live.into()),
            WriteOp::Delete => None,
        };
        pb::Write { key: w.key, put }
    }
}

impl From<pb::Write> for Write {
    fn from(w: pb::Write) -> Self {
        let op = match w.put {
            Some(live) => WriteOp::Put(live.into()),
            None => WriteOp::Delete,
        };
        Write { key: w.key, op }
    }
}

/// A key change on the wire.
pub fn key_change(namespace: NamespaceId, key: String, record: Record) -> pb::KeyChange {
    pb::KeyChange {
        namespace_id: namespace.0.to_vec(),
        key,
        record: Some(record.into()),
    }
}

impl TryFrom<pb::KeyChange> for Change {
    type Error = KvError;

    fn try_from(k: pb::KeyChange) -> Result<Self, KvError> {
        Ok(Change::Key {
            namespace: namespace_id(&k.namespace_id)?,
            key: k.key,
            record: k.record.ok_or_else(|| missing("record"))?.try_into()?,
        })
    }
}

impl From<LogEntry> for pb::LogEntry {
    fn from(e: LogEntry) -> Self {
        use pb::log_entry::Change as Wire;
        let change = match e.change {
            Change::Key {
                namespace,
                key,
                record,
            } => Wire::Key(key_change(namespace, key, record)),
            Change::Namespace(ns) => Wire::Namespace((&ns).into()),
            Change::NamespaceDeleted { id, version } => {
                Wire::NamespaceDeletion(pb::NamespaceDeletion {
                    id: id.0.to_vec(),
                    version: Some(version.into()),
                })
            }
        };
        pb::LogEntry {
            sequence: e.sequence,
            change: Some(change),
        }
    }
}

impl TryFrom<pb::LogEntry> for LogEntry {
    type Error = KvError;

    fn try_from(e: pb::LogEntry) -> Result<Self, KvError> {
        use pb::log_entry::Change as Wire;
        let change = match e.change.ok_or_else(|| missing("change"))? {
            Wire::Key(k) => k.try_into()?,
            Wire::Namespace(ns) => Change::Namespace(ns.try_into()?),
            Wire::NamespaceDeleted(id) => Change::NamespaceDeleted {
                id: namespace_id(&id)?,
                version: Version::default(),
            },
            Wire::NamespaceDeletion(deletion) => Change::NamespaceDeleted {
                id: namespace_id(&deletion.id)?,
                version: required_version(deletion.version)?,
            },
        };
        Ok(LogEntry {
            sequence: e.sequence,
            change,
        })
    }
}

impl From<WriteResult> for pb::WriteResult {
    fn from(result: WriteResult) -> Self {
        match result {
            WriteResult::Applied { sequence, version } => pb::WriteResult {
                applied: true,
                sequence,
                version: Some(version.into()),
                retry_after_ms: 0,
            },
            WriteResult::RateLimited { retry_after_ms } => pb::WriteResult {
                applied: false,
                sequence: 0,
                version: None,
                retry_after_ms,
            },
        }
    }
}

impl TryFrom<pb::WriteResult> for WriteResult {
    type Error = KvError;

    fn try_from(result: pb::WriteResult) -> Result<Self, KvError> {
        Ok(if result.applied {
            WriteResult::Applied {
                sequence: result.sequence,
                version: required_version(result.version)?,
            }
        } else {
            WriteResult::RateLimited {
                retry_after_ms: result.retry_after_ms,
            }
        })
    }
}

impl From<&KvError> for pb::WriteFailure {
    fn from(error: &KvError) -> Self {
        pb::WriteFailure {
            code: error.code(),
            http_status: u32::from(error.status()),
            message: error.to_string(),
        }
    }
}

impl From<pb::WriteFailure> for KvError {
    /// The error exactly as central classified it, as [`error_from_status`] gives it for a
    /// failed call.
    fn from(failure: pb::WriteFailure) -> Self {
        KvError::Remote {
            status: u16::try_from(failure.http_status).unwrap_or(500),
            code: failure.code,
            message: failure.message,
        }
    }
}

impl From<WriteRequest> for pb::WriteRequest {
    fn from(request: WriteRequest) -> Self {
        pb::WriteRequest {
            account_id: request.account_id,
            namespace_id: request.namespace.0.to_vec(),
            writes: request.writes.into_iter().map(Into::into).collect(),
        }
    }
}

impl TryFrom<pb::WriteRequest> for WriteRequest {
    type Error = KvError;

    fn try_from(request: pb::WriteRequest) -> Result<Self, KvError> {
        Ok(WriteRequest {
            account_id: request.account_id,
            namespace: namespace_id(&request.namespace_id)?,
            writes: request.writes.into_iter().map(Into::into).collect(),
        })
    }
}

impl From<Result<Vec<WriteResult>, KvError>> for pb::WriteBatchOutcome {
    fn from(outcome: Result<Vec<WriteResult>, KvError>) -> Self {
        use pb::write_batch_outcome::Outcome;
        let outcome = match outcome {
            Ok(results) => Outcome::Applied(pb::WriteReply {
                results: results.into_iter().map(Into::into).collect(),
            }),
            Err(e) => Outcome::Failed((&e).into()),
        };
        pb::WriteBatchOutcome {
            outcome: Some(outcome),
        }
    }
}

impl TryFrom<pb::WriteBatchOutcome> for Result<Vec<WriteResult>, KvError> {
    type Error = KvError;

    fn try_from(outcome: pb::WriteBatchOutcome) -> Result<Self, KvError> {
        use pb::write_batch_outcome::Outcome;
        match outcome.outcome.ok_or_else(|| missing("outcome"))? {
            Outcome::Applied(reply) => Ok(Ok(reply
                .results
                .into_iter()
                .map(WriteResult::try_from)
                .collect::<Result<_, _>>()?)),
            Outcome::Failed(failure) => Ok(Err(failure.into())),
        }
    }
}

impl From<ReplicationEvent> for pb::SubscribeReply {
    fn from(event: ReplicationEvent) -> Self {
        use pb::subscribe_reply::Event;
        let event = match event {
            ReplicationEvent::Entries(batch) => Event::Entries(pb::LogBatch {
                entries: batch.entries.into_iter().map(Into::into).collect(),
                yours: batch.yours,
            }),
            ReplicationEvent::Heartbeat { durable_sequence } => {
                Event::Heartbeat(pb::Heartbeat { durable_sequence })
            }
            ReplicationEvent::SnapshotNeeded { oldest_retained } => {
                Event::SnapshotNeeded(pb::SnapshotNeeded { oldest_retained })
            }
            ReplicationEvent::Horizon { sequence } => Event::Horizon(pb::Horizon { sequence }),
        };
        pb::SubscribeReply { event: Some(event) }
    }
}

impl TryFrom<pb::SubscribeReply> for ReplicationEvent {
    type Error = KvError;

    fn try_from(reply: pb::SubscribeReply) -> Result<Self, KvError> {
        use pb::subscribe_reply::Event;
        Ok(match reply.event.ok_or_else(|| missing("event"))? {
            Event::Entries(batch) => ReplicationEvent::Entries(LogBatch {
                entries: batch
                    .entries
                    .into_iter()
                    .map(LogEntry::try_from)
                    .collect::<Result<_, _>>()?,
                yours: batch.yours,
            }),
            Event::Heartbeat(beat) => ReplicationEvent::Heartbeat {
                durable_sequence: beat.durable_sequence,
            },
            Event::SnapshotNeeded(needed) => ReplicationEvent::SnapshotNeeded {
                oldest_retained: needed.oldest_retained,
            },
            Event::Horizon(horizon) => ReplicationEvent::Horizon {
                sequence: horizon.sequence,
            },
        })
    }
}

impl From<SnapshotChunk> for pb::SnapshotChunk {
    fn from(chunk: SnapshotChunk) -> Self {
        pb::SnapshotChunk {
            namespaces: chunk.namespaces.iter().map(Into::into).collect(),
            records: chunk
                .records
                .into_iter()
                .map(|(namespace, key, record)| key_change(namespace, key, record))
                .collect(),
            complete: chunk.complete,
            sequence: chunk.sequence,
            written_through: chunk.written_through,
        }
    }
}

impl TryFrom<pb::SnapshotChunk> for SnapshotChunk {
    type Error = KvError;

    fn try_from(chunk: pb::SnapshotChunk) -> Result<Self, KvError> {
        Ok(SnapshotChunk {
            namespaces: chunk
                .namespaces
                .into_iter()
                .map(Namespace::try_from)
                .collect::<Result<_, _>>()?,
            records: chunk
                .records
                .into_iter()
                .map(|change| {
                    Ok((
                        namespace_id(&change.namespace_id)?,
                        change.key,
                        change.record.ok_or_else(|| missing("record"))?.try_into()?,
                    ))
                })
                .collect::<Result<_, KvError>>()?,
            complete: chunk.complete,
            sequence: chunk.sequence,
            written_through: chunk.written_through,
        })
    }
}

/// The gRPC status for an error, carrying its Cloudflare code and HTTP status.
pub fn status_from_error(error: &KvError) -> Status {
    let code = match error.status() {
        400 | 413 | 414 => Code::InvalidArgument,
        401 => Code::Unauthenticated,
        403 => Code::PermissionDenied,
        404 => Code::NotFound,
        409 => Code::AlreadyExists,
        429 => Code::ResourceExhausted,
        503 => Code::Unavailable,
        _ => Code::Internal,
    };
    let mut status = Status::new(code, error.to_string());
    status
        .metadata_mut()
        .insert(ERROR_CODE_KEY, MetadataValue::from(error.code()));
    status.metadata_mut().insert(
        HTTP_STATUS_KEY,
        MetadataValue::from(u32::from(error.status())),
    );
    status
}

/// The error a status stands for: the remote error as it was classified when the status
/// carries one, else a transport failure (unreachable, timed out) as 503 Unavailable.
pub fn error_from_status(status: &Status) -> KvError {
    let number = |key: &str| {
        status
            .metadata()
            .get(key)?
            .to_str()
            .ok()?
            .parse::<u32>()
            .ok()
    };
    match (
        number(ERROR_CODE_KEY),
        number(HTTP_STATUS_KEY).and_then(|s| u16::try_from(s).ok()),
    ) {
        (Some(code), Some(http)) => KvError::Remote {
            status: http,
            code,
            message: status.message().to_owned(),
        },
        _ => match status.code() {
            Code::Unavailable | Code::DeadlineExceeded | Code::Cancelled | Code::Unknown => {
                KvError::Unavailable(format!(
                    "the write region did not answer: {}",
                    status.message()
                ))
            }
            _ => KvError::Internal(format!("the write region failed: {}", status.message())),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn version() -> Version {
        Version {
            timestamp: 42,
            origin: 7,
        }
    }

    #[test]
    fn write_failures_keep_code_status_and_message() {
        let error = KvError::NamespaceNotFound;
        let back = KvError::from(pb::WriteFailure::from(&error));
        assert_eq!(
            (back.code(), back.status(), back.to_string()),
            (error.code(), error.status(), error.to_string())
        );
    }

    #[test]
    fn write_results_round_trip() {
        for result in [
            WriteResult::Applied {
                sequence: 9,
                version: version(),
            },
            WriteResult::RateLimited {
                retry_after_ms: 740,
            },
        ] {
            assert_eq!(
                WriteResult::try_from(pb::WriteResult::from(result)).unwrap(),
                result
            );
        }
        let unversioned = pb::WriteResult {
            applied: true,
            ..Default::default()
        };
        assert!(WriteResult::try_from(unversioned).is_err());
    }

    #[test]
    fn records_and_writes_round_trip() {
        let live = LiveValue {
            value: Bytes::from_static(b"\x00v"),
            metadata: Some("{}".into()),
            expiration: Some(9),
        };
        for record in [
            Record {
                version: version(),
                live: Some(live.clone()),
            },
            Record::tombstone(version()),
        ] {
            assert_eq!(
                Record::try_from(pb::Record::from(record.clone())).unwrap(),
                record
            );
        }
        for write in [
            Write {
                key: "k".into(),
                op: WriteOp::Put(live),
            },
            Write {
                key: "k".into(),
                op: WriteOp::Delete,
            },
        ] {
            assert_eq!(Write::from(pb::Write::from(write.clone())), write);
        }
        let ns = Namespace {
            id: NamespaceId([3; 16]),
            account_id: "a".into(),
            title: "t".into(),
            version: version(),
        };
        assert_eq!(Namespace::try_from(pb::Namespace::from(&ns)).unwrap(), ns);
        for change in [
            Change::Key {
                namespace: ns.id,
                key: "k".into(),
                record: Record::tombstone(version()),
            },
            Change::Namespace(ns.clone()),
            Change::NamespaceDeleted {
                id: ns.id,
                version: version(),
            },
        ] {
            let entry = LogEntry {
                sequence: 12,
                change,
            };
            assert_eq!(
                LogEntry::try_from(pb::LogEntry::from(entry.clone())).unwrap(),
                entry
            );
        }
    }

    #[test]
    fn malformed_messages_are_errors() {
        assert!(Record::try_from(pb::Record {
            version: None,
            live: None
        })
        .is_err());
        assert!(matches!(
            namespace_id(&[1, 2, 3]),
            Err(KvError::InvalidIdentifier(_))
        ));
        let bad = pb::Namespace {
            id: vec![0; 15],
            account_id: "a".into(),
            title: "t".into(),
            version: Some(version().into()),
        };
        assert!(Namespace::try_from(bad).is_err());
        assert!(LogEntry::try_from(pb::LogEntry {
            sequence: 1,
            change: None
        })
        .is_err());
    }

    /// Replication events and snapshot chunks cross the wire unchanged, the garbage-collection
    /// horizon and a snapshot's `written_through` included; a namespace deletion logged before
    /// deletions carried a version reads with version 0.
    #[test]
    fn replication_events_and_snapshot_chunks_round_trip() {
        for event in [
            ReplicationEvent::Horizon { sequence: 41 },
            ReplicationEvent::Heartbeat {
                durable_sequence: 7,
            },
            ReplicationEvent::SnapshotNeeded { oldest_retained: 3 },
        ] {
            let wire = pb::SubscribeReply::from(event.clone());
            assert_eq!(ReplicationEvent::try_from(wire).unwrap(), event);
        }
        let chunk = SnapshotChunk {
            complete: true,
            sequence: 10,
            written_through: 12,
            ..SnapshotChunk::default()
        };
        assert_eq!(
            SnapshotChunk::try_from(pb::SnapshotChunk::from(chunk.clone())).unwrap(),
            chunk
        );
        let old = pb::LogEntry {
            sequence: 5,
            change: Some(pb::log_entry::Change::NamespaceDeleted(vec![3; 16])),
        };
        assert_eq!(
            LogEntry::try_from(old).unwrap().change,
            Change::NamespaceDeleted {
                id: NamespaceId([3; 16]),
                version: Version::default(),
            }
        );
    }

    #[test]
    fn errors_cross_the_wire_unchanged() {
        for error in [
            KvError::KeyTooLong {
                len: 600,
                limit: 512,
            },
            KvError::NamespaceNotFound,
            KvError::TitleTaken,
            KvError::ValueTooLarge { len: 2, limit: 1 },
            KvError::Internal("disk".into()),
        ] {
            let back = error_from_status(&status_from_error(&error));
            assert_eq!(
                (back.status(), back.code(), back.to_string()),
                (error.status(), error.code(), error.to_string())
            );
        }
        assert_eq!(
            status_from_error(&KvError::NamespaceNotFound).code(),
            Code::NotFound
        );
    }

    #[test]
    fn transport_failures_become_unavailable() {
        let error = error_from_status(&Status::unavailable("connection refused"));
        assert_eq!((error.status(), error.code()), (503, 10050));
        assert!(error.to_string().contains("connection refused"));
        assert_eq!(error_from_status(&Status::internal("boom")).status(), 500);
    }
}
