//! Data outlives the process: a graceful restart, a `kill -9` in the middle of a write load,
//! many `kill -9`s of central and of edges under write load on each storage engine, and the
//! system calls that make an acknowledged write durable, counted under strace.

mod common;

use std::collections::{BTreeSet, HashMap};
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{client, create_namespace, fetch_bytes, send_ok, wait_for, Server};
use serde_json::Value;

#[tokio::test]
async fn data_survives_a_graceful_restart() {
    let tmp = tempfile::tempdir().unwrap();
    let c = client();
    let server = Server::start_in(tmp.path(), &[]).unwrap();
    let id = create_namespace(&c, &server, "persistent").await;
    let ns = format!("{}/{id}", server.api());
    send_ok(
        c.put(format!("{ns}/values/k?expiration_ttl=3600"))
            .body("kept"),
    )
    .await;
    let form = reqwest::multipart::Form::new()
        .part("value", reqwest::multipart::Part::bytes(vec![1u8, 2, 3]))
        .part("metadata", reqwest::multipart::Part::text(r#"{"m":true}"#));
    send_ok(c.put(format!("{ns}/values/meta")).multipart(form)).await;
    send_ok(c.put(format!("{ns}/values/gone")).body("x")).await;
    send_ok(c.delete(format!("{ns}/values/gone"))).await;
    server.stop();

    let server = Server::start_in(tmp.path(), &[]).unwrap();
    let ns = format!("{}/{id}", server.api());
    assert_eq!(
        send_ok(c.get(format!("{}/{id}", server.api()))).await["result"]["title"],
        "persistent"
    );
    let got = c.get(format!("{ns}/values/k")).send().await.unwrap();
    assert!(got.headers().contains_key("expiration"));
    assert_eq!(got.text().await.unwrap(), "kept");
    assert_eq!(
        fetch_bytes(c.get(format!("{ns}/values/meta")))
            .await
            .as_ref(),
        &[1u8, 2, 3]
    );
    assert_eq!(
        send_ok(c.get(format!("{ns}/metadata/meta"))).await["result"]["m"],
        true
    );
    assert_eq!(
        c.get(format!("{ns}/values/gone"))
            .send()
            .await
            .unwrap()
            .status(),
        404
    );
    server.stop();
}

#[tokio::test]
async fn acknowledged_writes_survive_kill_9() {
    let tmp = tempfile::tempdir().unwrap();
    let c = client();
    let mut server = Server::start_in(tmp.path(), &[]).unwrap();
    let id = create_namespace(&c, &server, "crash").await;
    let ns = format!("{}/{id}", server.api());

    // Eight writers put distinct keys as fast as they can; each write counts once it is
    // acknowledged. The loops are bounded, and end early once the server is gone.
    let acked: Arc<Mutex<HashMap<String, String>>> = Arc::default();
    let mut writers = Vec::new();
    for w in 0..8 {
        let (c, ns, acked) = (c.clone(), ns.clone(), acked.clone());
        writers.push(tokio::spawn(async move {
            for i in 0..5000 {
                let key = format!("w{w}/{i:05}");
                let value = format!("value-{w}-{i}");
                match c
                    .put(format!("{ns}/values/{key}"))
                    .body(value.clone())
                    .send()
                    .await
                {
                    Ok(r) if r.status() == 200 => {
                        acked.lock().unwrap().insert(key, value);
                    }
                    _ => return,
                }
            }
        }));
    }
    // Kill mid-load, once a good number of writes have been acknowledged.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while acked.lock().unwrap().len() < 400 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "writes are not being acknowledged"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    server.kill9();
    for w in writers {
        w.await.unwrap();
    }
    let acked = acked.lock().unwrap().clone();

    let server = Server::start_in(tmp.path(), &[]).unwrap();
    let ns = format!("{}/{id}", server.api());
    let mut missing = Vec::new();
    for (key, value) in &acked {
        let got = c.get(format!("{ns}/values/{key}")).send().await.unwrap();
        if got.status() != 200 || got.text().await.unwrap() != *value {
            missing.push(key.clone());
        }
    }
    assert!(
        missing.is_empty(),
        "{} of {} acknowledged writes lost: {:?}",
        missing.len(),
        acked.len(),
        &missing[..missing.len().min(10)]
    );
    server.stop();
}

/// The storage engines a node can run on (`storage.engine`).
const ENGINES: [&str; 2] = ["sled", "fjall"];

/// Kills (SIGKILL) central, then each edge, then central again... under a write load through
/// both edges.
const CRASH_CYCLES: usize = 6;

/// A central and two edge processes on one storage engine, each with its own data directory.
struct Crashable {
    dir: tempfile::TempDir,
    engine: &'static str,
    central: Server,
    edges: Vec<Server>,
}

/// Settings of every node: the engine, free gossip ports, failures noticed within a second or two.
fn node_env(engine: &'static str) -> Vec<(&'static str, &'static str)> {
    vec![
        ("DRIFTKV_STORAGE__ENGINE", engine),
        ("DRIFTKV_GOSSIP__LISTEN", "127.0.0.1:0"),
        ("DRIFTKV_REPLICATION__HEARTBEAT_MS", "100"),
        ("DRIFTKV_REPLICATION__STREAM_SILENCE_MS", "1000"),
        ("DRIFTKV_CENTRAL__REQUEST_TIMEOUT_MS", "2000"),
        ("DRIFTKV_CENTRAL__CONNECT_TIMEOUT_MS", "500"),
    ]
}

/// Starts central on `engine` in `dir`, with its gRPC service on `grpc` (port 0: any).
fn start_central(dir: &Path, engine: &'static str, grpc: &str) -> Server {
    let data = dir.join("central");
    let args = ["central", "--data-dir", &data.display().to_string()].map(String::from);
    let mut env = node_env(engine);
    env.extend([
        ("DRIFTKV_GRPC__LISTEN", grpc),
        ("DRIFTKV_LISTEN", "127.0.0.1:0"),
    ]);
    Server::launch(&args, dir, &env, "driftkv central listening on ")
        .unwrap_or_else(|log| panic!("{engine}: central did not start: {log}"))
}

impl Crashable {
    fn start_edge(&self, index: usize) -> Server {
        let data = self.dir.path().join(format!("edge-{index}"));
        let args = ["edge", "--listen", "127.0.0.1:0", "--data-dir"].map(String::from);
        let mut args = args.to_vec();
        args.push(data.display().to_string());
        let node_id = (2 + index).to_string();
        let mut env = node_env(self.engine);
        env.extend([
            ("DRIFTKV_NODE_ID", node_id.as_str()),
            ("DRIFTKV_CENTRAL__ADDRESS", self.central.base.as_str()),
        ]);
        Server::launch(&args, &data, &env, "driftkv edge listening on ")
            .unwrap_or_else(|log| panic!("{}: edge {index} did not start: {log}", self.engine))
    }

    async fn start(engine: &'static str) -> Crashable {
        let dir = tempfile::tempdir().unwrap();
        let central = start_central(dir.path(), engine, "127.0.0.1:0");
        let mut cluster = Crashable {
            dir,
            engine,
            central,
            edges: Vec::new(),
        };
        cluster.edges = (0..2).map(|i| cluster.start_edge(i)).collect();
        cluster
    }

    /// SIGKILLs central and starts it again on the same port and data.
    fn crash_central(&mut self) {
        self.central.kill9();
        let grpc = self.central.addr();
        self.central = start_central(self.dir.path(), self.engine, &grpc);
    }

    /// SIGKILLs edge `index` and starts it again on its data.
    fn crash_edge(&mut self, index: usize) {
        self.edges[index].kill9();
        self.edges[index] = self.start_edge(index);
    }
}

/// Every key an edge's listing shows in namespace `ns` (listings read the replica).
async fn listed(c: &reqwest::Client, edge: &Server, ns: &str) -> Option<BTreeSet<String>> {
    let mut keys = BTreeSet::new();
    let mut cursor = String::new();
    loop {
        let url = format!("{}/{ns}/keys?limit=1000&cursor={cursor}", edge.api());
        let page: Value = c.get(url).send().await.ok()?.json().await.ok()?;
        for key in page["result"].as_array()? {
            keys.insert(key["name"].as_str()?.to_owned());
        }
        cursor = page["result_info"]["cursor"]
            .as_str()
            .unwrap_or("")
            .to_owned();
        if cursor.is_empty() {
            return Some(keys);
        }
    }
}

/// Writers putting distinct keys through both edges until `stop`; each write counts once
/// acknowledged. Failed writes (a node is down) are retried under other keys. One writer per
/// edge writes values of about 150 KiB, which fjall's store keeps in pieces (see
/// `driftkv_store::chunked`): a crash must never leave a key with part of its value.
fn spawn_writers(
    c: &reqwest::Client,
    urls: &[String],
    cycle: usize,
    acked: &Arc<Mutex<HashMap<String, String>>>,
    stop: &Arc<AtomicBool>,
) -> Vec<tokio::task::JoinHandle<()>> {
    let mut writers = Vec::new();
    for (e, url) in urls.iter().enumerate() {
        for w in 0..4 {
            let (c, url, acked, stop) = (c.clone(), url.clone(), acked.clone(), stop.clone());
            writers.push(tokio::spawn(async move {
                for i in 0..100_000 {
                    if stop.load(Ordering::SeqCst) {
                        return;
                    }
                    let key = format!("c{cycle}-e{e}-w{w}-{i:06}");
                    let value = if w == 0 {
                        format!("v-{key}-").repeat(150 * 1024 / (key.len() + 3))
                    } else {
                        format!("v-{key}")
                    };
                    let put = c.put(format!("{url}/values/{key}")).body(value.clone());
                    match put.send().await {
                        Ok(r) if r.status() == 200 => {
                            acked.lock().unwrap().insert(key, value);
                        }
                        // Down for the moment: try again shortly.
                        _ => tokio::time::sleep(Duration::from_millis(20)).await,
                    }
                }
            }));
        }
    }
    writers
}

/// Central and the edges are killed in turn under a write load through both edges; every
/// acknowledged write is then at both edges with its value, and every database opens again
/// after a last kill of all three.
async fn no_acknowledged_write_is_lost_across_crashes(engine: &'static str) {
    let c = client();
    let mut cluster = Crashable::start(engine).await;
    let ns = create_namespace(&c, &cluster.edges[0], "crashes").await;
    let acked: Arc<Mutex<HashMap<String, String>>> = Arc::default();
    for cycle in 0..CRASH_CYCLES {
        let urls: Vec<String> = cluster
            .edges
            .iter()
            .map(|e| format!("{}/{ns}", e.api()))
            .collect();
        let before = acked.lock().unwrap().len();
        let stop = Arc::new(AtomicBool::new(false));
        let writers = spawn_writers(&c, &urls, cycle, &acked, &stop);
        wait_for(Duration::from_secs(60), "writes acknowledged", || {
            let n = acked.lock().unwrap().len();
            async move { (n >= before + 150).then_some(()) }
        })
        .await;
        match cycle % 3 {
            0 => cluster.crash_central(),
            victim => cluster.crash_edge(victim - 1),
        }
        // A little more load on the restarted node, then the cycle ends.
        let resumed = acked.lock().unwrap().len();
        wait_for(
            Duration::from_secs(60),
            "writes acknowledged after the restart",
            || {
                let n = acked.lock().unwrap().len();
                async move { (n >= resumed + 50).then_some(()) }
            },
        )
        .await;
        stop.store(true, Ordering::SeqCst);
        for writer in writers {
            writer.await.unwrap();
        }
    }
    // One last crash of everything at once: each database opens again.
    for edge in &mut cluster.edges {
        edge.kill9();
    }
    cluster.crash_central();
    cluster.edges = (0..2).map(|i| cluster.start_edge(i)).collect();
    let acked = acked.lock().unwrap().clone();
    let large = acked.values().filter(|v| v.len() > 64 * 1024).count();
    assert!(
        large >= CRASH_CYCLES,
        "{engine}: only {large} large values acknowledged"
    );
    let expected: BTreeSet<String> = acked.keys().cloned().collect();
    for edge in &cluster.edges {
        let seen = wait_for(
            Duration::from_secs(120),
            "every acknowledged write replicated",
            || {
                let (c, edge, ns, expected) = (c.clone(), edge, ns.clone(), expected.clone());
                async move {
                    let keys = listed(&c, edge, &ns).await?;
                    expected.is_subset(&keys).then_some(keys)
                }
            },
        )
        .await;
        assert!(seen.len() >= expected.len());
    }
    let mut wrong = Vec::new();
    for (key, value) in &acked {
        let got = c
            .get(format!("{}/{ns}/values/{key}", cluster.edges[1].api()))
            .send()
            .await
            .unwrap();
        if got.status() != 200 || got.text().await.unwrap() != *value {
            wrong.push(key.clone());
        }
    }
    assert!(
        wrong.is_empty(),
        "{engine}: {} of {} acknowledged writes lost or wrong: {:?}",
        wrong.len(),
        acked.len(),
        &wrong[..wrong.len().min(10)]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sled_loses_no_acknowledged_write_when_nodes_crash() {
    no_acknowledged_write_is_lost_across_crashes(ENGINES[0]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fjall_loses_no_acknowledged_write_when_nodes_crash() {
    no_acknowledged_write_is_lost_across_crashes(ENGINES[1]).await;
}

/// `driftkv dev` under `strace -f`, counting the `fsync`/`fdatasync` calls on central's files
/// while writes go through the edge: one write at a time, every write waits for a sync of its
/// own; 200 writes at once share far fewer syncs (group commit). On each engine.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_acknowledged_write_waited_for_a_sync_system_call() {
    for engine in ENGINES {
        syncs_under_strace(engine).await;
    }
}

/// Sync calls on files under `dir` in an `strace -y` log.
fn syncs_of(log: &str, dir: &Path) -> usize {
    let dir = format!("<{}", dir.display());
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .filter(|line| line.contains("fsync(") || line.contains("fdatasync("))
        .filter(|line| line.contains(&dir) && line.contains(") = 0"))
        .count()
}

/// strace and the `driftkv dev` it traces, both stopped when dropped (after a failed assertion
/// too): killing strace alone detaches the traced process and leaves it running.
struct Traced(Child);

impl Drop for Traced {
    fn drop(&mut self) {
        let strace = self.0.id();
        let children = std::fs::read_to_string(format!("/proc/{strace}/task/{strace}/children"))
            .unwrap_or_default();
        for pid in children.split_whitespace() {
            let _ = Command::new("kill").args(["-KILL", pid]).status();
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

async fn syncs_under_strace(engine: &str) {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let log = tmp.path().join("strace.log");
    let log = log.display().to_string();
    let mut traced = Traced(
        Command::new("strace")
            .args(["-f", "-qq", "-y", "-e", "trace=fsync,fdatasync", "-o", &log])
            .arg(env!("CARGO_BIN_EXE_driftkv"))
            .args(["dev", "--listen", "127.0.0.1:0", "--data-dir"])
            .arg(&data)
            .env("DRIFTKV_STORAGE__ENGINE", engine)
            .env("DRIFTKV_WORKERD__LISTEN", "127.0.0.1:0")
            .env("DRIFTKV_RATE_LIMIT__WRITES_PER_KEY_PER_SECOND", "0")
            .env_remove("DRIFTKV_API_TOKENS")
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("strace runs (apt-get install strace)"),
    );
    // The pipe is drained for the life of the process, or its next line would fail.
    let stdout = traced.0.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if let Some(base) = line.strip_prefix("driftkv dev listening on ") {
                let _ = tx.send(base.to_owned());
            }
        }
    });
    let base = tokio::task::spawn_blocking(move || rx.recv_timeout(Duration::from_secs(120)))
        .await
        .unwrap()
        .expect("driftkv dev starts under strace");
    let c = client();
    let api = format!(
        "{base}/client/v4/accounts/{}/storage/kv/namespaces",
        common::ACCOUNT
    );
    let created: Value = send_ok(c.post(&api).json(&serde_json::json!({"title": "syncs"}))).await;
    let ns = format!("{api}/{}", created["result"]["id"].as_str().unwrap());
    let central = data.join("central");

    let before = syncs_of(&log, &central);
    const ONE_BY_ONE: usize = 30;
    for i in 0..ONE_BY_ONE {
        send_ok(c.put(format!("{ns}/values/one-{i}")).body("v")).await;
    }
    let sequential = syncs_of(&log, &central) - before;
    assert!(
        sequential >= ONE_BY_ONE,
        "{engine}: {ONE_BY_ONE} writes one after another, {sequential} syncs of central's files"
    );

    let before = syncs_of(&log, &central);
    const AT_ONCE: usize = 200;
    let writes = (0..AT_ONCE).map(|i| {
        let c = c.clone();
        let url = format!("{ns}/values/many-{i}");
        async move { send_ok(c.put(url).body("v")).await }
    });
    futures::future::join_all(writes).await;
    let concurrent = syncs_of(&log, &central) - before;
    assert!(
        (1..AT_ONCE / 2).contains(&concurrent),
        "{engine}: {AT_ONCE} writes at once took {concurrent} syncs of central's files"
    );
}
