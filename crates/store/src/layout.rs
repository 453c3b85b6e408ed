//! How driftkv's data sits in the backend's trees (see [`Tree`](crate::backend::Tree) for each
//! tree's keys and values). Numbers are big-endian so that byte order is numeric order; a record's key starts
//! with its namespace id, so one namespace's keys are one contiguous range in key order.

use driftkv_core::{NamespaceId, Version};

use crate::{DueExpiration, StoreError};

/// [`Tree::Meta`] key of the last sequence central appended to its log.
pub(crate) const LAST_SEQUENCE: &[u8] = b"last_sequence";
/// [`Tree::Meta`] key of the last log sequence a replica has applied.
pub(crate) const APPLIED_SEQUENCE: &[u8] = b"applied_sequence";

/// [`Tree::Meta`] key of the garbage-collection floor: the highest log sequence at or below
/// which tombstones may have been purged, or that a snapshot install covers. A replica ignores
/// log entries at or below it (they are applied, and a tombstone they might need is gone).
pub(crate) const GC_FLOOR: &[u8] = b"gc_floor";

/// [`Tree::Meta`] key of the newest version timestamp among the log entries trimmed away, so
/// that a restarted write region resumes its version clock above it even if the log no longer
/// holds the entry that carried it.
pub(crate) const TRIMMED_VERSION: &[u8] = b"trimmed_version";

/// The sequence under which a replica indexes a tombstone whose log sequence it does not know
/// yet (a snapshot's); never purged until settled with a known sequence.
pub(crate) const PENDING_SEQUENCE: u64 = u64::MAX;

/// Prefix of the [`Tree::Meta`] keys of namespace tombstones (followed by the id): the log
/// sequence of the deletion and when it happened, so that the id is never recreated.
pub(crate) const NAMESPACE_TOMBSTONE: &[u8] = b"namespace_tombstone/";

/// The [`Tree::Meta`] key of `namespace`'s tombstone.
pub(crate) fn namespace_tombstone_key(namespace: NamespaceId) -> Vec<u8> {
    [NAMESPACE_TOMBSTONE, &namespace.0].concat()
}

/// Length of a namespace id, the prefix of every record key.
pub(crate) const NAMESPACE_BYTES: usize = 16;

pub(crate) fn corrupt(what: impl std::fmt::Display) -> StoreError {
    StoreError::Corrupt(what.to_string())
}

/// The [`Tree::Records`] key of `key` in `namespace`.
pub(crate) fn record_key(namespace: NamespaceId, key: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(NAMESPACE_BYTES + key.len());
    k.extend_from_slice(&namespace.0);
    k.extend_from_slice(key);
    k
}

/// The key part of a [`Tree::Records`] key.
pub(crate) fn key_of(record_key: &[u8]) -> Result<String, StoreError> {
    let key = record_key
        .get(NAMESPACE_BYTES..)
        .ok_or_else(|| corrupt("short record key"))?;
    String::from_utf8(key.to_vec()).map_err(corrupt)
}

/// The namespace part of a [`Tree::Records`] key.
pub(crate) fn namespace_of(record_key: &[u8]) -> Result<NamespaceId, StoreError> {
    record_key
        .get(..NAMESPACE_BYTES)
        .and_then(|id| id.try_into().ok())
        .map(NamespaceId)
        .ok_or_else(|| corrupt("short record key"))
}

/// The first id after `namespace`, the end of its range of record keys; `None` after the last.
pub(crate) fn next_namespace(namespace: NamespaceId) -> Option<NamespaceId> {
    u128::from_be_bytes(namespace.0)
        .checked_add(1)
        .map(|n| NamespaceId(n.to_be_bytes()))
}

/// The [`Tree::Expiry`] key of a record expiring at `expiration`.
pub(crate) fn expiry_key(expiration: u64, namespace: NamespaceId, key: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(8 + NAMESPACE_BYTES + key.len());
    k.extend_from_slice(&expiration.to_be_bytes());
    k.extend_from_slice(&namespace.0);
    k.extend_from_slice(key.as_bytes());
    k
}

pub(crate) fn parse_expiry_key(k: &[u8]) -> Result<DueExpiration, StoreError> {
    if k.len() < 8 + NAMESPACE_BYTES {
        return Err(corrupt("short expiry index key"));
    }
    let expiration = u64::from_be_bytes(k[..8].try_into().expect("8 bytes"));
    let namespace = namespace_of(&k[8..])?;
    let key = key_of(&k[8..])?;
    Ok(DueExpiration {
        namespace,
        key,
        expiration,
    })
}

