//! Starting and stopping the roles: a central write region and edges. `driftkv central` and
//! `driftkv edge` run one each; `driftkv dev` runs a central and several edges in one process,
//! talking real gRPC over loopback.

use std::net::SocketAddr;
use std::num::NonZeroU64;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use driftkv_central::{
    spawn_gc, spawn_log_trimmer, Central, CentralOptions, CentralService, LogRetention,
};
use driftkv_core::time::{SkewedClock, SystemClock, WallClock};
use driftkv_core::upstream::Upstream;
use driftkv_edge::{
    spawn_follower, spawn_gc as spawn_edge_gc, CentralLink, Edge, EdgeOptions, Faults,
    FaultyUpstream, LinkTimeouts,
};
use driftkv_engine::{spawn_sweeper, Engine, RateLimiter};
use driftkv_http::{Auth, RequestTracing, ServerOptions};
use driftkv_proto::tls;
use driftkv_store::guard::{Guarded, StorageGuard};
use driftkv_store::Store;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::binding::BindingListener;
use crate::config::Config;
use crate::membership;
use crate::security::Security;
use crate::{admin, experiments, ops};
use driftkv_core::cluster::NodeRole;
use driftkv_gossip::{keys, Gossip};

/// Binds a TCP listener on `addr` for `what` (named in the error): what a node's `start` takes,
/// so that a caller may bind port 0 and learn the port before the node runs.
pub async fn listen(addr: SocketAddr, what: &str) -> anyhow::Result<TcpListener> {
    TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen for {what} on {addr}"))
}

/// A signal every server of the process stops on.
#[derive(Clone)]
pub struct Shutdown(watch::Receiver<bool>);

/// The trigger of a [`Shutdown`].
pub struct ShutdownTrigger(watch::Sender<bool>);

/// A new shutdown signal and its trigger.
pub fn shutdown() -> (ShutdownTrigger, Shutdown) {
    let (tx, rx) = watch::channel(false);
    (ShutdownTrigger(tx), Shutdown(rx))
}

impl ShutdownTrigger {
    /// Tells every server to stop.
    pub fn fire(&self) {
        self.0.send_replace(true);
    }
}

impl Shutdown {
    /// Resolves once the trigger fires (or is dropped).
    pub async fn wait(mut self) {
        let _ = self.0.wait_for(|stop| *stop).await;
    }
}

/// Opens the node's database in `dir` with the configured engine (`storage.engine`), its
/// writes guarded by the free-space threshold and its I/O errors noted for readiness
/// (`storage.min_free_bytes`, see [`driftkv_store::guard`]); the health probe opens the engine
/// again if it keeps failing after an error.
fn open_store(config: &Config, dir: &Path) -> anyhow::Result<(Arc<Store>, Arc<Guarded>)> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let engine = config.storage.engine.into();
    let opened =
        driftkv_store::open_backend(engine, dir).and_then(|backend| {
            let guard = StorageGuard::new(dir, config.storage.min_free_bytes);
            let reopen_dir = dir.to_owned();
            let guarded = Arc::new(Guarded::new(backend, guard).reopening_with(Box::new(
                move || driftkv_store::open_backend(engine, &reopen_dir),
            )));
            Ok((Store::open(guarded.clone())?, guarded))
        });
    let (store, guarded) = opened.with_context(|| {
        format!(
            "cannot open the {} database in {}",
            engine.name(),
            dir.display()
        )
    })?;
    Ok((Arc::new(store), guarded))
}

/// Creates `dir` if missing and makes it, and everything in it, its owner's alone: data
/// directories 0700, files 0600 (the process's umask keeps new files so, see `main`; this
/// mends what an earlier version left more open).
pub fn private_dir(dir: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        let restrict = |path: &Path, mode: u32| -> anyhow::Result<()> {
            let current = std::fs::symlink_metadata(path)?.permissions().mode() & 0o777;
            if current & !mode != 0 {
                std::fs::set_permissions(path, std::fs::Permissions::from_mode(current & mode))
                    .with_context(|| format!("cannot restrict {}", path.display()))?;
            }
            Ok(())
        };
        let mut pending = vec![dir.to_owned()];
        while let Some(current) = pending.pop() {
            restrict(&current, 0o700)?;
            for entry in std::fs::read_dir(&current)
                .with_context(|| format!("cannot read {}", current.display()))?
            {
                let entry = entry?;
                let kind = entry.file_type()?;
                if kind.is_dir() {
                    pending.push(entry.path());
                } else if kind.is_file() {
                    restrict(&entry.path(), 0o600)?;
                }
            }
        }
    }
    Ok(())
}

