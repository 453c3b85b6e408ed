//! driftkv's HTTP front: the Cloudflare REST API v4 for Workers KV, over any [`KvService`].
//!
//! Every route answers in Cloudflare's envelope (`{success, errors, messages, result,
//! result_info}`) except value reads, which return the raw bytes as Cloudflare does. Errors
//! carry Cloudflare's codes. Bodies are size-checked before they are buffered, and a panic in a
//! handler becomes a 500 answer rather than a dropped connection.

mod auth;
mod body;
mod bulk;
mod envelope;
mod extract;
mod hot_reads;
mod metered;
mod namespaces;
mod values;
mod workerd;

use std::sync::Arc;
use std::time::Duration;

use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get, post, put};
use axum::{middleware, Json, Router};
use driftkv_core::{KvError, KvService};
use serde_json::json;
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::trace::TraceLayer;
use tracing::{Level, Span};

pub use auth::Auth;
pub use envelope::ApiError;
pub use hot_reads::Api;
pub use workerd::workerd_binding;

/// The service handlers run against.
type Service = Arc<dyn KvService>;

/// The prefix of every KV route.
pub const NAMESPACES_ROUTE: &str = "/client/v4/accounts/{account_id}/storage/kv/namespaces";

/// The route of a value: reads of it are the hot path (see [`Api`]).
const VALUE_ROUTE: &str =
    "/client/v4/accounts/{account_id}/storage/kv/namespaces/{namespace_id}/values/{*key}";

/// The HTTP service of an edge: the KV API and the node's `extra` routes behind `auth`;
/// `/healthz`, `/metrics` and the node's `open` routes without it. Requests are counted and
/// timed under the node label `node`.
pub fn router(
    service: Arc<dyn KvService>,
    auth: Auth,
    node: &str,
    open: Router,
    extra: Router,
) -> Api {
    let ns = NAMESPACES_ROUTE;
    let one = format!("{ns}/{{namespace_id}}");
    let api = Router::new()
        .route(ns, get(namespaces::list).post(namespaces::create))
        .route(
            &one,
            get(namespaces::get)
                .put(namespaces::rename)
                .delete(namespaces::delete),
        )
        .route(
            VALUE_ROUTE,
            get(values::get_value)
                .put(values::put_value)
                .delete(values::delete_value),
        )
        .route(&format!("{one}/values/"), any(values::empty_key))
        .route(
            &format!("{one}/metadata/{{*key}}"),
            get(values::get_metadata),
        )
        .route(&format!("{one}/metadata/"), any(values::empty_key))
        .route(&format!("{one}/keys"), get(values::list_keys))
        .route(
            &format!("{one}/bulk"),
            put(bulk::write).delete(bulk::delete),
        )
        .route(&format!("{one}/bulk/delete"), post(bulk::delete))
        .route(&format!("{one}/bulk/get"), post(bulk::get));
    let traced = request_spans_recorded();
    let router = serve(
        api.with_state(service.clone()).merge(extra),
        auth.clone(),
        node,
        open,
        traced,
    );
    if traced {
        // Requests are logged, which costs far more than routing: every request goes through
        // the router and its trace layer.
        Api::routed(router)
    } else {
        Api::with_value_reads(router, service, auth, node)
    }
}

/// The router of a node without the KV API (central): its `extra` routes behind `auth`;
/// `/healthz`, `/metrics` and its `open` routes without it.
pub fn operator_router(auth: Auth, node: &str, open: Router, extra: Router) -> Router {
    serve(extra, auth, node, open, request_spans_recorded())
}

/// `routes` behind their own bearer tokens `auth` (for an admin endpoint with a token of its
/// own); pass the result among a router's `open` routes.
pub fn guarded(routes: Router, auth: Auth) -> Router {
    routes.route_layer(middleware::from_fn_with_state(auth, auth::require))
}

/// `api` behind `auth`, with `/healthz`, `/metrics` and `open`, request metrics,
/// Cloudflare-style errors for unknown routes and methods, panic recovery, and request spans
/// when `traced` (see [`request_spans_recorded`]).
fn serve(api: Router, auth: Auth, node: &str, open: Router, traced: bool) -> Router {
    // Without tokens there is nothing to check; skipping the layer keeps it off the hot path.
    let api = if auth.required() {
        api.route_layer(middleware::from_fn_with_state(auth, auth::require))
    } else {
        api
    };
    let router = Router::new()
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics))
        .merge(open)
        .merge(api)
        // Inside the metrics, so that a handler that panicked is counted as the 500 it
        // answers. The fallbacks below answer constant errors and need no recovery.
        .route_layer(CatchPanicLayer::custom(panic_response))
        // Only requests that matched a route are counted: their route template is a label
        // of bounded cardinality.
        .route_layer(metered::MeterLayer::new(node))
        .fallback(|| async { ApiError(KvError::RouteNotFound) })
        .method_not_allowed_fallback(|| async { ApiError(KvError::MethodNotAllowed) });
    with_request_spans(router, traced)
}

