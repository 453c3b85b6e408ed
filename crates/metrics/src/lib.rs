//! The Prometheus metrics of a driftkv process, and their text exposition for `/metrics`.
//!
//! Every family is labelled by `node` (the node id), because one process may run several
//! nodes (`driftkv dev` runs central and its edges together); a scrape of any of them shows
//! the whole process. Components take the handles they need with their node id, e.g.
//! `CACHE_LOOKUPS.with_label_values(&[node, "hit"])`.
//!
//! Values that are cheaper to read than to track (cache bytes, size on disk, gossip members,
//! replication lag) are refreshed at scrape time by callbacks registered with [`on_scrape`].

use std::sync::{LazyLock, Mutex};

use prometheus::{
    exponential_buckets, Encoder as _, GaugeVec, HistogramOpts, HistogramVec, IntCounterVec,
    IntGaugeVec, Opts, Registry, TextEncoder,
};

pub use prometheus;

/// The registry every family below belongs to.
pub static REGISTRY: LazyLock<Registry> = LazyLock::new(Registry::new);

fn counter(name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    let metric = IntCounterVec::new(Opts::new(name, help), labels).expect("a valid counter");
    REGISTRY
        .register(Box::new(metric.clone()))
        .expect("registered once");
    metric
}

fn gauge(name: &str, help: &str, labels: &[&str]) -> IntGaugeVec {
    let metric = IntGaugeVec::new(Opts::new(name, help), labels).expect("a valid gauge");
    REGISTRY
        .register(Box::new(metric.clone()))
        .expect("registered once");
    metric
}

fn histogram(name: &str, help: &str, labels: &[&str], buckets: Vec<f64>) -> HistogramVec {
    let metric = HistogramVec::new(HistogramOpts::new(name, help).buckets(buckets), labels)
        .expect("a valid histogram");
    REGISTRY
        .register(Box::new(metric.clone()))
        .expect("registered once");
    metric
}

/// Latency buckets from 100 µs to about 26 s.
fn seconds() -> Vec<f64> {
    exponential_buckets(0.0001, 2.0, 19).expect("valid buckets")
}

/// HTTP requests answered, by route template, method and status.
pub static HTTP_REQUESTS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    counter(
        "driftkv_http_requests_total",
        "HTTP requests answered, by route template, method and status",
        &["node", "route", "method", "status"],
    )
});

/// HTTP request latency, by route template and method.
pub static HTTP_REQUEST_SECONDS: LazyLock<HistogramVec> = LazyLock::new(|| {
    histogram(
        "driftkv_http_request_duration_seconds",
        "Time to answer an HTTP request, by route template and method",
        &["node", "route", "method"],
        seconds(),
    )
});

/// Edge read-cache lookups by result: `hit` (a cached value), `negative_hit` (a cached "not
/// found"), `miss`.
pub static CACHE_LOOKUPS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    counter(
        "driftkv_cache_lookups_total",
        "Edge read-cache lookups, by result: hit, negative_hit (a cached not-found), miss",
        &["node", "result"],
    )
});

/// Entries the read cache dropped, by cause (`size`, `expired`, `replaced`, `explicit`).
pub static CACHE_EVICTIONS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    counter(
        "driftkv_cache_evictions_total",
        "Entries the edge read cache dropped, by cause: size, expired, replaced, explicit",
        &["node", "cause"],
    )
});

/// Bytes the read cache holds (keys, values and bookkeeping, as weighed against its bound).
pub static CACHE_BYTES: LazyLock<IntGaugeVec> = LazyLock::new(|| {
    gauge(
        "driftkv_cache_bytes",
        "Bytes held by the edge read cache, as weighed against cache.max_bytes",
        &["node"],
    )
});

/// Replication log entries an edge applied.
pub static REPLICATION_ENTRIES_APPLIED: LazyLock<IntCounterVec> = LazyLock::new(|| {
    counter(
        "driftkv_replication_entries_applied_total",
        "Replication log entries an edge received and applied",
        &["node"],
    )
});

/// Snapshot transfers: `served` by central, `installed` by an edge.
pub static SNAPSHOTS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    counter(
        "driftkv_snapshots_total",
        "Snapshot transfers: served (central) or installed (edge)",
        &["node", "direction"],
    )
});

/// Each edge's lag behind central's durable sequence, in entries, as gossip carries it.
pub static REPLICATION_LAG_ENTRIES: LazyLock<IntGaugeVec> = LazyLock::new(|| {
    gauge(
        "driftkv_replication_lag_entries",
        "Log entries each edge lacks behind central's durable sequence, as gossip carries it",
        &["node", "edge"],
    )
});

