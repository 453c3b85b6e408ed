//! The real `driftkv kv` / `driftkv cluster` commands against a real dev server: every command,
//! the error paths, a bulk write larger than one API request, retries of rate-limited keys,
//! and an export/import round trip that must preserve values, metadata and expirations exactly.

mod common;

use std::path::Path;
use std::process::{Command, Output};

use common::Server;
use serde_json::{json, Value};

/// Runs `driftkv ARGS` against `url` with a home directory of its own (so no user config file
/// leaks in), returning its output.
fn driftkv(home: &Path, url: &str, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_driftkv"))
        .args(args)
        .env("HOME", home)
        .env_remove("XDG_CONFIG_HOME")
        .env("DRIFTKV_URL", url)
        .env("DRIFTKV_ACCOUNT_ID", common::ACCOUNT)
        .env_remove("DRIFTKV_API_TOKEN")
        .output()
        .expect("driftkv runs")
}

fn ok(output: Output) -> String {
    assert!(
        output.status.success(),
        "exit {}: {}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).expect("UTF-8 output")
}

/// Asserts a failure reported as one line naming `expected`.
fn fails(output: Output, expected: &str) {
    assert!(!output.status.success(), "succeeded: {output:?}");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(stderr.lines().count(), 1, "not one line: {stderr}");
    assert!(stderr.starts_with("error: "), "{stderr}");
    assert!(stderr.contains(expected), "{stderr} lacks {expected:?}");
}

/// The id of the namespace `kv namespace create ... --json` printed.
fn created(output: Output) -> String {
    json_of(output)["id"].as_str().expect("an id").to_owned()
}

fn json_of(output: Output) -> Value {
    serde_json::from_str(&ok(output)).expect("JSON output")
}

#[test]
fn every_command_against_a_dev_server() {
    let server = Server::start();
    let home = tempfile::tempdir().unwrap();
    let run = |args: &[&str]| driftkv(home.path(), &server.base, args);

    // Namespaces.
    let created = json_of(run(&["kv", "namespace", "create", "shop", "--json"]));
    let id = created["id"].as_str().unwrap().to_owned();
    assert_eq!(created["title"], "shop");
    let line = ok(run(&["kv", "namespace", "create", "other"]));
    assert!(
        line.starts_with("Created namespace \"other\" with id "),
        "{line}"
    );
    let listed = json_of(run(&["kv", "namespace", "list"]));
    let titles: Vec<&str> = listed
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["title"].as_str().unwrap())
        .collect();
    assert_eq!(titles.len(), 2);
    assert!(titles.contains(&"shop") && titles.contains(&"other"));
    let renamed = json_of(run(&[
        "kv",
        "namespace",
        "rename",
        "--namespace-id",
        &id,
        "store",
        "--json",
    ]));
    assert_eq!(renamed["title"], "store");
    fails(
        run(&["kv", "namespace", "rename", "--namespace-id", &id, "other"]),
        "(code 10014, HTTP 409)",
    );

    // Keys: inline, from a file (binary), with metadata and TTL; read back to stdout and to a
    // file; listed with every page followed.
    let ns = ["--namespace-id", id.as_str()];
    ok(run(
        &[&["kv", "key", "put", "greeting", "hello"][..], &ns].concat()
    ));
    let binary: Vec<u8> = (0..=255u8).rev().chain(0..=255).collect();
    let source = home.path().join("in.bin");
    std::fs::write(&source, &binary).unwrap();
    ok(run(&[
        &[
            "kv",
            "key",
            "put",
            "a b/c?d%e:f!",
            "--path",
            source.to_str().unwrap(),
        ][..],
        &ns,
        &["--metadata", r#"{"kind":"blob"}"#, "--ttl", "3600"],
    ]
    .concat()));
    assert_eq!(
        ok(run(
            &[&["kv", "key", "get", "greeting", "--text"][..], &ns].concat()
        )),
        "hello\n"
    );
    let raw = run(&[&["kv", "key", "get", "a b/c?d%e:f!"][..], &ns].concat());
    assert!(raw.status.success());
    assert_eq!(raw.stdout, binary);
    let target = home.path().join("out.bin");
    ok(run(&[
        &[
            "kv",
            "key",
            "get",
            "a b/c?d%e:f!",
            "--path",
            target.to_str().unwrap(),
        ][..],
        &ns,
    ]
    .concat()));
    assert_eq!(std::fs::read(&target).unwrap(), binary);
    let keys = json_of(run(&[&["kv", "key", "list"][..], &ns].concat()));
    assert_eq!(keys.as_array().unwrap().len(), 2);
    assert_eq!(keys[0]["name"], "a b/c?d%e:f!");
    assert_eq!(keys[0]["metadata"], json!({"kind": "blob"}));
    assert!(keys[0]["expiration"].as_u64().is_some());
    let prefixed = json_of(run(
        &[&["kv", "key", "list", "--prefix", "gr"][..], &ns].concat()
    ));
    assert_eq!(prefixed, json!([{"name": "greeting"}]));
    ok(run(
        &[&["kv", "key", "delete", "greeting"][..], &ns].concat()
    ));
    ok(run(
        &[&["kv", "key", "delete", "greeting"][..], &ns].concat()
    ));
    fails(
        run(&[&["kv", "key", "get", "greeting"][..], &ns].concat()),
        "(code 10009, HTTP 404)",
    );

    // Bulk files in wrangler's formats.
    let items = json!([
        {"key": "b1", "value": "one"},
        {"key": "b2", "value": "dHdv", "base64": true, "metadata": {"n": 2}},
        {"key": "b3", "value": "three", "expiration_ttl": 3600},
    ]);
    let put_file = home.path().join("put.json");
    std::fs::write(&put_file, items.to_string()).unwrap();
    ok(run(&[
        &["kv", "bulk", "put", put_file.to_str().unwrap()][..],
        &ns,
    ]
    .concat()));
    let get_file = home.path().join("get.json");
    std::fs::write(&get_file, json!(["b1", "b2", "missing"]).to_string()).unwrap();
    let got = json_of(run(&[
        &["kv", "bulk", "get", get_file.to_str().unwrap()][..],
        &ns,
    ]
    .concat()));
    assert_eq!(got["b1"]["value"], "one");
    assert_eq!(got["b2"]["value"], "two");
    assert_eq!(got["b2"]["metadata"], json!({"n": 2}));
    assert_eq!(got["missing"], Value::Null);
    let delete_file = home.path().join("delete.json");
    std::fs::write(&delete_file, json!(["b1", "b2"]).to_string()).unwrap();
    let report = json_of(run(&[
        &[
            "kv",
            "bulk",
            "delete",
            delete_file.to_str().unwrap(),
            "--json",
        ][..],
        &ns,
    ]
    .concat()));
    assert_eq!(
        report,
        json!({"succeeded": 2, "failed_keys": [], "retries": 0})
    );
    let keys = json_of(run(
        &[&["kv", "key", "list", "--prefix", "b"][..], &ns].concat()
    ));
    assert_eq!(keys.as_array().unwrap().len(), 1);

    // Cluster status: a table, or JSON.
    let table = ok(run(&["cluster", "status"]));
    assert!(table.starts_with("NODE"), "{table}");
    assert!(
        table.contains("central") && table.contains("edge"),
        "{table}"
    );
    let view = json_of(run(&["cluster", "status", "--json"]));
    assert_eq!(view["members"].as_array().unwrap().len(), 2);

    // Bad input and a bad namespace id are one clear line each.
    fails(
        run(&[
            &["kv", "key", "put", "k", "v", "--metadata", "{nope"][..],
            &ns,
        ]
        .concat()),
        "--metadata is not JSON",
    );
    fails(
        run(&["kv", "key", "list", "--namespace-id", "not-hex"]),
        "(code 7003, HTTP 400)",
    );
    fails(
        run(&[
            "kv",
            "key",
            "list",
            "--namespace-id",
            "0123456789abcdef0123456789abcdef",
        ]),
        "(code 10013, HTTP 404)",
    );
    std::fs::write(&put_file, "{not json").unwrap();
    fails(
        run(&[&["kv", "bulk", "put", put_file.to_str().unwrap()][..], &ns].concat()),
        "is not a JSON array",
    );

    ok(run(&["kv", "namespace", "delete", "--namespace-id", &id]));
    fails(
        run(&["kv", "namespace", "delete", "--namespace-id", &id]),
        "(code 10013, HTTP 404)",
    );
}

#[test]
fn target_comes_from_flags_then_environment_then_config_file() {
    let server = Server::start();
    let home = tempfile::tempdir().unwrap();
    let config = home.path().join(".config/driftkv");
    std::fs::create_dir_all(&config).unwrap();
    std::fs::write(
        config.join("config.toml"),
        format!("url = \"{}\"\naccount_id = \"from-file\"\n", server.base),
    )
    .unwrap();
    let bare = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_driftkv"))
            .args(args)
            .env("HOME", home.path())
            .env_remove("XDG_CONFIG_HOME")
            .env_remove("DRIFTKV_URL")
            .env_remove("DRIFTKV_ACCOUNT_ID")
            .env_remove("DRIFTKV_API_TOKEN")
            .output()
            .unwrap()
    };
    // The file's URL and account.
    ok(bare(&["kv", "namespace", "create", "via-file"]));
    let listed = json_of(bare(&["kv", "namespace", "list"]));
    assert_eq!(listed[0]["title"], "via-file");
    // A flag wins over the file: another account sees nothing.
    let other = json_of(bare(&[
        "kv",
        "namespace",
        "list",
        "--account-id",
        "elsewhere",
    ]));
    assert_eq!(other, json!([]));
    // The environment wins over the file: this URL has no server.
    let output = Command::new(env!("CARGO_BIN_EXE_driftkv"))
        .args(["kv", "namespace", "list"])
        .env("HOME", home.path())
        .env_remove("XDG_CONFIG_HOME")
        .env("DRIFTKV_URL", "http://127.0.0.1:1")
        // Retried for a second (from the environment too), then given up.
        .env("DRIFTKV_RETRY_SECS", "1")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    fails(output, "cannot reach http://127.0.0.1:1");
    assert!(stderr.starts_with("error: gave up after"), "{stderr}");
}

