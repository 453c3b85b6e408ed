//! The fjall adapter: a keyspace (an LSM tree) per [`Tree`], all under one write-ahead journal,
//! so a batch over several trees is one atomic fjall batch.
//!
//! **Durability.** A committed batch is written to the journal and handed to the operating
//! system at once (a crash of the process loses nothing); [`Backend::sync`] is fjall's
//! `persist(PersistMode::SyncAll)`, an `fsync` of the journal, which fjall documents as reaching
//! stable storage (it also fsyncs the journal's directory when it starts a new journal file).
//! Values of 1 KiB and more in [`Tree::Records`] and [`Tree::Chunks`] are kept apart from the
//! keys (fjall's key-value separation), so compactions do not rewrite large values over and
//! over. A node opens it under [`crate::Chunked`], which stores large values in pieces.

use std::ops::Bound;
use std::path::Path;

use bytes::Bytes;
use fjall::{Database, KeyspaceCreateOptions, KvSeparationOptions, PersistMode};

use crate::backend::{Backend, BackendError, Batch, Entries, Op, Tree};

const ENGINE: &str = "fjall";

fn error(e: fjall::Error) -> BackendError {
    match e {
        fjall::Error::Io(io) => BackendError::Io(io),
        fjall::Error::Poisoned => BackendError::Unusable {
            reason: "fjall refuses writes after an earlier failure to write its journal (its \
                     database is poisoned) until the health probe opens it again"
                .into(),
            out_of_space: false,
        },
        other => BackendError::Engine {
            engine: ENGINE,
            source: Box::new(other),
        },
    }
}

fn owned(bound: Bound<&[u8]>) -> Bound<Vec<u8>> {
    bound.map(<[u8]>::to_vec)
}

/// A fjall database holding one node's data.
pub struct FjallBackend {
    db: Database,
    /// One keyspace per tree, in the order of [`Tree::ALL`].
    trees: Vec<fjall::Keyspace>,
}

impl FjallBackend {
    /// Opens (or creates) the database in `dir`.
    pub fn open(dir: &Path) -> Result<Self, BackendError> {
        let db = Database::builder(dir).open().map_err(error)?;
        let trees = Tree::ALL
            .iter()
            .map(|tree| {
                db.keyspace(tree.name(), || {
                    let options = KeyspaceCreateOptions::default();
                    if matches!(tree, Tree::Records | Tree::Chunks) {
                        options.with_kv_separation(Some(KvSeparationOptions::default()))
                    } else {
                        options
                    }
                })
                .map_err(error)
            })
            .collect::<Result<_, _>>()?;
        Ok(FjallBackend { db, trees })
    }

    /// Whether `dir` holds a fjall database.
    pub fn holds_database(dir: &Path) -> bool {
        dir.join("version").is_file() && dir.join("keyspaces").is_dir()
    }

    fn tree(&self, tree: Tree) -> &fjall::Keyspace {
        &self.trees[usize::from(tree.index())]
    }
}

impl Backend for FjallBackend {
    fn name(&self) -> &'static str {
        ENGINE
    }

    fn get(&self, tree: Tree, key: &[u8]) -> Result<Option<Bytes>, BackendError> {
        Ok(self
            .tree(tree)
            .get(key)
            .map_err(error)?
            .map(Bytes::from_owner))
    }

    fn range(&self, tree: Tree, from: Bound<&[u8]>, to: Bound<&[u8]>) -> Entries<'_> {
        Box::new(
            self.tree(tree)
                .range::<Vec<u8>, _>((owned(from), owned(to)))
                .map(|guard| {
                    let (k, v) = guard.into_inner().map_err(error)?;
                    Ok((Bytes::from_owner(k), Bytes::from_owner(v)))
                }),
        )
    }

    fn commit(&self, batch: Batch) -> Result<(), BackendError> {
        let mut fjall_batch = self.db.batch();
        for op in batch.into_ops() {
            match op {
                Op::Put { tree, key, value } => fjall_batch.insert(self.tree(tree), key, value),
                Op::Remove { tree, key } => fjall_batch.remove(self.tree(tree), key),
            }
        }
        fjall_batch.commit().map_err(error)
    }

    fn sync(&self) -> Result<(), BackendError> {
        self.db.persist(PersistMode::SyncAll).map_err(error)
    }

    fn size_on_disk(&self) -> Result<u64, BackendError> {
        self.db.disk_space().map_err(error)
    }

    /// A major compaction of the tree's keyspace: fjall compacts in the background as levels
    /// fill, but after a large removal (garbage collection, log trimming) this returns the
    /// space now rather than whenever the levels next fill.
    fn compact(&self, tree: Tree) -> Result<(), BackendError> {
        self.tree(tree).major_compact().map_err(error)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // The suite runs on what a node opens: fjall under large values in pieces.
    crate::store_suite!(|dir: &Path| {
        crate::open(crate::EngineKind::Fjall, dir).expect("open the store")
    });

    /// Compacting a tree after removing most of it gives the space back.
    #[test]
    fn compaction_returns_the_space_of_removed_keys() {
        let dir = tempfile::tempdir().unwrap();
        let backend = FjallBackend::open(dir.path()).unwrap();
        let value = vec![7u8; 4096];
        let mut batch = Batch::new();
        for i in 0..4000u32 {
            batch.put(Tree::Records, i.to_be_bytes().to_vec(), value.clone());
            batch.put(Tree::Log, i.to_be_bytes().to_vec(), value[..512].to_vec());
        }
        backend.commit(batch).unwrap();
        backend.sync().unwrap();
        for tree in [Tree::Records, Tree::Log] {
            backend.tree(tree).rotate_memtable_and_wait().unwrap();
        }
        // The trees' own files: the database's size also counts its preallocated journal.
        let trees =
            || backend.tree(Tree::Records).disk_space() + backend.tree(Tree::Log).disk_space();
        let full = trees();
        let mut batch = Batch::new();
        for i in 0..4000u32 {
            batch.remove(Tree::Records, i.to_be_bytes().to_vec());
            batch.remove(Tree::Log, i.to_be_bytes().to_vec());
        }
        backend.commit(batch).unwrap();
        backend.sync().unwrap();
        for tree in [Tree::Records, Tree::Log] {
            backend.tree(tree).rotate_memtable_and_wait().unwrap();
            backend.compact(tree).unwrap();
        }
        let left = trees();
        assert!(
            left < full / 4,
            "{full} bytes full, {left} after compaction"
        );
    }
}
