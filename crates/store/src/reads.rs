//! The read path over a store, shared by every role that serves reads: namespace ownership,
//! values filtered by expiration at read time, and key listings.

use std::sync::Arc;

use crate::Store;
use driftkv_core::key::validate_key;
use driftkv_core::limits::MAX_LIST_LIMIT;
use driftkv_core::namespace::validate_account_id;
use driftkv_core::{KvError, ListCursor, ListPage, ListRequest, LiveValue, Namespace, NamespaceId};

/// The namespace, if it exists and belongs to the account. Another account's namespace is
/// reported as not found, so ids cannot be probed across accounts.
pub fn owned(store: &Store, account_id: &str, id: NamespaceId) -> Result<Arc<Namespace>, KvError> {
    validate_account_id(account_id)?;
    match store.namespace(id)? {
        Some(ns) if ns.account_id == account_id => Ok(ns),
        _ => Err(KvError::NamespaceNotFound),
    }
}

/// The namespace `id`, whichever account owns it.
pub fn find(store: &Store, id: NamespaceId) -> Result<Namespace, KvError> {
    match store.namespace(id)? {
        Some(ns) => Ok(Namespace::clone(&ns)),
        None => Err(KvError::NamespaceNotFound),
    }
}

/// Every namespace of the account, in no particular order.
pub fn namespaces(store: &Store, account_id: &str) -> Result<Vec<Namespace>, KvError> {
    validate_account_id(account_id)?;
    let mut all = store.namespaces()?;
    all.retain(|ns| ns.account_id == account_id);
    Ok(all)
}

/// A key's live value at `now_ms`: `None` when absent, deleted or expired.
pub fn get(
    store: &Store,
    account_id: &str,
    id: NamespaceId,
    key: &str,
    now_ms: u64,
) -> Result<Option<LiveValue>, KvError> {
    owned(store, account_id, id)?;
    validate_key(key)?;
    Ok(store
        .get(id, key)?
        .and_then(|record| record.into_live_at(now_ms)))
}

/// One page of live keys at `now_ms`.
pub async fn list(
    store: &Arc<Store>,
    account_id: &str,
    id: NamespaceId,
    request: ListRequest,
    now_ms: u64,
) -> Result<ListPage, KvError> {
    owned(store.as_ref(), account_id, id)?;
    if request.limit == 0 || request.limit > MAX_LIST_LIMIT {
        return Err(KvError::InvalidParameter(format!(
            "limit must be between 1 and {MAX_LIST_LIMIT}, got {}",
            request.limit
        )));
    }
    if let Some(cursor) = &request.cursor {
        if cursor.namespace != id || cursor.prefix != request.prefix {
            return Err(KvError::InvalidCursor(
                "the cursor belongs to another listing".into(),
            ));
        }
    }
    let prefix = request.prefix.clone();
    let after = request.cursor.map(|c| c.after);
    let scan = blocking(store, move |store| {
        Ok(store.scan(id, &prefix, after.as_deref(), request.limit, now_ms)?)
    })
    .await?;
    Ok(ListPage {
        keys: scan.keys,
        cursor: scan.resume_after.map(|after| ListCursor {
            namespace: id,
            prefix: request.prefix,
            after,
        }),
    })
}

/// Runs blocking store work (scans, commits) off the async worker threads.
pub async fn blocking<T: Send + 'static>(
    store: &Arc<Store>,
    work: impl FnOnce(&Store) -> Result<T, KvError> + Send + 'static,
) -> Result<T, KvError> {
    let store = store.clone();
    tokio::task::spawn_blocking(move || work(store.as_ref()))
        .await
        .map_err(|e| KvError::Internal(format!("storage task failed: {e}")))?
}
