//! How driftkv's data sits in the backend's trees (see [`Tree`](crate::backend::Tree) for each
//! tree's keys and values). Numbers are big-endian so that byte order is numeric order; a record's key starts
//! with its namespace id, so one namespace's keys are one contiguous range in key order.

use driftkv_core::NamespaceId;

use crate::{DueExpiration, StoreError};

/// [`Tree::Meta`] key of the last sequence central appended to its log.
pub(crate) const LAST_SEQUENCE: &[u8] = b"last_sequence";
/// [`Tree::Meta`] key of the last log sequence a replica has applied.
pub(crate) const APPLIED_SEQUENCE: &[u8] = b"applied_sequence";

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
    }
}
