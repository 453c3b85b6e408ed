//! The conformance suite: what every storage engine must pass to carry a node.
//!
//! Each check runs on a [`Store`] over the engine, in a fresh temporary directory. An engine
//! runs the whole suite with [`store_suite!`](crate::store_suite), passing a function that
//! opens its store in a directory (this crate does so for sled and fjall):
//!
//! ```ignore
//! driftkv_store::store_suite!(|dir: &std::path::Path| my_engine_store(dir));
//! ```
//!
//! The checks panic on failure, as tests do: the module only exists in this crate's tests and
//! behind the `suite` feature, never in a production build.

use std::collections::HashSet;
use std::ops::Bound;
use std::path::Path;

use driftkv_core::{Change, KeyInfo, LiveValue, LogEntry, Namespace, NamespaceId, Record, Version};

use crate::backend::{Batch, Tree};
use crate::layout::record_key;
use crate::{DueExpiration, LogBounds, Store, StoreError, SCAN_BUDGET};

/// Opens a node's store in a directory: how the suite reaches an engine.
pub type Opener = fn(&Path) -> Store;

/// Generates one `#[tokio::test]` per suite check, each on a store `$open` (an [`Opener`])
/// opens in a fresh temporary directory, and the replication property test.
#[macro_export]
macro_rules! store_suite {
    ($open:expr) => {
        $crate::store_suite!(@each $open;
            namespaces_round_trip,
            deleting_a_namespace_removes_its_records,
            apply_is_last_write_wins,
            tombstones_shadow_older_puts,
            apply_is_order_independent,
            scan_orders_by_bytes_and_filters,
            scan_pages_resume_exactly,
            scan_stops_at_its_budget,
            expirations_come_due_in_order,
            stale_expiry_entries_change_nothing,
            concurrent_syncs_all_return,
            size_on_disk_counts_what_was_written,
            appends_are_numbered_without_gaps,
            the_log_can_be_trimmed,
            replicated_entries_advance_the_applied_sequence,
            snapshot_records_include_tombstones,
            merged_appends_fail_writer_by_writer,
            backend_ranges_stay_in_their_tree,
            tombstones_are_purged_at_the_horizon_after_their_grace,
            expired_records_are_purged_like_deleted_ones,
            replays_below_the_floor_do_not_resurrect,
            snapshot_installs_remove_what_the_snapshot_lacks,
            deleted_namespaces_stay_deleted
        );
        mod store_suite_reopening {
            #[allow(unused_imports)]
            use super::*;

            #[tokio::test]
            async fn data_survives_reopening() {
                $crate::suite::data_survives_reopening($open).await;
            }

            #[tokio::test]
            async fn an_interrupted_namespace_deletion_finishes_on_open() {
                $crate::suite::an_interrupted_namespace_deletion_finishes_on_open($open).await;
            }

            #[tokio::test]
            async fn trimming_by_age_keeps_the_newest_entry_and_version() {
                $crate::suite::trimming_by_age_keeps_the_newest_entry_and_version($open).await;
            }

            #[tokio::test]
            async fn namespace_tombstones_survive_reopening() {
                $crate::suite::namespace_tombstones_survive_reopening($open).await;
            }

            $crate::suite::proptest::proptest! {
                #![proptest_config($crate::suite::proptest::prelude::ProptestConfig::with_cases(32))]

                /// Replication entries applied in any order, any number of times, in any
                /// batching, leave the same records and applied sequence as applying them once
                /// in sequence order.
                #[test]
                fn any_permutation_and_duplication_converges(
                    replay in $crate::suite::replay_strategy()
                ) {
                    $crate::suite::permutations_converge($open, replay)?;
                }

                /// A replica that purges tombstones as it goes, and is sent old entries again,
                /// ends with the live keys central has: no purged key comes back.
                #[test]
                fn garbage_collection_never_resurrects(
                    run in $crate::suite::gc_strategy()
                ) {
                    $crate::suite::gc_never_resurrects($open, run)?;
                }
            }
        }
    };
    (@each $open:expr; $($check:ident),*) => {
        mod store_suite {
            #[allow(unused_imports)]
            use super::*;
            $(
                #[tokio::test]
                async fn $check() {
                    let dir = $crate::suite::tempfile::tempdir().expect("a temporary directory");
                    let open: $crate::suite::Opener = $open;
                    let store = open(dir.path());
                    $crate::suite::$check(&store).await;
                }
            )*
        }
    };
}

#[doc(hidden)]
pub use proptest;
#[doc(hidden)]
pub use tempfile;

/// A namespace fixture with id `[id; 16]`, for this suite and other crates' store tests.
pub fn ns(id: u8) -> Namespace {
    Namespace {
        id: NamespaceId([id; 16]),
        account_id: "account".into(),
        title: format!("title-{id}"),
        version: Version {
            timestamp: 1,
            origin: 1,
        },
    }
}

fn version(timestamp: u64) -> Version {
    Version {
        timestamp,
        origin: 1,
    }
}

fn live(timestamp: u64, value: &str, expiration: Option<u64>) -> Record {
    Record {
        version: version(timestamp),
        live: Some(LiveValue {
            value: value.as_bytes().to_vec().into(),
            metadata: None,
            expiration,
        }),
    }
}

fn with_namespace(store: &Store, id: u8) -> NamespaceId {
    store.put_namespace(&ns(id)).expect("create namespace");
    NamespaceId([id; 16])
}

/// The deletion of namespace `id`, at HLC time 0.
fn deleted(id: NamespaceId) -> Change {
    Change::NamespaceDeleted {
        id,
        version: Version::default(),
    }
}

fn names(keys: &[KeyInfo]) -> Vec<&str> {
    keys.iter().map(|k| k.name.as_str()).collect()
}

/// Namespaces can be created, read, listed, replaced and deleted.
pub async fn namespaces_round_trip(store: &Store) {
    assert!(store.namespaces().unwrap().is_empty());
    store.put_namespace(&ns(1)).unwrap();
    store.put_namespace(&ns(2)).unwrap();
    assert_eq!(
        store.namespace(NamespaceId([1; 16])).unwrap().as_deref(),
        Some(&ns(1))
    );
    let mut renamed = ns(1);
    renamed.title = "renamed".into();
    renamed.version = version(2);
    assert!(store.put_namespace(&renamed).unwrap());
    // A namespace record is last-write-wins too: the older one arriving late changes nothing.
    assert!(!store.put_namespace(&ns(1)).unwrap());
    assert_eq!(
        store.namespace(NamespaceId([1; 16])).unwrap().as_deref(),
        Some(&renamed)
    );
    assert_eq!(store.namespaces().unwrap().len(), 2);
    assert!(store.delete_namespace(NamespaceId([2; 16])).unwrap());
    assert!(!store.delete_namespace(NamespaceId([2; 16])).unwrap());
    assert_eq!(store.namespace(NamespaceId([2; 16])).unwrap(), None);
    store.sync().await.unwrap();
}