fn node_id(id: u64) -> anyhow::Result<NonZeroU64> {
    NonZeroU64::new(id).context("node_id must not be 0")
}

/// Where a node gossips and whom it contacts first.
pub struct GossipPlace {
    pub listen: SocketAddr,
    pub seeds: Vec<String>,
}

impl GossipPlace {
    /// The configured gossip address and seeds.
    pub fn configured(config: &Config) -> Self {
        GossipPlace {
            listen: config.gossip.listen,
            seeds: config.gossip.seeds.clone(),
        }
    }
}

/// Refuses an HTTP listener beyond loopback when `auth` has no tokens: without them the API
/// answers only this host, which such a listener could not promise.
pub fn require_tokens_beyond_loopback(auth: &Auth, listen: SocketAddr) -> anyhow::Result<()> {
    anyhow::ensure!(
        auth.required() || listen.ip().is_loopback(),
        "refusing to serve on {listen} without API tokens: set DRIFTKV_API_TOKENS (or api_tokens or api_tokens_file in the config file), \
         or listen on a loopback address"
    );
    Ok(())
}

/// What the process gives every node it runs: its TLS material and keys, who may call its
/// HTTP listeners (one set of grants, reloaded for all of them), and what to record of each
/// HTTP request.
#[derive(Clone)]
pub struct Process {
    pub security: Security,
    pub auth: Auth,
    pub tracing: RequestTracing,
    /// How the HTTP listeners treat connections and requests (TLS aside).
    pub limits: ServerOptions,
}

impl Process {
    /// The authentication of an HTTP listener on `listen`. Without tokens the API answers only
    /// this host, which a listener beyond loopback could not promise: it is refused.
    pub fn auth_for(&self, listen: SocketAddr) -> anyhow::Result<Auth> {
        require_tokens_beyond_loopback(&self.auth, listen)?;
        Ok(self.auth.clone())
    }

    /// How the HTTP listeners serve: over HTTPS when there is a certificate.
    pub fn server_options(&self) -> ServerOptions {
        ServerOptions {
            tls: self
                .security
                .https
                .as_ref()
                .map(|https| https.server_config()),
            ..self.limits.clone()
        }
    }

    /// Whether the HTTP listener speaks HTTPS.
    fn https(&self) -> bool {
        self.security.https.is_some()
    }

    /// The scheme of the HTTP listeners' URLs.
    pub fn scheme(&self) -> &'static str {
        if self.https() {
            "https"
        } else {
            "http"
        }
    }
}

/// A running write region.
pub struct CentralNode {
    /// Where its gRPC service listens.
    pub grpc_addr: SocketAddr,
    /// Where its operator endpoints (`/healthz`, `/cluster`) listen, when it serves them.
    pub http_addr: Option<SocketAddr>,
    /// Its membership.
    pub gossip: Arc<Gossip>,
    /// The clock its write versions are stamped from (the testbed skews it).
    pub clock: Arc<SkewedClock>,
    store: Arc<Store>,
    servers: Vec<JoinHandle<anyhow::Result<()>>>,
    background: Vec<JoinHandle<()>>,
}

