//! The sled backend.
//!
//! Layout: a `namespaces` tree (id → namespace), one tree per namespace named `ns/<id>`
//! (key bytes → encoded record), and an `expiry` tree indexing records that carry an
//! expiration by `(expiration as big-endian u64, namespace id, key)`, so the sweeper finds due
//! records with one ordered range scan instead of walking every namespace.
//!
//! The expiration index is written before the record it describes and is allowed to hold
//! stale entries (a key overwritten with another expiration, a write that lost last-write-wins,
//! a deleted namespace): [`Store::expire`] re-checks the record and simply drops entries that no
//! longer match. That keeps writes to two trees free of cross-tree transactions while never
//! leaving an expiring record unindexed.

use std::collections::HashMap;
use std::ops::Bound;
use std::path::Path;
use std::sync::{Arc, Condvar, Mutex, RwLock};
use std::thread::JoinHandle;

use async_trait::async_trait;
use bytes::Bytes;
use driftkv_core::{Change, KeyInfo, LogEntry, Namespace, NamespaceId, Record, RecordView};
use sled::transaction::{ConflictableTransactionError, TransactionError, TransactionalTree};
use sled::{IVec, Transactional, Tree};
use tokio::sync::watch;

use crate::{DueExpiration, LogBounds, Scan, Store, StoreError, SCAN_BUDGET};

const NAMESPACE_TREE_PREFIX: &str = "ns/";
/// `meta` key of the last sequence central appended to its log.
const LAST_SEQUENCE: &[u8] = b"last_sequence";
/// `meta` key of the last log sequence a replica has applied.
const APPLIED_SEQUENCE: &[u8] = b"applied_sequence";

fn backend(e: sled::Error) -> StoreError {
    StoreError::Backend(e.to_string())
}

fn corrupt(e: impl std::fmt::Display) -> StoreError {
    StoreError::Corrupt(e.to_string())
}

fn tree_name(id: NamespaceId) -> String {
    format!("{NAMESPACE_TREE_PREFIX}{id}")
}

fn expiry_key(expiration: u64, namespace: NamespaceId, key: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(24 + key.len());
    k.extend_from_slice(&expiration.to_be_bytes());
    k.extend_from_slice(&namespace.0);
    k.extend_from_slice(key.as_bytes());
    k
}

fn parse_expiry_key(k: &[u8]) -> Result<DueExpiration, StoreError> {
    if k.len() < 24 {
        return Err(corrupt("short expiry index key"));
    }
    let expiration = u64::from_be_bytes(k[..8].try_into().expect("8 bytes"));
    let namespace = NamespaceId(k[8..24].try_into().expect("16 bytes"));
    let key = String::from_utf8(k[24..].to_vec()).map_err(corrupt)?;
    Ok(DueExpiration {
        namespace,
        key,
        expiration,
    })
}

fn key_string(k: &IVec) -> Result<String, StoreError> {
    String::from_utf8(k.to_vec()).map_err(corrupt)
}

fn read_u64(bytes: Option<IVec>) -> Result<u64, StoreError> {
    match bytes {
        None => Ok(0),
        Some(b) => Ok(u64::from_be_bytes(
            b.as_ref().try_into().map_err(|_| corrupt("meta value"))?,
        )),
    }
}

fn transaction_error(e: TransactionError<StoreError>) -> StoreError {
    match e {
        TransactionError::Abort(e) => e,
        TransactionError::Storage(e) => backend(e),
    }
}

/// Last-write-wins inside a transaction: stores `record` unless the stored one is as new.
fn put_if_newer(
    tree: &TransactionalTree,
    key: &str,
    record: &Record,
) -> Result<bool, ConflictableTransactionError<StoreError>> {
    if let Some(old) = tree.get(key)? {
        let old = RecordView::decode(&old)
            .map_err(|e| ConflictableTransactionError::Abort(corrupt(e)))?;
        if old.version >= record.version {
            return Ok(false);
        }
    }
    tree.insert(key, record.encode())?;
    Ok(true)
}

/// Where a transaction records the sequences of the changes it makes.
#[derive(Clone, Copy)]
enum Sequencing {
    /// Local changes that are not part of the log (an edge applying its own acknowledged write).
    None,
    /// Central: log each change under consecutive sequences from `first`.
    Append { first: u64 },
    /// A replica: the changes are log entries; remember the last one applied.
    Applied { last: u64 },
}

