//! The single-writer engine: the write region's core.
//!
//! [`Engine`] implements [`KvService`] directly on a [`Store`]: it re-validates every write,
//! applies the per-key write rate limit, stamps each write with a hybrid-logical-clock
//! [`Version`], appends it to the replication log together with the record, and acknowledges
//! only after a sync of the store has made it durable (one sync per merged batch of writers,
//! on one commit thread). It then publishes the durable log sequence
//! ([`Engine::durable_sequence`]), which is what replication streams up to: a replica never
//! receives an entry the write region could still lose in a crash.
//!
//! Its reads go through the read path the replicas at the edges share
//! ([`driftkv_store::reads`]). [`spawn_sweeper`] turns expired records into tombstones in the
//! background so that their values stop taking space.

mod clock;
mod commit;
mod key_quota;
mod rate_limit;
mod recent;

use std::num::NonZeroU64;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use driftkv_core::namespace::{validate_account_id, validate_title};
use driftkv_core::time::WallClock;
pub use driftkv_core::upstream::WriteRequest;
use driftkv_core::{
    Change, KvError, KvService, ListPage, ListRequest, LiveValue, LogEntry, Namespace, NamespaceId,
    Version, Write, WriteOutcome, WriteResult,
};
use driftkv_metrics::prometheus::IntCounter;
use driftkv_metrics::CENTRAL_WRITES;
use driftkv_store::reads;
use driftkv_store::Store;
use tokio::sync::{watch, Mutex};

use clock::VersionClock;
use commit::Committer;
use key_quota::{Admission, KeyQuota};
pub use rate_limit::RateLimiter;
use recent::{RecentLog, RECENT_LOG_BYTES};

/// A log entry as the replication streams get it: with the writer id its write came with
/// ([`Engine::write_batch`]), while the entry is among the newest the engine holds in memory;
/// `None` for one read back from the store, or written without one. A stream leaves the
/// entries of a subscriber's own writer out (see
/// [`driftkv_core::upstream::Subscription::writer`]); not knowing the writer only means
/// sending an entry whole.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Logged {
    /// The entry.
    pub entry: LogEntry,
    /// The writer id of the write that made it, if known.
    pub writer: Option<u64>,
}

/// The single-writer engine over one store.
pub struct Engine {
    store: Arc<Store>,
    versions: VersionClock,
    origin: u64,
    wall: Arc<dyn WallClock>,
    rate_limit: RateLimiter,
    /// Most namespaces one account may have (Workers KV's default account limit is 1,000).
    namespaces_per_account: usize,
    /// Most live keys a namespace may hold (`limits.keys_per_namespace`; off by default).
    keys_per_namespace: KeyQuota,
    /// Serializes namespace creation and renames so title uniqueness is checked and enforced
    /// atomically. Namespace changes are rare; key writes never take this lock.
    namespace_changes: Mutex<()>,
    /// Appends writes to the log and makes them durable.
    committer: Committer,
    /// The newest log entries, for the replication streams.
    recent: Arc<RecentLog>,
    /// The highest log sequence known durable.
    durable: watch::Receiver<u64>,
    /// Key writes applied, and refused by the rate limit (metrics, resolved once).
    writes_applied: IntCounter,
    writes_refused: IntCounter,
}

impl Engine {
    /// An engine writing to `store`, stamping versions with `node_id` as their origin and
    /// refusing writes to a key more often than `rate_limit` allows. Starts the commit task,
    /// so it must be called within a tokio runtime.
    pub fn new(
        store: Arc<Store>,
        node_id: NonZeroU64,
        wall: Arc<dyn WallClock>,
        rate_limit: RateLimiter,
    ) -> Result<Self, KvError> {
        // Whatever the store holds when it opens has survived, so it counts as durable.
        let last = store.log_bounds()?.last;
        let versions = VersionClock::new(wall.clone());
        versions.resume_after(newest_version(&store, last)?.max(store.trimmed_version()));
        let (durable_tx, durable) = watch::channel(last);
        let node = node_id.to_string();
        let recent = Arc::new(RecentLog::new(RECENT_LOG_BYTES));
        Ok(Engine {
            writes_applied: CENTRAL_WRITES.with_label_values(&[&node, "applied"]),
            writes_refused: CENTRAL_WRITES.with_label_values(&[&node, "rate_limited"]),
            committer: Committer::start(store.clone(), recent.clone(), durable_tx, &node)?,
            recent,
            store,
            versions,
            origin: node_id.get(),
            wall,
            rate_limit,
            namespaces_per_account: DEFAULT_NAMESPACES_PER_ACCOUNT,
            keys_per_namespace: KeyQuota::new(0),
            namespace_changes: Mutex::new(()),
            durable,
        })
    }

