//! Request metrics: every request that matched a route is counted and timed under its route
//! template, method and status.
//!
//! This runs on every request, the value reads and writes answered ahead of the router
//! included, so it avoids the registry's label lookup (hashing four label values under a lock,
//! twice a request): each route's service resolves its metric handles on its first request of
//! a method and status and keeps them, and later requests only read them.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::task::{ready, Context, Poll};
use std::time::{Duration, Instant};

use axum::extract::{MatchedPath, Request};
use axum::http::{Method, StatusCode};
use axum::response::Response;
use driftkv_metrics::prometheus::{Histogram, IntCounter};
use driftkv_metrics::{HTTP_REQUESTS, HTTP_REQUEST_SECONDS};
use pin_project_lite::pin_project;
use tower::{Layer, Service};

/// The methods whose handles a route keeps; others are looked up on each request.
const METHODS: [Method; 5] = [
    Method::GET,
    Method::PUT,
    Method::POST,
    Method::DELETE,
    Method::HEAD,
];

/// How many statuses a route keeps counters for per method; more are looked up each time.
const STATUSES: usize = 8;

/// Counts and times the requests of the routes it is layered on (as a route layer, so that
/// every request it sees has a route template, a label of bounded cardinality).
#[derive(Clone)]
pub(crate) struct MeterLayer {
    node: Arc<str>,
}

impl MeterLayer {
    /// Labels every figure with the node label `node`.
    pub(crate) fn new(node: &str) -> Self {
        MeterLayer { node: node.into() }
    }
}

impl<S> Layer<S> for MeterLayer {
    type Service = Meter<S>;

    fn layer(&self, inner: S) -> Meter<S> {
        Meter {
            inner,
            handles: Arc::new(Handles::new(self.node.clone())),
        }
    }
}

/// One route's service, wrapped.
#[derive(Clone)]
pub(crate) struct Meter<S> {
    inner: S,
    handles: Arc<Handles>,
}

/// The metric handles of one route (the one a [`Meter`] wraps), resolved as they are first
/// needed.
pub(crate) struct Handles {
    node: Arc<str>,
    /// One slot per method of [`METHODS`].
    methods: [OnceLock<MethodHandles>; METHODS.len()],
}

/// The handles of one route and method.
struct MethodHandles {
    /// The route template these are for. A route's service serves one template, but this is
    /// checked rather than assumed.
    route: Arc<str>,
    seconds: Histogram,
    /// Counters by status, taken by the first statuses seen.
    statuses: [OnceLock<(StatusCode, IntCounter)>; STATUSES],
}

impl Handles {
    /// Handles labelled with the node label `node`, none resolved yet.
    pub(crate) fn new(node: Arc<str>) -> Self {
        Handles {
            node,
            methods: Default::default(),
        }
    }

    /// Counts and times one request of `route` (its template).
    pub(crate) fn record(
        &self,
        route: &str,
        method: &Method,
        status: StatusCode,
        elapsed: Duration,
    ) {
        let seconds = elapsed.as_secs_f64();
        let kept = METHODS.iter().position(|m| m == method).map(|slot| {
            self.methods[slot].get_or_init(|| MethodHandles {
                route: route.into(),
                seconds: HTTP_REQUEST_SECONDS.with_label_values(&[
                    &self.node,
                    route,
                    method.as_str(),
                ]),
                statuses: Default::default(),
            })
        });
        match kept.filter(|kept| &*kept.route == route) {
            Some(kept) => {
                kept.seconds.observe(seconds);
                let resolve = || self.counter(route, method, status);
                match kept.counter(status, resolve) {
                    Some(counter) => counter.inc(),
                    None => resolve().inc(),
                }
            }
            None => {
                HTTP_REQUEST_SECONDS
                    .with_label_values(&[&self.node, route, method.as_str()])
                    .observe(seconds);
                self.counter(route, method, status).inc();
            }
        }
    }

    /// The counter of a route, method and status, looked up in the registry.
    fn counter(&self, route: &str, method: &Method, status: StatusCode) -> IntCounter {
        HTTP_REQUESTS.with_label_values(&[&self.node, route, method.as_str(), status.as_str()])
    }
}