impl Sequencing {
    /// Writes the log entries and the sequence bookkeeping of `changes` into the transaction.
    fn record<'a>(
        self,
        log: &TransactionalTree,
        meta: &TransactionalTree,
        changes: impl Iterator<Item = &'a Change>,
    ) -> Result<(), ConflictableTransactionError<StoreError>> {
        match self {
            Sequencing::None => {}
            Sequencing::Append { first } => {
                let mut sequence = first;
                for change in changes {
                    log.insert(&sequence.to_be_bytes(), change.encode())?;
                    sequence += 1;
                }
                meta.insert(LAST_SEQUENCE, &(sequence - 1).to_be_bytes())?;
            }
            Sequencing::Applied { last } => {
                // Entries applied again (a duplicate delivery) must not move it back.
                let current = read_u64(meta.get(APPLIED_SEQUENCE)?)
                    .map_err(ConflictableTransactionError::Abort)?;
                if last > current {
                    meta.insert(APPLIED_SEQUENCE, &last.to_be_bytes())?;
                }
            }
        }
        Ok(())
    }
}

/// A namespace and its tree.
struct Open {
    namespace: Arc<Namespace>,
    tree: Tree,
}

/// A sled database holding one node's data.
pub struct SledStore {
    db: sled::Db,
    namespaces: Tree,
    expiry: Tree,
    /// Replication log: sequence (big-endian) → encoded change.
    log: Tree,
    /// Sequence bookkeeping: [`LAST_SEQUENCE`], [`APPLIED_SEQUENCE`].
    meta: Tree,
    /// The last appended sequence. Its lock serializes appends, so sequences are handed out
    /// without gaps and committed in order.
    last_sequence: Mutex<u64>,
    /// Every namespace with its open tree, mirrored in memory so that the per-request
    /// namespace lookup costs no database read. Writers hold the read lock while they apply,
    /// so a namespace cannot be dropped under a write in progress.
    trees: RwLock<HashMap<NamespaceId, Open>>,
    commit: Arc<GroupCommit>,
    flusher: Option<JoinHandle<()>>,
}

impl SledStore {
    /// Opens (or creates) the database in `path`.
    pub fn open(path: impl AsRef<Path>) -> Result<Self, StoreError> {
        let db = sled::Config::new()
            .path(path.as_ref())
            .open()
            .map_err(backend)?;
        let namespaces = db.open_tree("namespaces").map_err(backend)?;
        let expiry = db.open_tree("expiry").map_err(backend)?;
        let log = db.open_tree("log").map_err(backend)?;
        let meta = db.open_tree("meta").map_err(backend)?;
        let last_sequence = read_u64(meta.get(LAST_SEQUENCE).map_err(backend)?)?;
        let mut trees = HashMap::new();
        for entry in namespaces.iter() {
            let (_, bytes) = entry.map_err(backend)?;
            let ns = Namespace::decode(&bytes).map_err(corrupt)?;
            let tree = db.open_tree(tree_name(ns.id)).map_err(backend)?;
            trees.insert(
                ns.id,
                Open {
                    namespace: Arc::new(ns),
                    tree,
                },
            );
        }
        // A crash between removing a namespace record and dropping its tree leaves an orphan
        // tree behind; finish the deletion now.
        for name in db.tree_names() {
            let Some(id) = std::str::from_utf8(&name)
                .ok()
                .and_then(|n| n.strip_prefix(NAMESPACE_TREE_PREFIX))
            else {
                continue;
            };
            let known = id
                .parse::<NamespaceId>()
                .is_ok_and(|id| trees.contains_key(&id));
            if !known {
                db.drop_tree(&name).map_err(backend)?;
            }
        }
        let commit = Arc::new(GroupCommit::new());
        let flusher = {
            let (db, commit) = (db.clone(), commit.clone());
            std::thread::Builder::new()
                .name("sled-group-commit".into())
                .spawn(move || commit.run(&db))
                .map_err(|e| StoreError::Backend(format!("cannot start the flusher thread: {e}")))?
        };
        Ok(SledStore {
            db,
            namespaces,
            expiry,
            log,
            meta,
            last_sequence: Mutex::new(last_sequence),
            trees: RwLock::new(trees),
            commit,
            flusher: Some(flusher),
        })
    }

