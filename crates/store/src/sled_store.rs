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
use driftkv_core::{KeyInfo, Namespace, NamespaceId, Record, RecordView};
use sled::{IVec, Tree};
use tokio::sync::watch;

use crate::{DueExpiration, Scan, Store, StoreError, SCAN_BUDGET};

const NAMESPACE_TREE_PREFIX: &str = "ns/";

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

    fn put_namespace(&self, namespace: &Namespace) -> Result<(), StoreError> {
        let mut trees = self.trees.write().expect("tree map lock");
        self.namespaces
            .insert(namespace.id.0, namespace.encode())
            .map_err(backend)?;
        match trees.get_mut(&namespace.id) {
            Some(open) => open.namespace = Arc::new(namespace.clone()),
            None => {
                let tree = self
                    .db
                    .open_tree(tree_name(namespace.id))
                    .map_err(backend)?;
                trees.insert(
                    namespace.id,
                    Open {
                        namespace: Arc::new(namespace.clone()),
                        tree,
                    },
                );
            }
        }
        Ok(())
    }

    fn delete_namespace(&self, id: NamespaceId) -> Result<bool, StoreError> {
        let mut trees = self.trees.write().expect("tree map lock");
        let existed = self.namespaces.remove(id.0).map_err(backend)?.is_some();
        if trees.remove(&id).is_some() {
            self.db.drop_tree(tree_name(id)).map_err(backend)?;
        }
        Ok(existed)
    }

    fn apply(
        &self,
        namespace: NamespaceId,
        records: &[(String, Record)],
    ) -> Result<Vec<bool>, StoreError> {
        let trees = self.trees.read().expect("tree map lock");
        let tree = &trees
            .get(&namespace)
            .ok_or(StoreError::NoSuchNamespace(namespace))?
            .tree;
        let mut applied = Vec::with_capacity(records.len());
        for (key, record) in records {
            if let Some(expiration) = record.live.as_ref().and_then(|l| l.expiration) {
                self.expiry
                    .insert(expiry_key(expiration, namespace, key), &[])
                    .map_err(backend)?;
            }
            let encoded = IVec::from(record.encode());
            loop {
                let old = tree.get(key).map_err(backend)?;
                if let Some(old) = &old {
                    if RecordView::decode(old).map_err(corrupt)?.version >= record.version {
                        applied.push(false);
                        break;
                    }
                }
                if tree
                    .compare_and_swap(key, old, Some(encoded.clone()))
                    .map_err(backend)?
                    .is_ok()
                {
                    applied.push(true);
                    break;
                }
            }
        }
        Ok(applied)
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
    use driftkv_core::{LiveValue, Version};

    fn open() -> (SledStore, tempfile::TempDir) {
        let dir = tempfile::tempdir().expect("tempdir");
        (SledStore::open(dir.path()).expect("open sled"), dir)
    }

    crate::store_suite!(open());

    fn namespace(id: u8) -> Namespace {
        Namespace {
            id: NamespaceId([id; 16]),
            account_id: "acct".into(),
            title: format!("ns{id}"),
            version: Version {
                timestamp: 1,
                origin: 1,
            },
        }
    }

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
            store.put_namespace(&namespace(1)).unwrap();
            store
                .apply(NamespaceId([1; 16]), &[("k".into(), put(5, "v"))])
                .unwrap();
            store.sync().await.unwrap();
        }
        let store = SledStore::open(dir.path()).unwrap();
        assert_eq!(store.namespaces().unwrap(), vec![namespace(1)]);
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
            store.put_namespace(&namespace(2)).unwrap();
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
}
