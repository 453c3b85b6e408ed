//! The workerd KV binding listener, driven the way workerd drives it: every request is the
//! exact bytes workerd's `KVNamespace` binding (`src/workerd/api/kv.c++`) sends through an
//! external service with injected headers, written to a TCP socket, and every answer is read
//! raw: status, reason phrase (all workerd shows a Worker of a failure), headers and body.
//! Against a real `driftkv dev --edges 2`, beside its REST API.

mod common;

use std::time::{Duration, Instant};

use common::{api_at, client, cluster_view, send_ok, wait_for, DevCluster, Server};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

// ---------------------------------------------------------------------------------------
// What workerd sends

/// kj's `encodeUriPath`, which encodes each path segment of the URL workerd builds for a get
/// or a put: everything but `A-Z a-z 0-9 @ [ ] : ; & ' ( ) * + , - . _ ! = ^ | ~ $`.
fn encode_uri_path(text: &str) -> String {
    encode(text, |b| {
        matches!(b, b'@'..=b'[' | b'a'..=b'z' | b'0'..=b';' | b'&'..=b'.')
            || b"_!=]^|~$".contains(&b)
    })
}

/// kj's `encodeUriComponent` (JavaScript's `encodeURIComponent`), which a delete uses:
/// everything but `A-Z a-z 0-9 - _ . ! ~ * ' ( )`.
fn encode_uri_component(text: &str) -> String {
    encode(text, |b| {
        b.is_ascii_alphanumeric() || b"-_.!~*'()".contains(&b)
    })
}

/// kj's `encodeWwwForm`, for query values: everything but `A-Z a-z 0-9 - _ . *`, with a space
/// as `+`.
fn encode_www_form(text: &str) -> String {
    text.split(' ')
        .map(|part| encode(part, |b| b.is_ascii_alphanumeric() || b"-_.*".contains(&b)))
        .collect::<Vec<_>>()
        .join("+")
}

fn encode(text: &str, kept: impl Fn(u8) -> bool) -> String {
    text.bytes()
        .map(|b| match kept(b) {
            true => (b as char).to_string(),
            false => format!("%{b:02X}"),
        })
        .collect()
}

/// How a request's body travels.
enum Body<'a> {
    /// No body and no length (a get, a list).
    None,
    /// `Content-Length` (a delete sends `Content-Length: 0`).
    Sized(&'a [u8]),
    /// `Transfer-Encoding: chunked`, one chunk per piece: a `ReadableStream` of unknown length.
    Chunked(&'a [&'a [u8]]),
}

/// The binding of one namespace, as a workerd config sets it up: an external service at
/// `addr` whose requests get `X-Driftkv-Namespace` and, with a token, `Authorization`
/// injected.
#[derive(Clone)]
struct Binding {
    addr: String,
    namespace: String,
    token: Option<String>,
}

impl Binding {
    fn new(addr: &str, namespace: &str) -> Self {
        Binding {
            addr: addr.to_owned(),
            namespace: namespace.to_owned(),
            token: None,
        }
    }

    /// A request as kj's HTTP client writes it: the request line in origin form (the external
    /// service's `host` style), connection headers, `Host: fake-host`, `Content-Type`, the
    /// other indexed headers, then `CF-KV-FLPROD-405` with the URL in proxy form.
    fn request(
        &self,
        method: &str,
        path_and_query: &str,
        proxy_url: &str,
        headers: &[(&str, &str)],
        body: Body,
    ) -> Vec<u8> {
        let mut head = format!("{method} {path_and_query} HTTP/1.1\r\n");
        match body {
            Body::None => {}
            Body::Sized(bytes) => head.push_str(&format!("Content-Length: {}\r\n", bytes.len())),
            Body::Chunked(_) => head.push_str("Transfer-Encoding: chunked\r\n"),
        }
        head.push_str("Host: fake-host\r\n");
        for (name, value) in headers {
            head.push_str(&format!("{name}: {value}\r\n"));
        }
        head.push_str(&format!("X-Driftkv-Namespace: {}\r\n", self.namespace));
        if let Some(token) = &self.token {
            head.push_str(&format!("Authorization: Bearer {token}\r\n"));
        }
        head.push_str(&format!("CF-KV-FLPROD-405: {proxy_url}\r\n\r\n"));
        let mut bytes = head.into_bytes();
        match body {
            Body::None => {}
            Body::Sized(body) => bytes.extend_from_slice(body),
            Body::Chunked(pieces) => {
                // kj writes no empty chunk but the last: an empty one ends the body.
                for piece in pieces.iter().filter(|p| !p.is_empty()) {
                    bytes.extend_from_slice(format!("{:x}\r\n", piece.len()).as_bytes());
                    bytes.extend_from_slice(piece);
                    bytes.extend_from_slice(b"\r\n");
                }
                bytes.extend_from_slice(b"0\r\n\r\n");
            }
        }
        bytes
    }

    /// `get(key, {cacheTtl})`, `getWithMetadata(key, ...)`.
    fn get(&self, key: &str, cache_ttl: Option<u64>) -> Vec<u8> {
        let mut target = format!("/{}?urlencoded=true", encode_uri_path(key));
        if let Some(ttl) = cache_ttl {
            target.push_str(&format!("&cache_ttl={ttl}"));
        }
        let url = format!("https://fake-host{target}");
        self.request("GET", &target, &url, &[], Body::None)
    }

    /// `put(key, value, {expiration, expirationTtl, metadata})`. A string value is sent with
    /// `text/plain;charset=UTF-8`; an `ArrayBuffer` without a type; a stream chunked.
    fn put(&self, key: &str, query: &str, metadata: Option<&str>, body: Body) -> Vec<u8> {
        let target = format!("/{}?urlencoded=true{query}", encode_uri_path(key));
        let url = format!("https://fake-host{target}");
        let mut headers = Vec::new();
        if let Body::Sized(_) = body {
            headers.push(("Content-Type", "text/plain;charset=UTF-8"));
        }
        if let Some(metadata) = metadata {
            headers.push(("CF-KV-Metadata", metadata));
        }
        self.request("PUT", &target, &url, &headers, body)
    }

