//! Test harness: runs the real `driftkv` binary on an ephemeral loopback port and talks to it
//! over HTTP only.

#![allow(dead_code)] // each test binary uses its own part of the harness

use std::collections::VecDeque;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{mpsc, Arc, Mutex};
use std::time::Duration;

use serde_json::Value;

/// How many lines of a server's log are kept to explain a failed start.
const LOG_TAIL_LINES: usize = 200;

/// The account id the tests use.
pub const ACCOUNT: &str = "0123456789abcdef0123456789abcdef";

/// A running `driftkv` process: `dev`, `central` or `edge`.
pub struct Server {
    child: Child,
    /// `http://127.0.0.1:PORT`: the HTTP API, or central's gRPC endpoint.
    pub base: String,
    pub data_dir: PathBuf,
    _tmp: Option<tempfile::TempDir>,
}

impl Server {
    /// Starts a server on a fresh data directory.
    pub fn start() -> Self {
        let tmp = tempfile::tempdir().expect("tempdir");
        let mut server = Self::start_in(tmp.path(), &[]).expect("server starts");
        server._tmp = Some(tmp);
        server
    }

    /// Starts a server on `data_dir` with extra environment variables; returns the error
    /// output if the process exits instead of listening.
    pub fn start_in(data_dir: &Path, env: &[(&str, &str)]) -> Result<Self, String> {
        Self::start_with_args(data_dir, "127.0.0.1:0", env)
    }

    /// Starts a dev server listening on `listen`.
    pub fn start_with_args(
        data_dir: &Path,
        listen: &str,
        env: &[(&str, &str)],
    ) -> Result<Self, String> {
        let args = ["dev", "--listen", listen, "--data-dir"].map(String::from);
        let mut args = args.to_vec();
        args.push(data_dir.display().to_string());
        Self::launch(&args, data_dir, env, "driftkv dev listening on ")
    }

    /// Runs `driftkv ARGS` and waits for the line starting with `ready` that announces its
    /// URL; returns the error output if the process exits instead.
    pub fn launch(
        args: &[String],
        data_dir: &Path,
        env: &[(&str, &str)],
        ready: &str,
    ) -> Result<Self, String> {
        let mut command = Command::new(env!("CARGO_BIN_EXE_driftkv"));
        command
            .args(args)
            .env_remove("DRIFTKV_API_TOKENS")
            // The API tests rewrite keys faster than Workers KV's one write per second per
            // key; the rate limit has tests of its own that turn it back on.
            .env("DRIFTKV_RATE_LIMIT__WRITES_PER_KEY_PER_SECOND", "0")
            // 25 MiB values pass through a debug build on a shared 2-core machine, which can
            // take longer than the default deadline allows for them; tests of failing fast
            // set their own.
            .env("DRIFTKV_CENTRAL__REQUEST_TIMEOUT_MS", "30000")
            // Test servers run side by side: each edge's workerd binding listener takes a
            // free port rather than the default 8786.
            .env("DRIFTKV_WORKERD__LISTEN", "127.0.0.1:0")
            .env("RUST_LOG", "warn")
            .env("RUST_BACKTRACE", "0")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        for (k, v) in env {
            command.env(k, v);
        }
        let mut child = command.spawn().map_err(|e| e.to_string())?;
        // Both pipes are drained for the life of the process: a pipe nobody reads fills up
        // and then blocks the server the moment it logs more than the pipe holds.
        let stdout = child.stdout.take().expect("stdout");
        let (tx, rx) = mpsc::channel();
        let ready = ready.to_owned();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Some(url) = line.strip_prefix(ready.as_str()) {
                    let _ = tx.send(url.to_owned());
                }
            }
        });
        let stderr = child.stderr.take().expect("stderr");
        let log_tail: Arc<Mutex<VecDeque<String>>> = Arc::default();
        let drain = {
            let log_tail = log_tail.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                    let mut tail = log_tail.lock().expect("log tail");
                    if tail.len() == LOG_TAIL_LINES {
                        tail.pop_front();
                    }
                    tail.push_back(line);
                }
            })
        };
        match rx.recv_timeout(Duration::from_secs(60)) {
            Ok(base) => Ok(Server {
                child,
                base,
                data_dir: data_dir.to_owned(),
                _tmp: None,
            }),
            Err(_) => {
                let _ = child.kill();
                let _ = child.wait();
                let _ = drain.join();
                let tail = log_tail.lock().expect("log tail");
                Err(tail.iter().cloned().collect::<Vec<_>>().join("\n"))
            }
        }
    }

    /// `.../accounts/{ACCOUNT}/storage/kv/namespaces`
    pub fn api(&self) -> String {
        format!(
            "{}/client/v4/accounts/{ACCOUNT}/storage/kv/namespaces",
            self.base
        )
    }

    /// The `host:port` the server listens on.
    pub fn addr(&self) -> String {
        self.base
            .trim_start_matches("http://")
            .trim_start_matches("https://")
            .to_owned()
    }

    /// Stops the server with SIGTERM and waits for a clean exit.
    pub fn stop(mut self) {
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .expect("kill");
        assert!(status.success());
        let exit = self.child.wait().expect("wait");
        assert!(exit.success(), "driftkv exited with {exit} after SIGTERM");
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Kills the server with SIGKILL, as a crash would.
    pub fn kill9(&mut self) {
        self.child.kill().expect("SIGKILL");
        self.child.wait().expect("wait");
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `driftkv central` on loopback ports with its data in `dir` and extra environment
/// variables; returns it and its gossip address, the seed of its edges.
pub fn start_central(dir: &Path, env: &[(&str, &str)]) -> (Server, String) {
    let gossip = std::net::UdpSocket::bind("127.0.0.1:0")
        .and_then(|s| s.local_addr())
        .expect("a free UDP port")
        .to_string();
    let mut all = vec![
        ("DRIFTKV_GRPC__LISTEN", "127.0.0.1:0"),
        ("DRIFTKV_LISTEN", "127.0.0.1:0"),
        ("DRIFTKV_GOSSIP__LISTEN", gossip.as_str()),
        ("DRIFTKV_GOSSIP__INTERVAL_MS", "100"),
        ("DRIFTKV_REPLICATION__HEARTBEAT_MS", "100"),
    ];
    all.extend_from_slice(env);
    let args = ["central", "--data-dir", dir.to_str().expect("a UTF-8 path")].map(String::from);
    let server =
        Server::launch(&args, dir, &all, "driftkv central listening on ").expect("central starts");
    (server, gossip)
}

/// `driftkv edge` node `id` on loopback ports with its data in `dir`, following `central`
/// and gossiping with `seed` (see [`start_central`]).
pub fn start_edge(dir: &Path, id: u64, central: &Server, seed: &str) -> Server {
    let id = id.to_string();
    let seeds = format!("[\"{seed}\"]");
    let env = [
        ("DRIFTKV_NODE_ID", id.as_str()),
        ("DRIFTKV_CENTRAL__ADDRESS", central.base.as_str()),
        ("DRIFTKV_GOSSIP__LISTEN", "127.0.0.1:0"),
        ("DRIFTKV_GOSSIP__SEEDS", seeds.as_str()),
        ("DRIFTKV_GOSSIP__INTERVAL_MS", "100"),
    ];
    let args = ["edge", "--listen", "127.0.0.1:0", "--data-dir"].map(String::from);
    let mut args = args.to_vec();
    args.push(dir.display().to_string());
    Server::launch(&args, dir, &env, "driftkv edge listening on ").expect("edge starts")
}

/// An HTTP client whose requests give up after two minutes (a 25 MiB body included), so a
/// hung server fails a test instead of stalling it.
pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(120))
        .build()
        .expect("HTTP client")
}

