//! What the edge's unit tests share: a central in the same process, a replica over a real
//! engine that counts what is read and written, and an edge over it following that central.

use std::collections::HashMap;
use std::ops::Bound;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use std::num::NonZeroU64;

use bytes::Bytes;
use driftkv_central::{Central, CentralOptions};
use driftkv_core::time::SystemClock;
use driftkv_engine::{Engine, RateLimiter};
use driftkv_store::backend::{Batch, Entries, Op, Tree};
use driftkv_store::{Backend, BackendError, EngineKind, Store};

use crate::{Edge, EdgeOptions};

/// A real engine that counts, per record key, the reads and the writes, and can be made to
/// refuse writes as a full disk does.
pub(crate) struct Counting {
    inner: Arc<dyn Backend>,
    gets: Mutex<HashMap<Vec<u8>, usize>>,
    puts: Mutex<HashMap<Vec<u8>, usize>>,
    full: AtomicBool,
}

impl Counting {
    /// From now on, writes fail as on a full disk (`true`), or go through again (`false`).
    pub(crate) fn set_full(&self, full: bool) {
        self.full.store(full, Ordering::SeqCst);
    }

    /// Writes per record key.
    pub(crate) fn puts(&self) -> HashMap<Vec<u8>, usize> {
        self.puts.lock().unwrap().clone()
    }

    /// Reads per record key.
    pub(crate) fn gets(&self) -> HashMap<Vec<u8>, usize> {
        self.gets.lock().unwrap().clone()
    }

    /// Counts a read (whole or head) of a record key.
    fn count_get(&self, tree: Tree, key: &[u8]) {
        if tree == Tree::Records {
            *self.gets.lock().unwrap().entry(key.to_vec()).or_default() += 1;
        }
    }
}

impl Backend for Counting {
    fn name(&self) -> &'static str {
        "counting"
    }

    fn get(&self, tree: Tree, key: &[u8]) -> Result<Option<Bytes>, BackendError> {
        self.count_get(tree, key);
        self.inner.get(tree, key)
    }

    fn get_head(&self, tree: Tree, key: &[u8], len: usize) -> Result<Option<Bytes>, BackendError> {
        self.count_get(tree, key);
        self.inner.get_head(tree, key, len)
    }

    fn range(&self, tree: Tree, from: Bound<&[u8]>, to: Bound<&[u8]>) -> Entries<'_> {
        self.inner.range(tree, from, to)
    }

    fn range_heads(
        &self,
        tree: Tree,
        from: Bound<&[u8]>,
        to: Bound<&[u8]>,
        len: usize,
    ) -> Entries<'_> {
        self.inner.range_heads(tree, from, to, len)
    }

    fn commit(&self, batch: Batch) -> Result<(), BackendError> {
        if self.full.load(Ordering::SeqCst) {
            return Err(BackendError::Io(std::io::Error::from(
                std::io::ErrorKind::StorageFull,
            )));
        }
        {
            let mut puts = self.puts.lock().unwrap();
            for op in batch.clone().into_ops() {
                if let Op::Put {
                    tree: Tree::Records,
                    key,
                    ..
                } = op
                {
                    *puts.entry(key).or_default() += 1;
                }
            }
        }
        self.inner.commit(batch)
    }

    fn sync(&self) -> Result<(), BackendError> {
        self.inner.sync()
    }

    fn size_on_disk(&self) -> Result<u64, BackendError> {
        self.inner.size_on_disk()
    }

    fn compact(&self, tree: Tree) -> Result<(), BackendError> {
        self.inner.compact(tree)
    }
}

/// A central over a store in `dir`, in this process, with no rate limit.
pub(crate) fn central_in(dir: &Path) -> Arc<Central> {
    let store = driftkv_store::open(EngineKind::default(), dir).unwrap();
    let engine = Engine::new(
        Arc::new(store),
        NonZeroU64::new(1).unwrap(),
        Arc::new(SystemClock),
        RateLimiter::per_second(0),
    )
    .unwrap();
    Central::new(Arc::new(engine), CentralOptions::default())
}

/// An edge over a counting replica in `dir`, talking to `central` directly.
pub(crate) fn edge_over(dir: &Path, central: Arc<Central>) -> (Arc<Edge>, Arc<Counting>) {
    let replica = driftkv_store::open(EngineKind::default(), dir).unwrap();
    let counting = Arc::new(Counting {
        inner: replica.backend().clone(),
        gets: Mutex::default(),
        puts: Mutex::default(),
        full: AtomicBool::new(false),
    });
    drop(replica);
    let store = Arc::new(Store::open(counting.clone()).unwrap());
    let options = EdgeOptions {
        node_id: 2,
        cache_max_bytes: 1 << 20,
        min_cache_ttl: Duration::from_secs(1),
        max_cache_ttl: Duration::from_secs(86_400),
        default_cache_ttl: Duration::from_secs(60),
        invalidate_on_replication: false,
        request_timeout: Duration::from_secs(5),
        stream_silence: Duration::from_secs(5),
        tombstone_grace: Duration::from_secs(86_400),
    };
    let edge = Edge::new(store, Arc::new(SystemClock), central, options).unwrap();
    (edge, counting)
}
