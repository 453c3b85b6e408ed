//! The staleness experiment: a mixed workload of writes and reads over many keys and edges for
//! a fixed time, measuring how often reads are stale and by how much.
//!
//! Each key's writes carry increasing version numbers (`key#n`). A read is stale when a newer
//! version than the one it returned had been acknowledged before the read began; it is behind
//! by the number of such versions, and stale for the time since the first of them was
//! acknowledged. Writes respect Workers KV's one write per second per key. After the workload,
//! `final` reads of every key at every edge (from listings, which read the replica) let the
//! checker judge convergence.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use driftkv_client::{Client, PutOptions};
use rand::Rng as _;
use tokio::sync::Semaphore;

use crate::history::{History, Kind, Op};
use crate::visibility::ExperimentError;

/// What to run.
#[derive(Clone, Debug)]
pub struct Plan {
    /// One client per edge; reads and writes go to random edges.
    pub edges: Vec<Client>,
    /// The namespace the keys go into.
    pub namespace: String,
    /// Keys the workload spreads over.
    pub keys: usize,
    /// How long it runs.
    pub duration: Duration,
    /// Writes per second, over all keys (at most one per key per second are sent).
    pub writes_per_second: f64,
    /// Reads per second, over all keys.
    pub reads_per_second: f64,
    /// The `cacheTtl` reads ask for, in seconds.
    pub cache_ttl_s: u64,
    /// Requests in flight at once, at most.
    pub concurrency: usize,
    /// Staleness bound recorded in the history.
    pub bound: Duration,
}

/// One read, judged.
#[derive(Clone, Debug, PartialEq)]
pub struct Read {
    /// When it began, in ms since the experiment started.
    pub at_ms: u64,
    /// The edge it went to.
    pub edge: usize,
    /// Acknowledged versions newer than the one it returned (0: fresh).
    pub versions_behind: u64,
    /// How long the value it returned had been superseded, in ms (0 when fresh).
    pub stale_ms: u64,
}

/// How stale a run's reads were.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Summary {
    /// Reads judged.
    pub reads: usize,
    /// Reads that returned a superseded version.
    pub stale: usize,
    /// Versions behind, averaged over every read.
    pub mean_versions_behind: f64,
    /// The most versions a read was behind.
    pub max_versions_behind: u64,
    /// How long the values stale reads returned had been superseded, in ms: p50, p99 and
    /// max; `None` with no stale read.
    pub stale_ms: Option<(u64, u64, u64)>,
}

impl Summary {
    /// The summary of `reads`.
    pub fn of(reads: &[Read]) -> Self {
        let mut stale_ms: Vec<u64> = reads
            .iter()
            .filter(|r| r.versions_behind > 0)
            .map(|r| r.stale_ms)
            .collect();
        stale_ms.sort_unstable();
        let quantile =
            |q: f64| stale_ms[((stale_ms.len() as f64 * q).ceil() as usize).saturating_sub(1)];
        Summary {
            reads: reads.len(),
            stale: stale_ms.len(),
            mean_versions_behind: reads.iter().map(|r| r.versions_behind as f64).sum::<f64>()
                / reads.len().max(1) as f64,
            max_versions_behind: reads.iter().map(|r| r.versions_behind).max().unwrap_or(0),
            stale_ms: (!stale_ms.is_empty())
                .then(|| (quantile(0.5), quantile(0.99), stale_ms[stale_ms.len() - 1])),
        }
    }
}

impl std::fmt::Display for Summary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "{} reads, {} stale ({:.2}%); versions behind: mean {:.3}, max {}",
            self.reads,
            self.stale,
            100.0 * self.stale as f64 / self.reads.max(1) as f64,
            self.mean_versions_behind,
            self.max_versions_behind
        )?;
        match self.stale_ms {
            Some((p50, p99, max)) => write!(
                f,
                "staleness of stale reads: p50 {p50} ms, p99 {p99} ms, max {max} ms"
            ),
            None => write!(f, "staleness of stale reads: p50 - ms, p99 - ms, max - ms"),
        }
    }
}

/// The outcome: every judged read, and the history.
#[derive(Clone, Debug)]
pub struct Outcome {
    /// Reads, in completion order.
    pub reads: Vec<Read>,
    /// Every operation, for the checker.
    pub history: History,
}

/// Acknowledged versions per key: (version, acknowledged at).
type Acked = HashMap<usize, Vec<(u64, Instant)>>;

