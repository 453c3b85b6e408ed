//! Multi-node tests: a real `driftkv central` process and real `driftkv edge` processes on
//! loopback ports, talking gRPC to each other, driven only through the edges' REST API and
//! process signals. Every wait is a poll of a condition with a deadline.

mod common;

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{client, send_ok, wait_for, Server};
use serde_json::{json, Value};

/// A central process and its edges, each with its own data directory.
struct Cluster {
    dir: tempfile::TempDir,
    central: Server,
    central_url: String,
    central_gossip: SocketAddr,
    edges: Vec<Server>,
    /// Extra settings of every edge.
    edge_env: Vec<(String, String)>,
}

/// Settings that keep the tests short: caches expire after 1 s unless a test asks for more,
/// heartbeats every 100 ms, a dead stream noticed within a second.
const EDGE_ENV: [(&str, &str); 5] = [
    ("DRIFTKV_CACHE__MIN_TTL_SECS", "1"),
    ("DRIFTKV_CACHE__DEFAULT_TTL_SECS", "1"),
    ("DRIFTKV_REPLICATION__STREAM_SILENCE_MS", "1000"),
    ("DRIFTKV_CENTRAL__REQUEST_TIMEOUT_MS", "1000"),
    ("DRIFTKV_CENTRAL__CONNECT_TIMEOUT_MS", "500"),
];

fn start_central(dir: &Path, listen: &str, gossip: SocketAddr, extra: &[(&str, &str)]) -> Server {
    let mut args = ["central", "--data-dir"].map(String::from).to_vec();
    args.push(dir.join("central").display().to_string());
    let gossip = gossip.to_string();
    let mut env = vec![
        ("DRIFTKV_GRPC__LISTEN", listen),
        ("DRIFTKV_LISTEN", "127.0.0.1:0"),
        ("DRIFTKV_GOSSIP__LISTEN", gossip.as_str()),
        ("DRIFTKV_GOSSIP__INTERVAL_MS", "100"),
        ("DRIFTKV_REPLICATION__HEARTBEAT_MS", "100"),
    ];
    env.extend_from_slice(extra);
    Server::launch(&args, dir, &env, "driftkv central listening on ").expect("central starts")
}

/// A free UDP port on loopback (central's gossip address must be known to its edges' seeds).
fn free_udp_port() -> SocketAddr {
    std::net::UdpSocket::bind("127.0.0.1:0")
        .and_then(|s| s.local_addr())
        .expect("a free UDP port")
}

impl Cluster {
    async fn start(edges: usize) -> Cluster {
        Self::start_with(edges, &[]).await
    }

    async fn start_with(edges: usize, edge_env: &[(&str, &str)]) -> Cluster {
        Self::start_full(edges, &[], edge_env).await
    }

    async fn start_full(
        edges: usize,
        central_env: &[(&str, &str)],
        edge_env: &[(&str, &str)],
    ) -> Cluster {
        let dir = tempfile::tempdir().expect("tempdir");
        let central_gossip = free_udp_port();
        let central = start_central(dir.path(), "127.0.0.1:0", central_gossip, central_env);
        let central_url = central.base.clone();
        let mut cluster = Cluster {
            dir,
            central,
            central_url,
            central_gossip,
            edges: Vec::new(),
            edge_env: edge_env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        };
        for index in 0..edges {
            let edge = cluster.start_edge(index, &cluster.central_url.clone());
            cluster.edges.push(edge);
        }
        cluster
    }

    fn edge_dir(&self, index: usize) -> PathBuf {
        self.dir.path().join(format!("edge-{index}"))
    }

    /// Starts edge `index` (node id 2 + index) pointed at `central`, or, when `central` is
    /// empty, left to find it through gossip.
    fn start_edge(&self, index: usize, central: &str) -> Server {
        let dir = self.edge_dir(index);
        let args: Vec<String> = vec![
            "edge".into(),
            "--listen".into(),
            "127.0.0.1:0".into(),
            "--data-dir".into(),
            dir.display().to_string(),
        ];
        let node_id = (2 + index).to_string();
        let seeds = format!("[\"{}\"]", self.central_gossip);
        let mut env: Vec<(&str, &str)> = EDGE_ENV.to_vec();
        env.push(("DRIFTKV_NODE_ID", &node_id));
        env.push(("DRIFTKV_CENTRAL__ADDRESS", central));
        env.push(("DRIFTKV_GOSSIP__LISTEN", "127.0.0.1:0"));
        env.push(("DRIFTKV_GOSSIP__SEEDS", &seeds));
        env.push(("DRIFTKV_GOSSIP__INTERVAL_MS", "100"));
        env.extend(self.edge_env.iter().map(|(k, v)| (k.as_str(), v.as_str())));
        Server::launch(&args, &dir, &env, "driftkv edge listening on ").expect("edge starts")
    }

    /// Kills central with SIGKILL and starts it again on the same port and data.
    fn crash_and_restart_central(&mut self) {
        self.central.kill9();
        let addr = self.central_url.trim_start_matches("http://").to_owned();
        self.central = start_central(self.dir.path(), &addr, self.central_gossip, &[]);
    }
}

