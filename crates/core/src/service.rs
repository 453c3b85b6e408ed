//! The operations every server role offers, independent of transport.
//!
//! The HTTP front (the Cloudflare REST API) is written against [`KvService`]; the embedded
//! engine implements it by writing to its own store, and other roles (an edge forwarding
//! writes to a central region) implement it their own way behind the same API.

use async_trait::async_trait;
use bytes::Bytes;

use crate::cursor::ListCursor;
use crate::error::KvError;
use crate::key::validate_key;
use crate::limits::{MAX_METADATA_BYTES, MAX_VALUE_BYTES};
use crate::namespace::{Namespace, NamespaceId};
use crate::record::{KeyInfo, LiveValue, Record, Version};

/// One write of a batch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Write {
    pub key: String,
    pub op: WriteOp,
}

impl Write {
    /// Checks the write against the limits. The HTTP front validates requests already; every
    /// node that stores a write checks again, since it must never store what the limits
    /// forbid, whoever sent it.
    pub fn validate(&self, now_ms: u64) -> Result<(), KvError> {
        validate_key(&self.key)?;
        if let WriteOp::Put(value) = &self.op {
            if value.value.len() > MAX_VALUE_BYTES {
                return Err(KvError::ValueTooLarge {
                    len: value.value.len(),
                    limit: MAX_VALUE_BYTES,
                });
            }
            if let Some(metadata) = &value.metadata {
                if metadata.len() > MAX_METADATA_BYTES {
                    return Err(KvError::MetadataTooLarge {
                        len: metadata.len(),
                        limit: MAX_METADATA_BYTES,
                    });
                }
            }
            if let Some(at) = value.expiration {
                crate::key::check_expiration_bound(at)?;
            }
            if value.is_expired(now_ms) {
                return Err(KvError::InvalidExpiration(format!(
                    "expiration {} for key {:?} is in the past",
                    value.expiration.unwrap_or_default(),
                    self.key
                )));
            }
        }
        Ok(())
    }

    /// Bytes the write carries: key, value and metadata.
    pub fn payload_bytes(&self) -> usize {
        self.key.len()
            + match &self.op {
                WriteOp::Put(live) => {
                    live.value.len() + live.metadata.as_ref().map_or(0, String::len)
                }
                WriteOp::Delete => 0,
            }
    }

    /// The record this write stores once stamped with `version`.
    pub fn into_record(self, version: Version) -> Record {
        match self.op {
            WriteOp::Put(live) => Record {
                version,
                live: Some(live),
            },
            WriteOp::Delete => Record::tombstone(version),
        }
    }
}

/// What the write region did with one write of a batch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WriteResult {
    /// Stored durably, under this log sequence and version.
    Applied { sequence: u64, version: Version },
    /// Refused by the per-key write rate limit; the key may be written again in this many
    /// milliseconds.
    RateLimited { retry_after_ms: u64 },
}

impl WriteOutcome {
    /// The outcome of a batch from the fate of each write and its key, in batch order.
    pub fn from_results(keys: Vec<String>, results: &[WriteResult]) -> Self {
        let mut outcome = WriteOutcome::default();
        for (key, result) in keys.into_iter().zip(results) {
            match result {
                WriteResult::Applied { .. } => outcome.successful += 1,
                WriteResult::RateLimited { retry_after_ms } => {
                    outcome.unsuccessful.push(key);
                    outcome.retry_after_ms = outcome.retry_after_ms.max(*retry_after_ms);
                }
            }
        }
        outcome
    }
}

/// What a write does to its key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum WriteOp {
    Put(LiveValue),
    Delete,
}

/// What became of a batch of writes.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct WriteOutcome {
    /// Writes that were applied and are durable.
    pub successful: usize,
    /// Keys whose write was refused (reported back to the client as `unsuccessful_keys`).
    pub unsuccessful: Vec<String>,
    /// When some were refused: milliseconds until all of their keys may be written again.
    pub retry_after_ms: u64,
}

/// A request for one page of keys.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ListRequest {
    pub prefix: String,
    pub limit: usize,
    pub cursor: Option<ListCursor>,
}

/// One page of a key listing. `cursor` is `None` on the last page.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ListPage {
    pub keys: Vec<KeyInfo>,
    pub cursor: Option<ListCursor>,
}

/// The Workers KV operations, scoped by account.
#[async_trait]
pub trait KvService: Send + Sync + 'static {
    /// Creates a namespace; titles are unique per account.
    async fn create_namespace(&self, account_id: &str, title: &str) -> Result<Namespace, KvError>;
    /// Every namespace of the account, in no particular order.
    async fn list_namespaces(&self, account_id: &str) -> Result<Vec<Namespace>, KvError>;
    /// One namespace of the account.
    async fn namespace(&self, account_id: &str, id: NamespaceId) -> Result<Namespace, KvError>;
    /// The namespace `id`, whichever account owns it: for front ends whose requests name a
    /// namespace but no account (the workerd binding protocol), which then act within the
    /// account it belongs to.
    async fn find_namespace(&self, id: NamespaceId) -> Result<Namespace, KvError>;
    /// Renames a namespace; titles are unique per account.
    async fn rename_namespace(
        &self,
        account_id: &str,
        id: NamespaceId,
        title: &str,
    ) -> Result<Namespace, KvError>;
    /// Deletes a namespace and every key in it.
    async fn delete_namespace(&self, account_id: &str, id: NamespaceId) -> Result<(), KvError>;
    /// Applies a batch of puts and deletes; returns once they are durable.
    async fn write(
        &self,
        account_id: &str,
        id: NamespaceId,
        writes: Vec<Write>,
    ) -> Result<WriteOutcome, KvError>;
    /// Reads a key: `None` when it is absent, deleted or expired. `cache_ttl` (seconds) is how
    /// long a node with a cache may keep serving the result, as Workers KV's `cacheTtl`.
    async fn get(
        &self,
        account_id: &str,
        id: NamespaceId,
        key: &str,
        cache_ttl: Option<u64>,
    ) -> Result<Option<LiveValue>, KvError>;
    /// Lists live keys in UTF-8 byte order.
    async fn list(
        &self,
        account_id: &str,
        id: NamespaceId,
        request: ListRequest,
    ) -> Result<ListPage, KvError>;
}

/// Convenience for a single put, used by callers that write one value.
pub fn put(
    key: impl Into<String>,
    value: impl Into<Bytes>,
    metadata: Option<String>,
    expiration: Option<u64>,
) -> Write {
    Write {
        key: key.into(),
        op: WriteOp::Put(LiveValue {
            value: value.into(),
            metadata,
            expiration,
        }),
    }
}
