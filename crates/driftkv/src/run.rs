//! `driftkv dev`, `driftkv central`, `driftkv edge`: running the roles until a signal.

use std::net::SocketAddr;
use std::time::Duration;

use crate::config::Config;
use crate::node::{announce, auth, shutdown, signal, CentralNode, EdgeNode, GossipPlace};

/// How long `dev` waits for its edges to catch up with central before announcing itself, so
/// that a restarted dev server serves everything it acknowledged before.
const DEV_CATCH_UP: Duration = Duration::from_secs(30);

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

/// Runs central plus `edges` edges in one process until SIGINT or SIGTERM.
pub async fn run_dev(config: Config, edges: usize) -> anyhow::Result<()> {
    anyhow::ensure!(edges >= 1, "dev needs at least one edge");
    auth(&config, config.listen)?;
    let (trigger, stop) = shutdown();
    // Everything on loopback, on free ports: only the edges' HTTP ports are the user's.
    let any_port = SocketAddr::from(([127, 0, 0, 1], 0));
    let central = CentralNode::start(
        &config,
        &config.data_dir.join("central"),
        any_port,
        // The edges serve /healthz and /cluster; dev's central needs no port of its own.
        None,
        GossipPlace {
            listen: any_port,
            seeds: Vec::new(),
        },
        stop.clone(),
    )
    .await?;
    let seeds = vec![central.gossip.addr().to_string()];
    let central_url = format!("http://{}", central.grpc_addr);
    let mut nodes = Vec::with_capacity(edges);
    for index in 0..edges {
        let node = EdgeNode::start(
            &config,
            config.node_id + 1 + index as u64,
            &config.data_dir.join(format!("edge-{index}")),
            edge_listen(config.listen, index)?,
            &central_url,
            GossipPlace {
                listen: any_port,
                seeds: seeds.clone(),
            },
            stop.clone(),
        )
        .await?;
        nodes.push(node);
    }
    for (index, node) in nodes.iter().enumerate() {
        if !node.edge.wait_caught_up(DEV_CATCH_UP).await {
            tracing::warn!(edge = index, "edge has not caught up with central yet");
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
            format!("driftkv dev listening on http://{}", node.http_addr)
        } else {
            format!(
                "driftkv dev edge {index} listening on http://{}",
                node.http_addr
            )
        };
        announce(&line)?;
    }
    announce(&format!(
        "driftkv dev console on http://{}/ui",
        nodes[0].http_addr
    ))?;
    signal().await;
    trigger.fire();
    for node in nodes {
        node.stopped().await?;
    }
    central.stopped().await?;
    tracing::info!("driftkv dev stopped");
    Ok(())
}

/// Runs a write region until SIGINT or SIGTERM.
pub async fn run_central(config: Config) -> anyhow::Result<()> {
    let (trigger, stop) = shutdown();
    let central = CentralNode::start(
        &config,
        &config.data_dir,
        config.grpc.listen,
        Some(config.listen),
        GossipPlace::configured(&config),
        stop,
    )
    .await?;
    if let Some(http) = central.http_addr {
        tracing::info!("central serves /healthz, /cluster and the console (/ui) on http://{http}");
    }
    announce(&format!(
        "driftkv central listening on http://{}",
        central.grpc_addr
    ))?;
    signal().await;
    trigger.fire();
    central.stopped().await
}

/// Runs an edge until SIGINT or SIGTERM.
pub async fn run_edge(config: Config) -> anyhow::Result<()> {
    let (trigger, stop) = shutdown();
    let edge = EdgeNode::start(
        &config,
        config.node_id,
        &config.data_dir,
        config.listen,
        &config.central.address,
        GossipPlace::configured(&config),
        stop,
    )
    .await?;
    announce(&format!(
        "driftkv edge listening on http://{}",
        edge.http_addr
    ))?;
    signal().await;
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
}
