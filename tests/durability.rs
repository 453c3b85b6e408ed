//! Data outlives the process: a graceful restart, and a `kill -9` in the middle of a write load.

mod common;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{client, create_namespace, fetch_bytes, send_ok, Server};

#[tokio::test]
async fn data_survives_a_graceful_restart() {
    let tmp = tempfile::tempdir().unwrap();
    let c = client();
    let server = Server::start_in(tmp.path(), &[]).unwrap();
    let id = create_namespace(&c, &server, "persistent").await;
    let ns = format!("{}/{id}", server.api());
    send_ok(
        c.put(format!("{ns}/values/k?expiration_ttl=3600"))
            .body("kept"),
    )
    .await;
    let form = reqwest::multipart::Form::new()
        .part("value", reqwest::multipart::Part::bytes(vec![1u8, 2, 3]))
        .part("metadata", reqwest::multipart::Part::text(r#"{"m":true}"#));
    send_ok(c.put(format!("{ns}/values/meta")).multipart(form)).await;
    send_ok(c.put(format!("{ns}/values/gone")).body("x")).await;
    send_ok(c.delete(format!("{ns}/values/gone"))).await;
    server.stop();

    let server = Server::start_in(tmp.path(), &[]).unwrap();
    let ns = format!("{}/{id}", server.api());
    assert_eq!(
        send_ok(c.get(format!("{}/{id}", server.api()))).await["result"]["title"],
        "persistent"
    );
    let got = c.get(format!("{ns}/values/k")).send().await.unwrap();
    assert!(got.headers().contains_key("expiration"));
    assert_eq!(got.text().await.unwrap(), "kept");
    assert_eq!(
        fetch_bytes(c.get(format!("{ns}/values/meta")))
            .await
            .as_ref(),
        &[1u8, 2, 3]
    );
    assert_eq!(
        send_ok(c.get(format!("{ns}/metadata/meta"))).await["result"]["m"],
        true
    );
    assert_eq!(
        c.get(format!("{ns}/values/gone"))
            .send()
            .await
            .unwrap()
            .status(),
        404
    );
    server.stop();
}

#[tokio::test]
async fn acknowledged_writes_survive_kill_9() {
    let tmp = tempfile::tempdir().unwrap();
    let c = client();
    let mut server = Server::start_in(tmp.path(), &[]).unwrap();
    let id = create_namespace(&c, &server, "crash").await;
    let ns = format!("{}/{id}", server.api());

    // Eight writers put distinct keys as fast as they can; each write counts once it is
    // acknowledged. The loops are bounded, and end early once the server is gone.
    let acked: Arc<Mutex<HashMap<String, String>>> = Arc::default();
    let mut writers = Vec::new();
    for w in 0..8 {
        let (c, ns, acked) = (c.clone(), ns.clone(), acked.clone());
        writers.push(tokio::spawn(async move {
            for i in 0..5000 {
                let key = format!("w{w}/{i:05}");
                let value = format!("value-{w}-{i}");
                match c
                    .put(format!("{ns}/values/{key}"))
                    .body(value.clone())
                    .send()
                    .await
                {
                    Ok(r) if r.status() == 200 => {
                        acked.lock().unwrap().insert(key, value);
                    }
                    _ => return,
                }
            }
        }));
    }
    // Kill mid-load, once a good number of writes have been acknowledged.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while acked.lock().unwrap().len() < 400 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "writes are not being acknowledged"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    server.kill9();
    for w in writers {
        w.await.unwrap();
    }
    let acked = acked.lock().unwrap().clone();

    let server = Server::start_in(tmp.path(), &[]).unwrap();
    let ns = format!("{}/{id}", server.api());
    let mut missing = Vec::new();
    for (key, value) in &acked {
        let got = c.get(format!("{ns}/values/{key}")).send().await.unwrap();
        if got.status() != 200 || got.text().await.unwrap() != *value {
            missing.push(key.clone());
        }
    }
    assert!(
        missing.is_empty(),
        "{} of {} acknowledged writes lost: {:?}",
        missing.len(),
        acked.len(),
        &missing[..missing.len().min(10)]
    );
    server.stop();
}
