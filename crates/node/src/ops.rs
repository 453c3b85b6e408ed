//! What operators read besides `/cluster`: `/readyz`, and the metrics refreshed at scrape time
//! or from gossip.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::{Arc, Weak};
use std::time::Duration;

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use driftkv_core::cluster::{ClusterView, MemberStatus, NodeRole};
use driftkv_edge::Edge;
use driftkv_engine::spawn_maintenance;
use driftkv_metrics::prometheus::core::{Collector, MetricVec, MetricVecBuilder};
use driftkv_metrics::prometheus::proto::Metric;
use driftkv_metrics::{
    CACHE_BYTES, GOSSIP_MEMBERS, LOG_ENTRIES, LOG_SEQUENCE, REPLICATION_LAG_ENTRIES,
    REPLICATION_LAG_SECONDS, STORE_DISK_BYTES, STORE_FREE_BYTES, STORE_READY, STORE_RECORDS,
    STORE_TOMBSTONES,
};
use driftkv_store::guard::{Guarded, StorageGuard, StorageHealth};
use driftkv_store::Store;
use serde_json::json;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::MissedTickBehavior;

/// Reports the size of the store's data directory, the log's length, the free space of its
/// filesystem and whether it takes writes at every scrape, for as long as the store is open,
/// and counts its records and tombstones every `every` (a scan of every record, too slow for a
/// scrape) on the returned task.
pub fn watch_store(
    node: u64,
    store: &Arc<Store>,
    storage: &Arc<StorageGuard>,
    data_dir: &Path,
    every: Duration,
) -> JoinHandle<()> {
    let node = node.to_string();
    let bytes = STORE_DISK_BYTES.with_label_values(&[&node]);
    let entries = LOG_ENTRIES.with_label_values(&[&node]);
    let free = STORE_FREE_BYTES.with_label_values(&[&node]);
    let ready = STORE_READY.with_label_values(&[&node]);
    let weak: Weak<Store> = Arc::downgrade(store);
    let storage = Arc::downgrade(storage);
    let dir = data_dir.to_owned();
    driftkv_metrics::on_scrape(move || {
        let Some(store) = weak.upgrade() else { return };
        bytes.set(saturate(allocated_bytes(&dir)));
        if let Ok(bounds) = store.log_bounds() {
            entries.set(saturate((bounds.last + 1).saturating_sub(bounds.oldest)));
        }
        if let Some(health) = storage.upgrade().map(|s| s.health()) {
            if let Some(bytes) = health.free_bytes {
                free.set(saturate(bytes));
            }
            ready.set(i64::from(health.ready));
        }
    });
    let records = STORE_RECORDS.with_label_values(&[&node]);
    let tombstones = STORE_TOMBSTONES.with_label_values(&[&node]);
    spawn_maintenance(store, every, "counting records", move |store| {
        let counts = store.count_records()?;
        records.set(saturate(counts.values));
        tombstones.set(saturate(counts.tombstones));
        Ok(0)
    })
}

/// Reports the edge's cache size and applied log sequence at every scrape, for as long as the
/// edge runs.
pub fn watch_edge(node: u64, edge: &Arc<Edge>) {
    let node = node.to_string();
    let bytes = CACHE_BYTES.with_label_values(&[&node]);
    let applied = LOG_SEQUENCE.with_label_values(&[&node, "applied"]);
    let edge = Arc::downgrade(edge);
    driftkv_metrics::on_scrape(move || {
        if let Some(edge) = edge.upgrade() {
            bytes.set(saturate(edge.cache_bytes()));
            applied.set(saturate(edge.status().borrow().applied));
        }
    });
}

/// Reports central's durable log sequence at every scrape.
pub fn watch_durable(node: u64, durable: watch::Receiver<u64>) {
    let gauge = LOG_SEQUENCE.with_label_values(&[&node.to_string(), "durable"]);
    driftkv_metrics::on_scrape(move || gauge.set(saturate(*durable.borrow())));
}

