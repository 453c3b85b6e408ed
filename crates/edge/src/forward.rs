//! Forwarding writes to central.
//!
//! Every write a request makes goes into one queue. A task sends whatever has queued up as one
//! `WriteBatch` call, up to `MAX_IN_FLIGHT` calls at a time, so that writers arriving while
//! calls are under way share the next round trip to central and central's commit; each writer
//! is still checked, applied or refused on its own there. Once central answers, the task
//! applies the acknowledged records to the replica, all of them in one commit, so that each
//! write is visible at once where it was made, notes their sequences (the follower then skips
//! them when replication brings them: each write is applied once), drops the cache's entries
//! for their keys, and answers each writer. Large writes (a big value, a bulk write) make
//! their own call from their request's task instead, so that they never hold up the small ones
//! queued behind them.

use std::collections::HashMap;
use std::sync::{Arc, Weak};
use std::time::Duration;

use driftkv_core::upstream::{BatchOutcome, WriteRequest};
use driftkv_core::{KvError, NamespaceId, Record, Write, WriteResult};
use futures::stream::{FuturesUnordered, StreamExt as _};
use tokio::sync::{mpsc, oneshot};

use crate::link::MIN_THROUGHPUT;
use crate::{CallUnderWay, Edge};

/// Calls to central in flight at once. Writes arriving meanwhile queue up for the next call,
/// which is what makes calls carry many writes under load. With two, the writes that queue up
/// while central syncs one call's batch go to central at once and their batch is appended and
/// synced as soon as that sync returns, instead of waiting for the reply to cross back, be
/// applied here and answered. On a 2-core Intel machine (bench/writes.sh, 2026-11-27, one
/// round each, alternating) two carried 20-23% more writes/s than one at 50 connections and
/// 33% more at 8, at less CPU per write (42-44 against 48-52 µs at 50); three or four carried
/// no more than two. On an AMD machine a day earlier one had been as fast as two.
const MAX_IN_FLIGHT: usize = 2;

/// A call stops taking more writers once it carries this many bytes of keys, values and
/// metadata.
const MAX_CALL_BYTES: usize = 4 * 1024 * 1024;

/// Writers with more bytes than this make a call of their own (see [`forward_alone`]).
pub(crate) const LARGE_WRITE_BYTES: usize = 256 * 1024;

/// Bytes of values an edge applies on the task itself; a batch carrying more is applied on a
/// blocking thread.
const INLINE_APPLY_BYTES: usize = 256 * 1024;

/// One writer's writes, waiting to go to central.
pub(crate) struct Queued {
    pub(crate) account_id: String,
    pub(crate) namespace: NamespaceId,
    pub(crate) writes: Vec<Write>,
    /// Bytes of keys, values and metadata.
    pub(crate) payload: usize,
    pub(crate) done: oneshot::Sender<Result<Vec<WriteResult>, KvError>>,
}

/// Starts the forwarding task of `edge`; it ends when the returned queue is dropped.
pub(crate) fn start(edge: Weak<Edge>) -> mpsc::UnboundedSender<Queued> {
    let (queue, requests) = mpsc::unbounded_channel();
    tokio::spawn(run(edge, requests));
    queue
}

async fn run(edge: Weak<Edge>, mut requests: mpsc::UnboundedReceiver<Queued>) {
    let mut in_flight = FuturesUnordered::new();
    // A writer taken off the queue that did not fit the call before; it starts the next one.
    let mut carried: Option<Queued> = None;
    let mut open = true;
    loop {
        let room = in_flight.len() < MAX_IN_FLIGHT;
        tokio::select! {
            biased;
            Some(called) = in_flight.next() => {
                let Some(edge) = edge.upgrade() else { return };
                finish(&edge, called).await;
            }
            first = next(&mut carried, &mut requests), if open && room => {
                let Some(first) = first else {
                    open = false;
                    continue;
                };
                let Some(edge) = edge.upgrade() else { return };
                let batch = gather(first, &mut requests, &mut carried);
                in_flight.push(call(edge, batch));
            }
            else => return,
        }
    }
}

/// The carried writer, or the next one queued.
async fn next(
    carried: &mut Option<Queued>,
    requests: &mut mpsc::UnboundedReceiver<Queued>,
) -> Option<Queued> {
    match carried.take() {
        Some(queued) => Some(queued),
        None => requests.recv().await,
    }
}

