//! The commit pipeline: every write's changes pass through one committer task, which appends
//! whatever has queued up as one [`Store::append`] and then makes it durable with one sync.
//!
//! Merging matters more than it looks. Appends are serialized by the store anyway (log
//! sequences have no gaps), and with sled a flush costs about 50 µs for every transaction it
//! covers but little for the size of each: a thousand one-key transactions took 50 ms to flush,
//! one transaction of a thousand keys 0.4 ms. So the writers that queued up meanwhile share one
//! transaction, and the next batch is appended while the previous one is being flushed.

use std::sync::Arc;

use driftkv_core::{Change, KvError, LogEntry};
use driftkv_metrics::prometheus::Histogram;
use driftkv_metrics::COMMIT_BATCH_WRITERS;
use driftkv_store::Store;
use tokio::sync::{mpsc, oneshot, watch};

use crate::reads;
use crate::recent::RecentLog;

/// A batch stops taking more writers once it holds this many changes (a single larger bulk
/// write still goes whole).
const MAX_BATCH_CHANGES: usize = 10_000;

/// One writer's changes, and where to tell it the last sequence they took once durable.
struct Pending {
    changes: Vec<Change>,
    done: oneshot::Sender<Result<u64, KvError>>,
}

/// The sending side of the pipeline; the committer task ends when it is dropped.
pub(crate) struct Committer {
    queue: mpsc::UnboundedSender<Pending>,
}

impl Committer {
    /// Starts the committer task on `store`; it hands every entry it appends to `recent`,
    /// publishes every durable sequence to `durable` and its batch sizes under the node label
    /// `node`.
    pub(crate) fn start(
        store: Arc<dyn Store>,
        recent: Arc<RecentLog>,
        durable: watch::Sender<u64>,
        node: &str,
    ) -> Self {
        let (queue, requests) = mpsc::unbounded_channel();
        let batch_writers = COMMIT_BATCH_WRITERS.with_label_values(&[node]);
        tokio::spawn(run(
            store,
            recent,
            Arc::new(durable),
            requests,
            batch_writers,
        ));
        Committer { queue }
    }

    /// Appends `changes` to the log as one run of consecutive sequences and waits until they
    /// are durable. Returns the last sequence used.
    pub(crate) async fn commit(&self, changes: Vec<Change>) -> Result<u64, KvError> {
        let (done, outcome) = oneshot::channel();
        let stopped = || KvError::Internal("the commit pipeline has stopped".into());
        self.queue
            .send(Pending { changes, done })
            .map_err(|_| stopped())?;
        outcome.await.map_err(|_| stopped())?
    }
}

async fn run(
    store: Arc<dyn Store>,
    recent: Arc<RecentLog>,
    durable: Arc<watch::Sender<u64>>,
    mut requests: mpsc::UnboundedReceiver<Pending>,
    batch_writers: Histogram,
) {
    // A writer taken off the queue that did not fit the batch before; it starts the next.
    let mut carried: Option<Pending> = None;
    loop {
        let first = match carried.take() {
            Some(pending) => pending,
            None => match requests.recv().await {
                Some(pending) => pending,
                None => return,
            },
        };
        let mut batch = vec![first];
        let mut changes = batch[0].changes.len();
        while changes < MAX_BATCH_CHANGES {
            let Ok(next) = requests.try_recv() else { break };
            if changes + next.changes.len() > MAX_BATCH_CHANGES {
                carried = Some(next);
                break;
            }
            changes += next.changes.len();
            batch.push(next);
        }
        batch_writers.observe(batch.len() as f64);
        let recent = recent.clone();
        let appended =
            reads::blocking(&store, move |store| Ok(append(store, batch, &recent))).await;
        let appended = match appended {
            Ok(appended) => appended,
            Err(e) => {
                // The blocking task itself failed; its writers' senders went with it, so they
                // are told the pipeline stopped.
                tracing::error!(error = %e, "appending to the log failed");
                continue;
            }
        };
        // The sync runs beside the next batch's append; the group commit lets one flush cover
        // both when they meet.
        let store = store.clone();
        let durable = durable.clone();
        tokio::spawn(async move {
            let synced = store.sync().await.map_err(KvError::from);
            let last = appended
                .iter()
                .filter_map(|(_, outcome)| outcome.as_ref().ok().copied())
                .max();
            if let (Ok(()), Some(last)) = (&synced, last) {
                // Every append before these is covered by the same sync, so `last` is durable
                // along with everything below it.
                durable.send_if_modified(|durable| {
                    let newer = last > *durable;
                    if newer {
                        *durable = last;
                    }
                    newer
                });
            }
            for (done, outcome) in appended {
                let outcome = match (&synced, outcome) {
                    (Err(e), Ok(_)) => Err(e.clone()),
                    (_, outcome) => outcome,
                };
                let _ = done.send(outcome);
            }
        });
    }
}

type Appended = Vec<(oneshot::Sender<Result<u64, KvError>>, Result<u64, KvError>)>;

