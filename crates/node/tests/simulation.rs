//! A seeded simulation of a whole cluster in one process, after FoundationDB's and chitchat's:
//! central and 3 to 5 edges on the real code paths (the engine and its commit thread, stores on
//! disk, edges with their caches, forwarding and followers, membership gossip), joined by an
//! in-process network that a seeded schedule cuts, delays and heals, while edges and central
//! crash and restart (their stores reopened from disk) and node clocks drift. At the end
//! everything heals and the checks run:
//!
//! - no acknowledged write is lost: read at central and at every edge, every key holds a value
//!   no completed write superseded (the testbed's checker, with no staleness allowed);
//! - every edge converged to central: the same namespaces, and the same live records with the
//!   same versions;
//! - the testbed's checker finds no violation in the history of the run (no phantom reads, read
//!   your writes, convergence);
//! - gossip sees every member live again.
//!
//! Garbage collection runs throughout with no grace period, so tombstones go the moment every
//! edge gossip lists has applied past them: a key that came back after its tombstone went
//! (through a replay, a late entry or a snapshot) fails the convergence and history checks.
//!
//! It runs on tokio's paused clock, so virtual seconds of partitions and heartbeats pass in real
//! milliseconds. The engine commits on a thread of its own, which tokio's clock does not know
//! about; calls into central are therefore made while a blocking task is running, which keeps
//! the clock from jumping ahead while a commit is under way (see [`inhibited`]).
//!
//! `DRIFTKV_SIM_SEEDS` (default 100) sets how many seeds run; `DRIFTKV_SIM_SEED=N` runs seed
//! N alone. A failing seed is printed with the command that runs it again, and a replay is the
//! same run: node clocks follow tokio's paused clock from a fixed epoch, and central's commit
//! thread runs while tokio's clock is held still, so every operation gets the same answer at
//! the same virtual time and every node ends with the same records and versions
//! ([`a_seed_replays_exactly`] checks it on a digest of both, printed for every seed). What the
//! digest leaves out: namespace ids (random, so namespaces are compared by title) and the
//! storage engines' background work (flushes and compactions, which change no answer).

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::num::NonZeroU64;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock, Weak};
use std::time::Duration;

use async_trait::async_trait;
use driftkv_central::{spawn_gc, spawn_log_trimmer, Central, CentralOptions, LogRetention};
use driftkv_core::service::put;
use driftkv_core::time::{SkewedClock, WallClock};
use driftkv_core::upstream::{
    BatchOutcome, EventStream, SnapshotStream, Subscription, Upstream, WriteRequest,
};
use driftkv_core::{KvError, KvService, LiveValue, Namespace, NamespaceId, Record, Write, WriteOp};
use driftkv_edge::{spawn_follower, spawn_gc as spawn_edge_gc, Edge, EdgeOptions};
use driftkv_engine::{Engine, RateLimiter};
use driftkv_gossip::{ChannelTransport, Gossip, GossipConfig, GossipTransport};
use driftkv_node::membership;
use driftkv_store::{EngineKind, Store};
use driftkv_testbed::{check, Described, History, Kind, Op};
use futures::StreamExt as _;
use rand::rngs::StdRng;
use rand::{Rng as _, SeedableRng as _};
use tokio::task::JoinHandle;
use tokio::time::Instant;

const ACCOUNT: &str = "sim";
/// Keys written: few, so that writes to the same key race and overwrite each other.
const KEYS: usize = 12;
/// Scheduled steps per run.
const STEPS: usize = 160;
/// Entries central's log keeps: small, so that an edge away for a while needs a snapshot.
const LOG_RETENTION: u64 = 8;
/// Tombstones go as soon as every edge has applied past them (the wall clocks are real while
/// the run's time is virtual, so no grace period would pass): garbage collection as eager as
/// it can be, against partitions, crashes, replays and snapshots.
const TOMBSTONE_GRACE: Duration = Duration::ZERO;
/// How often garbage collection runs, in virtual time.
const GC_INTERVAL: Duration = Duration::from_millis(200);
/// How long the healed cluster gets to converge, in virtual time.
const CONVERGE: Duration = Duration::from_secs(120);

// ---------------------------------------------------------------------------------------
// The schedule

/// Something the schedule does.
#[derive(Clone, Debug)]
enum Action {
    /// Write `key` at `edge`: a value, or a delete.
    Write {
        edge: usize,
        key: usize,
        delete: bool,
    },
    /// Read `key` at `edge`.
    Read { edge: usize, key: usize },
    /// Cut the link between `edge` and central for a while.
    Cut { edge: usize, for_ms: u64 },
    /// Cut gossip between two nodes (0 is central, edge i is i + 1) for a while.
    GossipCut { a: usize, b: usize, for_ms: u64 },
    /// Delay everything on the link between `edge` and central, each way.
    Delay { edge: usize, ms: u64 },
    /// Set a node's clock skew (0 is central).
    Skew { node: usize, ms: i64 },
    /// Crash `edge` and start it again later, from what its store kept.
    CrashEdge { edge: usize, for_ms: u64 },
    /// Crash central and start it again later.
    CrashCentral { for_ms: u64 },
    /// Create a second namespace (at `edge`), or delete it if it exists.
    Namespace { edge: usize },
}

