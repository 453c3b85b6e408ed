//! Following central's replication log.
//!
//! The follower subscribes from one past the replica's applied sequence, applies each batch
//! of entries (last-write-wins, with the applied sequence in the same atomic step, so a
//! restart resumes with no gap and no duplicate), and notes central's heartbeats to know how
//! far behind it is. When central says the log no longer reaches back far enough, it installs
//! a snapshot and subscribes again after it. Any failure (central down, a silent stream, a
//! network cut) ends the attempt; the follower reconnects with backoff, by itself.
//!
//! Central sends this edge's own writes as their sequences alone: the edge applied them when
//! central acknowledged them. Should one of them not have been applied here (the local commit
//! failed, the reply was lost, a snapshot replaced the replica since), the follower subscribes
//! again asking for everything up to the highest sequence central acknowledged to it whole.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use driftkv_core::upstream::{LogBatch, ReplicationEvent, Subscription};
use driftkv_core::{Change, KvError, NamespaceId, Record};
use driftkv_store::reads::blocking;
use driftkv_store::Purged;
use futures::StreamExt as _;

use crate::Edge;

/// Longest wait between two snapshot chunks.
const SNAPSHOT_SILENCE: Duration = Duration::from_secs(60);
/// Reconnection backoff bounds.
const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(2);

/// Starts following central. The task runs until the runtime shuts down.
pub fn spawn_follower(edge: Arc<Edge>) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut backoff = BACKOFF_MIN;
        let mut was_connected = false;
        // Entries up to this sequence are asked for whole, this edge's own writes included.
        let mut full_through = 0;
        loop {
            let outcome = follow(&edge, &mut full_through).await;
            let connected = edge.status.borrow().connected;
            if connected {
                backoff = BACKOFF_MIN;
            }
            match outcome {
                Ok(()) => continue,
                // Log a lost connection once, not on every retry.
                Err(e) if connected || !was_connected => {
                    tracing::warn!(error = %e, "replication stream down; reconnecting")
                }
                Err(e) => tracing::debug!(error = %e, "reconnect failed"),
            }
            was_connected = connected;
            edge.status.send_modify(|s| s.connected = false);
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(BACKOFF_MAX);
        }
    })
}

/// One subscription, until it fails. Returns `Ok` to subscribe again at once: after
/// installing a snapshot (from the snapshot's sequence), or on meeting one of this edge's own
/// writes that it did not apply (with `full_through` raised to bring those whole).
async fn follow(edge: &Arc<Edge>, full_through: &mut u64) -> Result<(), KvError> {
    let from = edge.store.applied_sequence()? + 1;
    let subscription = Subscription {
        node_id: edge.options.node_id,
        from,
        writer: Some(edge.writer),
        full_through: *full_through,
    };
    let mut stream = edge.upstream.subscribe(subscription).await?;
    loop {
        let event = tokio::time::timeout(edge.options.stream_silence, stream.next())
            .await
            .map_err(|_| KvError::Unavailable("central went silent".into()))?
            .ok_or_else(|| KvError::Unavailable("central ended the stream".into()))??;
        match event {
            ReplicationEvent::Entries(batch) => {
                if let Some(missing) = apply(edge, batch).await? {
                    *full_through = missing.max(edge.highest_acknowledged());
                    tracing::info!(
                        missing,
                        full_through = *full_through,
                        "one of this edge's writes was not applied here; asking central for it"
                    );
                    return Ok(());
                }
            }
            ReplicationEvent::Heartbeat { durable_sequence } => heartbeat(edge, durable_sequence),
            ReplicationEvent::Horizon { sequence } => {
                edge.horizon.fetch_max(sequence, Ordering::SeqCst);
            }
            ReplicationEvent::SnapshotNeeded { oldest_retained } => {
                tracing::info!(
                    from,
                    oldest_retained,
                    "the replica needs a snapshot (it is behind the retained log, or was asked to resynchronise)"
                );
                drop(stream);
                install_snapshot(edge).await?;
                // The snapshot may hold older versions of keys this edge wrote since it
                // began: those writes must come again, whole.
                *full_through = (*full_through).max(edge.highest_acknowledged());
                return Ok(());
            }
        }
    }
}

/// Notes central's durable sequence; the edge is caught up when it has applied that far.
fn heartbeat(edge: &Edge, durable: u64) {
    let now_ms = edge.wall.now_ms();
    edge.status.send_modify(|s| {
        s.connected = true;
        s.central_durable = durable;
        if s.applied >= durable {
            s.caught_up_at_ms = Some(now_ms);
        }
    });
    if edge.status.borrow().caught_up_at_ms.is_some() {
        edge.bootstrapping.store(false, Ordering::Relaxed);
    }
}