/// Each edge's lag in seconds: 0 when caught up, else the time since it last was.
pub static REPLICATION_LAG_SECONDS: LazyLock<GaugeVec> = LazyLock::new(|| {
    let metric = GaugeVec::new(
        Opts::new(
            "driftkv_replication_lag_seconds",
            "Seconds each edge has been behind central (0 when caught up), as gossip carries it",
        ),
        &["node", "edge"],
    )
    .expect("a valid gauge");
    REGISTRY
        .register(Box::new(metric.clone()))
        .expect("registered once");
    metric
});

/// The last log sequence an edge applied, or central made durable.
pub static LOG_SEQUENCE: LazyLock<IntGaugeVec> = LazyLock::new(|| {
    gauge(
        "driftkv_log_sequence",
        "Replication log position: durable (central) or applied (edge)",
        &["node", "position"],
    )
});

/// Writes central acknowledged, and writes it refused for the per-key rate limit.
pub static CENTRAL_WRITES: LazyLock<IntCounterVec> = LazyLock::new(|| {
    counter(
        "driftkv_central_writes_total",
        "Key writes central handled, by outcome: applied or rate_limited",
        &["node", "outcome"],
    )
});

/// Time from a write request's arrival at central to its durable acknowledgement.
pub static CENTRAL_WRITE_SECONDS: LazyLock<HistogramVec> = LazyLock::new(|| {
    histogram(
        "driftkv_central_write_duration_seconds",
        "Time from a write request at central to its durable acknowledgement",
        &["node"],
        seconds(),
    )
});

/// Writers merged into one log append and flush (group commit).
pub static COMMIT_BATCH_WRITERS: LazyLock<HistogramVec> = LazyLock::new(|| {
    histogram(
        "driftkv_commit_batch_writers",
        "Write requests merged into one log append and flush at central (group commit)",
        &["node"],
        exponential_buckets(1.0, 2.0, 12).expect("valid buckets"),
    )
});

/// Gossip members by status (`live`, `dead`, `joining`).
pub static GOSSIP_MEMBERS: LazyLock<IntGaugeVec> = LazyLock::new(|| {
    gauge(
        "driftkv_gossip_members",
        "Cluster members this node's gossip knows, by status: live, dead, joining",
        &["node", "status"],
    )
});

/// Gossip packets dropped unread because no cluster key opens them (`unauthenticated`: a
/// forgery, a node of another cluster, a key rotated out) or they are not sealed packets at all
/// (`malformed`).
pub static GOSSIP_PACKETS_REJECTED: LazyLock<IntCounterVec> = LazyLock::new(|| {
    counter(
        "driftkv_gossip_packets_rejected_total",
        "Gossip packets dropped because no cluster key authenticates them, by reason: unauthenticated, malformed",
        &["node", "reason"],
    )
});

/// Bytes the node's data directory takes on disk.
pub static STORE_DISK_BYTES: LazyLock<IntGaugeVec> = LazyLock::new(|| {
    gauge(
        "driftkv_store_disk_bytes",
        "Bytes the node's data directory takes on disk",
        &["node"],
    )
});

/// Free bytes on the filesystem of the node's data directory.
pub static STORE_FREE_BYTES: LazyLock<IntGaugeVec> = LazyLock::new(|| {
    gauge(
        "driftkv_store_free_bytes",
        "Free bytes on the filesystem of the node's data directory",
        &["node"],
    )
});

/// Records the node stores with a value (live, or expired and not swept yet).
pub static STORE_RECORDS: LazyLock<IntGaugeVec> = LazyLock::new(|| {
    gauge(
        "driftkv_store_records",
        "Records with a value the node stores, as last counted",
        &["node"],
    )
});

/// 1 while the node's storage takes writes, 0 while it refuses them (free space under
/// storage.min_free_bytes, or an I/O error no health probe has got past since).
pub static STORE_READY: LazyLock<IntGaugeVec> = LazyLock::new(|| {
    gauge(
        "driftkv_store_ready",
        "1 while the node's storage takes writes, 0 while it refuses them",
        &["node"],
    )
});

/// Tombstones (deleted or expired keys) the node stores.
pub static STORE_TOMBSTONES: LazyLock<IntGaugeVec> = LazyLock::new(|| {
    gauge(
        "driftkv_store_tombstones",
        "Tombstones (deleted or expired keys) the node stores, as last counted",
        &["node"],
    )
});

/// Entries the replication log holds (central).
pub static LOG_ENTRIES: LazyLock<IntGaugeVec> = LazyLock::new(|| {
    gauge(
        "driftkv_log_entries",
        "Entries central's replication log holds",
        &["node"],
    )
});