/// A seeded schedule: the number of edges and, for each step, when it happens (virtual ms after
/// the start) and what it does.
fn schedule(seed: u64) -> (usize, Vec<(u64, Action)>) {
    let mut rng = StdRng::seed_from_u64(seed);
    let edges = rng.gen_range(3..=5);
    let mut at = 0;
    let mut steps = Vec::with_capacity(STEPS);
    for _ in 0..STEPS {
        at += rng.gen_range(0..150);
        let edge = rng.gen_range(0..edges);
        let action = match rng.gen_range(0..100) {
            0..45 => Action::Write {
                edge,
                key: rng.gen_range(0..KEYS),
                delete: rng.gen_bool(0.15),
            },
            45..75 => Action::Read {
                edge,
                key: rng.gen_range(0..KEYS),
            },
            75..80 => Action::Cut {
                edge,
                for_ms: rng.gen_range(100..6_000),
            },
            80..84 => Action::GossipCut {
                a: rng.gen_range(0..=edges),
                b: rng.gen_range(0..=edges),
                for_ms: rng.gen_range(100..10_000),
            },
            84..88 => Action::Delay {
                edge,
                ms: [0, 0, 5, 50, 300][rng.gen_range(0..5)],
            },
            88..92 => Action::Skew {
                node: rng.gen_range(0..=edges),
                ms: rng.gen_range(-5_000..5_000),
            },
            92..95 => Action::CrashEdge {
                edge,
                for_ms: rng.gen_range(0..8_000),
            },
            95..97 => Action::CrashCentral {
                for_ms: rng.gen_range(0..4_000),
            },
            _ => Action::Namespace { edge },
        };
        steps.push((at, action));
    }
    (edges, steps)
}

// ---------------------------------------------------------------------------------------
// The network between the edges and central

/// Runs `work` while a blocking task is running, so that tokio's paused clock does not jump
/// ahead while `work` waits on a thread tokio does not know about (central's commit thread).
async fn inhibited<F: std::future::Future>(work: F) -> F::Output {
    let (done, wait) = std::sync::mpsc::channel::<()>();
    let blocker = tokio::task::spawn_blocking(move || {
        let _ = wait.recv();
    });
    let output = work.await;
    drop(done);
    let _ = blocker.await;
    output
}

/// Central as the network reaches it: absent while it is down.
type CentralSlot = Arc<RwLock<Option<Arc<Central>>>>;

/// One edge's link to central: cut, delayed, or fine.
#[derive(Default)]
struct LinkState {
    cut: AtomicBool,
    delay_ms: AtomicU64,
    /// Bumped whenever the link is cut or central goes down: streams opened before end.
    epoch: AtomicU64,
}

/// The [`Upstream`] an edge of the simulation has: central through its link.
struct Link {
    slot: CentralSlot,
    state: Arc<LinkState>,
}

impl Link {
    fn central(&self) -> Result<Arc<Central>, KvError> {
        if self.state.cut.load(Ordering::SeqCst) {
            return Err(KvError::Unavailable("the link to central is cut".into()));
        }
        self.slot
            .read()
            .unwrap()
            .clone()
            .ok_or_else(|| KvError::Unavailable("central is down".into()))
    }

    async fn delay(&self) {
        let ms = self.state.delay_ms.load(Ordering::SeqCst);
        if ms > 0 {
            tokio::time::sleep(Duration::from_millis(ms)).await;
        }
    }

    /// A call to central over the link: the request and the answer each take the link's
    /// delay, and an answer that finds the link cut is lost (the call may have taken effect).
    async fn call<T, F, Fut>(&self, call: F) -> Result<T, KvError>
    where
        F: FnOnce(Arc<Central>) -> Fut,
        Fut: std::future::Future<Output = Result<T, KvError>>,
    {
        self.delay().await;
        let central = self.central()?;
        let answer = inhibited(call(central)).await;
        self.delay().await;
        self.central()?;
        answer
    }
}

#[async_trait]
impl Upstream for Link {
    async fn write_batch(
        &self,
        writer: Option<u64>,
        requests: Vec<WriteRequest>,
    ) -> Result<BatchOutcome, KvError> {
        self.call(|c| async move { c.write_batch(writer, requests).await })
            .await
    }