    fn tree(&self, id: NamespaceId) -> Result<Tree, StoreError> {
        self.trees
            .read()
            .expect("tree map lock")
            .get(&id)
            .map(|open| open.tree.clone())
            .ok_or(StoreError::NoSuchNamespace(id))
    }

    /// Applies key changes last-write-wins in one transaction, together with their sequence
    /// bookkeeping. A change to a namespace that does not exist is an error, or, with
    /// `skip_unknown` (a replica catching up past a namespace deleted since), left out.
    fn commit_keys<C: AsRef<Change>>(
        &self,
        trees: &HashMap<NamespaceId, Open>,
        changes: &[C],
        sequencing: Sequencing,
        skip_unknown: bool,
    ) -> Result<Vec<bool>, StoreError> {
        // The transaction's trees: log and meta first, then each namespace touched once.
        let mut involved = vec![self.log.clone(), self.meta.clone()];
        let mut slots: HashMap<NamespaceId, usize> = HashMap::new();
        let mut targets = Vec::with_capacity(changes.len());
        for change in changes {
            let Change::Key {
                namespace,
                key,
                record,
            } = change.as_ref()
            else {
                return Err(StoreError::Corrupt(
                    "a namespace change among key changes".into(),
                ));
            };
            let Some(open) = trees.get(namespace) else {
                if skip_unknown {
                    targets.push(None);
                    continue;
                }
                return Err(StoreError::NoSuchNamespace(*namespace));
            };
            let slot = *slots.entry(*namespace).or_insert_with(|| {
                involved.push(open.tree.clone());
                involved.len() - 1
            });
            // The index entry goes first: a crash may leave it stale, never missing.
            if let Some(expiration) = record.live.as_ref().and_then(|l| l.expiration) {
                self.expiry
                    .insert(expiry_key(expiration, *namespace, key), &[])
                    .map_err(backend)?;
            }
            targets.push(Some((slot, key.as_str(), record)));
        }
        involved
            .as_slice()
            .transaction(|tx| {
                let mut applied = Vec::with_capacity(targets.len());
                for target in &targets {
                    applied.push(match target {
                        Some((slot, key, record)) => put_if_newer(&tx[*slot], key, record)?,
                        None => false,
                    });
                }
                sequencing.record(&tx[0], &tx[1], changes.iter().map(AsRef::as_ref))?;
                Ok(applied)
            })
            .map_err(transaction_error)
    }

    /// Applies a namespace change with its sequence bookkeeping. A namespace record replaces
    /// the stored one only if its version is newer; returns whether anything changed.
    fn commit_namespace(
        &self,
        trees: &mut HashMap<NamespaceId, Open>,
        change: &Change,
        sequencing: Sequencing,
    ) -> Result<bool, StoreError> {
        let all = [&self.namespaces, &self.log, &self.meta];
        let changed = match change {
            Change::Namespace(namespace) => {
                let newer = trees
                    .get(&namespace.id)
                    .is_none_or(|open| open.namespace.version < namespace.version);
                let encoded = namespace.encode();
                all.as_slice()
                    .transaction(|tx| {
                        if newer {
                            tx[0].insert(&namespace.id.0, encoded.as_slice())?;
                        }
                        sequencing.record(&tx[1], &tx[2], std::iter::once(change))
                    })
                    .map_err(transaction_error)?;
                if newer {
                    let namespace = Arc::new(namespace.clone());
                    match trees.get_mut(&namespace.id) {
                        Some(open) => open.namespace = namespace,
                        None => {
                            let tree = self
                                .db
                                .open_tree(tree_name(namespace.id))
                                .map_err(backend)?;
                            trees.insert(namespace.id, Open { namespace, tree });
                        }
                    }
                }
                newer
            }
            Change::NamespaceDeleted(id) => {
                let existed = all
                    .as_slice()
                    .transaction(|tx| {
                        let existed = tx[0].remove(&id.0)?.is_some();
                        sequencing.record(&tx[1], &tx[2], std::iter::once(change))?;
                        Ok(existed)
                    })
                    .map_err(transaction_error)?;
                // Dropping the tree cannot join the transaction; a crash in between leaves an
                // orphan tree that the next open removes.
                if trees.remove(id).is_some() {
                    self.db.drop_tree(tree_name(*id)).map_err(backend)?;
                }
                existed
            }
            Change::Key { .. } => {
                return Err(StoreError::Corrupt(
                    "a key change taken for a namespace change".into(),
                ))
            }
        };
        Ok(changed)
    }