/// 25,000 keys are more than one bulk request may carry: the CLI splits them, with no
/// progress bar when its output is not a terminal.
#[test]
fn a_bulk_write_larger_than_one_request_is_split() {
    let server = Server::start();
    let home = tempfile::tempdir().unwrap();
    let run = |args: &[&str]| driftkv(home.path(), &server.base, args);
    let id = created(run(&["kv", "namespace", "create", "big", "--json"]));
    let items: Vec<Value> = (0..25_000)
        .map(|i| json!({"key": format!("k{i:05}"), "value": format!("v{i}")}))
        .collect();
    let file = home.path().join("big.json");
    std::fs::write(&file, serde_json::to_vec(&items).unwrap()).unwrap();
    let output = run(&[
        "kv",
        "bulk",
        "put",
        file.to_str().unwrap(),
        "--namespace-id",
        &id,
    ]);
    assert!(output.status.success(), "{output:?}");
    assert_eq!(
        String::from_utf8_lossy(&output.stderr),
        "Wrote 25000 keys\n"
    );
    let keys = json_of(run(&["kv", "key", "list", "--namespace-id", &id]));
    let keys = keys.as_array().unwrap();
    assert_eq!(keys.len(), 25_000);
    assert_eq!(keys[24_999]["name"], "k24999");
}

