//! An edge: serves the Workers KV API from a local replica and a read cache, and forwards
//! every write to the write region.
//!
//! Reads look in the read cache first, then in the replica (or, while a fresh edge has not
//! caught up for the first time, read through to central). Writes go to central through the
//! edge's [`Upstream`] (gRPC in a deployment: [`CentralLink`]), those arriving together in one
//! call (see `forward.rs`); once central acknowledges them
//! (durable, stamped), the edge applies the same records to its replica and drops what its
//! cache held for their keys, so a write is visible at once where it was made. Everything else arrives through [`spawn_follower`],
//! which applies central's replication log, skipping the entries of this edge's own writes
//! that it applied already: each write is applied once.

mod cache;
pub mod faults;
mod follower;
mod forward;
mod link;
#[cfg(test)]
mod testing;

use driftkv_metrics::prometheus::IntCounter;
use driftkv_metrics::{REPLICATION_ENTRIES_APPLIED, SNAPSHOTS};
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use driftkv_core::key::validate_key;
use driftkv_core::time::WallClock;
use driftkv_core::upstream::Upstream;
use driftkv_core::{
    KvError, KvService, ListPage, ListRequest, LiveValue, LogEntry, Namespace, NamespaceId, Record,
    Write, WriteOutcome,
};
use driftkv_store::reads;
use driftkv_store::Store;
use tokio::sync::{mpsc, oneshot, watch};

use cache::ReadCache;
pub use faults::{FaultSettings, Faults, FaultyUpstream};
pub use follower::{spawn_follower, spawn_gc};
pub use link::{CentralLink, LinkTimeouts};

/// How an edge behaves.
#[derive(Clone, Debug)]
pub struct EdgeOptions {
    /// This node's id, reported to central when subscribing.
    pub node_id: u64,
    /// Upper bound of the read cache, in bytes of keys and values.
    pub cache_max_bytes: u64,
    /// Smallest `cache_ttl` a read may ask for (Workers KV: 30 s since January 2026). Lower
    /// it only for tests and experiments.
    pub min_cache_ttl: Duration,
    /// TTL of reads that do not ask for one, and of the entries a local write leaves.
    pub default_cache_ttl: Duration,
    /// Largest `cache_ttl` a read gets: longer ones are cut to it, so that no client can pin a
    /// stale value (or a stale "not found") at the edge for everyone for longer.
    pub max_cache_ttl: Duration,
    /// Drop a key's cached result when replication brings a change to it, instead of serving
    /// it until its TTL runs out. Off by default, as in Workers KV.
    pub invalidate_on_replication: bool,
    /// How long central may take to answer a write, before the time its payload takes to
    /// send (see `forward::deadline`).
    pub request_timeout: Duration,
    /// How long the replication stream may stay silent before the edge reconnects.
    pub stream_silence: Duration,
    /// How long a tombstone is kept at least, once central's horizon has passed it
    /// (`storage.tombstone_grace_secs`); see `docs/gc.md`.
    pub tombstone_grace: Duration,
}

/// How far this edge's replica has come.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ReplicationStatus {
    /// Highest log sequence applied to the replica.
    pub applied: u64,
    /// Highest durable sequence central last reported.
    pub central_durable: u64,
    /// When (unix ms) the replica last had everything central had made durable.
    pub caught_up_at_ms: Option<u64>,
    /// Whether the replication stream is up.
    pub connected: bool,
}

/// An edge's own writes applied when acknowledged, by log sequence, with their keys, and how
/// far the follower has come.
#[derive(Debug, Default)]
struct AppliedHere {
    sequences: BTreeMap<u64, (NamespaceId, String)>,
    /// The follower has applied (or skipped) every entry up to this one.
    passed: u64,
    /// The highest sequence central acknowledged to this edge.
    acknowledged: u64,
    /// How many times the notes were forgotten (by snapshot installs); see
    /// [`Edge::notes_generation`].
    generation: u64,
}

/// The edge's calls to central under way, numbered in the order they started.
#[derive(Debug, Default)]
struct CallsUnderWay {
    /// The number the next call takes.
    next: u64,
    under_way: BTreeSet<u64>,
}