/// What garbage collection removed, by kind: tombstone, namespace, log_entry.
pub static GC_PURGED: LazyLock<IntCounterVec> = LazyLock::new(|| {
    counter(
        "driftkv_gc_purged_total",
        "What garbage collection removed, by kind: tombstone (a key's), namespace (a namespace's tombstone), log_entry",
        &["node", "kind"],
    )
});

type Refresh = Box<dyn Fn() + Send + Sync>;

static REFRESHERS: LazyLock<Mutex<Vec<Refresh>>> = LazyLock::new(Mutex::default);

/// Runs `refresh` before every scrape, to bring gauges up to date. It should be quick and must
/// not block.
pub fn on_scrape(refresh: impl Fn() + Send + Sync + 'static) {
    REFRESHERS
        .lock()
        .expect("refreshers lock")
        .push(Box::new(refresh));
}

/// Every family, as a collector.
fn collectors() -> Vec<&'static dyn prometheus::core::Collector> {
    vec![
        &*HTTP_REQUESTS,
        &*HTTP_REQUEST_SECONDS,
        &*CACHE_LOOKUPS,
        &*CACHE_EVICTIONS,
        &*CACHE_BYTES,
        &*REPLICATION_ENTRIES_APPLIED,
        &*SNAPSHOTS,
        &*REPLICATION_LAG_ENTRIES,
        &*REPLICATION_LAG_SECONDS,
        &*LOG_SEQUENCE,
        &*CENTRAL_WRITES,
        &*CENTRAL_WRITE_SECONDS,
        &*COMMIT_BATCH_WRITERS,
        &*GOSSIP_MEMBERS,
        &*GOSSIP_PACKETS_REJECTED,
        &*STORE_DISK_BYTES,
        &*STORE_FREE_BYTES,
        &*STORE_READY,
        &*STORE_RECORDS,
        &*STORE_TOMBSTONES,
        &*LOG_ENTRIES,
        &*GC_PURGED,
    ]
}

/// Registers every family (each registers itself on first use).
fn register_all() {
    collectors();
}

/// The name of every family, whether or not it has samples yet (`gather` leaves empty ones
/// out; their descriptors do not).
pub fn family_names() -> Vec<String> {
    let mut names: Vec<String> = collectors()
        .iter()
        .flat_map(|collector| collector.desc().into_iter().map(|d| d.fq_name.clone()))
        .collect();
    names.sort();
    names
}

/// Every family, in the Prometheus text format (version 0.0.4).
pub fn render() -> String {
    register_all();
    for refresh in REFRESHERS.lock().expect("refreshers lock").iter() {
        refresh();
    }
    let mut text = Vec::new();
    TextEncoder::new()
        .encode(&REGISTRY.gather(), &mut text)
        .expect("text encoding cannot fail");
    String::from_utf8(text).expect("the text format is UTF-8")
}

/// The content type of [`render`]'s text.
pub const CONTENT_TYPE: &str = prometheus::TEXT_FORMAT;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn families_render_with_their_node_label_once_touched() {
        CACHE_LOOKUPS.with_label_values(&["7", "hit"]).inc_by(3);
        on_scrape(|| STORE_DISK_BYTES.with_label_values(&["7"]).set(42));
        let text = render();
        assert!(
            text.contains("driftkv_cache_lookups_total{node=\"7\",result=\"hit\"} 3"),
            "{text}"
        );
        assert!(
            text.contains("driftkv_store_disk_bytes{node=\"7\"} 42"),
            "{text}"
        );
        assert!(text.contains("# HELP driftkv_cache_lookups_total "));
    }

    /// Every metric the Grafana dashboard queries is a family here, so the dashboard cannot
    /// drift from the metrics.
    #[test]
    fn the_dashboard_queries_only_existing_families() {
        let families = family_names();
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../deploy/grafana/dashboards/driftkv.json"
        );
        let dashboard: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
        let mut queried = 0;
        for panel in dashboard["panels"].as_array().unwrap() {
            let Some(targets) = panel["targets"].as_array() else {
                assert_eq!(
                    panel["type"], "row",
                    "panel {} queries nothing",
                    panel["title"]
                );
                continue;
            };
            for target in targets {
                let expr = target["expr"].as_str().unwrap();
                for word in expr.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')) {
                    if !word.starts_with("driftkv_") {
                        continue;
                    }
                    let family = ["_bucket", "_sum", "_count"]
                        .iter()
                        .find_map(|suffix| word.strip_suffix(suffix))
                        .unwrap_or(word);
                    assert!(
                        families.iter().any(|f| f == family),
                        "panel {} queries {word}, which is no family",
                        panel["title"]
                    );
                    queried += 1;
                }
            }
        }
        assert!(
            queried >= 15,
            "the dashboard queries only {queried} metrics"
        );
        assert_eq!(families.len(), collectors().len());
    }
}