    /// `put(key, arrayBuffer)`: a known length and no `Content-Type`.
    fn put_bytes(&self, key: &str, value: &[u8]) -> Vec<u8> {
        let target = format!("/{}?urlencoded=true", encode_uri_path(key));
        let url = format!("https://fake-host{target}");
        self.request("PUT", &target, &url, &[], Body::Sized(value))
    }

    /// `delete(key)`: the key through `encodeURIComponent`, and `Content-Length: 0`.
    fn delete(&self, key: &str) -> Vec<u8> {
        let target = format!("/{}?urlencoded=true", encode_uri_component(key));
        let url = format!("https://fake-host{target}");
        self.request("DELETE", &target, &url, &[], Body::Sized(b""))
    }

    /// `list({limit, prefix, cursor})`: the URL has no path, so the proxy-form URL has no `/`
    /// and the request line's path is `/`.
    fn list(&self, limit: Option<u64>, prefix: Option<&str>, cursor: Option<&str>) -> Vec<u8> {
        let mut query = Vec::new();
        if let Some(limit) = limit {
            query.push(format!("key_count_limit={limit}"));
        }
        if let Some(prefix) = prefix {
            query.push(format!("prefix={}", encode_www_form(prefix)));
        }
        if let Some(cursor) = cursor {
            query.push(format!("cursor={}", encode_www_form(cursor)));
        }
        let query = match query.is_empty() {
            true => String::new(),
            false => format!("?{}", query.join("&")),
        };
        let url = format!("https://fake-host{query}");
        self.request("GET", &format!("/{query}"), &url, &[], Body::None)
    }

    /// `get([keys], options)`: the body as workerd's `formBulkBodyString` builds it.
    fn bulk_get(&self, body: &Value) -> Vec<u8> {
        let body = body.to_string();
        self.request(
            "POST",
            "/bulk/get",
            "https://fake-host/bulk/get",
            &[("Content-Type", "application/json")],
            Body::Sized(body.as_bytes()),
        )
    }

    /// Sends `request` on a connection of its own and reads the answer.
    async fn send(&self, request: &[u8]) -> Answer {
        let mut stream = TcpStream::connect(&self.addr).await.expect("connect");
        stream.write_all(request).await.expect("request sent");
        read_answer(&mut stream).await
    }
}

// ---------------------------------------------------------------------------------------
// What comes back

/// A response as read off the socket.
#[derive(Debug)]
struct Answer {
    status: u16,
    reason: String,
    /// Names in lower case, in the order sent.
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Answer {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// The header names, `date` left out (its value changes every second).
    fn header_names(&self) -> Vec<&str> {
        self.headers
            .iter()
            .map(|(n, _)| n.as_str())
            .filter(|n| *n != "date")
            .collect()
    }

    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {self:?}"))
    }

    /// Asserts a refusal: its status and reason phrase, repeated as a plain-text body.
    fn assert_refused(&self, status: u16, reason: &str) {
        assert_eq!(
            (self.status, self.reason.as_str()),
            (status, reason),
            "{self:?}"
        );
        assert_eq!(self.body, reason.as_bytes(), "{self:?}");
        assert_eq!(
            self.header("content-type"),
            Some("text/plain; charset=utf-8")
        );
    }

    fn assert_ok_empty(&self) {
        assert_eq!((self.status, self.reason.as_str()), (200, "OK"), "{self:?}");
        assert!(self.body.is_empty(), "{self:?}");
    }
}

/// Reads one response (with a `Content-Length`, as every answer of the binding has).
async fn read_answer(stream: &mut TcpStream) -> Answer {
    let mut buffer = Vec::new();
    loop {
        read_more(stream, &mut buffer).await;
        let mut headers = [httparse::EMPTY_HEADER; 32];
        let mut response = httparse::Response::new(&mut headers);
        let httparse::Status::Complete(head) = response.parse(&buffer).expect("valid HTTP") else {
            continue;
        };
        let status = response.code.expect("a status");
        let reason = response.reason.expect("a reason").to_owned();
        let headers: Vec<(String, String)> = response
            .headers
            .iter()
            .map(|h| {
                let value = String::from_utf8(h.value.to_vec()).expect("an ASCII header");
                (h.name.to_ascii_lowercase(), value)
            })
            .collect();
        let length: usize = headers
            .iter()
            .find(|(n, _)| n == "content-length")
            .expect("a Content-Length")
            .1
            .parse()
            .expect("a number");
        while buffer.len() < head + length {
            read_more(stream, &mut buffer).await;
        }
        return Answer {
            status,
            reason,
            headers,
            body: buffer[head..head + length].to_vec(),
        };
    }
}

/// Reads what `stream` has next onto `buffer`; fails the test if nothing comes for a minute
/// or the connection closes.
async fn read_more(stream: &mut TcpStream, buffer: &mut Vec<u8>) {
    let mut chunk = vec![0u8; 64 * 1024];
    let n = tokio::time::timeout(Duration::from_secs(60), stream.read(&mut chunk))
        .await
        .expect("an answer within 60 s")
        .expect("the answer reads");
    assert!(n > 0, "the connection closed mid-answer: {buffer:?}");
    buffer.extend_from_slice(&chunk[..n]);
}

// ---------------------------------------------------------------------------------------
// Set-up

/// Each edge's workerd binding address (`host:port`), edge 0 first, from `/cluster`.
async fn bindings(cluster: &DevCluster) -> Vec<String> {
    let http = client();
    wait_for(
        Duration::from_secs(10),
        "every edge's binding in /cluster",
        || async {
            let view = cluster_view(&http, &cluster.edges[0]).await;
            let members = view["members"].as_array()?.clone();
            cluster
                .edges
                .iter()
                .map(|edge| {
                    let member = members.iter().find(|m| m["http"] == edge.as_str())?;
                    let binding = member["workerd"].as_str()?;
                    Some(binding.trim_start_matches("http://").to_owned())
                })
                .collect::<Option<Vec<_>>>()
        },
    )
    .await
}

/// Creates a namespace through edge `base`'s REST API; returns its id.
async fn namespace(http: &reqwest::Client, base: &str, title: &str) -> String {
    let body = send_ok(http.post(api_at(base)).json(&json!({ "title": title }))).await;
    body["result"]["id"].as_str().expect("id").to_owned()
}

