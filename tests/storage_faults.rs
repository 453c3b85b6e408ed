//! Storage faults against the real binary, on a small tmpfs the test mounts (it needs root, or
//! `sudo -n`): free space under `storage.min_free_bytes` and a filesystem that is really full
//! give clear 507 errors (code 10054) and a `/readyz` that says why the node is not ready; no
//! acknowledged write is lost; once space is back the node takes writes again without a
//! restart.

mod common;

use std::fs::File;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::{client, send_err, send_ok, wait_for, Server};
use serde_json::Value;

/// A tmpfs of a given size, unmounted when dropped.
struct Tmpfs {
    dir: tempfile::TempDir,
}

impl Tmpfs {
    /// Mounts a tmpfs of `mib` MiB; `None` (with the reason printed) where this process may
    /// not mount.
    fn mount(mib: u64) -> Option<Tmpfs> {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().to_str().expect("a UTF-8 path").to_owned();
        // Owned by this user even when mounted through sudo, so the node can write to it.
        let id = |flag: &str| {
            let out = Command::new("id").arg(flag).output().expect("id runs");
            String::from_utf8(out.stdout).unwrap().trim().to_owned()
        };
        let options = format!("size={mib}m,mode=0700,uid={},gid={}", id("-u"), id("-g"));
        let args = ["-t", "tmpfs", "-o", &options, "tmpfs", &path];
        let direct = Command::new("mount").args(args).output();
        let mounted = match direct {
            Ok(out) if out.status.success() => true,
            _ => Command::new("sudo")
                .arg("-n")
                .arg("mount")
                .args(args)
                .output()
                .is_ok_and(|out| out.status.success()),
        };
        if !mounted {
            eprintln!(
                "cannot mount a tmpfs here (needs root or sudo -n): storage fault tests skipped"
            );
            return None;
        }
        Some(Tmpfs { dir })
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let path = self.dir.path().to_owned();
        let unmounted = Command::new("umount")
            .arg(&path)
            .status()
            .is_ok_and(|s| s.success())
            || Command::new("sudo")
                .args(["-n", "umount"])
                .arg(&path)
                .status()
                .is_ok_and(|s| s.success());
        assert!(
            unmounted || std::thread::panicking(),
            "cannot unmount {path:?}"
        );
    }
}

/// Bytes free for an unprivileged writer on the filesystem of `path` (`stat -f`).
fn free_bytes(path: &Path) -> u64 {
    let out = Command::new("stat")
        .args(["-f", "-c", "%a %S"])
        .arg(path)
        .output()
        .expect("stat runs");
    let text = String::from_utf8(out.stdout).unwrap();
    let mut numbers = text.split_whitespace().map(|n| n.parse::<u64>().unwrap());
    numbers.next().unwrap() * numbers.next().unwrap()
}

/// Fills the filesystem of `dir` with a file until `leave` bytes are free, or until it is full
/// when `leave` is 0; returns the file.
fn fill(dir: &Path, leave: u64) -> PathBuf {
    let path = dir.join("filler");
    let mut file = File::create(&path).unwrap();
    let chunk = vec![0xA5u8; 64 * 1024];
    loop {
        let free = free_bytes(dir);
        if leave > 0 && free <= leave {
            break;
        }
        let want = if leave == 0 {
            chunk.len()
        } else {
            chunk.len().min((free - leave) as usize)
        };
        match file.write(&chunk[..want]) {
            Ok(0) => break,
            Ok(_) => {}
            Err(e) if e.raw_os_error() == Some(28) => break, // ENOSPC
            Err(e) => panic!("filling {dir:?}: {e}"),
        }
    }
    file.sync_all().ok();
    path
}

/// `GET /readyz`: the status and body.
async fn readyz(http: &reqwest::Client, base: &str) -> (u16, Value) {
    let response = http.get(format!("{base}/readyz")).send().await.unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap())
}

