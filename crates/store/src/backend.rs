//! The storage seam: what a storage engine must provide for driftkv to run on it.
//!
//! A [`Backend`] is a handful of ordered key-value trees (the fixed set [`Tree`] names), read
//! with point lookups and forward range scans, written with atomic [`Batch`]es, and made
//! durable with [`Backend::sync`]. That is the shape of Garage's `db` crate, cut down to what
//! driftkv uses: [`Store`](crate::Store) holds the single writer lock, so a read followed by a
//! batch is a transaction without the engine having to provide one, and everything that gives
//! the bytes meaning (last-write-wins, log sequencing, the expiration index, namespaces) is
//! written once, above this trait. An engine is an adapter of about a hundred lines: see
//! `sled_backend.rs` and `fjall_backend.rs`.
//!
//! What an engine must guarantee (the conformance suite checks the observable part):
//! - a committed batch is visible to every later read, all of it or none of it;
//! - a crash (of the process or the machine) keeps a prefix of the committed batches: never a
//!   later batch without an earlier one;
//! - when [`Backend::sync`] returns, every batch committed before it was called is on stable
//!   storage (through `fsync`/`fdatasync`, or an engine call documented to get there).

use std::ops::Bound;

use bytes::Bytes;

/// The trees a backend keeps. Keys sort as bytes within each tree; no key is empty, and none
/// is longer than a namespace id, an expiration and a Workers KV key (540 bytes).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Tree {
    /// Namespace id (16 bytes) → encoded namespace.
    Namespaces,
    /// Namespace id (16 bytes) followed by the key's bytes → encoded record. An encoding
    /// never begins with a zero byte (it begins with its format, 1 or more), which
    /// [`crate::chunked`] relies on for its markers; so does a [`Tree::Log`] value.
    Records,
    /// Expiration (big-endian unix seconds), namespace id, key → nothing.
    Expiry,
    /// Sequence (big-endian) → encoded change: the replication log.
    Log,
    /// Sequence bookkeeping.
    Meta,
    /// The tombstone index: log sequence (big-endian), namespace id, key → the time the key
    /// was deleted or expired (big-endian unix milliseconds) and the tombstone's version, so
    /// that garbage collection finds the tombstones it may purge without a full scan.
    Tombstones,
    /// Pieces of large values of [`Tree::Records`] and [`Tree::Log`], where a node stores them
    /// in pieces ([`crate::chunked`]): id and index (big-endian) → bytes.
    Chunks,
}

impl Tree {
    /// Every tree.
    pub const ALL: [Tree; 7] = [
        Tree::Namespaces,
        Tree::Records,
        Tree::Expiry,
        Tree::Log,
        Tree::Meta,
        Tree::Tombstones,
        Tree::Chunks,
    ];

    /// The tree's name, for engines that name their trees.
    pub fn name(self) -> &'static str {
        match self {
            Tree::Namespaces => "namespaces",
            Tree::Records => "records",
            Tree::Expiry => "expiry",
            Tree::Log => "log",
            Tree::Meta => "meta",
            Tree::Tombstones => "tombstones",
            Tree::Chunks => "chunks",
        }
    }

    /// A small distinct number, for engines that keep every tree in one key space.
    pub fn index(self) -> u8 {
        self as u8
    }
}

/// One change of a batch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Op {
    /// Store `value` under `key`, replacing what is there. The value is shared, not owned:
    /// a key's record is the tail of its log entry's bytes (see [`driftkv_core::Change::encode`]),
    /// and an engine that takes `Bytes` as they are holds one copy of a value for both.
    Put {
        tree: Tree,
        key: Vec<u8>,
        value: Bytes,
    },
    /// Remove `key` (nothing happens if it is absent).
    Remove { tree: Tree, key: Vec<u8> },
}

/// Changes to apply atomically, in order.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Batch {
    ops: Vec<Op>,
}

impl Batch {
    /// An empty batch.
    pub fn new() -> Self {
        Batch::default()
    }

    /// Adds a put.
    pub fn put(&mut self, tree: Tree, key: Vec<u8>, value: impl Into<Bytes>) {
        self.ops.push(Op::Put {
            tree,
            key,
            value: value.into(),
        });
    }

    /// Adds a removal.
    pub fn remove(&mut self, tree: Tree, key: Vec<u8>) {
        self.ops.push(Op::Remove { tree, key });
    }

    /// Adds a change.
    pub fn push(&mut self, op: Op) {
        self.ops.push(op);
    }

    /// A batch of these changes, in order.
    pub fn from_ops(ops: Vec<Op>) -> Self {
        Batch { ops }
    }

    /// Whether the batch changes nothing.
    pub fn is_empty(&self) -> bool {
        self.ops.is_empty()
    }