/// Deleting a namespace removes its records, and writes to it fail afterwards.
pub async fn deleting_a_namespace_removes_its_records(store: &Store) {
    let id = with_namespace(store, 3);
    store
        .apply(id, &[("k".into(), live(1, "v", None))])
        .unwrap();
    store.delete_namespace(id).unwrap();
    assert!(matches!(
        store.get(id, "k"),
        Err(StoreError::NoSuchNamespace(_))
    ));
    assert!(matches!(
        store.apply(id, &[("k".into(), live(2, "v", None))]),
        Err(StoreError::NoSuchNamespace(_))
    ));
    // Ids are never reused: a create of the id (late or replayed) does not bring it back.
    assert!(!store.put_namespace(&ns(3)).unwrap());
    assert!(matches!(
        store.get(id, "k"),
        Err(StoreError::NoSuchNamespace(_))
    ));
}

/// A record replaces the stored one only if its version is greater.
pub async fn apply_is_last_write_wins(store: &Store) {
    let id = with_namespace(store, 1);
    assert_eq!(
        store
            .apply(id, &[("k".into(), live(5, "five", None))])
            .unwrap(),
        vec![true]
    );
    assert_eq!(
        store
            .apply(id, &[("k".into(), live(3, "three", None))])
            .unwrap(),
        vec![false]
    );
    assert_eq!(
        store
            .apply(id, &[("k".into(), live(5, "again", None))])
            .unwrap(),
        vec![false]
    );
    assert_eq!(store.get(id, "k").unwrap(), Some(live(5, "five", None)));
    let tie_break = Record {
        version: Version {
            timestamp: 5,
            origin: 2,
        },
        ..live(5, "origin2", None)
    };
    assert_eq!(
        store.apply(id, &[("k".into(), tie_break.clone())]).unwrap(),
        vec![true]
    );
    assert_eq!(store.get(id, "k").unwrap(), Some(tie_break));
}

/// A delete is a tombstone: an older put arriving later does not resurrect the key.
pub async fn tombstones_shadow_older_puts(store: &Store) {
    let id = with_namespace(store, 1);
    store
        .apply(id, &[("k".into(), live(1, "v1", None))])
        .unwrap();
    store
        .apply(id, &[("k".into(), Record::tombstone(version(3)))])
        .unwrap();
    assert_eq!(
        store
            .apply(id, &[("k".into(), live(2, "late", None))])
            .unwrap(),
        vec![false]
    );
    assert_eq!(
        store.get(id, "k").unwrap(),
        Some(Record::tombstone(version(3)))
    );
    assert!(store.scan(id, "", None, 1000, 0).unwrap().keys.is_empty());
}

/// Any order of the same records leaves the same state.
pub async fn apply_is_order_independent(store: &Store) {
    let records: Vec<(String, Record)> = vec![
        ("a".into(), live(1, "a1", None)),
        ("a".into(), live(4, "a4", None)),
        ("b".into(), Record::tombstone(version(6))),
        ("a".into(), Record::tombstone(version(2))),
        ("b".into(), live(5, "b5", None)),
    ];
    let orders: [&[usize]; 3] = [&[0, 1, 2, 3, 4], &[4, 3, 2, 1, 0], &[2, 0, 4, 1, 3, 0, 2]];
    let mut finals = Vec::new();
    for (i, order) in orders.iter().enumerate() {
        let id = with_namespace(store, 10 + i as u8);
        for &j in *order {
            store.apply(id, &records[j..=j]).unwrap();
        }
        finals.push((store.get(id, "a").unwrap(), store.get(id, "b").unwrap()));
    }
    assert_eq!(
        finals[0],
        (
            Some(live(4, "a4", None)),
            Some(Record::tombstone(version(6)))
        )
    );
    assert!(finals.iter().all(|f| *f == finals[0]));
}

/// Scans return live keys with the prefix in byte order, skipping tombstones and expired keys.
pub async fn scan_orders_by_bytes_and_filters(store: &Store) {
    let id = with_namespace(store, 1);
    let now_ms = 1_000_000_000;
    let batch: Vec<(String, Record)> = vec![
        ("p:é".into(), live(1, "x", None)),
        ("p:a".into(), live(1, "x", None)),
        ("p:Z".into(), live(1, "x", Some(2_000_000))),
        ("p:gone".into(), Record::tombstone(version(1))),
        ("p:old".into(), live(1, "x", Some(1_000_000))),
        ("q:other".into(), live(1, "x", None)),
        ("p".into(), live(1, "x", None)),
    ];
    store.apply(id, &batch).unwrap();
    let scan = store.scan(id, "p:", None, 1000, now_ms).unwrap();
    assert_eq!(names(&scan.keys), ["p:Z", "p:a", "p:é"]);
    assert_eq!(scan.keys[0].expiration, Some(2_000_000));
    assert_eq!(scan.resume_after, None);
    let all = store.scan(id, "", None, 1000, now_ms).unwrap();
    assert_eq!(names(&all.keys), ["p", "p:Z", "p:a", "p:é", "q:other"]);
}

/// Paging with `resume_after` visits every live key exactly once.
pub async fn scan_pages_resume_exactly(store: &Store) {
    let id = with_namespace(store, 1);
    let batch: Vec<(String, Record)> = (0..25)
        .map(|i| (format!("k{i:02}"), live(1, "v", None)))
        .collect();
    store.apply(id, &batch).unwrap();
    let mut seen = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let scan = store.scan(id, "k", after.as_deref(), 10, 0).unwrap();
        seen.extend(scan.keys.into_iter().map(|k| k.name));
        match scan.resume_after {
            Some(a) => after = Some(a),
            None => break,
        }
    }
    let expected: Vec<String> = (0..25).map(|i| format!("k{i:02}")).collect();
    assert_eq!(seen, expected);
    // A page that ends exactly on the last key carries no cursor.
    let exact = store.scan(id, "k", Some("k14"), 10, 0).unwrap();
    assert_eq!(exact.keys.len(), 10);
    assert_eq!(exact.resume_after, None);
}

