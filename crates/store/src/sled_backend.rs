//! The sled adapter.
//!
//! Every tree of [`Tree`] lives in one sled tree, each under a one-byte prefix, so that a
//! batch is one sled `Batch` (atomic in sled) instead of a transaction across sled trees.
//!
//! **Durability.** sled 0.34's own flush writes its buffers with `pwrite` and
//! `sync_file_range` on Linux, which neither flushes the device's write cache nor syncs the
//! file's metadata (sled issues #1351, #1452): written data survives a crash of the process, not
//! a power cut. [`Backend::sync`] therefore follows sled's flush with `fdatasync` of the files
//! sled writes: its `db` file, every blob file not synced yet (a value larger than about 128 KiB
//! goes to a file of its own under `blobs/`, written without any sync), and the `blobs/`
//! directory when a blob file is new. An fsync through any descriptor of a file reaches the
//! file, so the `db` file is opened once, here.
//!
//! **Space.** sled has no call to compact: its segment cleaner rewrites sparse segments by
//! itself, so [`Backend::compact`] keeps the trait's default.

use std::collections::HashSet;
use std::ffi::OsString;
use std::fs::File;
use std::ops::Bound;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use bytes::Bytes;
use driftkv_core::NamespaceId;

use crate::backend::{Backend, BackendError, Batch, Entries, Op, Tree};

const ENGINE: &str = "sled";
/// The sled tree everything lives in.
const TREE: &str = "driftkv";
/// The per-namespace trees of the layout before [`TREE`]: `ns/<id>`.
const LEGACY_NAMESPACE_PREFIX: &str = "ns/";

fn error(e: sled::Error) -> BackendError {
    match e {
        sled::Error::Io(io) => BackendError::Io(io),
        other => BackendError::Engine {
            engine: ENGINE,
            source: Box::new(other),
        },
    }
}

fn prefixed(tree: Tree, key: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(1 + key.len());
    k.push(tree.index());
    k.extend_from_slice(key);
    k
}

fn sync_dir(path: &Path) -> std::io::Result<()> {
    File::open(path)?.sync_all()
}

/// How long an open waits for the database's lock: a handle of this process just dropped
/// holds it until sled's background threads have stopped.
const LOCK_WAIT: Duration = Duration::from_secs(2);

fn open_db(dir: &Path) -> Result<sled::Db, BackendError> {
    let deadline = Instant::now() + LOCK_WAIT;
    loop {
        match sled::Config::new().path(dir).open() {
            // sled reports a held lock as an `Other` I/O error with this message.
            Err(sled::Error::Io(e))
                if e.to_string().starts_with("could not acquire lock")
                    && Instant::now() < deadline =>
            {
                std::thread::sleep(Duration::from_millis(20));
            }
            opened => return opened.map_err(error),
        }
    }
}

/// A sled database holding one node's data.
pub struct SledBackend {
    db: sled::Db,
    tree: sled::Tree,
    /// sled's data file.
    data_file: File,
    /// Where sled keeps values too large for its log.
    blobs: PathBuf,
    /// Blob files known to be synced.
    synced_blobs: Mutex<HashSet<OsString>>,
}

impl SledBackend {
    /// Opens (or creates) the database in `dir`, moving data of the earlier layout (a sled tree
    /// per namespace) into this one.
    pub fn open(dir: &Path) -> Result<Self, BackendError> {
        std::fs::create_dir_all(dir)?;
        let db = open_db(dir)?;
        let tree = db.open_tree(TREE).map_err(error)?;
        let backend = SledBackend {
            data_file: File::open(dir.join("db"))?,
            blobs: dir.join("blobs"),
            synced_blobs: Mutex::new(HashSet::new()),
            db,
            tree,
        };
        backend.migrate_legacy_layout()?;
        // Whatever sled created or left unsynced before this open is made durable now.
        backend.sync()?;
        sync_dir(dir)?;
        Ok(backend)
    }

    /// Whether `dir` holds a sled database.
    pub fn holds_database(dir: &Path) -> bool {
        dir.join("conf").is_file() && dir.join("db").is_file()
    }

