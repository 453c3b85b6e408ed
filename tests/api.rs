//! The Cloudflare REST API v4 surface of `driftkv dev`, exercised over HTTP: every endpoint,
//! and every kind of bad input.

mod common;

use std::time::Duration;

use base64::Engine as _;
use common::{
    assert_error, assert_ok, client, create_namespace, encode_key, fetch_bytes, namespace_url,
    send_err, send_ok, Server, ACCOUNT,
};
use reqwest::multipart::{Form, Part};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[tokio::test]
async fn namespaces_lifecycle() {
    let server = Server::start();
    let c = client();
    let id = create_namespace(&c, &server, "alpha").await;
    assert_eq!(id.len(), 32);
    assert!(id
        .chars()
        .all(|ch| ch.is_ascii_digit() || ('a'..='f').contains(&ch)));
    send_err(
        c.post(server.api()).json(&json!({"title": "alpha"})),
        409,
        10014,
    )
    .await;
    for t in ["delta", "charlie", "bravo"] {
        create_namespace(&c, &server, t).await;
    }

    // Pages of two, by title, descending.
    let page = |n: u32| {
        c.get(format!(
            "{}?per_page=2&page={n}&order=title&direction=desc",
            server.api()
        ))
        .send()
    };
    let first = assert_ok(page(1).await.unwrap()).await;
    let titles: Vec<&str> = first["result"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["title"].as_str().unwrap())
        .collect();
    assert_eq!(titles, ["delta", "charlie"]);
    assert_eq!(
        first["result_info"],
        json!({"page": 1, "per_page": 2, "count": 2, "total_count": 4, "total_pages": 2})
    );
    let second = assert_ok(page(2).await.unwrap()).await;
    assert_eq!(second["result"][1]["title"], "alpha");
    assert_eq!(second["result"][1]["supports_url_encoding"], true);
    let beyond = assert_ok(page(3).await.unwrap()).await;
    assert_eq!(beyond["result"], json!([]));
    // Default page size is 20.
    let all = send_ok(c.get(server.api())).await;
    assert_eq!(all["result_info"]["per_page"], 20);
    assert_eq!(all["result"].as_array().unwrap().len(), 4);

    let ns_url = format!("{}/{id}", server.api());
    assert_eq!(send_ok(c.get(&ns_url)).await["result"]["title"], "alpha");
    send_err(c.put(&ns_url).json(&json!({"title": "bravo"})), 409, 10014).await;
    let renamed = send_ok(c.put(&ns_url).json(&json!({"title": "omega"}))).await;
    assert_eq!(
        renamed["result"],
        json!({"id": id, "title": "omega", "supports_url_encoding": true})
    );

    // Deleting removes the namespace and its keys.
    send_ok(c.put(format!("{ns_url}/values/k")).body("v")).await;
    assert_eq!(send_ok(c.delete(&ns_url)).await["result"], Value::Null);
    send_err(c.get(&ns_url), 404, 10013).await;
    send_err(c.get(format!("{ns_url}/values/k")), 404, 10013).await;
    send_err(c.delete(&ns_url), 404, 10013).await;

    // Another account sees none of these.
    let other = format!(
        "{}/client/v4/accounts/someone-else/storage/kv/namespaces",
        server.base
    );
    assert_eq!(send_ok(c.get(&other)).await["result"], json!([]));
    let bravo = all["result"]
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["title"] == "bravo")
        .unwrap()["id"]
        .clone();
    send_err(
        c.get(format!("{other}/{}", bravo.as_str().unwrap())),
        404,
        10013,
    )
    .await;
}

