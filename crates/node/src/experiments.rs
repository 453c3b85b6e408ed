//! Visibility experiments run by an edge on request, for the web console's consistency page:
//! served beside the testbed's fault endpoint, only when `testbed.enabled` is set and only to
//! the bearer of `testbed.admin_token`.
//!
//! - `POST /admin/testbed/experiments`: `{"keys", "max_offset_ms", "pattern", "cache_ttl_s"}`
//!   (each optional) starts the testbed's visibility experiment, writing at this edge and
//!   reading at every other live edge gossip knows, in a namespace of its own in account
//!   `testbed` that is deleted afterwards. Bounded: at most [`MAX_KEYS`] keys, reads at most
//!   [`MAX_OFFSET_MS`] after each write, the whole run cut off after [`RUN_DEADLINE`]; one run
//!   at a time (another request meanwhile is a 409). Answers 202 with the run.
//! - `GET /admin/testbed/experiments`: the running experiment, if any, then the last
//!   [`KEPT_RUNS`] saved ones, newest first.
//! - `GET /admin/testbed/experiments/{id}`: one run (its progress while it runs).
//! - `GET /admin/testbed/experiments/{id}/{file}`: a finished run's `visibility.svg`,
//!   `visibility.csv` or `history.jsonl`.
//!
//! Each run is saved in `<data dir>/experiments/<id>/`: `run.json` (what the endpoint
//! answers) and, when it finished, the CSV, SVG plot and history the `driftkv testbed
//! visibility` command writes. Older runs are removed, so the directory does not grow.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context as _;
use axum::body::Bytes;
use axum::extract::{Path as UrlPath, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use driftkv_client::{Client, ClientOptions};
use driftkv_core::time::unix_now_ms;
use driftkv_core::KvError;
use driftkv_gossip::{keys, Gossip};
use driftkv_http::{ApiError, Auth};
use driftkv_testbed::visibility::{self, Plan, ReadPattern};
use driftkv_testbed::{check, report};
use serde::{Deserialize, Serialize};

use crate::config::Config;

/// Most keys one experiment writes.
pub const MAX_KEYS: usize = 200;
/// Latest read after a write's acknowledgement, in ms.
pub const MAX_OFFSET_MS: u64 = 10_000;
/// A run still going after this long is stopped and recorded as failed.
pub const RUN_DEADLINE: Duration = Duration::from_secs(60);
/// Saved runs kept; older ones are removed.
pub const KEPT_RUNS: usize = 10;
/// Keys in flight at once: with reads at most 10 s after their write, 200 keys end within
/// about 40 s.
const CONCURRENCY: usize = 50;
/// The account experiment namespaces are made in.
const ACCOUNT: &str = "testbed";
/// The files a finished run has, and their content types.
const FILES: [(&str, &str); 3] = [
    ("visibility.svg", "image/svg+xml"),
    ("visibility.csv", "text/csv; charset=utf-8"),
    ("history.jsonl", "application/jsonl"),
];

/// Whether the edges read a key before it is written (see [`ReadPattern`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
enum Pattern {
    NeverRead,
    ReadBefore,
}

/// What `POST` asks for; every field has a default.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct Request {
    keys: Option<usize>,
    max_offset_ms: Option<u64>,
    pattern: Option<Pattern>,
    cache_ttl_s: Option<u64>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
enum RunState {
    Running,
    Done,
    Failed,
}

/// One line of a run's summary: a reading edge, or all of them.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct Row {
    label: String,
    samples: usize,
    p50_ms: Option<f64>,
    p99_ms: Option<f64>,
    p999_ms: Option<f64>,
    /// The t-visibility curve: `[ms, probability or null]`.
    curve: Vec<(f64, Option<f64>)>,
}

/// A run, as the endpoint answers it and `run.json` keeps it.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct Run {
    id: String,
    state: RunState,
    started_at_ms: u64,
    finished_at_ms: Option<u64>,
    keys: usize,
    keys_done: usize,
    max_offset_ms: u64,
    pattern: Pattern,
    cache_ttl_s: u64,
    /// The edge that wrote, then the edges that read.
    writer: String,
    readers: Vec<String>,
    rows: Vec<Row>,
    /// Violations of the consistency model the checker found in the run's history.
    violations: Option<usize>,
    error: Option<String>,
}

