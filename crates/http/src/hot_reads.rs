//! Value reads answered ahead of the router.
//!
//! `GET .../values/{key}` is the request an edge serves most, and for a cached value axum's
//! routing cost about as much as the read itself: matching the path, percent-decoding its
//! three parameters into freshly allocated strings, cloning the matched route's boxed service,
//! then the extractors reading the parameters back. [`Api`] recognises that one route by hand
//! and calls the same handler with the same metrics, auth check and panic recovery. Anything
//! that does not parse cleanly (a path that is not UTF-8 once decoded, an invalid key, account
//! or namespace id, a malformed query string, missing or wrong credentials) goes through the
//! router like every other request, so each error answer has a single source.

use std::borrow::Cow;
use std::convert::Infallible;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::Method;
use axum::response::{IntoResponse, Response};
use axum::routing::future::RouteFuture;
use axum::Router;
use futures::future::{Either, FutureExt};
use percent_encoding::percent_decode_str;
use tower::Service as TowerService;

use crate::auth::{Access, Auth, Scope};
use crate::extract::{KeyPath, Params};
use crate::metered::Handles;
use crate::{panic_response, values, Service, VALUE_ROUTE};

/// The HTTP service of a node: its router, with value reads taken before it when enabled.
/// Serve it with `axum::serve(listener, axum::ServiceExt::into_make_service(api))`.
#[derive(Clone)]
pub struct Api {
    router: Router,
    reads: Option<Arc<Reads>>,
}

/// What a value read needs besides its request.
struct Reads {
    service: Service,
    auth: Auth,
    /// Metric handles for the value route. The router keeps its own for the reads that fall
    /// through to it; both record under the same labels, so the figures add up.
    metrics: Handles,
}

impl Api {
    /// `router` alone.
    pub(crate) fn routed(router: Router) -> Self {
        Api {
            router,
            reads: None,
        }
    }

    /// `router`, with value reads of `service` (behind `auth`, counted under the node label
    /// `node`) answered before it.
    pub(crate) fn with_value_reads(
        router: Router,
        service: Service,
        auth: Auth,
        node: &str,
    ) -> Self {
        Api {
            router,
            reads: Some(Arc::new(Reads {
                service,
                auth,
                metrics: Handles::new(node.into()),
            })),
        }
    }
}

/// A response on its way: from the value-read path or from the router.
type ApiFuture = Either<
    Pin<Box<dyn Future<Output = Result<Response, Infallible>> + Send>>,
    RouteFuture<Infallible>,
>;

impl TowerService<Request> for Api {
    type Response = Response;
    type Error = Infallible;
    type Future = ApiFuture;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        // The router is always ready, and the read path holds no resource to wait for.
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request) -> ApiFuture {
        if let Some(reads) = &self.reads {
            if let Some(read) = ValueRead::parse(&request, &reads.auth) {
                return Either::Left(Box::pin(reads.clone().serve(read)));
            }
        }
        Either::Right(self.router.call(request))
    }
}

/// A value read that parsed cleanly and carries valid credentials.
struct ValueRead {
    path: KeyPath,
    params: Params,
    started: Instant,
}

impl ValueRead {
    /// The read `request` asks for, if it is a `GET` of the value route whose parameters,
    /// query and credentials all check out; otherwise `None`, for the router to answer.
    fn parse(request: &Request<Body>, auth: &Auth) -> Option<Self> {
        if request.method() != Method::GET {
            return None;
        }
        let (account, namespace_id, key) = split_value_path(request.uri().path())?;
        let path = KeyPath::new(&decode(account)?, &decode(namespace_id)?, &decode(key)?).ok()?;
        let params = Params::from_uri(request.uri()).ok()?;
        let scope = Scope {
            account: Some(&path.account),
            access: Access::Read,
        };
        let authority = request.uri().authority().map(|a| a.as_str());
        auth.check(request.headers(), authority, scope).ok()?;
        // Timed from here, as the router's metrics time a request from its route on.
        Some(ValueRead {
            path,
            params,
            started: Instant::now(),
        })
    }
}

/// A path parameter, decoded exactly as axum decodes them. Most hold no escape, and a path is
/// already UTF-8, so those are taken as they are without a scan.
fn decode(raw: &str) -> Option<Cow<'_, str>> {
    match raw.contains('%') {
        true => percent_decode_str(raw).decode_utf8().ok(),
        false => Some(Cow::Borrowed(raw)),
    }
}

/// The raw (still percent-encoded) account id, namespace id and key of a path of the value
/// route, matched as the router matches `VALUE_ROUTE`: each parameter non-empty, the first
/// two a single segment, the key everything after `values/`.
fn split_value_path(path: &str) -> Option<(&str, &str, &str)> {
    let rest = path.strip_prefix("/client/v4/accounts/")?;
    let (account, rest) = rest.split_once('/')?;
    let rest = rest.strip_prefix("storage/kv/namespaces/")?;
    let (namespace_id, rest) = rest.split_once('/')?;
    let key = rest.strip_prefix("values/")?;
    let all_present = !account.is_empty() && !namespace_id.is_empty() && !key.is_empty();
    all_present.then_some((account, namespace_id, key))
}

