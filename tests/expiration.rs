//! Expiration is judged by the wall clock at read time, to the second. Workers KV's minimum TTL
//! is 60 s, so this test takes a little over a minute of real time.

mod common;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::{client, namespace_url, send_ok, Server};

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