    /// How many changes it holds.
    pub fn len(&self) -> usize {
        self.ops.len()
    }

    /// The changes, in order.
    pub fn into_ops(self) -> Vec<Op> {
        self.ops
    }
}

/// A key and its value, as a scan yields them.
pub type Entry = (Bytes, Bytes);

/// A forward scan; it may hold engine resources (a snapshot) until dropped.
pub type Entries<'a> = Box<dyn Iterator<Item = Result<Entry, BackendError>> + Send + 'a>;

/// A failure of the storage engine.
#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    /// The operating system refused or failed an operation on the database's files (a full
    /// disk, a failing device, permissions). A node should stop taking writes until it is
    /// looked at: what the engine holds in memory may no longer match the disk.
    #[error("storage I/O failed: {0}")]
    Io(#[from] std::io::Error),
    /// The engine failed otherwise (it found its files corrupt, or refuses to go on after an
    /// earlier failure).
    #[error("{engine} failed: {source}")]
    Engine {
        /// Which engine.
        engine: &'static str,
        /// What it reported.
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// The engine cannot be used until it is opened again: it refuses every write after an
    /// earlier failure (fjall poisons its database when its journal cannot be written), or the
    /// health probe is opening it again.
    #[error("{reason}")]
    Unusable {
        /// What happened, for the client and the operator.
        reason: String,
        /// Whether the failure that made it unusable was a full disk (see
        /// [`crate::guard::Guarded`], which knows).
        out_of_space: bool,
    },
}

impl BackendError {
    /// Whether the operating system reported an I/O error.
    pub fn is_io(&self) -> bool {
        matches!(self, BackendError::Io(_))
    }

    /// Whether the filesystem is full (or over its quota), or the engine is unusable after
    /// such a failure.
    pub fn is_out_of_space(&self) -> bool {
        match self {
            BackendError::Io(io) => matches!(
                io.kind(),
                std::io::ErrorKind::StorageFull | std::io::ErrorKind::QuotaExceeded
            ),
            BackendError::Unusable { out_of_space, .. } => *out_of_space,
            BackendError::Engine { .. } => false,
        }
    }
}

/// An ordered key-value store with the trees of [`Tree`]; see the module documentation for
/// what an implementation guarantees.
pub trait Backend: Send + Sync + 'static {
    /// The engine's name, for logs and errors ("sled", "fjall").
    fn name(&self) -> &'static str;
    /// The value stored under `key`.
    fn get(&self, tree: Tree, key: &[u8]) -> Result<Option<Bytes>, BackendError>;
    /// The value stored under `key`, or at least its first `len` bytes: for a read that needs
    /// only the head of a value (a record's version). A wrapper that stores values apart
    /// ([`crate::Chunked`]) reads less; a wrapper around such a one must pass it on.
    fn get_head(&self, tree: Tree, key: &[u8], len: usize) -> Result<Option<Bytes>, BackendError> {
        let _ = len;
        self.get(tree, key)
    }
    /// The entries whose keys lie between `from` and `to`, in key order.
    fn range(&self, tree: Tree, from: Bound<&[u8]>, to: Bound<&[u8]>) -> Entries<'_>;
    /// [`Backend::range`] for a scan that needs only each value's first `len` bytes (a
    /// record's head) or none of it (`len` 0: keys only): each value comes whole or cut to at
    /// least `len` bytes. A wrapper that stores values apart ([`crate::Chunked`]) reads less; a
    /// wrapper around such a one must pass it on. With `len` 0 the scan may also yield a key
    /// removed since it began (a scan of keys only does not read the value that would show it).
    fn range_heads(
        &self,
        tree: Tree,
        from: Bound<&[u8]>,
        to: Bound<&[u8]>,
        len: usize,
    ) -> Entries<'_> {
        let _ = len;
        self.range(tree, from, to)
    }
    /// Applies `batch` atomically; it is visible to reads when this returns, and durable once
    /// a later [`Backend::sync`] has returned (or the engine wrote it out by itself).
    fn commit(&self, batch: Batch) -> Result<(), BackendError>;
    /// Returns once every batch committed before the call is on stable storage: through
    /// `fsync`/`fdatasync` of the files it went to, or an engine call documented to get there.
    fn sync(&self) -> Result<(), BackendError>;
    /// Bytes the database takes on disk.
    fn size_on_disk(&self) -> Result<u64, BackendError>;
    /// Rewrites `tree` so that the space of removed keys goes back to the file system, where
    /// the engine needs to be asked (an LSM tree keeps removals as markers until compaction);
    /// blocks until done. Engines that reclaim space by themselves do nothing. No default:
    /// a wrapper that forgot to pass it on would silently never compact.
    fn compact(&self, tree: Tree) -> Result<(), BackendError>;
}