/// The run in progress and its count of finished keys.
struct Current {
    run: Run,
    done: Arc<AtomicUsize>,
}

/// The saved runs: a directory per run, named by its id.
struct Archive {
    dir: PathBuf,
}

/// The endpoint's state on one edge.
struct Lab {
    archive: Archive,
    /// This edge's URL, where the experiment writes.
    writer: String,
    /// How the experiment's clients reach the edges: the node's first API token, if any, and
    /// the cluster CA, trusted besides the system's roots for HTTPS edges.
    client: ClientOptions,
    gossip: Arc<Gossip>,
    default_cache_ttl_s: u64,
    min_cache_ttl_s: u64,
    current: Mutex<Option<Current>>,
}

/// The routes for an edge whose data lives in `data_dir` and which others reach at `writer`,
/// or none when the testbed is off.
pub fn routes(config: &Config, data_dir: &Path, gossip: Arc<Gossip>, writer: String) -> Router {
    if !config.testbed.enabled {
        return Router::new();
    }
    let lab = Arc::new(Lab {
        archive: Archive {
            dir: data_dir.join("experiments"),
        },
        writer,
        client: ClientOptions {
            token: config.api_tokens.first().cloned(),
            // The cluster CA is what `driftkv certs` issued the edges' HTTPS certificates with;
            // a certificate from a public CA is trusted through the system's roots anyway.
            ca_pem: (!config.tls.ca.as_os_str().is_empty())
                .then(|| std::fs::read(&config.tls.ca).ok())
                .flatten(),
        },
        gossip,
        default_cache_ttl_s: config.cache.default_ttl_secs,
        min_cache_ttl_s: config.cache.min_ttl_secs,
        current: Mutex::new(None),
    });
    let routes = Router::new()
        .route("/admin/testbed/experiments", get(list).post(start))
        .route("/admin/testbed/experiments/{id}", get(one))
        .route("/admin/testbed/experiments/{id}/{file}", get(file))
        .with_state(lab);
    driftkv_http::guarded(routes, Auth::tokens([&config.testbed.admin_token]))
}

fn bad(message: String) -> ApiError {
    ApiError(KvError::InvalidParameter(message))
}

/// Checks a request against the bounds and fills in the defaults.
fn plan_of(
    request: Request,
    min_ttl: u64,
    default_ttl: u64,
) -> Result<(usize, u64, Pattern, u64), ApiError> {
    let keys = request.keys.unwrap_or(50);
    if !(1..=MAX_KEYS).contains(&keys) {
        return Err(bad(format!("keys must be 1..={MAX_KEYS}, not {keys}")));
    }
    let offset = request.max_offset_ms.unwrap_or(2000);
    if !(100..=MAX_OFFSET_MS).contains(&offset) {
        return Err(bad(format!(
            "max_offset_ms must be 100..={MAX_OFFSET_MS}, not {offset}"
        )));
    }
    let ttl = request.cache_ttl_s.unwrap_or(default_ttl.max(min_ttl));
    if ttl < min_ttl {
        return Err(bad(format!(
            "cache_ttl_s must be at least the edges' cache.min_ttl_secs ({min_ttl}), not {ttl}"
        )));
    }
    Ok((
        keys,
        offset,
        request.pattern.unwrap_or(Pattern::NeverRead),
        ttl,
    ))
}