/// The [`Tree::Tombstones`] key of `key`'s tombstone, logged at `sequence`.
pub(crate) fn tombstone_key(sequence: u64, namespace: NamespaceId, key: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(8 + NAMESPACE_BYTES + key.len());
    k.extend_from_slice(&sequence.to_be_bytes());
    k.extend_from_slice(&namespace.0);
    k.extend_from_slice(key.as_bytes());
    k
}

/// A [`Tree::Tombstones`] key read back: sequence, namespace, key.
pub(crate) fn parse_tombstone_key(k: &[u8]) -> Result<(u64, NamespaceId, String), StoreError> {
    if k.len() < 8 + NAMESPACE_BYTES {
        return Err(corrupt("short tombstone index key"));
    }
    let sequence = u64::from_be_bytes(k[..8].try_into().expect("8 bytes"));
    Ok((sequence, namespace_of(&k[8..])?, key_of(&k[8..])?))
}

/// A [`Tree::Tombstones`] value: when the key went (unix ms) and the tombstone's version.
pub(crate) fn tombstone_value(gone_at_ms: u64, version: Version) -> Vec<u8> {
    let mut v = Vec::with_capacity(24);
    v.extend_from_slice(&gone_at_ms.to_be_bytes());
    v.extend_from_slice(&version.timestamp.to_be_bytes());
    v.extend_from_slice(&version.origin.to_be_bytes());
    v
}

/// A [`Tree::Tombstones`] value read back.
pub(crate) fn parse_tombstone_value(v: &[u8]) -> Result<(u64, Version), StoreError> {
    let number = |at: usize| -> Result<u64, StoreError> {
        v.get(at..at + 8)
            .and_then(|b| b.try_into().ok())
            .map(u64::from_be_bytes)
            .ok_or_else(|| corrupt("short tombstone index value"))
    };
    Ok((
        number(0)?,
        Version {
            timestamp: number(8)?,
            origin: number(16)?,
        },
    ))
}

/// A sequence as a [`Tree::Log`] key or a [`Tree::Meta`] value.
pub(crate) fn sequence_bytes(sequence: u64) -> Vec<u8> {
    sequence.to_be_bytes().to_vec()
}

/// A sequence read back; 0 when absent.
pub(crate) fn read_sequence(bytes: Option<&[u8]>) -> Result<u64, StoreError> {
    match bytes {
        None => Ok(0),
        Some(b) => Ok(u64::from_be_bytes(
            b.try_into()
                .map_err(|_| corrupt("a sequence of the wrong length"))?,
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_round_trip_and_order() {
        let ns = NamespaceId([7; 16]);
        let k = record_key(ns, "é/k".as_bytes());
        assert_eq!(
            (namespace_of(&k).unwrap(), key_of(&k).unwrap()),
            (ns, "é/k".into())
        );
        let due = parse_expiry_key(&expiry_key(99, ns, "k")).unwrap();
        assert_eq!(
            (due.expiration, due.namespace, due.key.as_str()),
            (99, ns, "k")
        );
        assert!(expiry_key(255, ns, "z") < expiry_key(256, ns, "a"));
        assert!(sequence_bytes(255) < sequence_bytes(256));
        assert_eq!(read_sequence(Some(&sequence_bytes(42))).unwrap(), 42);
        assert!(read_sequence(Some(b"short")).is_err());
        let mut last = [0xff; 16];
        assert_eq!(next_namespace(NamespaceId(last)), None);
        last[15] = 0xfe;
        assert_eq!(
            next_namespace(NamespaceId(last)),
            Some(NamespaceId([0xff; 16]))
        );
        assert!(record_key(ns, b"\xff\xff") < record_key(next_namespace(ns).unwrap(), b""));
        let version = Version {
            timestamp: 5,
            origin: 6,
        };
        assert_eq!(
            parse_tombstone_key(&tombstone_key(7, ns, "k")).unwrap(),
            (7, ns, "k".into())
        );
        assert_eq!(
            parse_tombstone_value(&tombstone_value(9, version)).unwrap(),
            (9, version)
        );
        assert!(tombstone_key(255, ns, "z") < tombstone_key(256, ns, "a"));
        assert!(parse_tombstone_value(b"short").is_err());
    }
}