impl Reads {
    /// Answers `read` with the routed handler, a panic in it becoming a 500 as on every other
    /// route, and records it under the value route's labels.
    async fn serve(self: Arc<Self>, read: ValueRead) -> Result<Response, Infallible> {
        let ValueRead {
            path,
            params,
            started,
        } = read;
        let handled = values::get_value(State(self.service.clone()), path, params);
        let response = match AssertUnwindSafe(handled).catch_unwind().await {
            Ok(result) => result.into_response(),
            Err(panic) => panic_response(panic),
        };
        self.metrics.record(
            VALUE_ROUTE,
            &Method::GET,
            response.status(),
            started.elapsed(),
        );
        Ok(response)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::{header, StatusCode};
    use driftkv_core::{KvError, KvService, ListPage, ListRequest, LiveValue, Namespace};
    use driftkv_core::{NamespaceId, Write, WriteOutcome};
    use driftkv_metrics::HTTP_REQUESTS;
    use proptest::prelude::*;

    /// Answers reads with what it was asked, so that any difference in how the two paths
    /// decode a request shows in the body. `missing` is absent; `panic` panics.
    struct Echo;

    #[async_trait::async_trait]
    impl KvService for Echo {
        async fn get(
            &self,
            account_id: &str,
            id: NamespaceId,
            key: &str,
            cache_ttl: Option<u64>,
        ) -> Result<Option<LiveValue>, KvError> {
            match key {
                "missing" => Ok(None),
                "panic" => panic!("a handler panicked"),
                _ => Ok(Some(LiveValue {
                    value: format!("{account_id}|{id}|{key}|{cache_ttl:?}").into(),
                    metadata: None,
                    expiration: key.len().is_multiple_of(2).then_some(4_000_000_000),
                })),
            }
        }

        async fn create_namespace(&self, _: &str, _: &str) -> Result<Namespace, KvError> {
            Err(only_reads())
        }
        async fn list_namespaces(&self, _: &str) -> Result<Vec<Namespace>, KvError> {
            Err(only_reads())
        }
        async fn namespace(&self, _: &str, _: NamespaceId) -> Result<Namespace, KvError> {
            Err(only_reads())
        }
        async fn find_namespace(&self, _: NamespaceId) -> Result<Namespace, KvError> {
            Err(only_reads())
        }
        async fn rename_namespace(
            &self,
            _: &str,
            _: NamespaceId,
            _: &str,
        ) -> Result<Namespace, KvError> {
            Err(only_reads())
        }
        async fn delete_namespace(&self, _: &str, _: NamespaceId) -> Result<(), KvError> {
            Err(only_reads())
        }
        async fn write(
            &self,
            _: &str,
            _: NamespaceId,
            _: Vec<Write>,
        ) -> Result<WriteOutcome, KvError> {
            Err(only_reads())
        }
        async fn list(&self, _: &str, _: NamespaceId, _: ListRequest) -> Result<ListPage, KvError> {
            Err(only_reads())
        }
    }

    fn only_reads() -> KvError {
        KvError::Internal("this test service only reads".into())
    }

    const TOKEN: &str = "hot-reads-token";
    const NS: &str = "0123456789abcdef0123456789abcdef";

    /// The full service (value reads taken before the router) and the router alone, counted
    /// under the node label `node` and `node`-routed.
    fn both(node: &str) -> (Api, Api) {
        let service: Service = Arc::new(Echo);
        let build = |node: &str| {
            crate::router(
                service.clone(),
                Auth::tokens([TOKEN]),
                node,
                Router::new(),
                Router::new(),
                crate::RequestTracing::default(),
            )
        };
        let fast = build(node);
        assert!(
            fast.reads.is_some(),
            "requests are not traced by default, so value reads take the read path"
        );
        let routed = Api::routed(build(&format!("{node}-routed")).router);
        (fast, routed)
    }

    /// Status, the headers a read sets, and body.
    type Answer = (StatusCode, Option<String>, Option<String>, Vec<u8>);

    async fn send(api: &Api, method: &Method, uri: &str, token: Option<&str>) -> Answer {
        let mut request = Request::builder().method(method.clone()).uri(uri);
        if let Some(token) = token {
            request = request.header(header::AUTHORIZATION, format!("Bearer {token}"));
        }
        let request = request.body(Body::empty()).expect("valid request");
        let response = api.clone().call(request).await.expect("infallible");
        let header = |name| {
            response
                .headers()
                .get(name)
                .map(|v| v.to_str().expect("ASCII header").to_owned())
        };
        let (content_type, expiration) = (header("content-type"), header("expiration"));
        let status = response.status();
        let body = axum::body::to_bytes(response.into_body(), usize::MAX)
            .await
            .expect("body");
        (status, content_type, expiration, body.to_vec())
    }

    fn value_uri(account: &str, ns: &str, key: &str, query: &str) -> String {
        format!("/client/v4/accounts/{account}/storage/kv/namespaces/{ns}/values/{key}{query}")
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(400))]