async fn start(State(lab): State<Arc<Lab>>, body: Bytes) -> Result<Response, ApiError> {
    let request: Request = if body.iter().all(u8::is_ascii_whitespace) {
        Request::default()
    } else {
        serde_json::from_slice(&body)
            .map_err(|e| ApiError(KvError::BadRequest(format!("malformed request body: {e}"))))?
    };
    let (keys, max_offset_ms, pattern, cache_ttl_s) =
        plan_of(request, lab.min_cache_ttl_s, lab.default_cache_ttl_s)?;
    let readers = lab.readers().await;
    if readers.is_empty() {
        return Err(ApiError(KvError::Conflict(
            "this edge knows no other live edge to read at (see /cluster)".into(),
        )));
    }
    let started_at_ms = unix_now_ms();
    let run = Run {
        id: started_at_ms.to_string(),
        state: RunState::Running,
        started_at_ms,
        finished_at_ms: None,
        keys,
        keys_done: 0,
        max_offset_ms,
        pattern,
        cache_ttl_s,
        writer: lab.writer.clone(),
        readers,
        rows: Vec::new(),
        violations: None,
        error: None,
    };
    let done = Arc::new(AtomicUsize::new(0));
    {
        let mut current = lab.current.lock().expect("experiment lock");
        if let Some(running) = current.as_ref() {
            return Err(ApiError(KvError::Conflict(format!(
                "experiment {} is still running; one runs at a time",
                running.run.id
            ))));
        }
        *current = Some(Current {
            run: run.clone(),
            done: done.clone(),
        });
    }
    tracing::info!(id = %run.id, keys, max_offset_ms, ?pattern, "testbed: visibility experiment started");
    tokio::spawn(lab.clone().conduct(run.clone(), done));
    Ok((StatusCode::ACCEPTED, Json(run)).into_response())
}

async fn list(State(lab): State<Arc<Lab>>) -> Result<Json<Vec<Run>>, ApiError> {
    let mut runs: Vec<Run> = lab.running().into_iter().collect();
    let saved = lab.archive.saved().map_err(internal)?;
    runs.extend(saved.into_iter().filter(|r| r.state != RunState::Running));
    Ok(Json(runs))
}

async fn one(
    State(lab): State<Arc<Lab>>,
    UrlPath(id): UrlPath<String>,
) -> Result<Json<Run>, ApiError> {
    if let Some(run) = lab.running().filter(|r| r.id == id) {
        return Ok(Json(run));
    }
    let path = lab.archive.run_dir(&id)?.join("run.json");
    let text = std::fs::read(&path).map_err(|_| ApiError(KvError::RouteNotFound))?;
    let run = serde_json::from_slice(&text).map_err(internal)?;
    Ok(Json(run))
}

async fn file(
    State(lab): State<Arc<Lab>>,
    UrlPath((id, name)): UrlPath<(String, String)>,
) -> Result<Response, ApiError> {
    let (name, content_type) = FILES
        .iter()
        .find(|(file, _)| *file == name)
        .ok_or(ApiError(KvError::RouteNotFound))?;
    let bytes = std::fs::read(lab.archive.run_dir(&id)?.join(name))
        .map_err(|_| ApiError(KvError::RouteNotFound))?;
    Ok((
        [
            (header::CONTENT_TYPE, *content_type),
            // A plot opened on its own runs nothing and loads nothing.
            (
                header::CONTENT_SECURITY_POLICY,
                "default-src 'none'; style-src 'unsafe-inline'; sandbox",
            ),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
            (header::CACHE_CONTROL, "private, no-cache"),
        ],
        bytes,
    )
        .into_response())
}

fn internal(e: impl std::fmt::Display) -> ApiError {
    ApiError(KvError::Internal(format!("experiments: {e}")))
}

impl Lab {
    /// The run in progress, with its progress.
    fn running(&self) -> Option<Run> {
        let current = self.current.lock().expect("experiment lock");
        current.as_ref().map(|c| Run {
            keys_done: c.done.load(Ordering::Relaxed),
            ..c.run.clone()
        })
    }

    /// The URLs of the other live edges, by node id.
    async fn readers(&self) -> Vec<String> {
        let own = self.gossip.node_id().to_owned();
        let mut edges: Vec<(u64, String)> = self
            .gossip
            .members()
            .await
            .into_iter()
            .filter(|m| m.live && m.node_id != own && m.fact(keys::ROLE) == Some("edge"))
            .filter_map(|m| Some((m.node_id.parse().ok()?, m.fact(keys::HTTP)?.to_owned())))
            .collect();
        edges.sort();
        edges.into_iter().map(|(_, url)| url).collect()
    }