#[tokio::test]
async fn values_round_trip_binary_and_odd_keys() {
    let server = Server::start();
    let c = client();
    let ns = namespace_url(&c, &server, "values").await;
    let binary: Vec<u8> = (0..=255u8).cycle().take(100_000).collect();
    let keys = [
        "a b/c?d%e:f!",
        "slash/",
        "/lead",
        "tab\tkey",
        "ünïcødé ✓",
        "%2F",
        "+plus+",
        "#hash",
        "...",
    ];
    for key in keys {
        let url = format!("{ns}/values/{}", encode_key(key));
        send_ok(c.put(&url).body(binary.clone())).await;
        let got = c.get(&url).send().await.unwrap();
        assert_eq!(got.status(), 200, "{key}");
        assert_eq!(got.headers()["content-type"], "application/octet-stream");
        assert_eq!(got.bytes().await.unwrap(), binary, "{key}");
    }
    // The SDK's exact encoding of the spec's example key.
    let sdk_url = format!("{ns}/values/a%20b%2Fc%3Fd%25e:f!");
    assert_eq!(fetch_bytes(c.get(&sdk_url)).await, binary);
    let listed = send_ok(c.get(format!("{ns}/keys"))).await;
    let mut names: Vec<&str> = listed["result"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["name"].as_str().unwrap())
        .collect();
    let mut expected = keys.to_vec();
    expected.sort();
    assert_eq!(names, expected, "keys are listed decoded, in byte order");
    names.clear();

    // Empty values are values.
    send_ok(c.put(format!("{ns}/values/empty")).body("")).await;
    assert_eq!(
        fetch_bytes(c.get(format!("{ns}/values/empty"))).await.len(),
        0
    );

    // Overwrite, then delete (twice: deletes are idempotent), then 404.
    let url = format!("{ns}/values/k");
    send_ok(c.put(&url).body("one")).await;
    send_ok(c.put(&url).body("two")).await;
    assert_eq!(
        c.get(&url).send().await.unwrap().text().await.unwrap(),
        "two"
    );
    assert_eq!(send_ok(c.delete(&url)).await["result"], Value::Null);
    send_ok(c.delete(&url)).await;
    send_ok(c.delete(format!("{ns}/values/never-was"))).await;
    let body = send_err(c.get(&url), 404, 10009).await;
    assert_eq!(body["errors"][0]["message"], "get: 'key not found'");
    send_err(c.get(format!("{ns}/metadata/k")), 404, 10009).await;
}