/// A key's value read through the REST API at `base`; `None` on 404.
async fn rest_get(
    http: &reqwest::Client,
    base: &str,
    ns: &str,
    key: &str,
    cache_ttl: Option<u64>,
) -> Option<Vec<u8>> {
    let mut request = http.get(format!(
        "{}/{ns}/values/{}",
        api_at(base),
        common::encode_key(key)
    ));
    if let Some(ttl) = cache_ttl {
        request = request.query(&[("cache_ttl", ttl)]);
    }
    let response = request.send().await.expect("request sent");
    match response.status().as_u16() {
        200 => Some(response.bytes().await.expect("body").to_vec()),
        404 => None,
        other => panic!("GET {key}: HTTP {other}"),
    }
}

/// The keys the REST listing at `base` shows (read from the replica, never the cache).
async fn rest_keys(http: &reqwest::Client, base: &str, ns: &str) -> Vec<String> {
    let body = send_ok(http.get(format!("{}/{ns}/keys", api_at(base)))).await;
    body["result"]
        .as_array()
        .expect("keys")
        .iter()
        .map(|k| k["name"].as_str().expect("name").to_owned())
        .collect()
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("after 1970")
        .as_secs()
}

/// Keys with every character workerd encodes, or leaves alone, in a path or a query.
const KEYS: [&str; 9] = [
    "a/b",
    "100%",
    "a+b",
    "with space",
    "été/ü",
    "q?x#y\\z\"<>`{}",
    "🦀 crab",
    "bulk/get",
    "@[]:;&'()*,=^|~$!",
];

// ---------------------------------------------------------------------------------------
// Tests

#[tokio::test(flavor = "multi_thread")]
async fn the_encoders_match_what_workerd_sends() {
    // Pinned by hand from kj's encoding tables, so that the replayed requests are the bytes
    // workerd writes.
    assert_eq!(encode_uri_path("a/b %+é"), "a%2Fb%20%25+%C3%A9");
    assert_eq!(encode_uri_path("q?x#y\\z"), "q%3Fx%23y%5Cz");
    assert_eq!(encode_uri_path("@[]:;&'()*,=^|~$!"), "@[]:;&'()*,=^|~$!");
    assert_eq!(encode_uri_component("a/b %+:é"), "a%2Fb%20%25%2B%3A%C3%A9");
    assert_eq!(encode_www_form("a b+c/~"), "a+b%2Bc%2F%7E");
    let binding = Binding::new("unused", "0123456789abcdef0123456789abcdef");
    assert_eq!(
        String::from_utf8(binding.get("bar", None)).unwrap(),
        "GET /bar?urlencoded=true HTTP/1.1\r\nHost: fake-host\r\n\
         X-Driftkv-Namespace: 0123456789abcdef0123456789abcdef\r\n\
         CF-KV-FLPROD-405: https://fake-host/bar?urlencoded=true\r\n\r\n"
    );
    assert_eq!(
        String::from_utf8(binding.list(Some(2), Some("a b"), None)).unwrap(),
        "GET /?key_count_limit=2&prefix=a+b HTTP/1.1\r\nHost: fake-host\r\n\
         X-Driftkv-Namespace: 0123456789abcdef0123456789abcdef\r\n\
         CF-KV-FLPROD-405: https://fake-host?key_count_limit=2&prefix=a+b\r\n\r\n"
    );
    assert_eq!(
        String::from_utf8(binding.put("k", "", None, Body::Chunked(&[b"ab", b"c"]))).unwrap(),
        "PUT /k?urlencoded=true HTTP/1.1\r\nTransfer-Encoding: chunked\r\nHost: fake-host\r\n\
         X-Driftkv-Namespace: 0123456789abcdef0123456789abcdef\r\n\
         CF-KV-FLPROD-405: https://fake-host/k?urlencoded=true\r\n\r\n\
         2\r\nab\r\n1\r\nc\r\n0\r\n\r\n"
    );
}