/// With Workers KV's one write per second per key, rewriting keys at once gets some refused;
/// the CLI retries those after a backoff and ends with every key written. Against a server that
/// is down it gives up after its retries, naming the keys, with a failing exit status.
#[test]
fn bulk_writes_retry_refused_keys_and_report_what_still_failed() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start_in(
        dir.path(),
        &[("DRIFTKV_RATE_LIMIT__WRITES_PER_KEY_PER_SECOND", "1")],
    )
    .expect("server starts");
    let home = tempfile::tempdir().unwrap();
    let run = |args: &[&str]| driftkv(home.path(), &server.base, args);
    let id = created(run(&["kv", "namespace", "create", "limited", "--json"]));
    let file = home.path().join("items.json");
    let items: Vec<Value> = (0..50)
        .map(|i| json!({"key": format!("k{i}"), "value": "x"}))
        .collect();
    std::fs::write(&file, serde_json::to_vec(&items).unwrap()).unwrap();
    let put = [
        "kv",
        "bulk",
        "put",
        file.to_str().unwrap(),
        "--namespace-id",
        &id,
        "--json",
    ];
    assert_eq!(
        json_of(run(&put)),
        json!({"succeeded": 50, "failed_keys": [], "retries": 0})
    );
    // At once again: every key is over its limit, so the first try is refused whole and the
    // keys go again after a backoff.
    let again = json_of(run(&put));
    assert_eq!(again["succeeded"], 50);
    assert_eq!(again["failed_keys"], json!([]));
    assert!(again["retries"].as_u64().unwrap() > 0, "{again}");
    let port = server.addr().rsplit(':').next().unwrap().to_owned();
    server.stop();
    let down = [&put[..6], &["--retry-secs", "2"]].concat();
    let down = driftkv(home.path(), &format!("http://127.0.0.1:{port}"), &down);
    fails(down, "50 keys failed after retries");
}

