//! driftkv's HTTP front: the Cloudflare REST API v4 for Workers KV, over any [`KvService`].
//!
//! Every route answers in Cloudflare's envelope (`{success, errors, messages, result,
//! result_info}`) except value reads, which return the raw bytes as Cloudflare does. Errors
//! carry Cloudflare's codes. Bodies are size-checked before they are buffered, and a panic in a
//! handler becomes a 500 answer rather than a dropped connection.

mod auth;
mod body;
mod bulk;
mod bulk_answer;
mod envelope;
mod extract;
mod hot_routes;
mod metered;
mod namespaces;
mod server;
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

pub use auth::{parse_token_file, token_digest, Access, Accounts, Auth, Grant, TokenFileError};
pub use envelope::ApiError;
pub use hot_routes::Api;
pub use server::{serve, Refusals, ServerOptions};
pub use workerd::workerd_binding;

/// The service handlers run against.
type Service = Arc<dyn KvService>;

/// The prefix of every KV route.
pub const NAMESPACES_ROUTE: &str = "/client/v4/accounts/{account_id}/storage/kv/namespaces";

/// The route of a value: reads and writes of it are the hot paths (see [`Api`]).
const VALUE_ROUTE: &str =
    "/client/v4/accounts/{account_id}/storage/kv/namespaces/{namespace_id}/values/{*key}";

/// What the HTTP front records of each request, besides its metrics.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RequestTracing {
    /// A span per request, the root of the request's trace (for exported traces).
    pub spans: bool,
    /// An access-log line per request: method, path, status and latency, at INFO under the
    /// target [`ACCESS_LOG_TARGET`] (DEBUG for health probes). Off by default, as in Redis
    /// or etcd: logging every request costs far more than serving a cached read.
    pub access_log: bool,
}

impl RequestTracing {
    /// Whether requests go through the trace layer at all.
    fn any(self) -> bool {
        self.spans || self.access_log
    }
}

/// The `tracing` target of the access log.
pub const ACCESS_LOG_TARGET: &str = "driftkv::access";

/// The HTTP service of an edge: the KV API and the node's `extra` routes behind `auth`;
/// `/healthz`, `/metrics` and the node's `open` routes without it. Requests are counted and
/// timed under the node label `node`, and traced as `tracing` says.
pub fn router(
    service: Arc<dyn KvService>,
    auth: Auth,
    node: &str,
    open: Router,
    extra: Router,
    tracing: RequestTracing,
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
    let router = layered(
        api.with_state(service.clone()).merge(extra),
        auth.clone(),
        node,
        open,
        tracing,
    );
    if tracing.any() {
        // Requests are traced, which costs far more than routing: every request goes through
        // the router and its trace layer.
        Api::routed(router)
    } else {
        Api::with_value_routes(router, service, auth, node)
    }
}

/// The router of a node without the KV API (central): its `extra` routes behind `auth`;
/// `/healthz`, `/metrics` and its `open` routes without it.
pub fn operator_router(
    auth: Auth,
    node: &str,
    open: Router,
    extra: Router,
    tracing: RequestTracing,
) -> Router {
    layered(extra, auth, node, open, tracing)
}

/// `routes` behind their own bearer tokens `auth` (for an admin endpoint with a token of its
/// own); pass the result among a router's `open` routes.
pub fn guarded(routes: Router, auth: Auth) -> Router {
    routes.route_layer(middleware::from_fn_with_state(auth, auth::require))
}

/// `api` behind `auth`, with `/healthz`, `/metrics` and `open`, request metrics,
/// Cloudflare-style errors for unknown routes and methods, panic recovery, and request spans
/// and access-log lines as `tracing` asks.
fn layered(api: Router, auth: Auth, node: &str, open: Router, tracing: RequestTracing) -> Router {
    // Without tokens the check still runs: it keeps the open API to requests from this host.
    let api = api.route_layer(middleware::from_fn_with_state(auth, auth::require));
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
    with_request_spans(router, tracing)
}

/// `router` with a span (and, with the access log on, a log line) for every request, as
/// `tracing` asks.
fn with_request_spans(router: Router, tracing: RequestTracing) -> Router {
    if !tracing.any() {
        return router;
    }
    let access_log = tracing.access_log;
    router.layer(
        TraceLayer::new_for_http()
            .make_span_with(request_span)
            .on_response(move |response: &Response, latency: Duration, span: &Span| {
                if access_log {
                    response_logged(response, latency, span)
                }
            }),
    )
}

/// Paths orchestrators poll every few seconds (container health checks, Kubernetes probes).
/// Their requests are traced at DEBUG, so that INFO logs show traffic rather than probes.
const PROBES: [&str; 2] = ["/healthz", "/readyz"];

/// The span of one request: INFO, or DEBUG for a probe, under the target tower-http's own
/// span maker uses, so filters written for it keep working.
fn request_span(request: &axum::extract::Request) -> Span {
    let (method, uri, version) = (request.method(), request.uri(), request.version());
    if PROBES.contains(&uri.path()) {
        tracing::debug_span!(target: SPAN_TARGET, "request", %method, %uri, ?version)
    } else {
        tracing::info_span!(target: SPAN_TARGET, "request", %method, %uri, ?version)
    }
}

const SPAN_TARGET: &str = "tower_http::trace::make_span";

/// Writes the access-log line of a response, at its request span's level.
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
        tracing::debug!(target: ACCESS_LOG_TARGET, status, latency_ms, message);
    } else {
        tracing::info!(target: ACCESS_LOG_TARGET, status, latency_ms, message);
    }
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
    use std::sync::Mutex;
    use tower::ServiceExt as _;

    /// Log output captured in memory.
    #[derive(Clone, Default)]
    struct Captured(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Captured {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(bytes);
            Ok(bytes.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    /// What an INFO-level log shows of one request to `path`, with `tracing` in force.
    async fn logged(tracing: RequestTracing, path: &str) -> String {
        let captured = Captured::default();
        let writer = captured.clone();
        let dispatch = tracing::Dispatch::new(
            tracing_subscriber::fmt()
                .with_max_level(Level::INFO)
                .with_ansi(false)
                .with_writer(move || writer.clone())
                .finish(),
        );
        let _guard = tracing::dispatcher::set_default(&dispatch);
        let extra = Router::new().route("/work", get(|| async { "done" }));
        let router = operator_router(Auth::open(), "log-test", Router::new(), extra, tracing);
        let request = axum::extract::Request::get(path)
            .header("host", "localhost")
            .body(Body::empty())
            .expect("valid request");
        let response = router.oneshot(request).await.expect("infallible");
        assert_eq!(response.status(), StatusCode::OK);
        let text = captured.0.lock().unwrap().clone();
        String::from_utf8(text).expect("UTF-8 log")
    }

    #[tokio::test]
    async fn requests_are_logged_only_when_the_access_log_is_on() {
        let off = logged(RequestTracing::default(), "/work").await;
        assert!(off.is_empty(), "logged by default: {off}");
        let spans_only = RequestTracing {
            spans: true,
            access_log: false,
        };
        let exported = logged(spans_only, "/work").await;
        assert!(!exported.contains(ACCESS_LOG_TARGET), "{exported}");
        let on = RequestTracing {
            spans: false,
            access_log: true,
        };
        let line = logged(on, "/work").await;
        assert!(line.contains(ACCESS_LOG_TARGET), "{line}");
        assert!(
            line.contains("status=200") && line.contains("uri=/work"),
            "{line}"
        );
        // Probes stay out of the INFO access log.
        assert!(logged(on, "/healthz").await.is_empty());
    }

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