/// Bytes the files under `dir` take on disk (their allocated blocks: a preallocated or sparse
/// file counts for what it really holds), skipping what vanishes while it is walked.
fn allocated_bytes(dir: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt as _;
    let Ok(listing) = std::fs::read_dir(dir) else {
        return 0;
    };
    listing
        .filter_map(Result::ok)
        .map(|entry| match entry.metadata() {
            Ok(meta) if meta.is_dir() => allocated_bytes(&entry.path()),
            Ok(meta) => meta.blocks() * 512,
            Err(_) => 0,
        })
        .sum()
}

fn saturate(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

/// Sets the membership gauges from a `/cluster` view: members by status, and each edge's lag.
/// The lag series of an edge the view no longer gives a lag for (it left the cluster, or its
/// lag is unknown) are removed rather than left showing their last value.
pub fn record_membership(node: &str, view: &ClusterView) {
    let mut by_status: BTreeMap<MemberStatus, i64> =
        MemberStatus::ALL.into_iter().map(|s| (s, 0)).collect();
    let (mut with_entries, mut with_ms) = (BTreeSet::new(), BTreeSet::new());
    for member in &view.members {
        *by_status.entry(member.status).or_default() += 1;
        if member.role != Some(NodeRole::Edge) {
            continue;
        }
        let edge = member.node_id.as_str();
        if let Some(entries) = member.lag_entries {
            REPLICATION_LAG_ENTRIES
                .with_label_values(&[node, edge])
                .set(saturate(entries));
            with_entries.insert(edge);
        }
        if let Some(ms) = member.lag_ms {
            REPLICATION_LAG_SECONDS
                .with_label_values(&[node, edge])
                .set(ms as f64 / 1000.0);
            with_ms.insert(edge);
        }
    }
    remove_other_edges(&REPLICATION_LAG_ENTRIES, node, &with_entries);
    remove_other_edges(&REPLICATION_LAG_SECONDS, node, &with_ms);
    for (status, count) in by_status {
        GOSSIP_MEMBERS
            .with_label_values(&[node, status.as_str()])
            .set(count);
    }
}

/// Removes the series of `metric` that `node` reports for edges other than `edges`.
fn remove_other_edges<T: MetricVecBuilder>(
    metric: &MetricVec<T>,
    node: &str,
    edges: &BTreeSet<&str>,
) {
    for edge in reported_edges(metric, node) {
        if !edges.contains(edge.as_str()) {
            // Only fails for a series that is already gone.
            let _ = metric.remove_label_values(&[node, &edge]);
        }
    }
}

/// The edges `node` has a series of `metric` for.
fn reported_edges<T: MetricVecBuilder>(metric: &MetricVec<T>, node: &str) -> BTreeSet<String> {
    let label = |series: &Metric, name: &str| {
        series
            .get_label()
            .iter()
            .find(|pair| pair.name() == name)
            .map(|pair| pair.value().to_owned())
    };
    metric
        .collect()
        .iter()
        .flat_map(|family| family.get_metric())
        .filter(|series| label(series, "node").as_deref() == Some(node))
        .filter_map(|series| label(series, "edge"))
        .collect()
}

/// Runs the storage health probe (a canary record written and synced, see
/// [`Guarded::probe`]) every `every`, off the async threads.
pub fn spawn_storage_probe(guarded: Arc<Guarded>, every: Duration) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut ticks = tokio::time::interval(every);
        ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
        loop {
            ticks.tick().await;
            let guarded = guarded.clone();
            if let Err(e) = tokio::task::spawn_blocking(move || guarded.probe()).await {
                tracing::error!(error = %e, "the storage health probe failed to run");
            }
        }
    })
}

/// `GET /readyz` of central: it serves once its storage is open, which is before it listens,
/// for as long as its storage takes writes.
pub fn central_ready(storage: Arc<StorageGuard>) -> Router {
    Router::new().route(
        "/readyz",
        get(move || {
            let storage = storage.clone();
            async move {
                let health = storage.health();
                let (ready, reason) = if health.ready {
                    (true, "storage open".to_owned())
                } else {
                    (false, health.reason.clone())
                };
                readiness(
                    ready,
                    json!({ "role": "central", "reason": reason, "storage": storage_json(&health) }),
                )
            }
        }),
    )
}

