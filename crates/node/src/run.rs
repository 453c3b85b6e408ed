//! `driftkv dev`, `driftkv central`, `driftkv edge`: running the roles until told to stop.

use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use driftkv_http::{Auth, RequestTracing, ServerOptions};

use crate::binding;
use crate::config::Config;
use crate::node::{
    announce, listen, private_dir, require_tokens_beyond_loopback, shutdown, CentralNode, EdgeNode,
    EdgeSite, GossipPlace, Process,
};
use crate::security::{Runs, Security};
use crate::tokens;

/// How long `dev` waits for its edges to catch up with central before announcing itself, so
/// that a restarted dev server serves everything it acknowledged before.
const DEV_CATCH_UP: Duration = Duration::from_secs(30);
/// How long `dev` waits for every edge to see every member live in gossip.
const DEV_GOSSIP: Duration = Duration::from_secs(30);

impl Process {
    /// What a process running `runs` with `config` gives its nodes: loads its TLS material and
    /// keys (refusing to start when a listener beyond loopback would be open), its API tokens
    /// (reloaded while it runs) and its HTTP limits, and starts reloading the HTTPS
    /// certificate when its files change. Needs a tokio runtime.
    pub fn new(config: &Config, runs: Runs, tracing: RequestTracing) -> anyhow::Result<Process> {
        private_dir(&config.data_dir)?;
        let grants = tokens::grants(config)?;
        let auth = if grants.is_empty() {
            Auth::open()
        } else {
            Auth::grants(grants)
        };
        // Before the TLS checks: without tokens, HTTPS would not make a public listener safe.
        require_tokens_beyond_loopback(&auth, config.listen)?;
        let security = Security::load(config, runs)?;
        if let Some(https) = &security.https {
            // Lives as long as the process.
            https.clone().watch(HTTPS_RELOAD_CHECK);
        }
        tokens::watch(auth.clone(), config);
        let http = &config.http;
        let limits = ServerOptions {
            header_read_timeout: Duration::from_millis(http.header_read_timeout_ms),
            idle_timeout: Duration::from_millis(http.idle_timeout_ms),
            max_connections: http.max_connections,
            max_in_flight: http.max_in_flight,
            request_timeout: Duration::from_millis(http.request_timeout_ms),
            min_body_rate: http.min_body_rate_bytes_per_sec,
            ..ServerOptions::default()
        };
        Ok(Process {
            security,
            auth,
            tracing,
            limits,
        })
    }
}

/// How often the HTTPS certificate's files are checked for a change.
const HTTPS_RELOAD_CHECK: Duration = Duration::from_secs(5);

/// The HTTP address of dev edge `index`: the configured port plus the index, or an ephemeral
/// port for each when the configured one is 0.
fn edge_listen(listen: SocketAddr, index: usize) -> anyhow::Result<SocketAddr> {
    if listen.port() == 0 {
        return Ok(listen);
    }
    let port = u16::try_from(usize::from(listen.port()) + index)
        .map_err(|_| anyhow::anyhow!("edge {index} would listen beyond port 65535"))?;
    Ok(SocketAddr::new(listen.ip(), port))
}

/// The workerd binding address of dev edge `index`: edge 0 serves the configured one, the
/// others a free port on the same IP each (announced at start and shown in `/cluster`), since
/// the ports after the configured one are likely the REST API's.
fn binding_listen(listen: Option<SocketAddr>, index: usize) -> Option<SocketAddr> {
    listen.map(|addr| match index {
        0 => addr,
        _ => SocketAddr::new(addr.ip(), 0),
    })
}