    /// Applies changes in runs: consecutive key changes share one transaction, each namespace
    /// change has its own. `sequencing` gives each run's bookkeeping from its first index and
    /// length.
    fn commit_runs<C: AsRef<Change>>(
        &self,
        changes: &[C],
        skip_unknown: bool,
        mut sequencing: impl FnMut(usize, usize) -> Sequencing,
    ) -> Result<(), StoreError> {
        let mut start = 0;
        while start < changes.len() {
            let is_key = |c: &C| matches!(c.as_ref(), Change::Key { .. });
            if is_key(&changes[start]) {
                let len = changes[start..].iter().take_while(|c| is_key(c)).count();
                let trees = self.trees.read().expect("tree map lock");
                self.commit_keys(
                    &trees,
                    &changes[start..start + len],
                    sequencing(start, len),
                    skip_unknown,
                )?;
                start += len;
            } else {
                let mut trees = self.trees.write().expect("tree map lock");
                self.commit_namespace(&mut trees, changes[start].as_ref(), sequencing(start, 1))?;
                start += 1;
            }
        }
        Ok(())
    }
}

impl Drop for SledStore {
    fn drop(&mut self) {
        self.commit.stop();
        if let Some(flusher) = self.flusher.take() {
            let _ = flusher.join();
        }
    }
}

#[async_trait]
impl Store for SledStore {
    fn namespaces(&self) -> Result<Vec<Namespace>, StoreError> {
        let trees = self.trees.read().expect("tree map lock");
        Ok(trees
            .values()
            .map(|open| Namespace::clone(&open.namespace))
            .collect())
    }

    fn namespace(&self, id: NamespaceId) -> Result<Option<Arc<Namespace>>, StoreError> {
        let trees = self.trees.read().expect("tree map lock");
        Ok(trees.get(&id).map(|open| open.namespace.clone()))
    }

    fn put_namespace(&self, namespace: &Namespace) -> Result<bool, StoreError> {
        let mut trees = self.trees.write().expect("tree map lock");
        let change = Change::Namespace(namespace.clone());
        self.commit_namespace(&mut trees, &change, Sequencing::None)
    }

    fn delete_namespace(&self, id: NamespaceId) -> Result<bool, StoreError> {
        let mut trees = self.trees.write().expect("tree map lock");
        let change = Change::NamespaceDeleted(id);
        self.commit_namespace(&mut trees, &change, Sequencing::None)
    }

    fn apply(
        &self,
        namespace: NamespaceId,
        records: &[(String, Record)],
    ) -> Result<Vec<bool>, StoreError> {
        let changes: Vec<Change> = records
            .iter()
            .map(|(key, record)| Change::Key {
                namespace,
                key: key.clone(),
                record: record.clone(),
            })
            .collect();
        let trees = self.trees.read().expect("tree map lock");
        self.commit_keys(&trees, &changes, Sequencing::None, false)
    }

    fn append(&self, changes: &[Change]) -> Result<u64, StoreError> {
        let mut last = self.last_sequence.lock().expect("sequence lock");
        let base = *last + 1;
        // The run being committed: when one fails, the runs before it are in the log.
        let mut run = (0, 0);
        let outcome = self.commit_runs(changes, false, |start, len| {
            run = (start, start + len);
            Sequencing::Append {
                first: base + start as u64,
            }
        });
        let committed = if outcome.is_ok() { run.1 } else { run.0 };
        *last = base + committed as u64 - 1;
        outcome.map(|()| *last)
    }

    fn apply_replicated(&self, entries: &[LogEntry]) -> Result<(), StoreError> {
        self.commit_runs(entries, true, |start, len| Sequencing::Applied {
            last: entries[start..start + len]
                .iter()
                .map(|e| e.sequence)
                .max()
                .unwrap_or(0),
        })
    }

    fn applied_sequence(&self) -> Result<u64, StoreError> {
        read_u64(self.meta.get(APPLIED_SEQUENCE).map_err(backend)?)
    }

    fn set_applied_sequence(&self, sequence: u64) -> Result<(), StoreError> {
        self.meta
            .insert(APPLIED_SEQUENCE, &sequence.to_be_bytes())
            .map_err(backend)?;
        Ok(())
    }

