//! Storage faults made visible and survivable: [`Guarded`] wraps any [`Backend`] and
//! - refuses every batch while the free space of the data directory's filesystem is under a
//!   threshold (`storage.min_free_bytes`), with an error that says so, before the engine ever
//!   meets a full disk half-way through a write (an engine that hits `ENOSPC` in its journal
//!   may refuse all further writes until it is reopened); once space is back, the next batch
//!   goes through, no restart needed;
//! - remembers the last I/O error the engine reported, so that readiness can say why the node
//!   is not ready;
//! - writes and syncs a canary record on [`Guarded::probe`], the health probe: a probe that
//!   succeeds after an I/O error shows the engine takes writes again and clears it. An engine
//!   that refuses all writes after one failed (fjall poisons its database when its journal
//!   cannot be written) is closed and opened again by the probe once there is space, which
//!   is what a restart would do, without one.
//!
//! The guard is shared ([`StorageGuard`]) between the wrapper the store writes through and the
//! readiness endpoint that reports it.

use std::io;
use std::ops::Bound;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;

use crate::backend::{Backend, BackendError, Batch, Entries, Tree};
use crate::StoreError;

/// How long a reopen waits for the reads and writes under way on the old engine to finish.
const REOPEN_DRAIN: Duration = Duration::from_secs(5);

/// Free bytes a reopen needs at the least (opening replays the journal, and may write).
const REOPEN_MIN_FREE: u64 = 1024 * 1024;

/// Opens the engine again, for [`Guarded::reopening_with`].
pub type Opener = Box<dyn Fn() -> Result<Arc<dyn Backend>, StoreError> + Send + Sync>;

type EntriesOf<'a> = Entries<'a>;

self_cell::self_cell!(
    /// A scan together with the engine it reads, so that a reopen never closes an engine a
    /// scan still reads.
    struct OwnedEntries {
        owner: Arc<dyn Backend>,
        #[covariant]
        dependent: EntriesOf,
    }
);

impl Iterator for OwnedEntries {
    type Item = Result<(Bytes, Bytes), BackendError>;

    fn next(&mut self) -> Option<Self::Item> {
        self.with_dependent_mut(|_, entries| entries.next())
    }
}

/// [`Tree::Meta`] key of the health probe's canary record.
const CANARY: &[u8] = b"health_canary";

/// What the guard knows about its storage, for readiness.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StorageHealth {
    /// Whether the node may take writes: enough free space, and no I/O error since the last
    /// probe that succeeded.
    pub ready: bool,
    /// Why (not) ready, for an operator.
    pub reason: String,
    /// Free bytes on the data directory's filesystem (available to the process), if known.
    pub free_bytes: Option<u64>,
    /// The configured threshold under which writes are refused.
    pub min_free_bytes: u64,
}

/// The storage state one node's [`Guarded`] backend and its readiness endpoint share.
pub struct StorageGuard {
    dir: PathBuf,
    min_free_bytes: u64,
    /// The last I/O error the engine reported, until a probe succeeds.
    failure: Mutex<Option<Failure>>,
}

/// A failure of the engine the guard remembers.
#[derive(Clone)]
struct Failure {
    /// What the engine reported.
    error: String,
    /// Whether it was for want of space, so that the errors of an engine unusable after it
    /// say so (507) rather than only that it is unusable (503).
    out_of_space: bool,
}

impl StorageGuard {
    /// A guard of the data directory `dir`, refusing writes while its filesystem has less than
    /// `min_free_bytes` free (0 turns the check off).
    pub fn new(dir: &Path, min_free_bytes: u64) -> Arc<Self> {
        Arc::new(StorageGuard {
            dir: dir.to_owned(),
            min_free_bytes,
            failure: Mutex::new(None),
        })
    }

    /// Bytes free for the process on the data directory's filesystem.
    pub fn free_bytes(&self) -> io::Result<u64> {
        let stat = rustix::fs::statvfs(&self.dir)?;
        Ok(stat.f_bavail.saturating_mul(stat.f_frsize))
    }