impl CentralNode {
    /// Opens the store in `data_dir`, serves gRPC on `grpc` and, when `http` is given, the
    /// operator endpoints there, and joins gossip, until `shutdown`.
    pub async fn start(
        config: &Config,
        data_dir: &Path,
        grpc: TcpListener,
        http: Option<TcpListener>,
        place: GossipPlace,
        process: &Process,
        shutdown: Shutdown,
    ) -> anyhow::Result<Self> {
        let http_auth = match &http {
            Some(listener) => Some(process.auth_for(listener.local_addr()?)?),
            None => None,
        };
        let (store, guarded) = open_store(config, data_dir)?;
        let clock = Arc::new(SkewedClock::new(Arc::new(SystemClock)));
        let wall: Arc<dyn WallClock> = clock.clone();
        let engine = Arc::new(
            Engine::new(
                store.clone(),
                node_id(config.node_id)?,
                wall.clone(),
                RateLimiter::per_second(config.rate_limit.writes_per_key_per_second),
            )?
            .with_namespace_quota(config.limits.namespaces_per_account)
            .with_key_quota(config.limits.keys_per_namespace),
        );
        let grpc_addr = grpc.local_addr()?;
        let gossip = membership::join(
            config,
            config.node_id,
            NodeRole::Central,
            place,
            &process.security,
            (
                keys::GRPC,
                membership::advertised(config, grpc_addr, process.security.cluster.is_some()),
            ),
        )
        .await?;
        let storage = guarded.guard().clone();
        ops::watch_durable(config.node_id, engine.durable_sequence());
        let central = Central::new(
            engine,
            CentralOptions {
                heartbeat: Duration::from_millis(config.replication.heartbeat_ms),
                max_snapshots: config.grpc.max_snapshot_streams,
            },
        );
        let background = vec![
            ops::spawn_storage_probe(
                guarded,
                Duration::from_millis(config.storage.probe_interval_ms),
            ),
            spawn_sweeper(
                &store,
                wall.clone(),
                Duration::from_millis(config.sweep_interval_ms),
            ),
            spawn_log_trimmer(
                &store,
                config.node_id,
                LogRetention {
                    entries: config.replication.log_retention_entries,
                    age: (config.replication.log_retention_secs > 0)
                        .then(|| Duration::from_secs(config.replication.log_retention_secs)),
                },
                wall.clone(),
                Duration::from_millis(config.replication.trim_interval_ms),
            ),
            spawn_gc(
                &central,
                wall,
                Duration::from_secs(config.storage.tombstone_grace_secs),
                Duration::from_millis(config.storage.gc_interval_ms),
            ),
            membership::publish_central(
                gossip.clone(),
                central.clone(),
                Duration::from_millis(config.gossip.interval_ms),
            ),
            ops::watch_store(
                config.node_id,
                &store,
                &storage,
                data_dir,
                Duration::from_millis(config.storage.gc_interval_ms),
            ),
        ];
        let service = CentralService::new(central, process.security.cluster.is_some());
        let mut http_addr = None;
        let mut servers = Vec::new();
        if let (Some(listener), Some(auth)) = (http, http_auth) {
            let bound = listener.local_addr()?;
            http_addr = Some(bound);
            // Operators and the testbed find central's endpoints through /cluster.
            gossip
                .set(
                    keys::HTTP,
                    membership::advertised(config, bound, process.https()),
                )
                .await;
            let router = driftkv_http::operator_router(
                auth,
                &config.node_id.to_string(),
                ops::central_ready(storage)
                    .merge(admin::routes(
                        config,
                        admin::Switches {
                            faults: None,
                            version_clock: Some(clock.clone()),
                        },
                    ))
                    .merge(console(NodeRole::Central, config.node_id)),
                membership::routes(gossip.clone()),
                process.tracing,
            );
            let stop = shutdown.clone();
            let options = process.server_options();
            servers.push(tokio::spawn(async move {
                driftkv_http::serve(listener, router, options, stop.wait())
                    .await
                    .context("HTTP server failed")
            }));
        }
        let tls = process.security.cluster.as_ref().map(tls::server_config);
        servers.push(tokio::spawn(async move {
            driftkv_central::serve(service, grpc, tls, shutdown.wait())
                .await
                .context("gRPC server failed")
        }));
        tracing::info!(%grpc_addr, ?http_addr, data_dir = %data_dir.display(), "central started");
        Ok(CentralNode {
            grpc_addr,
            http_addr,
            gossip,
            clock,
            store,
            servers,
            background,
        })
    }

    /// Waits for the servers to stop (after the shutdown signal), then flushes storage.
    pub async fn stopped(self) -> anyhow::Result<()> {
        let mut served = Ok(());
        for server in self.servers {
            let outcome = server.await.context("server task failed")?;
            served = served.and(outcome);
        }
        for task in self.background {
            task.abort();
        }
        self.gossip.shutdown().await;
        self.store.sync().await.context("final flush failed")?;
        tracing::info!("central stopped");
        served
    }
}

/// A running edge.
pub struct EdgeNode {
    /// Where its HTTP API listens.
    pub http_addr: SocketAddr,
    /// Where its workerd binding listener listens, when it serves one (`workerd.listen`).
    pub binding_addr: Option<SocketAddr>,
    /// The edge's service.
    pub edge: Arc<Edge>,
    gossip: Arc<Gossip>,
    server: JoinHandle<anyhow::Result<()>>,
    binding: Option<JoinHandle<anyhow::Result<()>>>,
    background: Vec<JoinHandle<()>>,
}