/// Percent-encodes a key for a URL path the way Cloudflare's SDK does.
pub fn encode_key(key: &str) -> String {
    driftkv_client::encode(key)
}

/// Asserts that a response is a Cloudflare error envelope with this status and code.
pub async fn assert_error(response: reqwest::Response, status: u16, code: u64) -> Value {
    let actual = response.status().as_u16();
    let body: Value = response.json().await.expect("error body is JSON");
    assert_eq!(actual, status, "unexpected status; body {body}");
    assert_eq!(body["success"], false, "{body}");
    assert_eq!(body["errors"][0]["code"], code, "{body}");
    assert!(
        !body["errors"][0]["message"]
            .as_str()
            .unwrap_or_default()
            .is_empty(),
        "{body}"
    );
    assert!(body["result"].is_null());
    body
}

/// Asserts a success envelope and returns it.
pub async fn assert_ok(response: reqwest::Response) -> Value {
    let status = response.status().as_u16();
    let body: Value = response.json().await.expect("body is JSON");
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["success"], true, "{body}");
    assert_eq!(body["errors"], serde_json::json!([]), "{body}");
    body
}

/// Creates a namespace and returns its id.
pub async fn create_namespace(client: &reqwest::Client, server: &Server, title: &str) -> String {
    let body = assert_ok(
        client
            .post(server.api())
            .json(&serde_json::json!({ "title": title }))
            .send()
            .await
            .unwrap(),
    )
    .await;
    body["result"]["id"].as_str().expect("id").to_owned()
}

/// Creates a namespace and returns its URL (`.../namespaces/{id}`).
pub async fn namespace_url(client: &reqwest::Client, server: &Server, title: &str) -> String {
    format!(
        "{}/{}",
        server.api(),
        create_namespace(client, server, title).await
    )
}

/// Sends a request and asserts a success envelope.
pub async fn send_ok(request: reqwest::RequestBuilder) -> Value {
    assert_ok(request.send().await.expect("request sent")).await
}