    /// Refuses a write while free space is under the threshold. Space that cannot be measured
    /// is not a reason to refuse: the engine's own errors still tell.
    fn check_space(&self) -> Result<(), BackendError> {
        if self.min_free_bytes == 0 {
            return Ok(());
        }
        match self.free_bytes() {
            Ok(free) if free < self.min_free_bytes => Err(BackendError::Io(io::Error::new(
                io::ErrorKind::StorageFull,
                format!(
                    "{} has {free} bytes free, under storage.min_free_bytes ({}); writes resume \
                     once space is freed",
                    self.dir.display(),
                    self.min_free_bytes
                ),
            ))),
            Ok(_) => Ok(()),
            Err(e) => {
                tracing::debug!(error = %e, dir = %self.dir.display(), "cannot measure free space");
                Ok(())
            }
        }
    }

    /// Notes an engine's failure to write, for readiness. An engine unusable after an earlier
    /// failure reports that failure's cause: the earlier one is kept as the reason, and the
    /// error says whether it was a full disk.
    fn observe<T>(&self, result: Result<T, BackendError>) -> Result<T, BackendError> {
        let Err(e) = result else {
            return result;
        };
        let mut failure = self.failure.lock().expect("storage failure lock");
        if let BackendError::Unusable { reason, .. } = &e {
            if let Some(earlier) = failure.as_ref() {
                return Err(unusable_after(reason, earlier));
            }
        }
        if failure.is_none() {
            tracing::error!(error = %e, dir = %self.dir.display(), "storage I/O failed; the node reports not ready until a health probe succeeds");
        }
        *failure = Some(Failure {
            error: e.to_string(),
            out_of_space: e.is_out_of_space(),
        });
        Err(e)
    }

    /// The error of an engine that cannot be used now: `reason`, after the failure remembered,
    /// if any. Out of space only for a write (`writing`) after a full disk: a read is not
    /// refused for want of space.
    fn unusable(&self, reason: &str, writing: bool) -> BackendError {
        let failure = self.failure.lock().expect("storage failure lock");
        match failure.as_ref() {
            Some(earlier) => {
                let mut error = unusable_after(reason, earlier);
                if let BackendError::Unusable { out_of_space, .. } = &mut error {
                    *out_of_space &= writing;
                }
                error
            }
            None => BackendError::Unusable {
                reason: reason.to_owned(),
                out_of_space: false,
            },
        }
    }

    /// The state as last observed, with free space measured now (no write).
    pub fn health(&self) -> StorageHealth {
        let free = self.free_bytes().ok();
        let failure = self.failure.lock().expect("storage failure lock").clone();
        let low = free.is_some_and(|free| free < self.min_free_bytes);
        let (ready, reason) = match (failure.map(|f| f.error), low) {
            (Some(error), _) => (
                false,
                format!("{error} (the health probe retries; writes may fail until it succeeds)"),
            ),
            (None, true) => (
                false,
                format!(
                    "{} has {} bytes free, under storage.min_free_bytes ({}): writes are refused",
                    self.dir.display(),
                    free.unwrap_or_default(),
                    self.min_free_bytes
                ),
            ),
            (None, false) => (true, "storage takes writes".to_owned()),
        };
        StorageHealth {
            ready,
            reason,
            free_bytes: free,
            min_free_bytes: self.min_free_bytes,
        }
    }
}

/// [`BackendError::Unusable`] for `reason`, after the `earlier` failure that caused it: out of
/// space if that was.
fn unusable_after(reason: &str, earlier: &Failure) -> BackendError {
    BackendError::Unusable {
        reason: format!("{reason} (after: {})", earlier.error),
        out_of_space: earlier.out_of_space,
    }
}

/// A [`Backend`] whose writes pass through a [`StorageGuard`], and whose engine the health
/// probe may close and open again.
pub struct Guarded {
    /// The engine; `None` while the probe reopens it, and after a reopen that failed.
    inner: RwLock<Option<Arc<dyn Backend>>>,
    name: &'static str,
    guard: Arc<StorageGuard>,
    reopen: Option<Opener>,
}