/// One call to central under way; it is over when this is dropped, once its acknowledged
/// writes were applied here (or failed to be).
pub(crate) struct CallUnderWay {
    calls: watch::Sender<CallsUnderWay>,
    number: u64,
}

impl Drop for CallUnderWay {
    fn drop(&mut self) {
        self.calls.send_modify(|calls| {
            calls.under_way.remove(&self.number);
        });
    }
}

/// An edge node's KV service.
pub struct Edge {
    store: Arc<Store>,
    wall: Arc<dyn WallClock>,
    cache: ReadCache,
    upstream: Arc<dyn Upstream>,
    options: EdgeOptions,
    status: watch::Sender<ReplicationStatus>,
    /// True until the replica has caught up with central once, if it started empty: until
    /// then, reads go through to central.
    bootstrapping: AtomicBool,
    /// Replicated entries applied and snapshots installed (metrics, resolved once).
    entries_applied: IntCounter,
    snapshots_installed: IntCounter,
    /// Writes on their way to central.
    writes: mpsc::UnboundedSender<forward::Queued>,
    /// This edge, for the tasks it starts.
    this: std::sync::Weak<Edge>,
    /// Log sequences of this edge's own writes, applied to the replica when central
    /// acknowledged them, that the follower has not reached yet: it skips their entries.
    applied_here: Mutex<AppliedHere>,
    /// The id this edge writes and subscribes with, new each time it starts: central leaves
    /// the changes of its writes out of its replication stream (see
    /// [`driftkv_core::upstream::Subscription::writer`]). Random, so that two edges never
    /// share one even if their node ids are misconfigured alike, and a restarted edge (which
    /// has forgotten which of its writes it applied) gets everything from before whole.
    writer: u64,
    /// Calls to central under way: the follower, meeting one of this edge's writes it has
    /// not seen applied, waits for the calls that were under way to end before concluding
    /// that the edge could not apply it.
    calls: watch::Sender<CallsUnderWay>,
    /// Central's garbage-collection horizon, as it last said (0: not heard yet).
    horizon: std::sync::atomic::AtomicU64,
}

impl Edge {
    /// An edge over its replica `store`, talking to central through `upstream`; start
    /// [`spawn_follower`] to replicate. Starts the task that forwards writes, so it must be
    /// called within a tokio runtime.
    pub fn new(
        store: Arc<Store>,
        wall: Arc<dyn WallClock>,
        upstream: Arc<dyn Upstream>,
        options: EdgeOptions,
    ) -> Result<Arc<Self>, KvError> {
        let applied = store.applied_sequence()?;
        let node = options.node_id.to_string();
        Ok(Arc::new_cyclic(|edge| Edge {
            cache: ReadCache::new(options.cache_max_bytes, &node),
            entries_applied: REPLICATION_ENTRIES_APPLIED.with_label_values(&[&node]),
            snapshots_installed: SNAPSHOTS.with_label_values(&[&node, "installed"]),
            upstream,
            status: watch::Sender::new(ReplicationStatus {
                applied,
                ..Default::default()
            }),
            bootstrapping: AtomicBool::new(applied == 0),
            writes: forward::start(edge.clone()),
            this: edge.clone(),
            applied_here: Mutex::default(),
            writer: rand::random::<u64>().max(1),
            calls: watch::Sender::default(),
            horizon: std::sync::atomic::AtomicU64::new(0),
            store,
            wall,
            options,
        }))
    }

    /// The replica.
    pub fn store(&self) -> &Arc<Store> {
        &self.store
    }

    /// The notes' generation, taken before applying records that [`Edge::applied_here`] will
    /// note: a snapshot install in between may have removed them (it keeps only the keys
    /// noted when it ran) and then forgotten every note, so a note made after it would make
    /// the follower skip a write the replica no longer holds.
    fn notes_generation(&self) -> u64 {
        self.applied_here
            .lock()
            .expect("applied-here lock")
            .generation
    }