/// `first` and whatever else is queued, up to [`MAX_CALL_BYTES`].
fn gather(
    first: Queued,
    requests: &mut mpsc::UnboundedReceiver<Queued>,
    carried: &mut Option<Queued>,
) -> Vec<Queued> {
    let mut bytes = first.payload;
    let mut batch = vec![first];
    while let Ok(queued) = requests.try_recv() {
        if bytes + queued.payload > MAX_CALL_BYTES {
            *carried = Some(queued);
            break;
        }
        bytes += queued.payload;
        batch.push(queued);
    }
    batch
}

/// A call made: its writers, central's reply, and the call, under way until its acknowledged
/// writes are applied.
struct Called {
    batch: Vec<Queued>,
    reply: Result<BatchOutcome, KvError>,
    under_way: CallUnderWay,
}

/// Sends one large writer's writes to central in a call of its own, from the caller's task,
/// then applies and answers them as a batch of one.
pub(crate) async fn forward_alone(edge: Arc<Edge>, queued: Queued) {
    let called = call(edge.clone(), vec![queued]).await;
    finish(&edge, called).await;
}

/// Sends `batch` to central as one call.
async fn call(edge: Arc<Edge>, batch: Vec<Queued>) -> Called {
    let under_way = edge.call_starts();
    let requests = batch
        .iter()
        .map(|queued| WriteRequest {
            account_id: queued.account_id.clone(),
            namespace: queued.namespace,
            // Values are reference-counted `Bytes`: cloning them copies no data.
            writes: queued.writes.clone(),
        })
        .collect();
    // The stream leaves out the writes of a call made with the edge's writer id, since the
    // edge applies them when central acknowledges them. A namespace the replica does not have
    // yet (created at another edge, not replicated here) cannot take them, so such a call goes
    // without the id: its writes then come whole, after the namespace's creation, in log order,
    // instead of through the fallback of fetching missing writes again (a round trip later,
    // during which this edge would not see its own write).
    let writer = batch
        .iter()
        .all(|queued| edge.store.has_namespace(queued.namespace))
        .then_some(edge.writer);
    let reply = edge.upstream.write_batch(writer, requests).await;
    Called {
        batch,
        reply,
        under_way,
    }
}

/// Applies what central acknowledged to the replica, drops the cached results of its keys, and
/// answers each writer. The call is over once its writes are applied (or failed to be).
async fn finish(edge: &Arc<Edge>, called: Called) {
    let Called {
        batch,
        reply,
        under_way,
    } = called;
    let mut outcomes = match reply {
        Ok(outcomes) => outcomes.into_iter(),
        Err(e) => {
            for queued in batch {
                let _ = queued.done.send(Err(e.clone()));
            }
            return;
        }
    };
    let mut answered = Vec::with_capacity(batch.len());
    let mut acknowledged: Acknowledged = HashMap::new();
    let mut bytes = 0;
    let mut highest = 0;
    for queued in batch {
        let result = outcomes.next().unwrap_or_else(|| {
            Err(KvError::Internal(
                "central answered fewer outcomes than writers".into(),
            ))
        });
        if let Ok(results) = &result {
            let (records, sequences) = acknowledged.entry(queued.namespace).or_default();
            for (write, result) in queued.writes.into_iter().zip(results) {
                if let WriteResult::Applied { sequence, version } = result {
                    highest = highest.max(*sequence);
                    bytes += write.payload_bytes();
                    sequences.push(*sequence);
                    records.push((write.key.clone(), write.into_record(*version)));
                }
            }
        }
        answered.push((queued.done, result));
    }
    // The writes are durable at central; applying them here, and dropping what the cache
    // held for their keys, is what makes them visible at once. Should the apply fail, the
    // follower asks central for them whole.
    edge.acknowledged(highest);
    let acknowledged = apply_locally(edge, acknowledged, bytes).await;
    for (namespace, (records, _)) in &acknowledged {
        for (key, _) in records {
            edge.cache.written(*namespace, key);
        }
    }
    // Whatever of this call's writes the follower meets from now on is settled here.
    drop(under_way);
    for (done, result) in answered {
        let _ = done.send(result);
    }
}

/// Acknowledged records by namespace, with their log sequences.
type Acknowledged = HashMap<NamespaceId, (Vec<(String, Record)>, Vec<u64>)>;