    fn log_bounds(&self) -> Result<LogBounds, StoreError> {
        let last = *self.last_sequence.lock().expect("sequence lock");
        let oldest = match self.log.first().map_err(backend)? {
            Some((k, _)) => read_u64(Some(k))?,
            None => last + 1,
        };
        Ok(LogBounds { oldest, last })
    }

    fn log_entries(&self, from: u64, max: usize) -> Result<Vec<LogEntry>, StoreError> {
        let mut entries = Vec::new();
        for entry in self.log.range(from.to_be_bytes()..).take(max) {
            let (k, v) = entry.map_err(backend)?;
            entries.push(LogEntry {
                sequence: read_u64(Some(k))?,
                change: Change::decode(&v).map_err(corrupt)?,
            });
        }
        Ok(entries)
    }

    fn trim_log(&self, before: u64) -> Result<usize, StoreError> {
        let mut removed = 0;
        for entry in self.log.range(..before.to_be_bytes()) {
            let (k, _) = entry.map_err(backend)?;
            self.log.remove(k).map_err(backend)?;
            removed += 1;
        }
        Ok(removed)
    }

    fn records(
        &self,
        namespace: NamespaceId,
        after: Option<&str>,
        max: usize,
    ) -> Result<Vec<(String, Record)>, StoreError> {
        let tree = self.tree(namespace)?;
        let start = match after {
            Some(after) => Bound::Excluded(after.as_bytes()),
            None => Bound::Unbounded,
        };
        let mut records = Vec::new();
        for entry in tree.range::<&[u8], _>((start, Bound::Unbounded)).take(max) {
            let (k, v) = entry.map_err(backend)?;
            let record = Record::decode(Bytes::from_owner(v)).map_err(corrupt)?;
            records.push((key_string(&k)?, record));
        }
        Ok(records)
    }

    fn get(&self, namespace: NamespaceId, key: &str) -> Result<Option<Record>, StoreError> {
        match self.tree(namespace)?.get(key).map_err(backend)? {
            Some(bytes) => Ok(Some(
                Record::decode(Bytes::from_owner(bytes)).map_err(corrupt)?,
            )),
            None => Ok(None),
        }
    }

    fn scan(
        &self,
        namespace: NamespaceId,
        prefix: &str,
        after: Option<&str>,
        limit: usize,
        now_ms: u64,
    ) -> Result<Scan, StoreError> {
        let tree = self.tree(namespace)?;
        let start = match after {
            Some(after) if after >= prefix => Bound::Excluded(after.as_bytes()),
            _ => Bound::Included(prefix.as_bytes()),
        };
        let mut iter = tree.range::<&[u8], _>((start, Bound::Unbounded));
        let mut scan = Scan::default();
        let mut examined = 0;
        while let Some(entry) = iter.next() {
            let (k, v) = entry.map_err(backend)?;
            if !k.starts_with(prefix.as_bytes()) {
                return Ok(scan);
            }
            examined += 1;
            let view = RecordView::decode(&v).map_err(corrupt)?;
            if view.is_live(now_ms) {
                scan.keys.push(KeyInfo {
                    name: key_string(&k)?,
                    expiration: view.expiration,
                    metadata: view.metadata.map(str::to_owned),
                });
            }
            if scan.keys.len() == limit || examined == SCAN_BUDGET {
                // Only hand out a cursor when something with the prefix follows, so the last
                // page says it is the last.
                let more = match iter.next() {
                    Some(next) => next.map_err(backend)?.0.starts_with(prefix.as_bytes()),
                    None => false,
                };
                if more {
                    scan.resume_after = Some(key_string(&k)?);
                }
                return Ok(scan);
            }
        }
        Ok(scan)
    }

    fn due_expirations(&self, now_ms: u64, max: usize) -> Result<Vec<DueExpiration>, StoreError> {
        let now_secs = now_ms / 1000;
        let mut due = Vec::new();
        for entry in self.expiry.range(..(now_secs + 1).to_be_bytes()).take(max) {
            let (k, _) = entry.map_err(backend)?;
            due.push(parse_expiry_key(&k)?);
        }
        Ok(due)
    }

