//! The single-writer engine.
//!
//! [`Engine`] implements [`KvService`] directly on a [`Store`]: it re-validates every write,
//! stamps it with a hybrid-logical-clock [`Version`], applies it, and acknowledges only after
//! [`Store::sync`] has made it durable. Reads filter tombstones and check expiration against
//! the wall clock at read time. [`spawn_sweeper`] turns expired records into tombstones in
//! the background so that their values stop taking space.
//!
//! In the embedded dev server this engine is the whole data path; in a cluster it is the
//! write region's core.

mod clock;

use std::num::NonZeroU64;
use std::sync::{Arc, Weak};
use std::time::Duration;

use async_trait::async_trait;
use driftkv_core::key::validate_key;
use driftkv_core::limits::{MAX_LIST_LIMIT, MAX_METADATA_BYTES, MAX_VALUE_BYTES};
use driftkv_core::namespace::{validate_account_id, validate_title};
use driftkv_core::{
    KvError, KvService, ListCursor, ListPage, ListRequest, LiveValue, Namespace, NamespaceId,
    Record, Version, Write, WriteOp, WriteOutcome,
};
use driftkv_store::Store;
use tokio::sync::Mutex;

pub use clock::{ManualClock, SystemClock, WallClock};

/// The single-writer engine over one store.
pub struct Engine {
    store: Arc<dyn Store>,
    hlc: uhlc::HLC,
    origin: u64,
    wall: Arc<dyn WallClock>,
    /// Serializes namespace creation and renames so title uniqueness is checked and enforced
    /// atomically. Namespace changes are rare; key writes never take this lock.
    namespace_changes: Mutex<()>,
}

impl Engine {
    /// An engine writing to `store`, stamping versions with `node_id` as their origin.
    pub fn new(store: Arc<dyn Store>, node_id: NonZeroU64, wall: Arc<dyn WallClock>) -> Self {
        let hlc = uhlc::HLCBuilder::new()
            .with_id(uhlc::ID::from(node_id))
            .build();
        Engine {
            store,
            hlc,
            origin: node_id.get(),
            wall,
            namespace_changes: Mutex::new(()),
        }
    }

    fn stamp(&self) -> Version {
        Version {
            timestamp: self.hlc.new_timestamp().get_time().as_u64(),
            origin: self.origin,
        }
    }

    /// The namespace, if it exists and belongs to the account. Another account's namespace is
    /// reported as not found, so ids cannot be probed across accounts.
    fn owned(&self, account_id: &str, id: NamespaceId) -> Result<Arc<Namespace>, KvError> {
        validate_account_id(account_id)?;
        match self.store.namespace(id)? {
            Some(ns) if ns.account_id == account_id => Ok(ns),
            _ => Err(KvError::NamespaceNotFound),
        }
    }

    fn title_taken(
        &self,
        account_id: &str,
        title: &str,
        except: Option<NamespaceId>,
    ) -> Result<bool, KvError> {
        Ok(self
            .store
            .namespaces()?
            .iter()
            .any(|ns| ns.account_id == account_id && ns.title == title && Some(ns.id) != except))
    }

    /// Runs blocking store work off the async worker threads.
    async fn blocking<T: Send + 'static>(
        &self,
        work: impl FnOnce(&dyn Store) -> Result<T, KvError> + Send + 'static,
    ) -> Result<T, KvError> {
        let store = self.store.clone();
        tokio::task::spawn_blocking(move || work(store.as_ref()))
            .await
            .map_err(|e| KvError::Internal(format!("storage task failed: {e}")))?
    }
}

/// Re-checks a write against the limits. The HTTP layer has validated it already; the engine
/// checks again because it must never store what the limits forbid, whoever sent it.
fn validate_write(write: &Write, now_ms: u64) -> Result<(), KvError> {
    validate_key(&write.key)?;
    if let WriteOp::Put(value) = &write.op {
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
        if value.is_expired(now_ms) {
            return Err(KvError::InvalidExpiration(format!(
                "expiration {} for key {:?} is in the past",
                value.expiration.unwrap_or_default(),
                write.key
            )));
        }
    }
    Ok(())
}

#[async_trait]
impl KvService for Engine {
    async fn create_namespace(&self, account_id: &str, title: &str) -> Result<Namespace, KvError> {
        validate_account_id(account_id)?;
        validate_title(title)?;
        let _guard = self.namespace_changes.lock().await;
        if self.title_taken(account_id, title, None)? {
            return Err(KvError::TitleTaken);
        }
        let mut id = NamespaceId::random();
        while self.store.namespace(id)?.is_some() {
            id = NamespaceId::random();
        }
        let namespace = Namespace {
            id,
            account_id: account_id.into(),
            title: title.into(),
            version: self.stamp(),
        };
        self.store.put_namespace(&namespace)?;
        self.store.sync().await?;
        tracing::info!(namespace = %id, title, "namespace created");
        Ok(namespace)
    }