/// Every binding call, replayed as workerd sends it, answered exactly.
#[tokio::test(flavor = "multi_thread")]
async fn replayed_binding_requests_are_answered_exactly() {
    let cluster = DevCluster::start(2, &[]).await;
    let http = client();
    let ns = namespace(&http, &cluster.edges[0], "replayed").await;
    let addrs = bindings(&cluster).await;
    let kv = Binding::new(&addrs[0], &ns);

    // put(key, string, {metadata, expiration}) and get: every awkward key.
    let expiration = unix_now() + 3600;
    for key in KEYS {
        let value = format!("value of {key}");
        kv.send(&kv.put(
            key,
            &format!("&expiration={expiration}"),
            Some(r#"{"owner":"Zoë","n":1}"#),
            Body::Sized(value.as_bytes()),
        ))
        .await
        .assert_ok_empty();
        let got = kv.send(&kv.get(key, Some(60))).await;
        assert_eq!(
            (got.status, got.reason.as_str()),
            (200, "OK"),
            "{key}: {got:?}"
        );
        assert_eq!(got.body, value.as_bytes(), "{key}");
        assert_eq!(
            got.header_names(),
            ["cf-kv-metadata", "cf-expiration", "content-length"],
            "{key}"
        );
        // Stored compact (keys sorted); non-ASCII escaped so the header is plain ASCII.
        assert_eq!(
            got.header("cf-kv-metadata"),
            Some(r#"{"n":1,"owner":"Zo\u00eb"}"#)
        );
        assert_eq!(got.header("cf-expiration"), Some(&*expiration.to_string()));
    }

    // An ArrayBuffer (no Content-Type, any bytes) and a stream (chunked), no metadata.
    let binary: Vec<u8> = (0..=255).collect();
    kv.send(&kv.put_bytes("binary", &binary))
        .await
        .assert_ok_empty();
    let got = kv.send(&kv.get("binary", None)).await;
    assert_eq!((got.status, got.body.as_slice()), (200, binary.as_slice()));
    assert_eq!(got.header_names(), ["content-length"]);
    let before = unix_now();
    kv.send(&kv.put(
        "streamed",
        "&expiration_ttl=120",
        None,
        Body::Chunked(&[b"stre", b"", b"amed ", "välue".as_bytes()]),
    ))
    .await
    .assert_ok_empty();
    let got = kv.send(&kv.get("streamed", None)).await;
    assert_eq!(got.body, "streamed välue".as_bytes());
    let expires: u64 = got.header("cf-expiration").unwrap().parse().unwrap();
    assert!(
        (before + 120..=unix_now() + 120).contains(&expires),
        "{expires}"
    );
    // When both are given, expiration_ttl wins (as in the REST API).
    kv.send(&kv.put(
        "both",
        &format!("&expiration={expiration}&expiration_ttl=600"),
        None,
        Body::Sized(b"x"),
    ))
    .await
    .assert_ok_empty();
    let expires: u64 = kv
        .send(&kv.get("both", None))
        .await
        .header("cf-expiration")
        .unwrap()
        .parse()
        .unwrap();
    assert!(expires <= unix_now() + 600, "{expires}");
    // An empty value is a value.
    kv.send(&kv.put("empty", "", None, Body::Sized(b"")))
        .await
        .assert_ok_empty();
    let got = kv.send(&kv.get("empty", None)).await;
    assert_eq!((got.status, got.body.len()), (200, 0));

    // A missing key: 404, which the binding turns into null.
    kv.send(&kv.get("missing", None))
        .await
        .assert_refused(404, "Not Found");

    // list: every key, in UTF-8 byte order, metadata as a JSON string.
    let all = kv.send(&kv.list(None, None, None)).await;
    assert_eq!((all.status, all.reason.as_str()), (200, "OK"));
    assert_eq!(all.header("content-type"), Some("application/json"));
    let listed = all.json();
    assert_eq!(listed["list_complete"], true);
    assert!(listed.get("cursor").is_none(), "{listed}");
    let mut expected: Vec<&str> = KEYS.to_vec();
    expected.extend(["binary", "streamed", "both", "empty"]);
    expected.sort();
    let names: Vec<&str> = listed["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, expected);
    let crab =
        &listed["keys"].as_array().unwrap()[names.iter().position(|n| *n == "🦀 crab").unwrap()];
    assert_eq!(
        crab,
        &json!({"name": "🦀 crab", "expiration": expiration, "metadata": r#"{"n":1,"owner":"Zoë"}"#})
    );
    let binary_key =
        &listed["keys"].as_array().unwrap()[names.iter().position(|n| *n == "binary").unwrap()];
    assert_eq!(binary_key, &json!({"name": "binary"}));

    // list with a prefix holding a space (sent as `+`) and a `/`, a page at a time.
    for i in 0..5 {
        kv.send(&kv.put(
            &format!("page me/{i}"),
            "",
            Some(&format!(r#"{{"i":{i}}}"#)),
            Body::Sized(b"p"),
        ))
        .await
        .assert_ok_empty();
    }
    let mut cursor: Option<String> = None;
    let mut paged = Vec::new();
    let mut pages = 0;
    loop {
        let page = kv
            .send(&kv.list(Some(2), Some("page me/"), cursor.as_deref()))
            .await
            .json();
        pages += 1;
        for key in page["keys"].as_array().unwrap() {
            let name = key["name"].as_str().unwrap().to_owned();
            let i = name.trim_start_matches("page me/");
            assert_eq!(key["metadata"], format!(r#"{{"i":{i}}}"#), "{page}");
            paged.push(name);
        }
        if page["list_complete"] == true {
            assert!(page.get("cursor").is_none(), "{page}");
            break;
        }
        cursor = Some(page["cursor"].as_str().expect("a cursor").to_owned());
        assert!(pages < 10, "the listing never completes");
    }
    assert_eq!(
        paged,
        (0..5).map(|i| format!("page me/{i}")).collect::<Vec<_>>()
    );
    assert!(pages >= 3, "{pages} pages of at most 2 keys");

    // Bulk get: text, json, with metadata, cacheTtl as workerd sends it (a string).
    kv.send(&kv.put(
        "json",
        "",
        Some(r#"{"m":"é"}"#),
        Body::Sized(br#"{"z": 1, "a": [1.50, "x"]}"#),
    ))
    .await
    .assert_ok_empty();
    let text = kv
        .send(&kv.bulk_get(&json!({"keys": ["a/b", "missing", "🦀 crab"]})))
        .await;
    assert_eq!((text.status, text.reason.as_str()), (200, "OK"));
    assert_eq!(text.header("content-type"), Some("application/json"));
    assert_eq!(
        String::from_utf8(text.body.clone()).unwrap(),
        r#"{"a/b":"value of a/b","missing":null,"🦀 crab":"value of 🦀 crab"}"#
    );
    let typed = kv
        .send(&kv.bulk_get(&json!({"keys": ["json", "nope"], "type": "json", "withMetadata": true, "cacheTtl": "60"})))
        .await;
    // The stored JSON text as it was written, object keys in their order.
    assert_eq!(
        String::from_utf8(typed.body.clone()).unwrap(),
        r#"{"json":{"value":{"z": 1, "a": [1.50, "x"]},"metadata":{"m":"é"}},"nope":null}"#
    );
    let meta = kv
        .send(
            &kv.bulk_get(&json!({"keys": ["binary", "a+b"], "type": "text", "withMetadata": true})),
        )
        .await
        .json();
    assert_eq!(
        meta["a+b"],
        json!({"value": "value of a+b", "metadata": {"n": 1, "owner": "Zoë"}})
    );
    assert_eq!(meta["binary"]["metadata"], Value::Null);

    // delete: encodeURIComponent's encoding (`+` as %2B, `:` as %3A), Content-Length: 0.
    for key in ["a+b", "@[]:;&'()*,=^|~$!", "never there"] {
        kv.send(&kv.delete(key)).await.assert_ok_empty();
        kv.send(&kv.get(key, None))
            .await
            .assert_refused(404, "Not Found");
    }
    let answer = kv.send(&kv.list(None, Some("a+"), None)).await.json();
    assert_eq!(answer["keys"], json!([]));
}

/// A value written through the binding at one edge is read through the REST API at the
/// other, and the other way round; a write is visible at once where it was made.
#[tokio::test(flavor = "multi_thread")]
async fn writes_cross_between_the_binding_and_the_rest_api() {
    let cluster = DevCluster::start(2, &[]).await;
    let http = client();
    let (edge0, edge1) = (&cluster.edges[0], &cluster.edges[1]);
    let ns = namespace(&http, edge0, "crossing").await;
    let addrs = bindings(&cluster).await;
    let (kv0, kv1) = (Binding::new(&addrs[0], &ns), Binding::new(&addrs[1], &ns));

    // Binding at edge 0, REST at edge 1.
    kv0.send(&kv0.put(
        "from binding/é",
        "",
        Some(r#"{"via":"binding"}"#),
        Body::Chunked(&[b"bound", b" value"]),
    ))
    .await
    .assert_ok_empty();
    // Waits on the replica's listing, which is never cached: a read before the write arrived
    // would cache the absence for the default cacheTtl.
    wait_for(
        Duration::from_secs(10),
        "the binding's write in edge 1's replica",
        || async {
            rest_keys(&http, edge1, &ns)
                .await
                .iter()
                .any(|k| k == "from binding/é")
                .then_some(())
        },
    )
    .await;
    let value = rest_get(&http, edge1, &ns, "from binding/é", None).await;
    assert_eq!(value.as_deref(), Some(b"bound value".as_slice()));
    let metadata = send_ok(http.get(format!(
        "{}/{ns}/metadata/{}",
        api_at(edge1),
        common::encode_key("from binding/é")
    )))
    .await;
    assert_eq!(metadata["result"], json!({"via": "binding"}));

    // REST at edge 1, binding at edge 0.
    send_ok(
        http.put(format!(
            "{}/{ns}/values/{}",
            api_at(edge1),
            common::encode_key("from rest+1")
        ))
        .query(&[("expiration_ttl", "300")])
        .body("rest value"),
    )
    .await;
    // Wait on edge 0's replica (its listing is never cached), not on the binding: a binding
    // read that came before the write arrived would cache the absence for the default 60 s
    // cacheTtl, as Workers KV does.
    wait_for(
        Duration::from_secs(10),
        "the REST write in edge 0's replica",
        || async {
            rest_keys(&http, edge0, &ns)
                .await
                .iter()
                .any(|k| k == "from rest+1")
                .then_some(())
        },
    )
    .await;
    let got = kv0.send(&kv0.get("from rest+1", None)).await;
    assert_eq!(
        (got.status, got.body.as_slice()),
        (200, b"rest value".as_slice())
    );
    assert!(got.header("cf-expiration").is_some());

    // Read-your-writes through the binding: a cached absence at edge 1 gives way to edge 1's
    // own write at once, however long the absence was cached for.
    kv1.send(&kv1.get("mine", Some(600)))
        .await
        .assert_refused(404, "Not Found");
    kv1.send(&kv1.put("mine", "", None, Body::Sized(b"written here")))
        .await
        .assert_ok_empty();
    let got = kv1.send(&kv1.get("mine", Some(600))).await;
    assert_eq!(
        (got.status, got.body.as_slice()),
        (200, b"written here".as_slice())
    );
    // A delete through the binding reaches the REST API elsewhere too.
    kv1.send(&kv1.delete("from binding/é"))
        .await
        .assert_ok_empty();
    wait_for(
        Duration::from_secs(10),
        "the binding's delete at edge 0",
        || async {
            rest_keys(&http, edge0, &ns)
                .await
                .iter()
                .all(|k| k != "from binding/é")
                .then_some(())
        },
    )
    .await;
}

/// A result read with a `cacheTtl` (a value or an absence) is served from the edge's cache
/// until the TTL runs out, on the binding as on the REST API: it is the same cache.
#[tokio::test(flavor = "multi_thread")]
async fn cached_results_last_their_ttl_on_both_interfaces() {
    let cluster = DevCluster::start(
        2,
        &[
            ("DRIFTKV_CACHE__MIN_TTL_SECS", "1"),
            ("DRIFTKV_CACHE__DEFAULT_TTL_SECS", "1"),
        ],
    )
    .await;
    let http = client();
    let (edge0, edge1) = (&cluster.edges[0], &cluster.edges[1]);
    let ns = namespace(&http, edge0, "cached").await;
    let addrs = bindings(&cluster).await;
    let (kv0, kv1) = (Binding::new(&addrs[0], &ns), Binding::new(&addrs[1], &ns));
    const TTL: u64 = 4;

    kv0.send(&kv0.put("present", "", None, Body::Sized(b"old")))
        .await
        .assert_ok_empty();
    // Watched through the REST listing, which reads the replica and leaves the cache alone.
    wait_for(
        Duration::from_secs(10),
        "the first value at edge 1",
        || async {
            rest_keys(&http, edge1, &ns)
                .await
                .contains(&"present".to_owned())
                .then_some(())
        },
    )
    .await;
    let cached_at = Instant::now();
    let got = kv1.send(&kv1.get("present", Some(TTL))).await;
    assert_eq!(got.body, b"old");
    kv1.send(&kv1.get("absent via binding", Some(TTL)))
        .await
        .assert_refused(404, "Not Found");
    assert_eq!(
        rest_get(&http, edge1, &ns, "absent via rest", Some(TTL)).await,
        None
    );
    let bulk = json!({"keys": ["absent via bulk"], "cacheTtl": TTL.to_string()});
    assert_eq!(
        kv1.send(&kv1.bulk_get(&bulk)).await.json(),
        json!({"absent via bulk": null})
    );

    let fresh = [
        "present",
        "absent via binding",
        "absent via rest",
        "absent via bulk",
    ];
    for key in fresh {
        send_ok(
            http.put(format!(
                "{}/{ns}/values/{}",
                api_at(edge0),
                common::encode_key(key)
            ))
            .body("new"),
        )
        .await;
    }
    let replicated = wait_for(
        Duration::from_secs(TTL),
        "edge 1's replica to hold the writes",
        || async {
            let keys = rest_keys(&http, edge1, &ns).await;
            fresh
                .iter()
                .all(|k| keys.contains(&k.to_string()))
                .then_some(Instant::now())
        },
    )
    .await;
    assert!(
        replicated < cached_at + Duration::from_secs(TTL),
        "replication took the whole TTL; the test cannot tell stale from fresh"
    );
    // Stale, from the cache, though edge 1's replica holds the new data: whichever interface
    // cached the result, both serve it.
    for stale in [
        kv1.send(&kv1.get("present", None)).await.body,
        rest_get(&http, edge1, &ns, "present", None).await.unwrap(),
    ] {
        assert_eq!(stale, b"old");
    }
    for absent in ["absent via binding", "absent via rest"] {
        kv1.send(&kv1.get(absent, None))
            .await
            .assert_refused(404, "Not Found");
        assert_eq!(
            rest_get(&http, edge1, &ns, absent, None).await,
            None,
            "{absent}"
        );
    }
    assert_eq!(
        kv1.send(&kv1.bulk_get(&bulk)).await.json(),
        json!({"absent via bulk": null})
    );

    // Fresh once the TTL is over, never before.
    wait_for(
        Duration::from_secs(TTL + 10),
        "edge 1's cache entries to run out",
        || async {
            let mut seen = Vec::new();
            seen.push(kv1.send(&kv1.get("present", None)).await.body == b"new");
            for absent in ["absent via binding", "absent via rest"] {
                seen.push(kv1.send(&kv1.get(absent, None)).await.status == 200);
            }
            seen.push(
                kv1.send(&kv1.bulk_get(&bulk)).await.json() == json!({"absent via bulk": "new"}),
            );
            if seen.iter().any(|fresh| *fresh) {
                assert!(
                    cached_at.elapsed() >= Duration::from_secs(TTL),
                    "a cached result was replaced before its TTL ran out: {seen:?}"
                );
            }
            seen.iter().all(|fresh| *fresh).then_some(())
        },
    )
    .await;
}

/// Every limit and every kind of bad input gets its status and a reason phrase that reads
/// well after `KV PUT failed: <status>`; the node keeps serving.
#[tokio::test(flavor = "multi_thread")]
async fn limits_and_bad_input_are_refused_with_a_reason() {
    let cluster =
        DevCluster::start(2, &[("DRIFTKV_RATE_LIMIT__WRITES_PER_KEY_PER_SECOND", "1")]).await;
    let http = client();
    let ns = namespace(&http, &cluster.edges[0], "limits").await;
    let addrs = bindings(&cluster).await;
    let kv = Binding::new(&addrs[0], &ns);
    let long_key = "k".repeat(513);
    let too_long = "UTF-8 encoded length of 513 exceeds key length limit of 512";

    // Keys.
    kv.send(&kv.put(&long_key, "", None, Body::Sized(b"v")))
        .await
        .assert_refused(414, too_long);
    kv.send(&kv.get(&long_key, None))
        .await
        .assert_refused(414, too_long);
    kv.send(&kv.delete(&long_key))
        .await
        .assert_refused(414, too_long);
    // 171 three-byte characters: 513 bytes.
    kv.send(&kv.get(&"€".repeat(171), None))
        .await
        .assert_refused(414, too_long);
    kv.send(&kv.put(".", "", None, Body::Sized(b"v")))
        .await
        .assert_refused(400, "Invalid key: illegal key name \".\"");
    let raw = |target: &str| {
        kv.request(
            "GET",
            target,
            &format!("https://fake-host{target}"),
            &[],
            Body::None,
        )
    };
    kv.send(&raw("/%2E%2E?urlencoded=true"))
        .await
        .assert_refused(400, "Invalid key: illegal key name \"..\"");
    kv.send(&raw("/bad%zz?urlencoded=true"))
        .await
        .assert_refused(
            400,
            "Invalid key: could not URL-decode the key name \"bad%zz\"",
        );
    kv.send(&raw("/%FF?urlencoded=true")).await.assert_refused(
        400,
        "Invalid key: could not URL-decode the key name \"%FF\"",
    );
    // Unknown routes and methods.
    kv.send(&raw("/a/b?urlencoded=true"))
        .await
        .assert_refused(404, "Not Found");
    kv.send(&kv.request("PATCH", "/k", "https://fake-host/k", &[], Body::None))
        .await
        .assert_refused(405, "Method Not Allowed");
    kv.send(&kv.request(
        "GET",
        "/bulk/get",
        "https://fake-host/bulk/get",
        &[],
        Body::None,
    ))
    .await
    .assert_refused(405, "Method Not Allowed");

    // Expirations and cache TTLs.
    let now = unix_now();
    kv.send(&kv.put("k", "&expiration_ttl=59", None, Body::Sized(b"v")))
        .await
        .assert_refused(
            400,
            "Invalid expiration: expiration_ttl of 59 is less than the minimum of 60 seconds",
        );
    kv.send(&kv.put("k", "&expiration_ttl=-5", None, Body::Sized(b"v")))
        .await
        .assert_refused(
            400,
            "Invalid expiration: expiration_ttl must be a whole number of seconds, got \"-5\"",
        );
    let soon = kv
        .send(&kv.put(
            "k",
            &format!("&expiration={}", now + 30),
            None,
            Body::Sized(b"v"),
        ))
        .await;
    assert_eq!(soon.status, 400, "{soon:?}");
    assert!(
        soon.reason.starts_with(&format!(
            "Invalid expiration: expiration of {} must be at least 60 seconds in the future",
            now + 30
        )),
        "{soon:?}"
    );
    kv.send(&kv.put("k", "&expiration=soon", None, Body::Sized(b"v")))
        .await
        .assert_refused(
            400,
            "Invalid expiration: expiration must be a whole number of seconds, got \"soon\"",
        );
    kv.send(&kv.get("k", Some(5))).await.assert_refused(
        400,
        "Invalid parameter: cache_ttl must be at least 30 seconds, got 5",
    );
    kv.send(&raw("/k?urlencoded=true&cache_ttl=abc"))
        .await
        .assert_refused(
            400,
            "Invalid parameter: cache_ttl must be a whole number, got \"abc\"",
        );

    // Metadata.
    let big = format!(r#"{{"m":"{}"}}"#, "x".repeat(1020));
    kv.send(&kv.put("k", "", Some(&big), Body::Sized(b"v")))
        .await
        .assert_refused(413, "Metadata length of 1028 exceeds limit of 1024");
    let bad = kv
        .send(&kv.put("k", "", Some("{nope"), Body::Sized(b"v")))
        .await;
    assert_eq!(bad.status, 400, "{bad:?}");
    assert!(
        bad.reason
            .starts_with("Invalid metadata: metadata is not valid JSON"),
        "{bad:?}"
    );

    // Values: a declared length over 25 MiB is refused before any of the body is sent.
    let mut stream = TcpStream::connect(&addrs[0]).await.unwrap();
    let head = String::from_utf8(kv.put_bytes("huge", b""))
        .unwrap()
        .replace("Content-Length: 0\r\n", "Content-Length: 26214401\r\n");
    stream.write_all(head.as_bytes()).await.unwrap();
    read_answer(&mut stream)
        .await
        .assert_refused(413, "Value length of 26214401 exceeds limit of 26214400");
    drop(stream);
    // A chunked value is refused as it passes 25 MiB: the answer comes while the body is
    // still unfinished, so the node never held more than the limit of it.
    let mut stream = TcpStream::connect(&addrs[0]).await.unwrap();
    let mut head = kv.put("huge", "", None, Body::Chunked(&[]));
    head.truncate(head.len() - b"0\r\n\r\n".len());
    stream.write_all(&head).await.unwrap();
    let mebibyte = vec![b'x'; 1 << 20];
    for _ in 0..26 {
        stream.write_all(b"100000\r\n").await.unwrap();
        stream.write_all(&mebibyte).await.unwrap();
        stream.write_all(b"\r\n").await.unwrap();
    }
    read_answer(&mut stream).await.assert_refused(
        413,
        "Value length exceeds limit of 26214400: the streamed value passed it",
    );
    // The rest of the refused body is read and thrown away: the connection then serves the
    // next request, and nothing was stored.
    stream.write_all(b"0\r\n\r\n").await.unwrap();
    stream.write_all(&kv.get("huge", None)).await.unwrap();
    read_answer(&mut stream)
        .await
        .assert_refused(404, "Not Found");

    // Listing parameters.
    for (limit, shown) in [("0", "0"), ("1001", "1001"), ("abc", "abc")] {
        kv.send(&raw(&format!("/?key_count_limit={limit}")))
            .await
            .assert_refused(400, &format!("Invalid parameter: key_count_limit must be a whole number from 1 to 1000, got \"{shown}\""));
    }
    kv.send(&kv.list(None, Some(&"p".repeat(513)), None))
        .await
        .assert_refused(414, too_long);
    kv.send(&kv.list(None, None, Some("not a cursor")))
        .await
        .assert_refused(400, "Invalid cursor: the cursor is malformed");
    for i in 0..3 {
        kv.send(&kv.put(&format!("p{i}"), "", None, Body::Sized(b"v")))
            .await
            .assert_ok_empty();
    }
    let first = kv.send(&kv.list(Some(1), Some("p"), None)).await.json();
    let cursor = first["cursor"].as_str().expect("a cursor");
    kv.send(&kv.list(None, Some("q"), Some(cursor)))
        .await
        .assert_refused(
            400,
            "Invalid cursor: the cursor was issued for prefix \"p\", not \"q\"",
        );

    // Bulk gets.
    kv.send(&kv.bulk_get(&json!({"keys": []})))
        .await
        .assert_refused(400, "Invalid parameter: a bulk get needs at least 1 key");
    let many: Vec<String> = (0..101).map(|i| format!("k{i}")).collect();
    kv.send(&kv.bulk_get(&json!({"keys": many})))
        .await
        .assert_refused(400, "Bulk request has 101 items; the limit is 100");
    kv.send(&kv.bulk_get(&json!({"keys": ["p0"], "type": "arrayBuffer"})))
        .await
        .assert_refused(
            400,
            "Invalid parameter: type must be 'text' or 'json', got \"arrayBuffer\"",
        );
    let not_json = kv
        .send(&kv.bulk_get(&json!({"keys": ["p0"], "type": "json"})))
        .await;
    assert_eq!(not_json.status, 400, "{not_json:?}");
    assert!(
        not_json
            .reason
            .starts_with("Invalid parameter: the value of key \"p0\" is not valid JSON"),
        "{not_json:?}"
    );
    kv.send(&kv.bulk_get(&json!({"keys": ["p0", ""]})))
        .await
        .assert_refused(
            400,
            "Item 1 (key \"\"): invalid key: key names must not be empty",
        );
    kv.send(&kv.bulk_get(&json!({"keys": ["p0"], "cacheTtl": "5"})))
        .await
        .assert_refused(
            400,
            "Invalid parameter: cache_ttl must be at least 30 seconds, got 5",
        );
    kv.send(&kv.bulk_get(&json!({"keys": ["p0"], "cacheTtl": "soon"})))
        .await
        .assert_refused(
            400,
            "Invalid parameter: cacheTtl must be a whole number of seconds, got \"soon\"",
        );
    let garbled = kv
        .send(&kv.request(
            "POST",
            "/bulk/get",
            "https://fake-host/bulk/get",
            &[],
            Body::Sized(b"{keys"),
        ))
        .await;
    assert_eq!(garbled.status, 400, "{garbled:?}");
    assert!(
        garbled
            .reason
            .starts_with("Could not parse request body: invalid JSON"),
        "{garbled:?}"
    );
    // Values over 25 MiB together.
    let half = vec![b'h'; 13 << 20];
    for key in ["half 1", "half 2"] {
        kv.send(&kv.put_bytes(key, &half)).await.assert_ok_empty();
    }
    kv.send(&kv.bulk_get(&json!({"keys": ["half 1", "half 2"]})))
        .await
        .assert_refused(
            413,
            "Total size of the values exceeds the limit of 26214400 bytes",
        );

    // The per-key write limit: two writes of one key at the same moment, one refused. (Sent
    // together, so that a slow machine cannot space them a second apart.)
    let (first, second) = (
        kv.put("twice", "", None, Body::Sized(b"1")),
        kv.put("twice", "", None, Body::Sized(b"2")),
    );
    let (a, b) = tokio::join!(kv.send(&first), kv.send(&second));
    let (accepted, refused) = if a.status == 429 { (b, a) } else { (a, b) };
    accepted.assert_ok_empty();
    refused.assert_refused(
        429,
        "Too Many Requests: key \"twice\" is written more than once per second; try again in 1 s",
    );

    // The namespace: none named, not an id, not there (400 even for a get, where a 404
    // would read as a missing key).
    let mut headless = kv.get("p0", None);
    let text = String::from_utf8(headless.clone()).unwrap();
    let without = text.replace(&format!("X-Driftkv-Namespace: {ns}\r\n"), "");
    headless.clear();
    headless.extend_from_slice(without.as_bytes());
    kv.send(&headless).await.assert_refused(
        400,
        "Missing X-Driftkv-Namespace header: inject it with the namespace id in the workerd config (injectRequestHeaders)",
    );
    let elsewhere = Binding::new(&addrs[0], "not-an-id");
    elsewhere
        .send(&elsewhere.get("p0", None))
        .await
        .assert_refused(
            400,
            "X-Driftkv-Namespace \"not-an-id\" is not a namespace id (32 hex digits)",
        );
    let unknown = Binding::new(&addrs[0], "0123456789abcdef0123456789abcdef");
    for request in [
        unknown.get("p0", None),
        unknown.put("p0", "", None, Body::Sized(b"v")),
        unknown.delete("p0"),
        unknown.list(None, None, None),
        unknown.bulk_get(&json!({"keys": ["p0"]})),
    ] {
        unknown.send(&request).await.assert_refused(
            400,
            "KV namespace 0123456789abcdef0123456789abcdef not found (X-Driftkv-Namespace)",
        );
    }

    // Still serving, with its data.
    let got = kv.send(&kv.get("p0", None)).await;
    assert_eq!((got.status, got.body.as_slice()), (200, b"v".as_slice()));
    let health = http
        .get(format!("{}/healthz", cluster.edges[0]))
        .send()
        .await
        .unwrap();
    assert_eq!(health.status(), 200);
}

/// With API tokens the binding requires one, as the REST API does; a missing or wrong token
/// is refused before the namespace is even looked at; a public address without tokens
/// refuses to start; the listener stops with the node.
#[tokio::test(flavor = "multi_thread")]
async fn tokens_guard_the_binding() {
    let tmp = tempfile::tempdir().unwrap();
    let refused = Server::start_in(tmp.path(), &[("DRIFTKV_WORKERD__LISTEN", "0.0.0.0:0")])
        .err()
        .expect("must not start");
    assert!(
        refused.contains("refusing to serve the workerd binding on 0.0.0.0:0 in plain text"),
        "{refused}"
    );
    // Encrypted but without tokens: refused too.
    let secrets = tempfile::tempdir().unwrap();
    let dir = secrets.path().to_str().unwrap();
    for args in [
        vec!["certs", "init", "--dir", dir],
        vec![
            "certs", "issue", "--dir", dir, "--node", "edge", "--role", "edge",
        ],
    ] {
        let made = std::process::Command::new(env!("CARGO_BIN_EXE_driftkv"))
            .args(args)
            .output()
            .unwrap();
        assert!(made.status.success(), "{made:?}");
    }
    let (cert, key) = (format!("{dir}/edge.pem"), format!("{dir}/edge.key"));
    let refused = Server::start_in(
        tmp.path(),
        &[
            ("DRIFTKV_WORKERD__LISTEN", "0.0.0.0:0"),
            ("DRIFTKV_HTTPS__CERT", &cert),
            ("DRIFTKV_HTTPS__KEY", &key),
        ],
    )
    .err()
    .expect("must not start");
    assert!(
        refused.contains("workerd.listen: refusing to serve on 0.0.0.0:0 without API tokens"),
        "{refused}"
    );

    let token = "binding-token-3c5e7a9b1d2f4e6a8c0b2d4f6a8c";
    let server = Server::start_in(tmp.path(), &[("DRIFTKV_API_TOKENS", token)]).expect("starts");
    let http = client();
    let auth = format!("Bearer {token}");
    let created = send_ok(
        http.post(server.api())
            .header("Authorization", &auth)
            .json(&json!({"title": "guarded"})),
    )
    .await;
    let ns = created["result"]["id"].as_str().unwrap().to_owned();
    let view: Value = http
        .get(format!("{}/cluster", server.base))
        .header("Authorization", &auth)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let addr = common::binding_address(&view);

    let anonymous = Binding::new(&addr, &ns);
    let mut wrong = anonymous.clone();
    wrong.token = Some("wrong".into());
    let mut right = anonymous.clone();
    right.token = Some(token.into());
    let missing = "Authentication error: missing credentials: send 'Authorization: Bearer <token>'";
    let invalid = "Authentication error: invalid API token";
    anonymous
        .send(&anonymous.get("k", None))
        .await
        .assert_refused(401, missing);
    anonymous
        .send(&anonymous.put("k", "", None, Body::Sized(b"v")))
        .await
        .assert_refused(401, missing);
    wrong
        .send(&wrong.list(None, None, None))
        .await
        .assert_refused(403, invalid);
    wrong
        .send(&wrong.delete("k"))
        .await
        .assert_refused(403, invalid);
    // No probing for namespaces without a valid token.
    let mut stranger = wrong.clone();
    stranger.namespace = "0123456789abcdef0123456789abcdef".into();
    stranger
        .send(&stranger.get("k", None))
        .await
        .assert_refused(403, invalid);
    stranger.token = Some(token.into());
    stranger
        .send(&stranger.get("k", None))
        .await
        .assert_refused(
            400,
            "KV namespace 0123456789abcdef0123456789abcdef not found (X-Driftkv-Namespace)",
        );

    right
        .send(&right.put("k", "", None, Body::Sized(b"guarded value")))
        .await
        .assert_ok_empty();
    let got = right.send(&right.get("k", None)).await;
    assert_eq!(
        (got.status, got.body.as_slice()),
        (200, b"guarded value".as_slice())
    );
    // SIGTERM: both listeners drain and the process exits cleanly.
    server.stop();
    assert!(
        TcpStream::connect(&addr).await.is_err(),
        "the binding still listens"
    );
}