    /// Notes that these records of `namespace`, logged at `sequences`, are in the replica
    /// already, unless the follower has passed them (it applied them first) or the notes were
    /// forgotten since `generation` (from [`Edge::notes_generation`] before the apply).
    fn applied_here(
        &self,
        namespace: NamespaceId,
        records: &[(String, Record)],
        sequences: &[u64],
        generation: u64,
    ) {
        let mut here = self.applied_here.lock().expect("applied-here lock");
        if here.generation != generation {
            return;
        }
        let passed = here.passed;
        for ((key, _), sequence) in records.iter().zip(sequences) {
            if *sequence > passed {
                here.sequences.insert(*sequence, (namespace, key.clone()));
            }
        }
    }

    /// Notes that a call to central starts; it ends when the returned value is dropped.
    pub(crate) fn call_starts(&self) -> CallUnderWay {
        let mut number = 0;
        self.calls.send_modify(|calls| {
            number = calls.next;
            calls.next += 1;
            calls.under_way.insert(number);
        });
        CallUnderWay {
            calls: self.calls.clone(),
            number,
        }
    }

    /// Notes the highest sequence of a reply of central's to this edge's writes.
    fn acknowledged(&self, sequence: u64) {
        let mut here = self.applied_here.lock().expect("applied-here lock");
        here.acknowledged = here.acknowledged.max(sequence);
    }

    /// The highest sequence central acknowledged to this edge: a replication stream that
    /// sends everything whole up to it brings every write of this edge's that the edge
    /// could not apply itself.
    fn highest_acknowledged(&self) -> u64 {
        self.applied_here
            .lock()
            .expect("applied-here lock")
            .acknowledged
    }

    /// The first of `yours` (sequences of this edge's own writes, left out of the
    /// replication stream) whose record the edge did not apply itself, if any. A sequence
    /// not noted yet may belong to a call whose reply is still being handled, since the
    /// reply and the stream race each other from central: so this waits, up to `patience`,
    /// for the calls under way now to end before concluding.
    async fn first_not_applied_here(&self, yours: &[u64], patience: Duration) -> Option<u64> {
        let unknown = || {
            let here = self.applied_here.lock().expect("applied-here lock");
            yours
                .iter()
                .copied()
                .find(|sequence| !here.sequences.contains_key(sequence))
        };
        unknown()?;
        let mut calls = self.calls.subscribe();
        let started = calls.borrow().next;
        let settled = calls.wait_for(|calls| calls.under_way.first().is_none_or(|n| *n >= started));
        // Past the patience (calls have deadlines of their own), or with the edge going away,
        // fetching the entries whole is the safe way.
        let _ = tokio::time::timeout(patience, settled).await;
        unknown()
    }

    /// The entries among `entries` whose records are not in the replica yet; forgets the
    /// sequences up to `through`, which replication has now passed.
    fn not_applied_here(&self, entries: Vec<LogEntry>, through: u64) -> Vec<LogEntry> {
        let mut here = self.applied_here.lock().expect("applied-here lock");
        here.passed = here.passed.max(through);
        if here.sequences.is_empty() {
            return entries;
        }
        let rest = entries
            .into_iter()
            .filter(|entry| !here.sequences.contains_key(&entry.sequence))
            .collect();
        here.sequences = here.sequences.split_off(&through.saturating_add(1));
        rest
    }

    /// The keys of this edge's own writes logged after `sequence` that are in the replica, by
    /// namespace: a snapshot covering the log up to `sequence` may lack them, and must not
    /// remove them, or this edge would stop seeing its own writes until replication brought
    /// them again.
    fn written_here_after(&self, sequence: u64) -> HashMap<NamespaceId, HashSet<String>> {
        let here = self.applied_here.lock().expect("applied-here lock");
        let mut keys: HashMap<NamespaceId, HashSet<String>> = HashMap::new();
        for (namespace, key) in here
            .sequences
            .range(sequence.saturating_add(1)..)
            .map(|e| e.1)
        {
            keys.entry(*namespace).or_default().insert(key.clone());
        }
        keys
    }

    /// Forgets every sequence of this edge's own writes, and notes that replication has passed
    /// `through`: after a snapshot install every later entry is applied again (last-write-wins
    /// makes that harmless), since the snapshot may hold older versions of those keys than the
    /// replica had.
    fn forget_applied_here(&self, through: u64) {
        let mut here = self.applied_here.lock().expect("applied-here lock");
        here.passed = here.passed.max(through);
        here.sequences.clear();
        here.generation += 1;
    }