        /// Whatever the path, query, method and credentials, the service answers exactly as
        /// the router alone does.
        #[test]
        fn answers_as_the_router_does(
            account in prop_oneof![
                3 => Just("acct"),
                1 => prop::sample::select(vec!["a%20b", "%FF", "x%2Fy", "%41", ""]),
            ],
            ns in prop_oneof![
                3 => Just(NS),
                1 => prop::sample::select(vec!["0123456789ABCDEF0123456789ABCDEF", "zz", ""]),
            ],
            pieces in prop::collection::vec(prop::sample::select(vec![
                "a", "/", "%2F", "%25", "%FF", ".", "..", "%20", "%E2%82%AC", "missing",
                "panic", "~", ":",
            ]), 0..5),
            query in prop::sample::select(vec![
                "", "?cache_ttl=60", "?cache_ttl=abc", "?cache_ttl=30",
                "?cache_ttl=60&cache_ttl=120", "?cache_ttl=%FF", "?x", "?=&=",
            ]),
            method in prop_oneof![
                4 => Just(Method::GET),
                1 => prop::sample::select(vec![Method::HEAD, Method::PUT]),
            ],
            token in prop_oneof![
                4 => Just(Some(TOKEN)),
                1 => prop::sample::select(vec![Some("wrong"), None]),
            ],
        ) {
            let (fast, routed) = both("hot-reads-prop");
            let uri = value_uri(account, ns, &pieces.concat(), query);
            let runtime = tokio::runtime::Builder::new_current_thread()
                .build()
                .expect("runtime");
            let (a, b) = runtime.block_on(async {
                (
                    send(&fast, &method, &uri, token).await,
                    send(&routed, &method, &uri, token).await,
                )
            });
            prop_assert_eq!(a, b, "{} {}", method, uri);
        }
    }

    #[test]
    fn clean_reads_with_credentials_take_the_read_path() {
        let auth = Auth::tokens([TOKEN]);
        let request = |uri: &str, token: &str| {
            Request::builder()
                .uri(uri)
                .header(header::AUTHORIZATION, format!("Bearer {token}"))
                .body(Body::empty())
                .expect("valid request")
        };
        let taken = |uri: &str, token| ValueRead::parse(&request(uri, token), &auth);
        let read = taken(&value_uri("acct", NS, "a%2Fb%20c", "?cache_ttl=90"), TOKEN)
            .expect("a clean read");
        assert_eq!(read.path.key, "a/b c");
        assert_eq!(read.params.text("cache_ttl"), Some("90"));
        assert!(taken(&value_uri("acct", NS, "k", ""), "wrong").is_none());
        assert!(taken(&value_uri("acct", NS, "%FF", ""), TOKEN).is_none());
        assert!(taken(&value_uri("acct", "zz", "k", ""), TOKEN).is_none());
    }

    #[tokio::test]
    async fn reads_are_counted_and_panics_answered() {
        let node = "hot-reads-count";
        let (fast, routed) = both(node);
        let count = |node: &str, status: &str| {
            HTTP_REQUESTS
                .with_label_values(&[node, VALUE_ROUTE, "GET", status])
                .get()
        };
        let ok = value_uri("acct", NS, "k", "");
        let panics = value_uri("acct", NS, "panic", "");
        for api in [&fast, &routed] {
            for _ in 0..3 {
                assert_eq!(
                    send(api, &Method::GET, &ok, Some(TOKEN)).await.0,
                    StatusCode::OK
                );
            }
            let (status, ..) = send(api, &Method::GET, &panics, Some(TOKEN)).await;
            assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
        }
        let routed_node = format!("{node}-routed");
        for node in [node, &routed_node] {
            assert_eq!(count(node, "200"), 3, "{node}");
            assert_eq!(count(node, "500"), 1, "{node}");
        }
    }

    #[test]
    fn value_paths_split_like_the_route_matches() {
        let split = split_value_path;
        let base = "/client/v4/accounts/acct/storage/kv/namespaces/ns/values";
        assert_eq!(split(&format!("{base}/k")), Some(("acct", "ns", "k")));
        assert_eq!(
            split(&format!("{base}/a/b%2F/")),
            Some(("acct", "ns", "a/b%2F/"))
        );
        assert_eq!(split(&format!("{base}/")), None);
        assert_eq!(split(base), None);
        assert_eq!(
            split("/client/v4/accounts//storage/kv/namespaces/ns/values/k"),
            None
        );
        assert_eq!(
            split("/client/v4/accounts/acct/storage/kv/namespaces//values/k"),
            None
        );
        assert_eq!(
            split("/client/v4/accounts/acct/storage/kv/namespaces/ns/metadata/k"),
            None
        );
        assert_eq!(
            split("/client/v4/accounts/a/b/storage/kv/namespaces/ns/values/k"),
            None
        );
    }
}
