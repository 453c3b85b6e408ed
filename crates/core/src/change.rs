//! Changes to replicated state and the replication log that orders them.
//!
//! Every change central accepts (a key written or deleted, a namespace created, renamed or
//! deleted) gets the next sequence number of the replication log. Edges apply log entries
//! last-write-wins, so applying an entry twice, or out of order, ends in the same state.

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::error::KvError;
use crate::namespace::{Namespace, NamespaceId};
use crate::record::{Record, Version};

/// One change to replicated state.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Change {
    /// A key's new record (a live value or a tombstone).
    Key {
        namespace: NamespaceId,
        key: String,
        record: Record,
    },
    /// A namespace created or renamed.
    Namespace(Namespace),
    /// A namespace deleted, with all its keys. Namespace ids are never reused, so the id stays
    /// deleted: a later change that would recreate it (a late or replayed entry) is ignored.
    NamespaceDeleted {
        id: NamespaceId,
        /// When it was deleted (its HLC version, stamped by central); 0 in entries logged
        /// before deletions carried one.
        version: Version,
    },
}

/// A change with its place in the replication log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LogEntry {
    pub sequence: u64,
    pub change: Change,
}

impl AsRef<Change> for Change {
    fn as_ref(&self) -> &Change {
        self
    }
}

/// Log entries are applied for their changes, without copying them out.
impl AsRef<Change> for LogEntry {
    fn as_ref(&self) -> &Change {
        &self.change
    }
}

/// The on-disk form of a change; records and namespaces keep their own encodings.
#[derive(Serialize, Deserialize)]
enum Wire<'a> {
    Key {
        namespace: [u8; 16],
        key: &'a str,
        record: &'a [u8],
    },
    Namespace(&'a [u8]),
    /// Logged before deletions carried a version; read, never written.
    NamespaceDeleted([u8; 16]),
    NamespaceDeletedAt {
        id: [u8; 16],
        timestamp: u64,
        origin: u64,
    },
}

const FORMAT: u8 = 1;

/// The approximate size of a key's record in memory and on the wire, for cutting batches and
/// bounding buffers.
pub fn record_size(key: &str, record: &Record) -> usize {
    64 + key.len()
        + record.live.as_ref().map_or(0, |l| {
            l.value.len() + l.metadata.as_ref().map_or(0, String::len)
        })
}

impl Change {
    /// The approximate size of the change in memory and on the wire.
    pub fn size(&self) -> usize {
        match self {
            Change::Key { key, record, .. } => record_size(key, record),
            Change::Namespace(ns) => 64 + ns.account_id.len() + ns.title.len(),
            Change::NamespaceDeleted { .. } => 48,
        }
    }

    /// Encodes the change for the log.
    pub fn encode(&self) -> Vec<u8> {
        let (record, namespace);
        let wire = match self {
            Change::Key {
                namespace: ns,
                key,
                record: r,
            } => {
                record = r.encode();
                Wire::Key {
                    namespace: ns.0,
                    key,
                    record: &record,
                }
            }
            Change::Namespace(ns) => {
                namespace = ns.encode();
                Wire::Namespace(&namespace)
            }
            Change::NamespaceDeleted { id, version } => Wire::NamespaceDeletedAt {
                id: id.0,
                timestamp: version.timestamp,
                origin: version.origin,
            },
        };
        let mut out = vec![FORMAT];
        // Serializing plain data into a Vec cannot fail.
        postcard::to_io(&wire, &mut out).expect("postcard encoding into a Vec");
        out
    }

    /// Decodes a change from the log.
    pub fn decode(bytes: &[u8]) -> Result<Self, KvError> {
        let corrupt = |why: String| KvError::Internal(format!("corrupt log entry: {why}"));
        let (&format, rest) = bytes.split_first().ok_or_else(|| corrupt("empty".into()))?;
        if format != FORMAT {
            return Err(corrupt(format!("unknown format {format}")));
        }
        let wire: Wire<'_> = postcard::from_bytes(rest).map_err(|e| corrupt(e.to_string()))?;
        Ok(match wire {
            Wire::Key {
                namespace,
                key,
                record,
            } => Change::Key {
                namespace: NamespaceId(namespace),
                key: key.to_owned(),
                record: Record::decode(Bytes::copy_from_slice(record))?,
            },
            Wire::Namespace(bytes) => Change::Namespace(Namespace::decode(bytes)?),
            Wire::NamespaceDeleted(id) => Change::NamespaceDeleted {
                id: NamespaceId(id),
                version: Version::default(),
            },
            Wire::NamespaceDeletedAt {
                id,
                timestamp,
                origin,
            } => Change::NamespaceDeleted {
                id: NamespaceId(id),
                version: Version { timestamp, origin },
            },
        })
    }

    /// The HLC timestamp of the write behind the change, where it has one.
    pub fn timestamp(&self) -> Option<u64> {
        match self {
            Change::Key { record, .. } => Some(record.version.timestamp),
            Change::Namespace(ns) => Some(ns.version.timestamp),
            Change::NamespaceDeleted { version, .. } => {
                (version.timestamp > 0).then_some(version.timestamp)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::LiveValue;

    #[test]
    fn changes_round_trip() {
        let version = Version {
            timestamp: 5,
            origin: 2,
        };
        let changes = [
            Change::Key {
                namespace: NamespaceId([1; 16]),
                key: "a key/with?odd%chars".into(),
                record: Record {
                    version,
                    live: Some(LiveValue {
                        value: Bytes::from_static(b"\x00\x01"),
                        metadata: Some("{}".into()),
                        expiration: Some(99),
                    }),
                },
            },
            Change::Key {
                namespace: NamespaceId([1; 16]),
                key: "gone".into(),
                record: Record::tombstone(version),
            },
            Change::Namespace(Namespace {
                id: NamespaceId([2; 16]),
                account_id: "acct".into(),
                title: "t".into(),
                version,
            }),
            Change::NamespaceDeleted {
                id: NamespaceId([3; 16]),
                version,
            },
        ];
        for change in changes {
            assert_eq!(Change::decode(&change.encode()).unwrap(), change);
        }
    }

    /// Deletions logged before they carried a version still read, with version 0.
    #[test]
    fn unversioned_namespace_deletions_still_decode() {
        let mut old = vec![FORMAT];
        postcard::to_io(&Wire::NamespaceDeleted([3; 16]), &mut old).unwrap();
        assert_eq!(
            Change::decode(&old).unwrap(),
            Change::NamespaceDeleted {
                id: NamespaceId([3; 16]),
                version: Version::default(),
            }
        );
    }

    #[test]
    fn corrupt_entries_are_errors() {
        assert!(Change::decode(&[]).is_err());
        assert!(Change::decode(&[7, 0]).is_err());
        assert!(Change::decode(&[FORMAT, 9, 9, 9]).is_err());
    }
}