impl MethodHandles {
    /// The kept counter of `status`, taking a free slot for it (resolved by `resolve`) if
    /// there is one.
    fn counter(&self, status: StatusCode, resolve: impl Fn() -> IntCounter) -> Option<&IntCounter> {
        self.statuses.iter().find_map(|slot| {
            let (kept, counter) = slot.get_or_init(|| (status, resolve()));
            (*kept == status).then_some(counter)
        })
    }
}

impl<S> Service<Request> for Meter<S>
where
    S: Service<Request, Response = Response>,
{
    type Response = Response;
    type Error = S::Error;
    type Future = Metered<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request) -> Self::Future {
        let route = request.extensions().get::<MatchedPath>().cloned();
        let method = request.method().clone();
        Metered {
            inner: self.inner.call(request),
            started: Instant::now(),
            route,
            method,
            handles: self.handles.clone(),
        }
    }
}

pin_project! {
    /// A request in progress; recorded when its response is ready.
    pub(crate) struct Metered<F> {
        #[pin]
        inner: F,
        started: Instant,
        route: Option<MatchedPath>,
        method: Method,
        handles: Arc<Handles>,
    }
}

impl<F, E> Future for Metered<F>
where
    F: Future<Output = Result<Response, E>>,
{
    type Output = Result<Response, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let outcome = ready!(this.inner.poll(cx));
        if let Ok(response) = &outcome {
            let route = this.route.as_ref().map_or("unmatched", MatchedPath::as_str);
            this.handles.record(
                route,
                this.method,
                response.status(),
                this.started.elapsed(),
            );
        }
        Poll::Ready(outcome)
    }
}

#[cfg(test)]
mod tests {
    use axum::body::Body;
    use axum::extract::Path;
    use axum::routing::{any, get};
    use axum::Router;

    use super::*;

    fn requests(node: &str, route: &str, method: &str, status: &str) -> u64 {
        HTTP_REQUESTS
            .with_label_values(&[node, route, method, status])
            .get()
    }

    async fn send(router: &Router, method: Method, uri: &str) -> StatusCode {
        let request = Request::builder()
            .method(method)
            .uri(uri)
            .body(Body::empty())
            .expect("request");
        let mut router = router.clone();
        Service::call(&mut router, request)
            .await
            .expect("infallible")
            .status()
    }

    #[tokio::test]
    async fn every_request_is_counted_under_its_route_method_and_status() {
        let node = "metered-unit-test";
        let router = Router::new()
            .route(
                "/status/{code}",
                get(|Path(code): Path<u16>| async move {
                    StatusCode::from_u16(code).expect("valid status")
                }),
            )
            .route("/any", any(|| async { StatusCode::OK }))
            .route_layer(MeterLayer::new(node));
        // More distinct statuses than a route keeps counters for, each sent a different
        // number of times, and methods with and without a slot of their own.
        let codes: Vec<u16> = (0..STATUSES as u16 + 4).map(|i| 200 + i).collect();
        for (times, code) in codes.iter().enumerate() {
            for _ in 0..=times {
                let status = send(&router, Method::GET, &format!("/status/{code}")).await;
                assert_eq!(status.as_u16(), *code);
            }
        }
        for method in [Method::GET, Method::PATCH, Method::PATCH] {
            send(&router, method, "/any").await;
        }

        for (times, code) in codes.iter().enumerate() {
            let counted = requests(node, "/status/{code}", "GET", &code.to_string());
            assert_eq!(counted, times as u64 + 1, "status {code}");
        }
        assert_eq!(requests(node, "/any", "GET", "200"), 1);
        assert_eq!(requests(node, "/any", "PATCH", "200"), 2);
        let timed = |method: &str, route: &str| {
            HTTP_REQUEST_SECONDS
                .with_label_values(&[node, route, method])
                .get_sample_count()
        };
        let all: usize = (1..=codes.len()).sum();
        assert_eq!(timed("GET", "/status/{code}"), all as u64);
        assert_eq!(timed("PATCH", "/any"), 2);
    }
}
