//! The consistency testbed's fault-injection endpoint, `/admin/testbed/...`: served only when
//! `testbed.enabled` is set, and only to the bearer of `testbed.admin_token`.
//!
//! - `GET /admin/testbed/faults`: the faults in force.
//! - `PUT /admin/testbed/faults` (edges): `{"delay_ms", "jitter_ms", "paused"}`: hold every
//!   replicated batch `delay_ms` plus up to `jitter_ms` before applying it; stop replication
//!   while `paused`. `{}` clears them.
//! - `POST /admin/testbed/resync` (edges): drop the replication stream and rebuild the replica
//!   from a snapshot.
//! - `PUT /admin/testbed/clock-skew`: `{"skew_ms": N}` skews the clock write versions are
//!   stamped from, on the node that stamps them (central; in `dev`, the one process).

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::State;
use axum::routing::{get, post, put};
use axum::{Json, Router};
use driftkv_core::KvError;
use driftkv_edge::{Edge, FaultSettings};
use driftkv_engine::{hlc_skew_ms, set_hlc_skew_ms};
use driftkv_http::{ApiError, Auth};
use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::{json, Value};

use crate::config::Config;

/// The endpoint's routes for a node (with its edge, on an edge), or none when the testbed is
/// off.
pub fn routes(config: &Config, edge: Option<Arc<Edge>>) -> Router {
    if !config.testbed.enabled {
        return Router::new();
    }
    let mut routes = Router::new().route("/admin/testbed/clock-skew", put(clock_skew));
    if let Some(edge) = edge {
        routes = routes.merge(
            Router::new()
                .route("/admin/testbed/faults", get(faults).put(set_faults))
                .route("/admin/testbed/resync", post(resync))
                .with_state(edge),
        );
    } else {
        routes = routes.route(
            "/admin/testbed/faults",
            get(|| async { Json(json!({ "hlc_skew_ms": hlc_skew_ms() })) }),
        );
    }
    driftkv_http::guarded(routes, Auth::tokens([&config.testbed.admin_token]))
}

async fn faults(State(edge): State<Arc<Edge>>) -> Json<Value> {
    Json(json!({ "replication": edge.faults().settings(), "hlc_skew_ms": hlc_skew_ms() }))
}

/// A JSON body, or a Cloudflare-style 400 (code 10001) saying what is wrong with it.
fn parse<T: DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    serde_json::from_slice(body)
        .map_err(|e| ApiError(KvError::BadRequest(format!("malformed request body: {e}"))))
}

async fn set_faults(State(edge): State<Arc<Edge>>, body: Bytes) -> Result<Json<Value>, ApiError> {
    let settings: FaultSettings = parse(&body)?;
    tracing::warn!(?settings, "testbed: replication faults set");
    edge.faults().set(settings);
    Ok(faults(State(edge)).await)
}

async fn resync(State(edge): State<Arc<Edge>>) -> Json<Value> {
    tracing::warn!("testbed: replica resynchronisation requested");
    edge.faults().resync();
    Json(json!({ "resync": "requested" }))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Skew {
    skew_ms: i64,
}

async fn clock_skew(body: Bytes) -> Result<Json<Value>, ApiError> {
    let skew: Skew = parse(&body)?;
    tracing::warn!(skew_ms = skew.skew_ms, "testbed: version clock skewed");
    set_hlc_skew_ms(skew.skew_ms);
    Ok(Json(json!({ "hlc_skew_ms": hlc_skew_ms() })))
}