/// Sends a request and asserts a Cloudflare error with this status and code.
pub async fn send_err(request: reqwest::RequestBuilder, status: u16, code: u64) -> Value {
    assert_error(request.send().await.expect("request sent"), status, code).await
}

/// Every key of the namespace at `ns_url` (`.../namespaces/{id}`), following the listing's
/// cursors a thousand keys at a time.
pub async fn list_all_keys(client: &reqwest::Client, ns_url: &str) -> Vec<Value> {
    let mut keys = Vec::new();
    let mut page_url = format!("{ns_url}/keys?limit=1000");
    loop {
        let page = send_ok(client.get(&page_url)).await;
        keys.extend(
            page["result"]
                .as_array()
                .expect("a listing")
                .iter()
                .cloned(),
        );
        match page["result_info"]["cursor"].as_str() {
            Some(next) if !next.is_empty() => {
                page_url = format!("{ns_url}/keys?limit=1000&cursor={next}")
            }
            _ => return keys,
        }
    }
}

/// Sends a request and returns the raw response body.
pub async fn fetch_bytes(request: reqwest::RequestBuilder) -> bytes::Bytes {
    request
        .send()
        .await
        .expect("request sent")
        .bytes()
        .await
        .expect("body")
}

/// `driftkv dev --edges N` on free loopback ports.
pub struct DevCluster {
    /// The process.
    pub server: Server,
    /// Each edge's `http://host:port`, edge 0 first.
    pub edges: Vec<String>,
    _dir: tempfile::TempDir,
}

impl DevCluster {
    /// Starts `driftkv dev --edges edges` with extra environment variables and waits until
    /// every edge serves and every edge sees all of them live (their addresses come from
    /// `/cluster`, in node-id order).
    pub async fn start(edges: usize, env: &[(&str, &str)]) -> DevCluster {
        assert!(edges >= 2, "a dev cluster here has at least two edges");
        let dir = tempfile::tempdir().expect("tempdir");
        let args = [
            "dev",
            "--edges",
            &edges.to_string(),
            "--listen",
            "127.0.0.1:0",
            "--data-dir",
            dir.path().to_str().expect("a UTF-8 path"),
        ]
        .map(String::from);
        // The line of the last edge comes last.
        let ready = format!("driftkv dev edge {} listening on ", edges - 1);
        let server = Server::launch(&args, dir.path(), env, &ready).expect("dev starts");
        let http = client();
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        let edges = loop {
            let view = cluster_view(&http, &server.base).await;
            let mut known: Vec<(u64, String)> = view["members"]
                .as_array()
                .expect("members")
                .iter()
                .filter_map(|m| {
                    let id = m["node_id"].as_str()?.parse().ok()?;
                    Some((id, m["http"].as_str()?.to_owned()))
                })
                .collect();
            if known.len() == edges {
                known.sort();
                let urls: Vec<String> = known.into_iter().map(|(_, http)| http).collect();
                // Every edge's own view must be complete too, not only the last one's, with
                // every edge judged live (right after start the failure detector may still
                // call them dead).
                let mut complete = true;
                for url in &urls {
                    let view = cluster_view(&http, url).await;
                    let seen = view["members"]
                        .as_array()
                        .expect("members")
                        .iter()
                        .filter(|m| m["http"].is_string() && m["status"] == "live")
                        .count();
                    complete &= seen == edges;
                }
                if complete {
                    break urls;
                }
            }
            assert!(
                std::time::Instant::now() < deadline,
                "gossip never showed all {edges} edges: {view}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        DevCluster {
            server,
            edges,
            _dir: dir,
        }
    }
}

/// A node's `GET /cluster`.
pub async fn cluster_view(http: &reqwest::Client, base: &str) -> Value {
    http.get(format!("{base}/cluster"))
        .send()
        .await
        .expect("/cluster answers")
        .json()
        .await
        .expect("/cluster is JSON")
}

/// The `host:port` of the workerd binding the first member of a `/cluster` view that serves
/// one listens on.
pub fn binding_address(view: &Value) -> String {
    view["members"]
        .as_array()
        .expect("/cluster lists its members")
        .iter()
        .find_map(|m| m["workerd"].as_str())
        .expect("an edge serves the workerd binding")
        .trim_start_matches("http://")
        .to_owned()
}

/// `.../accounts/{ACCOUNT}/storage/kv/namespaces` at an edge's base URL.
pub fn api_at(base: &str) -> String {
    format!("{base}/client/v4/accounts/{ACCOUNT}/storage/kv/namespaces")
}

/// Polls `check` every `every` until it yields a value; fails the test after `within`.
pub async fn wait_every<T, F, Fut>(within: Duration, every: Duration, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = std::time::Instant::now() + within;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "timed out after {within:?} waiting for {what}"
        );
        tokio::time::sleep(every).await;
    }
}

/// [`wait_every`], polling every 20 ms.
pub async fn wait_for<T, F, Fut>(within: Duration, what: &str, check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    wait_every(within, Duration::from_millis(20), what, check).await
}