    async fn create_namespace(&self, account_id: &str, title: &str) -> Result<Namespace, KvError> {
        self.call(|c| async move { c.create_namespace(account_id, title).await })
            .await
    }

    async fn rename_namespace(
        &self,
        account_id: &str,
        id: NamespaceId,
        title: &str,
    ) -> Result<Namespace, KvError> {
        self.call(|c| async move { c.rename_namespace(account_id, id, title).await })
            .await
    }

    async fn delete_namespace(&self, account_id: &str, id: NamespaceId) -> Result<(), KvError> {
        self.call(|c| async move { c.delete_namespace(account_id, id).await })
            .await
    }

    async fn get(
        &self,
        account_id: &str,
        id: NamespaceId,
        key: &str,
    ) -> Result<Option<LiveValue>, KvError> {
        self.call(|c| async move { c.get(account_id, id, key).await })
            .await
    }

    async fn subscribe(&self, subscription: Subscription) -> Result<EventStream, KvError> {
        let epoch = self.state.epoch.load(Ordering::SeqCst);
        let inner = self
            .call(|c| async move { c.subscribe(subscription).await })
            .await?;
        Ok(self.carry(inner, epoch))
    }

    async fn snapshot(&self, node_id: u64) -> Result<SnapshotStream, KvError> {
        let epoch = self.state.epoch.load(Ordering::SeqCst);
        let inner = self
            .call(|c| async move { c.snapshot(node_id).await })
            .await?;
        Ok(self.carry(inner, epoch))
    }
}

impl Link {
    /// `inner`'s items over the link: each delayed by the link's delay, in order, and the
    /// stream broken (an error, then its end) once the link is cut or central goes down.
    fn carry<T: Send + 'static>(
        &self,
        mut inner: std::pin::Pin<Box<dyn futures::Stream<Item = Result<T, KvError>> + Send>>,
        epoch: u64,
    ) -> std::pin::Pin<Box<dyn futures::Stream<Item = Result<T, KvError>> + Send>> {
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        let state = self.state.clone();
        tokio::spawn(async move {
            let broken = || state.epoch.load(Ordering::SeqCst) != epoch;
            loop {
                let item = tokio::select! {
                    item = inner.next() => item,
                    () = tokio::time::sleep(Duration::from_millis(100)) => {
                        if broken() {
                            let _ = tx.send(Err(KvError::Unavailable("the link broke".into()))).await;
                            return;
                        }
                        continue;
                    }
                };
                let Some(item) = item else { return };
                let ms = state.delay_ms.load(Ordering::SeqCst);
                if ms > 0 {
                    tokio::time::sleep(Duration::from_millis(ms)).await;
                }
                if broken() {
                    let _ = tx
                        .send(Err(KvError::Unavailable("the link broke".into())))
                        .await;
                    return;
                }
                if tx.send(item).await.is_err() {
                    return;
                }
            }
        });
        Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx))
    }
}

// ---------------------------------------------------------------------------------------
// Nodes

/// A running central.
struct CentralRun {
    central: Arc<Central>,
    clock: Arc<SkewedClock>,
    gossip: Arc<Gossip>,
    tasks: Vec<JoinHandle<()>>,
}

/// A running edge.
struct EdgeRun {
    edge: Arc<Edge>,
    clock: Arc<SkewedClock>,
    gossip: Arc<Gossip>,
    tasks: Vec<JoinHandle<()>>,
    /// Its number in the history: a restarted edge is a new edge there, since read-your-writes
    /// is a promise of a running edge (an edge's replica is not synced to disk: what a crash
    /// takes from it comes back from central's log).
    incarnation: usize,
}

/// Everything the simulation runs.
struct Cluster {
    dir: PathBuf,
    edges: usize,
    slot: CentralSlot,
    central: Mutex<Option<CentralRun>>,
    /// Per edge: the running edge, if it is up.
    running: Vec<Mutex<Option<EdgeRun>>>,
    links: Vec<Arc<LinkState>>,
    channels: ChannelTransport,
    incarnations: AtomicU64,
    started: Instant,
    /// The operations of the run, for the checker.
    ops: Mutex<Vec<Op>>,
    /// The namespaces of the run: the first one, and a second one made and deleted on the way.
    namespace: Mutex<Option<NamespaceId>>,
    second: Mutex<Option<NamespaceId>>,
}

fn gossip_addr(node: usize) -> SocketAddr {
    SocketAddr::from(([10, 0, 0, 1], 7000 + node as u16))
}

fn node_id(node: usize) -> u64 {
    node as u64 + 1
}

fn store_dir(dir: &Path, node: usize) -> PathBuf {
    dir.join(format!("node-{node}"))
}

fn open(dir: &Path) -> Arc<Store> {
    Arc::new(driftkv_store::open(EngineKind::default(), dir).expect("the store opens"))
}

