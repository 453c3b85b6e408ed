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

    /// Encodes the change for the log. A key change's encoding ends with its record's
    /// ([`Record::encode`]), written straight into it: a store keeps that tail of the log
    /// entry as the key's record instead of a second copy of the value.
    pub fn encode(&self) -> Vec<u8> {
        let namespace;
        let wire = match self {
            Change::Key {
                namespace,
                key,
                record,
            } => {
                let record_len = record.encoded_len();
                let mut out = Vec::with_capacity(32 + key.len() + record_len);
                out.push(FORMAT);
                // The entry with an empty record, whose length (0, one byte) comes last, then
                // the record's length and the record: the same bytes as the entry encoded
                // with its record's bytes, without first building those bytes apart.
                let head = Wire::Key {
                    namespace: namespace.0,
                    key,
                    record: &[],
                };
                postcard::to_io(&head, &mut out).expect("postcard encoding into a Vec");
                out.pop();
                postcard::to_io(&record_len, &mut out).expect("postcard encoding into a Vec");
                record.encode_into(&mut out);
                return out;
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

    /// Decodes a change from the log. A key change's value is a slice of `bytes`, not a copy.
    pub fn decode(bytes: &Bytes) -> Result<Self, KvError> {
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
                record: Record::decode(bytes.slice_ref(record))?,
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
            assert_eq!(Change::decode(&change.encode().into()).unwrap(), change);
        }
    }

    /// A key change is encoded exactly as it was when its record was encoded apart first (so
    /// logs written before still read), and ends with its record's stored form.
    #[test]
    fn a_key_change_ends_with_its_record() {
        let tombstone = Record::tombstone(Version {
            timestamp: 9,
            origin: 1,
        });
        assert_eq!(tombstone.encode().len(), tombstone.encoded_len());
        for len in [0, 1, 127, 128, 16_383, 16_384, 20_000] {
            let record = Record {
                version: Version {
                    timestamp: 9,
                    origin: 1,
                },
                live: Some(LiveValue {
                    value: vec![b'v'; len].into(),
                    metadata: Some("{\"m\":1}".into()),
                    expiration: None,
                }),
            };
            let stored = record.encode();
            assert_eq!(stored.len(), record.encoded_len());
            let mut apart = vec![FORMAT];
            let wire = Wire::Key {
                namespace: [4; 16],
                key: "k",
                record: &stored,
            };
            postcard::to_io(&wire, &mut apart).unwrap();
            let change = Change::Key {
                namespace: NamespaceId([4; 16]),
                key: "k".into(),
                record,
            };
            let logged = change.encode();
            assert_eq!(logged, apart);
            assert!(logged.ends_with(&stored));
        }
    }

    /// Deletions logged before they carried a version still read, with version 0.
    #[test]
    fn unversioned_namespace_deletions_still_decode() {
        let mut old = vec![FORMAT];
        postcard::to_io(&Wire::NamespaceDeleted([3; 16]), &mut old).unwrap();
        assert_eq!(
            Change::decode(&old.into()).unwrap(),
            Change::NamespaceDeleted {
                id: NamespaceId([3; 16]),
                version: Version::default(),
            }
        );
    }

    #[test]
    fn corrupt_entries_are_errors() {
        for corrupt in [&[][..], &[7, 0], &[FORMAT, 9, 9, 9]] {
            assert!(Change::decode(&Bytes::copy_from_slice(corrupt)).is_err());
        }
    }
}