/// Workers KV allows one write per second to a key; the official SDKs retry the 429 that a
/// second write gets, and so does the CLI, waiting as long as `Retry-After` says.
#[test]
fn single_key_writes_in_quick_succession_are_retried() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start_in(
        dir.path(),
        &[("DRIFTKV_RATE_LIMIT__WRITES_PER_KEY_PER_SECOND", "1")],
    )
    .expect("server starts");
    let home = tempfile::tempdir().unwrap();
    let run = |args: &[&str]| driftkv(home.path(), &server.base, args);
    let id = created(run(&["kv", "namespace", "create", "quick", "--json"]));
    let ns = ["--namespace-id", id.as_str()];
    ok(run(&[&["kv", "key", "put", "g", "hello"][..], &ns].concat()));
    ok(run(&[&["kv", "key", "put", "g", "again"][..], &ns].concat()));
    assert_eq!(
        ok(run(&[&["kv", "key", "get", "g"][..], &ns].concat())),
        "again"
    );
    ok(run(&[&["kv", "key", "delete", "g"][..], &ns].concat()));
    fails(
        run(&[&["kv", "key", "get", "g"][..], &ns].concat()),
        "(code 10009, HTTP 404)",
    );
}

/// A server that answers every request with a Cloudflare 429 asking for a one-second wait;
/// returns its URL and the number of requests it has answered.
fn always_rate_limited() -> (String, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
    use std::io::{Read as _, Write as _};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let answered = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let count = answered.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let mut request = Vec::new();
            let mut buf = [0; 4096];
            while !request.windows(4).any(|w| w == b"\r\n\r\n") {
                match stream.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => request.extend_from_slice(&buf[..n]),
                }
            }
            let body = r#"{"success":false,"errors":[{"code":10049,"message":"KV PUT failed: 429 Too Many Requests"}],"messages":[],"result":null}"#;
            let answer = format!(
                "HTTP/1.1 429 Too Many Requests\r\nRetry-After: 1\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
            count.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            let _ = stream.write_all(answer.as_bytes());
        }
    });
    (url, answered)
}