/// Where one edge runs: what `driftkv edge` takes from its config, and `driftkv dev` sets for
/// each of its edges.
pub struct EdgeSite<'a> {
    /// The edge's node id.
    pub node_id: u64,
    /// Where its replica lives.
    pub data_dir: &'a Path,
    /// Where it serves HTTP.
    pub listener: TcpListener,
    /// Where it serves the workerd binding, if it does.
    pub workerd: Option<TcpListener>,
    /// Central's gRPC address; empty: the central gossip finds.
    pub central: &'a str,
    /// Its gossip address and seeds.
    pub gossip: GossipPlace,
    /// The clock write versions are stamped from, when central runs in the same process
    /// (`dev`): the testbed's clock-skew switch on this edge moves it.
    pub version_clock: Option<Arc<SkewedClock>>,
}

impl EdgeNode {
    /// Opens the replica in the site's data directory, follows central, serves HTTP (and the
    /// workerd binding on `workerd.listen`) and joins gossip, until `shutdown`.
    pub async fn start(
        config: &Config,
        site: EdgeSite<'_>,
        process: &Process,
        shutdown: Shutdown,
    ) -> anyhow::Result<Self> {
        let EdgeSite {
            node_id,
            data_dir,
            listener,
            workerd,
            central,
            gossip: place,
            version_clock,
        } = site;
        let http_addr = listener.local_addr()?;
        let auth = process.auth_for(http_addr)?;
        let binding = workerd
            .map(|listener| BindingListener::new(process, listener))
            .transpose()?;
        let binding_addr = binding.as_ref().map(|b| b.local_addr()).transpose()?;
        let (store, guarded) = open_store(config, data_dir)?;
        let storage = guarded.guard().clone();
        let wall: Arc<dyn WallClock> = Arc::new(SystemClock);
        let options = EdgeOptions {
            node_id,
            cache_max_bytes: config.cache.max_bytes,
            min_cache_ttl: Duration::from_secs(config.cache.min_ttl_secs),
            default_cache_ttl: Duration::from_secs(config.cache.default_ttl_secs),
            max_cache_ttl: Duration::from_secs(config.cache.max_ttl_secs),
            invalidate_on_replication: config.cache.invalidate_on_replication,
            request_timeout: Duration::from_millis(config.central.request_timeout_ms),
            stream_silence: Duration::from_millis(config.replication.stream_silence_ms),
            tombstone_grace: Duration::from_secs(config.storage.tombstone_grace_secs),
        };
        let link = Arc::new(CentralLink::new(
            LinkTimeouts {
                connect: Duration::from_millis(config.central.connect_timeout_ms),
                request: Duration::from_millis(config.central.request_timeout_ms),
            },
            process.security.cluster.as_ref().map(tls::client_config),
        ));
        if !central.is_empty() {
            link.set_address(central).context("central.address")?;
        }
        // The testbed's replication faults act at the upstream seam.
        let faults = Arc::new(Faults::default());
        let upstream: Arc<dyn Upstream> = if config.testbed.enabled {
            Arc::new(FaultyUpstream::new(link.clone(), faults.clone()))
        } else {
            link.clone()
        };
        let edge = Edge::new(store.clone(), wall.clone(), upstream, options)?;
        let gossip = membership::join(
            config,
            node_id,
            NodeRole::Edge,
            place,
            &process.security,
            (
                keys::HTTP,
                membership::advertised(config, http_addr, process.https()),
            ),
        )
        .await?;
        if let Some(addr) = binding_addr {
            // Shown in /cluster, so that an operator finds every edge's binding.
            gossip
                .set(
                    keys::WORKERD,
                    membership::advertised(config, addr, process.https()),
                )
                .await;
        }
        let background = vec![
            ops::spawn_storage_probe(
                guarded,
                Duration::from_millis(config.storage.probe_interval_ms),
            ),
            spawn_follower(edge.clone()),
            spawn_edge_gc(&edge, Duration::from_millis(config.storage.gc_interval_ms)),
            spawn_sweeper(
                &store,
                wall,
                Duration::from_millis(config.sweep_interval_ms),
            ),
            membership::publish_edge(
                gossip.clone(),
                edge.clone(),
                central.is_empty().then_some(link),
                Duration::from_millis(config.gossip.interval_ms),
            ),
            ops::watch_store(
                node_id,
                &store,
                &storage,
                data_dir,
                Duration::from_millis(config.storage.gc_interval_ms),
            ),
        ];
        ops::watch_edge(node_id, &edge);
        let lab = experiments::routes(
            config,
            data_dir,
            gossip.clone(),
            membership::advertised(config, http_addr, process.https()),
        );
        let api = driftkv_http::router(
            edge.clone(),
            auth,
            &node_id.to_string(),
            ops::edge_ready(edge.clone(), storage)
                .merge(admin::routes(
                    config,
                    admin::Switches {
                        faults: Some(faults),
                        version_clock,
                    },
                ))
                .merge(lab)
                .merge(console(NodeRole::Edge, node_id)),
            membership::routes(gossip.clone()),
            process.tracing,
        );
        let options = process.server_options();
        let binding = binding.map(|b| {
            b.serve(
                edge.clone(),
                &node_id.to_string(),
                process,
                shutdown.clone(),
            )
        });
        let server = tokio::spawn(async move {
            driftkv_http::serve(listener, api, options, shutdown.wait())
                .await
                .context("HTTP server failed")
        });
        tracing::info!(%http_addr, ?binding_addr, node_id, data_dir = %data_dir.display(), "edge started");
        Ok(EdgeNode {
            http_addr,
            binding_addr,
            edge,
            gossip,
            server,
            binding,
            background,
        })
    }

