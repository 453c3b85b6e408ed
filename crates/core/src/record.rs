//! Stored records and their versions.
//!
//! A record is either a live value (bytes, optional metadata, optional expiration) or a
//! tombstone. Every record carries the [`Version`] of the write that produced it; replicas keep
//! the record with the greatest version (last write wins), which is why deletes are tombstones
//! rather than removals: a late, older put must not bring a deleted key back.

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::error::KvError;

/// The version of a write: a hybrid-logical-clock timestamp, then the id of the node that
/// stamped it to break ties. Versions are totally ordered.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
pub struct Version {
    /// HLC time (NTP64 format: seconds in the high 32 bits, fraction in the low 32).
    pub timestamp: u64,
    /// Id of the node that stamped the write.
    pub origin: u64,
}

/// A live value.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LiveValue {
    pub value: Bytes,
    /// Compact JSON text, at most 1024 bytes.
    pub metadata: Option<String>,
    /// Unix seconds after which the value is gone.
    pub expiration: Option<u64>,
}

impl LiveValue {
    /// True when the value has expired at `now_ms` (it is gone from the expiration second on).
    pub fn is_expired(&self, now_ms: u64) -> bool {
        is_expired(self.expiration, now_ms)
    }
}

fn is_expired(expiration: Option<u64>, now_ms: u64) -> bool {
    expiration.is_some_and(|e| now_ms >= e.saturating_mul(1000))
}

/// A stored record: a live value or a tombstone (`live == None`), with its version.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Record {
    pub version: Version,
    pub live: Option<LiveValue>,
}

/// One key of a listing: its name and, where set, expiration and metadata.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyInfo {
    pub name: String,
    pub expiration: Option<u64>,
    pub metadata: Option<String>,
}

/// The on-disk form. The first byte is a format number so that the encoding can evolve; the
/// value comes last and is borrowed on decode, so reading a record's header never copies it.
#[derive(Serialize, Deserialize)]
struct Wire<'a> {
    version: Version,
    #[serde(borrow)]
    live: Option<WireLive<'a>>,
}

#[derive(Serialize, Deserialize)]
struct WireLive<'a> {
    expiration: Option<u64>,
    metadata: Option<&'a str>,
    value: &'a [u8],
}

const FORMAT: u8 = 1;

/// A record decoded without copying, borrowing from the stored bytes.
#[derive(Debug)]
pub struct RecordView<'a> {
    pub version: Version,
    /// `None` for a tombstone.
    pub expiration: Option<u64>,
    pub metadata: Option<&'a str>,
    pub value: Option<&'a [u8]>,
}

/// How many bytes of an encoded record [`RecordHead::decode`] needs at most: the format byte,
/// the version (two integers of at most 10 bytes each as postcard writes them), whether the
/// record is live (1 byte) and its expiration (1 + 10 bytes).
pub const RECORD_HEAD: usize = 33;

/// What a record's first [`RECORD_HEAD`] bytes tell: enough for last-write-wins, expiry and
/// garbage-collection checks, which need nothing of the value.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RecordHead {
    pub version: Version,
    /// False for a tombstone.
    pub live: bool,
    /// `None` for a tombstone or a value that does not expire.
    pub expiration: Option<u64>,
}

impl RecordHead {
    /// Decodes the head of an encoded record from its first [`RECORD_HEAD`] bytes (or fewer,
    /// or the whole record).
    pub fn decode(head: &[u8]) -> Result<Self, KvError> {
        let corrupt = |why: String| KvError::Internal(format!("corrupt record: {why}"));
        let (&format, rest) = head.split_first().ok_or_else(|| corrupt("empty".into()))?;
        if format != FORMAT {
            return Err(corrupt(format!("unknown format {format}")));
        }
        // The encoding's first fields, in order: the version, then whether it is live and, if
        // so, the expiration (postcard writes no field names, so the rest can stay unread).
        let ((version, live), _) =
            postcard::take_from_bytes::<(Version, Option<Option<u64>>)>(rest)
                .map_err(|e| corrupt(e.to_string()))?;
        Ok(RecordHead {
            version,
            live: live.is_some(),
            expiration: live.flatten(),
        })
    }
}

impl<'a> RecordView<'a> {
    /// Decodes stored bytes.
    pub fn decode(bytes: &'a [u8]) -> Result<Self, KvError> {
        let corrupt = |why: String| KvError::Internal(format!("corrupt record: {why}"));
        let (&format, rest) = bytes.split_first().ok_or_else(|| corrupt("empty".into()))?;
        if format != FORMAT {
            return Err(corrupt(format!("unknown format {format}")));
        }
        let wire: Wire<'a> = postcard::from_bytes(rest).map_err(|e| corrupt(e.to_string()))?;
        Ok(match wire.live {
            Some(l) => RecordView {
                version: wire.version,
                expiration: l.expiration,
                metadata: l.metadata,
                value: Some(l.value),
            },
            None => RecordView {
                version: wire.version,
                expiration: None,
                metadata: None,
                value: None,
            },
        })
    }

    /// True for a live value that has not expired at `now_ms`.
    pub fn is_live(&self, now_ms: u64) -> bool {
        self.value.is_some() && !is_expired(self.expiration, now_ms)
    }
}

impl Record {
    /// A tombstone with the given version.
    pub fn tombstone(version: Version) -> Self {
        Record {
            version,
            live: None,
        }
    }