/// Against a server that never stops answering 429, the CLI retries for as long as it is told
/// (waiting the second `Retry-After` asks for between tries), then gives up with one clear line
/// and exit status 1.
#[test]
fn the_cli_gives_up_on_endless_429s_within_its_retry_time() {
    let (url, answered) = always_rate_limited();
    let home = tempfile::tempdir().unwrap();
    let ns = "0123456789abcdef0123456789abcdef";
    let started = std::time::Instant::now();
    let output = driftkv(
        home.path(),
        &url,
        &[
            "kv",
            "key",
            "put",
            "k",
            "v",
            "--namespace-id",
            ns,
            "--retry-secs",
            "3",
        ],
    );
    let took = started.elapsed();
    assert_eq!(output.status.code(), Some(1), "{output:?}");
    fails(output, "gave up after");
    let tries = answered.load(std::sync::atomic::Ordering::SeqCst);
    // One second between tries, three seconds in all: three or four tries, never a burst.
    assert!((2..=4).contains(&tries), "{tries} tries");
    assert!(
        took >= std::time::Duration::from_secs(2) && took < std::time::Duration::from_secs(10),
        "{took:?}"
    );
}

/// Export then import: every value byte for byte, every metadata and expiration, into a
/// namespace recreated under the exported title.
#[test]
fn export_and_import_round_trip_exactly() {
    let server = Server::start();
    let home = tempfile::tempdir().unwrap();
    let run = |args: &[&str]| driftkv(home.path(), &server.base, args);
    let id = created(run(&["kv", "namespace", "create", "precious", "--json"]));
    let mut originals = Vec::new();
    for i in 0..1_500u32 {
        // Bytes that are not UTF-8, of varied lengths.
        let value: Vec<u8> = (0..(i % 300)).map(|j| (i * 31 + j * 7) as u8).collect();
        let path = home.path().join(format!("v{i}"));
        std::fs::write(&path, &value).unwrap();
        let key = format!("key/{i:04} ü");
        let mut args = vec![
            "kv".to_owned(),
            "key".into(),
            "put".into(),
            key.clone(),
            "--path".into(),
            path.display().to_string(),
            "--namespace-id".into(),
            id.clone(),
        ];
        if i % 3 == 0 {
            args.extend(["--metadata".into(), json!({"i": i, "tag": "x"}).to_string()]);
        }
        if i % 5 == 0 {
            args.extend(["--ttl".into(), "86400".into()]);
        }
        // One process per key is slow; only every tenth key goes through the CLI, the rest
        // through a bulk file below, so both write paths are exported.
        if i % 10 == 0 {
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            ok(run(&args));
        }
        originals.push((key, value, i));
    }
    let bulk: Vec<Value> = originals
        .iter()
        .filter(|(_, _, i)| i % 10 != 0)
        .map(|(key, value, i)| {
            let mut item = json!({
                "key": key,
                "value": base64_encode(value),
                "base64": true,
            });
            if i % 3 == 0 {
                item["metadata"] = json!({"i": i, "tag": "x"});
            }
            if i % 5 == 0 {
                item["expiration_ttl"] = json!(86400);
            }
            item
        })
        .collect();
    let bulk_file = home.path().join("bulk.json");
    std::fs::write(&bulk_file, serde_json::to_vec(&bulk).unwrap()).unwrap();
    ok(run(&[
        "kv",
        "bulk",
        "put",
        bulk_file.to_str().unwrap(),
        "--namespace-id",
        &id,
    ]));

    let before = json_of(run(&["kv", "key", "list", "--namespace-id", &id]));
    assert_eq!(before.as_array().unwrap().len(), 1_500);
    let export = home.path().join("precious.ndjson");
    let exported = json_of(run(&[
        "kv",
        "namespace",
        "export",
        "--namespace-id",
        &id,
        export.to_str().unwrap(),
        "--json",
    ]));
    assert_eq!(exported["exported"], 1_500);

    ok(run(&["kv", "namespace", "delete", "--namespace-id", &id]));
    let imported = json_of(run(&[
        "kv",
        "namespace",
        "import",
        export.to_str().unwrap(),
        "--json",
    ]));
    assert_eq!(imported["imported"], 1_500);
    let new_id = imported["namespace_id"].as_str().unwrap().to_owned();
    assert_ne!(new_id, id);
    let listed = json_of(run(&["kv", "namespace", "list"]));
    assert_eq!(listed[0]["title"], "precious");

    // Names, metadata and expirations, exactly.
    let after = json_of(run(&["kv", "key", "list", "--namespace-id", &new_id]));
    assert_eq!(after, before);
    // Values, byte for byte (a sample through `key get`, all through a second export).
    for (key, value, _) in originals.iter().step_by(97) {
        let got = run(&["kv", "key", "get", key, "--namespace-id", &new_id]);
        assert!(got.status.success());
        assert_eq!(&got.stdout, value, "{key}");
    }
    let again = home.path().join("again.ndjson");
    ok(run(&[
        "kv",
        "namespace",
        "export",
        "--namespace-id",
        &new_id,
        again.to_str().unwrap(),
    ]));
    let lines = |path: &Path| -> Vec<String> {
        std::fs::read_to_string(path)
            .unwrap()
            .lines()
            .skip(1)
            .map(str::to_owned)
            .collect()
    };
    assert_eq!(lines(&again), lines(&export));

    // A file that is not an export is refused clearly.
    fails(
        run(&["kv", "namespace", "import", bulk_file.to_str().unwrap()]),
        "is not a driftkv export",
    );
}