/// A scan over more than the budget of dead records stops early and resumes.
pub async fn scan_stops_at_its_budget(store: &Store) {
    let id = with_namespace(store, 1);
    let mut batch: Vec<(String, Record)> = (0..SCAN_BUDGET + 5)
        .map(|i| (format!("dead{i:06}"), Record::tombstone(version(1))))
        .collect();
    batch.push(("live".into(), live(1, "v", None)));
    store.apply(id, &batch).unwrap();
    let first = store.scan(id, "", None, 1000, 0).unwrap();
    assert!(first.keys.is_empty());
    let resume = first
        .resume_after
        .expect("a cursor after a budget-limited scan");
    let second = store.scan(id, "", Some(&resume), 1000, 0).unwrap();
    assert_eq!(names(&second.keys), ["live"]);
    assert_eq!(second.resume_after, None);
}

/// Records with an expiration come due in order, and expiring them leaves tombstones of the
/// same version.
pub async fn expirations_come_due_in_order(store: &Store) {
    let id = with_namespace(store, 1);
    store
        .apply(
            id,
            &[
                ("late".into(), live(1, "v", Some(300))),
                ("early".into(), live(2, "v", Some(100))),
            ],
        )
        .unwrap();
    store
        .apply(id, &[("never".into(), live(3, "v", None))])
        .unwrap();
    assert!(store.due_expirations(99_999, 100).unwrap().is_empty());
    let due = store.due_expirations(100_000, 100).unwrap();
    assert_eq!(
        due,
        vec![DueExpiration {
            namespace: id,
            key: "early".into(),
            expiration: 100
        }]
    );
    assert!(store.expire(&due[0]).unwrap());
    assert_eq!(
        store.get(id, "early").unwrap(),
        Some(Record::tombstone(version(2)))
    );
    let later = store.due_expirations(400_000, 100).unwrap();
    assert_eq!(
        later.iter().map(|d| d.key.as_str()).collect::<Vec<_>>(),
        ["late"]
    );
    assert!(store.expire(&later[0]).unwrap());
    assert!(store.due_expirations(u64::MAX / 2, 100).unwrap().is_empty());
    assert_eq!(store.get(id, "never").unwrap(), Some(live(3, "v", None)));
}

/// Index entries that no longer match their record (overwritten, namespace gone) are dropped
/// without touching any record.
pub async fn stale_expiry_entries_change_nothing(store: &Store) {
    let id = with_namespace(store, 1);
    store
        .apply(id, &[("k".into(), live(1, "v", Some(100)))])
        .unwrap();
    store
        .apply(id, &[("k".into(), live(2, "newer", None))])
        .unwrap();
    let gone = with_namespace(store, 2);
    store
        .apply(gone, &[("k".into(), live(1, "v", Some(100)))])
        .unwrap();
    store.delete_namespace(gone).unwrap();
    let due = store.due_expirations(200_000, 100).unwrap();
    assert_eq!(due.len(), 2);
    for d in &due {
        assert!(!store.expire(d).unwrap());
    }
    assert_eq!(store.get(id, "k").unwrap(), Some(live(2, "newer", None)));
    assert!(store.due_expirations(200_000, 100).unwrap().is_empty());
}

/// Many concurrent syncs all complete.
pub async fn concurrent_syncs_all_return(store: &Store) {
    let id = with_namespace(store, 1);
    let syncs = (0..50).map(|i| {
        store
            .apply(id, &[(format!("k{i}"), live(1, "v", None))])
            .unwrap();
        store.sync()
    });
    for result in futures::future::join_all(syncs).await {
        result.unwrap();
    }
}

/// The size on disk accounts for data written and made durable.
pub async fn size_on_disk_counts_what_was_written(store: &Store) {
    let id = with_namespace(store, 1);
    let value = "v".repeat(64 * 1024);
    for i in 0..32 {
        store
            .apply(id, &[(format!("k{i}"), live(1, &value, None))])
            .unwrap();
    }
    store.sync().await.unwrap();
    let size = store.size_on_disk().unwrap();
    assert!(
        size >= 2 * 1024 * 1024,
        "2 MiB written, {size} bytes on disk"
    );
}

fn key_change(namespace: NamespaceId, key: &str, record: Record) -> Change {
    Change::Key {
        namespace,
        key: key.into(),
        record,
    }
}

/// Appended changes are applied, logged under consecutive sequences, and readable back.
pub async fn appends_are_numbered_without_gaps(store: &Store) {
    assert_eq!(
        store.log_bounds().unwrap(),
        LogBounds { oldest: 1, last: 0 }
    );
    let id = NamespaceId([4; 16]);
    assert_eq!(store.append(&mut [Change::Namespace(ns(4))]).unwrap(), 1);
    let mut batch = [
        key_change(id, "a", live(2, "a", None)),
        key_change(id, "b", live(3, "b", Some(4_000_000_000))),
    ];
    assert_eq!(store.append(&mut batch).unwrap(), 3);
    assert_eq!(
        store.get(id, "b").unwrap(),
        Some(live(3, "b", Some(4_000_000_000)))
    );
    // A write to a missing namespace fails and takes no sequence.
    let mut missing = [key_change(NamespaceId([9; 16]), "x", live(4, "x", None))];
    assert!(matches!(
        store.append(&mut missing),
        Err(StoreError::NoSuchNamespace(_))
    ));
    assert_eq!(store.append(&mut [deleted(id)]).unwrap(), 4);
    assert_eq!(store.namespace(id).unwrap(), None);
    let entries = store.log_entries(1, 100, usize::MAX).unwrap();
    let expected: Vec<LogEntry> = [Change::Namespace(ns(4))]
        .into_iter()
        .chain(batch)
        .chain([deleted(id)])
        .enumerate()
        .map(|(i, change)| LogEntry {
            sequence: i as u64 + 1,
            change,
        })
        .collect();
    assert_eq!(entries, expected);
    assert_eq!(store.log_entries(3, 1, usize::MAX).unwrap(), expected[2..3]);
    // A read stops at the entry that brings it to its size in bytes.
    let two = expected[1].change.size() + 1;
    assert_eq!(store.log_entries(2, 100, two).unwrap(), expected[1..3]);
    assert_eq!(
        store.log_bounds().unwrap(),
        LogBounds { oldest: 1, last: 4 }
    );
    store.sync().await.unwrap();
}

