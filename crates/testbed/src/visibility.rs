//! The visibility experiment: t-visibility in the sense of Bailis et al. (PBS, VLDB 2012), the
//! probability that a read `t` ms after a write's acknowledgement returns it.
//!
//! Every key gets one uniquely valued write at the first edge. Each other edge then reads the
//! key once, at a random offset `t` after the acknowledgement: one sample `(t, visible?)` per
//! key and edge. Reading once keeps each sample honest: a read caches its result (a miss
//! included) for `cacheTtl`, so polling would measure the cache the polling itself filled.
//! With [`ReadPattern::ReadBefore`], every edge reads the key (and caches its absence) before
//! the write, which is what makes Workers KV take up to about `cacheTtl` to show a write; with
//! [`ReadPattern::NeverRead`], a read sees whatever replication has brought.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use driftkv_client::Client;
use futures::StreamExt as _;
use rand::Rng as _;

use crate::history::{History, Kind, Op};

/// Whether the edges read a key before it is written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReadPattern {
    /// Each edge reads (and so caches the absence of) the key before the write.
    ReadBefore,
    /// No edge reads the key before its scheduled read.
    NeverRead,
}

/// What to run.
#[derive(Clone, Debug)]
pub struct Plan {
    /// One client per edge; the first writes, the others read.
    pub edges: Vec<Client>,
    /// The namespace the keys go into.
    pub namespace: String,
    /// Keys written (one write each).
    pub keys: usize,
    /// The `cacheTtl` reads ask for, in seconds.
    pub cache_ttl_s: u64,
    /// Read pattern.
    pub pattern: ReadPattern,
    /// Reads happen at a uniformly random offset in `0..=max_offset` after the write's ack.
    pub max_offset: Duration,
    /// Keys in flight at once.
    pub concurrency: usize,
    /// Staleness bound recorded in the history (cache TTL plus replication lag bound).
    pub bound: Duration,
}

/// One read of one key at one edge.
#[derive(Clone, Debug, PartialEq)]
pub struct Sample {
    /// The key.
    pub key: String,
    /// The reading edge's index.
    pub edge: usize,
    /// When the read began, after the write's acknowledgement, in milliseconds.
    pub offset_ms: f64,
    /// Whether it returned the write.
    pub visible: bool,
}

/// The outcome: every sample, and the history of every operation.
#[derive(Clone, Debug)]
pub struct Outcome {
    /// Samples, in completion order.
    pub samples: Vec<Sample>,
    /// Every operation, for the checker.
    pub history: History,
}