    /// Runs the experiment, saves it, and frees the endpoint for the next one.
    async fn conduct(self: Arc<Self>, mut run: Run, done: Arc<AtomicUsize>) {
        let outcome = self.measure(&mut run, &done).await;
        run.keys_done = done.load(Ordering::Relaxed);
        run.finished_at_ms = Some(unix_now_ms());
        match outcome {
            Ok(()) => run.state = RunState::Done,
            Err(e) => {
                tracing::warn!(id = %run.id, error = format!("{e:#}"), "testbed: visibility experiment failed");
                run.state = RunState::Failed;
                run.error = Some(format!("{e:#}"));
            }
        }
        if let Err(e) = self.archive.save(&run).and_then(|()| self.archive.prune()) {
            tracing::error!(id = %run.id, error = format!("{e:#}"), "testbed: cannot save the experiment");
        }
        tracing::info!(id = %run.id, state = ?run.state, "testbed: visibility experiment ended");
        *self.current.lock().expect("experiment lock") = None;
    }

    /// The experiment in a namespace of its own, removed afterwards however the run ended.
    async fn measure(&self, run: &mut Run, done: &AtomicUsize) -> anyhow::Result<()> {
        let writer = Client::with_options(&run.writer, ACCOUNT, self.client.clone())?;
        let mut edges = vec![writer.clone()];
        for reader in &run.readers {
            edges.push(Client::with_options(reader, ACCOUNT, self.client.clone())?);
        }
        let namespace = writer
            .create_namespace(&format!("console-visibility-{}", run.id))
            .await
            .context("cannot create the experiment's namespace")?
            .id;
        let plan = Plan {
            edges,
            namespace: namespace.clone(),
            keys: run.keys,
            cache_ttl_s: run.cache_ttl_s,
            pattern: match run.pattern {
                Pattern::NeverRead => ReadPattern::NeverRead,
                Pattern::ReadBefore => ReadPattern::ReadBefore,
            },
            max_offset: Duration::from_millis(run.max_offset_ms),
            concurrency: CONCURRENCY.min(run.keys),
            // Staleness allowed: the cache TTL and a second for the rest.
            bound: Duration::from_millis(run.cache_ttl_s * 1000 + 1000),
        };
        let progress = || {
            done.fetch_add(1, Ordering::Relaxed);
        };
        let outcome = tokio::time::timeout(RUN_DEADLINE, visibility::run(&plan, &progress)).await;
        if let Err(e) = writer.delete_namespace(&namespace).await {
            tracing::warn!(error = %e, %namespace, "testbed: cannot delete the experiment's namespace");
        }
        let outcome = outcome.map_err(|_| {
            anyhow::anyhow!(
                "stopped after {} s, the longest a run may take",
                RUN_DEADLINE.as_secs()
            )
        })??;
        let max_ms = run.max_offset_ms as f64;
        let rows = report::summarize(&outcome.samples, plan.edges.len(), max_ms);
        let dir = self.archive.dir.join(&run.id);
        std::fs::create_dir_all(&dir)
            .with_context(|| format!("cannot create {}", dir.display()))?;
        report::write_csv(&dir.join("visibility.csv"), &outcome.samples)?;
        report::plot_svg(
            &dir.join("visibility.svg"),
            &format!(
                "t-visibility, run {}, cacheTtl {} s, {:?}",
                run.id, run.cache_ttl_s, run.pattern
            ),
            &rows,
            max_ms,
        )
        .map_err(|e| anyhow::anyhow!("cannot plot: {e}"))?;
        let history = std::fs::File::create(dir.join("history.jsonl"))?;
        outcome
            .history
            .write(std::io::BufWriter::new(history))
            .context("cannot write the history")?;
        run.violations = Some(check(&outcome.history).len());
        run.rows = rows
            .into_iter()
            .map(|row| Row {
                label: row.label,
                samples: row.samples,
                p50_ms: row.p50,
                p99_ms: row.p99,
                p999_ms: row.p999,
                curve: row.curve,
            })
            .collect();
        Ok(())
    }
}

impl Archive {
    /// A saved run's directory; ids are the decimal start times the endpoint gives them.
    fn run_dir(&self, id: &str) -> Result<PathBuf, ApiError> {
        if id.is_empty() || id.len() > 20 || !id.bytes().all(|b| b.is_ascii_digit()) {
            return Err(ApiError(KvError::RouteNotFound));
        }
        Ok(self.dir.join(id))
    }