/// Trimming drops old entries; numbering continues after the last sequence.
pub async fn the_log_can_be_trimmed(store: &Store) {
    let id = NamespaceId([5; 16]);
    store.append(&mut [Change::Namespace(ns(5))]).unwrap();
    for i in 0..5 {
        store
            .append(&mut [key_change(id, "k", live(10 + i, "v", None))])
            .unwrap();
    }
    assert_eq!(store.trim_log(4).unwrap(), 3);
    assert_eq!(
        store.log_bounds().unwrap(),
        LogBounds { oldest: 4, last: 6 }
    );
    // The newest entry always stays.
    assert_eq!(store.trim_log(100).unwrap(), 2);
    assert_eq!(
        store.log_bounds().unwrap(),
        LogBounds { oldest: 6, last: 6 }
    );
    assert_eq!(
        store
            .append(&mut [key_change(id, "k", live(20, "v", None))])
            .unwrap(),
        7
    );
    assert_eq!(store.log_entries(1, 10, usize::MAX).unwrap().len(), 2);
    // Scans of the head start where the last trim or bounds left off: still exact.
    assert_eq!(store.trim_log(7).unwrap(), 1);
    assert_eq!(
        store.log_bounds().unwrap(),
        LogBounds { oldest: 7, last: 7 }
    );
    assert_eq!(store.trim_log(7).unwrap(), 0);
}

/// A replica applies entries last-write-wins, records the highest sequence with them, skips
/// keys of namespaces it does not have, and never moves the sequence back.
pub async fn replicated_entries_advance_the_applied_sequence(store: &Store) {
    assert_eq!(store.applied_sequence().unwrap(), 0);
    let id = NamespaceId([6; 16]);
    let entries = vec![
        LogEntry {
            sequence: 1,
            change: Change::Namespace(ns(6)),
        },
        LogEntry {
            sequence: 2,
            change: key_change(id, "k", live(5, "new", None)),
        },
        LogEntry {
            sequence: 3,
            change: key_change(NamespaceId([7; 16]), "k", live(5, "nowhere", None)),
        },
    ];
    store.apply_replicated(&entries, 3).unwrap();
    assert_eq!(store.applied_sequence().unwrap(), 3);
    assert_eq!(store.get(id, "k").unwrap(), Some(live(5, "new", None)));
    // An older write delivered late, under an older sequence, changes nothing.
    store
        .apply_replicated(
            &[LogEntry {
                sequence: 2,
                change: key_change(id, "k", live(4, "old", None)),
            }],
            2,
        )
        .unwrap();
    assert_eq!(store.applied_sequence().unwrap(), 3);
    assert_eq!(store.get(id, "k").unwrap(), Some(live(5, "new", None)));
    store
        .apply_replicated(
            &[LogEntry {
                sequence: 4,
                change: deleted(id),
            }],
            4,
        )
        .unwrap();
    assert_eq!(store.applied_sequence().unwrap(), 4);
    assert_eq!(store.namespace(id).unwrap(), None);
    // Entries the caller left out (their records are stored already) still count as applied.
    store.apply_replicated(&[], 7).unwrap();
    assert_eq!(store.applied_sequence().unwrap(), 7);
    store.set_applied_sequence(10).unwrap();
    assert_eq!(store.applied_sequence().unwrap(), 10);
    // Applied entries do not land in this node's own log.
    assert_eq!(store.log_bounds().unwrap().last, 0);
}

/// Snapshot pages carry every stored record, tombstones included, in key order.
pub async fn snapshot_records_include_tombstones(store: &Store) {
    let id = with_namespace(store, 8);
    let records: Vec<(String, Record)> = vec![
        ("a".into(), live(1, "a", None)),
        ("b".into(), Record::tombstone(version(2))),
        ("c".into(), live(3, "c", Some(1))),
    ];
    store.apply(id, &records).unwrap();
    assert_eq!(store.records(id, None, 10).unwrap(), records);
    assert_eq!(store.records(id, Some("a"), 1).unwrap(), records[1..2]);
    assert!(store.records(id, Some("c"), 10).unwrap().is_empty());
}

/// Writers merged into one append succeed or fail one by one: a writer naming a missing
/// namespace is refused whole and takes no sequence; the others are numbered without gaps.
pub async fn merged_appends_fail_writer_by_writer(store: &Store) {
    let id = NamespaceId([4; 16]);
    let mut create = [Change::Namespace(ns(4))];
    let mut a = [
        key_change(id, "a1", live(2, "a", None)),
        key_change(id, "a2", live(3, "a", None)),
    ];
    let mut missing = [
        key_change(id, "m1", live(4, "m", None)),
        key_change(NamespaceId([9; 16]), "m2", live(4, "m", None)),
    ];
    let mut b = [key_change(id, "b", live(5, "b", Some(4_000_000_000)))];
    let mut mixed = [
        key_change(id, "x", live(6, "x", None)),
        Change::Namespace(ns(5)),
    ];
    let results =
        store.append_writers(&mut [&mut create, &mut a, &mut missing, &mut b, &mut mixed]);
    assert_eq!(results[0].clone().unwrap(), 1);
    assert_eq!(results[1].clone().unwrap(), 3);
    assert!(matches!(results[2], Err(StoreError::NoSuchNamespace(_))));
    assert_eq!(results[3].clone().unwrap(), 4);
    assert!(matches!(results[4], Err(StoreError::Corrupt(_))));
    assert_eq!(
        store.get(id, "m1").unwrap(),
        None,
        "nothing of a refused writer"
    );
    assert_eq!(store.get(id, "x").unwrap(), None);
    let keys: Vec<(u64, String)> = store
        .log_entries(1, 100, usize::MAX)
        .unwrap()
        .into_iter()
        .filter_map(|e| match e.change {
            Change::Key { key, .. } => Some((e.sequence, key)),
            _ => None,
        })
        .collect();
    assert_eq!(keys, [(2, "a1".into()), (3, "a2".into()), (4, "b".into())]);
    assert_eq!(store.log_bounds().unwrap().last, 4);
    assert_eq!(store.due_expirations(u64::MAX / 2, 10).unwrap().len(), 1);
}