/// The `driftkv_store_ready` series of `GET /metrics`: each node's value.
async fn store_ready(http: &reqwest::Client, base: &str) -> Vec<u8> {
    let text = http
        .get(format!("{base}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    text.lines()
        .filter(|l| l.starts_with("driftkv_store_ready{"))
        .map(|l| l.rsplit(' ').next().unwrap().parse().unwrap())
        .collect()
}

/// Writes `key` = `value`, expecting success.
async fn put(http: &reqwest::Client, ns: &str, key: &str, value: &str) {
    send_ok(
        http.put(format!("{ns}/values/{key}"))
            .body(value.to_owned()),
    )
    .await;
}

/// Every acknowledged write reads back with its value.
async fn assert_all_there(http: &reqwest::Client, ns: &str, acknowledged: &[(String, String)]) {
    for (key, value) in acknowledged {
        let response = http.get(format!("{ns}/values/{key}")).send().await.unwrap();
        assert_eq!(response.status(), 200, "acknowledged {key} is gone");
        assert_eq!(&response.text().await.unwrap(), value, "{key}");
    }
}

async fn start(data: &Path, engine: &str, min_free: u64) -> (Server, reqwest::Client, String) {
    let min_free = min_free.to_string();
    let env = [
        ("DRIFTKV_STORAGE__ENGINE", engine),
        ("DRIFTKV_STORAGE__MIN_FREE_BYTES", min_free.as_str()),
        ("DRIFTKV_STORAGE__PROBE_INTERVAL_MS", "100"),
    ];
    let server = Server::start_in(data, &env).expect("starts on the tmpfs");
    let http = client();
    let ns = common::namespace_url(&http, &server, "faults").await;
    (server, http, ns)
}

/// Free space under the threshold: writes refused with 507 before the engine meets a full
/// disk, `/readyz` not ready saying why, reads go on; space freed, writes resume. On each
/// engine.
#[tokio::test(flavor = "multi_thread")]
async fn writes_are_refused_under_the_free_space_threshold_and_resume_when_space_returns() {
    for engine in ["fjall", "sled"] {
        under_threshold(engine).await;
    }
}

async fn under_threshold(engine: &str) {
    let Some(tmpfs) = Tmpfs::mount(96) else {
        return;
    };
    let data = tmpfs.path().join("data");
    let min_free: u64 = 32 * 1024 * 1024;
    let (server, http, ns) = start(&data, engine, min_free).await;
    let mut acknowledged = Vec::new();
    for i in 0..20 {
        let (key, value) = (format!("k{i}"), format!("value {i}"));
        put(&http, &ns, &key, &value).await;
        acknowledged.push((key, value));
    }
    let (status, body) = readyz(&http, &server.base).await;
    assert_eq!(status, 200, "{body}");

    let filler = fill(tmpfs.path(), min_free / 2);
    let refused = send_err(
        http.put(format!("{ns}/values/late")).body("late"),
        507,
        10054,
    )
    .await;
    let message = refused["errors"][0]["message"].as_str().unwrap();
    assert!(message.contains("storage.min_free_bytes"), "{refused}");
    // Bulk writes and namespace changes go through the same storage.
    send_err(
        http.put(format!("{ns}/bulk"))
            .json(&serde_json::json!([{"key": "b", "value": "b"}])),
        507,
        10054,
    )
    .await;
    let body = wait_for(Duration::from_secs(10), "/readyz not ready", || async {
        let (status, body) = readyz(&http, &server.base).await;
        (status == 503).then_some(body)
    })
    .await;
    assert_eq!(body["ready"], false, "{body}");
    let reason = body["reason"].as_str().unwrap();
    assert!(reason.contains("storage.min_free_bytes"), "{body}");
    assert!(body["storage"]["free_bytes"].as_u64().unwrap() < min_free);
    let ready = store_ready(&http, &server.base).await;
    assert!(
        !ready.is_empty() && ready.iter().all(|r| *r == 0),
        "{ready:?}"
    );
    assert_all_there(&http, &ns, &acknowledged).await;
    let missing = http.get(format!("{ns}/values/late")).send().await.unwrap();
    assert_eq!(
        missing.status(),
        404,
        "{engine}: a refused write was stored"
    );

    std::fs::remove_file(filler).unwrap();
    wait_for(Duration::from_secs(10), "/readyz ready again", || async {
        (readyz(&http, &server.base).await.0 == 200).then_some(())
    })
    .await;
    put(&http, &ns, "late", "late").await;
    acknowledged.push(("late".into(), "late".into()));
    let ready = store_ready(&http, &server.base).await;
    assert!(
        !ready.is_empty() && ready.iter().all(|r| *r == 1),
        "{ready:?}"
    );
    assert_all_there(&http, &ns, &acknowledged).await;
    server.stop();
}

/// A filesystem that is really full, with the threshold off: the engine's `ENOSPC` comes back
/// as 507, `/readyz` reports the I/O error, acknowledged writes stay; once space is back the
/// health probe's canary gets through and the node is ready and takes writes again, no
/// restart. fjall only: sled 0.34 blocks for good in its flush once a write has met a full
/// disk (the write times out), which `storage.min_free_bytes` exists to keep it from.
#[tokio::test(flavor = "multi_thread")]
async fn a_full_disk_gives_clear_errors_and_the_node_recovers_when_space_returns() {
    let engine = "fjall";
    let Some(tmpfs) = Tmpfs::mount(64) else {
        return;
    };
    let data = tmpfs.path().join("data");
    let (server, http, ns) = start(&data, engine, 0).await;
    let mut acknowledged = Vec::new();
    for i in 0..20 {
        let (key, value) = (format!("k{i}"), format!("value {i}"));
        put(&http, &ns, &key, &value).await;
        acknowledged.push((key, value));
    }

    let filler = fill(tmpfs.path(), 0);
    // Values large enough that the engine must find room for them.
    let big = "x".repeat(256 * 1024);
    let mut refused = None;
    for i in 0..20 {
        let response = http
            .put(format!("{ns}/values/full{i}"))
            .body(big.clone())
            .send()
            .await
            .unwrap();
        let status = response.status().as_u16();
        let body: Value = response.json().await.unwrap();
        match status {
            200 => acknowledged.push((format!("full{i}"), big.clone())),
            _ => {
                refused = Some((status, body));
                break;
            }
        }
    }
    let (status, body) = refused.expect("a write to a full disk failed");
    assert_eq!(status, 507, "{engine}: {body}");
    assert_eq!(body["errors"][0]["code"], 10054, "{body}");
    let body = wait_for(Duration::from_secs(10), "/readyz not ready", || async {
        let (status, body) = readyz(&http, &server.base).await;
        (status == 503).then_some(body)
    })
    .await;
    let reason = body["reason"].as_str().unwrap();
    assert!(reason.contains("storage I/O failed"), "{engine}: {body}");
    // The writes after the failure meet an engine that refuses all writes (fjall poisons its
    // database) or one the probe is opening again: still 507 for want of space (or 503 with
    // Retry-After while it is reopened), never 500 "fjall failed: Poisoned". Found by review.
    for i in 0..3 {
        let response = http
            .put(format!("{ns}/values/after-full{i}"))
            .body("small")
            .send()
            .await
            .unwrap();
        let status = response.status().as_u16();
        let retry_after = response.headers().contains_key("retry-after");
        let body: Value = response.json().await.unwrap();
        match status {
            507 => assert_eq!(body["errors"][0]["code"], 10054, "{body}"),
            503 => {
                assert_eq!(body["errors"][0]["code"], 10050, "{body}");
                assert!(retry_after, "503 without Retry-After: {body}");
            }
            other => panic!("{engine}: a write after the disk filled got {other}: {body}"),
        }
    }
    assert_all_there(&http, &ns, &acknowledged).await;

    std::fs::remove_file(filler).unwrap();
    let last = std::sync::Mutex::new(Value::Null);
    // `dev`'s `/readyz` is its edge's; central's store, in the same process, reopens on its
    // own probe, and `driftkv_store_ready` has both (a write found central's still closed
    // once, under a loaded machine, after the edge's had reopened).
    let waited = tokio::time::timeout(
        Duration::from_secs(20),
        wait_for(Duration::from_secs(30), "/readyz ready again", || async {
            let (status, body) = readyz(&http, &server.base).await;
            *last.lock().unwrap() = body;
            let stores = store_ready(&http, &server.base).await;
            (status == 200 && stores.iter().all(|r| *r == 1)).then_some(())
        }),
    )
    .await;
    assert!(
        waited.is_ok(),
        "{engine}: not ready again: {}",
        last.lock().unwrap()
    );
    put(&http, &ns, "after", "after").await;
    acknowledged.push(("after".into(), "after".into()));
    assert_all_there(&http, &ns, &acknowledged).await;
    server.stop();
}