/// Runs central plus `edges` edges in one process until `until` resolves (the binary: SIGINT or
/// SIGTERM, see [`signal`](crate::signal)).
pub async fn run_dev(
    config: Config,
    edges: usize,
    tracing: RequestTracing,
    until: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    anyhow::ensure!(edges >= 1, "dev needs at least one edge");
    let process = Process::new(&config, Runs::Dev, tracing)?;
    let (trigger, stop) = shutdown();
    // Everything on loopback, on free ports: only the edges' HTTP ports are the user's.
    let any_port = SocketAddr::from(([127, 0, 0, 1], 0));
    let central = CentralNode::start(
        &config,
        &config.data_dir.join("central"),
        listen(any_port, "gRPC").await?,
        // The edges serve /healthz and /cluster; dev's central needs no port of its own.
        None,
        GossipPlace {
            listen: any_port,
            seeds: Vec::new(),
        },
        &process,
        stop.clone(),
    )
    .await?;
    let seeds = vec![central.gossip.addr().to_string()];
    let central_url = format!("http://{}", central.grpc_addr);
    let mut nodes = Vec::with_capacity(edges);
    for index in 0..edges {
        let data_dir = config.data_dir.join(format!("edge-{index}"));
        let site = EdgeSite {
            node_id: config.node_id + 1 + index as u64,
            data_dir: &data_dir,
            listener: listen(edge_listen(config.listen, index)?, "HTTP").await?,
            workerd: binding::listen(&process, binding_listen(config.workerd.listen, index))
                .await?,
            central: &central_url,
            gossip: GossipPlace {
                listen: any_port,
                seeds: seeds.clone(),
            },
            version_clock: Some(central.clock.clone()),
        };
        let node = EdgeNode::start(&config, site, &process, stop.clone()).await?;
        nodes.push(node);
    }
    for (index, node) in nodes.iter().enumerate() {
        if !node.edge.wait_caught_up(DEV_CATCH_UP).await {
            tracing::warn!(edge = index, "edge has not caught up with central yet");
        }
    }
    // Ready means every edge sees the whole cluster live: tools started on the ready line
    // (the testbed, benchmarks) find every edge in /cluster.
    for (index, node) in nodes.iter().enumerate() {
        if !node.wait_members_live(edges + 1, DEV_GOSSIP).await {
            tracing::warn!(
                edge = index,
                "gossip does not show every member of the cluster live yet"
            );
        }
    }
    tracing::info!(
        edges,
        central = %central.grpc_addr,
        data_dir = %config.data_dir.display(),
        "driftkv dev started"
    );
    for (index, node) in nodes.iter().enumerate() {
        // Edge 0's line is the one scripts wait for; the others name their edge.
        let line = if index == 0 {
            format!(
                "driftkv dev listening on {}://{}",
                process.scheme(),
                node.http_addr
            )
        } else {
            format!(
                "driftkv dev edge {index} listening on {}://{}",
                process.scheme(),
                node.http_addr
            )
        };
        announce(&line)?;
        if let Some(binding) = node.binding_addr {
            let edge = match index {
                0 => String::new(),
                _ => format!(" edge {index}"),
            };
            announce(&format!(
                "driftkv dev{edge} workerd binding listening on {}://{binding}",
                process.scheme()
            ))?;
        }
    }
    announce(&format!(
        "driftkv dev console on {}://{}/ui",
        process.scheme(),
        nodes[0].http_addr
    ))?;
    until.await;
    trigger.fire();
    for node in nodes {
        node.stopped().await?;
    }
    central.stopped().await?;
    tracing::info!("driftkv dev stopped");
    Ok(())
}

/// Runs a write region until `until` resolves.
pub async fn run_central(
    config: Config,
    tracing: RequestTracing,
    until: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    let process = Process::new(&config, Runs::Central, tracing)?;
    let (trigger, stop) = shutdown();
    let central = CentralNode::start(
        &config,
        &config.data_dir,
        listen(config.grpc.listen, "gRPC").await?,
        Some(listen(config.listen, "HTTP").await?),
        GossipPlace::configured(&config),
        &process,
        stop,
    )
    .await?;
    if let Some(http) = central.http_addr {
        tracing::info!(
            "central serves /healthz, /cluster and the console (/ui) on {}://{http}",
            process.scheme()
        );
    }
    let grpc = if process.security.cluster.is_some() {
        "https"
    } else {
        "http"
    };
    announce(&format!(
        "driftkv central listening on {grpc}://{}",
        central.grpc_addr
    ))?;
    until.await;
    trigger.fire();
    central.stopped().await
}

/// Runs an edge until `until` resolves.
pub async fn run_edge(
    config: Config,
    tracing: RequestTracing,
    until: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    let process = Process::new(&config, Runs::Edge, tracing)?;
    let (trigger, stop) = shutdown();
    let site = EdgeSite {
        node_id: config.node_id,
        data_dir: &config.data_dir,
        listener: listen(config.listen, "HTTP").await?,
        workerd: binding::listen(&process, config.workerd.listen).await?,
        central: &config.central.address,
        gossip: GossipPlace::configured(&config),
        version_clock: None,
    };
    let edge = EdgeNode::start(&config, site, &process, stop).await?;
    announce(&format!(
        "driftkv edge listening on {}://{}",
        process.scheme(),
        edge.http_addr
    ))?;
    if let Some(binding) = edge.binding_addr {
        announce(&format!(
            "driftkv edge workerd binding listening on {}://{binding}",
            process.scheme()
        ))?;
    }
    until.await;
    trigger.fire();
    edge.stopped().await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dev_edges_take_consecutive_ports() {
        let base: SocketAddr = "127.0.0.1:8787".parse().unwrap();
        assert_eq!(edge_listen(base, 0).unwrap().port(), 8787);
        assert_eq!(edge_listen(base, 2).unwrap().port(), 8789);
        let any: SocketAddr = "127.0.0.1:0".parse().unwrap();
        assert_eq!(edge_listen(any, 3).unwrap().port(), 0);
        let top: SocketAddr = "127.0.0.1:65535".parse().unwrap();
        assert!(edge_listen(top, 1).is_err());
    }

    #[test]
    fn dev_edges_after_the_first_take_free_binding_ports() {
        let base: SocketAddr = "127.0.0.1:8786".parse().unwrap();
        assert_eq!(binding_listen(Some(base), 0), Some(base));
        assert_eq!(
            binding_listen(Some(base), 2),
            Some("127.0.0.1:0".parse().unwrap())
        );
        assert_eq!(binding_listen(None, 0), None);
        assert_eq!(binding_listen(None, 1), None);
    }
}