impl Guarded {
    /// `inner`, guarded by `guard`.
    pub fn new(inner: Arc<dyn Backend>, guard: Arc<StorageGuard>) -> Self {
        Guarded {
            name: inner.name(),
            inner: RwLock::new(Some(inner)),
            guard,
            reopen: None,
        }
    }

    /// Lets the probe open the engine again with `open` when it still fails after an error.
    pub fn reopening_with(mut self, open: Opener) -> Self {
        self.reopen = Some(open);
        self
    }

    /// The guard.
    pub fn guard(&self) -> &Arc<StorageGuard> {
        &self.guard
    }

    /// The engine, held for one call (a reopen waits for it); for a write if `writing`.
    fn engine(&self, writing: bool) -> Result<Arc<dyn Backend>, BackendError> {
        self.inner
            .read()
            .expect("engine lock")
            .clone()
            .ok_or_else(|| {
                self.guard.unusable(
                    "the storage engine is closed after a failure; the health probe is opening it again",
                    writing,
                )
            })
    }

    /// A scan `read` makes of the engine, holding the engine for as long as the scan lives.
    fn scan(&self, read: impl for<'e> FnOnce(&'e Arc<dyn Backend>) -> Entries<'e>) -> Entries<'_> {
        match self.engine(false) {
            Ok(engine) => Box::new(OwnedEntries::new(engine, read)),
            Err(e) => Box::new(std::iter::once(Err(e))),
        }
    }

    /// The health probe: writes and syncs a canary record (unless free space is under the
    /// threshold, when a write would be refused anyway). A success clears a remembered I/O
    /// error; a failure with room on the disk reopens the engine (when it may) and tries once
    /// more. Blocks on the sync and the reopen: run it off the async threads.
    pub fn probe(&self) -> StorageHealth {
        if self.guard.check_space().is_err() {
            return self.guard.health();
        }
        let mut written = self.write_canary();
        if written.is_err() && self.reopen.is_some() {
            let room = self
                .guard
                .free_bytes()
                .is_ok_and(|free| free >= REOPEN_MIN_FREE.max(self.guard.min_free_bytes));
            if room {
                written = self.reopen().and_then(|()| self.write_canary());
            }
        }
        match written {
            Ok(()) => {
                let cleared = self
                    .guard
                    .failure
                    .lock()
                    .expect("storage failure lock")
                    .take();
                if let Some(Failure { error, .. }) = cleared {
                    tracing::info!(%error, "storage takes writes again");
                }
            }
            Err(e) => tracing::warn!(error = %e, "the storage health probe failed"),
        }
        self.guard.health()
    }

    fn write_canary(&self) -> Result<(), BackendError> {
        let stamp = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        let mut batch = Batch::new();
        batch.put(Tree::Meta, CANARY.to_vec(), stamp.to_be_bytes().to_vec());
        // Closed only after a failure the guard remembers already.
        let engine = self.engine(true)?;
        self.guard.observe(engine.commit(batch))?;
        self.guard.observe(engine.sync())
    }

    /// Closes the engine, once no call or scan uses it any more, and opens it again: what it
    /// holds on disk is every batch it acknowledged (its journal is replayed), and nothing of
    /// a batch that failed. Calls made meanwhile fail at once (rather than block a thread)
    /// with an error that says the engine is being reopened.
    fn reopen(&self) -> Result<(), BackendError> {
        let Some(open) = &self.reopen else {
            return Ok(());
        };
        let old = self.inner.write().expect("engine lock").take();
        if let Some(old) = old {
            let deadline = Instant::now() + REOPEN_DRAIN;
            while Arc::strong_count(&old) > 1 {
                if Instant::now() >= deadline {
                    *self.inner.write().expect("engine lock") = Some(old);
                    return Err(BackendError::Io(io::Error::other(
                        "the storage engine is still in use; reopening it later",
                    )));
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            drop(old);
        }
        tracing::warn!(dir = %self.guard.dir.display(), "reopening the storage engine after a failure");
        let engine = open().map_err(|e| {
            BackendError::Io(io::Error::other(format!(
                "reopening the storage engine failed: {e}"
            )))
        })?;
        *self.inner.write().expect("engine lock") = Some(engine);
        Ok(())
    }
}

impl Backend for Guarded {
    fn name(&self) -> &'static str {
        self.name
    }

    fn get(&self, tree: Tree, key: &[u8]) -> Result<Option<Bytes>, BackendError> {
        self.engine(false)?.get(tree, key)
    }

    fn get_head(&self, tree: Tree, key: &[u8], len: usize) -> Result<Option<Bytes>, BackendError> {
        self.engine(false)?.get_head(tree, key, len)
    }

    fn range(&self, tree: Tree, from: Bound<&[u8]>, to: Bound<&[u8]>) -> Entries<'_> {
        self.scan(|engine| engine.range(tree, from, to))
    }

