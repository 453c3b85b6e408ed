//! The operations every server role offers, independent of transport.
//!
//! The HTTP front (the Cloudflare REST API) is written against [`KvService`]; the embedded
//! engine implements it by writing to its own store, and other roles (an edge forwarding
//! writes to a central region) implement it their own way behind the same API.

use async_trait::async_trait;
use bytes::Bytes;

use crate::cursor::ListCursor;
use crate::error::KvError;
use crate::namespace::{Namespace, NamespaceId};
use crate::record::{KeyInfo, LiveValue};

/// One write of a batch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Write {
    pub key: String,
    pub op: WriteOp,
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
    /// Reads a key: `None` when it is absent, deleted or expired.
    async fn get(
        &self,
        account_id: &str,
        id: NamespaceId,
        key: &str,
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
