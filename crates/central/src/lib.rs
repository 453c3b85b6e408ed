//! The write region.
//!
//! [`Central`] is the write region as edges use it, the [`Upstream`] contract over the
//! [`Engine`]: edges forward writes and namespace changes to it, read through it while they
//! bootstrap, and follow its replication log (or rebuild from a snapshot when they are further
//! behind than the log reaches). Streams only ever carry entries the engine has made durable.
//! An edge in the same process (the simulation) uses it directly; [`CentralService`] puts it on
//! the wire as the `driftkv.v1.Central` gRPC service, which [`serve`] runs.
//!
//! With TLS, every gRPC caller presents a certificate from the cluster CA and its role decides
//! what it may call: edges everything, tools (the load generator) writes and reads but not the
//! log or snapshots. Without TLS central serves only on loopback (the node assembly refuses
//! anything else), where every caller is local.
//!
//! Snapshots (a full copy of every account) are limited to a few at once; replication streams
//! end when central shuts down, so it stops promptly with edges subscribed.
//!
//! [`spawn_log_trimmer`] keeps the log to its retention (by entries and by age); [`spawn_gc`] purges tombstones every
//! edge has applied past, after their grace period, and tells subscribers the horizon so that
//! they purge on the same rule (see `docs/gc.md`).

use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use driftkv_core::change::record_size;
use driftkv_core::time::WallClock;
use driftkv_core::upstream::{
    BatchOutcome, EventStream, LogBatch, ReplicationEvent, SnapshotChunk, SnapshotStream,
    Subscription, Upstream, WriteRequest,
};
use driftkv_core::{KvError, KvService, LiveValue, Namespace, NamespaceId};
use driftkv_engine::{spawn_maintenance, Engine, Logged};
use driftkv_metrics::prometheus::{Histogram, IntCounter};
use driftkv_metrics::{CENTRAL_WRITE_SECONDS, GC_PURGED, SNAPSHOTS};
use driftkv_proto::pb;
use driftkv_proto::pb::central_server::{Central as CentralRpc, CentralServer};
use driftkv_proto::tls::{allowed, caller_role, Access};
use driftkv_proto::trace::continue_trace;
use driftkv_proto::{
    namespace_id, status_from_error, BATCH_BYTES, MAX_REPLY_BYTES, MAX_REQUEST_BYTES,
};
use driftkv_store::reads::blocking;
use driftkv_store::{Purged, Store};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch, Semaphore};
use tokio_stream::wrappers::{ReceiverStream, TcpListenerStream};
use tokio_stream::{Stream, StreamExt as _};
use tokio_util::sync::CancellationToken;
use tonic::transport::ServerTlsConfig;
use tonic::{Request, Response, Status};
use tracing::Instrument as _;

/// Most log entries read from storage for one batch.
const BATCH_ENTRIES: usize = 1024;
/// Most records per snapshot chunk.
const SNAPSHOT_RECORDS: usize = 1024;

/// Tunables of the write region.
#[derive(Clone, Debug)]
pub struct CentralOptions {
    /// How often an idle subscription hears from central; edges treat a stream silent for a
    /// few intervals as dead.
    pub heartbeat: Duration,
    /// Most snapshots streamed at once; an edge asking for one more is told to retry later.
    pub max_snapshots: usize,
}

impl Default for CentralOptions {
    fn default() -> Self {
        CentralOptions {
            heartbeat: Duration::from_secs(1),
            max_snapshots: 2,
        }
    }
}

/// The write region over an engine.
pub struct Central {
    engine: Arc<Engine>,
    options: CentralOptions,
    /// Write latency and snapshots served (metrics, resolved once).
    write_seconds: Histogram,
    snapshots_served: IntCounter,
    /// Snapshots that may start.
    snapshot_slots: Arc<Semaphore>,
    /// Cancelled when central shuts down: replication streams end.
    stopping: CancellationToken,
    /// The lowest sequence every edge member has applied, as membership last reported it;
    /// `None` until it has (garbage collection waits for it).
    edges_applied: Mutex<Option<u64>>,
    /// The sequences the snapshots being streamed cover: a tombstone above one of them must
    /// stay until that snapshot is done, or its install would miss it.
    snapshots_from: Arc<Mutex<Vec<u64>>>,
    /// The horizon garbage collection last purged at, sent to subscribers.
    horizon: watch::Sender<u64>,
}