/// Appends every writer's changes as one append, and gives each writer the last sequence its
/// own changes took. When the merged append fails, the writers it did not commit are appended
/// one by one, so that one writer's failure (its namespace deleted meanwhile, say) is its own.
/// Every entry that made it into the log goes to `recent` as well.
fn append(store: &dyn Store, batch: Vec<Pending>, recent: &RecentLog) -> Appended {
    // Where each writer's changes sit in the merged run.
    let mut spans = Vec::with_capacity(batch.len());
    let mut all = Vec::new();
    let mut senders = Vec::with_capacity(batch.len());
    for pending in batch {
        let start = all.len();
        all.extend(pending.changes);
        spans.push(start..all.len());
        senders.push(pending.done);
    }
    let before = match store.log_bounds() {
        Ok(bounds) => bounds.last,
        Err(e) => {
            let e = KvError::from(e);
            return senders.into_iter().map(|s| (s, Err(e.clone()))).collect();
        }
    };
    // The store commits a merged append in runs that never split one writer's changes (key
    // changes run together, a namespace change runs alone, and a writer's changes are all of
    // one kind), so after a failure the committed prefix ends on a writer's boundary.
    let committed = match store.append(&all) {
        Ok(last) => (last - before) as usize,
        Err(e) => {
            tracing::debug!(error = %e, "a merged append failed; appending its writers one by one");
            match store.log_bounds() {
                Ok(bounds) => (bounds.last - before) as usize,
                // Without knowing what was committed, retrying could append a write twice.
                Err(_) => {
                    let e = KvError::from(e);
                    return senders.into_iter().map(|s| (s, Err(e.clone()))).collect();
                }
            }
        }
    };
    let outcomes: Vec<_> = spans
        .iter()
        .map(|span| {
            if span.end <= committed {
                Ok(before + span.end as u64)
            } else if span.start < committed {
                Err(KvError::Internal(
                    "a write was only partly appended to the log".into(),
                ))
            } else {
                store.append(&all[span.clone()]).map_err(KvError::from)
            }
        })
        .collect();
    // Each writer's changes took the sequences up to the last one its append reports.
    let mut changes = all.into_iter();
    let mut entries = Vec::with_capacity(changes.len());
    for (span, outcome) in spans.iter().zip(&outcomes) {
        let own = changes.by_ref().take(span.len());
        match outcome {
            Ok(last) => {
                let first = last + 1 - span.len() as u64;
                let numbered = (first..).zip(own);
                entries.extend(numbered.map(|(sequence, change)| LogEntry { sequence, change }));
            }
            Err(_) => own.for_each(drop),
        }
    }
    recent.push(entries);
    senders.into_iter().zip(outcomes).collect()
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use driftkv_core::{LiveValue, NamespaceId, Record, Version};
    use driftkv_store::suite::ns;
    use driftkv_store::SledStore;

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

    fn open() -> (Arc<dyn Store>, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn Store> = Arc::new(SledStore::open(dir.path()).unwrap());
        store.append(&[Change::Namespace(ns(1))]).unwrap();
        (store, dir)
    }

    /// The key each log sequence holds.
    fn logged_keys(store: &dyn Store) -> HashMap<u64, String> {
        store
            .log_entries(1, 100_000)
            .unwrap()
            .into_iter()
            .filter_map(|entry| match entry.change {
                Change::Key { key, .. } => Some((entry.sequence, key)),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn a_failing_writer_in_a_merged_batch_fails_alone() {
        let (store, _dir) = open();
        let mut receivers = Vec::new();
        let batch: Vec<Pending> = [
            vec![put(1, "a1", 10), put(1, "a2", 11)],
            // Namespace 2 does not exist.
            vec![put(2, "b", 12)],
            vec![put(1, "c", 13)],
            vec![Change::Namespace(ns(3))],
            vec![put(3, "d", 14)],
        ]
        .into_iter()
        .map(|changes| {
            let (done, outcome) = oneshot::channel();
            receivers.push(outcome);
            Pending { changes, done }
        })
        .collect();
        let recent = RecentLog::new(1 << 20);
        let appended = append(store.as_ref(), batch, &recent);
        let outcomes: Vec<_> = appended.into_iter().map(|(_, o)| o).collect();
        assert_eq!(outcomes[1], Err(KvError::NamespaceNotFound));
        let logged = logged_keys(store.as_ref());
        for (outcome, last_key) in [(0, "a2"), (2, "c"), (4, "d")] {
            let sequence = outcomes[outcome].clone().expect("applied");
            assert_eq!(logged[&sequence], last_key);
        }
        assert!(outcomes[3].is_ok());
        assert_eq!(
            store.log_bounds().unwrap().last,
            6,
            "no gaps, nothing twice"
        );
        // The first entry was appended before the committer ran.
        let held = recent.read(2, 100).expect("the committed entries are held");
        assert_eq!(held, store.log_entries(2, 100).unwrap());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_commits_each_learn_their_own_durable_sequences() {
        let (store, _dir) = open();
        let (durable_tx, durable) = watch::channel(store.log_bounds().unwrap().last);
        let recent = Arc::new(RecentLog::new(1 << 20));
        let committer = Arc::new(Committer::start(
            store.clone(),
            recent.clone(),
            durable_tx,
            "test",
        ));
        let writers: Vec<_> = (0..200u64)
            .map(|i| {
                let committer = committer.clone();
                tokio::spawn(async move {
                    let keys = [format!("w{i}-x"), format!("w{i}-y")];
                    let changes = keys.iter().map(|k| put(1, k, 100 + i)).collect();
                    (keys, committer.commit(changes).await.expect("committed"))
                })
            })
            .collect();
        let mut results = Vec::new();
        for writer in writers {
            results.push(writer.await.unwrap());
        }
        let logged = logged_keys(store.as_ref());
        for ([x, y], last) in results {
            assert_eq!((&logged[&(last - 1)], &logged[&last]), (&x, &y));
            assert!(*durable.borrow() >= last, "acknowledged before durable");
        }
        assert_eq!(*durable.borrow(), 401);
        let held = recent.read(2, 1000).expect("every committed entry is held");
        assert_eq!(held, store.log_entries(2, 1000).unwrap());
    }
}