/// Runs the workload until its duration is over and every request has completed.
pub async fn run(plan: &Plan) -> Result<Outcome, ExperimentError> {
    if plan.edges.is_empty() || plan.keys == 0 {
        return Err(ExperimentError::Plan("no edges or no keys".into()));
    }
    let start = Instant::now();
    let run_id: u64 = rand::thread_rng().gen();
    let key_name = move |k: usize| format!("stale-{run_id:016x}-{k:05}");
    let acked: Arc<Mutex<Acked>> = Arc::default();
    let ops: Arc<Mutex<Vec<Op>>> = Arc::default();
    let reads: Arc<Mutex<Vec<Read>>> = Arc::default();
    let slots = Arc::new(Semaphore::new(plan.concurrency.max(1)));
    let mut tasks = tokio::task::JoinSet::new();
    let mut next_version: Vec<u64> = vec![0; plan.keys];
    let mut last_write: Vec<Option<Instant>> = vec![None; plan.keys];
    // Both rates drive one schedule: each tick is a read or a write, in proportion.
    let total_rate = plan.writes_per_second + plan.reads_per_second;
    if total_rate <= 0.0 {
        return Err(ExperimentError::Plan("no reads and no writes".into()));
    }
    let mut ticks = tokio::time::interval(Duration::from_secs_f64(1.0 / total_rate));
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    while start.elapsed() < plan.duration {
        ticks.tick().await;
        let (write, key, edge) = {
            let mut rng = rand::thread_rng();
            (
                rng.gen::<f64>() * total_rate < plan.writes_per_second,
                rng.gen_range(0..plan.keys),
                rng.gen_range(0..plan.edges.len()),
            )
        };
        let permit = slots.clone().acquire_owned().await.expect("semaphore open");
        let client = plan.edges[edge].clone();
        let (ns, name) = (plan.namespace.clone(), key_name(key));
        let (acked, ops, reads) = (acked.clone(), ops.clone(), reads.clone());
        let ttl = plan.cache_ttl_s;
        if write {
            // One write per key per second, as Workers KV allows.
            if last_write[key].is_some_and(|at| at.elapsed() < Duration::from_millis(1100)) {
                continue;
            }
            last_write[key] = Some(Instant::now());
            next_version[key] += 1;
            let version = next_version[key];
            tasks.spawn(async move {
                let value = format!("{name}#{version}");
                let invoked = Instant::now();
                let options = PutOptions {
                    // The value again, where listings (which read the replica) show it.
                    metadata: Some(serde_json::json!({ "v": value })),
                    ..PutOptions::default()
                };
                let outcome = client
                    .put(&ns, &name, value.clone().into_bytes(), &options)
                    .await;
                let completed = Instant::now();
                if outcome.is_ok() {
                    acked
                        .lock()
                        .expect("acked lock")
                        .entry(key)
                        .or_default()
                        .push((version, completed));
                }
                ops.lock().expect("ops lock").push(Op {
                    kind: Kind::Write,
                    key: name,
                    value: Some(value),
                    edge,
                    invoke_ms: ms(start, invoked),
                    complete_ms: ms(start, completed),
                    ok: outcome.is_ok(),
                });
                drop(permit);
            });
        } else {
            tasks.spawn(async move {
                let invoked = Instant::now();
                let outcome = client.get_cached(&ns, &name, Some(ttl)).await;
                let completed = Instant::now();
                let value = outcome
                    .as_ref()
                    .ok()
                    .and_then(|v| v.as_ref())
                    .map(|v| String::from_utf8_lossy(v).into_owned());
                if outcome.is_ok() {
                    let seen = value
                        .as_deref()
                        .and_then(|v| v.rsplit_once('#'))
                        .and_then(|(_, n)| n.parse::<u64>().ok())
                        .unwrap_or(0);
                    let newer: Vec<Instant> = acked
                        .lock()
                        .expect("acked lock")
                        .get(&key)
                        .map(|versions| {
                            versions
                                .iter()
                                .filter(|(v, at)| *v > seen && *at <= invoked)
                                .map(|(_, at)| *at)
                                .collect()
                        })
                        .unwrap_or_default();
                    let stale_ms = newer
                        .iter()
                        .min()
                        .map_or(0, |first| invoked.duration_since(*first).as_millis() as u64);
                    reads.lock().expect("reads lock").push(Read {
                        at_ms: ms(start, invoked),
                        edge,
                        versions_behind: newer.len() as u64,
                        stale_ms,
                    });
                }
                ops.lock().expect("ops lock").push(Op {
                    kind: Kind::Read,
                    key: name,
                    value,
                    edge,
                    invoke_ms: ms(start, invoked),
                    complete_ms: ms(start, completed),
                    ok: outcome.is_ok(),
                });
                drop(permit);
            });
        }
    }
    while tasks.join_next().await.is_some() {}
    let finals = settle(plan, &format!("stale-{run_id:016x}-"), start).await?;
    let mut ops = std::mem::take(&mut *ops.lock().expect("ops lock"));
    ops.extend(finals);
    let mut reads = std::mem::take(&mut *reads.lock().expect("reads lock"));
    reads.sort_by_key(|r| r.at_ms);
    Ok(Outcome {
        reads,
        history: History::of(plan.bound, plan.cache_ttl_s, plan.edges.len(), ops),
    })
}