    fn expire(&self, due: &DueExpiration) -> Result<bool, StoreError> {
        let mut changed = false;
        let trees = self.trees.read().expect("tree map lock");
        if let Some(Open { tree, .. }) = trees.get(&due.namespace) {
            while let Some(old) = tree.get(&due.key).map_err(backend)? {
                let view = RecordView::decode(&old).map_err(corrupt)?;
                if view.value.is_none() || view.expiration != Some(due.expiration) {
                    break;
                }
                let tombstone = Record::tombstone(view.version).encode();
                if tree
                    .compare_and_swap(&due.key, Some(old), Some(tombstone))
                    .map_err(backend)?
                    .is_ok()
                {
                    changed = true;
                    break;
                }
            }
        }
        self.expiry
            .remove(expiry_key(due.expiration, due.namespace, &due.key))
            .map_err(backend)?;
        Ok(changed)
    }

    async fn sync(&self) -> Result<(), StoreError> {
        self.commit.sync().await
    }

    fn size_on_disk(&self) -> Result<u64, StoreError> {
        self.db.size_on_disk().map_err(backend)
    }
}

/// Group commit: callers of `sync` take a ticket; a dedicated thread flushes sled and then
/// publishes the highest ticket the flush covered, so every caller waiting at that moment is
/// served by the same flush.
struct GroupCommit {
    state: Mutex<CommitState>,
    wake: Condvar,
    durable: watch::Sender<Durable>,
}

struct CommitState {
    requested: u64,
    stop: bool,
}

#[derive(Default)]
struct Durable {
    /// Every ticket up to this one is durable.
    flushed: u64,
    /// The last failed flush: every ticket up to the first number failed with the message.
    failure: Option<(u64, String)>,
}

impl GroupCommit {
    fn new() -> Self {
        GroupCommit {
            state: Mutex::new(CommitState {
                requested: 0,
                stop: false,
            }),
            wake: Condvar::new(),
            durable: watch::Sender::new(Durable::default()),
        }
    }

    async fn sync(&self) -> Result<(), StoreError> {
        let ticket = {
            let mut state = self.state.lock().expect("commit lock");
            state.requested += 1;
            state.requested
        };
        self.wake.notify_one();
        let mut durable = self.durable.subscribe();
        let outcome = durable
            .wait_for(|d| {
                d.flushed >= ticket || d.failure.as_ref().is_some_and(|(upto, _)| *upto >= ticket)
            })
            .await
            .map_err(|_| StoreError::Backend("the store was closed".into()))?;
        if outcome.flushed >= ticket {
            Ok(())
        } else {
            let message = outcome
                .failure
                .as_ref()
                .map(|(_, m)| m.clone())
                .unwrap_or_default();
            Err(StoreError::Backend(format!("flush failed: {message}")))
        }
    }

    fn stop(&self) {
        self.state.lock().expect("commit lock").stop = true;
        self.wake.notify_one();
    }

    /// The flusher thread's loop; returns after `stop`, once no ticket is left unflushed.
    fn run(&self, db: &sled::Db) {
        let mut done = 0;
        loop {
            let target = {
                let mut state = self.state.lock().expect("commit lock");
                while state.requested == done && !state.stop {
                    state = self.wake.wait(state).expect("commit lock");
                }
                if state.requested == done {
                    break;
                }
                state.requested
            };
            match db.flush() {
                Ok(_) => self.durable.send_modify(|d| d.flushed = target),
                Err(e) => {
                    tracing::error!(error = %e, "flushing the database failed");
                    self.durable
                        .send_modify(|d| d.failure = Some((target, e.to_string())));
                }
            }
            done = target;
        }
        // Make whatever sled still buffers durable on the way out.
        if let Err(e) = db.flush() {
            tracing::error!(error = %e, "final flush failed");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::suite::ns;
    use driftkv_core::{LiveValue, Version};

    fn open() -> (SledStore, tempfile::TempDir) {
        let dir = tempfile::tempdir().expect("tempdir");
        (SledStore::open(dir.path()).expect("open sled"), dir)
    }

    crate::store_suite!(open());

    fn put(ts: u64, value: &str) -> Record {
        Record {
            version: Version {
                timestamp: ts,
                origin: 1,
            },
            live: Some(LiveValue {
                value: value.as_bytes().to_vec().into(),
                metadata: None,
                expiration: None,
            }),
        }
    }

    #[tokio::test]
    async fn data_survives_reopening() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = SledStore::open(dir.path()).unwrap();
            store.put_namespace(&ns(1)).unwrap();
            store
                .apply(NamespaceId([1; 16]), &[("k".into(), put(5, "v"))])
                .unwrap();
            store.sync().await.unwrap();
        }
        let store = SledStore::open(dir.path()).unwrap();
        assert_eq!(store.namespaces().unwrap(), vec![ns(1)]);
        assert_eq!(
            store.get(NamespaceId([1; 16]), "k").unwrap(),
            Some(put(5, "v"))
        );
    }

