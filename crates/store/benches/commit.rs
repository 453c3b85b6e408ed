//! Keys per second each storage engine commits on one core, in batches of the size a busy
//! central merges: central's appends (each record and its log entry in one batch), alone and
//! followed by the sync that makes them durable (`fdatasync`/`fsync`), and an edge's
//! last-write-wins apply of the same entries replicated. These bound the cluster's durable write
//! throughput: every write costs one append at central and one apply at each edge, all sharing
//! the machine's cores.
//!
//! Figures, not pass/fail: `cargo bench -p driftkv-store --bench commit`.

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use driftkv_core::{Change, LiveValue, LogEntry, Namespace, NamespaceId, Record, Version};
use driftkv_store::{EngineKind, Store};

/// Writes per merged batch: about what central merges with 128 writes in flight.
const BATCH: u64 = 50;

fn ns() -> Namespace {
    Namespace {
        id: NamespaceId([1; 16]),
        account_id: "bench".into(),
        title: "bench".into(),
        version: Version {
            timestamp: 1,
            origin: 1,
        },
    }
}

/// The `i`th write: a 100-byte value under a distinct key, named as driftkv-bench names them.
fn change(i: u64) -> Change {
    Change::Key {
        namespace: ns().id,
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
fn store(engine: EngineKind, dir: &tempfile::TempDir, name: &str) -> Store {
    let store = driftkv_store::open(engine, &dir.path().join(name)).expect("open a store");
    store.put_namespace(&ns()).expect("create the namespace");
    store
}

fn commit(c: &mut Criterion) {
    for engine in [EngineKind::Sled, EngineKind::Fjall] {
        commit_on(c, engine);
    }
}

fn commit_on(c: &mut Criterion, engine: EngineKind) {
    let dir = tempfile::tempdir().expect("temporary directory");
    let mut group = c.benchmark_group(format!(
        "{} commit, 100-byte values, 50 per batch",
        engine.name()
    ));
    group.throughput(Throughput::Elements(BATCH));
    // A sync takes up to a millisecond; fewer samples keep the run short.
    group.sample_size(30);

    let batches = |mut next: u64| {
        move || {
            let batch: Vec<Change> = (next..next + BATCH).map(change).collect();
            next += BATCH;
            batch
        }
    };

    let central = store(engine, &dir, "append");
    group.bench_function("central append", |b| {
        b.iter_batched(
            batches(0),
            |mut batch| central.append(&mut batch).expect("append"),
            BatchSize::SmallInput,
        )
    });

    let durable = store(engine, &dir, "append-sync");
    group.bench_function("central append + sync", |b| {
        b.iter_batched(
            batches(0),
            |mut batch| {
                durable.append(&mut batch).expect("append");
                durable.sync_blocking().expect("sync");
            },
            BatchSize::SmallInput,
        )
    });

    let edge = store(engine, &dir, "replica");
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
            |batch| {
                let through = batch.last().map_or(0, |e| e.sequence);
                edge.apply_replicated(&batch, through).expect("apply")
            },
            BatchSize::SmallInput,
        )
    });
    group.finish();
}

criterion_group!(benches, commit);
criterion_main!(benches);