/// The engine's ranges honour their bounds and never reach into another tree.
pub async fn backend_ranges_stay_in_their_tree(store: &Store) {
    let backend = store.backend();
    let mut batch = Batch::new();
    for tree in Tree::ALL {
        for key in [&b"\x00"[..], b"a", b"b", b"c", b"\xff"] {
            batch.put(tree, key.to_vec(), vec![tree.index()]);
        }
    }
    backend.commit(batch).unwrap();
    let keys = |tree, from, to| -> Vec<Vec<u8>> {
        backend
            .range(tree, from, to)
            .map(|entry| {
                let (k, v) = entry.unwrap();
                assert_eq!(v.as_ref(), [tree.index()], "a value of another tree");
                k.to_vec()
            })
            .collect()
    };
    for tree in Tree::ALL {
        let all = keys(tree, Bound::Unbounded, Bound::Unbounded);
        assert_eq!(all, [&b"\x00"[..], b"a", b"b", b"c", b"\xff"], "{tree:?}");
        let some = keys(tree, Bound::Excluded(b"a"), Bound::Included(b"c"));
        assert_eq!(some, [b"b", b"c"], "{tree:?}");
        let some = keys(tree, Bound::Included(b"a"), Bound::Excluded(b"c"));
        assert_eq!(some, [b"a", b"b"], "{tree:?}");
        assert_eq!(
            backend.get(tree, b"b").unwrap().unwrap().as_ref(),
            [tree.index()]
        );
        assert_eq!(backend.get(tree, b"d").unwrap(), None);
    }
    let mut batch = Batch::new();
    batch.remove(Tree::Log, b"b".to_vec());
    backend.commit(batch).unwrap();
    assert_eq!(backend.get(Tree::Log, b"b").unwrap(), None);
    assert!(backend.get(Tree::Meta, b"b").unwrap().is_some());
    backend.sync().unwrap();
}

/// What was written and synced is there after the store is closed and opened again.
pub async fn data_survives_reopening(open: Opener) {
    let dir = tempfile::tempdir().unwrap();
    let id = NamespaceId([1; 16]);
    {
        let store = open(dir.path());
        store.append(&mut [Change::Namespace(ns(1))]).unwrap();
        store
            .apply(id, &[("k".into(), live(5, "v", Some(9)))])
            .unwrap();
        store
            .append(&mut [key_change(id, "l", live(6, "w", None))])
            .unwrap();
        store.set_applied_sequence(12).unwrap();
        store.sync().await.unwrap();
    }
    let store = open(dir.path());
    assert_eq!(store.namespaces().unwrap(), vec![ns(1)]);
    assert_eq!(store.get(id, "k").unwrap(), Some(live(5, "v", Some(9))));
    assert_eq!(store.get(id, "l").unwrap(), Some(live(6, "w", None)));
    assert_eq!(
        store.log_bounds().unwrap(),
        LogBounds { oldest: 1, last: 2 }
    );
    assert_eq!(store.applied_sequence().unwrap(), 12);
    assert_eq!(store.due_expirations(10_000, 10).unwrap().len(), 1);
    assert_eq!(
        store
            .append(&mut [key_change(id, "m", live(7, "x", None))])
            .unwrap(),
        3
    );
}

/// Records left behind by a namespace deletion a crash interrupted are gone after the next
/// open, and those of live namespaces are kept.
pub async fn an_interrupted_namespace_deletion_finishes_on_open(open: Opener) {
    let dir = tempfile::tempdir().unwrap();
    {
        let store = open(dir.path());
        for id in [1, 2, 3] {
            store.put_namespace(&ns(id)).unwrap();
            store
                .apply(NamespaceId([id; 16]), &[("k".into(), live(1, "v", None))])
                .unwrap();
        }
        // As a crash after the namespace record went but before its records did leaves it.
        let mut batch = Batch::new();
        batch.remove(Tree::Namespaces, vec![2; 16]);
        store.backend().commit(batch).unwrap();
        store.sync().await.unwrap();
    }
    let store = open(dir.path());
    assert_eq!(store.namespaces().unwrap().len(), 2);
    let orphan = record_key(NamespaceId([2; 16]), b"k");
    assert_eq!(store.backend().get(Tree::Records, &orphan).unwrap(), None);
    for id in [1, 3] {
        assert!(store.get(NamespaceId([id; 16]), "k").unwrap().is_some());
    }
}

/// Log entries over a few keys, with versions that may tie on timestamp, and a way of
/// replaying them: a permutation with duplicates, cut into batches.
pub fn replay_strategy() -> impl proptest::strategy::Strategy<Value = Replay> {
    use proptest::prelude::*;
    // A version names one write, so the record is a function of it (as in a real log).
    let change = (0..4u8, 1..20u64, 1..3u64).prop_map(|(key, timestamp, origin)| {
        let version = Version { timestamp, origin };
        let record = if (timestamp + origin) % 3 == 0 {
            Record::tombstone(version)
        } else {
            Record {
                version,
                live: Some(LiveValue {
                    value: format!("{timestamp}/{origin}").into_bytes().into(),
                    metadata: None,
                    expiration: None,
                }),
            }
        };
        key_change(NamespaceId([1; 16]), &format!("k{key}"), record)
    });
    let entries = prop::collection::vec(change, 1..24).prop_map(|changes| {
        changes
            .into_iter()
            .enumerate()
            .map(|(i, change)| LogEntry {
                sequence: i as u64 + 2,
                change,
            })
            .collect::<Vec<_>>()
    });
    (
        entries,
        prop::collection::vec(any::<prop::sample::Index>(), 0..48),
        prop::collection::vec(any::<prop::sample::Index>(), 0..6),
    )
        .prop_map(|(entries, order, cuts)| {
            // Every entry at least once, then duplicates, in a shuffled order.
            let mut shuffled = entries.clone();
            shuffled.extend(order.iter().map(|i| i.get(&entries).clone()));
            let n = shuffled.len();
            for (i, pick) in order.iter().enumerate() {
                shuffled.swap(i % n, pick.index(n));
            }
            let mut cut_points: Vec<usize> = cuts.iter().map(|c| c.index(n + 1)).collect();
            cut_points.sort_unstable();
            let mut batches = Vec::new();
            let mut start = 0;
            for cut in cut_points.into_iter().chain([n]) {
                batches.push(shuffled[start..cut.max(start)].to_vec());
                start = cut.max(start);
            }
            Replay { entries, batches }
        })
}

/// Log entries, and the batches a replay applies them in.
#[derive(Clone, Debug)]
pub struct Replay {
    entries: Vec<LogEntry>,
    batches: Vec<Vec<LogEntry>>,
}