    /// Waits until gossip shows this edge `members` live members (itself included), or
    /// `timeout` has passed; returns whether it does.
    pub async fn wait_members_live(&self, members: usize, timeout: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let live = self
                .gossip
                .members()
                .await
                .iter()
                .filter(|m| m.live)
                .count();
            if live >= members {
                return true;
            }
            if tokio::time::Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Waits for the HTTP servers to drain (after the shutdown signal), then flushes the
    /// replica.
    pub async fn stopped(self) -> anyhow::Result<()> {
        let mut served = self.server.await.context("HTTP server task failed")?;
        if let Some(binding) = self.binding {
            let outcome = binding
                .await
                .context("workerd binding server task failed")?;
            served = served.and(outcome);
        }
        for task in self.background {
            task.abort();
        }
        self.gossip.shutdown().await;
        self.edge
            .store()
            .sync()
            .await
            .context("final flush failed")?;
        served
    }
}

/// The web console (`/ui`), for a node of `role`; it opens on the CLI's default account.
fn console(role: NodeRole, node_id: u64) -> axum::Router {
    driftkv_console::router(driftkv_console::Options {
        role,
        node_id: node_id.to_string(),
        default_account: driftkv_client::DEFAULT_ACCOUNT.to_owned(),
    })
}

/// Resolves on SIGINT (Ctrl-C) or SIGTERM. The handlers are installed when this is called,
/// not when the future is first polled: a node polls it only once it has started, and a
/// signal that came before would otherwise end the process at once, without the clean
/// shutdown (a test stopping a node the moment it announced itself caught that). Call it
/// within the tokio runtime.
#[cfg(unix)]
pub fn signal() -> impl std::future::Future<Output = ()> {
    use tokio::signal::unix::{signal, Signal, SignalKind};
    async fn received(signal: std::io::Result<Signal>, name: &str) {
        match signal {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot listen for {name}");
                std::future::pending::<()>().await;
            }
        }
    }
    let interrupt = signal(SignalKind::interrupt());
    let terminate = signal(SignalKind::terminate());
    async move {
        tokio::select! {
            _ = received(interrupt, "SIGINT") => {}
            _ = received(terminate, "SIGTERM") => {}
        }
        tracing::info!("shutting down");
    }
}

/// Resolves on Ctrl-C.
#[cfg(not(unix))]
pub fn signal() -> impl std::future::Future<Output = ()> {
    async {
        if let Err(e) = tokio::signal::ctrl_c().await {
            tracing::error!(error = %e, "cannot listen for Ctrl-C");
            std::future::pending::<()>().await;
        }
        tracing::info!("shutting down");
    }
}

/// Prints a line scripts and tests wait for, and flushes it at once.
pub fn announce(line: &str) -> anyhow::Result<()> {
    use std::io::Write as _;
    let mut out = std::io::stdout().lock();
    writeln!(out, "{line}")?;
    out.flush()?;
    Ok(())
}
