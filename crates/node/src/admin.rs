//! The consistency testbed's fault-injection endpoint, `/admin/testbed/...`: served only when
//! `testbed.enabled` is set, and only to the bearer of `testbed.admin_token`.
//!
//! - `GET /admin/testbed/faults`: the faults in force.
//! - `PUT /admin/testbed/faults` (edges): `{"delay_ms", "jitter_ms", "paused"}`: hold every
//!   replicated batch `delay_ms` plus up to `jitter_ms` before applying it; stop replication
//!   while `paused`. `{}` clears them.
//! - `POST /admin/testbed/resync` (edges): drop the replication stream and rebuild the replica
//!   from a snapshot.
//! - `PUT /admin/testbed/clock-skew`: `{"skew_ms": N}` skews the clock of the node that stamps
//!   write versions (central, on its own endpoint; in `dev`, on any edge's, as central runs in
//!   the same process). Every node has a clock of its own, so a skew moves only that node's
//!   versions and expirations.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::State;
use axum::routing::{get, post, put};
use axum::{Json, Router};
use driftkv_core::faults::{ClockSkew, FaultSettings, FaultState};
use driftkv_core::time::SkewedClock;
use driftkv_core::KvError;
use driftkv_edge::Faults;
use driftkv_http::{ApiError, Auth};
use serde::de::DeserializeOwned;
use serde_json::{json, Value};

use crate::config::Config;

/// What the endpoint switches on a node.
#[derive(Clone, Default)]
pub struct Switches {
    /// An edge's replication faults.
    pub faults: Option<Arc<Faults>>,
    /// The clock write versions are stamped from, when it is in this process.
    pub version_clock: Option<Arc<SkewedClock>>,
}

impl Switches {
    fn state(&self) -> FaultState {
        FaultState {
            replication: self.faults.as_ref().map(|f| f.settings()),
            hlc_skew_ms: self.version_clock.as_ref().map(|c| c.skew_ms()),
        }
    }
}

/// The endpoint's routes for a node, or none when the testbed is off.
pub fn routes(config: &Config, switches: Switches) -> Router {
    if !config.testbed.enabled {
        return Router::new();
    }
    let routes = Router::new()
        .route("/admin/testbed/faults", get(faults).put(set_faults))
        .route("/admin/testbed/resync", post(resync))
        .route("/admin/testbed/clock-skew", put(clock_skew))
        .with_state(switches);
    driftkv_http::guarded(routes, Auth::tokens([&config.testbed.admin_token]))
}

async fn faults(State(switches): State<Switches>) -> Json<FaultState> {
    Json(switches.state())
}

/// A JSON body, or a Cloudflare-style 400 (code 10001) saying what is wrong with it.
fn parse<T: DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    serde_json::from_slice(body)
        .map_err(|e| ApiError(KvError::BadRequest(format!("malformed request body: {e}"))))
}

/// The edge's faults, or a 409 on a node that replicates nothing.
fn edge_faults(switches: &Switches) -> Result<&Arc<Faults>, ApiError> {
    switches.faults.as_ref().ok_or_else(|| {
        ApiError(KvError::Conflict(
            "this node is central: replication faults are set on edges".into(),
        ))
    })
}

async fn set_faults(
    State(switches): State<Switches>,
    body: Bytes,
) -> Result<Json<FaultState>, ApiError> {
    let settings: FaultSettings = parse(&body)?;
    tracing::warn!(?settings, "testbed: replication faults set");
    edge_faults(&switches)?.set(settings);
    Ok(Json(switches.state()))
}

async fn resync(State(switches): State<Switches>) -> Result<Json<Value>, ApiError> {
    tracing::warn!("testbed: replica resynchronisation requested");
    edge_faults(&switches)?.resync();
    Ok(Json(json!({ "resync": "requested" })))
}

async fn clock_skew(
    State(switches): State<Switches>,
    body: Bytes,
) -> Result<Json<FaultState>, ApiError> {
    let skew: ClockSkew = parse(&body)?;
    let clock = switches.version_clock.as_ref().ok_or_else(|| {
        ApiError(KvError::Conflict(
            "write versions are stamped at central: set the clock skew on central's endpoint"
                .into(),
        ))
    })?;
    tracing::warn!(skew_ms = skew.skew_ms, "testbed: version clock skewed");
    clock.set_skew_ms(skew.skew_ms);
    Ok(Json(switches.state()))
}
