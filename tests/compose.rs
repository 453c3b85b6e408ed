//! End to end on the docker compose cluster (`docker-compose.yml`: central and three edges,
//! from the `driftkv:latest` image), driven only through the edges' published ports and docker
//! commands, through the faults an operator meets: an edge stopped and started, an edge cut off
//! the network and reconnected, central killed mid-load and started again. Writes go on
//! throughout; at the end every edge must hold the same data, with every acknowledged write.
//!
//! The cluster runs under its own compose project name and its own free host ports, so it never
//! touches a user's cluster, and is removed with its volumes however the test ends. Without a
//! docker engine the test is skipped with a message (`DRIFTKV_REQUIRE_DOCKER=1` turns that into
//! a failure, as `.ci/run` does where docker runs). The test builds the image from this
//! checkout with `deploy/build-image.sh` first.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::{Command, Output};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

mod common;

/// The API token the cluster's edges accept (no default exists: the compose file requires one).
const TOKEN: &str = "e2e-token-9f1c2b7d4e6a8f0c1b3d5e7a9c2e4f6a";

/// The cluster CA the test's TLS material was made with (by deploy/compose/secrets.sh).
static CLUSTER_CA: std::sync::OnceLock<Vec<u8>> = std::sync::OnceLock::new();
const ACCOUNT: &str = "e2e";
const EDGES: usize = 3;
/// The edge the faults happen to; the writers use the others.
const FAULTY: usize = 2;
/// Longest a write may take to fail while central is down: the edges' request timeout (2 s in
/// deploy/compose) plus the time to connect and answer.
const FAIL_FAST: Duration = Duration::from_millis(3500);

/// The compose command here: `docker compose` (v2) or `docker-compose` (v1).
fn compose_tool() -> Option<Vec<&'static str>> {
    let works = |args: &[&str]| {
        Command::new(args[0])
            .args(&args[1..])
            .output()
            .is_ok_and(|o| o.status.success())
    };
    if works(&["docker", "compose", "version"]) {
        Some(vec!["docker", "compose"])
    } else if works(&["docker-compose", "version"]) {
        Some(vec!["docker-compose"])
    } else {
        None
    }
}

fn run(program: &str, args: &[&str], env: &[(String, String)]) -> Output {
    let output = Command::new(program)
        .args(args)
        .envs(env.iter().map(|(k, v)| (k, v)))
        .output()
        .unwrap_or_else(|e| panic!("cannot run {program}: {e}"));
    output
}