    #[tokio::test]
    async fn orphaned_namespace_trees_are_dropped_on_open() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = SledStore::open(dir.path()).unwrap();
            store.put_namespace(&ns(2)).unwrap();
            store
                .apply(NamespaceId([2; 16]), &[("k".into(), put(5, "v"))])
                .unwrap();
            // Simulate a crash after the namespace record went but before its tree did.
            store.namespaces.remove(NamespaceId([2; 16]).0).unwrap();
            store.sync().await.unwrap();
        }
        let store = SledStore::open(dir.path()).unwrap();
        assert!(store.namespaces().unwrap().is_empty());
        let names: Vec<_> = store.db.tree_names();
        assert!(!names
            .iter()
            .any(|n| n.starts_with(NAMESPACE_TREE_PREFIX.as_bytes())));
    }

    mod replication_order {
        use super::*;
        use driftkv_core::{Change, LogEntry};
        use proptest::prelude::*;

        /// Key entries over a few keys, with versions that may tie on timestamp. A version
        /// names one write, so the record is a function of it (as it is in a real log).
        fn entries() -> impl Strategy<Value = Vec<LogEntry>> {
            let change = (0..4u8, 1..20u64, 1..3u64).prop_map(|(key, timestamp, origin)| {
                let version = Version { timestamp, origin };
                let record = if (timestamp + origin) % 3 == 0 {
                    Record::tombstone(version)
                } else {
                    Record {
                        version,
                        live: Some(LiveValue {
                            value: format!("{timestamp}/{origin}").into_bytes().into(),
                            metadata: None,
                            expiration: None,
                        }),
                    }
                };
                Change::Key {
                    namespace: NamespaceId([1; 16]),
                    key: format!("k{key}"),
                    record,
                }
            });
            prop::collection::vec(change, 1..24).prop_map(|changes| {
                changes
                    .into_iter()
                    .enumerate()
                    .map(|(i, change)| LogEntry {
                        sequence: i as u64 + 2,
                        change,
                    })
                    .collect()
            })
        }

        /// The replica state: every record and the applied sequence.
        fn replay(batches: &[Vec<LogEntry>]) -> (Vec<(String, Record)>, u64) {
            let (store, _dir) = open();
            store.put_namespace(&ns(1)).unwrap();
            for batch in batches {
                store.apply_replicated(batch).unwrap();
            }
            (
                store.records(NamespaceId([1; 16]), None, 100).unwrap(),
                store.applied_sequence().unwrap(),
            )
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(48))]

            /// Replication entries applied in any order, any number of times, in any batching,
            /// leave the same records and the same applied sequence as applying them once in
            /// sequence order.
            #[test]
            fn any_permutation_and_duplication_converges(
                entries in entries(),
                order in prop::collection::vec(any::<prop::sample::Index>(), 0..48),
                cuts in prop::collection::vec(any::<prop::sample::Index>(), 0..6),
            ) {
                let in_order = replay(std::slice::from_ref(&entries));
                // Every entry at least once, then duplicates, in a shuffled order.
                let mut shuffled: Vec<LogEntry> = entries.clone();
                shuffled.extend(order.iter().map(|i| i.get(&entries).clone()));
                let n = shuffled.len();
                for (i, pick) in order.iter().enumerate() {
                    shuffled.swap(i % n, pick.index(n));
                }
                let mut cut_points: Vec<usize> = cuts.iter().map(|c| c.index(n + 1)).collect();
                cut_points.sort_unstable();
                let mut batches = Vec::new();
                let mut start = 0;
                for cut in cut_points.into_iter().chain([n]) {
                    batches.push(shuffled[start..cut.max(start)].to_vec());
                    start = cut.max(start);
                }
                prop_assert_eq!(replay(&batches), in_order);
            }
        }
    }
}
