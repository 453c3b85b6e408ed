//! The commit pipeline: every write's changes pass through one commit thread, which appends
//! whatever has queued up as one merged [`Store::append_writers`], makes it durable with one
//! [`Store::sync_blocking`] (an `fsync`/`fdatasync` through the engine), and only then tells
//! the writers their sequences and publishes the durable sequence to the replication streams.
//!
//! One thread, not tasks: a write costs one hand-off to the thread and one wake-up of its
//! writer, and the writers that queue up while a sync is under way share the next batch and
//! its sync. A sync costs a fraction of a millisecond to a few milliseconds whatever it
//! covers, so merging is what makes durable writes cheap (group commit).

use std::sync::mpsc;
use std::sync::Arc;
use std::thread::JoinHandle;

use driftkv_core::{Change, KvError, LogEntry};
use driftkv_metrics::prometheus::Histogram;
use driftkv_metrics::COMMIT_BATCH_WRITERS;
use driftkv_store::Store;
use tokio::sync::{oneshot, watch};

use crate::recent::RecentLog;
use crate::Logged;

/// A batch stops taking more submissions once it holds this many changes (a single larger
/// bulk write still goes whole).
const MAX_BATCH_CHANGES: usize = 10_000;

/// Each writer's outcome: the last sequence its changes took, once durable.
pub(crate) type Outcomes = Vec<Result<u64, KvError>>;

/// Writers' changes submitted together, the writer id they came with (see
/// [`crate::Logged::writer`]), and where to tell them their outcomes.
struct Pending {
    writers: Vec<Vec<Change>>,
    writer: Option<u64>,
    done: oneshot::Sender<Outcomes>,
}

/// The sending side of the pipeline; the commit thread ends when it is dropped.
pub(crate) struct Committer {
    queue: Option<mpsc::Sender<Pending>>,
    thread: Option<JoinHandle<()>>,
}

impl Committer {
    /// Starts the commit thread on `store`; it hands every entry it appends to `recent`,
    /// publishes every durable sequence to `durable` and its batch sizes under the node label
    /// `node`.
    pub(crate) fn start(
        store: Arc<Store>,
        recent: Arc<RecentLog>,
        durable: watch::Sender<u64>,
        node: &str,
    ) -> Result<Self, KvError> {
        let (queue, requests) = mpsc::channel();
        let batch_writers = COMMIT_BATCH_WRITERS.with_label_values(&[node]);
        let thread = std::thread::Builder::new()
            .name("driftkv-commit".into())
            .spawn(move || run(&store, &recent, &durable, &requests, &batch_writers))
            .map_err(|e| KvError::Internal(format!("cannot start the commit thread: {e}")))?;
        Ok(Committer {
            queue: Some(queue),
            thread: Some(thread),
        })
    }

    /// Appends each writer's changes to the log as one run of consecutive sequences, and
    /// waits until they are durable. Returns, per writer, the last sequence its changes took.
    /// The entries are held in the recent log under `writer`.
    pub(crate) async fn commit(&self, writer: Option<u64>, writers: Vec<Vec<Change>>) -> Outcomes {
        let count = writers.len();
        let stopped = || KvError::Internal("the commit pipeline has stopped".into());
        let (done, outcomes) = oneshot::channel();
        let sent = self.queue.as_ref().is_some_and(|queue| {
            let pending = Pending {
                writers,
                writer,
                done,
            };
            queue.send(pending).is_ok()
        });
        match outcomes.await {
            Ok(outcomes) if sent => outcomes,
            _ => (0..count).map(|_| Err(stopped())).collect(),
        }
    }
}