impl Central {
    /// The write region over `engine`.
    pub fn new(engine: Arc<Engine>, options: CentralOptions) -> Arc<Self> {
        let node = engine.node_id().to_string();
        Arc::new(Central {
            write_seconds: CENTRAL_WRITE_SECONDS.with_label_values(&[&node]),
            snapshots_served: SNAPSHOTS.with_label_values(&[&node, "served"]),
            snapshot_slots: Arc::new(Semaphore::new(options.max_snapshots.max(1))),
            stopping: CancellationToken::new(),
            edges_applied: Mutex::new(None),
            snapshots_from: Arc::new(Mutex::new(Vec::new())),
            horizon: watch::channel(0).0,
            engine,
            options,
        })
    }

    /// Notes the lowest log sequence every edge member has applied (`None` while that is not
    /// known): garbage collection keeps every tombstone above it.
    pub fn set_edges_applied(&self, applied: Option<u64>) {
        *self.edges_applied.lock().expect("edges lock") = applied;
    }

    /// The horizon garbage collection may purge up to now: the lowest sequence every edge
    /// has applied, no higher than what is durable nor than the sequence of a snapshot being
    /// streamed. `None` while the edges' progress is unknown.
    pub fn gc_horizon(&self) -> Option<u64> {
        let edges = (*self.edges_applied.lock().expect("edges lock"))?;
        let snapshots = self.snapshots_from.lock().expect("snapshots lock");
        let durable = *self.engine.durable_sequence().borrow();
        Some(snapshots.iter().copied().fold(edges.min(durable), u64::min))
    }

    /// One round of garbage collection at `now_ms`: purges the tombstones at or below the
    /// horizon older than `grace`, and announces the horizon to subscribers. Returns how
    /// many tombstones went.
    pub async fn collect_garbage(&self, now_ms: u64, grace: Duration) -> Result<Purged, KvError> {
        let Some(horizon) = self.gc_horizon() else {
            return Ok(Purged::default());
        };
        let cutoff = now_ms.saturating_sub(grace.as_millis() as u64);
        let purged = blocking(self.engine.store(), move |store| {
            Ok(store.collect_garbage(horizon, cutoff)?)
        })
        .await?;
        self.horizon.send_if_modified(|h| {
            let moved = horizon > *h;
            *h = (*h).max(horizon);
            moved
        });
        Ok(purged)
    }

    /// The engine writes go to.
    pub fn engine(&self) -> &Arc<Engine> {
        &self.engine
    }

    /// Ends every replication and snapshot stream, now and from now on: central is shutting
    /// down, and subscribers reconnect elsewhere or later.
    pub fn stop_streams(&self) {
        self.stopping.cancel();
    }
}