/// Applying `replay`'s batches leaves what applying its entries once, in order, leaves.
pub fn permutations_converge(
    open: Opener,
    replay: Replay,
) -> Result<(), proptest::test_runner::TestCaseError> {
    let state = |batches: &[Vec<LogEntry>]| {
        let dir = tempfile::tempdir().unwrap();
        let store = open(dir.path());
        store.put_namespace(&ns(1)).unwrap();
        for batch in batches {
            let through = batch.iter().map(|e| e.sequence).max().unwrap_or(0);
            store.apply_replicated(batch, through).unwrap();
        }
        (
            store.records(NamespaceId([1; 16]), None, 100).unwrap(),
            store.applied_sequence().unwrap(),
        )
    };
    proptest::prop_assert_eq!(
        state(&replay.batches),
        state(std::slice::from_ref(&replay.entries))
    );
    Ok(())
}

/// A version stamped `secs` seconds after the epoch (as an HLC timestamp).
fn at(secs: u64) -> Version {
    Version {
        timestamp: secs << 32,
        origin: 1,
    }
}

fn live_at(secs: u64, value: &str) -> Record {
    Record {
        version: at(secs),
        ..live(0, value, None)
    }
}

/// Central's tombstones go once logged at or below the horizon and older than the grace
/// period; live records, and tombstones overwritten or made again by a later delete, stay.
pub async fn tombstones_are_purged_at_the_horizon_after_their_grace(store: &Store) {
    let id = NamespaceId([4; 16]);
    store.append(&mut [Change::Namespace(ns(4))]).unwrap();
    let mut puts = ["a", "b", "c"].map(|k| key_change(id, k, live_at(100, k)));
    assert_eq!(store.append(&mut puts).unwrap(), 4);
    let mut deletes = ["a", "b"].map(|k| key_change(id, k, Record::tombstone(at(200))));
    assert_eq!(store.append(&mut deletes).unwrap(), 6);
    assert_eq!(
        store
            .append(&mut [key_change(id, "b", live_at(300, "b2"))])
            .unwrap(),
        7
    );
    let delete_c = key_change(id, "c", Record::tombstone(at(400)));
    assert_eq!(store.append(&mut [delete_c]).unwrap(), 8);
    // Above the horizon, or within the grace period: nothing goes.
    assert_eq!(store.purge_tombstones(4, u64::MAX).unwrap(), 0);
    assert_eq!(store.purge_tombstones(8, 199_999).unwrap(), 0);
    assert_eq!(store.gc_floor(), 0);
    let counts = |values, tombstones| crate::RecordCounts { values, tombstones };
    assert_eq!(store.count_records().unwrap(), counts(1, 2));
    // a goes; b's stale index entry goes without touching the live b; c waits its grace.
    assert_eq!(store.purge_tombstones(8, 300_000).unwrap(), 1);
    assert_eq!(store.get(id, "a").unwrap(), None);
    assert_eq!(store.get(id, "b").unwrap(), Some(live_at(300, "b2")));
    assert_eq!(
        store.get(id, "c").unwrap(),
        Some(Record::tombstone(at(400)))
    );
    assert_eq!(store.gc_floor(), 8);
    assert_eq!(store.purge_tombstones(8, 400_000).unwrap(), 1);
    assert_eq!(store.get(id, "c").unwrap(), None);
    assert_eq!(store.count_records().unwrap(), counts(1, 0));
    // A key deleted, written and deleted again keeps its tombstone until the last delete is
    // at or below the horizon.
    for (secs, record) in [
        (500, Record::tombstone(at(500))),
        (600, live_at(600, "d")),
        (700, Record::tombstone(at(700))),
    ] {
        assert!(secs > 0);
        store.append(&mut [key_change(id, "d", record)]).unwrap();
    }
    assert_eq!(store.purge_tombstones(10, u64::MAX).unwrap(), 0);
    assert_eq!(
        store.get(id, "d").unwrap(),
        Some(Record::tombstone(at(700)))
    );
    assert_eq!(store.purge_tombstones(11, u64::MAX).unwrap(), 1);
    assert_eq!(store.get(id, "d").unwrap(), None);
    assert_eq!(store.purge_tombstones(u64::MAX, u64::MAX).unwrap(), 0);
}

/// An expired record's tombstone is purged like a deleted one's, counted from its expiration
/// and from this node's position in the log when it expired.
pub async fn expired_records_are_purged_like_deleted_ones(store: &Store) {
    let id = NamespaceId([4; 16]);
    store.append(&mut [Change::Namespace(ns(4))]).unwrap();
    store
        .append(&mut [key_change(id, "e", live(2, "e", Some(50)))])
        .unwrap();
    store
        .append(&mut [key_change(id, "f", live(3, "f", None))])
        .unwrap();
    let due = store.due_expirations(60_000, 10).unwrap();
    assert_eq!(due.len(), 1);
    assert!(store.expire(&due[0]).unwrap());
    assert_eq!(store.purge_tombstones(2, u64::MAX).unwrap(), 0);
    assert_eq!(store.purge_tombstones(3, 49_999).unwrap(), 0);
    assert_eq!(store.purge_tombstones(3, 50_000).unwrap(), 1);
    assert_eq!(store.get(id, "e").unwrap(), None);
    assert_eq!(store.get(id, "f").unwrap(), Some(live(3, "f", None)));
}

/// A replica purges only up to what it has applied, and ignores replays at or below its
/// floor: an old put sent again after its key's tombstone went does not bring the key back.
pub async fn replays_below_the_floor_do_not_resurrect(store: &Store) {
    let id = NamespaceId([6; 16]);
    let entry = |sequence, change| LogEntry { sequence, change };
    let put = entry(2, key_change(id, "k", live(10, "old", None)));
    let delete = entry(3, key_change(id, "k", Record::tombstone(version(11))));
    let create = entry(1, Change::Namespace(ns(6)));
    store
        .apply_replicated(&[create, put.clone(), delete], 3)
        .unwrap();
    // This replica's own acknowledged delete, logged at 5, past what it has applied.
    store
        .apply_logged(id, &[("m".into(), Record::tombstone(version(12)))], &[5])
        .unwrap();
    assert_eq!(store.purge_tombstones(u64::MAX, u64::MAX).unwrap(), 1);
    assert_eq!(store.get(id, "k").unwrap(), None);
    assert_eq!(
        store.get(id, "m").unwrap(),
        Some(Record::tombstone(version(12)))
    );
    assert_eq!(store.gc_floor(), 3);
    store.apply_replicated(&[put], 3).unwrap();
    assert_eq!(store.get(id, "k").unwrap(), None);
    // Past the floor, entries apply as before.
    let newer = entry(4, key_change(id, "k", live(13, "new", None)));
    store.apply_replicated(&[newer], 4).unwrap();
    assert_eq!(store.get(id, "k").unwrap(), Some(live(13, "new", None)));
    assert_eq!(store.purge_tombstones(u64::MAX, u64::MAX).unwrap(), 0);
    store.apply_replicated(&[], 5).unwrap();
    assert_eq!(store.purge_tombstones(u64::MAX, u64::MAX).unwrap(), 1);
    assert_eq!(store.get(id, "m").unwrap(), None);
    assert!(matches!(
        store.apply_logged(id, &[("m".into(), live(14, "m", None))], &[]),
        Err(StoreError::Corrupt(_))
    ));
}