    /// Bytes the read cache holds, as weighed against its bound.
    pub fn cache_bytes(&self) -> u64 {
        self.cache.weighted_bytes()
    }

    /// Follows the replication status.
    pub fn status(&self) -> watch::Receiver<ReplicationStatus> {
        self.status.subscribe()
    }

    /// Waits until the replica has caught up with central once since the edge started, or
    /// `timeout` has passed; returns whether it caught up.
    pub async fn wait_caught_up(&self, timeout: Duration) -> bool {
        let mut status = self.status.subscribe();
        tokio::time::timeout(timeout, status.wait_for(|s| s.caught_up_at_ms.is_some()))
            .await
            .is_ok_and(|r| r.is_ok())
    }

    fn cache_ttl(&self, requested: Option<u64>) -> Result<Duration, KvError> {
        let Some(seconds) = requested else {
            return Ok(self.options.default_cache_ttl);
        };
        let ttl = Duration::from_secs(seconds);
        if ttl < self.options.min_cache_ttl {
            return Err(KvError::InvalidParameter(format!(
                "cache_ttl must be at least {} seconds, got {seconds}",
                self.options.min_cache_ttl.as_secs()
            )));
        }
        Ok(ttl.min(self.options.max_cache_ttl))
    }

    /// Applies a namespace central has acknowledged to the replica at once. Central's answer
    /// is the answer, as for value writes: if the replica fails to take it (its disk is full),
    /// that is logged and replication applies it later.
    fn adopt_namespace(&self, namespace: Namespace) -> Namespace {
        if let Err(e) = self.store.put_namespace(&namespace) {
            tracing::warn!(
                error = %e,
                namespace = %namespace.id,
                "applying an acknowledged namespace change locally failed; replication will"
            );
        }
        namespace
    }
}

#[async_trait]
impl KvService for Edge {
    async fn create_namespace(&self, account_id: &str, title: &str) -> Result<Namespace, KvError> {
        let namespace = self.upstream.create_namespace(account_id, title).await?;
        Ok(self.adopt_namespace(namespace))
    }

    async fn list_namespaces(&self, account_id: &str) -> Result<Vec<Namespace>, KvError> {
        reads::namespaces(self.store.as_ref(), account_id)
    }

    async fn namespace(&self, account_id: &str, id: NamespaceId) -> Result<Namespace, KvError> {
        reads::owned(self.store.as_ref(), account_id, id).map(|ns| Namespace::clone(&ns))
    }

    async fn find_namespace(&self, id: NamespaceId) -> Result<Namespace, KvError> {
        reads::find(self.store.as_ref(), id)
    }

    async fn rename_namespace(
        &self,
        account_id: &str,
        id: NamespaceId,
        title: &str,
    ) -> Result<Namespace, KvError> {
        let namespace = self
            .upstream
            .rename_namespace(account_id, id, title)
            .await?;
        Ok(self.adopt_namespace(namespace))
    }

    async fn delete_namespace(&self, account_id: &str, id: NamespaceId) -> Result<(), KvError> {
        self.upstream.delete_namespace(account_id, id).await?;
        // Central has deleted it: as with a create, a replica that fails to follow at once is
        // left to replication.
        if let Err(e) =
            reads::blocking(&self.store, move |store| Ok(store.delete_namespace(id)?)).await
        {
            tracing::warn!(
                error = %e,
                namespace = %id,
                "deleting an acknowledged namespace deletion locally failed; replication will"
            );
        }
        Ok(())
    }