fn base64_encode(bytes: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// `driftkv testbed check`: a history that keeps the promises passes with exit 0; one that
/// breaks read-your-writes is reported with the operations involved and exit 1.
#[test]
fn the_history_checker_reports_violations() {
    let dir = tempfile::tempdir().unwrap();
    let lines = |read_value: &str| {
        [
            json!({"kind": "meta", "bound_ms": 1000, "cache_ttl_s": 1, "edges": 2}),
            json!({"kind": "write", "key": "a", "value": "a1", "edge": 0, "invoke_ms": 0, "complete_ms": 1, "ok": true}),
            json!({"kind": "write", "key": "a", "value": "a2", "edge": 1, "invoke_ms": 10, "complete_ms": 11, "ok": true}),
            json!({"kind": "read", "key": "a", "value": read_value, "edge": 1, "invoke_ms": 12, "complete_ms": 13, "ok": true}),
            json!({"kind": "final", "key": "a", "value": "a2", "edge": 0, "invoke_ms": 5000, "complete_ms": 5001, "ok": true}),
            json!({"kind": "final", "key": "a", "value": "a2", "edge": 1, "invoke_ms": 5000, "complete_ms": 5001, "ok": true}),
        ]
        .iter()
        .map(Value::to_string)
        .collect::<Vec<_>>()
        .join("\n")
    };
    let check = |name: &str, text: String| {
        let path = dir.path().join(name);
        std::fs::write(&path, text).unwrap();
        driftkv(
            dir.path(),
            "http://127.0.0.1:1",
            &["testbed", "check", path.to_str().unwrap()],
        )
    };
    let valid = ok(check("valid.jsonl", lines("a2")));
    assert!(
        valid.contains("the history satisfies the consistency model"),
        "{valid}"
    );
    let broken = check("broken.jsonl", lines("a1"));
    assert!(!broken.status.success());
    let report = String::from_utf8_lossy(&broken.stdout);
    assert!(
        report.contains("read-your-writes   1 violations"),
        "{report}"
    );
    assert!(
        report.contains("#2: read \"a\" = \"a1\" at edge 1"),
        "{report}"
    );
    fails(
        check("garbage.jsonl", "not json".into()),
        "is not a history",
    );
}
