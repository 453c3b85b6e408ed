//! Keys per second the sled backend commits on one core, in batches of the size a busy central
//! merges: central's appends (each record and its log entry in one transaction), alone and
//! followed by the flush that makes them durable, and an edge's last-write-wins apply of the
//! same entries replicated. These bound the cluster's durable write throughput: every write
//! costs one append at central and one apply at each edge, all sharing the machine's cores.
//!
//! Figures, not pass/fail: `cargo bench -p driftkv-store --bench commit`.

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use driftkv_core::{Change, LiveValue, LogEntry, Record, Version};
use driftkv_store::suite::ns;
use driftkv_store::{SledStore, Store};

/// Writes per merged batch: about what central merges with 128 writes in flight.
const BATCH: u64 = 50;

/// The `i`th write: a 100-byte value under a distinct key, named as driftkv-bench names them.
fn change(i: u64) -> Change {
    Change::Key {
        namespace: ns(1).id,
        key: format!("c{:04}-{:010}", i % 128, i / 128),
        record: Record {
            version: Version {
                timestamp: 1 << 40 | i,
                origin: 1,
            },
            live: Some(LiveValue {
                value: vec![b'v'; 100].into(),
                metadata: None,
                expiration: None,
            }),
        },
    }
}

/// A fresh store holding the namespace the writes go to, in its own temporary directory.
fn store(dir: &tempfile::TempDir, name: &str) -> SledStore {
    let store = SledStore::open(dir.path().join(name)).expect("open a sled store");
    store.put_namespace(&ns(1)).expect("create the namespace");
    store
}

fn commit(c: &mut Criterion) {
    let dir = tempfile::tempdir().expect("temporary directory");
    let runtime = tokio::runtime::Runtime::new().expect("tokio runtime");
    let mut group = c.benchmark_group("sled commit, 100-byte values, 50 per batch");
    group.throughput(Throughput::Elements(BATCH));
    // A flush takes about a millisecond; fewer samples keep the run near a minute.
    group.sample_size(30);

    let batches = |mut next: u64| {
        move || {
            let batch: Vec<Change> = (next..next + BATCH).map(change).collect();
            next += BATCH;
            batch
        }
    };

    let central = store(&dir, "append");
    group.bench_function("central append", |b| {
        b.iter_batched(
            batches(0),
            |batch| central.append(&batch).expect("append"),
            BatchSize::SmallInput,
        )
    });

    let durable = store(&dir, "append-flush");
    group.bench_function("central append + flush", |b| {
        b.iter_batched(
            batches(0),
            |batch| {
                durable.append(&batch).expect("append");
                runtime.block_on(durable.sync()).expect("flush");
            },
            BatchSize::SmallInput,
        )
    });

    let edge = store(&dir, "replica");
    let mut sequence = 0;
    let mut entries = batches(0);
    group.bench_function("edge apply (last-write-wins)", |b| {
        b.iter_batched(
            || {
                entries()
                    .into_iter()
                    .map(|change| {
                        sequence += 1;
                        LogEntry { sequence, change }
                    })
                    .collect::<Vec<_>>()
            },
            |batch| edge.apply_replicated(&batch).expect("apply"),
            BatchSize::SmallInput,
        )
    });
    group.finish();
}

criterion_group!(benches, commit);
criterion_main!(benches);