/// A snapshot install removes every local key the snapshot lacks (a key deleted at central
/// whose tombstone is gone there), keeps what it carries last-write-wins, and its tombstones
/// become purgeable once the install finishes.
pub async fn snapshot_installs_remove_what_the_snapshot_lacks(store: &Store) {
    let id = with_namespace(store, 8);
    let local: Vec<(String, Record)> = ["a", "b", "c", "d", "e", "f"]
        .into_iter()
        .map(|k| (k.to_owned(), live(1, k, None)))
        .collect();
    store.apply(id, &local).unwrap();
    let first = [
        ("b".to_owned(), live(2, "b2", None)),
        ("c".to_owned(), Record::tombstone(version(2))),
    ];
    assert_eq!(
        store
            .install_snapshot_run(id, None, &first, false, &HashSet::new())
            .unwrap(),
        1
    );
    let second = [("f".to_owned(), live(1, "f", None))];
    assert_eq!(
        store
            .install_snapshot_run(id, Some("c"), &second, false, &HashSet::new())
            .unwrap(),
        2
    );
    assert_eq!(
        store
            .install_snapshot_run(id, Some("f"), &[], true, &HashSet::new())
            .unwrap(),
        0
    );
    let expected: Vec<(String, Record)> = first.into_iter().chain(second).collect();
    assert_eq!(store.records(id, None, 100).unwrap(), expected);
    // Its tombstone waits for the install to finish, then for the horizon to pass it.
    assert_eq!(store.purge_tombstones(u64::MAX, u64::MAX).unwrap(), 0);
    store.finish_snapshot(10, 12).unwrap();
    assert_eq!(
        (store.applied_sequence().unwrap(), store.gc_floor()),
        (10, 10)
    );
    assert_eq!(store.purge_tombstones(u64::MAX, u64::MAX).unwrap(), 0);
    store.apply_replicated(&[], 12).unwrap();
    assert_eq!(store.purge_tombstones(11, u64::MAX).unwrap(), 0);
    assert_eq!(store.purge_tombstones(12, u64::MAX).unwrap(), 1);
    assert_eq!(store.get(id, "c").unwrap(), None);
    // A namespace the snapshot carries no record of loses every record it had, but those
    // it is told to keep (an edge's own writes logged after the snapshot began).
    let other = with_namespace(store, 9);
    store.apply(other, &local).unwrap();
    let keep: HashSet<String> = ["d".to_owned()].into();
    assert_eq!(
        store
            .install_snapshot_run(other, None, &[], true, &keep)
            .unwrap(),
        local.len() - 1
    );
    assert_eq!(store.records(other, None, 100).unwrap(), [local[3].clone()]);
    assert_eq!(
        store.records(id, None, 100).unwrap(),
        [expected[0].clone(), expected[2].clone()]
    );
}

/// Central's writes (key, delete?) and what a replica does between applying them.
pub fn gc_strategy() -> impl proptest::strategy::Strategy<Value = GcRun> {
    use proptest::prelude::*;
    (
        prop::collection::vec((0..4u8, any::<bool>()), 1..30),
        prop::collection::vec((0..3u8, any::<prop::sample::Index>()), 0..60),
    )
        .prop_map(|(writes, steps)| GcRun { writes, steps })
}

/// A run of [`gc_strategy`].
#[derive(Clone, Debug)]
pub struct GcRun {
    writes: Vec<(u8, bool)>,
    /// 0: apply the next entry; 1: purge (central and replica) at a horizon at or below what
    /// the replica applied; 2: replay an entry the replica applied already.
    steps: Vec<(u8, proptest::sample::Index)>,
}