/// Applies acknowledged records to the replica, one commit per namespace, then notes the
/// sequences of those applied; returns the records.
async fn apply_locally(edge: &Arc<Edge>, acknowledged: Acknowledged, bytes: usize) -> Acknowledged {
    let work = {
        let edge = edge.clone();
        move || {
            let generation = edge.notes_generation();
            for (namespace, (records, sequences)) in &acknowledged {
                match edge.store.apply_logged(*namespace, records, sequences) {
                    // Only once the records are in the replica may the follower skip their
                    // entries.
                    Ok(_) => edge.applied_here(*namespace, records, sequences, generation),
                    // Created at another edge and not replicated here yet: replication brings
                    // both.
                    Err(driftkv_store::StoreError::NoSuchNamespace(_)) => {}
                    Err(e) => {
                        tracing::warn!(error = %e, "applying an acknowledged write locally failed")
                    }
                }
            }
            acknowledged
        }
    };
    if bytes <= INLINE_APPLY_BYTES {
        work()
    } else {
        match tokio::task::spawn_blocking(work).await {
            Ok(records) => records,
            Err(e) => {
                tracing::error!(error = %e, "applying acknowledged writes failed");
                HashMap::new()
            }
        }
    }
}

/// How long a writer waits for central, queueing included: the request timeout plus the time
/// its payload takes to send at [`MIN_THROUGHPUT`], twice over (its call may wait for the
/// calls ahead of it).
pub(crate) fn deadline(request_timeout: Duration, payload: usize) -> Duration {
    2 * (request_timeout + Duration::from_secs_f64(payload as f64 / MIN_THROUGHPUT as f64))
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;
    use driftkv_core::service::put;
    use driftkv_core::{KvService, LiveValue};

    use super::*;
    use crate::spawn_follower;
    use crate::testing::{central_in, edge_over, Counting};

    /// A central in this process and an edge following it, whose replica counts its record
    /// writes.
    async fn cluster(dir: &std::path::Path) -> (Arc<Edge>, Arc<Counting>) {
        let (edge, counting, _) = cluster_with_central(dir).await;
        (edge, counting)
    }

    /// [`cluster`], and the central.
    async fn cluster_with_central(
        dir: &std::path::Path,
    ) -> (Arc<Edge>, Arc<Counting>, Arc<driftkv_central::Central>) {
        let central = central_in(&dir.join("central"));
        let (edge, counting) = edge_over(&dir.join("edge"), central.clone());
        spawn_follower(edge.clone());
        assert!(edge.wait_caught_up(Duration::from_secs(10)).await);
        (edge, counting, central)
    }

    /// Waits up to 10 s for the replica to hold `value` under `key`.
    async fn replica_holds(edge: &Edge, namespace: NamespaceId, key: &str, value: &Bytes) -> bool {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        let mut status = edge.status();
        loop {
            let stored = edge.store().get(namespace, key).unwrap();
            if stored.and_then(|r| r.live).map(|l| l.value).as_ref() == Some(value) {
                return true;
            }
            // Replication applying something is what can change the answer.
            if tokio::time::timeout_at(deadline, status.changed())
                .await
                .is_err()
            {
                return false;
            }
        }
    }

    /// Central sends an edge's own writes back to it as their sequences alone (the edge
    /// applied them already), and whole to a subscriber with another writer id or none.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn own_writes_come_back_as_sequences_alone() {
        let dir = tempfile::tempdir().unwrap();
        let (edge, _, central) = cluster_with_central(dir.path()).await;
        let namespace = edge.create_namespace("acct", "n").await.unwrap();
        for key in ["a", "b", "c"] {
            let writes = vec![put(key, Bytes::from_static(b"v"), None, None)];
            let outcome = edge.write("acct", namespace.id, writes).await.unwrap();
            assert_eq!(outcome.successful, 1);
        }
        // The namespace's creation and the three writes, as each writer id gets them: the
        // sequences sent whole and those left out.
        let anonymous = received(&central, None, 4).await;
        assert_eq!(anonymous.whole, [1, 2, 3, 4]);
        assert!(anonymous.yours.is_empty());
        assert_eq!(
            received(&central, Some(edge.writer + 1), 4).await,
            anonymous
        );
        let own = received(&central, Some(edge.writer), 4).await;
        assert_eq!((own.whole, own.yours), (vec![1], vec![2, 3, 4]));
    }

    /// A write to a namespace the replica does not have yet (created elsewhere, not
    /// replicated here) is sent without the edge's writer id: the stream brings it whole.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_write_to_a_namespace_not_here_yet_comes_whole() {
        use driftkv_core::upstream::Upstream;

        let dir = tempfile::tempdir().unwrap();
        let central = central_in(&dir.path().join("central"));
        // No follower: the namespace created at central never reaches this replica.
        let (edge, _) = edge_over(&dir.path().join("edge"), central.clone());
        let namespace = central.create_namespace("acct", "elsewhere").await.unwrap();
        let writes = vec![put("k", Bytes::from_static(b"v"), None, None)];
        let outcome = edge.write("acct", namespace.id, writes).await.unwrap();
        assert_eq!(outcome.successful, 1);
        let seen = received(&central, Some(edge.writer), 2).await;
        assert_eq!((seen.whole, seen.yours), (vec![1, 2], vec![]));
    }

    /// Sequences a subscription received, whole and left out.
    #[derive(Debug, Default, PartialEq)]
    struct LogBatchTotals {
        whole: Vec<u64>,
        yours: Vec<u64>,
    }

    /// The sequences a subscription to `central` from the log's start with `writer` receives,
    /// until it has `count` of them (10 s at most for each event).
    async fn received(
        central: &driftkv_central::Central,
        writer: Option<u64>,
        count: usize,
    ) -> LogBatchTotals {
        use driftkv_core::upstream::{ReplicationEvent, Subscription, Upstream};

        let subscription = Subscription {
            node_id: 9,
            from: 1,
            writer,
            full_through: 0,
        };
        let mut stream = central.subscribe(subscription).await.unwrap();
        let mut seen = LogBatchTotals::default();
        while seen.whole.len() + seen.yours.len() < count {
            let event = tokio::time::timeout(Duration::from_secs(10), stream.next())
                .await
                .expect("an event within 10 s")
                .expect("the stream goes on")
                .unwrap();
            if let ReplicationEvent::Entries(batch) = event {
                seen.whole.extend(batch.entries.iter().map(|e| e.sequence));
                seen.yours.extend(batch.yours);
            }
        }
        seen
    }

    /// A write central acknowledged that the edge could not apply itself (its disk was full)
    /// reaches the replica once the disk has room again: the follower, meeting the write
    /// left out of its stream, asks central for it whole.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_own_write_not_applied_here_comes_whole() {
        let dir = tempfile::tempdir().unwrap();
        let (edge, counting) = cluster(dir.path()).await;
        let namespace = edge.create_namespace("acct", "n").await.unwrap();
        counting.set_full(true);
        let value = Bytes::from_static(b"durable at central");
        let outcome = edge
            .write(
                "acct",
                namespace.id,
                vec![put("k", value.clone(), None, None)],
            )
            .await
            .unwrap();
        assert_eq!(outcome.successful, 1);
        assert!(edge.store().get(namespace.id, "k").unwrap().is_none());
        counting.set_full(false);
        assert!(
            replica_holds(&edge, namespace.id, "k", &value).await,
            "the write never reached the replica"
        );
    }

    /// 64 writers at once, one of them large: each write is visible at the edge as soon as it
    /// is acknowledged, replication catches up with all of them, and the replica stored each
    /// record once, not once when acknowledged and again when replicated.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn writes_are_visible_when_acknowledged_and_applied_once() {
        let dir = tempfile::tempdir().unwrap();
        let (edge, counting) = cluster(dir.path()).await;
        let namespace = edge.create_namespace("acct", "n").await.unwrap();
        let writers: Vec<_> = (0..64)
            .map(|i| {
                let edge = edge.clone();
                tokio::spawn(async move {
                    let value = Bytes::from(if i == 7 {
                        vec![b'L'; 2 * LARGE_WRITE_BYTES]
                    } else {
                        format!("v{i}").into_bytes()
                    });
                    let key = format!("k{i:02}");
                    let outcome = edge
                        .write(
                            "acct",
                            namespace.id,
                            vec![put(&key, value.clone(), None, None)],
                        )
                        .await
                        .unwrap();
                    assert_eq!(outcome.successful, 1);
                    // The replica itself holds the write once it is acknowledged.
                    let stored = edge.store().get(namespace.id, &key).unwrap().unwrap();
                    assert_eq!(
                        stored.live.map(|l| l.value),
                        Some(value.clone()),
                        "{key} not in the replica once acknowledged"
                    );
                    let read: Option<LiveValue> =
                        edge.get("acct", namespace.id, &key, None).await.unwrap();
                    assert_eq!(read.map(|l| l.value), Some(value));
                })
            })
            .collect();
        for writer in writers {
            writer.await.unwrap();
        }
        // Wait until replication has brought every entry (65: the namespace and the writes).
        let mut status = edge.status();
        tokio::time::timeout(
            Duration::from_secs(10),
            status.wait_for(|s| s.applied >= 65),
        )
        .await
        .expect("replication caught up")
        .unwrap();
        let writes = counting.puts();
        assert_eq!(writes.len(), 64);
        assert!(
            writes.values().all(|n| *n == 1),
            "records stored more than once: {writes:?}"
        );
        assert!(edge.applied_here.lock().unwrap().sequences.is_empty());
    }
}