    /// The same engine, allowing each account at most `limit` namespaces.
    pub fn with_namespace_quota(mut self, limit: usize) -> Self {
        self.namespaces_per_account = limit;
        self
    }

    /// The same engine, allowing each namespace at most `limit` live keys (0: no limit).
    pub fn with_key_quota(mut self, limit: u64) -> Self {
        self.keys_per_namespace = KeyQuota::new(limit);
        self
    }

    /// The node id versions are stamped with.
    pub fn node_id(&self) -> u64 {
        self.origin
    }

    /// The store the engine writes to.
    pub fn store(&self) -> &Arc<Store> {
        &self.store
    }

    /// Follows the highest durable log sequence: replication streams entries up to it.
    pub fn durable_sequence(&self) -> watch::Receiver<u64> {
        self.durable.clone()
    }

    /// Up to `max` consecutive log entries from sequence `from` on, read from the store
    /// unless they are among the newest, which are kept in memory (and shared, not copied);
    /// what is read from the store stops at about `max_bytes` (see [`Store::log_entries`]).
    pub async fn log_entries(
        &self,
        from: u64,
        max: usize,
        max_bytes: usize,
    ) -> Result<Vec<Logged>, KvError> {
        if let Some(entries) = self.recent.read(from, max) {
            return Ok(entries);
        }
        reads::blocking(&self.store, move |store| {
            let entries = store.log_entries(from, max, max_bytes)?;
            let unknown = |entry| Logged {
                entry,
                writer: None,
            };
            Ok(entries.into_iter().map(unknown).collect())
        })
        .await
    }