#[tokio::test]
async fn multipart_writes_metadata_and_expiration() {
    let server = Server::start();
    let c = client();
    let ns = namespace_url(&c, &server, "multipart").await;
    // The Python SDK's shape: the value as a file part, metadata as a JSON part.
    let form = Form::new()
        .part(
            "value",
            Part::bytes(vec![0u8, 1, 2, 255])
                .file_name("upload")
                .mime_str("application/octet-stream")
                .unwrap(),
        )
        .part(
            "metadata",
            Part::text(r#"{ "owner": "me", "tags": [1, 2] }"#)
                .mime_str("application/json")
                .unwrap(),
        );
    let expiration = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + 3600;
    let url = format!("{ns}/values/{}", encode_key("with meta"));
    send_ok(
        c.put(format!("{url}?expiration={expiration}"))
            .multipart(form),
    )
    .await;
    let got = c.get(&url).send().await.unwrap();
    assert_eq!(got.headers()["expiration"], expiration.to_string().as_str());
    assert_eq!(got.bytes().await.unwrap().as_ref(), &[0u8, 1, 2, 255]);
    let meta = send_ok(c.get(format!("{ns}/metadata/{}", encode_key("with meta")))).await;
    assert_eq!(meta["result"], json!({"owner": "me", "tags": [1, 2]}));
    let listed = send_ok(c.get(format!("{ns}/keys"))).await;
    assert_eq!(
        listed["result"],
        json!([{"name": "with meta", "expiration": expiration, "metadata": {"owner": "me", "tags": [1, 2]}}])
    );

    // A value without metadata has null metadata; expiration_ttl wins over expiration.
    let form = Form::new().part("value", Part::text("plain"));
    let before = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    send_ok(
        c.put(format!("{ns}/values/plain?expiration=1&expiration_ttl=120"))
            .multipart(form),
    )
    .await;
    let got = c.get(format!("{ns}/values/plain")).send().await.unwrap();
    let exp: u64 = got.headers()["expiration"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(
        (before + 120..=before + 122).contains(&exp),
        "{exp} vs {before}"
    );
    assert_eq!(
        send_ok(c.get(format!("{ns}/metadata/plain"))).await["result"],
        Value::Null
    );

    // Malformed multipart bodies.
    let missing_value = Form::new().part("metadata", Part::text("{}"));
    send_err(
        c.put(format!("{ns}/values/x")).multipart(missing_value),
        400,
        10001,
    )
    .await;
    let bad_meta = Form::new()
        .part("value", Part::text("v"))
        .part("metadata", Part::text("{not json"));
    send_err(
        c.put(format!("{ns}/values/x")).multipart(bad_meta),
        400,
        10035,
    )
    .await;
    let big_meta = Form::new().part("value", Part::text("v")).part(
        "metadata",
        Part::text(json!({"k": "x".repeat(1100)}).to_string()),
    );
    send_err(
        c.put(format!("{ns}/values/x")).multipart(big_meta),
        413,
        10034,
    )
    .await;
    let truncated = c
        .put(format!("{ns}/values/x"))
        .header("content-type", "multipart/form-data; boundary=XYZ")
        .body("--XYZ\r\nContent-Disposition: form-data; name=\"value\"\r\n\r\nunterminated")
        .send()
        .await
        .unwrap();
    assert_error(truncated, 400, 10001).await;
    send_err(c.get(format!("{ns}/values/x")), 404, 10009).await;
}

#[tokio::test]
async fn listing_pages_with_opaque_cursors() {
    let server = Server::start();
    let c = client();
    let ns = namespace_url(&c, &server, "listing").await;
    let items: Vec<Value> = (0..2500)
        .map(|i| json!({"key": format!("user:{i:05}"), "value": "v", "metadata": {"i": i}}))
        .collect();
    send_ok(c.put(format!("{ns}/bulk")).json(&items)).await;
    send_ok(c.put(format!("{ns}/values/other")).body("v")).await;

    let mut names = Vec::new();
    let mut cursor = String::new();
    let mut pages = 0;
    loop {
        let url = format!("{ns}/keys?prefix=user:&limit=1000&cursor={cursor}");
        let page = send_ok(c.get(url)).await;
        pages += 1;
        let keys = page["result"].as_array().unwrap();
        assert_eq!(page["result_info"]["count"], keys.len());
        names.extend(keys.iter().map(|k| k["name"].as_str().unwrap().to_owned()));
        cursor = page["result_info"]["cursor"].as_str().unwrap().to_owned();
        if cursor.is_empty() {
            break;
        }
    }
    assert_eq!(pages, 3);
    assert_eq!(
        names,
        (0..2500)
            .map(|i| format!("user:{i:05}"))
            .collect::<Vec<_>>()
    );

    // Exactly one page's worth: no cursor.
    let exact = send_ok(c.get(format!("{ns}/keys?prefix=user:0001&limit=10"))).await;
    assert_eq!(exact["result_info"], json!({"count": 10, "cursor": ""}));
    let small = send_ok(c.get(format!("{ns}/keys?prefix=user:001&limit=10"))).await;
    assert_eq!(
        small["result"][0],
        json!({"name": "user:00100", "metadata": {"i": 100}})
    );
    let cursor = small["result_info"]["cursor"].as_str().unwrap().to_owned();
    assert!(!cursor.is_empty());

    // A cursor replayed with another prefix, a malformed cursor, limits out of range.
    send_err(
        c.get(format!("{ns}/keys?prefix=user:&cursor={cursor}")),
        400,
        10039,
    )
    .await;
    send_err(c.get(format!("{ns}/keys?cursor=garbage!")), 400, 10039).await;
    send_err(c.get(format!("{ns}/keys?cursor=AAAA")), 400, 10039).await;
    for limit in ["9", "1001", "0", "-5", "ten", "10.5"] {
        send_err(c.get(format!("{ns}/keys?limit={limit}")), 400, 10038).await;
    }
    send_ok(c.get(format!("{ns}/keys?limit=10"))).await;
    send_ok(c.get(format!("{ns}/keys?limit=1000"))).await;
    let none = send_ok(c.get(format!("{ns}/keys?prefix=nothing-here"))).await;
    assert_eq!(none["result"], json!([]));
    assert_eq!(none["result_info"], json!({"count": 0, "cursor": ""}));
}

#[tokio::test]
async fn bulk_write_delete_and_get() {
    let server = Server::start();
    let c = client();
    let ns = namespace_url(&c, &server, "bulk").await;

    // 10,000 items is the limit; 10,001 is refused whole.
    let items: Vec<Value> = (0..10_000)
        .map(|i| json!({"key": format!("k{i:05}"), "value": format!("{i}")}))
        .collect();
    let res = send_ok(c.put(format!("{ns}/bulk")).json(&items)).await;
    assert_eq!(
        res["result"],
        json!({"successful_key_count": 10_000, "unsuccessful_keys": []})
    );
    let mut too_many = items.clone();
    too_many.push(json!({"key": "extra", "value": "x"}));
    send_err(c.put(format!("{ns}/bulk")).json(&too_many), 400, 10041).await;
    send_err(c.get(format!("{ns}/values/extra")), 404, 10009).await;

    // base64, metadata, per-item expiration.
    let b64 = base64::engine::general_purpose::STANDARD.encode([0u8, 159, 146, 150]);
    let ttl_items = json!([
        {"key": "bin", "value": b64, "base64": true, "metadata": {"kind": "bin"}},
        {"key": "json", "value": "{\"a\": [1, 2]}", "expiration_ttl": 600},
    ]);
    send_ok(c.put(format!("{ns}/bulk")).json(&ttl_items)).await;
    assert_eq!(
        fetch_bytes(c.get(format!("{ns}/values/bin")))
            .await
            .as_ref(),
        &[0u8, 159, 146, 150]
    );

    // A bad item fails the whole request, naming the item, and nothing of it is written.
    let bad =
        json!([{"key": "good", "value": "v"}, {"key": "bad", "value": "***", "base64": true}]);
    let body = send_err(c.put(format!("{ns}/bulk")).json(&bad), 400, 10042).await;
    assert!(
        body["errors"][0]["message"]
            .as_str()
            .unwrap()
            .contains("item 1"),
        "{body}"
    );
    send_err(c.get(format!("{ns}/values/good")), 404, 10009).await;
    let cases = [
        (json!([{"key": "", "value": "v"}]), 400, 10020),
        (json!([{"key": "k".repeat(513), "value": "v"}]), 414, 10025),
        (
            json!([{"key": "k", "value": "v", "expiration_ttl": 30}]),
            400,
            10037,
        ),
        (
            json!([{"key": "k", "value": "v", "expiration": 5}]),
            400,
            10037,
        ),
        (
            json!([{"key": "k", "value": "v", "metadata": {"m": "x".repeat(1100)}}]),
            413,
            10034,
        ),
        (json!([{"value": "no key"}]), 400, 10001),
        (json!({"not": "an array"}), 400, 10001),
    ];
    for (body, status, code) in cases {
        assert_error(
            c.put(format!("{ns}/bulk"))
                .json(&body)
                .send()
                .await
                .unwrap(),
            status,
            code,
        )
        .await;
    }

    // Bulk get: text, json, with metadata, missing keys as null.
    let text = send_ok(
        c.post(format!("{ns}/bulk/get"))
            .json(&json!({"keys": ["k00001", "json", "missing"]})),
    )
    .await;
    assert_eq!(
        text["result"],
        json!({"values": {"k00001": "1", "json": "{\"a\": [1, 2]}", "missing": null}})
    );
    let parsed = send_ok(
        c.post(format!("{ns}/bulk/get"))
            .json(&json!({"keys": ["json"], "type": "json"})),
    )
    .await;
    assert_eq!(parsed["result"]["values"]["json"], json!({"a": [1, 2]}));
    let meta = send_ok(
        c.post(format!("{ns}/bulk/get"))
            .json(&json!({"keys": ["bin", "json"], "withMetadata": true})),
    )
    .await;
    assert_eq!(
        meta["result"]["values"]["bin"]["metadata"],
        json!({"kind": "bin"})
    );
    assert!(meta["result"]["values"]["json"]["expiration"]
        .as_u64()
        .is_some());
    assert_eq!(meta["result"]["values"]["json"]["metadata"], Value::Null);
    let not_json = c
        .post(format!("{ns}/bulk/get"))
        .json(&json!({"keys": ["k00001", "bin"], "type": "json"}))
        .send()
        .await
        .unwrap();
    assert_error(not_json, 400, 10038).await;
    let many: Vec<String> = (0..101).map(|i| format!("k{i:05}")).collect();
    send_err(
        c.post(format!("{ns}/bulk/get"))
            .json(&json!({"keys": many})),
        400,
        10041,
    )
    .await;
    send_err(
        c.post(format!("{ns}/bulk/get"))
            .json(&json!({"keys": ["a"], "type": "stream"})),
        400,
        10038,
    )
    .await;
    send_err(
        c.post(format!("{ns}/bulk/get"))
            .json(&json!({"keys": [""]})),
        400,
        10020,
    )
    .await;

    // Both forms of bulk delete.
    let first: Vec<String> = (0..5000).map(|i| format!("k{i:05}")).collect();
    let res = send_ok(c.post(format!("{ns}/bulk/delete")).json(&first)).await;
    assert_eq!(res["result"]["successful_key_count"], 5000);
    let rest: Vec<String> = (5000..10_000).map(|i| format!("k{i:05}")).collect();
    send_ok(c.delete(format!("{ns}/bulk")).json(&rest)).await;
    let left = send_ok(c.get(format!("{ns}/keys"))).await;
    assert_eq!(
        left["result"],
        json!([{"name": "bin", "metadata": {"kind": "bin"}}, {"name": "json", "expiration": meta["result"]["values"]["json"]["expiration"]}])
    );
    let too_many_deletes: Vec<String> = (0..10_001).map(|i| format!("k{i}")).collect();
    send_err(
        c.post(format!("{ns}/bulk/delete")).json(&too_many_deletes),
        400,
        10041,
    )
    .await;
    send_err(
        c.post(format!("{ns}/bulk/delete")).json(&json!([1, 2])),
        400,
        10001,
    )
    .await;
}

#[tokio::test]
async fn bad_input_gets_cloudflare_errors_and_the_server_stays_up() {
    let server = Server::start();
    let c = client();
    let id = create_namespace(&c, &server, "bad").await;
    let ns = format!("{}/{id}", server.api());
    send_ok(c.put(format!("{ns}/values/keep")).body("safe")).await;

    let long_key = "k".repeat(513);
    let cases: Vec<(reqwest::RequestBuilder, u16, u64)> = vec![
        (
            c.put(format!("{ns}/values/{long_key}")).body("v"),
            414,
            10025,
        ),
        (
            c.get(format!("{ns}/values/{}", "€".repeat(171))),
            414,
            10025,
        ),
        (c.put(format!("{ns}/values/")).body("v"), 400, 10020),
        (
            c.put(format!("{ns}/values/k?expiration_ttl=59")).body("v"),
            400,
            10037,
        ),
        (
            c.put(format!("{ns}/values/k?expiration_ttl=abc")).body("v"),
            400,
            10037,
        ),
        (
            c.put(format!("{ns}/values/k?expiration_ttl=-60")).body("v"),
            400,
            10037,
        ),
        (
            c.put(format!("{ns}/values/k?expiration=100")).body("v"),
            400,
            10037,
        ),
        (
            c.put(format!("{ns}/values/k?expiration=99999999999999999999999"))
                .body("v"),
            400,
            10037,
        ),
        (
            c.get(format!("{}/not-a-namespace-id/values/k", server.api())),
            400,
            7003,
        ),
        (
            c.get(format!("{}/{}/values/k", server.api(), "0".repeat(32))),
            404,
            10013,
        ),
        (
            c.put(format!("{}/{}/values/k", server.api(), "0".repeat(32)))
                .body("v"),
            404,
            10013,
        ),
        (c.post(server.api()).body("{not json"), 400, 10001),
        (
            c.post(server.api()).json(&json!({"name": "no title"})),
            400,
            10001,
        ),
        (c.post(server.api()).json(&json!({"title": ""})), 400, 10019),
        (
            c.post(server.api())
                .json(&json!({"title": "t".repeat(513)})),
            400,
            10019,
        ),
        (c.get(format!("{}?per_page=101", server.api())), 400, 10038),
        (c.get(format!("{}?per_page=0", server.api())), 400, 10038),
        (c.get(format!("{}?page=0", server.api())), 400, 10038),
        (c.get(format!("{}?order=size", server.api())), 400, 10038),
        (c.get(format!("{}?direction=up", server.api())), 400, 10038),
        (
            c.put(format!("{ns}/bulk"))
                .body("[{\"key\": \"k\", \"value\": "),
            400,
            10001,
        ),
        (c.post(format!("{ns}/bulk/get")).body("nope"), 400, 10001),
        (c.patch(format!("{ns}/values/k")), 405, 7001),
        (
            c.get(format!("{}/client/v4/nowhere", server.base)),
            404,
            7000,
        ),
    ];
    for (request, status, code) in cases {
        assert_error(request.send().await.unwrap(), status, code).await;
    }

    // A value one byte over 25 MiB is refused (the server answers and closes without reading
    // it, so it is sent raw); exactly 25 MiB is accepted.
    let limit = 25 * 1024 * 1024;
    let head = format!(
        "PUT /client/v4/accounts/{ACCOUNT}/storage/kv/namespaces/{id}/values/big HTTP/1.1\r\nHost: localhost\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        limit + 1
    );
    let (status, body) = raw_request(&server.addr(), &head, &vec![7u8; limit + 1]).await;
    assert!(
        status.contains(" 413 ") && body.contains("10033"),
        "{status} {body}"
    );
    send_err(c.get(format!("{ns}/values/big")), 404, 10009).await;
    assert_ok(
        c.put(format!("{ns}/values/big"))
            .body(vec![7u8; limit])
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(
        fetch_bytes(c.get(format!("{ns}/values/big"))).await.len(),
        limit
    );

    // Nothing was lost or corrupted, and the server is still up.
    assert_eq!(
        c.get(format!("{ns}/values/keep"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap(),
        "safe"
    );
    assert_eq!(
        c.get(format!("{}/healthz", server.base))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
}

/// Sends a raw HTTP/1.1 request (for paths and headers a normal client would rewrite) and
/// returns the status line and body.
async fn raw_request(addr: &str, head: &str, body: &[u8]) -> (String, String) {
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream.write_all(head.as_bytes()).await.unwrap();
    // The server may answer and close before reading a large body; that is the point.
    let _ = stream.write_all(body).await;
    let mut response = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(30), stream.read_to_end(&mut response)).await;
    let text = String::from_utf8_lossy(&response).into_owned();
    let status = text.lines().next().unwrap_or_default().to_owned();
    let body = text.split("\r\n\r\n").nth(1).unwrap_or_default().to_owned();
    (status, body)
}

#[tokio::test]
async fn dot_keys_and_oversized_declared_bodies() {
    let server = Server::start();
    let c = client();
    let id = create_namespace(&c, &server, "raw").await;
    let path = format!("/client/v4/accounts/{ACCOUNT}/storage/kv/namespaces/{id}");
    for key in ["..", ".", "%2E%2E", "%2e"] {
        let head = format!(
            "GET {path}/values/{key} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
        );
        let (status, body) = raw_request(&server.addr(), &head, b"").await;
        assert!(status.contains(" 400 "), "{key}: {status}");
        assert!(body.contains("10020"), "{key}: {body}");
    }
    // A declared length over the limit is refused from the headers alone: the body is never
    // sent, and the answer still comes back.
    let head = format!(
        "PUT {path}/values/huge HTTP/1.1\r\nHost: localhost\r\nContent-Length: 1000000000\r\nConnection: close\r\n\r\n"
    );
    let (status, body) = raw_request(&server.addr(), &head, b"").await;
    assert!(status.contains(" 413 "), "{status}");
    assert!(body.contains("10033"), "{body}");
    let head = format!(
        "PUT {path}/bulk HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: 200000000\r\nConnection: close\r\n\r\n"
    );
    let (status, body) = raw_request(&server.addr(), &head, b"").await;
    assert!(status.contains(" 413 "), "{status}");
    assert!(body.contains("10040"), "{body}");
    // A chunked body with no declared length is cut off once it passes the limit.
    let head = format!("PUT {path}/values/chunked HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n");
    let chunk = vec![b'x'; 1024 * 1024];
    let mut body = Vec::new();
    for _ in 0..26 {
        body.extend_from_slice(format!("{:x}\r\n", chunk.len()).as_bytes());
        body.extend_from_slice(&chunk);
        body.extend_from_slice(b"\r\n");
    }
    body.extend_from_slice(b"0\r\n\r\n");
    let (status, body) = raw_request(&server.addr(), &head, &body).await;
    assert!(status.contains(" 413 "), "{status}");
    assert!(body.contains("10033"), "{body}");
    send_err(
        c.get(format!("{}/{id}/values/huge", server.api())),
        404,
        10009,
    )
    .await;
    send_err(
        c.get(format!("{}/{id}/values/chunked", server.api())),
        404,
        10009,
    )
    .await;
}

const FIRST: &str = "first-token-5f0a7c9e2b4d6f8a1c3e5b7d9f2a";
const SECOND: &str = "second-token-8e1b3d5f7a9c2e4b6d8f0a1c3e5b";

#[tokio::test]
async fn tokens_are_required_when_configured() {
    let tmp = tempfile::tempdir().unwrap();
    let server = Server::start_in(
        tmp.path(),
        &[("DRIFTKV_API_TOKENS", &format!("{FIRST},{SECOND}"))],
    )
    .unwrap();
    let c = client();
    send_err(c.get(server.api()), 401, 10000).await;
    send_err(c.get(server.api()).bearer_auth("wrong"), 403, 10000).await;
    send_ok(c.get(server.api()).bearer_auth(SECOND)).await;
    let legacy = c
        .get(server.api())
        .header("X-Auth-Email", "me@example.com")
        .header("X-Auth-Key", FIRST);
    send_ok(legacy).await;
    // Health needs no token.
    assert_eq!(
        c.get(format!("{}/healthz", server.base))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
}

/// Tokens that would guard nothing (an empty one, which used to turn authentication off; a
/// short one; a placeholder from the documentation) stop the node from starting, saying why.
#[tokio::test]
async fn weak_tokens_refuse_to_start() {
    for (tokens, why) in [
        ("short-token", "bytes long"),
        ("driftkv-dev-token", "placeholder"),
        ("replace-me-with-a-long-random-token", "placeholder"),
    ] {
        let tmp = tempfile::tempdir().unwrap();
        let err = Server::start_in(tmp.path(), &[("DRIFTKV_API_TOKENS", tokens)])
            .err()
            .unwrap_or_else(|| panic!("started with {tokens}"));
        assert!(err.contains(why), "{err}");
    }
    // An empty token in the config file (the environment variable drops empty items).
    let tmp = tempfile::tempdir().unwrap();
    let config = tmp.path().join("node.toml");
    std::fs::write(&config, "api_tokens = [\"\"]\n").unwrap();
    let args = [
        "dev",
        "--listen",
        "127.0.0.1:0",
        "--config",
        config.to_str().unwrap(),
        "--data-dir",
        tmp.path().to_str().unwrap(),
    ]
    .map(String::from);
    let err = Server::launch(&args, tmp.path(), &[], "driftkv dev listening on ")
        .err()
        .expect("an empty token must not start a node");
    assert!(err.contains("is empty"), "{err}");
}

#[tokio::test]
async fn a_public_bind_without_tokens_refuses_to_start() {
    let tmp = tempfile::tempdir().unwrap();
    let err = Server::start_with_args(tmp.path(), "0.0.0.0:0", &[])
        .err()
        .expect("must not start");
    assert!(err.contains("without API tokens"), "{err}");
}

/// `driftkv health`, the container health check: exit 0 for a serving node, non-zero with a
/// reason when nothing answers.
#[tokio::test]
async fn the_health_command_reports_a_serving_node() {
    let server = Server::start();
    let check = |url: String| {
        std::process::Command::new(env!("CARGO_BIN_EXE_driftkv"))
            .args(["health", "--url", &url, "--timeout-secs", "2"])
            .env("RUST_LOG", "off")
            .output()
            .expect("driftkv health runs")
    };
    let healthy = check(format!("{}/healthz", server.base));
    assert!(healthy.status.success(), "{healthy:?}");
    let port = server.addr().rsplit(':').next().unwrap().to_owned();
    server.stop();
    let down = check(format!("http://127.0.0.1:{port}/healthz"));
    assert!(!down.status.success());
    assert!(
        String::from_utf8_lossy(&down.stderr).contains("is not healthy"),
        "{down:?}"
    );
}

/// Workers KV's smallest `cacheTtl` is 30 s since January 2026: a default server takes 30 and
/// refuses 29 with Cloudflare's invalid-parameter error naming the minimum.
#[tokio::test]
async fn cache_ttl_accepts_thirty_seconds_and_refuses_less() {
    let server = Server::start();
    let c = client();
    let ns = common::namespace_url(&c, &server, "ttl").await;
    let url = format!("{ns}/values/k");
    send_ok(c.put(&url).body("v")).await;
    let read = c
        .get(&url)
        .query(&[("cache_ttl", "30")])
        .send()
        .await
        .unwrap();
    assert_eq!(read.status(), 200);
    assert_eq!(read.bytes().await.unwrap(), "v");
    let refused = send_err(c.get(&url).query(&[("cache_ttl", "29")]), 400, 10038).await;
    let message = refused["errors"][0]["message"].as_str().unwrap();
    assert!(message.contains("at least 30 seconds"), "{message}");
}
