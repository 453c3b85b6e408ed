//! A node is a library call: the test binds the listeners (port 0, so it knows the address
//! before the node runs), gives a data directory and a shutdown signal, talks to the nodes over
//! their real HTTP and gRPC listeners, stops them, and starts them again on the same data.

use std::net::SocketAddr;
use std::path::Path;

use driftkv_client::{Client, PutOptions};
use driftkv_http::RequestTracing;
use driftkv_node::security::Runs;
use driftkv_node::{
    listen, shutdown, CentralNode, Config, EdgeNode, EdgeSite, GossipPlace, Process,
};

const LOOPBACK: SocketAddr =
    SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), 0);

/// Starts central and one edge over `dir`, runs `work` against the edge's REST API, and
/// stops both, waiting for them to flush.
async fn with_cluster<F, Fut>(config: &Config, process: &Process, dir: &Path, work: F)
where
    F: FnOnce(Client) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let (trigger, stop) = shutdown();
    let central = CentralNode::start(
        config,
        &dir.join("central"),
        listen(LOOPBACK, "gRPC").await.unwrap(),
        None,
        GossipPlace {
            listen: LOOPBACK,
            seeds: Vec::new(),
        },
        process,
        stop.clone(),
    )
    .await
    .expect("central starts");
    let http = listen(LOOPBACK, "HTTP").await.unwrap();
    let base = format!("http://{}", http.local_addr().unwrap());
    let central_url = format!("http://{}", central.grpc_addr);
    let edge = EdgeNode::start(
        config,
        EdgeSite {
            node_id: config.node_id + 1,
            data_dir: &dir.join("edge"),
            listener: http,
            workerd: None,
            central: &central_url,
            gossip: GossipPlace {
                listen: LOOPBACK,
                seeds: vec![central.gossip.addr().to_string()],
            },
            version_clock: Some(central.clock.clone()),
        },
        process,
        stop,
    )
    .await
    .expect("edge starts");
    assert_eq!(
        edge.http_addr.to_string(),
        base.trim_start_matches("http://")
    );
    work(Client::new(&base, "library", None).unwrap()).await;
    trigger.fire();
    edge.stopped().await.expect("the edge stops cleanly");
    central.stopped().await.expect("central stops cleanly");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_central_and_an_edge_run_in_process_and_keep_their_data() {
    let dir = tempfile::tempdir().unwrap();
    let config = Config {
        data_dir: dir.path().to_owned(),
        listen: LOOPBACK,
        ..Config::default()
    };
    let process = Process::new(&config, Runs::Dev, RequestTracing::default()).unwrap();

    with_cluster(&config, &process, dir.path(), |kv| async move {
        let ns = kv.create_namespace("kept").await.unwrap().id;
        kv.put(&ns, "greeting", &b"hello"[..], &PutOptions::default())
            .await
            .unwrap();
        assert_eq!(
            kv.get(&ns, "greeting").await.unwrap().as_deref(),
            Some(&b"hello"[..])
        );
    })
    .await;

    // A second start on the same directories serves what the first acknowledged.
    with_cluster(&config, &process, dir.path(), |kv| async move {
        let namespaces = kv.list_namespaces().await.unwrap();
        let kept = namespaces
            .iter()
            .find(|n| n.title == "kept")
            .expect("the namespace survives the restart");
        assert_eq!(
            kv.get(&kept.id, "greeting").await.unwrap().as_deref(),
            Some(&b"hello"[..])
        );
    })
    .await;
}
