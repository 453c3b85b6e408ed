//! The consistency testbed's fault injection on a real `driftkv dev --edges 2`: the admin
//! endpoint exists only when enabled and answers only its token; an injected replication delay
//! holds writes back at least that long; a pause stops replication until lifted; a resync
//! rebuilds the replica from a snapshot; the version clock can be skewed and restored.

mod common;

use std::time::{Duration, Instant};

use common::{api_at, client, fetch_bytes, send_ok, DevCluster, Server};
use serde_json::{json, Value};

const TOKEN: &str = "admin-secret";

/// Runs `driftkv ARGS`.
fn driftkv(args: &[&str]) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_driftkv"))
        .args(args)
        .output()
        .unwrap()
}

/// Runs a testbed experiment, which must succeed with a history that keeps the model; returns
/// what it printed.
fn experiment(args: &[&str]) -> String {
    let output = driftkv(args);
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    if !stdout.contains(" 0 violations of the consistency model") {
        // Each violation with the operations involved, for whoever reads the failure.
        let out = args
            .iter()
            .position(|a| *a == "--out")
            .map(|at| args[at + 1]);
        let detail = out.map_or(String::new(), |out| {
            let check = driftkv(&["testbed", "check", &format!("{out}/history.jsonl")]);
            String::from_utf8_lossy(&check.stdout).into_owned()
        });
        panic!("{stdout}\n{detail}");
    }
    stdout
}