/// `router` with a span for every request when `traced` (see [`request_spans_recorded`]).
fn with_request_spans(router: Router, traced: bool) -> Router {
    if !traced {
        return router;
    }
    router.layer(
        TraceLayer::new_for_http()
            .make_span_with(request_span)
            .on_response(response_logged),
    )
}

/// Paths orchestrators poll every few seconds (container health checks, Kubernetes probes).
/// Their requests are traced at DEBUG, so that INFO logs show traffic rather than probes.
const PROBES: [&str; 2] = ["/healthz", "/readyz"];

/// The span of one request: INFO, or DEBUG for a probe. The targets are the ones tower-http's
/// own span maker and response logger use, so filters written for them keep working.
fn request_span(request: &axum::extract::Request) -> Span {
    let (method, uri, version) = (request.method(), request.uri(), request.version());
    if PROBES.contains(&uri.path()) {
        tracing::debug_span!(target: SPAN_TARGET, "request", %method, %uri, ?version)
    } else {
        tracing::info_span!(target: SPAN_TARGET, "request", %method, %uri, ?version)
    }
}

const SPAN_TARGET: &str = "tower_http::trace::make_span";
const RESPONSE_TARGET: &str = "tower_http::trace::on_response";

/// Logs a response at its request span's level.
fn response_logged(response: &Response, latency: Duration, span: &Span) {
    let status = response.status().as_u16();
    let latency_ms = latency.as_secs_f64() * 1000.0;
    let message = "finished processing request";
    let probe = match span.metadata() {
        Some(meta) => *meta.level() == Level::DEBUG,
        // A disabled span may carry no metadata. While INFO request spans are kept, only a
        // probe's DEBUG span can be disabled; otherwise the span tells nothing.
        None => tracing::enabled!(target: SPAN_TARGET, Level::INFO),
    };
    if probe {
        tracing::debug!(target: RESPONSE_TARGET, status, latency_ms, message);
    } else {
        tracing::info!(target: RESPONSE_TARGET, status, latency_ms, message);
    }
}

/// Whether the tracing subscriber (set up before any router is built, and fixed for the life
/// of the process) keeps request spans or their log lines. When it keeps neither
/// (`RUST_LOG=warn`, say), the trace layer is left off: it would still time and wrap every
/// response only for the filter to discard the result, a measurable part of a cached read.
fn request_spans_recorded() -> bool {
    tracing::enabled!(target: SPAN_TARGET, Level::INFO)
        || tracing::enabled!(target: RESPONSE_TARGET, Level::INFO)
}

/// `GET /metrics`: every metric of the process, in the Prometheus text format.
async fn metrics() -> Response {
    (
        [(header::CONTENT_TYPE, driftkv_metrics::CONTENT_TYPE)],
        driftkv_metrics::render(),
    )
        .into_response()
}

/// `GET /healthz`: the process is up and serving.
async fn healthz() -> Response {
    (StatusCode::OK, Json(json!({ "status": "ok" }))).into_response()
}

fn panic_response(_: Box<dyn std::any::Any + Send + 'static>) -> Response {
    ApiError(KvError::Internal(
        "the request handler failed; the server is still running".into(),
    ))
    .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::Body;

    #[test]
    fn probes_are_traced_at_debug_and_everything_else_at_info() {
        let everything = tracing::Dispatch::new(
            tracing_subscriber::fmt()
                .with_max_level(Level::TRACE)
                .with_test_writer()
                .finish(),
        );
        let level = |path: &str| {
            let request = axum::extract::Request::get(path)
                .body(Body::empty())
                .expect("valid request");
            let span = tracing::dispatcher::with_default(&everything, || request_span(&request));
            *span
                .metadata()
                .expect("an enabled span has metadata")
                .level()
        };
        assert_eq!(level("/healthz"), Level::DEBUG);
        assert_eq!(level("/readyz"), Level::DEBUG);
        assert_eq!(level("/healthz/extra"), Level::INFO);
        assert_eq!(level("/metrics"), Level::INFO);
        assert_eq!(level(&format!("{NAMESPACES_ROUTE}/x")), Level::INFO);
    }
}