    /// Copies the trees of the earlier layout (`namespaces`, `expiry`, `log`, `meta` and
    /// `ns/<id>`, whose keys are those of [`Tree::Namespaces`], [`Tree::Expiry`],
    /// [`Tree::Log`], [`Tree::Meta`] and, without their namespace id, [`Tree::Records`]) into
    /// [`TREE`], makes the copy durable, then drops them. Interrupted, it starts over at the
    /// next open: copying again writes the same keys.
    fn migrate_legacy_layout(&self) -> Result<(), BackendError> {
        let mut legacy = Vec::new();
        for name in self.db.tree_names() {
            let text = String::from_utf8_lossy(&name).into_owned();
            let prefix = match text.as_str() {
                "namespaces" => vec![Tree::Namespaces.index()],
                "expiry" => vec![Tree::Expiry.index()],
                "log" => vec![Tree::Log.index()],
                "meta" => vec![Tree::Meta.index()],
                other => match other
                    .strip_prefix(LEGACY_NAMESPACE_PREFIX)
                    .and_then(|id| id.parse::<NamespaceId>().ok())
                {
                    Some(id) => prefixed(Tree::Records, &id.0),
                    None => continue,
                },
            };
            legacy.push((name, prefix));
        }
        if legacy.is_empty() {
            return Ok(());
        }
        tracing::info!(
            trees = legacy.len(),
            "moving a sled database to the current layout"
        );
        for (name, prefix) in &legacy {
            let old = self.db.open_tree(name).map_err(error)?;
            let mut batch = sled::Batch::default();
            for (n, entry) in old.iter().enumerate() {
                let (k, v) = entry.map_err(error)?;
                batch.insert([prefix.as_slice(), &k].concat(), v);
                if n % 10_000 == 9_999 {
                    self.tree
                        .apply_batch(std::mem::take(&mut batch))
                        .map_err(error)?;
                }
            }
            self.tree.apply_batch(batch).map_err(error)?;
        }
        self.sync()?;
        for (name, _) in legacy {
            self.db.drop_tree(name).map_err(error)?;
        }
        self.sync()
    }

    /// Syncs the blob files written since the last sync, and then their directory.
    fn sync_new_blobs(&self) -> Result<(), BackendError> {
        let listing = match std::fs::read_dir(&self.blobs) {
            Ok(listing) => listing,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(e.into()),
        };
        let mut synced = self.synced_blobs.lock().expect("blob set lock");
        let mut present = HashSet::with_capacity(synced.len());
        let mut new = false;
        for entry in listing {
            let name = entry?.file_name();
            if !synced.contains(&name) {
                match File::open(self.blobs.join(&name)) {
                    Ok(file) => file.sync_data()?,
                    // sled removed it meanwhile (the value was replaced).
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                    Err(e) => return Err(e.into()),
                }
                new = true;
            }
            present.insert(name);
        }
        if new {
            sync_dir(&self.blobs)?;
        }
        *synced = present;
        Ok(())
    }
}