/// Every `every`, purges the tombstones at or below central's horizon (as it last said) and
/// this replica's applied sequence whose grace period has passed: the rule central purges by
/// (see `docs/gc.md`). Stops once the edge is dropped.
pub fn spawn_gc(edge: &Arc<Edge>, every: Duration) -> tokio::task::JoinHandle<()> {
    let node = edge.options.node_id.to_string();
    driftkv_store::spawn_gc_rounds(Arc::downgrade(edge), &node, every, |edge| async move {
        collect_garbage(&edge).await
    })
}

/// One round of [`spawn_gc`].
async fn collect_garbage(edge: &Arc<Edge>) -> Result<Purged, KvError> {
    let horizon = edge.horizon.load(Ordering::SeqCst);
    if horizon == 0 {
        return Ok(Purged::default());
    }
    let cutoff = edge
        .wall
        .now_ms()
        .saturating_sub(edge.options.tombstone_grace.as_millis() as u64);
    blocking(&edge.store, move |store| {
        Ok(store.collect_garbage(horizon, cutoff)?)
    })
    .await
}

/// Bytes of changes a batch may carry to be applied on the follower's task itself rather than
/// on a blocking thread: a commit that small takes microseconds.
const INLINE_APPLY_BYTES: usize = 256 * 1024;

/// Applies a batch of log entries to the replica, except those of this edge's own writes that
/// it applied already when central acknowledged them. When the batch leaves out one of this
/// edge's writes that it did not apply, applies what comes before it and returns its
/// sequence.
#[tracing::instrument(name = "apply replicated batch", skip_all, fields(entries = batch.entries.len(), yours = batch.yours.len()))]
async fn apply(edge: &Arc<Edge>, batch: LogBatch) -> Result<Option<u64>, KvError> {
    let Some(mut last) = batch.last() else {
        return Ok(None);
    };
    let missing = edge
        .first_not_applied_here(&batch.yours, edge.options.stream_silence)
        .await;
    let mut entries = batch.entries;
    let mut yours = batch.yours;
    if let Some(missing) = missing {
        last = missing - 1;
        entries.retain(|entry| entry.sequence < missing);
        yours.retain(|sequence| *sequence < missing);
        if entries.is_empty() && yours.is_empty() {
            return Ok(Some(missing));
        }
    }
    let count = (entries.len() + yours.len()) as u64;
    let entries = edge.not_applied_here(entries, last);
    let bytes: usize = entries.iter().map(|e| e.change.size()).sum();
    let entries = if bytes <= INLINE_APPLY_BYTES {
        edge.store.apply_replicated(&entries, last)?;
        entries
    } else {
        blocking(&edge.store, move |store| {
            store.apply_replicated(&entries, last)?;
            Ok(entries)
        })
        .await?
    };
    // Once the replica holds them, so that a read after this finds them there.
    if edge.options.invalidate_on_replication {
        for entry in &entries {
            if let Change::Key { namespace, key, .. } = &entry.change {
                edge.cache.written(*namespace, key);
            }
        }
    }
    edge.entries_applied.inc_by(count);
    edge.status.send_modify(|s| {
        s.connected = true;
        s.applied = s.applied.max(last);
    });
    Ok(missing)
}

/// A run of a snapshot's records of one namespace: the namespace, the last key installed
/// before it, and the records.
type SnapshotRun = (NamespaceId, Option<String>, Vec<(String, Record)>);