impl Drop for Committer {
    fn drop(&mut self) {
        // Closing the queue ends the thread once it has committed what was queued.
        drop(self.queue.take());
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// The commit thread's loop, until the queue closes.
fn run(
    store: &Store,
    recent: &RecentLog,
    durable: &watch::Sender<u64>,
    requests: &mpsc::Receiver<Pending>,
    batch_writers: &Histogram,
) {
    while let Ok(first) = requests.recv() {
        let mut changes: usize = first.writers.iter().map(Vec::len).sum();
        let mut batch = vec![first];
        while changes < MAX_BATCH_CHANGES {
            let Ok(next) = requests.try_recv() else { break };
            changes += next.writers.iter().map(Vec::len).sum::<usize>();
            batch.push(next);
        }
        batch_writers.observe(batch.iter().map(|p| p.writers.len()).sum::<usize>() as f64);
        let (outcomes, last) = append(store, batch, recent);
        let synced = store.sync_blocking().map_err(KvError::from);
        match (&synced, last) {
            (Ok(()), Some(last)) => {
                // Every append before these is covered by the same sync, so `last` is durable
                // along with everything below it.
                durable.send_if_modified(|durable| {
                    let newer = last > *durable;
                    *durable = (*durable).max(last);
                    newer
                });
            }
            (Err(e), _) => tracing::error!(error = %e, "syncing the store failed"),
            (Ok(()), None) => {}
        }
        for (done, outcomes) in outcomes {
            let outcomes = outcomes
                .into_iter()
                .map(|outcome| match (&synced, outcome) {
                    (Err(e), Ok(_)) => Err(e.clone()),
                    (_, outcome) => outcome,
                })
                .collect();
            let _ = done.send(outcomes);
        }
    }
}

/// Appends every writer's changes as one merged append, hands what it appended to `recent`,
/// and returns each submission's outcomes with the highest sequence appended, if any.
fn append(
    store: &Store,
    mut batch: Vec<Pending>,
    recent: &RecentLog,
) -> (Vec<(oneshot::Sender<Outcomes>, Outcomes)>, Option<u64>) {
    let mut results = {
        let mut writers: Vec<&mut [Change]> = batch
            .iter_mut()
            .flat_map(|pending| pending.writers.iter_mut().map(Vec::as_mut_slice))
            .collect();
        store.append_writers(&mut writers).into_iter()
    };
    let mut entries = Vec::new();
    let mut done = Vec::with_capacity(batch.len());
    for pending in batch {
        let mut outcomes = Vec::with_capacity(pending.writers.len());
        for changes in pending.writers {
            let result = results.next().expect("one result per writer");
            if let Ok(last) = result {
                let first = last + 1 - changes.len() as u64;
                let numbered = (first..).zip(changes);
                entries.extend(numbered.map(|(sequence, change)| Logged {
                    entry: LogEntry { sequence, change },
                    writer: pending.writer,
                }));
            }
            outcomes.push(result.map_err(KvError::from));
        }
        done.push((pending.done, outcomes));
    }
    let last = entries.last().map(|logged| logged.entry.sequence);
    recent.push(entries);
    (done, last)
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::ops::Bound;
    use std::sync::Mutex;
    use std::time::Duration;

    use bytes::Bytes;
    use driftkv_core::{LiveValue, NamespaceId, Record, Version};
    use driftkv_store::backend::{Batch, Entries, Op, Tree};
    use driftkv_store::suite::ns;
    use driftkv_store::{Backend, BackendError, EngineKind};

    use super::*;

    fn put(ns: u8, key: &str, timestamp: u64) -> Change {
        Change::Key {
            namespace: NamespaceId([ns; 16]),
            key: key.into(),
            record: Record {
                version: Version {
                    timestamp,
                    origin: 1,
                },
                live: Some(LiveValue {
                    value: key.as_bytes().to_vec().into(),
                    metadata: None,
                    expiration: None,
                }),
            },
        }
    }

    fn with_namespace(store: Store) -> Arc<Store> {
        store.append(&mut [Change::Namespace(ns(1))]).unwrap();
        Arc::new(store)
    }

    fn open(engine: EngineKind) -> (Arc<Store>, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        let store = driftkv_store::open(engine, dir.path()).unwrap();
        (with_namespace(store), dir)
    }

    /// The key each log sequence holds.
    fn logged_keys(store: &Store) -> HashMap<u64, String> {
        store
            .log_entries(1, 100_000, usize::MAX)
            .unwrap()
            .into_iter()
            .filter_map(|entry| match entry.change {
                Change::Key { key, .. } => Some((entry.sequence, key)),
                _ => None,
            })
            .collect()
    }

    fn pending(
        writer: Option<u64>,
        writers: Vec<Vec<Change>>,
    ) -> (Pending, oneshot::Receiver<Outcomes>) {
        let (done, outcomes) = oneshot::channel();
        let pending = Pending {
            writers,
            writer,
            done,
        };
        (pending, outcomes)
    }

    /// The entries held, without their writers.
    fn entries(held: Vec<Logged>) -> Vec<LogEntry> {
        held.into_iter().map(|logged| logged.entry).collect()
    }

    #[test]
    fn a_failing_writer_in_a_merged_batch_fails_alone() {
        let (store, _dir) = open(EngineKind::default());
        let (first, _) = pending(
            None,
            vec![
                vec![put(1, "a1", 10), put(1, "a2", 11)],
                // Namespace 2 does not exist.
                vec![put(2, "b", 12)],
            ],
        );
        let (second, _) = pending(
            Some(7),
            vec![
                vec![put(1, "c", 13)],
                vec![Change::Namespace(ns(3))],
                vec![put(3, "d", 14)],
            ],
        );
        let recent = RecentLog::new(1 << 20);
        let (done, last) = append(&store, vec![first, second], &recent);
        let outcomes: Vec<_> = done.into_iter().flat_map(|(_, o)| o).collect();
        assert_eq!(outcomes[1], Err(KvError::NamespaceNotFound));
        let logged = logged_keys(&store);
        for (outcome, last_key) in [(0, "a2"), (2, "c"), (4, "d")] {
            let sequence = outcomes[outcome].clone().expect("applied");
            assert_eq!(logged[&sequence], last_key);
        }
        assert!(outcomes[3].is_ok());
        assert_eq!(last, Some(6));
        assert_eq!(
            store.log_bounds().unwrap().last,
            6,
            "no gaps, nothing twice"
        );
        // The first entry was appended before the batch; each is held with its writer.
        let held = recent.read(2, 100).expect("the committed entries are held");
        let writers: Vec<_> = held.iter().map(|logged| logged.writer).collect();
        assert_eq!(writers, [None, None, Some(7), Some(7), Some(7)]);
        assert_eq!(
            entries(held),
            store.log_entries(2, 100, usize::MAX).unwrap()
        );
    }

    /// A value that arrived as a slice of a large buffer (a whole request's) is held for the
    /// replication streams as a slice of its own log entry, which does not hold that buffer.
    #[test]
    fn held_entries_do_not_hold_the_buffer_their_values_came_in() {
        let (store, _dir) = open(EngineKind::default());
        let request = Bytes::from(vec![b'r'; 1 << 20]);
        let mut change = put(1, "k", 10);
        if let Change::Key { record, .. } = &mut change {
            record.live.as_mut().unwrap().value = request.slice(1000..2000);
        }
        let (pending, _) = pending(None, vec![vec![change.clone()]]);
        let recent = RecentLog::new(1 << 20);
        append(&store, vec![pending], &recent);
        let held = entries(recent.read(2, 1).expect("held"));
        assert_eq!(held[0].change, change);
        let Change::Key { record, .. } = &held[0].change else {
            panic!("a key change");
        };
        let value = record.live.as_ref().unwrap().value.as_ptr_range();
        let buffer = request.as_ptr_range();
        assert!(value.end <= buffer.start || value.start >= buffer.end);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_commits_each_learn_their_own_durable_sequences() {
        let (store, _dir) = open(EngineKind::default());
        let (durable_tx, durable) = watch::channel(store.log_bounds().unwrap().last);
        let recent = Arc::new(RecentLog::new(1 << 20));
        let committer =
            Arc::new(Committer::start(store.clone(), recent.clone(), durable_tx, "test").unwrap());
        let writers: Vec<_> = (0..200u64)
            .map(|i| {
                let committer = committer.clone();
                tokio::spawn(async move {
                    let keys = [format!("w{i}-x"), format!("w{i}-y")];
                    let changes = keys.iter().map(|k| put(1, k, 100 + i)).collect();
                    let last = committer.commit(None, vec![changes]).await.remove(0);
                    (keys, last.expect("committed"))
                })
            })
            .collect();
        let mut results = Vec::new();
        for writer in writers {
            results.push(writer.await.unwrap());
        }
        let logged = logged_keys(&store);
        for ([x, y], last) in results {
            assert_eq!((&logged[&(last - 1)], &logged[&last]), (&x, &y));
            assert!(*durable.borrow() >= last, "acknowledged before durable");
        }
        assert_eq!(*durable.borrow(), 401);
        let held = recent.read(2, 1000).expect("every committed entry is held");
        assert_eq!(
            entries(held),
            store.log_entries(2, 1000, usize::MAX).unwrap()
        );
    }

    /// What happened, in order, to a store under the commit thread and to its writers.
    #[derive(Clone, Debug, PartialEq, Eq)]
    enum Event {
        /// A batch carrying log entries up to this sequence was committed.
        Appended(u64),
        /// A sync returned; it covered every batch committed before it began.
        Synced { covers: u64 },
        /// A writer was told its changes are durable up to this sequence.
        Acknowledged(u64),
    }

    /// A real engine whose syncs take `delay` longer, recording every append and sync.
    struct Recording {
        inner: Arc<dyn Backend>,
        delay: Duration,
        events: Arc<Mutex<Vec<Event>>>,
    }

    impl Recording {
        fn last_appended(&self) -> u64 {
            let events = self.events.lock().unwrap();
            events
                .iter()
                .filter_map(|e| match e {
                    Event::Appended(sequence) => Some(*sequence),
                    _ => None,
                })
                .max()
                .unwrap_or(0)
        }
    }

    impl Backend for Recording {
        fn name(&self) -> &'static str {
            "recording"
        }

        fn get(&self, tree: Tree, key: &[u8]) -> Result<Option<Bytes>, BackendError> {
            self.inner.get(tree, key)
        }

        fn get_head(
            &self,
            tree: Tree,
            key: &[u8],
            len: usize,
        ) -> Result<Option<Bytes>, BackendError> {
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
            let logged = batch
                .clone()
                .into_ops()
                .into_iter()
                .filter_map(|op| match op {
                    Op::Put {
                        tree: Tree::Log,
                        key,
                        ..
                    } => Some(u64::from_be_bytes(key.try_into().unwrap())),
                    _ => None,
                })
                .max();
            self.inner.commit(batch)?;
            if let Some(sequence) = logged {
                self.events.lock().unwrap().push(Event::Appended(sequence));
            }
            Ok(())
        }

        fn sync(&self) -> Result<(), BackendError> {
            let covers = self.last_appended();
            std::thread::sleep(self.delay);
            self.inner.sync()?;
            self.events.lock().unwrap().push(Event::Synced { covers });
            Ok(())
        }

        fn size_on_disk(&self) -> Result<u64, BackendError> {
            self.inner.size_on_disk()
        }

        fn compact(&self, tree: Tree) -> Result<(), BackendError> {
            self.inner.compact(tree)
        }
    }

    /// 100 writers at once against a store whose syncs take 20 ms: every acknowledgement
    /// comes after a sync that covers its sequence has returned, and each merged batch costs
    /// exactly one sync. Run on every engine.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn acknowledgements_follow_the_sync_of_their_batch_one_sync_per_batch() {
        for engine in [EngineKind::Sled, EngineKind::Fjall] {
            let dir = tempfile::tempdir().unwrap();
            let events = Arc::new(Mutex::new(Vec::new()));
            let inner = driftkv_store::open(engine, dir.path())
                .unwrap()
                .backend()
                .clone();
            let recording = Recording {
                inner,
                delay: Duration::from_millis(20),
                events: events.clone(),
            };
            let store = with_namespace(Store::open(Arc::new(recording)).unwrap());
            let (durable_tx, _durable) = watch::channel(store.log_bounds().unwrap().last);
            let recent = Arc::new(RecentLog::new(1 << 20));
            let committer =
                Arc::new(Committer::start(store.clone(), recent, durable_tx, "test").unwrap());
            let writers: Vec<_> = (0..100u64)
                .map(|i| {
                    let (committer, events) = (committer.clone(), events.clone());
                    tokio::spawn(async move {
                        let change = put(1, &format!("k{i}"), 100 + i);
                        let last = committer.commit(None, vec![vec![change]]).await.remove(0);
                        let last = last.expect("committed");
                        events.lock().unwrap().push(Event::Acknowledged(last));
                    })
                })
                .collect();
            for writer in writers {
                writer.await.unwrap();
            }
            let events = events.lock().unwrap().clone();
            let mut synced = 0;
            for event in &events {
                match event {
                    Event::Synced { covers } => synced = synced.max(*covers),
                    Event::Acknowledged(sequence) => assert!(
                        *sequence <= synced,
                        "{}: {sequence} acknowledged before its sync returned: {events:?}",
                        engine.name()
                    ),
                    Event::Appended(_) => {}
                }
            }
            let count = |f: fn(&Event) -> bool| events.iter().filter(|e| f(e)).count();
            let appends = count(|e| matches!(e, Event::Appended(_)));
            let syncs = count(|e| matches!(e, Event::Synced { .. }));
            // The namespace was appended without the committer, and so not synced.
            assert_eq!(syncs, appends - 1, "{}: {events:?}", engine.name());
            assert!(
                syncs < 20,
                "{}: 100 writers took {syncs} batches: writers are not merged",
                engine.name()
            );
            assert_eq!(count(|e| matches!(e, Event::Acknowledged(_))), 100);
        }
    }
}