fn check(output: Output, what: &str) -> String {
    assert!(
        output.status.success(),
        "{what} failed: {}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).trim().to_owned()
}

/// A compose project of our own; brought down with its volumes when dropped.
struct Cluster {
    tool: Vec<&'static str>,
    project: String,
    env: Vec<(String, String)>,
    /// The edges' base URLs on the host.
    edges: Vec<String>,
}

impl Cluster {
    fn compose(&self, args: &[&str]) -> Output {
        let file = Path::new(env!("CARGO_MANIFEST_DIR")).join("docker-compose.yml");
        let mut all = self.tool[1..].to_vec();
        all.extend(["-f", file.to_str().unwrap(), "-p", &self.project]);
        all.extend_from_slice(args);
        run(self.tool[0], &all, &self.env)
    }

    fn compose_ok(&self, args: &[&str]) -> String {
        check(self.compose(args), &format!("compose {}", args.join(" ")))
    }

    fn container(&self, service: &str) -> String {
        self.compose_ok(&["ps", "-q", service])
    }

    /// Waits until docker reports every service's health check healthy: what `docker compose
    /// up --wait` does (Compose v2), done the way that also works with Compose v1.
    async fn wait_healthy(&self) {
        let services = ["central", "edge-1", "edge-2", "edge-3"];
        let containers: Vec<String> = services.iter().map(|s| self.container(s)).collect();
        wait_for(
            Duration::from_secs(120),
            "every service to be healthy",
            || async {
                let health = check(
                    run(
                        "docker",
                        &[
                            &["inspect", "-f", "{{.State.Health.Status}}"][..],
                            &containers.iter().map(String::as_str).collect::<Vec<_>>(),
                        ]
                        .concat(),
                        &[],
                    ),
                    "docker inspect",
                );
                health
                    .lines()
                    .all(|status| status == "healthy")
                    .then_some(())
            },
        )
        .await;
    }

    fn network(&self, container: &str) -> String {
        let names = check(
            run(
                "docker",
                &[
                    "inspect",
                    "-f",
                    "{{range $name, $_ := .NetworkSettings.Networks}}{{$name}} {{end}}",
                    container,
                ],
                &[],
            ),
            "docker inspect",
        );
        names
            .split_whitespace()
            .next()
            .expect("a network")
            .to_owned()
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let down = self.compose(&["down", "-v", "--remove-orphans", "--timeout", "5"]);
        if !down.status.success() {
            eprintln!(
                "cleaning up compose project {} failed: {}",
                self.project,
                String::from_utf8_lossy(&down.stderr)
            );
        }
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

/// Polls `check` every 250 ms (a check here reads whole listings from every edge) until it
/// yields a value; fails the test after `within`.
async fn wait_for<T, F, Fut>(within: Duration, what: &str, check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    common::wait_every(within, Duration::from_millis(250), what, check).await
}

fn http() -> reqwest::Client {
    let mut headers = reqwest::header::HeaderMap::new();
    headers.insert(
        reqwest::header::AUTHORIZATION,
        format!("Bearer {TOKEN}").parse().unwrap(),
    );
    let ca = CLUSTER_CA.get().expect("the TLS material is made first");
    reqwest::Client::builder()
        .default_headers(headers)
        .add_root_certificate(reqwest::Certificate::from_pem(ca).unwrap())
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap()
}

fn api(edge: &str) -> String {
    format!("{edge}/client/v4/accounts/{ACCOUNT}/storage/kv/namespaces")
}

async fn json_of(request: reqwest::RequestBuilder) -> Option<Value> {
    let response = request.send().await.ok()?;
    if !response.status().is_success() {
        return None;
    }
    response.json().await.ok()
}

async fn cluster_view(http: &reqwest::Client, edge: &str) -> Option<Value> {
    json_of(http.get(format!("{edge}/cluster"))).await
}

/// Every key of the namespace at `edge` with its value: the full listing, values by bulk get.
/// `None` while the edge does not answer.
async fn contents(
    http: &reqwest::Client,
    edge: &str,
    ns: &str,
) -> Option<BTreeMap<String, String>> {
    let mut keys = Vec::new();
    let mut cursor = String::new();
    loop {
        let page = json_of(
            http.get(format!("{}/{ns}/keys", api(edge)))
                .query(&[("cursor", cursor.as_str())]),
        )
        .await?;
        for key in page["result"].as_array().unwrap() {
            keys.push(key["name"].as_str().unwrap().to_owned());
        }
        cursor = page["result_info"]["cursor"].as_str().unwrap().to_owned();
        if cursor.is_empty() {
            break;
        }
    }
    let mut all = BTreeMap::new();
    for chunk in keys.chunks(100) {
        let body = json_of(
            http.post(format!("{}/{ns}/bulk/get", api(edge)))
                .json(&json!({ "keys": chunk })),
        )
        .await?;
        for (key, value) in body["result"]["values"].as_object().unwrap() {
            all.insert(key.clone(), value.as_str().unwrap_or_default().to_owned());
        }
    }
    Some(all)
}

/// What the background writers saw.
#[derive(Default)]
struct Ledger {
    /// Acknowledged writes: key → value.
    acked: BTreeMap<String, String>,
    /// Failed writes: (HTTP status, Cloudflare code, how long the request took).
    failed: Vec<(u16, u64, Duration)>,
}

/// Writes distinct keys in turn at `edges` until `stop`, at most `limit` writes, recording
/// every outcome.
async fn write_until(
    edges: Vec<String>,
    ns: String,
    stop: Arc<AtomicBool>,
    ledger: Arc<Mutex<Ledger>>,
    limit: usize,
) {
    let http = http();
    for n in 0..limit {
        if stop.load(Ordering::Relaxed) {
            return;
        }
        let edge = &edges[n % edges.len()];
        let (key, value) = (format!("w{n:06}"), format!("value-{n}"));
        let started = Instant::now();
        let outcome = http
            .put(format!("{}/{ns}/values/{key}", api(edge)))
            .body(value.clone())
            .send()
            .await;
        let took = started.elapsed();
        let failure = match outcome {
            Ok(response) if response.status().is_success() => None,
            Ok(response) => {
                let status = response.status().as_u16();
                let code = response
                    .json::<Value>()
                    .await
                    .ok()
                    .and_then(|b| b["errors"][0]["code"].as_u64())
                    .unwrap_or(0);
                Some((status, code, took))
            }
            Err(_) => Some((0, 0, took)),
        };
        {
            let mut ledger = ledger.lock().unwrap();
            match failure {
                None => {
                    ledger.acked.insert(key, value);
                }
                Some(failure) => ledger.failed.push(failure),
            }
        }
        // Paced, so the run stays light on a small machine.
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn acked(ledger: &Mutex<Ledger>) -> usize {
    ledger.lock().unwrap().acked.len()
}

/// Waits until the writers have had `more` further writes acknowledged.
async fn writes_go_on(ledger: &Mutex<Ledger>, more: usize, what: &str) {
    let target = acked(ledger) + more;
    wait_for(Duration::from_secs(60), what, || async {
        (acked(ledger) >= target).then_some(())
    })
    .await;
}

/// Waits until `edge` holds every key the writers had acknowledged when called.
async fn catches_up(http: &reqwest::Client, edge: &str, ns: &str, ledger: &Mutex<Ledger>) {
    let expected: BTreeSet<String> = ledger.lock().unwrap().acked.keys().cloned().collect();
    wait_for(Duration::from_secs(60), "the edge to catch up", || async {
        let held = contents(http, edge, ns).await?;
        expected.iter().all(|k| held.contains_key(k)).then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_compose_cluster_survives_its_faults_and_converges() {
    let required = std::env::var("DRIFTKV_REQUIRE_DOCKER").is_ok_and(|v| v == "1");
    let docker = Command::new("docker")
        .arg("info")
        .output()
        .is_ok_and(|o| o.status.success());
    let tool = compose_tool();
    let (true, Some(tool)) = (docker, tool) else {
        assert!(
            !required,
            "DRIFTKV_REQUIRE_DOCKER=1 but docker or compose is missing"
        );
        eprintln!("skipping the compose end-to-end test: no docker engine or no compose tool");
        return;
    };
    // The image is built from this checkout every time (an incremental release build), so the
    // cluster never runs a stale binary.
    let root = env!("CARGO_MANIFEST_DIR");
    check(
        run(&format!("{root}/deploy/build-image.sh"), &[], &[]),
        "deploy/build-image.sh",
    );

    // TLS material and gossip key as a user makes them, in a directory of the test's own.
    let secrets = tempfile::tempdir().unwrap();
    check(
        run(
            &format!("{root}/deploy/compose/secrets.sh"),
            &[secrets.path().to_str().unwrap()],
            &[],
        ),
        "deploy/compose/secrets.sh",
    );
    CLUSTER_CA
        .set(std::fs::read(secrets.path().join("ca/ca.pem")).unwrap())
        .unwrap();

    let ports: Vec<u16> = (0..EDGES).map(|_| free_port()).collect();
    let binding_ports: Vec<u16> = (0..EDGES).map(|_| free_port()).collect();
    let mut env = vec![
        ("DRIFTKV_API_TOKENS".to_owned(), TOKEN.to_owned()),
        (
            "DRIFTKV_SECRETS".to_owned(),
            secrets.path().display().to_string(),
        ),
        // Central stays down when killed, until the test starts it.
        ("DRIFTKV_RESTART".to_owned(), "no".to_owned()),
        ("RUST_LOG".to_owned(), "warn".to_owned()),
    ];
    for (i, port) in ports.iter().enumerate() {
        env.push((format!("DRIFTKV_EDGE{}_PORT", i + 1), port.to_string()));
    }
    for (i, port) in binding_ports.iter().enumerate() {
        env.push((
            format!("DRIFTKV_EDGE{}_WORKERD_PORT", i + 1),
            port.to_string(),
        ));
    }
    let cluster = Cluster {
        tool,
        project: format!("driftkv-e2e-{}", std::process::id()),
        env,
        edges: ports
            .iter()
            .map(|p| format!("https://127.0.0.1:{p}"))
            .collect(),
    };
    cluster.compose_ok(&["up", "-d"]);
    let http = http();

    // Healthy means ready for writes: a write right after the wait succeeds at once.
    cluster.wait_healthy().await;
    let created = json_of(
        http.post(api(&cluster.edges[0]))
            .json(&json!({ "title": "e2e" })),
    )
    .await
    .expect("a write right after every service is healthy succeeds");
    let ns = created["result"]["id"].as_str().unwrap().to_owned();

    // Every edge sees central and the other edges live.
    for edge in &cluster.edges {
        wait_for(
            Duration::from_secs(120),
            "the cluster to come up",
            || async {
                let view = cluster_view(&http, edge).await?;
                let live = view["members"]
                    .as_array()?
                    .iter()
                    .filter(|m| m["live"] == true)
                    .count();
                (live == EDGES + 1 && view["central_durable_sequence"].is_u64()).then_some(())
            },
        )
        .await;
    }

    // Write at one edge, read at the others.
    let put = http
        .put(format!("{}/{ns}/values/hello", api(&cluster.edges[0])))
        .body("from edge 1")
        .send()
        .await
        .unwrap();
    assert!(put.status().is_success());
    for edge in &cluster.edges[1..] {
        // The listing reads the replica and leaves the cache alone, so the GET after it is
        // never an early "not found" cached for a minute.
        wait_for(
            Duration::from_secs(10),
            "the write at the other edges",
            || async {
                let page = json_of(
                    http.get(format!("{}/{ns}/keys", api(edge)))
                        .query(&[("prefix", "hello")]),
                )
                .await?;
                (!page["result"].as_array()?.is_empty()).then_some(())
            },
        )
        .await;
        let value = common::fetch_bytes(http.get(format!("{}/{ns}/values/hello", api(edge)))).await;
        assert_eq!(value, "from edge 1");
    }
    // And through every edge's published workerd binding, over HTTPS with the token.
    for port in &binding_ports {
        let value = common::fetch_bytes(
            http.get(format!("https://127.0.0.1:{port}/hello"))
                .header("X-Driftkv-Namespace", &ns),
        )
        .await;
        assert_eq!(value, "from edge 1");
    }

    // Writes go on at the two healthy edges through every fault below.
    let stop = Arc::new(AtomicBool::new(false));
    let ledger = Arc::new(Mutex::new(Ledger::default()));
    let writers = tokio::spawn(write_until(
        cluster.edges[..FAULTY].to_vec(),
        ns.clone(),
        stop.clone(),
        ledger.clone(),
        100_000,
    ));
    let faulty = cluster.edges[FAULTY].clone();
    let service = format!("edge-{}", FAULTY + 1);
    writes_go_on(&ledger, 50, "writes to start").await;

    // An edge stopped while writes continue, then started: it catches up.
    cluster.compose_ok(&["stop", &service]);
    writes_go_on(&ledger, 100, "writes while the edge is stopped").await;
    cluster.compose_ok(&["start", &service]);
    catches_up(&http, &faulty, &ns, &ledger).await;

    // An edge cut off the network during writes: the others' /cluster shows it lagging or
    // dead; reconnected, it converges.
    let container = cluster.container(&service);
    let network = cluster.network(&container);
    check(
        run(
            "docker",
            &["network", "disconnect", &network, &container],
            &[],
        ),
        "docker network disconnect",
    );
    let seen = wait_for(
        Duration::from_secs(60),
        "/cluster to show the cut-off edge",
        || async {
            let view = cluster_view(&http, &cluster.edges[0]).await?;
            let member = view["members"]
                .as_array()?
                .iter()
                .find(|m| m["node_id"].as_str() == Some(&(FAULTY + 2).to_string()))?
                .clone();
            let lagging = member["lag_entries"].as_u64().unwrap_or(0) > 0;
            (member["status"] == "dead" || lagging).then_some(member)
        },
    )
    .await;
    eprintln!("while cut off, /cluster showed: {seen}");
    writes_go_on(&ledger, 100, "writes while the edge is cut off").await;
    check(
        run(
            "docker",
            &[
                "network", "connect", "--alias", &service, &network, &container,
            ],
            &[],
        ),
        "docker network connect",
    );
    catches_up(&http, &faulty, &ns, &ledger).await;

    // Central killed mid-load: writes fail fast with a clear error meanwhile; started again,
    // the edges resume and nothing acknowledged is lost.
    let failures_before = ledger.lock().unwrap().failed.len();
    cluster.compose_ok(&["kill", "central"]);
    wait_for(
        Duration::from_secs(60),
        "writes to fail while central is down",
        || async { (ledger.lock().unwrap().failed.len() >= failures_before + 5).then_some(()) },
    )
    .await;
    cluster.compose_ok(&["start", "central"]);
    writes_go_on(&ledger, 100, "writes to resume after central restarts").await;
    stop.store(true, Ordering::Relaxed);
    writers.await.unwrap();
    let ledger = Arc::try_unwrap(ledger).ok().unwrap().into_inner().unwrap();
    for (status, code, took) in &ledger.failed[failures_before..] {
        assert_eq!(
            (*status, *code),
            (503, 10050),
            "a write during the outage failed without the write region's error"
        );
        assert!(*took <= FAIL_FAST, "a write took {took:?} to fail");
    }

    // In the end every edge holds the same data, and every acknowledged write.
    let reference = wait_for(
        Duration::from_secs(60),
        "every edge to converge",
        || async {
            let first = contents(&http, &cluster.edges[0], &ns).await?;
            for edge in &cluster.edges[1..] {
                if contents(&http, edge, &ns).await? != first {
                    return None;
                }
            }
            Some(first)
        },
    )
    .await;
    for (key, value) in &ledger.acked {
        assert_eq!(
            reference.get(key),
            Some(value),
            "acknowledged write {key} was lost"
        );
    }
    assert_eq!(
        reference.get("hello").map(String::as_str),
        Some("from edge 1")
    );
}
