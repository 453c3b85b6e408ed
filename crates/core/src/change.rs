//! Changes to replicated state and the replication log that orders them.
//!
//! Every change central accepts (a key written or deleted, a namespace created, renamed or
//! deleted) gets the next sequence number of the replication log. Edges apply log entries
//! last-write-wins, so applying an entry twice, or out of order, ends in the same state.

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::error::KvError;
use crate::namespace::{Namespace, NamespaceId};
use crate::record::Record;

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
    /// A namespace deleted, with all its keys.
    NamespaceDeleted(NamespaceId),
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
    NamespaceDeleted([u8; 16]),
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
            Change::NamespaceDeleted(_) => 32,
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
            Change::NamespaceDeleted(id) => Wire::NamespaceDeleted(id.0),
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
            Wire::NamespaceDeleted(id) => Change::NamespaceDeleted(NamespaceId(id)),
        })
    }

    /// The HLC timestamp of the write behind the change, where it has one.
    pub fn timestamp(&self) -> Option<u64> {
        match self {
            Change::Key { record, .. } => Some(record.version.timestamp),
            Change::Namespace(ns) => Some(ns.version.timestamp),
            Change::NamespaceDeleted(_) => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::{LiveValue, Version};

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
            Change::NamespaceDeleted(NamespaceId([3; 16])),
        ];
        for change in changes {
            assert_eq!(Change::decode(&change.encode()).unwrap(), change);
        }
    }

    #[test]
    fn corrupt_entries_are_errors() {
        assert!(Change::decode(&[]).is_err());
        assert!(Change::decode(&[7, 0]).is_err());
        assert!(Change::decode(&[FORMAT, 9, 9, 9]).is_err());
    }
}