    fn stamp(&self) -> Version {
        Version {
            timestamp: self.versions.next(),
            origin: self.origin,
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

    /// Appends changes to the log and waits until they are durable. Returns the last sequence
    /// used.
    async fn commit(&self, changes: Vec<Change>) -> Result<u64, KvError> {
        self.committer.commit(None, vec![changes]).await.remove(0)
    }

    /// Checks one writer's writes, applies the rate limit and stamps what it admits.
    fn prepare(&self, request: WriteRequest) -> Result<Prepared<'_>, KvError> {
        let WriteRequest {
            account_id,
            namespace: id,
            writes,
        } = request;
        reads::owned(self.store.as_ref(), &account_id, id)?;
        let now_ms = self.wall.now_ms();
        for write in &writes {
            write.validate(now_ms)?;
        }
        let admission = self
            .keys_per_namespace
            .admit(&self.store, id, &writes, now_ms)?;
        let admitted = self.rate_limit.admit(id, &writes, now_ms);
        let mut changes = Vec::with_capacity(writes.len());
        let mut versions = Vec::with_capacity(writes.len());
        for (mut write, admitted) in writes.into_iter().zip(admitted) {
            if let Err(retry_after_ms) = admitted {
                versions.push(Err(retry_after_ms));
                continue;
            }
            let version = self.stamp();
            versions.push(Ok(version));
            changes.push(Change::Key {
                namespace: id,
                key: std::mem::take(&mut write.key),
                record: write.into_record(version),
            });
        }
        let count = changes.len() as u64;
        self.writes_applied.inc_by(count);
        self.writes_refused.inc_by(versions.len() as u64 - count);
        Ok(Prepared {
            versions,
            changes,
            admission,
        })
    }

    /// Applies a batch of writes and reports the fate of each, in order: its log sequence and
    /// version once durable, or that the rate limit refused it. This is what the write region
    /// answers an edge with, so that the edge can apply the same records to its replica.
    pub async fn write_results(
        &self,
        account_id: &str,
        id: NamespaceId,
        writes: Vec<Write>,
    ) -> Result<Vec<WriteResult>, KvError> {
        let request = WriteRequest {
            account_id: account_id.into(),
            namespace: id,
            writes,
        };
        self.write_batch(None, vec![request]).await.remove(0)
    }

    /// [`Engine::write_results`] for several writers at once, each succeeding or failing on
    /// its own, as an edge forwards the writes that reach it together: they share one
    /// hand-off to the commit thread and, with whatever else is queued there, one sync. The
    /// entries are held for the replication streams under `writer` (see [`Logged`]).
    pub async fn write_batch(
        &self,
        writer: Option<u64>,
        requests: Vec<WriteRequest>,
    ) -> Vec<Result<Vec<WriteResult>, KvError>> {
        let prepared: Vec<Result<Prepared<'_>, KvError>> =
            requests.into_iter().map(|r| self.prepare(r)).collect();
        let mut writers = Vec::new();
        let mut results: Vec<Result<Vec<WriteResult>, KvError>> =
            Vec::with_capacity(prepared.len());
        let mut waiting = Vec::new();
        for prepared in prepared {
            match prepared {
                Ok(Prepared {
                    versions,
                    changes,
                    admission,
                }) if !changes.is_empty() => {
                    waiting.push((results.len(), versions, changes.len() as u64, admission));
                    writers.push(changes);
                    results.push(Ok(Vec::new()));
                }
                Ok(Prepared { versions, .. }) => results.push(Ok(finish(versions, 0, 0))),
                Err(e) => results.push(Err(e)),
            }
        }
        if writers.is_empty() {
            return results;
        }
        let outcomes = self.committer.commit(writer, writers).await;
        for ((slot, versions, count, admission), outcome) in waiting.into_iter().zip(outcomes) {
            // The keys count as landed once in the store; if the commit failed, not at all.
            if outcome.is_ok() {
                admission.landed();
            }
            results[slot] = outcome.map(|last| finish(versions, last, count));
        }
        results
    }
}

/// How many of the newest log entries [`newest_version`] looks at: writers are stamped before
/// the commit thread orders them, so the newest version need not be in the very last entry,
/// but it is among the entries of writers that were in flight together.
const VERSION_WINDOW: u64 = 4096;

/// The newest version among the last entries of the log, whose last sequence is `last`: a
/// restarted write region stamps every new version above it, so that a write made after the
/// restart wins over one made before it even if the clock now reads earlier (it was skewed, or
/// stepped back). Found by the simulation: without it, a write acknowledged after such a
/// restart lost to an older one under last-write-wins.
fn newest_version(store: &Store, last: u64) -> Result<u64, KvError> {
    let from = last.saturating_sub(VERSION_WINDOW - 1).max(1);
    let entries = store.log_entries(from, VERSION_WINDOW as usize, usize::MAX)?;
    Ok(entries
        .iter()
        .filter_map(|entry| entry.change.timestamp())
        .max()
        .unwrap_or(0))
}

/// A writer's writes checked and stamped: per write its version or how long the rate limit
/// wants it to wait, the changes of those admitted, and the keys they add, pending in the
/// keys-per-namespace quota until they land.
struct Prepared<'a> {
    versions: Vec<Result<Version, u64>>,
    changes: Vec<Change>,
    admission: Admission<'a>,
}

/// Each write's result, the `count` admitted ones having taken the sequences up to `last`.
fn finish(versions: Vec<Result<Version, u64>>, last: u64, count: u64) -> Vec<WriteResult> {
    let mut sequence = last + 1 - count;
    versions
        .into_iter()
        .map(|version| match version {
            Ok(version) => {
                let result = WriteResult::Applied { sequence, version };
                sequence += 1;
                result
            }
            Err(retry_after_ms) => WriteResult::RateLimited { retry_after_ms },
        })
        .collect()
}

#[async_trait]
impl KvService for Engine {
    async fn create_namespace(&self, account_id: &str, title: &str) -> Result<Namespace, KvError> {
        validate_account_id(account_id)?;
        validate_title(title)?;
        let _guard = self.namespace_changes.lock().await;
        let namespaces = self.store.namespaces()?;
        let owned = namespaces
            .iter()
            .filter(|ns| ns.account_id == account_id)
            .count();
        if owned >= self.namespaces_per_account {
            return Err(KvError::QuotaExceeded(format!(
                "account {account_id:?} has {owned} namespaces, the most it may have (limits.namespaces_per_account)"
            )));
        }
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
        self.commit(vec![Change::Namespace(namespace.clone())])
            .await?;
        tracing::info!(namespace = %id, title, "namespace created");
        Ok(namespace)
    }