/// Runs `run`: the replica ends with exactly central's live keys.
pub fn gc_never_resurrects(
    open: Opener,
    run: GcRun,
) -> Result<(), proptest::test_runner::TestCaseError> {
    let (central_dir, replica_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (central, replica) = (open(central_dir.path()), open(replica_dir.path()));
    let id = NamespaceId([1; 16]);
    central.append(&mut [Change::Namespace(ns(1))]).unwrap();
    for (i, (key, delete)) in run.writes.iter().enumerate() {
        let record = if *delete {
            Record::tombstone(version(i as u64 + 2))
        } else {
            live(i as u64 + 2, &format!("{i}"), None)
        };
        central
            .append(&mut [key_change(id, &format!("k{key}"), record)])
            .unwrap();
    }
    let log = central.log_entries(1, 100, usize::MAX).unwrap();
    let mut next = 0;
    for (step, pick) in &run.steps {
        let applied = replica.applied_sequence().unwrap();
        match step {
            0 if next < log.len() => {
                replica
                    .apply_replicated(&log[next..=next], log[next].sequence)
                    .unwrap();
                next += 1;
            }
            1 => {
                let horizon = pick.index(applied as usize + 1) as u64;
                central.purge_tombstones(horizon, u64::MAX).unwrap();
                replica.purge_tombstones(horizon, u64::MAX).unwrap();
            }
            2 if next > 0 => {
                let old = &log[pick.index(next)];
                replica
                    .apply_replicated(std::slice::from_ref(old), old.sequence)
                    .unwrap();
            }
            _ => {}
        }
    }
    replica
        .apply_replicated(&log[next..], log.last().map_or(0, |e| e.sequence))
        .unwrap();
    let live_keys = |store: &Store| {
        store
            .records(id, None, 100)
            .unwrap()
            .into_iter()
            .filter(|(_, record)| record.live.is_some())
            .collect::<Vec<_>>()
    };
    proptest::prop_assert_eq!(live_keys(&replica), live_keys(&central));
    Ok(())
}

/// A deleted namespace stays deleted: a late or replayed entry recreates neither it nor its
/// keys. Its tombstone goes by the rule key tombstones go by (and replays are then below the
/// floor); a deletion whose sequence is not known yet (this replica's own) waits for it.
pub async fn deleted_namespaces_stay_deleted(store: &Store) {
    let id = NamespaceId([6; 16]);
    let entry = |sequence, change| LogEntry { sequence, change };
    let create = entry(1, Change::Namespace(ns(6)));
    let put = entry(2, key_change(id, "k", live(2, "v", None)));
    let delete = entry(
        3,
        Change::NamespaceDeleted {
            id,
            version: at(100),
        },
    );
    store
        .apply_replicated(&[create.clone(), put.clone(), delete], 3)
        .unwrap();
    assert!(store.namespace_deleted(id));
    store
        .apply_replicated(&[create.clone(), put.clone()], 3)
        .unwrap();
    let renamed = Namespace {
        title: "renamed late".into(),
        version: at(50),
        ..ns(6)
    };
    assert!(!store.put_namespace(&renamed).unwrap());
    assert_eq!(store.namespace(id).unwrap(), None);
    assert!(matches!(
        store.apply(id, &[("k".into(), live(3, "v", None))]),
        Err(StoreError::NoSuchNamespace(_))
    ));
    assert_eq!(store.purge_namespace_tombstones(2, u64::MAX).unwrap(), 0);
    assert_eq!(store.purge_namespace_tombstones(3, 99_999).unwrap(), 0);
    assert_eq!(store.purge_namespace_tombstones(3, 100_000).unwrap(), 1);
    assert!(!store.namespace_deleted(id));
    assert_eq!(store.gc_floor(), 3);
    store.apply_replicated(&[create, put], 3).unwrap();
    assert_eq!(store.namespace(id).unwrap(), None);

    // Deleted here first (this replica's own request), then replicated with its sequence.
    let other = with_namespace(store, 7);
    assert!(store.delete_namespace(other).unwrap());
    assert!(store.namespace_deleted(other));
    assert_eq!(
        store
            .purge_namespace_tombstones(u64::MAX, u64::MAX)
            .unwrap(),
        0
    );
    let replicated = Change::NamespaceDeleted {
        id: other,
        version: at(200),
    };
    store.apply_replicated(&[entry(4, replicated)], 4).unwrap();
    assert_eq!(store.purge_namespace_tombstones(4, 199_999).unwrap(), 0);
    let purged = store.collect_garbage(4, 200_000).unwrap();
    assert_eq!((purged.tombstones, purged.namespaces), (0, 1));
    assert!(!store.namespace_deleted(other));

    // Dropped by a snapshot install (which cannot tell a deletion from a later creation): no
    // tombstone, so the creation that follows in the log applies.
    let dropped = with_namespace(store, 8);
    store
        .apply(dropped, &[("k".into(), live(1, "v", None))])
        .unwrap();
    assert!(store.drop_namespace(dropped).unwrap());
    assert!(!store.drop_namespace(dropped).unwrap());
    assert!(!store.namespace_deleted(dropped));
    assert_eq!(store.namespace(dropped).unwrap(), None);
    assert!(store.put_namespace(&ns(8)).unwrap());
    assert_eq!(store.get(dropped, "k").unwrap(), None);
}

/// Central's namespace tombstones are written with their deletion's log entry and survive
/// reopening; recreating the id is refused after a restart too.
pub async fn namespace_tombstones_survive_reopening(open: Opener) {
    let dir = tempfile::tempdir().unwrap();
    let id = NamespaceId([3; 16]);
    {
        let store = open(dir.path());
        store.append(&mut [Change::Namespace(ns(3))]).unwrap();
        let deletion = Change::NamespaceDeleted {
            id,
            version: at(10),
        };
        assert_eq!(store.append(&mut [deletion]).unwrap(), 2);
        store.sync().await.unwrap();
    }
    let store = open(dir.path());
    assert!(store.namespace_deleted(id));
    assert!(!store.put_namespace(&ns(3)).unwrap());
    assert_eq!(store.namespace(id).unwrap(), None);
    assert_eq!(store.purge_namespace_tombstones(1, u64::MAX).unwrap(), 0);
    assert_eq!(store.purge_namespace_tombstones(2, u64::MAX).unwrap(), 1);
    drop(store);
    let store = open(dir.path());
    assert!(!store.namespace_deleted(id));
    assert_eq!(store.gc_floor(), 2);
}

/// Trimming by age drops entries written at or before the cutoff, oldest first, stopping at the
/// first newer one; it never drops the newest entry; and the newest version it dropped is kept,
/// across reopening, even when it is newer than what the log still holds (writers stamped
/// together can be logged out of version order).
pub async fn trimming_by_age_keeps_the_newest_entry_and_version(open: Opener) {
    let dir = tempfile::tempdir().unwrap();
    let id = NamespaceId([5; 16]);
    {
        let store = open(dir.path());
        store.append(&mut [Change::Namespace(ns(5))]).unwrap();
        for secs in [100, 300, 200, 400] {
            store
                .append(&mut [key_change(id, "k", live_at(secs, "v"))])
                .unwrap();
        }
        assert_eq!(store.trimmed_version(), 0);
        // The namespace (at time 0) and the write at 100 s; the one at 300 s stops it.
        assert_eq!(store.trim_log_by_age(250_000).unwrap(), 2);
        assert_eq!(store.log_bounds().unwrap().oldest, 3);
        assert_eq!(store.trimmed_version(), at(100).timestamp);
        assert_eq!(store.trim_log_by_age(u64::MAX).unwrap(), 2);
        assert_eq!(
            store.log_bounds().unwrap(),
            LogBounds { oldest: 5, last: 5 }
        );
        assert_eq!(store.trim_log_by_age(u64::MAX).unwrap(), 0);
        assert_eq!(store.trim_log(u64::MAX).unwrap(), 0);
        assert_eq!(store.trimmed_version(), at(300).timestamp);
        store.sync().await.unwrap();
    }
    let store = open(dir.path());
    assert_eq!(store.trimmed_version(), at(300).timestamp);
    assert_eq!(store.log_entries(1, 10, usize::MAX).unwrap().len(), 1);
}