/// The faults in force at `edge`.
async fn faults_at(edge: &str) -> Value {
    client()
        .get(format!("{edge}/admin/testbed/faults"))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

/// When `key` first shows in `edge`'s listing (which reads the replica, not the cache).
async fn listed_at(http: &reqwest::Client, edge: &str, ns: &str, key: &str) -> Instant {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let page: Value = http
            .get(format!("{}/{ns}/keys", api_at(edge)))
            .query(&[("prefix", key)])
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        if page["result"]
            .as_array()
            .is_some_and(|keys| !keys.is_empty())
        {
            return Instant::now();
        }
        assert!(Instant::now() < deadline, "{key} never reached {edge}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

async fn admin(
    http: &reqwest::Client,
    method: reqwest::Method,
    url: String,
    body: Value,
) -> reqwest::Response {
    http.request(method, url)
        .bearer_auth(TOKEN)
        .json(&body)
        .send()
        .await
        .unwrap()
}

#[tokio::test]
async fn the_admin_endpoint_is_off_unless_enabled() {
    let server = Server::start();
    let response = client()
        .get(format!("{}/admin/testbed/faults", server.base))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 404);
}

#[tokio::test(flavor = "multi_thread")]
async fn injected_faults_shape_replication() {
    let dev = DevCluster::start(
        2,
        &[
            ("DRIFTKV_TESTBED__ENABLED", "true"),
            ("DRIFTKV_TESTBED__ADMIN_TOKEN", TOKEN),
        ],
    )
    .await;
    let http = client();
    let (writer, delayed) = (&dev.edges[0], &dev.edges[1]);
    let faults = format!("{delayed}/admin/testbed/faults");

    // Only the admin token opens it: not none, not an API token.
    let anonymous = http.get(&faults).send().await.unwrap();
    assert_eq!(anonymous.status(), 401);
    let wrong = http.get(&faults).bearer_auth("nope").send().await.unwrap();
    assert_eq!(wrong.status(), 403);

    let created = send_ok(
        http.post(api_at(writer))
            .json(&json!({ "title": "faults" })),
    )
    .await;
    let ns = created["result"]["id"].as_str().unwrap().to_owned();
    send_ok(
        http.put(format!("{}/{ns}/values/first", api_at(writer)))
            .body("v"),
    )
    .await;
    listed_at(&http, delayed, &ns, "first").await;

    // A malformed or misspelt body is refused with a Cloudflare-style error, changing nothing.
    let bad = http
        .put(&faults)
        .bearer_auth(TOKEN)
        .body(r#"{"delay": 400}"#)
        .send()
        .await
        .unwrap();
    common::assert_error(bad, 400, 10001).await;
    assert_eq!(faults_at(delayed).await["replication"]["delay_ms"], 0);

    // A 400 ms delay (plus up to 100 ms jitter): no write arrives sooner.
    let set = admin(
        &http,
        reqwest::Method::PUT,
        faults.clone(),
        json!({"delay_ms": 400, "jitter_ms": 100}),
    )
    .await;
    assert_eq!(set.status(), 200);
    let shown: Value = set.json().await.unwrap();
    assert_eq!(shown["replication"]["delay_ms"], 400);
    for i in 0..3 {
        let key = format!("delayed-{i}");
        send_ok(
            http.put(format!("{}/{ns}/values/{key}", api_at(writer)))
                .body("v"),
        )
        .await;
        let acked = Instant::now();
        let arrived = listed_at(&http, delayed, &ns, &key).await;
        assert!(
            arrived - acked >= Duration::from_millis(400),
            "{key} arrived after {:?}, inside the injected delay",
            arrived - acked
        );
    }

    // Paused: a write does not arrive while the pause lasts (watched for a second), and does
    // once it is lifted.
    admin(
        &http,
        reqwest::Method::PUT,
        faults.clone(),
        json!({"paused": true}),
    )
    .await;
    send_ok(
        http.put(format!("{}/{ns}/values/held", api_at(writer)))
            .body("v"),
    )
    .await;
    let watch_until = Instant::now() + Duration::from_secs(1);
    while Instant::now() < watch_until {
        let page: Value = http
            .get(format!("{}/{ns}/keys", api_at(delayed)))
            .query(&[("prefix", "held")])
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(page["result"], json!([]), "replicated while paused");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    admin(&http, reqwest::Method::PUT, faults.clone(), json!({})).await;
    listed_at(&http, delayed, &ns, "held").await;

    // A resync rebuilds the replica from a snapshot (counted in the metrics), and it holds
    // everything after.
    let snapshots = |text: &str| -> f64 {
        text.lines()
            .filter(|l| {
                l.starts_with("driftkv_snapshots_total") && l.contains("direction=\"installed\"")
            })
            .filter_map(|l| l.rsplit_once(' ')?.1.parse::<f64>().ok())
            .sum()
    };
    let metrics = |edge: &str| {
        let url = format!("{edge}/metrics");
        let http = http.clone();
        async move { http.get(url).send().await.unwrap().text().await.unwrap() }
    };
    let before = snapshots(&metrics(delayed).await);
    let resync = admin(
        &http,
        reqwest::Method::POST,
        format!("{delayed}/admin/testbed/resync"),
        json!({}),
    )
    .await;
    assert_eq!(resync.status(), 200);
    let deadline = Instant::now() + Duration::from_secs(10);
    while snapshots(&metrics(delayed).await) <= before {
        assert!(Instant::now() < deadline, "no snapshot was installed");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    send_ok(
        http.put(format!("{}/{ns}/values/after-resync", api_at(writer)))
            .body("v"),
    )
    .await;
    listed_at(&http, delayed, &ns, "after-resync").await;
    listed_at(&http, delayed, &ns, "delayed-0").await;

    // The version clock can be skewed back 30 s, and versions still never go back: a write
    // after the skew wins over the one before it, at every edge. Restored after.
    send_ok(
        http.put(format!("{}/{ns}/values/k", api_at(writer)))
            .body("before"),
    )
    .await;
    let skew = format!("{delayed}/admin/testbed/clock-skew");
    let skewed: Value = admin(
        &http,
        reqwest::Method::PUT,
        skew.clone(),
        json!({"skew_ms": -30000}),
    )
    .await
    .json()
    .await
    .unwrap();
    assert_eq!(skewed["hlc_skew_ms"], -30000);
    send_ok(
        http.put(format!("{}/{ns}/values/k", api_at(writer)))
            .body("after"),
    )
    .await;
    send_ok(
        http.put(format!("{}/{ns}/values/k-done", api_at(writer)))
            .body("v"),
    )
    .await;
    // The log is applied in order: once the later key is there, both writes of k are.
    listed_at(&http, delayed, &ns, "k-done").await;
    let read = fetch_bytes(http.get(format!("{}/{ns}/values/k", api_at(delayed)))).await;
    assert_eq!(read, "after");
    let restored: Value = admin(&http, reqwest::Method::PUT, skew, json!({"skew_ms": 0}))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(restored["hlc_skew_ms"], 0);
}

/// `driftkv testbed visibility` on `driftkv dev --edges 3` with a lowered cacheTtl (2 s) and an
/// injected replication delay (300 ms), keys read before they are written: no read sees a
/// write before the delay has passed, every read later than the TTL plus the delay and a margin
/// sees it, the median time-to-visible lies between the two, and the recorded history keeps
/// every promise of the model.
#[tokio::test(flavor = "multi_thread")]
async fn a_visibility_run_lies_between_the_delay_and_the_cache_ttl() {
    const DELAY_MS: f64 = 300.0;
    const TTL_MS: f64 = 2000.0;
    const MARGIN_MS: f64 = 700.0;
    let dev = DevCluster::start(
        3,
        &[
            ("DRIFTKV_TESTBED__ENABLED", "true"),
            ("DRIFTKV_TESTBED__ADMIN_TOKEN", TOKEN),
            ("DRIFTKV_CACHE__MIN_TTL_SECS", "1"),
        ],
    )
    .await;
    let out = tempfile::tempdir().unwrap();
    let stdout = experiment(&[
        "testbed",
        "visibility",
        "--url",
        &dev.edges[0],
        "--account-id",
        common::ACCOUNT,
        "--keys",
        "60",
        "--cache-ttl",
        "2",
        "--pattern",
        "read-before",
        "--max-offset-ms",
        "4000",
        "--delay-ms",
        "300",
        "--admin-token",
        TOKEN,
        "--out",
        out.path().to_str().unwrap(),
    ]);

    // Every sample: (offset after the ack, visible?).
    let csv = std::fs::read_to_string(out.path().join("visibility.csv")).unwrap();
    let samples: Vec<(f64, bool)> = csv
        .lines()
        .skip(1)
        .map(|line| {
            let fields: Vec<&str> = line.split(',').collect();
            (fields[2].parse().unwrap(), fields[3] == "1")
        })
        .collect();
    assert_eq!(samples.len(), 120, "60 keys read at 2 edges");
    for (offset, visible) in &samples {
        if *visible {
            assert!(
                *offset >= DELAY_MS,
                "visible {offset} ms after the ack, inside the delay"
            );
        }
        if *offset >= TTL_MS + DELAY_MS + MARGIN_MS {
            assert!(*visible, "still not visible {offset} ms after the ack");
        }
    }
    let median_line = stdout
        .lines()
        .find(|l| l.starts_with("all edges"))
        .expect("a summary row");
    let p50: f64 = median_line
        .split_whitespace()
        .nth(3)
        .unwrap()
        .parse()
        .unwrap();
    assert!(
        (DELAY_MS..=TTL_MS + MARGIN_MS).contains(&p50),
        "median time-to-visible {p50} ms: {median_line}"
    );
    assert!(out.path().join("visibility.svg").exists());
    assert!(out.path().join("history.jsonl").exists());

    // The faults were lifted after the run.
    let faults = faults_at(&dev.edges[1]).await;
    assert_eq!(faults["replication"]["delay_ms"], 0);
}

/// `driftkv testbed staleness` on `driftkv dev --edges 2` (cacheTtl 1 s) with faults at the
/// second edge during the run (a 50 ms replication delay, a one-second pause, a resync, the
/// version clock 5 s behind): the
/// run ends with final reads of every written key at both edges, which agree; its history
/// passes the checker, also when checked again by `driftkv testbed check`; and the faults are
/// lifted afterwards.
#[tokio::test(flavor = "multi_thread")]
async fn a_staleness_run_converges_and_keeps_the_model() {
    let dev = DevCluster::start(
        2,
        &[
            ("DRIFTKV_CACHE__MIN_TTL_SECS", "1"),
            ("DRIFTKV_TESTBED__ENABLED", "true"),
            ("DRIFTKV_TESTBED__ADMIN_TOKEN", TOKEN),
        ],
    )
    .await;
    let out = tempfile::tempdir().unwrap();
    experiment(&[
        "testbed",
        "staleness",
        "--url",
        &dev.edges[0],
        "--account-id",
        common::ACCOUNT,
        "--keys",
        "10",
        "--duration-s",
        "3",
        "--writes-per-second",
        "10",
        "--reads-per-second",
        "60",
        "--cache-ttl",
        "1",
        "--delay-ms",
        "50",
        "--pause-at-s",
        "1",
        "--pause-for-s",
        "1",
        "--resync-at-s",
        "2",
        "--clock-skew-ms",
        "-5000",
        "--admin-token",
        TOKEN,
        "--out",
        out.path().to_str().unwrap(),
    ]);
    let history = std::fs::read_to_string(out.path().join("history.jsonl")).unwrap();
    let ops: Vec<Value> = history
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let written: std::collections::BTreeSet<&str> = ops
        .iter()
        .filter(|op| op["kind"] == "write" && op["ok"] == true)
        .map(|op| op["key"].as_str().unwrap())
        .collect();
    assert!(!written.is_empty());
    for key in &written {
        let finals: Vec<&Value> = ops
            .iter()
            .filter(|op| op["kind"] == "final" && op["key"] == *key)
            .collect();
        assert_eq!(finals.len(), 2, "final reads of {key} at both edges");
        assert_eq!(finals[0]["value"], finals[1]["value"], "{key} diverged");
        assert!(finals[0]["value"].is_string());
    }
    let check = driftkv(&[
        "testbed",
        "check",
        out.path().join("history.jsonl").to_str().unwrap(),
    ]);
    assert!(
        check.status.success(),
        "{}",
        String::from_utf8_lossy(&check.stdout)
    );
    assert!(out.path().join("staleness.csv").exists());
    assert!(out.path().join("staleness.svg").exists());
    let faults = faults_at(&dev.edges[1]).await;
    assert_eq!(
        faults["replication"],
        json!({"delay_ms": 0, "jitter_ms": 0, "paused": false})
    );
    assert_eq!(faults["hlc_skew_ms"], 0);
}

/// `driftkv dev --edges 3` announces itself only once every edge sees the whole cluster live,
/// so `driftkv testbed visibility` started the moment its ready line is printed finds every
/// edge in `/cluster` and runs (before, it failed with "knows no other edge to read at").
#[tokio::test(flavor = "multi_thread")]
async fn a_visibility_run_started_on_the_ready_line_succeeds() {
    let dir = tempfile::tempdir().unwrap();
    let args = [
        "dev",
        "--edges",
        "3",
        "--listen",
        "127.0.0.1:0",
        "--data-dir",
        dir.path().to_str().unwrap(),
    ]
    .map(String::from);
    let server = Server::launch(
        &args,
        dir.path(),
        &[("DRIFTKV_CACHE__MIN_TTL_SECS", "1")],
        "driftkv dev edge 2 listening on ",
    )
    .expect("dev starts");
    // Nothing waited on but the line: the cluster must already be whole.
    let view = common::cluster_view(&client(), &server.base).await;
    let live = view["members"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|m| m["status"] == "live")
        .count();
    assert_eq!(
        live, 4,
        "central and three edges live on the ready line: {view}"
    );
    let out = tempfile::tempdir().unwrap();
    experiment(&[
        "testbed",
        "visibility",
        "--url",
        &server.base,
        "--account-id",
        common::ACCOUNT,
        "--expect-edges",
        "3",
        "--keys",
        "20",
        "--cache-ttl",
        "1",
        "--pattern",
        "never-read",
        "--max-offset-ms",
        "500",
        "--out",
        out.path().to_str().unwrap(),
    ]);
    let csv = std::fs::read_to_string(out.path().join("visibility.csv")).unwrap();
    // 20 keys read once at each of the two other edges.
    assert_eq!(csv.lines().skip(1).count(), 40, "{csv}");
}
