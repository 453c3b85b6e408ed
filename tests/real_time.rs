//! Behaviour on Workers KV's real time scales, each test taking a little over a minute: expiration
//! judged by the wall clock at read time (the minimum TTL is 60 s), and the default 60 s
//! `cacheTtl` that makes a write elsewhere visible only "within about 60 s". The two run side by
//! side in one test binary, so the suite waits about one minute for both.

mod common;

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::{client, namespace_url, send_ok, Server};
use serde_json::Value;

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

#[tokio::test]
async fn expiration_is_exact_at_read_time() {
    let server = Server::start();
    let c = client();
    let ns = namespace_url(&c, &server, "expiry").await;
    let expiration = now_ms() / 1000 + 61;
    send_ok(
        c.put(format!("{ns}/values/abs?expiration={expiration}"))
            .body("a"),
    )
    .await;
    let ttl_start = now_ms() / 1000;
    send_ok(
        c.put(format!("{ns}/values/ttl?expiration_ttl=60"))
            .body("t"),
    )
    .await;
    send_ok(c.put(format!("{ns}/values/forever")).body("f")).await;
    let ttl_expiration: u64 = c
        .get(format!("{ns}/values/ttl"))
        .send()
        .await
        .unwrap()
        .headers()["expiration"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((ttl_start + 60..=ttl_start + 61).contains(&ttl_expiration));

    // Poll both keys until they are gone. A read that completed before the expiration second
    // must find the key; a read that started at or after it must not.
    let deadline = now_ms() + 90_000;
    let mut seen_gone = [false, false];
    while !(seen_gone[0] && seen_gone[1]) {
        assert!(now_ms() < deadline, "keys never expired");
        for (i, (key, exp)) in [("abs", expiration), ("ttl", ttl_expiration)]
            .into_iter()
            .enumerate()
        {
            let started = now_ms();
            let status = c
                .get(format!("{ns}/values/{key}"))
                .send()
                .await
                .unwrap()
                .status()
                .as_u16();
            let finished = now_ms();
            if finished < exp * 1000 {
                assert_eq!(status, 200, "{key} vanished before its expiration");
            } else if started >= exp * 1000 {
                assert_eq!(
                    status,
                    404,
                    "{key} still readable {} ms after expiring",
                    started - exp * 1000
                );
                seen_gone[i] = true;
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let listed = send_ok(c.get(format!("{ns}/keys"))).await;
    assert_eq!(listed["result"], serde_json::json!([{"name": "forever"}]));
    assert_eq!(
        c.get(format!("{ns}/metadata/abs"))
            .send()
            .await
            .unwrap()
            .status(),
        404
    );
}

/// With every cache setting at its default (`cache_ttl` default 60 s, minimum 30 s), a result an
/// edge has read stays what that edge serves for 60 s, even once a newer write has reached its
/// replica; then the new value appears. Checked on `driftkv dev --edges 2`, for a cached value
/// and for a cached "not found".
#[tokio::test]
async fn the_default_cache_ttl_holds_a_read_for_sixty_seconds() {
    const TTL: Duration = Duration::from_secs(60);
    let dev = common::DevCluster::start(2, &[]).await;
    let c = client();
    let (writer, reader) = (dev.edges[0].clone(), dev.edges[1].clone());
    let api = common::api_at;
    let created = send_ok(
        c.post(api(&writer))
            .json(&serde_json::json!({ "title": "ttl" })),
    )
    .await;
    let ns = created["result"]["id"].as_str().unwrap().to_owned();
    let value = |base: &str, key: &str| format!("{}/{ns}/values/{key}", api(base));
    send_ok(c.put(value(&writer, "present")).body("old")).await;
    let listed = |key: &'static str| {
        let url = format!("{}/{ns}/keys?prefix={key}", api(&reader));
        let c = c.clone();
        // Not found until the namespace itself has replicated.
        async move {
            let response = c.get(url).send().await.unwrap();
            if response.status() != 200 {
                return false;
            }
            let body: Value = response.json().await.unwrap();
            !body["result"].as_array().unwrap().is_empty()
        }
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    while !listed("present").await {
        assert!(
            Instant::now() < deadline,
            "the first write never replicated"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // The reads that fill the reader's cache; the entries cannot expire before this instant
    // plus the TTL.
    let cached_at = Instant::now();
    let read = |key: &'static str| {
        let request = c.get(value(&reader, key));
        async move {
            let response = request.send().await.unwrap();
            match response.status().as_u16() {
                200 => Some(response.text().await.unwrap()),
                404 => None,
                other => panic!("GET {key}: HTTP {other}"),
            }
        }
    };
    assert_eq!(read("present").await.as_deref(), Some("old"));
    assert_eq!(read("absent").await, None);
    send_ok(c.put(value(&writer, "present")).body("new")).await;
    send_ok(c.put(value(&writer, "absent")).body("here now")).await;
    // The listing reads the replica: once it shows the new key, both writes have arrived.
    let deadline = Instant::now() + Duration::from_secs(10);
    while !listed("absent").await {
        assert!(Instant::now() < deadline, "the writes never replicated");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        cached_at.elapsed() < TTL / 2,
        "replication took too long to tell"
    );

    // Stale until the 60 s are over, then fresh within a few seconds of it.
    let deadline = cached_at + TTL + Duration::from_secs(15);
    loop {
        let started = Instant::now();
        let (present, absent) = (read("present").await, read("absent").await);
        let fresh = (
            present.as_deref() == Some("new"),
            absent.as_deref() == Some("here now"),
        );
        if fresh.0 || fresh.1 {
            assert!(
                started >= cached_at + TTL,
                "a cached result was replaced after {:?}, before its 60 s",
                started - cached_at
            );
        } else {
            assert_eq!((present.as_deref(), absent), (Some("old"), None));
        }
        if fresh == (true, true) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "still stale {:?} after the first read",
            cached_at.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    dev.server.stop();
}