/// Runs `stream` (which sends into `tx`) until it ends or central stops; a failure is sent to
/// the subscriber, if it is still there.
fn spawn_stream<T, F>(stopping: CancellationToken, tx: Sender<T>, what: &'static str, stream: F)
where
    T: Send + 'static,
    F: std::future::Future<Output = Result<(), KvError>> + Send + 'static,
{
    tokio::spawn(async move {
        let streamed = tokio::select! {
            streamed = stream => streamed,
            () = stopping.cancelled() => Ok(()),
        };
        if let Err(e) = streamed {
            // An error with nobody listening (the subscriber went away) needs no report.
            if !tx.is_closed() {
                tracing::warn!(error = %e, "{what} failed");
                let _ = tx.send(Err(e)).await;
            }
        }
    });
}

#[async_trait]
impl Upstream for Central {
    async fn write_batch(
        &self,
        writer: Option<u64>,
        requests: Vec<WriteRequest>,
    ) -> Result<BatchOutcome, KvError> {
        let _timer = self.write_seconds.start_timer();
        Ok(self.engine.write_batch(writer, requests).await)
    }

    async fn create_namespace(&self, account_id: &str, title: &str) -> Result<Namespace, KvError> {
        self.engine.create_namespace(account_id, title).await
    }

    async fn rename_namespace(
        &self,
        account_id: &str,
        id: NamespaceId,
        title: &str,
    ) -> Result<Namespace, KvError> {
        self.engine.rename_namespace(account_id, id, title).await
    }

    async fn delete_namespace(&self, account_id: &str, id: NamespaceId) -> Result<(), KvError> {
        self.engine.delete_namespace(account_id, id).await
    }

    async fn get(
        &self,
        account_id: &str,
        id: NamespaceId,
        key: &str,
    ) -> Result<Option<LiveValue>, KvError> {
        self.engine.get(account_id, id, key, None).await
    }

    async fn subscribe(&self, subscription: Subscription) -> Result<EventStream, KvError> {
        tracing::info!(
            subscriber = subscription.node_id,
            from = subscription.from,
            full_through = subscription.full_through,
            "replica subscribed"
        );
        let (tx, rx) = mpsc::channel(4);
        let stream = stream_log(
            self.engine.clone(),
            subscription,
            self.options.heartbeat,
            self.horizon.subscribe(),
            tx.clone(),
        );
        spawn_stream(self.stopping.clone(), tx, "replication stream", stream);
        Ok(Box::pin(ReceiverStream::new(rx)))
    }

    async fn snapshot(&self, node_id: u64) -> Result<SnapshotStream, KvError> {
        let Ok(slot) = self.snapshot_slots.clone().try_acquire_owned() else {
            return Err(KvError::Unavailable(format!(
                "{} snapshots are being streamed already; try again shortly",
                self.options.max_snapshots
            )));
        };
        tracing::info!(subscriber = node_id, "replica takes a snapshot");
        self.snapshots_served.inc();
        let (tx, rx) = mpsc::channel(2);
        let engine = self.engine.clone();
        let sender = tx.clone();
        let sequence = *engine.durable_sequence().borrow();
        let registration = SnapshotRegistration::new(self, sequence);
        let stream = async move {
            let _slot = slot;
            let _registration = registration;
            stream_snapshot(engine, sequence, &sender).await
        };
        spawn_stream(self.stopping.clone(), tx, "snapshot stream", stream);
        Ok(Box::pin(ReceiverStream::new(rx)))
    }
}

/// A snapshot being streamed, holding garbage collection at or below its sequence until it
/// is dropped.
struct SnapshotRegistration {
    snapshots: Arc<Mutex<Vec<u64>>>,
    sequence: u64,
}

impl SnapshotRegistration {
    fn new(central: &Central, sequence: u64) -> Self {
        let snapshots = central.snapshots_from.clone();
        snapshots.lock().expect("snapshots lock").push(sequence);
        SnapshotRegistration {
            snapshots,
            sequence,
        }
    }
}

impl Drop for SnapshotRegistration {
    fn drop(&mut self) {
        let mut snapshots = self.snapshots.lock().expect("snapshots lock");
        if let Some(at) = snapshots.iter().position(|s| *s == self.sequence) {
            snapshots.swap_remove(at);
        }
    }
}

/// The `driftkv.v1.Central` gRPC service: [`Central`] on the wire.
pub struct CentralService {
    central: Arc<Central>,
    /// Require a cluster certificate of every caller and decide by its role (TLS is on).
    authenticate: bool,
}

type Stream_<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

fn to_status(error: KvError) -> Status {
    status_from_error(&error)
}

impl CentralService {
    /// The service over `central`; with `authenticate`, callers are checked by the role in
    /// their certificate.
    pub fn new(central: Arc<Central>, authenticate: bool) -> Self {
        CentralService {
            central,
            authenticate,
        }
    }

    /// The tonic server for this service, accepting requests up to [`MAX_REQUEST_BYTES`] and
    /// sending replies up to [`MAX_REPLY_BYTES`].
    pub fn into_server(self) -> CentralServer<Self> {
        CentralServer::new(self)
            .max_decoding_message_size(MAX_REQUEST_BYTES)
            .max_encoding_message_size(MAX_REPLY_BYTES)
    }

    /// Refuses a call the caller's certificate does not allow.
    fn authorize<T>(&self, request: &Request<T>, access: Access) -> Result<(), Status> {
        if !self.authenticate {
            return Ok(());
        }
        allowed(caller_role(request), access)
    }
}

/// Serves the service on `listener` (over TLS when `tls` is given) until `shutdown` resolves;
/// replication streams end then, so that shutting down does not wait on subscribers.
pub async fn serve(
    service: CentralService,
    listener: TcpListener,
    tls: Option<ServerTlsConfig>,
    shutdown: impl std::future::Future<Output = ()> + Send,
) -> Result<(), tonic::transport::Error> {
    let central = service.central.clone();
    let signal = async move {
        shutdown.await;
        central.stop_streams();
    };
    let mut builder =
        tonic::transport::Server::builder().http2_keepalive_interval(Some(Duration::from_secs(5)));
    if let Some(tls) = tls {
        builder = builder.tls_config(tls)?;
    }
    builder
        .add_service(service.into_server())
        .serve_with_incoming_shutdown(incoming(listener), signal)
        .await
}

/// The connections accepted on `listener`, with Nagle's algorithm off: a reply goes out in
/// several writes (headers, message, trailers), and with Nagle on, the later ones wait for the
/// edge's delayed acknowledgement of the first, some 40 ms, whenever the connection is not busy
/// enough to carry acknowledgements back at once.
fn incoming(listener: TcpListener) -> impl Stream<Item = std::io::Result<tokio::net::TcpStream>> {
    TcpListenerStream::new(listener).map(|accepted| {
        let stream = accepted?;
        stream.set_nodelay(true)?;
        Ok(stream)
    })
}

/// A domain stream as a gRPC stream.
fn on_the_wire<T, W>(stream: Pin<Box<dyn Stream<Item = Result<T, KvError>> + Send>>) -> Stream_<W>
where
    T: Into<W> + 'static,
    W: Send + 'static,
{
    Box::pin(stream.map(|item| item.map(Into::into).map_err(to_status)))
}

#[tonic::async_trait]
impl CentralRpc for CentralService {
    async fn write(
        &self,
        request: Request<pb::WriteRequest>,
    ) -> Result<Response<pb::WriteReply>, Status> {
        self.authorize(&request, Access::Use)?;
        let span = tracing::info_span!("central write", writes = request.get_ref().writes.len());
        continue_trace(&span, request.metadata());
        let request = WriteRequest::try_from(request.into_inner()).map_err(to_status)?;
        // Tools write with no writer id: their subscriptions, if any, get every entry whole.
        let outcome = self
            .central
            .write_batch(None, vec![request])
            .instrument(span)
            .await
            .map_err(to_status)?;
        let results = outcome
            .into_iter()
            .next()
            .expect("one outcome per request")
            .map_err(to_status)?;
        Ok(Response::new(pb::WriteReply {
            results: results.into_iter().map(Into::into).collect(),
        }))
    }

    async fn write_batch(
        &self,
        request: Request<pb::WriteBatchRequest>,
    ) -> Result<Response<pb::WriteBatchReply>, Status> {
        self.authorize(&request, Access::Use)?;
        let span = tracing::info_span!("central write", writers = request.get_ref().writes.len());
        continue_trace(&span, request.metadata());
        // A malformed request fails alone, like a Write of its own would.
        let mut outcomes: Vec<Option<pb::WriteBatchOutcome>> = Vec::new();
        let mut requests = Vec::new();
        let batch = request.into_inner();
        for request in batch.writes {
            match WriteRequest::try_from(request) {
                Ok(request) => {
                    outcomes.push(None);
                    requests.push(request);
                }
                Err(e) => outcomes.push(Some(Err(e).into())),
            }
        }
        let mut results = self
            .central
            .write_batch(writer_id(batch.writer), requests)
            .instrument(span)
            .await
            .map_err(to_status)?
            .into_iter();
        let outcomes = outcomes
            .into_iter()
            .map(|outcome| {
                outcome.unwrap_or_else(|| results.next().expect("one result per request").into())
            })
            .collect();
        Ok(Response::new(pb::WriteBatchReply { outcomes }))
    }

    async fn create_namespace(
        &self,
        request: Request<pb::CreateNamespaceRequest>,
    ) -> Result<Response<pb::NamespaceReply>, Status> {
        self.authorize(&request, Access::Use)?;
        let request = request.into_inner();
        let namespace = self
            .central
            .create_namespace(&request.account_id, &request.title)
            .await
            .map_err(to_status)?;
        Ok(Response::new(pb::NamespaceReply {
            namespace: Some((&namespace).into()),
        }))
    }

    async fn rename_namespace(
        &self,
        request: Request<pb::RenameNamespaceRequest>,
    ) -> Result<Response<pb::NamespaceReply>, Status> {
        self.authorize(&request, Access::Use)?;
        let request = request.into_inner();
        let id = namespace_id(&request.namespace_id).map_err(to_status)?;
        let namespace = self
            .central
            .rename_namespace(&request.account_id, id, &request.title)
            .await
            .map_err(to_status)?;
        Ok(Response::new(pb::NamespaceReply {
            namespace: Some((&namespace).into()),
        }))
    }

    async fn delete_namespace(
        &self,
        request: Request<pb::DeleteNamespaceRequest>,
    ) -> Result<Response<pb::DeleteNamespaceReply>, Status> {
        self.authorize(&request, Access::Use)?;
        let request = request.into_inner();
        let id = namespace_id(&request.namespace_id).map_err(to_status)?;
        self.central
            .delete_namespace(&request.account_id, id)
            .await
            .map_err(to_status)?;
        Ok(Response::new(pb::DeleteNamespaceReply {}))
    }

    async fn get(
        &self,
        request: Request<pb::GetRequest>,
    ) -> Result<Response<pb::GetReply>, Status> {
        self.authorize(&request, Access::Use)?;
        let request = request.into_inner();
        let id = namespace_id(&request.namespace_id).map_err(to_status)?;
        let live = self
            .central
            .get(&request.account_id, id, &request.key)
            .await
            .map_err(to_status)?;
        Ok(Response::new(pb::GetReply {
            live: live.map(Into::into),
        }))
    }

    type SubscribeStream = Stream_<pb::SubscribeReply>;

    async fn subscribe(
        &self,
        request: Request<pb::SubscribeRequest>,
    ) -> Result<Response<Self::SubscribeStream>, Status> {
        self.authorize(&request, Access::Replicate)?;
        let request = request.into_inner();
        // The node id is only for logs: a malformed one is not worth refusing the stream for.
        let subscription = Subscription {
            node_id: request.node_id.parse().unwrap_or_default(),
            from: request.from_sequence,
            writer: writer_id(request.writer),
            full_through: request.full_through,
        };
        let events = self
            .central
            .subscribe(subscription)
            .await
            .map_err(to_status)?;
        Ok(Response::new(on_the_wire(events)))
    }

    type SnapshotStream = Stream_<pb::SnapshotChunk>;

    async fn snapshot(
        &self,
        request: Request<pb::SnapshotRequest>,
    ) -> Result<Response<Self::SnapshotStream>, Status> {
        self.authorize(&request, Access::Replicate)?;
        let node_id = request.get_ref().node_id.parse().unwrap_or_default();
        let chunks = self.central.snapshot(node_id).await.map_err(to_status)?;
        Ok(Response::new(on_the_wire(chunks)))
    }
}

type Sender<T> = mpsc::Sender<Result<T, KvError>>;

/// A writer id as the wire carries it, where 0 stands for none.
fn writer_id(wire: u64) -> Option<u64> {
    (wire != 0).then_some(wire)
}

/// Sends `item`; false once the subscriber has gone.
async fn send<T>(tx: &Sender<T>, item: T) -> bool {
    tx.send(Ok(item)).await.is_ok()
}

/// Streams the log as `subscription` asks: every durable entry from its `from` on (the
/// subscriber's own writes as their sequences alone), then new ones as they become durable,
/// with a heartbeat whenever the subscriber is caught up and at least every `heartbeat`.
async fn stream_log(
    engine: Arc<Engine>,
    subscription: Subscription,
    heartbeat: Duration,
    mut horizon: watch::Receiver<u64>,
    tx: Sender<ReplicationEvent>,
) -> Result<(), KvError> {
    let mut next = subscription.from.max(1);
    let store = engine.store().clone();
    let mut durable = engine.durable_sequence();
    // Tombstones the subscriber has not applied past may be purged here: only a snapshot,
    // which removes what central no longer holds, brings it back in line.
    if next - 1 < store.gc_floor() {
        return snapshot_needed(&store, &tx).await;
    }
    horizon.mark_changed();
    loop {
        let head = *durable.borrow_and_update();
        // Ahead of everything central has: central lost data the subscriber applied.
        if next > head + 1 {
            return snapshot_needed(&store, &tx).await;
        }
        if next <= head {
            let max = BATCH_ENTRIES.min((head - next + 1) as usize);
            let entries = engine.log_entries(next, max, BATCH_BYTES).await?;
            // Everything up to `head` was logged, so a missing `next` has been trimmed away.
            if entries.first().map(|e| e.entry.sequence) != Some(next) {
                return snapshot_needed(&store, &tx).await;
            }
            for batch in cut(entries, &subscription) {
                next = batch.last().map_or(next, |last| last + 1);
                if !send(&tx, ReplicationEvent::Entries(batch)).await {
                    return Ok(());
                }
            }
            continue;
        }
        let beat = ReplicationEvent::Heartbeat {
            durable_sequence: head,
        };
        if !send(&tx, beat).await {
            return Ok(());
        }
        if horizon.has_changed().unwrap_or(false) {
            let sequence = *horizon.borrow_and_update();
            if sequence > 0 && !send(&tx, ReplicationEvent::Horizon { sequence }).await {
                return Ok(());
            }
        }
        tokio::select! {
            changed = durable.changed() => {
                if changed.is_err() {
                    // The engine is gone: central is shutting down.
                    return Ok(());
                }
            }
            _ = tokio::time::sleep(heartbeat) => {}
            _ = tx.closed() => return Ok(()),
        }
    }
}

/// Tells the subscriber that only a snapshot can bring it back in line with the log.
async fn snapshot_needed(store: &Arc<Store>, tx: &Sender<ReplicationEvent>) -> Result<(), KvError> {
    let needed = ReplicationEvent::SnapshotNeeded {
        oldest_retained: store.log_bounds()?.oldest,
    };
    send(tx, needed).await;
    Ok(())
}

/// Bytes an entry left out of a batch counts for: its sequence.
const LEFT_OUT_BYTES: usize = 8;

/// Cuts consecutive entries into batches of about [`BATCH_BYTES`] for `subscription`, leaving
/// out the changes of the subscriber's own writes above its `full_through`.
fn cut(entries: Vec<Logged>, subscription: &Subscription) -> Vec<LogBatch> {
    let mut batches = vec![LogBatch::default()];
    let mut bytes = 0;
    for Logged { entry, writer } in entries {
        let yours = subscription.writer.is_some()
            && writer == subscription.writer
            && entry.sequence > subscription.full_through;
        let size = if yours {
            LEFT_OUT_BYTES
        } else {
            entry.change.size()
        };
        let current = batches.last().expect("never empty");
        let started = !current.entries.is_empty() || !current.yours.is_empty();
        if started && bytes + size > BATCH_BYTES {
            batches.push(LogBatch::default());
            bytes = 0;
        }
        bytes += size;
        let current = batches.last_mut().expect("never empty");
        if yours {
            current.yours.push(entry.sequence);
        } else {
            current.entries.push(entry);
        }
    }
    batches
}

/// Streams every namespace, then every record and tombstone, then the sequence the snapshot
/// covers. The sequence (`sequence`) is read first: everything durable up to it is in the
/// snapshot, and later writes that slip in are harmless to apply again. The first chunk says
/// it too (an edge keeps its own later writes the snapshot may lack); the last chunk also
/// says up to which sequence the records sent were written, read after the last of them.
async fn stream_snapshot(
    engine: Arc<Engine>,
    sequence: u64,
    tx: &Sender<SnapshotChunk>,
) -> Result<(), KvError> {
    let store = engine.store().clone();
    let namespaces = store.namespaces()?;
    let first = SnapshotChunk {
        namespaces: namespaces.clone(),
        sequence,
        ..Default::default()
    };
    if !send(tx, first).await {
        return Ok(());
    }
    for namespace in namespaces {
        let id = namespace.id;
        let mut after: Option<String> = None;
        loop {
            let from = after.clone();
            let page = blocking(&store, move |s| {
                match s.records(id, from.as_deref(), SNAPSHOT_RECORDS) {
                    // Deleted while the snapshot ran: its deletion follows in the log.
                    Err(driftkv_store::StoreError::NoSuchNamespace(_)) => Ok(Vec::new()),
                    other => Ok(other?),
                }
            })
            .await?;
            let Some((last, _)) = page.last() else { break };
            after = Some(last.clone());
            let full = page.len() == SNAPSHOT_RECORDS;
            let mut chunk = SnapshotChunk::default();
            let mut bytes = 0;
            for (key, record) in page {
                bytes += record_size(&key, &record);
                chunk.records.push((id, key, record));
                if bytes > BATCH_BYTES {
                    if !send(tx, std::mem::take(&mut chunk)).await {
                        return Ok(());
                    }
                    bytes = 0;
                }
            }
            if !chunk.records.is_empty() && !send(tx, chunk).await {
                return Ok(());
            }
            if !full {
                break;
            }
        }
    }
    let last = SnapshotChunk {
        complete: true,
        sequence,
        written_through: store.log_bounds()?.last.max(sequence),
        ..Default::default()
    };
    send(tx, last).await;
    Ok(())
}

/// How much of the replication log central keeps.
#[derive(Clone, Copy, Debug)]
pub struct LogRetention {
    /// Most entries kept (at least 1).
    pub entries: u64,
    /// Entries written longer ago than this are dropped (`None`: kept whatever their age).
    pub age: Option<Duration>,
}

/// Keeps the log to its `retention`, trimming every `every` (the newest entry always stays),
/// counting what went in `driftkv_gc_purged_total{kind="log_entry"}` and compacting once a lot
/// went. Stops by itself once the store is dropped.
pub fn spawn_log_trimmer(
    store: &Arc<Store>,
    node: u64,
    retention: LogRetention,
    wall: Arc<dyn WallClock>,
    every: Duration,
) -> tokio::task::JoinHandle<()> {
    let trimmed = GC_PURGED.with_label_values(&[&node.to_string(), "log_entry"]);
    spawn_maintenance(store, every, "trimming the replication log", move |store| {
        let last = store.log_bounds()?.last;
        let mut gone = store.trim_log(last.saturating_sub(retention.entries) + 1)?;
        if let Some(age) = retention.age {
            let cutoff = wall.now_ms().saturating_sub(age.as_millis() as u64);
            gone += store.trim_log_by_age(cutoff)?;
        }
        trimmed.inc_by(gone as u64);
        store.compact_if_due()?;
        Ok(gone)
    })
}

/// Runs a round of garbage collection every `every` (see [`Central::collect_garbage`]),
/// counting what it purged in `driftkv_gc_purged_total{kind="tombstone"|"namespace"}`. Stops once
/// central is dropped.
pub fn spawn_gc(
    central: &Arc<Central>,
    wall: Arc<dyn WallClock>,
    grace: Duration,
    every: Duration,
) -> tokio::task::JoinHandle<()> {
    let node = central.engine.node_id().to_string();
    driftkv_store::spawn_gc_rounds(Arc::downgrade(central), &node, every, move |central| {
        let now_ms = wall.now_ms();
        async move { central.collect_garbage(now_ms, grace).await }
    })
}

#[cfg(test)]
mod tests {
    use driftkv_core::{Change, LiveValue, LogEntry, Record, Version};

    use super::*;

    /// A key change at `sequence` with a value of `bytes` bytes, written by `writer`.
    fn logged(sequence: u64, writer: Option<u64>, bytes: usize) -> Logged {
        let record = Record {
            version: Version {
                timestamp: sequence,
                origin: 1,
            },
            live: Some(LiveValue {
                value: vec![b'v'; bytes].into(),
                metadata: None,
                expiration: None,
            }),
        };
        Logged {
            entry: LogEntry {
                sequence,
                change: Change::Key {
                    namespace: NamespaceId([1; 16]),
                    key: format!("k{sequence}"),
                    record,
                },
            },
            writer,
        }
    }

    fn sequences(batch: &LogBatch) -> (Vec<u64>, Vec<u64>) {
        let whole = batch.entries.iter().map(|e| e.sequence).collect();
        (whole, batch.yours.clone())
    }

    /// The subscriber's own writes above `full_through` go as sequences; everything else, a
    /// write of another writer's, of no known writer's, or at or below `full_through`, whole.
    #[test]
    fn a_subscribers_own_writes_are_left_out_above_full_through() {
        let writers = [None, Some(7), Some(7), Some(8), Some(7), None];
        let entries = (1..).zip(writers).map(|(s, w)| logged(s, w, 10)).collect();
        let subscription = Subscription {
            node_id: 2,
            from: 1,
            writer: Some(7),
            full_through: 2,
        };
        let batches = cut(entries, &subscription);
        assert_eq!(batches.len(), 1);
        assert_eq!(sequences(&batches[0]), (vec![1, 2, 4, 6], vec![3, 5]));
        assert_eq!(batches[0].last(), Some(6));

        // Without a writer id, everything goes whole.
        let entries = (1..).zip(writers).map(|(s, w)| logged(s, w, 10)).collect();
        let anonymous = Subscription {
            writer: None,
            ..subscription
        };
        let batches = cut(entries, &anonymous);
        assert_eq!(sequences(&batches[0]), ((1..=6).collect(), vec![]));
    }

    /// Batches are cut by the bytes they carry, a left-out entry counting for its sequence
    /// only, and each batch is a run with no gap that follows on from the one before.
    #[test]
    fn batches_are_consecutive_runs_of_about_batch_bytes() {
        let half = BATCH_BYTES / 2;
        let plan = [
            (Some(7), half),
            (None, half),
            (Some(7), half),
            (Some(7), half),
            (None, half),
            (None, 1),
        ];
        let entries = (1..)
            .zip(plan)
            .map(|(s, (w, bytes))| logged(s, w, bytes))
            .collect();
        let subscription = Subscription {
            writer: Some(7),
            ..Default::default()
        };
        let batches = cut(entries, &subscription);
        let runs: Vec<_> = batches.iter().map(sequences).collect();
        assert_eq!(runs, [(vec![2], vec![1, 3, 4]), (vec![5, 6], vec![]),]);
    }
}