/// A failed experiment.
#[derive(Debug, thiserror::Error)]
pub enum ExperimentError {
    /// The plan cannot run.
    #[error("{0}")]
    Plan(String),
    /// A request failed.
    #[error(transparent)]
    Client(#[from] driftkv_client::Error),
}

/// Runs the experiment, calling `progress` after every key.
pub async fn run(plan: &Plan, progress: &(dyn Fn() + Sync)) -> Result<Outcome, ExperimentError> {
    if plan.edges.len() < 2 {
        return Err(ExperimentError::Plan(
            "the visibility experiment needs at least two edges".into(),
        ));
    }
    let start = Instant::now();
    let run_id: u64 = rand::thread_rng().gen();
    let ops: Arc<Mutex<Vec<Op>>> = Arc::default();
    let samples: Arc<Mutex<Vec<Sample>>> = Arc::default();
    let results: Vec<Result<(), ExperimentError>> = futures::stream::iter(0..plan.keys)
        .map(|i| {
            let (ops, samples) = (ops.clone(), samples.clone());
            async move {
                let key = format!("vis-{run_id:016x}-{i:06}");
                one_key(plan, &key, start, &ops, &samples).await?;
                progress();
                Ok(())
            }
        })
        .buffer_unordered(plan.concurrency.max(1))
        .collect()
        .await;
    results.into_iter().collect::<Result<(), _>>()?;
    let ops = std::mem::take(&mut *ops.lock().expect("ops lock"));
    let samples = std::mem::take(&mut *samples.lock().expect("samples lock"));
    Ok(Outcome {
        samples,
        history: History::of(plan.bound, plan.cache_ttl_s, plan.edges.len(), ops),
    })
}

fn ms(start: Instant, at: Instant) -> u64 {
    at.duration_since(start).as_millis() as u64
}

async fn one_key(
    plan: &Plan,
    key: &str,
    start: Instant,
    ops: &Mutex<Vec<Op>>,
    samples: &Mutex<Vec<Sample>>,
) -> Result<(), ExperimentError> {
    let ns = plan.namespace.as_str();
    let ttl = Some(plan.cache_ttl_s);
    let record = |kind: Kind, edge: usize, value: Option<String>, invoked: Instant, ok: bool| {
        ops.lock().expect("ops lock").push(Op {
            kind,
            key: key.to_owned(),
            value,
            edge,
            invoke_ms: ms(start, invoked),
            complete_ms: ms(start, Instant::now()),
            ok,
        });
    };
    let read = |edge: usize| async move {
        let invoked = Instant::now();
        let value = plan.edges[edge].get_cached(ns, key, ttl).await?;
        let value = value.map(|v| String::from_utf8_lossy(&v).into_owned());
        record(Kind::Read, edge, value.clone(), invoked, true);
        Ok::<_, ExperimentError>(value)
    };
    if plan.pattern == ReadPattern::ReadBefore {
        for edge in 1..plan.edges.len() {
            read(edge).await?;
        }
    }
    let value = format!("{key}=written");
    let invoked = Instant::now();
    let written = plan.edges[0]
        .put(ns, key, value.clone().into_bytes(), &Default::default())
        .await;
    record(
        Kind::Write,
        0,
        Some(value.clone()),
        invoked,
        written.is_ok(),
    );
    written?;
    let acked = Instant::now();
    let reads = (1..plan.edges.len()).map(|edge| {
        let offset = plan.max_offset.mul_f64(rand::thread_rng().gen::<f64>());
        let value = value.clone();
        async move {
            tokio::time::sleep_until((acked + offset).into()).await;
            let began = Instant::now();
            let seen = read(edge).await?;
            samples.lock().expect("samples lock").push(Sample {
                key: key.to_owned(),
                edge,
                offset_ms: began.duration_since(acked).as_secs_f64() * 1000.0,
                visible: seen.as_deref() == Some(value.as_str()),
            });
            Ok::<_, ExperimentError>(())
        }
    });
    futures::future::try_join_all(reads).await?;
    Ok(())
}

/// The t-visibility curve of some samples: for each of `bins` equal slices of `0..=max_ms`,
/// the probability a read that late returned the write, made non-decreasing (a write once
/// visible stays visible, so dips are sampling noise). `None` for a slice with no samples.
pub fn curve(samples: &[&Sample], max_ms: f64, bins: usize) -> Vec<(f64, Option<f64>)> {
    let width = max_ms / bins as f64;
    let mut counts = vec![(0u64, 0u64); bins];
    for sample in samples {
        let bin = ((sample.offset_ms / width) as usize).min(bins - 1);
        counts[bin].0 += u64::from(sample.visible);
        counts[bin].1 += 1;
    }
    let mut best: f64 = 0.0;
    counts
        .into_iter()
        .enumerate()
        .map(|(i, (visible, total))| {
            let p = (total > 0).then(|| {
                best = best.max(visible as f64 / total as f64);
                best
            });
            ((i + 1) as f64 * width, p)
        })
        .collect()
}

/// The time by which a fraction `q` of reads see the write, from a [`curve`]: the end of the
/// first slice where the probability reaches `q`; `None` if none does.
pub fn time_to_visible(curve: &[(f64, Option<f64>)], q: f64) -> Option<f64> {
    curve
        .iter()
        .find(|(_, p)| p.is_some_and(|p| p >= q))
        .map(|(t, _)| *t)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(offset_ms: f64, visible: bool) -> Sample {
        Sample {
            key: "k".into(),
            edge: 1,
            offset_ms,
            visible,
        }
    }

    #[test]
    fn the_curve_rises_where_reads_start_seeing_the_write() {
        let samples: Vec<Sample> = (0..1000)
            .map(|i| {
                let t = i as f64;
                sample(t, t >= 300.0)
            })
            .collect();
        let refs: Vec<&Sample> = samples.iter().collect();
        let curve = curve(&refs, 1000.0, 10);
        assert_eq!(curve[0], (100.0, Some(0.0)));
        assert_eq!(curve[2].1, Some(0.0));
        assert_eq!(curve[3].1, Some(1.0));
        assert_eq!(time_to_visible(&curve, 0.5), Some(400.0));
        assert_eq!(time_to_visible(&curve, 0.99), Some(400.0));
    }

    #[test]
    fn dips_are_smoothed_and_empty_slices_stay_unknown() {
        let samples = [
            sample(50.0, true),
            sample(150.0, false),
            sample(350.0, true),
        ];
        let refs: Vec<&Sample> = samples.iter().collect();
        let curve = curve(&refs, 400.0, 4);
        assert_eq!(
            curve.iter().map(|(_, p)| *p).collect::<Vec<_>>(),
            vec![Some(1.0), Some(1.0), None, Some(1.0)]
        );
        assert_eq!(time_to_visible(&[(100.0, Some(0.2))], 0.5), None);
    }
}
