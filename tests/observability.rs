//! What an operator sees: `/metrics` moves by exactly what a known workload did, and
//! `/readyz` says why a node is or is not ready.

mod common;

use std::time::{Duration, Instant};

use common::{client, namespace_url, send_ok, Server};

/// One sample: series name, labels, value.
type Sample = (String, Vec<(String, String)>, f64);

/// One scrape: every sample.
struct Scrape(Vec<Sample>);

impl Scrape {
    async fn of(http: &reqwest::Client, server: &Server) -> Scrape {
        let response = http
            .get(format!("{}/metrics", server.base))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        assert!(response.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/plain"));
        let text = response.text().await.unwrap();
        Scrape(text.lines().filter_map(parse_sample).collect())
    }

    /// The sum of every sample of `name` whose labels include all of `labels`.
    fn value(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.0
            .iter()
            .filter(|(n, l, _)| {
                n == name
                    && labels
                        .iter()
                        .all(|(k, v)| l.iter().any(|(lk, lv)| lk == k && lv == v))
            })
            .map(|(_, _, v)| v)
            .sum()
    }
}

/// `name{a="x",b="y"} 3` → `(name, [(a, x), (b, y)], 3.0)`; comments and blanks → `None`.
fn parse_sample(line: &str) -> Option<Sample> {
    if line.starts_with('#') || line.trim().is_empty() {
        return None;
    }
    let (series, value) = line.rsplit_once(' ')?;
    let value: f64 = value.parse().ok()?;
    let (name, labels) = match series.split_once('{') {
        Some((name, rest)) => (name, rest.trim_end_matches('}')),
        None => (series, ""),
    };
    let labels = labels
        .split("\",")
        .filter(|pair| !pair.is_empty())
        .filter_map(|pair| {
            let (k, v) = pair.split_once("=\"")?;
            Some((k.to_owned(), v.trim_end_matches('"').to_owned()))
        })
        .collect();
    Some((name.to_owned(), labels, value))
}

const VALUES_ROUTE: &str =
    "/client/v4/accounts/{account_id}/storage/kv/namespaces/{namespace_id}/values/{*key}";

#[tokio::test]
async fn metrics_count_a_known_workload_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start_in(
        dir.path(),
        &[("DRIFTKV_RATE_LIMIT__WRITES_PER_KEY_PER_SECOND", "1")],
    )
    .expect("server starts");
    let http = client();
    let ns = namespace_url(&http, &server, "observed").await;
    // The namespace's own log entry replicates too: start counting once it has.
    let deadline = Instant::now() + Duration::from_secs(10);
    let before = loop {
        let scrape = Scrape::of(&http, &server).await;
        if scrape.value("driftkv_replication_entries_applied_total", &[]) >= 1.0 {
            break scrape;
        }
        assert!(Instant::now() < deadline, "the namespace never replicated");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };

    // Five writes, each read twice (a miss, since writes do not fill the cache, then a hit),
    // three missing keys read twice (a miss, then a cached "not found"), and one write over
    // the per-key limit.
    for i in 0..5 {
        send_ok(http.put(format!("{ns}/values/k{i}")).body("v")).await;
    }
    for _ in 0..2 {
        for i in 0..5 {
            let r = http.get(format!("{ns}/values/k{i}")).send().await.unwrap();
            assert_eq!(r.status(), 200);
        }
        for i in 0..3 {
            let r = http
                .get(format!("{ns}/values/none{i}"))
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 404);
        }
    }
    let limited = http
        .put(format!("{ns}/values/k0"))
        .body("again")
        .send()
        .await
        .unwrap();
    assert_eq!(limited.status(), 429);

    // Replication brings the five writes back to the edge's replica; wait for the counter
    // rather than for a while.
    let deadline = Instant::now() + Duration::from_secs(10);
    let after = loop {
        let scrape = Scrape::of(&http, &server).await;
        let applied = scrape.value("driftkv_replication_entries_applied_total", &[])
            - before.value("driftkv_replication_entries_applied_total", &[]);
        if applied >= 5.0 {
            assert_eq!(applied, 5.0);
            break scrape;
        }
        assert!(Instant::now() < deadline, "the writes never replicated");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let delta = |name: &str, labels: &[(&str, &str)]| {
        after.value(name, labels) - before.value(name, labels)
    };

    let route = ("route", VALUES_ROUTE);
    assert_eq!(
        delta(
            "driftkv_http_requests_total",
            &[route, ("method", "PUT"), ("status", "200")]
        ),
        5.0
    );
    assert_eq!(
        delta(
            "driftkv_http_requests_total",
            &[route, ("method", "PUT"), ("status", "429")]
        ),
        1.0
    );
    assert_eq!(
        delta(
            "driftkv_http_requests_total",
            &[route, ("method", "GET"), ("status", "200")]
        ),
        10.0
    );
    assert_eq!(
        delta(
            "driftkv_http_requests_total",
            &[route, ("method", "GET"), ("status", "404")]
        ),
        6.0
    );
    assert_eq!(
        delta(
            "driftkv_http_request_duration_seconds_count",
            &[route, ("method", "GET")]
        ),
        16.0
    );
    assert_eq!(
        delta("driftkv_cache_lookups_total", &[("result", "hit")]),
        5.0
    );
    assert_eq!(
        delta("driftkv_cache_lookups_total", &[("result", "miss")]),
        8.0
    );
    assert_eq!(
        delta("driftkv_cache_lookups_total", &[("result", "negative_hit")]),
        3.0
    );
    assert_eq!(
        delta("driftkv_central_writes_total", &[("outcome", "applied")]),
        5.0
    );
    assert_eq!(
        delta(
            "driftkv_central_writes_total",
            &[("outcome", "rate_limited")]
        ),
        1.0
    );
    assert_eq!(
        delta("driftkv_central_write_duration_seconds_count", &[]),
        6.0
    );
    // Every write went through a commit batch; batches may hold several.
    assert!(delta("driftkv_commit_batch_writers_sum", &[]) == 5.0);
    assert!(after.value("driftkv_cache_bytes", &[]) > 0.0);
    assert!(after.value("driftkv_store_disk_bytes", &[]) > 0.0);
    assert!(after.value("driftkv_log_sequence", &[("position", "durable")]) >= 6.0);

    // Gossip: central and the edge, both live (as soon as gossip has gone round).
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let scrape = Scrape::of(&http, &server).await;
        if scrape.value(
            "driftkv_gossip_members",
            &[("node", "2"), ("status", "live")],
        ) == 2.0
        {
            break;
        }
        assert!(Instant::now() < deadline, "gossip members never counted");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let ready: serde_json::Value = http
        .get(format!("{}/readyz", server.base))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(ready["ready"], true);
    assert_eq!(ready["reason"], "replicating from central");
}