/// Waits until every strong reference to a node's parts is gone (tasks that held one have
/// noticed the crash), so that its store is closed and can be opened again.
async fn released<T>(what: Weak<T>, name: &str) {
    let deadline = Instant::now() + Duration::from_secs(300);
    while what.strong_count() > 0 {
        assert!(Instant::now() < deadline, "{name} was never released");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Wall time that follows tokio's paused clock from a fixed epoch, so that a seed stamps the
/// same versions and expirations every time it runs.
struct VirtualClock {
    started: Instant,
}

/// The virtual epoch: 2026-01-01T00:00:00Z.
const EPOCH_MS: u64 = 1_767_225_600_000;

impl WallClock for VirtualClock {
    fn now_ms(&self) -> u64 {
        EPOCH_MS + self.started.elapsed().as_millis() as u64
    }
}

impl Cluster {
    fn now_ms(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }

    async fn join_gossip(&self, node: usize, role: &str) -> Arc<Gossip> {
        let gossip = Gossip::start(
            GossipConfig {
                node_id: node_id(node).to_string(),
                cluster_id: "sim".into(),
                listen: gossip_addr(node),
                advertise_host: None,
                seeds: vec![gossip_addr(0).to_string()],
                interval: Duration::from_millis(200),
                dead_node_grace_period: Duration::from_secs(3600),
                keys: Vec::new(),
                transport: GossipTransport::InProcess(self.channels.clone()),
            },
            vec![("role".into(), role.into())],
        )
        .await
        .expect("gossip starts");
        Arc::new(gossip)
    }

    async fn start_central(&self, skew_ms: i64) {
        let store = open(&store_dir(&self.dir, 0));
        let clock = Arc::new(SkewedClock::new(Arc::new(VirtualClock {
            started: self.started,
        })));
        clock.set_skew_ms(skew_ms);
        let engine = Engine::new(
            store.clone(),
            NonZeroU64::new(node_id(0)).unwrap(),
            clock.clone(),
            RateLimiter::per_second(0),
        )
        .expect("the engine starts");
        let engine = Arc::new(engine);
        let central = Central::new(
            engine.clone(),
            CentralOptions {
                heartbeat: Duration::from_millis(500),
                max_snapshots: 8,
            },
        );
        let gossip = self.join_gossip(0, "central").await;
        let tasks = vec![
            spawn_log_trimmer(
                &store,
                node_id(0),
                LogRetention {
                    entries: LOG_RETENTION,
                    age: None,
                },
                clock.clone(),
                Duration::from_millis(200),
            ),
            membership::publish_central(
                gossip.clone(),
                central.clone(),
                Duration::from_millis(200),
            ),
            spawn_gc(&central, clock.clone(), TOMBSTONE_GRACE, GC_INTERVAL),
        ];
        *self.slot.write().unwrap() = Some(central.clone());
        *self.central.lock().unwrap() = Some(CentralRun {
            central,
            clock,
            gossip,
            tasks,
        });
    }

    async fn stop_central(&self) {
        let Some(run) = self.central.lock().unwrap().take() else {
            return;
        };
        *self.slot.write().unwrap() = None;
        for link in &self.links {
            link.epoch.fetch_add(1, Ordering::SeqCst);
        }
        run.central.stop_streams();
        for task in &run.tasks {
            task.abort();
        }
        run.gossip.shutdown().await;
        let engine = Arc::downgrade(run.central.engine());
        drop(run);
        released(engine, "central's engine").await;
    }

    async fn start_edge(&self, edge: usize, skew_ms: i64) {
        let node = edge + 1;
        let store = open(&store_dir(&self.dir, node));
        let clock = Arc::new(SkewedClock::new(Arc::new(VirtualClock {
            started: self.started,
        })));
        clock.set_skew_ms(skew_ms);
        let link = Link {
            slot: self.slot.clone(),
            state: self.links[edge].clone(),
        };
        let options = EdgeOptions {
            node_id: node_id(node),
            cache_max_bytes: 1 << 20,
            min_cache_ttl: Duration::from_secs(1),
            default_cache_ttl: Duration::from_secs(2),
            max_cache_ttl: Duration::from_secs(60),
            invalidate_on_replication: false,
            request_timeout: Duration::from_secs(2),
            stream_silence: Duration::from_secs(3),
            tombstone_grace: TOMBSTONE_GRACE,
        };
        let wall: Arc<dyn WallClock> = clock.clone();
        let edge_node = Edge::new(store, wall, Arc::new(link), options).expect("the edge starts");
        let gossip = self.join_gossip(node, "edge").await;
        let tasks = vec![
            spawn_follower(edge_node.clone()),
            spawn_edge_gc(&edge_node, GC_INTERVAL),
            membership::publish_edge(
                gossip.clone(),
                edge_node.clone(),
                None,
                Duration::from_millis(200),
            ),
        ];
        let incarnation = self.incarnations.fetch_add(1, Ordering::SeqCst) as usize;
        *self.running[edge].lock().unwrap() = Some(EdgeRun {
            edge: edge_node,
            clock,
            gossip,
            tasks,
            incarnation,
        });
    }

    async fn stop_edge(&self, edge: usize) {
        let Some(run) = self.running[edge].lock().unwrap().take() else {
            return;
        };
        for task in &run.tasks {
            task.abort();
        }
        run.gossip.shutdown().await;
        let weak = Arc::downgrade(&run.edge);
        drop(run);
        released(weak, "a crashed edge").await;
    }

    /// The running edge in slot `edge` and its history number, if it is up.
    fn edge(&self, edge: usize) -> Option<(Arc<Edge>, usize)> {
        let running = self.running[edge].lock().unwrap();
        running.as_ref().map(|r| (r.edge.clone(), r.incarnation))
    }

    fn record(&self, op: Op) {
        self.ops.lock().unwrap().push(op);
    }
}

fn key_name(key: usize) -> String {
    format!("k{key:02}")
}

/// Runs one write or read at `edge` and records it.
async fn operate(cluster: Arc<Cluster>, action: Action, value: String) {
    let (edge, key, delete) = match action {
        Action::Write { edge, key, delete } => (edge, key, Some(delete)),
        Action::Read { edge, key } => (edge, key, None),
        _ => unreachable!("only writes and reads are operations"),
    };
    let Some((node, incarnation)) = cluster.edge(edge) else {
        return;
    };
    let Some(namespace) = *cluster.namespace.lock().unwrap() else {
        return;
    };
    let key = key_name(key);
    let invoke_ms = cluster.now_ms();
    let (kind, value, ok) = match delete {
        Some(delete) => {
            let write = if delete {
                Write {
                    key: key.clone(),
                    op: WriteOp::Delete,
                }
            } else {
                put(key.clone(), value.clone().into_bytes(), None, None)
            };
            let outcome = node.write(ACCOUNT, namespace, vec![write]).await;
            let ok = outcome.is_ok_and(|o| o.successful == 1);
            (Kind::Write, (!delete).then_some(value), ok)
        }
        None => match node.get(ACCOUNT, namespace, &key, None).await {
            Ok(found) => (
                Kind::Read,
                found.map(|v| String::from_utf8(v.value.to_vec()).expect("text values")),
                true,
            ),
            // A failed read says nothing about what is stored.
            Err(_) => return,
        },
    };
    cluster.record(Op {
        kind,
        key,
        value,
        edge: incarnation,
        invoke_ms,
        complete_ms: cluster.now_ms(),
        ok,
    });
}

/// Creates the second namespace at `edge`, or deletes it if it exists.
async fn toggle_namespace(cluster: Arc<Cluster>, edge: usize) {
    let Some((node, _)) = cluster.edge(edge) else {
        return;
    };
    let existing = *cluster.second.lock().unwrap();
    match existing {
        None => {
            if let Ok(ns) = node.create_namespace(ACCOUNT, "second").await {
                *cluster.second.lock().unwrap() = Some(ns.id);
                let _ = node
                    .write(ACCOUNT, ns.id, vec![put("only", "here", None, None)])
                    .await;
            }
        }
        Some(id) => {
            if node.delete_namespace(ACCOUNT, id).await.is_ok() {
                *cluster.second.lock().unwrap() = None;
            }
        }
    }
}

// ---------------------------------------------------------------------------------------
// One run

/// What a node's store holds: namespaces by id, and per namespace the live records (key →
/// version and value).
type State = (
    BTreeSet<NamespaceId>,
    BTreeMap<NamespaceId, BTreeMap<String, Record>>,
);

fn state_of(store: &Store) -> State {
    let namespaces: BTreeSet<NamespaceId> = store
        .namespaces()
        .unwrap()
        .into_iter()
        .map(|ns| ns.id)
        .collect();
    let mut records = BTreeMap::new();
    for &id in &namespaces {
        let mut live = BTreeMap::new();
        let mut after: Option<String> = None;
        loop {
            let page = store.records(id, after.as_deref(), 1000).unwrap();
            let Some((last, _)) = page.last() else { break };
            after = Some(last.clone());
            for (key, record) in page {
                if record.live.is_some() {
                    live.insert(key, record);
                }
            }
        }
        records.insert(id, live);
    }
    (namespaces, records)
}

/// What a run did, for its line in the output.
struct Summary {
    /// A digest of the run's history and of every node's final state: equal for two runs of
    /// one seed that did the same.
    fingerprint: u64,
    edges: usize,
    writes: usize,
    acknowledged: usize,
    reads: usize,
    faults: BTreeMap<&'static str, usize>,
    snapshots: u64,
    purged: u64,
}

async fn run(seed: u64) -> Result<Summary, String> {
    let (edges, steps) = schedule(seed);
    let dir = tempfile::tempdir().unwrap();
    let cluster = Arc::new(Cluster {
        dir: dir.path().to_owned(),
        edges,
        slot: Arc::default(),
        central: Mutex::new(None),
        running: (0..edges).map(|_| Mutex::new(None)).collect(),
        links: (0..edges).map(|_| Arc::default()).collect(),
        channels: ChannelTransport::default(),
        incarnations: AtomicU64::new(0),
        started: Instant::now(),
        ops: Mutex::default(),
        namespace: Mutex::new(None),
        second: Mutex::new(None),
    });
    cluster.start_central(0).await;
    for edge in 0..edges {
        cluster.start_edge(edge, 0).await;
    }
    let (first, _) = cluster.edge(0).unwrap();
    let namespace = first
        .create_namespace(ACCOUNT, "main")
        .await
        .map_err(|e| format!("the namespace was not created: {e}"))?;
    *cluster.namespace.lock().unwrap() = Some(namespace.id);
    drop(first);

    let mut tasks = Vec::new();
    let start = Instant::now();
    let mut faults: BTreeMap<&'static str, usize> = BTreeMap::new();
    for (step, (at, action)) in steps.into_iter().enumerate() {
        let fault = match action {
            Action::Write { .. } | Action::Read { .. } => None,
            Action::Cut { .. } => Some("link cuts"),
            Action::GossipCut { .. } => Some("gossip cuts"),
            Action::Delay { .. } => Some("delays"),
            Action::Skew { .. } => Some("skews"),
            Action::CrashEdge { .. } => Some("edge crashes"),
            Action::CrashCentral { .. } => Some("central crashes"),
            Action::Namespace { .. } => Some("namespace changes"),
        };
        if let Some(fault) = fault {
            *faults.entry(fault).or_default() += 1;
        }
        tokio::time::sleep_until(start + Duration::from_millis(at)).await;
        let cluster = cluster.clone();
        match action {
            Action::Write { .. } | Action::Read { .. } => {
                let value = format!("s{seed}-{step}");
                tasks.push(tokio::spawn(operate(cluster, action, value)));
            }
            Action::Namespace { edge } => tasks.push(tokio::spawn(toggle_namespace(cluster, edge))),
            Action::Cut { edge, for_ms } => {
                let link = cluster.links[edge].clone();
                link.cut.store(true, Ordering::SeqCst);
                link.epoch.fetch_add(1, Ordering::SeqCst);
                tasks.push(tokio::spawn(async move {
                    tokio::time::sleep(Duration::from_millis(for_ms)).await;
                    link.cut.store(false, Ordering::SeqCst);
                }));
            }
            Action::GossipCut { a, b, for_ms } => {
                let (a, b) = (gossip_addr(a), gossip_addr(b));
                cluster.channels.remove_link(a, b).await;
                tasks.push(tokio::spawn(async move {
                    tokio::time::sleep(Duration::from_millis(for_ms)).await;
                    cluster.channels.add_link(a, b).await;
                }));
            }
            Action::Delay { edge, ms } => cluster.links[edge].delay_ms.store(ms, Ordering::SeqCst),
            Action::Skew { node: 0, ms } => {
                if let Some(run) = cluster.central.lock().unwrap().as_ref() {
                    run.clock.set_skew_ms(ms);
                }
            }
            Action::Skew { node, ms } => {
                if let Some(run) = cluster.running[node - 1].lock().unwrap().as_ref() {
                    run.clock.set_skew_ms(ms);
                }
            }
            Action::CrashEdge { edge, for_ms } => {
                tasks.push(tokio::spawn(async move {
                    let skew = cluster.running[edge]
                        .lock()
                        .unwrap()
                        .as_ref()
                        .map(|run| run.clock.skew_ms());
                    let Some(skew) = skew else { return };
                    cluster.stop_edge(edge).await;
                    tokio::time::sleep(Duration::from_millis(for_ms)).await;
                    cluster.start_edge(edge, skew).await;
                }));
            }
            Action::CrashCentral { for_ms } => {
                tasks.push(tokio::spawn(async move {
                    let skew = cluster
                        .central
                        .lock()
                        .unwrap()
                        .as_ref()
                        .map(|run| run.clock.skew_ms());
                    let Some(skew) = skew else { return };
                    cluster.stop_central().await;
                    tokio::time::sleep(Duration::from_millis(for_ms)).await;
                    cluster.start_central(skew).await;
                }));
            }
        }
    }
    // Let every operation and fault run its course.
    for task in tasks {
        task.await
            .map_err(|e| format!("a task of the run failed: {e}"))?;
    }

    // Heal: every link up and undelayed, every clock right, every node running.
    for link in &cluster.links {
        link.cut.store(false, Ordering::SeqCst);
        link.delay_ms.store(0, Ordering::SeqCst);
    }
    for a in 0..=edges {
        for b in 0..=edges {
            cluster
                .channels
                .add_link(gossip_addr(a), gossip_addr(b))
                .await;
        }
    }
    if let Some(run) = cluster.central.lock().unwrap().as_ref() {
        run.clock.set_skew_ms(0);
    }
    for running in &cluster.running {
        if let Some(run) = running.lock().unwrap().as_ref() {
            run.clock.set_skew_ms(0);
        }
    }
    converge(&cluster).await?;
    verify(&cluster).await?;
    let fingerprint = fingerprint(&cluster);
    let ops = cluster.ops.lock().unwrap();
    let writes = ops.iter().filter(|op| op.kind == Kind::Write);
    Ok(Summary {
        fingerprint,
        edges,
        writes: writes.clone().count(),
        acknowledged: writes.filter(|op| op.ok).count(),
        reads: ops.iter().filter(|op| op.kind == Kind::Read).count(),
        faults,
        snapshots: (1..=edges)
            .map(|node| {
                driftkv_metrics::SNAPSHOTS
                    .with_label_values(&[&node_id(node).to_string(), "installed"])
                    .get()
            })
            .sum(),
        purged: (0..=edges)
            .map(|node| {
                driftkv_metrics::GC_PURGED
                    .with_label_values(&[&node_id(node).to_string(), "tombstone"])
                    .get()
            })
            .sum(),
    })
}

/// Waits (in virtual time) until every edge has applied everything central made durable and
/// gossip sees every member live.
async fn converge(cluster: &Cluster) -> Result<(), String> {
    let deadline = Instant::now() + CONVERGE;
    loop {
        let durable = {
            let central = cluster.central.lock().unwrap();
            let run = central.as_ref().expect("central runs after the heal");
            *run.central.engine().durable_sequence().borrow()
        };
        let mut behind = Vec::new();
        for edge in 0..cluster.edges {
            let (node, _) = cluster.edge(edge).expect("every edge runs after the heal");
            let applied = node.store().applied_sequence().unwrap();
            if applied < durable {
                behind.push(format!("edge {edge} at {applied}"));
            }
        }
        let gossip = {
            let central = cluster.central.lock().unwrap();
            central.as_ref().unwrap().gossip.clone()
        };
        let members = gossip.members().await;
        let live = members.iter().filter(|m| m.live).count();
        if behind.is_empty() && live == cluster.edges + 1 {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(format!(
                "not converged {} s after the heal: central durable at {durable}, {}; gossip shows {live} of {} members live",
                CONVERGE.as_secs(),
                behind.join(", "),
                cluster.edges + 1
            ));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The end-of-run checks.
async fn verify(cluster: &Cluster) -> Result<(), String> {
    let central_store = {
        let central = cluster.central.lock().unwrap();
        central.as_ref().unwrap().central.engine().store().clone()
    };
    let expected = state_of(&central_store);
    for edge in 0..cluster.edges {
        let (node, _) = cluster.edge(edge).unwrap();
        let found = state_of(node.store());
        if found.0 != expected.0 {
            return Err(format!(
                "edge {edge} has namespaces {:?}, central {:?}",
                found.0, expected.0
            ));
        }
        if found.1 != expected.1 {
            let differences: Vec<String> = expected
                .1
                .iter()
                .flat_map(|(ns, records)| {
                    let theirs = found.1.get(ns).cloned().unwrap_or_default();
                    let keys: BTreeSet<&String> = records.keys().chain(theirs.keys()).collect();
                    keys.into_iter()
                        .filter(|k| records.get(*k) != theirs.get(*k))
                        .map(|k| {
                            format!(
                                "{k}: central {:?}, edge {:?}",
                                records.get(k),
                                theirs.get(k)
                            )
                        })
                        .collect::<Vec<_>>()
                })
                .collect();
            return Err(format!(
                "edge {edge} diverged from central: {}",
                differences.join("; ")
            ));
        }
    }

    // The history: the run's operations, then a final read of every key at central (as edge
    // "central") and at every edge, straight from the stores.
    let namespace = cluster.namespace.lock().unwrap().unwrap();
    let ops = cluster.ops.lock().unwrap().clone();
    let now = cluster.now_ms();
    let mut finals = Vec::new();
    let final_read = |store: &Store, edge: usize, key: &str| Op {
        kind: Kind::Final,
        key: key.to_owned(),
        value: store
            .get(namespace, key)
            .unwrap()
            .and_then(|r| r.live)
            .map(|v| String::from_utf8(v.value.to_vec()).unwrap()),
        edge,
        invoke_ms: now,
        complete_ms: now,
        ok: true,
    };
    let central_number = usize::MAX;
    for key in (0..KEYS).map(key_name) {
        finals.push(final_read(&central_store, central_number, &key));
        for edge in 0..cluster.edges {
            let (node, incarnation) = cluster.edge(edge).unwrap();
            finals.push(final_read(node.store(), incarnation, &key));
        }
    }
    let writes: Vec<Op> = ops
        .iter()
        .filter(|op| op.kind == Kind::Write)
        .cloned()
        .collect();
    // During the run reads may be as stale as partitions make them; at the end, no value a
    // completed write superseded may be left anywhere: that would be a lost acknowledged write.
    let during = History::of(Duration::from_secs(24 * 3600), 0, cluster.edges, ops);
    let after = History::of(Duration::ZERO, 0, cluster.edges, [writes, finals].concat());
    for (history, what) in [(&during, "the run"), (&after, "the end")] {
        let violations = check(history);
        if let Some(first) = violations.first() {
            let ops: Vec<String> = first
                .ops
                .iter()
                .map(|&i| format!("#{i}: {}", Described(&history.ops[i])))
                .collect();
            return Err(format!(
                "{} violation(s) in {what}; the first: {}: {}\n    {}",
                violations.len(),
                first.rule,
                first.message,
                ops.join("\n    ")
            ));
        }
    }
    Ok(())
}

/// The digest of a run: its history, operation by operation, and the final state of central
/// and of every edge. Namespaces are named by title, since their ids are random.
fn fingerprint(cluster: &Cluster) -> u64 {
    use std::hash::{Hash as _, Hasher as _};
    // Fixed keys: the same digest in every process.
    let mut digest = std::hash::DefaultHasher::new();
    for op in cluster.ops.lock().unwrap().iter() {
        format!("{op:?}").hash(&mut digest);
    }
    let central = {
        let central = cluster.central.lock().unwrap();
        central.as_ref().unwrap().central.engine().store().clone()
    };
    let mut stores = vec![central];
    for edge in 0..cluster.edges {
        stores.push(cluster.edge(edge).unwrap().0.store().clone());
    }
    for store in &stores {
        let titles: BTreeMap<NamespaceId, String> = store
            .namespaces()
            .unwrap()
            .into_iter()
            .map(|ns| (ns.id, ns.title))
            .collect();
        let by_title: BTreeMap<&String, _> = state_of(store)
            .1
            .into_iter()
            .map(|(id, records)| (&titles[&id], records))
            .collect();
        format!("{by_title:?}").hash(&mut digest);
    }
    digest.finish()
}

/// The seeds this run covers.
fn seeds() -> Vec<u64> {
    if let Some(seed) = std::env::var("DRIFTKV_SIM_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
    {
        return vec![seed];
    }
    let count = std::env::var("DRIFTKV_SIM_SEEDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(100);
    (1..=count).collect()
}

/// Runs `seed` on a fresh runtime with tokio's clock paused.
fn simulate(seed: u64) -> Result<Summary, String> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .start_paused(true)
        .build()
        .unwrap();
    let outcome = runtime.block_on(run(seed));
    runtime.shutdown_timeout(Duration::from_secs(10));
    outcome
}

#[test]
fn seeded_simulations_keep_every_acknowledged_write_and_converge() {
    let mut failed = Vec::new();
    for seed in seeds() {
        let started = std::time::Instant::now();
        match simulate(seed) {
            Ok(summary) => eprintln!(
                "seed {seed}: ok in {:.1} s: {} edges, {} writes ({} acknowledged), {} reads, {} snapshots installed and {} tombstones purged so far, {:?}; run {:016x}",
                started.elapsed().as_secs_f64(),
                summary.edges,
                summary.writes,
                summary.acknowledged,
                summary.reads,
                summary.snapshots,
                summary.purged,
                summary.faults,
                summary.fingerprint
            ),
            Err(e) => {
                eprintln!(
                    "seed {seed} FAILED: {e}\n  replay: DRIFTKV_SIM_SEED={seed} cargo test -p driftkv-node --test simulation"
                );
                failed.push(seed);
            }
        }
    }
    assert!(failed.is_empty(), "failing seeds: {failed:?}");
}

/// A seed replays exactly: run twice, it gives the same history, operation by operation with
/// the same virtual times and answers, and the same final state on every node, versions
/// included. This is what makes a failing seed worth printing.
#[test]
fn a_seed_replays_exactly() {
    for seed in [1, 2, 3] {
        let first = simulate(seed).map(|s| s.fingerprint);
        let second = simulate(seed).map(|s| s.fingerprint);
        assert_eq!(first, second, "seed {seed} ran differently the second time");
    }
}
