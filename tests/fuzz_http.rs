//! Random requests against a real server: whatever arrives, the answer is never a server error,
//! every error is a Cloudflare envelope with a code, and the server keeps running with its data
//! intact.

mod common;

use common::{client, create_namespace, fetch_bytes, send_ok, Server, ACCOUNT};
use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};
use serde_json::Value;

/// One random request.
#[derive(Debug, Clone)]
struct Input {
    method: &'static str,
    path: String,
    query: String,
    content_type: Option<String>,
    body: Vec<u8>,
}

fn segment() -> impl Strategy<Value = String> {
    prop_oneof![
        Just(".".to_owned()),
        Just("..".to_owned()),
        Just("%2E%2E".to_owned()),
        Just("%".to_owned()),
        Just("%zz".to_owned()),
        Just("%ff%fe".to_owned()),
        Just(String::new()),
        "[a-z0-9]{1,40}",
        "[ -~&&[^/?#]]{0,30}".prop_map(|s| percent_encoding::utf8_percent_encode(
            &s,
            percent_encoding::NON_ALPHANUMERIC
        )
        .to_string()),
        "\\PC{0,10}".prop_map(|s| percent_encoding::utf8_percent_encode(
            &s,
            percent_encoding::NON_ALPHANUMERIC
        )
        .to_string()),
        Just("k".repeat(700)),
    ]
}

fn input(namespace: String) -> impl Strategy<Value = Input> {
    let base = format!("/client/v4/accounts/{ACCOUNT}/storage/kv/namespaces");
    let route = prop_oneof![
        Just(String::new()),
        Just(format!("/{namespace}")),
        Just(format!("/{namespace}/values/")),
        Just(format!("/{namespace}/metadata/")),
        Just(format!("/{namespace}/keys")),
        Just(format!("/{namespace}/bulk")),
        Just(format!("/{namespace}/bulk/get")),
        Just(format!("/{namespace}/bulk/delete")),
        Just("/".to_owned()),
    ];
    let query = prop_oneof![
        Just(String::new()),
        "[a-z_]{1,16}=[ -~&&[^#&]]{0,20}".prop_map(|q| format!("?{}", q.replace(' ', "%20"))),
        Just("?expiration_ttl=60&expiration=1".to_owned()),
        Just("?limit=10&cursor=AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA".to_owned()),
        Just("?per_page=1e3&page=-1".to_owned()),
    ];
    let content_type = prop_oneof![
        Just(None),
        Just(Some("application/json".to_owned())),
        Just(Some("multipart/form-data".to_owned())),
        Just(Some("multipart/form-data; boundary=X".to_owned())),
        "[ -~]{0,40}".prop_map(Some),
    ];
    let body = prop_oneof![
        proptest::collection::vec(any::<u8>(), 0..512),
        Just(b"[{\"key\": \"k\", \"value\": \"v\"}]".to_vec()),
        Just(b"{\"keys\": [\"a\"], \"type\": \"json\", \"withMetadata\": 1}".to_vec()),
        Just(
            b"--X\r\nContent-Disposition: form-data; name=\"value\"\r\n\r\nv\r\n--X--\r\n".to_vec()
        ),
        Just(b"[1, {\"key\": null}]".to_vec()),
        Just(b"{\"title\": 5}".to_vec()),
    ];
    let method = prop_oneof![
        Just("GET"),
        Just("PUT"),
        Just("POST"),
        Just("DELETE"),
        Just("PATCH"),
        Just("HEAD")
    ];
    (
        method,
        route,
        proptest::collection::vec(segment(), 0..3),
        query,
        content_type,
        body,
    )
        .prop_map(
            move |(method, route, segments, query, content_type, body)| {
                let mut path = format!("{base}{route}");
                path.push_str(&segments.join("/"));
                Input {
                    method,
                    path,
                    query,
                    content_type,
                    body,
                }
            },
        )
}

#[test]
fn random_requests_never_break_the_server() {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let server = Server::start();
    let client = client();
    // The fuzzer aims at one namespace (and may well delete it); the sentinel lives in another.
    let (namespace, kept) = runtime.block_on(async {
        let target = create_namespace(&client, &server, "fuzz").await;
        let kept = create_namespace(&client, &server, "kept").await;
        send_ok(
            client
                .put(format!("{}/{kept}/values/sentinel", server.api()))
                .body("still here"),
        )
        .await;
        (target, kept)
    });

    let mut runner = TestRunner::new(Config {
        cases: 400,
        failure_persistence: None,
        ..Config::default()
    });
    let result = runner.run(&input(namespace), |input| {
        runtime.block_on(async {
            let url = format!("{}{}{}", server.base, input.path, input.query);
            let Ok(method) = reqwest::Method::from_bytes(input.method.as_bytes()) else {
                return Ok(());
            };
            let mut request = client.request(method, &url).body(input.body.clone());
            if let Some(content_type) = &input.content_type {
                request = request.header("content-type", content_type.as_str());
            }
            let Ok(request) = request.build() else {
                // The client refused to build it (an invalid URL or header): nothing was sent.
                return Ok(());
            };
            let response = client
                .execute(request)
                .await
                .map_err(|e| TestCaseError::fail(format!("no answer: {e}")))?;
            let status = response.status().as_u16();
            prop_assert!(status < 500, "server error {status} for {input:?}");
            let is_json = response.headers().get("content-type").is_some_and(|v| {
                v.to_str()
                    .unwrap_or_default()
                    .starts_with("application/json")
            });
            let body = response
                .bytes()
                .await
                .map_err(|e| TestCaseError::fail(e.to_string()))?;
            if status >= 400 && input.method != "HEAD" {
                prop_assert!(is_json, "a non-JSON error {status} for {input:?}");
                let envelope: Value = serde_json::from_slice(&body)
                    .map_err(|e| TestCaseError::fail(e.to_string()))?;
                prop_assert_eq!(&envelope["success"], &Value::Bool(false));
                prop_assert!(
                    envelope["errors"][0]["code"].as_u64().is_some(),
                    "no error code: {envelope}"
                );
            }
            Ok(())
        })
    });
    if let Err(e) = result {
        panic!("{e}");
    }

    runtime.block_on(async {
        let sentinel =
            fetch_bytes(client.get(format!("{}/{kept}/values/sentinel", server.api()))).await;
        assert_eq!(sentinel.as_ref(), b"still here");
        assert_eq!(
            client
                .get(format!("{}/healthz", server.base))
                .send()
                .await
                .unwrap()
                .status(),
            200
        );
    });
}