    fn range_heads(
        &self,
        tree: Tree,
        from: Bound<&[u8]>,
        to: Bound<&[u8]>,
        len: usize,
    ) -> Entries<'_> {
        self.scan(|engine| engine.range_heads(tree, from, to, len))
    }

    fn commit(&self, batch: Batch) -> Result<(), BackendError> {
        self.guard.check_space()?;
        let engine = self.engine(true)?;
        self.guard.observe(engine.commit(batch))
    }

    fn sync(&self) -> Result<(), BackendError> {
        let engine = self.engine(true)?;
        self.guard.observe(engine.sync())
    }

    fn size_on_disk(&self) -> Result<u64, BackendError> {
        self.engine(false)?.size_on_disk()
    }

    fn compact(&self, tree: Tree) -> Result<(), BackendError> {
        let engine = self.engine(true)?;
        self.guard.observe(engine.compact(tree))
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicBool, Ordering};

    use super::*;
    use crate::FjallBackend;

    /// A backend over a real engine whose writes fail with an I/O error while `broken`, and
    /// whose next commits fail with the errors queued in `failures`.
    struct Failing {
        inner: FjallBackend,
        broken: Arc<AtomicBool>,
        failures: Mutex<std::collections::VecDeque<BackendError>>,
    }

    impl Failing {
        fn open(dir: &Path, broken: &Arc<AtomicBool>) -> Arc<Self> {
            Arc::new(Failing {
                inner: FjallBackend::open(dir).unwrap(),
                broken: broken.clone(),
                failures: Mutex::default(),
            })
        }

        /// The next commit fails with `error`.
        fn fail_next(&self, error: BackendError) {
            self.failures.lock().unwrap().push_back(error);
        }

        fn fail(&self) -> Result<(), BackendError> {
            if let Some(error) = self.failures.lock().unwrap().pop_front() {
                return Err(error);
            }
            if self.broken.load(Ordering::SeqCst) {
                Err(BackendError::Io(io::Error::other("device failed")))
            } else {
                Ok(())
            }
        }
    }

    impl Backend for Failing {
        fn name(&self) -> &'static str {
            "failing"
        }
        fn get(&self, tree: Tree, key: &[u8]) -> Result<Option<Bytes>, BackendError> {
            self.inner.get(tree, key)
        }
        fn range(&self, tree: Tree, from: Bound<&[u8]>, to: Bound<&[u8]>) -> Entries<'_> {
            self.inner.range(tree, from, to)
        }
        fn commit(&self, batch: Batch) -> Result<(), BackendError> {
            self.fail()?;
            self.inner.commit(batch)
        }
        fn sync(&self) -> Result<(), BackendError> {
            self.fail()?;
            self.inner.sync()
        }
        fn size_on_disk(&self) -> Result<u64, BackendError> {
            self.inner.size_on_disk()
        }

        fn compact(&self, tree: Tree) -> Result<(), BackendError> {
            self.fail()?;
            self.inner.compact(tree)
        }
    }

    fn put(key: &[u8]) -> Batch {
        let mut batch = Batch::new();
        batch.put(Tree::Records, key.to_vec(), b"v".to_vec());
        batch
    }

    /// Compaction reaches the engine under the guard, and its failure is an I/O error like any
    /// other (a wrapper that kept the trait's do-nothing would never return space).
    #[test]
    fn compaction_goes_through_to_the_engine() {
        let dir = tempfile::tempdir().unwrap();
        let broken = Arc::new(AtomicBool::new(false));
        let guard = StorageGuard::new(dir.path(), 0);
        let guarded = Guarded::new(Failing::open(dir.path(), &broken), guard.clone());
        guarded.compact(Tree::Records).unwrap();
        broken.store(true, Ordering::SeqCst);
        assert!(guarded.compact(Tree::Records).unwrap_err().is_io());
        assert!(!guard.health().ready);
    }

    #[test]
    fn an_io_error_makes_the_node_unready_until_a_probe_succeeds() {
        let dir = tempfile::tempdir().unwrap();
        let broken = Arc::new(AtomicBool::new(false));
        let failing = Failing::open(dir.path(), &broken);
        let guard = StorageGuard::new(dir.path(), 0);
        let guarded = Guarded::new(failing.clone(), guard.clone());
        guarded.commit(put(b"a")).unwrap();
        assert!(guarded.probe().ready);

        broken.store(true, Ordering::SeqCst);
        assert!(guarded.commit(put(b"b")).unwrap_err().is_io());
        let health = guard.health();
        assert!(!health.ready);
        assert!(health.reason.contains("device failed"), "{health:?}");
        // A probe while the device still fails leaves it so.
        assert!(!guarded.probe().ready);
        // Reads go on meanwhile.
        assert!(guarded.get(Tree::Records, b"a").unwrap().is_some());

        broken.store(false, Ordering::SeqCst);
        // A write that gets through is not enough: only the probe's write and sync clear it.
        guarded.commit(put(b"c")).unwrap();
        assert!(!guard.health().ready);
        let health = guarded.probe();
        assert!(health.ready, "{health:?}");
        assert!(guarded.get(Tree::Meta, CANARY).unwrap().is_some());
    }

    #[test]
    fn an_engine_that_keeps_failing_is_opened_again_and_keeps_what_it_acknowledged() {
        let dir = tempfile::tempdir().unwrap();
        // Stays broken until the engine is opened again, as a poisoned fjall database does.
        let broken = Arc::new(AtomicBool::new(false));
        let guard = StorageGuard::new(dir.path(), 0);
        let reopen = {
            let (dir, broken) = (dir.path().to_owned(), broken.clone());
            Box::new(move || {
                broken.store(false, Ordering::SeqCst);
                Ok(Failing::open(&dir, &broken) as Arc<dyn Backend>)
            })
        };
        let guarded =
            Guarded::new(Failing::open(dir.path(), &broken), guard.clone()).reopening_with(reopen);
        guarded.commit(put(b"kept")).unwrap();
        guarded.sync().unwrap();
        broken.store(true, Ordering::SeqCst);
        assert!(guarded.commit(put(b"lost")).is_err());
        // A scan holds the engine it reads; the reopen waits for it to end.
        let mut scan = guarded.range(Tree::Records, Bound::Unbounded, Bound::Unbounded);
        let health = {
            let first = scan.next().unwrap().unwrap();
            assert_eq!(&first.0[..], b"kept");
            drop(scan);
            guarded.probe()
        };
        assert!(health.ready, "{health:?}");
        assert!(guarded.get(Tree::Records, b"kept").unwrap().is_some());
        assert!(guarded.get(Tree::Records, b"lost").unwrap().is_none());
        guarded.commit(put(b"after")).unwrap();
        assert!(guarded.get(Tree::Records, b"after").unwrap().is_some());
    }

    /// What fjall reports once poisoned.
    fn poisoned() -> BackendError {
        BackendError::Unusable {
            reason: "poisoned".into(),
            out_of_space: false,
        }
    }

    /// Found by review: a full disk gave 500 "internal error: fjall failed: Poisoned" for the
    /// writes after it, and "storage engine is closed" while the probe reopened it.
    #[test]
    fn an_engine_unusable_after_a_failure_says_why_not_internal_error() {
        let dir = tempfile::tempdir().unwrap();
        let broken = Arc::new(AtomicBool::new(false));
        let failing = Failing::open(dir.path(), &broken);
        let guard = StorageGuard::new(dir.path(), 0);
        let guarded = Guarded::new(failing.clone(), guard.clone());
        let kv = |e: BackendError| driftkv_core::KvError::from(StoreError::from(e));

        // After a full disk: 507, whose message names the full disk.
        failing.fail_next(BackendError::Io(io::Error::from(
            io::ErrorKind::StorageFull,
        )));
        failing.fail_next(poisoned());
        assert_eq!(kv(guarded.commit(put(b"a")).unwrap_err()).status(), 507);
        let after = kv(guarded.commit(put(b"b")).unwrap_err());
        assert_eq!((after.status(), after.code()), (507, 10054), "{after}");
        assert!(after.to_string().contains("poisoned"), "{after}");
        // Readiness keeps the cause.
        assert!(
            guard.health().reason.contains("no storage space"),
            "{:?}",
            guard.health()
        );

        // After another failure: 503 with Retry-After.
        assert!(guarded.probe().ready);
        failing.fail_next(BackendError::Io(io::Error::other("device failed")));
        failing.fail_next(poisoned());
        assert_eq!(kv(guarded.commit(put(b"c")).unwrap_err()).status(), 500);
        let after = kv(guarded.commit(put(b"d")).unwrap_err());
        assert_eq!((after.status(), after.code()), (503, 10050), "{after}");
        assert!(after.retry_after_secs().is_some());
        assert!(after.to_string().contains("device failed"), "{after}");
    }

    #[test]
    fn an_engine_being_opened_again_is_unavailable_not_an_internal_error() {
        let dir = tempfile::tempdir().unwrap();
        let broken = Arc::new(AtomicBool::new(false));
        let guard = StorageGuard::new(dir.path(), 0);
        let reopen: Opener = Box::new(|| {
            Err(StoreError::Backend(Arc::new(BackendError::Io(
                io::Error::other("still failing"),
            ))))
        });
        let failing = Failing::open(dir.path(), &broken);
        let guarded = Guarded::new(failing.clone(), guard.clone()).reopening_with(reopen);
        let kv = |e: BackendError| driftkv_core::KvError::from(StoreError::from(e));
        failing.fail_next(BackendError::Io(io::Error::from(
            io::ErrorKind::StorageFull,
        )));
        assert!(guarded.commit(put(b"a")).is_err());
        // The probe's write meets the poisoned engine; it closes it and fails to open it
        // again: it stays closed.
        failing.fail_next(poisoned());
        drop(failing);
        assert!(!guarded.probe().ready);
        let write = kv(guarded.commit(put(b"b")).unwrap_err());
        assert_eq!((write.status(), write.code()), (507, 10054), "{write}");
        // A read is not refused for want of space: the engine is unavailable for now.
        let read = kv(guarded.get(Tree::Records, b"a").unwrap_err());
        assert_eq!((read.status(), read.code()), (503, 10050), "{read}");
        assert!(read.retry_after_secs().is_some());
    }

    #[test]
    fn writes_are_refused_under_the_free_space_threshold() {
        let dir = tempfile::tempdir().unwrap();
        let engine = Arc::new(FjallBackend::open(dir.path()).unwrap());
        // More than any test machine has free.
        let guard = StorageGuard::new(dir.path(), u64::MAX);
        let guarded = Guarded::new(engine, guard.clone());
        let refused = guarded.commit(put(b"a")).unwrap_err();
        let BackendError::Io(io) = &refused else {
            panic!("{refused}")
        };
        assert_eq!(io.kind(), io::ErrorKind::StorageFull);
        assert!(refused.to_string().contains("storage.min_free_bytes"));
        assert!(guarded.get(Tree::Records, b"a").unwrap().is_none());
        let health = guarded.probe();
        assert!(!health.ready);
        assert!(health.reason.contains("writes are refused"), "{health:?}");
        // Refusing for want of space is not an I/O error of the engine.
        assert!(guard.failure.lock().unwrap().is_none());
    }
}