/// Rebuilds the replica from a snapshot: namespaces central no longer has go, every
/// namespace's records become the snapshot's (local keys the snapshot lacks are removed, so
/// that a key whose tombstone central purged cannot come back; the rest is applied
/// last-write-wins), and the applied sequence becomes the snapshot's.
#[tracing::instrument(name = "install snapshot", skip_all)]
async fn install_snapshot(edge: &Arc<Edge>) -> Result<(), KvError> {
    let mut stream = edge.upstream.snapshot(edge.options.node_id).await?;
    let mut first = true;
    // Per namespace of the snapshot, the last key installed (records come in key order).
    let mut installed: HashMap<NamespaceId, Option<String>> = HashMap::new();
    // Keys of this edge's own writes that central logged after the snapshot began.
    let mut written_here: Arc<HashMap<NamespaceId, HashSet<String>>> = Arc::default();
    loop {
        let chunk = tokio::time::timeout(SNAPSHOT_SILENCE, stream.next())
            .await
            .map_err(|_| KvError::Unavailable("the snapshot stream went silent".into()))?
            .ok_or_else(|| KvError::Unavailable("the snapshot ended early".into()))??;
        if first {
            first = false;
            // Central sends the sequence the snapshot covers with its first chunk (one that
            // does not, from before it did, keeps the install removing them).
            if chunk.sequence > 0 {
                written_here = Arc::new(edge.written_here_after(chunk.sequence));
            }
            let namespaces = chunk.namespaces;
            installed = namespaces.iter().map(|ns| (ns.id, None)).collect();
            blocking(&edge.store, move |store| {
                for local in store.namespaces()? {
                    if !namespaces.iter().any(|ns| ns.id == local.id) {
                        // Deleted before the snapshot, or created after it began (its
                        // creation follows in the log): no tombstone.
                        store.drop_namespace(local.id)?;
                    }
                }
                for namespace in &namespaces {
                    store.put_namespace(namespace)?;
                }
                Ok(())
            })
            .await?;
        }
        // Records arrive namespace by namespace; install each namespace's run as one batch.
        let mut groups: Vec<SnapshotRun> = Vec::new();
        for (namespace, key, record) in chunk.records {
            match groups.last_mut() {
                Some((id, _, batch)) if *id == namespace => batch.push((key, record)),
                _ => {
                    let after = installed.get(&namespace).cloned().flatten();
                    groups.push((namespace, after, vec![(key, record)]));
                }
            }
        }
        for (id, _, batch) in &groups {
            installed.insert(*id, batch.last().map(|(key, _)| key.clone()));
        }
        if chunk.complete {
            // What follows the last key installed of each namespace is not at central.
            groups.extend(installed.drain().map(|(id, after)| (id, after, Vec::new())));
        }
        let complete = chunk.complete;
        let written_here = written_here.clone();
        blocking(&edge.store, move |store| {
            let none = HashSet::new();
            for (id, after, batch) in &groups {
                let keep = written_here.get(id).unwrap_or(&none);
                let last = complete && batch.is_empty();
                match store.install_snapshot_run(*id, after.as_deref(), batch, last, keep) {
                    // Deleted since: its deletion follows in the log.
                    Ok(_) | Err(driftkv_store::StoreError::NoSuchNamespace(_)) => {}
                    Err(e) => return Err(e.into()),
                }
            }
            Ok(())
        })
        .await?;
        if chunk.complete {
            let (sequence, written_through) = (chunk.sequence, chunk.written_through);
            blocking(&edge.store, move |store| {
                Ok(store.finish_snapshot(sequence, written_through)?)
            })
            .await?;
            // Entries up to the snapshot's sequence will not come; every later one is applied
            // again.
            edge.forget_applied_here(sequence);
            if edge.options.invalidate_on_replication {
                edge.cache.clear();
            }
            edge.status.send_modify(|s| s.applied = sequence);
            tracing::info!(sequence, "snapshot installed");
            edge.snapshots_installed.inc();
            return Ok(());
        }
    }
}

#[cfg(test)]
mod tests {
    use driftkv_core::{LiveValue, LogEntry, Namespace, Version};

    use super::*;
    use crate::testing::{central_in, edge_over};

    fn entry(sequence: u64, key: &str) -> LogEntry {
        LogEntry {
            sequence,
            change: Change::Key {
                namespace: NamespaceId([1; 16]),
                key: key.into(),
                record: Record {
                    version: Version {
                        timestamp: sequence,
                        origin: 1,
                    },
                    live: Some(LiveValue {
                        value: key.as_bytes().to_vec().into(),
                        metadata: None,
                        expiration: None,
                    }),
                },
            },
        }
    }