    async fn write(
        &self,
        account_id: &str,
        id: NamespaceId,
        writes: Vec<Write>,
    ) -> Result<WriteOutcome, KvError> {
        // Refuse what central would refuse without a round trip.
        let now_ms = self.wall.now_ms();
        for write in &writes {
            write.validate(now_ms)?;
        }
        let keys = writes.iter().map(|w| w.key.clone()).collect();
        let payload = writes.iter().map(Write::payload_bytes).sum();
        let (done, results) = oneshot::channel();
        let queued = forward::Queued {
            account_id: account_id.into(),
            namespace: id,
            writes,
            payload,
            done,
        };
        let stopped = || KvError::Unavailable("the edge is shutting down".into());
        if payload > forward::LARGE_WRITE_BYTES {
            let edge = self.this.upgrade().ok_or_else(stopped)?;
            tokio::spawn(forward::forward_alone(edge, queued));
        } else {
            self.writes.send(queued).map_err(|_| stopped())?;
        }
        let deadline = forward::deadline(self.options.request_timeout, payload);
        let results = match tokio::time::timeout(deadline, results).await {
            Ok(results) => results.map_err(|_| stopped())??,
            Err(_) => {
                return Err(KvError::Unavailable(format!(
                    "the write region did not answer within {} ms",
                    deadline.as_millis()
                )))
            }
        };
        Ok(WriteOutcome::from_results(keys, &results))
    }

    async fn get(
        &self,
        account_id: &str,
        id: NamespaceId,
        key: &str,
        cache_ttl: Option<u64>,
    ) -> Result<Option<LiveValue>, KvError> {
        let ttl = self.cache_ttl(cache_ttl)?;
        let bootstrapping = self.bootstrapping.load(Ordering::Relaxed);
        if !bootstrapping {
            reads::owned(self.store.as_ref(), account_id, id)?;
        }
        validate_key(key)?;
        let now_ms = self.wall.now_ms();
        let live_now = |value: &Option<LiveValue>| value.clone().filter(|v| !v.is_expired(now_ms));
        if let Some(hit) = self.cache.get(id, key) {
            return Ok(live_now(&hit.value));
        }
        let ticket = self.cache.ticket(id, key);
        let value = if bootstrapping {
            match self.upstream.get(account_id, id, key).await {
                Ok(value) => value,
                // Central is out of reach: the replica is the best there is.
                Err(KvError::Unavailable(_)) => {
                    reads::get(self.store.as_ref(), account_id, id, key, now_ms)?
                }
                Err(e) => return Err(e),
            }
        } else {
            reads::get(self.store.as_ref(), account_id, id, key, now_ms)?
        };
        Ok(live_now(
            &self.cache.fill(ticket, id, key, value, ttl).value,
        ))
    }

    async fn list(
        &self,
        account_id: &str,
        id: NamespaceId,
        request: ListRequest,
    ) -> Result<ListPage, KvError> {
        reads::list(&self.store, account_id, id, request, self.wall.now_ms()).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{central_in, edge_over};

    /// Polls `check` until it holds, for at most 10 s.
    async fn until(what: &str, check: impl Fn() -> bool) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while !check() {
            assert!(tokio::time::Instant::now() < deadline, "timed out: {what}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Found by review: an edge whose disk was full answered 507 for namespace changes central
    /// had already made. Central's answer is the answer; replication brings the replica along.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn namespace_changes_central_made_succeed_when_the_replica_cannot_take_them() {
        let dir = tempfile::tempdir().unwrap();
        let central = central_in(&dir.path().join("central"));
        let (edge, counting) = edge_over(&dir.path().join("edge"), central);
        spawn_follower(edge.clone());
        assert!(edge.wait_caught_up(Duration::from_secs(10)).await);
        let title_here = |id: NamespaceId| {
            edge.store()
                .namespaces()
                .unwrap()
                .iter()
                .find(|ns| ns.id == id)
                .map(|ns| ns.title.clone())
        };

        counting.set_full(true);
        let created = edge.create_namespace("acct", "n").await.unwrap();
        let renamed = edge
            .rename_namespace("acct", created.id, "renamed")
            .await
            .unwrap();
        assert_eq!(renamed.title, "renamed");
        assert_eq!(
            title_here(created.id),
            None,
            "the replica took it after all"
        );
        counting.set_full(false);
        until("replication brings the namespace", || {
            title_here(created.id).as_deref() == Some("renamed")
        })
        .await;

        counting.set_full(true);
        edge.delete_namespace("acct", created.id).await.unwrap();
        assert!(
            title_here(created.id).is_some(),
            "the replica took it after all"
        );
        counting.set_full(false);
        until("replication deletes the namespace", || {
            title_here(created.id).is_none()
        })
        .await;
    }
}
