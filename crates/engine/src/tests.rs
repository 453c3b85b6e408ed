use std::collections::BTreeSet;

use driftkv_core::key::validate_key;
use driftkv_core::limits::MAX_VALUE_BYTES;
use driftkv_core::service::put;
use driftkv_core::{ListCursor, Record, WriteOp};
use driftkv_store::EngineKind;
use proptest::prelude::*;

use super::*;
use driftkv_core::time::ManualClock;

const T0_MS: u64 = 1_700_000_000_000;

struct Fixture {
    engine: Engine,
    store: Arc<Store>,
    clock: Arc<ManualClock>,
    _dir: tempfile::TempDir,
}

/// An engine on a fresh store, without the per-key rate limit.
fn fixture() -> Fixture {
    fixture_limited(0)
}

fn fixture_limited(writes_per_second: u32) -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(driftkv_store::open(EngineKind::default(), dir.path()).unwrap());
    let clock = Arc::new(ManualClock::new(T0_MS));
    let engine = reopen(&store, &clock, writes_per_second);
    Fixture {
        engine,
        store,
        clock,
        _dir: dir,
    }
}

fn reopen(store: &Arc<Store>, clock: &Arc<ManualClock>, writes_per_second: u32) -> Engine {
    Engine::new(
        store.clone(),
        NonZeroU64::new(1).unwrap(),
        clock.clone(),
        RateLimiter::per_second(writes_per_second),
    )
    .unwrap()
}

fn delete(key: &str) -> Write {
    Write {
        key: key.into(),
        op: WriteOp::Delete,
    }
}

#[tokio::test]
async fn an_account_at_its_namespace_quota_gets_no_more() {
    let f = fixture();
    let engine = reopen(&f.store, &f.clock, 0).with_namespace_quota(2);
    engine.create_namespace("acct", "one").await.unwrap();
    engine.create_namespace("acct", "two").await.unwrap();
    let refused = engine.create_namespace("acct", "three").await.unwrap_err();
    assert!(matches!(refused, KvError::QuotaExceeded(_)), "{refused}");
    assert_eq!((refused.status(), refused.code()), (403, 10053));
    // Another account has its own quota; deleting one makes room again.
    engine.create_namespace("other", "one").await.unwrap();
    let one = engine.list_namespaces("acct").await.unwrap()[0].id;
    engine.delete_namespace("acct", one).await.unwrap();
    engine.create_namespace("acct", "three").await.unwrap();
}

#[tokio::test]
async fn titles_are_unique_per_account() {
    let f = fixture();
    let a = f.engine.create_namespace("acct", "one").await.unwrap();
    assert_eq!(
        f.engine.create_namespace("acct", "one").await,
        Err(KvError::TitleTaken)
    );
    let other = f.engine.create_namespace("other", "one").await.unwrap();
    let b = f.engine.create_namespace("acct", "two").await.unwrap();
    assert_eq!(
        f.engine.rename_namespace("acct", b.id, "one").await,
        Err(KvError::TitleTaken)
    );
    assert_eq!(
        f.engine
            .rename_namespace("acct", a.id, "one")
            .await
            .unwrap()
            .title,
        "one"
    );
    let renamed = f
        .engine
        .rename_namespace("acct", b.id, "three")
        .await
        .unwrap();
    assert_eq!(f.engine.namespace("acct", b.id).await.unwrap(), renamed);
    // Accounts do not see each other's namespaces.
    assert_eq!(
        f.engine.namespace("acct", other.id).await,
        Err(KvError::NamespaceNotFound)
    );
    // Found by id alone, with the account that owns it.
    assert_eq!(f.engine.find_namespace(other.id).await.unwrap(), other);
    assert_eq!(
        f.engine.find_namespace(NamespaceId::random()).await,
        Err(KvError::NamespaceNotFound)
    );
    let mut titles: Vec<_> = f
        .engine
        .list_namespaces("acct")
        .await
        .unwrap()
        .into_iter()
        .map(|n| n.title)
        .collect();
    titles.sort();
    assert_eq!(titles, ["one", "three"]);
}

