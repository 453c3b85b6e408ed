//! Every KV route's success envelope against the table of Cloudflare's documented shapes in
//! `tests/compat/envelopes.json`: field by field, `null` against `{}` against absent, so that
//! clients that decode Cloudflare's answers strictly decode driftkv's too.

mod common;

use std::collections::BTreeSet;

use common::{client, create_namespace, encode_key, Server};
use reqwest::multipart::{Form, Part};
use serde_json::{json, Map, Value};

/// Why `value` does not have `shape`, or `None` when it does; `at` names where it is.
fn mismatch(value: Option<&Value>, shape: &Value, at: &str) -> Option<String> {
    let wrong = |what: &str| Some(format!("{at}: expected {what}, found {value:?}"));
    match shape {
        Value::String(kind) => match (kind.as_str(), value) {
            ("absent", None) => None,
            ("absent", Some(_)) => wrong("no field"),
            (_, None) => wrong(kind),
            ("any", Some(_)) => None,
            ("null", Some(Value::Null))
            | ("string", Some(Value::String(_)))
            | ("number", Some(Value::Number(_)))
            | ("boolean", Some(Value::Bool(_))) => None,
            _ => wrong(kind),
        },
        Value::Array(items) if items.first() == Some(&json!("oneof")) => {
            let reasons: Vec<String> = items[1..]
                .iter()
                .filter_map(|alternative| mismatch(value, alternative, at))
                .collect();
            (reasons.len() == items.len() - 1).then(|| reasons.join(" / "))
        }
        Value::Array(items) => {
            let Some(Value::Array(elements)) = value else {
                return wrong("an array");
            };
            elements
                .iter()
                .enumerate()
                .find_map(|(i, e)| mismatch(Some(e), &items[0], &format!("{at}[{i}]")))
        }
        Value::Object(fields) => {
            let Some(Value::Object(object)) = value else {
                return wrong("an object");
            };
            if let Some(each) = fields.get("*") {
                return object
                    .iter()
                    .find_map(|(k, v)| mismatch(Some(v), each, &format!("{at}.{k}")));
            }
            object_mismatch(object, fields, at)
        }
        other => (value != Some(other)).then(|| format!("{at}: expected {other}, found {value:?}")),
    }
}

/// Every field `fields` names is there (unless optional) with its shape, and nothing else is.
fn object_mismatch(
    object: &Map<String, Value>,
    fields: &Map<String, Value>,
    at: &str,
) -> Option<String> {
    let mut known = BTreeSet::new();
    for (name, shape) in fields {
        let (name, optional) = match name.strip_prefix('?') {
            Some(name) => (name, true),
            None => (name.as_str(), false),
        };
        known.insert(name);
        match object.get(name) {
            None if optional => {}
            found => {
                if let Some(reason) = mismatch(found, shape, &format!("{at}.{name}")) {
                    return Some(reason);
                }
            }
        }
    }
    object
        .keys()
        .find(|k| !known.contains(k.as_str()))
        .map(|extra| format!("{at}: unexpected field {extra:?}"))
}

/// Checks one answer against the table's entry for `route`.
fn check(table: &Value, route: &str, body: &Value, seen: &mut BTreeSet<String>) {
    let entry = &table["routes"][route];
    assert!(entry.is_object(), "no table entry for {route:?}");
    let mut expected = table["envelope"].as_object().unwrap().clone();
    expected.insert("result".into(), entry["result"].clone());
    let object = body
        .as_object()
        .unwrap_or_else(|| panic!("{route}: {body}"));
    // The envelope without result_info, then result_info on its own: absent or its shape.
    let mut envelope = object.clone();
    let info = envelope.remove("result_info");
    if let Some(reason) = object_mismatch(&envelope, &expected, route) {
        panic!("{reason}\nbody: {body}");
    }
    if let Some(reason) = mismatch(
        info.as_ref(),
        &entry["result_info"],
        &format!("{route}.result_info"),
    ) {
        panic!("{reason}\nbody: {body}");
    }
    seen.insert(route.to_owned());
}

async fn json(request: reqwest::RequestBuilder) -> Value {
    let response = request.send().await.expect("request sent");
    let status = response.status();
    let body: Value = response.json().await.expect("a JSON body");
    assert_eq!(status, 200, "{body}");
    body
}

