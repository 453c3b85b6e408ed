//! Forwarding writes to central.
//!
//! Every write a request makes goes into one queue. A task sends whatever has queued up as one
//! `WriteBatch` call, one call at a time, so that writers arriving while a call is under way
//! share the next round trip to central and central's commit; each writer is still checked,
//! applied or refused on its own there. Once central answers, the task applies the
//! acknowledged records to the replica, all of them in one commit, so that each write is visible
//! at once where it was made, notes their sequences (the follower then skips them when
//! replication brings them: each write is applied once), fills the cache, and answers each
//! writer. Large writes (a big value, a bulk write) make their own call from their request's
//! task instead, so that they never hold up the small ones queued behind them.

use std::collections::HashMap;
use std::sync::{Arc, Weak};
use std::time::Duration;

use driftkv_core::upstream::{BatchOutcome, WriteRequest};
use driftkv_core::{KvError, NamespaceId, Record, Write, WriteResult};
use futures::stream::{FuturesUnordered, StreamExt as _};
use tokio::sync::{mpsc, oneshot};

use crate::link::MIN_THROUGHPUT;
use crate::Edge;

/// Calls to central in flight at once. Writes arriving meanwhile queue up for the next call,
/// which is what makes calls carry many writes under load. One was measured the cheapest per
/// write, with no less throughput than two or four (bench/writes.sh).
const MAX_IN_FLIGHT: usize = 1;

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
            Some((batch, reply)) = in_flight.next() => {
                let Some(edge) = edge.upgrade() else { return };
                finish(&edge, batch, reply).await;
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

type Reply = Result<BatchOutcome, KvError>;

/// Sends one large writer's writes to central in a call of its own, from the caller's task,
/// then applies and answers them as a batch of one.
pub(crate) async fn forward_alone(edge: Arc<Edge>, queued: Queued) {
    let (batch, reply) = call(edge.clone(), vec![queued]).await;
    finish(&edge, batch, reply).await;
}

/// Sends `batch` to central as one call.
async fn call(edge: Arc<Edge>, batch: Vec<Queued>) -> (Vec<Queued>, Reply) {
    let requests = batch
        .iter()
        .map(|queued| WriteRequest {
            account_id: queued.account_id.clone(),
            namespace: queued.namespace,
            // Values are reference-counted `Bytes`: cloning them copies no data.
            writes: queued.writes.clone(),
        })
        .collect();
    let reply = edge.upstream.write_batch(requests).await;
    (batch, reply)
}

/// Applies what central acknowledged to the replica and the cache, and answers each writer.
async fn finish(edge: &Arc<Edge>, batch: Vec<Queued>, reply: Reply) {
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
                    bytes += write.payload_bytes();
                    sequences.push(*sequence);
                    records.push((write.key.clone(), write.into_record(*version)));
                }
            }
        }
        answered.push((queued.done, result));
    }
    // The writes are durable at central; applying them here is what makes them visible at
    // once. Should that fail, replication still brings them.
    let ttl = edge.options.default_cache_ttl;
    for (namespace, key, stored) in apply_locally(edge, acknowledged, bytes).await {
        match stored {
            Some(record) => edge.cache.put(namespace, key, record.live, ttl),
            None => edge.cache.invalidate(namespace, &key),
        }
    }
    for (done, result) in answered {
        let _ = done.send(result);
    }
}

/// Acknowledged records by namespace, with their log sequences.
type Acknowledged = HashMap<NamespaceId, (Vec<(String, Record)>, Vec<u64>)>;

/// Each acknowledged key with its record as the replica now stores it (the write's own, or a
/// newer one already there), its value a slice of the stored bytes; `None` when the replica
/// could not take it (replication brings it later).
type Stored = Vec<(NamespaceId, String, Option<Record>)>;

/// Applies acknowledged records to the replica, one commit per namespace, then notes the
/// sequences of those applied; returns what the replica stores for each key. A record the
/// replica had already (replication brought it first) or had a newer one for is read back,
/// so that what is cached holds the replica's bytes, never the request's.
async fn apply_locally(edge: &Arc<Edge>, acknowledged: Acknowledged, bytes: usize) -> Stored {
    let work = {
        let edge = edge.clone();
        move || {
            let mut stored = Vec::new();
            for (namespace, (mut records, sequences)) in acknowledged {
                let applied = match edge.store.apply_logged(namespace, &mut records, &sequences) {
                    // Only once the records are in the replica may the follower skip their
                    // entries.
                    Ok(applied) => {
                        edge.applied_here(&sequences);
                        Some(applied)
                    }
                    // Created at another edge and not replicated here yet: replication brings
                    // both.
                    Err(driftkv_store::StoreError::NoSuchNamespace(_)) => None,
                    Err(e) => {
                        tracing::warn!(error = %e, "applying an acknowledged write locally failed");
                        None
                    }
                };
                for (i, (key, record)) in records.into_iter().enumerate() {
                    let record = match &applied {
                        Some(applied) if applied[i] => Some(record),
                        Some(_) => edge.store.get(namespace, &key).ok().flatten(),
                        None => None,
                    };
                    stored.push((namespace, key, record));
                }
            }
            stored
        }
    };
    if bytes <= INLINE_APPLY_BYTES {
        work()
    } else {
        match tokio::task::spawn_blocking(work).await {
            Ok(stored) => stored,
            Err(e) => {
                tracing::error!(error = %e, "applying acknowledged writes failed");
                Vec::new()
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
        let central = central_in(&dir.join("central"));
        let (edge, counting) = edge_over(&dir.join("edge"), central);
        spawn_follower(edge.clone());
        assert!(edge.wait_caught_up(Duration::from_secs(10)).await);
        (edge, counting)
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
                    let value = if i == 7 {
                        vec![b'L'; 2 * LARGE_WRITE_BYTES]
                    } else {
                        format!("v{i}").into_bytes()
                    };
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
                    // Read the replica itself, not the cache the write filled.
                    let stored = edge.store().get(namespace.id, &key).unwrap().unwrap();
                    assert_eq!(
                        stored.live.map(|l| l.value),
                        Some(Bytes::from(value)),
                        "{key} not in the replica once acknowledged"
                    );
                    let cached: Option<LiveValue> =
                        edge.get("acct", namespace.id, &key, None).await.unwrap();
                    assert!(cached.is_some());
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