#[tokio::test]
async fn deleting_a_namespace_deletes_its_keys() {
    let f = fixture();
    let ns = f.engine.create_namespace("acct", "doomed").await.unwrap();
    f.engine
        .write("acct", ns.id, vec![put("k", "v", None, None)])
        .await
        .unwrap();
    f.engine.delete_namespace("acct", ns.id).await.unwrap();
    assert_eq!(
        f.engine.get("acct", ns.id, "k", None).await,
        Err(KvError::NamespaceNotFound)
    );
    assert_eq!(
        f.engine.delete_namespace("acct", ns.id).await,
        Err(KvError::NamespaceNotFound)
    );
    // The title is free again.
    f.engine.create_namespace("acct", "doomed").await.unwrap();
}

#[tokio::test]
async fn writes_read_back_and_deletes_are_idempotent() {
    let f = fixture();
    let ns = f.engine.create_namespace("acct", "n").await.unwrap();
    let outcome = f
        .engine
        .write(
            "acct",
            ns.id,
            vec![
                put("a", &b"\x00\x01"[..], Some(r#"{"m":1}"#.into()), None),
                put("b", "B", None, None),
            ],
        )
        .await
        .unwrap();
    assert_eq!(outcome.successful, 2);
    let a = f
        .engine
        .get("acct", ns.id, "a", None)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (&a.value[..], a.metadata.as_deref()),
        (&b"\x00\x01"[..], Some(r#"{"m":1}"#))
    );
    f.engine
        .write("acct", ns.id, vec![delete("a"), delete("never-existed")])
        .await
        .unwrap();
    f.engine
        .write("acct", ns.id, vec![delete("a")])
        .await
        .unwrap();
    assert_eq!(f.engine.get("acct", ns.id, "a", None).await.unwrap(), None);
    // The later of two writes to one key in a batch wins.
    f.engine
        .write(
            "acct",
            ns.id,
            vec![put("c", "1", None, None), put("c", "2", None, None)],
        )
        .await
        .unwrap();
    assert_eq!(
        &f.engine
            .get("acct", ns.id, "c", None)
            .await
            .unwrap()
            .unwrap()
            .value[..],
        b"2"
    );
}

#[tokio::test]
async fn the_engine_rechecks_limits() {
    let f = fixture();
    let ns = f.engine.create_namespace("acct", "n").await.unwrap();
    let huge = put("k", vec![0u8; MAX_VALUE_BYTES + 1], None, None);
    assert!(matches!(
        f.engine.write("acct", ns.id, vec![huge]).await,
        Err(KvError::ValueTooLarge { .. })
    ));
    let past = put("k", "v", None, Some(T0_MS / 1000 - 1));
    assert!(matches!(
        f.engine.write("acct", ns.id, vec![past]).await,
        Err(KvError::InvalidExpiration(_))
    ));
    assert!(matches!(
        f.engine.write("acct", ns.id, vec![delete("..")]).await,
        Err(KvError::InvalidKey(_))
    ));
    // Nothing of a refused batch is written, even its valid writes.
    let mixed = vec![put("ok", "v", None, None), put("", "v", None, None)];
    assert!(f.engine.write("acct", ns.id, mixed).await.is_err());
    assert_eq!(f.engine.get("acct", ns.id, "ok", None).await.unwrap(), None);
}

#[tokio::test]
async fn expiration_is_exact_at_read_time_and_swept_later() {
    let f = fixture();
    let ns = f.engine.create_namespace("acct", "n").await.unwrap();
    let expires = T0_MS / 1000 + 60;
    f.engine
        .write("acct", ns.id, vec![put("k", "v", None, Some(expires))])
        .await
        .unwrap();
    f.clock.set(expires * 1000 - 1);
    assert!(f
        .engine
        .get("acct", ns.id, "k", None)
        .await
        .unwrap()
        .is_some());
    let listed = first_page(&f.engine, ns.id).await;
    assert_eq!(listed.unwrap().keys[0].expiration, Some(expires));
    f.clock.set(expires * 1000);
    assert_eq!(f.engine.get("acct", ns.id, "k", None).await.unwrap(), None);
    let listed = first_page(&f.engine, ns.id).await;
    assert!(listed.unwrap().keys.is_empty());
    // The record is still stored until the sweeper runs; then only a tombstone remains.
    assert!(f.store.get(ns.id, "k").unwrap().unwrap().live.is_some());
    assert_eq!(sweep(f.store.as_ref(), f.clock.now_ms()).unwrap(), 1);
    assert_eq!(f.store.get(ns.id, "k").unwrap().unwrap().live, None);
}

#[tokio::test]
async fn the_sweeper_task_runs_by_itself() {
    let f = fixture();
    let ns = f.engine.create_namespace("acct", "n").await.unwrap();
    f.engine
        .write(
            "acct",
            ns.id,
            vec![put("k", "v", None, Some(T0_MS / 1000 + 60))],
        )
        .await
        .unwrap();
    f.clock.set(T0_MS + 61_000);
    let sweeper = spawn_sweeper(&f.store, f.clock.clone(), Duration::from_millis(10));
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while f.store.get(ns.id, "k").unwrap().unwrap().live.is_some() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the sweeper never expired the record"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    sweeper.abort();
}

/// The first page of a namespace's keys.
async fn first_page(engine: &Engine, ns: NamespaceId) -> Result<ListPage, KvError> {
    let request = ListRequest {
        prefix: String::new(),
        limit: 10,
        cursor: None,
    };
    engine.list("acct", ns, request).await
}

/// Pages through a namespace with the client-visible cursor text, the way a client would.
async fn list_all(engine: &Engine, ns: NamespaceId, prefix: &str, limit: usize) -> Vec<String> {
    let mut names = Vec::new();
    let mut cursor_text: Option<String> = None;
    loop {
        let cursor = cursor_text
            .as_deref()
            .map(|t| ListCursor::decode(t, ns, prefix).unwrap());
        let page = engine
            .list(
                "acct",
                ns,
                ListRequest {
                    prefix: prefix.into(),
                    limit,
                    cursor,
                },
            )
            .await
            .unwrap();
        assert!(page.keys.len() <= limit);
        names.extend(page.keys.into_iter().map(|k| k.name));
        match page.cursor {
            Some(c) => cursor_text = Some(c.encode()),
            None => return names,
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    /// Paging through random key sets with random page sizes and prefixes returns every live
    /// key exactly once, in byte order, skipping deleted and expired keys.
    #[test]
    fn paging_returns_every_live_key_once_in_order(
        keys in proptest::collection::btree_set("[ab]{0,3}[a-c/é ]{0,4}", 1..150),
        dead in proptest::collection::vec(any::<u8>(), 150),
        limit in 1usize..=40,
        prefix in "[ab]{0,2}",
    ) {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        runtime.block_on(async {
            let f = fixture();
            let ns = f.engine.create_namespace("acct", "n").await.unwrap();
            let keys: Vec<String> = keys.into_iter().filter(|k| validate_key(k).is_ok()).collect();
            let expires = T0_MS / 1000 + 60;
            let mut writes = Vec::new();
            for key in &keys {
                writes.push(put(key.clone(), "v", None, Some(expires)));
            }
            // Some keys are given no expiration, some are deleted, the rest will expire.
            let mut live = BTreeSet::new();
            for (i, key) in keys.iter().enumerate() {
                match dead[i % dead.len()] % 3 {
                    0 => { writes.push(put(key.clone(), "v", None, None)); live.insert(key.clone()); }
                    1 => writes.push(delete(key)),
                    _ => {}
                }
            }
            f.engine.write("acct", ns.id, writes).await.unwrap();
            f.clock.set(expires * 1000);
            let expected: Vec<String> = live.into_iter().filter(|k| k.starts_with(&prefix)).collect();
            let listed = list_all(&f.engine, ns.id, &prefix, limit).await;
            prop_assert_eq!(listed, expected);
            Ok(())
        })?;
    }
}

#[tokio::test]
async fn writes_are_logged_in_order_and_published_once_durable() {
    let f = fixture();
    let durable = f.engine.durable_sequence();
    let ns = f.engine.create_namespace("acct", "log").await.unwrap();
    assert_eq!(*durable.borrow(), 1);
    let results = f
        .engine
        .write_results("acct", ns.id, vec![put("a", "1", None, None), delete("b")])
        .await
        .unwrap();
    let sequences: Vec<u64> = results
        .iter()
        .map(|r| match r {
            WriteResult::Applied { sequence, .. } => *sequence,
            WriteResult::RateLimited { .. } => panic!("no rate limit in this fixture"),
        })
        .collect();
    assert_eq!(sequences, [2, 3]);
    assert_eq!(*durable.borrow(), 3);
    let log = f.store.log_entries(1, 10, usize::MAX).unwrap();
    assert_eq!(log.len(), 3);
    assert!(
        matches!(&log[2].change, Change::Key { key, record, .. } if key == "b" && record.live.is_none())
    );
    // An engine reopened on the same store starts from what the log holds.
    let again = reopen(&f.store, &f.clock, 0);
    assert_eq!(*again.durable_sequence().borrow(), 3);
}

#[tokio::test]
async fn rate_limited_writes_are_reported_unsuccessful_and_not_logged() {
    let Fixture {
        engine,
        store,
        clock,
        _dir,
    } = fixture_limited(1);
    let ns = engine.create_namespace("acct", "limited").await.unwrap();
    let first = engine
        .write("acct", ns.id, vec![put("k", "1", None, None)])
        .await
        .unwrap();
    assert_eq!(first.successful, 1);
    let second = engine
        .write(
            "acct",
            ns.id,
            vec![put("k", "2", None, None), put("other", "x", None, None)],
        )
        .await
        .unwrap();
    assert_eq!(
        (second.successful, second.unsuccessful),
        (1, vec!["k".to_string()])
    );
    assert_eq!(
        engine
            .get("acct", ns.id, "k", None)
            .await
            .unwrap()
            .unwrap()
            .value,
        "1"
    );
    clock.set(T0_MS + 1000);
    let third = engine
        .write("acct", ns.id, vec![put("k", "3", None, None)])
        .await
        .unwrap();
    assert_eq!(third.successful, 1);
    // Namespace, k, other, k again: the refused write took no sequence.
    assert_eq!(store.log_bounds().unwrap().last, 4);
}

/// A restarted write region whose clock reads earlier stamps above every version it gave,
/// even one only a trimmed log entry carried (writers stamped together can be logged out of
/// version order, so the newest entry left need not hold the newest version).
#[tokio::test]
async fn a_restart_stamps_above_versions_trimmed_from_the_log() {
    let f = fixture();
    let ns = f.engine.create_namespace("acct", "trim").await.unwrap();
    let at = |secs: u64| Version {
        timestamp: secs << 32,
        origin: 1,
    };
    let late = at(T0_MS / 1000 + 3600);
    let early = at(T0_MS / 1000 - 10);
    let change = |key: &str, version| Change::Key {
        namespace: ns.id,
        key: key.into(),
        record: Record::tombstone(version),
    };
    f.store
        .append(&mut [change("a", late), change("b", early)])
        .unwrap();
    assert_eq!(f.store.trim_log_by_age(u64::MAX).unwrap(), 2);
    assert_eq!(f.store.log_entries(1, 10, usize::MAX).unwrap().len(), 1);
    let again = reopen(&f.store, &f.clock, 0);
    let results = again
        .write_results("acct", ns.id, vec![put("c", "1", None, None)])
        .await
        .unwrap();
    match &results[0] {
        WriteResult::Applied { version, .. } => assert!(*version > late, "{version:?}"),
        other => panic!("{other:?}"),
    }
}
