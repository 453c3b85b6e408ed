//! driftkv storage.
//!
//! Two layers:
//! - [`Backend`] (in [`backend`]) is the seam a storage engine fills: a few ordered key-value
//!   trees with point reads, range scans, atomic batches and a durable `sync`. [`SledBackend`]
//!   and [`FjallBackend`] are its adapters; [`open`] picks one by [`EngineKind`].
//! - [`Store`] is everything driftkv keeps, written once over any backend: namespaces, records
//!   applied last-write-wins, ordered listings, the expiration index, the replication log
//!   (appended by the write region, applied by replicas with their applied sequence).
//!
//! The conformance suite (`suite`, behind the `suite` feature and in this crate's tests) runs
//! against every engine; an engine that passes it can carry a node.

pub mod backend;
pub mod chunked;
mod commit;
mod fjall_backend;
mod gc;
pub mod guard;
mod layout;
pub mod reads;
mod sled_backend;
mod store;
#[cfg(any(test, feature = "suite"))]
pub mod suite;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use driftkv_core::{KeyInfo, KvError, NamespaceId};

pub use backend::{Backend, BackendError};
pub use chunked::Chunked;
pub use fjall_backend::FjallBackend;
pub use gc::{spawn_every, spawn_gc_rounds, Purged, RecordCounts};
pub use sled_backend::SledBackend;
pub use store::Store;

/// A storage failure.
#[derive(Clone, Debug, thiserror::Error)]
pub enum StoreError {
    /// The namespace does not exist (or was deleted while the operation ran).
    #[error("namespace {0} does not exist")]
    NoSuchNamespace(NamespaceId),
    /// Stored bytes could not be decoded.
    #[error("corrupt data: {0}")]
    Corrupt(String),
    /// The engine failed (see [`BackendError::is_io`] for whether the disk did). Shared, so
    /// that every writer of a failed batch gets the one error.
    #[error(transparent)]
    Backend(Arc<BackendError>),
    /// The data directory holds a database of another engine than the one configured.
    #[error(
        "{} holds a {found} database, but storage.engine is {configured}: set storage.engine = \"{found}\" \
         to open it, or give this engine a directory of its own",
        dir.display()
    )]
    OtherEngine {
        dir: PathBuf,
        found: &'static str,
        configured: &'static str,
    },
}

impl From<BackendError> for StoreError {
    fn from(e: BackendError) -> Self {
        StoreError::Backend(Arc::new(e))
    }
}

impl StoreError {
    /// Whether the operating system reported an I/O error on the database's files.
    pub fn is_io(&self) -> bool {
        matches!(self, StoreError::Backend(e) if e.is_io())
    }

    /// Whether the write failed for want of space: the filesystem is full (or over its quota),
    /// or free space is under `storage.min_free_bytes` (see [`guard`]).
    /// Also when the engine is unusable after such a failure (see [`StoreError::is_unusable`]).
    pub fn is_out_of_space(&self) -> bool {
        matches!(self, StoreError::Backend(e) if e.is_out_of_space())
    }

    /// Whether the engine cannot be used until it is opened again (it refuses writes after a
    /// failure, or the health probe is opening it): a state that passes, not an internal error.
    pub fn is_unusable(&self) -> bool {
        matches!(self, StoreError::Backend(e) if matches!(&**e, BackendError::Unusable { .. }))
    }
}

impl From<StoreError> for KvError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::NoSuchNamespace(_) => KvError::NamespaceNotFound,
            full if full.is_out_of_space() => KvError::InsufficientStorage(full.to_string()),
            unusable if unusable.is_unusable() => KvError::StorageUnavailable(unusable.to_string()),
            other => KvError::Internal(other.to_string()),
        }
    }
}

/// The storage engines a node can run on (`storage.engine`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum EngineKind {
    /// sled 0.34: a B-tree over a log; the engine driftkv was specified with.
    Sled,
    /// fjall 3: an LSM tree with a write-ahead journal and key-value separation for large
    /// values; the default (see the README's Performance section for why).
    #[default]
    Fjall,
}

impl EngineKind {
    /// The engine's name, as the configuration spells it.
    pub fn name(self) -> &'static str {
        match self {
            EngineKind::Sled => "sled",
            EngineKind::Fjall => "fjall",
        }
    }
}

/// Opens (or creates) a node's database in `dir` with the `engine`. A directory that holds
/// another engine's database is refused, rather than opened as an empty one beside it.
pub fn open(engine: EngineKind, dir: &Path) -> Result<Store, StoreError> {
    Store::open(open_backend(engine, dir)?)
}

/// Opens (or creates) the `engine`'s database in `dir`, for a caller that wraps it (see
/// [`guard`]) before [`Store::open`]. A directory that holds another engine's database is
/// refused.
pub fn open_backend(engine: EngineKind, dir: &Path) -> Result<Arc<dyn Backend>, StoreError> {
    Ok(match engine {
        EngineKind::Sled => {
            refuse_other_engine(dir, engine, EngineKind::Fjall, FjallBackend::holds_database)?;
            Arc::new(SledBackend::open(dir)?)
        }
        EngineKind::Fjall => {
            refuse_other_engine(dir, engine, EngineKind::Sled, SledBackend::holds_database)?;
            // fjall copies each journaled item into buffers of its size: large values go in
            // pieces (sled writes a large value to a file of its own, from the value).
            Arc::new(Chunked::new(FjallBackend::open(dir)?)?)
        }
    })
}

fn refuse_other_engine(
    dir: &Path,
    wanted: EngineKind,
    other: EngineKind,
    holds: fn(&Path) -> bool,
) -> Result<(), StoreError> {
    if holds(dir) {
        return Err(StoreError::OtherEngine {
            dir: dir.to_owned(),
            found: other.name(),
            configured: wanted.name(),
        });
    }
    Ok(())
}

/// One page of a scan: the live keys found, and where to resume if the scan stopped early.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Scan {
    pub keys: Vec<KeyInfo>,
    /// The last key examined, when more keys may follow; `None` when the scan reached the end.
    pub resume_after: Option<String>,
}

/// An entry of the expiration index that has come due.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DueExpiration {
    pub namespace: NamespaceId,
    pub key: String,
    /// The expiration (unix seconds) the index entry was made for.
    pub expiration: u64,
}

/// The sequences the replication log holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LogBounds {
    /// The oldest retained entry; `last + 1` when none is retained.
    pub oldest: u64,
    /// The last sequence handed out; 0 before the first append.
    pub last: u64,
}

/// Most records a single scan examines. A listing over many tombstones or expired keys
/// therefore returns a short (possibly empty) page with a cursor instead of walking the whole
/// namespace in one request, as Workers KV's listing is allowed to.
pub const SCAN_BUDGET: usize = 10_000;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_directory_of_another_engine_is_refused() {
        for (made, other) in [
            (EngineKind::Sled, EngineKind::Fjall),
            (EngineKind::Fjall, EngineKind::Sled),
        ] {
            let dir = tempfile::tempdir().unwrap();
            drop(open(made, dir.path()).unwrap());
            match open(other, dir.path()) {
                Err(e @ StoreError::OtherEngine { .. }) => {
                    let text = e.to_string();
                    assert!(
                        text.contains(&format!("storage.engine = \"{}\"", made.name())),
                        "{text}"
                    );
                }
                Err(e) => panic!("{e}"),
                Ok(_) => panic!("{} opened a {} database", other.name(), made.name()),
            }
            drop(open(made, dir.path()).unwrap());
        }
    }
}