    fn wire(&self) -> Wire<'_> {
        Wire {
            version: self.version,
            live: self.live.as_ref().map(|l| WireLive {
                expiration: l.expiration,
                metadata: l.metadata.as_deref(),
                value: &l.value,
            }),
        }
    }

    /// Encodes the record for storage.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.encoded_len());
        self.encode_into(&mut out);
        out
    }

    /// Appends the record's stored form ([`Record::encode`]) to `out`.
    pub fn encode_into(&self, out: &mut Vec<u8>) {
        out.push(FORMAT);
        // Serializing plain data into a Vec cannot fail.
        postcard::to_io(&self.wire(), out).expect("postcard encoding into a Vec");
    }

    /// The length of [`Record::encode`]'s bytes, found without going through the value: it
    /// is the encoding's last field, its length's varint then its bytes, so the rest is
    /// counted by encoding the record with an empty value (whose length takes one byte).
    pub fn encoded_len(&self) -> usize {
        /// Counts what is written to it.
        struct Counter(usize);
        impl std::io::Write for Counter {
            fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
                self.0 += bytes.len();
                Ok(bytes.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let mut head = self.wire();
        let value_len = head.live.as_mut().map_or(0, |live| {
            let len = live.value.len();
            live.value = &[];
            // A varint carries 7 bits a byte; the empty value's length took one.
            let varint = (usize::BITS - len.leading_zeros()).max(1).div_ceil(7) as usize;
            varint - 1 + len
        });
        let mut counter = Counter(1);
        postcard::to_io(&head, &mut counter).expect("postcard encoding into a counter");
        counter.0 + value_len
    }

    /// Points the value at its bytes at the end of `stored`: this record's stored form, or a
    /// log entry ending with it (see [`crate::Change::encode`]). The value then holds that
    /// allocation rather than the buffer it arrived in, which may be a whole request's.
    pub fn share_stored_value(&mut self, stored: &Bytes) {
        if let Some(live) = &mut self.live {
            debug_assert!(
                stored.ends_with(&live.value),
                "the stored form ends with the value"
            );
            live.value = stored.slice(stored.len() - live.value.len()..);
        }
    }

    /// Decodes stored bytes. The value is a slice of `bytes`, not a copy, so reading a large
    /// value out of storage costs no second buffer.
    pub fn decode(bytes: Bytes) -> Result<Self, KvError> {
        let view = RecordView::decode(&bytes)?;
        Ok(Record {
            version: view.version,
            live: view.value.map(|value| LiveValue {
                value: bytes.slice_ref(value),
                metadata: view.metadata.map(str::to_owned),
                expiration: view.expiration,
            }),
        })
    }

    /// The live value, unless this is a tombstone or it has expired at `now_ms`.
    pub fn into_live_at(self, now_ms: u64) -> Option<LiveValue> {
        self.live.filter(|l| !l.is_expired(now_ms))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn version(timestamp: u64, origin: u64) -> Version {
        Version { timestamp, origin }
    }

    #[test]
    fn records_round_trip() {
        let live = Record {
            version: version(7, 1),
            live: Some(LiveValue {
                value: Bytes::from_static(b"\x00\xffbinary"),
                metadata: Some(r#"{"a":1}"#.into()),
                expiration: Some(1234),
            }),
        };
        assert_eq!(Record::decode(live.encode().into()).unwrap(), live);
        let tomb = Record::tombstone(version(9, 2));
        assert_eq!(Record::decode(tomb.encode().into()).unwrap(), tomb);
        let view_bytes = live.encode();
        let view = RecordView::decode(&view_bytes).unwrap();
        assert_eq!(view.metadata, Some(r#"{"a":1}"#));
        assert_eq!(view.value, Some(&b"\x00\xffbinary"[..]));
    }

    /// A record's head reads from its first [`RECORD_HEAD`] bytes, whatever follows.
    #[test]
    fn the_head_reads_from_the_first_bytes_alone() {
        let largest = version(u64::MAX, u64::MAX);
        let live = |expiration| Record {
            version: largest,
            live: Some(LiveValue {
                value: Bytes::from(vec![7; 100_000]),
                metadata: Some("{\"m\":1}".into()),
                expiration,
            }),
        };
        for (record, head) in [
            (
                Record::tombstone(version(3, 4)),
                RecordHead {
                    version: version(3, 4),
                    live: false,
                    expiration: None,
                },
            ),
            (
                live(Some(u64::MAX)),
                RecordHead {
                    version: largest,
                    live: true,
                    expiration: Some(u64::MAX),
                },
            ),
            (
                live(None),
                RecordHead {
                    version: largest,
                    live: true,
                    expiration: None,
                },
            ),
        ] {
            let bytes = record.encode();
            assert_eq!(
                RecordHead::decode(&bytes[..RECORD_HEAD.min(bytes.len())]).unwrap(),
                head
            );
            assert_eq!(RecordHead::decode(&bytes).unwrap(), head);
        }
        assert!(RecordHead::decode(&[FORMAT, 0xff]).is_err());
        assert!(RecordHead::decode(&[2, 0, 0]).is_err());
    }

    #[test]
    fn corrupt_bytes_are_an_error_not_a_panic() {
        assert!(Record::decode(Bytes::new()).is_err());
        assert!(Record::decode(Bytes::from_static(&[9, 1, 2])).is_err());
        assert!(Record::decode(Bytes::from_static(&[FORMAT, 0xff, 0xff])).is_err());
    }

    #[test]
    fn versions_order_by_timestamp_then_origin() {
        assert!(version(2, 0) > version(1, 9));
        assert!(version(1, 2) > version(1, 1));
    }

    #[test]
    fn expiry_is_exact_to_the_second() {
        let v = LiveValue {
            value: Bytes::new(),
            metadata: None,
            expiration: Some(100),
        };
        assert!(!v.is_expired(99_999));
        assert!(v.is_expired(100_000));
        let forever = LiveValue {
            expiration: None,
            ..v
        };
        assert!(!forever.is_expired(u64::MAX));
    }
}