/// `GET /readyz` of an edge: ready once its replica holds data it can serve, for as long as
/// its storage takes writes (replication needs them). With central out of reach it stays
/// ready, serving its replica stale by design; the body says so.
pub fn edge_ready(edge: Arc<Edge>, storage: Arc<StorageGuard>) -> Router {
    Router::new().route(
        "/readyz",
        get(move || {
            let edge = edge.clone();
            let storage = storage.clone();
            async move { edge_readiness(&edge, &storage) }
        }),
    )
}

fn storage_json(health: &StorageHealth) -> serde_json::Value {
    json!({
        "ready": health.ready,
        "reason": health.reason,
        "free_bytes": health.free_bytes,
        "min_free_bytes": health.min_free_bytes,
    })
}

/// The answer of `/readyz`: 200 when ready, else 503; `body` gets `"ready"` added.
fn readiness(ready: bool, mut body: serde_json::Value) -> Response {
    body["ready"] = json!(ready);
    let code = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (code, Json(body)).into_response()
}

fn edge_readiness(edge: &Edge, storage: &StorageGuard) -> Response {
    let status = edge.status().borrow().clone();
    let health = storage.health();
    let bootstrapped = status.caught_up_at_ms.is_some() || status.applied > 0;
    let (ready, reason) = match (health.ready, bootstrapped, status.connected) {
        (false, _, _) => (false, health.reason.clone()),
        (true, false, _) => (
            false,
            "the replica has not caught up with central yet".to_owned(),
        ),
        (true, true, true) => (true, "replicating from central".to_owned()),
        (true, true, false) => (
            true,
            "central is out of reach: serving reads from the replica (stale by design); writes fail"
                .to_owned(),
        ),
    };
    readiness(
        ready,
        json!({
            "role": "edge",
            "reason": reason,
            "applied_sequence": status.applied,
            "central_connected": status.connected,
            "storage": storage_json(&health),
        }),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use driftkv_core::cluster::Member;

    fn edge(id: &str, lag_entries: Option<u64>, lag_ms: Option<u64>) -> Member {
        Member {
            node_id: id.into(),
            role: Some(NodeRole::Edge),
            live: true,
            status: MemberStatus::Live,
            lag_entries,
            lag_ms,
            ..Member::default()
        }
    }

    #[test]
    fn lag_series_follow_the_edges_that_report_a_lag() {
        let node = "ops-unit-test";
        let other = "ops-unit-test-other";
        let view = |members: Vec<Member>| ClusterView {
            members,
            central_durable_sequence: None,
        };
        record_membership(other, &view(vec![edge("9", Some(1), Some(5))]));
        record_membership(
            node,
            &view(vec![
                edge("1", Some(0), Some(0)),
                edge("2", Some(7), Some(1500)),
            ]),
        );
        let both: BTreeSet<String> = ["1", "2"].map(String::from).into();
        assert_eq!(reported_edges(&REPLICATION_LAG_ENTRIES, node), both);
        assert_eq!(reported_edges(&REPLICATION_LAG_SECONDS, node), both);
        assert_eq!(
            REPLICATION_LAG_SECONDS
                .with_label_values(&[node, "2"])
                .get(),
            1.5
        );

        // Edge 2 left; edge 3 joined but has not reported how far it got.
        record_membership(
            node,
            &view(vec![edge("1", Some(3), Some(0)), edge("3", Some(2), None)]),
        );
        let entries: BTreeSet<String> = ["1", "3"].map(String::from).into();
        assert_eq!(reported_edges(&REPLICATION_LAG_ENTRIES, node), entries);
        assert_eq!(
            reported_edges(&REPLICATION_LAG_SECONDS, node),
            ["1"].map(String::from).into()
        );
        // Another node's series are its own.
        assert_eq!(
            reported_edges(&REPLICATION_LAG_ENTRIES, other),
            ["9"].map(String::from).into()
        );
    }
}