#[tokio::test(flavor = "multi_thread")]
async fn every_success_envelope_has_cloudflares_shape() {
    let table: Value = serde_json::from_str(include_str!("compat/envelopes.json")).unwrap();
    let mut seen = BTreeSet::new();
    let server = Server::start();
    let http = client();
    let api = server.api();

    let created = json(http.post(&api).json(&json!({ "title": "shapes" }))).await;
    check(&table, "create namespace", &created, &mut seen);
    let id = created["result"]["id"].as_str().unwrap().to_owned();
    create_namespace(&http, &server, "shapes-2").await;
    let ns = format!("{api}/{id}");
    let listed = json(http.get(&api).query(&[("per_page", "1")])).await;
    check(&table, "list namespaces", &listed, &mut seen);
    check(
        &table,
        "get namespace",
        &json(http.get(&ns)).await,
        &mut seen,
    );
    let renamed = json(http.put(&ns).json(&json!({ "title": "shapes-renamed" }))).await;
    check(&table, "rename namespace", &renamed, &mut seen);
    assert_eq!(renamed["result"]["title"], "shapes-renamed");

    let value = |key: &str| format!("{ns}/values/{}", encode_key(key));
    let written = json(http.put(value("plain")).body("v")).await;
    check(&table, "write value", &written, &mut seen);
    let form = Form::new()
        .part("value", Part::bytes(b"w".to_vec()).file_name("upload"))
        .text("metadata", r#"{"n":1}"#);
    let with_metadata = json(
        http.put(value("meta"))
            .query(&[("expiration_ttl", "600")])
            .multipart(form),
    )
    .await;
    check(
        &table,
        "write value with metadata",
        &with_metadata,
        &mut seen,
    );
    let metadata = json(http.get(format!("{ns}/metadata/meta"))).await;
    check(&table, "read metadata", &metadata, &mut seen);
    assert_eq!(metadata["result"], json!({"n": 1}));
    let keys = json(http.get(format!("{ns}/keys"))).await;
    check(&table, "list keys", &keys, &mut seen);
    assert!(keys["result"][0]["expiration"].is_number(), "{keys}");

    let bulk = json(
        http.put(format!("{ns}/bulk"))
            .json(&json!([{ "key": "b", "value": "x" }])),
    )
    .await;
    check(&table, "bulk write", &bulk, &mut seen);
    let get = json(
        http.post(format!("{ns}/bulk/get"))
            .json(&json!({ "keys": ["b", "missing"], "type": "text" })),
    )
    .await;
    check(&table, "bulk get", &get, &mut seen);
    let get = json(
        http.post(format!("{ns}/bulk/get"))
            .json(&json!({ "keys": ["meta", "missing"], "withMetadata": true })),
    )
    .await;
    check(&table, "bulk get with metadata", &get, &mut seen);
    let deleted = json(http.post(format!("{ns}/bulk/delete")).json(&json!(["b"]))).await;
    check(&table, "bulk delete", &deleted, &mut seen);
    let deleted = json(http.delete(format!("{ns}/bulk")).json(&json!(["meta"]))).await;
    check(&table, "bulk delete, older form", &deleted, &mut seen);
    check(
        &table,
        "delete value",
        &json(http.delete(value("plain"))).await,
        &mut seen,
    );
    check(
        &table,
        "delete namespace",
        &json(http.delete(&ns)).await,
        &mut seen,
    );

    let listed: BTreeSet<String> = table["routes"]
        .as_object()
        .unwrap()
        .keys()
        .cloned()
        .collect();
    assert_eq!(seen, listed, "every route of the table is exercised");
}

/// The checker itself must tell the shapes apart, or the test above could pass on anything.
#[test]
fn the_shape_checker_tells_null_from_empty_and_absent() {
    assert!(mismatch(Some(&json!(null)), &json!("null"), "r").is_none());
    assert!(mismatch(Some(&json!({})), &json!("null"), "r").is_some());
    assert!(mismatch(None, &json!("absent"), "r").is_none());
    assert!(mismatch(Some(&json!({})), &json!("absent"), "r").is_some());
    let namespace = json!({"id": "string", "?supports_url_encoding": "boolean"});
    assert!(mismatch(Some(&json!({"id": "a"})), &namespace, "r").is_none());
    assert!(mismatch(Some(&json!({"id": "a", "extra": 1})), &namespace, "r").is_some());
    assert!(mismatch(
        Some(&json!({"supports_url_encoding": true})),
        &namespace,
        "r"
    )
    .is_some());
    let values = json!({"*": ["oneof", "string", "null"]});
    assert!(mismatch(Some(&json!({"a": "x", "b": null})), &values, "r").is_none());
    assert!(mismatch(Some(&json!({"a": 1})), &values, "r").is_some());
    assert!(mismatch(Some(&json!([{"id": 1}])), &json!([{"id": "string"}]), "r").is_some());
}