    async fn list_namespaces(&self, account_id: &str) -> Result<Vec<Namespace>, KvError> {
        reads::namespaces(self.store.as_ref(), account_id)
    }

    async fn namespace(&self, account_id: &str, id: NamespaceId) -> Result<Namespace, KvError> {
        reads::owned(self.store.as_ref(), account_id, id).map(|ns| Namespace::clone(&ns))
    }

    async fn find_namespace(&self, id: NamespaceId) -> Result<Namespace, KvError> {
        reads::find(self.store.as_ref(), id)
    }

    async fn rename_namespace(
        &self,
        account_id: &str,
        id: NamespaceId,
        title: &str,
    ) -> Result<Namespace, KvError> {
        validate_title(title)?;
        let _guard = self.namespace_changes.lock().await;
        let mut namespace = Namespace::clone(&*reads::owned(self.store.as_ref(), account_id, id)?);
        if self.title_taken(account_id, title, Some(id))? {
            return Err(KvError::TitleTaken);
        }
        namespace.title = title.into();
        namespace.version = self.stamp();
        self.commit(vec![Change::Namespace(namespace.clone())])
            .await?;
        Ok(namespace)
    }

    async fn delete_namespace(&self, account_id: &str, id: NamespaceId) -> Result<(), KvError> {
        let _guard = self.namespace_changes.lock().await;
        reads::owned(self.store.as_ref(), account_id, id)?;
        let version = self.stamp();
        self.commit(vec![Change::NamespaceDeleted { id, version }])
            .await?;
        self.keys_per_namespace.forget(id);
        tracing::info!(namespace = %id, "namespace deleted");
        Ok(())
    }

    async fn write(
        &self,
        account_id: &str,
        id: NamespaceId,
        writes: Vec<Write>,
    ) -> Result<WriteOutcome, KvError> {
        let keys = writes.iter().map(|w| w.key.clone()).collect();
        let results = self.write_results(account_id, id, writes).await?;
        Ok(WriteOutcome::from_results(keys, &results))
    }

    /// The write region has no cache: `cache_ttl` does not apply.
    async fn get(
        &self,
        account_id: &str,
        id: NamespaceId,
        key: &str,
        _cache_ttl: Option<u64>,
    ) -> Result<Option<LiveValue>, KvError> {
        reads::get(self.store.as_ref(), account_id, id, key, self.wall.now_ms())
    }

    async fn list(
        &self,
        account_id: &str,
        id: NamespaceId,
        request: ListRequest,
    ) -> Result<ListPage, KvError> {
        reads::list(&self.store, account_id, id, request, self.wall.now_ms()).await
    }
}

/// Namespaces an account may have unless configured otherwise: Workers KV's account limit.
pub const DEFAULT_NAMESPACES_PER_ACCOUNT: usize = 1000;

/// Most due entries the sweeper handles in one blocking batch.
const SWEEP_BATCH: usize = 1000;

/// Runs `work` on the store off the async threads every `every`, logging how many records
/// it handled as `what`. The task holds the store weakly and stops by itself once the store
/// has been dropped.
pub fn spawn_maintenance(
    store: &Arc<Store>,
    every: Duration,
    what: &'static str,
    work: impl Fn(&Store) -> Result<usize, KvError> + Clone + Send + Sync + 'static,
) -> tokio::task::JoinHandle<()> {
    driftkv_store::spawn_every(Arc::downgrade(store), every, move |store| {
        let work = work.clone();
        async move {
            match reads::blocking(&store, work).await {
                Ok(0) => {}
                Ok(n) => tracing::debug!(records = n, "{what}"),
                Err(e) => tracing::warn!(error = %e, "{what} failed"),
            }
        }
    })
}

/// Starts the background sweeper: every `every`, expired records become tombstones and their
/// index entries go. It stops by itself once the store has been dropped.
pub fn spawn_sweeper(
    store: &Arc<Store>,
    wall: Arc<dyn WallClock>,
    every: Duration,
) -> tokio::task::JoinHandle<()> {
    spawn_maintenance(store, every, "sweeping expired records", move |store| {
        sweep(store, wall.now_ms())
    })
}

/// Expires everything due at `now_ms`; returns how many records became tombstones.
pub fn sweep(store: &Store, now_ms: u64) -> Result<usize, KvError> {
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