    /// Entries of writes this edge applied when central acknowledged them are skipped, not
    /// applied a second time (not even read), and still count as applied.
    #[tokio::test]
    async fn entries_applied_here_are_skipped() {
        let dir = tempfile::tempdir().unwrap();
        let (edge, counting) = edge_over(
            &dir.path().join("edge"),
            central_in(&dir.path().join("central")),
        );
        edge.store
            .put_namespace(&Namespace {
                id: NamespaceId([1; 16]),
                account_id: "a".into(),
                title: "t".into(),
                version: Version {
                    timestamp: 1,
                    origin: 1,
                },
            })
            .unwrap();
        let mine = [entry(5, "mine-5"), entry(6, "mine-6")];
        for e in &mine {
            let Change::Key { key, record, .. } = &e.change else {
                unreachable!()
            };
            edge.store
                .apply(NamespaceId([1; 16]), &[(key.clone(), record.clone())])
                .unwrap();
        }
        let noted = |keys: &[&str]| -> Vec<(String, Record)> {
            let record = entry(1, "x");
            let Change::Key { record, .. } = record.change else {
                unreachable!()
            };
            keys.iter()
                .map(|k| (k.to_string(), record.clone()))
                .collect()
        };
        let ns = NamespaceId([1; 16]);
        let generation = edge.notes_generation();
        edge.applied_here(
            ns,
            &noted(&["mine-5", "mine-6", "later"]),
            &[5, 6, 9],
            generation,
        );
        let batch = LogBatch {
            entries: vec![mine[0].clone(), entry(7, "theirs"), mine[1].clone()],
            yours: Vec::new(),
        };
        assert_eq!(apply(&edge, batch).await.unwrap(), None);
        let key = |k: &str| [&[1u8; 16][..], k.as_bytes()].concat();
        let (gets, puts) = (counting.gets(), counting.puts());
        assert_eq!(
            (gets.get(&key("mine-5")), puts.get(&key("mine-5"))),
            (Some(&1), Some(&1))
        );
        assert_eq!(
            (gets.get(&key("mine-6")), puts.get(&key("mine-6"))),
            (Some(&1), Some(&1))
        );
        assert_eq!(
            (gets.get(&key("theirs")), puts.get(&key("theirs"))),
            (Some(&1), Some(&1))
        );
        assert_eq!(edge.store.applied_sequence().unwrap(), 7);
        assert_eq!(edge.status.borrow().applied, 7);
        // Sequences past the batch are kept for a later one.
        let pending = |edge: &Edge| -> Vec<u64> {
            edge.applied_here
                .lock()
                .unwrap()
                .sequences
                .keys()
                .copied()
                .collect()
        };
        assert_eq!(pending(&edge), [9]);
        assert_eq!(
            edge.written_here_after(7),
            [(ns, ["later".to_string()].into())].into()
        );
        assert!(edge.written_here_after(9).is_empty());
        // Sequences the follower has passed are not noted any more.
        edge.applied_here(ns, &noted(&["old"]), &[3], generation);
        assert_eq!(pending(&edge), [9]);
        // A snapshot install forgets every note; a note of records applied before it (which
        // the install may have removed) is dropped, one applied after it kept.
        edge.forget_applied_here(9);
        edge.applied_here(ns, &noted(&["raced"]), &[10], generation);
        assert!(pending(&edge).is_empty());
        edge.applied_here(ns, &noted(&["after"]), &[11], edge.notes_generation());
        assert_eq!(pending(&edge), [11]);
    }

    /// One of this edge's writes left out of the stream before the edge noted it as applied
    /// (the reply and the stream race each other from central) is waited for while a call is
    /// under way, not fetched again; one that no call under way can explain is reported, and
    /// the batch applied up to it.
    #[tokio::test]
    async fn own_writes_wait_for_the_calls_under_way() {
        let dir = tempfile::tempdir().unwrap();
        let (edge, _) = edge_over(
            &dir.path().join("edge"),
            central_in(&dir.path().join("central")),
        );
        let ns = NamespaceId([1; 16]);
        let call = edge.call_starts();
        let noting = {
            let edge = edge.clone();
            tokio::spawn(async move {
                tokio::task::yield_now().await;
                let Change::Key { key, record, .. } = entry(3, "mine").change else {
                    unreachable!()
                };
                edge.applied_here(ns, &[(key, record)], &[3], edge.notes_generation());
                drop(call);
            })
        };
        let batch = LogBatch {
            entries: vec![entry(2, "theirs")],
            yours: vec![3],
        };
        assert_eq!(apply(&edge, batch).await.unwrap(), None);
        noting.await.unwrap();
        assert_eq!(edge.status.borrow().applied, 3);

        // Sequence 5 was never applied here, and no call is under way: the batch is applied
        // up to it, and it is reported.
        let batch = LogBatch {
            entries: vec![entry(4, "theirs-4"), entry(6, "theirs-6")],
            yours: vec![5],
        };
        assert_eq!(apply(&edge, batch).await.unwrap(), Some(5));
        assert_eq!(edge.status.borrow().applied, 4);
        assert_eq!(edge.store.applied_sequence().unwrap(), 4);
    }
}