/// Longest wait, after the workload, for every edge's replica to hold the same data.
const SETTLE: Duration = Duration::from_secs(15);

/// The `final` reads: every key at every edge, from listings (the replica, not the cache),
/// once they agree or `SETTLE` has passed; the checker judges convergence from them.
async fn settle(plan: &Plan, prefix: &str, start: Instant) -> Result<Vec<Op>, ExperimentError> {
    let deadline = Instant::now() + SETTLE;
    loop {
        let invoked = Instant::now();
        let mut views = Vec::with_capacity(plan.edges.len());
        for edge in &plan.edges {
            let keys = edge.all_keys(&plan.namespace, Some(prefix)).await?;
            let view: HashMap<String, Option<String>> = keys
                .into_iter()
                .map(|k| {
                    let value = k
                        .metadata
                        .as_ref()
                        .and_then(|m| m["v"].as_str())
                        .map(str::to_owned);
                    (k.name, value)
                })
                .collect();
            views.push(view);
        }
        let agreed = views.windows(2).all(|pair| pair[0] == pair[1]);
        if agreed || Instant::now() >= deadline {
            let completed = Instant::now();
            let mut keys: Vec<&String> = views.iter().flat_map(HashMap::keys).collect();
            keys.sort();
            keys.dedup();
            let mut finals = Vec::new();
            for key in keys {
                for (edge, view) in views.iter().enumerate() {
                    finals.push(Op {
                        kind: Kind::Final,
                        key: key.clone(),
                        value: view.get(key).cloned().flatten(),
                        edge,
                        invoke_ms: ms(start, invoked),
                        complete_ms: ms(start, completed),
                        ok: true,
                    });
                }
            }
            return Ok(finals);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn ms(start: Instant, at: Instant) -> u64 {
    at.duration_since(start).as_millis() as u64
}

/// One second of the run: reads, the fraction stale, mean versions behind, worst staleness.
#[derive(Clone, Debug, PartialEq)]
pub struct Second {
    /// Seconds since the start.
    pub second: u64,
    /// Reads that began in it.
    pub reads: usize,
    /// Fraction of them that were stale.
    pub stale_fraction: f64,
    /// Mean versions behind.
    pub mean_versions_behind: f64,
    /// Longest staleness, in ms.
    pub max_stale_ms: u64,
}

/// The reads bucketed per second.
pub fn timeline(reads: &[Read]) -> Vec<Second> {
    let seconds = reads
        .iter()
        .map(|r| r.at_ms / 1000)
        .max()
        .map_or(0, |s| s + 1);
    (0..seconds)
        .map(|second| {
            let these: Vec<&Read> = reads.iter().filter(|r| r.at_ms / 1000 == second).collect();
            let n = these.len().max(1) as f64;
            Second {
                second,
                reads: these.len(),
                stale_fraction: these.iter().filter(|r| r.versions_behind > 0).count() as f64 / n,
                mean_versions_behind: these.iter().map(|r| r.versions_behind as f64).sum::<f64>()
                    / n,
                max_stale_ms: these.iter().map(|r| r.stale_ms).max().unwrap_or(0),
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_summary_counts_stale_reads_and_their_quantiles() {
        let read = |versions_behind, stale_ms| Read {
            at_ms: 0,
            edge: 0,
            versions_behind,
            stale_ms,
        };
        let mut reads: Vec<Read> = (1..=100).map(|ms| read(1, ms)).collect();
        reads.extend((0..100).map(|_| read(0, 0)));
        reads.push(read(3, 500));
        let summary = Summary::of(&reads);
        assert_eq!((summary.reads, summary.stale), (201, 101));
        assert_eq!(summary.max_versions_behind, 3);
        assert_eq!(summary.stale_ms, Some((51, 100, 500)));
        assert!(summary
            .to_string()
            .starts_with("201 reads, 101 stale (50.25%)"));
        assert_eq!(Summary::of(&[]).stale_ms, None);
    }

    fn read(at_ms: u64, behind: u64, stale_ms: u64) -> Read {
        Read {
            at_ms,
            edge: 0,
            versions_behind: behind,
            stale_ms,
        }
    }

    #[test]
    fn the_timeline_buckets_reads_per_second() {
        let seconds = timeline(&[read(100, 0, 0), read(900, 2, 300), read(2500, 1, 50)]);
        assert_eq!(seconds.len(), 3);
        assert_eq!(seconds[0].reads, 2);
        assert_eq!(seconds[0].stale_fraction, 0.5);
        assert_eq!(seconds[0].mean_versions_behind, 1.0);
        assert_eq!(seconds[0].max_stale_ms, 300);
        assert_eq!(seconds[1].reads, 0);
        assert_eq!(seconds[2].max_stale_ms, 50);
    }
}