#[test]
fn the_sample_parser_reads_labels_and_values() {
    let (name, labels, value) =
        parse_sample(r#"driftkv_x_total{node="2",route="/a/{b}/c",status="200"} 7"#).unwrap();
    assert_eq!(name, "driftkv_x_total");
    assert_eq!(labels.len(), 3);
    assert_eq!(labels[1], ("route".to_owned(), "/a/{b}/c".to_owned()));
    assert_eq!(value, 7.0);
    assert!(parse_sample("# HELP x y").is_none());
}

/// The storage gauges appear on /metrics for every node and move: records counted as written,
/// a deleted key counted as a tombstone until garbage collection purges it (grace 3 s), the
/// purge counted, the log's length and the data directory's size reported.
#[tokio::test(flavor = "multi_thread")]
async fn storage_gauges_follow_writes_deletes_and_garbage_collection() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start_in(
        dir.path(),
        &[
            ("DRIFTKV_STORAGE__TOMBSTONE_GRACE_SECS", "3"),
            ("DRIFTKV_STORAGE__GC_INTERVAL_MS", "100"),
        ],
    )
    .expect("server starts");
    let http = client();
    let ns = namespace_url(&http, &server, "gauges").await;
    for i in 0..3 {
        send_ok(http.put(format!("{ns}/values/k{i}")).body("v")).await;
    }
    // Central is node 1, the edge node 2.
    let until = |what: &'static str, done: fn(&Scrape) -> bool| {
        let http = http.clone();
        let server = &server;
        async move {
            let deadline = Instant::now() + Duration::from_secs(10);
            loop {
                let scrape = Scrape::of(&http, server).await;
                if done(&scrape) {
                    return scrape;
                }
                assert!(Instant::now() < deadline, "never saw {what}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    };
    let gauge = |s: &Scrape, name: &str, node: &str| s.value(name, &[("node", node)]);
    let written = until("the records counted", |s| {
        ["1", "2"]
            .iter()
            .all(|n| s.value("driftkv_store_records", &[("node", n)]) == 3.0)
    })
    .await;
    for node in ["1", "2"] {
        assert!(gauge(&written, "driftkv_store_disk_bytes", node) > 0.0);
        assert_eq!(gauge(&written, "driftkv_store_tombstones", node), 0.0);
    }
    assert!(gauge(&written, "driftkv_log_entries", "1") >= 4.0);

    send_ok(http.delete(format!("{ns}/values/k0"))).await;
    until("the tombstone counted", |s| {
        ["1", "2"].iter().all(|n| {
            s.value("driftkv_store_tombstones", &[("node", n)]) == 1.0
                && s.value("driftkv_store_records", &[("node", n)]) == 2.0
        })
    })
    .await;
    let purged = until("the tombstone purged", |s| {
        ["1", "2"].iter().all(|n| {
            s.value("driftkv_store_tombstones", &[("node", n)]) == 0.0
                && s.value(
                    "driftkv_gc_purged_total",
                    &[("node", n), ("kind", "tombstone")],
                ) == 1.0
        })
    })
    .await;
    assert_eq!(gauge(&purged, "driftkv_store_records", "2"), 2.0);
}