impl Backend for SledBackend {
    fn name(&self) -> &'static str {
        ENGINE
    }

    fn get(&self, tree: Tree, key: &[u8]) -> Result<Option<Bytes>, BackendError> {
        Ok(self
            .tree
            .get(prefixed(tree, key))
            .map_err(error)?
            .map(Bytes::from_owner))
    }

    fn range(&self, tree: Tree, from: Bound<&[u8]>, to: Bound<&[u8]>) -> Entries<'_> {
        let from = match from {
            Bound::Included(k) => Bound::Included(prefixed(tree, k)),
            Bound::Excluded(k) => Bound::Excluded(prefixed(tree, k)),
            Bound::Unbounded => Bound::Included(vec![tree.index()]),
        };
        let to = match to {
            Bound::Included(k) => Bound::Included(prefixed(tree, k)),
            Bound::Excluded(k) => Bound::Excluded(prefixed(tree, k)),
            Bound::Unbounded => Bound::Excluded(vec![tree.index() + 1]),
        };
        Box::new(self.tree.range((from, to)).map(|entry| {
            let (k, v) = entry.map_err(error)?;
            Ok((Bytes::from_owner(k).slice(1..), Bytes::from_owner(v)))
        }))
    }

    fn commit(&self, batch: Batch) -> Result<(), BackendError> {
        let mut sled_batch = sled::Batch::default();
        for op in batch.into_ops() {
            match op {
                // sled keeps values in its own buffers: a copy.
                Op::Put { tree, key, value } => {
                    sled_batch.insert(prefixed(tree, &key), value.as_ref())
                }
                Op::Remove { tree, key } => sled_batch.remove(prefixed(tree, &key)),
            }
        }
        self.tree.apply_batch(sled_batch).map_err(error)
    }

    fn sync(&self) -> Result<(), BackendError> {
        self.db.flush().map_err(error)?;
        self.data_file.sync_data()?;
        self.sync_new_blobs()
    }

    fn size_on_disk(&self) -> Result<u64, BackendError> {
        self.db.size_on_disk().map_err(error)
    }

    fn compact(&self, _tree: Tree) -> Result<(), BackendError> {
        // sled has no compaction call: it rewrites fragmented segments by itself.
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use driftkv_core::{Namespace, Record, Version};

    use super::*;
    use crate::Store;

    crate::store_suite!(|dir: &Path| {
        Store::open(Arc::new(SledBackend::open(dir).expect("open sled"))).expect("open the store")
    });

    /// A database of the layout before this one, a sled tree per namespace beside
    /// `namespaces`, `expiry`, `log` and `meta`, opens with everything in place.
    #[test]
    fn the_earlier_layout_is_moved_over() {
        let dir = tempfile::tempdir().unwrap();
        let id = NamespaceId([5; 16]);
        let namespace = Namespace {
            id,
            account_id: "a".into(),
            title: "t".into(),
            version: Version {
                timestamp: 1,
                origin: 1,
            },
        };
        let record = Record::tombstone(Version {
            timestamp: 2,
            origin: 1,
        });
        {
            let db = sled::open(dir.path()).unwrap();
            let tree = |name: &str| db.open_tree(name).unwrap();
            tree("namespaces").insert(id.0, namespace.encode()).unwrap();
            tree(&format!("ns/{id}"))
                .insert("k", record.encode())
                .unwrap();
            tree("meta")
                .insert("last_sequence", &7u64.to_be_bytes())
                .unwrap();
            tree("log").insert(7u64.to_be_bytes(), &b"x"[..]).unwrap();
            db.flush().unwrap();
        }
        let backend = Arc::new(SledBackend::open(dir.path()).unwrap());
        assert!(!backend
            .db
            .tree_names()
            .iter()
            .any(|n| n.starts_with(b"ns/") || n.as_ref() == b"namespaces"));
        let store = Store::open(backend).unwrap();
        assert_eq!(store.namespaces().unwrap(), vec![namespace]);
        assert_eq!(store.get(id, "k").unwrap(), Some(record));
        assert_eq!(store.log_bounds().unwrap().last, 7);
        assert_eq!(store.log_bounds().unwrap().oldest, 7);
    }

    /// Large values go to blob files of their own, which sled writes without syncing; a sync
    /// syncs each new one once.
    #[test]
    fn blob_files_are_synced_once() {
        let dir = tempfile::tempdir().unwrap();
        let backend = SledBackend::open(dir.path()).unwrap();
        let mut batch = Batch::new();
        batch.put(Tree::Records, b"big".to_vec(), vec![7; 1 << 20]);
        backend.commit(batch).unwrap();
        backend.sync().unwrap();
        let blobs: Vec<_> = std::fs::read_dir(dir.path().join("blobs"))
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert!(!blobs.is_empty(), "a 1 MiB value went to a blob file");
        let synced = backend.synced_blobs.lock().unwrap().clone();
        assert!(
            blobs.iter().all(|b| synced.contains(b)),
            "{blobs:?} {synced:?}"
        );
    }
}