/// `.../namespaces` of an edge.
fn api(edge: &Server) -> String {
    edge.api()
}

fn value_url(edge: &Server, ns: &str, key: &str) -> String {
    format!("{}/{ns}/values/{}", api(edge), common::encode_key(key))
}

/// Writes `value` (also stored as the key's metadata, so listings show it) at `edge`; returns
/// the HTTP status and body.
async fn put(
    http: &reqwest::Client,
    edge: &Server,
    ns: &str,
    key: &str,
    value: &str,
) -> (u16, Value) {
    let form = reqwest::multipart::Form::new()
        .text("value", value.to_owned())
        .text("metadata", json!({ "v": value }).to_string());
    let response = http
        .put(value_url(edge, ns, key))
        .multipart(form)
        .send()
        .await
        .expect("request sent");
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

/// Reads a key at `edge`; `None` on 404.
async fn get(
    http: &reqwest::Client,
    edge: &Server,
    ns: &str,
    key: &str,
    cache_ttl: Option<u64>,
) -> Option<String> {
    let mut request = http.get(value_url(edge, ns, key));
    if let Some(ttl) = cache_ttl {
        request = request.query(&[("cache_ttl", ttl)]);
    }
    let response = request.send().await.expect("request sent");
    match response.status().as_u16() {
        200 => Some(response.text().await.expect("body")),
        404 => None,
        other => panic!(
            "GET {key}: HTTP {other}: {}",
            response.text().await.unwrap_or_default()
        ),
    }
}

/// Every key of a namespace at `edge` with the value recorded in its metadata, read from the
/// listing (which comes from the replica, not the cache).
async fn contents(http: &reqwest::Client, edge: &Server, ns: &str) -> BTreeMap<String, String> {
    let mut all = BTreeMap::new();
    let mut cursor = String::new();
    loop {
        let body = send_ok(
            http.get(format!("{}/{ns}/keys", api(edge)))
                .query(&[("cursor", cursor.as_str())]),
        )
        .await;
        for key in body["result"].as_array().expect("keys") {
            all.insert(
                key["name"].as_str().unwrap().to_owned(),
                key["metadata"]["v"].as_str().unwrap_or_default().to_owned(),
            );
        }
        cursor = body["result_info"]["cursor"].as_str().unwrap().to_owned();
        if cursor.is_empty() {
            return all;
        }
    }
}

/// Creates a namespace through `edge` and waits until every edge has it.
async fn namespace(http: &reqwest::Client, cluster: &Cluster, edge: usize, title: &str) -> String {
    let body = send_ok(
        http.post(api(&cluster.edges[edge]))
            .json(&json!({ "title": title })),
    )
    .await;
    let id = body["result"]["id"].as_str().unwrap().to_owned();
    for other in &cluster.edges {
        let url = format!("{}/{id}", api(other));
        wait_for(Duration::from_secs(5), "the namespace to replicate", || {
            let request = http.get(&url);
            async move { (request.send().await.ok()?.status() == 200).then_some(()) }
        })
        .await;
    }
    id
}

#[tokio::test(flavor = "multi_thread")]
async fn a_write_is_visible_at_once_where_made_and_soon_everywhere() {
    let cluster = Cluster::start(3).await;
    let http = client();
    let ns = namespace(&http, &cluster, 0, "visibility").await;
    let (a, b, c) = (&cluster.edges[0], &cluster.edges[1], &cluster.edges[2]);
    assert_eq!(put(&http, a, &ns, "greeting", "hello").await.0, 200);
    // Read-your-writes at the edge that took the write, with no wait at all.
    assert_eq!(
        get(&http, a, &ns, "greeting", None).await.as_deref(),
        Some("hello")
    );
    // Edges that never read the key see it within 2 s.
    for edge in [b, c] {
        wait_for(
            Duration::from_secs(2),
            "the write to reach the other edges",
            || async {
                get(&http, edge, &ns, "greeting", None)
                    .await
                    .filter(|v| v == "hello")
            },
        )
        .await;
    }
    // Deletes travel the same way.
    send_ok(http.delete(value_url(b, &ns, "greeting"))).await;
    assert_eq!(get(&http, b, &ns, "greeting", None).await, None);
    for edge in [a, c] {
        wait_for(
            Duration::from_secs(5),
            "the delete to reach the other edges",
            || async {
                get(&http, edge, &ns, "greeting", None)
                    .await
                    .is_none()
                    .then_some(())
            },
        )
        .await;
    }
}

/// B caches a result with a TTL; a newer write replicated to B meanwhile is not served until
/// the TTL has run out (Workers KV's staleness), for a cached value and a cached absence.
#[tokio::test(flavor = "multi_thread")]
async fn cached_results_are_served_until_their_ttl_runs_out() {
    let cluster = Cluster::start(3).await;
    let http = client();
    let ns = namespace(&http, &cluster, 0, "staleness").await;
    let (a, b, c) = (&cluster.edges[0], &cluster.edges[1], &cluster.edges[2]);
    const TTL: u64 = 3;
    put(&http, a, &ns, "present", "old").await;
    // Watched through the listing, which reads the replica and leaves B's cache empty.
    wait_for(Duration::from_secs(5), "the first value at B", || async {
        (contents(&http, b, &ns)
            .await
            .get("present")
            .map(String::as_str)
            == Some("old"))
        .then_some(())
    })
    .await;
    let cached_at = Instant::now();
    assert_eq!(
        get(&http, b, &ns, "present", Some(TTL)).await.as_deref(),
        Some("old")
    );
    assert_eq!(get(&http, b, &ns, "absent", Some(TTL)).await, None);
    put(&http, a, &ns, "present", "new").await;
    put(&http, a, &ns, "absent", "here now").await;
    // C never read either key: once C has both, B's replica has had time to get them too.
    wait_for(Duration::from_secs(2), "the writes to reach C", || async {
        let present = get(&http, c, &ns, "present", None).await;
        let absent = get(&http, c, &ns, "absent", None).await;
        (present.as_deref() == Some("new") && absent.is_some()).then_some(())
    })
    .await;
    let replicated = wait_for(
        Duration::from_secs(2),
        "B's replica to hold the writes",
        || async {
            let listing = contents(&http, b, &ns).await;
            (listing.get("present").map(String::as_str) == Some("new")
                && listing.contains_key("absent"))
            .then_some(Instant::now())
        },
    )
    .await;
    assert!(
        replicated < cached_at + Duration::from_secs(TTL),
        "replication took the whole TTL; the test cannot tell stale from fresh"
    );
    // Stale, from the cache, though B's replica holds the new data.
    assert_eq!(
        get(&http, b, &ns, "present", None).await.as_deref(),
        Some("old")
    );
    assert_eq!(get(&http, b, &ns, "absent", None).await, None);
    // Fresh once the TTL is over: never before it.
    wait_for(
        Duration::from_secs(TTL + 5),
        "B's cache entries to expire",
        || async {
            let present = get(&http, b, &ns, "present", None).await;
            let absent = get(&http, b, &ns, "absent", None).await;
            if present.as_deref() == Some("new") || absent.is_some() {
                assert!(
                    cached_at.elapsed() >= Duration::from_secs(TTL),
                    "a cached result was replaced before its TTL ran out"
                );
            }
            (present.as_deref() == Some("new") && absent.as_deref() == Some("here now"))
                .then_some(())
        },
    )
    .await;
    // A cache_ttl below the configured minimum is refused.
    let response = http
        .get(value_url(b, &ns, "present"))
        .query(&[("cache_ttl", "0")])
        .send()
        .await
        .unwrap();
    common::assert_error(response, 400, 10038).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn invalidate_on_replication_serves_fresh_data() {
    let cluster =
        Cluster::start_with(2, &[("DRIFTKV_CACHE__INVALIDATE_ON_REPLICATION", "true")]).await;
    let http = client();
    let ns = namespace(&http, &cluster, 0, "fresh").await;
    let (a, b) = (&cluster.edges[0], &cluster.edges[1]);
    assert_eq!(get(&http, b, &ns, "k", Some(600)).await, None);
    put(&http, a, &ns, "k", "v").await;
    // With a 600 s TTL, only invalidation can make B answer within the deadline.
    wait_for(
        Duration::from_secs(5),
        "B to drop its cached absence",
        || async {
            get(&http, b, &ns, "k", Some(600))
                .await
                .filter(|v| v == "v")
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn concurrent_writes_to_one_key_converge_everywhere() {
    let cluster = Cluster::start(3).await;
    let http = client();
    let ns = namespace(&http, &cluster, 0, "lww").await;
    let mut writers = Vec::new();
    for (index, edge) in cluster.edges.iter().enumerate() {
        let http = http.clone();
        let url = value_url(edge, &ns, "contested");
        writers.push(tokio::spawn(async move {
            for round in 0..20 {
                let value = format!("edge{index}-round{round}");
                let form = reqwest::multipart::Form::new()
                    .text("value", value.clone())
                    .text("metadata", json!({ "v": value }).to_string());
                let response = http.put(&url).multipart(form).send().await.unwrap();
                assert_eq!(response.status(), 200);
            }
        }));
    }
    for writer in writers {
        writer.await.unwrap();
    }
    let settled = wait_for(
        Duration::from_secs(5),
        "every edge to hold the same value",
        || async {
            let mut seen = Vec::new();
            for edge in &cluster.edges {
                seen.push(contents(&http, edge, &ns).await.get("contested").cloned()?);
            }
            seen.windows(2)
                .all(|w| w[0] == w[1])
                .then(|| seen[0].clone())
        },
    )
    .await;
    // And the value read through each edge agrees once caches have turned over.
    for edge in &cluster.edges {
        wait_for(Duration::from_secs(5), "reads to agree", || async {
            get(&http, edge, &ns, "contested", None)
                .await
                .filter(|v| *v == settled)
        })
        .await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_stopped_or_crashed_edge_catches_up() {
    let mut cluster = Cluster::start(2).await;
    let http = client();
    let ns = namespace(&http, &cluster, 0, "catch-up").await;
    for (round, crash) in [false, true].into_iter().enumerate() {
        let edge = cluster.edges.remove(1);
        if crash {
            let mut edge = edge;
            edge.kill9();
        } else {
            edge.stop();
        }
        for i in 0..100 {
            let key = format!("r{round}-k{i:03}");
            assert_eq!(put(&http, &cluster.edges[0], &ns, &key, &key).await.0, 200);
        }
        let central_url = cluster.central_url.clone();
        let restarted = cluster.start_edge(1, &central_url);
        cluster.edges.push(restarted);
        let expected = contents(&http, &cluster.edges[0], &ns).await;
        assert_eq!(expected.len(), 100 * (round + 1));
        wait_for(
            Duration::from_secs(10),
            "the restarted edge to catch up",
            || async { (contents(&http, &cluster.edges[1], &ns).await == expected).then_some(()) },
        )
        .await;
    }
}

/// A TCP relay between an edge and central that can be cut: while cut, open connections are
/// closed and new ones are accepted but never answered, as behind a network partition.
struct Partition {
    addr: SocketAddr,
    cut: Arc<AtomicBool>,
    open: Arc<Mutex<Vec<TcpStream>>>,
}

impl Partition {
    fn start(target: SocketAddr) -> Partition {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let cut = Arc::new(AtomicBool::new(false));
        let open: Arc<Mutex<Vec<TcpStream>>> = Arc::default();
        let (cut2, open2) = (cut.clone(), open.clone());
        std::thread::spawn(move || {
            for inbound in listener.incoming() {
                let Ok(inbound) = inbound else { return };
                if cut2.load(Ordering::SeqCst) {
                    // Swallowed: held open, never answered.
                    open2.lock().unwrap().push(inbound);
                    continue;
                }
                let Ok(outbound) = TcpStream::connect(target) else {
                    continue;
                };
                open2.lock().unwrap().push(inbound.try_clone().unwrap());
                open2.lock().unwrap().push(outbound.try_clone().unwrap());
                pump(inbound.try_clone().unwrap(), outbound.try_clone().unwrap());
                pump(outbound, inbound);
            }
        });
        Partition { addr, cut, open }
    }

    fn cut(&self) {
        self.cut.store(true, Ordering::SeqCst);
        for stream in self.open.lock().unwrap().drain(..) {
            let _ = stream.shutdown(Shutdown::Both);
        }
    }

    fn heal(&self) {
        self.cut.store(false, Ordering::SeqCst);
        for stream in self.open.lock().unwrap().drain(..) {
            let _ = stream.shutdown(Shutdown::Both);
        }
    }
}

fn pump(mut from: TcpStream, mut to: TcpStream) {
    std::thread::spawn(move || {
        let mut buf = [0u8; 16 * 1024];
        while let Ok(n) = from.read(&mut buf) {
            if n == 0 || to.write_all(&buf[..n]).is_err() {
                break;
            }
        }
        let _ = to.shutdown(Shutdown::Write);
    });
}

#[tokio::test(flavor = "multi_thread")]
async fn a_cut_off_edge_serves_reads_fails_writes_fast_and_converges() {
    let mut cluster = Cluster::start(1).await;
    let http = client();
    let central: SocketAddr = cluster
        .central_url
        .trim_start_matches("http://")
        .parse()
        .unwrap();
    let partition = Partition::start(central);
    let cut_off = cluster.start_edge(1, &format!("http://{}", partition.addr));
    cluster.edges.push(cut_off);
    let ns = namespace(&http, &cluster, 0, "partition").await;
    let (a, b) = (&cluster.edges[0], &cluster.edges[1]);
    put(&http, a, &ns, "before", "1").await;
    wait_for(Duration::from_secs(5), "the first write at B", || async {
        get(&http, b, &ns, "before", None).await
    })
    .await;

    partition.cut();
    for i in 0..50 {
        put(&http, a, &ns, &format!("during-{i:02}"), "2").await;
    }
    // Reads and lists keep working from B's replica.
    assert_eq!(
        get(&http, b, &ns, "before", None).await.as_deref(),
        Some("1")
    );
    assert!(contents(&http, b, &ns).await.contains_key("before"));
    // Writes fail fast with a clear 503 (the request timeout is 1 s here).
    let started = Instant::now();
    let (status, body) = put(&http, b, &ns, "refused", "x").await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["errors"][0]["code"], 10050, "{body}");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "took {:?}",
        started.elapsed()
    );

    partition.heal();
    let expected = contents(&http, a, &ns).await;
    assert_eq!(expected.len(), 51);
    wait_for(
        Duration::from_secs(15),
        "B to converge after the partition",
        || async { (contents(&http, b, &ns).await == expected).then_some(()) },
    )
    .await;
    assert_eq!(put(&http, b, &ns, "after", "3").await.0, 200);
}

#[tokio::test(flavor = "multi_thread")]
async fn central_killed_mid_load_loses_no_acknowledged_write() {
    let mut cluster = Cluster::start(2).await;
    let http = client();
    let ns = namespace(&http, &cluster, 0, "crash").await;
    let acked: Arc<Mutex<Vec<String>>> = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let mut writers = Vec::new();
    for (index, edge) in cluster.edges.iter().enumerate() {
        let (http, acked, stop) = (http.clone(), acked.clone(), stop.clone());
        let base = format!("{}/{ns}/values/", api(edge));
        writers.push(tokio::spawn(async move {
            // Bounded: at most 2,000 writes per writer, and it stops when told.
            for i in 0..2000 {
                if stop.load(Ordering::SeqCst) {
                    break;
                }
                let key = format!("w{index}-{i:04}");
                let form = reqwest::multipart::Form::new()
                    .text("value", key.clone())
                    .text("metadata", json!({ "v": key }).to_string());
                let sent = http
                    .put(format!("{base}{key}"))
                    .multipart(form)
                    .send()
                    .await;
                if let Ok(response) = sent {
                    if response.status() == 200 {
                        acked.lock().unwrap().push(key);
                    }
                }
            }
        }));
    }
    wait_for(
        Duration::from_secs(30),
        "some writes to be acknowledged",
        || async { (acked.lock().unwrap().len() >= 100).then_some(()) },
    )
    .await;
    cluster.crash_and_restart_central();
    let before = acked.lock().unwrap().len();
    wait_for(
        Duration::from_secs(30),
        "writes to succeed again after the restart",
        || async { (acked.lock().unwrap().len() >= before + 50).then_some(()) },
    )
    .await;
    stop.store(true, Ordering::SeqCst);
    for writer in writers {
        writer.await.unwrap();
    }
    let acked: Vec<String> = acked.lock().unwrap().clone();
    for edge in &cluster.edges {
        let held = wait_for(
            Duration::from_secs(15),
            "every acknowledged write at every edge",
            || async {
                let held = contents(&http, edge, &ns).await;
                acked.iter().all(|k| held.contains_key(k)).then_some(held)
            },
        )
        .await;
        assert!(held.len() >= acked.len());
    }
    assert_eq!(
        contents(&http, &cluster.edges[0], &ns).await,
        contents(&http, &cluster.edges[1], &ns).await
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn the_per_key_write_limit_answers_429() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start_in(
        dir.path(),
        &[("DRIFTKV_RATE_LIMIT__WRITES_PER_KEY_PER_SECOND", "1")],
    )
    .unwrap();
    let http = client();
    let ns = common::create_namespace(&http, &server, "limited").await;
    let url = value_url(&server, &ns, "hot");
    // Three writes of one key at the same moment (sent together, so that a slow machine cannot
    // space them a second apart): one goes through, the others are refused, each naming its
    // operation and saying when to try again.
    let (put_1, put_2, delete) = tokio::join!(
        http.put(&url).body("1").send(),
        http.put(&url).body("2").send(),
        http.delete(&url).send(),
    );
    let mut passed = 0;
    for (response, op) in [(put_1, "PUT"), (put_2, "PUT"), (delete, "DELETE")] {
        let response = response.unwrap();
        if response.status() == 200 {
            passed += 1;
            continue;
        }
        assert_eq!(
            response.headers()["retry-after"],
            "1",
            "a 429 says when to try again"
        );
        let refused = common::assert_error(response, 429, 10049).await;
        let message = refused["errors"][0]["message"].as_str().unwrap();
        assert!(
            message.starts_with(&format!("KV {op} failed: 429")),
            "{message}"
        );
        assert!(message.contains("hot"), "{message}");
    }
    assert_eq!(passed, 1, "one write of the three goes through");
    // Other keys are not affected, and bulk writes report the refused key.
    send_ok(http.put(value_url(&server, &ns, "cold")).body("x")).await;
    let bulk = |other: &str| {
        http.put(format!("{}/{ns}/bulk", server.api()))
            .json(&json!([{ "key": "warm", "value": "3" }, { "key": other, "value": "y" }]))
            .send()
    };
    let (a, b) = tokio::join!(bulk("a"), bulk("b"));
    let mut results = Vec::new();
    for response in [a, b] {
        results.push(common::assert_ok(response.unwrap()).await["result"].clone());
    }
    results.sort_by_key(|r| r["successful_key_count"].as_u64());
    assert_eq!(
        results,
        [
            json!({"successful_key_count": 1, "unsuccessful_keys": ["warm"]}),
            json!({"successful_key_count": 2, "unsuccessful_keys": []}),
        ]
    );
    // A second later the key takes writes again.
    wait_for(
        Duration::from_secs(5),
        "the key to take writes again",
        || {
            let request = http.put(&url).body("4");
            async move { (request.send().await.ok()?.status() == 200).then_some(()) }
        },
    )
    .await;
    assert_eq!(common::fetch_bytes(http.get(&url)).await, "4");
}

fn member<'a>(view: &'a Value, node_id: &str) -> Option<&'a Value> {
    view["members"]
        .as_array()?
        .iter()
        .find(|m| m["node_id"] == node_id)
}

/// Central's operator HTTP address, as the `/cluster` of the node at `base` lists it.
async fn central_http(http: &reqwest::Client, base: &str) -> String {
    let view = common::cluster_view(http, base).await;
    member(&view, "1").expect("central in /cluster")["http"]
        .as_str()
        .expect("central's HTTP address")
        .to_owned()
}

#[tokio::test(flavor = "multi_thread")]
async fn edges_find_central_through_gossip_and_cluster_shows_lag() {
    let mut cluster = Cluster::start(1).await;
    let http = client();
    // Edge 1 is given only the gossip seeds, no central address.
    let discovering = cluster.start_edge(1, "");
    cluster.edges.push(discovering);
    let ns = namespace(&http, &cluster, 0, "gossip").await;
    wait_for(
        Duration::from_secs(10),
        "the seeded edge to find central and take writes",
        || async {
            (put(&http, &cluster.edges[1], &ns, "via-gossip", "1")
                .await
                .0
                == 200)
                .then_some(())
        },
    )
    .await;
    // Every member, with its role, and both edges caught up.
    wait_for(
        Duration::from_secs(10),
        "/cluster to show everyone caught up",
        || async {
            let view = common::cluster_view(&http, &cluster.edges[0].base).await;
            let central = member(&view, "1")?;
            let edges = [member(&view, "2")?, member(&view, "3")?];
            // Once an edge has gossiped when it last caught up, its lag in milliseconds can
            // be told after it dies.
            (central["role"] == "central"
                && central["live"] == true
                && central["grpc"] == cluster.central_url
                && edges.iter().all(|e| {
                    e["role"] == "edge"
                        && e["live"] == true
                        && e["lag_entries"] == 0
                        && e["lag_ms"] == 0
                        && e["caught_up_at_ms"].is_u64()
                }))
            .then_some(())
        },
    )
    .await;
    // An edge that dies shows as dead, and falls behind as writes go on.
    let mut dead = cluster.edges.remove(1);
    dead.kill9();
    for i in 0..5 {
        put(&http, &cluster.edges[0], &ns, &format!("after-{i}"), "x").await;
    }
    wait_for(
        Duration::from_secs(30),
        "/cluster to show the dead edge lagging",
        || async {
            let view = common::cluster_view(&http, &cluster.edges[0].base).await;
            let edge = member(&view, "3")?;
            (edge["live"] == false
                && edge["lag_entries"].as_u64()? >= 5
                && edge["lag_ms"].as_u64()? > 0)
                .then_some(())
        },
    )
    .await;
}

/// An edge further behind than central's retained log rebuilds from a snapshot: it ends with
/// exactly central's data, deletions and a deleted namespace included.
#[tokio::test(flavor = "multi_thread")]
async fn an_edge_behind_the_retained_log_catches_up_from_a_snapshot() {
    let mut cluster = Cluster::start_full(
        2,
        &[
            ("DRIFTKV_REPLICATION__LOG_RETENTION_ENTRIES", "5"),
            ("DRIFTKV_REPLICATION__TRIM_INTERVAL_MS", "50"),
        ],
        &[],
    )
    .await;
    let http = client();
    let ns = namespace(&http, &cluster, 0, "snapshot").await;
    let doomed = namespace(&http, &cluster, 0, "doomed").await;
    put(&http, &cluster.edges[0], &ns, "deleted-later", "x").await;
    wait_for(
        Duration::from_secs(5),
        "edge 1 to have the first key",
        || async {
            contents(&http, &cluster.edges[1], &ns)
                .await
                .contains_key("deleted-later")
                .then_some(())
        },
    )
    .await;
    let behind = cluster.edges.remove(1);
    behind.stop();
    for i in 0..40 {
        put(
            &http,
            &cluster.edges[0],
            &ns,
            &format!("k{i:02}"),
            &i.to_string(),
        )
        .await;
    }
    send_ok(http.delete(value_url(&cluster.edges[0], &ns, "deleted-later"))).await;
    send_ok(http.delete(format!("{}/{doomed}", api(&cluster.edges[0])))).await;
    // Wait until central's log no longer reaches back to what the stopped edge applied.
    wait_for(
        Duration::from_secs(10),
        "central to trim its log",
        || async {
            let view = common::cluster_view(&http, &cluster.edges[0].base).await;
            (member(&view, "1")?["log_oldest_sequence"].as_u64()? > 10).then_some(())
        },
    )
    .await;
    let central_url = cluster.central_url.clone();
    let restarted = cluster.start_edge(1, &central_url);
    cluster.edges.push(restarted);
    let expected = contents(&http, &cluster.edges[0], &ns).await;
    assert_eq!(expected.len(), 40);
    wait_for(
        Duration::from_secs(10),
        "the edge to rebuild from a snapshot",
        || async { (contents(&http, &cluster.edges[1], &ns).await == expected).then_some(()) },
    )
    .await;
    // The namespace deleted while the edge was away is gone there too.
    let gone = http
        .get(format!("{}/{doomed}", api(&cluster.edges[1])))
        .send()
        .await
        .unwrap();
    common::assert_error(gone, 404, 10013).await;
}

/// Garbage collection within seconds: tombstones kept 1 s, collected every 100 ms, and a
/// stopped node forgotten by gossip 2 s after it is found dead.
const GC_ENV: [(&str, &str); 3] = [
    ("DRIFTKV_STORAGE__TOMBSTONE_GRACE_SECS", "1"),
    ("DRIFTKV_STORAGE__GC_INTERVAL_MS", "100"),
    ("DRIFTKV_GOSSIP__DEAD_NODE_GRACE_SECS", "2"),
];

/// The testbed admin token of the edges of the garbage-collection test.
const ADMIN_TOKEN: &str = "gc-test-admin-token";

/// The value of a node's metric family `name` (the sample whose labels include `label`,
/// when given), from its `/metrics`.
async fn metric(
    http: &reqwest::Client,
    base: &str,
    name: &str,
    label: Option<&str>,
) -> Option<f64> {
    let text = http
        .get(format!("{base}/metrics"))
        .send()
        .await
        .ok()?
        .text()
        .await
        .ok()?;
    text.lines()
        .filter(|line| {
            line.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with('{'))
        })
        .find(|line| label.is_none_or(|label| line.contains(label)))?
        .rsplit(' ')
        .next()?
        .parse()
        .ok()
}

/// Tombstones a node counts (0 before it has counted).
async fn tombstones(http: &reqwest::Client, base: &str) -> Option<f64> {
    metric(http, base, "driftkv_store_tombstones", None).await
}

/// Tombstones a node has purged.
async fn purged(http: &reqwest::Client, base: &str) -> f64 {
    metric(
        http,
        base,
        "driftkv_gc_purged_total",
        Some("kind=\"tombstone\""),
    )
    .await
    .unwrap_or(0.0)
}

/// A tombstone goes from central and every edge once every edge has applied past it and its
/// grace period has passed; a paused edge holds it back until it catches up; and an edge that
/// was away while a tombstone went (gossip forgot it) comes back through a snapshot, without
/// the key it missed the deletion of.
#[tokio::test(flavor = "multi_thread")]
async fn tombstones_go_everywhere_once_every_edge_is_past_them_and_nothing_comes_back() {
    let mut edge_env = GC_ENV.to_vec();
    edge_env.extend([
        ("DRIFTKV_TESTBED__ENABLED", "true"),
        ("DRIFTKV_TESTBED__ADMIN_TOKEN", ADMIN_TOKEN),
    ]);
    let mut cluster = Cluster::start_full(2, &GC_ENV, &edge_env).await;
    let http = client();
    let ns = namespace(&http, &cluster, 0, "gc").await;
    let keys = ["early", "held-1", "held-2", "away", "kept"];
    for key in keys {
        assert_eq!(put(&http, &cluster.edges[0], &ns, key, key).await.0, 200);
    }
    wait_for(
        Duration::from_secs(5),
        "edge 1 to have every key",
        || async {
            (contents(&http, &cluster.edges[1], &ns).await.len() == keys.len()).then_some(())
        },
    )
    .await;
    // Central's operator endpoints (its process announces its gRPC address).
    let central = central_http(&http, &cluster.edges[0].base).await;
    let edge_bases: Vec<String> = cluster.edges.iter().map(|e| e.base.clone()).collect();

    // Every edge applied the deletion: its tombstone goes everywhere.
    send_ok(http.delete(value_url(&cluster.edges[0], &ns, "early"))).await;
    for base in [&central, &edge_bases[0], &edge_bases[1]] {
        wait_for(
            Duration::from_secs(10),
            "a tombstone to be purged",
            || async {
                (purged(&http, base).await >= 1.0 && tombstones(&http, base).await == Some(0.0))
                    .then_some(())
            },
        )
        .await;
    }

    // A paused edge holds the horizon back: the tombstones it has not applied stay, at
    // central and at the other edge, well past their grace period.
    let faults = format!("{}/admin/testbed/faults", edge_bases[1]);
    let pause = |paused: bool| {
        http.put(&faults)
            .bearer_auth(ADMIN_TOKEN)
            .json(&json!({ "paused": paused }))
    };
    let status = |request: reqwest::RequestBuilder| async move {
        request.send().await.expect("the testbed answers").status()
    };
    assert_eq!(status(pause(true)).await, 200);
    for key in ["held-1", "held-2"] {
        send_ok(http.delete(value_url(&cluster.edges[0], &ns, key))).await;
    }
    for base in [&central, &edge_bases[0]] {
        wait_for(
            Duration::from_secs(5),
            "the tombstones to be counted",
            || async { (tombstones(&http, base).await == Some(2.0)).then_some(()) },
        )
        .await;
    }
    let watch_until = Instant::now() + Duration::from_secs(3);
    while Instant::now() < watch_until {
        for base in [&central, &edge_bases[0]] {
            assert_eq!(
                tombstones(&http, base).await,
                Some(2.0),
                "{base} purged a tombstone a paused edge has not applied"
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(status(pause(false)).await, 200);
    for base in [&central, &edge_bases[0], &edge_bases[1]] {
        wait_for(
            Duration::from_secs(10),
            "the held tombstones to go once the edge caught up",
            || async { (tombstones(&http, base).await == Some(0.0)).then_some(()) },
        )
        .await;
    }
    assert!(purged(&http, &central).await >= 3.0);

    // An edge away while a tombstone went comes back through a snapshot, without the key.
    let away = cluster.edges.remove(1);
    away.stop();
    let before = purged(&http, &central).await;
    send_ok(http.delete(value_url(&cluster.edges[0], &ns, "away"))).await;
    wait_for(
        Duration::from_secs(20),
        "central to purge a tombstone once gossip forgot the stopped edge",
        || async { (purged(&http, &central).await > before).then_some(()) },
    )
    .await;
    let central_url = cluster.central_url.clone();
    let back = cluster.start_edge(1, &central_url);
    cluster.edges.push(back);
    let expected = contents(&http, &cluster.edges[0], &ns).await;
    assert_eq!(
        expected.keys().map(String::as_str).collect::<Vec<_>>(),
        ["kept"]
    );
    wait_for(
        Duration::from_secs(10),
        "the returning edge to rebuild from a snapshot",
        || async { (contents(&http, &cluster.edges[1], &ns).await == expected).then_some(()) },
    )
    .await;
    for key in ["early", "held-1", "held-2", "away"] {
        assert_eq!(
            get(&http, &cluster.edges[1], &ns, key, None).await,
            None,
            "{key}"
        );
    }
    assert_eq!(
        get(&http, &cluster.edges[1], &ns, "kept", None)
            .await
            .as_deref(),
        Some("kept")
    );
    let installed = metric(
        &http,
        &cluster.edges[1].base,
        "driftkv_snapshots_total",
        Some("direction=\"installed\""),
    )
    .await;
    assert_eq!(installed, Some(1.0));
}

/// A namespace deleted while an edge is paused is gone there once it resumes, stays gone when
/// the edge rebuilds from a snapshot afterwards, and its tombstone goes everywhere once every
/// edge is past it.
#[tokio::test(flavor = "multi_thread")]
async fn a_namespace_deleted_while_an_edge_was_paused_is_gone_there_for_good() {
    let mut edge_env = GC_ENV.to_vec();
    edge_env.extend([
        ("DRIFTKV_TESTBED__ENABLED", "true"),
        ("DRIFTKV_TESTBED__ADMIN_TOKEN", ADMIN_TOKEN),
    ]);
    let cluster = Cluster::start_full(2, &GC_ENV, &edge_env).await;
    let http = client();
    let doomed = namespace(&http, &cluster, 0, "doomed").await;
    assert_eq!(
        put(&http, &cluster.edges[0], &doomed, "k", "v").await.0,
        200
    );
    wait_for(Duration::from_secs(5), "edge 1 to have the key", || async {
        contents(&http, &cluster.edges[1], &doomed)
            .await
            .contains_key("k")
            .then_some(())
    })
    .await;
    let admin = |path: &str| format!("{}/admin/testbed/{path}", cluster.edges[1].base);
    let pause = |paused: bool| {
        http.put(admin("faults"))
            .bearer_auth(ADMIN_TOKEN)
            .json(&json!({ "paused": paused }))
            .send()
    };
    assert_eq!(pause(true).await.unwrap().status(), 200);
    send_ok(http.delete(format!("{}/{doomed}", api(&cluster.edges[0])))).await;
    let namespace_at = |edge: usize| {
        http.get(format!("{}/{doomed}", api(&cluster.edges[edge])))
            .send()
    };
    assert_eq!(namespace_at(1).await.unwrap().status(), 200, "paused edge");
    assert_eq!(pause(false).await.unwrap().status(), 200);
    wait_for(
        Duration::from_secs(10),
        "the namespace to go at the resumed edge",
        || async { (namespace_at(1).await.ok()?.status() == 404).then_some(()) },
    )
    .await;
    let central = central_http(&http, &cluster.edges[0].base).await;
    let namespaces_purged = |base: String| {
        let http = http.clone();
        async move {
            metric(
                &http,
                &base,
                "driftkv_gc_purged_total",
                Some("kind=\"namespace\""),
            )
            .await
        }
    };
    for base in [
        central.clone(),
        cluster.edges[0].base.clone(),
        cluster.edges[1].base.clone(),
    ] {
        wait_for(
            Duration::from_secs(10),
            "the namespace tombstone to be purged",
            || async { (namespaces_purged(base.clone()).await? >= 1.0).then_some(()) },
        )
        .await;
    }
    // A rebuild from a snapshot after the tombstone went does not bring it back either.
    let resync = http
        .post(admin("resync"))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(resync.status(), 200);
    wait_for(Duration::from_secs(10), "the resync snapshot", || async {
        let installed = metric(
            &http,
            &cluster.edges[1].base,
            "driftkv_snapshots_total",
            Some("direction=\"installed\""),
        )
        .await?;
        (installed >= 1.0).then_some(())
    })
    .await;
    for edge in [0, 1] {
        assert_eq!(namespace_at(edge).await.unwrap().status(), 404);
    }
    let listed = send_ok(http.get(api(&cluster.edges[1]))).await;
    assert!(
        !listed.to_string().contains(&doomed),
        "the deleted namespace is listed: {listed}"
    );
}