    /// The saved runs, newest first.
    fn saved(&self) -> std::io::Result<Vec<Run>> {
        let mut runs: Vec<Run> = match std::fs::read_dir(&self.dir) {
            Ok(entries) => entries
                .filter_map(Result::ok)
                .filter_map(|entry| std::fs::read(entry.path().join("run.json")).ok())
                .filter_map(|text| serde_json::from_slice(&text).ok())
                .collect(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(e) => return Err(e),
        };
        runs.sort_by_key(|r: &Run| std::cmp::Reverse(r.started_at_ms));
        Ok(runs)
    }

    /// Removes all but the newest [`KEPT_RUNS`] saved runs.
    fn prune(&self) -> anyhow::Result<()> {
        let mut ids: Vec<(u64, PathBuf)> = std::fs::read_dir(&self.dir)?
            .filter_map(Result::ok)
            .filter_map(|e| Some((e.file_name().to_str()?.parse().ok()?, e.path())))
            .collect();
        ids.sort_by_key(|(id, _)| std::cmp::Reverse(*id));
        for (_, old) in ids.into_iter().skip(KEPT_RUNS) {
            std::fs::remove_dir_all(&old)
                .with_context(|| format!("cannot remove {}", old.display()))?;
        }
        Ok(())
    }

    /// Writes a run's `run.json`.
    fn save(&self, run: &Run) -> anyhow::Result<()> {
        let dir = self.dir.join(&run.id);
        std::fs::create_dir_all(&dir)
            .with_context(|| format!("cannot create {}", dir.display()))?;
        let path = dir.join("run.json");
        std::fs::write(&path, serde_json::to_vec_pretty(run)?)
            .with_context(|| format!("cannot write {}", path.display()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(json: &str) -> Request {
        serde_json::from_str(json).unwrap()
    }

    #[test]
    fn requests_are_bounded_and_defaulted() {
        let (keys, offset, pattern, ttl) = plan_of(request("{}"), 60, 60).unwrap();
        assert_eq!(
            (keys, offset, pattern, ttl),
            (50, 2000, Pattern::NeverRead, 60)
        );
        let chosen = request(
            r#"{"keys": 200, "max_offset_ms": 10000, "pattern": "read-before", "cache_ttl_s": 5}"#,
        );
        assert_eq!(
            plan_of(chosen, 1, 60).unwrap(),
            (200, 10_000, Pattern::ReadBefore, 5)
        );
        for (body, what) in [
            (r#"{"keys": 0}"#, "keys"),
            (r#"{"keys": 201}"#, "keys"),
            (r#"{"max_offset_ms": 10001}"#, "max_offset_ms"),
            (r#"{"max_offset_ms": 50}"#, "max_offset_ms"),
            (r#"{"cache_ttl_s": 30}"#, "cache_ttl_s"),
        ] {
            let ApiError(error) = plan_of(request(body), 60, 60).unwrap_err();
            assert_eq!(error.code(), 10038, "{body}");
            assert!(error.to_string().contains(what), "{body}: {error}");
        }
        assert!(serde_json::from_str::<Request>(r#"{"kyes": 3}"#).is_err());
    }

    #[test]
    fn only_the_newest_runs_are_kept_and_ids_are_plain_numbers() {
        let dir = tempfile::tempdir().unwrap();
        let archive = Archive {
            dir: dir.path().to_owned(),
        };
        assert!(archive.saved().unwrap().is_empty(), "nothing saved yet");
        for id in 1..=KEPT_RUNS as u64 + 3 {
            let run = Run {
                id: id.to_string(),
                state: RunState::Done,
                started_at_ms: id,
                finished_at_ms: Some(id),
                keys: 1,
                keys_done: 1,
                max_offset_ms: 100,
                pattern: Pattern::NeverRead,
                cache_ttl_s: 60,
                writer: String::new(),
                readers: Vec::new(),
                rows: Vec::new(),
                violations: Some(0),
                error: None,
            };
            archive.save(&run).unwrap();
            archive.prune().unwrap();
        }
        let saved = archive.saved().unwrap();
        assert_eq!(saved.len(), KEPT_RUNS);
        assert_eq!(saved[0].id, (KEPT_RUNS + 3).to_string(), "newest first");
        assert_eq!(saved.last().unwrap().id, "4");
        for id in ["", "../x", "12a", "1/2", "123456789012345678901"] {
            assert!(archive.run_dir(id).is_err(), "{id}");
        }
        assert_eq!(archive.run_dir("123").unwrap(), dir.path().join("123"));
    }
}