    async fn list_namespaces(&self, account_id: &str) -> Result<Vec<Namespace>, KvError> {
        validate_account_id(account_id)?;
        let mut all = self.store.namespaces()?;
        all.retain(|ns| ns.account_id == account_id);
        Ok(all)
    }

    async fn namespace(&self, account_id: &str, id: NamespaceId) -> Result<Namespace, KvError> {
        self.owned(account_id, id).map(|ns| Namespace::clone(&ns))
    }

    async fn rename_namespace(
        &self,
        account_id: &str,
        id: NamespaceId,
        title: &str,
    ) -> Result<Namespace, KvError> {
        validate_title(title)?;
        let _guard = self.namespace_changes.lock().await;
        let mut namespace = Namespace::clone(&*self.owned(account_id, id)?);
        if self.title_taken(account_id, title, Some(id))? {
            return Err(KvError::TitleTaken);
        }
        namespace.title = title.into();
        namespace.version = self.stamp();
        self.store.put_namespace(&namespace)?;
        self.store.sync().await?;
        Ok(namespace)
    }

    async fn delete_namespace(&self, account_id: &str, id: NamespaceId) -> Result<(), KvError> {
        let _guard = self.namespace_changes.lock().await;
        self.owned(account_id, id)?;
        self.blocking(move |store| Ok(store.delete_namespace(id)?))
            .await?;
        self.store.sync().await?;
        tracing::info!(namespace = %id, "namespace deleted");
        Ok(())
    }

    async fn write(
        &self,
        account_id: &str,
        id: NamespaceId,
        writes: Vec<Write>,
    ) -> Result<WriteOutcome, KvError> {
        self.owned(account_id, id)?;
        let now_ms = self.wall.now_ms();
        for write in &writes {
            validate_write(write, now_ms)?;
        }
        let count = writes.len();
        let records: Vec<(String, Record)> = writes
            .into_iter()
            .map(|w| {
                let version = self.stamp();
                let record = match w.op {
                    WriteOp::Put(live) => Record {
                        version,
                        live: Some(live),
                    },
                    WriteOp::Delete => Record::tombstone(version),
                };
                (w.key, record)
            })
            .collect();
        self.blocking(move |store| Ok(store.apply(id, &records)?))
            .await?;
        self.store.sync().await?;
        Ok(WriteOutcome {
            successful: count,
            unsuccessful: Vec::new(),
        })
    }

    async fn get(
        &self,
        account_id: &str,
        id: NamespaceId,
        key: &str,
    ) -> Result<Option<LiveValue>, KvError> {
        self.owned(account_id, id)?;
        validate_key(key)?;
        let now_ms = self.wall.now_ms();
        Ok(self
            .store
            .get(id, key)?
            .and_then(|record| record.into_live_at(now_ms)))
    }

    async fn list(
        &self,
        account_id: &str,
        id: NamespaceId,
        request: ListRequest,
    ) -> Result<ListPage, KvError> {
        self.owned(account_id, id)?;
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
        let now_ms = self.wall.now_ms();
        let prefix = request.prefix.clone();
        let after = request.cursor.map(|c| c.after);
        let scan = self
            .blocking(move |store| {
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
}

/// Most due entries the sweeper handles in one blocking batch.
const SWEEP_BATCH: usize = 1000;

/// Starts the background sweeper: every `every`, expired records become tombstones and their
/// index entries go. It stops by itself once the store has been dropped.
pub fn spawn_sweeper(
    store: &Arc<dyn Store>,
    wall: Arc<dyn WallClock>,
    every: Duration,
) -> tokio::task::JoinHandle<()> {
    let store: Weak<dyn Store> = Arc::downgrade(store);
    tokio::spawn(async move {
        let mut ticks = tokio::time::interval(every);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticks.tick().await;
            let Some(store) = store.upgrade() else { return };
            let now_ms = wall.now_ms();
            let swept = tokio::task::spawn_blocking(move || sweep(store.as_ref(), now_ms)).await;
            match swept {
                Ok(Ok(0)) => {}
                Ok(Ok(n)) => tracing::debug!(expired = n, "swept expired records"),
                Ok(Err(e)) => tracing::warn!(error = %e, "sweeping expired records failed"),
                Err(e) => tracing::warn!(error = %e, "sweeper task failed"),
            }
        }
    })
}

/// Expires everything due at `now_ms`; returns how many records became tombstones.
pub fn sweep(store: &dyn Store, now_ms: u64) -> Result<usize, KvError> {
    let mut expired = 0;
    loop {
        let due = store.due_expirations(now_ms, SWEEP_BATCH)?;
        for entry in &due {
            expired += usize::from(store.expire(entry)?);
        }
        if due.len() < SWEEP_BATCH {
            return Ok(expired);
        }
    }
}

#[cfg(test)]
mod tests;
